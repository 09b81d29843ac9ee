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
    // Only a tensor is held at a time now, but a network this large is still refused
    // before any work, with the same message as everywhere.
    params::check_memory(&graph, 0, false, "initialising this network")?;
    let shard_size = match &args.shard_size {
        Some(size) => Some(r2rc::shards::parse_size(size)?),
        None => None,
    };
    let entries = names::file_entries(&graph, naming)?;
    let outs = r2rc::shards::output_paths(&args.output, &entries, dtype, shard_size);
    if outs.len() > 1 {
        r2rc::outputs::check_outputs(&outs, &[args.arch.file.as_path()], args.force)?;
    }
    let init = params::Init::new(&graph, args.seed, args.random_stats);
    let files = write(&init, &graph, &args.output, dtype, naming, shard_size)?;
    if outs.len() > 1 {
        for f in files {
            eprintln!("wrote {}", f.display());
        }
        return Ok(());
    }
    let specs = graph.param_specs();
    let values: usize = specs
        .iter()
        .map(|s| s.slot.shape.iter().product::<usize>())
        .sum();
    eprintln!(
        "wrote {} ({} tensors, {values} values, {dtype}, seed {}{})",
        args.output.display(),
        specs.len(),
        args.seed,
        if args.random_stats {
            ", random statistics"
        } else {
            ""
        }
    );
    Ok(())
}

/// Writes the initialised network at `path` (sharded by `shard_size`, in `naming`'s names
/// and layout) one file tensor at a time: each is made from its r2rc parts, encoded and
/// written in file order, so memory holds one tensor, not the network twice over. The
/// tensors are those `names::save` writes of `params::init`'s values (the bytes too, but
/// for the header's tensor order under a layout).
fn write(
    init: &params::Init,
    graph: &r2rc::ir::Graph,
    path: &std::path::Path,
    dtype: DType,
    naming: Naming,
    shard_size: Option<u64>,
) -> Result<Vec<PathBuf>> {
    let entries = names::file_entries(graph, naming)?;
    // `format: pt` under --names hf, as every other writer of such files adds.
    let meta = r2rc::hf_config_out::file_metadata(&Default::default(), naming);
    let meta = (!meta.is_empty()).then_some(&meta);
    let mut w = r2rc::shards::Writer::create(path, &entries, dtype, meta, shard_size, 0)?;
    w.sequential()?;
    for (s, e) in names::stored(graph, naming)?.iter().zip(&entries) {
        let mut parts = std::collections::BTreeMap::new();
        for (name, _) in &s.parts {
            let t = init.tensor(name).expect("the graph's tensor");
            parts.insert(name.clone(), t);
        }
        let t = if s.is_plain() {
            parts.pop_first().expect("one part").1
        } else {
            s.join(&parts)?
        };
        let t = t.as_standard_layout();
        // Encoded after the page offset of its place in the file: written in place.
        let pad = w.pad(&e.name);
        let values = t.as_slice().expect("standard layout");
        let mut buf = r2rc::shards::encode_padded(values, dtype, e.counter, pad)
            .map_err(|err| r2rc::error::Error::io(path.display(), err))?;
        w.write_padded(&e.name, &mut buf, pad)?;
    }
    w.finish()
}
