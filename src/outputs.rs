//! Safe outputs: every file r2rc writes goes to a temporary file in the destination folder
//! and is renamed into place, so a reader (or a crash, or a kill) never leaves a half-written
//! file under the output's name; an existing output needs `force`; an input is never an
//! output, even with `force`.
//!
//! On Linux the temporary file is anonymous (`O_TMPFILE`): it has no name until it is
//! complete, so a kill in the middle of writing leaves nothing at all behind. Elsewhere (or
//! on a filesystem without `O_TMPFILE`) it is a named `.NAME.PID.tmp`, removed on error.
//!
//! A command's outputs in one folder form a [`Set`]: they appear together or not at all.
//! While a set is open, finished files wait under temporary names; [`Set::commit`] writes a
//! journal (`.r2rc-commit.json`, itself atomically) listing the renames, performs them and
//! removes the journal. A kill before the journal leaves only temporary files (removed by
//! the next run in that folder); a kill after it is rolled forward by the next run, before
//! that run looks at what exists ([`recover`]).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// Test hook: when set to a number of milliseconds, a write pauses that long after its
/// first half, so a test can kill r2rc in the middle of writing.
pub const PAUSE_ENV: &str = "R2RC_TEST_WRITE_PAUSE_MS";

/// Refuses before anything is written: an output that is one of `inputs` (the same file,
/// whatever the path says), and, without `force`, an output that exists.
pub fn check_outputs(outputs: &[PathBuf], inputs: &[&Path], force: bool) -> Result<()> {
    for out in outputs {
        recover(parent_of(out))?;
    }
    for out in outputs {
        if let Some(input) = inputs.iter().find(|i| same_file(out, i)) {
            return Err(Error::usage(
                format!(
                    "{} is also an input ({}); r2rc never overwrites its inputs, nothing was written",
                    out.display(),
                    input.display()
                ),
                Some("choose another output path".into()),
            ));
        }
        if !force && out.exists() {
            return Err(Error::usage(
                format!("{} exists; nothing was written", out.display()),
                Some("pass --force to overwrite it, or choose another output".into()),
            ));
        }
    }
    Ok(())
}

/// Whether `a` and `b` name the same existing file (same device and inode on Unix).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(ma), Ok(mb)) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::MetadataExt;
                ma.dev() == mb.dev() && ma.ino() == mb.ino()
            }
            #[cfg(not(unix))]
            {
                let _ = (ma, mb);
                match (fs::canonicalize(a), fs::canonicalize(b)) {
                    (Ok(x), Ok(y)) => x == y,
                    _ => false,
                }
            }
        }
        _ => false,
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut staged = Staged::create(path)?;
    let shown = path.display().to_string();
    fill(staged.file(), bytes).map_err(|e| Error::io(&shown, e))?;
    staged.persist()
}

/// A file being written for `path`, invisible under that name until [`Staged::persist`]:
/// for writers that stream (write through [`Staged::file`]). Dropped unpersisted, it
/// leaves nothing behind (and neither does a kill, on Linux).
pub struct Staged {
    file: fs::File,
    /// The named temporary file (also the link name of an anonymous one).
    tmp: PathBuf,
    anonymous: bool,
    path: PathBuf,
    done: bool,
}

impl Staged {
    pub fn create(path: &Path) -> Result<Staged> {
        let shown = path.display().to_string();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = path
            .file_name()
            .ok_or_else(|| Error::io(&shown, "not a file name"))?
            .to_string_lossy()
            .into_owned();
        let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
        #[cfg(target_os = "linux")]
        if let Some(file) = anonymous(&dir) {
            return Ok(Staged {
                file,
                tmp,
                anonymous: true,
                path: path.to_path_buf(),
                done: false,
            });
        }
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| Error::io(&shown, e))?;
        Ok(Staged {
            file,
            tmp,
            anonymous: false,
            path: path.to_path_buf(),
            done: false,
        })
    }

    pub fn file(&mut self) -> &mut fs::File {
        &mut self.file
    }

    /// The file for positioned reads and writes.
    pub fn as_file(&self) -> &fs::File {
        &self.file
    }

    /// Syncs the file and moves it over the destination in one step.
    pub fn persist(mut self) -> Result<()> {
        let shown = self.path.display().to_string();
        let result = self.file.sync_all().and_then(|()| {
            #[cfg(target_os = "linux")]
            if self.anonymous {
                // Give the finished file a name, then rename it over the output.
                let fd = std::os::fd::AsRawFd::as_raw_fd(&self.file);
                let _ = fs::remove_file(&self.tmp);
                link_follow(Path::new(&format!("/proc/self/fd/{fd}")), &self.tmp)?;
            }
            if let Some(tmp) = defer(&self.path)? {
                fs::rename(&self.tmp, &tmp)?;
                return Ok(());
            }
            fs::rename(&self.tmp, &self.path)
        });
        self.done = result.is_ok();
        result.map_err(|e| Error::io(&shown, e))
    }
}

/// The open output set: its folder as given and the files waiting in it (temporary name,
/// final name).
static OPEN: Mutex<Option<OpenSet>> = Mutex::new(None);

/// A set's folder and its waiting files (temporary name, final name).
type OpenSet = (PathBuf, Vec<(PathBuf, PathBuf)>);

/// The journal of a set being committed, in the set's folder.
pub const JOURNAL: &str = ".r2rc-commit.json";

/// Test hook: `R2RC_TEST_KILL_AT=k` ends the process (as a kill would) just before the
/// `k`-th step of a commit: 0 before the journal, 1..=n before the n-th rename, n + 1
/// before the journal is removed.
pub const KILL_ENV: &str = "R2RC_TEST_KILL_AT";

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Where a finished `path` waits while a set is open for its folder (`None`: no set, so it
/// goes straight into place).
fn defer(path: &Path) -> std::io::Result<Option<PathBuf>> {
    let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
    let Some((given, waiting)) = open.as_mut() else {
        return Ok(None);
    };
    let dir = fs::canonicalize(parent_of(path))?;
    if fs::canonicalize(&*given).ok() != Some(dir.clone()) {
        return Ok(None);
    }
    let name = path.file_name().unwrap_or_default();
    let fin = dir.join(name);
    let tmp = dir.join(format!(
        ".r2rc-set.{}.{}",
        std::process::id(),
        name.to_string_lossy()
    ));
    waiting.retain(|(_, f)| *f != fin);
    waiting.push((tmp.clone(), fin));
    Ok(Some(tmp))
}

/// A command's outputs in one folder, committed together ([`Set::commit`]) or, dropped
/// uncommitted, not at all.
pub struct Set {
    done: bool,
}

impl Set {
    /// Opens the set of outputs written into `dir` from now on, after finishing or
    /// clearing what killed runs left there (the folder is made by whoever writes first).
    pub fn begin(dir: &Path) -> Result<Set> {
        if dir.is_dir() {
            recover(dir)?;
        }
        *OPEN.lock().unwrap_or_else(|e| e.into_inner()) = Some((dir.to_path_buf(), Vec::new()));
        Ok(Set { done: false })
    }

    /// Moves every waiting file into place, all or none (see the module's doc).
    pub fn commit(mut self) -> Result<()> {
        self.done = true;
        let Some((dir, waiting)) = OPEN.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return Ok(());
        };
        if waiting.is_empty() {
            return Ok(());
        }
        let dir = fs::canonicalize(&dir).map_err(|e| Error::io(dir.display(), e))?;
        let journal = dir.join(JOURNAL);
        let plan: Vec<(String, String)> = waiting
            .iter()
            .map(|(t, f)| (t.display().to_string(), f.display().to_string()))
            .collect();
        kill_point(0);
        write_atomic(
            &journal,
            &serde_json::to_vec(&plan).expect("paths serialise"),
        )?;
        sync_dir(&dir);
        for (k, (tmp, fin)) in waiting.iter().enumerate() {
            kill_point(k + 1);
            fs::rename(tmp, fin).map_err(|e| Error::io(fin.display(), e))?;
        }
        sync_dir(&dir);
        kill_point(waiting.len() + 1);
        fs::remove_file(&journal).map_err(|e| Error::io(journal.display(), e))?;
        Ok(())
    }
}

impl Drop for Set {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some((_, waiting)) = OPEN.lock().unwrap_or_else(|e| e.into_inner()).take() {
            for (tmp, _) in waiting {
                let _ = fs::remove_file(tmp);
            }
        }
    }
}

fn kill_point(k: usize) {
    if std::env::var(KILL_ENV)
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        == Some(k)
    {
        eprintln!("r2rc: killed at commit step {k} ({KILL_ENV})");
        std::process::exit(137);
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Finishes what a killed run left in `dir`: a journal is rolled forward (its renames
/// done, so its set appears whole); waiting files of runs whose process is gone, with no
/// journal, are removed (their set never appears).
pub fn recover(dir: &Path) -> Result<()> {
    let journal = dir.join(JOURNAL);
    if let Ok(bytes) = fs::read(&journal) {
        let plan: Vec<(String, String)> = serde_json::from_slice(&bytes).map_err(|e| {
            Error::io(
                journal.display(),
                format!("an unreadable commit journal ({e}); remove it and rerun"),
            )
        })?;
        for (tmp, fin) in plan {
            if Path::new(&tmp).exists() {
                fs::rename(&tmp, &fin).map_err(|e| Error::io(&fin, e))?;
            }
        }
        sync_dir(dir);
        fs::remove_file(&journal).map_err(|e| Error::io(journal.display(), e))?;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix(".r2rc-set.")
            .and_then(|r| r.split_once('.'))
            .and_then(|(p, _)| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if pid != std::process::id() && !alive(pid) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

/// Whether process `pid` still runs (Linux's /proc tells; elsewhere assume it does).
fn alive(pid: u32) -> bool {
    !Path::new("/proc/self").exists() || Path::new(&format!("/proc/{pid}")).exists()
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.done && (!self.anonymous || self.tmp.exists()) {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Test hook for writers that stream: with [`PAUSE_ENV`] set, says so on stderr and
/// sleeps, so a test can kill r2rc while `what` is half done.
pub fn pause_for_test(what: &str) {
    if let Some(ms) = std::env::var(PAUSE_ENV)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        eprintln!("r2rc: {what} written but not yet in place, pausing {ms} ms ({PAUSE_ENV})");
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

fn fill(mut f: &fs::File, bytes: &[u8]) -> std::io::Result<()> {
    let pause = std::env::var(PAUSE_ENV)
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    match pause {
        Some(ms) => {
            let half = bytes.len() / 2;
            f.write_all(&bytes[..half])?;
            f.flush()?;
            eprintln!(
                "r2rc: {half} of {} bytes written, pausing {ms} ms ({PAUSE_ENV})",
                bytes.len()
            );
            std::thread::sleep(std::time::Duration::from_millis(ms));
            f.write_all(&bytes[half..])
        }
        None => f.write_all(bytes),
    }
}

/// An unnamed file in `dir`, or `None` where the system or filesystem has none.
#[cfg(target_os = "linux")]
fn anonymous(dir: &Path) -> Option<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o666)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
        .ok()
}

/// `linkat(from, to, AT_SYMLINK_FOLLOW)`: names the file a `/proc/self/fd` link points to.
#[cfg(target_os = "linux")]
fn link_follow(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))
    };
    let (a, b) = (c(from)?, c(to)?);
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_and_leave_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.bin");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.bin")]);
    }

    #[test]
    fn a_staged_file_dropped_unpersisted_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.bin");
        fs::write(&p, b"old").unwrap();
        {
            let mut s = Staged::create(&p).unwrap();
            s.file().write_all(b"half of it").unwrap();
        }
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        let mut s = Staged::create(&p).unwrap();
        s.file().write_all(b"new").unwrap();
        s.persist().unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_input_is_never_an_output_and_existing_outputs_need_force() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.arch");
        fs::write(&a, "x").unwrap();
        // The same file through another path.
        let other = dir.path().join(".").join("a.arch");
        let e = check_outputs(std::slice::from_ref(&other), &[&a], true).unwrap_err();
        assert!(e.to_string().contains("is also an input"), "{e}");
        let e = check_outputs(std::slice::from_ref(&other), &[], false).unwrap_err();
        assert!(e.to_string().contains("exists"), "{e}");
        check_outputs(&[other], &[], true).unwrap();
        check_outputs(&[dir.path().join("new")], &[&a], false).unwrap();
        assert_eq!(fs::read(&a).unwrap(), b"x");
    }
}
