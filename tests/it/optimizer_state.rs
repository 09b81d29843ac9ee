//! `--optimizer-state` (issue 15, CLI.md "Additions"): Adam's moments follow the weights.
//! R2R and NetMorph students keep the teacher's moments bit for bit and start new entries
//! at zero; a Net2Net student's moments are `c * exp_avg` and `c^2 * exp_avg_sq` exactly
//! where its weights are `c *` the teacher's; `step` is kept; inserted layers start at
//! zero (step 0); NetMorph-dense's readers get the same mix; a morphed kernel's moments are
//! zero-padded; streamed and in-memory runs (and apply's plans) write the same bytes;
//! `--names hf` names the moments like the weights; mismatched state is refused with
//! nothing written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, Dimension, IxDyn};
use r2rc::ir::Graph;
use r2rc::names::Naming;
use r2rc::optim::{self, Moments, State};
use r2rc::params::{DType, Params};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::common::{ex, init_weights, json, listing, ok, run, s};
use crate::transformer_widen::LLAMA;

const NET: &str = "resnet_cifar10";

/// Random moments for `graph`'s trainable tensors (exp_avg normal, exp_avg_sq uniform in
/// [0.1, 1.1), never all equal; step 100 + the tensor's index), written at `path` in f32
/// under `naming`, and returned as written.
fn write_moments(graph: &Graph, naming: Naming, path: &Path, seed: u64) -> Moments {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut m = Moments {
        avg: Params {
            tensors: BTreeMap::new(),
            dtype: DType::F32,
        },
        sq: Params {
            tensors: BTreeMap::new(),
            dtype: DType::F32,
        },
        step: BTreeMap::new(),
    };
    let specs = graph.param_specs();
    for (i, spec) in specs.iter().filter(|s| s.slot.kind.trainable()).enumerate() {
        let n: usize = spec.slot.shape.iter().product();
        let r = |rng: &mut ChaCha8Rng, lo: f64, hi: f64| {
            let v: Vec<f64> = (0..n)
                .map(|_| ((lo + (hi - lo) * rng.random::<f64>()) as f32) as f64)
                .collect();
            ArrayD::from_shape_vec(IxDyn(&spec.slot.shape), v).unwrap()
        };
        m.avg
            .tensors
            .insert(spec.name.clone(), r(&mut rng, -1.0, 1.0));
        m.sq.tensors
            .insert(spec.name.clone(), r(&mut rng, 0.1, 1.1));
        m.step.insert(spec.name.clone(), 100.0 + i as f64);
    }
    optim::save(&m, graph, naming, path).unwrap();
    m
}

/// The graph of a written student.
fn student(dir: &Path, stem: &str) -> Graph {
    let text = std::fs::read_to_string(dir.join(format!("{stem}.arch"))).unwrap();
    r2rc::lower::compile(&text, &[]).unwrap_or_else(|e| panic!("{e:?}"))
}

/// The student's moments in `dir` (r2rc names).
fn read(dir: &Path, stem: &str, naming: Naming) -> (Graph, Moments) {
    let g = student(dir, stem);
    let file = dir.join(optim::file_name(stem, naming));
    let m = State::open(&file, &g, naming).unwrap().load().unwrap();
    (g, m)
}

fn teacher(dir: &Path, dtype: &str) -> (Graph, PathBuf, PathBuf, Moments) {
    let g = crate::common::example(NET);
    let w = dir.join("t.safetensors");
    init_weights(&ex(NET), &w, &["--random-stats", "--dtype", dtype]);
    let adam = dir.join("adam.safetensors");
    let m = write_moments(&g, Naming::R2rc, &adam, 5);
    (g, w, adam, m)
}

/// `r2rc CMD NET --weights W --optimizer-state ADAM -o OUT EXTRA...`.
fn grow(cmd: &str, w: &Path, adam: &Path, out: &Path, extra: &[&str]) {
    let arch = ex(NET);
    let mut a = vec![
        cmd,
        arch.as_str(),
        "--weights",
        s(w),
        "--optimizer-state",
        s(adam),
        "-o",
        s(out),
    ];
    a.extend_from_slice(extra);
    ok(&a);
}

/// The entries of `t` at indices below `old`'s shape, and whether all others are zero.
fn leading(t: &ArrayD<f64>, old: &[usize]) -> (Vec<f64>, bool) {
    let mut lead = Vec::new();
    let mut rest_zero = true;
    for (i, &x) in t.indexed_iter() {
        if i.slice().iter().zip(old).all(|(a, b)| a < b) {
            lead.push(x);
        } else {
            rest_zero &= x == 0.0;
        }
    }
    (lead, rest_zero)
}

#[test]
fn r2r_and_netmorph_students_keep_the_teachers_moments_and_start_new_entries_at_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, w, adam, t) = teacher(tmp.path(), "f32");
    for method in ["r2r", "netmorph", "random"] {
        let out = tmp.path().join(method);
        grow(
            "widen",
            &w,
            &adam,
            &out,
            &["--all", "--by", "1.5", "--method", method, "--no-prove"],
        );
        let (g, m) = read(&out, NET, Naming::R2rc);
        let mut grown = 0;
        for spec in g
            .param_specs()
            .into_iter()
            .filter(|s| s.slot.kind.trainable())
        {
            let n = &spec.name;
            let (old_m, old_v) = (&t.avg.tensors[n], &t.sq.tensors[n]);
            let (lead, zero) = leading(&m.avg.tensors[n], old_m.shape());
            assert_eq!(
                lead,
                old_m.iter().copied().collect::<Vec<_>>(),
                "{method} {n}"
            );
            assert!(zero, "{method} {n}: new exp_avg entries are zero");
            let (lead, zero) = leading(&m.sq.tensors[n], old_v.shape());
            assert_eq!(
                lead,
                old_v.iter().copied().collect::<Vec<_>>(),
                "{method} {n}"
            );
            assert!(zero, "{method} {n}: new exp_avg_sq entries are zero");
            assert_eq!(m.step[n], t.step[n], "{method} {n}: step kept");
            grown += usize::from(m.avg.tensors[n].shape() != old_m.shape());
        }
        assert!(grown > 10, "{method}: {grown} tensors grew");
    }
}

/// Where a student entry can come from: the teacher entries whose weight times `1 / n` it
/// is, with `n`. Random draws can repeat a value (f32 has only so many), or be another's
/// multiple, so an entry may have several.
fn sources(student: &ArrayD<f64>, teacher: &ArrayD<f64>) -> Vec<Vec<(usize, f64)>> {
    let mut sorted: Vec<(f64, usize)> = teacher.iter().copied().zip(0..).collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let find = |x: f64| {
        let near = |p: &(f64, usize)| (p.0 - x).abs() <= 1e-12 * x.abs();
        let i = sorted.partition_point(|p| p.0 < x - 1e-12 * x.abs());
        let all: Vec<usize> = sorted[i..]
            .iter()
            .take_while(|p| near(p))
            .map(|p| p.1)
            .collect();
        (!all.is_empty()).then_some(all)
    };
    student
        .iter()
        .map(|&x| {
            let from: Vec<(usize, f64)> = (1..=8)
                .filter_map(|n| find(x * n as f64).map(|v| (v, n as f64)))
                .flat_map(|(v, n)| v.into_iter().map(move |i| (i, n)))
                .collect();
            assert!(!from.is_empty(), "no teacher entry for {x}");
            from
        })
        .collect()
}

#[test]
fn a_net2net_students_moments_are_scaled_by_c_and_c_squared_where_its_weights_are() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, w, adam, t) = teacher(tmp.path(), "f64");
    let out = tmp.path().join("n2n");
    grow(
        "widen",
        &w,
        &adam,
        &out,
        &["--all", "--by", "1.5", "--method", "net2net"],
    );
    let tw = r2rc::params::load(&crate::common::example(NET), &w).unwrap();
    let (g, m) = read(&out, NET, Naming::R2rc);
    let sw = r2rc::params::load(&g, &out.join(format!("{NET}.safetensors"))).unwrap();
    let (mut divided, mut copied) = (0, 0);
    for spec in g
        .param_specs()
        .into_iter()
        .filter(|s| s.slot.kind.trainable())
    {
        let n = &spec.name;
        let src = sources(&sw.tensors[n], &tw.tensors[n]);
        let (tm, tv) = (&t.avg.tensors[n], &t.sq.tensors[n]);
        let (tm, tv) = (tm.as_slice().unwrap(), tv.as_slice().unwrap());
        for ((from, &sm), &sv) in src.iter().zip(&m.avg.tensors[n]).zip(&m.sq.tensors[n]) {
            // Stored in f32, as the division by the replica count k was; one of the teacher
            // entries the weight can come from has both moments.
            let scaled = |&(i, k): &(usize, f64)| {
                (
                    ((tm[i] / k) as f32) as f64,
                    ((tv[i] / (k * k)) as f32) as f64,
                )
            };
            let Some(&(_, k)) = from.iter().find(|f| scaled(f) == (sm, sv)) else {
                panic!(
                    "{n}: (exp_avg, exp_avg_sq) = ({sm}, {sv}), not (c, c^2) times a teacher's: {:?}",
                    from.iter().map(scaled).collect::<Vec<_>>()
                )
            };
            if k > 1.0 {
                divided += 1;
            } else {
                copied += 1;
            }
        }
        assert_eq!(m.step[n], t.step[n]);
    }
    assert!(
        divided > 100 && copied > 100,
        "{divided} divided, {copied} copied"
    );
}

/// Student tensor -> teacher tensor through a deepening's name map.
fn teacher_name(report: &serde_json::Value, name: &str) -> String {
    let (layer, slot) = name.rsplit_once('.').unwrap();
    let map = report["name_map"].as_object().unwrap();
    let old = map
        .iter()
        .find(|(_, new)| new.as_str() == Some(layer))
        .map_or(layer, |(old, _)| old.as_str());
    format!("{old}.{slot}")
}

#[test]
fn deepened_students_move_moments_with_their_tensors_and_start_new_layers_at_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, w, adam, t) = teacher(tmp.path(), "f64");
    for (method, site) in [
        ("r2r", "conv2_1"),
        ("netmorph", "conv2_1"),
        ("netmorph-dense", "conv2_2"),
    ] {
        let out = tmp.path().join(method);
        grow(
            "deepen",
            &w,
            &adam,
            &out,
            &["--after", site, "--method", method],
        );
        let report = json(&out.join("report.json"));
        let inserted: Vec<&str> = report["inserted"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let changed: Vec<&str> = report["changed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let (g, m) = read(&out, NET, Naming::R2rc);
        let sw = r2rc::params::load(&g, &out.join(format!("{NET}.safetensors"))).unwrap();
        let mut zeroed = 0;
        for spec in g
            .param_specs()
            .into_iter()
            .filter(|s| s.slot.kind.trainable())
        {
            let n = &spec.name;
            let layer = n.rsplit_once('.').unwrap().0;
            if inserted.contains(&layer) {
                assert!(m.avg.tensors[n].iter().all(|&x| x == 0.0), "{method} {n}");
                assert!(m.sq.tensors[n].iter().all(|&x| x == 0.0), "{method} {n}");
                assert_eq!(m.step[n], 0.0);
                zeroed += 1;
                continue;
            }
            let from = teacher_name(&report, n);
            assert_eq!(m.step[n], t.step[&from], "{method} {n}");
            if changed.contains(&layer) && n.ends_with(".weight") {
                // exp_avg N^T with N the inserted 1x1 conv; exp_avg_sq summed over channels.
                let conv = inserted
                    .iter()
                    .find(|l| sw.tensors.contains_key(&format!("{l}.weight")))
                    .unwrap();
                let nn = &sw.tensors[&format!("{conv}.weight")];
                let c = nn.shape()[0];
                let (tm, tv) = (&t.avg.tensors[&from], &t.sq.tensors[&from]);
                let o = tm.shape()[0];
                let rest = tm.len() / o / c;
                let tm = tm.as_slice().unwrap();
                let tv = tv.as_slice().unwrap();
                let (sm, sv) = (
                    m.avg.tensors[n].as_slice().unwrap(),
                    m.sq.tensors[n].as_slice().unwrap(),
                );
                for oi in 0..o {
                    for i in 0..c {
                        for r in 0..rest {
                            let at = |j: usize| (oi * c + j) * rest + r;
                            let mix: f64 = (0..c).map(|j| nn[[i, j, 0, 0]] * tm[at(j)]).sum();
                            assert!((sm[at(i)] - mix).abs() <= 1e-6, "{n}: the same mix");
                            let sum: f64 = (0..c).map(|j| tv[at(j)]).sum();
                            assert!((sv[at(i)] - sum).abs() <= 1e-5 * sum, "{n}: the bound");
                        }
                    }
                }
                continue;
            }
            assert_eq!(m.avg.tensors[n], t.avg.tensors[&from], "{method} {n}");
            assert_eq!(m.sq.tensors[n], t.sq.tensors[&from], "{method} {n}");
        }
        assert!(zeroed >= 1, "{method}: an inserted layer");
    }
}

#[test]
fn a_morphed_kernels_moments_are_zero_padded() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, w, adam, t) = teacher(tmp.path(), "f32");
    let out = tmp.path().join("morph");
    grow(
        "morph",
        &w,
        &adam,
        &out,
        &["--layer", "conv3_1.conv1", "--kernel", "5"],
    );
    let (g, m) = read(&out, NET, Naming::R2rc);
    for spec in g
        .param_specs()
        .into_iter()
        .filter(|s| s.slot.kind.trainable())
    {
        let n = &spec.name;
        if n == "conv3_1.conv1.weight" {
            for (mom, old) in [(&m.avg, &t.avg), (&m.sq, &t.sq)] {
                let (new, old) = (&mom.tensors[n], &old.tensors[n]);
                assert_eq!(new.shape()[2], 5);
                for (i, &x) in new.indexed_iter() {
                    let inner = (1..4).contains(&i[2]) && (1..4).contains(&i[3]);
                    let want = if inner {
                        old[[i[0], i[1], i[2] - 1, i[3] - 1]]
                    } else {
                        0.0
                    };
                    assert_eq!(x, want, "{n} {:?}", i.slice());
                }
            }
        } else {
            assert_eq!(m.avg.tensors[n], t.avg.tensors[n], "{n}");
            assert_eq!(m.sq.tensors[n], t.sq.tensors[n], "{n}");
        }
        assert_eq!(m.step[n], t.step[n]);
    }
}

#[test]
fn streamed_steps_and_plans_write_the_same_state_as_in_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, w, adam, _) = teacher(tmp.path(), "f32");
    let file = |d: &Path| std::fs::read(d.join(optim::file_name(NET, Naming::R2rc))).unwrap();
    let steps: [(&str, &[&str]); 4] = [
        ("widen", &["--all", "--by", "1.5", "--method", "net2net"]),
        (
            "widen",
            &["--layer", "conv2_1", "--by", "2", "--method", "r2r"],
        ),
        (
            "deepen",
            &["--after", "conv2_2", "--method", "netmorph-dense"],
        ),
        ("morph", &["--layer", "conv3_1.conv1", "--kernel", "5"]),
    ];
    for (k, (cmd, extra)) in steps.iter().enumerate() {
        let (mem, st) = (
            tmp.path().join(format!("m{k}")),
            tmp.path().join(format!("s{k}")),
        );
        grow(cmd, &w, &adam, &mem, extra);
        let mut e = extra.to_vec();
        e.extend(["--prove", "local"]);
        grow(cmd, &w, &adam, &st, &e);
        assert_eq!(file(&mem), file(&st), "{cmd} {extra:?}");
    }
    let plan = tmp.path().join("p.plan");
    std::fs::write(
        &plan,
        "deepen --after conv2_2 --method r2r\nwiden --layer conv2_1 --by 1.5 --method net2net\nmorph --layer conv3_1.conv1 --kernel 5\ndeepen --after conv3_x --method netmorph-dense\nname Grown\n",
    )
    .unwrap();
    let (mem, st) = (tmp.path().join("am"), tmp.path().join("as"));
    let arch = ex(NET);
    let base = [
        "apply",
        arch.as_str(),
        s(&plan),
        "--weights",
        s(&w),
        "--optimizer-state",
        s(&adam),
    ];
    let mut a = base.to_vec();
    a.extend(["-o", s(&mem)]);
    ok(&a);
    let mut a = base.to_vec();
    a.extend(["-o", s(&st), "--prove", "local"]);
    ok(&a);
    assert_eq!(file(&mem), file(&st), "apply");
    assert!(
        !listing(&st).iter().any(|f| f.contains(".r2rc-apply")),
        "no scratch left"
    );
    // The plan's state is its steps' states composed: step kept, new layers at zero.
    let (g, m) = read(&mem, NET, Naming::R2rc);
    assert!(m.step.values().any(|&s| s >= 100.0));
    assert!(g.param_specs().len() > crate::common::example(NET).param_specs().len());
}

#[test]
fn names_hf_moments_are_named_like_the_weights_beside_model_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let arch = dir.join("llama.arch");
    std::fs::write(&arch, LLAMA).unwrap();
    let g = r2rc::lower::compile(LLAMA, &[]).unwrap();
    let w = dir.join("model.safetensors");
    init_weights(s(&arch), &w, &["--names", "hf", "--random-stats"]);
    let adam = dir.join("adam.safetensors");
    let t = write_moments(&g, Naming::Hf, &adam, 9);
    let keys = crate::common::tensors(&adam);
    assert!(keys
        .iter()
        .any(|(k, _)| k == "model.layers.0.mlp.gate_proj.weight.exp_avg"));
    let cases: [(&str, &[&str]); 2] = [
        ("widen", &["--all", "--by", "2", "--method", "r2r"]),
        ("deepen", &["--after", "layers_1", "--method", "r2r"]),
    ];
    for (k, (cmd, extra)) in cases.iter().enumerate() {
        let mut outs = Vec::new();
        for streamed in [false, true] {
            let out = dir.join(format!("{k}{streamed}"));
            let mut a = vec![*cmd, s(&arch), "--weights", s(&w), "--names", "hf"];
            a.extend(["--optimizer-state", s(&adam), "-o", s(&out)]);
            a.extend_from_slice(extra);
            if streamed {
                a.extend(["--prove", "local"]);
            }
            ok(&a);
            assert!(listing(&out).contains(&"optimizer.safetensors".to_string()));
            outs.push(std::fs::read(out.join("optimizer.safetensors")).unwrap());
            let (sg, m) = read(&out, "llama", Naming::Hf);
            for spec in sg.param_specs() {
                let n = &spec.name;
                if let Some(old) = t.avg.tensors.get(n).filter(|_| *cmd == "widen") {
                    let (lead, zero) = leading(&m.avg.tensors[n], old.shape());
                    let (lead_sq, _) = leading(&m.sq.tensors[n], old.shape());
                    let f32 = |x: f64| (x as f32) as f64;
                    if n.contains("norm") {
                        // The stream's norm scales are rescaled by c = sqrt(s) = sqrt(1/2)
                        // (new features held at zero): c * exp_avg and c^2 * exp_avg_sq.
                        let c = 0.5f64.sqrt();
                        let want: Vec<f64> = old.iter().map(|&x| f32(x * c)).collect();
                        assert_eq!(lead, want, "{n}");
                        let want: Vec<f64> =
                            t.sq.tensors[n].iter().map(|&x| f32(x * 0.5)).collect();
                        assert_eq!(lead_sq, want, "{n}");
                    } else {
                        assert_eq!(lead, old.iter().copied().collect::<Vec<_>>(), "{n}");
                        let want: Vec<f64> = t.sq.tensors[n].iter().copied().collect();
                        assert_eq!(lead_sq, want, "{n}");
                        assert!(zero, "{n}");
                    }
                    assert_eq!(m.step[n], t.step[n]);
                }
            }
            if *cmd == "deepen" {
                let new = m
                    .step
                    .iter()
                    .filter(|(n, _)| n.starts_with("layers_2."))
                    .count();
                assert!(new > 0 && m.step.iter().filter(|(_, &s)| s == 0.0).count() == new);
                assert_eq!(
                    m.avg.tensors["layers_3.mlp.down.weight"],
                    t.avg.tensors["layers_2.mlp.down.weight"]
                );
            }
        }
        assert_eq!(outs[0], outs[1], "{cmd}: streamed = in memory");
    }
}

/// A copy of safetensors file `from` at `to` with `edit` applied to its tensors.
fn rewrite(from: &Path, to: &Path, edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<u8>)>)) {
    let bytes = std::fs::read(from).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<usize>, Vec<u8>, safetensors::Dtype)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.shape().to_vec(), t.data().to_vec(), t.dtype()))
        .collect();
    let mut plain: Vec<(String, Vec<usize>, Vec<u8>)> = v
        .iter()
        .map(|(n, s, d, _)| (n.clone(), s.clone(), d.clone()))
        .collect();
    edit(&mut plain);
    let dtypes: BTreeMap<String, safetensors::Dtype> =
        v.drain(..).map(|(n, _, _, d)| (n, d)).collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = plain
        .iter()
        .map(|(n, s, d)| {
            let dt = dtypes.get(n).copied().unwrap_or(safetensors::Dtype::F32);
            (
                n.clone(),
                safetensors::tensor::TensorView::new(dt, s.clone(), d).unwrap(),
            )
        })
        .collect();
    std::fs::write(to, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn mismatched_state_is_refused_naming_the_tensor_with_nothing_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_, w, adam, _) = teacher(dir, "f32");
    let missing = dir.join("missing.safetensors");
    rewrite(&adam, &missing, |v| {
        v.retain(|(n, _, _)| n != "conv2_1.conv1.weight.exp_avg_sq")
    });
    let shape = dir.join("shape.safetensors");
    rewrite(&adam, &shape, |v| {
        let t = v
            .iter_mut()
            .find(|(n, _, _)| n == "head.fc.bias.exp_avg")
            .unwrap();
        t.1 = vec![t.2.len() / 8, 2];
    });
    let negative = dir.join("negative.safetensors");
    rewrite(&adam, &negative, |v| {
        let t = v
            .iter_mut()
            .find(|(n, _, _)| n == "conv1.weight.exp_avg_sq")
            .unwrap();
        t.2[..4].copy_from_slice(&(-1.0f32).to_le_bytes());
    });
    let extra = dir.join("extra.safetensors");
    rewrite(&adam, &extra, |v| {
        v.push(("conv1.bn.running_mean.exp_avg".into(), vec![1], vec![0; 4]));
    });
    let arch = ex(NET);
    for (file, says) in [
        (&missing, "lacks `conv2_1.conv1.weight.exp_avg_sq`"),
        (&shape, "`head.fc.bias.exp_avg`"),
        (&negative, "`conv1.weight.exp_avg_sq`"),
        (&extra, "`conv1.bn.running_mean.exp_avg`"),
    ] {
        for streamed in [false, true] {
            let out = dir.join("out");
            let mut a = vec![
                "widen",
                arch.as_str(),
                "--weights",
                s(&w),
                "--all",
                "--by",
                "2",
            ];
            a.extend(["--optimizer-state", s(file), "-o", s(&out)]);
            if streamed {
                a.push("--no-prove");
            }
            let (code, _, err) = run(&a);
            assert_eq!(code, 2, "{err}");
            assert!(err.contains(says), "{says}: {err}");
            assert!(
                !out.exists() || listing(&out).is_empty(),
                "nothing written: {err}"
            );
        }
    }
    // Another naming's state: the hf names of a Llama state read under r2rc names.
    let larch = dir.join("llama.arch");
    std::fs::write(&larch, LLAMA).unwrap();
    let g = r2rc::lower::compile(LLAMA, &[]).unwrap();
    let hf = dir.join("hf.safetensors");
    write_moments(&g, Naming::Hf, &hf, 1);
    let out = dir.join("llama_out");
    let (code, _, err) = run(&[
        "widen",
        s(&larch),
        "--all",
        "--by",
        "2",
        "--optimizer-state",
        s(&hf),
        "-o",
        s(&out),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("lacks `") && err.contains("--names"), "{err}");
    assert!(!out.exists() || listing(&out).is_empty());
    // The state needs -o, and an output never overwrites it.
    let (code, _, err) = run(&[
        "widen",
        &arch,
        "--all",
        "--by",
        "2",
        "--optimizer-state",
        s(&adam),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("-o"), "{err}");
    let same = dir.join("same");
    std::fs::create_dir_all(&same).unwrap();
    let inside = same.join(format!("{NET}.optimizer.safetensors"));
    std::fs::copy(&adam, &inside).unwrap();
    let before = std::fs::read(&inside).unwrap();
    let (code, _, _) = run(&[
        "widen",
        &arch,
        "--weights",
        s(&w),
        "--all",
        "--by",
        "2",
        "--optimizer-state",
        s(&inside),
        "-o",
        s(&same),
        "--force",
    ]);
    assert_eq!(code, 2);
    assert_eq!(std::fs::read(&inside).unwrap(), before);
}

#[test]
fn export_torch_writes_the_state_helper_beside_the_module() {
    let tmp = tempfile::tempdir().unwrap();
    let py = tmp.path().join("m.py");
    ok(&["export", &ex(NET), "--torch", s(&py)]);
    let helper = std::fs::read_to_string(tmp.path().join("optim_state.py")).unwrap();
    assert_eq!(helper, include_str!("../../scripts/optim_state.py"));
    // A second module in the same folder keeps the helper and writes only itself.
    let o = ok(&["export", &ex(NET), "--torch", s(&tmp.path().join("n.py"))]);
    assert!(!crate::common::text(&o.stderr).contains("optim_state.py"));
    assert_eq!(listing(tmp.path()), ["m.py", "n.py", "optim_state.py"]);
}

/// Net2Net's symmetry-breaking noise goes into the weights only: the moments of a noisy
/// student are those of the noiseless one.
#[test]
fn net2net_noise_leaves_the_moments_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, w, adam, _) = teacher(tmp.path(), "f32");
    let file = |d: &Path| std::fs::read(d.join(optim::file_name(NET, Naming::R2rc))).unwrap();
    let weights = |d: &Path| std::fs::read(d.join(format!("{NET}.safetensors"))).unwrap();
    let (plain, noisy) = (tmp.path().join("plain"), tmp.path().join("noisy"));
    let flags = ["--all", "--by", "1.5", "--method", "net2net"];
    grow("widen", &w, &adam, &plain, &flags);
    let mut f = flags.to_vec();
    f.extend(["--noise", "0.5"]);
    grow("widen", &w, &adam, &noisy, &f);
    assert_ne!(
        weights(&plain),
        weights(&noisy),
        "the noise changed the weights"
    );
    assert_eq!(file(&plain), file(&noisy));
}
