//! Proofs of function preservation (DESIGN.md "Proofs").
//!
//! Teacher and student run on the same seeded random inputs, in each batch-norm mode, and
//! every value the two graphs share by node name is compared on the teacher's part of it:
//! the first `C` channels (and, after a flatten, the first `C*H*W` features, since new
//! channels are appended and flatten is channel-major), i.e. the leading block of every
//! axis. A value's relative error is `max |s - t|` over its scale: the largest `|t|` of it and
//! of every value it is computed from (so a value that is exactly zero by construction,
//! such as an R2DeeperR branch, is judged against the magnitudes that cancelled in it, not
//! against its own rounding noise); the proof passes when the largest over all values is
//! within the tolerance. The first value in topological order
//! that exceeds it names the layer where the networks part.
//!
//! In f32 the teacher's own rounding can exceed 1e-5 where train-mode batch norm divides by
//! the small variance of a tiny batch. An f32 proof therefore also runs the teacher in f64
//! and lets each value differ by up to [`F32_NOISE_FACTOR`] times the teacher's own f32
//! error at that value (and never less than the tolerance): the student must agree with
//! the teacher as closely as f32 arithmetic agrees with itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD, IxDyn, Slice};
use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::exec::{random_input, Executor, Float, Mode, Stepper, Tensor};
use crate::ir::{Graph, NodeIndex, Op};
use crate::params::Params;

/// Arithmetic of a proof run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    F32,
    F64,
}

crate::exec::keywords!(
    Precision,
    "proof precision",
    [("f32", Precision::F32), ("f64", Precision::F64)]
);

impl Precision {
    /// The default relative tolerance: 1e-9 in f64, 1e-5 in f32.
    pub fn tolerance(self) -> f64 {
        match self {
            Precision::F32 => 1e-5,
            Precision::F64 => 1e-9,
        }
    }
}

/// How many times the teacher's own f32 rounding error a value of an f32 proof may differ.
pub const F32_NOISE_FACTOR: f64 = 4.0;

/// How to run a proof.
#[derive(Debug, Clone)]
pub struct ProveOptions {
    pub modes: Vec<Mode>,
    pub precision: Precision,
    /// Batch size of the random input.
    pub inputs: usize,
    pub seed: u64,
    /// Relative tolerance; `None` for the precision's default.
    pub tolerance: Option<f64>,
}

impl Default for ProveOptions {
    fn default() -> Self {
        ProveOptions {
            modes: vec![Mode::Eval, Mode::Train],
            precision: Precision::F64,
            inputs: 2,
            seed: 0,
            tolerance: None,
        }
    }
}

/// The relative error that storing a computed value in `dtype` may introduce.
pub fn storage_tolerance(dtype: crate::params::DType) -> f64 {
    use crate::params::DType;
    match dtype {
        DType::F64 => 0.0,
        DType::F32 => 1e-5,
        DType::F16 | DType::BF16 => 1e-2,
    }
}

/// The one tolerance rule of every proof (widen, deepen, morph, apply, local or full, and
/// `prove`): when the weights are stored as `dtype` and the rewrite computed values that
/// `dtype` cannot hold exactly (`rounds`: replica divisions, orthogonal mixes, rescaled
/// norms; `prove` cannot know, so it assumes so), the tolerance widens to `dtype`'s
/// storage error unless the user set one. Returns the options and the note saying so.
pub fn stored_options(
    opts: &ProveOptions,
    dtype: crate::params::DType,
    rounds: bool,
    what: &str,
) -> (ProveOptions, Option<String>) {
    let mut o = opts.clone();
    let storage = storage_tolerance(dtype);
    if rounds && o.tolerance.is_none() && storage > o.precision.tolerance() {
        o.tolerance = Some(storage);
        let note = format!(
            "the weights are stored as {dtype} and {what} computes values that {dtype} cannot hold exactly, so the proof tolerance is {storage:.0e}"
        );
        return (o, Some(note));
    }
    (o, None)
}

/// The outcome of one proof run (one mode).
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    pub mode: String,
    pub dtype: String,
    pub inputs: usize,
    pub seed: u64,
    pub max_abs_err: f64,
    pub max_rel_err: f64,
    pub tolerance: f64,
    pub passed: bool,
    /// Values compared (shared by name).
    pub values: usize,
    /// The value with the largest relative error.
    pub worst: Option<String>,
    /// The first value (topological order) beyond the tolerance.
    pub first_divergence: Option<String>,
    /// f32 proofs: the largest relative error of the teacher's own f32 run against its f64
    /// run over the compared values (each value may exceed the tolerance up to
    /// [`F32_NOISE_FACTOR`] times its own such error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub f32_noise: Option<f64>,
}

impl Evidence {
    /// `eval f64 x2: max abs 0.0e0, max rel 0.0e0 (tolerance 1e-9) passed`.
    /// The errors alone, for methods that are measured rather than proved.
    pub fn measured(&self) -> String {
        format!(
            "{} {} x{} seed {}: max abs {:.3e}, max rel {:.3e}",
            self.mode, self.dtype, self.inputs, self.seed, self.max_abs_err, self.max_rel_err
        )
    }

    pub fn summary(&self) -> String {
        format!(
            "{} {} x{} seed {}: max abs {:.3e}, max rel {:.3e} (tolerance {:.0e}) {}",
            self.mode,
            self.dtype,
            self.inputs,
            self.seed,
            self.max_abs_err,
            self.max_rel_err,
            self.tolerance,
            if self.passed { "passed" } else { "FAILED" }
        ) + &self
            .f32_noise
            .map(|n| format!(" (teacher's own f32 noise {n:.1e})"))
            .unwrap_or_default()
    }
}

/// Max abs and relative error of `s` against `t` on `t`'s extent (leading block of each
/// axis), or `None` when `s` does not contain `t`'s shape.
fn compare<T: Float>(t: &ArrayViewD<T>, s: &ArrayViewD<T>, floor: f64) -> Option<(f64, f64)> {
    if t.ndim() != s.ndim() || t.shape().iter().zip(s.shape()).any(|(a, b)| a > b) {
        return None;
    }
    let (abs, scale, bad) = match (t.as_slice(), s.as_slice()) {
        (Some(tv), Some(sv)) => block_runs(t.shape(), s.shape())
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|(a, b, len)| errors(&tv[a..a + len], &sv[b..b + len]))
            .reduce(|| (0f64, 0f64, false), merge),
        _ => {
            let ts = t.shape().to_vec();
            let part = s.slice_each_axis(|ax| Slice::from(0..ts[ax.axis.index()]));
            ndarray::Zip::from(t)
                .and(&part)
                .fold((0f64, 0f64, false), |acc, a, b| {
                    merge(
                        acc,
                        errors(std::slice::from_ref(a), std::slice::from_ref(b)),
                    )
                })
        }
    };
    if bad {
        return Some((f64::INFINITY, f64::INFINITY));
    }
    let rel = if abs == 0.0 {
        0.0
    } else {
        abs / scale.max(floor).max(f64::MIN_POSITIVE)
    };
    Some((abs, rel))
}

/// Elements from which a pass over a value is split among the threads (the proof's steps
/// keep both cores busy; these passes, on the calling thread alone, left one idle).
const SPLIT: usize = 1 << 15;

/// `(max |a - b|, max |a|, whether some difference is NaN or some `b` not finite)`.
fn errors<T: Float>(a: &[T], b: &[T]) -> (f64, f64, bool) {
    if a.len() > SPLIT {
        return a
            .par_chunks(SPLIT)
            .zip(b.par_chunks(SPLIT))
            .map(|(a, b)| errors(a, b))
            .reduce(|| (0f64, 0f64, false), merge);
    }
    a.iter()
        .zip(b)
        .fold((0f64, 0f64, false), |(abs, scale, bad), (&a, &b)| {
            let (a, b) = (a.to_f64(), b.to_f64());
            let d = (a - b).abs();
            (
                abs.max(d),
                scale.max(a.abs()),
                bad | d.is_nan() | !b.is_finite(),
            )
        })
}

fn merge(x: (f64, f64, bool), y: (f64, f64, bool)) -> (f64, f64, bool) {
    (x.0.max(y.0), x.1.max(y.1), x.2 | y.2)
}

/// The contiguous runs of the leading block `ts` of a row-major array shaped `ss` (each
/// axis of `ts` no longer than `ss`'s), paired with the same elements of a row-major
/// array shaped `ts`: `(offset in ts, offset in ss, length)`. The trailing axes where the
/// shapes agree, with the last axis where they differ, make one run.
fn block_runs<'a>(
    ts: &'a [usize],
    ss: &'a [usize],
) -> impl Iterator<Item = (usize, usize, usize)> + 'a {
    let mut k = ts.len();
    while k > 0 && ts[k - 1] == ss[k - 1] {
        k -= 1;
    }
    let inner: usize = ts[k..].iter().product();
    let (lead, len) = if k == 0 {
        (0, inner)
    } else {
        (k - 1, ts[k - 1] * inner)
    };
    let stride = |sh: &[usize]| -> Vec<usize> {
        (0..lead).map(|ax| sh[ax + 1..].iter().product()).collect()
    };
    let (tstride, sstride) = (stride(ts), stride(ss));
    let count: usize = ts[..lead].iter().product();
    (0..count).map(move |mut i| {
        let (mut a, mut b) = (0, 0);
        for ax in (0..lead).rev() {
            let j = i % ts[ax];
            i /= ts[ax];
            a += j * tstride[ax];
            b += j * sstride[ax];
        }
        (a, b, len)
    })
}

/// The largest magnitude in `a` (0 for an empty array; NaN ignored), in independent lanes so
/// that it vectorises.
fn largest<T: Float>(a: &[T]) -> f64 {
    if a.len() > SPLIT {
        // `f64::max` ignores NaN as the loop below does.
        return a.par_chunks(SPLIT).map(largest).reduce(|| 0.0, f64::max);
    }
    let mut lanes = [0f64; 8];
    let chunks = a.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (m, x) in lanes.iter_mut().zip(c) {
            let v = x.to_f64().abs();
            *m = if v > *m { v } else { *m };
        }
    }
    rest.iter()
        .map(|x| x.to_f64().abs())
        .chain(lanes)
        .fold(0f64, |m, v| if v > m { v } else { m })
}

/// Per value name, the student channels holding the teacher's, in order.
type Kept = HashMap<String, Vec<usize>>;

/// A value of a run as an array view.
fn view<T: Float>(t: &Tensor<T>) -> ArrayViewD<'_, T> {
    ArrayViewD::from_shape(IxDyn(&t.shape), &t.data).expect("a value's shape fits its data")
}

/// How the teacher's values pair with the student's (by name), and which student values
/// need not be computed.
struct Pairing {
    /// Per teacher position: the student position of the value of the same name.
    student_of: Vec<Option<usize>>,
    /// Per student position: the value is computed from identical inputs by the same op
    /// with bit-identical weights as the teacher's value of that name (everything upstream
    /// of the first rewritten layer), so it equals the teacher's by construction: the
    /// student does not run it and takes the teacher's value where it reads it.
    same: Vec<bool>,
    /// Per student position: whether the teacher has a value of that name.
    shared: Vec<bool>,
    /// The teacher's value names, by position.
    names: Vec<String>,
}

impl Pairing {
    fn new<T: Float>(
        (teacher, tp, te): (&Graph, &Params, &Executor<T>),
        (student, sp, se): (&Graph, &Params, &Executor<T>),
    ) -> Pairing {
        let same = same_values(teacher, tp, student, sp);
        let spos: HashMap<&str, usize> = se.steps().enumerate().map(|(k, (_, n))| (n, k)).collect();
        let tnames: std::collections::HashSet<&str> = te.steps().map(|(_, n)| n).collect();
        Pairing {
            student_of: te.steps().map(|(_, n)| spos.get(n).copied()).collect(),
            same: se.steps().map(|(s, _)| same.contains(&s)).collect(),
            shared: se.steps().map(|(_, n)| tnames.contains(n)).collect(),
            names: te.steps().map(|(_, n)| n.to_string()).collect(),
        }
    }
}

/// The student nodes whose values equal the teacher's of the same name by construction:
/// the input, and each node with the same op and shape, bit-identical weights and inputs of
/// the same names that are themselves such nodes. (A tied head reads another layer's
/// weights, so it is always computed.)
fn same_values(
    teacher: &Graph,
    tp: &Params,
    student: &Graph,
    sp: &Params,
) -> std::collections::HashSet<NodeIndex> {
    let by_name: HashMap<&str, NodeIndex> = teacher
        .g
        .node_indices()
        .map(|n| (teacher.g[n].name.as_str(), n))
        .collect();
    let equal = |a: Option<&ArrayD<f64>>, b: Option<&ArrayD<f64>>| match (a, b) {
        (Some(a), Some(b)) => crate::params::same_bits(a, b),
        _ => false,
    };
    let mut same = std::collections::HashSet::new();
    for s in student.order() {
        let node = &student.g[s];
        let Some(&t) = by_name.get(node.name.as_str()) else {
            continue;
        };
        let tn = &teacher.g[t];
        let ok = if s == student.input || t == teacher.input {
            s == student.input && t == teacher.input
        } else {
            let (si, ti) = (student.inputs(s), teacher.inputs(t));
            tn.op == node.op
                && tn.shape == node.shape
                && !matches!(node.op, Op::TiedLinear(_))
                && si.len() == ti.len()
                && si
                    .iter()
                    .zip(&ti)
                    .all(|(&a, &b)| same.contains(&a) && student.g[a].name == teacher.g[b].name)
                && node.op.param_slots().iter().all(|slot| {
                    let n = format!("{}.{}", node.name, slot.suffix);
                    equal(tp.tensors.get(&n), sp.tensors.get(&n))
                })
        };
        if ok {
            same.insert(s);
        }
    }
    same
}

/// Every mode of `opts` in precision `T`: the executors (and the seeded input) are built
/// once for all modes.
fn run_modes<T: Float>(
    teacher: &Graph,
    tp: &Params,
    student: &Graph,
    sp: &Params,
    opts: &ProveOptions,
) -> Result<Vec<Evidence>> {
    if teacher.input_shape() != student.input_shape() {
        return Err(Error::usage(
            format!(
                "teacher and student take different inputs ({:?} and {:?})",
                teacher.input_shape(),
                student.input_shape()
            ),
            None,
        ));
    }
    let te = Executor::<T>::new(teacher, tp)?;
    let se = Executor::<T>::sharing(student, sp, &te, tp)?;
    let exact = match opts.precision {
        Precision::F32 => Some(Executor::<f64>::new(teacher, tp)?),
        Precision::F64 => None,
    };
    let x64 = random_input(teacher, opts.inputs, opts.seed);
    // Values where the student keeps the teacher's channels elsewhere than the leading
    // block (grouped, pad-shortcut and concatenated spaces widen inside).
    let kept = crate::analysis::kept_channels(teacher, student);
    let pairing = Pairing::new((teacher, tp, &te), (student, sp, &se));
    opts.modes
        .iter()
        .map(|&mode| {
            run_mode(
                &pairing,
                (&te, &se, exact.as_ref()),
                (&x64, &kept),
                mode,
                opts,
            )
        })
        .collect()
}

/// One mode: teacher and student run step by step in lockstep, each value compared as soon
/// as both networks have it and then freed (so a proof holds a few values at a time, and
/// element-wise layers reuse their input's memory). The student does not recompute what
/// equals the teacher's by construction ([`Pairing::same`]): those values count as compared
/// with no error. The verdict is folded in the teacher's order, so the first divergence is
/// the first in topological order.
fn run_mode<T: Float>(
    pair: &Pairing,
    (te, se, exact): (&Executor<T>, &Executor<T>, Option<&Executor<f64>>),
    (x64, kept): (&ArrayD<f64>, &Kept),
    mode: Mode,
    opts: &ProveOptions,
) -> Result<Evidence> {
    let x = x64.mapv(T::from_f64);
    let nt = pair.names.len();
    let tol = opts.tolerance.unwrap_or(opts.precision.tolerance());
    let mut ts = Stepper::new(te, x.clone(), mode, vec![false; nt])?;
    let mut ss = Stepper::new(se, x, mode, pair.same.clone())?;
    let mut rs = match exact {
        Some(e) => Some(Stepper::new(e, x64.clone(), mode, vec![false; nt])?),
        None => None,
    };
    // The scale of each teacher value: its largest magnitude and its inputs' scales.
    let mut scales = vec![0f64; nt];
    // Per teacher position: (max abs, relative) error once compared, and what it may be.
    let mut results: Vec<Option<(f64, f64)>> = vec![None; nt];
    let mut allowed = vec![tol; nt];
    let mut f32_noise = exact.map(|_| 0.0);
    let judge = |ti: usize, tv: &Tensor<T>, sv: &Tensor<T>, scale: f64| {
        let s = view(sv);
        let picked;
        let s = match kept.get(pair.names[ti].as_str()) {
            Some(idx) if s.ndim() >= 2 && idx.iter().all(|&i| i < s.shape()[1]) => {
                picked = s.select(ndarray::Axis(1), idx);
                picked.view()
            }
            _ => s,
        };
        compare(&view(tv), &s, scale).unwrap_or((f64::INFINITY, f64::INFINITY))
    };
    // Values one network has computed that the other has not yet (by student position).
    let mut waiting_t: HashMap<usize, (usize, Arc<Tensor<T>>)> = HashMap::new();
    let mut waiting_s: HashMap<usize, Arc<Tensor<T>>> = HashMap::new();
    while let Some((i, tv)) = ts.step()? {
        let up = te
            .step_inputs(i)
            .iter()
            .fold(0f64, |m, &j| m.max(scales[j]));
        scales[i] = largest(&tv.data).max(up);
        // The f64 teacher runs the same steps in the same order.
        let reference = match rs.as_mut() {
            Some(r) => r.step()?.map(|(_, v)| v),
            None => None,
        };
        let Some(j) = pair.student_of[i] else {
            continue;
        };
        if let Some(r) = reference {
            let own = view(&tv).mapv(|x| x.to_f64());
            let (_, noise) = compare(&view(&r), &own.view(), scales[i]).unwrap_or((0.0, 0.0));
            f32_noise = f32_noise.map(|n: f64| n.max(noise));
            allowed[i] = tol.max(F32_NOISE_FACTOR * noise);
        }
        if pair.same[j] {
            results[i] = Some((0.0, 0.0));
            ss.give(j, tv);
            continue;
        }
        if let Some(sv) = waiting_s.remove(&j) {
            results[i] = Some(judge(i, &tv, &sv, scales[i]));
            continue;
        }
        waiting_t.insert(j, (i, tv));
        // The student catches up to this value (or until it needs one the teacher has not
        // computed yet).
        while waiting_t.contains_key(&j) && ss.ready() {
            let (k, sv) = ss.step()?.expect("a ready step runs");
            if let Some((ti, tv)) = waiting_t.remove(&k) {
                results[ti] = Some(judge(ti, &tv, &sv, scales[ti]));
            } else if pair.shared[k] {
                waiting_s.insert(k, sv);
            }
        }
    }
    while !ss.done() {
        if !ss.ready() {
            return Err(Error::usage(
                "the student reads a value the teacher never computed, so the proof cannot run it",
                None,
            ));
        }
        let (k, sv) = ss.step()?.expect("a ready step runs");
        if let Some((ti, tv)) = waiting_t.remove(&k) {
            results[ti] = Some(judge(ti, &tv, &sv, scales[ti]));
        }
    }
    let mut ev = Evidence {
        mode: mode.name().into(),
        dtype: opts.precision.name().into(),
        inputs: opts.inputs,
        seed: opts.seed,
        max_abs_err: 0.0,
        max_rel_err: 0.0,
        tolerance: tol,
        passed: true,
        values: 0,
        worst: None,
        first_divergence: None,
        f32_noise,
    };
    for (i, r) in results.iter().enumerate() {
        let Some((abs, rel)) = *r else {
            continue;
        };
        ev.values += 1;
        if rel > ev.max_rel_err || ev.worst.is_none() && rel > 0.0 {
            ev.worst = Some(pair.names[i].clone());
        }
        ev.max_abs_err = ev.max_abs_err.max(abs);
        ev.max_rel_err = ev.max_rel_err.max(rel);
        // NaN counts as parting: `rel <= allowed` is false for it.
        let within = rel <= allowed[i];
        if !within && ev.first_divergence.is_none() {
            ev.first_divergence = Some(pair.names[i].clone());
        }
    }
    ev.passed = ev.first_divergence.is_none();
    if ev.values == 0 {
        return Err(Error::usage(
            "teacher and student share no layer name, so there is nothing to compare",
            None,
        ));
    }
    Ok(ev)
}

/// Runs the proof in every mode of `opts`. Errors only when the networks cannot run;
/// a failed comparison is a returned `Evidence` with `passed == false`.
pub fn check_equivalence(
    teacher: &Graph,
    tp: &Params,
    student: &Graph,
    sp: &Params,
    opts: &ProveOptions,
) -> Result<Vec<Evidence>> {
    crate::params::check_memory(student, opts.inputs, true, "the proof")?;
    match opts.precision {
        Precision::F64 => run_modes::<f64>(teacher, tp, student, sp, opts),
        Precision::F32 => run_modes::<f32>(teacher, tp, student, sp, opts),
    }
}

/// The error for a failed proof, naming where the networks part.
pub fn failure(evidence: &[Evidence]) -> Option<Error> {
    let bad = evidence.iter().find(|e| !e.passed)?;
    Some(Error::ProofFailed {
        message: format!(
            "proof failed: the student parts from the teacher at `{}` ({} mode, {}): max relative error {:.3e} exceeds the tolerance {:.0e}",
            bad.first_divergence.as_deref().unwrap_or("?"),
            bad.mode,
            bad.dtype,
            bad.max_rel_err,
            bad.tolerance
        ),
    })
}

/// A line of a report for `e`: `proof: ...` where the method must preserve the function in
/// its mode (`required`), else `deviation (not function preserving): ...`.
pub fn evidence_line(prefix: &str, e: &Evidence, required: bool) -> String {
    if required {
        format!("{prefix}proof: {}\n", e.summary())
    } else {
        format!(
            "{prefix}deviation (not function preserving): {}\n",
            e.measured()
        )
    }
}

/// Adds `r2rc.torchvision_names` (r2rc layer -> torchvision module, JSON) to a student's
/// metadata when its weights use torchvision's names.
pub fn add_names(m: &mut BTreeMap<String, String>, names: Option<&BTreeMap<String, String>>) {
    if let Some(names) = names {
        m.insert(
            "r2rc.torchvision_names".into(),
            serde_json::to_string(names).expect("a map serialises"),
        );
    }
}

/// The `__metadata__` every rewrite writes into the student's safetensors: what was done,
/// where, with which seed, and the evidence.
pub fn provenance(
    command: &str,
    method: &str,
    site: &str,
    seed: u64,
    function_preserving: bool,
    evidence: &[Evidence],
) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("r2rc.command".into(), command.to_string());
    m.insert("r2rc.method".into(), method.to_string());
    m.insert("r2rc.site".into(), site.to_string());
    m.insert("r2rc.seed".into(), seed.to_string());
    m.insert(
        "r2rc.function_preserving".into(),
        function_preserving.to_string(),
    );
    m.insert(
        "r2rc.evidence".into(),
        serde_json::to_string(evidence).expect("evidence serialises"),
    );
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    /// The contiguous-run comparison agrees with an element-by-element walk of the leading
    /// block, for blocks that differ on any axis (or none), NaN included.
    #[test]
    fn compare_by_runs_matches_the_elementwise_walk() {
        let ss = [3usize, 5, 4, 6];
        let len: usize = ss.iter().product();
        let s = ArrayD::from_shape_vec(
            IxDyn(&ss),
            (0..len).map(|i| ((i * 37) % 101) as f64 - 50.0).collect(),
        )
        .unwrap();
        for ts in [
            [3, 5, 4, 6],
            [3, 2, 4, 6],
            [2, 5, 4, 6],
            [3, 5, 4, 2],
            [1, 3, 2, 5],
            [3, 5, 0, 6],
        ] {
            let part = s.slice_each_axis(|ax| Slice::from(0..ts[ax.axis.index()]));
            let mut t = part.to_owned();
            t.iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v += (i % 7) as f64 * 0.25);
            let naive = t
                .iter()
                .zip(part.iter())
                .fold((0f64, 0f64), |(d, m), (a, b)| {
                    (d.max((a - b).abs()), m.max(a.abs()))
                });
            let want = if naive.0 == 0.0 {
                (0.0, 0.0)
            } else {
                (naive.0, naive.0 / naive.1)
            };
            assert_eq!(compare(&t.view(), &s.view(), 0.0), Some(want), "{ts:?}");
            let runs: usize = block_runs(&ts, &ss).map(|r| r.2).sum();
            assert_eq!(runs, t.len(), "{ts:?}");
        }
        let t = s
            .slice_each_axis(|ax| Slice::from(0..[3, 2, 4, 6][ax.axis.index()]))
            .to_owned();
        let mut bad = s.clone();
        let kept = bad[[2, 1, 3, 5]];
        bad[[2, 1, 3, 5]] = f64::NAN;
        assert_eq!(
            compare(&t.view(), &bad.view(), 0.0),
            Some((f64::INFINITY, f64::INFINITY))
        );
        bad[[2, 1, 3, 5]] = kept;
        bad[[2, 4, 3, 5]] = f64::NAN; // outside the teacher's block: not compared
        assert_eq!(compare(&t.view(), &bad.view(), 0.0), Some((0.0, 0.0)));
    }
}
