//! Hostile files through the command line: every malformed `.arch` fixture, and damaged or
//! lying safetensors files, must end in a clear diagnostic naming the file and exit code 2:
//! never a panic, a hang or a huge allocation.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::{init_weights, root, run, s};

fn fixtures(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn assert_refused(what: &str, code: i32, err: &str, names: &str) {
    assert_eq!(code, 2, "{what}: exit code {code}\n{err}");
    assert!(!err.contains("panicked"), "{what} panicked:\n{err}");
    assert!(
        err.contains(names),
        "{what}: the diagnostic does not name {names}:\n{err}"
    );
}

#[test]
fn every_malformed_arch_is_a_located_diagnostic_with_exit_2() {
    let files = fixtures("tests/fixtures/errors");
    assert!(files.len() >= 70, "{} fixtures", files.len());
    for f in files {
        let path = f.to_str().unwrap();
        let name = f.file_name().unwrap().to_str().unwrap();
        for cmd in ["check", "print"] {
            let t = Instant::now();
            let (code, _, err) = run(&[cmd, path]);
            assert_refused(&format!("{cmd} {name}"), code, &err, name);
            // file:line:col
            assert!(
                err.contains(&format!("{name}:")),
                "{name}: no location:\n{err}"
            );
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{name} took {:?}",
                t.elapsed()
            );
        }
    }
}

/// A fuzzer finding: 10485 residual blocks in one row timed out under the instrumented
/// fuzzer. Not a hang (the node cap bounds it), but it must stay fast.
#[test]
fn ten_thousand_blocks_compile_and_print_quickly() {
    let f = root().join("tests/fixtures/hostile/fuzz_10485_blocks.arch");
    let t = Instant::now();
    let (code, out, err) = run(&["print", f.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("x 10485"), "{out}");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
}

const ARCH: &str = "arch T\ninput 4\nfc1 2-d fc\n";

/// A safetensors file from a header (JSON text) and data, with the true header length.
fn st(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

fn f32s(xs: &[f32]) -> Vec<u8> {
    xs.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn good_header() -> String {
    r#"{"fc1.weight":{"dtype":"F32","shape":[2,4],"data_offsets":[0,32]},"fc1.bias":{"dtype":"F32","shape":[2],"data_offsets":[32,40]}}"#.into()
}

fn good_data() -> Vec<u8> {
    f32s(&[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
}

#[test]
fn hostile_safetensors_are_refused_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let arch = dir.path().join("t.arch");
    std::fs::write(&arch, ARCH).unwrap();
    let good = st(&good_header(), &good_data());
    let with_len = |n: u64| {
        let mut b = good.clone();
        b[..8].copy_from_slice(&n.to_le_bytes());
        b
    };
    let h = good_header();
    let nan = {
        let mut d = good_data();
        d[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
        d
    };
    let inf = {
        let mut d = good_data();
        d[36..40].copy_from_slice(&f32::NEG_INFINITY.to_le_bytes());
        d
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "too short"),
        ("truncated_in_length", good[..5].to_vec(), "too short"),
        ("truncated_in_header", good[..40].to_vec(), "past the end"),
        (
            "truncated_in_data",
            good[..good.len() - 1].to_vec(),
            "truncated",
        ),
        ("length_huge", with_len(u64::MAX), "larger than 100 MB"),
        (
            "length_past_end",
            with_len(h.len() as u64 + 100),
            "past the end",
        ),
        (
            "length_short",
            with_len(h.len() as u64 - 5),
            "not valid safetensors JSON",
        ),
        ("length_zero", with_len(0), "not valid safetensors JSON"),
        (
            "offsets_overlap",
            st(
                r#"{"fc1.weight":{"dtype":"F32","shape":[2,4],"data_offsets":[0,32]},"fc1.bias":{"dtype":"F32","shape":[2],"data_offsets":[24,32]}}"#,
                &good_data()[..32],
            ),
            "offsets",
        ),
        (
            "offsets_out_of_bounds",
            st(
                r#"{"fc1.weight":{"dtype":"F32","shape":[2,4],"data_offsets":[0,32]},"fc1.bias":{"dtype":"F32","shape":[2],"data_offsets":[32,4000000000]}}"#,
                &good_data(),
            ),
            "offsets",
        ),
        (
            "offsets_reversed",
            st(
                r#"{"fc1.weight":{"dtype":"F32","shape":[2,4],"data_offsets":[32,0]},"fc1.bias":{"dtype":"F32","shape":[2],"data_offsets":[32,40]}}"#,
                &good_data(),
            ),
            "offsets",
        ),
        (
            "shape_lies",
            st(
                r#"{"fc1.weight":{"dtype":"F32","shape":[4,4],"data_offsets":[0,32]},"fc1.bias":{"dtype":"F32","shape":[2],"data_offsets":[32,40]}}"#,
                &good_data(),
            ),
            "offsets",
        ),
        (
            "shape_overflows",
            st(
                r#"{"fc1.weight":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,32]},"fc1.bias":{"dtype":"F32","shape":[2],"data_offsets":[32,40]}}"#,
                &good_data(),
            ),
            "overflow",
        ),
        (
            "dtype_int",
            st(
                r#"{"fc1.weight":{"dtype":"I32","shape":[2,4],"data_offsets":[0,32]},"fc1.bias":{"dtype":"F32","shape":[2],"data_offsets":[32,40]}}"#,
                &good_data(),
            ),
            "dtype",
        ),
        (
            "dtype_unknown",
            st(
                r#"{"fc1.weight":{"dtype":"Q4","shape":[2,4],"data_offsets":[0,32]},"fc1.bias":{"dtype":"F32","shape":[2],"data_offsets":[32,40]}}"#,
                &good_data(),
            ),
            "not valid safetensors JSON",
        ),
        ("nan_weight", st(&h, &nan), "non-finite"),
        ("inf_bias", st(&h, &inf), "non-finite"),
        (
            "duplicate_names",
            st(
                r#"{"fc1.weight":{"dtype":"F32","shape":[2,4],"data_offsets":[0,32]},"fc1.weight":{"dtype":"F32","shape":[2],"data_offsets":[32,40]}}"#,
                &good_data(),
            ),
            "names tensor `fc1.weight` twice",
        ),
        (
            "not_json",
            st("[1, 2, 3]   ", &[]),
            "not valid safetensors JSON",
        ),
        (
            "header_not_utf8",
            st("{\"\u{0}\"\u{ff}", &[]),
            "safetensors",
        ),
        (
            "binary_garbage",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
            "safetensors",
        ),
    ];
    for (name, bytes, want) in cases {
        let file = format!("{name}.safetensors");
        let path = dir.path().join(&file);
        std::fs::write(&path, &bytes).unwrap();
        let t = Instant::now();
        let (code, _, err) = run(&[
            "run",
            arch.to_str().unwrap(),
            "--weights",
            path.to_str().unwrap(),
            "--random",
            "1",
        ]);
        assert_refused(name, code, &err, &file);
        assert!(err.contains(want), "{name}: expected `{want}` in:\n{err}");
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{name} took {:?}",
            t.elapsed()
        );
        // The rewrites read weights the same way.
        let (code, _, err) = run(&[
            "widen",
            arch.to_str().unwrap(),
            "--layer",
            "fc1",
            "--add",
            "2",
            "--weights",
            path.to_str().unwrap(),
        ]);
        assert_eq!(code, 2, "widen with {name}:\n{err}");
        assert!(
            !err.contains("panicked"),
            "widen with {name} panicked:\n{err}"
        );
    }
    // The good file loads, so the cases above fail for their own reasons.
    let path = dir.path().join("good.safetensors");
    std::fs::write(&path, &good).unwrap();
    let (code, _, err) = run(&[
        "run",
        arch.to_str().unwrap(),
        "--weights",
        path.to_str().unwrap(),
        "--random",
        "1",
    ]);
    assert_eq!(code, 0, "{err}");
}

mod weights_never_panic {
    use proptest::prelude::*;
    use r2rc::lower::compile;
    use r2rc::params;

    /// A network with every tensor kind: conv with and without bias, BN with its counter,
    /// PReLU, linear.
    const NET: &str = "arch P\ninput 2x4x4\nconv1 3x3, 3, bias, act prelu\nconv2_x [3x3, 3; 1x1, 4] x 1\nhead avg pool, 2-d fc\n";

    fn valid(dtype: params::DType) -> Vec<u8> {
        let g = compile(NET, &[]).unwrap();
        let p = params::init(&g, 3, true).with_dtype(dtype);
        params::to_bytes(&p, &g, None).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_are_refused_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let g = compile(NET, &[]).unwrap();
            let _ = params::from_bytes(&g, &bytes, "fuzz.safetensors");
        }

        #[test]
        fn mutated_weight_files_load_or_are_refused(
            which in 0usize..4,
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in prop::option::of(any::<prop::sample::Index>()),
        ) {
            let dtype = [params::DType::F32, params::DType::F64, params::DType::F16, params::DType::BF16][which];
            let mut bytes = valid(dtype);
            // Mutations favour the header, where the structure is.
            let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            for (i, (at, b)) in edits.into_iter().enumerate() {
                let n = if i % 2 == 0 { header } else { bytes.len() };
                let k = at.index(n);
                bytes[k] = b;
            }
            if let Some(c) = cut {
                bytes.truncate(c.index(bytes.len()));
            }
            let g = compile(NET, &[]).unwrap();
            if let Ok(p) = params::from_bytes(&g, &bytes, "mutated.safetensors") {
                // Whatever loads is complete, finite and saves again.
                prop_assert!(p.check(&g).is_ok());
                prop_assert!(p.tensors.values().all(|t| t.iter().all(|x| x.is_finite())));
                prop_assert!(params::to_bytes(&p, &g, None).is_ok());
            }
        }
    }
}

/// Networks that compile (each tensor within the per-tensor cap) but whose weights or
/// proof values would not fit in memory are refused before anything is allocated.
#[test]
fn huge_networks_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let huge = dir.path().join("huge.arch");
    // 16384 x 1,000,000 weights: 131 GB as f64.
    std::fs::write(&huge, "arch Huge\ninput 1x128x128\nfc1 1000000-d fc\n").unwrap();
    let w = dir.path().join("w.safetensors");
    let h = huge.to_str().unwrap();
    for args in [
        vec!["init", h, "-o", w.to_str().unwrap()],
        vec!["widen", h, "--layer", "fc1", "--add", "2"],
        vec!["deepen", h, "--after", "fc1", "--method", "netmorph"],
    ] {
        let t = Instant::now();
        let (code, _, err) = run(&args);
        assert_refused(&format!("{args:?}"), code, &err, "values");
        assert!(err.contains("more than"), "{args:?}: {err}");
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{args:?} took {:?}",
            t.elapsed()
        );
    }
    assert!(!w.exists());
    // A huge batch of random inputs for a small network.
    let small = dir.path().join("small.arch");
    std::fs::write(&small, ARCH).unwrap();
    init_weights(s(&small), &w, &[]);
    let (code, _, err) = run(&[
        "run",
        small.to_str().unwrap(),
        "--weights",
        w.to_str().unwrap(),
        "--random",
        "1000000000000",
    ]);
    assert_refused("run --random 1e12", code, &err, "this run");
}
