use super::*;
use crate::lower::compile;

/// The example ResNets whose names torchvision's scheme covers.
const RESNETS: [&str; 5] = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet_cifar10",
    "resnet_cifar18",
];

fn example(name: &str) -> Graph {
    let path = format!("{}/examples/{name}.arch", env!("CARGO_MANIFEST_DIR"));
    compile(&std::fs::read_to_string(path).unwrap(), &[]).unwrap()
}

/// A path for `name` in a folder of its own, and the folder (removed when it goes).
fn tmp(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("r2rc-names-")
        .tempdir()
        .unwrap();
    let path = dir.path().join(name);
    (dir, path)
}

#[test]
fn resnet18_has_torchvisions_tensor_names() {
    let g = example("resnet18");
    let pairs = tensor_renames(&g, Naming::Torchvision).unwrap();
    let map: BTreeMap<&str, &str> = pairs
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(map["conv1.weight"], "conv1.weight");
    assert_eq!(map["conv1.bn.running_var"], "bn1.running_var");
    assert_eq!(map["conv2_1.conv1.weight"], "layer1.0.conv1.weight");
    assert_eq!(map["conv2_2.bn2.bias"], "layer1.1.bn2.bias");
    assert_eq!(
        map["conv3_1.downsample.0.weight"],
        "layer2.0.downsample.0.weight"
    );
    assert_eq!(
        map["conv5_1.downsample.1.num_batches_tracked"],
        "layer4.0.downsample.1.num_batches_tracked"
    );
    assert_eq!(map["head.fc.weight"], "fc.weight");
    assert_eq!(map["head.fc.bias"], "fc.bias");
    // torchvision's resnet18 state_dict has 122 entries (102 BN, 20 conv/fc tensors).
    assert_eq!(pairs.len(), 122);
    let theirs: BTreeSet<&str> = pairs.iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!(theirs.len(), pairs.len());
    assert!(theirs.iter().all(|n| !n.contains("conv2_")));
}

#[test]
fn layer_names_round_trip_on_every_resnet() {
    for ex in RESNETS {
        let g = example(ex);
        for (ours, theirs) in layer_renames(&g, Naming::Torchvision).unwrap() {
            assert_eq!(
                from_torchvision_layer(&theirs).as_deref(),
                Some(ours.as_str()),
                "{ex}: {theirs}"
            );
        }
    }
    assert_eq!(
        from_torchvision_layer("layer3.5.bn3").as_deref(),
        Some("conv4_6.bn3")
    );
    for bad in [
        "layer0.0.conv1",
        "layer1.00.conv1",
        "layer1.x.conv1",
        "layer1.0",
        "bn2",
    ] {
        assert_eq!(from_torchvision_layer(bad), None, "{bad}");
    }
}

#[test]
fn weights_round_trip_through_torchvision_names() {
    let g = example("resnet_cifar10");
    let p = params::init(&g, 3, true);
    let (_dir, path) = tmp("cifar10_tv.safetensors");
    save(&p, &g, &path, None, Naming::Torchvision).unwrap();
    // The file holds torchvision's names only...
    let names: BTreeSet<String> = file_tensors(&path).unwrap().into_keys().collect();
    assert!(names.contains("layer1.0.bn1.running_mean"));
    assert!(names.contains("bn1.weight") && names.contains("fc.bias"));
    assert!(!names
        .iter()
        .any(|n| n.starts_with("conv2_") || n.starts_with("head")));
    // ...and reads back bit for bit under r2rc's names.
    let back = load(&g, &path, Naming::Torchvision).unwrap();
    assert_eq!(back, p);
    // Read with the wrong naming, the error says which flag to pass.
    let e = load(&g, &path, Naming::R2rc).unwrap_err();
    assert!(e.to_string().contains("conv1.bn"), "{e}");
    let hint = e.hint_text().unwrap_or_default();
    assert!(hint.contains("--names torchvision"), "{hint}");
    // And the other way round.
    let (_dir, ours) = tmp("cifar10_r2rc.safetensors");
    save(&p, &g, &ours, None, Naming::R2rc).unwrap();
    let e = load(&g, &ours, Naming::Torchvision).unwrap_err();
    assert!(e.hint_text().unwrap_or_default().contains("r2rc"), "{e}");
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(ours);
}

#[test]
fn unknown_tensor_in_a_torchvision_file_is_named() {
    let g = example("resnet_cifar10");
    let p = to_naming(&params::init(&g, 1, false), &g, Naming::Torchvision).unwrap();
    let mut p2 = p.clone();
    let t = p2.tensors["fc.bias"].clone();
    p2.tensors.insert("layer9.0.conv1.weight".into(), t);
    // Written by hand (r2rc refuses to write tensors the network lacks).
    let bytes = raw_safetensors(&p2);
    let (_dir, path) = tmp("unknown.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let e = load(&g, &path, Naming::Torchvision)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`layer9.0.conv1.weight`"), "{e}");
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_ddp_torchvision_checkpoint_without_counters_loads_with_notes() {
    let g = example("resnet_cifar10");
    let p = params::init(&g, 2, true);
    let mut tv = to_naming(&p, &g, Naming::Torchvision).unwrap();
    tv.tensors
        .retain(|k, _| !k.ends_with(".num_batches_tracked"));
    tv.tensors = std::mem::take(&mut tv.tensors)
        .into_iter()
        .map(|(k, v)| (format!("module.{k}"), v))
        .collect();
    let (_dir, path) = tmp("ddp_tv.safetensors");
    std::fs::write(&path, raw_safetensors(&tv)).unwrap();
    let (back, notes) = load_with_notes(&g, &path, Naming::Torchvision).unwrap();
    assert_eq!(back, p, "the counters of init are 0 too");
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes[0].contains("`module.`") && notes[0].contains("DistributedDataParallel"));
    assert!(notes[1].contains("num_batches_tracked") && notes[1].contains("read as 0"));
    // Read under r2rc's names, the hint still sees torchvision's names.
    let e = load(&g, &path, Naming::R2rc).unwrap_err();
    let hint = e.hint_text().unwrap_or_default();
    assert!(hint.contains("pass --names torchvision"), "{e}: {hint}");
    // A torchvision checkpoint of another network (one tensor missing) gets the
    // hint too, and under --names torchvision the error names the missing tensor.
    tv.tensors.remove("module.layer2.0.conv2.weight");
    std::fs::write(&path, raw_safetensors(&tv)).unwrap();
    let e = load(&g, &path, Naming::R2rc).unwrap_err();
    let hint = e.hint_text().unwrap_or_default();
    assert!(hint.contains("pass --names torchvision"), "{e}: {hint}");
    let e = load(&g, &path, Naming::Torchvision).unwrap_err();
    assert!(e.to_string().contains("`layer2.0.conv2.weight`"), "{e}");
    let _ = std::fs::remove_file(path);
}

#[test]
fn another_networks_torchvision_checkpoint_is_not_taken_for_a_naming_slip() {
    // resnet18's torchvision names include every one of the CIFAR net's, but their
    // shapes differ: the error keeps its "another architecture" hint.
    let c10 = example("resnet_cifar10");
    let r18 = example("resnet18");
    let (_dir, path) = tmp("r18_tv.safetensors");
    save(
        &params::init(&r18, 1, false),
        &r18,
        &path,
        None,
        Naming::Torchvision,
    )
    .unwrap();
    let e = load(&c10, &path, Naming::R2rc).unwrap_err();
    let hint = e.hint_text().unwrap_or_default();
    assert!(hint.contains("another architecture"), "{e}: {hint}");
    assert_eq!(suggested_naming(&c10, &path, Naming::R2rc), None);
    assert_eq!(
        suggested_naming(&r18, &path, Naming::R2rc),
        Some(Naming::Torchvision)
    );
    let _ = std::fs::remove_file(path);
}

/// A minimal f32/i64 safetensors writer for files r2rc would not write.
fn raw_safetensors(p: &Params) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, t) in &p.tensors {
        let start = data.len();
        let dtype = if name.ends_with("num_batches_tracked") {
            t.iter()
                .for_each(|&x| data.extend_from_slice(&(x as i64).to_le_bytes()));
            "I64"
        } else {
            t.iter()
                .for_each(|&x| data.extend_from_slice(&(x as f32).to_le_bytes()));
            "F32"
        };
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": t.shape(), "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = serde_json::to_string(&header).unwrap();
    while !(h.len() + 8).is_multiple_of(8) {
        h.push(' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(&data);
    out
}

fn to_r2rc(g: &Graph, naming: Naming, t: &str) -> String {
    target_to_r2rc(g, naming, t).unwrap_or_else(|e| panic!("{t}: {e}"))
}

#[test]
fn torchvision_targets_name_layers_blocks_and_stages() {
    let tv = Naming::Torchvision;
    let g = example("resnet18");
    // Layers of the stem, of blocks, of a projection shortcut, and of the head.
    for (theirs, ours) in [
        ("conv1", "conv1"),
        ("bn1", "conv1.bn"),
        ("relu", "conv1.act"),
        ("maxpool", "conv2_x.pool"),
        ("layer1.0.conv1", "conv2_1.conv1"),
        ("layer2.0.conv1", "conv3_1.conv1"),
        ("layer2.1.bn2", "conv3_2.bn2"),
        ("layer4.1.conv2", "conv5_2.conv2"),
        ("layer2.0.downsample.0", "conv3_1.downsample.0"),
        ("layer3.0.downsample.1", "conv4_1.downsample.1"),
        ("avgpool", "head.pool"),
        ("fc", "head.fc"),
        // Blocks and stages.
        ("layer1.0", "conv2_1"),
        ("layer2.0", "conv3_1"),
        ("layer3.1", "conv4_2"),
        ("layer1", "conv2_x"),
        ("layer3", "conv4_x"),
        ("layer4", "conv5_x"),
    ] {
        assert_eq!(to_r2rc(&g, tv, theirs), ours, "{theirs}");
    }
    // r2rc's own names stay valid under torchvision's naming, and are the identity
    // under r2rc's.
    for ours in [
        "conv3_1.conv1",
        "conv4_2",
        "conv5_x",
        "head.fc",
        "head",
        "conv1.bn",
    ] {
        assert_eq!(to_r2rc(&g, tv, ours), ours);
        assert_eq!(to_r2rc(&g, Naming::R2rc, ours), ours);
    }
    // A bottleneck's third conv, a deep stage's late block.
    let g50 = example("resnet50");
    assert_eq!(to_r2rc(&g50, tv, "layer3.5.conv3"), "conv4_6.conv3");
    assert_eq!(to_r2rc(&g50, tv, "layer3.5"), "conv4_6");
    assert_eq!(
        to_r2rc(&g50, tv, "layer1.0.downsample.0"),
        "conv2_1.downsample.0"
    );
    // A padding shortcut (option A) is one module, `downsample`.
    let src = "arch Pad\ninput 3x16x16\nshortcut pad\nconv1 16x16 3x3, 8\n\
               conv2_x 16x16 [3x3, 8; 3x3, 8] x 1\n\
               conv3_x 8x8 [3x3, 16; 3x3, 16] x 2, stride 2\nhead 1x1 avg pool, 10-d fc\n";
    let pad = compile(src, &[]).unwrap();
    assert_eq!(
        to_r2rc(&pad, tv, "layer2.0.downsample"),
        "conv3_1.downsample"
    );
    assert_eq!(to_r2rc(&pad, tv, "layer2.1"), "conv3_2");
    assert_eq!(to_r2rc(&pad, tv, "layer2"), "conv3_x");
}

#[test]
fn every_torchvision_target_is_a_target_and_every_tensor_layer_has_one() {
    for ex in RESNETS {
        let g = example(ex);
        let tv = torchvision_targets(&g);
        let ours = crate::transform::target_names(&g);
        for (theirs, r) in &tv {
            assert!(ours.contains(r), "{ex}: {theirs} -> {r}");
        }
        // The module of every tensor in a torchvision file can be named as a target.
        for (r, theirs) in layer_renames(&g, Naming::Torchvision).unwrap() {
            assert_eq!(tv.get(&theirs), Some(&r), "{ex}: {theirs}");
        }
    }
}

#[test]
fn unknown_targets_are_refused_with_the_nearest_name_and_the_valid_ones() {
    let tv = Naming::Torchvision;
    let g = example("resnet18");
    let err = |naming, t: &str| {
        let e = target_to_r2rc(&g, naming, t).unwrap_err();
        assert!(matches!(e, Error::Usage { .. }), "{e:?}");
        assert!(e.to_string().contains(&format!("`{t}`")), "{e}");
        e.hint_text().unwrap_or_default().to_string()
    };
    // A stage resnet18 lacks: the hint lists its stages with their blocks.
    let h = err(tv, "layer5");
    assert!(h.contains("layer4 (blocks layer4.0-layer4.1)"), "{h}");
    assert!(h.contains("in a block conv1, bn1, conv2, bn2"), "{h}");
    assert!(h.contains("downsample.0"), "{h}");
    // Misspellings get the nearest name, with its r2rc name.
    let h = err(tv, "layer2.0.conv3");
    assert!(
        h.contains("did you mean `layer2.0.conv1` (r2rc's `conv3_1.conv1`)?"),
        "{h}"
    );
    let h = err(tv, "layer2.2");
    assert!(h.contains("did you mean `layer2."), "{h}");
    assert!(h.contains("layer2 (blocks layer2.0-layer2.1)"), "{h}");
    // A block's shared relu: which r2rc layers it stands for.
    let h = err(tv, "layer2.0.relu");
    assert!(
        h.contains("`conv3_1.act1`") && h.contains("`conv3_1.act`"),
        "{h}"
    );
    // A torchvision name without --names torchvision: say which flag fits.
    let h = err(Naming::R2rc, "layer2.0.conv1");
    assert!(
        h.contains("pass --names torchvision, or write `conv3_1.conv1`"),
        "{h}"
    );
    let h = err(Naming::R2rc, "layer3");
    assert!(h.contains("`conv4_x`"), "{h}");
    // r2rc misspellings under r2rc's naming.
    let h = err(Naming::R2rc, "conv3_1.conv9");
    assert!(h.contains("did you mean `conv3_1.conv1`?"), "{h}");
    assert!(h.contains("conv2_x (blocks conv2_1-conv2_2)"), "{h}");
    // A network outside the ResNet layout: r2rc's names only, and said so.
    let small = example("smallconv");
    assert!(torchvision_targets(&small).is_empty());
    let name = crate::transform::target_names(&small)
        .into_iter()
        .last()
        .unwrap();
    assert_eq!(to_r2rc(&small, tv, &name), name);
    let e = target_to_r2rc(&small, tv, "layer1").unwrap_err();
    let h = e.hint_text().unwrap_or_default();
    assert!(h.contains("not in torchvision's ResNet layout"), "{h}");
}

#[test]
fn networks_outside_the_resnet_layout_are_refused_by_layer() {
    let g = example("smallconv");
    let e = layer_renames(&g, Naming::Torchvision).unwrap_err();
    assert!(e.to_string().contains("`fc1`"), "{e}");
    assert!(e.hint_text().unwrap_or_default().contains("conv1"));
    // r2rc's own naming is the identity on any network.
    for (a, b) in layer_renames(&g, Naming::R2rc).unwrap() {
        assert_eq!(a, b);
    }
    // A ResNet has no place in the transformer layouts.
    let e = layer_renames(&g, Naming::Hf).unwrap_err();
    assert!(
        e.to_string().contains("neither of --names hf's layouts"),
        "{e}"
    );
    let e = layer_renames(&g, Naming::Timm).unwrap_err();
    assert!(e.to_string().contains("timm VisionTransformer"), "{e}");
    assert_eq!(Naming::parse("torchvision").unwrap(), Naming::Torchvision);
}

/// A tensor of `shape` holding distinct values drawn from `seed`.
fn random(shape: &[usize], seed: u64) -> ndarray::ArrayD<f64> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random::<f64>() - 0.5).collect();
    ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), v).unwrap()
}

fn qkv(d: usize, kv: usize) -> BTreeMap<String, ndarray::ArrayD<f64>> {
    [("q", d), ("k", kv), ("v", kv)]
        .into_iter()
        .enumerate()
        .map(|(i, (n, out))| (n.to_string(), random(&[out, d], 10 + i as u64)))
        .collect()
}

#[test]
fn conv1d_fused_qkv_joins_transposed_and_splits_back() {
    let p = qkv(6, 6);
    let parts = ["q", "k", "v"].map(|n| (n.to_string(), vec![6, 6]));
    let s = layout::Stored {
        name: "c_attn.weight".into(),
        shape: vec![6, 18],
        parts: parts.to_vec(),
        transpose: true,
        axis: 1,
    };
    let fused = s.join(&p).unwrap();
    assert_eq!(fused.shape(), &[6, 18]);
    for i in 0..6 {
        for (k, n) in ["q", "k", "v"].iter().enumerate() {
            for j in 0..6 {
                // Conv1D's [in, out]: column 6k + j is output j of q, k or v.
                assert_eq!(fused[[i, 6 * k + j]], p[*n][[j, i]], "{n} {i} {j}");
            }
        }
    }
    let back: BTreeMap<_, _> = s.split(&fused).into_iter().collect();
    assert_eq!(back, p);
}

#[test]
fn stacked_qkv_and_reshaped_tokens_round_trip_exactly() {
    let p = qkv(4, 4);
    let s = layout::Stored {
        name: "blocks.0.attn.qkv.weight".into(),
        shape: vec![12, 4],
        parts: ["q", "k", "v"]
            .map(|n| (n.to_string(), vec![4, 4]))
            .to_vec(),
        transpose: false,
        axis: 0,
    };
    let fused = s.join(&p).unwrap();
    for (k, n) in ["q", "k", "v"].iter().enumerate() {
        for r in 0..4 {
            for c in 0..4 {
                assert_eq!(fused[[4 * k + r, c]], p[*n][[r, c]]);
            }
        }
    }
    assert_eq!(s.split(&fused).into_iter().collect::<BTreeMap<_, _>>(), p);
    // timm's cls_token [1, 1, D] holds r2rc's [D].
    let cls = layout::Stored {
        parts: vec![("cls.weight".into(), vec![5])],
        ..layout::Stored::renamed("cls_token".into(), "cls.weight", &[1, 1, 5])
    };
    assert!(!cls.is_plain());
    let t = random(&[5], 3);
    let one = BTreeMap::from([("cls.weight".to_string(), t.clone())]);
    let stored = cls.join(&one).unwrap();
    assert_eq!(stored.shape(), &[1, 1, 5]);
    assert_eq!(
        stored.iter().collect::<Vec<_>>(),
        t.iter().collect::<Vec<_>>()
    );
    assert_eq!(cls.split(&stored), vec![("cls.weight".to_string(), t)]);
}

#[test]
fn namings_parse_and_refuse_with_the_list() {
    for n in ["r2rc", "torchvision", "hf", "timm"] {
        assert_eq!(Naming::parse(n).unwrap().keyword(), n);
    }
    let e = Naming::parse("huggingface").unwrap_err();
    assert!(
        e.to_string()
            .contains("r2rc and torchvision (ResNets), hf and timm"),
        "{e}"
    );
}
