//! `r2rc morph FILE --layer NAME --kernel K [--weights W] [-o DIR] [--force] [--seed S]
//! [--no-prove | --prove local] [--json] [--shard-size SIZE]`: kernel-size morphing,
//! proved. With `--weights`, `-o` and `--no-prove` or `--prove local` the teacher is
//! streamed: only the morphed kernel is decoded, every other tensor is copied.

use std::path::PathBuf;

use r2rc::Result;

use super::step::Common;

#[derive(clap::Args)]
pub struct Args {
    /// The teacher architecture (.arch).
    file: PathBuf,
    /// The convolution whose kernel grows.
    #[arg(long, value_name = "NAME")]
    layer: String,
    /// The new kernel size: larger than the old one, with the same parity.
    #[arg(long, value_name = "K")]
    kernel: usize,
    #[command(flatten)]
    pub common: Common,
}

pub fn run(args: Args) -> Result<()> {
    // A module name of the weights' scheme (`layer1.0.conv1`) names r2rc's layer.
    super::step::load_and_run(&args.file, &args.common, |graph, naming| {
        r2rc::api::morph_step(graph, naming, &args.layer, args.kernel)
    })
}
