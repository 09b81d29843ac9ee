//! Safe outputs through the command line: an existing output needs --force; an input is
//! never overwritten, even with --force and the same path as input and output; a kill in the
//! middle of writing leaves the old file intact and no partial file behind.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use crate::common::{command, init_weights, listing, run, s};

const SMALL: &str =
    "arch Small\ninput 3x8x8\nconv1 3x3, 4\nconv2_x [3x3, 4; 3x3, 4] x 1\nhead avg pool, 3-d fc\n";

#[test]
fn existing_outputs_need_force() {
    let dir = tempfile::tempdir().unwrap();
    let arch = dir.path().join("small.arch");
    std::fs::write(&arch, SMALL).unwrap();
    let w = dir.path().join("w.safetensors");
    assert_eq!(run(&["init", s(&arch), "-o", s(&w)]).0, 0);
    let before = std::fs::read(&w).unwrap();
    let (code, _, err) = run(&["init", s(&arch), "-o", s(&w), "--seed", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("exists") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&w).unwrap(), before);
    assert_eq!(
        run(&["init", s(&arch), "-o", s(&w), "--seed", "1", "--force"]).0,
        0
    );
    assert_ne!(std::fs::read(&w).unwrap(), before);

    let y = dir.path().join("y.npy");
    let predict = |extra: &[&str]| {
        let mut a = vec![
            "run",
            s(&arch),
            "--weights",
            s(&w),
            "--random",
            "2",
            "--output",
            s(&y),
        ];
        a.extend_from_slice(extra);
        run(&a)
    };
    assert_eq!(predict(&[]).0, 0);
    let (code, _, err) = predict(&[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("exists"), "{err}");
    assert_eq!(predict(&["--force"]).0, 0);

    let onnx = dir.path().join("n.onnx");
    let export = |extra: &[&str]| {
        let mut a = vec!["export", s(&arch), "--weights", s(&w), "--onnx", s(&onnx)];
        a.extend_from_slice(extra);
        run(&a)
    };
    assert_eq!(export(&[]).0, 0);
    assert_eq!(export(&[]).0, 2);
    assert_eq!(export(&["--force"]).0, 0);

    let out = dir.path().join("out");
    for cmd in [
        vec!["widen", s(&arch), "--layer", "conv1", "--add", "2"],
        vec!["deepen", s(&arch), "--after", "conv2_1"],
        vec!["morph", s(&arch), "--layer", "conv1", "--kernel", "5"],
    ] {
        let mut a = cmd.clone();
        a.extend(["-o", s(&out)]);
        let _ = std::fs::remove_dir_all(&out);
        let (code, _, err) = run(&a);
        assert_eq!(code, 0, "{cmd:?}: {err}");
        let report = std::fs::read(out.join("report.json")).unwrap();
        let (code, _, err) = run(&a);
        assert_eq!(code, 2, "{cmd:?} over existing outputs: {err}");
        assert!(
            err.contains("exists") && err.contains("nothing was written"),
            "{err}"
        );
        assert_eq!(std::fs::read(out.join("report.json")).unwrap(), report);
        a.push("--force");
        assert_eq!(run(&a).0, 0, "{cmd:?} --force");
    }
}

#[test]
fn inputs_are_never_overwritten_even_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let arch = d.join("small.arch");
    std::fs::write(&arch, SMALL).unwrap();
    let w = d.join("small.safetensors");
    init_weights(s(&arch), &w, &[]);
    let plan = d.join("report.json");
    std::fs::write(&plan, "widen --layer conv1 --add 2\n").unwrap();
    let keep: Vec<(std::path::PathBuf, Vec<u8>)> = [&arch, &w, &plan]
        .iter()
        .map(|p| (p.to_path_buf(), std::fs::read(p).unwrap()))
        .collect();
    // The same file under another spelling of its path.
    let arch2 = d.join(".").join("small.arch");
    let cases: Vec<Vec<&str>> = vec![
        vec!["init", s(&arch), "-o", s(&arch2), "--force"],
        vec![
            "run",
            s(&arch),
            "--weights",
            s(&w),
            "--output",
            s(&w),
            "--force",
        ],
        vec![
            "export",
            s(&arch),
            "--weights",
            s(&w),
            "--json",
            s(&arch2),
            "--force",
        ],
        vec![
            "export",
            s(&arch),
            "--weights",
            s(&w),
            "--onnx",
            s(&w),
            "--force",
        ],
        // -o DIR writes DIR/small.arch and DIR/small.safetensors: the inputs themselves.
        vec![
            "widen",
            s(&arch),
            "--layer",
            "conv1",
            "--add",
            "2",
            "-o",
            s(d),
            "--force",
        ],
        vec![
            "widen",
            s(&arch),
            "--layer",
            "conv1",
            "--add",
            "2",
            "--weights",
            s(&w),
            "-o",
            s(d),
            "--force",
        ],
        vec![
            "deepen",
            s(&arch),
            "--after",
            "conv2_1",
            "-o",
            s(d),
            "--force",
        ],
        vec![
            "morph",
            s(&arch),
            "--layer",
            "conv1",
            "--kernel",
            "5",
            "-o",
            s(d),
            "--force",
        ],
        vec!["apply", s(&arch), s(&plan), "-o", s(d), "--force"],
    ];
    for c in cases {
        let (code, _, err) = run(&c);
        assert_eq!(code, 2, "{c:?}: {err}");
        assert!(err.contains("is also an input"), "{c:?}: {err}");
        for (p, bytes) in &keep {
            assert_eq!(
                &std::fs::read(p).unwrap(),
                bytes,
                "{c:?} modified {}",
                p.display()
            );
        }
    }
    // Nothing else appeared either.
    assert_eq!(
        listing(d),
        vec!["report.json", "small.arch", "small.safetensors"]
    );
}

/// Kills r2rc while it is in the middle of writing (a test hook pauses after the first
/// half of the bytes): the old file must be intact and nothing else left in the folder.
#[test]
fn a_kill_in_the_middle_of_writing_leaves_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let arch = d.join("big.arch");
    std::fs::write(
        &arch,
        "arch Big\ninput 3x8x8\nconv1 3x3, 256\nconv2 3x3, 512\nhead avg pool, 10-d fc\n",
    )
    .unwrap();
    let w = d.join("w.safetensors");
    init_weights(s(&arch), &w, &[]);
    let old = std::fs::read(&w).unwrap();
    assert!(old.len() > 4 << 20, "{} bytes", old.len());
    for (cmd, target) in [
        (
            vec!["init", s(&arch), "-o", s(&w), "--seed", "9", "--force"],
            w.clone(),
        ),
        (
            vec!["widen", s(&arch), "--layer", "conv1", "--add", "2", "-o"],
            d.join("out"),
        ),
        // The streaming writer (teacher weights, no full proof) stages its files too.
        (
            vec![
                "widen",
                s(&arch),
                "--layer",
                "conv1",
                "--add",
                "2",
                "--weights",
                s(&w),
                "--no-prove",
                "-o",
            ],
            d.join("out"),
        ),
    ] {
        let mut a = cmd.clone();
        let out_dir = d.join("out");
        if a.last() == Some(&"-o") {
            a.push(s(&out_dir));
        }
        let mut child = command(&a)
            .env("R2RC_TEST_WRITE_PAUSE_MS", "60000")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let paused = lines
            .by_ref()
            .map_while(|l| l.ok())
            .any(|l| l.contains("pausing"));
        assert!(paused, "{cmd:?} never reached the middle of a write");
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(
            std::fs::read(&w).unwrap(),
            old,
            "{cmd:?}: the old weights changed"
        );
        assert_eq!(
            listing(d).iter().filter(|n| n.contains("tmp")).count(),
            0,
            "{:?}",
            listing(d)
        );
        if target.is_dir() {
            // The kill came during the first file: nothing of it, nor a temporary file.
            let left = listing(&target);
            assert!(
                left.is_empty(),
                "{cmd:?} left {left:?} in {}",
                target.display()
            );
        }
    }
}
