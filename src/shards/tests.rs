use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use safetensors::tensor::Dtype;

use super::writer::split;
use super::*;
use crate::ir::{Graph, ParamKind};
use crate::lower::compile;
use crate::params::{DType, Params};

fn example(name: &str) -> Graph {
    let path = format!("{}/examples/{name}.arch", env!("CARGO_MANIFEST_DIR"));
    compile(&fs::read_to_string(path).unwrap(), &[]).unwrap()
}

/// A safetensors file (through the reference writer) of `p`'s tensors renamed by
/// `name` (None drops one): what PyTorch saves for such a state_dict.
fn variant(p: &Params, name: impl Fn(&str) -> Option<String>) -> Vec<u8> {
    let mut data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (k, t) in &p.tensors {
        let Some(n) = name(k) else { continue };
        let counter = k.ends_with(".num_batches_tracked");
        let dtype = if counter { Dtype::I64 } else { Dtype::F32 };
        let bytes = encode(&t.iter().copied().collect::<Vec<_>>(), DType::F32, counter);
        data.push((n, dtype, t.shape().to_vec(), bytes));
    }
    let views = data.iter().map(|(n, d, shape, b)| {
        let v = safetensors::tensor::TensorView::new(*d, shape.clone(), b).unwrap();
        (n.clone(), v)
    });
    safetensors::tensor::serialize(views, None).unwrap()
}

fn ddp(k: &str) -> Option<String> {
    Some(format!("module.{k}"))
}

fn no_counter(k: &str) -> Option<String> {
    (!k.ends_with(".num_batches_tracked")).then(|| k.to_string())
}

/// `p` with every counter set to `v` (the file's counters, or 0 where it lacks them).
fn counters(mut p: Params, v: f64) -> Params {
    for (k, t) in p.tensors.iter_mut() {
        if k.ends_with(".num_batches_tracked") {
            t.fill(v);
        }
    }
    p
}

#[test]
fn variants_find_a_prefix_every_name_has_and_missing_counters() {
    let v = Variants::of(&["module.a.weight", "module.bn.running_mean"]);
    assert_eq!(v.prefix, "module.");
    // The batch norm lacks running_var too: not a batch norm's statistics, no counter.
    assert!(v.zero_counters.is_empty());
    let v = Variants::of(&[
        "module._orig_mod.bn.running_mean",
        "module._orig_mod.bn.running_var",
        "module._orig_mod.bn2.running_mean",
        "module._orig_mod.bn2.running_var",
        "module._orig_mod.bn2.num_batches_tracked",
    ]);
    assert_eq!(v.prefix, "module._orig_mod.");
    let want: BTreeSet<String> = ["bn.num_batches_tracked".to_string()].into();
    assert_eq!(v.zero_counters, want);
    assert_eq!(v.file_name("bn.weight"), "module._orig_mod.bn.weight");
    let notes = v.notes("f.safetensors");
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes[0].contains("`module._orig_mod.`"), "{notes:?}");
    assert!(
        notes[1].contains("1 batch norm (`bn.num_batches_tracked`)"),
        "{notes:?}"
    );
    // Only some names prefixed: nothing stripped. No names, or a bare prefix: none.
    assert_eq!(Variants::of(&["module.a", "b"]).prefix, "");
    assert_eq!(Variants::of(&["module."]).prefix, "");
    assert_eq!(Variants::of(&[]), Variants::default());
    assert!(Variants::default().notes("f").is_empty());
}

#[test]
fn ddp_and_counterless_checkpoints_load_single_sharded_and_mapped() {
    let g = example("resnet_cifar10");
    let p = counters(crate::params::init(&g, 4, true), 7.0);
    let dir = tempfile::tempdir().unwrap();
    let bn = g
        .param_specs()
        .iter()
        .filter(|s| s.slot.kind == ParamKind::NumBatchesTracked)
        .count();
    type Rename = fn(&str) -> Option<String>;
    let both: Rename = |k| no_counter(k).map(|k| format!("module.{k}"));
    let plain: Rename = |k| Some(k.to_string());
    for (what, rename, counter, want_notes) in [
        ("plain", plain, 7.0, 0),
        ("ddp", ddp as Rename, 7.0, 1),
        ("no-counters", no_counter as Rename, 0.0, 1),
        ("both", both, 0.0, 2),
    ] {
        let want = counters(p.clone(), counter);
        // One file, in memory (params::load) and mapped (Source, as streaming reads).
        let single = dir.path().join(format!("{what}.safetensors"));
        fs::write(&single, variant(&p, rename)).unwrap();
        let (got, notes) = crate::params::load_with_notes(&g, &single).unwrap();
        assert_eq!(got, want, "{what}");
        assert_eq!(notes.len(), want_notes, "{what}: {notes:?}");
        if counter == 0.0 {
            let n = format!("{bn} batch norms");
            assert!(notes.iter().any(|s| s.contains(&n)), "{what}: {notes:?}");
        }
        let src = Source::open(&single).unwrap();
        src.check(&g).unwrap();
        assert_eq!(src.notes(), notes, "{what}");
        for spec in g.param_specs() {
            assert_eq!(src.decode(&spec.name).unwrap(), want.tensors[&spec.name]);
            src.release(&spec.name);
        }
        assert_eq!(
            src.bytes("conv1.bn.num_batches_tracked").unwrap(),
            &(counter as i64).to_le_bytes()
        );
        // Sharded: two shards and an index under the file's names.
        let set = dir.path().join(what);
        fs::create_dir(&set).unwrap();
        let mut weight_map = BTreeMap::new();
        let names: Vec<&String> = p.tensors.keys().collect();
        for (k, half) in names.chunks(names.len() / 2 + 1).enumerate() {
            let shard = format!("m-{k}.safetensors");
            let part = Params {
                tensors: half
                    .iter()
                    .map(|n| ((*n).clone(), p.tensors[*n].clone()))
                    .collect(),
                dtype: p.dtype,
            };
            fs::write(set.join(&shard), variant(&part, rename)).unwrap();
            for n in half {
                if let Some(f) = rename(n) {
                    weight_map.insert(f, shard.clone());
                }
            }
        }
        let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
        fs::write(set.join("m.safetensors.index.json"), index.to_string()).unwrap();
        let (got, sharded_notes) = crate::params::load_with_notes(&g, &set).unwrap();
        assert_eq!(got, want, "{what} sharded");
        assert_eq!(sharded_notes.len(), want_notes, "{what}: {sharded_notes:?}");
        assert_eq!(crate::params::load(&g, &set).unwrap(), want);
    }
}

#[test]
fn a_prefix_on_some_names_only_is_refused_with_a_hint() {
    let g = example("resnet_cifar10");
    let p = crate::params::init(&g, 1, false);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.safetensors");
    let mixed = |k: &str| {
        Some(if k.starts_with("conv3_") {
            format!("module.{k}")
        } else {
            k.to_string()
        })
    };
    fs::write(&path, variant(&p, mixed)).unwrap();
    let e = crate::params::load(&g, &path).unwrap_err();
    assert!(e.to_string().contains("`conv3_1.conv1.weight`"), "{e}");
    let h = e.hint_text().unwrap_or_default();
    assert!(
        h.contains("`module.conv3_1.conv1.weight`") && h.contains("model.module.state_dict()"),
        "{h}"
    );
    let e = Source::open(&path).unwrap().check(&g).unwrap_err();
    assert!(
        e.hint_text()
            .unwrap_or_default()
            .contains("`module.` prefix"),
        "{e}"
    );
}

#[test]
fn a_batch_norm_the_network_lacks_is_named_by_its_statistics() {
    // A counterless file with one more batch norm than the network: the refusal names
    // a tensor of the file, not the counter r2rc supplies.
    let g = example("resnet_cifar10");
    let mut p = crate::params::init(&g, 1, false);
    for s in ["running_mean", "running_var"] {
        let t = p.tensors[&format!("conv1.bn.{s}")].clone();
        p.tensors.insert(format!("extra.bn.{s}"), t);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("extra.safetensors");
    fs::write(&path, variant(&p, no_counter)).unwrap();
    for e in [
        crate::params::load(&g, &path).unwrap_err(),
        Source::open(&path).unwrap().check(&g).unwrap_err(),
    ] {
        assert!(e.to_string().contains("`extra.bn.running_mean`"), "{e}");
    }
}

#[test]
fn sizes_parse_like_hugging_face() {
    assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
    assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
    assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
    assert_eq!(parse_size("4096").unwrap(), 4096);
    assert!(parse_size("lots").is_err());
    assert!(parse_size("0GB").is_err());
}

#[test]
fn shards_hold_at_most_the_size_and_big_tensors_alone() {
    let e = |n: &str, k: usize| Entry {
        name: n.into(),
        shape: vec![k],
        counter: false,
    };
    let v = vec![e("a", 10), e("b", 10), e("c", 100), e("d", 5)];
    let g = split(&v, DType::F32, Some(80));
    let names: Vec<Vec<&str>> = g
        .iter()
        .map(|s| s.iter().map(|e| e.name.as_str()).collect())
        .collect();
    assert_eq!(names, vec![vec!["a", "b"], vec!["c"], vec!["d"]]);
}

/// The bit scan agrees with decoding for every float dtype: finite values pass, and a NaN
/// or infinity far into a tensor is refused with its index in the whole tensor.
#[test]
fn check_finite_refuses_what_decoding_refuses() {
    let n = 3 * (1 << 16) + 5;
    let values: Vec<f64> = (0..n).map(|i| (i as f64 - 1e5) * 1e-3).collect();
    for (dtype, file) in [
        (DType::F16, Dtype::F16),
        (DType::BF16, Dtype::BF16),
        (DType::F32, Dtype::F32),
        (DType::F64, Dtype::F64),
    ] {
        let good = encode(&values, dtype, false);
        check_finite(&good, file, "w", "f.safetensors").unwrap();
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut v = values.clone();
            v[n - 2] = bad;
            let raw = encode(&v, dtype, false);
            let e = check_finite(&raw, file, "w", "f.safetensors")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("tensor `w` in f.safetensors")
                    && e.contains(&format!("index {}", n - 2)),
                "{dtype:?} {bad}: {e}"
            );
        }
    }
    // Counters are integers: any bits are fine.
    check_finite(&[0xff; 16], Dtype::I64, "c", "f").unwrap();
    // A dtype r2rc cannot read is refused by name.
    let e = check_finite(&[0; 4], Dtype::U8, "u", "f")
        .unwrap_err()
        .to_string();
    assert!(e.contains("`u`") && e.contains("U8"), "{e}");
}

/// Encoding into a slice gives the bytes encoding by appending does, for every float
/// dtype, on values that round (and an odd count).
#[test]
fn encode_to_matches_encode() {
    let values: Vec<f64> = (0..1001)
        .map(|i| ((i as f64) * 0.7311 - 300.0).sin() * 1e3 / 7.0)
        .chain([0.0, -0.0, 1e-40, 65519.0])
        .collect();
    for dtype in [DType::F16, DType::BF16, DType::F32, DType::F64] {
        let want = encode(&values, dtype, false);
        let mut got = vec![0xaa; values.len() * dtype.size()];
        encode_to(&values, dtype, &mut got);
        assert_eq!(got, want, "{dtype:?}");
    }
}

/// Written in order, each shard's direct writer is finished (its buffer freed) as soon as
/// the shard has every byte, not at the end; the files hold the tensors all the same.
#[test]
fn each_shard_finishes_when_its_last_tensor_is_written() {
    let dir = tempfile::tempdir_in(".").unwrap();
    let path = dir.path().join("w.safetensors");
    let e = |n: &str, k: usize| Entry {
        name: n.into(),
        shape: vec![k],
        counter: false,
    };
    // 3000 f32 values per shard: two shards of one tensor each, then one of two.
    let entries = vec![e("a", 3000), e("b", 3000), e("c", 1000), e("d", 2000)];
    let mut w = Writer::create(&path, &entries, DType::F32, None, Some(12_000), 0).unwrap();
    w.sequential().unwrap();
    let open = w.direct_writers();
    if open == 0 {
        eprintln!("this file system refuses O_DIRECT; nothing to test here");
        return;
    }
    assert_eq!(open, 3);
    let values =
        |n: usize, at: f64| ndarray::Array1::from_iter((0..n).map(|i| at + i as f64)).into_dyn();
    w.write_values("a", &values(3000, 0.0)).unwrap();
    assert_eq!(w.direct_writers(), 2, "the first shard is complete");
    w.write_values("b", &values(3000, 1e4)).unwrap();
    w.write_values("c", &values(1000, 2e4)).unwrap();
    assert_eq!(w.direct_writers(), 1, "the last shard still lacks `d`");
    w.write_values("d", &values(2000, 3e4)).unwrap();
    assert_eq!(w.direct_writers(), 0);
    let files = w.finish().unwrap();
    assert_eq!(files.len(), 4, "three shards and the index: {files:?}");
    // The index, written last, lists the shards.
    let src = Source::open(&files[3]).unwrap();
    for (name, n, at) in [
        ("a", 3000, 0.0),
        ("b", 3000, 1e4),
        ("c", 1000, 2e4),
        ("d", 2000, 3e4),
    ] {
        assert_eq!(src.decode(name).unwrap(), values(n, at), "{name}");
    }
}
