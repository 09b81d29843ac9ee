//! Adam's optimizer state follows the weights (DESIGN.md "Norms are not channel-wise", last
//! paragraph; Shen et al. 2022, staged training).
//!
//! On disk (CLI.md "Additions"): a safetensors file with `<param>.exp_avg`,
//! `<param>.exp_avg_sq` (the parameter's shape) and `<param>.step` (a scalar, written as
//! int64) for every trainable parameter, under the weights' naming scheme (`--names`; a
//! fused tensor such as GPT-2's `c_attn` has fused moments, split and joined like the
//! weights). [`State::open`] refuses a file whose names or shapes do not match the network,
//! naming the tensor, before anything is written.
//!
//! How the moments of each student tensor are made ([`crate::patch::Patch::moment`]):
//! - a widened tensor is `S = A(T) + F`, with `A` linear in the teacher tensor (row and
//!   column copies, divisions by replica counts, means, norm scales times sqrt(s),
//!   concatenations) and `F` the free draws and constants. Its moments are `A(exp_avg)` and
//!   `A(sqrt(exp_avg_sq))^2`: an entry copied with scale `c` gets `c * exp_avg` and
//!   `c^2 * exp_avg_sq`, a new free entry gets zero ([`squared`] keeps plain copies bit
//!   for bit);
//! - tensors a step does not change, or only renames, keep their moments;
//! - an inserted layer's tensors start at zero with `step` 0, so Adam's bias correction
//!   treats them as new (the `copy` method's layer too: it is a fresh layer);
//! - NetMorph-dense's readers `W N^T`: `exp_avg N^T` (the same mix), and for
//!   `exp_avg_sq` the sum over the mixed channels ([`mixed_sq`]), an upper bound of the
//!   mixed squared gradient since every row of the orthogonal `N` has unit norm;
//! - a morphed kernel's moments are zero-padded like the kernel.
//!
//! `step` is kept for every existing tensor.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, Axis, IxDyn};

use crate::error::{Error, Result};
use crate::ir::Graph;
use crate::names::layout::Stored;
use crate::names::{self, Naming};
use crate::params::{DType, Params};
use crate::patch::{Patch, Teacher, TensorId};
use crate::shards::{Entry, Source, Writer};

/// The moments' suffixes in the file.
pub const AVG: &str = "exp_avg";
pub const SQ: &str = "exp_avg_sq";
pub const STEP: &str = "step";

/// What an optimizer entry of `shape` should have been, when it does not fit its
/// parameter's shape (`step` is a scalar, the moments have the parameter's shape).
pub fn misfit(suffix: &str, shape: &[usize], param: &[usize]) -> Option<String> {
    if suffix == STEP {
        (shape.iter().product::<usize>() != 1).then(|| "a scalar".to_string())
    } else {
        (shape != param).then(|| format!("{param:?}, the parameter's shape"))
    }
}

/// The optimizer file's name beside the weights: `optimizer.safetensors` beside
/// `model.safetensors` (`--names hf`), else `<stem>.optimizer.safetensors`.
pub fn file_name(stem: &str, naming: Naming) -> String {
    match naming {
        Naming::Hf => "optimizer.safetensors".into(),
        _ => format!("{stem}.optimizer.safetensors"),
    }
}

/// The file tensors of `graph`'s trainable parameters under `naming`, in the graph's
/// order (a fused tensor is trainable when every part is).
pub fn stored(graph: &Graph, naming: Naming) -> Result<Vec<Stored>> {
    let trainable: HashMap<String, bool> = graph
        .param_specs()
        .into_iter()
        .map(|s| (s.name, s.slot.kind.trainable()))
        .collect();
    Ok(names::stored(graph, naming)?
        .into_iter()
        .filter(|s| s.parts.iter().all(|(p, _)| trainable[p]))
        .collect())
}

/// Moments in memory, by r2rc names (trainable tensors only).
#[derive(Debug, Clone, PartialEq)]
pub struct Moments {
    pub avg: Params,
    pub sq: Params,
    pub step: BTreeMap<String, f64>,
}

impl Moments {
    /// No moments yet, held as `dtype`.
    pub fn empty(dtype: DType) -> Moments {
        let none = Params {
            tensors: BTreeMap::new(),
            dtype,
        };
        Moments {
            avg: none.clone(),
            sq: none,
            step: BTreeMap::new(),
        }
    }
}

/// Where a step reads the teacher's moments.
pub trait MomentSource: Sync {
    fn avg(&self) -> &dyn Teacher;
    fn sq(&self) -> &dyn Teacher;
    /// The `step` of r2rc tensor `name`.
    fn step(&self, name: &str) -> Result<f64>;
}

impl MomentSource for Moments {
    fn avg(&self) -> &dyn Teacher {
        &self.avg
    }
    fn sq(&self) -> &dyn Teacher {
        &self.sq
    }
    fn step(&self, name: &str) -> Result<f64> {
        self.step
            .get(name)
            .copied()
            .ok_or_else(|| Error::weights(format!("the optimizer state lacks `{name}`")))
    }
}

/// An optimizer-state file, memory-mapped and checked against a network.
pub struct State {
    pub src: Source,
    pub naming: Naming,
    stored: Vec<Stored>,
    /// r2rc tensor -> (index into `stored`, part).
    parts: HashMap<String, (usize, usize)>,
}

impl State {
    /// Opens `path` as the optimizer state of `graph` under `naming`: every trainable
    /// parameter's `exp_avg` and `exp_avg_sq` at its shape, `exp_avg_sq` non-negative,
    /// a scalar `step`, and nothing else; else refused, naming the tensor.
    pub fn open(path: &Path, graph: &Graph, naming: Naming) -> Result<State> {
        let src = Source::open(path)?;
        let stored = stored(graph, naming)?;
        let place = &src.shown;
        let scheme = format!("--names {}", naming.keyword());
        let mut expected = HashMap::new();
        for s in &stored {
            for suffix in [AVG, SQ] {
                expected.insert(format!("{}.{suffix}", s.name), s.shape.clone());
            }
            expected.insert(format!("{}.{STEP}", s.name), Vec::new());
        }
        let extra = src.tensors.keys().find(|k| !expected.contains_key(*k));
        for s in &stored {
            for suffix in [AVG, SQ, STEP] {
                let key = format!("{}.{suffix}", s.name);
                let Some(info) = src.tensors.get(&key) else {
                    let hint = extra.map(|e| {
                        format!(
                            "it holds `{e}`, which names no trainable parameter under {scheme}: give the --names the state was written under"
                        )
                    });
                    return Err(Error::Weights {
                        message: format!(
                            "the optimizer state {place} lacks `{key}` (parameter `{}`, shape {:?}, under {scheme})",
                            s.name, s.shape
                        ),
                        hint,
                    });
                };
                if let Some(want) = misfit(suffix, &info.shape, &s.shape) {
                    return Err(Error::weights(format!(
                        "`{key}` in the optimizer state {place} has shape {:?} but should have {want}",
                        info.shape
                    )));
                }
            }
        }
        if let Some(e) = extra {
            return Err(Error::weights(format!(
                "the optimizer state {place} holds `{e}`, which names no trainable parameter of the network under {scheme}"
            )));
        }
        for s in &stored {
            let key = format!("{}.{SQ}", s.name);
            let t = src.decode(&key)?;
            src.release(&key);
            if let Some(x) = t.iter().find(|x| **x < 0.0) {
                return Err(Error::weights(format!(
                    "`{key}` in the optimizer state {place} holds {x}: a second moment is never negative"
                )));
            }
        }
        let parts = names::part_index(&stored);
        Ok(State {
            src,
            naming,
            stored,
            parts,
        })
    }

    /// The dtype of the moments (the file's most common float dtype).
    pub fn dtype(&self) -> DType {
        self.src.dtype()
    }

    fn stored_of(&self, name: &str) -> Result<(&Stored, usize)> {
        let &(i, k) = self.parts.get(name).ok_or_else(|| {
            Error::weights(format!(
                "`{name}` is not a trainable parameter: it has no moments"
            ))
        })?;
        Ok((&self.stored[i], k))
    }

    /// Moment `suffix` of r2rc tensor `name`.
    fn read(&self, name: &str, suffix: &str) -> Result<ArrayD<f64>> {
        let (s, k) = self.stored_of(name)?;
        let key = format!("{}.{suffix}", s.name);
        let t = self.src.decode(&key)?;
        self.src.release(&key);
        Ok(s.split(&t).swap_remove(k).1)
    }

    /// Every moment in memory, by r2rc names.
    pub fn load(&self) -> Result<Moments> {
        let dtype = self.dtype();
        let mut m = Moments::empty(dtype);
        for s in &self.stored {
            for (suffix, p) in [(AVG, &mut m.avg), (SQ, &mut m.sq)] {
                let key = format!("{}.{suffix}", s.name);
                let t = self.src.decode(&key)?;
                self.src.release(&key);
                p.tensors.extend(s.split(&t));
            }
            let step = self.step_of(s)?;
            for (p, _) in &s.parts {
                m.step.insert(p.clone(), step);
            }
        }
        Ok(m)
    }

    fn step_of(&self, s: &Stored) -> Result<f64> {
        let t = self.src.decode(&format!("{}.{STEP}", s.name))?;
        Ok(t.iter().next().copied().unwrap_or(0.0))
    }
}

/// A [`State`]'s exp_avg or exp_avg_sq as a teacher (r2rc names).
struct View<'a> {
    state: &'a State,
    suffix: &'static str,
}

impl Teacher for View<'_> {
    fn dtype(&self) -> DType {
        self.state.dtype()
    }
    fn has(&self, id: &TensorId) -> bool {
        self.state.parts.contains_key(&id.to_string())
    }
    fn read(&self, id: &TensorId) -> Result<ArrayD<f64>> {
        self.state.read(&id.to_string(), self.suffix)
    }
}

/// A [`State`] read tensor by tensor.
pub struct Mapped<'a> {
    state: &'a State,
    avg: View<'a>,
    sq: View<'a>,
}

impl<'a> Mapped<'a> {
    pub fn new(state: &'a State) -> Mapped<'a> {
        Mapped {
            state,
            avg: View { state, suffix: AVG },
            sq: View { state, suffix: SQ },
        }
    }
}

impl MomentSource for Mapped<'_> {
    fn avg(&self) -> &dyn Teacher {
        &self.avg
    }
    fn sq(&self) -> &dyn Teacher {
        &self.sq
    }
    fn step(&self, name: &str) -> Result<f64> {
        let (s, _) = self.state.stored_of(name)?;
        self.state.step_of(s)
    }
}

/// `root^2` (a widened `sqrt(exp_avg_sq)`) where it is not, to rounding, `plain` (the
/// same edit of `exp_avg_sq` itself): where they agree the entry is a plain copy (scale
/// 1) and `plain` keeps its bits, which squaring a square root need not.
pub fn squared(root: ArrayD<f64>, plain: &ArrayD<f64>) -> ArrayD<f64> {
    let mut out = root;
    ndarray::Zip::from(&mut out).and(plain).for_each(|r, &p| {
        let sq = *r * *r;
        *r = if (sq - p).abs() <= 1e-12 * p.abs().max(sq) {
            p
        } else {
            sq
        };
    });
    out
}

/// NetMorph-dense's bound for a reader's `exp_avg_sq` `v` (`[O, C * cols, ...]`) once its
/// weights are mixed by the orthogonal `N` over `channels` channels: every column of a
/// channel gets the sum of `v` over the channels at the same place (Cauchy-Schwarz:
/// `(sum_j N_ij g_j)^2 <= sum_j g_j^2` for a unit row of `N`).
pub fn mixed_sq(v: &ArrayD<f64>, channels: usize) -> Result<ArrayD<f64>> {
    let shape = v.shape().to_vec();
    let o = shape[0];
    let rest = v.len() / o.max(1) / channels.max(1);
    let v3 = v
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((o, channels, rest))
        .map_err(|e| Error::weights(format!("cannot mix the second moment: {e}")))?;
    let sum = v3.sum_axis(Axis(1)).insert_axis(Axis(1));
    let full = sum
        .broadcast((o, channels, rest))
        .expect("one channel broadcasts")
        .to_owned();
    Ok(full
        .into_shape_with_order(IxDyn(&shape))
        .expect("same size"))
}

/// The student's moments of r2rc tensor `name` (shape `shape`) with its `step`.
pub fn student_tensor(
    patch: &Patch,
    src: &dyn MomentSource,
    name: &str,
    shape: &[usize],
) -> Result<(ArrayD<f64>, ArrayD<f64>, f64)> {
    let id = TensorId::parse(name);
    Ok(match patch.moment(&id, src.avg(), src.sq())? {
        None => (
            ArrayD::zeros(IxDyn(shape)),
            ArrayD::zeros(IxDyn(shape)),
            0.0,
        ),
        Some((m, v)) => {
            let step = src.step(&patch.source_of(&id).to_string())?;
            (m, v, step)
        }
    })
}

/// The student's moments in memory, rounded to `dtype`.
pub fn student_moments(patch: &Patch, src: &dyn MomentSource, dtype: DType) -> Result<Moments> {
    let mut out = Moments::empty(dtype);
    for s in patch.student.param_specs() {
        if !s.slot.kind.trainable() {
            continue;
        }
        let (m, v, step) = student_tensor(patch, src, &s.name, &s.slot.shape)?;
        out.avg
            .tensors
            .insert(s.name.clone(), m.mapv(|x| dtype.round(x)));
        out.sq
            .tensors
            .insert(s.name.clone(), v.mapv(|x| dtype.round(x)));
        out.step.insert(s.name, step);
    }
    Ok(out)
}

/// The file's entries for `stored`: exp_avg, exp_avg_sq and step (int64) of each.
fn entries(stored: &[Stored]) -> Vec<Entry> {
    let mut out = Vec::new();
    for s in stored {
        for suffix in [AVG, SQ] {
            out.push(Entry {
                name: format!("{}.{suffix}", s.name),
                shape: s.shape.clone(),
                counter: false,
            });
        }
        out.push(Entry {
            name: format!("{}.{STEP}", s.name),
            shape: Vec::new(),
            counter: true,
        });
    }
    out
}

/// Writes the optimizer state of `student` at `path` under `naming` in `dtype`, tensor by
/// tensor: `tensor(name, shape)` gives each r2rc tensor's moments and step.
pub fn write(
    student: &Graph,
    naming: Naming,
    dtype: DType,
    path: &Path,
    mut tensor: impl FnMut(&str, &[usize]) -> Result<(ArrayD<f64>, ArrayD<f64>, f64)>,
) -> Result<PathBuf> {
    let stored = stored(student, naming)?;
    let mut writer = Writer::create(path, &entries(&stored), dtype, None, None, 0)?;
    for s in &stored {
        let (mut avg, mut sq) = (BTreeMap::new(), BTreeMap::new());
        let mut step = 0.0;
        for (p, shape) in &s.parts {
            let (m, v, k) = tensor(p, shape)?;
            avg.insert(p.clone(), m);
            sq.insert(p.clone(), v);
            step = k;
        }
        for (suffix, parts) in [(AVG, &avg), (SQ, &sq)] {
            let t = s.join(parts)?;
            writer.write_values(&format!("{}.{suffix}", s.name), &t)?;
        }
        let step = ArrayD::from_elem(IxDyn(&[]), step);
        writer.write_values(&format!("{}.{STEP}", s.name), &step)?;
    }
    let mut files = writer.finish()?;
    Ok(files.swap_remove(0))
}

/// Writes in-memory `moments` (r2rc names) of `student` at `path`.
pub fn save(moments: &Moments, student: &Graph, naming: Naming, path: &Path) -> Result<PathBuf> {
    write(student, naming, moments.avg.dtype, path, |name, _| {
        Ok((
            moments.avg.read(&TensorId::parse(name))?,
            moments.sq.read(&TensorId::parse(name))?,
            moments.step(name)?,
        ))
    })
}

/// Writes the student's moments of `patch` at `path`, tensor by tensor, from the
/// teacher's `state` (memory-mapped).
pub fn write_streamed(
    patch: &Patch,
    state: &State,
    path: &Path,
    naming: Naming,
) -> Result<PathBuf> {
    let src = Mapped::new(state);
    let dtype = state.dtype();
    write(&patch.student, naming, dtype, path, |name, shape| {
        student_tensor(patch, &src, name, shape)
    })
}
