//! The graph IR: a petgraph of named ops with inferred shapes.

use std::collections::{BTreeSet, HashMap};

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use serde::Serialize;

use super::op::{Activation, NormKind, Op, ParamSlot, Shape};
use crate::error::Span;

/// What residual blocks use as shortcut when they change the shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShortcutKind {
    /// 1x1 conv + BN (He et al. option B).
    Projection,
    /// Subsample and zero-pad channels (option A).
    Pad,
    /// No shortcut at all: a plain network.
    None,
}

impl ShortcutKind {
    pub fn keyword(self) -> &'static str {
        match self {
            ShortcutKind::Projection => "projection",
            ShortcutKind::Pad => "pad",
            ShortcutKind::None => "none",
        }
    }
}

/// File-wide defaults set by header lines (`norm`, `act`, `shortcut`, `eps`, `bias`,
/// `postnorm`, `preact`) and the token input's vocabulary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Defaults {
    /// Whether convolutions are followed by batch norm.
    pub norm: bool,
    pub act: Activation,
    pub shortcut: ShortcutKind,
    /// The epsilon of every batch, layer and RMS norm.
    pub eps: f64,
    /// The norm of transformer rows (`norm layer` or `norm rms`).
    pub seq_norm: NormKind,
    /// Whether fc layers, transformer linears and layer norms have a bias (`no bias`).
    pub bias: bool,
    /// Transformer sublayers are `Norm(x + F(x))` (BERT) instead of `x + F(Norm(x))`.
    pub postnorm: bool,
    /// `preact`: the layers of residual and dense blocks and of transitions are
    /// BN-act-conv (He et al. 2016 "Identity Mappings", DenseNet) instead of conv-BN-act.
    pub preact: bool,
    /// `input T tokens, vocab V`: the input is `[T]` token ids below V.
    pub vocab: Option<usize>,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            norm: true,
            act: Activation::Relu,
            shortcut: ShortcutKind::Projection,
            eps: 1e-5,
            seq_norm: NormKind::Layer,
            bias: true,
            postnorm: false,
            preact: false,
            vocab: None,
        }
    }
}

/// One op of the network.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// Stable dotted name (`conv2_1.conv1`); parameters are `name.weight` and so on.
    pub name: String,
    pub op: Op,
    /// Output shape without the batch dimension.
    pub shape: Shape,
    /// The row this node was written in (`conv2_x`), used to print it back.
    pub row: String,
    /// 1-based residual block number within the row, if the node belongs to a block.
    pub block: Option<usize>,
    /// Where the node came from in the source, if it was parsed rather than generated.
    #[serde(skip)]
    pub span: Option<Span>,
}

/// An edge feeds the source's output into input `port` of the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Edge {
    pub port: usize,
}

/// A parameter tensor of the network with its full name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamSpec {
    /// `conv2_1.bn1.running_var`.
    pub name: String,
    /// The node that owns it.
    #[serde(skip)]
    pub node: NodeIndex,
    #[serde(flatten)]
    pub slot: ParamSlot,
}

/// Bounds that keep every count of a network well inside 64-bit arithmetic and keep
/// hostile files from asking for absurd allocations.
pub const MAX_NODES: usize = 100_000;
/// The most elements one value or one parameter tensor may have (per sample).
pub const MAX_ELEMENTS: usize = 1 << 34;

fn check_size(shape: &Shape, what: &str) -> Result<(), String> {
    let count = shape
        .iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(*d))
        .filter(|c| *c <= MAX_ELEMENTS);
    match count {
        Some(_) => Ok(()),
        None => Err(format!(
            "this layer's {what} would have {} elements, more than r2rc handles (2^34)",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("x")
        )),
    }
}

/// A whole network: one input, one output, ops in between.
#[derive(Debug, Clone)]
pub struct Graph {
    /// The `arch` name.
    pub name: String,
    pub defaults: Defaults,
    pub g: StableDiGraph<Node, Edge>,
    pub input: NodeIndex,
    pub output: NodeIndex,
}

impl Graph {
    /// A graph holding only its input node.
    pub fn new(name: &str, defaults: Defaults, input_shape: Shape) -> Graph {
        let mut g = StableDiGraph::new();
        let input = g.add_node(Node {
            name: "input".into(),
            op: Op::Input,
            shape: input_shape,
            row: "input".into(),
            block: None,
            span: None,
        });
        Graph {
            name: name.into(),
            defaults,
            g,
            input,
            output: input,
        }
    }

    /// Adds `op` fed by `inputs` (in port order), inferring its shape. The error is a
    /// sentence saying why the shapes do not fit.
    pub fn add(
        &mut self,
        name: String,
        op: Op,
        inputs: &[NodeIndex],
        place: (&str, Option<usize>),
        span: Option<Span>,
    ) -> Result<NodeIndex, String> {
        if self.g.node_count() >= MAX_NODES {
            return Err(format!(
                "the network has more than {MAX_NODES} layers, more than r2rc handles"
            ));
        }
        let shapes: Vec<&Shape> = inputs.iter().map(|&i| &self.g[i].shape).collect();
        let shape = op.infer_shape(&shapes)?;
        check_size(&shape, "output")?;
        for slot in op.param_slots() {
            check_size(&slot.shape, slot.suffix)?;
        }
        let node = self.g.add_node(Node {
            name,
            op,
            shape,
            row: place.0.into(),
            block: place.1,
            span,
        });
        for (port, &i) in inputs.iter().enumerate() {
            self.g.add_edge(i, node, Edge { port });
        }
        Ok(node)
    }

    /// The node's inputs in port order.
    pub fn inputs(&self, n: NodeIndex) -> Vec<NodeIndex> {
        let mut v: Vec<(usize, NodeIndex)> = self
            .g
            .edges_directed(n, Direction::Incoming)
            .map(|e| (e.weight().port, e.source()))
            .collect();
        v.sort();
        v.into_iter().map(|(_, s)| s).collect()
    }

    /// The nodes reading this node's output, in node order.
    pub fn consumers(&self, n: NodeIndex) -> Vec<NodeIndex> {
        let mut v: Vec<NodeIndex> = self.g.neighbors_directed(n, Direction::Outgoing).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Every node in a topological order that breaks ties by creation order, so the order
    /// is deterministic and follows the source.
    pub fn order(&self) -> Vec<NodeIndex> {
        let mut indegree: HashMap<NodeIndex, usize> = HashMap::new();
        for n in self.g.node_indices() {
            indegree.insert(n, self.g.edges_directed(n, Direction::Incoming).count());
        }
        let mut ready: BTreeSet<NodeIndex> = indegree
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(n, _)| *n)
            .collect();
        let mut out = Vec::with_capacity(indegree.len());
        while let Some(n) = ready.pop_first() {
            out.push(n);
            for e in self.g.edges_directed(n, Direction::Outgoing) {
                let d = indegree.get_mut(&e.target()).expect("edge to a known node");
                *d -= 1;
                if *d == 0 {
                    ready.insert(e.target());
                }
            }
        }
        out
    }

    /// The node with this dotted name.
    pub fn find(&self, name: &str) -> Option<NodeIndex> {
        self.g.node_indices().find(|&n| self.g[n].name == name)
    }

    /// The token embedding whose weight a tied head reads: the network's one `Embedding`
    /// node, the last one added (a local proof's region adds its input adapter first).
    pub fn embedding(&self) -> Option<NodeIndex> {
        self.g
            .node_indices()
            .rfind(|&n| matches!(self.g[n].op, Op::Embedding(_)))
    }

    /// Every parameter tensor, in topological order; a tied head's weight is the
    /// embedding's, listed once under the embedding's name.
    pub fn param_specs(&self) -> Vec<ParamSpec> {
        let mut v = Vec::new();
        for n in self.order() {
            for slot in self.g[n].op.param_slots() {
                v.push(ParamSpec {
                    name: format!("{}.{}", self.g[n].name, slot.suffix),
                    node: n,
                    slot,
                });
            }
        }
        v
    }

    /// Input shape without the batch dimension.
    pub fn input_shape(&self) -> &Shape {
        &self.g[self.input].shape
    }

    /// Output shape without the batch dimension.
    pub fn output_shape(&self) -> &Shape {
        &self.g[self.output].shape
    }

    /// Structural fingerprint used for equality: everything but source spans.
    fn fingerprint(&self) -> Vec<String> {
        let order = self.order();
        let position: HashMap<NodeIndex, usize> =
            order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let mut v = vec![format!("{} {:?}", self.name, self.defaults)];
        for n in &order {
            let node = &self.g[*n];
            let ins: Vec<usize> = self.inputs(*n).iter().map(|i| position[i]).collect();
            v.push(format!(
                "{} {:?} {:?} {} {:?} {:?}",
                node.name, node.op, node.shape, node.row, node.block, ins
            ));
        }
        v.push(format!("output {}", position[&self.output]));
        v
    }
}

/// Two graphs are equal when they have the same nodes (names, ops, shapes, places) wired
/// the same way, in the same order; source spans are ignored.
impl PartialEq for Graph {
    fn eq(&self, other: &Graph) -> bool {
        self.fingerprint() == other.fingerprint()
    }
}
