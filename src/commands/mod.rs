//! One module per subcommand; each has `Args` and a `run`.

pub mod apply;
pub mod arch_args;
pub mod check;
pub mod deepen;
pub mod diff;
pub mod export;
pub mod from_hf;
pub mod init;
pub mod morph;
pub mod prove;
pub mod run;
pub mod spaces;
pub mod step;
pub mod widen;

use r2rc::error::render;
use r2rc::Error;

/// Prints an error to stderr and returns the exit code.
pub fn report_error(e: &Error) -> i32 {
    if let Error::Rendered(text) = e {
        eprintln!("{}", text.trim_end());
        return e.exit_code();
    }
    eprintln!("error: {e}");
    if let Some(h) = e.hint_text() {
        eprintln!("  help: {h}");
    }
    e.exit_code()
}

/// After a streamed rewrite wrote `weights`: writes `DIR/<stem>.arch` (the report's header
/// comment, then the student's text) and `DIR/report.json`; returns every file written and
/// the report's JSON.
pub fn write_arch_and_report(
    dir: &std::path::Path,
    stem: &str,
    header: &str,
    student: &r2rc::ir::Graph,
    report: &impl serde::Serialize,
    weights: &[std::path::PathBuf],
    inputs: &[&std::path::Path],
) -> Result<(Vec<std::path::PathBuf>, String), Error> {
    let arch = format!("{header}\n{}", r2rc::print::print(student));
    let report_json = serde_json::to_string_pretty(report).expect("the report serialises");
    let files = vec![
        (format!("{stem}.arch"), arch.into_bytes()),
        (
            "report.json".to_string(),
            format!("{report_json}\n").into_bytes(),
        ),
    ];
    let mut written = weights.to_vec();
    written.extend(r2rc::report::write_outputs(dir, &files, true, inputs)?);
    Ok((written, report_json))
}

/// The stem outputs are named after: the student's `--name`, else the architecture file's
/// (`resnet18` for `examples/resnet18.arch`).
pub fn stem_of(file: &std::path::Path, name: Option<&str>) -> String {
    match name {
        Some(n) => n.to_string(),
        None => file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "student".into()),
    }
}

/// Reads and compiles an architecture whose student is named `name` (`--name`): the
/// student's `arch` line and output files take that name.
pub fn load_named(
    path: &std::path::Path,
    sets: &[String],
    name: Option<&str>,
) -> Result<r2rc::ir::Graph, Error> {
    let mut graph = load_arch(path, sets)?;
    if let Some(n) = name {
        r2rc::api::set_name(&mut graph, n)?;
    }
    Ok(graph)
}

/// `--prove full|local`: whether the proof is local.
pub fn local_proof(how: &str) -> Result<bool, Error> {
    match how {
        "full" => Ok(false),
        "local" => Ok(true),
        other => Err(Error::usage(
            format!("--prove {other}: use full or local (or --no-prove)"),
            None,
        )),
    }
}

/// Reads an `.arch` file and compiles it, rendering source errors with file:line:col.
pub fn load_arch(path: &std::path::Path, sets: &[String]) -> Result<r2rc::ir::Graph, Error> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::io(&shown, e))?;
    let src = String::from_utf8_lossy(&bytes).into_owned();
    let sets = parse_sets(sets)?;
    r2rc::lower::compile(&src, &sets).map_err(|e| {
        let color = std::io::IsTerminal::is_terminal(&std::io::stderr());
        Error::Rendered(render(&e, &shown, &src, color))
    })
}

/// `--set r=3/16` into (name, expression) pairs.
pub fn parse_sets(sets: &[String]) -> Result<Vec<(String, String)>, Error> {
    sets.iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                Ok((k.trim().to_string(), v.trim().to_string()))
            }
            _ => Err(Error::usage(
                format!("--set {s}: expected NAME=EXPR"),
                Some("for example --set r=3/16".into()),
            )),
        })
        .collect()
}

/// Sizes rayon's global pool to `--threads` (the default pool has one thread per core).
/// Called before any command runs: loading weights already uses the pool, which can be
/// sized only before its first use.
pub fn start_pool(threads: Option<usize>) -> Result<(), Error> {
    match threads {
        None => Ok(()),
        Some(0) => Err(Error::usage(
            "--threads must be at least 1",
            Some("leave it out for one thread per core".to_string()),
        )),
        Some(t) => rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .map_err(|e| Error::usage(format!("cannot start {t} threads: {e}"), None)),
    }
}
