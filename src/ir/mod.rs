//! The graph IR: ops, nodes, shapes and parameter specs.

mod graph;
mod op;
mod seq;

pub use graph::{Defaults, Edge, Graph, Node, ParamSpec, ShortcutKind};
pub use op::{
    show_shape, Activation, Attention, BatchNorm, ClassToken, Conv2d, Embedding, Linear, Norm,
    NormKind, Op, ParamKind, ParamSlot, Pool, Positions, Shape, ShortcutPad, TiedLinear,
};
pub use petgraph::stable_graph::NodeIndex;
