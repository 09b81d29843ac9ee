//! `r2rc morph FILE --layer NAME --kernel K [--weights W] [-o DIR] [--force] [--seed S]
//! [--no-prove | --prove local] [--json] [--shard-size SIZE]`: kernel-size morphing,
//! proved. With `--weights`, `-o` and `--no-prove` or `--prove local` the teacher is
//! streamed: only the morphed kernel is decoded, every other tensor is copied.

use std::path::PathBuf;

use std::path::Path;

use r2rc::ir::Graph;
use r2rc::names::Naming;
use r2rc::pipeline::{morph_local_proved, morph_proved};
use r2rc::Result;

use super::deepen::{emit, streamed_command, Common, Student};

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

pub fn run(mut args: Args) -> Result<()> {
    let graph = super::load_named(&args.file, &args.common.sets, args.common.name.as_deref())?;
    // A module name of the weights' scheme (`layer1.0.conv1`) names r2rc's layer.
    args.layer =
        r2rc::names::target_to_r2rc(&graph, Naming::parse(&args.common.names)?, &args.layer)?;
    let c = &args.common;
    let local = super::local_proof(&c.prove)?;
    let naming = Naming::parse(&c.names)?;
    if let (Some(w), Some(dir), true) = (&c.weights, &c.output, c.no_prove || local) {
        return run_streaming(&args, &graph, w, dir);
    }
    let (teacher, source, read_notes) = c.teacher(&graph)?;
    let opts = c.prove_options()?;
    let (layer, k) = (&args.layer, args.kernel);
    let (m, mut report) = match (local, &opts) {
        (true, Some(o)) => morph_local_proved(&graph, &teacher, layer, k, o, &source)?,
        _ => morph_proved(&graph, &teacher, layer, k, opts.as_ref(), &source)?,
    };
    report.torchvision_names = r2rc::names::report_names(&[&graph, &m.graph], naming);
    report.notes.extend(read_notes);
    emit(
        &args.file,
        &args.common,
        Student {
            graph: &m.graph,
            params: &m.params,
            header: report.header(),
            report: serde_json::to_value(&report).expect("the report serialises"),
            summary: report.summary(),
            metadata: report.metadata(),
        },
    )
}

/// The streaming path: only the morphed convolution's weight is decoded; every other
/// tensor is copied from the teacher's map; a local proof runs that convolution alone.
fn run_streaming(args: &Args, graph: &Graph, weights: &Path, dir: &Path) -> Result<()> {
    let c = &args.common;
    streamed_command(&args.file, c, weights, dir, |job, place| {
        r2rc::stream::morph::step(graph, job, &args.layer, args.kernel, place)
    })
}
