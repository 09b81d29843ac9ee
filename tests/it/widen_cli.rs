//! `r2rc widen`, `prove`, `spaces` and `diff` from the command line: outputs, evidence,
//! atomic writes without overwrite, exit codes.

use std::path::PathBuf;

use crate::common::{assert_report_fields, ex, init_weights, json, r2rc, s, text};

#[test]
fn widen_writes_proved_student_with_evidence_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("t.safetensors");
    init_weights(
        &ex("resnet_cifar10"),
        &w,
        &["--random-stats", "--seed", "3"],
    );
    let out: PathBuf = dir.path().join("out");
    let o = r2rc(&[
        "widen",
        &ex("resnet_cifar10"),
        "--layer",
        "conv2_x",
        "--by",
        "1.5",
        "--weights",
        s(&w),
        "-o",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("from 8 to 12 channels") && err.contains("passed"),
        "{err}"
    );

    // report.json with CLI.md's fields.
    let report = json(&out.join("report.json"));
    assert_report_fields(&report);
    assert_eq!(report["method"], "r2r");
    assert!(report["params_after"].as_u64() > report["params_before"].as_u64());
    let ev = report["evidence"].as_array().unwrap();
    assert_eq!(ev.len(), 2);
    for e in ev {
        for f in [
            "mode",
            "dtype",
            "inputs",
            "seed",
            "max_abs_err",
            "max_rel_err",
            "tolerance",
            "passed",
        ] {
            assert!(e.get(f).is_some(), "evidence lacks {f}");
        }
        assert_eq!(e["passed"], true);
        assert!(e["max_rel_err"].as_f64().unwrap() <= 1e-9);
    }

    // The .arch starts with the evidence and compiles to the student.
    let arch = std::fs::read_to_string(out.join("resnet_cifar10.arch")).unwrap();
    assert!(
        arch.starts_with("# r2rc widen conv2_x --method r2r"),
        "{arch}"
    );
    assert!(
        arch.contains("# proof: eval f64") && arch.contains("# proof: train f64"),
        "{arch}"
    );
    let student = r2rc::lower::compile(&arch, &[]).unwrap();

    // Safetensors in the teacher's dtype, evidence in the metadata.
    let meta = r2rc::params::load_metadata(&out.join("resnet_cifar10.safetensors")).unwrap();
    assert_eq!(meta["r2rc.method"], "r2r");
    assert!(meta["r2rc.evidence"].contains("max_rel_err"));
    let sp = r2rc::params::load(&student, &out.join("resnet_cifar10.safetensors")).unwrap();
    assert_eq!(sp.dtype, r2rc::params::DType::F32);

    // `prove` agrees on its own.
    let st = out.join("resnet_cifar10.safetensors");
    let a = out.join("resnet_cifar10.arch");
    let o = r2rc(&["prove", &ex("resnet_cifar10"), s(&w), s(&a), s(&st)]);
    assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    assert!(text(&o.stdout).contains("train f64"));

    // A broken student: `prove` exits 1 and names the layer.
    let mut bad = sp.clone();
    bad.tensors.get_mut("conv3_1.bn1.running_mean").unwrap()[[0]] += 0.5;
    let bad_path = dir.path().join("bad.safetensors");
    r2rc::params::save(&bad, &student, &bad_path, None).unwrap();
    let o = r2rc(&[
        "prove",
        &ex("resnet_cifar10"),
        s(&w),
        s(&a),
        s(&bad_path),
        "--mode",
        "eval",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("parts from the teacher at `conv3_1.bn1`"),
        "{}",
        text(&o.stderr)
    );

    // No overwrite without --force; nothing changes.
    let before = std::fs::read(&st).unwrap();
    let o = r2rc(&[
        "widen",
        &ex("resnet_cifar10"),
        "--layer",
        "conv2_x",
        "--add",
        "2",
        "-o",
        s(&out),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("exists; nothing was written"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(std::fs::read(&st).unwrap(), before);
    let o = r2rc(&[
        "widen",
        &ex("resnet_cifar10"),
        "--layer",
        "conv2_x",
        "--add",
        "2",
        "-o",
        s(&out),
        "--force",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_ne!(std::fs::read(&st).unwrap(), before);
}

#[test]
fn widen_without_output_prints_the_student_and_refuses_with_messages() {
    let o = r2rc(&[
        "widen",
        &ex("resnet_cifar18"),
        "--set",
        "r=1/8",
        "--all",
        "--by",
        "1.5",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let body: String = text(&o.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let wide = r2rc(&["print", &ex("resnet_cifar18"), "--set", "r=3/16"]);
    assert_eq!(body.trim(), text(&wide.stdout).trim());

    let o = r2rc(&["widen", &ex("smallconv"), "--layer", "conv1", "--add", "3"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("--add must be even, not 3"),
        "{}",
        text(&o.stderr)
    );
    let o = r2rc(&["widen", &ex("smallconv"), "--layer", "fc", "--add", "2"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("did you mean `fc1`?"),
        "{}",
        text(&o.stderr)
    );
    let o = r2rc(&["widen", &ex("smallconv"), "--layer", "fc2", "--add", "2"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("holds the network output `fc2`"),
        "{}",
        text(&o.stderr)
    );
    let o = r2rc(&[
        "widen",
        &ex("smallconv"),
        "--layer",
        "fc1",
        "--by",
        "1.3",
        "--method",
        "random",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(&text(&o.stdout)).unwrap();
    assert_eq!(v["function_preserving"], false);
    assert!(v["notes"][0]
        .as_str()
        .unwrap()
        .contains("not function preserving"));
    assert!(v["student_arch"].as_str().unwrap().contains("195-d fc"));
}

#[test]
fn spaces_and_diff_commands() {
    let o = r2rc(&["spaces", &ex("smallconv")]);
    assert!(o.status.success());
    let t = text(&o.stdout);
    assert!(t.contains("fc1 (256 columns per channel)"), "{t}");
    assert!(
        t.contains("fixed: it holds the network input `input`"),
        "{t}"
    );
    let o = r2rc(&["spaces", &ex("resnet18"), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&text(&o.stdout)).unwrap();
    let conv1 = v
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["label"] == "conv1")
        .unwrap();
    assert_eq!(conv1["widenable"], true);
    assert_eq!(conv1["width"], 64);

    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("b.arch");
    std::fs::write(
        &b,
        text(&r2rc(&["print", &ex("resnet_cifar10"), "--set", "r=3/16"]).stdout),
    )
    .unwrap();
    let o = r2rc(&["diff", &ex("resnet_cifar10"), s(&b)]);
    assert!(o.status.success());
    let d = text(&o.stdout);
    assert!(
        d.contains("-conv1    16x16  7x7, 8, stride 2")
            && d.contains("+conv1    16x16  7x7, 12, stride 2"),
        "{d}"
    );
    let o = r2rc(&["diff", &ex("resnet_cifar10"), s(&b), "--format", "dot"]);
    assert!(text(&o.stdout).contains("out 8 -> 12"));
}
