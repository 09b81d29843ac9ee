//! R2DeeperR starts its new block's last batch norm with a small scale: the branch is zero
//! either way (the proof still holds), but with scale 1 the first training step turns the
//! branch into unit-variance noise (batch norm divides its tiny input by sqrt(eps)).

use crate::common::{ok, s};

#[test]
fn the_new_blocks_last_bn_starts_small_and_the_rewrite_is_proved() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    ok(&[
        "deepen",
        "examples/resnet_cifar10.arch",
        "--after",
        "conv2_1",
        "-o",
        s(&out),
    ]);
    let src = std::fs::read_to_string(out.join("resnet_cifar10.arch")).unwrap();
    let graph = r2rc::lower::compile(&src, &[]).unwrap();
    let p = r2rc::params::load(&graph, &out.join("resnet_cifar10.safetensors")).unwrap();
    let last = &p.tensors["conv2_2.bn2.weight"];
    assert!(last
        .iter()
        .all(|g| *g == r2rc::transform::r2r_deeper::LAST_BN_SCALE as f32 as f64));
    assert!(p.tensors["conv2_2.bn1.weight"].iter().all(|g| *g == 1.0));
    assert!(p.tensors["conv2_2.bn2.bias"].iter().all(|b| *b == 0.0));
}
