//! `r2rc init FILE -o W.safetensors [--seed N] [--random-stats] [--dtype f32|f64|f16|bf16]
//! [--names r2rc|torchvision]`.

use std::path::PathBuf;

use r2rc::names::{self, Naming};
use r2rc::params::{self, DType};
use r2rc::Result;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    arch: super::arch_args::ArchArgs,
    /// Where to write the weights (safetensors).
    #[arg(short = 'o', long = "output", value_name = "W.safetensors")]
    output: PathBuf,
    /// Seed of the random initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also randomise biases, BN affine parameters and running statistics, and PReLU
    /// slopes (what proofs need: identity-looking statistics can hide bugs).
    #[arg(long)]
    random_stats: bool,
    /// Element type of the file: f32, f64, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Tensor names: r2rc, torchvision (ResNets: `bn1`, `layer1.0.conv1`, `fc`), hf
    /// (transformers' LlamaForCausalLM, GPT2LMHeadModel) or timm (VisionTransformer).
    #[arg(long, default_value = "r2rc", value_name = "NAMING")]
    names: String,
    /// Overwrite an existing output.
    #[arg(long)]
    force: bool,
    /// Write shards of at most SIZE (2GB, 500MB, 1GiB) named
    /// `<stem>-0000K-of-0000N.safetensors` with `<stem>.safetensors.index.json`.
    #[arg(long, value_name = "SIZE")]
    shard_size: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    let dtype = DType::parse(&args.dtype)?;
    let naming = Naming::parse(&args.names)?;
    let graph = args.arch.load()?;
    r2rc::outputs::check_outputs(
        std::slice::from_ref(&args.output),
        &[args.arch.file.as_path()],
        args.force,
    )?;
    params::check_memory(&graph, 0, false, "initialising this network")?;
    let p = params::init(&graph, args.seed, args.random_stats);
    // init's values are f32 already: rounding them again would be a pass for nothing.
    let p = if dtype == p.dtype {
        p
    } else {
        p.with_dtype(dtype)
    };
    if let Some(size) = &args.shard_size {
        let size = r2rc::shards::parse_size(size)?;
        let entries = names::file_entries(&graph, naming)?;
        let outs = r2rc::shards::output_paths(&args.output, &entries, dtype, Some(size));
        r2rc::outputs::check_outputs(&outs, &[args.arch.file.as_path()], args.force)?;
        for f in names::save_sharded(&p, &graph, &args.output, None, naming, Some(size))? {
            eprintln!("wrote {}", f.display());
        }
        return Ok(());
    }
    names::save(&p, &graph, &args.output, None, naming)?;
    let values: usize = p.tensors.values().map(|t| t.len()).sum();
    eprintln!(
        "wrote {} ({} tensors, {values} values, {dtype}, seed {}{})",
        args.output.display(),
        p.tensors.len(),
        args.seed,
        if args.random_stats {
            ", random statistics"
        } else {
            ""
        }
    );
    Ok(())
}
