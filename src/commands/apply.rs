//! `r2rc apply FILE PLAN [--weights W] [-o DIR] [--force] [--seed S] [--no-prove] [--json]`:
//! applies a plan's transforms in order, each proved, with one report listing every step.
//!
//! A plan has one transform per line, with the words of the commands without the file
//! (`deepen --after conv2_2 --method r2r`, `widen --layer conv2_1 --by 1.5`,
//! `morph --layer conv1 --kernel 9`), `#` comments, and `name NEW` to rename the
//! architecture. Step i draws its new weights with seed `--seed + i`. When every step is
//! exact in both modes, the final student is also proved against the original teacher.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Parser;

use r2rc::ir::Graph;
use r2rc::names::Naming;
use r2rc::params::Params;
use r2rc::patch::{Patch, Step};
use r2rc::pipeline::Proof;
use r2rc::prove::check_equivalence;
use r2rc::report::StepReport;
use r2rc::shards::Source;
use r2rc::stream::{Job, Mapped};
use r2rc::transform::deepen::{rename, DeepenArgs, DeepenMethod};
use r2rc::transform::morph_kernel::MorphArgs;
use r2rc::{Error, Result};

use super::step::{emit, Common, StreamOut, Student};

#[derive(clap::Args)]
pub struct Args {
    /// The teacher architecture (.arch).
    file: PathBuf,
    /// The plan: one transform per line.
    plan: PathBuf,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Parser)]
#[command(no_binary_name = true, name = "plan line")]
struct Line {
    #[command(subcommand)]
    step: PlanStep,
}

#[derive(clap::Subcommand)]
enum PlanStep {
    /// Insert layers after a block or row.
    Deepen {
        #[arg(long)]
        after: String,
        #[arg(long, default_value = "r2r")]
        method: String,
        #[arg(long)]
        width: Option<usize>,
    },
    /// Widen a layer, block, row or every space.
    Widen(WidenLine),
    /// Grow a convolution's kernel.
    Morph {
        #[arg(long)]
        layer: String,
        #[arg(long)]
        kernel: usize,
    },
    /// Rename the architecture (the `arch` line).
    Name { name: String },
}

/// A plan's widen line.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["layer", "stage", "all"])))]
#[command(group(clap::ArgGroup::new("amount").required(true).args(["by", "to", "add"])))]
struct WidenLine {
    #[arg(long)]
    layer: Option<String>,
    #[arg(long)]
    stage: Option<String>,
    #[arg(long)]
    all: bool,
    #[arg(long)]
    by: Option<f64>,
    #[arg(long)]
    to: Option<usize>,
    #[arg(long)]
    add: Option<usize>,
    #[arg(long, default_value = "r2r")]
    method: String,
    #[arg(long, default_value = "match")]
    init: String,
    #[arg(long)]
    noise: Option<f64>,
}

/// The steps of a plan (line number, text, step), or the first line that is not one.
fn parse_plan(text: &str, shown: &str) -> Result<Vec<(usize, String, PlanStep)>> {
    let mut steps = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let lineno = i + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let parsed = Line::try_parse_from(&words).map_err(|e| {
            let msg = e.render().to_string();
            // clap's first line, and for "...were not provided:" the line naming them.
            let mut lines = msg.lines().map(str::trim).filter(|l| !l.is_empty());
            let mut first = lines.next().unwrap_or("").trim_start_matches("error: ").to_string();
            if first.ends_with(':') {
                if let Some(next) = lines.next() {
                    first = format!("{first} {next}");
                }
            }
            Error::usage(
                format!("{shown}:{lineno}: cannot read plan line `{line}`: {first}"),
                Some("plan lines are `deepen --after NAME [--method M] [--width W]`, `widen (--layer NAME | --all) (--by F | --to C | --add E) [--method M]`, `morph --layer NAME --kernel K` or `name NEW`".into()),
            )
        })?;
        steps.push((lineno, line.to_string(), parsed.step));
    }
    if steps.is_empty() {
        return Err(Error::usage(
            format!("{shown} has no steps"),
            Some("write one transform per line, e.g. `deepen --after conv2_2 --method r2r`".into()),
        ));
    }
    Ok(steps)
}

/// The pipeline's step for a plan line, with the layers it names in r2rc's names (a plan
/// may use the weights' module names, `layer3.1`), resolved against the network the step
/// rewrites.
fn to_step(step: PlanStep, g: &Graph, naming: Naming) -> Result<Step> {
    let ours = |n: String| r2rc::names::target_to_r2rc(g, naming, &n);
    Ok(match step {
        PlanStep::Deepen {
            after,
            method,
            width,
        } => Step::Deepen(DeepenArgs {
            after: ours(after)?,
            method: DeepenMethod::parse(&method)?,
            width,
        }),
        PlanStep::Widen(w) => Step::Widen(super::widen::widen_args(
            (w.layer, w.stage),
            (w.by, w.to, w.add),
            (&w.method, &w.init, w.noise),
            ours,
        )?),
        PlanStep::Morph { layer, kernel } => Step::Morph(MorphArgs {
            layer: ours(layer)?,
            kernel,
        }),
        PlanStep::Name { name } => Step::Name(name),
    })
}

/// `path:line: message` for a plan error.
fn at(plan: &str, line: usize, e: Error) -> Error {
    let hint = e.hint_text().map(String::from);
    match e {
        Error::ProofFailed { message } => Error::ProofFailed {
            message: format!("{plan}:{line}: {message}"),
        },
        e => Error::usage(format!("{plan}:{line}: {e}"), hint),
    }
}

/// Where the current network's weights are between steps.
enum Weights {
    /// Whole in memory: each step runs [`r2rc::pipeline::run`].
    Memory(Params),
    /// Memory-mapped from a file (the teacher's, then the previous step's student in the
    /// scratch folder): each step runs [`r2rc::stream::step`] into the next scratch file.
    Mapped { src: Source, scratch: Scratch },
}

/// Where the current network's optimizer state is between steps (`--optimizer-state`).
enum Moments {
    None,
    /// Whole in memory, by r2rc names, with the state's dtype.
    Memory(r2rc::optim::Moments),
    /// The teacher's file, then the previous step's in the scratch folder.
    Mapped(r2rc::optim::State),
}

pub fn run(mut args: Args) -> Result<()> {
    args.common.plan = Some(args.plan.clone());
    let c = &args.common;
    let graph = super::load_named(&args.file, &c.sets, c.name.as_deref())?;
    let shown = args.plan.display().to_string();
    let text = std::fs::read_to_string(&args.plan).map_err(|e| Error::io(&shown, e))?;
    let local = super::local_proof(&c.prove)?;
    let naming = Naming::parse(&c.names)?;
    let opts = c.prove_options()?;
    let plan = parse_plan(&text, &shown)?;
    let state = c.optimizer_state(&graph)?;
    let streamed = match (&c.weights, &c.output) {
        (Some(w), Some(dir)) if c.no_prove || local => Some((w.as_path(), dir.as_path())),
        _ if local => return Err(Error::usage(
            "apply --prove local needs --weights and -o (it streams the steps through files)",
            Some("without them, apply proves every step and the plan end to end in memory; drop --prove local".into()),
        )),
        _ => None,
    };
    let (mut weights, teacher, label, read_notes) = match streamed {
        Some((w, dir)) => {
            check_early(&args, w, dir)?;
            let src = Source::open(w)?;
            let notes = src.notes();
            let scratch = Scratch::create(dir)?;
            let label = w.display().to_string();
            (Weights::Mapped { src, scratch }, None, label, notes)
        }
        None => {
            let (p, label, notes) = c.teacher(&graph)?;
            (Weights::Memory(p.clone()), Some(p), label, notes)
        }
    };
    let mut moments = match (state, &weights) {
        (None, _) => Moments::None,
        (Some(st), Weights::Memory(_)) => Moments::Memory(st.load()?),
        (Some(st), Weights::Mapped { .. }) => Moments::Mapped(st),
    };
    // The plan is a fold of steps over (network, weights, moments); each step is one
    // pipeline run.
    let mut g = graph.clone();
    let mut steps: Vec<StepReport> = Vec::new();
    let mut exact_everywhere = true;
    for (k, (lineno, line, step)) in plan.into_iter().enumerate() {
        let step = to_step(step, &g, naming).map_err(|e| at(&shown, lineno, e))?;
        let seed = c.seed.wrapping_add(k as u64);
        let source = format!("step {} of {shown}", k + 1);
        let (student, mut report, exact) = match &mut weights {
            Weights::Memory(p) => {
                let proof = Proof::new(opts.as_ref(), false);
                let s = r2rc::pipeline::run(&g, p, &step, seed, proof, &source)
                    .map_err(|e| at(&shown, lineno, e))?;
                if let Moments::Memory(m) = &mut moments {
                    // The step's patch again (planning is deterministic) maps the moments.
                    let patch = Patch::plan(&g, &step, seed, p, &source)
                        .map_err(|e| at(&shown, lineno, e))?;
                    *m = r2rc::optim::student_moments(&patch, &*m, m.avg.dtype)
                        .map_err(|e| at(&shown, lineno, e))?;
                }
                *p = s.params;
                (s.graph, s.report, s.exact_everywhere)
            }
            Weights::Mapped { src, scratch } => {
                let next = scratch.0.join(format!("step{}.safetensors", k + 1));
                let job = Job {
                    src,
                    naming,
                    seed,
                    prove: opts.as_ref(),
                    teacher: &source,
                    shard_size: None,
                };
                let next_state = scratch
                    .0
                    .join(format!("step{}.optimizer.safetensors", k + 1));
                let with = match &moments {
                    Moments::Mapped(st) => Some((st, next_state.as_path())),
                    _ => None,
                };
                let s =
                    r2rc::stream::step_with_state(&g, &job, &step, &mut |_| Ok(next.clone()), with)
                        .map_err(|e| at(&shown, lineno, e))?;
                if let Moments::Mapped(st) = &mut moments {
                    let old = std::mem::replace(
                        st,
                        r2rc::optim::State::open(&next_state, &s.student, naming)?,
                    );
                    let done = PathBuf::from(&old.src.shown);
                    drop(old);
                    if done.starts_with(&scratch.0) {
                        let _ = std::fs::remove_file(done);
                    }
                }
                // This step's student is the next step's teacher; the one before is done.
                let old = std::mem::replace(src, Source::open(&next)?);
                let done: Vec<PathBuf> = old.files.iter().map(|(f, _)| f.into()).collect();
                drop(old);
                for f in done.iter().filter(|f| f.starts_with(&scratch.0)) {
                    let _ = std::fs::remove_file(f);
                }
                let preserving = s.report.function_preserving;
                (s.student, s.report, preserving)
            }
        };
        report.line = Some(line);
        exact_everywhere &= exact;
        steps.push(report);
        g = student;
    }
    let mut report = r2rc::report::plan_report(&graph, &g, &shown, steps, c.seed, &label);
    report.name_map = composed_renames(&graph, &report.steps);
    report.notes = read_notes;
    report.torchvision_names = r2rc::names::report_names(&[&graph, &g], naming);
    match weights {
        Weights::Memory(p) => {
            let teacher = teacher.expect("kept for the end-to-end proof");
            prove_end_to_end(
                &mut report,
                (&graph, &teacher),
                (&g, &p),
                opts.as_ref(),
                exact_everywhere,
            )?;
            let mut s = Student::of(&g, &p, &report);
            if let Moments::Memory(m) = &moments {
                s.moments = Some(m);
            }
            s.metadata.insert("r2rc.plan".into(), text);
            emit(&args.file, c, s)
        }
        Weights::Mapped { src, scratch } => {
            report.notes.insert(0, format!(
                "streamed: each step read the previous student memory-mapped from a scratch file; {}",
                if opts.is_some() {
                    "each step was proved on its region (--prove local), which proves the plan by composition; no end-to-end run of both networks"
                } else {
                    "not proved (--no-prove)"
                }
            ));
            report.proved = opts.is_some() && report.function_preserving;
            let (w, dir) = streamed.expect("streamed");
            // The final student, copied into place with the plan's metadata (and shards).
            let out = StreamOut::check(&args.file, c, &Source::open(w)?, w, dir, &g)?;
            let mapped = Mapped::new(&src, &g, naming)?;
            let copy = Step::Name(g.name.clone());
            let patch = Patch::plan(&g, &copy, 0, &mapped, &label)?;
            let mut metadata = report.metadata();
            metadata.insert("r2rc.plan".into(), text);
            let mut files = r2rc::stream::write(
                &patch,
                &mapped,
                &metadata,
                naming,
                &out.path,
                c.shard_size()?,
            )?;
            if let Moments::Mapped(st) = &moments {
                let path = c.optimizer_path(&args.file, dir);
                files.push(r2rc::optim::write_streamed(&patch, st, &path, naming)?);
            }
            drop(moments);
            drop(src);
            drop(scratch);
            out.finish(c, &report, &g, &files)
        }
    }
}

/// Original layer name -> final name, for every layer the steps renamed along the way.
fn composed_renames(graph: &Graph, steps: &[StepReport]) -> BTreeMap<String, String> {
    let mut names: BTreeMap<String, String> = graph
        .g
        .node_weights()
        .map(|n| (n.name.clone(), n.name.clone()))
        .collect();
    for s in steps {
        for cur in names.values_mut() {
            if let Some(n) = s.name_map.get(cur) {
                *cur = n.clone();
            }
        }
    }
    names.into_iter().filter(|(a, b)| a != b).collect()
}

/// Proves the final student against the original teacher (renamed by the plan's name map)
/// when every step is exact in every mode and hides no value; else notes why not. The
/// tolerance is the loosest a step needed (storage rounding of Net2Net and NetMorph-dense):
/// the end-to-end proof cannot be stricter than its steps.
fn prove_end_to_end(
    report: &mut StepReport,
    (graph, teacher): (&Graph, &Params),
    (student, params): (&Graph, &Params),
    opts: Option<&r2rc::prove::ProveOptions>,
    exact_everywhere: bool,
) -> Result<()> {
    let Some(o) = opts else {
        return Ok(());
    };
    report.proved = report.steps.iter().all(|s| s.proved || s.command == "name");
    if !exact_everywhere {
        report.notes.push("not every step is exact in both modes (or a dense mix hides values), so only the steps are proved, not the plan end to end".into());
        return Ok(());
    }
    let (t, tp) = rename(graph, teacher, &report.name_map);
    let mut o = o.clone();
    if o.tolerance.is_none() {
        let step_tolerance = report
            .steps
            .iter()
            .flat_map(|s| &s.evidence)
            .map(|e| e.tolerance)
            .fold(0.0, f64::max);
        o.tolerance = Some(step_tolerance).filter(|&t| t > o.precision.tolerance());
    }
    let evidence = check_equivalence(&t, &tp, student, params, &o)?;
    if let Some(e) = r2rc::prove::failure(&evidence) {
        return Err(e);
    }
    report.evidence = evidence;
    Ok(())
}

/// Refuses existing outputs of a streamed plan before any work (the exact shard names are
/// checked again once the final student is known).
fn check_early(args: &Args, weights: &Path, dir: &Path) -> Result<()> {
    let stem = super::stem_of(&args.file, args.common.name.as_deref());
    let naming = Naming::parse(&args.common.names)?;
    let weights_file = r2rc::hf_config_out::weights_name(&stem, naming);
    let early: Vec<PathBuf> = [
        format!("{stem}.arch"),
        format!("{weights_file}.index.json"),
        weights_file,
        "report.json".into(),
    ]
    .iter()
    .map(|n| dir.join(n))
    .collect();
    let mut early = early;
    if args.common.optimizer_state.is_some() {
        early.push(args.common.optimizer_path(&args.file, dir));
    }
    let mut inputs: Vec<&Path> = vec![args.file.as_path(), weights, args.plan.as_path()];
    inputs.extend(args.common.optimizer_state.as_deref());
    r2rc::outputs::check_outputs(&early, &inputs, args.common.force)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))
}

/// A scratch folder next to the output for the steps' students; removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    /// `dir/.r2rc-apply.<pid>.tmp`, after removing the scratch folders of earlier runs
    /// that were killed (their process is gone; Linux's /proc tells).
    fn create(dir: &Path) -> Result<Scratch> {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let pid = name
                    .strip_prefix(".r2rc-apply.")
                    .and_then(|r| r.strip_suffix(".tmp"))
                    .and_then(|p| p.parse::<u32>().ok());
                if let Some(pid) = pid {
                    if Path::new("/proc/self").exists()
                        && !Path::new(&format!("/proc/{pid}")).exists()
                    {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let p = dir.join(format!(".r2rc-apply.{}.tmp", std::process::id()));
        std::fs::create_dir_all(&p).map_err(|e| Error::io(p.display(), e))?;
        Ok(Scratch(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
