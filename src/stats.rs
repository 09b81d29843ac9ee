//! Per-layer and total parameter and multiply-accumulate counts.

use serde::Serialize;

use crate::ir::{show_shape, Graph};

/// One row of `r2rc check`.
#[derive(Debug, Clone, Serialize)]
pub struct LayerStats {
    pub name: String,
    pub op: String,
    pub shape: Vec<usize>,
    /// Trainable parameters (weights, biases, BN affine, PReLU slopes).
    pub params: u64,
    /// Running statistics and counters.
    pub buffers: u64,
    pub macs: u64,
}

/// Totals over the network.
#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    pub params: u64,
    pub buffers: u64,
    pub macs: u64,
}

/// Counts for every node (in topological order) and the totals.
pub fn layer_stats(graph: &Graph) -> (Vec<LayerStats>, Totals) {
    let mut rows = Vec::new();
    let mut totals = Totals {
        params: 0,
        buffers: 0,
        macs: 0,
    };
    for n in graph.order() {
        let node = &graph.g[n];
        let (mut params, mut buffers) = (0u64, 0u64);
        for slot in node.op.param_slots() {
            let count = slot.shape.iter().product::<usize>() as u64;
            if slot.kind.trainable() {
                params += count;
            } else {
                buffers += count;
            }
        }
        let macs = node.op.macs(&node.shape);
        totals.params += params;
        totals.buffers += buffers;
        totals.macs += macs;
        rows.push(LayerStats {
            name: node.name.clone(),
            op: node.op.kind_name().to_string(),
            shape: node.shape.clone(),
            params,
            buffers,
            macs,
        });
    }
    (rows, totals)
}

/// Trainable parameter count.
pub fn param_count(graph: &Graph) -> u64 {
    layer_stats(graph).1.params
}

/// Multiply-accumulates for one sample.
pub fn mac_count(graph: &Graph) -> u64 {
    layer_stats(graph).1.macs
}

/// `11,689,512`.
pub fn thousands(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The `r2rc check` table.
pub fn table(graph: &Graph) -> String {
    let (rows, totals) = layer_stats(graph);
    let name_w = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(5);
    let op_w = rows.iter().map(|r| r.op.len()).max().unwrap_or(2).max(2);
    let mut out = format!(
        "{:<name_w$}  {:<op_w$}  {:>14}  {:>12}  {:>15}\n",
        "layer", "op", "output", "params", "MACs"
    );
    for r in &rows {
        out.push_str(&format!(
            "{:<name_w$}  {:<op_w$}  {:>14}  {:>12}  {:>15}\n",
            r.name,
            r.op,
            show_shape(&r.shape),
            thousands(r.params),
            thousands(r.macs)
        ));
    }
    out.push_str(&format!(
        "\n{}: {} layers, input {}, output {}\n",
        graph.name,
        rows.len(),
        show_shape(graph.input_shape()),
        show_shape(graph.output_shape())
    ));
    out.push_str(&format!(
        "trainable parameters: {}\nbuffers (running statistics): {}\nmultiply-accumulates: {} ({:.3} G)\n",
        thousands(totals.params),
        thousands(totals.buffers),
        thousands(totals.macs),
        totals.macs as f64 / 1e9
    ));
    out
}
