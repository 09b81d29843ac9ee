//! Kernel-size morphing: exact on every example's convs in both modes, the old kernel at
//! the centre of the new one, refusals with their messages, and the command's outputs.

use r2rc::prove::{check_equivalence, ProveOptions};
use r2rc::transform::morph_kernel::morph_kernel;

use crate::common::{example_small, json, r2rc, teacher};

#[test]
fn morphing_is_exact_on_every_example_in_both_modes() {
    for (file, layer, k) in [
        ("smallconv", "conv1", 9),
        ("resnet_cifar10", "conv2_1.conv1", 5),
        ("resnet_cifar18", "conv3_1.conv2", 5),
        ("resnet18", "conv3_1.conv1", 7),
        ("resnet34", "conv2_2.conv2", 5),
        ("resnet50", "conv2_1.conv1", 3),
        ("resnext50_32x4d", "conv3_1.conv2", 5),
        ("densenet121", "dense2_3.conv1", 3),
        ("preact_resnet18", "conv4_2.conv1", 5),
    ] {
        let g = example_small(file);
        let p = teacher(&g, 4);
        let m = morph_kernel(&g, &p, layer, k).unwrap();
        let ev = check_equivalence(&g, &p, &m.graph, &m.params, &ProveOptions::default()).unwrap();
        for e in &ev {
            eprintln!(
                "{file} {layer} -> {k}x{k} {}: max rel {:.3e}",
                e.mode, e.max_rel_err
            );
            assert!(e.passed && e.max_rel_err <= 1e-9, "{file} {layer}: {e:?}");
        }
        // The old kernel sits at the centre; the rest is zero.
        let old = &p.tensors[&format!("{layer}.weight")];
        let new = &m.params.tensors[&format!("{layer}.weight")];
        let k0 = old.shape()[2];
        let d = (k - k0) / 2;
        let inside: f64 = new.iter().map(|x| x.abs()).sum();
        let kept: f64 = old.iter().map(|x| x.abs()).sum();
        assert_eq!(inside, kept);
        assert_eq!(new[[0, 0, d, d]], old[[0, 0, 0, 0]]);
        // Every other tensor is untouched.
        for (name, t) in &p.tensors {
            if name != &format!("{layer}.weight") {
                assert_eq!(t, &m.params.tensors[name], "{name}");
            }
        }
    }
}

#[test]
fn morph_refusals_say_why() {
    let g = example_small("resnet_cifar10");
    let p = teacher(&g, 4);
    let msg = |layer: &str, k: usize| {
        let e = morph_kernel(&g, &p, layer, k).unwrap_err();
        format!("{e} | {}", e.hint_text().unwrap_or(""))
    };
    let e = msg("conv2_1.conv1", 1);
    assert!(
        e.contains("only grows a kernel") && e.contains("--kernel 5"),
        "{e}"
    );
    let e = msg("conv2_1.conv1", 3);
    assert!(e.contains("only grows a kernel"), "{e}");
    // A projection shortcut is a 1x1 by the language: a larger one could not be printed.
    let g18 = example_small("resnet_cifar18");
    let e = morph_kernel(&g18, &teacher(&g18, 4), "conv3_1.downsample.0", 3).unwrap_err();
    assert!(e.to_string().contains("projection shortcut"), "{e}");
    let e = msg("conv2_1.conv1", 4);
    assert!(
        e.contains("same parity") && e.contains("--kernel 3 or 5"),
        "{e}"
    );
    let e = msg("conv2_1.bn1", 5);
    assert!(e.contains("is a batch_norm layer"), "{e}");
    let e = msg("conv2_1.conv9", 5);
    assert!(
        e.contains("no layer named") && e.contains("did you mean `conv2_1.conv1`"),
        "{e}"
    );
}

#[test]
fn morph_command_writes_the_student_and_its_report() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    let out = r2rc(&[
        "morph",
        "examples/smallconv.arch",
        "--layer",
        "conv1",
        "--kernel",
        "9",
        "-o",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let arch = std::fs::read_to_string(dir.join("smallconv.arch")).unwrap();
    assert!(arch.contains("9x9, 16"), "{arch}");
    assert!(
        arch.contains("# proof: eval f64") && arch.contains("passed"),
        "{arch}"
    );
    let report = json(&dir.join("report.json"));
    assert_eq!(report["command"], "morph");
    assert_eq!(report["evidence"].as_array().unwrap().len(), 2);
    assert!(dir.join("smallconv.safetensors").exists());
    // A refusal exits 2.
    let bad = r2rc(&[
        "morph",
        "examples/smallconv.arch",
        "--layer",
        "conv1",
        "--kernel",
        "8",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("same parity"));
}
