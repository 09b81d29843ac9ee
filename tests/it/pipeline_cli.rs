//! What the rewrite pipeline promises at the command line: a rewrite's outputs appear
//! together or not at all (killed at every step of the commit, streamed, sharded, over an
//! earlier set with --force), `--threads N` works on every command, and targets may be
//! written in the weights' naming scheme.

use std::path::Path;

use crate::common::{command, ex, init_weights, listing, ok, run, s, text};

/// Runs `r2rc ARGS` killed (as `kill -9` would) at commit step `k`.
fn killed_at(args: &[&str], k: usize) -> i32 {
    command(args)
        .env("R2RC_TEST_KILL_AT", k.to_string())
        .output()
        .unwrap()
        .status
        .code()
        .unwrap_or(-1)
}

/// The visible files of a folder and their bytes (r2rc's temporary files start with `.`).
fn visible(dir: &Path) -> Vec<(String, Vec<u8>)> {
    if !dir.exists() {
        return vec![];
    }
    listing(dir)
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .map(|n| {
            let b = std::fs::read(dir.join(&n)).unwrap();
            (n, b)
        })
        .collect()
}

/// A report.json without its `timings` (seconds differ from run to run).
fn untimed(bytes: &[u8]) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    v.as_object_mut().unwrap().remove("timings");
    v
}

/// For one rewrite: killed at every commit step, the folder then holds (after the next
/// run's recovery) either nothing of the new set or all of it, byte for byte what an
/// uninterrupted run writes; never a part.
fn all_or_nothing(base: &[&str], tmp: &Path, tag: &str) {
    let reference = tmp.join(format!("{tag}-ref"));
    let mut a = base.to_vec();
    a.extend(["-o", s(&reference)]);
    ok(&a);
    let want = visible(&reference);
    assert!(want.len() >= 3, "{tag}: {want:?}");
    let steps = want.len() + 2; // the journal, each rename, the journal's removal
    for k in 0..steps {
        let out = tmp.join(format!("{tag}-k{k}"));
        let mut a = base.to_vec();
        a.extend(["-o", s(&out)]);
        assert_eq!(killed_at(&a, k), 137, "{tag}: not killed at step {k}");
        // Before the journal nothing is visible; after it, a rerun rolls the set forward.
        let (code, _, err) = run(&a);
        let got = visible(&out);
        if k == 0 {
            assert_eq!(code, 0, "{tag} k={k}: {err}");
        } else {
            assert_eq!(
                code, 2,
                "{tag} k={k}: the set was complete, so a rerun refuses"
            );
            assert!(err.contains("--force"), "{err}");
        }
        assert_eq!(got.len(), want.len(), "{tag} k={k}: {:?}", listing(&out));
        for ((n, b), (wn, wb)) in got.iter().zip(&want) {
            assert_eq!(n, wn);
            assert!(
                b == wb || n == "report.json" && untimed(b) == untimed(wb),
                "{tag} k={k}: {n} differs from the uninterrupted run's"
            );
        }
        assert!(
            listing(&out).iter().all(|n| !n.starts_with(".r2rc")),
            "{tag} k={k}: leftovers {:?}",
            listing(&out)
        );
    }
}

#[test]
fn outputs_appear_together_when_killed_at_every_commit_step() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("t.safetensors");
    let arch = ex("resnet_cifar10");
    init_weights(&arch, &w, &["--set", "r=1/4", "--random-stats"]);
    let common = ["--weights", s(&w), "--set", "r=1/4", "--inputs", "1"];
    let mut widen = vec!["widen", &arch, "--layer", "conv2_x", "--by", "1.5"];
    widen.extend(common);
    all_or_nothing(&widen, dir.path(), "widen");
    // Streamed and sharded.
    let mut streamed = widen.clone();
    streamed.extend(["--no-prove", "--shard-size", "20KB"]);
    all_or_nothing(&streamed, dir.path(), "streamed");
    let mut deepen = vec!["deepen", &arch, "--after", "conv2_1"];
    deepen.extend(common);
    all_or_nothing(&deepen, dir.path(), "deepen");
}

#[test]
fn force_over_an_earlier_set_is_all_or_nothing_too() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("t.safetensors");
    let arch = ex("smallconv");
    init_weights(&arch, &w, &[]);
    let out = dir.path().join("o");
    let a = |by: &'static str| -> Vec<String> {
        [
            "widen",
            &arch,
            "--layer",
            "conv1",
            "--by",
            by,
            "--weights",
            s(&w),
            "-o",
            s(&out),
            "--force",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let first = a("1.5");
    let first_args: Vec<&str> = first.iter().map(|x| x.as_str()).collect();
    ok(&first_args);
    let old = visible(&out);
    let second = a("2");
    let second_args: Vec<&str> = second.iter().map(|x| x.as_str()).collect();
    // Killed after the first rename: the next run finishes the new set before its own.
    assert_eq!(killed_at(&second_args, 2), 137);
    let mut check: Vec<&str> = second_args.clone();
    check.retain(|x| *x != "--force");
    let (code, _, err) = run(&check);
    assert_eq!(code, 2, "{err}");
    let new = visible(&out);
    assert_eq!(new.len(), old.len());
    let file = |n: &str| &new.iter().find(|(m, _)| m == n).unwrap().1;
    let report: serde_json::Value = serde_json::from_slice(file("report.json")).unwrap();
    assert_eq!(report["spaces"][0]["to"], 32, "{report}");
    let arch_text = text(file("smallconv.arch"));
    assert!(arch_text.contains("conv1 16->32"), "{arch_text}");
    assert_ne!(file("smallconv.safetensors"), &old[2].1);
}

#[test]
fn run_threads_one_and_two_work_and_agree() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("t.safetensors");
    let arch = ex("smallconv");
    init_weights(&arch, &w, &[]);
    let mut outs = Vec::new();
    for t in ["1", "2"] {
        let y = dir.path().join(format!("y{t}.npy"));
        let (code, _, err) = run(&[
            "run",
            &arch,
            "--weights",
            s(&w),
            "--random",
            "3",
            "--threads",
            t,
            "--output",
            s(&y),
            "--repeat",
            "1",
        ]);
        assert_eq!(code, 0, "--threads {t}: {err}");
        assert!(err.contains(&format!("{t} threads")), "{err}");
        outs.push(std::fs::read(&y).unwrap());
    }
    assert_eq!(outs[0], outs[1]);
    let (code, _, err) = run(&["run", &arch, "--weights", s(&w), "--threads", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("--threads must be at least 1"), "{err}");
}

#[test]
fn every_command_takes_threads_and_a_rewrite_gives_the_same_bytes_on_each() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("t.safetensors");
    let arch = ex("smallconv");
    init_weights(&arch, &w, &["--random-stats"]);
    let mut outs = Vec::new();
    for t in ["1", "2"] {
        let o = dir.path().join(format!("wide{t}"));
        // Before the command and after it: a global option.
        let (code, _, err) = run(&[
            "--threads",
            t,
            "widen",
            &arch,
            "--all",
            "--by",
            "1.5",
            "--weights",
            s(&w),
            "-o",
            s(&o),
        ]);
        assert_eq!(code, 0, "--threads {t}: {err}");
        let (code, _, err) = run(&["deepen", &arch, "--after", "conv1", "--threads", t]);
        assert_eq!(code, 0, "deepen --threads {t}: {err}");
        outs.push(visible(&o));
    }
    assert!(!outs[0].is_empty());
    let bytes = |v: &[(String, Vec<u8>)], n: &str| v.iter().find(|f| f.0 == n).unwrap().1.clone();
    assert_eq!(
        bytes(&outs[0], "smallconv.safetensors"),
        bytes(&outs[1], "smallconv.safetensors")
    );
    assert_eq!(
        bytes(&outs[0], "smallconv.arch"),
        bytes(&outs[1], "smallconv.arch")
    );
    let (code, _, err) = run(&["check", &arch, "--threads", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("--threads must be at least 1"), "{err}");
}

#[test]
fn targets_may_use_torchvision_module_names() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("tv.safetensors");
    let arch = ex("resnet18");
    init_weights(&arch, &w, &["--names", "torchvision", "--random-stats"]);
    let tv = ["--weights", s(&w), "--names", "torchvision", "--no-prove"];
    let wide = dir.path().join("wide");
    let mut a = vec![
        "widen",
        &arch,
        "--layer",
        "layer2.0.conv1",
        "--by",
        "1.5",
        "-o",
        s(&wide),
    ];
    a.extend(tv);
    let err = text(&ok(&a).stderr);
    assert!(err.contains("conv3_1.conv1 (layer2.0.conv1)"), "{err}");
    let deep = dir.path().join("deep");
    let mut a = vec!["deepen", &arch, "--after", "layer3.1", "-o", s(&deep)];
    a.extend(tv);
    let err = text(&ok(&a).stderr);
    assert!(err.contains("after conv4_2"), "{err}");
    let morph = dir.path().join("morph");
    let mut a = vec![
        "morph",
        &arch,
        "--layer",
        "layer1.0.conv1",
        "--kernel",
        "5",
        "-o",
        s(&morph),
    ];
    a.extend(tv);
    let err = text(&ok(&a).stderr);
    assert!(err.contains("conv2_1.conv1: kernel 3x3 -> 5x5"), "{err}");
    // An unknown module is refused with the nearest spelling, and nothing is written.
    let bad = dir.path().join("bad");
    let mut a = vec![
        "widen",
        &arch,
        "--layer",
        "layer2.0.conv9",
        "--by",
        "1.5",
        "-o",
        s(&bad),
    ];
    a.extend(tv);
    let (code, _, err) = run(&a);
    assert_eq!(code, 2);
    assert!(err.contains("did you mean `layer2.0.conv1`"), "{err}");
    assert!(!bad.exists());
}

#[test]
fn stage_widens_the_stream_and_every_blocks_hidden_width() {
    let (code, _, stream_only) = run(&[
        "widen",
        &ex("resnet_cifar10"),
        "--layer",
        "conv3_x",
        "--by",
        "1.5",
        "--inputs",
        "1",
    ]);
    assert_eq!(code, 0, "{stream_only}");
    let (code, _, whole) = run(&[
        "widen",
        &ex("resnet_cifar10"),
        "--stage",
        "conv3_x",
        "--by",
        "1.5",
        "--inputs",
        "1",
    ]);
    assert_eq!(code, 0, "{whole}");
    let spaces = |e: &str| e.lines().filter(|l| l.starts_with("widened space")).count();
    // The stream, then conv3_1's and conv3_2's hidden widths, proved together.
    assert_eq!(spaces(&stream_only), 1, "{stream_only}");
    assert_eq!(spaces(&whole), 3, "{whole}");
    assert!(whole.contains("from 16 to 24 channels"), "{whole}");
    assert!(whole.contains("passed"), "{whole}");
    let (code, _, err) = run(&[
        "widen",
        &ex("resnet_cifar10"),
        "--stage",
        "conv3x",
        "--by",
        "1.5",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("`conv3x`") && err.contains("did you mean `conv3_x`"),
        "{err}"
    );
}

#[test]
fn name_sets_the_students_arch_line_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    ok(&[
        "deepen",
        &ex("resnet_cifar10"),
        "--after",
        "conv3_x",
        "--name",
        "ResNetCifar12",
        "-o",
        s(&out),
        "--inputs",
        "1",
    ]);
    assert_eq!(
        listing(&out),
        [
            "ResNetCifar12.arch",
            "ResNetCifar12.safetensors",
            "report.json"
        ]
    );
    let text = std::fs::read_to_string(out.join("ResNetCifar12.arch")).unwrap();
    assert!(text.contains("\narch ResNetCifar12"), "{text}");
    let (code, _, err) = run(&[
        "widen",
        &ex("smallconv"),
        "--layer",
        "conv1",
        "--by",
        "2",
        "--name",
        "my/net",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("--name my/net"), "{err}");
}

#[test]
fn plan_lines_may_use_torchvision_module_names() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("tv.safetensors");
    let arch = ex("resnet18");
    init_weights(&arch, &w, &["--names", "torchvision", "--random-stats"]);
    let plan = dir.path().join("p.plan");
    // layer3.1 is r2rc's conv4_2; after the deepening, layer2 is still conv3_x.
    std::fs::write(
        &plan,
        "deepen --after layer3.1\nwiden --stage layer2 --by 1.5\nmorph --layer layer1.0.conv1 --kernel 5\n",
    )
    .unwrap();
    let out = dir.path().join("o");
    let err = text(
        &ok(&[
            "apply",
            &arch,
            s(&plan),
            "--weights",
            s(&w),
            "--names",
            "torchvision",
            "--no-prove",
            "-o",
            s(&out),
        ])
        .stderr,
    );
    assert!(err.contains("after conv4_2"), "{err}");
    assert!(err.contains("conv2_1.conv1: kernel 3x3 -> 5x5"), "{err}");
    let report = crate::common::json(&out.join("report.json"));
    assert_eq!(report["steps"][1]["site"], "--stage conv3_x", "{report}");
}

/// One tolerance rule: a rewrite of an f16 teacher and `prove` on the same pair judge
/// alike. Net2Net divides weights (values f16 cannot hold): both allow f16's storage
/// error and pass; R2R computes nothing f16 cannot hold, so `prove` keeps 1e-9 for its
/// student (read from the student's metadata), and a damaged student fails either way.
#[test]
fn widen_and_prove_judge_an_f16_pair_by_the_same_rule() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let arch = ex("resnet_cifar10");
    let teacher = d.join("t16.safetensors");
    init_weights(
        &arch,
        &teacher,
        &["--dtype", "f16", "--random-stats", "--set", "r=1/4"],
    );
    let widen = |method: &str, out: &Path| {
        let o = ok(&[
            "widen",
            &arch,
            "--set",
            "r=1/4",
            "--layer",
            "conv2_1.conv1",
            "--by",
            "1.5",
            "--method",
            method,
            "--weights",
            s(&teacher),
            "-o",
            s(out),
        ]);
        text(&o.stderr)
    };
    let prove = |student: &Path| {
        run(&[
            "prove",
            &arch,
            s(&teacher),
            &format!("{}/resnet_cifar10.arch", s(student)),
            &format!("{}/resnet_cifar10.safetensors", s(student)),
            "--set",
            "r=1/4",
        ])
    };
    let n2n = d.join("n2n");
    let said = widen("net2net", &n2n);
    assert!(
        said.contains("stored as f16") && said.contains("tolerance 1e-2"),
        "{said}"
    );
    let (code, out, err) = prove(&n2n);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("stored as f16") && out.contains("tolerance 1e-2"),
        "{out}{err}"
    );
    let r2r = d.join("r2r");
    let said = widen("r2r", &r2r);
    assert!(
        !said.contains("stored as f16") && said.contains("tolerance 1e-9"),
        "{said}"
    );
    let (code, out, err) = prove(&r2r);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !err.contains("stored as f16") && out.contains("tolerance 1e-9"),
        "{out}{err}"
    );
    // A student with one weight changed fails the same proof, naming where it parts.
    let w = r2r.join("resnet_cifar10.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 0x40;
    std::fs::write(&w, bytes).unwrap();
    let (code, out, err) = prove(&r2r);
    assert_eq!(code, 1, "{out}{err}");
}
