//! Checkpoints as PyTorch users have them: state dicts without `num_batches_tracked`
//! (older torchvision weights), from DistributedDataParallel (`module.` before every name)
//! or both, in one file or sharded, read by `run`, `prove`, `widen` and `deepen` in memory
//! and streamed; and `prove --names`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{serialize, SafeTensors, TensorView};

use crate::common::{self, ex, listing, r2rc, s, text};

/// Runs r2rc, which must succeed; its stderr.
fn ok(args: &[&str]) -> String {
    text(&common::ok(args).stderr)
}

type Rename = fn(&str) -> Option<String>;

fn ddp(k: &str) -> Option<String> {
    Some(format!("module.{k}"))
}

fn old(k: &str) -> Option<String> {
    (!k.ends_with(".num_batches_tracked")).then(|| k.to_string())
}

fn ddp_old(k: &str) -> Option<String> {
    old(k).and_then(|k| ddp(&k))
}

/// The variants, with the notes r2rc gives for each.
const VARIANTS: [(&str, Rename, &[&str]); 3] = [
    ("ddp", ddp, &["`module.`"]),
    ("old", old, &["num_batches_tracked"]),
    ("ddp_old", ddp_old, &["`module.`", "num_batches_tracked"]),
];

/// One safetensors file's bytes with every tensor renamed by `f` (dropped where it gives
/// None), written by the safetensors crate as PyTorch's `save_file` would.
fn rewrite_file(bytes: &[u8], f: Rename) -> Vec<u8> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let views: Vec<(String, TensorView)> = st
        .tensors()
        .into_iter()
        .filter_map(|(k, v)| Some((f(&k)?, v)))
        .collect();
    serialize(views, None).unwrap()
}

/// `src` (a weights file, or a folder of shards with its index) written at `dst` with
/// every tensor renamed by `f`.
fn rewrite(src: &Path, dst: &Path, f: Rename) {
    if src.is_file() {
        std::fs::write(dst, rewrite_file(&std::fs::read(src).unwrap(), f)).unwrap();
        return;
    }
    std::fs::create_dir_all(dst).unwrap();
    for name in listing(src) {
        let bytes = std::fs::read(src.join(&name)).unwrap();
        let out = if name.ends_with(".index.json") {
            let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let map: BTreeMap<String, String> =
                serde_json::from_value(v["weight_map"].clone()).unwrap();
            let map: BTreeMap<String, String> = map
                .into_iter()
                .filter_map(|(k, file)| Some((f(&k)?, file)))
                .collect();
            v["weight_map"] = serde_json::to_value(map).unwrap();
            serde_json::to_vec(&v).unwrap()
        } else {
            rewrite_file(&bytes, f)
        };
        std::fs::write(dst.join(&name), out).unwrap();
    }
}

/// `r2rc run` of `arch` on 2 seeded inputs: the output .npy's bytes and the stderr.
fn run(arch: &str, weights: &Path, names: &str, dir: &Path) -> (Vec<u8>, String) {
    let y = dir.join("y.npy");
    let err = ok(&[
        "run",
        arch,
        "--weights",
        s(weights),
        "--names",
        names,
        "--random",
        "2",
        "--seed",
        "3",
        "--output",
        s(&y),
        "--force",
    ]);
    (std::fs::read(&y).unwrap(), err)
}

/// The `.arch` and the weights (a file or, when sharded, the index) in an output folder.
fn student(dir: &Path) -> (PathBuf, PathBuf) {
    let files = listing(dir);
    let find = |suffix: &str| {
        files
            .iter()
            .find(|f| f.ends_with(suffix))
            .map(|f| dir.join(f))
    };
    let arch = find(".arch").unwrap();
    let weights = find(".safetensors.index.json")
        .or_else(|| find(".safetensors"))
        .unwrap();
    (arch, weights)
}

fn init(arch: &str, out: &Path, names: &str, shard: Option<&str>) {
    let mut a = vec![
        "init",
        arch,
        "--random-stats",
        "--seed",
        "5",
        "--names",
        names,
        "-o",
        s(out),
    ];
    if let Some(size) = shard {
        a.extend(["--shard-size", size]);
    }
    ok(&a);
}

#[test]
fn run_reads_ddp_and_counterless_checkpoints_like_plain_ones() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let arch = ex("resnet_cifar10");
    for names in ["r2rc", "torchvision"] {
        let plain = d.join(format!("{names}.safetensors"));
        init(&arch, &plain, names, None);
        // A sharded set of the same weights: a folder of shards with its index.
        let set = d.join(format!("{names}_set"));
        std::fs::create_dir(&set).unwrap();
        init(&arch, &set.join("w.safetensors"), names, Some("20KB"));
        assert!(listing(&set).len() > 2, "{:?}", listing(&set));
        let (want, _) = run(&arch, &plain, names, d);
        assert_eq!(run(&arch, &set, names, d).0, want);
        for (what, f, _) in VARIANTS {
            let single = d.join(format!("{names}_{what}.safetensors"));
            rewrite(&plain, &single, f);
            assert_eq!(run(&arch, &single, names, d).0, want, "{names} {what}");
            let sharded = d.join(format!("{names}_{what}_set"));
            rewrite(&set, &sharded, f);
            assert_eq!(
                run(&arch, &sharded, names, d).0,
                want,
                "{names} {what} sharded"
            );
        }
    }
}

#[test]
fn widen_and_deepen_grow_such_checkpoints_streamed_and_in_memory_and_prove_checks_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let arch = ex("resnet_cifar10");
    let plain = d.join("tv.safetensors");
    init(&arch, &plain, "torchvision", None);
    let set = d.join("tv_set");
    std::fs::create_dir(&set).unwrap();
    init(
        &arch,
        &set.join("w.safetensors"),
        "torchvision",
        Some("20KB"),
    );
    for (what, f, notes) in VARIANTS {
        for (how, src) in [("single", &plain), ("sharded", &set)] {
            let teacher = d.join(format!("{what}_{how}"));
            rewrite(src, &teacher, f);
            let tv = ["--names", "torchvision", "--weights", s(&teacher)];
            let mut grown = Vec::new();
            // Streamed (--no-prove), sharded output; in memory with the full proof.
            let out = d.join(format!("{what}_{how}_widen_streamed"));
            let widen = ["widen", &arch, "--layer", "conv3_1.conv1", "--add", "2"];
            ok(&[
                &widen[..],
                &tv,
                &["--no-prove", "--shard-size", "20KB", "-o", s(&out)],
            ]
            .concat());
            grown.push(out);
            let out = d.join(format!("{what}_{how}_widen"));
            ok(&[&widen[..], &tv, &["-o", s(&out)]].concat());
            grown.push(out);
            let out = d.join(format!("{what}_{how}_deepen_streamed"));
            // Inside a row: the new block renames the row's later blocks, which prove
            // follows through the student's recorded name map.
            let deepen = ["deepen", &arch, "--after", "conv3_1"];
            ok(&[&deepen[..], &tv, &["--no-prove", "-o", s(&out)]].concat());
            grown.push(out);
            for out in grown {
                let (s_arch, s_weights) = student(&out);
                let err = ok(&[
                    "prove",
                    &arch,
                    s(&teacher),
                    s(&s_arch),
                    s(&s_weights),
                    "--names",
                    "torchvision",
                ]);
                // The notes are the teacher's: the student is a plain state_dict.
                for n in notes {
                    assert!(
                        err.lines()
                            .any(|l| l.starts_with("note: ") && l.contains(n)),
                        "{what} {how} {}: {err}",
                        out.display()
                    );
                }
                // One note per variant, none for the student (other notes, such as the
                // tolerance rule's for f32 weights, are not counted).
                let said = err
                    .lines()
                    .filter(|l| l.contains("`module.`") || l.contains("num_batches_tracked"))
                    .count();
                assert_eq!(said, notes.len(), "{err}");
            }
        }
    }
}

#[test]
fn prove_reads_torchvision_names_and_hints_at_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let arch = ex("resnet_cifar10");
    let tv = d.join("tv.safetensors");
    let ours = d.join("ours.safetensors");
    init(&arch, &tv, "torchvision", None);
    init(&arch, &ours, "r2rc", None);
    let widen = ["widen", &arch, "--layer", "conv3_x", "--add", "2", "-o"];
    let out_tv = d.join("tv_student");
    ok(&[
        &widen[..],
        &[s(&out_tv), "--weights", s(&tv), "--names", "torchvision"],
    ]
    .concat());
    let (s_arch, s_tv) = student(&out_tv);
    let out_ours = d.join("ours_student");
    ok(&[&widen[..], &[s(&out_ours), "--weights", s(&ours)]].concat());
    let (_, s_ours) = student(&out_ours);

    // Without --names, torchvision weights are refused with the flag that reads them,
    // not a guess at another architecture.
    let o = r2rc(&["prove", &arch, s(&tv), s(&s_arch), s(&s_tv)]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(err.contains("pass --names torchvision"), "{err}");
    assert!(!err.contains("another architecture"), "{err}");
    // With it, both load and the pair is proved.
    let o = common::ok(&[
        "prove",
        &arch,
        s(&tv),
        s(&s_arch),
        s(&s_tv),
        "--names",
        "torchvision",
    ]);
    assert!(text(&o.stdout).contains("eval"), "{}", text(&o.stdout));
    // Teacher and student in different namings (the same seed gives the same values).
    ok(&[
        "prove",
        &arch,
        s(&tv),
        s(&s_arch),
        s(&s_ours),
        "--names",
        "torchvision",
        "--student-names",
        "r2rc",
    ]);
    let o = r2rc(&[
        "prove",
        &arch,
        s(&tv),
        s(&s_arch),
        s(&s_ours),
        "--names",
        "torchvision",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(err.contains("pass --student-names r2rc"), "{err}");
    let o = r2rc(&[
        "prove",
        &arch,
        s(&tv),
        s(&s_arch),
        s(&s_tv),
        "--names",
        "tv",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("r2rc and torchvision"));
}

#[test]
fn a_prefix_on_only_some_names_is_refused_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let arch = ex("resnet_cifar10");
    let plain = d.join("w.safetensors");
    init(&arch, &plain, "r2rc", None);
    let mixed = d.join("mixed.safetensors");
    fn some(k: &str) -> Option<String> {
        Some(if k.starts_with("head.") {
            format!("module.{k}")
        } else {
            k.to_string()
        })
    }
    rewrite(&plain, &mixed, some);
    for args in [
        vec!["run", &arch, "--weights", s(&mixed)],
        vec![
            "widen",
            &arch,
            "--layer",
            "conv1",
            "--add",
            "2",
            "--weights",
            s(&mixed),
            "--no-prove",
            "-o",
            s(&d.join("out")),
        ],
    ] {
        let o = r2rc(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = text(&o.stderr);
        assert!(
            err.contains("lacks tensor `head.fc.") || err.contains("lack tensor `head.fc."),
            "{err}"
        );
        assert!(err.contains("`module.head.fc."), "{err}");
        assert!(err.contains("model.module.state_dict()"), "{err}");
    }
}

/// How a checkpoint was read reaches every rewrite's report (report.json and the .arch
/// header), in memory and streamed, and `run`'s stderr.
#[test]
fn rewrites_report_how_the_checkpoint_was_read() {
    let dir = tempfile::tempdir().unwrap();
    let arch = ex("smallconv");
    let plain = dir.path().join("plain.safetensors");
    init(&arch, &plain, "r2rc", None);
    let w = dir.path().join("ddp_old.safetensors");
    rewrite(&plain, &w, ddp_old);
    let err = ok(&["run", &arch, "--weights", s(&w)]);
    assert!(err.contains("note:") && err.contains("`module.`"), "{err}");
    let plan = dir.path().join("p.plan");
    std::fs::write(&plan, "widen --layer conv1 --by 1.5\n").unwrap();
    let runs: [(&str, &[&str]); 5] = [
        (
            "widen",
            &["widen", &arch, "--layer", "conv1", "--by", "1.5"],
        ),
        (
            "widen_streamed",
            &[
                "widen",
                &arch,
                "--layer",
                "conv1",
                "--by",
                "1.5",
                "--no-prove",
            ],
        ),
        ("deepen", &["deepen", &arch, "--after", "conv1"]),
        (
            "deepen_streamed",
            &["deepen", &arch, "--after", "conv1", "--no-prove"],
        ),
        ("apply", &["apply", &arch, s(&plan)]),
    ];
    for (tag, a) in runs {
        let out = dir.path().join(tag);
        let mut a = a.to_vec();
        a.extend(["--weights", s(&w), "-o", s(&out)]);
        ok(&a);
        let report = common::json(&out.join("report.json"));
        let notes = report["notes"].to_string();
        for want in ["`module.`", "num_batches_tracked"] {
            assert!(notes.contains(want), "{tag}: {notes}");
        }
        let head = std::fs::read_to_string(out.join("smallconv.arch")).unwrap();
        assert!(
            head.contains("# note:") && head.contains("`module.`"),
            "{tag}: {head}"
        );
    }
}
