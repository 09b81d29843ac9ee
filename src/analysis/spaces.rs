//! Channel spaces (DESIGN.md "The theory the code implements").
//!
//! A channel-wise op (batch norm, element-wise activations, pooling, global pooling,
//! flatten) keeps channel c of its input in channel c of its output, and a residual `Add`
//! does so for all its inputs at once, so these values must be widened together: they form
//! one *space*. Widening a space touches its producers (convs and linears writing into it:
//! new output rows), its channel-wise parameters (batch norm, PReLU: new entries) and its
//! consumers (convs and linears reading it: new input columns, `cols` per channel, where a
//! flattened `C x H x W` value gives every channel `H*W` columns).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::ir::{Activation, Graph, NodeIndex, Op};

/// A value of a space.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    #[serde(skip)]
    pub node: NodeIndex,
    pub name: String,
    pub op: String,
    /// Features per channel: 1 for feature maps and vectors, `H*W` after a flatten.
    pub cols: usize,
}

/// A layer named in a space, with its node.
#[derive(Debug, Clone, Serialize)]
pub struct Named {
    #[serde(skip)]
    pub node: NodeIndex,
    pub name: String,
}

/// A conv or linear reading a value of the space.
#[derive(Debug, Clone, Serialize)]
pub struct Consumer {
    #[serde(skip)]
    pub node: NodeIndex,
    pub name: String,
    /// The member it reads.
    pub reads: String,
    /// Input columns each channel of the space owns in this consumer.
    pub cols: usize,
}

/// One channel space.
#[derive(Debug, Clone, Serialize)]
pub struct Space {
    /// Position in [`Spaces::spaces`] (topological order of the first member).
    pub id: usize,
    /// The first member's name, used to show the space.
    pub label: String,
    /// Channels.
    pub width: usize,
    /// The rows the members were written in, in order (`conv1`, `conv2_x`).
    pub rows: Vec<String>,
    pub members: Vec<Member>,
    pub producers: Vec<Named>,
    /// Batch norms and PReLUs: one parameter entry per channel (times `cols`).
    pub params: Vec<Named>,
    pub consumers: Vec<Consumer>,
    /// Why the space cannot be widened; empty when it can.
    pub blockers: Vec<String>,
}

impl Space {
    pub fn widenable(&self) -> bool {
        self.blockers.is_empty()
    }

    pub fn member(&self, node: NodeIndex) -> Option<&Member> {
        self.members.iter().find(|m| m.node == node)
    }

    /// A one-line description, named by its first member as every message names spaces
    /// (the id is internal): "space `conv1` (8 channels, rows conv1, conv2_x)".
    pub fn describe(&self) -> String {
        format!(
            "space `{}` ({} channels, rows {})",
            self.label,
            self.width,
            self.rows.join(", ")
        )
    }
}

/// Every channel space of a graph, and which space each node's output lies in.
#[derive(Debug, Clone, Serialize)]
pub struct Spaces {
    pub spaces: Vec<Space>,
    #[serde(skip)]
    pub of: HashMap<NodeIndex, usize>,
}

impl Spaces {
    /// The space holding `node`'s output.
    pub fn space_of(&self, node: NodeIndex) -> &Space {
        &self.spaces[self.of[&node]]
    }
}

fn find(parent: &mut [usize], mut x: usize) -> usize {
    while parent[x] != x {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    x
}

fn union(parent: &mut [usize], a: usize, b: usize) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    if ra != rb {
        // The earlier node stays the root so roots follow the source order.
        let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
        parent[hi] = lo;
    }
}

/// Whether an op keeps channel c of its (every) input in channel c of its output.
fn channel_wise(op: &Op) -> bool {
    matches!(
        op,
        Op::BatchNorm(_)
            | Op::Activation(_)
            | Op::MaxPool(_)
            | Op::AvgPool(_)
            | Op::GlobalAvgPool
            | Op::Flatten
            | Op::Add
            // Softmax is joined so that its space is refused with the reason below.
            | Op::Softmax
    )
}

/// Groups the graph's values into channel spaces.
pub fn channel_spaces(graph: &Graph) -> Spaces {
    let order = graph.order();
    let pos: HashMap<NodeIndex, usize> = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut parent: Vec<usize> = (0..order.len()).collect();
    for (i, &n) in order.iter().enumerate() {
        if channel_wise(&graph.g[n].op) {
            for src in graph.inputs(n) {
                union(&mut parent, i, pos[&src]);
            }
        }
    }
    // Columns per channel, in topological order (a flatten multiplies by H*W).
    let mut cols: Vec<usize> = vec![1; order.len()];
    for (i, &n) in order.iter().enumerate() {
        if !channel_wise(&graph.g[n].op) {
            continue;
        }
        if let Some(src) = graph.inputs(n).first() {
            let j = pos[src];
            cols[i] = cols[j];
            if matches!(graph.g[n].op, Op::Flatten) {
                cols[i] *= graph.g[*src].shape.iter().skip(1).product::<usize>();
            }
        }
    }
    // Spaces of a transformer, with the first of their layers: the width of a token
    // sequence is its last axis, under layer or RMS norms that mix every feature, so
    // growing it needs norm-aware rules (not here yet).
    let mut transformer: BTreeMap<usize, String> = BTreeMap::new();
    let mut root_to_space: HashMap<usize, usize> = HashMap::new();
    let mut spaces: Vec<Space> = Vec::new();
    let mut of = HashMap::new();
    for (i, &n) in order.iter().enumerate() {
        let root = find(&mut parent, i);
        let id = *root_to_space.entry(root).or_insert_with(|| {
            let node = &graph.g[n];
            spaces.push(Space {
                id: spaces.len(),
                label: node.name.clone(),
                width: node.shape.first().copied().unwrap_or(1) / cols[i].max(1),
                rows: vec![],
                members: vec![],
                producers: vec![],
                params: vec![],
                consumers: vec![],
                blockers: vec![],
            });
            spaces.len() - 1
        });
        of.insert(n, id);
        let node = &graph.g[n];
        let s = &mut spaces[id];
        if !s.rows.contains(&node.row) {
            s.rows.push(node.row.clone());
        }
        s.members.push(Member {
            node: n,
            name: node.name.clone(),
            op: node.op.kind_name().to_string(),
            cols: cols[i],
        });
        let named = Named {
            node: n,
            name: node.name.clone(),
        };
        match &node.op {
            Op::Input => s.blockers.push(format!(
                "it holds the network input `{}`, whose channels come from the data",
                node.name
            )),
            Op::Conv2d(c) => {
                if c.groups > 1 {
                    s.blockers.push(format!(
                        "grouped convolution `{}` (groups {}) writes into it, and widening a grouped convolution is not supported",
                        node.name, c.groups
                    ));
                }
                s.producers.push(named);
            }
            Op::Linear(_) => s.producers.push(named),
            Op::BatchNorm(_) | Op::Activation(Activation::Prelu { .. }) => s.params.push(named),
            Op::Softmax => s.blockers.push(format!(
                "softmax `{}` normalises across channels, which is not a channel-wise op: new channels would change the original outputs",
                node.name
            )),
            Op::ShortcutPad(_) => s.blockers.push(format!(
                "option-A shortcut `{}` appends zero channels after its input's channels, which is not a channel-wise op",
                node.name
            )),
            _ => {}
        }
        if node.shape.len() == 2 || node.op.is_sequence() {
            transformer.entry(id).or_insert_with(|| node.name.clone());
        }
        if n == graph.output {
            s.blockers.push(format!(
                "it holds the network output `{}`, whose width the task fixes",
                node.name
            ));
        }
    }
    // Consumers: convs, linears and pad shortcuts reading a member.
    for (i, &n) in order.iter().enumerate() {
        let id = of[&n];
        for c in graph.consumers(n) {
            let cnode = &graph.g[c];
            let s = &mut spaces[id];
            match &cnode.op {
                Op::Conv2d(conv) => {
                    if conv.groups > 1 {
                        s.blockers.push(format!(
                            "grouped convolution `{}` (groups {}) reads it, and widening a grouped convolution is not supported",
                            cnode.name, conv.groups
                        ));
                    }
                }
                Op::Linear(_) => {}
                op if op.is_sequence() => {
                    transformer.entry(id).or_insert_with(|| cnode.name.clone());
                    continue;
                }
                Op::ShortcutPad(_) => {
                    s.blockers.push(format!(
                        "option-A shortcut `{}` reads it and would place new channels before its zero padding, which is not a channel-wise op",
                        cnode.name
                    ));
                    continue;
                }
                _ => continue,
            }
            s.consumers.push(Consumer {
                node: c,
                name: cnode.name.clone(),
                reads: graph.g[n].name.clone(),
                cols: cols[i],
            });
        }
    }
    for (id, layer) in transformer {
        spaces[id].blockers.push(format!(
            "it is part of a transformer (token sequences, `{layer}`), and widening transformers is not supported yet"
        ));
    }
    Spaces { spaces, of }
}

/// The text listing of `r2rc spaces`.
pub fn table(spaces: &Spaces) -> String {
    let list = |v: &[Named]| -> String {
        if v.is_empty() {
            "-".into()
        } else {
            v.iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let mut out = String::new();
    for s in &spaces.spaces {
        let state = if s.widenable() {
            "widenable".to_string()
        } else {
            format!("fixed: {}", s.blockers.join("; "))
        };
        out.push_str(&format!("{}: {state}\n", s.describe()));
        let members: Vec<&str> = s.members.iter().map(|m| m.name.as_str()).collect();
        out.push_str(&format!("  members:   {}\n", members.join(", ")));
        out.push_str(&format!("  producers: {}\n", list(&s.producers)));
        out.push_str(&format!("  per-channel params: {}\n", list(&s.params)));
        let consumers: Vec<String> = s
            .consumers
            .iter()
            .map(|c| {
                if c.cols > 1 {
                    format!("{} ({} columns per channel)", c.name, c.cols)
                } else {
                    c.name.clone()
                }
            })
            .collect();
        out.push_str(&format!(
            "  consumers: {}\n",
            if consumers.is_empty() {
                "-".into()
            } else {
                consumers.join(", ")
            }
        ));
    }
    out
}
