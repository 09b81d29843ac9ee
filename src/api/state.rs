//! State dicts and optimizer states as a program holds them (tensor name -> values, in a
//! naming's names: torchvision's `layer1.0.conv1.weight`, transformers' fused or transposed
//! tensors), read into r2rc's names and written back. The checks are those of reading a
//! file (missing, misshaped, extra, non-finite tensors; a wrapper prefix such as `module.`
//! read through; missing batch counters read as 0), with the tensor named as the caller
//! named it.

use std::collections::{BTreeMap, BTreeSet};

use ndarray::{ArrayD, IxDyn};

use crate::error::{Error, Result};
use crate::ir::{Graph, ParamKind};
use crate::names::{self, layout::Stored, Naming};
use crate::optim::{self, Moments, AVG, SQ, STEP};
use crate::params::{DType, Params};
use crate::shards::Variants;

/// Tensors by the caller's names.
pub type Tensors = BTreeMap<String, ArrayD<f64>>;

const HINT: &str =
    "did you pass the weights of another architecture, of another --set, or under another names=?";

/// `graph`'s weights from `tensors` (a state dict under `naming`, values held as `dtype`;
/// `shown` names it in errors, e.g. "the state dict"): r2rc's names, with what to tell the
/// user about how it was read (a stripped wrapper prefix, counters read as 0).
pub fn read(
    graph: &Graph,
    naming: Naming,
    mut tensors: Tensors,
    dtype: DType,
    shown: &str,
) -> Result<(Params, Vec<String>)> {
    let stored = names::stored(graph, naming)?;
    // A state dict under another naming (torchvision's, say, passed without `names=`)
    // is the commonest mistake: say which `names=` fits rather than the generic hint.
    let shapes = tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.shape().to_vec()))
        .collect();
    let hint = match names::suggested_naming_of(graph, &shapes, naming) {
        Some(other) => format!(
            "{shown} names its tensors the {0} way: pass names=\"{0}\"",
            other.keyword()
        ),
        None => HINT.into(),
    };
    let keys: Vec<&str> = tensors.keys().map(String::as_str).collect();
    let variants = Variants::of(&keys);
    let notes = variants.notes(shown);
    let scheme = format!("names={}", naming.keyword());
    let mut out = BTreeMap::new();
    for s in &stored {
        let key = variants.file_name(&s.name);
        let Some(t) = tensors.remove(&key) else {
            if variants.zero_counters.contains(&s.name) {
                let (ours, shape) = &s.parts[0];
                out.insert(ours.clone(), ArrayD::zeros(IxDyn(shape)));
                continue;
            }
            return Err(Error::Weights {
                message: format!(
                    "{shown} lacks tensor `{}` (expected shape {:?} under {scheme}, holding {})",
                    s.name,
                    s.shape,
                    holds(s)
                ),
                hint: Some(hint.clone()),
            });
        };
        if t.shape() != s.shape.as_slice() {
            return Err(Error::Weights {
                message: format!(
                    "tensor `{}` in {shown} has shape {:?} but the network expects {:?} under {scheme} ({})",
                    s.name,
                    t.shape(),
                    s.shape,
                    holds(s)
                ),
                hint: Some(hint.clone()),
            });
        }
        if let Some((pos, x)) = t.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(Error::Weights {
                message: format!(
                    "tensor `{}` in {shown} holds a non-finite value ({x}) at flat index {pos}",
                    s.name
                ),
                hint: Some("the weights are damaged or training diverged".into()),
            });
        }
        if s.is_plain() {
            out.insert(s.parts[0].0.clone(), t);
        } else {
            out.extend(s.split(&t));
        }
    }
    if let Some(extra) = tensors.keys().next() {
        return Err(Error::Weights {
            message: format!(
                "{shown} holds tensor `{extra}`, which has no place in network `{}` under {scheme}",
                graph.name
            ),
            hint: Some(hint.clone()),
        });
    }
    Ok((
        Params {
            tensors: out,
            dtype,
        },
        notes,
    ))
}

/// What a file tensor holds, for errors: `conv2_1.conv1.weight`, or its parts.
fn holds(s: &Stored) -> String {
    let parts: Vec<String> = s.parts.iter().map(|(n, _)| format!("`{n}`")).collect();
    format!("r2rc's {}", parts.join(", "))
}

/// `params` (r2rc's names, checked against `graph`) as a state dict under `naming`, with
/// the names of its batch counters (integers in PyTorch).
pub fn write(
    graph: &Graph,
    naming: Naming,
    params: &Params,
) -> Result<(Tensors, BTreeSet<String>)> {
    params.check(graph)?;
    let counters: BTreeSet<String> = graph
        .param_specs()
        .into_iter()
        .filter(|s| s.slot.kind == ParamKind::NumBatchesTracked)
        .map(|s| s.name)
        .collect();
    let mut out = BTreeMap::new();
    let mut theirs = BTreeSet::new();
    for s in names::stored(graph, naming)? {
        let t = if s.is_plain() {
            params.tensors[&s.parts[0].0].clone()
        } else {
            s.join(&params.tensors)?
        };
        if s.parts.len() == 1 && counters.contains(&s.parts[0].0) {
            theirs.insert(s.name.clone());
        }
        out.insert(s.name, t);
    }
    Ok((out, theirs))
}

/// Adam's state of `graph` from `tensors` (`<param>.exp_avg`, `<param>.exp_avg_sq`,
/// `<param>.step` per trainable parameter under `naming`, as the CLI's optimizer file
/// holds them), by r2rc names; refused as [`optim::State::open`] refuses a file.
pub fn read_moments(
    graph: &Graph,
    naming: Naming,
    mut tensors: Tensors,
    dtype: DType,
    shown: &str,
) -> Result<Moments> {
    let stored = optim::stored(graph, naming)?;
    let scheme = format!("names={}", naming.keyword());
    let mut m = Moments::empty(dtype);
    for s in &stored {
        let mut step = 0.0;
        for suffix in [AVG, SQ, STEP] {
            let key = format!("{}.{suffix}", s.name);
            let Some(t) = tensors.remove(&key) else {
                return Err(Error::weights(format!(
                    "{shown} lacks `{key}` (parameter `{}`, shape {:?}, under {scheme})",
                    s.name, s.shape
                )));
            };
            if let Some(want) = optim::misfit(suffix, t.shape(), &s.shape) {
                return Err(Error::weights(format!(
                    "`{key}` in {shown} has shape {:?} but should have {want}",
                    t.shape()
                )));
            }
            if suffix == SQ {
                if let Some(x) = t.iter().find(|x| **x < 0.0 || x.is_nan()) {
                    return Err(Error::weights(format!(
                        "`{key}` in {shown} holds {x}: a second moment is never negative"
                    )));
                }
            }
            match suffix {
                AVG => m.avg.tensors.extend(s.split(&t)),
                SQ => m.sq.tensors.extend(s.split(&t)),
                _ => step = t.iter().next().copied().unwrap_or(0.0),
            }
        }
        for (p, _) in &s.parts {
            m.step.insert(p.clone(), step);
        }
    }
    if let Some(extra) = tensors.keys().next() {
        return Err(Error::weights(format!(
            "{shown} holds `{extra}`, which names no trainable parameter of the network under {scheme}"
        )));
    }
    Ok(m)
}

/// The student's moments (r2rc names) as the caller holds them: `<param>.exp_avg`,
/// `<param>.exp_avg_sq` and a scalar `<param>.step` under `naming`.
pub fn write_moments(graph: &Graph, naming: Naming, m: &Moments) -> Result<Tensors> {
    let mut out = BTreeMap::new();
    for s in optim::stored(graph, naming)? {
        out.insert(format!("{}.{AVG}", s.name), s.join(&m.avg.tensors)?);
        out.insert(format!("{}.{SQ}", s.name), s.join(&m.sq.tensors)?);
        let step = m.step.get(&s.parts[0].0).copied().unwrap_or(0.0);
        out.insert(
            format!("{}.{STEP}", s.name),
            ArrayD::from_elem(IxDyn(&[]), step),
        );
    }
    Ok(out)
}
