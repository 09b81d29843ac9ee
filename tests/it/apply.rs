//! `r2rc apply`: the paper's deepening experiment as a plan, proved step by step and end
//! to end, and the `deepen` command's outputs and refusals.

use std::path::Path;

use crate::common::{assert_report_fields, ex, init_weights, json, listing, r2rc, s, tensors};

/// The canonical print of an `.arch` text (its comment lines dropped by the parser).
fn canonical(text: &str) -> String {
    r2rc::print::print(&r2rc::lower::compile(text, &[]).unwrap())
}

#[test]
fn cifar10_to_18_plan_yields_resnet_cifar18_proved() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    let out = r2rc(&[
        "apply",
        "examples/resnet_cifar10.arch",
        "examples/cifar10_to_18.plan",
        "-o",
        dir.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let student = std::fs::read_to_string(dir.join("resnet_cifar10.arch")).unwrap();
    let reference = std::fs::read_to_string("examples/resnet_cifar18.arch").unwrap();
    assert_eq!(canonical(&student), canonical(&reference));
    let report = json(&dir.join("report.json"));
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 5);
    for s in &steps[..4] {
        assert_eq!(s["method"], "r2r");
        for e in s["evidence"].as_array().unwrap() {
            assert_eq!(e["passed"], true);
            assert!(e["max_rel_err"].as_f64().unwrap() <= 1e-9);
        }
    }
    // End to end, both modes, and the weights load into the from-scratch ResNetCifar-18.
    let ev = report["evidence"].as_array().unwrap();
    assert_eq!(ev.len(), 2);
    assert!(ev
        .iter()
        .all(|e| e["passed"] == true && e["max_rel_err"].as_f64().unwrap() <= 1e-9));
    assert_eq!(report["name_map"]["conv3_2.conv1"], serde_json::Value::Null);
    let g18 = r2rc::lower::compile(&reference, &[]).unwrap();
    r2rc::params::load(&g18, &dir.join("resnet_cifar10.safetensors")).unwrap();
}

#[test]
fn plan_steps_rename_and_compose() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let plan = dir.join("p.plan");
    std::fs::write(
        &plan,
        "# insert in the middle, then widen and morph\ndeepen --after conv2_1 --method r2r\nmorph --layer conv1 --kernel 9\ndeepen --after conv3_1 --method netmorph\n",
    )
    .unwrap();
    let out = r2rc(&[
        "apply",
        "examples/resnet_cifar10.arch",
        plan.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name_map"]["conv2_2.conv1"], "conv2_3.conv1");
    assert_eq!(v["steps"].as_array().unwrap().len(), 3);
    assert_eq!(v["evidence"].as_array().unwrap().len(), 2);
    assert!(v["student_arch"]
        .as_str()
        .unwrap()
        .contains("9x9, 8, stride 2"));
}

#[test]
fn a_bad_plan_line_names_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let plan = dir.join("bad.plan");
    std::fs::write(
        &plan,
        "deepen --after conv2_1\ndeepen --after conv2_1.conv1\n",
    )
    .unwrap();
    let out = r2rc(&[
        "apply",
        "examples/resnet_cifar10.arch",
        plan.to_str().unwrap(),
        "-o",
        dir.join("o").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.plan:2:")
            && err.contains("cannot insert R2DeeperR inside block `conv2_1`"),
        "{err}"
    );
    assert!(
        !dir.join("o").exists(),
        "nothing is written on a failed plan"
    );
    std::fs::write(&plan, "shrink --layer conv1\n").unwrap();
    let out = r2rc(&[
        "apply",
        "examples/resnet_cifar10.arch",
        plan.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.plan:1: cannot read plan line"));
    // A widen line without an amount says which flags are missing.
    std::fs::write(&plan, "# grow\nwiden --layer conv2_1\n").unwrap();
    let out = r2rc(&[
        "apply",
        "examples/resnet_cifar10.arch",
        plan.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.plan:2: cannot read plan line `widen --layer conv2_1`")
            && err.contains("not provided: <--by <BY>|--to <TO>|--add <ADD>>"),
        "{err}"
    );
}

#[test]
fn deepen_command_outputs_and_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    let d = dir.to_str().unwrap();
    let out = r2rc(&[
        "deepen",
        "examples/resnet_cifar10.arch",
        "--after",
        "conv2_1",
        "-o",
        d,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "resnet_cifar10.arch",
        "resnet_cifar10.safetensors",
        "report.json",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }
    let report = json(&dir.join("report.json"));
    assert_report_fields(&report);
    assert_eq!(report["name_map"]["conv2_2.conv1"], "conv2_3.conv1");
    let meta = r2rc::params::load_metadata(&dir.join("resnet_cifar10.safetensors")).unwrap();
    assert_eq!(meta["r2rc.method"], "r2r");
    // Existing outputs are not overwritten without --force.
    let again = r2rc(&[
        "deepen",
        "examples/resnet_cifar10.arch",
        "--after",
        "conv2_1",
        "-o",
        d,
    ]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    // A refused insertion writes nothing and exits 2.
    let bad_dir = tmp.path().join("bad");
    let bad = r2rc(&[
        "deepen",
        "examples/resnet_cifar10.arch",
        "--after",
        "conv2_1",
        "--width",
        "5",
        "-o",
        bad_dir.to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("even hidden width"));
    assert!(!bad_dir.exists());
    // Net2DeeperNet: eval proved, train deviation reported, exit 0.
    let n2n = r2rc(&[
        "deepen",
        "examples/resnet_cifar10.arch",
        "--after",
        "conv3_1",
        "--method",
        "net2net",
        "--json",
    ]);
    assert!(
        n2n.status.success(),
        "{}",
        String::from_utf8_lossy(&n2n.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&n2n.stdout).unwrap();
    assert_eq!(v["exactness"], "eval_only");
    assert!(v["notes"]
        .to_string()
        .contains("not function preserving in train mode"));
}

/// `apply --prove local` with weights and -o streams every step through a scratch file:
/// the same student as in memory (bit for bit), each step proved on its region, sharded
/// output, no scratch left; a failing step leaves nothing; without weights it is refused.
#[test]
fn streamed_plan_matches_the_in_memory_plan() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let w = dir.join("t.safetensors");
    init_weights(&ex("resnet_cifar10"), &w, &["--random-stats"]);
    let plan = dir.join("mixed.plan");
    std::fs::write(
        &plan,
        "# every kind of step\ndeepen --after conv2_2 --method r2r\nwiden --layer conv2_1 --by 1.5\nmorph --layer conv3_1.conv1 --kernel 5\ndeepen --after conv3_x --method netmorph-dense\nname Grown\n",
    )
    .unwrap();
    let (mem, st) = (dir.join("mem"), dir.join("st"));
    // The scratch folder of a killed run (its process is gone) is cleared; others stay.
    let stale = st.join(".r2rc-apply.4294967295.tmp");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("step1.safetensors"), b"half written").unwrap();
    let run = |out: &Path, extra: &[&str]| {
        let mut a = vec![
            "apply",
            "examples/resnet_cifar10.arch",
            s(&plan),
            "--weights",
            s(&w),
            "-o",
            s(out),
        ];
        a.extend_from_slice(extra);
        r2rc(&a)
    };
    let o = run(&mem, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&st, &["--prove", "local", "--shard-size", "30kB"]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err}");
    // Four proved steps, eval and train each (NetMorph-dense has a tolerance note).
    assert_eq!(err.matches("proof: ").count(), 8, "{err}");
    assert_eq!(
        tensors(&mem.join("resnet_cifar10.safetensors")),
        tensors(&st),
        "streamed and in-memory students differ"
    );
    let arch =
        |d: &Path| canonical(&std::fs::read_to_string(d.join("resnet_cifar10.arch")).unwrap());
    assert_eq!(arch(&mem), arch(&st));
    let names = listing(&st);
    assert!(names.iter().all(|f| !f.starts_with('.')), "{names:?}");
    assert!(!stale.exists());
    assert!(
        names.iter().filter(|f| f.ends_with(".safetensors")).count() > 2,
        "{names:?}"
    );
    let report = std::fs::read_to_string(st.join("report.json")).unwrap();
    assert!(
        report.contains("proves the plan by composition"),
        "{report}"
    );
    // A failing step: nothing written, no scratch left.
    let bad = dir.join("bad.plan");
    std::fs::write(&bad, "deepen --after conv2_2\nwiden --layer nope --by 2\n").unwrap();
    let out = dir.join("bad");
    let o = r2rc(&[
        "apply",
        "examples/resnet_cifar10.arch",
        s(&bad),
        "--weights",
        s(&w),
        "-o",
        s(&out),
        "--prove",
        "local",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.plan:2:"));
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
    // Local proofs need the streamed path.
    let o = r2rc(&[
        "apply",
        "examples/resnet_cifar10.arch",
        s(&plan),
        "--prove",
        "local",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("needs --weights and -o"));
}
