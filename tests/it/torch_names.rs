//! `r2rc export --torch` and `--names torchvision` on init, run, widen, deepen and export
//! from the command line. (Running the generated module needs PyTorch:
//! scripts/check_torch.py does that in CI.)

use std::collections::BTreeSet;
use std::path::Path;

use crate::common::{ex, init_weights, json, ok, r2rc, s, safetensors_header, text};

/// Tensor names in a safetensors header.
fn tensor_names(path: &Path) -> BTreeSet<String> {
    safetensors_header(path)
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect()
}

#[test]
fn torchvision_named_weights_run_like_r2rc_named_ones() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.safetensors");
    let tv = dir.path().join("tv.safetensors");
    let arch = ex("resnet_cifar10");
    let init = ["--random-stats", "--seed", "5"];
    init_weights(&arch, &ours, &init);
    init_weights(
        &arch,
        &tv,
        &[&init[..], &["--names", "torchvision"]].concat(),
    );
    let names = tensor_names(&tv);
    assert!(names.contains("bn1.running_var") && names.contains("layer2.0.downsample.1.bias"));
    assert!(names.contains("fc.weight"));
    assert!(!names
        .iter()
        .any(|n| n.starts_with("conv2_") || n.starts_with("head.")));
    assert_eq!(names.len(), tensor_names(&ours).len());

    let y1 = dir.path().join("y1.npy");
    let y2 = dir.path().join("y2.npy");
    let run = ["run", &arch, "--random", "2", "--seed", "1", "--output"];
    ok(&[&run[..], &[s(&y1), "--weights", s(&ours)]].concat());
    ok(&[
        &run[..],
        &[s(&y2), "--weights", s(&tv), "--names", "torchvision"],
    ]
    .concat());
    assert_eq!(std::fs::read(&y1).unwrap(), std::fs::read(&y2).unwrap());

    // The wrong naming fails, names the missing tensor and says which flag fits.
    let o = r2rc(&["run", &arch, "--weights", s(&tv)]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(
        err.contains("conv1.bn") && err.contains("--names torchvision"),
        "{err}"
    );
    let o = r2rc(&[
        "run",
        &arch,
        "--weights",
        s(&ours),
        "--names",
        "torchvision",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("bn1"), "{}", text(&o.stderr));
}

#[test]
fn widen_and_deepen_read_and_write_torchvision_names() {
    let dir = tempfile::tempdir().unwrap();
    let tv = dir.path().join("tv.safetensors");
    let arch = ex("resnet_cifar10");
    init_weights(&arch, &tv, &["--random-stats", "--names", "torchvision"]);
    let wide = dir.path().join("wide");
    ok(&[
        "widen",
        &arch,
        "--all",
        "--by",
        "1.5",
        "--weights",
        s(&tv),
        "--names",
        "torchvision",
        "-o",
        s(&wide),
    ]);
    let student = wide.join("resnet_cifar10.safetensors");
    assert_eq!(tensor_names(&student), tensor_names(&tv));
    // The student reads back under the same names.
    ok(&[
        "run",
        s(&wide.join("resnet_cifar10.arch")),
        "--weights",
        s(&student),
        "--names",
        "torchvision",
    ]);
    let deep = dir.path().join("deep");
    ok(&[
        "deepen",
        &arch,
        "--after",
        "conv2_1",
        "--weights",
        s(&tv),
        "--names",
        "torchvision",
        "-o",
        s(&deep),
    ]);
    let names = tensor_names(&deep.join("resnet_cifar10.safetensors"));
    let before = tensor_names(&tv);
    let added: Vec<_> = names.difference(&before).collect();
    // A third block in layer1 (conv2_x had two).
    assert!(!added.is_empty(), "{names:?}");
    assert!(
        added.iter().all(|n| n.starts_with("layer1.2.")),
        "{added:?}"
    );
}

#[test]
fn export_torch_writes_a_module_and_checks_weights() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w.safetensors");
    let py = dir.path().join("m.py");
    let arch = ex("resnet_cifar10");
    init_weights(&arch, &w, &[]);
    ok(&["export", &arch, "--weights", s(&w), "--torch", s(&py)]);
    let src = std::fs::read_to_string(&py).unwrap();
    assert!(src.contains("class ResNetCifar10(nn.Module):"));
    assert!(src.contains("self.conv3_1.downsample = nn.Sequential("));
    assert!(!src.contains("r2rc import") && !src.contains("import r2rc"));
    // No overwrite without --force.
    let o = r2rc(&["export", &arch, "--torch", s(&py)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("already exists"));
    // Weights of another network are refused and nothing is written.
    let other = dir.path().join("other.py");
    let o = r2rc(&[
        "export",
        &ex("resnet_cifar18"),
        "--weights",
        s(&w),
        "--torch",
        s(&other),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(!other.exists());

    // Under torchvision's names the module's attributes are torchvision's.
    let tvpy = dir.path().join("tv.py");
    ok(&[
        "export",
        &arch,
        "--torch",
        s(&tvpy),
        "--names",
        "torchvision",
    ]);
    let src = std::fs::read_to_string(&tvpy).unwrap();
    for needle in [
        "self.bn1 = nn.BatchNorm2d(8",
        "self.layer1 = nn.Sequential(",
        "self.layer2[0].downsample = nn.Sequential(",
        "self.fc = nn.Linear(16, 10)",
        "x = self.layer1[1].bn2(x)",
    ] {
        assert!(src.contains(needle), "missing {needle}:\n{src}");
    }
    // The JSON lists torchvision's tensor names too.
    let json_path = dir.path().join("g.json");
    ok(&[
        "export",
        &arch,
        "--json",
        s(&json_path),
        "--names",
        "torchvision",
    ]);
    let g = json(&json_path);
    let params: Vec<&str> = g["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        params.contains(&"layer2.0.downsample.0.weight"),
        "{params:?}"
    );
}

#[test]
fn networks_without_torchvision_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w.safetensors");
    let o = r2rc(&[
        "init",
        &ex("smallconv"),
        "-o",
        s(&w),
        "--names",
        "torchvision",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(
        err.contains("`fc1`") && err.contains("no torchvision name"),
        "{err}"
    );
    assert!(!w.exists());
    // timm's scheme is a ViT's: a conv net has no place in it, and the refusal says so.
    let o = r2rc(&["init", &ex("smallconv"), "-o", s(&w), "--names", "timm"]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(
        err.contains("`conv1.bn`") && err.contains("--names r2rc"),
        "{err}"
    );
    let o = r2rc(&["init", &ex("smallconv"), "-o", s(&w), "--names", "tv"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("r2rc and torchvision"));
    assert!(!w.exists());
}

/// The safetensors `__metadata__` of a student.
fn metadata(path: &Path) -> serde_json::Value {
    safetensors_header(path)["__metadata__"].clone()
}

/// Under `--names torchvision`, reports (report.json, the summary on stderr, the
/// safetensors metadata) give every layer's torchvision module name next to r2rc's, for the
/// in-memory and the streamed paths; under r2rc's names they add nothing.
#[test]
fn reports_give_torchvision_names() {
    let dir = tempfile::tempdir().unwrap();
    let tv = dir.path().join("tv.safetensors");
    let arch = ex("resnet18");
    init_weights(&arch, &tv, &["--random-stats", "--names", "torchvision"]);
    for streamed in [false, true] {
        let deep = dir.path().join(format!("deep{streamed}"));
        let mut a = vec![
            "deepen",
            &arch,
            "--after",
            "conv4_1",
            "--weights",
            s(&tv),
            "--names",
            "torchvision",
            "-o",
            s(&deep),
            "--inputs",
            "1",
        ];
        if streamed {
            a.push("--no-prove");
        }
        let err = text(&ok(&a).stderr);
        // The new block is torchvision's layer3.1; the old layer3.1 moves to layer3.2.
        assert!(err.contains("conv4_2.conv1 (layer3.1.conv1)"), "{err}");
        // The renames of the moved block are one line; report.json has every one.
        assert!(err.contains("layers to make room (conv4_2."), "{err}");
        assert!(err.contains("(layer3.1."), "{err}");
        assert_eq!(err.matches("renamed").count(), 1, "{err}");
        let report = json(&deep.join("report.json"));
        assert_eq!(report["name_map"]["conv4_2.conv2"], "conv4_3.conv2");
        let names = &report["torchvision_names"];
        assert_eq!(names["conv4_3.bn2"], "layer3.2.bn2", "{names}");
        assert_eq!(names["head.fc"], "fc");
        assert_eq!(names["conv1.bn"], "bn1");
        let meta = metadata(&deep.join("resnet18.safetensors"));
        let in_file: serde_json::Value =
            serde_json::from_str(meta["r2rc.torchvision_names"].as_str().unwrap()).unwrap();
        assert_eq!(&in_file, names);
    }
    let wide = dir.path().join("wide");
    let err = text(
        &ok(&[
            "widen",
            &arch,
            "--layer",
            "conv3_1",
            "--by",
            "1.5",
            "--weights",
            s(&tv),
            "--names",
            "torchvision",
            "-o",
            s(&wide),
            "--no-prove",
        ])
        .stderr,
    );
    assert!(err.contains("`conv3_1.conv1 (layer2.0.conv1)`"), "{err}");
    let report = std::fs::read_to_string(wide.join("report.json")).unwrap();
    assert!(
        report.contains("\"conv3_1.conv1\": \"layer2.0.conv1\""),
        "{report}"
    );
    // r2rc's own names: no second name anywhere.
    let plain = dir.path().join("plain");
    let err = text(
        &ok(&[
            "deepen",
            &arch,
            "--after",
            "conv4_1",
            "-o",
            s(&plain),
            "--inputs",
            "1",
        ])
        .stderr,
    );
    assert!(!err.contains("layer3"), "{err}");
    let report = std::fs::read_to_string(plain.join("report.json")).unwrap();
    assert!(!report.contains("torchvision_names"), "{report}");
    assert!(metadata(&plain.join("resnet18.safetensors"))
        .get("r2rc.torchvision_names")
        .is_none());
}
