//! ONNX export: the graph as an opset-13 model (opset 17 for transformers, `seq.rs`) with
//! the weights as f32 initializers under their PyTorch names, graph input `input` and
//! output `output`, batch dimension `N` (and token count `T` for token inputs, int64).

pub(crate) mod seq;

use prost::Message;

use super::onnx_proto::{
    attribute_type, data_type, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};
use crate::error::{Error, Result};
use crate::ir::{show_shape, Activation, Graph, NodeIndex, Op};
use crate::params::Params;

/// The default-domain opset the model declares. 13 has every op used here (GELU is built
/// from Erf because `Gelu` only arrived in opset 20).
pub const OPSET: i64 = 13;
/// ONNX IR version matching opset 13 (ONNX 1.8).
pub const IR_VERSION: i64 = 7;
/// The opset and IR version of a transformer (LayerNormalization arrived in opset 17).
pub const SEQ_OPSET: i64 = 17;
pub const SEQ_IR_VERSION: i64 = 8;
/// Name of the graph input and output values.
pub const INPUT_NAME: &str = "input";
pub const OUTPUT_NAME: &str = "output";

/// Serialises `graph` with `params` as an ONNX model. `params` must hold exactly the
/// graph's tensors with their shapes; `num_batches_tracked` is not exported (inference does
/// not use it).
pub fn to_onnx(graph: &Graph, params: &Params) -> Result<Vec<u8>> {
    Ok(to_model(graph, params)?.encode_to_vec())
}

/// The model as prost messages (for inspection in tests).
pub fn to_model(graph: &Graph, params: &Params) -> Result<ModelProto> {
    params.check(graph)?;
    let mut b = Builder {
        graph,
        params,
        nodes: Vec::new(),
        initializers: Vec::new(),
    };
    for n in graph.order() {
        if n == graph.input {
            continue;
        }
        b.node(n)?;
    }
    if graph.output == graph.input {
        // A network with no ops still needs one node to name its output.
        b.push(
            "Identity",
            "output",
            vec![INPUT_NAME.into()],
            OUTPUT_NAME,
            vec![],
        );
    }
    // Token ids are int64 `[N, T]`, T at most the declared length; every sequence value
    // keeps that dynamic T.
    let tokens = graph.defaults.vocab.is_some();
    let input = value_info(INPUT_NAME, graph.input_shape(), tokens, tokens);
    let out_tokens = tokens && graph.output_shape().len() == 2;
    let output = value_info(OUTPUT_NAME, graph.output_shape(), false, out_tokens);
    let seq = tokens || graph.g.node_weights().any(|n| n.op.is_sequence());
    Ok(ModelProto {
        ir_version: if seq { SEQ_IR_VERSION } else { IR_VERSION },
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: if seq { SEQ_OPSET } else { OPSET },
        }],
        producer_name: "r2rc".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        model_version: 1,
        doc_string: format!("{} exported by r2rc", graph.name),
        graph: Some(GraphProto {
            node: b.nodes,
            name: graph.name.clone(),
            initializer: b.initializers,
            input: vec![input],
            output: vec![output],
        }),
    })
}

struct Builder<'a> {
    graph: &'a Graph,
    params: &'a Params,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

impl Builder<'_> {
    /// The ONNX value name of a node's output.
    fn value(&self, n: NodeIndex) -> String {
        if n == self.graph.input {
            INPUT_NAME.into()
        } else if n == self.graph.output {
            OUTPUT_NAME.into()
        } else {
            self.graph.g[n].name.clone()
        }
    }

    fn push(
        &mut self,
        op_type: &str,
        name: &str,
        inputs: Vec<String>,
        output: &str,
        attribute: Vec<AttributeProto>,
    ) {
        self.nodes.push(NodeProto {
            input: inputs,
            output: vec![output.into()],
            name: name.into(),
            op_type: op_type.into(),
            attribute,
        });
    }

    /// Adds the parameter `name` as an f32 initializer, optionally reshaped, and returns
    /// its name.
    fn param(&mut self, name: &str, shape: Option<Vec<usize>>) -> String {
        let t = &self.params.tensors[name];
        let dims = shape.unwrap_or_else(|| t.shape().to_vec());
        let data: Vec<f32> = t.iter().map(|&v| v as f32).collect();
        self.initializers.push(float_tensor(name, &dims, &data));
        name.into()
    }

    fn const_f32(&mut self, name: &str, value: f32) -> String {
        self.initializers.push(float_tensor(name, &[], &[value]));
        name.into()
    }

    fn const_i64(&mut self, name: &str, values: &[i64]) -> String {
        self.initializers.push(TensorProto {
            dims: vec![values.len() as i64],
            data_type: data_type::INT64,
            name: name.into(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
        name.into()
    }

    fn node(&mut self, n: NodeIndex) -> Result<()> {
        let graph = self.graph;
        let node = &graph.g[n];
        let name = node.name.as_str();
        let inputs: Vec<String> = graph.inputs(n).into_iter().map(|i| self.value(i)).collect();
        let out = self.value(n);
        let in_shape = graph
            .inputs(n)
            .first()
            .map(|&i| graph.g[i].shape.clone())
            .unwrap_or_default();
        if self.seq_node(name, &node.op, inputs.clone(), &out, in_shape.len())? {
            return Ok(());
        }
        match &node.op {
            Op::Input => {
                return Err(Error::usage(
                    format!("`{name}` is a second input node; ONNX export supports one input"),
                    None,
                ))
            }
            Op::Conv2d(c) => {
                let mut ins = inputs;
                ins.push(self.param(&format!("{name}.weight"), None));
                if c.bias {
                    ins.push(self.param(&format!("{name}.bias"), None));
                }
                let p = c.padding as i64;
                let attrs = vec![
                    ints("kernel_shape", &[c.kernel[0] as i64, c.kernel[1] as i64]),
                    ints("strides", &[c.stride as i64; 2]),
                    ints("pads", &[p; 4]),
                    ints("dilations", &[c.dilation as i64; 2]),
                    int("group", c.groups as i64),
                ];
                self.push("Conv", name, ins, &out, attrs);
            }
            Op::BatchNorm(bn) => {
                let mut ins = inputs;
                for suffix in ["weight", "bias", "running_mean", "running_var"] {
                    ins.push(self.param(&format!("{name}.{suffix}"), None));
                }
                let attrs = vec![float("epsilon", bn.eps as f32)];
                self.push("BatchNormalization", name, ins, &out, attrs);
            }
            Op::Activation(a) => self.activation(name, a, inputs, &out, &in_shape),
            Op::MaxPool(p) | Op::AvgPool(p) => {
                let pad = p.padding as i64;
                let mut attrs = vec![
                    ints("kernel_shape", &[p.kernel[0] as i64, p.kernel[1] as i64]),
                    ints("strides", &[p.stride as i64; 2]),
                    ints("pads", &[pad; 4]),
                ];
                let op_type = if matches!(node.op, Op::MaxPool(_)) {
                    "MaxPool"
                } else {
                    // PyTorch counts padded zeros by default; ONNX does not unless told.
                    attrs.push(int("count_include_pad", 1));
                    "AveragePool"
                };
                self.push(op_type, name, inputs, &out, attrs);
            }
            Op::GlobalAvgPool => self.push("GlobalAveragePool", name, inputs, &out, vec![]),
            Op::Flatten => self.push("Flatten", name, inputs, &out, vec![int("axis", 1)]),
            Op::Linear(l) => {
                let mut ins = inputs;
                ins.push(self.param(&format!("{name}.weight"), None));
                if l.bias {
                    ins.push(self.param(&format!("{name}.bias"), None));
                }
                let attrs = vec![int("transB", 1)];
                self.push("Gemm", name, ins, &out, attrs);
            }
            Op::Add => {
                // ONNX `Add` is binary; `Sum` takes any number of inputs.
                let op_type = if inputs.len() == 2 { "Add" } else { "Sum" };
                self.push(op_type, name, inputs, &out, vec![]);
            }
            Op::Softmax => self.push("Softmax", name, inputs, &out, vec![int("axis", -1)]),
            Op::Concat => self.push("Concat", name, inputs, &out, vec![int("axis", 1)]),
            Op::ShortcutPad(p) => {
                let [c, h, w] = match in_shape.as_slice() {
                    [c, h, w] => [*c, *h, *w],
                    _ => {
                        return Err(Error::usage(
                            format!(
                                "`{name}`: a padding shortcut needs a CxHxW input, got {}",
                                show_shape(&in_shape)
                            ),
                            None,
                        ))
                    }
                };
                let extra = p.out_channels - c;
                let mut cur = inputs[0].clone();
                if p.stride > 1 {
                    let s = p.stride as i64;
                    let slice_out = if extra > 0 {
                        format!("{name}.subsample")
                    } else {
                        out.clone()
                    };
                    let ins = vec![
                        cur,
                        self.const_i64(&format!("{name}.slice_starts"), &[0, 0]),
                        self.const_i64(&format!("{name}.slice_ends"), &[h as i64, w as i64]),
                        self.const_i64(&format!("{name}.slice_axes"), &[2, 3]),
                        self.const_i64(&format!("{name}.slice_steps"), &[s, s]),
                    ];
                    self.push("Slice", &format!("{name}.slice"), ins, &slice_out, vec![]);
                    cur = slice_out;
                }
                if extra > 0 {
                    // Zero channels are appended after the existing ones (end of axis 1).
                    let pads = [0, 0, 0, 0, 0, extra as i64, 0, 0];
                    let ins = vec![cur, self.const_i64(&format!("{name}.pads"), &pads)];
                    let attrs = vec![string("mode", "constant")];
                    self.push("Pad", &format!("{name}.pad"), ins, &out, attrs);
                } else if p.stride <= 1 {
                    self.push("Identity", name, vec![cur], &out, vec![]);
                }
            }
            op => {
                return Err(Error::usage(
                    format!(
                        "`{name}`: ONNX export does not write {} layers yet",
                        op.kind_name()
                    ),
                    None,
                ))
            }
        }
        Ok(())
    }

    fn activation(
        &mut self,
        name: &str,
        a: &Activation,
        inputs: Vec<String>,
        out: &str,
        in_shape: &[usize],
    ) {
        match a {
            Activation::Relu => self.push("Relu", name, inputs, out, vec![]),
            Activation::Prelu { channels } => {
                // The slope broadcasts against [N, C, H, W] only as [C, 1, 1].
                let mut shape = vec![*channels];
                shape.extend(std::iter::repeat_n(1, in_shape.len().saturating_sub(1)));
                let mut ins = inputs;
                ins.push(self.param(&format!("{name}.weight"), Some(shape)));
                self.push("PRelu", name, ins, out, vec![]);
            }
            Activation::LeakyRelu { slope } => {
                let attrs = vec![float("alpha", *slope as f32)];
                self.push("LeakyRelu", name, inputs, out, attrs);
            }
            Activation::Tanh => self.push("Tanh", name, inputs, out, vec![]),
            Activation::Sigmoid => self.push("Sigmoid", name, inputs, out, vec![]),
            Activation::Gelu => {
                // Exact GELU: 0.5 * x * (1 + erf(x / sqrt(2))).
                let x = inputs[0].clone();
                let sqrt2 = self.const_f32(&format!("{name}.sqrt2"), std::f32::consts::SQRT_2);
                let one = self.const_f32(&format!("{name}.one"), 1.0);
                let half = self.const_f32(&format!("{name}.half"), 0.5);
                let t = |s: &str| format!("{name}.{s}");
                self.push("Div", &t("div"), vec![x.clone(), sqrt2], &t("div"), vec![]);
                self.push("Erf", &t("erf"), vec![t("div")], &t("erf"), vec![]);
                self.push("Add", &t("add"), vec![t("erf"), one], &t("add"), vec![]);
                self.push("Mul", &t("mul"), vec![x, t("add")], &t("mul"), vec![]);
                self.push("Mul", &t("half_mul"), vec![t("mul"), half], out, vec![]);
            }
            Activation::Identity => self.push("Identity", name, inputs, out, vec![]),
            Activation::Silu => {
                // x * sigmoid(x).
                let t = format!("{name}.sigmoid");
                self.push("Sigmoid", &t, inputs.clone(), &t, vec![]);
                self.push("Mul", name, vec![inputs[0].clone(), t.clone()], out, vec![]);
            }
            Activation::GeluTanh => {
                // 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))).
                let x = inputs[0].clone();
                let t = |s: &str| format!("{name}.{s}");
                let c = self.const_f32(&t("c"), (2.0 / std::f32::consts::PI).sqrt());
                let k = self.const_f32(&t("k"), 0.044715);
                let one = self.const_f32(&t("one"), 1.0);
                let half = self.const_f32(&t("half"), 0.5);
                self.push(
                    "Mul",
                    &t("x2"),
                    vec![x.clone(), x.clone()],
                    &t("x2"),
                    vec![],
                );
                self.push("Mul", &t("x3"), vec![t("x2"), x.clone()], &t("x3"), vec![]);
                self.push("Mul", &t("kx3"), vec![t("x3"), k], &t("kx3"), vec![]);
                self.push(
                    "Add",
                    &t("inner"),
                    vec![x.clone(), t("kx3")],
                    &t("inner"),
                    vec![],
                );
                self.push(
                    "Mul",
                    &t("scaled"),
                    vec![t("inner"), c],
                    &t("scaled"),
                    vec![],
                );
                self.push("Tanh", &t("tanh"), vec![t("scaled")], &t("tanh"), vec![]);
                self.push("Add", &t("add"), vec![t("tanh"), one], &t("add"), vec![]);
                self.push("Mul", &t("mul"), vec![x, t("add")], &t("mul"), vec![]);
                self.push("Mul", &t("half_mul"), vec![t("mul"), half], out, vec![]);
            }
        }
    }
}

fn float_tensor(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: data_type::FLOAT,
        name: name.into(),
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// A graph input or output `[N, ...shape]`, int64 for `token_ids`; with `tokens` the first
/// dimension of `shape` is the dynamic token count `T`.
fn value_info(name: &str, shape: &[usize], token_ids: bool, tokens: bool) -> ValueInfoProto {
    use tensor_shape_proto::dimension::Value as Dim;
    let mut dim = vec![tensor_shape_proto::Dimension {
        value: Some(Dim::DimParam("N".into())),
    }];
    dim.extend(
        shape
            .iter()
            .enumerate()
            .map(|(i, &d)| tensor_shape_proto::Dimension {
                value: Some(match tokens && i == 0 {
                    true => Dim::DimParam("T".into()),
                    false => Dim::DimValue(d as i64),
                }),
            }),
    );
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: if token_ids {
                    data_type::INT64
                } else {
                    data_type::FLOAT
                },
                shape: Some(TensorShapeProto { dim }),
            })),
        }),
    }
}

fn int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::INT,
        i,
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::INTS,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::FLOAT,
        f,
        ..Default::default()
    }
}

fn string(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::STRING,
        s: s.as_bytes().to_vec(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{BatchNorm, Defaults, Linear, Pool, ShortcutPad};
    use crate::params::DType;
    use ndarray::ArrayD;
    use std::collections::BTreeMap;

    /// conv -> bn -> relu -> pad shortcut add -> avgpool -> gap -> flatten -> fc.
    fn small() -> Graph {
        let mut g = Graph::new("t", Defaults::default(), vec![3, 8, 8]);
        let i = g.input;
        let conv = crate::emit::conv3x3(3, 4, 2, false);
        let c = g.add("c".into(), conv, &[i], ("c", None), None).unwrap();
        let bn = Op::BatchNorm(BatchNorm {
            channels: 4,
            eps: 1e-5,
        });
        let b = g.add("c.bn".into(), bn, &[c], ("c", None), None).unwrap();
        let sp = Op::ShortcutPad(ShortcutPad {
            stride: 2,
            out_channels: 4,
        });
        let s = g.add("sc".into(), sp, &[i], ("c", None), None).unwrap();
        let a = g
            .add("add".into(), Op::Add, &[b, s], ("c", None), None)
            .unwrap();
        let pool = Op::AvgPool(Pool {
            kernel: [3, 3],
            stride: 1,
            padding: 1,
        });
        let p = g.add("pool".into(), pool, &[a], ("h", None), None).unwrap();
        let gp = g
            .add("gap".into(), Op::GlobalAvgPool, &[p], ("h", None), None)
            .unwrap();
        let f = g
            .add("f".into(), Op::Flatten, &[gp], ("h", None), None)
            .unwrap();
        let fc = Op::Linear(Linear {
            in_features: 4,
            out_features: 2,
            bias: true,
        });
        g.output = g.add("fc".into(), fc, &[f], ("h", None), None).unwrap();
        g
    }

    fn ones(g: &Graph) -> Params {
        let mut tensors = BTreeMap::new();
        for s in g.param_specs() {
            tensors.insert(s.name, ArrayD::from_elem(s.slot.shape, 1.0));
        }
        Params {
            tensors,
            dtype: DType::F32,
        }
    }

    #[test]
    fn exports_ops_initializers_and_io() {
        let g = small();
        let m = to_model(&g, &ones(&g)).unwrap();
        let graph = m.graph.unwrap();
        let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(
            ops,
            [
                "Conv",
                "BatchNormalization",
                "Slice",
                "Pad",
                "Add",
                "AveragePool",
                "GlobalAveragePool",
                "Flatten",
                "Gemm"
            ]
        );
        let pool = &graph.node[5];
        let cip = pool
            .attribute
            .iter()
            .find(|a| a.name == "count_include_pad");
        assert_eq!(cip.map(|a| a.i), Some(1));
        let inits: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        assert!(inits.contains(&"c.bn.running_var"));
        assert!(inits.contains(&"fc.bias"));
        assert!(!inits.iter().any(|n| n.ends_with("num_batches_tracked")));
        assert_eq!(graph.input[0].name, "input");
        assert_eq!(graph.output[0].name, "output");
        assert_eq!(graph.node.last().unwrap().output, ["output"]);
        // The encoding round-trips through prost.
        let bytes = to_onnx(&g, &ones(&g)).unwrap();
        let back = ModelProto::decode(bytes.as_slice()).unwrap();
        assert_eq!(back.opset_import[0].version, OPSET);
    }

    #[test]
    fn missing_or_misshaped_weights_name_the_tensor() {
        let g = small();
        let mut p = ones(&g);
        p.tensors.remove("c.bn.running_mean");
        let e = to_onnx(&g, &p).unwrap_err().to_string();
        assert!(e.contains("c.bn.running_mean"), "{e}");
        let mut p = ones(&g);
        p.tensors
            .insert("fc.weight".into(), ArrayD::from_elem(vec![2, 5], 1.0));
        let e = to_onnx(&g, &p).unwrap_err().to_string();
        assert!(e.contains("fc.weight") && e.contains("[2, 4]"), "{e}");
        let mut p = ones(&g);
        p.tensors
            .insert("nope".into(), ArrayD::from_elem(vec![1], 1.0));
        let e = to_onnx(&g, &p).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
    }
}
