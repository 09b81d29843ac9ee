//! `r2rc run` on a token-input network: int64 token-id `.npy` inputs of any length up to
//! the declared one, `--random N` token ids, and the errors that name the input file.

use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};

use crate::common::{init_weights, ok, run, s};

const GPT: &str = "arch TinyGPT
norm layer, eps 1e-5, act gelu_tanh, bias
input 8 tokens, vocab 50

embed     8x16    16-d token embedding, learned positions
layers_x  8x16    [attention 4 heads, causal; mlp 32] x 2
head      8x50    norm, 50-d fc, tied
";

fn save<T: ndarray_npy::WritableElement>(path: &Path, shape: &[usize], v: Vec<T>) {
    let a = ArrayD::from_shape_vec(IxDyn(shape), v).unwrap();
    let mut bytes = Vec::new();
    a.write_npy(&mut bytes).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// The network, its weights (random statistics) and the `run` arguments before `--input`.
fn setup(dir: &Path) -> (String, String) {
    let arch = dir.join("gpt.arch");
    std::fs::write(&arch, GPT).unwrap();
    let w = dir.join("w.safetensors");
    init_weights(s(&arch), &w, &["--random-stats", "--seed", "4"]);
    (s(&arch).to_string(), s(&w).to_string())
}

fn logits(arch: &str, w: &str, input: &Path, dtype: &str, dir: &Path) -> ArrayD<f64> {
    let y = dir.join(format!("y_{dtype}.npy"));
    ok(&[
        "run",
        arch,
        "--weights",
        w,
        "--input",
        s(input),
        "--dtype",
        dtype,
        "--output",
        s(&y),
        "--force",
    ]);
    let bytes = std::fs::read(&y).unwrap();
    match dtype {
        "f64" => ArrayD::<f64>::read_npy(&bytes[..]).unwrap(),
        _ => ArrayD::<f32>::read_npy(&bytes[..]).unwrap().mapv(f64::from),
    }
}

#[test]
fn token_ids_from_npy_of_any_length_up_to_the_declared_one() {
    let dir = tempfile::tempdir().unwrap();
    let (arch, w) = setup(dir.path());
    let full = dir.path().join("full.npy");
    save::<i64>(
        &full,
        &[2, 8],
        vec![3, 1, 4, 1, 5, 9, 2, 6, 49, 0, 7, 7, 30, 12, 8, 40],
    );
    let y64 = logits(&arch, &w, &full, "f64", dir.path());
    let y32 = logits(&arch, &w, &full, "f32", dir.path());
    assert_eq!(y64.shape(), &[2, 8, 50]);
    let scale = y64.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.1);
    assert!(y64
        .iter()
        .zip(&y32)
        .all(|(a, b)| (a - b).abs() < 1e-5 * scale));
    // Five tokens of each sequence, as int32: the first five positions of the causal
    // model's logits.
    let short = dir.path().join("short.npy");
    save::<i32>(&short, &[2, 5], vec![3, 1, 4, 1, 5, 49, 0, 7, 7, 30]);
    let ys = logits(&arch, &w, &short, "f64", dir.path());
    assert_eq!(ys.shape(), &[2, 5, 50]);
    for ((i, t, v), &x) in ys.indexed_iter().map(|(ix, x)| ((ix[0], ix[1], ix[2]), x)) {
        assert!((x - y64[[i, t, v]]).abs() < 1e-12 * scale);
    }
}

#[test]
fn random_token_inputs_run() {
    let dir = tempfile::tempdir().unwrap();
    let (arch, w) = setup(dir.path());
    let out = ok(&[
        "run",
        &arch,
        "--weights",
        &w,
        "--random",
        "3",
        "--seed",
        "2",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("output 3x8x50"), "{text}");
    assert!(text.contains("row 2 last token: argmax"), "{text}");
}

#[test]
fn bad_token_inputs_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (arch, w) = setup(dir.path());
    let p = |name: &str| dir.path().join(name);
    save::<i64>(&p("oov.npy"), &[1, 4], vec![1, 2, 3, 50]);
    save::<i64>(&p("long.npy"), &[1, 9], vec![0; 9]);
    save::<f32>(&p("floats.npy"), &[1, 3], vec![0.0; 3]);
    let cases = [
        (
            "oov.npy",
            "oov.npy: token id 50 at sequence 0, position 3 is outside the vocabulary of 50 (ids 0 to 49)",
        ),
        (
            "long.npy",
            "long.npy: 1 sequence(s) of 9 tokens, but the network takes sequences of 1 to 8 tokens",
        ),
        (
            "floats.npy",
            "floats.npy: the network reads token ids, but this is not an int64 .npy array",
        ),
    ];
    for (file, want) in cases {
        let (code, _, err) = run(&["run", &arch, "--weights", &w, "--input", s(&p(file))]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(want), "{err}");
    }
}
