//! Sharded and streamed outputs from the command line: `--shard-size` on widen and deepen
//! (streamed with `--no-prove`, in memory when proved), read back by `r2rc run` with the
//! same outputs as the unsharded, in-memory student.

use std::path::Path;

use crate::common::{ex, init_weights, listing as files, r2rc, s, text};

/// Runs r2rc, which must succeed; its stderr.
fn ok(args: &[&str]) -> String {
    text(&crate::common::ok(args).stderr)
}

/// The student's output on 2 seeded inputs, as .npy bytes.
fn output(arch: &Path, weights: &Path, names: &str) -> Vec<u8> {
    let y = arch.with_extension("npy");
    ok(&[
        "run",
        s(arch),
        "--weights",
        s(weights),
        "--names",
        names,
        "--random",
        "2",
        "--seed",
        "9",
        "--output",
        s(&y),
        "--force",
    ]);
    std::fs::read(&y).unwrap()
}

#[test]
fn streamed_and_sharded_deepen_runs_like_the_in_memory_student() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let teacher = d.join("teacher");
    std::fs::create_dir(&teacher).unwrap();
    // A sharded torchvision-named teacher.
    let single = d.join("single.safetensors");
    let arch = ex("resnet18");
    init_weights(
        &arch,
        &single,
        &["--random-stats", "--names", "torchvision"],
    );
    // The same values, sharded (init is seeded).
    init_weights(
        &arch,
        &teacher.join("resnet18.safetensors"),
        &[
            "--random-stats",
            "--names",
            "torchvision",
            "--shard-size",
            "10MB",
        ],
    );
    assert!(files(&teacher).len() > 3, "{:?}", files(&teacher));
    for method in ["r2r", "net2net", "random"] {
        let mem = d.join(format!("mem-{method}"));
        let streamed = d.join(format!("streamed-{method}"));
        let common = [
            "deepen",
            "examples/resnet18.arch",
            "--after",
            "conv4_1",
            "--method",
            method,
            "--names",
            "torchvision",
            "--weights",
        ];
        let mut a: Vec<&str> = common.to_vec();
        a.extend([s(&single), "-o", s(&mem), "--inputs", "1"]);
        ok(&a);
        let mut a: Vec<&str> = common.to_vec();
        a.extend([
            s(&teacher),
            "-o",
            s(&streamed),
            "--no-prove",
            "--shard-size",
            "20MB",
        ]);
        let log = ok(&a);
        assert!(log.contains("index.json"), "{log}");
        let shards = files(&streamed);
        assert!(
            shards
                .iter()
                .filter(|f| f.ends_with(".safetensors"))
                .count()
                >= 2,
            "{shards:?}"
        );
        // Same architecture text (bar the header comments), same outputs.
        let body = |p: &Path| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let (ma, sa) = (mem.join("resnet18.arch"), streamed.join("resnet18.arch"));
        assert_eq!(body(&ma), body(&sa), "{method}");
        assert_eq!(
            output(&ma, &mem.join("resnet18.safetensors"), "torchvision"),
            output(&sa, &streamed, "torchvision"),
            "{method}"
        );
        let report = std::fs::read_to_string(streamed.join("report.json")).unwrap();
        assert!(report.contains("\"proved\": false"), "{report}");
    }
}

#[test]
fn proved_deepen_and_morph_write_shards_too() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    ok(&[
        "deepen",
        "examples/resnet_cifar10.arch",
        "--after",
        "conv2_1",
        "--shard-size",
        "10kB",
        "-o",
        s(&out),
    ]);
    let f = files(&out);
    assert!(
        f.contains(&"resnet_cifar10.safetensors.index.json".to_string()),
        "{f:?}"
    );
    assert!(
        f.iter().filter(|x| x.ends_with(".safetensors")).count() > 2,
        "{f:?}"
    );
    let report = std::fs::read_to_string(out.join("report.json")).unwrap();
    assert!(report.contains("\"proved\": true"), "{report}");
    // The shards load back: `run` reads the folder.
    let y = output(&out.join("resnet_cifar10.arch"), &out, "r2rc");
    assert!(y.len() > 80);
    // Refused: a shard size that is not one, and existing outputs without --force.
    let o = r2rc(&[
        "deepen",
        "examples/resnet_cifar10.arch",
        "--after",
        "conv2_1",
        "--shard-size",
        "12XB",
        "-o",
        s(&out),
        "--force",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("`12XB` is not a shard size"), "{err}");
    let o = r2rc(&[
        "morph",
        "examples/resnet_cifar10.arch",
        "--layer",
        "conv2_1.conv1",
        "--kernel",
        "5",
        "--shard-size",
        "10kB",
        "-o",
        s(&out),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--force"), "{err}");
}

/// Streamed rewrites given weights in the other naming say which `--names` to pass, like
/// the in-memory paths.
#[test]
fn streamed_rewrites_hint_at_the_other_naming() {
    let dir = tempfile::tempdir().unwrap();
    let tv = dir.path().join("tv.safetensors");
    init_weights(&ex("resnet18"), &tv, &["--names", "torchvision"]);
    let out = dir.path().join("out");
    for cmd in [
        vec!["widen", "--layer", "conv2_1", "--by", "2", "--no-prove"],
        vec!["deepen", "--after", "conv4_1", "--no-prove"],
        vec![
            "morph",
            "--layer",
            "conv2_1.conv1",
            "--kernel",
            "5",
            "--prove",
            "local",
        ],
    ] {
        let mut a = vec![cmd[0], "examples/resnet18.arch"];
        a.extend(&cmd[1..]);
        a.extend(["--weights", s(&tv), "-o", s(&out)]);
        let o = r2rc(&a);
        assert_eq!(o.status.code(), Some(2), "{a:?}");
        let err = text(&o.stderr);
        assert!(
            err.contains("names its tensors the torchvision way: pass --names torchvision"),
            "{a:?}: {err}"
        );
        assert!(!out.exists(), "{a:?} wrote something");
    }
}

/// A streamed rewrite copies the tensors it does not change without decoding them, but
/// still refuses a non-finite value in one, at its index in the whole tensor (past the
/// first 8 MB that a copy moves at once).
#[test]
fn a_streamed_copy_refuses_a_non_finite_value_by_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("teacher.safetensors");
    init_weights(&ex("resnet18"), &w, &[]);
    let (name, start, len) = {
        let src = r2rc::shards::Source::open(&w).unwrap();
        let (name, info) = src
            .tensors
            .iter()
            .filter(|(k, _)| k.starts_with("conv5_"))
            .max_by_key(|(_, i)| i.end - i.start)
            .unwrap();
        (name.clone(), info.start, info.end - info.start)
    };
    let index = 2_300_000;
    assert!(
        4 * index < len && 4 * index > 8 << 20,
        "{name}: {len} bytes"
    );
    let mut bytes = std::fs::read(&w).unwrap();
    bytes[start + 4 * index..start + 4 * index + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&w, bytes).unwrap();
    let out = dir.path().join("out");
    let o = r2rc(&[
        "widen",
        "examples/resnet18.arch",
        "--layer",
        "conv2_1",
        "--by",
        "1.5",
        "--no-prove",
        "--weights",
        s(&w),
        "-o",
        s(&out),
    ]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("tensor `{name}`"))
            && err.contains("non-finite value (NaN)")
            && err.contains(&format!("flat index {index}")),
        "{err}"
    );
    assert!(
        !out.join("resnet18.safetensors").exists(),
        "a student was written"
    );
}
