//! `r2rc run FILE --weights W [--input X.npy | --random N] [--seed S] [--mode eval|train]
//! [--dtype f32|f64] [--output Y.npy] [--repeat K] [--names r2rc|torchvision]`.

use std::path::PathBuf;
use std::time::Instant;

use ndarray::ArrayD;
use ndarray_npy::{ReadNpyExt, WritableElement, WriteNpyExt};
use r2rc::exec::{self, Executor, Float, Mode};
use r2rc::ir::Graph;
use r2rc::names::{self, Naming};
use r2rc::params::{self, Params};
use r2rc::{Error, Result};

#[derive(clap::Args)]
pub struct Args {
    /// The architecture (.arch) file.
    file: PathBuf,
    /// Weights (.safetensors) in PyTorch's naming.
    #[arg(long, value_name = "W")]
    weights: PathBuf,
    /// Input batch as .npy (f32 or f64), shaped N x the network's input shape; for a token
    /// input (`input T tokens, vocab V`), int64 token ids shaped N x T (T up to the declared
    /// length).
    #[arg(long, value_name = "X.npy", conflicts_with = "random")]
    input: Option<PathBuf>,
    /// Run on N seeded standard-normal inputs instead (token ids drawn uniformly from the
    /// vocabulary, for a token input; the default is 1).
    #[arg(long, value_name = "N")]
    random: Option<usize>,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Batch norm statistics: eval (running) or train (of the batch).
    #[arg(long, default_value = "eval")]
    mode: String,
    /// Precision of the run: f32 or f64.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Write the output as .npy (in the run's precision) instead of printing a summary.
    #[arg(long, value_name = "Y.npy")]
    output: Option<PathBuf>,
    /// Overwrite an existing --output.
    #[arg(long)]
    force: bool,
    /// Time K forward passes after one warm-up; prints images (or sequences) per second to
    /// stderr.
    #[arg(long, value_name = "K")]
    repeat: Option<usize>,
    /// Tensor names: r2rc, torchvision (ResNets: `bn1`, `layer1.0.conv1`, `fc`), hf
    /// (transformers' LlamaForCausalLM, GPT2LMHeadModel) or timm (VisionTransformer).
    #[arg(long, default_value = "r2rc", value_name = "NAMING")]
    names: String,
    /// Architecture parameters, e.g. `--set r=1/8`.
    #[arg(long = "set", value_name = "NAME=EXPR")]
    sets: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let mode = Mode::parse(&args.mode)?;
    let graph = super::load_arch(&args.file, &args.sets)?;
    let (p, notes) = names::load_with_notes(&graph, &args.weights, Naming::parse(&args.names)?)?;
    for n in notes {
        eprintln!("note: {n}");
    }
    let input = match (&args.input, args.random) {
        (Some(path), _) => read_input(path, &graph)?,
        (None, n) => {
            params::check_memory(&graph, n.unwrap_or(1), false, "this run")?;
            exec::random_input(&graph, n.unwrap_or(1), args.seed)
        }
    };
    let batch = input.shape().first().copied().unwrap_or(1);
    params::check_memory(&graph, batch, false, "this run")?;
    match args.dtype.as_str() {
        "f32" => go::<f32>(&args, &graph, &p, input, mode),
        "f64" => go::<f64>(&args, &graph, &p, input, mode),
        other => Err(Error::usage(
            format!("--dtype {other}: runs are in f32 or f64"),
            None,
        )),
    }
}

/// Reads an f32 or f64 `.npy` into f64; for a token input, int64 (or int32) token ids,
/// checked against the declared length and the vocabulary here so that errors name the
/// file.
fn read_input(path: &PathBuf, graph: &Graph) -> Result<ArrayD<f64>> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::io(&shown, e))?;
    if let Some(vocab) = graph.defaults.vocab {
        return read_tokens(&bytes, &shown, graph.input_shape()[0], vocab);
    }
    if let Ok(a) = ArrayD::<f32>::read_npy(&bytes[..]) {
        return Ok(a.mapv(|v| v as f64));
    }
    ArrayD::<f64>::read_npy(&bytes[..]).map_err(|e| Error::Usage {
        message: format!("{shown}: not an f32 or f64 .npy array ({e})"),
        hint: Some("save it with numpy.save(path, x.astype(numpy.float32))".into()),
    })
}

/// Token ids `N x T` (`T <= longest`, each below `vocab`) from an int64 or int32 `.npy`, as
/// the floats the executor carries them in.
fn read_tokens(bytes: &[u8], shown: &str, longest: usize, vocab: usize) -> Result<ArrayD<f64>> {
    let ids: ArrayD<i64> = match ArrayD::<i64>::read_npy(bytes) {
        Ok(a) => a,
        Err(e) => match ArrayD::<i32>::read_npy(bytes) {
            Ok(a) => a.mapv(i64::from),
            Err(_) => {
                return Err(Error::usage(
                    format!("{shown}: the network reads token ids, but this is not an int64 .npy array ({e})"),
                    Some("save the ids with numpy.save(path, ids.astype(numpy.int64)), shaped N x T".into()),
                ))
            }
        },
    };
    let shape = ids.shape().to_vec();
    let [n, t] = shape[..] else {
        return Err(Error::usage(
            format!(
                "{shown}: token ids of shape {} but the network takes N x T (sequences of at most {longest} tokens)",
                r2rc::ir::show_shape(&shape)
            ),
            Some("the first dimension is the batch, the second the tokens".into()),
        ));
    };
    if t > longest || t == 0 || n == 0 {
        return Err(Error::usage(
            format!("{shown}: {n} sequence(s) of {t} tokens, but the network takes sequences of 1 to {longest} tokens"),
            Some(format!("shorten them to at most {longest} tokens or declare a longer input (`input T tokens`)")),
        ));
    }
    let floats = ids.mapv(|v| v as f64);
    let as_tensor = exec::Tensor::from_array(floats.clone());
    exec::check_tokens(&as_tensor, vocab).map_err(|m| {
        Error::usage(
            format!("{shown}: {m}"),
            Some("token ids must come from the tokenizer of this network's vocabulary".into()),
        )
    })?;
    Ok(floats)
}

fn go<T: Float + WritableElement>(
    args: &Args,
    graph: &Graph,
    p: &Params,
    input: ArrayD<f64>,
    mode: Mode,
) -> Result<()> {
    let ex = Executor::<T>::new(graph, p)?;
    let x: ArrayD<T> = input.mapv(T::from_f64);
    let batch = x.shape().first().copied().unwrap_or(0);
    let y = ex.forward(x.clone(), mode)?;
    if let Some(k) = args.repeat {
        let mut times = Vec::with_capacity(k);
        for _ in 0..k.max(1) {
            let xi = x.clone(); // the copy is not part of the forward pass
            let t = Instant::now();
            ex.forward(xi, mode)?;
            times.push(t.elapsed().as_secs_f64());
        }
        let best = times.iter().cloned().fold(f64::INFINITY, f64::min);
        let unit = if graph.defaults.vocab.is_some() {
            "sequences"
        } else {
            "images"
        };
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        eprintln!(
            "{} x {batch} {unit}, {} threads, {}: mean {:.2} ms, best {:.2} ms per batch: {:.1} {unit}/s",
            times.len(),
            rayon::current_num_threads(),
            T::NAME,
            mean * 1e3,
            best * 1e3,
            batch as f64 / best
        );
    }
    match &args.output {
        Some(path) => {
            let mut inputs = vec![args.file.as_path(), args.weights.as_path()];
            inputs.extend(args.input.as_deref());
            r2rc::outputs::check_outputs(std::slice::from_ref(path), &inputs, args.force)?;
            let mut bytes = Vec::new();
            y.write_npy(&mut bytes)
                .map_err(|e| Error::io(path.display(), e))?;
            params::write_atomic(path, &bytes)
        }
        None => {
            print!("{}", summary(&y));
            Ok(())
        }
    }
}

/// Shape, range, mean and the argmax of the first rows (of a sequence output `N x T x V`,
/// its last token's: a language model's next-token prediction).
fn summary<T: Float>(y: &ArrayD<T>) -> String {
    let v: Vec<f64> = y.iter().map(|x| x.to_f64()).collect();
    let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    let shape: Vec<String> = y.shape().iter().map(|d| d.to_string()).collect();
    let mut s = format!(
        "output {}  min {min:.6}  max {max:.6}  mean {mean:.6}\n",
        shape.join("x")
    );
    let n = y.shape().first().copied().unwrap_or(0);
    let row = v.len().checked_div(n).unwrap_or(0);
    let (skip, what) = match y.shape() {
        [_, _, last] => (row - last, " last token"),
        _ => (0, ""),
    };
    for i in 0..n.min(5) {
        let r = &v[i * row + skip..(i + 1) * row];
        let (arg, best) =
            r.iter().enumerate().fold(
                (0, f64::NEG_INFINITY),
                |(a, m), (j, &x)| if x > m { (j, x) } else { (a, m) },
            );
        s.push_str(&format!("row {i}{what}: argmax {arg} ({best:.6})\n"));
    }
    s
}
