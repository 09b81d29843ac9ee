//! A rewrite step as a value: every method, widening, deepening or morphing, *plans* a
//! [`Patch`] from the teacher graph and its arguments: the student graph, how each student
//! tensor is made (its [`Edit`], keyed by [`TensorId`]), the layer renames, the region a
//! local proof runs, and the step's report before any proof.
//!
//! Planning reads only the teacher tensors the method needs ([`Teacher::read`]): a
//! deepening the kernel it matches in scale (and NetMorph-dense its readers), a morph the
//! conv it grows, a widening nothing at all (its edits are computed later, per tensor).
//! Evaluating a patch ([`Patch::tensor`]) gives any student tensor from the teacher's
//! alone, so the in-memory pipeline, the streamed writer (file order) and local proofs
//! evaluate the same edits ([`crate::pipeline`], [`crate::stream`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::OnceLock;

use ndarray::ArrayD;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::ir::Graph;
use crate::params::{DType, Params};
use crate::pipeline::Judged;
use crate::prove::{Evidence, ProveOptions};
use crate::report::StepReport;
use crate::transform::deepen::{self, DeepenArgs, Deepened, Site};
use crate::transform::morph_kernel::{self, MorphArgs, Morphed};
use crate::transform::{apply_touches, tensor_touches, Init, Touch, WidenArgs, Widening};

/// A tensor's identity: its layer and its slot (`conv2_1.bn1` and `running_var`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TensorId {
    pub layer: String,
    pub slot: String,
}

impl TensorId {
    pub fn new(layer: &str, slot: &str) -> TensorId {
        TensorId {
            layer: layer.into(),
            slot: slot.into(),
        }
    }

    /// The id of a full tensor name (`conv2_1.bn1.running_var`): the slot is the last part.
    pub fn parse(name: &str) -> TensorId {
        let (layer, slot) = name.rsplit_once('.').unwrap_or(("", name));
        TensorId::new(layer, slot)
    }
}

impl fmt::Display for TensorId {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}.{}", self.layer, self.slot)
    }
}

/// A step of a plan: what one command asks.
#[derive(Debug, Clone)]
pub enum Step {
    Widen(WidenArgs),
    Deepen(DeepenArgs),
    Morph(MorphArgs),
    /// Rename the architecture (its `arch` line); tensors are unchanged.
    Name(String),
}

/// Where a patch reads teacher tensors (by r2rc name): weights in memory, or a
/// memory-mapped (maybe sharded) checkpoint ([`crate::stream::Mapped`]).
pub trait Teacher: Sync {
    fn dtype(&self) -> DType;
    /// Whether the teacher has this tensor (biases are optional).
    fn has(&self, id: &TensorId) -> bool;
    fn read(&self, id: &TensorId) -> Result<ArrayD<f64>>;
}

impl Teacher for Params {
    fn dtype(&self) -> DType {
        self.dtype
    }

    fn has(&self, id: &TensorId) -> bool {
        self.tensors.contains_key(&id.to_string())
    }

    fn read(&self, id: &TensorId) -> Result<ArrayD<f64>> {
        self.get(&id.to_string())
            .cloned()
            .ok_or_else(|| Error::weights(format!("the weights lack tensor `{id}`")))
    }
}

/// How a student tensor that is not a plain copy is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    /// The teacher's tensor of the same id, after the widening's steps (drawn from streams
    /// keyed by seed, step, tensor and part, so any order gives the same bits).
    Widened,
    /// Computed when the step was planned (inserted layers, NetMorph-dense's readers, a
    /// morphed kernel), already rounded to the stored dtype.
    Planned,
}

/// What the method planned, with what its local proof needs.
enum Rewrite<'a> {
    Widen(Widening<'a>),
    /// `reads`: the teacher tensors the deepening read.
    Deepen {
        d: Deepened,
        site: Site,
        reads: Params,
        args: &'a DeepenArgs,
        seed: u64,
    },
    Morph {
        m: Morphed,
        reads: Params,
        args: &'a MorphArgs,
    },
    Name,
}

/// A planned rewrite step.
pub struct Patch<'a> {
    pub teacher: &'a Graph,
    pub student: Graph,
    /// Teacher layer -> student layer, for every layer renamed.
    pub renames: BTreeMap<String, String>,
    /// Every student tensor that is not the teacher's (under its new name) unchanged.
    pub edits: BTreeMap<TensorId, Edit>,
    /// Student values that differ from the teacher's by design (NetMorph-dense's mixed
    /// channels): a proof compares their readers instead.
    pub mixed: Vec<String>,
    /// The step's report, before any proof.
    pub report: StepReport,
    /// How its proof is judged.
    pub judged: Judged,
    rewrite: Rewrite<'a>,
    /// A widening's touches of every tensor, for its moments ([`Patch::moment`]).
    moment_touches: OnceLock<HashMap<String, Vec<Touch>>>,
}

impl<'a> Patch<'a> {
    /// Plans `step` on `graph` with the teacher tensors of `teacher` (read only as the
    /// method needs); `seed` keys the new weights' draws, `label` says where the teacher
    /// came from (for the report).
    pub fn plan(
        graph: &'a Graph,
        step: &'a Step,
        seed: u64,
        teacher: &dyn Teacher,
        label: &str,
    ) -> Result<Patch<'a>> {
        let dtype = teacher.dtype();
        match step {
            Step::Widen(args) => {
                let has = |n: &str| teacher.has(&TensorId::parse(n));
                let w = Widening::new(graph, args, seed, &has)?;
                let report = crate::report::widen_report(graph, &w.plan, args, seed, label);
                let judged = crate::pipeline::widen_judged(args, &w.plan, dtype);
                let edits = graph
                    .param_specs()
                    .into_iter()
                    .filter(|s| w.touches(&s.name))
                    .map(|s| (TensorId::parse(&s.name), Edit::Widened))
                    .collect();
                Ok(Patch {
                    teacher: graph,
                    student: w.plan.student.clone(),
                    renames: BTreeMap::new(),
                    edits,
                    mixed: Vec::new(),
                    report,
                    judged,
                    rewrite: Rewrite::Widen(w),
                    moment_touches: OnceLock::new(),
                })
            }
            Step::Deepen(args) => {
                let site = deepen::resolve_site(graph, &args.after)?;
                let reads = read_all(teacher, deepen::needed_tensors(graph, &site, args.method))?;
                let mut d = deepen::deepen_partial(graph, &reads, args, seed)?;
                // Keep only what the deepening computed; the rest moves unchanged.
                let rewritten: HashSet<&String> = d.inserted.iter().chain(&d.changed).collect();
                d.params
                    .tensors
                    .retain(|n, _| rewritten.contains(&TensorId::parse(n).layer));
                d.params = d.params.with_dtype(dtype);
                let report = crate::report::deepen_report(graph, &d, args, seed, label);
                Ok(Patch {
                    teacher: graph,
                    student: d.graph.clone(),
                    renames: d.name_map.clone(),
                    edits: planned(&d.params),
                    mixed: d.mixed.clone(),
                    report,
                    judged: crate::pipeline::deepen_judged(args, dtype),
                    rewrite: Rewrite::Deepen {
                        d,
                        site,
                        reads,
                        args,
                        seed,
                    },
                    moment_touches: OnceLock::new(),
                })
            }
            Step::Morph(args) => {
                let prefix = format!("{}.", args.layer);
                let names = graph
                    .param_specs()
                    .into_iter()
                    .map(|s| s.name)
                    .filter(|n| n.starts_with(&prefix));
                let reads = read_all(teacher, names)?;
                let mut m = morph_kernel::morph_partial(graph, &reads, &args.layer, args.kernel)?;
                m.params = m.params.with_dtype(dtype);
                let report = crate::report::morph_report(graph, &m, label, seed);
                Ok(Patch {
                    teacher: graph,
                    student: m.graph.clone(),
                    renames: BTreeMap::new(),
                    edits: planned(&m.params),
                    mixed: Vec::new(),
                    report,
                    judged: crate::pipeline::morph_judged(dtype),
                    rewrite: Rewrite::Morph { m, reads, args },
                    moment_touches: OnceLock::new(),
                })
            }
            Step::Name(name) => {
                let mut student = graph.clone();
                student.name = name.clone();
                Ok(Patch {
                    teacher: graph,
                    student,
                    renames: BTreeMap::new(),
                    edits: BTreeMap::new(),
                    mixed: Vec::new(),
                    report: crate::report::name_report(graph, name, label),
                    judged: Judged {
                        title: "renaming".into(),
                        rounds: false,
                        dtype,
                    },
                    rewrite: Rewrite::Name,
                    moment_touches: OnceLock::new(),
                })
            }
        }
    }

    /// The teacher tensor a student tensor that no edit makes is a copy of.
    pub fn source_of(&self, id: &TensorId) -> TensorId {
        let old = self
            .renames
            .iter()
            .find(|(_, new)| **new == id.layer)
            .map_or(id.layer.as_str(), |(old, _)| old.as_str());
        TensorId::new(old, &id.slot)
    }

    /// Student tensor `id`, from the teacher's alone.
    pub fn tensor(&self, id: &TensorId, teacher: &dyn Teacher) -> Result<ArrayD<f64>> {
        match (self.edits.get(id), &self.rewrite) {
            (Some(Edit::Widened), Rewrite::Widen(w)) => {
                let name = id.to_string();
                w.tensor(&name, teacher.read(id)?, Widening::ALL)
            }
            (Some(_), _) => self
                .planned()
                .and_then(|p| p.get(&id.to_string()))
                .cloned()
                .ok_or_else(|| Error::weights(format!("the rewrite did not produce `{id}`"))),
            (None, _) => teacher.read(&self.source_of(id)),
        }
    }

    /// Student tensor `id` computed range by range ([`crate::transform::lazy::Lazy`]),
    /// when it is a widened tensor of R2WiderR's whose teacher values `base` gives (teacher
    /// shape `shape`; `ready` runs before `base` is read): the same bits as
    /// [`Patch::tensor`].
    pub fn lazy(
        &self,
        id: &TensorId,
        shape: &[usize],
        base: &crate::transform::lazy::Base,
        ready: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Option<crate::transform::lazy::Lazy>> {
        match (self.edits.get(id), &self.rewrite) {
            (Some(Edit::Widened), Rewrite::Widen(w)) => w.lazy(&id.to_string(), shape, base, ready),
            _ => Ok(None),
        }
    }

    /// Adam's moments (exp_avg, exp_avg_sq) of student tensor `id` from the teacher's
    /// (`m`, `v`, by teacher names), as [`crate::optim`] says: `None` for a tensor of an
    /// inserted layer (its moments start at zero). A widened tensor's moments go through
    /// the linear part `A` of its edit (the same edit with every free draw zero, no noise,
    /// and constants such as new batch-norm defaults removed): `A(m)` and `A(sqrt v)^2`;
    /// NetMorph-dense's readers get the same mix for `m` and a bound for `v`; a morphed
    /// kernel's moments are zero-padded like it; the rest move with their tensor.
    pub fn moment(
        &self,
        id: &TensorId,
        m: &dyn Teacher,
        v: &dyn Teacher,
    ) -> Result<Option<(ArrayD<f64>, ArrayD<f64>)>> {
        let from = self.source_of(id);
        match (self.edits.get(id), &self.rewrite) {
            (None, _) => Ok(Some((m.read(&from)?, v.read(&from)?))),
            (Some(Edit::Widened), Rewrite::Widen(w)) => {
                let name = id.to_string();
                let touches = self.moment_touches.get_or_init(|| {
                    tensor_touches(w.graph, &w.plan, &|_| true)
                        .into_iter()
                        .collect()
                });
                let tc = touches.get(&name).map_or(&[][..], |t| t.as_slice());
                let zero = WidenArgs {
                    init: Init::Zero,
                    noise: None,
                    ..w.args.clone()
                };
                let (mt, vt) = (m.read(id)?, v.read(id)?);
                let edit = |t| apply_touches(&w.plan, &zero, w.seed, &name, t, tc);
                // The edit's constants (new batch-norm entries at their defaults).
                let b = edit(ArrayD::zeros(mt.raw_dim()))?;
                let linear = |t| edit(t).map(|s| s - &b);
                let root = linear(vt.mapv(f64::sqrt))?;
                let plain = linear(vt)?;
                Ok(Some((linear(mt)?, crate::optim::squared(root, &plain))))
            }
            (
                Some(_),
                Rewrite::Deepen {
                    d,
                    site,
                    args,
                    seed,
                    ..
                },
            ) => {
                if d.inserted.contains(&id.layer) {
                    return Ok(None);
                }
                if id.slot != "weight" {
                    // A mixed reader's bias is its own.
                    return Ok(Some((m.read(&from)?, v.read(&from)?)));
                }
                // NetMorph-dense's readers: the deepening rerun on the moments mixes
                // exp_avg as it mixed the weights.
                let names = deepen::needed_tensors(self.teacher, site, args.method);
                let names = names.into_iter().filter(|n| m.has(&TensorId::parse(n)));
                let reads = read_all(m, names)?;
                let mixed = deepen::deepen_partial(self.teacher, &reads, args, *seed)?;
                let mt = mixed
                    .params
                    .get(&id.to_string())
                    .cloned()
                    .ok_or_else(|| Error::weights(format!("the rewrite did not mix `{id}`")))?;
                let channels = d
                    .inserted
                    .iter()
                    .find_map(|l| d.params.get(&format!("{l}.weight")))
                    .map_or(1, |w| w.shape()[0]);
                let vt = crate::optim::mixed_sq(&v.read(&from)?, channels)?;
                Ok(Some((mt, vt)))
            }
            (Some(_), Rewrite::Morph { args, .. })
                if id.layer == args.layer && id.slot == "weight" =>
            {
                // Zero taps around the kernel: the moments are zero-padded like it.
                let pad = |t: &dyn Teacher| -> Result<ArrayD<f64>> {
                    let mut reads = Params {
                        tensors: BTreeMap::new(),
                        dtype: t.dtype(),
                    };
                    reads.tensors.insert(id.to_string(), t.read(id)?);
                    let p = morph_kernel::morph_partial(
                        self.teacher,
                        &reads,
                        &args.layer,
                        args.kernel,
                    )?;
                    Ok(p.params.tensors[&id.to_string()].clone())
                };
                Ok(Some((pad(m)?, pad(v)?)))
            }
            (Some(_), _) => Ok(Some((m.read(&from)?, v.read(&from)?))),
        }
    }

    /// Every student tensor from the teacher's `params`, computed in parallel and rounded
    /// to their dtype (what will be written is what is proved).
    pub fn student_params(&self, params: &Params) -> Result<Params> {
        let specs = self.student.param_specs();
        let tensors = specs
            .into_par_iter()
            .map(|s| {
                let id = TensorId::parse(&s.name);
                let t = self.tensor(&id, params)?;
                Ok((s.name, t))
            })
            .collect::<Result<BTreeMap<_, _>>>()?;
        let p = Params {
            tensors,
            dtype: params.dtype,
        }
        .with_dtype(params.dtype);
        p.check(&self.student)?;
        Ok(p)
    }

    /// Values computed when planning (deepen, morph).
    fn planned(&self) -> Option<&Params> {
        match &self.rewrite {
            Rewrite::Deepen { d, .. } => Some(&d.params),
            Rewrite::Morph { m, .. } => Some(&m.params),
            _ => None,
        }
    }

    /// Proves teacher against student whole, value by value in every mode of `opts`.
    pub fn prove_full(
        &self,
        teacher: &Params,
        student: &Params,
        opts: &ProveOptions,
    ) -> Result<Vec<Evidence>> {
        if let Rewrite::Name = self.rewrite {
            // Nothing computed differs: there is nothing to compare.
            return Ok(Vec::new());
        }
        let renamed = (&self.renames, self.mixed.as_slice());
        prove_renamed(
            (self.teacher, teacher),
            (&self.student, student),
            renamed,
            opts,
        )
    }

    /// Proves the patch on its region only: each widened space, the inserted layers (and
    /// NetMorph-dense's readers), the morphed conv. Reads the region's teacher tensors.
    pub fn prove_local(&self, teacher: &dyn Teacher, opts: &ProveOptions) -> Result<Vec<Evidence>> {
        match &self.rewrite {
            Rewrite::Widen(w) => {
                let mut read = |n: &str| teacher.read(&TensorId::parse(n));
                crate::local_proof::prove_widening(w, &mut read, teacher.dtype(), opts)
            }
            Rewrite::Deepen { d, site, reads, .. } => {
                crate::local_proof::deepen::prove(self.teacher, reads, d, site, opts)
            }
            Rewrite::Morph { m, reads, .. } => {
                crate::local_proof::morph::prove(self.teacher, reads, m, opts)
            }
            Rewrite::Name => Ok(Vec::new()),
        }
    }

    /// Multiply-accumulates of a local and of a full proof, where they are known to differ
    /// much (a widening's regions; a deepening's or morph's region is always small).
    pub fn proof_costs(&self) -> Option<(u64, u64)> {
        match &self.rewrite {
            Rewrite::Widen(w) => Some(crate::local_proof::widening_costs(w)),
            _ => None,
        }
    }

    /// The note a local proof adds to the report.
    pub fn local_note(&self) -> String {
        match &self.rewrite {
            Rewrite::Widen(w) => crate::local_proof::widening_note(w),
            _ => crate::local_proof::LOCAL_NOTE.into(),
        }
    }

    /// Whether the step preserves the function in every mode a full proof runs, with
    /// nothing hidden from it (a plan is then proved end to end too).
    pub fn exact_everywhere(&self) -> bool {
        self.report.exactness == crate::transform::Exactness::Exact && self.mixed.is_empty()
    }
}

/// Proves `teacher` against `student` value by value in every mode of `opts`, the
/// teacher's values carrying the student's names (`renames`: teacher layer -> student
/// layer); `mixed` student values differ by design and are left out.
pub fn prove_renamed(
    (graph, tp): (&Graph, &Params),
    (student, sp): (&Graph, &Params),
    (renames, mixed): (&BTreeMap<String, String>, &[String]),
    opts: &ProveOptions,
) -> Result<Vec<Evidence>> {
    if renames.is_empty() && mixed.is_empty() {
        return crate::prove::check_equivalence(graph, tp, student, sp, opts);
    }
    let mut map = renames.clone();
    for m in mixed {
        map.insert(m.clone(), format!("{m} (before the mix)"));
    }
    let (t, p) = deepen::rename(graph, tp, &map);
    crate::prove::check_equivalence(&t, &p, student, sp, opts)
}

/// The teacher tensors `names` (r2rc names) as params.
fn read_all(teacher: &dyn Teacher, names: impl IntoIterator<Item = String>) -> Result<Params> {
    let mut tensors = BTreeMap::new();
    for n in names {
        let t = teacher.read(&TensorId::parse(&n))?;
        tensors.insert(n, t);
    }
    Ok(Params {
        tensors,
        dtype: teacher.dtype(),
    })
}

/// Every tensor of `params` as a planned edit.
fn planned(params: &Params) -> BTreeMap<TensorId, Edit> {
    params
        .tensors
        .keys()
        .map(|n| (TensorId::parse(n), Edit::Planned))
        .collect()
}
