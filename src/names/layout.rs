//! A naming scheme as a layout: which r2rc tensors each tensor of a file holds, and how.
//!
//! Most schemes rename one tensor to one tensor. Others fuse (GPT-2's `c_attn` holds q, k
//! and v side by side; timm's `qkv` stacks them), transpose (GPT-2's Conv1D stores
//! `[in, out]`) or reshape (timm's `cls_token` is `[1, 1, D]`). A [`Stored`] tensor says all
//! of that: its parts (r2rc tensors, each transposed or not) are joined along one axis and
//! the result is reshaped to the file's shape. Reading splits a file tensor back into its
//! parts; writing joins them. Both are exact (values are only moved).

use std::collections::{BTreeMap, HashMap};

use ndarray::{ArrayD, Axis, IxDyn};

use super::Naming;
use crate::error::{Error, Result};
use crate::ir::{Graph, Node};
use crate::params::Params;
use crate::shards::Source;

/// An r2rc tensor's name and shape.
type Part = (String, Vec<usize>);

/// One tensor of a file and the r2rc tensors it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The file's name (`transformer.h.0.attn.c_attn.weight`).
    pub name: String,
    /// The file's shape.
    pub shape: Vec<usize>,
    /// r2rc tensors (`layers_1.attention.q.weight`, ...) with their shapes, joined in order.
    pub parts: Vec<Part>,
    /// Each part is a matrix stored transposed (Conv1D's `[in, out]`).
    pub transpose: bool,
    /// The axis the (transposed) parts are joined along.
    pub axis: usize,
}

impl Stored {
    /// A tensor stored as it is under another name.
    pub fn renamed(name: String, ours: &str, shape: &[usize]) -> Stored {
        Stored {
            name,
            shape: shape.to_vec(),
            parts: vec![(ours.to_string(), shape.to_vec())],
            transpose: false,
            axis: 0,
        }
    }

    /// Whether the file holds one r2rc tensor as it is (only the name differs).
    pub fn is_plain(&self) -> bool {
        self.parts.len() == 1 && !self.transpose && self.parts[0].1 == self.shape
    }

    /// A part's shape as the file holds it (transposed if so).
    fn part_shape(&self, shape: &[usize]) -> Vec<usize> {
        let mut s = shape.to_vec();
        if self.transpose {
            s.reverse();
        }
        s
    }

    /// The shape of the joined parts, before the reshape to the file's shape.
    fn joined_shape(&self) -> Vec<usize> {
        let mut s = self.part_shape(&self.parts[0].1);
        s[self.axis] = self
            .parts
            .iter()
            .map(|(_, p)| self.part_shape(p)[self.axis])
            .sum();
        s
    }

    /// The file's tensor from the r2rc tensors in `p` (which must hold every part).
    pub fn join(&self, p: &BTreeMap<String, ArrayD<f64>>) -> Result<ArrayD<f64>> {
        let mut views = Vec::with_capacity(self.parts.len());
        for (name, _) in &self.parts {
            let t = p
                .get(name)
                .ok_or_else(|| Error::weights(format!("the parameters lack tensor `{name}`")))?;
            views.push(if self.transpose { t.t() } else { t.view() });
        }
        let joined = ndarray::concatenate(Axis(self.axis), &views)
            .map_err(|e| Error::weights(format!("cannot join `{}`: {e}", self.name)))?;
        // In standard layout (as concatenate makes it), the reshape to the file's shape
        // moves nothing.
        let joined = if joined.is_standard_layout() {
            joined
        } else {
            joined.as_standard_layout().into_owned()
        };
        Ok(joined
            .into_shape_with_order(IxDyn(&self.shape))
            .expect("sizes add up"))
    }

    /// The r2rc tensors the file's tensor `t` (of shape `self.shape`) holds.
    pub fn split(&self, t: &ArrayD<f64>) -> Vec<(String, ArrayD<f64>)> {
        let t = t.as_standard_layout();
        let joined = t
            .view()
            .into_shape_with_order(IxDyn(&self.joined_shape()))
            .expect("sizes add up");
        let mut out = Vec::with_capacity(self.parts.len());
        let mut at = 0;
        for (name, shape) in &self.parts {
            let len = self.part_shape(shape)[self.axis];
            let part = joined.slice_axis(Axis(self.axis), (at..at + len).into());
            at += len;
            let part = if self.transpose { part.t() } else { part };
            out.push((name.clone(), part.as_standard_layout().into_owned()));
        }
        out
    }
}

/// Every tensor of a file in a naming scheme, in the graph's order.
#[derive(Debug, Clone)]
pub struct Layout {
    pub naming: Naming,
    /// The model class the file is a checkpoint of (`GPT2LMHeadModel`).
    pub family: &'static str,
    pub stored: Vec<Stored>,
}

impl Layout {
    /// The file's tensor names and shapes.
    pub fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.stored
            .iter()
            .map(|s| (s.name.clone(), s.shape.clone()))
            .collect()
    }

    /// `--names hf (GPT2LMHeadModel)`: how errors name the scheme.
    pub fn shown(&self) -> String {
        format!("--names {} ({})", self.naming.keyword(), self.family)
    }

    /// Checks that `src` holds exactly this layout's tensors, shaped as it says, as floats.
    pub fn check(&self, src: &Source) -> Result<()> {
        let place = &src.shown;
        for s in &self.stored {
            let Some(info) = src.tensors.get(&s.name) else {
                return Err(Error::weights(format!(
                    "{place} lacks tensor `{}` (expected shape {:?} under {}, holding {})",
                    s.name,
                    s.shape,
                    self.shown(),
                    holds(s)
                )));
            };
            if info.shape != s.shape {
                return Err(Error::weights(format!(
                    "tensor `{}` in {place} has shape {:?} but the network expects {:?} under {} ({})",
                    s.name,
                    info.shape,
                    s.shape,
                    self.shown(),
                    holds(s)
                )));
            }
            if crate::params::float_dtype(info.dtype).is_none() {
                return Err(Error::weights(format!(
                    "tensor `{}` in {place} has dtype {:?}; {} stores floats (F32, F64, F16 or BF16)",
                    s.name,
                    info.dtype,
                    self.shown()
                )));
            }
        }
        let shapes = self.shapes();
        if let Some(extra) = src.tensors.keys().find(|k| !shapes.contains_key(*k)) {
            return Err(Error::weights(format!(
                "{place} holds tensor `{extra}`, which has no place in the network under {}",
                self.shown()
            )));
        }
        Ok(())
    }

    /// Reads the r2rc tensors from `src` (checked first).
    pub fn read(&self, src: &Source) -> Result<Params> {
        self.check(src)?;
        let mut tensors = BTreeMap::new();
        for s in &self.stored {
            let t = src.decode(&s.name)?;
            src.release(&s.name);
            tensors.extend(s.split(&t));
        }
        Ok(Params {
            tensors,
            dtype: src.dtype(),
        })
    }

    /// `p` (r2rc's names, checked against the graph by the caller) under the file's names.
    pub fn write(&self, p: &Params) -> Result<Params> {
        let mut tensors = BTreeMap::new();
        let mut used = 0;
        for s in &self.stored {
            tensors.insert(s.name.clone(), s.join(&p.tensors)?);
            used += s.parts.len();
        }
        if used != p.tensors.len() {
            return Err(Error::weights(format!(
                "the parameters hold {} tensors but {} stores {used}",
                p.tensors.len(),
                self.shown()
            )));
        }
        Ok(Params {
            tensors,
            dtype: p.dtype,
        })
    }

    /// r2rc layer -> the file's module that holds its tensors (`layers_1.attention.q` ->
    /// `transformer.h.0.attn.c_attn`), for reports.
    pub fn modules(&self) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        for s in &self.stored {
            let module = s.name.rsplit_once('.').map_or(s.name.as_str(), |(m, _)| m);
            for (ours, _) in &s.parts {
                let layer = ours.rsplit_once('.').map_or(ours.as_str(), |(l, _)| l);
                map.insert(layer.to_string(), module.to_string());
            }
        }
        map
    }

    /// r2rc layer -> the file's module, when every tensor is stored plain (only renamed)
    /// and each layer's tensors share one module; otherwise the first tensor that is not.
    pub fn plain_layers(&self) -> std::result::Result<BTreeMap<String, String>, &Stored> {
        let mut map: BTreeMap<String, String> = BTreeMap::new();
        for s in &self.stored {
            let (ours, _) = &s.parts[0];
            let split = ours.rsplit_once('.').zip(s.name.rsplit_once('.'));
            let Some(((layer, a), (module, b))) = split.filter(|_| s.is_plain()) else {
                return Err(s);
            };
            if a != b || map.get(layer).is_some_and(|m| m != module) {
                return Err(s);
            }
            map.insert(layer.to_string(), module.to_string());
        }
        Ok(map)
    }
}

/// `holding layers_1.attention.q.weight, ... transposed`: what a file tensor is made of.
fn holds(s: &Stored) -> String {
    let parts: Vec<&str> = s.parts.iter().map(|(n, _)| n.as_str()).collect();
    let how = match (s.parts.len(), s.transpose) {
        (1, false) => String::new(),
        (1, true) => " transposed".into(),
        (_, false) => format!(" joined along axis {}", s.axis),
        (_, true) => format!(" transposed and joined along axis {}", s.axis),
    };
    format!("r2rc's {}{how}", parts.join(", "))
}

/// Where a scheme puts one r2rc tensor: the file tensor's name, and for a tensor joined
/// with others its place among them.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    /// Stored as a transposed matrix.
    pub transpose: bool,
    /// The axis of the join.
    pub axis: usize,
    /// Position among the joined parts, and how many there are.
    pub index: usize,
    pub of: usize,
    /// The file's shape when it is not the joined parts' (timm's `[1, 1, D]`).
    pub shape: Option<Vec<usize>>,
}

impl Target {
    /// Stored as it is under `name`.
    pub fn plain(name: String) -> Target {
        Target {
            name,
            transpose: false,
            axis: 0,
            index: 0,
            of: 1,
            shape: None,
        }
    }

    /// Part `index` of `of` joined along `axis`.
    pub fn joined(name: String, axis: usize, index: usize, of: usize) -> Target {
        Target {
            axis,
            index,
            of,
            ..Target::plain(name)
        }
    }
}

/// The layout of `graph` under `naming` from `place`, which says where each tensor goes
/// (given its node and suffix) or why the scheme has no place for it. Joined parts must
/// be all there, equally shaped, and agree on how they are joined.
pub fn build(
    graph: &Graph,
    naming: Naming,
    family: &'static str,
    place: impl Fn(&Node, &str) -> Result<Target>,
) -> Result<Layout> {
    let mut stored: Vec<Stored> = Vec::new();
    let mut targets: Vec<Target> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    let mut parts: Vec<Vec<Option<Part>>> = Vec::new();
    for spec in graph.param_specs() {
        let t = place(&graph.g[spec.node], spec.slot.suffix)?;
        let k = *at.entry(t.name.clone()).or_insert_with(|| {
            targets.push(t.clone());
            parts.push(vec![None; t.of]);
            targets.len() - 1
        });
        let first = &targets[k];
        let clash = first.of != t.of
            || first.axis != t.axis
            || first.transpose != t.transpose
            || parts[k][t.index].is_some();
        if clash {
            return Err(Error::usage(
                format!(
                    "two tensors of network `{}` would both be stored as `{}` under --names {} ({family}); the second is `{}`",
                    graph.name,
                    t.name,
                    naming.keyword(),
                    spec.name
                ),
                None,
            ));
        }
        parts[k][t.index] = Some((spec.name.clone(), spec.slot.shape.clone()));
    }
    for (t, ps) in targets.into_iter().zip(parts) {
        let missing = ps.iter().any(|p| p.is_none());
        let ps: Vec<Part> = ps.into_iter().flatten().collect();
        let uneven = ps.windows(2).any(|w| w[0].1 != w[1].1);
        if missing || uneven {
            let listed: Vec<String> = ps.iter().map(|(n, s)| format!("`{n}` {s:?}")).collect();
            return Err(Error::usage(
                format!(
                    "--names {} ({family}) stores {} equally shaped tensors in `{}`, but network `{}` gives {}",
                    naming.keyword(),
                    t.of,
                    t.name,
                    graph.name,
                    listed.join(", ")
                ),
                Some("grouped-query attention (fewer kv heads) has no fused q, k, v layout; write the weights with --names r2rc".into()),
            ));
        }
        let mut s = Stored {
            name: t.name,
            shape: Vec::new(),
            parts: ps,
            transpose: t.transpose,
            axis: t.axis,
        };
        s.shape = t.shape.unwrap_or_else(|| s.joined_shape());
        stored.push(s);
    }
    Ok(Layout {
        naming,
        family,
        stored,
    })
}

/// The 0-based layer number and the rest of the name (`attention.q`) of a node in a block
/// (`layers_1.attention.q` -> 0, `attention.q`); `None` outside blocks.
pub fn in_block(node: &Node) -> Option<(usize, &str)> {
    let b = node.block?;
    let (_, rest) = node.name.split_once('.')?;
    Some((b.checked_sub(1)?, rest))
}

/// Refuses a graph whose blocks sit in more than one row: the schemes number one stack of
/// layers (`model.layers.N`, `blocks.N`).
pub fn one_stack(graph: &Graph, naming: Naming, family: &str) -> Result<()> {
    let mut rows: Vec<&str> = Vec::new();
    for n in graph.order() {
        let node = &graph.g[n];
        if node.block.is_some() && !rows.contains(&node.row.as_str()) {
            rows.push(&node.row);
        }
    }
    if rows.len() > 1 {
        return Err(Error::usage(
            format!(
                "network `{}` has blocks in rows {}; --names {} ({family}) numbers one stack of layers",
                graph.name,
                rows.join(" and "),
                naming.keyword()
            ),
            Some("write its weights with --names r2rc".into()),
        ));
    }
    Ok(())
}

/// The refusal of a layer the scheme has no place for.
pub fn no_place(graph: &Graph, node: &Node, naming: Naming, family: &str) -> Error {
    Error::usage(
        format!(
            "layer `{}` of network `{}` has no place in --names {} ({family})",
            node.name,
            graph.name,
            naming.keyword()
        ),
        Some(format!(
            "--names {} covers {family}'s layers only; write this network's weights with --names r2rc",
            naming.keyword()
        )),
    )
}
