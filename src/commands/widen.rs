//! `r2rc widen FILE (--layer NAME | --all) (--by F | --to C | --add E) [--method M]
//! [--weights W] [-o DIR] [--force] [--seed S] [--init match|he] [--noise SIGMA]
//! [--no-prove] [--dtype f32|f64] [--inputs N] [--json] [--names r2rc|torchvision]`.

use std::path::PathBuf;

use r2rc::names::{self, Naming};
use r2rc::params::{self, DType};
use r2rc::pipeline::{widen_local_proved, widen_proved, Outcome};
use r2rc::prove::{Precision, ProveOptions};
use r2rc::report::{write_outputs, StepReport};
use r2rc::transform::{Amount, Init, Method, Target, WidenArgs};
use r2rc::{Error, Result};

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["layer", "stage", "all"])))]
#[command(group(clap::ArgGroup::new("amount").required(true).args(["by", "to", "add"])))]
pub struct Args {
    /// The teacher architecture (.arch).
    file: PathBuf,
    /// A layer (its output channels), block (its hidden widths), single-layer row or stage
    /// (its residual stream only).
    #[arg(long, value_name = "NAME")]
    layer: Option<String>,
    /// A stage or row whole: its residual stream and the hidden widths of every block in it.
    #[arg(long, value_name = "ROW")]
    stage: Option<String>,
    /// Widen every channel space that can be widened.
    #[arg(long)]
    all: bool,
    /// New width = floor(width * F) in every space widened.
    #[arg(long, value_name = "F")]
    by: Option<f64>,
    /// New width of every space widened.
    #[arg(long, value_name = "C")]
    to: Option<usize>,
    /// Channels added to every space widened (even for r2r).
    #[arg(long, value_name = "E")]
    add: Option<usize>,
    /// r2r, netmorph, net2net or random.
    #[arg(long, default_value = "r2r")]
    method: String,
    /// New free weights: match (uniform, the existing kernel's standard deviation) or he.
    #[arg(long, default_value = "match")]
    init: String,
    /// Net2WiderNet: add noise (SIGMA kernel standard deviations) to the new weights; the
    /// student is then only approximately the teacher.
    #[arg(long, value_name = "SIGMA")]
    noise: Option<f64>,
    /// Teacher weights (.safetensors); without, a seeded random teacher with random biases
    /// and BN statistics.
    #[arg(long, value_name = "W")]
    weights: Option<PathBuf>,
    /// Write DIR/<stem>.arch, DIR/<stem>.safetensors and DIR/report.json.
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Name the student: its `arch` line and its output files (DIR/NAME.arch, ...);
    /// default: the teacher's name and the architecture file's stem.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Overwrite existing outputs.
    #[arg(long)]
    force: bool,
    /// Seed of new weights, the random teacher and the proof inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Skip the proof.
    #[arg(long, conflicts_with = "prove")]
    no_prove: bool,
    /// full (run teacher and student whole) or local (prove each widened space on its
    /// region only: far cheaper on large nets, and streamed with --weights and -o).
    #[arg(long, value_name = "HOW", default_value = "full")]
    prove: String,
    /// Write the student's weights as shards of at most SIZE (2GB, 500MB, 1GiB) with a
    /// `<stem>.safetensors.index.json`, as Hugging Face does.
    #[arg(long, value_name = "SIZE")]
    shard_size: Option<String>,
    /// Precision of the proof: f64 (tolerance 1e-9) or f32 (1e-5).
    #[arg(long, default_value = "f64")]
    dtype: String,
    /// Batch size of the proof's random input.
    #[arg(long, default_value_t = 2, value_name = "N")]
    inputs: usize,
    /// Print the report as JSON on stdout (with the student text when there is no -o).
    #[arg(long)]
    json: bool,
    /// Tensor names of the teacher and student weights: r2rc or torchvision (ResNet
    /// family: `bn1`, `layer1.0.conv1`, `fc`).
    #[arg(long, default_value = "r2rc", value_name = "NAMING")]
    names: String,
    /// Architecture parameters, e.g. `--set r=1/8`.
    #[arg(long = "set", value_name = "NAME=EXPR")]
    sets: Vec<String>,
}

impl Args {
    fn shard_size(&self) -> Result<Option<u64>> {
        self.shard_size
            .as_deref()
            .map(r2rc::shards::parse_size)
            .transpose()
    }
}

pub fn run(args: Args) -> Result<()> {
    let naming = Naming::parse(&args.names)?;
    let graph = super::load_named(&args.file, &args.sets, args.name.as_deref())?;
    let method = Method::parse(&args.method)?;
    let amount = match (args.by, args.to, args.add) {
        (Some(f), _, _) => Amount::By(f),
        (_, Some(c), _) => Amount::To(c),
        (_, _, Some(e)) => Amount::Add(e),
        _ => unreachable!("clap requires one amount"),
    };
    // A module name of the weights' scheme (`layer2.0.conv1`, `layer2`) names r2rc's.
    let ours = |n: &String| names::target_to_r2rc(&graph, naming, n);
    let target = match (&args.layer, &args.stage) {
        (Some(n), _) => Target::Name(ours(n)?),
        (_, Some(n)) => Target::Stage(ours(n)?),
        _ => Target::All,
    };
    let wargs = WidenArgs {
        target,
        amount,
        method,
        init: Init::parse(&args.init)?,
        noise: args.noise,
    };
    if args.inputs == 0 {
        return Err(Error::usage("--inputs must be at least 1", None));
    }
    let local = super::local_proof(&args.prove)?;
    let shard_size = args.shard_size()?;
    let opts = ProveOptions {
        precision: Precision::parse(&args.dtype)?,
        inputs: args.inputs,
        seed: args.seed,
        ..ProveOptions::default()
    };
    // Large checkpoints: stream the teacher from disk into the output.
    if let (Some(w), Some(dir), true) = (&args.weights, &args.output, args.no_prove || local) {
        let prove = (local && !args.no_prove).then_some(&opts);
        return run_streaming(&args, &graph, &wargs, prove, (w, dir));
    }
    let (teacher, source, read_notes) = match &args.weights {
        Some(w) => {
            let (p, notes) = names::load_with_notes(&graph, w, naming)?;
            (p, w.display().to_string(), notes)
        }
        None => (
            {
                params::check_memory(&graph, 0, false, "a random teacher for this network")?;
                params::init(&graph, args.seed, true)
            },
            format!(
                "random (seed {}, random biases and BN statistics)",
                args.seed
            ),
            Vec::new(),
        ),
    };
    let outcome = if local && !args.no_prove {
        widen_local_proved(&graph, &teacher, &wargs, args.seed, &opts, &source)?
    } else {
        widen_proved(
            &graph,
            &teacher,
            &wargs,
            args.seed,
            (!args.no_prove).then_some(&opts),
            &source,
        )?
    };
    let mut outcome = outcome;
    outcome.report.notes.extend(read_notes);
    outcome.report.torchvision_names =
        names::report_names(&[&graph, &outcome.widened.graph], naming);
    let arch = format!(
        "{}\n{}",
        outcome.report.header(),
        r2rc::print::print(&outcome.widened.graph)
    );
    let report_json = serde_json::to_string_pretty(&outcome.report).expect("the report serialises");
    match &args.output {
        Some(dir) => {
            let stem = super::stem_of(&args.file, args.name.as_deref());
            let meta = outcome.report.metadata();
            if let Some(size) = shard_size {
                return write_sharded(&args, dir, &stem, &outcome, &arch, naming, size);
            }
            let st = names::to_bytes(
                &outcome.widened.params,
                &outcome.widened.graph,
                Some(&meta),
                naming,
            )?;
            let files = vec![
                (format!("{stem}.arch"), arch.into_bytes()),
                (format!("{stem}.safetensors"), st),
                (
                    "report.json".to_string(),
                    format!("{report_json}\n").into_bytes(),
                ),
            ];
            let mut inputs = vec![args.file.as_path()];
            inputs.extend(args.weights.as_deref());
            let written = write_outputs(dir, &files, args.force, &inputs)?;
            if args.json {
                println!("{report_json}");
            } else {
                eprint!("{}", outcome.report.summary());
                for p in written {
                    eprintln!("wrote {}", p.display());
                }
            }
            if teacher.dtype != DType::F64 && args.weights.is_none() && !args.json {
                eprintln!(
                    "(the random teacher and the student weights are {})",
                    teacher.dtype
                );
            }
        }
        None if args.json => {
            let mut v = serde_json::to_value(&outcome.report).expect("the report serialises");
            v["student_arch"] = serde_json::Value::String(arch);
            println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        }
        None => {
            print!("{arch}");
            eprint!("{}", outcome.report.summary());
        }
    }
    Ok(())
}

/// Writes the student's weights as shards (then its .arch and report.json).
fn write_sharded(
    args: &Args,
    dir: &std::path::Path,
    stem: &str,
    outcome: &Outcome,
    arch: &str,
    naming: Naming,
    size: u64,
) -> Result<()> {
    let w = &outcome.widened;
    let theirs = names::renamed_graph(&w.graph, naming)?;
    let p = names::to_naming(&w.params, &w.graph, naming)?;
    let path = dir.join(format!("{stem}.safetensors"));
    let entries = r2rc::shards::entries(&theirs);
    let weight_paths = r2rc::shards::output_paths(&path, &entries, p.dtype, Some(size));
    let mut inputs = vec![args.file.as_path()];
    inputs.extend(args.weights.as_deref());
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
    r2rc::outputs::check_outputs(&weight_paths, &inputs, args.force)?;
    let report_json = serde_json::to_string_pretty(&outcome.report).expect("the report serialises");
    let files = vec![
        (format!("{stem}.arch"), arch.as_bytes().to_vec()),
        (
            "report.json".to_string(),
            format!("{report_json}\n").into_bytes(),
        ),
    ];
    r2rc::outputs::check_outputs(
        &files.iter().map(|(n, _)| dir.join(n)).collect::<Vec<_>>(),
        &inputs,
        args.force,
    )?;
    let meta = outcome.report.metadata();
    let mut written = r2rc::shards::save(&p, &theirs, &path, Some(&meta), Some(size))?;
    written.extend(write_outputs(dir, &files, true, &inputs)?);
    finish(args, &outcome.report, &report_json, &written);
    Ok(())
}

fn finish(args: &Args, report: &StepReport, report_json: &str, written: &[PathBuf]) {
    if args.json {
        println!("{report_json}");
    } else {
        eprint!("{}", report.summary());
        for p in written {
            eprintln!("wrote {}", p.display());
        }
    }
}

/// The streaming path: the teacher is memory-mapped, student tensors are written as they
/// are final, the proof (if any) is local.
fn run_streaming(
    args: &Args,
    graph: &r2rc::ir::Graph,
    wargs: &WidenArgs,
    prove: Option<&ProveOptions>,
    (weights, dir): (&std::path::Path, &std::path::Path),
) -> Result<()> {
    let naming = Naming::parse(&args.names)?;
    let shard_size = args.shard_size()?;
    let stem = super::stem_of(&args.file, args.name.as_deref());
    let src = r2rc::shards::Source::open(weights)?;
    // Wrong weights are refused before the output folder is made.
    names::check_source(&src, graph, naming)?;
    let plan = r2rc::transform::plan(graph, wargs)?;
    let path = dir.join(format!("{stem}.safetensors"));
    let mut outs = r2rc::stream::output_paths(&plan, &src, &path, naming, shard_size)?;
    outs.push(dir.join(format!("{stem}.arch")));
    outs.push(dir.join("report.json"));
    let mut inputs = vec![args.file.as_path(), weights];
    let resolved = r2rc::shards::resolve(weights)?;
    inputs.push(&resolved);
    let shard_paths: Vec<PathBuf> = src.files.iter().map(|(s, _)| PathBuf::from(s)).collect();
    inputs.extend(shard_paths.iter().map(|p| p.as_path()));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
    r2rc::outputs::check_outputs(&outs, &inputs, args.force)?;
    let teacher = weights.display().to_string();
    let job = r2rc::stream::Job {
        src: &src,
        naming,
        seed: args.seed,
        prove,
        teacher: &teacher,
        shard_size,
    };
    let s = r2rc::stream::widen(graph, &job, wargs, &path)?;
    let (written, report_json) = super::write_arch_and_report(
        dir,
        &stem,
        &s.report.header(),
        &s.student,
        &s.report,
        &s.files,
        &inputs,
    )?;
    finish(args, &s.report, &report_json, &written);
    Ok(())
}
