//! A rewrite step run whole in memory: rewrite, round to the stored dtype, prove under the
//! one tolerance rule, report. The streamed and locally proved paths ([`crate::stream`],
//! [`crate::local_proof`]) evaluate the same rewrites and judge their evidence here too
//! ([`judge`]), so a rule about proofs lives in one place.

use crate::error::{Error, Result};
use crate::ir::Graph;
use crate::params::{DType, Params};
use crate::prove::{check_equivalence, Evidence, ProveOptions};
use crate::report::{deepen_report, morph_report, widen_report, StepReport};
use crate::transform::deepen::{deepen, rename, DeepenArgs, Deepened};
use crate::transform::morph_kernel::{morph_kernel, Morphed};
use crate::transform::{Exactness, Plan, WidenArgs, Widened, Widening};

/// A widened student with its report.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub widened: Widened,
    pub report: StepReport,
}

/// What a proof is judged by: the method's title, whether its new values round in a
/// narrow dtype, and the dtype the weights are stored in.
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
    let Some(opts) = opts else {
        report.proved = false;
        return Ok(());
    };
    let (opts, note) = crate::prove::stored_options(opts, how.dtype, how.rounds, &how.title);
    report.notes.extend(note);
    let evidence = run(&opts)?;
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

/// Widens, rounds the new weights to the teacher's dtype (what will be written is what is
/// proved) and proves. `prove == None` skips the proof.
pub fn widen_proved(
    graph: &Graph,
    params: &Params,
    args: &WidenArgs,
    seed: u64,
    prove: Option<&ProveOptions>,
    teacher: &str,
) -> Result<Outcome> {
    params.check(graph)?;
    let w = Widening::new(graph, args, seed, &|n| params.tensors.contains_key(n))?;
    let mut report = widen_report(graph, &w.plan, args, seed, teacher);
    let how = widen_judged(args, &w.plan, params.dtype);
    let mut widened = w.widened(params)?;
    widened.params = widened.params.with_dtype(params.dtype);
    judge(&mut report, how, prove, |o| {
        check_equivalence(graph, params, &widened.graph, &widened.params, o)
    })?;
    Ok(Outcome { widened, report })
}

/// [`widen_proved`] with a local proof: every widened space proved on its region.
pub fn widen_local_proved(
    graph: &Graph,
    params: &Params,
    args: &WidenArgs,
    seed: u64,
    prove: &ProveOptions,
    teacher: &str,
) -> Result<Outcome> {
    params.check(graph)?;
    let w = Widening::new(graph, args, seed, &|n| params.tensors.contains_key(n))?;
    let mut report = widen_report(graph, &w.plan, args, seed, teacher);
    let mut read = |n: &str| {
        params
            .tensors
            .get(n)
            .cloned()
            .ok_or_else(|| Error::weights(format!("the weights lack tensor `{n}`")))
    };
    judge(
        &mut report,
        widen_judged(args, &w.plan, params.dtype),
        Some(prove),
        |o| crate::local_proof::prove_widening(&w, &mut read, params.dtype, o),
    )?;
    report
        .notes
        .push(crate::local_proof::widening_note(w.plan.steps.len()));
    let mut widened = w.widened(params)?;
    widened.params = widened.params.with_dtype(params.dtype);
    Ok(Outcome { widened, report })
}

/// How a widening by `args` is judged on weights stored as `dtype`.
pub fn widen_judged(args: &WidenArgs, plan: &Plan, dtype: DType) -> Judged {
    Judged {
        title: widen_title(args),
        // Net2Net divides weights by replica counts.
        rounds: plan.exact && args.method.info().rounds,
        dtype,
    }
}

/// The method's title as a deviation note names it.
pub fn widen_title(args: &WidenArgs) -> String {
    match args.noise {
        Some(s) => format!("{} with noise {s}", args.method.title()),
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

/// Deepens, rounds the student's tensors to the teacher's dtype and proves, in `prove`'s
/// modes. `prove == None` skips the proof.
pub fn deepen_proved(
    graph: &Graph,
    params: &Params,
    args: &DeepenArgs,
    seed: u64,
    prove: Option<&ProveOptions>,
    teacher: &str,
) -> Result<(Deepened, StepReport)> {
    let mut d = deepen(graph, params, args, seed)?;
    d.params = d.params.clone().with_dtype(params.dtype);
    let mut report = deepen_report(graph, &d, args, seed, teacher);
    judge(&mut report, deepen_judged(args, params.dtype), prove, |o| {
        prove_deepened(graph, params, &d, o)
    })?;
    Ok((d, report))
}

/// [`deepen_proved`] with a local proof: the inserted layers (and NetMorph-dense's readers)
/// on random values shaped like the site's.
pub fn deepen_local_proved(
    graph: &Graph,
    params: &Params,
    args: &DeepenArgs,
    seed: u64,
    prove: &ProveOptions,
    teacher: &str,
) -> Result<(Deepened, StepReport)> {
    let mut d = deepen(graph, params, args, seed)?;
    d.params = d.params.clone().with_dtype(params.dtype);
    let site = crate::transform::deepen::resolve_site(graph, &args.after)?;
    let mut report = deepen_report(graph, &d, args, seed, teacher);
    judge(
        &mut report,
        deepen_judged(args, params.dtype),
        Some(prove),
        |o| crate::local_proof::deepen::prove(graph, params, &d, &site, o),
    )?;
    report.notes.push(crate::local_proof::LOCAL_NOTE.into());
    Ok((d, report))
}

/// Proves a deepening: the teacher, renamed by the name map, against the student, value by
/// value in every mode of `opts`.
pub fn prove_deepened(
    teacher: &Graph,
    tp: &Params,
    d: &Deepened,
    opts: &ProveOptions,
) -> Result<Vec<Evidence>> {
    let mut map = d.name_map.clone();
    for m in &d.mixed {
        // Out of the comparison: the student's value is the teacher's mixed by N.
        map.insert(m.clone(), format!("{m} (before the mix)"));
    }
    let (t, p) = rename(teacher, tp, &map);
    check_equivalence(&t, &p, &d.graph, &d.params, opts)
}

/// The first evidence that a mode `d` must pass failed, as the error to exit with.
pub fn deepen_failure(d: &Deepened, evidence: &[Evidence]) -> Option<Error> {
    required_failure(d.exactness, evidence)
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

/// [`morph_proved`] with a local proof: the morphed convolution alone.
pub fn morph_local_proved(
    graph: &Graph,
    params: &Params,
    layer: &str,
    k_new: usize,
    prove: &ProveOptions,
    teacher: &str,
) -> Result<(Morphed, StepReport)> {
    let m = morph_kernel(graph, params, layer, k_new)?;
    let mut report = morph_report(graph, &m, teacher, prove.seed);
    judge(&mut report, morph_judged(params.dtype), Some(prove), |o| {
        crate::local_proof::morph::prove(graph, params, &m, o)
    })?;
    report.notes.push(crate::local_proof::LOCAL_NOTE.into());
    Ok((m, report))
}

/// Morphs and proves in `prove`'s modes (exact for any input, so every mode is required).
pub fn morph_proved(
    graph: &Graph,
    params: &Params,
    layer: &str,
    k_new: usize,
    prove: Option<&ProveOptions>,
    teacher: &str,
) -> Result<(Morphed, StepReport)> {
    let m = morph_kernel(graph, params, layer, k_new)?;
    let mut report = morph_report(graph, &m, teacher, prove.map_or(0, |o| o.seed));
    judge(&mut report, morph_judged(params.dtype), prove, |o| {
        check_equivalence(graph, params, &m.graph, &m.params, o)
    })?;
    Ok((m, report))
}
