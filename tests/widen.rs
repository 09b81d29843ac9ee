//! Widening: every exact method proves on every widenable space of every example, in both
//! batch-norm modes; Table 1's properties; the paper's widening experiment; refusals.

use r2rc::analysis::channel_spaces;
use r2rc::ir::Graph;
use r2rc::params::{self, DType, Params};
use r2rc::prove::{check_equivalence, Evidence, ProveOptions};
use r2rc::transform::{resize_input, widen, Amount, Init, Method, Target, WidenArgs};

fn example(name: &str, sets: &[(&str, &str)]) -> Graph {
    let path = format!("{}/examples/{name}.arch", env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(&path).unwrap();
    let sets: Vec<(String, String)> = sets
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    r2rc::lower::compile(&src, &sets).unwrap()
}

/// Every example; ImageNet nets shrunk to 64x64 inputs so debug-build proofs stay fast.
fn examples() -> Vec<(String, Graph)> {
    let mut v = Vec::new();
    let mut names: Vec<String> =
        std::fs::read_dir(format!("{}/examples", env!("CARGO_MANIFEST_DIR")))
            .unwrap()
            .filter_map(|e| {
                let p = e.unwrap().path();
                (p.extension()? == "arch")
                    .then(|| p.file_stem().unwrap().to_string_lossy().into_owned())
            })
            .collect();
    names.sort();
    for n in names {
        let g = example(&n, &[]);
        let g = if g.input_shape()[1] > 64 {
            resize_input(&g, &[3, 64, 64]).unwrap()
        } else {
            g
        };
        v.push((n, g));
    }
    v
}

/// A teacher with random biases and BN statistics, held in f64.
fn teacher(g: &Graph, seed: u64) -> Params {
    let mut p = params::init(g, seed, true);
    p.dtype = DType::F64;
    p
}

fn args(target: Target, amount: Amount, method: Method) -> WidenArgs {
    WidenArgs {
        target,
        amount,
        method,
        init: Init::Match,
        noise: None,
    }
}

fn prove(t: &Graph, tp: &Params, s: &Graph, sp: &Params) -> Vec<Evidence> {
    check_equivalence(t, tp, s, sp, &ProveOptions::default()).unwrap()
}

fn assert_exact(what: &str, ev: &[Evidence]) {
    assert_eq!(ev.len(), 2, "{what}: eval and train");
    for e in ev {
        assert!(
            e.passed && e.max_rel_err <= 1e-9,
            "{what}: {} (first divergence {:?})",
            e.summary(),
            e.first_divergence
        );
        assert!(e.values > 5, "{what}: compared only {} values", e.values);
    }
}

const EXACT: [Method; 3] = [Method::R2r, Method::Netmorph, Method::Net2net];

#[test]
fn exact_methods_prove_on_every_space_of_every_example() {
    for (name, g) in examples() {
        let tp = teacher(&g, 7);
        let spaces = channel_spaces(&g);
        let small = g.order().len() < 60;
        for method in EXACT {
            // All spaces at once, on every example.
            let w = widen(&g, &tp, &args(Target::All, Amount::Add(2), method), 3).unwrap();
            assert!(w.exact);
            assert_exact(
                &format!("{name} --all {method:?}"),
                &prove(&g, &tp, &w.graph, &w.params),
            );
            if !small {
                continue;
            }
            // Each widenable space on its own, named by its first member.
            for s in spaces.spaces.iter().filter(|s| s.widenable()) {
                let a = args(Target::Name(s.label.clone()), Amount::Add(4), method);
                let w = widen(&g, &tp, &a, 1).unwrap();
                assert_eq!(w.changes.len(), 1);
                assert_exact(
                    &format!("{name} {} {method:?}", s.label),
                    &prove(&g, &tp, &w.graph, &w.params),
                );
            }
        }
    }
}
