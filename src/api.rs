//! Growing a network in memory, as a program does it: the steps a caller asks for by
//! their words (`widen` with a layer and an amount, `deepen` after a block, `morph` a
//! kernel, a plan's lines), run on weights and optimizer state held in memory, giving the
//! student, its weights, its moments and the report. The CLI's in-memory runs and the
//! Python package (crates/r2rc-py) both go through here, so a student is the same bits
//! whichever asked for it.
//!
//! The parts: this file turns requests into [`Step`]s and runs one ([`step`]);
//! `plan.rs` reads and folds plans ([`plan::apply`]); `state.rs` reads and writes state
//! dicts and optimizer states under a naming ([`state`]).

pub mod plan;
pub mod state;

use crate::error::{Error, Result};
use crate::ir::Graph;
use crate::names::{self, Naming};
use crate::optim::{self, MomentSource, Moments};
use crate::params::{DType, Params};
use crate::patch::{Patch, Step};
use crate::pipeline::{self, Proof};
use crate::prove::{Evidence, Precision, ProveOptions};
use crate::report::StepReport;
use crate::transform::deepen::{DeepenArgs, DeepenMethod};
use crate::transform::morph_kernel::MorphArgs;
use crate::transform::{Amount, Init, Method, Noise, Target, WidenArgs};

/// A widening as its words give it (`--layer`/`--stage`/`--all`, `--by`/`--to`/`--add`,
/// `--method`, `--init`, `--noise`, `--noise-approx`); layer names may be the weights'
/// (`layer2.0.conv1`).
#[derive(Debug, Clone)]
pub struct WidenRequest {
    pub layer: Option<String>,
    pub stage: Option<String>,
    pub all: bool,
    pub by: Option<f64>,
    pub to: Option<usize>,
    pub add: Option<usize>,
    pub method: String,
    pub init: String,
    pub noise: Option<f64>,
    pub noise_approx: Option<f64>,
}

impl Default for WidenRequest {
    fn default() -> WidenRequest {
        WidenRequest {
            layer: None,
            stage: None,
            all: false,
            by: None,
            to: None,
            add: None,
            method: "r2r".into(),
            init: "match".into(),
            noise: None,
            noise_approx: None,
        }
    }
}

/// The widening `req` asks for, with layer names of the weights' scheme resolved against
/// `graph` under `naming`. Exactly one target and one amount (the CLI's clap groups say so
/// there; a program gets the same rule as a refusal).
pub fn widen_step(graph: &Graph, naming: Naming, req: &WidenRequest) -> Result<Step> {
    let amounts = [req.by.is_some(), req.to.is_some(), req.add.is_some()];
    if amounts.iter().filter(|&&a| a).count() != 1 {
        return Err(Error::usage(
            "widen needs exactly one amount: by (a factor), to (a width) or add (channels)",
            Some("for example by=1.5, to=64 or add=8".into()),
        ));
    }
    let targets = [req.layer.is_some(), req.stage.is_some(), req.all];
    if targets.iter().filter(|&&t| t).count() != 1 {
        return Err(Error::usage(
            "widen needs exactly one target: a layer, a stage, or all",
            Some("for example layer=\"conv2_1\", stage=\"conv3_x\" or all=True".into()),
        ));
    }
    if req.noise.is_some() && req.noise_approx.is_some() {
        return Err(Error::usage(
            "noise and noise_approx cannot be used together",
            Some("noise keeps the student exact (cancelling noise); noise_approx is Net2WiderNet's independent noise".into()),
        ));
    }
    let ours = |n: &str| names::target_to_r2rc(graph, naming, n);
    let amount = match (req.by, req.to, req.add) {
        (Some(f), _, _) => Amount::By(f),
        (_, Some(c), _) => Amount::To(c),
        (_, _, Some(e)) => Amount::Add(e),
        _ => unreachable!("one amount was checked above"),
    };
    let target = match (&req.layer, &req.stage) {
        (Some(n), _) => Target::Name(ours(n)?),
        (_, Some(n)) => Target::Stage(ours(n)?),
        _ => Target::All,
    };
    Ok(Step::Widen(WidenArgs {
        target,
        amount,
        method: Method::parse(&req.method)?,
        init: Init::parse(&req.init)?,
        noise: req
            .noise_approx
            .map(Noise::Approx)
            .or(req.noise.map(Noise::Cancelling)),
    }))
}

/// A deepening after `after` (a block, row, or the weights' module name such as
/// `layer3.1` or `model.layers.5`).
pub fn deepen_step(
    graph: &Graph,
    naming: Naming,
    after: &str,
    method: &str,
    width: Option<usize>,
) -> Result<Step> {
    Ok(Step::Deepen(DeepenArgs {
        after: names::target_to_r2rc(graph, naming, after)?,
        method: DeepenMethod::parse(method)?,
        width,
    }))
}

/// A kernel morph of convolution `layer` (r2rc's name or the weights') to `kernel`.
pub fn morph_step(graph: &Graph, naming: Naming, layer: &str, kernel: usize) -> Result<Step> {
    Ok(Step::Morph(MorphArgs {
        layer: names::target_to_r2rc(graph, naming, layer)?,
        kernel,
    }))
}

/// The proof's options from the CLI's words (`--dtype`, `--inputs`, `--seed`,
/// `--no-prove`): `None` when not proving.
pub fn prove_options(
    dtype: &str,
    inputs: usize,
    seed: u64,
    prove: bool,
) -> Result<Option<ProveOptions>> {
    if inputs == 0 {
        return Err(Error::usage("--inputs must be at least 1", None));
    }
    let opts = ProveOptions {
        precision: Precision::parse(dtype)?,
        inputs,
        seed,
        ..ProveOptions::default()
    };
    Ok(prove.then_some(opts))
}

/// How a step runs: the weights' naming (for targets and the report's names), the seed of
/// new weights, and the proof.
#[derive(Debug, Clone)]
pub struct Options {
    pub naming: Naming,
    pub seed: u64,
    /// `None`: not proved.
    pub prove: Option<ProveOptions>,
    /// Prove only the rewritten region ([`Patch::prove_local`]).
    pub local: bool,
}

/// A student in memory: its network, weights (r2rc's names), moments when the teacher's
/// were given, and report.
#[derive(Debug, Clone)]
pub struct Grown {
    pub graph: Graph,
    pub params: Params,
    pub moments: Option<Moments>,
    pub report: StepReport,
    /// Exact in every mode with no value hidden from the proof ([`Patch::exact_everywhere`]).
    pub exact_everywhere: bool,
}

/// A step or plan that failed, with the proof's evidence when the proof is what failed
/// (empty otherwise): a program shows where the networks part.
#[derive(Debug)]
pub struct Failed {
    pub error: Error,
    pub evidence: Vec<Evidence>,
}

impl From<Error> for Failed {
    fn from(error: Error) -> Failed {
        Failed {
            error,
            evidence: Vec::new(),
        }
    }
}

impl From<Failed> for Error {
    fn from(f: Failed) -> Error {
        f.error
    }
}

/// The teacher's moments and the dtype the student's are held in.
pub type MomentsIn<'a> = Option<(&'a dyn MomentSource, DType)>;

/// Runs `step` on `teacher` (r2rc's names; `source` says where it came from, for the
/// report) in memory as [`pipeline::run`] does, and maps the moments when given: the same
/// patch plans the student's weights and its moments.
pub fn step(
    graph: &Graph,
    teacher: &Params,
    step: &Step,
    o: &Options,
    source: &str,
    moments: MomentsIn,
) -> Result<Grown, Failed> {
    teacher.check(graph)?;
    let t = std::time::Instant::now();
    let patch = Patch::plan(graph, step, o.seed, teacher, source)?;
    let student = patch.student_params(teacher)?;
    let transform = crate::report::Timings::since(t);
    let (proof, note) = pipeline::cheaper_proof(&patch, Proof::new(o.prove.as_ref(), o.local));
    // The evidence is kept aside so that a failed proof can hand it over.
    let mut seen = Vec::new();
    let judged = pipeline::judge_patch(&patch, proof, |opts| {
        let ev = match proof {
            Proof::Local(_) => patch.prove_local(teacher, opts),
            _ => patch.prove_full(teacher, &student, opts),
        }?;
        seen = ev.clone();
        Ok(ev)
    });
    let mut report = judged.map_err(|error| Failed {
        error,
        evidence: seen.clone(),
    })?;
    report.notes.extend(note);
    report.torchvision_names = names::report_names(&[graph, &patch.student], o.naming);
    report.timings.transform = transform;
    let moments = match moments {
        Some((src, dtype)) => Some(optim::student_moments(&patch, src, dtype)?),
        None => None,
    };
    Ok(Grown {
        exact_everywhere: patch.exact_everywhere(),
        graph: patch.student,
        params: student,
        moments,
        report,
    })
}

/// Compiles architecture text (`shown` names it in the rendered diagnostic, with its
/// line, column and caret) with parameters `sets` (`r` = `3/16`).
pub fn compile(src: &str, shown: &str, sets: &[(String, String)], color: bool) -> Result<Graph> {
    crate::lower::compile(src, sets)
        .map_err(|e| Error::Rendered(crate::error::render(&e, shown, src, color)))
}

/// Names the student `name` (its `arch` line; `--name`): a letter then letters, digits or
/// `_`.
pub fn set_name(graph: &mut Graph, name: &str) -> Result<()> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(Error::usage(
            format!("--name {name}: an architecture name is a letter then letters, digits or `_`"),
            Some("for example --name ResNetCifar18 or --name resnet_cifar18".into()),
        ));
    }
    graph.name = name.to_string();
    Ok(())
}
