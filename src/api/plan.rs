//! Plans: one transform per line with the words of the commands (`deepen --after conv2_2
//! --method r2r`, `widen --layer conv2_1 --by 1.5`, `morph --layer conv1 --kernel 9`,
//! `name NEW`), `#` comments. [`parse`] reads them, [`to_step`] resolves a line against the
//! network it rewrites, [`apply`] folds them in memory (step i draws with seed + i) and,
//! when every step is exact in both modes, proves the final student against the original
//! teacher.

use std::collections::BTreeMap;

use clap::Parser;

use super::{Failed, Grown, Options, WidenRequest};
use crate::error::{Error, Result};
use crate::ir::Graph;
use crate::names::{self, Naming};
use crate::optim::{self, Moments};
use crate::params::Params;
use crate::patch::Step;
use crate::prove::{check_equivalence, ProveOptions};
use crate::report::StepReport;
use crate::transform::deepen::rename;

#[derive(Parser)]
#[command(no_binary_name = true, name = "plan line")]
struct Line {
    #[command(subcommand)]
    step: PlanStep,
}

/// One line of a plan, as written (names not yet resolved).
#[derive(clap::Subcommand, Debug, Clone)]
pub enum PlanStep {
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
#[derive(clap::Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["layer", "stage", "all"])))]
#[command(group(clap::ArgGroup::new("amount").required(true).args(["by", "to", "add"])))]
pub struct WidenLine {
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

/// A plan's lines: (line number, text, step).
pub type Lines = Vec<(usize, String, PlanStep)>;

/// The steps of plan `text` (`shown` names it in errors), or the first line that is not one.
pub fn parse(text: &str, shown: &str) -> Result<Lines> {
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
pub fn to_step(step: PlanStep, g: &Graph, naming: Naming) -> Result<Step> {
    match step {
        PlanStep::Deepen {
            after,
            method,
            width,
        } => super::deepen_step(g, naming, &after, &method, width),
        PlanStep::Widen(w) => super::widen_step(
            g,
            naming,
            &WidenRequest {
                layer: w.layer,
                stage: w.stage,
                all: w.all,
                by: w.by,
                to: w.to,
                add: w.add,
                method: w.method,
                init: w.init,
                noise: w.noise,
                noise_approx: None,
            },
        ),
        PlanStep::Morph { layer, kernel } => super::morph_step(g, naming, &layer, kernel),
        PlanStep::Name { name } => Ok(Step::Name(name)),
    }
}

/// `path:line: message` for a plan error.
pub fn at(plan: &str, line: usize, e: Error) -> Error {
    let hint = e.hint_text().map(String::from);
    match e {
        Error::ProofFailed { message } => Error::ProofFailed {
            message: format!("{plan}:{line}: {message}"),
        },
        e => Error::usage(format!("{plan}:{line}: {e}"), hint),
    }
}

/// Folds the plan `lines` (of file `shown`) over `teacher` (r2rc's names, from `label`) in
/// memory, moments included when given; the report lists every step and, when every step
/// is exact in every mode, proves the final student against the original teacher.
pub fn apply(
    graph: &Graph,
    teacher: &Params,
    lines: Lines,
    shown: &str,
    o: &Options,
    label: &str,
    moments: Option<Moments>,
) -> Result<Grown, Failed> {
    let mut g = graph.clone();
    let mut p = teacher.clone();
    let mut m = moments;
    let mut steps: Vec<StepReport> = Vec::new();
    let mut exact_everywhere = true;
    let located = |lineno: usize, f: Failed| Failed {
        error: at(shown, lineno, f.error),
        evidence: f.evidence,
    };
    for (k, (lineno, line, step)) in lines.into_iter().enumerate() {
        let step = to_step(step, &g, o.naming).map_err(|e| at(shown, lineno, e))?;
        let so = Options {
            seed: o.seed.wrapping_add(k as u64),
            local: false,
            ..o.clone()
        };
        let source = format!("step {} of {shown}", k + 1);
        let given = m
            .as_ref()
            .map(|m| (m as &dyn optim::MomentSource, m.avg.dtype));
        let s = super::step(&g, &p, &step, &so, &source, given).map_err(|f| located(lineno, f))?;
        let mut report = s.report;
        // The plan's report names layers once, for teacher and final student.
        report.torchvision_names = None;
        report.line = Some(line);
        exact_everywhere &= s.exact_everywhere;
        steps.push(report);
        (g, p, m) = (s.graph, s.params, s.moments);
    }
    let mut report = crate::report::plan_report(graph, &g, shown, steps, o.seed, label);
    report.name_map = composed_renames(graph, &report.steps);
    report.torchvision_names = names::report_names(&[graph, &g], o.naming);
    prove_end_to_end(
        &mut report,
        (graph, teacher),
        (&g, &p),
        o.prove.as_ref(),
        exact_everywhere,
    )?;
    Ok(Grown {
        graph: g,
        params: p,
        moments: m,
        report,
        exact_everywhere,
    })
}

/// Original layer name -> final name, for every layer the steps renamed along the way.
pub fn composed_renames(graph: &Graph, steps: &[StepReport]) -> BTreeMap<String, String> {
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
    opts: Option<&ProveOptions>,
    exact_everywhere: bool,
) -> Result<(), Failed> {
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
    if let Some(error) = crate::prove::failure(&evidence) {
        return Err(Failed { error, evidence });
    }
    report.evidence = evidence;
    Ok(())
}
