//! `r2rc deepen FILE --after NAME [--method r2r|net2net|netmorph|netmorph-dense|copy|random]
//! [--width M] [--weights W] [-o DIR] [--force] [--seed S] [--no-prove] [--dtype f32|f64]
//! [--inputs N] [--json] [--names r2rc|torchvision|hf|timm] [--shard-size SIZE]
//! [--prove local] [--optimizer-state ADAM.safetensors]`.
//!
//! With `--weights`, `-o` and `--no-prove` or `--prove local` the teacher is streamed
//! ([`r2rc::stream::step`]): only the tensors the method reads are decoded, and a local
//! proof runs the inserted layers alone ([`r2rc::local_proof::deepen`]).

use std::path::PathBuf;

use r2rc::Result;

use super::step::Common;

#[derive(clap::Args)]
pub struct Args {
    /// The teacher architecture (.arch).
    file: PathBuf,
    /// The block (`conv2_1`) or row (`conv1`, `conv2_x`) after which to insert; in a
    /// transformer a layer (`layers_6`, or `model.layers.5` under --names hf).
    #[arg(long, value_name = "NAME")]
    after: String,
    /// r2r, net2net, netmorph, netmorph-dense, copy (transformers: a copy of the site layer
    /// with zeroed output projections) or random.
    #[arg(long, default_value = "r2r")]
    method: String,
    /// Hidden width of an inserted r2r or random block (even for r2r).
    #[arg(long, value_name = "M")]
    width: Option<usize>,
    #[command(flatten)]
    pub common: Common,
}

pub fn run(args: Args) -> Result<()> {
    // A module name of the weights' scheme (`layer3.1`) names r2rc's block.
    super::step::load_and_run(&args.file, &args.common, |graph, naming| {
        r2rc::api::deepen_step(graph, naming, &args.after, &args.method, args.width)
    })
}
