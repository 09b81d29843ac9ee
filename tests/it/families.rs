//! ResNeXt, DenseNet and pre-activation ResNets in the language (issue 17): torchvision's
//! parameter counts and published GFLOPS, the structure `preact`, `dense` and `transition`
//! lower to, and DenseNet's torchvision names.

use r2rc::ir::{Graph, NodeIndex, Op};
use r2rc::lower::compile;
use r2rc::names::{from_torchvision_layer, torchvision_layer};
use r2rc::stats::layer_stats;

use crate::common::example;

/// torchvision's `sum(p.numel() for p in model.parameters())` and its published GFLOPS
/// (multiply-accumulates); ResNeXt-101 is counted here, never run in the tests.
#[test]
fn resnext_and_densenet_match_torchvision() {
    for (file, params, gmacs) in [
        ("resnext50_32x4d", 25_028_904u64, 4.23),
        ("resnext101_32x8d", 88_791_336, 16.41),
        ("densenet121", 7_978_856, 2.83),
    ] {
        let t = layer_stats(&example(file)).1;
        assert_eq!(t.params, params, "{file} parameters");
        let rel = (t.macs as f64 / 1e9 - gmacs).abs() / gmacs;
        assert!(
            rel < 0.01,
            "{file}: {} MACs is {rel:.4} from {gmacs} G",
            t.macs
        );
    }
}

/// Pre-activation ResNet-18 is ResNet-18 (11,689,512) less its three projection BNs
/// (2 x (128 + 256 + 512)), with each stage's first bn1 on the block's input (half the
/// channels: -2 x (64 + 128 + 256)) and the final BN before the head (+2 x 512).
#[test]
fn preact_resnet18_counts_by_hand() {
    let t = layer_stats(&example("preact_resnet18")).1;
    assert_eq!(
        t.params,
        11_689_512 - 2 * (128 + 256 + 512) - 2 * (64 + 128 + 256) + 2 * 512
    );
}

fn node(g: &Graph, name: &str) -> NodeIndex {
    g.find(name).unwrap_or_else(|| panic!("no layer {name}"))
}

fn input_name(g: &Graph, name: &str, port: usize) -> String {
    g.g[g.inputs(node(g, name))[port]].name.clone()
}

const PREACT: &str = "arch P
input 3x16x16
preact

conv1    16x16  3x3, 8
conv2_x  8x8    [3x3, 16, stride 2; 3x3, 16] x 2
head     1x1    avg pool, 10-d fc
";

/// BN-act-conv in the blocks; the projection (a bare 1x1 conv) reads the first layer's
/// pre-activation, the identity shortcut the block's input; nothing follows the add; the
/// head gets the final BN-act; the stem stays conv-BN-act.
#[test]
fn preact_blocks_are_bn_act_conv() {
    let g = compile(PREACT, &[]).unwrap();
    let order: Vec<&str> = g
        .order()
        .iter()
        .map(|&n| g.g[n].name.as_str())
        .filter(|n| n.starts_with("conv2_1."))
        .collect();
    assert_eq!(
        order,
        [
            "conv2_1.bn1",
            "conv2_1.act1",
            "conv2_1.conv1",
            "conv2_1.bn2",
            "conv2_1.act2",
            "conv2_1.conv2",
            "conv2_1.downsample.0",
            "conv2_1.add"
        ]
    );
    assert_eq!(input_name(&g, "conv2_1.bn1", 0), "conv1.act");
    assert_eq!(input_name(&g, "conv2_1.downsample.0", 0), "conv2_1.act1");
    assert_eq!(input_name(&g, "conv2_2.add", 1), "conv2_1.add");
    assert_eq!(input_name(&g, "conv2_2.bn1", 0), "conv2_1.add");
    assert_eq!(input_name(&g, "head.bn", 0), "conv2_2.add");
    assert_eq!(input_name(&g, "head.pool", 0), "head.act");
    assert!(g.find("conv2_1.downsample.1").is_none());
    match &g.g[node(&g, "conv2_1.downsample.0")].op {
        Op::Conv2d(c) => assert!(!c.bias && c.stride == 2),
        op => panic!("{op:?}"),
    }
}

const DENSE: &str = "arch D(k = 4)
input 3x16x16
preact

conv0       16x16  3x3, 8
dense1_x    16x16  [1x1, 2k; 3x3, k, C=2] x 3, dense
trans1      8x8    transition 0.5
dense2_x    8x8    [1x1, 2k; 3x3, k] x 2, dense
classifier  1x1    avg pool, 10-d fc
";

/// Each dense layer is BN-act-conv twice, then its input and new features concatenated;
/// a transition compresses floor(0.5 C) channels and halves the size.
#[test]
fn dense_blocks_concatenate_and_transitions_compress() {
    let g = compile(DENSE, &[]).unwrap();
    let shape = |n: &str| g.g[node(&g, n)].shape.clone();
    assert_eq!(shape("dense1_1.cat"), vec![12, 16, 16]);
    assert_eq!(shape("dense1_3.cat"), vec![20, 16, 16]);
    assert_eq!(input_name(&g, "dense1_2.cat", 0), "dense1_1.cat");
    assert_eq!(input_name(&g, "dense1_2.cat", 1), "dense1_2.conv2");
    assert_eq!(input_name(&g, "dense1_1.bn1", 0), "conv0.act");
    assert_eq!(shape("trans1.conv"), vec![10, 16, 16]);
    assert_eq!(shape("trans1.pool"), vec![10, 8, 8]);
    assert_eq!(input_name(&g, "trans1.bn", 0), "dense1_3.cat");
    assert_eq!(shape("dense2_2.cat"), vec![18, 8, 8]);
    assert_eq!(input_name(&g, "classifier.bn", 0), "dense2_2.cat");
    match &g.g[node(&g, "dense1_1.conv2")].op {
        Op::Conv2d(c) => assert_eq!((c.groups, c.in_channels, c.bias), (2, 8, false)),
        op => panic!("{op:?}"),
    }
    let text = r2rc::print::print(&g);
    assert!(
        text.contains("[1x1, 8; 3x3, 4, C=2] x 3, dense") && text.contains("transition 0.5"),
        "{text}"
    );
    assert!(compile(&text, &[]).unwrap() == g, "{text}");
}

/// Without `preact`, dense layers and transitions are conv-BN-act, every layer activated.
#[test]
fn post_activation_dense_blocks_print_back() {
    let src = DENSE.replace("preact\n", "");
    let g = compile(&src, &[]).unwrap();
    assert_eq!(input_name(&g, "dense1_1.cat", 1), "dense1_1.act2");
    assert_eq!(input_name(&g, "trans1.pool", 0), "trans1.act");
    assert!(g.find("classifier.bn").is_none());
    let text = r2rc::print::print(&g);
    assert!(compile(&text, &[]).unwrap() == g, "{text}");
    // A compression that is not a short decimal prints as a fraction that floors back.
    // A stem of 9 channels: 21 after the dense block, floor(0.5 x 21) = 10.
    let odd = src.replace("3x3, 8\n", "3x3, 9\n");
    let g = compile(&odd, &[]).unwrap();
    let text = r2rc::print::print(&g);
    assert!(text.contains("transition 10/21"), "{text}");
    assert!(compile(&text, &[]).unwrap() == g, "{text}");
}

/// Every parameter-owning layer of DenseNet-121 has a torchvision name, and the names map
/// back.
#[test]
fn densenet_torchvision_names_round_trip() {
    let g = example("densenet121");
    let mut seen = std::collections::BTreeSet::new();
    for n in g.order() {
        let node = &g.g[n];
        if node.op.param_slots().is_empty() {
            continue;
        }
        let tv = torchvision_layer(&node.name, &node.row, node.block)
            .unwrap_or_else(|| panic!("{} has no torchvision name", node.name));
        assert_eq!(
            from_torchvision_layer(&tv).as_deref(),
            Some(node.name.as_str())
        );
        assert!(seen.insert(tv));
    }
    for tv in [
        "features.conv0",
        "features.norm0",
        "features.denseblock1.denselayer1.norm1",
        "features.denseblock4.denselayer16.conv2",
        "features.transition3.norm",
        "features.transition1.conv",
        "features.norm5",
        "classifier",
    ] {
        assert!(seen.contains(tv), "{tv}");
    }
    let modules = r2rc::names::torchvision_targets(&g);
    for (tv, ours) in [
        ("features.denseblock2", "dense2_x"),
        ("features.denseblock2.denselayer12", "dense2_12"),
        ("features.transition3", "trans3"),
    ] {
        assert_eq!(modules.get(tv).map(String::as_str), Some(ours), "{tv}");
    }
    assert_eq!(
        from_torchvision_layer("features.denseblock01.denselayer1.conv1"),
        None
    );
    assert_eq!(from_torchvision_layer("features.transition1.pool"), None);
}
