//! Independent cross-check of the ONNX export and the executor: every example (and two
//! hand-built graphs covering every op) is exported to ONNX, run in tract-onnx on random
//! inputs, and compared with r2rc's own forward pass. Weights are random with random
//! biases and BN statistics so that identity-looking statistics cannot hide a bug.

use ndarray::{ArrayD, Axis, Slice};
use r2rc::exec::{Executor, Mode};
use r2rc::ir::{
    Activation, BatchNorm, Conv2d, Defaults, Graph, Linear, NodeIndex, Op, Pool, ShortcutPad,
};
use r2rc::params::{self, Params};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tract_onnx::prelude::*;

use crate::common::{
    arch_files, example, example_path, init_weights, is_transformer, listing, r2rc, s,
    too_heavy_to_run,
};

/// Max abs difference allowed, relative to the largest |output|.
const TOLERANCE: f64 = 1e-4;
const BATCH: usize = 2;

fn add(g: &mut Graph, name: &str, op: Op, inputs: &[NodeIndex]) -> NodeIndex {
    let row = name.split('.').next().unwrap().to_string();
    g.add(name.into(), op, inputs, (&row, None), None)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn conv(i: usize, o: usize, k: [usize; 2], s: usize, p: usize, d: usize, gr: usize) -> Op {
    Op::Conv2d(Conv2d {
        in_channels: i,
        out_channels: o,
        kernel: k,
        stride: s,
        padding: p,
        dilation: d,
        groups: gr,
        bias: gr == 1,
    })
}

fn bn(c: usize, eps: f64) -> Op {
    Op::BatchNorm(BatchNorm { channels: c, eps })
}

fn act(a: Activation) -> Op {
    Op::Activation(a)
}

fn linear(i: usize, o: usize, bias: bool) -> Op {
    Op::Linear(Linear {
        in_features: i,
        out_features: o,
        bias,
    })
}

/// Every op and activation: grouped dilated conv, BN on maps and vectors, every
/// activation, max pool with padding after negative values, count-including average pool,
/// a padding shortcut with subsampling, a three-way add, global pooling, softmax.
fn all_ops_a() -> Graph {
    let mut g = Graph::new("all_ops_a", Defaults::default(), vec![3, 9, 9]);
    let x = g.input;
    let c1 = add(&mut g, "conv1", conv(3, 8, [3, 3], 1, 1, 1, 1), &[x]);
    let b1 = add(&mut g, "conv1.bn", bn(8, 1e-5), &[c1]);
    let a1 = add(&mut g, "conv1.act", act(Activation::Relu), &[b1]);
    let c2 = add(&mut g, "conv2", conv(8, 8, [3, 3], 2, 2, 2, 2), &[a1]);
    let a2 = add(
        &mut g,
        "conv2.act",
        act(Activation::Prelu { channels: 8 }),
        &[c2],
    );
    let a3 = add(
        &mut g,
        "conv2.leaky",
        act(Activation::LeakyRelu { slope: 0.1 }),
        &[a2],
    );
    let pool = Op::MaxPool(Pool {
        kernel: [3, 3],
        stride: 2,
        padding: 1,
    });
    let p1 = add(&mut g, "conv2.pool", pool, &[a3]);
    let c3 = add(
        &mut g,
        "conv3_1.conv1",
        conv(8, 16, [3, 3], 2, 1, 1, 1),
        &[p1],
    );
    let b3 = add(&mut g, "conv3_1.bn1", bn(16, 1e-3), &[c3]);
    let t3 = add(&mut g, "conv3_1.act1", act(Activation::Tanh), &[b3]);
    let sp = Op::ShortcutPad(ShortcutPad {
        stride: 2,
        out_channels: 16,
    });
    let s3 = add(&mut g, "conv3_1.downsample", sp, &[p1]);
    let sum = add(&mut g, "conv3_1.add", Op::Add, &[t3, s3]);
    let sg = add(&mut g, "conv3_1.act", act(Activation::Sigmoid), &[sum]);
    let avg = Op::AvgPool(Pool {
        kernel: [3, 3],
        stride: 1,
        padding: 1,
    });
    let p2 = add(&mut g, "conv4.pool", avg, &[sg]);
    let ge = add(&mut g, "conv4.act", act(Activation::Gelu), &[p2]);
    let id = add(&mut g, "conv4.id", act(Activation::Identity), &[ge]);
    let sum3 = add(&mut g, "conv4.add", Op::Add, &[id, sg, ge]);
    let gp = add(&mut g, "head.pool", Op::GlobalAvgPool, &[sum3]);
    let fl = add(&mut g, "head.fc.flatten", Op::Flatten, &[gp]);
    let fc = add(&mut g, "head.fc", linear(16, 10, true), &[fl]);
    let b4 = add(&mut g, "head.bn", bn(10, 1e-5), &[fc]);
    let a4 = add(
        &mut g,
        "head.act",
        act(Activation::Prelu { channels: 10 }),
        &[b4],
    );
    let fc2 = add(&mut g, "head.fc2", linear(10, 5, false), &[a4]);
    g.output = add(&mut g, "head.softmax", Op::Softmax, &[fc2]);
    g
}

/// Non-square kernels, channel-only and subsample-only shortcuts, flatten of a full map
/// (channel-major order matters), and an output that is not squashed by softmax.
fn all_ops_b() -> Graph {
    let mut g = Graph::new("all_ops_b", Defaults::default(), vec![2, 6, 6]);
    let x = g.input;
    let c1 = add(&mut g, "conv1", conv(2, 4, [3, 1], 1, 1, 1, 1), &[x]);
    let sp1 = Op::ShortcutPad(ShortcutPad {
        stride: 1,
        out_channels: 6,
    });
    let s1 = add(&mut g, "conv1.pad", sp1, &[c1]);
    let sp2 = Op::ShortcutPad(ShortcutPad {
        stride: 2,
        out_channels: 6,
    });
    let s2 = add(&mut g, "conv1.sub", sp2, &[s1]);
    let avg = Op::AvgPool(Pool {
        kernel: [2, 2],
        stride: 2,
        padding: 1,
    });
    let p = add(&mut g, "conv1.pool", avg, &[s2]);
    let fl = add(&mut g, "head.fc.flatten", Op::Flatten, &[p]);
    let n = g.g[fl].shape[0];
    g.output = add(&mut g, "head.fc", linear(n, 7, true), &[fl]);
    g
}

fn random_input(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut full = vec![BATCH];
    full.extend_from_slice(shape);
    let n: usize = full.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    ArrayD::from_shape_vec(full, data).unwrap()
}

/// Runs the ONNX model in tract on `x`; returns the output as an ndarray.
fn run_tract(model: &[u8], x: &ArrayD<f32>) -> ArrayD<f32> {
    run_tract_on(model, x)
}

/// Runs the ONNX model in tract on `x` (f32 images or features, i64 token ids).
fn run_tract_on<T: Datum + Copy>(model: &[u8], x: &ArrayD<T>) -> ArrayD<f32> {
    let plan = tract_onnx::onnx()
        .model_for_read(&mut std::io::Cursor::new(model))
        .expect("tract reads the model")
        .with_input_fact(0, T::fact(x.shape()).into())
        .expect("input fact")
        .into_optimized()
        .expect("tract optimises the model")
        .into_runnable()
        .expect("runnable");
    let input = Tensor::from_shape(x.shape(), x.as_slice().unwrap()).unwrap();
    let out = plan.run(tvec!(input.into())).expect("tract runs the model");
    let view = out[0].to_array_view::<f32>().unwrap();
    ArrayD::from_shape_vec(view.shape().to_vec(), view.iter().copied().collect()).unwrap()
}

/// r2rc's executor in f32, eval mode.
fn run_r2rc(graph: &Graph, params: &Params, x: &ArrayD<f32>) -> ArrayD<f32> {
    Executor::<f32>::new(graph, params)
        .expect("executor accepts the weights")
        .forward(x.clone(), Mode::Eval)
        .expect("forward pass")
}

/// Every convolutional `examples/*.arch` and the all-ops fixtures `scripts/interop/*.arch`
/// that the Python check also uses, compiled with their defaults. The transformers are
/// checked in `transformer_examples_match_tract`, on inputs they can afford.
fn examples() -> Vec<Graph> {
    let mut paths = Vec::new();
    for dir in ["examples", "scripts/interop"] {
        let found = arch_files(dir);
        assert!(!found.is_empty(), "no .arch files in {dir}");
        paths.extend(found);
    }
    let graphs: Vec<Graph> = paths
        .iter()
        .map(|p| {
            let src = std::fs::read_to_string(p).unwrap();
            r2rc::lower::compile(&src, &[])
                .unwrap_or_else(|e| panic!("{}: {}", p.display(), e.message))
        })
        .filter(|g| !is_transformer(g) && !too_heavy_to_run(g))
        .collect();
    assert!(graphs.len() >= 8, "{} convolutional graphs", graphs.len());
    graphs
}

/// ViT-B/16 on BATCH images and GPT-2 small on BATCH sequences of 8 token ids (the ONNX
/// input's token count is dynamic) against tract, weights as for the others: about 25 s
/// and 3 GB, one model after the other so that only one is held at a time. TinyLlama is
/// left out: its 1.1B parameters take 4.4 GB in f32, 8.8 GB as r2rc initialises them.
#[test]
fn transformer_examples_match_tract() {
    for (i, name) in ["vit_b16", "gpt2"].into_iter().enumerate() {
        let g = example(name);
        assert!(is_transformer(&g), "{name}");
        let seed = 200 + i as u64;
        let params = params::init(&g, seed, true);
        let start = std::time::Instant::now();
        let model = r2rc::emit::to_onnx(&g, &params).expect("export");
        let exported = start.elapsed().as_secs_f64();
        let ours_x;
        let theirs = if g.defaults.vocab.is_some() {
            let ids = r2rc::exec::random_input(&g, BATCH, seed + 1)
                .slice_axis(Axis(1), Slice::from(..8))
                .to_owned();
            ours_x = ids.mapv(|v| v as f32);
            run_tract_on(&model, &ids.mapv(|v| v as i64))
        } else {
            ours_x = random_input(g.input_shape(), seed + 1);
            run_tract(&model, &ours_x)
        };
        drop(model);
        let tract = start.elapsed().as_secs_f64() - exported;
        let ours = run_r2rc(&g, &params, &ours_x);
        let r2rc = start.elapsed().as_secs_f64() - exported - tract;
        assert_eq!(ours.shape(), theirs.shape(), "{name}");
        let scale = theirs.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
        let err = ours
            .iter()
            .zip(theirs.iter())
            .fold(0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
        eprintln!(
            "{name:<20} max|out| {scale:.3e}  max|err| {err:.3e}  \
             (export {exported:.1} s, tract {tract:.1} s, r2rc {r2rc:.1} s)"
        );
        assert!(
            scale > 0.0 && err <= TOLERANCE * scale,
            "{name}: r2rc and tract differ by {err:e} (max |output| {scale:e})"
        );
    }
}

/// Exports, runs both, and returns (max abs error, max |output|).
fn compare(graph: &Graph, seed: u64) -> (f64, f64) {
    let params = params::init(graph, seed, true);
    let model = r2rc::emit::to_onnx(graph, &params).expect("export");
    let x = random_input(graph.input_shape(), seed + 1);
    let theirs = run_tract(&model, &x);
    let ours = run_r2rc(graph, &params, &x);
    let mut want = vec![BATCH];
    want.extend_from_slice(graph.output_shape());
    assert_eq!(
        theirs.shape(),
        want.as_slice(),
        "{}: tract shape",
        graph.name
    );
    assert_eq!(ours.shape(), want.as_slice(), "{}: r2rc shape", graph.name);
    let scale = theirs.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let err = ours
        .iter()
        .zip(theirs.iter())
        .fold(0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
    assert!(
        ours.iter().all(|v| v.is_finite()),
        "{}: r2rc output not finite",
        graph.name
    );
    eprintln!(
        "{:<20} max|out| {scale:.3e}  max|err| {err:.3e}  err/max {:.2e}",
        graph.name,
        err / scale
    );
    (err, scale)
}

fn assert_close(graph: &Graph, seed: u64) {
    let (err, scale) = compare(graph, seed);
    assert!(scale > 0.0, "{}: output is all zeros", graph.name);
    assert!(
        err <= TOLERANCE * scale,
        "{}: r2rc and tract differ by {err:e} (max |output| {scale:e}, tolerance {TOLERANCE:e} x max)",
        graph.name
    );
}

#[test]
fn all_ops_graphs_match_tract() {
    assert_close(&all_ops_a(), 11);
    assert_close(&all_ops_b(), 12);
}

/// The graph with a final softmax removed, so the comparison sees the logits: a
/// saturated softmax (max near 1) would hide errors in them.
fn logits(g: &Graph) -> Option<Graph> {
    if !matches!(g.g[g.output].op, Op::Softmax) {
        return None;
    }
    let mut cut = g.clone();
    let before = cut.inputs(cut.output)[0];
    cut.g.remove_node(cut.output);
    cut.output = before;
    cut.name = format!("{} (logits)", g.name);
    Some(cut)
}

#[test]
fn every_example_matches_tract() {
    let mut failures = Vec::new();
    for (i, g) in examples().iter().enumerate() {
        let seed = 100 + i as u64;
        for graph in std::iter::once(g.clone()).chain(logits(g)) {
            let (err, scale) = compare(&graph, seed);
            if !(scale > 0.0 && err <= TOLERANCE * scale) {
                failures.push(format!(
                    "{}: max|err| {err:e}, max|out| {scale:e}",
                    graph.name
                ));
            }
        }
    }
    assert!(failures.is_empty(), "r2rc and tract differ: {failures:#?}");
}

#[test]
fn a_wrong_weight_is_caught() {
    // The comparison must be able to fail: perturb one weight after export.
    let g = all_ops_b();
    let params = params::init(&g, 3, true);
    let model = r2rc::emit::to_onnx(&g, &params).unwrap();
    let mut bad = params.clone();
    bad.tensors.get_mut("head.fc.bias").unwrap()[[0]] += 0.5;
    let x = random_input(g.input_shape(), 4);
    let theirs = run_tract(&model, &x);
    let ours = run_r2rc(&g, &bad, &x);
    let err = ours
        .iter()
        .zip(theirs.iter())
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!((err - 0.5).abs() < 1e-3, "perturbation seen as {err}");
}

/// `r2rc export` writes what `emit::to_onnx` produces, needs no weights for JSON, refuses
/// to overwrite without `--force` and writes nothing when the weights do not fit.
#[test]
fn export_command_writes_and_refuses_overwrite() {
    let arch = example_path("smallconv");
    let other = example_path("resnet_cifar10");
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w.safetensors");
    let onnx = dir.path().join("m.onnx");
    let json = dir.path().join("g.json");
    init_weights(s(&arch), &w, &["--seed", "5", "--random-stats"]);

    // JSON alone needs no weights.
    let out = r2rc(&["export", s(&arch), "--json", s(&json)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["name"], "SmallConv");
    assert_eq!(v["output"]["shape"], serde_json::json!([10]));

    // ONNX needs weights.
    let out = r2rc(&["export", s(&arch), "--onnx", s(&onnx)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--weights"));
    assert!(!onnx.exists());

    let export = |force: bool| {
        let mut a = vec!["export", s(&arch), "--weights", s(&w), "--onnx", s(&onnx)];
        if force {
            a.push("--force");
        }
        r2rc(&a)
    };
    let out = export(false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let graph = r2rc::lower::compile(&std::fs::read_to_string(&arch).unwrap(), &[]).unwrap();
    let params = params::load(&graph, &w).unwrap();
    let bytes = std::fs::read(&onnx).unwrap();
    assert_eq!(bytes, r2rc::emit::to_onnx(&graph, &params).unwrap());

    // An existing file is kept without --force.
    std::fs::write(&onnx, b"keep me").unwrap();
    let out = export(false);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(std::fs::read(&onnx).unwrap(), b"keep me");
    let out = export(true);
    assert!(out.status.success());
    assert_eq!(std::fs::read(&onnx).unwrap(), bytes);

    // Weights of another network: an error naming a tensor, nothing written.
    let json2 = dir.path().join("g2.json");
    let out = r2rc(&[
        "export",
        s(&other),
        "--weights",
        s(&w),
        "--onnx",
        s(&dir.path().join("other.onnx")),
        "--json",
        s(&json2),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains('`'), "the error names a tensor: {err}");
    assert!(!json2.exists() && !dir.path().join("other.onnx").exists());
    // No temporary files are left behind.
    assert_eq!(listing(dir.path()), ["g.json", "m.onnx", "w.safetensors"]);
}
