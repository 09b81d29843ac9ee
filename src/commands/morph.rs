//! `r2rc morph FILE --layer NAME --kernel K [--weights W] [-o DIR] [--force] [--seed S]
//! [--no-prove] [--json]`: kernel-size morphing, proved.

use std::path::PathBuf;

use r2rc::transform::morph_kernel::morph_proved;
use r2rc::Result;

use super::deepen::{emit, Common, Student};

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
    common: Common,
}

pub fn run(args: Args) -> Result<()> {
    let graph = super::load_arch(&args.file, &args.common.sets)?;
    let (teacher, source) = args.common.teacher(&graph)?;
    let opts = args.common.prove_options()?;
    let (m, mut report) = morph_proved(
        &graph,
        &teacher,
        &args.layer,
        args.kernel,
        opts.as_ref(),
        &source,
    )?;
    report.torchvision_names = r2rc::names::report_names(
        &[&graph, &m.graph],
        r2rc::names::Naming::parse(&args.common.names)?,
    );
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
