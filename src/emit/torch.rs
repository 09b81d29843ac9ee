//! PyTorch export: the graph as a standalone `torch.nn.Module` source file (no r2rc
//! import). Layers with parameters become modules placed so that their attribute paths
//! are the graph's dotted names (`conv2_1.bn1` is `self.conv2_1.bn1`, `downsample.0` an
//! `nn.Sequential` entry), so the module's `state_dict` keys and shapes equal the
//! safetensors r2rc writes and `load_state_dict(..., strict=True)` takes them as they
//! are. Parameter-free ops are functional calls in `forward`, with the eval-mode
//! semantics of r2rc's executor (average pooling counts padding, option-A shortcuts
//! subsample from pixel 0 and append zero channels, softmax over dim 1, exact GELU).
//!
//! This file writes the module's source and its `__init__`; `torch/tree.rs` places the
//! parameter-owning layers in a module tree under their dotted names, and
//! `torch/forward.rs` writes `forward`, `torch/seq.rs` the transformer ops' helpers.

mod forward;
mod seq;
mod tree;

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::error::{Error, Result};
use crate::ir::{show_shape, Activation, Graph, NodeIndex, NormKind, Op};
use forward::forward_lines;
use tree::Tree;

/// Python keywords and soft keywords; a layer name segment equal to one is reached with
/// `getattr`.
const PY_KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield",
];

/// Names the generated file itself uses at module level or in `forward`.
const FILE_NAMES: &[&str] = &[
    "torch",
    "math",
    "Positions",
    "ClassToken",
    "Norm",
    "attention",
    "rotate_half",
    "nn",
    "F",
    "x",
    "self",
    "INPUT_SHAPE",
    "OUTPUT_SHAPE",
];

fn unsupported(message: String) -> Error {
    Error::usage(
        format!("cannot write PyTorch code: {message}"),
        Some("rename the row in the .arch file".into()),
    )
}

fn is_identifier(seg: &str) -> bool {
    seg.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && !PY_KEYWORDS.contains(&seg)
}

/// Python source for a float that reads back as the same f64.
fn py_float(v: f64) -> String {
    if v.is_finite() {
        format!("{v:?}")
    } else if v.is_nan() {
        "float('nan')".into()
    } else if v > 0.0 {
        "float('inf')".into()
    } else {
        "float('-inf')".into()
    }
}

fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// `3` for a square kernel, `(3, 5)` otherwise.
fn py_pair(k: [usize; 2]) -> String {
    if k[0] == k[1] {
        k[0].to_string()
    } else {
        format!("({}, {})", k[0], k[1])
    }
}

/// The class name: the `arch` name, made a valid Python identifier that does not shadow
/// the file's imports.
fn class_name(graph: &Graph) -> String {
    let mut s: String = graph
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s = format!("Net{s}");
    }
    if PY_KEYWORDS.contains(&s.as_str()) || FILE_NAMES.contains(&s.as_str()) {
        s.push_str("Net");
    }
    s
}

/// The constructor of a parameter-owning node's module.
fn constructor(graph: &Graph, n: NodeIndex) -> Result<String> {
    let node = &graph.g[n];
    Ok(match &node.op {
        Op::Conv2d(c) => {
            let mut s = format!(
                "nn.Conv2d({}, {}, {}",
                c.in_channels,
                c.out_channels,
                py_pair(c.kernel)
            );
            if c.stride != 1 {
                write!(s, ", stride={}", c.stride).unwrap();
            }
            if c.padding != 0 {
                write!(s, ", padding={}", c.padding).unwrap();
            }
            if c.dilation != 1 {
                write!(s, ", dilation={}", c.dilation).unwrap();
            }
            if c.groups != 1 {
                write!(s, ", groups={}", c.groups).unwrap();
            }
            if !c.bias {
                s.push_str(", bias=False");
            }
            s.push(')');
            s
        }
        Op::BatchNorm(b) => {
            let dims = match node.shape.len() {
                3 => "2d",
                1 => "1d",
                _ => {
                    return Err(unsupported(format!(
                        "batch norm `{}` normalises a {} value; PyTorch has BatchNorm1d for \
                         vectors and BatchNorm2d for CxHxW maps",
                        node.name,
                        show_shape(&node.shape)
                    )))
                }
            };
            format!(
                "nn.BatchNorm{dims}({}, eps={})",
                b.channels,
                py_float(b.eps)
            )
        }
        Op::Linear(l) => {
            let bias = if l.bias { "" } else { ", bias=False" };
            format!("nn.Linear({}, {}{bias})", l.in_features, l.out_features)
        }
        Op::Activation(Activation::Prelu { channels }) => {
            format!("nn.PReLU(num_parameters={channels})")
        }
        Op::Embedding(e) => format!("nn.Embedding({}, {})", e.vocab, e.dim),
        Op::Positions(p) => format!("Positions({}, {})", p.tokens, p.dim),
        Op::ClassToken(c) => format!("ClassToken({})", c.dim),
        Op::Norm(n) => format!(
            "Norm({}, {}, rms={}, bias={})",
            n.dim,
            py_float(n.eps),
            py_bool(n.kind == NormKind::Rms),
            py_bool(n.bias)
        ),
        other => {
            return Err(unsupported(format!(
                "layer `{}` ({}) has parameters but no PyTorch module here",
                node.name,
                other.kind_name()
            )))
        }
    })
}

struct Writer<'a> {
    graph: &'a Graph,
    tree: Tree,
    /// Python expression reaching each tree entry (`self.conv2_1.downsample[0]`).
    access: Vec<String>,
    /// Expression reaching each parameter-owning node's module.
    module_of: BTreeMap<NodeIndex, String>,
}

impl Writer<'_> {
    /// Fills `access` top-down and writes the `__init__` lines for entry `i`'s subtree,
    /// depth first.
    fn init_lines(&mut self, i: usize, out: &mut String) -> Result<()> {
        let kids = self.tree.entries[i].children.clone();
        let parent = self.access[i].clone();
        let seq = self.tree.sequential(i);
        for (pos, &c) in kids.iter().enumerate() {
            let seg = self.tree.entries[c].segment.clone();
            let access = if seq {
                format!("{parent}[{pos}]")
            } else if is_identifier(&seg) {
                format!("{parent}.{seg}")
            } else {
                format!("getattr({parent}, \"{seg}\")")
            };
            self.access[c] = access.clone();
            if let Some(n) = self.tree.entries[c].node {
                self.module_of.insert(n, access.clone());
            }
            // A Sequential's items were written on its own line(s).
            if !seq {
                let value = self.value(c)?;
                if is_identifier(&seg) {
                    writeln!(out, "        {access} = {value}").unwrap();
                } else {
                    writeln!(out, "        {parent}.add_module(\"{seg}\", {value})").unwrap();
                }
                if self.tree.sequential(c) {
                    for &k in &self.tree.entries[c].children {
                        writeln!(out, "            {},", self.value(k)?).unwrap();
                    }
                    writeln!(out, "        )").unwrap();
                }
            }
            self.init_lines(c, out)?;
        }
        Ok(())
    }

    /// The module created for entry `c`: its layer, a Sequential, or an empty container.
    fn value(&self, c: usize) -> Result<String> {
        Ok(match self.tree.entries[c].node {
            Some(n) => constructor(self.graph, n)?,
            None if self.tree.sequential(c) => "nn.Sequential(".into(),
            None => "nn.Module()".into(),
        })
    }
}

/// Python source of a standalone `torch.nn.Module` computing `graph` (class named after
/// the `arch`). The file needs only `torch`.
pub fn to_torch(graph: &Graph) -> Result<String> {
    let tree = Tree::build(graph)?;
    let count = tree.entries.len();
    let mut w = Writer {
        graph,
        tree,
        access: vec!["self".to_string(); count],
        module_of: BTreeMap::new(),
    };
    let mut init = String::new();
    w.init_lines(0, &mut init)?;
    let forward = forward_lines(graph, &w.module_of)?;
    let class = class_name(graph);
    let shape = |s: &[usize]| {
        let inner: Vec<String> = s.iter().map(|d| d.to_string()).collect();
        if inner.len() == 1 {
            format!("({},)", inner[0])
        } else {
            format!("({})", inner.join(", "))
        }
    };
    let mut s = String::new();
    writeln!(
        s,
        "\"\"\"{} as a PyTorch module, written by r2rc {}.\n\n\
         The state_dict keys and shapes are those of r2rc's safetensors for this network:\n\n    \
         from safetensors.torch import load_file\n    \
         model = {class}()\n    \
         model.load_state_dict(load_file(\"weights.safetensors\"))\n    \
         model.eval()\n\n\
         `python this_file.py [weights.safetensors]` runs one random input.\n\"\"\"\n",
        graph.name,
        env!("CARGO_PKG_VERSION")
    )
    .unwrap();
    s.push_str("import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n\n");
    s.push_str(&seq::helpers(graph));
    writeln!(s, "INPUT_SHAPE = {}", shape(graph.input_shape())).unwrap();
    writeln!(s, "OUTPUT_SHAPE = {}\n\n", shape(graph.output_shape())).unwrap();
    writeln!(s, "class {class}(nn.Module):").unwrap();
    s.push_str("    def __init__(self):\n        super().__init__()\n");
    s.push_str(&init);
    s.push_str("\n    def forward(self, x):\n");
    s.push_str(&forward);
    writeln!(
        s,
        "\n\nif __name__ == \"__main__\":\n    \
         import sys\n\n    \
         model = {class}()\n    \
         if len(sys.argv) > 1:\n        \
         from safetensors.torch import load_file\n\n        \
         model.load_state_dict(load_file(sys.argv[1]))\n    \
         model.eval()\n    \
         with torch.no_grad():\n        \
         y = model({})\n    \
         print(\"output\", tuple(y.shape))",
        match graph.defaults.vocab {
            Some(v) => format!("torch.randint(0, {v}, (1, *INPUT_SHAPE))"),
            None => "torch.randn(1, *INPUT_SHAPE)".into(),
        }
    )
    .unwrap();
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lower::compile;
    use std::collections::BTreeSet;

    fn example(name: &str) -> Graph {
        let path = format!("{}/examples/{name}.arch", env!("CARGO_MANIFEST_DIR"));
        let src = std::fs::read_to_string(&path).unwrap();
        compile(&src, &[]).unwrap()
    }

    fn fixture(name: &str) -> Graph {
        let path = format!("{}/scripts/interop/{name}.arch", env!("CARGO_MANIFEST_DIR"));
        let src = std::fs::read_to_string(&path).unwrap();
        compile(&src, &[]).unwrap()
    }

    /// The state_dict entries (suffixes) of each layer class, as PyTorch defines them.
    fn state_of(ctor: &str) -> Vec<&'static str> {
        let bias = !ctor.contains("bias=False");
        if ctor.starts_with("nn.Conv2d(") || ctor.starts_with("nn.Linear(") {
            if bias {
                vec!["weight", "bias"]
            } else {
                vec!["weight"]
            }
        } else if ctor.starts_with("nn.BatchNorm") {
            vec![
                "weight",
                "bias",
                "running_mean",
                "running_var",
                "num_batches_tracked",
            ]
        } else if ctor.starts_with("nn.PReLU(") {
            vec!["weight"]
        } else {
            vec![]
        }
    }

    /// Dotted path of a Python access expression (`self.a[0]`, `getattr(self.b, "1")`).
    fn path_of(expr: &str, seq_paths: &BTreeMap<String, Vec<String>>) -> String {
        if let Some(rest) = expr.strip_prefix("getattr(") {
            let (inner, seg) = rest.rsplit_once(", \"").unwrap();
            let seg = seg.trim_end_matches("\")");
            let p = path_of(inner, seq_paths);
            return if p.is_empty() {
                seg.to_string()
            } else {
                format!("{p}.{seg}")
            };
        }
        let mut path: Vec<String> = Vec::new();
        let body = expr.strip_prefix("self").unwrap();
        let mut rest = body;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix('.') {
                let end = r.find(['.', '[']).unwrap_or(r.len());
                path.push(r[..end].to_string());
                rest = &r[end..];
            } else if let Some(r) = rest.strip_prefix('[') {
                let end = r.find(']').unwrap();
                let pos: usize = r[..end].parse().unwrap();
                let parent = path.join(".");
                path.push(seq_paths[&parent][pos].clone());
                rest = &r[end + 1..];
            } else {
                panic!("cannot read {expr}");
            }
        }
        path.join(".")
    }

    /// Reads the generated `__init__` back as PyTorch would build it and lists the
    /// state_dict keys it produces.
    fn state_dict_keys(src: &str) -> BTreeSet<String> {
        let mut keys = BTreeSet::new();
        let mut seq_paths: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut open: Option<(String, Vec<String>)> = None;
        let init = src
            .split("def __init__(self):")
            .nth(1)
            .unwrap()
            .split("def forward")
            .next()
            .unwrap();
        let add = |path: &str, ctor: &str, keys: &mut BTreeSet<String>| {
            for s in state_of(ctor) {
                keys.insert(format!("{path}.{s}"));
            }
        };
        for line in init.lines().map(str::trim) {
            if line.is_empty() || line.starts_with("super()") {
                continue;
            }
            if let Some((path, items)) = open.as_mut() {
                if line == ")" {
                    let names: Vec<String> = (0..items.len()).map(|i| i.to_string()).collect();
                    for (i, ctor) in items.iter().enumerate() {
                        let p = format!("{path}.{i}");
                        add(&p, ctor, &mut keys);
                    }
                    seq_paths.insert(path.clone(), names);
                    open = None;
                } else {
                    items.push(line.trim_end_matches(',').to_string());
                }
                continue;
            }
            if let Some((lhs, rhs)) = line.split_once(" = ") {
                let path = path_of(lhs, &seq_paths);
                if rhs == "nn.Sequential(" {
                    open = Some((path, Vec::new()));
                } else {
                    add(&path, rhs, &mut keys);
                }
            } else if let Some((obj, rest)) = line.split_once(".add_module(\"") {
                let (seg, ctor) = rest.split_once("\", ").unwrap();
                let parent = path_of(obj, &seq_paths);
                let ctor = ctor.strip_suffix(')').unwrap();
                let path = if parent.is_empty() {
                    seg.to_string()
                } else {
                    format!("{parent}.{seg}")
                };
                add(&path, ctor, &mut keys);
            } else {
                panic!("unexpected __init__ line: {line}");
            }
        }
        keys
    }

    fn spec_keys(g: &Graph) -> BTreeSet<String> {
        g.param_specs().into_iter().map(|s| s.name).collect()
    }

    #[test]
    fn smallconv_source_snapshot() {
        let g = example("smallconv");
        insta::assert_snapshot!(to_torch(&g).unwrap());
    }

    #[test]
    fn resnet_cifar10_source_snapshot() {
        let g = example("resnet_cifar10");
        insta::assert_snapshot!(to_torch(&g).unwrap());
    }

    #[test]
    fn state_dict_keys_equal_param_specs_on_every_example_and_fixture() {
        let mut graphs: Vec<Graph> = [
            "smallconv",
            "resnet_cifar10",
            "resnet_cifar18",
            "resnet18",
            "resnet34",
            "resnet50",
        ]
        .iter()
        .map(|n| example(n))
        .collect();
        graphs.push(fixture("all_ops"));
        graphs.push(fixture("flatten_map"));
        for g in &graphs {
            let src = to_torch(g).unwrap();
            assert_eq!(state_dict_keys(&src), spec_keys(g), "{}", g.name);
        }
    }

    #[test]
    fn every_op_appears_once_per_node() {
        let g = fixture("all_ops");
        let src = written(
            &g,
            &[
                "nn.PReLU(num_parameters=8)",
                "F.leaky_relu(x, negative_slope=",
                "F.gelu(x)",
                "torch.tanh(x)",
                "torch.sigmoid(x)",
                "F.max_pool2d(x, 3, stride=2, padding=1)",
                "F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=True)",
                "nn.BatchNorm2d(8, eps=0.001)",
                "dilation=2, groups=2",
                "[:, :, ::2, ::2], (0, 0, 0, 0, 0, 8))",
                "F.adaptive_avg_pool2d(x, 1)",
                "torch.flatten(x, 1)",
            ],
        );
        // Every node but the input produces exactly one assignment to x.
        let assignments = src.lines().filter(|l| l.trim().starts_with("x = ")).count();
        assert_eq!(assignments, g.g.node_count() - 1);
    }

    #[test]
    fn names_python_cannot_hold_are_refused() {
        let src = std::fs::read_to_string(format!(
            "{}/examples/smallconv.arch",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let bad = src.replace("fc2 ", "forward ");
        let g = compile(&bad, &[]).unwrap();
        let e = to_torch(&g).unwrap_err().to_string();
        assert!(
            e.contains("`forward`") && e.contains("torch.nn.Module"),
            "{e}"
        );
    }

    #[test]
    fn keyword_and_numbered_names_use_getattr() {
        let src = std::fs::read_to_string(format!(
            "{}/examples/smallconv.arch",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let g = compile(&src.replace("fc2 ", "lambda "), &[]).unwrap();
        let py = to_torch(&g).unwrap();
        assert!(
            py.contains("self.add_module(\"lambda\", nn.Linear(150, 10))"),
            "{py}"
        );
        assert!(py.contains("getattr(self, \"lambda\")(x)"), "{py}");
        assert_eq!(state_dict_keys(&py), spec_keys(&g));
    }

    /// `graph`'s PyTorch source, after checking it contains every line of `wants`.
    fn written(graph: &Graph, wants: &[&str]) -> String {
        let src = to_torch(graph).unwrap();
        for want in wants {
            assert!(src.contains(want), "missing `{want}` in:\n{src}");
        }
        src
    }

    /// A decoder's module: the helpers it uses, its modules at r2rc's dotted names, the
    /// attention core and the tied head as calls, token-id inputs in the demo.
    #[test]
    fn a_decoder_is_written_with_its_helpers() {
        let g = crate::emit::onnx::seq::tests::decoder();
        let src = written(
            &g,
            &[
                "import math",
                "class Norm(nn.Module)",
                "def attention(q, k, v, heads, kv_heads, head_dim, theta, causal)",
                "self.embed.token = nn.Embedding(50, 16)",
                "self.layers_1.attention.norm = Norm(16, 1e-5, rms=True, bias=False)",
                "heads=4, kv_heads=2, head_dim=4, theta=10000.0, causal=True)",
                "F.linear(x, self.embed.token.weight)",
                "torch.randint(0, 50, (1, *INPUT_SHAPE))",
            ],
        );
        // Helpers a graph does not use are not written.
        assert!(!src.contains("class Positions") && !src.contains("class ClassToken"));
    }
}
