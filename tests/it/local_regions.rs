//! Local proofs by region and full proofs that skip what equals the teacher by construction
//! (issue 16's proof cost, issue 17's DenseNet): a DenseNet's widened spaces overlap (each
//! concatenation is read by every later layer), so their steps share regions and prove
//! exactly, with fewer regions than spaces; a full proof still counts every shared value
//! and still sees a changed weight upstream of the widening; report.json times its phases.

use r2rc::ir::Graph;
use r2rc::local_proof::{
    prove_step, region_tensors, steps_space, widening_costs, widening_regions,
};
use r2rc::patch::Step;
use r2rc::pipeline::{self, Proof};
use r2rc::prove::{check_equivalence, ProveOptions};
use r2rc::transform::{graph_steps, widen, Amount, Method, Target, Widening};

use crate::common::{example, ok, s, teacher, widen_args};

/// A small DenseNet: four dense blocks (one with grouped convs) and three transitions.
const DENSE: &str = "arch D(k = 4)
input 3x16x16
preact

conv0       16x16  3x3, 8
dense1_x    16x16  [1x1, 2k; 3x3, k, C=2] x 3, dense
trans1      8x8    transition 0.5
dense2_x    8x8    [1x1, 2k; 3x3, k] x 2, dense
trans2      4x4    transition 0.5
dense3_x    4x4    [1x1, 2k; 3x3, k] x 2, dense
trans3      2x2    transition 0.5
dense4_x    2x2    [1x1, 2k; 3x3, k] x 2, dense
classifier  1x1    avg pool, 10-d fc
";

fn compile(src: &str) -> Graph {
    r2rc::lower::compile(src, &[]).unwrap()
}

/// The local proof of widening every space of a DenseNet: regions that overlap run as one
/// (fewer regions than spaces, every step in one region, in order), each proves within its
/// tolerance in both modes, and the student is the in-memory widening's.
#[test]
fn densenet_local_proof_runs_overlapping_regions_as_one() {
    let g = compile(DENSE);
    let tp = teacher(&g, 3);
    for method in [Method::R2r, Method::Netmorph, Method::Net2net] {
        let a = widen_args(Target::All, Amount::By(2.0), method);
        let w = Widening::new(&g, &a, 1, &|n| tp.tensors.contains_key(n)).unwrap();
        let groups = widening_regions(&w);
        let steps = w.plan.steps.len();
        assert!(
            groups.len() < steps,
            "{method:?}: {groups:?} of {steps} steps"
        );
        assert_eq!(groups.first().unwrap().start, 0);
        assert_eq!(groups.last().unwrap().end, steps);
        assert!(groups
            .windows(2)
            .all(|p| p[0].end == p[1].start && p[0].start < p[0].end));
        let proof = Proof::Local(&ProveOptions::default());
        let o = pipeline::run(&g, &tp, &Step::Widen(a.clone()), 1, proof, "t")
            .unwrap_or_else(|e| panic!("{method:?}: {e}"));
        let ev = &o.report.evidence;
        assert_eq!(ev.len(), 2, "{method:?}: eval and train");
        let regions = format!("(local, {} regions)", groups.len());
        for e in ev {
            assert!(e.mode.ends_with(&regions), "{method:?}: {e:?}");
            assert!(
                e.passed && e.values > 0 && e.max_rel_err <= e.tolerance,
                "{method:?}: {e:?}"
            );
        }
        assert_eq!(
            o.params,
            widen(&g, &tp, &a, 1).unwrap().params,
            "{method:?}"
        );
    }
    // One space: one region.
    let a = widen_args(
        Target::Name("dense1_2.conv2".into()),
        Amount::By(2.0),
        Method::R2r,
    );
    let proof = Proof::Local(&ProveOptions::default());
    let o = pipeline::run(&g, &tp, &Step::Widen(a), 1, proof, "t").unwrap();
    assert!(o
        .report
        .evidence
        .iter()
        .all(|e| e.passed && e.mode.ends_with("(local, 1 regions)")));
}

/// A merged region still catches a student that parts from the teacher: in the first
/// region holding several steps, one new input column of a layer off by a little fails
/// the region's proof there, in both modes, while the true tensors pass.
#[test]
fn a_merged_region_catches_a_wrong_column() {
    let g = compile(DENSE);
    let tp = teacher(&g, 3);
    let a = widen_args(Target::All, Amount::By(2.0), Method::R2r);
    let w = Widening::new(&g, &a, 1, &|n| tp.tensors.contains_key(n)).unwrap();
    let r = widening_regions(&w)
        .into_iter()
        .find(|r| r.len() > 1)
        .unwrap();
    let before = graph_steps(&g, &w.plan, 0..r.start).unwrap();
    let after = graph_steps(&before, &w.plan, r.clone()).unwrap();
    let space = steps_space(&w, r.clone());
    let t0 = |n: &str| w.tensor(n, tp.tensors[n].clone(), 0..r.start);
    // The region's last conv weight that gained input columns in these steps.
    let col = region_tensors(&after, &space)
        .into_iter()
        .rev()
        .filter(|n| n.ends_with(".weight"))
        .find_map(|n| {
            let (s0, s1) = (
                t0(&n).unwrap().shape().to_vec(),
                w.tensor(&n, t0(&n).unwrap(), r.clone())
                    .unwrap()
                    .shape()
                    .to_vec(),
            );
            if s0.len() == 4 && s1[1] > s0[1] {
                Some((n, s1[1] - 1))
            } else {
                None
            }
        })
        .unwrap();
    let prove = |bad: bool| {
        let mut after_t = |n: &str| {
            let mut t = w.tensor(n, t0(n)?, r.clone())?;
            if bad && n == col.0 {
                t[[0, col.1, 0, 0]] += 1e-3;
            }
            Ok(t)
        };
        prove_step(
            &before,
            &after,
            &space,
            &mut |n| t0(n),
            &mut after_t,
            &ProveOptions::default(),
        )
        .unwrap()
    };
    assert!(prove(false).iter().all(|e| e.passed && e.values > 0));
    let layer = col.0.trim_end_matches(".weight");
    for e in prove(true) {
        assert!(!e.passed, "{e:?}");
        assert_eq!(e.first_divergence.as_deref(), Some(layer), "{e:?}");
    }
}

/// The full proof does not rerun what the student computes exactly as the teacher does
/// (everything upstream of the first widened layer), yet it counts those values as
/// compared, every shared value as before, and a weight changed upstream is no longer
/// "the same": the proof runs it and names it.
#[test]
fn full_proof_skips_the_shared_prefix_but_not_a_changed_weight() {
    let g = example("resnet_cifar10");
    let tp = teacher(&g, 2);
    let a = widen_args(Target::Name("conv3_x".into()), Amount::By(1.5), Method::R2r);
    let w = widen(&g, &tp, &a, 0).unwrap();
    let ev = check_equivalence(&g, &tp, &w.graph, &w.params, &ProveOptions::default()).unwrap();
    let shared =
        g.g.node_indices()
            .filter(|&n| w.graph.find(&g.g[n].name).is_some())
            .count();
    for e in &ev {
        assert!(e.passed, "{e:?}");
        assert_eq!(e.values, shared, "{e:?}");
    }
    // conv1 is upstream of conv3_x: changed in the student, the proof parts there.
    let mut bad = w.params.clone();
    bad.tensors.get_mut("conv1.weight").unwrap()[[0, 0, 0, 0]] += 1e-3;
    let ev = check_equivalence(&g, &tp, &w.graph, &bad, &ProveOptions::default()).unwrap();
    for e in &ev {
        assert!(!e.passed, "{e:?}");
        assert_eq!(e.first_divergence.as_deref(), Some("conv1"), "{e:?}");
    }
}

/// report.json says how long each phase took: load, transform, prove and write with -o.
#[test]
fn report_json_times_each_phase() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    ok(&[
        "widen",
        "examples/resnet_cifar10.arch",
        "--layer",
        "conv2_1",
        "--by",
        "1.5",
        "-o",
        s(&out),
    ]);
    let r = crate::common::json(&out.join("report.json"));
    let t = &r["timings"];
    for phase in ["load", "transform", "prove", "write"] {
        let v = t[phase].as_f64().unwrap_or_else(|| panic!("{phase}: {t}"));
        assert!((0.0..600.0).contains(&v), "{phase}: {v}");
    }
}

/// On the command line (and in Python), a local proof of a widening whose regions would cost
/// more than teacher and student whole runs in full instead and says so; one space of a
/// ResNet stays local (its region is far cheaper).
#[test]
fn cli_local_proof_of_every_space_runs_in_full_when_cheaper() {
    let g = example("resnet_cifar10");
    let tp = teacher(&g, 2);
    let a = widen_args(Target::All, Amount::By(1.5), Method::R2r);
    let w = Widening::new(&g, &a, 1, &|n| tp.tensors.contains_key(n)).unwrap();
    let (local, full) = widening_costs(&w);
    assert!(local > full, "{local} vs {full}");
    let arch = "examples/resnet_cifar10.arch";
    let json = |a: &[&str]| -> serde_json::Value { serde_json::from_slice(&ok(a).stdout).unwrap() };
    let r = json(&[
        "widen", arch, "--all", "--by", "1.5", "--prove", "local", "--json",
    ]);
    let notes = r["notes"].to_string();
    assert!(
        notes.contains("proved in full rather than locally"),
        "{notes}"
    );
    let ev = r["evidence"].as_array().unwrap();
    assert_eq!(ev.len(), 2);
    for e in ev {
        assert!(e["passed"].as_bool().unwrap(), "{e}");
        assert!(!e["mode"].as_str().unwrap().contains("local"), "{e}");
    }
    let r = json(&[
        "widen", arch, "--layer", "conv3_x", "--by", "1.5", "--prove", "local", "--json",
    ]);
    assert!(!r["notes"].to_string().contains("in full"), "{r}");
    let ev = r["evidence"].as_array().unwrap();
    assert!(
        ev.iter()
            .all(|e| e["mode"].as_str().unwrap().ends_with("(local, 1 regions)")),
        "{r}"
    );
    // Streamed (weights and -o given) it also proves in full, and writes the student the
    // in-memory full proof writes.
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("t.safetensors");
    crate::common::init_weights(arch, &w, &["--random-stats"]);
    let (a, b) = (dir.path().join("streamed"), dir.path().join("memory"));
    let common = ["widen", arch, "--all", "--by", "1.5", "--weights", s(&w)];
    ok(&[&common[..], &["--prove", "local", "-o", s(&a)]].concat());
    ok(&[&common[..], &["-o", s(&b)]].concat());
    let r = crate::common::json(&a.join("report.json"));
    let notes = r["notes"].to_string();
    assert!(
        notes.contains("proved in full rather than locally"),
        "{notes}"
    );
    assert!(notes.contains("streamed"), "{notes}");
    for e in r["evidence"].as_array().unwrap() {
        assert!(e["passed"].as_bool().unwrap(), "{e}");
        assert!(!e["mode"].as_str().unwrap().contains("local"), "{e}");
    }
    let file = |d: &std::path::Path| std::fs::read(d.join("resnet_cifar10.safetensors")).unwrap();
    assert_eq!(file(&a), file(&b));
}
