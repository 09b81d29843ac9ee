//! Proofs compare every shared value and name the first layer where the networks part.

use r2rc::params::{self, DType};
use r2rc::prove::{check_equivalence, failure, Precision, ProveOptions};
use r2rc::transform::{widen, Amount, Init, Method, Target, WidenArgs};

fn example(name: &str) -> r2rc::ir::Graph {
    let path = format!("{}/examples/{name}.arch", env!("CARGO_MANIFEST_DIR"));
    r2rc::lower::compile(&std::fs::read_to_string(path).unwrap(), &[]).unwrap()
}

fn widened(method: Method) -> (r2rc::ir::Graph, params::Params, r2rc::transform::Widened) {
    let g = example("resnet_cifar10");
    let mut tp = params::init(&g, 11, true);
    tp.dtype = DType::F64;
    let a = WidenArgs {
        target: Target::All,
        amount: Amount::Add(2),
        method,
        init: Init::Match,
        noise: None,
    };
    let w = widen(&g, &tp, &a, 0).unwrap();
    (g, tp, w)
}

#[test]
fn a_broken_student_is_caught_at_the_first_layer_that_parts() {
    let (g, tp, mut w) = widened(Method::R2r);
    // Break the cancellation: V and -V no longer match in one consumer.
    let t = w.params.tensors.get_mut("conv2_2.conv1.weight").unwrap();
    let last = t.shape()[1] - 1;
    t[[0, last, 0, 0]] += 0.25;
    let ev = check_equivalence(&g, &tp, &w.graph, &w.params, &ProveOptions::default()).unwrap();
    for e in &ev {
        assert!(!e.passed);
        assert_eq!(
            e.first_divergence.as_deref(),
            Some("conv2_2.conv1"),
            "{}",
            e.summary()
        );
    }
    let err = failure(&ev).unwrap();
    assert_eq!(err.exit_code(), 1);
    assert!(err
        .to_string()
        .contains("parts from the teacher at `conv2_2.conv1`"));
}

#[test]
fn a_leaking_new_channel_is_caught_at_its_reader() {
    // NetMorph: zero consumer columns; making one non-zero leaks new channels.
    let (g, tp, mut w) = widened(Method::Netmorph);
    let t = w.params.tensors.get_mut("head.fc.weight").unwrap();
    let last = t.shape()[1] - 1;
    t[[3, last]] = 1.0;
    let ev = check_equivalence(&g, &tp, &w.graph, &w.params, &ProveOptions::default()).unwrap();
    assert!(ev
        .iter()
        .all(|e| e.first_divergence.as_deref() == Some("head.fc")));
}

#[test]
fn f32_proofs_pass_within_1e_5_for_every_exact_method() {
    for m in [Method::R2r, Method::Netmorph, Method::Net2net] {
        let (g, tp, w) = widened(m);
        let opts = ProveOptions {
            precision: Precision::F32,
            ..ProveOptions::default()
        };
        let ev = check_equivalence(&g, &tp, &w.graph, &w.params, &opts).unwrap();
        for e in &ev {
            assert!(e.passed && e.max_rel_err <= 1e-5, "{m:?} {}", e.summary());
            assert_eq!(e.dtype, "f32");
        }
    }
}
