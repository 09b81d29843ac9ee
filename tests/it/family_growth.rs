//! Growing the other families of the ResNet tables (issue 17): grouped convolutions
//! (ResNeXt's cardinality), option-A pad shortcuts and (once the IR has it) concatenation.
//! Every exact method proves in f64 to 1e-9 in both batch-norm modes, whole and locally;
//! a grouped space widens every group equally and refuses other amounts, naming the widths
//! that work; the streamed student equals the in-memory one byte for byte.

use r2rc::analysis::channel_spaces;
use r2rc::ir::Graph;
use r2rc::local_proof::prove_widening;
use r2rc::params::{DType, Params};
use r2rc::prove::{check_equivalence, Evidence, ProveOptions};
use r2rc::transform::{widen, Amount, Method, Target, Widening};

use crate::common::{init_weights, ok, run, s, teacher, tensors, widen_args};

/// A small ResNeXt: bottlenecks whose 3x3 conv has 4 groups, a projection shortcut, a
/// stride.
pub const RESNEXT: &str = "arch RX
input 3x12x12
conv1    3x3, 16
conv2_x  [1x1, 16; 3x3, 16, groups 4; 1x1, 32] x 2
conv3_x  [1x1, 32; 3x3, 32, groups 4; 1x1, 48] x 1, stride 2
head     avg pool, 10-d fc
";

/// A small option-A ResNet: every widening stage's shortcut subsamples and pads zeros.
pub const PAD: &str = "arch PA
input 3x12x12
conv1    3x3, 8
conv2_x  [3x3, 8; 3x3, 8] x 2
conv3_x  [3x3, 16; 3x3, 16] x 2, stride 2
conv4_x  [3x3, 24; 3x3, 24] x 1, stride 2
shortcut pad
head     avg pool, 10-d fc
";

/// A small pre-activation ResNet in the language: an identity-shortcut stage and a
/// strided one with a projection and a grouped second conv.
const PREACT: &str = "arch PR
input 3x8x8
preact
conv1    3x3, 8
conv2_x  [3x3, 8; 3x3, 8] x 2
conv3_x  [3x3, 16; 3x3, 16, C=2] x 1, stride 2
head     avg pool, 5-d fc
";

/// A small DenseNet in the language: two dense blocks (the second's 3x3 grouped) and a
/// transition.
const DENSE: &str = "arch DN
input 3x8x8
preact
conv0       3x3, 8
dense1_x    [1x1, 8; 3x3, 4] x 2, dense
trans1      transition 0.5
dense2_x    [1x1, 8; 3x3, 4, C=2] x 2, dense
classifier  avg pool, 5-d fc
";

const EXACT: [Method; 3] = [Method::R2r, Method::Netmorph, Method::Net2net];

fn compile(src: &str) -> Graph {
    r2rc::lower::compile(src, &[]).unwrap()
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
    }
}

fn prove(t: &Graph, tp: &Params, s: &Graph, sp: &Params) -> Vec<Evidence> {
    check_equivalence(t, tp, s, sp, &ProveOptions::default()).unwrap()
}

/// `--all` and every widenable space on its own, by every exact method, proved whole and
/// locally; returns the largest relative error seen.
fn prove_every_space(name: &str, g: &Graph, amount: Amount) -> f64 {
    let tp = teacher(g, 5);
    let spaces = channel_spaces(g);
    let mut worst = 0f64;
    for method in EXACT {
        let mut targets = vec![Target::All];
        targets.extend(
            spaces
                .spaces
                .iter()
                .filter(|s| s.widenable())
                .map(|s| Target::Name(s.label.clone())),
        );
        for target in targets {
            let what = format!("{name} {} {method:?}", target.show());
            let args = widen_args(target, amount, method);
            let w = widen(g, &tp, &args, 3).unwrap_or_else(|e| panic!("{what}: {e:?}"));
            assert!(w.exact, "{what}");
            let ev = prove(g, &tp, &w.graph, &w.params);
            assert_exact(&what, &ev);
            // Locally, region by region, from the teacher's tensors alone.
            let wd = Widening::new(g, &args, 3, &|n| tp.tensors.contains_key(n)).unwrap();
            let local = prove_widening(
                &wd,
                &mut |n| Ok(tp.tensors[n].clone()),
                DType::F64,
                &ProveOptions::default(),
            )
            .unwrap();
            assert_exact(&format!("{what} (local)"), &local);
            for e in ev.iter().chain(&local) {
                worst = worst.max(e.max_rel_err);
            }
        }
    }
    eprintln!("{name}: largest relative error {worst:.1e}");
    worst
}

#[test]
fn grouped_spaces_widen_every_group_and_prove_with_every_exact_method() {
    let g = compile(RESNEXT);
    let spaces = channel_spaces(&g);
    // The grouped conv splits both the space it reads and the one it writes into 4 groups.
    for label in ["conv2_1.conv1", "conv2_1.conv2", "conv3_1.conv2"] {
        let sp = spaces.spaces.iter().find(|s| s.label == label).unwrap();
        assert_eq!(sp.groups, 4, "{label}");
        assert!(sp.widenable(), "{label}: {:?}", spaces.why_fixed(sp.id));
    }
    prove_every_space("resnext", &g, Amount::Add(8));
    // --by 1.5 gives every group the same share: 16 -> 24 (8 = 4 groups x 2).
    prove_every_space("resnext x1.5", &g, Amount::By(1.5));
}

#[test]
fn a_grouped_conv_gets_new_rows_and_columns_inside_each_group() {
    let g = compile(RESNEXT);
    let tp = teacher(&g, 1);
    let args = widen_args(
        Target::Name("conv2_1.conv2".into()),
        Amount::Add(8),
        Method::Netmorph,
    );
    let w = widen(&g, &tp, &args, 0).unwrap();
    // conv2_1.conv2 writes 16 -> 24 channels: group k holds old rows 4k..4k+4 at 6k..6k+4
    // and two new rows after them; conv2_1.conv3 reads them at the same places, with
    // NetMorph's zero columns at 6k+4, 6k+5.
    let (t, s) = (
        &tp.tensors["conv2_1.conv2.weight"],
        &w.params.tensors["conv2_1.conv2.weight"],
    );
    assert_eq!(s.shape(), &[24, 4, 3, 3]);
    let (t3, s3) = (
        &tp.tensors["conv2_1.conv3.weight"],
        &w.params.tensors["conv2_1.conv3.weight"],
    );
    assert_eq!(s3.shape(), &[32, 24, 1, 1]);
    for k in 0..4 {
        for i in 0..4 {
            for x in 0..4 {
                for (a, b) in [(0, 0), (1, 2), (2, 1)] {
                    assert_eq!(t[[4 * k + i, x, a, b]], s[[6 * k + i, x, a, b]]);
                }
            }
            for o in 0..32 {
                assert_eq!(t3[[o, 4 * k + i, 0, 0]], s3[[o, 6 * k + i, 0, 0]]);
            }
        }
        for o in 0..32 {
            assert_eq!(s3[[o, 6 * k + 4, 0, 0]], 0.0);
            assert_eq!(s3[[o, 6 * k + 5, 0, 0]], 0.0);
        }
    }
    assert_eq!(w.params.tensors["conv2_1.bn2.weight"].len(), 24);
}

#[test]
fn a_grouped_space_refuses_widths_that_do_not_split_equally() {
    let g = compile(RESNEXT);
    let tp = teacher(&g, 1);
    for (method, amount, step, hint) in [
        (Method::R2r, Amount::Add(4), 8, "--to 24"),
        (Method::Netmorph, Amount::Add(2), 4, "--to 20"),
        (
            Method::Net2net,
            Amount::To(19),
            4,
            "--to 16 + a multiple of 4",
        ),
    ] {
        let args = widen_args(Target::Name("conv2_1.conv1".into()), amount, method);
        let e = widen(&g, &tp, &args, 0).unwrap_err();
        let m = format!("{e}");
        let hint_text = e.hint_text().unwrap_or("").to_string();
        assert!(
            m.contains("split into 4 groups by grouped convolution `conv2_1.conv2`")
                && m.contains(&format!("must grow by a multiple of {step} channels")),
            "{method:?}: {m}"
        );
        let hint = hint.replace("--to 16 + a multiple of 4", "16 + a multiple of 4");
        assert!(hint_text.contains(&hint), "{method:?}: {hint_text}");
    }
    // The CLI says the same, with the widths that work.
    let dir = tempfile::tempdir().unwrap();
    let arch = dir.path().join("rx.arch");
    std::fs::write(&arch, RESNEXT).unwrap();
    let (code, _, err) = run(&["widen", s(&arch), "--layer", "conv2_1.conv1", "--add", "6"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("must grow by a multiple of 8 channels, not 6")
            && err.contains("--to 24 (--add 8)"),
        "{err}"
    );
}

#[test]
fn pad_shortcut_streams_widen_with_their_zero_channels_and_prove() {
    let g = compile(PAD);
    let spaces = channel_spaces(&g);
    // conv3_x's stream holds conv1's 8 channels (through the pad shortcut) and 8 of its
    // own; conv4_x's holds both and 8 more.
    let s3 = spaces
        .spaces
        .iter()
        .find(|s| s.members.iter().any(|m| m.name == "conv3_1.downsample"))
        .unwrap();
    assert_eq!((s3.width, s3.own, s3.layout.len()), (16, 8, 2));
    let s4 = &spaces.space_of(g.find("conv4_1.add").unwrap());
    assert_eq!((s4.width, s4.own, s4.layout.len()), (24, 8, 3));
    assert!(s3.widenable() && s4.widenable());
    prove_every_space("option A", &g, Amount::Add(4));
    // The paper's widening: x1.5 everywhere gives every stage 1.5 times its width.
    let tp = teacher(&g, 2);
    for method in EXACT {
        let w = widen(
            &g,
            &tp,
            &widen_args(Target::All, Amount::By(1.5), method),
            1,
        )
        .unwrap();
        for (layer, c) in [
            ("conv2_2.add", 12),
            ("conv3_2.add", 24),
            ("conv4_1.add", 36),
        ] {
            assert_eq!(
                w.graph.g[w.graph.find(layer).unwrap()].shape[0],
                c,
                "{layer}"
            );
        }
        assert_exact(
            &format!("option A x1.5 {method:?}"),
            &prove(&g, &tp, &w.graph, &w.params),
        );
    }
}

/// An option-A stage that only subsamples (stride 2, same width): its pad shortcut adds
/// no channels, so its stream holds only the previous stream's channels and has none of
/// its own to grow. Widening it is refused, naming the shortcut, with what to do instead;
/// widening the stream it comes from carries the new channels through the shortcut into
/// it and past it, and proves by every exact method.
#[test]
fn a_subsample_only_pad_stream_is_refused_and_widens_with_its_source() {
    let src = "arch PS
input 3x12x12
shortcut pad
conv1    3x3, 8
conv2_x  [3x3, 8; 3x3, 8] x 1
conv3_x  [3x3, 8; 3x3, 8] x 2, stride 2
conv4_x  [3x3, 16; 3x3, 16] x 1, stride 2
head     avg pool, 10-d fc
";
    let g = compile(src);
    let spaces = channel_spaces(&g);
    let s3 = spaces.space_of(g.find("conv3_1.add").unwrap());
    let owners: Vec<&str> = s3
        .layout
        .iter()
        .map(|&o| spaces.spaces[o].label.as_str())
        .collect();
    assert_eq!((s3.width, s3.own, owners), (8, 0, vec!["conv1"]));
    assert!(!s3.widenable());
    let tp = teacher(&g, 6);
    for target in ["conv3_1.conv2", "conv3_2.conv2"] {
        let args = widen_args(Target::Name(target.into()), Amount::Add(4), Method::R2r);
        let e = widen(&g, &tp, &args, 0).unwrap_err();
        let m = format!("{e} | {}", e.hint_text().unwrap_or(""));
        assert!(
            m.contains(&format!("cannot widen `{target}`"))
                && m.contains(
                    "all its channels belong to other spaces (through `conv3_1.downsample`)"
                )
                && m.contains("widen a layer writing one of them")
                && m.contains("r2rc spaces"),
            "{m}"
        );
    }
    // Widening conv1 widens conv2_x's stream, conv3_x's (through the pad shortcut) and
    // conv4_x's first 8 channels.
    for method in EXACT {
        let args = widen_args(Target::Name("conv1".into()), Amount::Add(4), method);
        let w = widen(&g, &tp, &args, 2).unwrap();
        for (layer, c) in [
            ("conv2_1.add", 12),
            ("conv3_2.add", 12),
            ("conv4_1.add", 20),
        ] {
            assert_eq!(
                w.graph.g[w.graph.find(layer).unwrap()].shape[0],
                c,
                "{method:?} {layer}"
            );
        }
        assert_exact(
            &format!("subsample-only pad, conv1 {method:?}"),
            &prove(&g, &tp, &w.graph, &w.params),
        );
    }
}

#[test]
fn random_padding_of_grouped_and_pad_spaces_is_measured_not_proved() {
    for (name, src) in [("resnext", RESNEXT), ("option A", PAD)] {
        let g = compile(src);
        let tp = teacher(&g, 4);
        let w = widen(
            &g,
            &tp,
            &widen_args(Target::All, Amount::Add(8), Method::Random),
            0,
        )
        .unwrap();
        assert!(!w.exact);
        let ev = prove(&g, &tp, &w.graph, &w.params);
        assert!(ev.iter().all(|e| e.max_rel_err > 1e-6), "{name}");
    }
}

/// The streamed student (weights read per tensor, written in file order) equals the
/// in-memory one byte for byte, for a grouped and a pad-shortcut widening.
#[test]
fn grouped_and_pad_widenings_stream_to_the_in_memory_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (stem, src, amount) in [("rx", RESNEXT, "8"), ("pa", PAD, "4")] {
        let arch = d.join(format!("{stem}.arch"));
        std::fs::write(&arch, src).unwrap();
        let weights = d.join(format!("{stem}.safetensors"));
        init_weights(s(&arch), &weights, &[]);
        for method in ["r2r", "net2net", "netmorph", "random"] {
            let mut outs = Vec::new();
            for how in ["memory", "streamed"] {
                let out = d.join(format!("{stem}_{method}_{how}"));
                let mut args = vec![
                    "widen",
                    s(&arch),
                    "--all",
                    "--add",
                    amount,
                    "--method",
                    method,
                    "--weights",
                    s(&weights),
                    "-o",
                    s(&out),
                    "--seed",
                    "7",
                ];
                // The full proof runs the whole network in memory; without it the
                // tensors stream from the teacher's file to the student's.
                args.extend(if how == "memory" {
                    &["--prove", "full"][..]
                } else {
                    &["--no-prove"][..]
                });
                ok(&args);
                outs.push(tensors(&out.join(format!("{stem}.safetensors"))));
            }
            assert!(!outs[0].is_empty());
            assert_eq!(outs[0], outs[1], "{stem} {method}");
        }
    }
}

/// `deepen --after conv2_1.conv1`: a layer between two layers of a block's branch, for
/// each method that has an exact construction there, proved whole (teacher renamed) and
/// locally; R2DeeperR and the random block are refused, as is the block's last layer.
#[test]
fn layers_inside_a_block_prove_and_refusals_say_why() {
    use r2rc::exec::Mode;
    use r2rc::transform::deepen::{deepen, rename, resolve_site, DeepenArgs, DeepenMethod};
    use r2rc::transform::Exactness;
    let resnet = crate::common::example_with("resnet_cifar10", &[("r", "1/8")]);
    let cases: Vec<(&str, Graph, &str)> = vec![
        ("option A", compile(PAD), "conv3_1.conv1"),
        ("resnext", compile(RESNEXT), "conv2_2.conv2"),
        ("resnext", compile(RESNEXT), "conv3_1.bn1"),
        ("resnet_cifar10", resnet, "conv2_2.act1"),
        // Under `preact` the layer goes after the next layer's BN-act, before its conv.
        ("preact", compile(PREACT), "conv2_1.conv1"),
        ("preact", compile(PREACT), "conv3_1.conv1"),
        ("dense", compile(DENSE), "dense1_2.conv1"),
        ("dense", compile(DENSE), "dense2_1.conv1"),
    ];
    let opts = ProveOptions::default();
    for (name, g, after) in &cases {
        let tp = teacher(g, 9);
        for method in [
            DeepenMethod::Net2net,
            DeepenMethod::Netmorph,
            DeepenMethod::NetmorphDense,
        ] {
            let what = format!("{name} --after {after} {method:?}");
            let args = DeepenArgs {
                after: after.to_string(),
                method,
                width: None,
            };
            let block = after.split_once('.').unwrap().0;
            let grouped_reader = matches!(
                (*name, *after),
                ("resnext", "conv3_1.bn1")
                    | ("preact", "conv3_1.conv1")
                    | ("dense", "dense2_1.conv1")
            );
            if method == DeepenMethod::NetmorphDense && grouped_reader {
                // Its reader is the grouped conv, which cannot absorb a dense mix.
                let e = deepen(g, &tp, &args, 4).unwrap_err();
                let m = format!("{e} | {}", e.hint_text().unwrap_or(""));
                assert!(
                    m.contains(&format!("`{block}.conv2` is a grouped convolution"))
                        && m.contains("use --method netmorph"),
                    "{m}"
                );
                continue;
            }
            let d = deepen(g, &tp, &args, 4).unwrap_or_else(|e| panic!("{what}: {e}"));
            // The block keeps its number and gets one more layer.
            assert!(
                d.site.contains(&format!("new layer `{block}.")),
                "{what}: {}",
                d.site
            );
            assert_eq!(d.graph.order().len(), g.order().len() + d.inserted.len());
            let (rt, rp) = rename(g, &tp, &d.name_map);
            let full = check_equivalence(&rt, &rp, &d.graph, &d.params, &opts).unwrap();
            let site = resolve_site(g, after).unwrap();
            let local = r2rc::local_proof::deepen::prove(g, &tp, &d, &site, &opts).unwrap();
            for e in full.iter().chain(&local) {
                let required =
                    d.exactness == Exactness::Exact || Mode::parse(&e.mode).unwrap() == Mode::Eval;
                if required {
                    assert!(
                        e.passed && e.max_rel_err <= 1e-9,
                        "{what}: {} ({:?})",
                        e.summary(),
                        e.first_divergence
                    );
                }
            }
        }
    }
    let g = compile(RESNEXT);
    let tp = teacher(&g, 1);
    let refuse = |after: &str, method| {
        let args = DeepenArgs {
            after: after.into(),
            method,
            width: None,
        };
        let e = deepen(&g, &tp, &args, 0).unwrap_err();
        format!("{e} | {}", e.hint_text().unwrap_or(""))
    };
    let m = refuse("conv2_1.conv1", DeepenMethod::R2r);
    assert!(
        m.contains("cannot insert R2DeeperR inside block `conv2_1`")
            && m.contains("no shortcut")
            && m.contains("--after conv2_1"),
        "{m}"
    );
    let m = refuse("conv2_1.conv2", DeepenMethod::Random);
    assert!(m.contains("inside block `conv2_1`"), "{m}");
    let m = refuse("conv2_1.conv3", DeepenMethod::Netmorph);
    assert!(
        m.contains("part of the last layer of block `conv2_1`")
            && m.contains("--after conv2_1.conv2"),
        "{m}"
    );
    let m = refuse("conv2_1.downsample.0", DeepenMethod::Netmorph);
    assert!(m.contains("is a layer inside block `conv2_1`"), "{m}");
}

/// Deepening `g` after `after`: the student, or the refusal's message and hint.
fn deepen_at(
    g: &Graph,
    tp: &Params,
    after: &str,
    method: r2rc::transform::deepen::DeepenMethod,
) -> Result<r2rc::transform::deepen::Deepened, String> {
    let args = r2rc::transform::deepen::DeepenArgs {
        after: after.into(),
        method,
        width: None,
    };
    r2rc::transform::deepen::deepen(g, tp, &args, 6)
        .map_err(|e| format!("{e} | {}", e.hint_text().unwrap_or("")))
}

/// Under `preact`, after a stem, a block, a dense layer or a transition: R2DeeperR and
/// NetMorph insert a pre-activated block (BN-act-conv, nothing after the add) that proves
/// exact in both batch-norm modes, whole and locally; Net2DeeperNet proves in eval mode
/// after the stem's ReLU and is refused after a block's un-normalised output; a dense
/// mix is refused before a batch norm; and a site whose normalised value feeds a layer
/// that is not pre-activated is refused, since the new block would leave it un-normalised.
#[test]
fn preact_and_dense_sites_between_blocks_prove_or_refuse() {
    use r2rc::exec::Mode;
    use r2rc::transform::deepen::{rename, resolve_site, DeepenMethod};
    use r2rc::transform::Exactness;
    let opts = ProveOptions::default();
    for (name, src, sites) in [
        ("preact", PREACT, &["conv1", "conv2_1", "conv3_1"][..]),
        (
            "dense",
            DENSE,
            &["conv0", "dense1_1", "trans1", "dense2_2"][..],
        ),
    ] {
        let g = compile(src);
        let tp = teacher(&g, 12);
        for &after in sites {
            let stem = matches!(after, "conv1" | "conv0");
            for method in [
                DeepenMethod::R2r,
                DeepenMethod::Netmorph,
                DeepenMethod::Net2net,
            ] {
                let what = format!("{name} --after {after} {method:?}");
                if method == DeepenMethod::Net2net && !stem {
                    let m = deepen_at(&g, &tp, after, method).unwrap_err();
                    assert!(
                        m.contains("cannot insert Net2DeeperNet")
                            && m.contains("start with batch norm and relu")
                            && m.contains("insert inside a block"),
                        "{what}: {m}"
                    );
                    continue;
                }
                let d = deepen_at(&g, &tp, after, method).unwrap_or_else(|e| panic!("{what}: {e}"));
                // The new block is pre-activated: it starts with its BN or activation and
                // has no activation after its last conv.
                let first = &d.graph.g[d.graph.find(&d.inserted[0]).unwrap()];
                assert!(
                    matches!(
                        first.op,
                        r2rc::ir::Op::BatchNorm(_) | r2rc::ir::Op::Activation(_)
                    ),
                    "{what}: starts with {}",
                    first.name
                );
                let (rt, rp) = rename(&g, &tp, &d.name_map);
                let full = check_equivalence(&rt, &rp, &d.graph, &d.params, &opts).unwrap();
                let site = resolve_site(&g, after).unwrap();
                let local = r2rc::local_proof::deepen::prove(&g, &tp, &d, &site, &opts).unwrap();
                assert_eq!((full.len(), local.len()), (2, 2), "{what}");
                for e in full.iter().chain(&local) {
                    let eval = Mode::parse(&e.mode).unwrap() == Mode::Eval;
                    if d.exactness == Exactness::Exact || eval {
                        assert!(
                            e.passed && e.max_rel_err <= 1e-9,
                            "{what}: {} ({:?})",
                            e.summary(),
                            e.first_divergence
                        );
                    }
                }
            }
            let m = deepen_at(&g, &tp, after, DeepenMethod::NetmorphDense).unwrap_err();
            assert!(
                m.contains("(batch_norm) does not mix channels linearly")
                    && m.contains("use --method netmorph"),
                "{name} {after}: {m}"
            );
        }
    }
    // The stem's ReLU output feeds `conv2`, a conv-BN-act layer: a pre-activated block
    // there would hand it an un-normalised value.
    let g = compile(
        "arch PS
input 3x8x8
preact
conv1    3x3, 8
conv2    3x3, 8
conv3_x  [3x3, 8; 3x3, 8] x 1
head     avg pool, 5-d fc
",
    );
    let tp = teacher(&g, 2);
    for method in [
        DeepenMethod::R2r,
        DeepenMethod::Netmorph,
        DeepenMethod::Net2net,
    ] {
        let m = deepen_at(&g, &tp, "conv1", method).unwrap_err();
        assert!(
            m.contains("cannot deepen after `conv1` in a pre-activated network")
                && m.contains("`conv1.act` is already normalised and read by `conv2`")
                && m.contains("insert after a block"),
            "{method:?}: {m}"
        );
    }
    // After `conv2` the block's own BN-act follows: that site is fine.
    assert!(deepen_at(&g, &tp, "conv2", DeepenMethod::R2r).is_ok());
}

/// Adds a node in the row its name starts with and makes it the output (the hand-built
/// nets below end at their last node).
fn add(
    g: &mut Graph,
    name: &str,
    op: r2rc::ir::Op,
    inputs: &[r2rc::ir::NodeIndex],
) -> r2rc::ir::NodeIndex {
    let row = name.split('.').next().unwrap().to_string();
    let n = g
        .add(name.into(), op, inputs, (&row, None), None)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    g.output = n;
    n
}

/// A bias-free KxK conv with same padding, stride 1.
fn conv(cin: usize, cout: usize, k: usize, groups: usize) -> r2rc::ir::Op {
    r2rc::ir::Op::Conv2d(r2rc::ir::Conv2d {
        in_channels: cin,
        out_channels: cout,
        kernel: [k, k],
        stride: 1,
        padding: k / 2,
        dilation: 1,
        groups,
        bias: false,
    })
}

fn bn(c: usize) -> r2rc::ir::Op {
    r2rc::ir::Op::BatchNorm(r2rc::ir::BatchNorm {
        channels: c,
        eps: 1e-5,
    })
}

fn relu() -> r2rc::ir::Op {
    r2rc::ir::Op::Activation(r2rc::ir::Activation::Relu)
}

/// A small DenseNet built with `Graph::add`: a stem (conv, BN, ReLU), a dense block of
/// three BN-ReLU-conv(1x1)-BN-ReLU-conv(3x3) layers (growth 4; the 3x3 of the second
/// grouped) each concatenated to its input, a transition (BN-ReLU-conv 1x1-avg pool), a
/// second dense layer, and a BN-ReLU-pool-fc head.
pub fn densenet() -> Graph {
    use r2rc::ir::{Defaults, Linear, NodeIndex, Op, Pool};
    let mut g = Graph::new("dense", Defaults::default(), vec![3, 8, 8]);
    let input = g.input;
    let c0 = add(&mut g, "conv0", conv(3, 6, 3, 1), &[input]);
    let b0 = add(&mut g, "conv0.bn", bn(6), &[c0]);
    let mut x = add(&mut g, "conv0.act", relu(), &[b0]);
    let mut c = 6;
    let layer = |g: &mut Graph, p: &str, x: NodeIndex, c: usize, groups: usize| {
        let b1 = add(g, &format!("{p}.bn1"), bn(c), &[x]);
        let a1 = add(g, &format!("{p}.act1"), relu(), &[b1]);
        let c1 = add(g, &format!("{p}.conv1"), conv(c, 8, 1, 1), &[a1]);
        let b2 = add(g, &format!("{p}.bn2"), bn(8), &[c1]);
        let a2 = add(g, &format!("{p}.act2"), relu(), &[b2]);
        let c2 = add(g, &format!("{p}.conv2"), conv(8, 4, 3, groups), &[a2]);
        add(g, &format!("{p}.cat"), Op::Concat, &[x, c2])
    };
    for (i, groups) in [1, 2, 1].into_iter().enumerate() {
        x = layer(&mut g, &format!("dense1_{}", i + 1), x, c, groups);
        c += 4;
    }
    let b = add(&mut g, "trans1.bn", bn(c), &[x]);
    let a = add(&mut g, "trans1.act", relu(), &[b]);
    let t = add(&mut g, "trans1.conv", conv(c, 8, 1, 1), &[a]);
    let pool = Pool {
        kernel: [2, 2],
        stride: 2,
        padding: 0,
    };
    x = add(&mut g, "trans1.pool", Op::AvgPool(pool), &[t]);
    x = layer(&mut g, "dense2_1", x, 8, 1);
    let b = add(&mut g, "head.bn", bn(12), &[x]);
    let a = add(&mut g, "head.act", relu(), &[b]);
    let p = add(&mut g, "head.pool", Op::GlobalAvgPool, &[a]);
    let f = add(&mut g, "head.fc.flatten", Op::Flatten, &[p]);
    add(
        &mut g,
        "head.fc",
        Op::Linear(Linear {
            in_features: 12,
            out_features: 5,
            bias: true,
        }),
        &[f],
    );
    g
}

#[test]
fn concatenated_spaces_take_their_parts_new_channels_and_prove() {
    let g = densenet();
    let spaces = channel_spaces(&g);
    // The last concatenation of the first block holds the stem's 6 channels and each
    // layer's 4, in order; it has none of its own, so it widens through its parts.
    let cat = spaces.space_of(g.find("dense1_3.cat").unwrap());
    let owners: Vec<&str> = cat
        .layout
        .iter()
        .map(|&o| spaces.spaces[o].label.as_str())
        .collect();
    assert_eq!(
        owners,
        [
            "conv0",
            "dense1_1.conv2",
            "dense1_2.conv2",
            "dense1_2.conv2",
            "dense1_3.conv2"
        ]
    );
    assert_eq!((cat.width, cat.own), (18, 0));
    assert!(!cat.widenable());
    assert!(spaces.why_fixed(cat.id)[0].contains(
        "all its channels belong to other spaces (through `dense1_3.cat`), which widen on their \
         own: widen a layer writing one of them (`conv0`, `dense1_1.conv2`, `dense1_2.conv2`, \
         `dense1_3.conv2`)"
    ));
    // The grouped 3x3's output: 2 groups of 2, inside every concatenation after it.
    assert_eq!(spaces.space_of(g.find("dense1_2.conv2").unwrap()).groups, 2);
    // The growth of a layer, the stem and every hidden width widen, by every method.
    let worst = prove_every_space("densenet", &g, Amount::Add(4));
    assert!(worst <= 1e-9);
    // Widening the stem: every reader of a concatenation gets new columns right after the
    // stem's 6 (dense1_2.conv1 reads [stem 6 + 2 new, layer 1's 4]).
    let tp = teacher(&g, 3);
    let args = widen_args(
        Target::Name("conv0".into()),
        Amount::Add(2),
        Method::Netmorph,
    );
    let w = widen(&g, &tp, &args, 0).unwrap();
    let (t, s) = (
        &tp.tensors["dense1_2.conv1.weight"],
        &w.params.tensors["dense1_2.conv1.weight"],
    );
    assert_eq!(s.shape(), &[8, 12, 1, 1]);
    for o in 0..8 {
        for i in 0..6 {
            assert_eq!(t[[o, i, 0, 0]], s[[o, i, 0, 0]]);
        }
        assert_eq!((s[[o, 6, 0, 0]], s[[o, 7, 0, 0]]), (0.0, 0.0));
        for i in 6..10 {
            assert_eq!(t[[o, i, 0, 0]], s[[o, i + 2, 0, 0]]);
        }
    }
    // Each tensor rewritten on its own, in reverse file order (as the streamed writer
    // and local proofs do), gives the in-memory student's bits, for every method.
    for method in [
        Method::R2r,
        Method::Net2net,
        Method::Netmorph,
        Method::Random,
    ] {
        let args = widen_args(Target::All, Amount::Add(4), method);
        let mem = widen(&g, &tp, &args, 8).unwrap();
        let wd = Widening::new(&g, &args, 8, &|n| tp.tensors.contains_key(n)).unwrap();
        let mut grown = 0;
        for (name, t) in tp.tensors.iter().rev() {
            let one = wd.tensor(name, t.clone(), Widening::ALL).unwrap();
            assert_eq!(one, mem.params.tensors[name], "{method:?} {name}");
            grown += usize::from(one.shape() != t.shape());
        }
        assert!(grown > 20, "{method:?}: {grown}");
    }
    let bn = &w.params.tensors["dense1_3.bn1.running_mean"];
    assert_eq!(bn.len(), 16);
    assert_eq!(bn[6], 0.0);
    assert_eq!(bn[8], tp.tensors["dense1_3.bn1.running_mean"][6]);
}

/// A small pre-activation ResNet by `Graph::add` (He et al. 2016b): each block is
/// BN-ReLU-conv, BN-ReLU-conv, added to the shortcut (a 1x1 projection of the first
/// BN-ReLU when the width changes), then a final BN-ReLU, pooling and fc.
pub fn preact(widths: &[usize], groups: usize, c0: usize) -> Graph {
    use r2rc::ir::{Defaults, Linear, Op};
    let mut g = Graph::new("preact", Defaults::default(), vec![3, 6, 6]);
    let input = g.input;
    let mut x = add(&mut g, "conv1", conv(3, c0, 3, 1), &[input]);
    let mut c = c0;
    for (i, &w) in widths.iter().enumerate() {
        let p = format!("conv2_{}", i + 1);
        let b1 = add(&mut g, &format!("{p}.bn1"), bn(c), &[x]);
        let a1 = add(&mut g, &format!("{p}.act1"), relu(), &[b1]);
        let c1 = add(&mut g, &format!("{p}.conv1"), conv(c, w, 3, 1), &[a1]);
        let b2 = add(&mut g, &format!("{p}.bn2"), bn(w), &[c1]);
        let a2 = add(&mut g, &format!("{p}.act2"), relu(), &[b2]);
        let gr = if w % groups == 0 { groups } else { 1 };
        let c2 = add(&mut g, &format!("{p}.conv2"), conv(w, w, 3, gr), &[a2]);
        let short = if w == c {
            x
        } else {
            add(&mut g, &format!("{p}.downsample"), conv(c, w, 1, 1), &[a1])
        };
        x = add(&mut g, &format!("{p}.add"), Op::Add, &[c2, short]);
        c = w;
    }
    let b = add(&mut g, "head.bn", bn(c), &[x]);
    let a = add(&mut g, "head.act", relu(), &[b]);
    let p = add(&mut g, "head.pool", Op::GlobalAvgPool, &[a]);
    let f = add(&mut g, "head.fc.flatten", Op::Flatten, &[p]);
    add(
        &mut g,
        "head.fc",
        Op::Linear(Linear {
            in_features: c,
            out_features: 3,
            bias: true,
        }),
        &[f],
    );
    g
}

/// Random pre-activation ResNets and DenseNets written in the language (random widths,
/// depths, growth rates and grouped 3x3 convs), and the hand-built ones: every widenable
/// space, widened by a random amount its groups allow with a random exact method, proves
/// to 1e-9 in both batch-norm modes, and an amount they do not allow is refused naming
/// the groups. Each written network is also deepened at a random site (after a block, a
/// dense layer or a transition, or inside a layer) by a random method: it proves as its
/// exactness promises, or is refused with a hint where no construction exists (R2DeeperR
/// inside a layer, a dense mix before a batch norm or into a grouped conv, Net2DeeperNet
/// after an un-normalised sum or concatenation).
#[test]
fn random_preactivation_and_dense_networks_prove() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
    let mut proved = 0;
    let mut deepened = 0;
    for case in 0..36 {
        let g = match case % 4 {
            0 => {
                let blocks = rng.random_range(1..4);
                let widths: Vec<usize> = (0..blocks).map(|_| 2 * rng.random_range(1..4)).collect();
                preact(
                    &widths,
                    *[1, 2].get(rng.random_range(0..2)).unwrap(),
                    rng.random_range(2..6),
                )
            }
            1 => densenet(),
            2 => compile(&random_preact_source(&mut rng)),
            _ => compile(&random_dense_source(&mut rng)),
        };
        let tp = teacher(&g, case);
        if case % 4 >= 2 {
            deepened += deepen_randomly(&g, &tp, &mut rng, &format!("case {case}"));
        }
        let spaces = channel_spaces(&g);
        let open: Vec<_> = spaces.spaces.iter().filter(|s| s.widenable()).collect();
        let s = open[rng.random_range(0..open.len())];
        let method = EXACT[rng.random_range(0..3)];
        let step = s.groups.max(1) * if method == Method::R2r { 2 } else { 1 };
        let e = step * rng.random_range(1..3);
        let what = format!("case {case} `{}` +{e} {method:?}", s.label);
        let args = widen_args(Target::Name(s.label.clone()), Amount::Add(e), method);
        let w = match widen(&g, &tp, &args, case) {
            Ok(w) => w,
            // A projection widened to its input's shape could not be printed.
            Err(er) if er.to_string().contains("no shape-preserving projection") => continue,
            Err(er) => panic!("{what}: {er}"),
        };
        assert_exact(&what, &prove(&g, &tp, &w.graph, &w.params));
        proved += 1;
        if s.groups > 1 {
            // Even for R2R (its pairs are checked first), yet no multiple of `step`.
            let off = if method == Method::R2r {
                step + 2
            } else {
                step + 1
            };
            let bad = widen_args(Target::Name(s.label.clone()), Amount::Add(off), method);
            let m = widen(&g, &tp, &bad, 0).unwrap_err().to_string();
            assert!(m.contains("groups by grouped convolution"), "{what}: {m}");
        }
    }
    assert!(proved >= 27, "only {proved} of 36 cases widened");
    assert!(deepened >= 6, "only {deepened} of 18 cases deepened");
}

/// A random pre-activation ResNet in the language: one or two stages of 1-3 basic
/// blocks, even widths, the second conv of a block grouped at random.
fn random_preact_source(rng: &mut rand_chacha::ChaCha8Rng) -> String {
    use rand::Rng;
    let mut src = format!(
        "arch RP\ninput 3x8x8\npreact\nconv1    3x3, {}\n",
        2 * rng.random_range(1..5)
    );
    for (stage, stride) in [(2, ""), (3, ", stride 2")]
        .into_iter()
        .take(rng.random_range(1..3))
    {
        let w = 2 * rng.random_range(2..5);
        let groups = if rng.random_bool(0.5) { ", C=2" } else { "" };
        let n = rng.random_range(1..4);
        src += &format!("conv{stage}_x  [3x3, {w}; 3x3, {w}{groups}] x {n}{stride}\n");
    }
    src + "head     avg pool, 5-d fc\n"
}

/// A random DenseNet in the language: a stem, a dense block, a transition and another
/// dense block, with random growth rates, depths and grouped 3x3 convs.
fn random_dense_source(rng: &mut rand_chacha::ChaCha8Rng) -> String {
    use rand::Rng;
    let mut block = |stage: usize| {
        let k = 2 * rng.random_range(1..4);
        let groups = if rng.random_bool(0.5) { ", C=2" } else { "" };
        let n = rng.random_range(1..4);
        format!(
            "dense{stage}_x    [1x1, {}; 3x3, {k}{groups}] x {n}, dense\n",
            2 * k
        )
    };
    let (b1, b2) = (block(1), block(2));
    format!(
        "arch RD\ninput 3x8x8\npreact\nconv0       3x3, {}\n{b1}trans1      transition 0.5\n{b2}classifier  avg pool, 5-d fc\n",
        2 * rng.random_range(1..5)
    )
}

/// Deepens a random pre-activation ResNet or DenseNet at a random site by a random method
/// ([`random_preactivation_and_dense_networks_prove`]); 1 if it deepened and proved, 0 if
/// it was refused as expected.
fn deepen_randomly(g: &Graph, tp: &Params, rng: &mut rand_chacha::ChaCha8Rng, what: &str) -> usize {
    use r2rc::exec::Mode;
    use r2rc::ir::Op;
    use r2rc::transform::deepen::{rename, DeepenMethod};
    use r2rc::transform::Exactness;
    use rand::Rng;
    // Blocks and layers: `conv2_i` / `dense1_i`, `trans1`; inside: `<block>.conv1`.
    let blocks: Vec<String> = g
        .order()
        .into_iter()
        .map(|n| &g.g[n].name)
        .filter(|n| n.ends_with(".conv1"))
        .map(|n| n.trim_end_matches(".conv1").to_string())
        .collect();
    let block = &blocks[rng.random_range(0..blocks.len())];
    let inside = rng.random_bool(0.5);
    let after = if inside {
        format!("{block}.conv1")
    } else if rng.random_bool(0.2) && g.find("trans1").is_some() {
        "trans1".to_string()
    } else {
        block.clone()
    };
    let methods = [
        DeepenMethod::R2r,
        DeepenMethod::Net2net,
        DeepenMethod::Netmorph,
        DeepenMethod::NetmorphDense,
    ];
    let method = methods[rng.random_range(0..methods.len())];
    let what = format!("{what} deepen --after {after} {method:?}");
    let grouped_reader = match &g.g[g.find(&format!("{block}.conv2")).unwrap()].op {
        Op::Conv2d(c) => c.groups > 1,
        _ => unreachable!("{block}.conv2 is a conv"),
    };
    let expect_ok = match (inside, method) {
        (false, DeepenMethod::R2r | DeepenMethod::Netmorph) => true,
        (true, DeepenMethod::Net2net | DeepenMethod::Netmorph) => true,
        (true, DeepenMethod::NetmorphDense) => !grouped_reader,
        _ => false,
    };
    match deepen_at(g, tp, &after, method) {
        Ok(d) => {
            assert!(expect_ok, "{what}: deepened where a refusal was expected");
            let (rt, rp) = rename(g, tp, &d.name_map);
            let ev = prove(&rt, &rp, &d.graph, &d.params);
            assert_eq!(ev.len(), 2, "{what}");
            for e in &ev {
                if d.exactness == Exactness::Exact || Mode::parse(&e.mode).unwrap() == Mode::Eval {
                    assert!(
                        e.passed && e.max_rel_err <= 1e-9,
                        "{what}: {} ({:?})",
                        e.summary(),
                        e.first_divergence
                    );
                }
            }
            1
        }
        Err(m) => {
            assert!(!expect_ok, "{what}: refused: {m}");
            // The refusal says why and what to do instead (`message | hint`).
            let (msg, hint) = m.split_once(" | ").unwrap();
            assert!(msg.contains("cannot"), "{what}: {m}");
            assert!(hint.contains("--"), "{what}: the hint names an option: {m}");
            0
        }
    }
}
