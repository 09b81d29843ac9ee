//! Streamed rewrites and sharded outputs under layouts that fuse, transpose and reshape
//! (GPT-2's `c_attn` holding q, k and v in Conv1D's `[in, out]`, timm's stacked `qkv`,
//! `cls_token` `[1, 1, D]` and `pos_embed` `[1, T, D]`): the memory-mapped teacher splits a
//! file tensor to read one of its r2rc tensors, the streaming writer joins a student
//! tensor from its parts, and the result equals the in-memory path's tensor by tensor,
//! bytes, dtypes and shapes included, sharded or not; the optimizer state follows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use r2rc::names::Naming;
use r2rc::optim::{self, Moments};
use r2rc::params::{DType, Params};
use r2rc::shards::Source;

use crate::common::{init_weights, listing, ok, run, s};
use crate::transformer_widen::{GPT2, VIT};

/// A family under its naming: the .arch, the naming, the stack's row, the weights' file
/// name in an output folder, and a fused tensor the file must hold.
struct Family {
    stem: &'static str,
    src: &'static str,
    naming: &'static str,
    row: &'static str,
    weights: &'static str,
    fused: &'static str,
}

const FAMILIES: [Family; 2] = [
    Family {
        stem: "gpt2",
        src: GPT2,
        naming: "hf",
        row: "layers",
        weights: "model.safetensors",
        fused: "transformer.h.1.attn.c_attn.weight",
    },
    Family {
        stem: "vit",
        src: VIT,
        naming: "timm",
        row: "blocks",
        weights: "vit.safetensors",
        fused: "blocks.1.attn.qkv.weight",
    },
];

/// Every tensor of a weights output (a file or a sharded folder): name -> (dtype, shape,
/// bytes).
fn contents(path: &Path) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let src = Source::open(path).unwrap();
    src.tensors
        .iter()
        .map(|(k, info)| {
            let bytes = src.bytes(k).unwrap().to_vec();
            (
                k.clone(),
                (format!("{:?}", info.dtype), info.shape.clone(), bytes),
            )
        })
        .collect()
}

/// Asserts that two outputs hold the same tensors, bit for bit.
fn same(a: &Path, b: &Path, what: &str) {
    let (x, y) = (contents(a), contents(b));
    assert_eq!(
        x.keys().collect::<Vec<_>>(),
        y.keys().collect::<Vec<_>>(),
        "{what}: tensor names"
    );
    for (k, v) in &x {
        assert!(y[k] == *v, "{what}: tensor `{k}` differs");
    }
}

/// The bytes after a safetensors file's header.
fn data(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    bytes[8 + n..].to_vec()
}

/// The shard files of a sharded output folder.
fn shards(dir: &Path) -> Vec<String> {
    listing(dir)
        .into_iter()
        .filter(|n| n.contains("-of-") && n.ends_with(".safetensors"))
        .collect()
}

/// The family's teacher (.arch and weights, random statistics, f32) in `dir`.
fn teacher(dir: &Path, f: &Family) -> (String, PathBuf) {
    let arch = dir.join(format!("{}.arch", f.stem));
    std::fs::write(&arch, f.src).unwrap();
    let w = dir.join(format!("teacher_{}", f.weights));
    init_weights(s(&arch), &w, &["--names", f.naming, "--random-stats"]);
    (s(&arch).to_string(), w)
}

/// `r2rc CMD ARCH --names N --weights W -o OUT EXTRA... HOW...`.
fn grow(cmd: &str, arch: &str, f: &Family, w: &Path, out: &Path, extra: &[&str], how: &[&str]) {
    let mut a = vec![
        cmd,
        arch,
        "--names",
        f.naming,
        "--weights",
        s(w),
        "-o",
        s(out),
    ];
    a.extend_from_slice(extra);
    a.extend_from_slice(how);
    ok(&a);
}

/// Widen (R2R everywhere, Net2Net on the MLPs) and deepen (copy) streamed, by
/// `--no-prove` and `--prove local`, sharded and not, write the in-memory student's
/// tensors bit for bit; the files are in the layout (fused tensors present).
#[test]
fn streamed_and_sharded_students_equal_the_in_memory_ones_under_fused_layouts() {
    let tmp = tempfile::tempdir().unwrap();
    for f in &FAMILIES {
        let dir = tmp.path().join(f.stem);
        std::fs::create_dir(&dir).unwrap();
        let (arch, w) = teacher(&dir, f);
        let mlp = format!("{}_x.mlp", f.row);
        let after = format!("{}_1", f.row);
        let cases: [(&str, Vec<&str>); 3] = [
            ("widen", vec!["--all", "--by", "2", "--method", "r2r"]),
            (
                "widen",
                vec!["--layer", &mlp, "--by", "2", "--method", "net2net"],
            ),
            ("deepen", vec!["--after", &after, "--method", "copy"]),
        ];
        for (k, (cmd, extra)) in cases.iter().enumerate() {
            let what = format!("{} {cmd} {extra:?}", f.stem);
            let out = |tag: &str| dir.join(format!("{k}_{tag}"));
            grow(cmd, &arch, f, &w, &out("memory"), extra, &[]);
            let memory = out("memory").join(f.weights);
            assert!(contents(&memory).contains_key(f.fused), "{what}");
            // The same command writes the same bytes (the header's metadata included).
            grow(cmd, &arch, f, &w, &out("memory_again"), extra, &[]);
            let again = std::fs::read(out("memory_again").join(f.weights)).unwrap();
            assert!(
                std::fs::read(&memory).unwrap() == again,
                "{what}: bytes differ run to run"
            );
            let ways: [(&str, &[&str]); 4] = [
                ("none", &["--no-prove"]),
                ("local", &["--prove", "local"]),
                ("none_sharded", &["--no-prove", "--shard-size", "8KB"]),
                (
                    "local_sharded",
                    &["--prove", "local", "--shard-size", "8KB"],
                ),
            ];
            for (tag, how) in ways {
                grow(cmd, &arch, f, &w, &out(tag), extra, how);
                let written = if tag.ends_with("sharded") {
                    let n = shards(&out(tag)).len();
                    assert!(n > 2, "{what} {tag}: {n} shards");
                    out(tag)
                } else {
                    out(tag).join(f.weights)
                };
                same(&memory, &written, &format!("{what} {tag}"));
                if tag == "none" {
                    // In file order, both ways: only the metadata (the proof's evidence)
                    // differs.
                    assert!(
                        data(&memory) == data(&written),
                        "{what}: data sections differ"
                    );
                }
            }
            // In memory, sharded: the same shards as streamed (sizes follow the layout).
            grow(
                cmd,
                &arch,
                f,
                &w,
                &out("memory_sharded"),
                extra,
                &["--shard-size", "8KB"],
            );
            assert_eq!(
                shards(&out("memory_sharded")),
                shards(&out("local_sharded")),
                "{what}"
            );
            same(
                &memory,
                &out("memory_sharded"),
                &format!("{what} memory sharded"),
            );
        }
    }
}

/// The streamed file is written in the layout's file order: its tensors' offsets follow
/// the student's stored tensors, fused ones included; and a sharded fused teacher streams.
#[test]
fn streamed_files_follow_the_layouts_order_and_sharded_fused_teachers_stream() {
    let tmp = tempfile::tempdir().unwrap();
    for f in &FAMILIES {
        let dir = tmp.path().join(f.stem);
        std::fs::create_dir(&dir).unwrap();
        let (arch, w) = teacher(&dir, f);
        let extra = ["--all", "--by", "2", "--method", "r2r"];
        let out = dir.join("streamed");
        grow("widen", &arch, f, &w, &out, &extra, &["--no-prove"]);
        let student_text = std::fs::read_to_string(out.join(format!("{}.arch", f.stem))).unwrap();
        let student = r2rc::lower::compile(&student_text, &[]).unwrap();
        let naming = Naming::parse(f.naming).unwrap();
        let order: Vec<String> = r2rc::names::stored(&student, naming)
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        let header = crate::common::safetensors_header(&out.join(f.weights));
        let mut by_offset: Vec<(u64, String)> = header
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .map(|(k, v)| (v["data_offsets"][0].as_u64().unwrap(), k.clone()))
            .collect();
        by_offset.sort();
        let names: Vec<String> = by_offset.into_iter().map(|(_, k)| k).collect();
        assert_eq!(names, order, "{}", f.stem);
        // The teacher as shards (init --shard-size), streamed: the same student.
        let sharded = dir.join("teacher_shards");
        std::fs::create_dir(&sharded).unwrap();
        let tw = sharded.join(f.weights);
        let arch_p = Path::new(&arch);
        init_weights(
            s(arch_p),
            &tw,
            &["--names", f.naming, "--random-stats", "--shard-size", "6KB"],
        );
        assert!(shards(&sharded).len() > 2, "{}", f.stem);
        same(&w, &sharded, &format!("{} sharded teacher", f.stem));
        let again = dir.join("from_shards");
        grow(
            "widen",
            &arch,
            f,
            &sharded,
            &again,
            &extra,
            &["--prove", "local"],
        );
        same(&out.join(f.weights), &again.join(f.weights), f.stem);
    }
}

/// A plan streamed through scratch files in the fused layout (each step's student the
/// next step's teacher) writes the in-memory plan's tensors.
#[test]
fn plans_stream_through_fused_scratch_files() {
    let tmp = tempfile::tempdir().unwrap();
    for f in &FAMILIES {
        let dir = tmp.path().join(f.stem);
        std::fs::create_dir(&dir).unwrap();
        let (arch, w) = teacher(&dir, f);
        let plan = dir.join("grow.plan");
        let text = format!(
            "widen --layer {r}_x.mlp --by 2 --method r2r\ndeepen --after {r}_2 --method copy\nwiden --all --by 2 --method r2r\n",
            r = f.row
        );
        std::fs::write(&plan, text).unwrap();
        let outs: Vec<PathBuf> = ["memory", "streamed"].iter().map(|t| dir.join(t)).collect();
        let base = [
            "apply",
            &arch,
            s(&plan),
            "--names",
            f.naming,
            "--weights",
            s(&w),
        ];
        let mut a = base.to_vec();
        a.extend(["-o", s(&outs[0])]);
        ok(&a);
        let mut a = base.to_vec();
        a.extend([
            "-o",
            s(&outs[1]),
            "--prove",
            "local",
            "--shard-size",
            "16KB",
        ]);
        ok(&a);
        assert!(shards(&outs[1]).len() > 2, "{}", f.stem);
        same(
            &outs[0].join(f.weights),
            &outs[1],
            &format!("{} plan", f.stem),
        );
    }
}

/// Random moments for the trainable tensors of `graph`, written under `naming` at `path`.
fn moments(graph: &r2rc::ir::Graph, naming: Naming, path: &Path) {
    let none = Params {
        tensors: BTreeMap::new(),
        dtype: DType::F32,
    };
    let mut m = Moments {
        avg: none.clone(),
        sq: none,
        step: BTreeMap::new(),
    };
    for (i, spec) in graph
        .param_specs()
        .iter()
        .filter(|s| s.slot.kind.trainable())
        .enumerate()
    {
        let n: usize = spec.slot.shape.iter().product();
        let v = |k: usize| {
            let values = (0..n)
                .map(|j| {
                    (((i * 7919 + j * 104_729 + k) % 1000) as f64 / 1000.0 + 0.1) as f32 as f64
                })
                .collect();
            ArrayD::from_shape_vec(IxDyn(&spec.slot.shape), values).unwrap()
        };
        m.avg
            .tensors
            .insert(spec.name.clone(), v(1).mapv(|x| x - 0.5));
        m.sq.tensors.insert(spec.name.clone(), v(2));
        m.step.insert(spec.name.clone(), 10.0 + i as f64);
    }
    optim::save(&m, graph, naming, path).unwrap();
}

/// `--optimizer-state` under fused layouts: the state's fused moments are split and joined
/// like the weights, and the streamed state equals the in-memory one byte for byte.
#[test]
fn optimizer_state_under_fused_layouts_streams_like_in_memory() {
    let tmp = tempfile::tempdir().unwrap();
    for f in &FAMILIES {
        let dir = tmp.path().join(f.stem);
        std::fs::create_dir(&dir).unwrap();
        let (arch, w) = teacher(&dir, f);
        let g = r2rc::lower::compile(f.src, &[]).unwrap();
        let naming = Naming::parse(f.naming).unwrap();
        let adam = dir.join("adam.safetensors");
        moments(&g, naming, &adam);
        let file = optim::file_name(f.stem, naming);
        let after = format!("{}_1", f.row);
        let cases: [(&str, Vec<&str>); 2] = [
            ("widen", vec!["--all", "--by", "2", "--method", "r2r"]),
            ("deepen", vec!["--after", &after, "--method", "copy"]),
        ];
        for (k, (cmd, extra)) in cases.iter().enumerate() {
            let mut states = Vec::new();
            for (tag, how) in [("m", &[][..]), ("s", &["--prove", "local"][..])] {
                let out = dir.join(format!("{k}{tag}"));
                let mut e = extra.clone();
                e.extend(["--optimizer-state", s(&adam)]);
                grow(cmd, &arch, f, &w, &out, &e, how);
                let st = out.join(&file);
                assert!(
                    contents(&st).keys().any(|n| n.starts_with(f.fused)),
                    "{}",
                    f.stem
                );
                states.push(std::fs::read(st).unwrap());
            }
            assert!(
                states[0] == states[1],
                "{} {cmd}: streamed = in memory",
                f.stem
            );
        }
    }
}

/// What still needs a renamed graph (exports) is refused under a fused layout, naming the
/// fused tensor; Llama's renames-only layout is not.
#[test]
fn exports_under_fused_layouts_are_refused_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let f = &FAMILIES[0];
    let (arch, w) = teacher(tmp.path(), f);
    let onnx = tmp.path().join("gpt2.onnx");
    let (code, _, err) = run(&[
        "export",
        &arch,
        "--names",
        "hf",
        "--weights",
        s(&w),
        "--onnx",
        s(&onnx),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("c_attn") && err.contains("exports"), "{err}");
    assert!(!onnx.exists());
}

/// A Llama's widened stream (new features held at zero under RMS norms, readers' columns
/// in R2R's pairs, or NetMorph's free ones) and attention and MLP widths stream to the
/// in-memory student's tensors bit for bit, whole and sharded: the held rows, features and
/// columns are computed range by range (`transform::lazy`), the rest whole.
#[test]
fn a_streamed_llama_widening_equals_the_in_memory_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let f = Family {
        stem: "llama",
        src: crate::transformer_widen::LLAMA,
        naming: "hf",
        row: "layers",
        weights: "model.safetensors",
        fused: "",
    };
    let (arch, w) = teacher(dir, &f);
    for (k, extra) in [
        vec!["--all", "--by", "1.5", "--method", "r2r"],
        vec!["--all", "--by", "2", "--method", "r2r", "--init", "he"],
        vec!["--all", "--by", "1.5", "--method", "netmorph"],
    ]
    .iter()
    .enumerate()
    {
        let out = |tag: &str| dir.join(format!("{k}_{tag}"));
        grow("widen", &arch, &f, &w, &out("memory"), extra, &[]);
        let memory = out("memory").join(f.weights);
        for (tag, how) in [
            ("none", &["--no-prove"][..]),
            ("sharded", &["--no-prove", "--shard-size", "4KB"][..]),
        ] {
            grow("widen", &arch, &f, &w, &out(tag), extra, how);
            let written = if tag == "sharded" {
                assert!(shards(&out(tag)).len() > 2, "{extra:?}");
                out(tag)
            } else {
                out(tag).join(f.weights)
            };
            same(&memory, &written, &format!("{extra:?} {tag}"));
        }
    }
}
