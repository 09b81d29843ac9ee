//! The graph as JSON: nodes in topological order with ops, attributes, inputs, shapes and
//! parameter tensors. Weights are not included, only their names, shapes and dtypes.

use serde_json::{json, Map, Value};

use crate::ir::{Graph, Op, ParamKind};

/// The graph as a JSON value (stable key order; nodes in `graph.order()`).
pub fn graph_json(graph: &Graph) -> Value {
    let order = graph.order();
    let nodes: Vec<Value> = order.iter().map(|&n| node_json(graph, n)).collect();
    let params: Vec<Value> = graph.param_specs().iter().map(param_json).collect();
    let total: usize = graph
        .param_specs()
        .iter()
        .filter(|s| s.slot.kind != ParamKind::NumBatchesTracked)
        .map(|s| s.slot.shape.iter().product::<usize>())
        .sum();
    let macs: u64 = order
        .iter()
        .map(|&n| graph.g[n].op.macs(&graph.g[n].shape))
        .sum();
    json!({
        "name": graph.name,
        "defaults": graph.defaults,
        "input": { "name": graph.g[graph.input].name, "shape": graph.input_shape() },
        "output": { "name": graph.g[graph.output].name, "shape": graph.output_shape() },
        "nodes": nodes,
        "params": params,
        "totals": { "params": total, "macs": macs },
    })
}

fn node_json(graph: &Graph, n: crate::ir::NodeIndex) -> Value {
    let node = &graph.g[n];
    let inputs: Vec<&str> = graph
        .inputs(n)
        .into_iter()
        .map(|i| graph.g[i].name.as_str())
        .collect();
    let params: Vec<Value> = node
        .op
        .param_slots()
        .into_iter()
        .map(|slot| {
            json!({
                "name": format!("{}.{}", node.name, slot.suffix),
                "shape": slot.shape,
                "kind": slot.kind,
                "dtype": dtype(slot.kind),
            })
        })
        .collect();
    json!({
        "name": node.name,
        "op": node.op.kind_name(),
        "attrs": attrs(&node.op),
        "inputs": inputs,
        "shape": node.shape,
        "params": params,
        "row": node.row,
        "block": node.block,
    })
}

/// The op's fields without its tags (`op`, and `kind` for activations, which
/// `kind_name` already says).
fn attrs(op: &Op) -> Value {
    let mut m = match serde_json::to_value(op) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    m.remove("op");
    if matches!(op, Op::Activation(_)) {
        m.remove("kind");
    }
    Value::Object(m)
}

fn param_json(spec: &crate::ir::ParamSpec) -> Value {
    json!({
        "name": spec.name,
        "shape": spec.slot.shape,
        "kind": spec.slot.kind,
        "dtype": dtype(spec.slot.kind),
        "trainable": spec.slot.kind.trainable(),
    })
}

/// The element type in a safetensors file: `float` is the file's float type (f32 unless
/// written otherwise); the batch counter is always int64 as in PyTorch.
fn dtype(kind: ParamKind) -> &'static str {
    if kind == ParamKind::NumBatchesTracked {
        "int64"
    } else {
        "float"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Activation, BatchNorm, Defaults};

    #[test]
    fn nodes_carry_ops_attrs_inputs_and_params() {
        let mut g = Graph::new("t", Defaults::default(), vec![3, 4, 4]);
        let conv = crate::emit::conv3x3(3, 2, 1, true);
        let c = g
            .add("conv1".into(), conv, &[g.input], ("conv1", None), None)
            .unwrap();
        let bn = Op::BatchNorm(BatchNorm {
            channels: 2,
            eps: 1e-3,
        });
        let b = g
            .add("conv1.bn".into(), bn, &[c], ("conv1", None), None)
            .unwrap();
        let act = Op::Activation(Activation::LeakyRelu { slope: 0.1 });
        g.output = g
            .add("conv1.act".into(), act, &[b], ("conv1", Some(1)), None)
            .unwrap();
        let v = graph_json(&g);
        assert_eq!(v["name"], "t");
        assert_eq!(v["input"]["shape"], json!([3, 4, 4]));
        assert_eq!(v["output"]["name"], "conv1.act");
        let nodes = v["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 4);
        assert_eq!(nodes[1]["op"], "conv2d");
        assert_eq!(nodes[1]["attrs"]["kernel"], json!([3, 3]));
        assert_eq!(nodes[1]["inputs"], json!(["input"]));
        assert_eq!(nodes[1]["params"][1]["name"], "conv1.bias");
        assert_eq!(nodes[2]["attrs"]["eps"], 1e-3);
        assert_eq!(nodes[2]["params"][4]["dtype"], "int64");
        assert_eq!(nodes[3]["op"], "leaky_relu");
        assert_eq!(nodes[3]["attrs"], json!({ "slope": 0.1 }));
        assert_eq!(nodes[3]["block"], 1);
        // 3*2*9 + 2 conv, 4*2 BN (counter excluded).
        assert_eq!(v["totals"]["params"], 54 + 2 + 8);
        assert_eq!(v["params"].as_array().unwrap().len(), 7);
    }
}
