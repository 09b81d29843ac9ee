//! Weights: seeded init in PyTorch's conventions, safetensors round trips in every dtype,
//! and every refused file with its message.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use ndarray::ArrayD;
use r2rc::ir::Graph;
use r2rc::params::{self, DType, Params};
use safetensors::tensor::{Dtype, TensorView};

const ARCH: &str = "\
arch Tiny
input 3x8x8

conv1    8x8   3x3, 4
conv2_x  4x4   [3x3, 6; 3x3, 6] x 1, stride 2
head     1x1   avg pool, 5-d fc
";

fn tiny() -> Graph {
    r2rc::lower::compile(ARCH, &[]).expect("the test architecture compiles")
}

fn std_of(a: &ArrayD<f64>) -> f64 {
    let n = a.len() as f64;
    let mean = a.sum() / n;
    (a.mapv(|v| (v - mean).powi(2)).sum() / n).sqrt()
}

#[test]
fn init_follows_pytorch_conventions() {
    let g = tiny();
    let p = params::init(&g, 3, false);
    let specs = g.param_specs();
    assert_eq!(p.tensors.len(), specs.len());
    assert_eq!(p.dtype, DType::F32);
    for s in &specs {
        assert_eq!(
            p.tensors[&s.name].shape(),
            s.slot.shape.as_slice(),
            "{}",
            s.name
        );
    }
    // Kaiming normal, fan_out, ReLU gain: std = sqrt(2 / (out * kh * kw)).
    let w = &p.tensors["conv2_1.conv2.weight"]; // 6x6x3x3 = 324 values
    let want = (2.0f64 / (6.0 * 9.0)).sqrt();
    assert!(
        (std_of(w) / want - 1.0).abs() < 0.15,
        "std {} vs {want}",
        std_of(w)
    );
    // Linear: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias.
    let fc_w = &p.tensors["head.fc.weight"];
    let fc_b = &p.tensors["head.fc.bias"];
    let bound = 1.0 / 6f64.sqrt();
    assert!(fc_w.iter().chain(fc_b.iter()).all(|v| v.abs() <= bound));
    assert!(fc_w.iter().any(|v| v.abs() > 0.6 * bound));
    // BN: gamma 1, beta 0, mean 0, var 1, counter 0 (int64 scalar).
    assert!(p.tensors["conv1.bn.weight"].iter().all(|&v| v == 1.0));
    assert!(p.tensors["conv1.bn.bias"].iter().all(|&v| v == 0.0));
    assert!(p.tensors["conv1.bn.running_mean"].iter().all(|&v| v == 0.0));
    assert!(p.tensors["conv1.bn.running_var"].iter().all(|&v| v == 1.0));
    let nbt = &p.tensors["conv1.bn.num_batches_tracked"];
    assert_eq!(nbt.shape(), &[] as &[usize]);
    assert_eq!(nbt.iter().copied().collect::<Vec<_>>(), [0.0]);
    // Values are already f32 numbers, so an f32 file holds them exactly.
    assert!(w.iter().all(|&v| v == v as f32 as f64));
    // Seeded.
    assert_eq!(p, params::init(&g, 3, false));
    assert_ne!(p, params::init(&g, 4, false));
}

/// DenseNet's convs scale by fan_in, as torchvision's DenseNet does (a ResNet's by
/// fan_out, above): by fan_out, the 1x1 convs reading 1000 concatenated channels compound
/// to logits near 1e7 at init, where torchvision's are a few units.
#[test]
fn densenet_init_scales_convs_by_fan_in_and_keeps_logits_small() {
    let g = crate::common::example("densenet121");
    let p = params::init(&g, 0, false);
    // dense3_24.conv1 reads 256 + 23 * 32 = 992 channels and writes 128.
    let w = &p.tensors["dense3_24.conv1.weight"];
    assert_eq!(w.shape(), &[128, 992, 1, 1]);
    let want = (2.0f64 / 992.0).sqrt();
    assert!(
        (std_of(w) / want - 1.0).abs() < 0.05,
        "std {} vs {want}",
        std_of(w)
    );
    let x = ArrayD::from_shape_fn(ndarray::IxDyn(&[1, 3, 224, 224]), |i| {
        ((i[1] * 7 + i[2] * 3 + i[3]) % 11) as f32 / 5.0 - 1.0
    });
    let y = r2rc::exec::Executor::<f32>::new(&g, &p)
        .unwrap()
        .forward(x, r2rc::exec::Mode::Eval)
        .unwrap();
    let max = y.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(max > 0.1 && max < 50.0, "max |logit| {max}");
}

#[test]
fn random_stats_randomise_every_statistic() {
    let g = tiny();
    let p = params::init(&g, 3, true);
    for name in [
        "conv1.bn.weight",
        "conv1.bn.bias",
        "conv1.bn.running_mean",
        "conv1.bn.running_var",
    ] {
        let t = &p.tensors[name];
        let first = t.iter().next().copied().unwrap();
        assert!(t.iter().any(|&v| v != first), "{name} is constant");
        assert!(
            t.iter().all(|&v| v != 0.0 && v != 1.0),
            "{name} has identity values"
        );
    }
    assert!(p.tensors["conv1.bn.running_var"]
        .iter()
        .all(|&v| (0.5..2.0).contains(&v)));
    assert!(p.tensors["conv1.bn.weight"]
        .iter()
        .all(|&v| (0.5..1.5).contains(&v)));
    // Weights are drawn the same way whether or not statistics are randomised.
    assert_eq!(
        p.tensors["conv1.weight"],
        params::init(&g, 3, false).tensors["conv1.weight"]
    );
}

#[test]
fn round_trip_in_every_dtype_keeps_values_keys_and_order() {
    let g = tiny();
    let dir = tempfile::tempdir().unwrap();
    for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        let p = params::init(&g, 9, true).with_dtype(dtype);
        let path = dir.path().join(format!("w_{dtype}.safetensors"));
        let mut meta = BTreeMap::new();
        meta.insert("method".to_string(), "r2r".to_string());
        params::save(&p, &g, &path, Some(&meta)).unwrap();
        let back = params::load(&g, &path).unwrap();
        assert_eq!(back, p, "{dtype}");
        assert_eq!(back.dtype, dtype);
        assert_eq!(params::load_metadata(&path).unwrap(), meta);
        // Read independently with the safetensors crate: dtypes and graph-ordered keys.
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let want = match dtype {
            DType::F32 => Dtype::F32,
            DType::F64 => Dtype::F64,
            DType::F16 => Dtype::F16,
            DType::BF16 => Dtype::BF16,
        };
        assert_eq!(st.tensor("conv1.weight").unwrap().dtype(), want);
        let nbt = st.tensor("conv1.bn.num_batches_tracked").unwrap();
        assert_eq!(nbt.dtype(), Dtype::I64);
        assert!(nbt.shape().is_empty());
        let header = String::from_utf8_lossy(
            &bytes[8..8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize],
        )
        .to_string();
        let positions: Vec<usize> = g
            .param_specs()
            .iter()
            .map(|s| header.find(&format!("\"{}\"", s.name)).unwrap())
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "keys in graph order"
        );
    }
    // Nothing but the outputs is left in the folder (the temporary files were renamed).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4);
}

/// Writes `tensors` with the safetensors crate (not our writer) and loads them for `g`.
fn load_written(g: &Graph, tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>) -> String {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let bytes = safetensors::tensor::serialize(views, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    std::fs::write(&path, bytes).unwrap();
    load_err(g, &path)
}

fn load_err(g: &Graph, path: &Path) -> String {
    let e = params::load(g, path).expect_err("the file must be refused");
    let mut s = e.to_string();
    if let Some(h) = e.hint_text() {
        s.push_str(" | hint: ");
        s.push_str(h);
    }
    s
}

/// Every tensor of `p` in PyTorch's file form (f32, counters i64).
fn as_files(g: &Graph, p: &Params) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    g.param_specs()
        .iter()
        .map(|s| {
            let t = &p.tensors[&s.name];
            if s.slot.shape.is_empty() {
                (
                    s.name.clone(),
                    Dtype::I64,
                    vec![],
                    0i64.to_le_bytes().to_vec(),
                )
            } else {
                let b = t.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect();
                (s.name.clone(), Dtype::F32, s.slot.shape.clone(), b)
            }
        })
        .collect()
}

#[test]
fn files_written_by_the_safetensors_crate_load() {
    let g = tiny();
    let p = params::init(&g, 1, true);
    let views = as_files(&g, &p);
    let owned: Vec<(String, TensorView)> = views
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let bytes = safetensors::tensor::serialize(owned, None).unwrap();
    let back = params::from_bytes(&g, &bytes, "w").unwrap();
    assert_eq!(back, p);
}

#[test]
fn a_missing_tensor_is_named_with_shape_and_dtype() {
    let g = tiny();
    let mut files = as_files(&g, &params::init(&g, 1, false));
    files.retain(|f| f.0 != "conv2_1.bn2.running_var");
    let e = load_written(&g, files);
    assert!(e.contains("lack tensor `conv2_1.bn2.running_var`"), "{e}");
    assert!(
        e.contains("[6]") && e.contains("F32, F64, F16 or BF16"),
        "{e}"
    );
    assert!(e.contains("another architecture"), "{e}");
}

#[test]
fn an_extra_tensor_is_named() {
    let g = tiny();
    let mut files = as_files(&g, &params::init(&g, 1, false));
    files.push(("conv9.weight".into(), Dtype::F32, vec![2], vec![0; 8]));
    let e = load_written(&g, files);
    assert!(
        e.contains("`conv9.weight`") && e.contains("does not have"),
        "{e}"
    );
}

#[test]
fn a_misshaped_tensor_gives_both_shapes() {
    let g = tiny();
    let mut files = as_files(&g, &params::init(&g, 1, false));
    let f = files.iter_mut().find(|f| f.0 == "conv1.weight").unwrap();
    f.2 = vec![4, 3, 9]; // same element count, wrong shape
    let e = load_written(&g, files);
    assert!(
        e.contains("`conv1.weight`") && e.contains("[4, 3, 9]") && e.contains("[4, 3, 3, 3]"),
        "{e}"
    );
}

#[test]
fn wrongly_typed_tensors_are_refused() {
    let g = tiny();
    let mut files = as_files(&g, &params::init(&g, 1, false));
    files.iter_mut().find(|f| f.0 == "head.fc.bias").unwrap().1 = Dtype::I32;
    let e = load_written(&g, files);
    assert!(
        e.contains("`head.fc.bias`") && e.contains("I32") && e.contains("F32, F64, F16 or BF16"),
        "{e}"
    );

    let mut files = as_files(&g, &params::init(&g, 1, false));
    let f = files
        .iter_mut()
        .find(|f| f.0 == "conv1.bn.num_batches_tracked")
        .unwrap();
    f.1 = Dtype::F64;
    let e = load_written(&g, files);
    assert!(
        e.contains("`conv1.bn.num_batches_tracked`") && e.contains("expects I64"),
        "{e}"
    );
    assert!(e.contains("[] (a scalar)"), "{e}");
}

#[test]
fn non_finite_weights_are_refused_by_name() {
    let g = tiny();
    let mut files = as_files(&g, &params::init(&g, 1, false));
    let f = files
        .iter_mut()
        .find(|f| f.0 == "conv2_1.conv1.weight")
        .unwrap();
    f.3[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    let e = load_written(&g, files);
    assert!(
        e.contains("`conv2_1.conv1.weight`") && e.contains("non-finite") && e.contains("index 2"),
        "{e}"
    );
}

#[test]
fn damaged_files_give_clear_errors() {
    let g = tiny();
    let dir = tempfile::tempdir().unwrap();
    let good = params::to_bytes(&params::init(&g, 1, false), &g, None).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "too short for the 8-byte header length"),
        (
            "short",
            good[..5].to_vec(),
            "too short for the 8-byte header length",
        ),
        // Header cut in the middle: the length field points past the end.
        (
            "cut_header",
            good[..40].to_vec(),
            "points past the end of the file",
        ),
        // Data cut: the header is whole but the tensors are not.
        (
            "cut_data",
            good[..good.len() - 3].to_vec(),
            "truncated or damaged",
        ),
        // A lying header length: huge (must not allocate it) and slightly too long.
        (
            "huge_len",
            {
                let mut b = good.clone();
                b[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
                b
            },
            "larger than 100 MB",
        ),
        (
            "long_len",
            {
                let mut b = good.clone();
                let n = u64::from_le_bytes(b[..8].try_into().unwrap()) + 4;
                b[..8].copy_from_slice(&n.to_le_bytes());
                b
            },
            "not valid safetensors JSON",
        ),
        (
            "not_json",
            {
                let mut b = 8u64.to_le_bytes().to_vec();
                b.extend_from_slice(b"not json");
                b
            },
            "not valid safetensors JSON",
        ),
    ];
    for (name, bytes, want) in cases {
        let path = write(name, &bytes);
        let e = load_err(&g, &path);
        assert!(e.contains(want), "{name}: {e}");
        assert!(e.contains(name), "{name}: the message names the file: {e}");
    }
    let e = load_err(&g, &dir.path().join("absent.safetensors"));
    assert!(e.contains("absent.safetensors"), "{e}");
}

#[test]
fn weights_of_another_architecture_are_refused_on_load_and_save() {
    let g = tiny();
    let other = r2rc::lower::compile(&ARCH.replace("5-d fc", "7-d fc"), &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    params::save(&params::init(&other, 0, false), &other, &path, None).unwrap();
    let e = load_err(&g, &path);
    assert!(
        e.contains("`head.fc.weight`") && e.contains("[7, 6]") && e.contains("[5, 6]"),
        "{e}"
    );
    let e = params::save(&params::init(&other, 0, false), &g, &path, None).unwrap_err();
    assert!(e.to_string().contains("head.fc.weight"), "{e}");
}

#[test]
fn dtype_parse_and_rounding() {
    assert_eq!(DType::parse("bf16").unwrap(), DType::BF16);
    assert!(DType::parse("f8").unwrap_err().to_string().contains("f8"));
    let p = params::init(&tiny(), 2, true);
    let h: HashMap<_, _> = [(DType::F16, 1e-3), (DType::BF16, 8e-3)].into();
    for (d, rel) in h {
        let q = p.clone().with_dtype(d);
        for (a, b) in q.tensors["conv1.weight"]
            .iter()
            .zip(p.tensors["conv1.weight"].iter())
        {
            assert!((a - b).abs() <= rel * b.abs() + 1e-7, "{d}: {a} vs {b}");
        }
        assert_ne!(q, p);
    }
}
