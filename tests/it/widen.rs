//! Widening: every exact method proves on every widenable space of every example, in both
//! batch-norm modes; Table 1's properties; the paper's widening experiment; refusals.

use r2rc::analysis::channel_spaces;
use r2rc::ir::Graph;
use r2rc::params::{self, Params};
use r2rc::prove::{check_equivalence, Evidence, ProveOptions};
use r2rc::transform::{widen, Amount, Init, Method, Noise, Target};

use crate::common::{
    conv_example_names, example, example_small, example_with, teacher, too_heavy_to_run, widen_args,
};

/// Every convolutional example (widening transformers is refused today, which
/// tests/it/transformers.rs checks); ImageNet nets shrunk to 64x64 inputs so debug-build
/// proofs stay fast.
fn examples() -> Vec<(String, Graph)> {
    conv_example_names()
        .into_iter()
        // ResNeXt-101 repeats ResNeXt-50's grouped blocks at 4 times the cost: its
        // widening is covered by the snapshots (widen_snapshots.rs) and ResNeXt-50's proofs.
        .filter(|n| !too_heavy_to_run(&example(n)))
        .map(|n| {
            let g = example_small(&n);
            (n, g)
        })
        .collect()
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
        // A grouped space widens every group equally (ResNeXt's 32): the amounts are
        // multiples of the largest group count (2 and 4 channels without groups).
        let groups = spaces.spaces.iter().map(|s| s.groups).max().unwrap_or(1);
        for method in EXACT {
            // All spaces at once, on every example.
            let all = Amount::Add(2 * groups);
            let w = widen(&g, &tp, &widen_args(Target::All, all, method), 3).unwrap();
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
                let a = widen_args(
                    Target::Name(s.label.clone()),
                    Amount::Add(4 * s.groups),
                    method,
                );
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

#[test]
fn paper_widening_experiment_gives_the_wider_network() {
    // ResNetCifar-18(1/8) widened by 1.5 everywhere is ResNetCifar-18(3/16).
    let g = example_with("resnet_cifar18", &[("r", "1/8")]);
    let tp = teacher(&g, 1);
    let w = widen(
        &g,
        &tp,
        &widen_args(Target::All, Amount::By(1.5), Method::R2r),
        0,
    )
    .unwrap();
    let wide = example_with("resnet_cifar18", &[("r", "3/16")]);
    assert_eq!(r2rc::print::print(&w.graph), r2rc::print::print(&wide));
    assert!(w.graph == wide, "graphs equal, not only their prints");
    w.params.check(&wide).unwrap();
    assert_exact("cifar18 1/8 -> 3/16", &prove(&g, &tp, &w.graph, &w.params));
}

#[test]
fn widening_conv1_of_resnet18_widens_the_conv2_stream_and_proves() {
    let g = example("resnet18");
    let tp = teacher(&g, 2);
    let a = widen_args(Target::Name("conv1".into()), Amount::Add(2), Method::R2r);
    let w = widen(&g, &tp, &a, 0).unwrap();
    assert_eq!(w.changes.len(), 1);
    let c = &w.changes[0];
    assert_eq!((c.from, c.to), (64, 66));
    assert_eq!(c.rows, vec!["conv1".to_string(), "conv2_x".to_string()]);
    for m in ["conv2_1.add", "conv2_2.add", "conv2_2.act", "conv2_x.pool"] {
        assert!(c.members.iter().any(|x| x == m), "{m} widens with conv1");
    }
    for p in ["conv1", "conv2_1.conv2", "conv2_2.conv2"] {
        assert!(c.producers.iter().any(|x| x == p), "{p} is a producer");
    }
    for q in [
        "conv2_1.conv1",
        "conv2_2.conv1",
        "conv3_1.conv1",
        "conv3_1.downsample.0",
    ] {
        assert!(c.consumers.iter().any(|x| x == q), "{q} is a consumer");
    }
    assert!(
        w.notes
            .iter()
            .any(|n| n.contains("rows conv1, conv2_x widen with it")),
        "{:?}",
        w.notes
    );
    // Full 224x224 input, one image: the real network, not a shrunk one.
    let opts = ProveOptions {
        inputs: 1,
        ..ProveOptions::default()
    };
    let ev = check_equivalence(&g, &tp, &w.graph, &w.params, &opts).unwrap();
    for e in &ev {
        assert!(e.passed && e.max_rel_err <= 1e-9, "{}", e.summary());
    }
}

/// Teacher tensors, and the student's leading block of each, as stored.
fn leading_block_equal(t: &ndarray::ArrayD<f64>, s: &ndarray::ArrayD<f64>) -> bool {
    let ts = t.shape().to_vec();
    let part = s.slice_each_axis(|ax| ndarray::Slice::from(0..ts[ax.axis.index()]));
    t.iter()
        .zip(part.iter())
        .all(|(a, b)| a.to_bits() == b.to_bits())
}

#[test]
fn table1_r2r_and_netmorph_keep_every_existing_tensor_net2net_changes_consumers() {
    let g = example("resnet_cifar10");
    let tp = params::init(&g, 5, true); // f32, as written by `r2rc init`
    for method in [Method::R2r, Method::Netmorph, Method::Net2net] {
        let w = widen(&g, &tp, &widen_args(Target::All, Amount::Add(4), method), 9).unwrap();
        // Through the safetensors bytes, in the teacher's dtype.
        let bytes =
            params::to_bytes(&w.params.clone().with_dtype(tp.dtype), &w.graph, None).unwrap();
        let sp = params::from_bytes(&w.graph, &bytes, "student").unwrap();
        let changed: Vec<&String> = tp
            .tensors
            .iter()
            .filter(|(k, t)| !leading_block_equal(t, &sp.tensors[*k]))
            .map(|(k, _)| k)
            .collect();
        match method {
            Method::Net2net => {
                // Consumers are rescaled; nothing else changes.
                assert!(changed.contains(&&"conv3_1.conv1.weight".to_string()));
                assert!(changed.contains(&&"head.fc.weight".to_string()));
                assert!(
                    changed.iter().all(|k| k.ends_with(".weight")
                        && !k.contains("bn")
                        && !k.contains("downsample.1")),
                    "{changed:?}"
                );
            }
            _ => assert!(changed.is_empty(), "{method:?} changed {changed:?}"),
        }
    }
}

#[test]
fn r2r_adds_even_counts_and_says_when_it_rounds() {
    let g = example("resnet_cifar10");
    let tp = teacher(&g, 0);
    let w = widen(
        &g,
        &tp,
        &widen_args(Target::Name("conv2_1".into()), Amount::To(11), Method::R2r),
        0,
    )
    .unwrap();
    assert_eq!((w.changes[0].from, w.changes[0].to), (8, 12));
    assert!(
        w.notes[0].contains("R2WiderR adds channels in pairs"),
        "{:?}",
        w.notes
    );
    let w = widen(
        &g,
        &tp,
        &widen_args(
            Target::Name("conv2_1".into()),
            Amount::By(1.3),
            Method::Netmorph,
        ),
        0,
    )
    .unwrap();
    assert_eq!(w.changes[0].to, 10, "floor(8 * 1.3)");
    let w = widen(
        &g,
        &tp,
        &widen_args(
            Target::Name("conv2_1".into()),
            Amount::To(11),
            Method::Net2net,
        ),
        0,
    )
    .unwrap();
    assert_eq!(w.changes[0].to, 11, "Net2Net adds any count");
    assert_exact("net2net odd", &prove(&g, &tp, &w.graph, &w.params));
}

#[test]
fn targets_resolve_as_language_md_says() {
    let g = example("resnet50");
    let tp = teacher(&g, 0);
    let spaces_of = |t: &str| {
        let w = widen(
            &g,
            &tp,
            &widen_args(Target::Name(t.into()), Amount::Add(2), Method::R2r),
            0,
        )
        .unwrap();
        w.changes
            .iter()
            .map(|c| c.label.clone())
            .collect::<Vec<_>>()
    };
    // A block: its two hidden widths, not its output.
    assert_eq!(spaces_of("conv3_2"), vec!["conv3_2.conv1", "conv3_2.conv2"]);
    // A layer: its output's space; a BN in the same space gives the same.
    assert_eq!(spaces_of("conv3_2.conv2"), vec!["conv3_2.conv2"]);
    assert_eq!(spaces_of("conv3_2.bn2"), vec!["conv3_2.conv2"]);
    // A stage: its stream (the projection starts it).
    assert_eq!(spaces_of("conv3_x"), vec!["conv3_1.conv3"]);
    assert_eq!(spaces_of("conv3_1.downsample.0"), vec!["conv3_1.conv3"]);
}

fn refusal(g: &Graph, target: &str, amount: Amount, method: Method) -> String {
    let tp = teacher(g, 0);
    match widen(
        g,
        &tp,
        &widen_args(Target::Name(target.into()), amount, method),
        0,
    ) {
        Ok(_) => panic!("widening {target} should be refused"),
        Err(e) => format!("{e} | {}", e.hint_text().unwrap_or("")),
    }
}

#[test]
fn refusals_say_why() {
    let g = example("resnet_cifar10");
    let m = refusal(&g, "input", Amount::Add(2), Method::R2r);
    assert!(m.contains("holds the network input `input`"), "{m}");
    let m = refusal(&g, "head.fc", Amount::Add(2), Method::Netmorph);
    assert!(m.contains("holds the network output `head.softmax`"), "{m}");
    let m = refusal(&g, "conv2_1", Amount::Add(3), Method::R2r);
    assert!(
        m.contains("R2WiderR adds channels in pairs") && m.contains("--add must be even, not 3"),
        "{m}"
    );
    let m = refusal(&g, "conv2_1.cnv1", Amount::Add(2), Method::R2r);
    assert!(
        m.contains("no layer, block or row named `conv2_1.cnv1`")
            && m.contains("did you mean `conv2_1.conv1`?"),
        "{m}"
    );
    let m = refusal(&g, "conv3_x", Amount::To(8), Method::R2r);
    assert!(m.contains("--to 8 does not widen"), "{m}");

    // A softmax inside a space (not at the output).
    use r2rc::ir::{Defaults, Linear, Op};
    let mut h = Graph::new("SoftmaxInside", Defaults::default(), vec![8]);
    let lin = |i, o| {
        Op::Linear(Linear {
            in_features: i,
            out_features: o,
            bias: true,
        })
    };
    let fc1 = h
        .add("fc1".into(), lin(8, 6), &[h.input], ("fc1", None), None)
        .unwrap();
    let sm = h
        .add(
            "fc1.softmax".into(),
            Op::Softmax,
            &[fc1],
            ("fc1", None),
            None,
        )
        .unwrap();
    let fc2 = h
        .add("fc2".into(), lin(6, 4), &[sm], ("fc2", None), None)
        .unwrap();
    h.output = fc2;
    let m = refusal(&h, "fc1", Amount::Add(2), Method::Net2net);
    assert!(
        m.contains("softmax `fc1.softmax` normalises across channels")
            && !m.contains("network output"),
        "{m}"
    );

    // Grouped convolutions widen every group equally (tests/it/family_growth.rs): R2R's
    // pairs inside each of 2 groups need a multiple of 4.
    let src = "arch G\ninput 3x8x8\nconv1 3x3, 8\nconv2 3x3, 8, groups 2\nhead avg pool, 4-d fc\n";
    let gg = r2rc::lower::compile(src, &[]).unwrap();
    let m = refusal(&gg, "conv1", Amount::Add(2), Method::R2r);
    assert!(
        m.contains("split into 2 groups by grouped convolution `conv2`")
            && m.contains("must grow by a multiple of 4 channels, not 2"),
        "{m}"
    );
}

#[test]
fn approximate_noise_and_random_pad_are_labelled_and_measured() {
    let g = example("smallconv");
    let tp = teacher(&g, 3);
    let mut a = widen_args(
        Target::Name("conv1".into()),
        Amount::Add(4),
        Method::Net2net,
    );
    // Cancelling noise keeps Net2Net exact (tests/it/net2net_noise.rs); the paper's
    // independent noise does not.
    a.noise = Some(Noise::Cancelling(0.1));
    let w = widen(&g, &tp, &a, 0).unwrap();
    assert!(w.exact);
    assert_exact("net2net --noise 0.1", &prove(&g, &tp, &w.graph, &w.params));
    a.noise = Some(Noise::Approx(0.1));
    let w = widen(&g, &tp, &a, 0).unwrap();
    assert!(!w.exact);
    let ev = prove(&g, &tp, &w.graph, &w.params);
    assert!(
        ev.iter()
            .all(|e| e.max_rel_err > 1e-9 && e.max_rel_err < 1.0),
        "{}",
        ev[0].summary()
    );
    let w = widen(
        &g,
        &tp,
        &widen_args(Target::Name("fc1".into()), Amount::Add(4), Method::Random),
        0,
    )
    .unwrap();
    assert!(!w.exact);
    let ev = prove(&g, &tp, &w.graph, &w.params);
    assert!(
        ev.iter()
            .all(|e| !e.passed && e.first_divergence.as_deref() == Some("fc2")),
        "{:?}",
        ev[0]
    );
}

#[test]
fn he_init_is_larger_than_matched_init_and_both_prove() {
    let g = example("resnet_cifar10");
    let tp = teacher(&g, 4);
    let mut a = widen_args(Target::Name("conv3_1".into()), Amount::Add(8), Method::R2r);
    let matched = widen(&g, &tp, &a, 0).unwrap();
    a.init = Init::He;
    let he = widen(&g, &tp, &a, 0).unwrap();
    assert_exact("he", &prove(&g, &tp, &he.graph, &he.params));
    let new_rows_std = |p: &Params| {
        let w = &p.tensors["conv3_1.conv1.weight"];
        r2rc::transform::std_of(
            &w.slice_axis(ndarray::Axis(0), (16..).into())
                .to_owned()
                .into_dyn(),
        )
    };
    let s = r2rc::transform::std_of(&tp.tensors["conv3_1.conv1.weight"]);
    let m = new_rows_std(&matched.params);
    assert!(
        (m / s - 1.0).abs() < 0.1,
        "matched std {m} vs kernel std {s}"
    );
    assert!(
        new_rows_std(&he.params) > m,
        "He init draws larger weights here"
    );
    // Seeded: same seed, same student.
    let again = widen(
        &g,
        &tp,
        &widen_args(Target::Name("conv3_1".into()), Amount::Add(8), Method::R2r),
        0,
    )
    .unwrap();
    assert_eq!(again.params, matched.params);
}
