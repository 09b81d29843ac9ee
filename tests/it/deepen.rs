//! Deepening: every exact method proves exact on every example in both BN modes, existing
//! tensors survive bit-identically (only renamed), names equal a from-scratch network, and
//! refusals say why.

use std::collections::BTreeMap;

use r2rc::exec::Mode;
use r2rc::ir::Graph;
use r2rc::params::Params;
use r2rc::prove::{Evidence, ProveOptions};
use r2rc::transform::deepen::{deepen, DeepenArgs, DeepenMethod, Deepened, Exactness};

use crate::common::{example, example_small, teacher, too_heavy_to_run, DEEPEN_SITES as SITES};

/// The sites of the examples a test can afford to run in f64: ResNeXt-101 repeats
/// ResNeXt-50's grouped blocks at 4 times the cost, so its deepenings are covered by the
/// snapshots (deepen_snapshots.rs) and ResNeXt-50's proofs.
fn runnable_sites(
) -> impl Iterator<Item = &'static (&'static str, &'static str, &'static str, &'static str)> {
    SITES.iter().filter(|s| !too_heavy_to_run(&example(s.0)))
}

fn args(after: &str, method: DeepenMethod) -> DeepenArgs {
    DeepenArgs {
        after: after.into(),
        method,
        width: None,
    }
}

/// The teacher, renamed by the deepening's name map, against its student.
fn prove(g: &Graph, p: &Params, d: &Deepened, o: &ProveOptions) -> r2rc::Result<Vec<Evidence>> {
    let renamed = (&d.name_map, d.mixed.as_slice());
    r2rc::patch::prove_renamed((g, p), (&d.graph, &d.params), renamed, o)
}

fn opts() -> ProveOptions {
    ProveOptions {
        inputs: 2,
        seed: 11,
        ..ProveOptions::default()
    }
}

/// Deepens and proves; returns the student and the max relative error per mode.
fn run(
    file: &str,
    after: &str,
    method: DeepenMethod,
) -> (Graph, Params, Deepened, Vec<(String, f64)>) {
    let g = example_small(file);
    let p = teacher(&g, 7);
    let d =
        deepen(&g, &p, &args(after, method), 3).unwrap_or_else(|e| panic!("{file} {after}: {e}"));
    let ev = prove(&g, &p, &d, &opts()).unwrap();
    let errs = ev.iter().map(|e| (e.mode.clone(), e.max_rel_err)).collect();
    (g, p, d, errs)
}

#[test]
fn exact_methods_are_exact_on_every_example_in_both_modes() {
    for &(file, site, dense_site, _) in runnable_sites() {
        for (method, at) in [
            (DeepenMethod::R2r, site),
            (DeepenMethod::Netmorph, site),
            (DeepenMethod::NetmorphDense, dense_site),
        ] {
            let (_, _, d, errs) = run(file, at, method);
            assert_eq!(d.exactness, Exactness::Exact);
            assert_eq!(errs.len(), 2);
            for (mode, e) in &errs {
                eprintln!(
                    "{file} {} after {at} {mode}: max rel {e:.3e}",
                    method.name()
                );
                assert!(
                    *e <= 1e-9,
                    "{file} {} after {at}, {mode}: {e}",
                    method.name()
                );
            }
        }
    }
}

#[test]
fn net2net_is_exact_in_eval_mode_and_deviates_in_train_mode() {
    for &(file, _, _, site) in runnable_sites() {
        let (_, _, d, errs) = run(file, site, DeepenMethod::Net2net);
        assert_eq!(d.exactness, Exactness::EvalOnly);
        let eval = errs.iter().find(|(m, _)| m == "eval").unwrap().1;
        let train = errs.iter().find(|(m, _)| m == "train").unwrap().1;
        eprintln!("{file} net2net after {site}: eval {eval:.3e}, train {train:.3e}");
        assert!(eval <= 1e-9, "{file}: eval {eval}");
        assert!(
            train > 1e-6,
            "{file}: train-mode BN should move the output, got {train}"
        );
        assert!(d.exactness.required(Mode::Eval) && !d.exactness.required(Mode::Train));
    }
}

#[test]
fn random_block_is_not_function_preserving() {
    let (_, _, d, errs) = run("resnet_cifar10", "conv2_1", DeepenMethod::Random);
    assert_eq!(d.exactness, Exactness::NotPreserving);
    assert!(errs.iter().all(|(_, e)| *e > 1e-3), "{errs:?}");
}

/// Reports call a measured deviation a deviation, not a proof: every mode of a random block,
/// Net2DeeperNet's train mode (its eval mode is proved).
#[test]
fn reports_label_deviations_and_proofs() {
    let g = example_small("resnet_cifar10");
    let p = teacher(&g, 7);
    for (method, proofs, deviations) in [
        (DeepenMethod::Random, 0, 2),
        (DeepenMethod::Net2net, 1, 1),
        (DeepenMethod::R2r, 2, 0),
    ] {
        let step = r2rc::patch::Step::Deepen(args("conv2_1", method));
        let proof = r2rc::pipeline::Proof::Full(&opts());
        let r = r2rc::pipeline::run(&g, &p, &step, 3, proof, "t")
            .unwrap()
            .report;
        for text in [r.header(), r.summary()] {
            assert_eq!(
                text.matches("proof: ").count(),
                proofs,
                "{method:?}: {text}"
            );
            assert_eq!(
                text.matches("deviation (not function preserving): ")
                    .count(),
                deviations,
                "{method:?}: {text}"
            );
        }
    }
}

/// Every teacher tensor is in the student under its layer's new name, bit for bit.
fn assert_tensors_kept(g: &Graph, p: &Params, d: &Deepened) {
    for spec in g.param_specs() {
        let layer = spec
            .name
            .strip_suffix(&format!(".{}", spec.slot.suffix))
            .unwrap();
        let new_layer = d.name_map.get(layer).map(String::as_str).unwrap_or(layer);
        let new_name = format!("{new_layer}.{}", spec.slot.suffix);
        let t = &p.tensors[&spec.name];
        let s = d
            .params
            .get(&new_name)
            .unwrap_or_else(|| panic!("{new_name} missing"));
        assert_eq!(t.shape(), s.shape(), "{}", spec.name);
        assert!(
            t.iter()
                .zip(s.iter())
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{} -> {new_name} changed",
            spec.name
        );
    }
}

#[test]
fn r2r_and_netmorph_keep_every_existing_tensor_bit_identical() {
    for &(file, site, _, _) in runnable_sites() {
        for method in [DeepenMethod::R2r, DeepenMethod::Netmorph] {
            let g = example_small(file);
            let p = teacher(&g, 7);
            let d = deepen(&g, &p, &args(site, method), 5).unwrap();
            assert_tensors_kept(&g, &p, &d);
        }
    }
}

#[test]
fn inserting_a_block_renumbers_the_row_like_a_network_written_from_scratch() {
    let g = example_small("resnet_cifar10");
    let p = teacher(&g, 7);
    let d = deepen(&g, &p, &args("conv2_1", DeepenMethod::R2r), 1).unwrap();
    let expected: BTreeMap<String, String> = ["conv1", "bn1", "act1", "conv2", "bn2", "add", "act"]
        .iter()
        .map(|k| (format!("conv2_2.{k}"), format!("conv2_3.{k}")))
        .collect();
    assert_eq!(d.name_map, expected);
    assert_eq!(d.inserted[0], "conv2_2.conv1");
    // The student is the from-scratch network with three blocks in conv2_x.
    let text = r2rc::print::print(&d.graph);
    assert!(text.contains("[3x3, 8; 3x3, 8] x 3"), "{text}");
    let again = r2rc::lower::compile(&text, &[]).unwrap();
    assert!(again == d.graph);
    // R2DeeperR's structure: [U; U] rows, [V, -V] columns, last BN beta 0 / mean 0.
    let w1 = &d.params.tensors["conv2_2.conv1.weight"];
    let w2 = &d.params.tensors["conv2_2.conv2.weight"];
    for i in 0..4 {
        for j in 0..8 {
            assert_eq!(w1[[i, j, 1, 1]], w1[[i + 4, j, 1, 1]]);
            assert_eq!(w2[[j, i, 0, 2]], -w2[[j, i + 4, 0, 2]]);
        }
    }
    assert!(d.params.tensors["conv2_2.bn2.bias"]
        .iter()
        .all(|x| *x == 0.0));
    assert!(d.params.tensors["conv2_2.bn2.running_mean"]
        .iter()
        .all(|x| *x == 0.0));
    // New weights are scaled like the previous block's last kernel.
    let s_prev = r2rc::transform::std_of(&p.tensors["conv2_1.conv2.weight"]);
    let s_new = r2rc::transform::std_of(w1);
    assert!((s_new / s_prev - 1.0).abs() < 0.25, "{s_new} vs {s_prev}");
}

#[test]
fn after_a_single_layer_row_the_block_gets_a_row_of_its_own() {
    let (_, _, d, errs) = run("smallconv", "pool1", DeepenMethod::R2r);
    assert!(errs.iter().all(|(_, e)| *e <= 1e-9));
    assert!(d.name_map.is_empty(), "{:?}", d.name_map);
    assert_eq!(d.inserted[0], "pool1_1.conv1");
    let text = r2rc::print::print(&d.graph);
    assert!(text.contains("pool1_x"), "{text}");
}

#[test]
fn seeded_and_reproducible() {
    let g = example_small("resnet_cifar10");
    let p = teacher(&g, 7);
    let a = deepen(&g, &p, &args("conv3_1", DeepenMethod::R2r), 9).unwrap();
    let b = deepen(&g, &p, &args("conv3_1", DeepenMethod::R2r), 9).unwrap();
    let c = deepen(&g, &p, &args("conv3_1", DeepenMethod::R2r), 10).unwrap();
    assert_eq!(a.params, b.params);
    assert_ne!(a.params, c.params);
}

fn refusal(file: &str, a: DeepenArgs) -> String {
    let g = example_small(file);
    let p = teacher(&g, 7);
    match deepen(&g, &p, &a, 0) {
        Ok(_) => panic!("{file} after {} should be refused", a.after),
        Err(e) => format!("{e} | {}", e.hint_text().unwrap_or("")),
    }
}

#[test]
fn refusals_say_why() {
    // R2DeeperR and Net2DeeperNet need a non-negative input for the final ReLU.
    let src = "arch Neg\ninput 3x8x8\n\nconv1 8x8 3x3, 8, act leaky_relu\nconv2_x 8x8 [3x3, 8; 3x3, 8] x 1\n";
    let g = r2rc::lower::compile(src, &[]).unwrap();
    let p = teacher(&g, 7);
    for m in [DeepenMethod::R2r, DeepenMethod::Net2net] {
        let e = deepen(&g, &p, &args("conv1", m), 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot prove `conv1.act` non-negative"), "{e}");
        assert!(e.contains("leaky_relu"), "{e}");
    }
    // NetMorph is exact for any input, so it goes there.
    let d = deepen(&g, &p, &args("conv1", DeepenMethod::Netmorph), 0).unwrap();
    let ev = prove(&g, &p, &d, &opts()).unwrap();
    assert!(ev.iter().all(|e| e.passed));

    let e = refusal("resnet_cifar10", args("head", DeepenMethod::R2r));
    assert!(
        e.contains("need a CxHxW feature map") && e.contains("vector of 10"),
        "{e}"
    );
    // Inside a block's branch only the methods whose layer starts as the identity on its
    // own fit (tests/it/family_growth.rs); a projection shortcut is no site.
    let e = refusal("resnet_cifar10", args("conv2_1.conv1", DeepenMethod::R2r));
    assert!(
        e.contains("cannot insert R2DeeperR inside block `conv2_1`")
            && e.contains("--after conv2_1"),
        "{e}"
    );
    let e = refusal(
        "resnet_cifar10",
        args("conv3_1.downsample.0", DeepenMethod::Netmorph),
    );
    assert!(
        e.contains("is a layer inside block `conv3_1`") && e.contains("--after conv3_1"),
        "{e}"
    );
    let e = refusal("resnet_cifar10", args("conv2_7", DeepenMethod::R2r));
    assert!(
        e.contains("no block or row named `conv2_7`") && e.contains("did you mean"),
        "{e}"
    );
    let mut a = args("conv2_1", DeepenMethod::R2r);
    a.width = Some(7);
    let e = refusal("resnet_cifar10", a);
    assert!(
        e.contains("even hidden width") && e.contains("--width 8"),
        "{e}"
    );
    let mut a = args("conv2_1", DeepenMethod::Netmorph);
    a.width = Some(8);
    let e = refusal("resnet_cifar10", a);
    assert!(e.contains("--width applies to r2r and random"), "{e}");
    // Dense NetMorph needs every reader to absorb N^T; an identity shortcut cannot.
    let e = refusal(
        "resnet_cifar10",
        args("conv2_1", DeepenMethod::NetmorphDense),
    );
    assert!(e.contains("absorb N^T") && e.contains("conv2_2.add"), "{e}");
    let e = refusal("smallconv", args("conv1", DeepenMethod::NetmorphDense));
    assert!(e.contains("`pool1` (max_pool)"), "{e}");
}

#[test]
fn custom_width_is_exact() {
    let g = example_small("resnet_cifar10");
    let p = teacher(&g, 7);
    let mut a = args("conv3_2", DeepenMethod::R2r);
    a.width = Some(6);
    let d = deepen(&g, &p, &a, 2).unwrap();
    assert_eq!(
        d.params.tensors["conv3_3.conv1.weight"].shape(),
        &[6, 16, 3, 3]
    );
    let ev = prove(&g, &p, &d, &opts()).unwrap();
    assert!(
        ev.iter().all(|e| e.passed && e.max_rel_err <= 1e-9),
        "{ev:?}"
    );
}

#[test]
fn the_proof_catches_a_broken_pairing_and_names_the_layer() {
    let g = example_small("resnet_cifar10");
    let p = teacher(&g, 7);
    let mut d = deepen(&g, &p, &args("conv2_1", DeepenMethod::R2r), 1).unwrap();
    // Break [V, -V] in one tap: the branch is no longer zero.
    d.params.tensors.get_mut("conv2_2.conv2.weight").unwrap()[[0, 0, 1, 1]] += 0.5;
    let ev = prove(&g, &p, &d, &opts()).unwrap();
    assert!(ev.iter().all(|e| !e.passed));
    // The new block has no teacher counterpart; the first shared value after it parts.
    assert_eq!(ev[0].first_divergence.as_deref(), Some("conv2_3.conv1"));
    let err = r2rc::pipeline::required_failure(d.exactness, &ev).unwrap();
    assert_eq!(err.exit_code(), 1);
    assert!(err.to_string().contains("conv2_3.conv1"), "{err}");
}
