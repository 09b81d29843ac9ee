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
use serde::Serialize;

use r2rc::ir::Graph;
use r2rc::names::Naming;
use r2rc::params::Params;
use r2rc::pipeline::{deepen_proved, morph_proved, widen_proved};
use r2rc::prove::{check_equivalence, Evidence};
use r2rc::transform::deepen::{rename, DeepenArgs, DeepenMethod, Exactness};
use r2rc::transform::{Amount, Init, Method, Target, WidenArgs};
use r2rc::{Error, Result};

use super::deepen::{emit, Common, Student};

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
    step: Step,
}

#[derive(clap::Subcommand)]
enum Step {
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

/// `report.json` of a plan.
#[derive(Serialize)]
struct ApplyReport {
    command: String,
    plan: String,
    method: String,
    site: String,
    /// Original layer name -> final name, for every layer renamed along the way.
    name_map: BTreeMap<String, String>,
    params_before: u64,
    params_after: u64,
    macs_before: u64,
    macs_after: u64,
    seed: u64,
    teacher: String,
    function_preserving: bool,
    steps: Vec<serde_json::Value>,
    notes: Vec<String>,
    proved: bool,
    /// The final student against the original teacher (when every step is exact).
    evidence: Vec<Evidence>,
    /// Under `--names torchvision`: r2rc layer name -> torchvision module name.
    #[serde(skip_serializing_if = "Option::is_none")]
    torchvision_names: Option<BTreeMap<String, String>>,
}

/// The steps of a plan (line number, text, step), or the first line that is not one.
fn parse_plan(text: &str, shown: &str) -> Result<Vec<(usize, String, Step)>> {
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

/// `step` with the layers it names in r2rc's names (a plan may use the weights' module
/// names, `layer3.1`), resolved against the network the step rewrites.
fn in_r2rc_names(step: Step, g: &Graph, naming: Naming) -> Result<Step> {
    let ours = |n: String| r2rc::names::target_to_r2rc(g, naming, &n);
    Ok(match step {
        Step::Deepen {
            after,
            method,
            width,
        } => Step::Deepen {
            after: ours(after)?,
            method,
            width,
        },
        Step::Widen(w) => Step::Widen(WidenLine {
            layer: w.layer.map(ours).transpose()?,
            stage: w.stage.map(ours).transpose()?,
            ..w
        }),
        Step::Morph { layer, kernel } => Step::Morph {
            layer: ours(layer)?,
            kernel,
        },
        Step::Name { name } => Step::Name { name },
    })
}

/// The arguments of a plan's widen line.
fn widen_args(w: WidenLine) -> Result<WidenArgs> {
    let amount = match (w.by, w.to, w.add) {
        (Some(f), _, _) => Amount::By(f),
        (_, Some(c), _) => Amount::To(c),
        (_, _, Some(e)) => Amount::Add(e),
        _ => unreachable!("clap requires one amount"),
    };
    let target = match (w.layer, w.stage) {
        (Some(n), _) => Target::Name(n),
        (_, Some(n)) => Target::Stage(n),
        _ => Target::All,
    };
    Ok(WidenArgs {
        target,
        amount,
        method: Method::parse(&w.method)?,
        init: Init::parse(&w.init)?,
        noise: w.noise,
    })
}

impl ApplyReport {
    /// The student's `.arch` header: the command, the teacher, a line per step (`steps`),
    /// the notes.
    fn header(&self, steps: &[String]) -> String {
        let mut head = format!(
            "# r2rc apply {} --seed {}\n# teacher weights: {}\n",
            self.plan, self.seed, self.teacher
        );
        for h in steps {
            head.push_str(h);
            head.push('\n');
        }
        for n in &self.notes {
            head.push_str(&format!("# note: {n}\n"));
        }
        head
    }

    /// `__metadata__` of the student: the command, the plan's `text`, the name map and
    /// torchvision's names.
    fn metadata(&self, text: &str) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("r2rc.command".to_string(), "apply".to_string());
        m.insert("r2rc.plan".to_string(), text.to_string());
        m.insert(
            "r2rc.name_map".to_string(),
            serde_json::to_string(&self.name_map).expect("json"),
        );
        r2rc::prove::add_names(&mut m, self.torchvision_names.as_ref());
        m
    }
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

pub fn run(mut args: Args) -> Result<()> {
    args.common.plan = Some(args.plan.clone());
    let graph = super::load_named(&args.file, &args.common.sets, args.common.name.as_deref())?;
    let shown = args.plan.display().to_string();
    let text = std::fs::read_to_string(&args.plan).map_err(|e| Error::io(&shown, e))?;
    let c = &args.common;
    let local = super::local_proof(&c.prove)?;
    if let (Some(w), Some(dir), true) = (&c.weights, &c.output, c.no_prove || local) {
        return run_streaming(&args, &graph, &text, &shown, w, dir);
    }
    if local {
        return Err(Error::usage(
            "apply --prove local needs --weights and -o (it streams the steps through files)",
            Some("without them, apply proves every step and the plan end to end in memory; drop --prove local".into()),
        ));
    }
    let (teacher, source, read_notes) = args.common.teacher(&graph)?;
    let opts = args.common.prove_options()?;
    let mut g: Graph = graph.clone();
    let mut p: Params = teacher.clone();
    // Original name -> current name, for every layer of the teacher.
    let mut names: BTreeMap<String, String> = graph
        .g
        .node_weights()
        .map(|n| (n.name.clone(), n.name.clone()))
        .collect();
    let mut steps = Vec::new();
    let mut header = Vec::new();
    let mut summary = String::new();
    let mut all_exact = true;
    let mut step_tolerance: Option<f64> = None;
    let mut notes = read_notes;
    let naming = Naming::parse(&args.common.names)?;
    for (lineno, line, step) in parse_plan(&text, &shown)? {
        let step = in_r2rc_names(step, &g, naming).map_err(|e| at(&shown, lineno, e))?;
        let seed = args.common.seed.wrapping_add(steps.len() as u64);
        let step_source = format!("step {} of {shown}", steps.len() + 1);
        let (ng, np, report, map, exact): (
            Graph,
            Params,
            serde_json::Value,
            BTreeMap<String, String>,
            bool,
        ) = match step {
            Step::Deepen {
                after,
                method,
                width,
            } => {
                let method = DeepenMethod::parse(&method).map_err(|e| at(&shown, lineno, e))?;
                let a = DeepenArgs {
                    after,
                    method,
                    width,
                };
                let (d, r) = deepen_proved(&g, &p, &a, seed, opts.as_ref(), &step_source)
                    .map_err(|e| at(&shown, lineno, e))?;
                summary.push_str(&r.summary());
                header.push(format!("# step {}: {line} -> {}", steps.len() + 1, r.site));
                let exact = d.exactness == Exactness::Exact && !method.info().mixes;
                (
                    d.graph,
                    d.params,
                    serde_json::to_value(&r).expect("json"),
                    d.name_map,
                    exact,
                )
            }
            Step::Widen(w) => {
                let wa = widen_args(w).map_err(|e| at(&shown, lineno, e))?;
                let o = widen_proved(&g, &p, &wa, seed, opts.as_ref(), &step_source)
                    .map_err(|e| at(&shown, lineno, e))?;
                summary.push_str(&o.report.summary());
                header.push(format!("# step {}: {line}", steps.len() + 1));
                let exact = o.widened.exact;
                (
                    o.widened.graph,
                    o.widened.params,
                    serde_json::to_value(&o.report).expect("json"),
                    BTreeMap::new(),
                    exact,
                )
            }
            Step::Morph { layer, kernel } => {
                let (m, r) = morph_proved(&g, &p, &layer, kernel, opts.as_ref(), &step_source)
                    .map_err(|e| at(&shown, lineno, e))?;
                summary.push_str(&r.summary());
                header.push(format!("# step {}: {line} -> {}", steps.len() + 1, r.site));
                (
                    m.graph,
                    m.params,
                    serde_json::to_value(&r).expect("json"),
                    BTreeMap::new(),
                    true,
                )
            }
            Step::Name { name } => {
                let mut ng = g.clone();
                ng.name = name.clone();
                header.push(format!("# step {}: {line}", steps.len() + 1));
                let r = serde_json::json!({"command": "name", "from": g.name, "to": name});
                (ng, p.clone(), r, BTreeMap::new(), true)
            }
        };
        for cur in names.values_mut() {
            if let Some(n) = map.get(cur) {
                *cur = n.clone();
            }
        }
        all_exact &= exact;
        // The loosest tolerance a step needed (storage rounding of Net2Net and
        // NetMorph-dense): the end-to-end proof cannot be stricter than its steps.
        if let Some(ev) = report.get("evidence").and_then(|e| e.as_array()) {
            for t in ev.iter().filter_map(|e| e.get("tolerance")?.as_f64()) {
                if t > step_tolerance.unwrap_or(0.0) {
                    step_tolerance = Some(t);
                }
            }
        }
        steps.push(report);
        g = ng;
        p = np;
    }
    let name_map: BTreeMap<String, String> = names.into_iter().filter(|(a, b)| a != b).collect();
    // End to end: the original teacher, renamed, against the final student.
    let mut evidence = Vec::new();
    if let Some(o) = &opts {
        if all_exact {
            let (t, tp) = rename(&graph, &teacher, &name_map);
            let mut o = o.clone();
            if o.tolerance.is_none() {
                o.tolerance = step_tolerance.filter(|&t| t > o.precision.tolerance());
            }
            evidence = check_equivalence(&t, &tp, &g, &p, &o)?;
            if let Some(e) = r2rc::prove::failure(&evidence) {
                return Err(e);
            }
        } else {
            notes.push("not every step is exact in both modes (or a dense mix hides values), so only the steps are proved, not the plan end to end".into());
        }
    }
    let report = ApplyReport {
        command: "apply".into(),
        plan: shown.clone(),
        method: "plan".into(),
        site: format!("{} steps", steps.len()),
        name_map,
        params_before: r2rc::stats::param_count(&graph),
        params_after: r2rc::stats::param_count(&g),
        macs_before: r2rc::stats::mac_count(&graph),
        macs_after: r2rc::stats::mac_count(&g),
        seed: args.common.seed,
        teacher: source.clone(),
        function_preserving: all_exact,
        steps,
        notes: notes.clone(),
        proved: !evidence.is_empty(),
        evidence: evidence.clone(),
        torchvision_names: r2rc::names::report_names(
            &[&graph, &g],
            r2rc::names::Naming::parse(&args.common.names)?,
        ),
    };
    let mut head = report.header(&header);
    for e in &evidence {
        head.push_str(&format!("# proof (end to end): {}\n", e.summary()));
        summary.push_str(&format!("proof (end to end): {}\n", e.summary()));
    }
    let mut metadata = report.metadata(&text);
    metadata.insert(
        "r2rc.evidence".to_string(),
        serde_json::to_string(&evidence).expect("json"),
    );
    emit(
        &args.file,
        &args.common,
        Student {
            graph: &g,
            params: &p,
            header: head,
            report: serde_json::to_value(&report).expect("the report serialises"),
            summary,
            metadata,
        },
    )
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

/// Streams a plan: each step reads the previous student memory-mapped from a scratch file
/// (the first reads the teacher) and writes its own, proved on its region (`--prove local`)
/// or not at all; the final student is copied into place with the plan's metadata. At most
/// two students are on disk in the scratch folder at once, none whole in memory.
fn run_streaming(
    args: &Args,
    graph: &Graph,
    text: &str,
    shown: &str,
    weights: &Path,
    dir: &Path,
) -> Result<()> {
    let c = &args.common;
    let naming = Naming::parse(&c.names)?;
    let opts = c.prove_options()?;
    let plan = parse_plan(text, shown)?;
    // Refuse existing outputs before any work (the exact shard names are checked again
    // once the final student is known).
    let stem = super::stem_of(&args.file, c.name.as_deref());
    let early: Vec<PathBuf> = [
        format!("{stem}.arch"),
        format!("{stem}.safetensors"),
        format!("{stem}.safetensors.index.json"),
        "report.json".into(),
    ]
    .iter()
    .map(|n| dir.join(n))
    .collect();
    let inputs: Vec<&Path> = vec![args.file.as_path(), weights, args.plan.as_path()];
    r2rc::outputs::check_outputs(&early, &inputs, c.force)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
    let scratch = Scratch::create(dir)?;

    let mut g = graph.clone();
    let mut src = r2rc::shards::Source::open(weights)?;
    let read_notes = src.notes();
    let mut names: BTreeMap<String, String> = graph
        .g
        .node_weights()
        .map(|n| (n.name.clone(), n.name.clone()))
        .collect();
    let (mut steps, mut header, mut summary) = (Vec::new(), Vec::new(), String::new());
    let mut all_preserving = true;
    for (k, (lineno, line, step)) in plan.into_iter().enumerate() {
        let step = in_r2rc_names(step, &g, naming).map_err(|e| at(shown, lineno, e))?;
        let seed = c.seed.wrapping_add(k as u64);
        let source = format!("step {} of {shown}", k + 1);
        let next = scratch.0.join(format!("step{}.safetensors", k + 1));
        let mut to_next = |_: &Graph| Ok(next.clone());
        let mut ng_name = None;
        let job = r2rc::stream::Job {
            src: &src,
            naming,
            seed,
            prove: opts.as_ref(),
            teacher: &source,
            shard_size: None,
        };
        let streamed = match step {
            Step::Deepen {
                after,
                method,
                width,
            } => {
                let a = DeepenArgs {
                    after,
                    method: DeepenMethod::parse(&method).map_err(|e| at(shown, lineno, e))?,
                    width,
                };
                Some(r2rc::stream::deepen::step(&g, &job, &a, &mut to_next))
            }
            Step::Widen(w) => {
                let wa = widen_args(w).map_err(|e| at(shown, lineno, e))?;
                Some(r2rc::stream::widen(&g, &job, &wa, &next))
            }
            Step::Morph { layer, kernel } => Some(r2rc::stream::morph::step(
                &g,
                &job,
                &layer,
                kernel,
                &mut to_next,
            )),
            Step::Name { name } => {
                ng_name = Some(name);
                None
            }
        };
        let (ng, report, map, preserving, site): (Graph, serde_json::Value, _, bool, String) =
            match streamed {
                Some(s) => {
                    let s = s.map_err(|e| at(shown, lineno, e))?;
                    summary.push_str(&s.report.summary());
                    let json = serde_json::to_value(&s.report).expect("json");
                    let r = s.report;
                    (s.student, json, r.name_map, r.function_preserving, r.site)
                }
                None => {
                    let name = ng_name.take().expect("a name step");
                    let mut ng = g.clone();
                    ng.name = name.clone();
                    let r = serde_json::json!({"command": "name", "from": g.name, "to": name});
                    (ng, r, BTreeMap::new(), true, String::new())
                }
            };
        header.push(match site.as_str() {
            "" => format!("# step {}: {line}", k + 1),
            _ => format!("# step {}: {line} -> {site}", k + 1),
        });
        for cur in names.values_mut() {
            if let Some(n) = map.get(cur) {
                *cur = n.clone();
            }
        }
        all_preserving &= preserving;
        steps.push(report);
        if next.exists() {
            // This step's student is the next step's teacher; the one before is done.
            let old = std::mem::replace(&mut src, r2rc::shards::Source::open(&next)?);
            let done: Vec<PathBuf> = old.files.iter().map(|(f, _)| PathBuf::from(f)).collect();
            drop(old);
            for f in done.iter().filter(|f| f.starts_with(&scratch.0)) {
                let _ = std::fs::remove_file(f);
            }
        }
        g = ng;
    }
    let name_map: BTreeMap<String, String> = names.into_iter().filter(|(a, b)| a != b).collect();
    let mut notes = vec![format!(
        "streamed: each step read the previous student memory-mapped from a scratch file; {}",
        if opts.is_some() {
            "each step was proved on its region (--prove local), which proves the plan by composition; no end-to-end run of both networks"
        } else {
            "not proved (--no-prove)"
        }
    )];
    notes.extend(read_notes);
    if !all_preserving {
        notes.push("not every step preserves the function".into());
    }
    let source = weights.display().to_string();
    let report = ApplyReport {
        command: "apply".into(),
        plan: shown.to_string(),
        method: "plan".into(),
        site: format!("{} steps", steps.len()),
        name_map,
        params_before: r2rc::stats::param_count(graph),
        params_after: r2rc::stats::param_count(&g),
        macs_before: r2rc::stats::mac_count(graph),
        macs_after: r2rc::stats::mac_count(&g),
        seed: c.seed,
        teacher: source.clone(),
        function_preserving: all_preserving,
        steps,
        notes: notes.clone(),
        proved: opts.is_some() && all_preserving,
        evidence: vec![],
        torchvision_names: r2rc::names::report_names(&[graph, &g], naming),
    };
    let head = report.header(&header);
    let mut metadata = report.metadata(text);
    metadata.insert(
        "r2rc.steps".to_string(),
        serde_json::to_string(&report.steps).expect("json"),
    );
    // The final student, copied into place with the plan's metadata (and shards).
    let teacher_src = r2rc::shards::Source::open(weights)?;
    let out = super::deepen::StreamOut::check(&args.file, c, &teacher_src, weights, dir, &g)?;
    drop(teacher_src);
    let files = r2rc::stream::copy::write(
        &r2rc::stream::copy::Rewrite {
            teacher: &g,
            student: &g,
            new: &Params {
                tensors: BTreeMap::new(),
                dtype: src.dtype(),
            },
            rewritten: &std::collections::HashSet::new(),
            name_map: &BTreeMap::new(),
        },
        &metadata,
        &src,
        naming,
        &out.path,
        c.shard_size()?,
    )?;
    drop(src);
    drop(scratch);
    out.finish_with(c, &head, &summary, &report, &g, &files)
}
