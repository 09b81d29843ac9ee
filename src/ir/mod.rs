//! The graph IR: ops, nodes, shapes and parameter specs.

mod graph;
mod op;

pub use graph::{Defaults, Edge, Graph, Node, ParamSpec, ShortcutKind};
pub use op::{
    show_shape, Activation, BatchNorm, Conv2d, Linear, Op, ParamKind, ParamSlot, Pool, Shape,
    ShortcutPad,
};
pub use petgraph::stable_graph::NodeIndex;
