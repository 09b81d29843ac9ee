//! `r2rc morph FILE --layer NAME --kernel K [--weights W] [-o DIR] [--force] [--seed S]
//! [--no-prove | --prove local] [--json] [--shard-size SIZE]`: kernel-size morphing,
//! proved. With `--weights`, `-o` and `--no-prove` or `--prove local` the teacher is
//! streamed: only the morphed kernel is decoded, every other tensor is copied.

use std::path::PathBuf;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use r2rc::ir::Graph;
use r2rc::names::Naming;
use r2rc::params::Params;
use r2rc::pipeline::{judge, morph_judged, morph_proved};
use r2rc::report::{morph_report, StepReport};
use r2rc::transform::morph_kernel::{morph_kernel, morph_partial};
use r2rc::Result;

use super::deepen::{emit, streamed_command, Common, Student, LOCAL_NOTE, STREAMED_NOTE};

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
    let (m, mut report) = if local {
        let m = morph_kernel(&graph, &teacher, &args.layer, args.kernel)?;
        let mut report = morph_report(&graph, &m, &source, c.seed);
        judge(
            &mut report,
            morph_judged(teacher.dtype),
            opts.as_ref(),
            |o| r2rc::local_proof::morph::prove(&graph, &teacher, &m, o),
        )?;
        if opts.is_some() {
            report.notes.push(LOCAL_NOTE.into());
        }
        (m, report)
    } else {
        morph_proved(
            &graph,
            &teacher,
            &args.layer,
            args.kernel,
            opts.as_ref(),
            &source,
        )?
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
    streamed_command(&args.file, c, weights, dir, |src, naming, place| {
        stream_morph(
            graph,
            src,
            naming,
            &args.layer,
            args.kernel,
            c.prove_options()?.as_ref(),
            &weights.display().to_string(),
            c.shard_size()?,
            place,
        )
    })
}

/// A streamed kernel morph of the teacher in `src`: the conv's tensors decoded and grown,
/// proved on the conv alone (`opts`), then written where `place` says once it has checked
/// the student's outputs; every other tensor copied.
#[allow(clippy::too_many_arguments)]
pub fn stream_morph(
    graph: &Graph,
    src: &r2rc::shards::Source,
    naming: Naming,
    layer: &str,
    kernel: usize,
    opts: Option<&r2rc::prove::ProveOptions>,
    teacher: &str,
    shard_size: Option<u64>,
    place: &mut dyn FnMut(&Graph) -> Result<PathBuf>,
) -> Result<(Graph, StepReport, Vec<PathBuf>)> {
    r2rc::names::check_source(src, graph, naming)?;
    let renames: BTreeMap<String, String> = r2rc::names::tensor_renames(graph, naming)?
        .into_iter()
        .collect();
    // The layer's tensors (weight, and bias if any; all are rewritten as one layer). An
    // unknown or non-conv layer is refused by morph_partial with the reason.
    let mut tensors = BTreeMap::new();
    let prefix = format!("{layer}.");
    for spec in graph.param_specs() {
        if spec.name.starts_with(&prefix) {
            let file = renames.get(&spec.name).unwrap_or(&spec.name);
            tensors.insert(spec.name.clone(), src.decode(file)?);
            src.release(file);
        }
    }
    let partial = Params {
        tensors,
        dtype: src.dtype(),
    };
    let m = morph_partial(graph, &partial, layer, kernel)?;
    let path = place(&m.graph)?;
    let mut report = morph_report(graph, &m, teacher, opts.map_or(0, |o| o.seed));
    judge(&mut report, morph_judged(src.dtype()), opts, |o| {
        r2rc::local_proof::morph::prove(graph, &partial, &m, o)
    })?;
    report.notes.push(STREAMED_NOTE.into());
    if opts.is_some() {
        report.notes.push(LOCAL_NOTE.into());
    }
    report.torchvision_names = r2rc::names::report_names(&[graph, &m.graph], naming);
    let rewritten: HashSet<&str> = HashSet::from([layer]);
    let files = r2rc::stream::copy::write(
        &r2rc::stream::copy::Rewrite {
            teacher: graph,
            student: &m.graph,
            new: &m.params,
            rewritten: &rewritten,
            name_map: &BTreeMap::new(),
        },
        &report.metadata(),
        src,
        naming,
        &path,
        shard_size,
    )?;
    Ok((m.graph, report, files))
}
