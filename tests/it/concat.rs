//! The `Concat` op (DenseNet's join) built with `Graph::add`: its shape rule, its
//! refusals, the parameters of a dense graph, and the executor's value (f32 and f64, BN in
//! eval and train mode) against the inputs' values stacked along the channels.

use ndarray::{concatenate, ArrayD, Axis};
use r2rc::exec::{random_input, Executor, Float, Mode};
use r2rc::ir::{Activation, BatchNorm, Conv2d, Defaults, Graph, NodeIndex, Op, Pool};
use r2rc::params::{self, DType};

fn add(g: &mut Graph, name: &str, op: Op, inputs: &[NodeIndex]) -> NodeIndex {
    let n = g
        .add(name.into(), op, inputs, (name, None), None)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    g.output = n;
    n
}

fn conv(cin: usize, cout: usize, k: usize, groups: usize) -> Op {
    Op::Conv2d(Conv2d {
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

fn bn(c: usize) -> Op {
    Op::BatchNorm(BatchNorm {
        channels: c,
        eps: 1e-5,
    })
}

/// A small DenseNet: a stem conv, a dense block of two BN-ReLU-conv(1x1)-BN-ReLU-conv(3x3)
/// layers (growth 3, the 3x3 grouped) each concatenated to its input, a transition
/// (BN-ReLU-conv 1x1-avg pool 2x2) and a global pool.
fn dense_graph() -> (Graph, Vec<NodeIndex>) {
    let mut g = Graph::new("dense", Defaults::default(), vec![3, 8, 8]);
    let input = g.input;
    let mut x = add(&mut g, "conv0", conv(3, 4, 3, 1), &[input]);
    let mut cats = vec![];
    for (i, c) in [4usize, 7].into_iter().enumerate() {
        let p = format!("dense1_{}", i + 1);
        let b1 = add(&mut g, &format!("{p}.bn1"), bn(c), &[x]);
        let a1 = add(
            &mut g,
            &format!("{p}.act1"),
            Op::Activation(Activation::Relu),
            &[b1],
        );
        let c1 = add(&mut g, &format!("{p}.conv1"), conv(c, 6, 1, 1), &[a1]);
        let b2 = add(&mut g, &format!("{p}.bn2"), bn(6), &[c1]);
        let a2 = add(
            &mut g,
            &format!("{p}.act2"),
            Op::Activation(Activation::Relu),
            &[b2],
        );
        let c2 = add(&mut g, &format!("{p}.conv2"), conv(6, 3, 3, 3), &[a2]);
        x = add(&mut g, &format!("{p}.cat"), Op::Concat, &[x, c2]);
        cats.push(x);
    }
    let b = add(&mut g, "trans1.bn", bn(10), &[x]);
    let a = add(&mut g, "trans1.act", Op::Activation(Activation::Relu), &[b]);
    let c = add(&mut g, "trans1.conv", conv(10, 5, 1, 1), &[a]);
    let pool = Pool {
        kernel: [2, 2],
        stride: 2,
        padding: 0,
    };
    let p = add(&mut g, "trans1.pool", Op::AvgPool(pool), &[c]);
    add(&mut g, "head.pool", Op::GlobalAvgPool, &[p]);
    (g, cats)
}

#[test]
fn concat_shapes_add_the_channels() {
    let (g, cats) = dense_graph();
    assert_eq!(g.g[cats[0]].shape, vec![7, 8, 8]);
    assert_eq!(g.g[cats[1]].shape, vec![10, 8, 8]);
    assert_eq!(g.output_shape(), &vec![5, 1, 1]);
    assert_eq!(Op::Concat.kind_name(), "concat");
    assert_eq!(Op::Concat.macs(&vec![10, 8, 8]), 0);
}

#[test]
fn a_dense_graph_has_the_layers_parameters_and_none_for_the_concat() {
    let (g, _) = dense_graph();
    let specs = g.param_specs();
    assert!(specs.iter().all(|s| !s.name.contains(".cat.")));
    let shape = |name: &str| {
        specs
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .slot
            .shape
            .clone()
    };
    // The second layer reads the 7 concatenated channels; its 3x3 conv has 3 groups.
    assert_eq!(shape("dense1_2.bn1.running_var"), vec![7]);
    assert_eq!(shape("dense1_2.conv1.weight"), vec![6, 7, 1, 1]);
    assert_eq!(shape("dense1_2.conv2.weight"), vec![3, 2, 3, 3]);
    assert_eq!(shape("trans1.conv.weight"), vec![5, 10, 1, 1]);
    let count: usize = specs
        .iter()
        .filter(|s| s.slot.kind != r2rc::ir::ParamKind::NumBatchesTracked)
        .map(|s| s.slot.shape.iter().product::<usize>())
        .sum();
    // conv0 108; layer 1: bn 16 + 24 + bn 24 + 54; layer 2: bn 28 + 42 + bn 24 + 54;
    // transition bn 40 + 50.
    assert_eq!(
        count,
        108 + (16 + 24 + 24 + 54) + (28 + 42 + 24 + 54) + 40 + 50
    );
}

/// Every concat's value is its inputs' values stacked along axis 1, in port order.
fn check_values<T: Float>(mode: Mode) {
    let (g, cats) = dense_graph();
    let p = params::init(&g, 7, true).with_dtype(DType::F64);
    let x = random_input(&g, 3, 11).mapv(T::from_f64);
    let vals = Executor::<T>::new(&g, &p)
        .unwrap()
        .forward_all(x.clone(), mode)
        .unwrap();
    let value = |n: NodeIndex| -> &ArrayD<T> { &vals.iter().find(|v| v.node == n).unwrap().data };
    for &c in &cats {
        let ins: Vec<_> = g.inputs(c).iter().map(|&i| value(i).view()).collect();
        let want = concatenate(Axis(1), &ins).unwrap();
        assert_eq!(value(c), &want, "{}", g.g[c].name);
    }
    // The fused forward pass gives the same output as the unfused one.
    let out = Executor::<T>::new(&g, &p)
        .unwrap()
        .forward(x, mode)
        .unwrap();
    let all = value(g.output);
    for (a, b) in out.iter().zip(all.iter()) {
        assert!((a.to_f64() - b.to_f64()).abs() <= 1e-5 * b.to_f64().abs().max(1.0));
    }
}

#[test]
fn the_executor_stacks_the_inputs_values() {
    for mode in [Mode::Eval, Mode::Train] {
        check_values::<f64>(mode);
        check_values::<f32>(mode);
    }
}

#[test]
fn concat_refuses_what_does_not_fit() {
    let mut g = Graph::new("t", Defaults::default(), vec![3, 8, 8]);
    let input = g.input;
    let a = add(&mut g, "a", conv(3, 4, 3, 1), &[input]);
    let pool = Pool {
        kernel: [2, 2],
        stride: 2,
        padding: 0,
    };
    let small = add(&mut g, "small", Op::MaxPool(pool), &[a]);
    let flat = add(&mut g, "flat", Op::Flatten, &[a]);
    let err = |inputs: &[NodeIndex]| {
        let mut g = g.clone();
        g.add("c".into(), Op::Concat, inputs, ("c", None), None)
            .unwrap_err()
    };
    assert_eq!(
        err(&[a, small]),
        "a concatenation joins feature maps of one size, got 4x8x8 and 4x4x4"
    );
    assert_eq!(
        err(&[a]),
        "a concatenation joins at least two values, got 1"
    );
    assert_eq!(
        err(&[a, flat]),
        "a concatenation joins CxHxW feature maps, but one input is 256"
    );
}
