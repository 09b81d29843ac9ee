//! One pipeline for every rewrite step: plan a [`Patch`], evaluate its edits, prove (the
//! whole networks, the patch's region, or not at all) under the one tolerance rule, and
//! report. [`run`] does it in memory; [`crate::stream::step`] evaluates the same patch
//! tensor by tensor in file order and judges its evidence here too ([`judge`]), so a rule
//! about proofs lives in one place. A plan (`apply`) is a fold of steps.

use crate::error::{Error, Result};
use crate::ir::Graph;
use crate::params::{DType, Params};
use crate::patch::{Patch, Step};
use crate::prove::{Evidence, ProveOptions};
use crate::report::StepReport;
use crate::transform::deepen::DeepenArgs;
use crate::transform::{Exactness, Plan, WidenArgs};

/// How a step is proved.
#[derive(Debug, Clone, Copy)]
pub enum Proof<'a> {
    /// Not at all (`--no-prove`).
    None,
    /// Teacher and student run whole, value by value.
    Full(&'a ProveOptions),
    /// Only the patch's region ([`Patch::prove_local`]).
    Local(&'a ProveOptions),
}

impl<'a> Proof<'a> {
    /// `opts` (`None`: no proof), run whole or on the region.
    pub fn new(opts: Option<&'a ProveOptions>, local: bool) -> Proof<'a> {
        match (opts, local) {
            (None, _) => Proof::None,
            (Some(o), false) => Proof::Full(o),
            (Some(o), true) => Proof::Local(o),
        }
    }

    pub fn options(self) -> Option<&'a ProveOptions> {
        match self {
            Proof::None => None,
            Proof::Full(o) | Proof::Local(o) => Some(o),
        }
    }
}

/// A step's student in memory, with its report.
#[derive(Debug, Clone)]
pub struct Stepped {
    pub graph: Graph,
    pub params: Params,
    pub report: StepReport,
    /// Exact in every mode with no value hidden from the proof ([`Patch::exact_everywhere`]).
    pub exact_everywhere: bool,
}

/// Runs `step` whole in memory: plans the patch, evaluates every student tensor (rounded
/// to the teacher's dtype: what will be written is what is proved), proves as `proof` says
/// and judges the evidence.
pub fn run(
    graph: &Graph,
    params: &Params,
    step: &Step,
    seed: u64,
    proof: Proof,
    teacher: &str,
) -> Result<Stepped> {
    params.check(graph)?;
    let t = std::time::Instant::now();
    let patch = Patch::plan(graph, step, seed, params, teacher)?;
    let student = patch.student_params(params)?;
    let transform = crate::report::Timings::since(t);
    let mut report = judge_patch(&patch, proof, |o| match proof {
        Proof::Local(_) => patch.prove_local(params, o),
        _ => patch.prove_full(params, &student, o),
    })?;
    report.timings.transform = transform;
    Ok(Stepped {
        exact_everywhere: patch.exact_everywhere(),
        graph: patch.student,
        params: student,
        report,
    })
}

/// The proof the CLI and Python API run: a local proof whose regions cost more
/// multiply-accumulates than teacher and student whole runs as a full proof instead (more
/// evidence for less work), with a note saying so, where both networks fit in memory
/// ([`crate::params::check_memory`]; a streamed rewrite then loads them for the proof
/// only, and proves locally otherwise).
pub fn cheaper_proof<'a>(patch: &Patch, proof: Proof<'a>) -> (Proof<'a>, Option<String>) {
    let fits = |o: &ProveOptions| {
        [patch.teacher, &patch.student]
            .iter()
            .all(|g| crate::params::check_memory(g, o.inputs, false, "").is_ok())
    };
    match (proof, patch.proof_costs()) {
        (Proof::Local(o), Some((local, full))) if local > full && fits(o) => (
            Proof::Full(o),
            Some(format!(
                "proved in full rather than locally: the local proof's regions overlap, so running them costs {} multiply-accumulates per input and mode against {} for teacher and student whole",
                crate::stats::thousands(local),
                crate::stats::thousands(full)
            )),
        ),
        _ => (proof, None),
    }
}

/// The report of `patch` judged on the evidence `run` gives in `proof`'s modes, with the
/// local proof's note.
pub fn judge_patch(
    patch: &Patch,
    proof: Proof,
    run: impl FnOnce(&ProveOptions) -> Result<Vec<Evidence>>,
) -> Result<StepReport> {
    let mut report = patch.report.clone();
    judge(&mut report, patch.judged.clone(), proof.options(), run)?;
    if let Proof::Local(_) = proof {
        report.notes.push(patch.local_note());
    }
    Ok(report)
}

/// What a proof is judged by: the method's title, whether its new values round in a
/// narrow dtype, and the dtype the weights are stored in.
#[derive(Debug, Clone)]
pub struct Judged {
    pub title: String,
    pub rounds: bool,
    pub dtype: DType,
}

/// Proves with `run` in `opts`' modes (the whole networks or a region) under the one
/// tolerance rule ([`crate::prove::stored_options`]) and records the evidence in `report`:
/// a mode the report's exactness requires that fails is an [`Error::ProofFailed`]; any
/// other mode is measured and its deviation noted. `opts == None` records no proof.
pub fn judge(
    report: &mut StepReport,
    how: Judged,
    opts: Option<&ProveOptions>,
    run: impl FnOnce(&ProveOptions) -> Result<Vec<Evidence>>,
) -> Result<()> {
    report.rounds = how.rounds;
    let Some(opts) = opts else {
        report.proved = false;
        return Ok(());
    };
    let (opts, note) = crate::prove::stored_options(opts, how.dtype, how.rounds, &how.title);
    report.notes.extend(note);
    let t = std::time::Instant::now();
    let evidence = run(&opts)?;
    report.timings.prove = crate::report::Timings::since(t);
    if let Some(e) = required_failure(report.exactness, &evidence) {
        return Err(e);
    }
    let free: Vec<&Evidence> = evidence.iter().filter(|e| !report.required(e)).collect();
    if report.exactness == Exactness::NotPreserving && !free.is_empty() {
        let dev = free.iter().map(|e| e.max_rel_err).fold(0.0, f64::max);
        report.notes.push(format!(
            "{} is not function preserving: the student deviates from the teacher by up to {dev:.3e} (relative)",
            how.title
        ));
    } else {
        for e in free {
            report.notes.push(format!(
                "{} is not function preserving in {} mode: the student deviates from the teacher by up to {:.3e} (relative)",
                how.title, e.mode, e.max_rel_err
            ));
        }
    }
    report.proved = report.exactness != Exactness::NotPreserving;
    report.evidence = evidence;
    Ok(())
}

/// How a widening by `args` is judged on weights stored as `dtype`.
pub fn widen_judged(args: &WidenArgs, plan: &Plan, dtype: DType) -> Judged {
    Judged {
        title: widen_title(args),
        // Net2Net divides weights by replica counts (and adds cancelling noise to them);
        // norm-aware fills rescale and average.
        rounds: plan.exact && plan.rounds,
        dtype,
    }
}

/// The method's title as a deviation note names it.
pub fn widen_title(args: &WidenArgs) -> String {
    match args.noise {
        Some(n) => format!("{} with {}", args.method.title(), n.title()),
        None => args.method.title().to_string(),
    }
}

/// How a deepening by `args` is judged on weights stored as `dtype`.
pub fn deepen_judged(args: &DeepenArgs, dtype: DType) -> Judged {
    Judged {
        title: args.method.title().to_string(),
        // Orthogonal mixes and sqrt(1 + eps) are not exact in a narrow dtype.
        rounds: args.method.info().rounds,
        dtype,
    }
}

/// The first evidence of a mode that `exactness` requires to pass that failed.
pub fn required_failure(exactness: Exactness, evidence: &[Evidence]) -> Option<Error> {
    let required: Vec<Evidence> = evidence
        .iter()
        .filter(|e| crate::report::required(exactness, e))
        .cloned()
        .collect();
    crate::prove::failure(&required)
}

/// How a kernel morph is judged: exact for any input, and zero padding rounds nothing.
pub fn morph_judged(dtype: DType) -> Judged {
    Judged {
        title: "the kernel morph".to_string(),
        rounds: false,
        dtype,
    }
}
