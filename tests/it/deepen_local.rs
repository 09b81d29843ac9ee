//! `deepen --prove local`: the inserted layers (and NetMorph-dense's readers) proved on
//! their own agree with the whole-network proof: exact methods pass in their required
//! modes, a broken new block or reader is caught, and the command streams with it.

use r2rc::exec::Mode;
use r2rc::ir::Graph;
use r2rc::params::{init, Params};
use r2rc::prove::ProveOptions;
use r2rc::transform::deepen::{deepen, resolve_site, DeepenArgs, DeepenMethod, Deepened};

use crate::common::{self, example, init_weights, ok, s, teacher, tensors, text};

fn deepened(g: &Graph, p: &Params, after: &str, method: DeepenMethod) -> Deepened {
    let a = DeepenArgs {
        after: after.into(),
        method,
        width: None,
    };
    deepen(g, p, &a, 3).unwrap_or_else(|e| panic!("{after} {method:?}: {e}"))
}

fn local(g: &Graph, p: &Params, d: &Deepened, after: &str) -> Vec<(Mode, f64, bool, usize)> {
    let site = resolve_site(g, after).unwrap();
    let opts = ProveOptions {
        inputs: 2,
        seed: 5,
        ..ProveOptions::default()
    };
    r2rc::local_proof::deepen::prove(g, p, d, &site, &opts)
        .unwrap()
        .into_iter()
        .map(|e| {
            (
                Mode::parse(&e.mode).unwrap(),
                e.max_rel_err,
                e.passed,
                e.values,
            )
        })
        .collect()
}

#[test]
fn exact_methods_pass_locally_in_their_required_modes() {
    for (file, after, method) in [
        ("resnet_cifar10", "conv2_1", DeepenMethod::R2r),
        ("resnet_cifar10", "conv1", DeepenMethod::Net2net),
        ("resnet_cifar10", "conv2_x", DeepenMethod::Netmorph),
        ("resnet_cifar10", "conv3_x", DeepenMethod::NetmorphDense),
        ("smallconv", "conv1", DeepenMethod::Netmorph),
        ("resnet18", "conv4_1", DeepenMethod::R2r),
        ("resnet18", "conv5_x", DeepenMethod::NetmorphDense),
    ] {
        let g = example(file);
        let p = teacher(&g, 7);
        let d = deepened(&g, &p, after, method);
        for (mode, err, passed, values) in local(&g, &p, &d, after) {
            assert!(
                values >= 2,
                "{file} {after} {method:?}: compared {values} values"
            );
            if d.exactness.required(mode) {
                assert!(
                    passed && err <= 1e-9,
                    "{file} {after} {method:?} {mode:?}: {err}"
                );
            }
        }
    }
}

#[test]
fn a_random_block_deviates_locally_too() {
    let g = example("resnet_cifar10");
    let p = teacher(&g, 7);
    let d = deepened(&g, &p, "conv2_1", DeepenMethod::Random);
    assert!(local(&g, &p, &d, "conv2_1")
        .iter()
        .all(|(_, e, passed, _)| *e > 1e-3 && !passed));
}

#[test]
fn a_broken_block_or_reader_is_caught() {
    let g = example("resnet_cifar10");
    let p = teacher(&g, 7);
    // R2DeeperR: the second conv's columns no longer cancel.
    let mut d = deepened(&g, &p, "conv2_1", DeepenMethod::R2r);
    let w = d
        .inserted
        .iter()
        .rev()
        .find(|n| n.ends_with("conv2"))
        .unwrap()
        .clone();
    let t = d.params.tensors.get_mut(&format!("{w}.weight")).unwrap();
    t.iter_mut().take(1).for_each(|x| *x += 0.5);
    assert!(local(&g, &p, &d, "conv2_1")
        .iter()
        .all(|(_, _, passed, _)| !passed));
    // NetMorph-dense: a reader that did not absorb N^T exactly.
    let mut d = deepened(&g, &p, "conv3_x", DeepenMethod::NetmorphDense);
    let r = d.changed[0].clone();
    let t = d.params.tensors.get_mut(&format!("{r}.weight")).unwrap();
    t.iter_mut().take(1).for_each(|x| *x += 1e-3);
    assert!(local(&g, &p, &d, "conv3_x")
        .iter()
        .all(|(_, _, passed, _)| !passed));
}

#[test]
fn the_command_proves_locally_streamed_and_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("t.safetensors");
    init_weights("examples/resnet18.arch", &w, &["--random-stats"]);
    for (weights, method) in [(true, "r2r"), (true, "netmorph-dense"), (false, "netmorph")] {
        let after = if method == "netmorph-dense" {
            "conv5_x"
        } else {
            "conv4_1"
        };
        let out = dir.path().join(format!("{method}{weights}"));
        let mut a = vec![
            "deepen",
            "examples/resnet18.arch",
            "--after",
            after,
            "--method",
            method,
            "--prove",
            "local",
            "-o",
            s(&out),
        ];
        if weights {
            a.extend(["--weights", s(&w)]);
        }
        let err = text(&ok(&a).stderr);
        assert_eq!(err.matches("proof: ").count(), 2, "{err}");
        assert!(err.contains("proved locally"), "{err}");
        let report = std::fs::read_to_string(out.join("report.json")).unwrap();
        assert!(report.contains("\"proved\": true"), "{report}");
    }
    // Refused: an unknown way to prove, and --prove with --no-prove.
    let o = common::r2rc(&[
        "deepen",
        "examples/resnet18.arch",
        "--after",
        "conv4_1",
        "--prove",
        "nearby",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("--prove nearby: use full or local"));
    let o = common::r2rc(&[
        "deepen",
        "examples/resnet18.arch",
        "--after",
        "conv4_1",
        "--prove",
        "local",
        "--no-prove",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
}

/// `morph --prove local` proves the convolution alone; streamed (with --weights and -o) it
/// decodes only that layer and writes what the in-memory morph writes, bias included.
#[test]
fn morph_proves_locally_and_streams() {
    let dir = tempfile::tempdir().unwrap();
    let arch = dir.path().join("biased.arch");
    std::fs::write(
        &arch,
        "arch Biased\ninput 3x16x16\n\nconv1  16x16  3x3, 8, bias, no norm\nconv2  16x16  3x3, 8\nhead   1x1    avg pool, 10-d fc\n",
    )
    .unwrap();
    let w = dir.path().join("t.safetensors");
    init_weights(s(&arch), &w, &["--random-stats"]);
    let mem = dir.path().join("mem");
    let streamed = dir.path().join("streamed");
    for (out, how) in [(&mem, "full"), (&streamed, "local")] {
        let err = text(
            &ok(&[
                "morph",
                s(&arch),
                "--layer",
                "conv1",
                "--kernel",
                "5",
                "--weights",
                s(&w),
                "--prove",
                how,
                "-o",
                s(out),
            ])
            .stderr,
        );
        assert_eq!(err.matches("proof: ").count(), 2, "{err}");
    }
    // The same tensors bit for bit (the metadata differs: the evidence).
    assert_eq!(
        tensors(&mem.join("biased.safetensors")),
        tensors(&streamed.join("biased.safetensors"))
    );
    let report = std::fs::read_to_string(streamed.join("report.json")).unwrap();
    assert!(report.contains("proved locally"), "{report}");
    assert!(report.contains("copied byte for byte"), "{report}");
    // A broken morph is caught by the local proof: a kernel not centred.
    let g = r2rc::lower::compile(&std::fs::read_to_string(&arch).unwrap(), &[]).unwrap();
    let p = init(&g, 1, true);
    let mut m = r2rc::transform::morph_kernel::morph_kernel(&g, &p, "conv1", 5).unwrap();
    let t = m.params.tensors.get_mut("conv1.weight").unwrap();
    t[[0, 0, 0, 0]] = 0.3;
    let opts = ProveOptions::default();
    let ev = r2rc::local_proof::morph::prove(&g, &p, &m, &opts).unwrap();
    assert!(ev.iter().all(|e| !e.passed), "{ev:?}");
}
