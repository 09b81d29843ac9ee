//! Sign analysis: which values are provably non-negative whatever the input and weights.
//!
//! R2DeeperR and Net2DeeperNet rely on the activation after the inserted layers leaving
//! their input unchanged; ReLU does that exactly when the input is non-negative. The rules
//! are structural (they hold for every weight setting): ReLU, sigmoid and softmax outputs
//! are non-negative; max/avg pooling, global pooling, flatten, identity, option-A shortcut
//! padding (zeros appended) and sums keep non-negativity when all their inputs have it.

use std::collections::HashSet;

use crate::ir::{Activation, Graph, NodeIndex, Op};

/// Ops whose output is non-negative when all their inputs are.
fn keeps_sign(op: &Op) -> bool {
    matches!(
        op,
        Op::Activation(Activation::Identity)
            | Op::MaxPool(_)
            | Op::AvgPool(_)
            | Op::GlobalAvgPool
            | Op::Flatten
            | Op::ShortcutPad(_)
            | Op::Add
    )
}

/// Every value of `graph` that is non-negative for every input and every weight setting.
pub fn non_negative_values(graph: &Graph) -> HashSet<NodeIndex> {
    let mut known = HashSet::new();
    for n in graph.order() {
        let inputs = graph.inputs(n);
        let all_in = !inputs.is_empty() && inputs.iter().all(|i| known.contains(i));
        let yes = match &graph.g[n].op {
            Op::Activation(Activation::Relu | Activation::Sigmoid) | Op::Softmax => true,
            op if keeps_sign(op) => all_in,
            // Leaky ReLU, PReLU (slope of either sign), tanh, GELU, convs, linears, batch
            // norm and the input can all be negative.
            _ => false,
        };
        if yes {
            known.insert(n);
        }
    }
    known
}

/// Whether the value of node `n` is provably non-negative.
pub fn is_non_negative(graph: &Graph, n: NodeIndex) -> bool {
    non_negative_values(graph).contains(&n)
}

/// Why a value may be negative, as a short phrase for refusals (`the output of batch norm
/// conv1.bn`), following the first input that breaks non-negativity.
pub fn why_maybe_negative(graph: &Graph, n: NodeIndex) -> String {
    let known = non_negative_values(graph);
    let mut cur = n;
    loop {
        let node = &graph.g[cur];
        if keeps_sign(&node.op) {
            if let Some(i) = graph.inputs(cur).into_iter().find(|i| !known.contains(i)) {
                cur = i;
                continue;
            }
        }
        return if cur == graph.input {
            "the network input, which can be negative".into()
        } else {
            format!(
                "`{}` ({}), whose output can be negative",
                node.name,
                node.op.kind_name()
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lower::compile;

    fn graph(src: &str) -> Graph {
        compile(src, &[]).expect("compiles")
    }

    #[test]
    fn relu_outputs_pools_and_sums_are_non_negative() {
        let g = graph(
            "arch T\ninput 3x8x8\n\nconv1 8x8 3x3, 8\npool 4x4 2x2 max pool, stride 2\nconv2_x 4x4 [3x3, 8; 3x3, 8] x 1\nhead 1x1 avg pool, 10-d fc\n",
        );
        for name in [
            "conv1.act",
            "pool",
            "conv2_1.act",
            "head.pool",
            "head.fc.flatten",
        ] {
            assert!(is_non_negative(&g, g.find(name).unwrap()), "{name}");
        }
        for name in [
            "input",
            "conv1",
            "conv1.bn",
            "conv2_1.bn2",
            "conv2_1.add",
            "head.fc",
        ] {
            assert!(!is_non_negative(&g, g.find(name).unwrap()), "{name}");
        }
    }

    #[test]
    fn leaky_and_identity_activations_can_be_negative() {
        let g = graph(
            "arch T\ninput 3x8x8\n\nconv1 8x8 3x3, 8, act leaky_relu\nconv2 8x8 3x3, 8, act identity\n",
        );
        assert!(!is_non_negative(&g, g.find("conv1.act").unwrap()));
        assert!(!is_non_negative(&g, g.find("conv2.act").unwrap()));
        assert!(why_maybe_negative(&g, g.find("conv2.act").unwrap()).contains("conv2.bn"));
    }
}
