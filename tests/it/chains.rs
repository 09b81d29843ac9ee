//! Random networks x random rewrite chains, convolutional and transformers.
//!
//! A seeded generator writes random valid architectures (plain and residual rows, basic
//! and bottleneck blocks, grouped 3x3 convs, strides, projection/pad/no shortcuts, odd and even widths, every
//! activation) and random chains of 1-5 exact rewrites (widen r2r/netmorph/net2net, deepen
//! r2r/netmorph/netmorph-dense/net2net, kernel morph) at random targets. Properties:
//! - every step either proves (every mode its method is exact in: both BN modes, eval only
//!   for Net2DeeperNet) or is refused with a usage error naming why; never a failed proof,
//!   a panic or another kind of error;
//! - `parse(print(g)) == g` after every step, and the weights fit the graph;
//! - a chain whose steps are all exact in both modes proves end to end, the original
//!   teacher (renamed) against the final student.
//!
//! `R2RC_CHAIN_CASES=N` runs N cases instead of 300 (`cargo test --release --test it
//! chains::` for long runs); `R2RC_CHAIN_FIRST=K` starts at case K (to replay one).

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use r2rc::ir::{Graph, Op};
use r2rc::lower::compile;
use r2rc::params::{self, Params};
use r2rc::patch::Step;
use r2rc::pipeline::Proof;
use r2rc::print::print;
use r2rc::prove::{check_equivalence, failure, ProveOptions};
use r2rc::transform::deepen::{rename, DeepenArgs, DeepenMethod};
use r2rc::transform::morph_kernel::MorphArgs;
use r2rc::transform::{Amount, Init, Method, Target, WidenArgs};
use r2rc::Error;

use crate::common::{self, command};

const ACTS: [&str; 8] = [
    "relu",
    "prelu",
    "leaky_relu(0.2)",
    "leaky_relu",
    "tanh",
    "sigmoid",
    "gelu",
    "identity",
];

fn pick<'a, T>(rng: &mut ChaCha8Rng, xs: &'a [T]) -> &'a T {
    &xs[rng.random_range(0..xs.len())]
}

/// Options of a conv item: maybe an activation, a bias, a stride.
fn conv_opts(rng: &mut ChaCha8Rng, stride: bool) -> String {
    let mut s = String::new();
    if stride {
        s.push_str(", stride 2");
    }
    if rng.random_bool(0.3) {
        s.push_str(&format!(", act {}", pick(rng, &ACTS)));
    }
    if rng.random_bool(0.15) {
        s.push_str(", bias");
    }
    s
}

/// A random valid architecture on a small input.
fn architecture(rng: &mut ChaCha8Rng, case: u64) -> String {
    let mut t = format!("arch Chain{case}\n");
    let header = rng.random_range(0..8);
    match header {
        0 => t.push_str(&format!("act {}\n", pick(rng, &ACTS))),
        1 => t.push_str("shortcut pad\n"),
        2 => t.push_str("shortcut none\n"),
        3 => t.push_str("eps 0.001\n"),
        4 => t.push_str("norm none\n"),
        _ => {}
    }
    let c0 = rng.random_range(1..4);
    let mut size: usize = *pick(rng, &[8, 8, 7, 6]);
    t.push_str(&format!("input {c0}x{size}x{size}\n"));
    let mut c = rng.random_range(2..8);
    let k = *pick(rng, &[1, 3, 3, 5]);
    let stride = size >= 6 && rng.random_bool(0.3);
    t.push_str(&format!("conv1 {k}x{k}, {c}{}\n", conv_opts(rng, stride)));
    if stride {
        size = size.div_ceil(2);
    }
    if size >= 4 && rng.random_bool(0.3) {
        if rng.random_bool(0.5) {
            t.push_str("pool1 2x2 max pool, stride 2\n");
            size /= 2;
        } else {
            // `3x3 avg pool` first in a row would read as the size column and global
            // pooling, so this one states its size.
            size = size.div_ceil(2);
            t.push_str(&format!("pool1 {size}x{size} 3x3 avg pool, stride 2\n"));
        }
    }
    let stages = rng.random_range(1..4);
    for s in 0..stages {
        let row = s + 2;
        let stride = size >= 2 && rng.random_bool(0.4);
        let plain = rng.random_bool(0.25);
        // Widths may shrink, stay or grow; a pad shortcut needs them not to shrink.
        let mut w = (c as i64 + rng.random_range(-2..4)).clamp(1, 9) as usize;
        if plain {
            let k = *pick(rng, &[1, 3, 3, 5]);
            t.push_str(&format!(
                "conv{row} {k}x{k}, {w}{}\n",
                conv_opts(rng, stride)
            ));
        } else {
            let shortcut = match rng.random_range(0..6) {
                0 => {
                    w = w.max(c);
                    ", shortcut pad"
                }
                1 => ", shortcut none",
                2 => ", shortcut projection",
                _ => {
                    if header == 1 {
                        w = w.max(c);
                    }
                    ""
                }
            };
            let n = rng.random_range(1..3);
            let block = if rng.random_bool(0.3) {
                // Bottleneck: 1x1 down, 3x3 (maybe carrying the stride), 1x1 up.
                let m = rng.random_range(1..5);
                let inner = rng.random_bool(0.5);
                // ResNeXt's cardinality: the 3x3 conv grouped.
                let groups = if m % 2 == 0 && rng.random_bool(0.4) {
                    format!(", groups {}", *pick(rng, &[2, m]))
                } else {
                    String::new()
                };
                format!(
                    "[1x1, {m}{}; 3x3, {m}{}{groups}; 1x1, {w}{}] x {n}{}",
                    conv_opts(rng, false),
                    conv_opts(rng, stride && inner),
                    conv_opts(rng, false),
                    if stride && !inner { ", stride 2" } else { "" }
                )
            } else if rng.random_bool(0.15) {
                // A one-layer block.
                format!(
                    "[3x3, {w}{}] x {n}{}",
                    conv_opts(rng, false),
                    if stride { ", stride 2" } else { "" }
                )
            } else {
                let k = *pick(rng, &[1, 3, 3, 5]);
                let m = if rng.random_bool(0.5) {
                    w
                } else {
                    rng.random_range(1..8)
                };
                format!(
                    "[{k}x{k}, {m}{}; 3x3, {w}{}] x {n}{}",
                    conv_opts(rng, false),
                    conv_opts(rng, false),
                    if stride { ", stride 2" } else { "" }
                )
            };
            t.push_str(&format!("conv{row}_x {block}{shortcut}\n"));
        }
        if stride {
            size = size.div_ceil(2);
        }
        c = w;
    }
    let f = rng.random_range(2..11);
    match rng.random_range(0..4) {
        0 => t.push_str(&format!("head avg pool, {f}-d fc, softmax\n")),
        1 => t.push_str(&format!("head avg pool, {f}-d fc\n")),
        2 => t.push_str(&format!(
            "fc1 {}-d fc\nfc2 {f}-d fc\n",
            rng.random_range(2..9)
        )),
        _ => t.push_str(&format!("fc1 {f}-d fc, softmax\n")),
    }
    t
}

/// Names a rewrite can target in `g`.
struct Names {
    convs: Vec<(String, usize, usize)>,
    blocks: Vec<String>,
    rows: Vec<String>,
}

fn names(g: &Graph) -> Names {
    let mut convs = Vec::new();
    let mut blocks = Vec::new();
    let mut rows = Vec::new();
    for n in g.order() {
        let node = &g.g[n];
        if let Op::Conv2d(cv) = &node.op {
            convs.push((node.name.clone(), cv.out_channels, cv.kernel[0]));
            if !rows.contains(&node.row) {
                rows.push(node.row.clone());
            }
            if node.block.is_some() {
                let b = node.name.split('.').next().unwrap_or("").to_string();
                if !blocks.contains(&b) {
                    blocks.push(b);
                }
            }
        }
    }
    Names {
        convs,
        blocks,
        rows,
    }
}

/// A kernel morph of layer `layer` to `kernel`.
fn morph_step(layer: String, kernel: usize) -> Step {
    Step::Morph(MorphArgs { layer, kernel })
}

/// A widening of `target` by `amount` with a random exact method and init.
fn exact_widening(rng: &mut ChaCha8Rng, target: Target, amount: Amount) -> Step {
    Step::Widen(WidenArgs {
        target,
        amount,
        method: *pick(rng, &[Method::R2r, Method::Netmorph, Method::Net2net]),
        init: *pick(rng, &[Init::Match, Init::He]),
        noise: None,
    })
}

fn random_step(rng: &mut ChaCha8Rng, g: &Graph) -> Step {
    let n = names(g);
    match rng.random_range(0..10) {
        0..=4 => {
            let (target, width) = match rng.random_range(0..10) {
                0..=4 => {
                    let (c, w, _) = pick(rng, &n.convs).clone();
                    (Target::Name(c), Some(w))
                }
                5 | 6 if !n.blocks.is_empty() => (Target::Name(pick(rng, &n.blocks).clone()), None),
                7 | 8 => (Target::Name(pick(rng, &n.rows).clone()), None),
                _ => (Target::All, None),
            };
            let amount = match (rng.random_range(0..4), width) {
                (0, Some(w)) => Amount::To(w + rng.random_range(1..4)),
                (1, _) => Amount::By(*pick(rng, &[1.5, 2.0, 1.34])),
                _ => Amount::Add(rng.random_range(1..4)),
            };
            exact_widening(rng, target, amount)
        }
        5..=7 => {
            let mut sites = n.blocks.clone();
            sites.extend(n.rows.iter().cloned());
            // Inside a block's branch (`conv2_1.conv1`): refused after a block's last layer.
            sites.extend(
                n.convs
                    .iter()
                    .filter(|(c, _, _)| c.contains(".conv"))
                    .map(|(c, _, _)| c.clone()),
            );
            let method = *pick(
                rng,
                &[
                    DeepenMethod::R2r,
                    DeepenMethod::Netmorph,
                    DeepenMethod::NetmorphDense,
                    DeepenMethod::Net2net,
                ],
            );
            let width = if method == DeepenMethod::R2r && rng.random_bool(0.5) {
                Some(2 * rng.random_range(1..4))
            } else {
                None
            };
            Step::Deepen(DeepenArgs {
                after: pick(rng, &sites).clone(),
                method,
                width,
            })
        }
        _ => {
            let (c, _, k) = pick(rng, &n.convs).clone();
            morph_step(c, k + 2 * rng.random_range(1..3))
        }
    }
}

/// A step's student, its renames, whether it is exact in both modes, and its proof runs.
type Applied = (
    Graph,
    Params,
    BTreeMap<String, String>,
    bool,
    Vec<r2rc::prove::Evidence>,
);

/// What one case did, for the tallies.
#[derive(Default)]
struct Tally {
    cases: usize,
    applied: BTreeMap<String, usize>,
    refused: BTreeMap<String, usize>,
    refusals: BTreeMap<String, String>,
    end_to_end: usize,
}

fn kind(step: &Step) -> String {
    match step {
        Step::Widen(a) => format!("widen {}", a.method.name()),
        Step::Deepen(a) => format!("deepen {}", a.method.name()),
        Step::Morph(..) => "morph".into(),
        Step::Name(..) => "name".into(),
    }
}

/// What a family's chains are made of: its random architectures and random steps.
struct Family {
    /// Seeds its cases apart from the other family's.
    seed: u64,
    architecture: fn(&mut ChaCha8Rng, u64) -> String,
    step: fn(&mut ChaCha8Rng, &Graph) -> Step,
    /// Cases run by default.
    cases: u64,
    /// The methods a run must apply, each in at least one case in 20.
    methods: &'static [&'static str],
}

const CONVOLUTIONAL: Family = Family {
    seed: 0xC4A1_0000,
    architecture,
    step: random_step,
    cases: 300,
    methods: &[
        "widen r2r",
        "widen netmorph",
        "widen net2net",
        "deepen r2r",
        "deepen netmorph",
        "deepen netmorph-dense",
        "deepen net2net",
        "morph",
    ],
};

/// Runs one case; `Err` describes a broken property.
fn run_case(case: u64, tally: &mut Tally, family: &Family) -> Result<(), String> {
    let mut rng = ChaCha8Rng::seed_from_u64(family.seed + case);
    let text = (family.architecture)(&mut rng, case);
    let graph = compile(&text, &[]).map_err(|e| format!("generated text fails: {e:?}\n{text}"))?;
    // f64 storage: Net2WiderNet divides by replica counts, which f32 storage rounds, and
    // train-mode batch norm on 2x2 maps of 2 images can amplify that rounding past the f32
    // storage tolerance (case 7024 of the first long run: 4e-5 against 1e-5). The chains
    // test the rewrites; storage rounding is measured by the widen tests.
    let teacher = common::teacher(&graph, case);
    let opts = ProveOptions {
        seed: case,
        ..ProveOptions::default()
    };
    let (mut g, mut p) = (graph.clone(), teacher.clone());
    let mut map: BTreeMap<String, String> = graph
        .g
        .node_weights()
        .map(|n| (n.name.clone(), n.name.clone()))
        .collect();
    let mut all_exact = true;
    let mut tolerance: Option<f64> = None;
    let mut log = String::new();
    // A widening that puts new channels inside a grouped, pad-shortcut or concatenated
    // space keeps the teacher's channels at places only that space's structure records;
    // a later deepening may re-root it (a NetMorph conv copies the interleaved channels
    // into a space of its own), and then the end-to-end proof cannot locate the teacher's
    // channels in intermediate values. Every step is still proved on its own.
    let mut interleaved = false;
    let mut relocated = false;
    let steps = rng.random_range(1..6);
    for i in 0..steps {
        let step = (family.step)(&mut rng, &g);
        log.push_str(&format!("step {}: {step:?}\n", i + 1));
        let ctx = |m: String| {
            format!(
                "{m}\n--- case {case}\n{text}{log}--- current\n{}",
                print(&g)
            )
        };
        let seed = case.wrapping_mul(31).wrapping_add(i);
        let inside = match &step {
            Step::Widen(a) => r2rc::transform::plan(&g, a).is_ok_and(|pl| {
                pl.landings
                    .iter()
                    .flatten()
                    .any(|l| l.runs.len() != 1 || l.runs[0] != (0, l.width))
            }),
            _ => false,
        };
        let out: Result<Applied, Error> =
            r2rc::pipeline::run(&g, &p, &step, seed, Proof::Full(&opts), "chain").map(|s| {
                let exact = s.exact_everywhere;
                (
                    s.graph,
                    s.params,
                    s.report.name_map,
                    exact,
                    s.report.evidence,
                )
            });
        let (ng, np, step_map, exact, evidence) = match out {
            Ok(x) => x,
            Err(Error::Usage { message, .. }) => {
                let k = kind(&step);
                *tally.refused.entry(k.clone()).or_default() += 1;
                // Keep one example of each distinct refusal (numbers blanked) for review.
                let shape: String = message
                    .chars()
                    .map(|c| if c.is_ascii_digit() { '#' } else { c })
                    .collect();
                tally
                    .refusals
                    .entry(format!("{k}: {shape}"))
                    .or_insert(message);
                log.push_str("  refused\n");
                continue;
            }
            Err(e) => return Err(ctx(format!("step {} failed: {e}", i + 1))),
        };
        if evidence.len() != 2 {
            return Err(ctx(format!(
                "step {} has {} proof runs, not 2",
                i + 1,
                evidence.len()
            )));
        }
        if exact && evidence.iter().any(|e| !e.passed) {
            return Err(ctx(format!(
                "exact step {} has a failed proof run: {evidence:?}",
                i + 1
            )));
        }
        for e in &evidence {
            if e.passed && tolerance.is_none_or(|t| e.tolerance > t) {
                tolerance = Some(e.tolerance);
            }
        }
        *tally.applied.entry(kind(&step)).or_default() += 1;
        all_exact &= exact;
        relocated |= interleaved && matches!(step, Step::Deepen(_));
        interleaved |= inside;
        let printed = print(&ng);
        let again = compile(&printed, &[])
            .map_err(|e| ctx(format!("student does not compile: {e:?}\n{printed}")))?;
        if again != ng {
            return Err(ctx(format!(
                "parse(print(g)) != g after step {}\n{printed}",
                i + 1
            )));
        }
        np.check(&ng)
            .map_err(|e| ctx(format!("weights do not fit the student: {e}")))?;
        for cur in map.values_mut() {
            if let Some(n) = step_map.get(cur) {
                *cur = n.clone();
            }
        }
        g = ng;
        p = np;
    }
    if all_exact && g != graph && !relocated {
        let name_map: BTreeMap<String, String> = map.into_iter().filter(|(a, b)| a != b).collect();
        let (t, tp) = rename(&graph, &teacher, &name_map);
        let o = ProveOptions {
            tolerance,
            ..opts.clone()
        };
        let ev = check_equivalence(&t, &tp, &g, &p, &o).map_err(|e| format!("{e}\n{text}{log}"))?;
        if let Some(e) = failure(&ev) {
            return Err(format!("end to end: {e}\n--- case {case}\n{text}{log}"));
        }
        tally.end_to_end += 1;
    }
    tally.cases += 1;
    Ok(())
}

/// Runs `R2RC_CHAIN_CASES` cases (else the family's) of `family` from `R2RC_CHAIN_FIRST`,
/// panics on a broken property, prints the tallies, and checks that every method of the
/// family was applied in at least one case in 20 and that a quarter of the chains proved
/// end to end.
fn run_cases(family: &Family) {
    let cases: u64 = std::env::var("R2RC_CHAIN_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(family.cases);
    let first: u64 = std::env::var("R2RC_CHAIN_FIRST")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut tally = Tally::default();
    for case in first..first + cases {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut t = Tally::default();
            run_case(case, &mut t, family).map(|_| t)
        }));
        match r {
            Ok(Ok(t)) => {
                tally.cases += t.cases;
                tally.end_to_end += t.end_to_end;
                for (k, v) in t.applied {
                    *tally.applied.entry(k).or_default() += v;
                }
                for (k, v) in t.refused {
                    *tally.refused.entry(k).or_default() += v;
                }
                for (k, v) in t.refusals {
                    tally.refusals.entry(k).or_insert(v);
                }
            }
            Ok(Err(m)) => panic!("case {case}: {m}"),
            Err(_) => panic!(
                "case {case} panicked (replay with R2RC_CHAIN_FIRST={case} R2RC_CHAIN_CASES=1)"
            ),
        }
    }
    eprintln!(
        "{} cases, {} proved end to end\napplied: {:?}\nrefused: {:?}",
        tally.cases, tally.end_to_end, tally.applied, tally.refused
    );
    for (k, m) in &tally.refusals {
        eprintln!("refusal {k}\n    e.g. {m}");
    }
    assert_eq!(tally.cases as u64, cases);
    // The generator must exercise every method, not only hit refusals.
    for k in family.methods {
        assert!(
            tally.applied.get(*k).copied().unwrap_or(0) * 20 >= cases as usize,
            "too few `{k}` steps applied: {:?}",
            tally.applied
        );
    }
    assert!(
        tally.end_to_end * 4 >= cases as usize,
        "too few chains proved end to end"
    );
}

#[test]
fn random_chains_prove_and_round_trip() {
    run_cases(&CONVOLUTIONAL);
}

/// A random small transformer (the header's options, RoPE or learned positions, grouped
/// or full attention, gated or plain MLPs, extra ReLU MLPs, tied, biased or class-token
/// heads, sometimes post-norm, which growth refuses).
fn transformer(rng: &mut ChaCha8Rng, _case: u64) -> String {
    let (kv, group) = (rng.random_range(1..3), rng.random_range(1..3));
    let heads = kv * group;
    let d = heads * 4;
    let rope = rng.random_bool(0.5);
    let mut src = format!(
        "arch T\nnorm {}, act {}{}\n",
        pick(rng, &["rms", "layer"]),
        pick(rng, &["silu", "gelu_tanh"]),
        if rng.random_bool(0.5) {
            ", no bias"
        } else {
            ""
        }
    );
    if rng.random_ratio(1, 10) {
        src.push_str("postnorm\n");
    }
    src.push_str(&format!(
        "input 6 tokens, vocab 20\n\nembed  6x{d}  {d}-d token embedding"
    ));
    if !rope {
        src.push_str(", learned positions");
    }
    let attn = crate::transformers::attention(heads, kv, rope, rng.random_bool(0.7));
    let gated = if rng.random_bool(0.5) { " gated" } else { "" };
    let mut subs = vec![attn, format!("mlp {}{gated}", 2 * d)];
    if rng.random_ratio(1, 4) {
        subs.push(format!("mlp {d}, act relu"));
    }
    src.push_str(&format!(
        "\nlayers_x  [{}] x {}\n",
        subs.join("; "),
        rng.random_range(1..3)
    ));
    let head: &&str = pick(
        rng,
        &[
            "head  norm, 20-d fc, tied\n",
            "head  norm, 20-d fc, bias\n",
            "head  norm, class token, 3-d fc\n",
        ],
    );
    src.push_str(head);
    src
}

/// A random widening (the stream, every layer's MLPs or heads, one layer's, or all) or
/// deepening (after a layer) of a transformer.
fn transformer_step(rng: &mut ChaCha8Rng, g: &Graph) -> Step {
    // Sublayers (`layers_1.mlp`, `layers_2.attention`) and their layers, in order.
    let mut subs: Vec<String> = Vec::new();
    let mut layers: Vec<String> = Vec::new();
    for n in g.order() {
        let node = &g.g[n];
        if node.block.is_none() {
            continue;
        }
        let mut parts = node.name.split('.');
        let (Some(layer), Some(sub)) = (parts.next(), parts.next()) else {
            continue;
        };
        let sub = format!("{layer}.{sub}");
        if !subs.contains(&sub) {
            subs.push(sub);
        }
        if !layers.iter().any(|l| l == layer) {
            layers.push(layer.to_string());
        }
    }
    if rng.random_range(0..10) < 7 {
        let sub = pick(rng, &subs).clone();
        let every = sub.replacen(sub.split('.').next().unwrap_or(""), "layers_x", 1);
        let target = match rng.random_range(0..6) {
            0 => Target::Name("layers_x".into()),
            1 | 2 => Target::Name(every),
            3 | 4 => Target::Name(sub),
            _ => Target::All,
        };
        let amount = match rng.random_range(0..3) {
            0 => Amount::By(2.0),
            1 => Amount::By(1.5),
            _ => Amount::Add(rng.random_range(1..3)),
        };
        exact_widening(rng, target, amount)
    } else {
        Step::Deepen(DeepenArgs {
            after: pick(rng, &layers).clone(),
            method: *pick(
                rng,
                &[
                    DeepenMethod::R2r,
                    DeepenMethod::Netmorph,
                    DeepenMethod::Copy,
                ],
            ),
            width: None,
        })
    }
}

const TRANSFORMERS: Family = Family {
    seed: 0x7F0A_0000,
    architecture: transformer,
    step: transformer_step,
    cases: 200,
    methods: &[
        "widen r2r",
        "widen netmorph",
        "widen net2net",
        "deepen r2r",
        "deepen netmorph",
        "deepen copy",
    ],
};

/// The same properties for transformers: widenings of the stream (norm-aware), MLPs and
/// heads, and deepenings, chained.
#[test]
fn random_transformer_chains_prove_and_round_trip() {
    run_cases(&TRANSFORMERS);
}

/// Found by the chains: a 5x5 kernel on a 1x1 feature map (every tap but the centre reads
/// only padding) made the executor's im2col index before the row and panic.
#[test]
fn kernels_wider_than_their_input_run() {
    let g = compile(
        "arch Tiny\ninput 2x1x1\nconv1 5x5, 3, bias\nconv2 3x3, 2, stride 2\nhead avg pool, 2-d fc\n",
        &[],
    )
    .unwrap();
    let p = params::init(&g, 1, true);
    let ev = check_equivalence(&g, &p, &g, &p, &ProveOptions::default()).unwrap();
    assert!(
        ev.iter().all(|e| e.passed && e.max_abs_err == 0.0),
        "{ev:?}"
    );
}

/// Applies `steps` in order (each proved in both modes) and returns the last student.
fn chain(text: &str, steps: &[Step]) -> Result<(Graph, Params), Error> {
    let mut g = compile(text, &[]).unwrap();
    let mut p = params::init(&g, 17, true);
    let opts = ProveOptions::default();
    for (i, s) in steps.iter().enumerate() {
        let stepped = r2rc::pipeline::run(&g, &p, s, i as u64, Proof::Full(&opts), "t")?;
        (g, p) = (stepped.graph, stepped.params);
        assert!(compile(&print(&g), &[]).unwrap() == g);
    }
    Ok((g, p))
}

fn widen_step(target: &str, amount: Amount, method: Method) -> Step {
    Step::Widen(WidenArgs {
        target: Target::Name(target.into()),
        amount,
        method,
        init: Init::Match,
        noise: None,
    })
}

fn deepen_step(after: &str, method: DeepenMethod, width: Option<usize>) -> Step {
    Step::Deepen(DeepenArgs {
        after: after.into(),
        method,
        width,
    })
}

/// Found by the chains (case 17): an R2DeeperR branch is zero by cancellation, so once a
/// later rewrite changed rounding upstream, its relative error against its own rounding
/// noise was O(1) and the proof failed. Values are now judged against the magnitudes they
/// are computed from.
#[test]
fn an_r2r_block_stays_provable_after_later_rewrites() {
    let text = "arch C17\ninput 2x6x6\nconv1 3x3, 6\npool1 2x2 max pool, stride 2\n\
                conv2_x [3x3, 7; 3x3, 7] x 1, stride 2\nconv3 1x1, 8, act tanh\n\
                conv4 5x5, 6, stride 2\nfc1 2-d fc\nfc2 9-d fc\n";
    chain(
        text,
        &[
            deepen_step("conv4", DeepenMethod::R2r, Some(6)),
            widen_step("conv2_x", Amount::Add(3), Method::Netmorph),
            widen_step("conv2_1", Amount::Add(2), Method::Net2net),
        ],
    )
    .unwrap();
}

/// Found by the chains (case 41): widening the input of a projection-shortcut block to
/// the block's width made the projection shape-preserving, which the language prints as an
/// identity shortcut; refused now.
#[test]
fn widening_into_a_shape_preserving_projection_is_refused() {
    let text = "arch C41\ninput 1x6x6\nconv1 5x5, 2\nconv2_x [3x3, 5] x 1\nhead avg pool, 2-d fc\n";
    let e = chain(text, &[widen_step("conv1", Amount::To(5), Method::Net2net)]).unwrap_err();
    assert!(matches!(e, Error::Usage { .. }), "{e:?}");
    assert!(
        e.to_string().contains("no shape-preserving projection"),
        "{e}"
    );
    assert!(e.to_string().contains("conv2_1.downsample.0"), "{e}");
    // Other widths are fine.
    chain(text, &[widen_step("conv1", Amount::To(4), Method::Net2net)]).unwrap();
}

/// Found by the chains (case 80): Net2WiderNet left an fc weight in column-major order and
/// NetMorph-dense's reshape of its readers failed with a layout error.
#[test]
fn netmorph_dense_absorbs_into_a_widened_fc() {
    let text = "arch C80\ninput 3x6x6\nconv1 1x1, 7, act sigmoid\npool1 2x2 max pool, stride 2\n\
                conv2 3x3, 7, stride 2\nconv3 5x5, 9\nconv4 3x3, 8\nfc1 7-d fc, softmax\n";
    chain(
        text,
        &[
            Step::Widen(WidenArgs {
                target: Target::All,
                amount: Amount::Add(1),
                method: Method::Net2net,
                init: Init::Match,
                noise: None,
            }),
            deepen_step("conv4", DeepenMethod::NetmorphDense, None),
        ],
    )
    .unwrap();
}

/// Kernel morphing refuses a projection shortcut: the language writes those as 1x1 only.
#[test]
fn morphing_a_projection_shortcut_is_refused() {
    let text = "arch M\ninput 3x8x8\nconv1 3x3, 4\nconv2_x [3x3, 6; 3x3, 6] x 1, stride 2\nhead avg pool, 3-d fc\n";
    let e = chain(text, &[morph_step("conv2_1.downsample.0".into(), 3)]).unwrap_err();
    assert!(e.to_string().contains("projection shortcut"), "{e}");
}

/// Found by replaying a chain through `r2rc apply`: a plan whose Net2WiderNet step needed
/// the f32 storage tolerance then failed its end-to-end proof at 1e-9; the end-to-end
/// proof now uses the loosest tolerance its steps used.
#[test]
fn apply_proves_end_to_end_at_the_tolerance_its_steps_needed() {
    let dir = tempfile::tempdir().unwrap();
    let arch = dir.path().join("c.arch");
    std::fs::write(
        &arch,
        "arch C\ninput 2x8x8\nconv1 1x1, 3\npool1 4x4 3x3 avg pool, stride 2\n\
         conv2_x [1x1, 3, act identity; 3x3, 3, stride 2; 1x1, 3] x 2, shortcut projection\n\
         conv3_x [3x3, 6, act prelu, bias; 3x3, 5, act tanh, bias] x 2, stride 2\n\
         head avg pool, 10-d fc\n",
    )
    .unwrap();
    let plan = dir.path().join("c.plan");
    std::fs::write(
        &plan,
        "deepen --after conv1 --method r2r --width 6\nwiden --layer conv1_1.conv1 --by 1.5 --method net2net\n",
    )
    .unwrap();
    let out = command([
        "apply",
        arch.to_str().unwrap(),
        plan.to_str().unwrap(),
        "--seed",
        "3",
    ])
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("proof (end to end)") && err.contains("tolerance 1e-5"),
        "{err}"
    );
}
