//! Deepening a transformer: a new layer after block `layers_N`, shaped like it (the same
//! sublayers, heads, kv heads, RoPE, masking, MLP width and gating, bias and norm), which
//! becomes `layers_{N+1}`; later layers move up (the engine in `mod.rs` renumbers them).
//!
//! A pre-norm sublayer computes `x + F(Norm(x))`, so the new layer is the identity exactly
//! when every sublayer's output `F` is zero: its output projection (attention `o`, MLP
//! `down` or `fc2`) cancels. How each method gets there ([`Fill`]):
//!
//! - R2DeeperR: query heads in pairs with equal q rows whose kv heads have equal k and v rows
//!   (heads `h` and `h + H/2` with kv heads `j` and `j + KV/2`; under grouped-query attention
//!   with an odd number of kv heads, heads `i` and `i + g/2` of each group of `g` sharing one
//!   kv head), so paired heads output the same values, and `o`'s columns `[V, -V]` over the
//!   pairs cancel them; MLP producers (gate and up, or fc1) with rows `[U; U]` and `down` /
//!   `fc2` columns `[V, -V]`. Every weight is non-zero, the output exactly zero, and the
//!   gradients reach every new weight from the first step.
//! - NetMorph (LLaMA-Pro's zero-output layer): random producers, `o` and `down` zero.
//! - copy (LLaMA-Pro's recipe): the site layer's tensors, `o` and `down` zeroed.
//! - random: every tensor drawn (the baseline, not function preserving).
//!
//! Output projection biases are zero in the exact methods; norms are copied from the site
//! layer (they are part of the function of the new layer's inputs, not of its output).
//! Random tensors are uniform with the standard deviation of the site layer's tensor in the
//! same place. A post-norm layer (`Norm(x + F(x))`) is not the identity when `F` is zero,
//! so the exact methods refuse it.

use std::collections::BTreeMap;

use ndarray::{ArrayD, Axis, Slice};
use rand_chacha::ChaCha8Rng;

use super::site::block_of;
use super::{uniform_like, Exactness, Insertion, NewNode, Site, SiteInfo, Src};
use crate::error::{Error, Result};
use crate::ir::{Attention, Graph, NodeIndex, Op};

/// How a method fills the new layer's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// R2DeeperR: paired heads and hidden units, output projections `[V, -V]`.
    R2r,
    /// NetMorph / LLaMA-Pro: random producers, zero output projections.
    Zero,
    /// LLaMA-Pro's recipe: the site layer's tensors, zero output projections.
    Copy,
    /// Every tensor drawn.
    Random,
}

impl Fill {
    fn title(self) -> &'static str {
        match self {
            Fill::R2r => "R2DeeperR",
            Fill::Zero => "NetMorph",
            Fill::Copy => "LLaMA-Pro copy",
            Fill::Random => "random",
        }
    }
}

/// The nodes of the transformer layer the site is, in graph order, or None when the site
/// is not a block of a transformer row.
pub fn layer_nodes(graph: &Graph, site: &Site) -> Option<Vec<NodeIndex>> {
    site.block?;
    let b = block_of(graph, site.value)?;
    let nodes: Vec<NodeIndex> = graph
        .order()
        .into_iter()
        .filter(|&n| graph.g[n].row == site.row && block_of(graph, n).as_deref() == Some(&b))
        .collect();
    nodes
        .iter()
        .any(|&n| matches!(graph.g[n].op, Op::Attention(_) | Op::Norm(_)))
        .then_some(nodes)
}

/// The methods that deepen a transformer, for refusals.
pub const WORKING: &str = "r2r, netmorph or copy (exact), or random (the baseline)";

/// Refuses `title` on a transformer site with `why`.
pub fn refuse(info: &SiteInfo, title: &str, why: &str) -> Error {
    Error::usage(
        format!(
            "cannot insert {title} after `{}`, a transformer layer: {why}",
            info.site.label
        ),
        Some(format!(
            "a new transformer layer is exact when its sublayers' outputs are zero; use --method {WORKING}"
        )),
    )
}

/// One residual sublayer of the site layer.
struct Sublayer {
    /// `attention`, `mlp`, `mlp2`: the local name.
    name: String,
    /// The linears reading the sublayer's input: q, k, v; gate, up; fc1.
    producers: Vec<NodeIndex>,
    /// The attention core's settings, for an attention sublayer.
    attention: Option<Attention>,
    /// The output projection the residual add sums with the stream: o, down, fc2.
    out: NodeIndex,
}

/// The site layer's sublayers, each read from its residual add back to its producers.
fn sublayers(
    info: &SiteInfo,
    nodes: &[NodeIndex],
    block: &str,
    title: &str,
) -> Result<Vec<Sublayer>> {
    let g = info.graph;
    let linear = |n: NodeIndex| matches!(g.g[n].op, Op::Linear(_));
    let mut subs = Vec::new();
    for &add in nodes.iter().filter(|&&n| matches!(g.g[n].op, Op::Add)) {
        let name = g.g[add]
            .name
            .strip_prefix(&format!("{block}."))
            .and_then(|s| s.strip_suffix(".add"))
            .unwrap_or(&g.g[add].name)
            .to_string();
        let odd = |what: &str| {
            Error::usage(
                format!(
                    "cannot insert a new {title} layer after `{}`: its sublayer `{block}.{name}` {what}",
                    info.site.label
                ),
                Some("deepening copies the shape of a layer written `[attention ...; mlp ...]`".into()),
            )
        };
        let out = g.inputs(add)[0];
        if !linear(out) {
            return Err(odd("does not end in a linear output projection"));
        }
        let mid = g.inputs(out)[0];
        let (producers, attention) = match &g.g[mid].op {
            Op::Attention(a) => (g.inputs(mid), Some(a.clone())),
            Op::Mul => {
                let [act, up] = g.inputs(mid)[..] else {
                    return Err(odd("has a product of other than two values"));
                };
                (vec![g.inputs(act)[0], up], None)
            }
            Op::Activation(_) => (vec![g.inputs(mid)[0]], None),
            op => {
                return Err(odd(&format!(
                    "has a {} before its output projection",
                    op.kind_name()
                )))
            }
        };
        if !producers.iter().all(|&p| linear(p)) {
            return Err(odd("does not start with linears"));
        }
        subs.push(Sublayer {
            name,
            producers,
            attention,
            out,
        });
    }
    Ok(subs)
}

/// Query-head pairs and kv-head pairs whose outputs R2DeeperR makes equal, or None when
/// the heads cannot be paired.
#[allow(clippy::type_complexity)]
fn head_pairs(a: &Attention) -> Option<(Vec<(usize, usize)>, Vec<(usize, usize)>)> {
    let (h, kv) = (a.heads, a.kv_heads);
    let group = h / kv;
    if kv % 2 == 0 {
        // Head i + H/2 reads kv head i/g + KV/2: pair the kv heads the same way.
        let q = (0..h / 2).map(|i| (i, i + h / 2)).collect();
        let k = (0..kv / 2).map(|j| (j, j + kv / 2)).collect();
        Some((q, k))
    } else if group % 2 == 0 {
        // Pairs inside each group: both read the group's one kv head.
        let q = (0..kv)
            .flat_map(|j| (0..group / 2).map(move |i| (j * group + i, j * group + i + group / 2)))
            .collect();
        Some((q, Vec::new()))
    } else {
        None
    }
}

/// `1 pair`, `3 pairs`.
fn pairs(n: usize) -> String {
    if n == 1 {
        "1 pair".into()
    } else {
        format!("{n} pairs")
    }
}

/// Sets slice `b` of `t` along `axis` (units of `unit`) to `sign` times slice `a`, for
/// each pair `(a, b)`.
fn pair(t: &mut ArrayD<f64>, axis: usize, unit: usize, pairs: &[(usize, usize)], sign: f64) {
    for &(a, b) in pairs {
        let src = t
            .slice_axis(Axis(axis), Slice::from(a * unit..(a + 1) * unit))
            .to_owned();
        t.slice_axis_mut(Axis(axis), Slice::from(b * unit..(b + 1) * unit))
            .assign(&(src * sign));
    }
}

/// The new layer for the site, filled as `fill` says.
pub fn insertion(info: &SiteInfo, fill: Fill, rng: &mut ChaCha8Rng) -> Result<Insertion> {
    let g = info.graph;
    let title = fill.title();
    let nodes = info.layer.clone().ok_or_else(|| {
        Error::usage(
            format!(
                "`{}` is not a transformer layer, so {title} has no layer to insert there",
                info.site.label
            ),
            None,
        )
    })?;
    let block = block_of(g, info.site.value).expect("a transformer layer is a block");
    if fill != Fill::Random && g.defaults.postnorm {
        return Err(Error::usage(
            format!(
                "cannot insert a new {title} layer after `{}`: the network is post-norm (`Norm(x + F(x))`), so a layer whose sublayer outputs F are zero still normalises its input and is not the identity",
                info.site.label
            ),
            Some("exact deepening needs pre-norm layers (`x + F(Norm(x))`); --method random inserts a layer that is not function preserving".into()),
        ));
    }
    let subs = sublayers(info, &nodes, &block, title)?;
    // The layer's nodes, keyed by their name inside the block; inputs from outside the
    // block are the block's input, which the new layer reads from the site.
    let pos: BTreeMap<NodeIndex, usize> = nodes.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let key = |n: NodeIndex| -> String {
        let name = &g.g[n].name;
        name.strip_prefix(&format!("{block}."))
            .unwrap_or(name)
            .to_string()
    };
    let new_nodes: Vec<NewNode> = nodes
        .iter()
        .map(|&n| NewNode {
            key: key(n),
            op: g.g[n].op.clone(),
            inputs: g
                .inputs(n)
                .iter()
                .map(|i| pos.get(i).map_or(Src::Site, |&p| Src::New(p)))
                .collect(),
        })
        .collect();
    if nodes.last() != Some(&info.site.value) {
        return Err(Error::usage(
            format!(
                "cannot insert a new {title} layer after `{}`: its last node is not its output",
                info.site.label
            ),
            None,
        ));
    }
    // Start: norms copied, linears copied (copy) or drawn at the site tensor's scale.
    let mut params = BTreeMap::new();
    for &n in &nodes {
        for slot in g.g[n].op.param_slots() {
            let teacher = format!("{}.{}", g.g[n].name, slot.suffix);
            let t = info.params.get(&teacher).ok_or_else(|| {
                Error::weights(format!(
                    "deepening after `{}` reads `{teacher}`, which the weights lack",
                    info.site.label
                ))
            })?;
            let copy = fill == Fill::Copy || matches!(g.g[n].op, Op::Norm(_));
            let value = if copy {
                t.clone()
            } else {
                let mut s = crate::transform::std_of(t);
                if s == 0.0 && slot.suffix == "weight" {
                    // A degenerate teacher tensor: PyTorch's default scale instead.
                    s = 1.0 / (3.0 * slot.shape[1] as f64).sqrt();
                }
                uniform_like(rng, &slot.shape, s)
            };
            params.insert(format!("{}.{}", key(n), slot.suffix), value);
        }
    }
    let mut notes = Vec::new();
    for sub in &subs {
        let out = key(sub.out);
        if fill == Fill::Random {
            continue;
        }
        // The output projection's bias is zero in every exact method.
        if let Some(b) = params.get_mut(&format!("{out}.bias")) {
            b.fill(0.0);
        }
        let w = params
            .get_mut(&format!("{out}.weight"))
            .expect("a linear has a weight");
        if fill != Fill::R2r {
            w.fill(0.0);
            continue;
        }
        // R2DeeperR: producers' units in equal pairs, the output projection's columns
        // over each pair [V, -V].
        let (q_pairs, kv_pairs, unit) = match &sub.attention {
            Some(a) => {
                let Some((q, k)) = head_pairs(a) else {
                    return Err(Error::usage(
                        format!(
                            "cannot insert a new R2DeeperR layer after `{}`: it pairs heads so that their outputs cancel in `o`, but `{block}.{}` has {} heads in {} kv heads: an odd number of kv heads, each serving an odd number of query heads",
                            info.site.label, sub.name, a.heads, a.kv_heads
                        ),
                        Some("R2DeeperR needs an even number of kv heads, or an even number of query heads per kv head; --method netmorph or copy is exact for any heads".into()),
                    ));
                };
                (q, k, a.head_dim)
            }
            None => {
                let width = match &g.g[sub.producers[0]].op {
                    Op::Linear(l) => l.out_features,
                    _ => unreachable!("producers are linears"),
                };
                if width % 2 == 1 {
                    return Err(Error::usage(
                        format!(
                            "cannot insert a new R2DeeperR layer after `{}`: it pairs the hidden units of `{block}.{}` so that they cancel in its output projection, but its width {width} is odd",
                            info.site.label, sub.name
                        ),
                        Some("R2DeeperR needs an even MLP width; --method netmorph or copy is exact for any width".into()),
                    ));
                }
                let p: Vec<(usize, usize)> = (0..width / 2).map(|i| (i, i + width / 2)).collect();
                (p.clone(), p, 1)
            }
        };
        pair(w, 1, unit, &q_pairs, -1.0);
        for (i, &p) in sub.producers.iter().enumerate() {
            // Attention: q by query heads, k and v by kv heads; an MLP's producers by units.
            let same = if sub.attention.is_some() && i > 0 {
                &kv_pairs
            } else {
                &q_pairs
            };
            for suffix in ["weight", "bias"] {
                if let Some(t) = params.get_mut(&format!("{}.{suffix}", key(p))) {
                    pair(t, 0, unit, same, 1.0);
                }
            }
        }
        notes.push(match &sub.attention {
            Some(a) => format!(
                "`{}`: {} query heads in {} with equal q rows{}, `o` columns [V, -V] over each pair",
                sub.name,
                a.heads,
                pairs(q_pairs.len()),
                if kv_pairs.is_empty() {
                    " (each pair inside one kv group)".to_string()
                } else {
                    format!(
                        ", {} kv heads in {} with equal k and v rows",
                        a.kv_heads,
                        pairs(kv_pairs.len())
                    )
                }
            ),
            None => format!(
                "`{}`: {} hidden units in pairs with equal producer rows, output columns [V, -V]",
                sub.name,
                2 * q_pairs.len()
            ),
        });
    }
    let (exactness, head) = match fill {
        Fill::R2r => (Exactness::Exact, format!("R2DeeperR transformer layer after `{block}`: every sublayer's output is exactly zero with non-zero weights")),
        Fill::Zero => (Exactness::Exact, format!("NetMorph (LLaMA-Pro) transformer layer after `{block}`: random q, k, v and MLP producers, output projections zero")),
        Fill::Copy => (Exactness::Exact, format!("LLaMA-Pro copy of `{block}` with its output projections (and their biases) zeroed")),
        Fill::Random => (Exactness::NotPreserving, "a randomly initialised transformer layer is not function preserving".to_string()),
    };
    notes.insert(0, head);
    if fill != Fill::Copy {
        notes.push(format!(
            "norms copied from `{block}`; drawn tensors uniform with the standard deviation of `{block}`'s tensor in the same place"
        ));
    }
    Ok(Insertion::block(new_nodes, params, exactness, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(heads: usize, kv_heads: usize) -> Attention {
        Attention {
            heads,
            kv_heads,
            head_dim: 4,
            rope: None,
            causal: true,
        }
    }

    /// Every pair of query heads reads one kv head or a pair of kv heads made equal.
    #[test]
    fn paired_heads_read_equal_kv_heads() {
        for (h, kv) in [(4, 2), (4, 4), (8, 2), (6, 1), (12, 3), (4, 1), (8, 4)] {
            let a = att(h, kv);
            let (q, k) = head_pairs(&a).unwrap();
            assert_eq!(q.len(), h / 2, "{h} {kv}");
            let g = h / kv;
            let mut seen = vec![false; h];
            for (x, y) in q {
                assert!(!seen[x] && !seen[y]);
                seen[x] = true;
                seen[y] = true;
                let (kx, ky) = (x / g, y / g);
                assert!(kx == ky || k.contains(&(kx, ky)), "{h} {kv}: {x} {y}");
            }
        }
        assert!(head_pairs(&att(3, 3)).is_none());
        assert!(head_pairs(&att(3, 1)).is_none());
        assert!(head_pairs(&att(9, 3)).is_none());
    }

    #[test]
    fn pairing_copies_rows_and_negates_columns() {
        let mut t = ArrayD::from_shape_vec(vec![2, 4], (0..8).map(f64::from).collect()).unwrap();
        pair(&mut t, 1, 1, &[(0, 2), (1, 3)], -1.0);
        assert_eq!(t.as_slice().unwrap(), &[0., 1., -0., -1., 4., 5., -4., -5.]);
        pair(&mut t, 0, 1, &[(0, 1)], 1.0);
        assert_eq!(t.index_axis(Axis(0), 0), t.index_axis(Axis(0), 1));
    }
}
