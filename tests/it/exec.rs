//! The executor against naive references written independently here, op by op.

use ndarray::{ArrayD, Axis, IxDyn, Slice};
use r2rc::exec::{self, Executor, Mode};
use r2rc::ir::{
    Activation, BatchNorm, Conv2d, Defaults, Graph, Linear, NodeIndex, Op, Pool, ShortcutPad,
};
use r2rc::params::{self, Params};

use crate::common::{arch_files, example, is_transformer, too_heavy_to_run};

fn graph(input: &[usize]) -> Graph {
    Graph::new("t", Defaults::default(), input.to_vec())
}

fn add(g: &mut Graph, name: &str, op: Op, inputs: &[NodeIndex]) -> NodeIndex {
    let n = g
        .add(name.into(), op, inputs, (name, None), None)
        .expect("shapes fit");
    g.output = n;
    n
}

/// Seeded random values in [-1, 1) (a small LCG; independent of the crate's RNG).
fn random(shape: &[usize], seed: u64) -> ArrayD<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let len: usize = shape.iter().product();
    let v = (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect();
    ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()
}

fn run(g: &Graph, p: &Params, x: &ArrayD<f64>, mode: Mode) -> ArrayD<f64> {
    Executor::<f64>::new(g, p)
        .unwrap()
        .forward(x.clone(), mode)
        .unwrap()
}

fn assert_close(got: &ArrayD<f64>, want: &ArrayD<f64>, tol: f64) {
    assert_eq!(got.shape(), want.shape());
    for (i, (a, b)) in got.iter().zip(want.iter()).enumerate() {
        assert!(
            (a - b).abs() <= tol * b.abs().max(1.0),
            "element {i}: got {a}, want {b}"
        );
    }
}

/// Direct 7-loop convolution: cross-correlation, zero padding, stride, dilation, groups.
fn naive_conv(
    x: &ArrayD<f64>,
    w: &ArrayD<f64>,
    b: Option<&ArrayD<f64>>,
    c: &Conv2d,
) -> ArrayD<f64> {
    let (n, h, wd) = (x.shape()[0], x.shape()[2], x.shape()[3]);
    let [kh, kw] = c.kernel;
    let (s, p, d) = (c.stride as isize, c.padding as isize, c.dilation as isize);
    let oh = ((h as isize + 2 * p - d * (kh as isize - 1) - 1) / s + 1) as usize;
    let ow = ((wd as isize + 2 * p - d * (kw as isize - 1) - 1) / s + 1) as usize;
    let cig = c.in_channels / c.groups;
    let cog = c.out_channels / c.groups;
    let mut y = ArrayD::zeros(IxDyn(&[n, c.out_channels, oh, ow]));
    for i in 0..n {
        for o in 0..c.out_channels {
            let grp = o / cog;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = b.map(|b| b[[o]]).unwrap_or(0.0);
                    for ic in 0..cig {
                        for ki in 0..kh {
                            for kj in 0..kw {
                                let iy = oy as isize * s - p + ki as isize * d;
                                let ix = ox as isize * s - p + kj as isize * d;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                acc += w[[o, ic, ki, kj]]
                                    * x[[i, grp * cig + ic, iy as usize, ix as usize]];
                            }
                        }
                    }
                    y[[i, o, oy, ox]] = acc;
                }
            }
        }
    }
    y
}

#[test]
fn convolutions_match_the_direct_loop() {
    let cases = [
        // (in, out, kernel, stride, pad, dilation, groups, bias, hw, batch)
        (3, 8, [3, 3], 1, 1, 1, 1, false, 9, 2),
        (4, 6, [3, 3], 2, 1, 1, 2, true, 10, 3),
        (4, 4, [3, 3], 1, 2, 2, 4, true, 7, 1),
        (5, 7, [1, 1], 1, 0, 1, 1, true, 6, 2),
        (6, 4, [1, 1], 2, 0, 1, 1, false, 7, 2),
        (3, 5, [5, 3], 2, 2, 1, 1, true, 11, 2),
        (2, 3, [7, 7], 3, 3, 1, 1, false, 13, 1),
        // Many small images: exercises the grouped GEMM (several images per product).
        (8, 16, [3, 3], 1, 1, 1, 1, true, 4, 9),
        (6, 6, [3, 3], 2, 1, 1, 3, false, 5, 8),
    ];
    for (k, &(ci, co, kernel, stride, padding, dilation, groups, bias, hw, batch)) in
        cases.iter().enumerate()
    {
        let conv = Conv2d {
            in_channels: ci,
            out_channels: co,
            kernel,
            stride,
            padding,
            dilation,
            groups,
            bias,
        };
        let mut g = graph(&[ci, hw, hw + 1]);
        let input = g.input;
        add(&mut g, "conv", Op::Conv2d(conv.clone()), &[input]);
        let p = params::init(&g, k as u64, true);
        let x = random(&[batch, ci, hw, hw + 1], 100 + k as u64);
        let want = naive_conv(
            &x,
            &p.tensors["conv.weight"],
            p.tensors.get("conv.bias"),
            &conv,
        );
        assert_close(&run(&g, &p, &x, Mode::Eval), &want, 1e-12);
        // f32 agrees with f64 to f32 precision.
        let y32 = Executor::<f32>::new(&g, &p)
            .unwrap()
            .forward(x.mapv(|v| v as f32), Mode::Eval)
            .unwrap();
        assert_close(&y32.mapv(|v| v as f64), &want, 1e-5);
    }
}

#[test]
fn max_pool_pads_with_minus_infinity() {
    let mut g = graph(&[2, 5, 5]);
    let input = g.input;
    let pool = Pool {
        kernel: [3, 3],
        stride: 2,
        padding: 1,
    };
    add(&mut g, "pool", Op::MaxPool(pool), &[input]);
    let p = params::init(&g, 0, false);
    // All inputs negative: zero padding would win at the borders, -inf never does.
    let x = random(&[1, 2, 5, 5], 3).mapv(|v| -v.abs() - 0.1);
    let y = run(&g, &p, &x, Mode::Eval);
    assert_eq!(y.shape(), &[1, 2, 3, 3]);
    for c in 0..2 {
        for oy in 0..3usize {
            for ox in 0..3usize {
                let mut m = f64::NEG_INFINITY;
                for iy in (2 * oy).saturating_sub(1)..(2 * oy + 2).min(5) {
                    for ix in (2 * ox).saturating_sub(1)..(2 * ox + 2).min(5) {
                        m = m.max(x[[0, c, iy, ix]]);
                    }
                }
                assert_eq!(y[[0, c, oy, ox]], m);
                assert!(m < 0.0);
            }
        }
    }
}

#[test]
fn avg_pool_counts_padded_zeros() {
    let mut g = graph(&[1, 4, 4]);
    let input = g.input;
    let pool = Pool {
        kernel: [3, 3],
        stride: 1,
        padding: 1,
    };
    add(&mut g, "pool", Op::AvgPool(pool), &[input]);
    let p = params::init(&g, 0, false);
    let x = ArrayD::from_elem(IxDyn(&[1, 1, 4, 4]), 1.0);
    let y = run(&g, &p, &x, Mode::Eval);
    // count_include_pad=True: a corner sees 4 real ones out of 9, an edge 6, the inside 9.
    assert!((y[[0, 0, 0, 0]] - 4.0 / 9.0).abs() < 1e-15);
    assert!((y[[0, 0, 0, 1]] - 6.0 / 9.0).abs() < 1e-15);
    assert!((y[[0, 0, 1, 1]] - 1.0).abs() < 1e-15);
    // Random data against a direct sum / 9.
    let x = random(&[2, 1, 4, 4], 9);
    let y = run(&g, &p, &x, Mode::Eval);
    for i in 0..2 {
        for oy in 0..4usize {
            for ox in 0..4usize {
                let mut s = 0.0;
                for iy in oy.saturating_sub(1)..(oy + 2).min(4) {
                    for ix in ox.saturating_sub(1)..(ox + 2).min(4) {
                        s += x[[i, 0, iy, ix]];
                    }
                }
                assert!((y[[i, 0, oy, ox]] - s / 9.0).abs() < 1e-14);
            }
        }
    }
}

fn bn_graph(shape: &[usize]) -> Graph {
    let mut g = graph(shape);
    let input = g.input;
    add(
        &mut g,
        "bn",
        Op::BatchNorm(BatchNorm {
            channels: shape[0],
            eps: 1e-3,
        }),
        &[input],
    );
    g
}

#[test]
fn batch_norm_eval_uses_running_statistics() {
    let g = bn_graph(&[3, 2, 2]);
    let p = params::init(&g, 4, true);
    let x = random(&[2, 3, 2, 2], 5);
    let y = run(&g, &p, &x, Mode::Eval);
    let t = |s: &str| p.tensors[&format!("bn.{s}")].clone();
    let (gamma, beta, mean, var) = (t("weight"), t("bias"), t("running_mean"), t("running_var"));
    for ((i, c, h, w), v) in x
        .view()
        .into_dimensionality::<ndarray::Ix4>()
        .unwrap()
        .indexed_iter()
    {
        let want = (v - mean[[c]]) / (var[[c]] + 1e-3).sqrt() * gamma[[c]] + beta[[c]];
        assert!((y[[i, c, h, w]] - want).abs() < 1e-13);
    }
}

#[test]
fn batch_norm_train_uses_batch_statistics_with_biased_variance() {
    let g = bn_graph(&[3, 2, 3]);
    let p = params::init(&g, 6, true);
    let x = random(&[4, 3, 2, 3], 7).mapv(|v| 3.0 * v + 1.0);
    let y = run(&g, &p, &x, Mode::Train);
    let count = (4 * 2 * 3) as f64;
    for c in 0..3 {
        let vals: Vec<f64> = x.index_axis(ndarray::Axis(1), c).iter().copied().collect();
        let mean = vals.iter().sum::<f64>() / count;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / count; // biased
        let gamma = p.tensors["bn.weight"][[c]];
        let beta = p.tensors["bn.bias"][[c]];
        for i in 0..4 {
            for h in 0..2 {
                for w in 0..3 {
                    let want = (x[[i, c, h, w]] - mean) / (var + 1e-3).sqrt() * gamma + beta;
                    assert!((y[[i, c, h, w]] - want).abs() < 1e-12);
                }
            }
        }
    }
    // Eval and train differ on these statistics: the modes are really distinct.
    let e = run(&g, &p, &x, Mode::Eval);
    assert!((&e - &y).iter().any(|d| d.abs() > 1e-3));
}

#[test]
fn batch_norm_train_refuses_one_value_per_channel() {
    let g = bn_graph(&[4]);
    let p = params::init(&g, 0, false);
    let err = Executor::<f64>::new(&g, &p)
        .unwrap()
        .forward(random(&[1, 4], 1), Mode::Train)
        .unwrap_err()
        .to_string();
    assert!(err.contains("layer `bn`"), "{err}");
    assert!(err.contains("more than one value per channel"), "{err}");
}

#[test]
fn flatten_is_channel_major_and_linear_matches() {
    let mut g = graph(&[2, 2, 3]);
    let input = g.input;
    let f = add(&mut g, "flat", Op::Flatten, &[input]);
    let fc = Linear {
        in_features: 12,
        out_features: 5,
        bias: true,
    };
    add(&mut g, "fc", Op::Linear(fc), &[f]);
    let p = params::init(&g, 2, true);
    let x = random(&[3, 2, 2, 3], 8);
    let values = Executor::<f64>::new(&g, &p)
        .unwrap()
        .forward_all(x.clone(), Mode::Eval)
        .unwrap();
    let flat = &values.iter().find(|v| v.name == "flat").unwrap().data;
    assert_eq!(flat.shape(), &[3, 12]);
    for i in 0..3 {
        for c in 0..2 {
            for h in 0..2 {
                for w in 0..3 {
                    assert_eq!(flat[[i, c * 6 + h * 3 + w]], x[[i, c, h, w]]);
                }
            }
        }
    }
    let y = &values.last().unwrap().data;
    let (w, b) = (&p.tensors["fc.weight"], &p.tensors["fc.bias"]);
    for i in 0..3 {
        for o in 0..5 {
            let want: f64 = b[[o]] + (0..12).map(|k| w[[o, k]] * flat[[i, k]]).sum::<f64>();
            assert!((y[[i, o]] - want).abs() < 1e-13);
        }
    }
}

#[test]
fn softmax_over_features() {
    let mut g = graph(&[6]);
    let input = g.input;
    add(&mut g, "sm", Op::Softmax, &[input]);
    let p = params::init(&g, 0, false);
    let x = random(&[2, 6], 11).mapv(|v| v * 50.0); // large values: needs the max shift
    let y = run(&g, &p, &x, Mode::Eval);
    for i in 0..2 {
        let z: f64 = (0..6).map(|j| x[[i, j]].exp()).sum();
        for j in 0..6 {
            let want = x[[i, j]].exp() / z;
            assert!((y[[i, j]] - want).abs() < 1e-14 * want.max(1e-300).max(1.0));
        }
        assert!(((0..6).map(|j| y[[i, j]]).sum::<f64>() - 1.0).abs() < 1e-14);
    }
}

#[test]
fn activations_match_their_formulas() {
    let acts = [
        Activation::Relu,
        Activation::LeakyRelu { slope: 0.1 },
        Activation::Prelu { channels: 3 },
        Activation::Tanh,
        Activation::Sigmoid,
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::Silu,
        Activation::Identity,
    ];
    let x = random(&[2, 3, 2, 2], 12).mapv(|v| v * 4.0);
    for a in acts {
        let mut g = graph(&[3, 2, 2]);
        let input = g.input;
        add(&mut g, "act", Op::Activation(a.clone()), &[input]);
        let p = params::init(&g, 1, true);
        let y = run(&g, &p, &x, Mode::Eval);
        for ((i, c, h, w), &v) in x
            .view()
            .into_dimensionality::<ndarray::Ix4>()
            .unwrap()
            .indexed_iter()
        {
            let want = match &a {
                Activation::Relu => v.max(0.0),
                Activation::LeakyRelu { slope } => {
                    if v > 0.0 {
                        v
                    } else {
                        slope * v
                    }
                }
                Activation::Prelu { .. } => {
                    let s = p.tensors["act.weight"][[c]];
                    assert!(s != 0.25, "random stats randomise PReLU slopes");
                    if v > 0.0 {
                        v
                    } else {
                        s * v
                    }
                }
                Activation::Tanh => v.tanh(),
                Activation::Sigmoid => 1.0 / (1.0 + (-v).exp()),
                Activation::Gelu => 0.5 * v * (1.0 + exec::erf(v / 2f64.sqrt())),
                Activation::GeluTanh => {
                    let c = (2.0 / std::f64::consts::PI).sqrt();
                    0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh())
                }
                Activation::Silu => v / (1.0 + (-v).exp()),
                Activation::Identity => v,
            };
            assert!((y[[i, c, h, w]] - want).abs() < 1e-14, "{a:?} at {v}");
        }
    }
    // GELU at fixed points (0.5 * x * erfc(-x / sqrt 2), CPython).
    for (x, want) in [
        (1.0, 0.8413447460685429),
        (-0.5, -0.15426876936299344),
        (3.0, 2.99595030590511),
    ] {
        assert!((exec::gelu(x) - want).abs() < 1e-15, "gelu({x})");
    }
}

#[test]
fn shortcut_pad_subsamples_and_appends_zero_channels() {
    let mut g = graph(&[2, 5, 4]);
    let input = g.input;
    add(
        &mut g,
        "pad",
        Op::ShortcutPad(ShortcutPad {
            stride: 2,
            out_channels: 5,
        }),
        &[input],
    );
    let p = params::init(&g, 0, false);
    let x = random(&[2, 2, 5, 4], 13);
    let y = run(&g, &p, &x, Mode::Eval);
    assert_eq!(y.shape(), &[2, 5, 3, 2]);
    for i in 0..2 {
        for c in 0..5 {
            for oy in 0..3 {
                for ox in 0..2 {
                    let want = if c < 2 {
                        x[[i, c, 2 * oy, 2 * ox]]
                    } else {
                        0.0
                    };
                    assert_eq!(y[[i, c, oy, ox]], want);
                }
            }
        }
    }
}

#[test]
fn residual_add_and_global_pool() {
    // x -> conv -> bn -> relu -> add(x) -> global pool -> flatten
    let mut g = graph(&[4, 5, 5]);
    let x0 = g.input;
    let conv = Conv2d {
        in_channels: 4,
        out_channels: 4,
        kernel: [3, 3],
        stride: 1,
        padding: 1,
        dilation: 1,
        groups: 1,
        bias: false,
    };
    let c = add(&mut g, "conv", Op::Conv2d(conv.clone()), &[x0]);
    let b = add(
        &mut g,
        "bn",
        Op::BatchNorm(BatchNorm {
            channels: 4,
            eps: 1e-5,
        }),
        &[c],
    );
    let r = add(&mut g, "act", Op::Activation(Activation::Relu), &[b]);
    let s = add(&mut g, "add", Op::Add, &[r, x0]);
    let gp = add(&mut g, "gap", Op::GlobalAvgPool, &[s]);
    add(&mut g, "flat", Op::Flatten, &[gp]);
    let p = params::init(&g, 21, true);
    let x = random(&[3, 4, 5, 5], 22);
    let y = run(&g, &p, &x, Mode::Eval);
    let t = |s: &str| p.tensors[&format!("bn.{s}")].clone();
    let conv_out = naive_conv(&x, &p.tensors["conv.weight"], None, &conv);
    assert_eq!(y.shape(), &[3, 4]);
    for i in 0..3 {
        for ch in 0..4 {
            let mut sum = 0.0;
            for h in 0..5 {
                for w in 0..5 {
                    let bn = (conv_out[[i, ch, h, w]] - t("running_mean")[[ch]])
                        / (t("running_var")[[ch]] + 1e-5).sqrt()
                        * t("weight")[[ch]]
                        + t("bias")[[ch]];
                    sum += bn.max(0.0) + x[[i, ch, h, w]];
                }
            }
            assert!((y[[i, ch]] - sum / 25.0).abs() < 1e-13);
        }
    }
    // forward_all keeps every value and ends with the same output; the input is untouched
    // even though the add reads it last.
    let all = Executor::<f64>::new(&g, &p)
        .unwrap()
        .forward_all(x.clone(), Mode::Eval)
        .unwrap();
    let names: Vec<&str> = all.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["input", "conv", "bn", "act", "add", "gap", "flat"]);
    assert_eq!(all[0].data, x);
    assert_close(&all[6].data, &y, 0.0);
    assert!(all[3].data.iter().all(|&v| v >= 0.0));
}

#[test]
fn wrong_input_shape_is_a_clear_error() {
    let g = bn_graph(&[3, 4, 4]);
    let p = params::init(&g, 0, false);
    let ex = Executor::<f32>::new(&g, &p).unwrap();
    let err = ex
        .forward(ArrayD::zeros(IxDyn(&[2, 3, 5, 4])), Mode::Eval)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("2x3x5x4") && err.contains("N x 3x4x4"),
        "{err}"
    );
}

#[test]
fn executor_refuses_params_of_another_graph() {
    let g = bn_graph(&[3, 4, 4]);
    let other = bn_graph(&[5, 4, 4]);
    let p = params::init(&other, 0, false);
    let err = Executor::<f64>::new(&g, &p).err().unwrap().to_string();
    assert!(
        err.contains("bn.weight") && err.contains("[5]") && err.contains("[3]"),
        "{err}"
    );
}

#[test]
fn random_inputs_are_seeded_standard_normal() {
    let g = bn_graph(&[3, 8, 8]);
    let a = exec::random_input(&g, 16, 5);
    assert_eq!(a, exec::random_input(&g, 16, 5));
    assert_ne!(a, exec::random_input(&g, 16, 6));
    assert_eq!(a.shape(), &[16, 3, 8, 8]);
    let mean = a.mean().unwrap();
    let var = a.mapv(|v| (v - mean).powi(2)).mean().unwrap();
    assert!(
        mean.abs() < 0.05 && (var - 1.0).abs() < 0.08,
        "{mean} {var}"
    );
}

/// Every convolutional example compiles, initialises, runs in both modes and both
/// precisions, with f32 agreeing with f64 and outputs finite. The transformers run in
/// `transformer_examples_run` below, at a short length.
#[test]
fn every_example_runs() {
    let dir = arch_files("examples");
    assert!(dir.len() >= 9);
    let mut ran = 0;
    for path in dir {
        let src = std::fs::read_to_string(&path).unwrap();
        let g = r2rc::lower::compile(&src, &[]).unwrap();
        if is_transformer(&g) || too_heavy_to_run(&g) {
            continue;
        }
        ran += 1;
        let p = params::init(&g, 1, true);
        let big = g.input_shape().iter().product::<usize>() > 10_000;
        let n = if big { 2 } else { 4 };
        let x = exec::random_input(&g, n, 2);
        for mode in [Mode::Eval, Mode::Train] {
            let y64 = Executor::<f64>::new(&g, &p)
                .unwrap()
                .forward(x.clone(), mode)
                .unwrap();
            let y32 = Executor::<f32>::new(&g, &p)
                .unwrap()
                .forward(x.mapv(|v| v as f32), mode)
                .unwrap();
            let mut want = vec![n];
            want.extend_from_slice(g.output_shape());
            assert_eq!(y64.shape(), want.as_slice(), "{}", path.display());
            let scale = y64.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            assert!(y64.iter().all(|v| v.is_finite()) && scale > 0.0);
            let diff = y32
                .iter()
                .zip(y64.iter())
                .fold(0.0f64, |m, (a, b)| m.max((*a as f64 - b).abs()));
            assert!(
                diff <= 1e-4 * scale,
                "{} {mode:?}: f32 and f64 differ by {diff} (scale {scale})",
                path.display()
            );
        }
    }
    assert!(ran >= 6, "{ran} convolutional examples");
}

/// GPT-2 small (2 sequences of 8 of its 1024 tokens) runs in both precisions with f32
/// agreeing with f64 and outputs finite, in eval mode only: it has no batch norm, so train
/// mode computes the same. ViT-B/16's f32 forward pass is compared with tract in
/// onnx_tract.rs (its f64 pass at 224x224 would add seconds here). TinyLlama is left out:
/// its 1.1B parameters take 4.4 GB in f32 and 8.8 GB in f64, more than CI's memory.
#[test]
fn transformer_examples_run() {
    let g = example("gpt2");
    assert!(is_transformer(&g));
    let p = params::init(&g, 1, true);
    let x = exec::random_input(&g, 2, 2)
        .slice_axis(Axis(1), Slice::from(..8))
        .to_owned();
    let y64 = Executor::<f64>::new(&g, &p)
        .unwrap()
        .forward(x.clone(), Mode::Eval)
        .unwrap();
    let y32 = Executor::<f32>::new(&g, &p)
        .unwrap()
        .forward(x.mapv(|v| v as f32), Mode::Eval)
        .unwrap();
    assert_eq!(y64.shape(), &[2, 8, 50257]);
    assert_eq!(y32.shape(), &[2, 8, 50257]);
    let scale = y64.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(y64.iter().all(|v| v.is_finite()) && scale > 0.0);
    let diff = y32
        .iter()
        .zip(y64.iter())
        .fold(0.0f64, |m, (a, b)| m.max((*a as f64 - b).abs()));
    assert!(
        diff <= 1e-4 * scale,
        "gpt2: f32 and f64 differ by {diff} (scale {scale})"
    );
}

/// `forward` fuses BN+ReLU and add+ReLU and frees values early; `forward_all` does
/// neither. Both must give the same output, bit for bit.
#[test]
fn fused_forward_equals_unfused_forward_all() {
    let g = example("resnet_cifar10");
    let p = params::init(&g, 5, true);
    let x = exec::random_input(&g, 3, 6).mapv(|v| v as f32);
    let ex = Executor::<f32>::new(&g, &p).unwrap();
    for mode in [Mode::Eval, Mode::Train] {
        let y = ex.forward(x.clone(), mode).unwrap();
        let all = ex.forward_all(x.clone(), mode).unwrap();
        assert_eq!(all.len(), g.g.node_count());
        let out = all.iter().find(|v| v.node == g.output).unwrap();
        assert_eq!(out.data, y, "{mode:?}");
    }
}

/// Max and average pooling against a direct window loop over several geometries.
#[test]
fn pooling_matches_the_direct_loop() {
    for (k, &(kh, kw, stride, padding, h, w)) in [
        (3, 3, 2, 1, 9, 8),
        (5, 5, 3, 2, 11, 10),
        (2, 2, 2, 0, 6, 7),
        (3, 2, 1, 1, 5, 4),
        (4, 4, 3, 2, 7, 9),
    ]
    .iter()
    .enumerate()
    {
        let pool = Pool {
            kernel: [kh, kw],
            stride,
            padding,
        };
        let x = random(&[2, 3, h, w], 40 + k as u64);
        for max in [true, false] {
            let mut g = graph(&[3, h, w]);
            let input = g.input;
            let op = if max {
                Op::MaxPool(pool.clone())
            } else {
                Op::AvgPool(pool.clone())
            };
            add(&mut g, "pool", op, &[input]);
            let p = params::init(&g, 0, false);
            let y = run(&g, &p, &x, Mode::Eval);
            let (oh, ow) = (y.shape()[2], y.shape()[3]);
            assert_eq!(oh, (h + 2 * padding - kh) / stride + 1);
            assert_eq!(ow, (w + 2 * padding - kw) / stride + 1);
            for i in 0..2 {
                for c in 0..3 {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let mut m = f64::NEG_INFINITY;
                            let mut sum = 0.0;
                            for ki in 0..kh {
                                for kj in 0..kw {
                                    let iy = (oy * stride + ki) as isize - padding as isize;
                                    let ix = (ox * stride + kj) as isize - padding as isize;
                                    if iy >= 0 && ix >= 0 && iy < h as isize && ix < w as isize {
                                        let v = x[[i, c, iy as usize, ix as usize]];
                                        m = m.max(v);
                                        sum += v;
                                    }
                                }
                            }
                            let want = if max { m } else { sum / (kh * kw) as f64 };
                            let got = y[[i, c, oy, ox]];
                            assert!(
                                (got - want).abs() < 1e-14,
                                "case {k} max={max}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// A NaN inside a max-pool window gives NaN (PyTorch propagates it); other windows of the
/// same plane are unaffected.
#[test]
fn max_pool_propagates_nan() {
    let mut g = graph(&[1, 4, 4]);
    let input = g.input;
    let pool = Pool {
        kernel: [2, 2],
        stride: 2,
        padding: 0,
    };
    add(&mut g, "pool", Op::MaxPool(pool), &[input]);
    let p = params::init(&g, 0, false);
    let mut x = random(&[1, 1, 4, 4], 50);
    x[[0, 0, 1, 2]] = f64::NAN;
    let y = run(&g, &p, &x, Mode::Eval);
    assert!(y[[0, 0, 0, 1]].is_nan());
    assert!(
        y[[0, 0, 0, 0]].is_finite() && y[[0, 0, 1, 0]].is_finite() && y[[0, 0, 1, 1]].is_finite()
    );
}

/// Inputs that are views into larger buffers or not in standard layout are read in
/// logical order.
#[test]
fn inputs_in_any_memory_layout_give_the_same_output() {
    let g = bn_graph(&[3, 4, 5]);
    let p = params::init(&g, 2, true);
    let x = random(&[2, 3, 4, 5], 60);
    let want = run(&g, &p, &x, Mode::Eval);
    // A slice of a bigger batch: standard layout with an offset into its buffer.
    let mut big = random(&[3, 3, 4, 5], 61);
    big.slice_mut(ndarray::s![1.., .., .., ..]).assign(&x);
    let sliced = big.slice_move(ndarray::s![1.., .., .., ..]).into_dyn();
    assert_close(&run(&g, &p, &sliced, Mode::Eval), &want, 0.0);
    // Fortran order.
    use ndarray::ShapeBuilder;
    let mut f = ArrayD::zeros(IxDyn(&[2, 3, 4, 5]).f());
    f.assign(&x);
    assert!(!f.is_standard_layout());
    assert_close(&run(&g, &p, &f, Mode::Eval), &want, 0.0);
}

#[test]
fn a_student_executor_shares_only_bit_identical_weights() {
    // Two convs in a row; the student changes the second conv's weight in one element (same
    // shape) and the first's sign of a zero. Built sharing the teacher's tables, it must
    // compute with its own weights: equal to a student built alone, unequal to the teacher.
    let mut g = graph(&[3, 6, 6]);
    let x0 = g.input;
    let conv = Conv2d {
        in_channels: 3,
        out_channels: 3,
        kernel: [3, 3],
        stride: 1,
        padding: 1,
        dilation: 1,
        groups: 1,
        bias: true,
    };
    let c1 = add(&mut g, "conv1", Op::Conv2d(conv.clone()), &[x0]);
    add(&mut g, "conv2", Op::Conv2d(conv), &[c1]);
    let tp = params::init(&g, 5, true);
    let mut sp = tp.clone();
    sp.tensors.get_mut("conv2.weight").unwrap()[[1, 2, 0, 1]] += 0.25;
    let mut zp = tp.clone();
    zp.tensors.get_mut("conv1.weight").unwrap()[[0, 0, 0, 0]] = 0.0;
    let mut zq = zp.clone();
    zq.tensors.get_mut("conv1.weight").unwrap()[[0, 0, 0, 0]] = -0.0;
    assert!(params::same_bits(
        &tp.tensors["conv1.weight"],
        &sp.tensors["conv1.weight"]
    ));
    assert!(!params::same_bits(
        &tp.tensors["conv2.weight"],
        &sp.tensors["conv2.weight"]
    ));
    assert!(!params::same_bits(
        &zp.tensors["conv1.weight"],
        &zq.tensors["conv1.weight"]
    ));
    assert!(!params::same_bits(
        &tp.tensors["conv1.weight"],
        &tp.tensors["conv1.bias"]
    ));
    let x = random(&[2, 3, 6, 6], 6);
    let te = Executor::<f64>::new(&g, &tp).unwrap();
    let shared = Executor::<f64>::sharing(&g, &sp, &te, &tp).unwrap();
    let alone = Executor::<f64>::new(&g, &sp).unwrap();
    let ys = shared.forward(x.clone(), Mode::Eval).unwrap();
    assert_eq!(ys, alone.forward(x.clone(), Mode::Eval).unwrap());
    assert_ne!(ys, te.forward(x, Mode::Eval).unwrap());
}

#[test]
fn small_image_batches_run_in_chunks_with_the_whole_batchs_bits() {
    let g = crate::common::example_with("resnet_cifar18", &[("r", "1/8")]);
    let p = params::init(&g, 3, true);
    let ex = Executor::<f32>::new(&g, &p).unwrap();
    let x = random(&[40, 3, 32, 32], 4).mapv(|v| v as f32);
    let pool = |t: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .unwrap()
    };
    let (one, two) = (pool(1), pool(2));
    // Chunks need the direct conv kernel (x86-64 with AVX2 and FMA).
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        assert_eq!(
            two.install(|| ex.images_per_chunk(40, Mode::Eval)),
            Some(20)
        );
    }
    assert_eq!(two.install(|| ex.images_per_chunk(40, Mode::Train)), None);
    assert_eq!(one.install(|| ex.images_per_chunk(40, Mode::Eval)), None);
    let ex64 = Executor::<f64>::new(&g, &p).unwrap();
    assert_eq!(two.install(|| ex64.images_per_chunk(40, Mode::Eval)), None);
    let chunked = two.install(|| ex.forward(x.clone(), Mode::Eval)).unwrap();
    let whole = one.install(|| ex.forward(x.clone(), Mode::Eval)).unwrap();
    assert_eq!(chunked, whole);
    let all = two
        .install(|| ex.forward_all(x.clone(), Mode::Eval))
        .unwrap();
    assert_eq!(all.last().unwrap().data, chunked);
    // A wrong image size is refused for the whole batch, not a chunk.
    let bad = ndarray::ArrayD::<f32>::zeros(IxDyn(&[40, 3, 31, 32]));
    let err = two.install(|| ex.forward(bad, Mode::Eval)).unwrap_err();
    assert!(format!("{err}").contains("40x3x31x32"), "{err}");
}
