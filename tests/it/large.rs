//! Large checkpoints: sharded safetensors, streaming widening, local proofs.

use std::fs;

use r2rc::names::Naming;
use r2rc::params::{self, DType};
use r2rc::patch::Step;
use r2rc::pipeline::Proof;
use r2rc::prove::ProveOptions;
use r2rc::shards::{self, Source};
use r2rc::transform::{widen, Amount, Method, Target, WidenArgs};

use crate::common::{example, listing as shard_files, teacher, widen_args};

fn args(target: Target, method: Method) -> WidenArgs {
    widen_args(target, Amount::By(1.5), method)
}

#[test]
fn sharded_round_trip_by_index_and_by_folder() {
    let g = example("resnet_cifar10");
    let p = params::init(&g, 3, true);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let written = shards::save(&p, &g, &path, None, Some(20_000)).unwrap();
    let names = shard_files(dir.path());
    assert!(names.len() > 3, "{names:?}");
    assert!(
        names.contains(&"model-00001-of-00006.safetensors".to_string())
            || names.iter().any(|n| n.starts_with("model-00001-of-")),
        "{names:?}"
    );
    assert!(names.contains(&"model.safetensors.index.json".to_string()));
    assert_eq!(written.len(), names.len());
    let index = dir.path().join("model.safetensors.index.json");
    assert_eq!(params::load(&g, &index).unwrap(), p);
    assert_eq!(params::load(&g, dir.path()).unwrap(), p);
    let json: serde_json::Value = serde_json::from_slice(&fs::read(&index).unwrap()).unwrap();
    assert_eq!(
        json["weight_map"].as_object().unwrap().len(),
        g.param_specs().len()
    );
    // Unsharded through the same writer: the same bytes as params::to_bytes.
    let single = dir.path().join("single.safetensors");
    shards::save(&p, &g, &single, None, None).unwrap();
    assert_eq!(
        fs::read(&single).unwrap(),
        params::to_bytes(&p, &g, None).unwrap()
    );
}

#[test]
fn broken_sets_are_refused_clearly() {
    let g = example("smallconv");
    let p = params::init(&g, 1, true);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    shards::save(&p, &g, &path, None, Some(1)).unwrap();
    let index = dir.path().join("m.safetensors.index.json");
    let shards: Vec<String> = shard_files(dir.path())
        .into_iter()
        .filter(|n| n.ends_with("safetensors"))
        .collect();
    assert!(shards.len() >= 2);
    // A tensor in two shards: the second shard replaced by a copy of the first's file
    // under its name would hold another tensor; write a shard with both instead.
    let first = dir.path().join(&shards[0]);
    let second = dir.path().join(&shards[1]);
    let saved = fs::read(&second).unwrap();
    fs::copy(&first, &second).unwrap();
    let e = params::load(&g, &index).unwrap_err().to_string();
    assert!(e.contains("two shards") || e.contains("places"), "{e}");
    fs::write(&second, saved).unwrap();
    params::load(&g, &index).unwrap();
    // A missing shard.
    fs::remove_file(&second).unwrap();
    let e = params::load(&g, &index).unwrap_err().to_string();
    assert!(
        e.contains("does not exist") && e.contains(&shards[1]),
        "{e}"
    );
    // A shard outside the folder.
    fs::write(
        &index,
        r#"{"metadata":{},"weight_map":{"conv1.weight":"../x.safetensors"}}"#,
    )
    .unwrap();
    let e = params::load(&g, &index).unwrap_err().to_string();
    assert!(e.contains("not a file name"), "{e}");
}

#[test]
fn two_shards_holding_one_tensor_name_it() {
    let g = example("smallconv");
    let p = params::init(&g, 1, true);
    let dir = tempfile::tempdir().unwrap();
    // Two complete files, each holding every tensor, under one index.
    let a = dir.path().join("a.safetensors");
    let b = dir.path().join("b.safetensors");
    params::save(&p, &g, &a, None).unwrap();
    params::save(&p, &g, &b, None).unwrap();
    let mut map = serde_json::Map::new();
    for (k, s) in g.param_specs().iter().enumerate() {
        let f = if k % 2 == 0 {
            "a.safetensors"
        } else {
            "b.safetensors"
        };
        map.insert(s.name.clone(), f.into());
    }
    let index = dir.path().join("m.safetensors.index.json");
    fs::write(
        &index,
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    let e = params::load(&g, &index).unwrap_err().to_string();
    assert!(
        e.contains("stored in two shards") || e.contains("places"),
        "{e}"
    );
}

#[test]
fn streaming_widen_is_bit_identical_to_in_memory() {
    for (name, method, shard) in [
        ("resnet_cifar10", Method::R2r, None),
        ("resnet_cifar10", Method::Net2net, Some(30_000)),
        ("smallconv", Method::Netmorph, None),
        ("resnet50", Method::Random, Some(2_000_000)),
    ] {
        let g = example(name);
        let tp = params::init(&g, 5, true);
        let dir = tempfile::tempdir().unwrap();
        let teacher = dir.path().join("teacher.safetensors");
        shards::save(&tp, &g, &teacher, None, shard).unwrap();
        let a = args(Target::All, method);
        let src = Source::open(if shard.is_some() {
            dir.path()
        } else {
            &teacher
        })
        .unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        let path = out.join("student.safetensors");
        let job = r2rc::stream::Job {
            src: &src,
            naming: Naming::R2rc,
            seed: 7,
            prove: None,
            teacher: "t",
            shard_size: None,
        };
        let step = Step::Widen(a.clone());
        let s = r2rc::stream::step(&g, &job, &step, &mut |_| Ok(path.clone())).unwrap();
        let w = widen(&g, &tp, &a, 7).unwrap();
        let mem = w.params.clone().with_dtype(DType::F32);
        let bytes = params::to_bytes(&mem, &w.graph, Some(&s.report.metadata())).unwrap();
        assert_eq!(fs::read(&path).unwrap(), bytes, "{name} {method:?}");
        // Nothing but the output is left in its folder.
        assert_eq!(shard_files(&out), vec!["student.safetensors".to_string()]);
    }
}

#[test]
fn local_proofs_pass_for_exact_methods() {
    let g = example("resnet_cifar10");
    let tp = teacher(&g, 2);
    for method in [Method::R2r, Method::Netmorph, Method::Net2net] {
        let step = Step::Widen(args(Target::All, method));
        let opts = ProveOptions::default();
        let o = r2rc::pipeline::run(&g, &tp, &step, 1, Proof::Local(&opts), "t").unwrap();
        let ev = &o.report.evidence;
        let regions = format!("(local, {} regions)", o.report.spaces.len());
        assert!(ev.iter().all(|e| e.mode.ends_with(&regions)), "{ev:?}");
        assert!(ev.iter().all(|e| e.passed && e.values > 0), "{method:?}");
        // The student is the in-memory widening's.
        assert_eq!(
            o.params,
            widen(&g, &tp, &args(Target::All, method), 1)
                .unwrap()
                .params
        );
    }
}

#[test]
fn local_proof_catches_a_corrupted_student() {
    let g = example("resnet_cifar10");
    let tp = teacher(&g, 2);
    let a = args(Target::Name("conv2_1".into()), Method::R2r);
    let plan = r2rc::transform::plan(&g, &a).unwrap();
    assert_eq!(plan.steps.len(), 1);
    let space = &plan.spaces.spaces[plan.steps[0].0];
    let w = widen(&g, &tp, &a, 0).unwrap();
    let opts = ProveOptions::default();
    let lookup = |p: &params::Params| {
        let p = p.clone();
        move |n: &str| Ok(p.tensors[n].clone())
    };
    let ev = r2rc::local_proof::prove_step(
        &g,
        &w.graph,
        space,
        &mut lookup(&tp),
        &mut lookup(&w.params),
        &opts,
    )
    .unwrap();
    assert!(ev.iter().all(|e| e.passed));
    // One new column of the consumer off by a little: the pair no longer cancels.
    let mut bad = w.params.clone();
    let t = bad.tensors.get_mut("conv2_1.conv2.weight").unwrap();
    let c = t.shape()[1] - 1;
    t[[0, c, 1, 1]] += 1e-3;
    let ev = r2rc::local_proof::prove_step(
        &g,
        &w.graph,
        space,
        &mut lookup(&tp),
        &mut lookup(&bad),
        &opts,
    )
    .unwrap();
    assert!(ev.iter().any(|e| !e.passed), "{ev:?}");
    assert_eq!(ev[0].first_divergence.as_deref(), Some("conv2_1.conv2"));
}

/// A streamed deepening writes exactly the tensors the in-memory one does (inserted,
/// changed, and the teacher's moved ones), from sharded or single-file teachers, into
/// sharded or single-file outputs, under either naming.
#[test]
fn streaming_deepen_is_bit_identical_to_in_memory() {
    use r2rc::transform::deepen::{deepen, DeepenArgs, DeepenMethod};
    for (name, after, method, shard, naming) in [
        (
            "resnet_cifar10",
            "conv2_1",
            DeepenMethod::R2r,
            None,
            Naming::R2rc,
        ),
        (
            "resnet_cifar10",
            "conv3_x",
            DeepenMethod::NetmorphDense,
            Some(30_000),
            Naming::R2rc,
        ),
        (
            "resnet18",
            "conv3_2",
            DeepenMethod::Net2net,
            Some(3_000_000),
            Naming::Torchvision,
        ),
        (
            "resnet18",
            "conv1",
            DeepenMethod::Netmorph,
            None,
            Naming::R2rc,
        ),
        (
            "smallconv",
            "conv1",
            DeepenMethod::Random,
            None,
            Naming::R2rc,
        ),
    ] {
        let g = example(name);
        let tp = params::init(&g, 5, true);
        let dir = tempfile::tempdir().unwrap();
        let teacher = dir.path().join("teacher.safetensors");
        let theirs = r2rc::names::renamed_graph(&g, naming).unwrap();
        let tp_theirs = r2rc::names::to_naming(&tp, &g, naming).unwrap();
        shards::save(&tp_theirs, &theirs, &teacher, None, shard).unwrap();
        let src = Source::open(if shard.is_some() {
            dir.path()
        } else {
            &teacher
        })
        .unwrap();
        let a = DeepenArgs {
            after: after.into(),
            method,
            width: None,
        };
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        let path = out.join("student.safetensors");
        let job = r2rc::stream::Job {
            src: &src,
            naming,
            seed: 7,
            prove: None,
            teacher: "t",
            shard_size: shard,
        };
        let step = Step::Deepen(a.clone());
        let s = r2rc::stream::step(&g, &job, &step, &mut |_| Ok(path.clone())).unwrap();
        let d = deepen(&g, &tp, &a, 7).unwrap();
        assert_eq!(r2rc::print::print(&s.student), r2rc::print::print(&d.graph));
        let mem = d.params.clone().with_dtype(DType::F32);
        let got = Source::open(&out).unwrap();
        let want = r2rc::names::to_naming(&mem, &d.graph, naming).unwrap();
        assert_eq!(got.tensors.len(), want.tensors.len(), "{name} {after}");
        for (k, t) in &want.tensors {
            let counter = k.ends_with("num_batches_tracked");
            let bytes = shards::encode(
                t.as_standard_layout().as_slice().unwrap(),
                DType::F32,
                counter,
            );
            assert_eq!(
                got.bytes(k).unwrap(),
                &bytes[..],
                "{name} {after} {method:?}: {k}"
            );
        }
        if shard.is_some() {
            assert!(shard_files(&out).len() > 2, "{:?}", shard_files(&out));
        } else {
            assert_eq!(shard_files(&out), vec!["student.safetensors".to_string()]);
        }
    }
}
