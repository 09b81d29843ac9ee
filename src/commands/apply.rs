//! `r2rc apply FILE PLAN [--weights W] [-o DIR] [--force] [--seed S] [--no-prove] [--json]`:
//! applies a plan's transforms in order, each proved, with one report listing every step.
//!
//! A plan has one transform per line, with the words of the commands without the file
//! (`deepen --after conv2_2 --method r2r`, `widen --layer conv2_1 --by 1.5`,
//! `morph --layer conv1 --kernel 9`), `#` comments, and `name NEW` to rename the
//! architecture. Step i draws its new weights with seed `--seed + i`. When every step is
//! exact in both modes, the final student is also proved against the original teacher.

use std::path::{Path, PathBuf};

use r2rc::api::{self, plan::at};
use r2rc::ir::Graph;
use r2rc::names::Naming;
use r2rc::patch::{Patch, Step};
use r2rc::report::StepReport;
use r2rc::shards::Source;
use r2rc::stream::{Job, Mapped};
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

pub fn run(mut args: Args) -> Result<()> {
    args.common.plan = Some(args.plan.clone());
    let c = &args.common;
    let graph = super::load_named(&args.file, &c.sets, c.name.as_deref())?;
    let shown = args.plan.display().to_string();
    let text = std::fs::read_to_string(&args.plan).map_err(|e| Error::io(&shown, e))?;
    let local = super::local_proof(&c.prove)?;
    let naming = Naming::parse(&c.names)?;
    let opts = c.prove_options()?;
    let plan = api::plan::parse(&text, &shown)?;
    let state = c.optimizer_state(&graph)?;
    let plan = Plan {
        lines: plan,
        text,
        shown,
    };
    match (&c.weights, &c.output) {
        (Some(w), Some(dir)) if c.no_prove || local => {
            streamed(&args, &graph, plan, (w, dir), opts.as_ref(), state)
        }
        _ if local => Err(Error::usage(
            "apply --prove local needs --weights and -o (it streams the steps through files)",
            Some("without them, apply proves every step and the plan end to end in memory; drop --prove local".into()),
        )),
        _ => {
            // The plan folded in memory, as the Python package folds it (r2rc::api).
            let (teacher, label, read_notes) = c.teacher(&graph)?;
            let moments = state.map(|st| st.load()).transpose()?;
            let o = api::Options {
                naming,
                seed: c.seed,
                prove: opts,
                local: false,
            };
            let mut s =
                api::plan::apply(&graph, &teacher, plan.lines, &plan.shown, &o, &label, moments)?;
            s.report.notes.splice(0..0, read_notes);
            let mut student = Student::of(&s.graph, &s.params, &s.report);
            student.moments = s.moments.as_ref();
            student.metadata.insert("r2rc.plan".into(), plan.text);
            emit(&args.file, c, student)
        }
    }
}

/// A plan as read: its lines, its text (kept in the student's metadata) and its path.
struct Plan {
    lines: api::plan::Lines,
    text: String,
    shown: String,
}

/// `apply` with `--weights`, `-o` and a local proof or none: each step reads the previous
/// student memory-mapped from a scratch file and runs [`r2rc::stream::step`] into the next.
fn streamed(
    args: &Args,
    graph: &Graph,
    plan: Plan,
    (w, dir): (&Path, &Path),
    opts: Option<&r2rc::prove::ProveOptions>,
    mut state: Option<r2rc::optim::State>,
) -> Result<()> {
    let c = &args.common;
    let naming = Naming::parse(&c.names)?;
    let shown = &plan.shown;
    check_early(args, w, dir)?;
    let mut src = Source::open(w)?;
    let read_notes = src.notes();
    let scratch = Scratch::create(dir)?;
    let label = w.display().to_string();
    let mut g = graph.clone();
    let mut steps: Vec<StepReport> = Vec::new();
    for (k, (lineno, line, step)) in plan.lines.into_iter().enumerate() {
        let step = api::plan::to_step(step, &g, naming).map_err(|e| at(shown, lineno, e))?;
        let seed = c.seed.wrapping_add(k as u64);
        let source = format!("step {} of {shown}", k + 1);
        let next = scratch.0.join(format!("step{}.safetensors", k + 1));
        let job = Job {
            src: &src,
            naming,
            seed,
            prove: opts,
            teacher: &source,
            shard_size: None,
        };
        let next_state = scratch
            .0
            .join(format!("step{}.optimizer.safetensors", k + 1));
        let with = state.as_ref().map(|st| (st, next_state.as_path()));
        let s = r2rc::stream::step_with_state(&g, &job, &step, &mut |_| Ok(next.clone()), with)
            .map_err(|e| at(shown, lineno, e))?;
        if let Some(st) = &mut state {
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
        let old = std::mem::replace(&mut src, Source::open(&next)?);
        let done: Vec<PathBuf> = old.files.iter().map(|(f, _)| f.into()).collect();
        drop(old);
        for f in done.iter().filter(|f| f.starts_with(&scratch.0)) {
            let _ = std::fs::remove_file(f);
        }
        let mut report = s.report;
        report.line = Some(line);
        steps.push(report);
        g = s.student;
    }
    let mut report = r2rc::report::plan_report(graph, &g, shown, steps, c.seed, &label);
    report.name_map = api::plan::composed_renames(graph, &report.steps);
    report.notes = read_notes;
    report.torchvision_names = r2rc::names::report_names(&[graph, &g], naming);
    report.notes.insert(0, format!(
        "streamed: each step read the previous student memory-mapped from a scratch file; {}",
        if opts.is_some() {
            "each step was proved on its region (--prove local), which proves the plan by composition; no end-to-end run of both networks"
        } else {
            "not proved (--no-prove)"
        }
    ));
    report.proved = opts.is_some() && report.function_preserving;
    // The final student, copied into place with the plan's metadata (and shards).
    let out = StreamOut::check(&args.file, c, &Source::open(w)?, w, dir, &g)?;
    let mapped = Mapped::new(&src, &g, naming)?;
    let copy = Step::Name(g.name.clone());
    let patch = Patch::plan(&g, &copy, 0, &mapped, &label)?;
    let mut metadata = report.metadata();
    metadata.insert("r2rc.plan".into(), plan.text);
    let mut files = r2rc::stream::write(
        &patch,
        &mapped,
        &metadata,
        naming,
        &out.path,
        c.shard_size()?,
    )?;
    if let Some(st) = &state {
        let path = c.optimizer_path(&args.file, dir);
        files.push(r2rc::optim::write_streamed(&patch, st, &path, naming)?);
    }
    drop(state);
    drop(src);
    drop(scratch);
    out.finish(c, &report, &g, &files)
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
