//! The module tree: every parameter-owning layer at the attribute path of its dotted name
//! (`conv2_1.downsample.0`), with numbered children gathered in an `nn.Sequential`.

use crate::error::Result;
use crate::ir::{Graph, NodeIndex};

use super::unsupported;

/// Attributes and methods of `nn.Module` and of the layer classes used here: a child
/// module cannot take one of these names.
const TORCH_ATTRIBUTES: &[&str] = &[
    "add_module",
    "apply",
    "bfloat16",
    "buffers",
    "call_super_init",
    "children",
    "compile",
    "cpu",
    "cuda",
    "double",
    "dump_patches",
    "eval",
    "extra_repr",
    "float",
    "forward",
    "get_buffer",
    "get_extra_state",
    "get_parameter",
    "get_submodule",
    "half",
    "ipu",
    "load_state_dict",
    "modules",
    "named_buffers",
    "named_children",
    "named_modules",
    "named_parameters",
    "parameters",
    "register_backward_hook",
    "register_buffer",
    "register_forward_hook",
    "register_forward_pre_hook",
    "register_full_backward_hook",
    "register_full_backward_pre_hook",
    "register_load_state_dict_post_hook",
    "register_module",
    "register_parameter",
    "register_state_dict_pre_hook",
    "requires_grad_",
    "set_extra_state",
    "share_memory",
    "state_dict",
    "to",
    "to_empty",
    "train",
    "training",
    "type",
    "xpu",
    "zero_grad",
    "mtia",
    // Conv2d, Linear, BatchNorm, PReLU and Sequential.
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "transposed",
    "output_padding",
    "groups",
    "padding_mode",
    "weight",
    "bias",
    "in_features",
    "out_features",
    "num_features",
    "eps",
    "momentum",
    "affine",
    "track_running_stats",
    "running_mean",
    "running_var",
    "num_batches_tracked",
    "num_parameters",
    "init",
    "reset_parameters",
    "reset_running_stats",
    "append",
    "extend",
    "insert",
    "pop",
];

/// One entry of the module tree: a path segment, the graph node that owns parameters
/// there (if any), and the children in order of first appearance.
pub(super) struct Entry {
    pub(super) segment: String,
    pub(super) node: Option<NodeIndex>,
    pub(super) children: Vec<usize>,
}

pub(super) struct Tree {
    /// Entry 0 is the root (the model itself).
    pub(super) entries: Vec<Entry>,
}

impl Tree {
    pub(super) fn build(graph: &Graph) -> Result<Tree> {
        let mut t = Tree {
            entries: vec![Entry {
                segment: String::new(),
                node: None,
                children: Vec::new(),
            }],
        };
        for n in graph.order() {
            if graph.g[n].op.param_slots().is_empty() {
                continue;
            }
            let name = &graph.g[n].name;
            let mut at = 0;
            for seg in name.split('.') {
                check_segment(seg, name)?;
                at = match t.child(at, seg) {
                    Some(c) => c,
                    None => {
                        t.entries.push(Entry {
                            segment: seg.to_string(),
                            node: None,
                            children: Vec::new(),
                        });
                        let c = t.entries.len() - 1;
                        t.entries[at].children.push(c);
                        c
                    }
                };
            }
            if t.entries[at].node.is_some() {
                return Err(unsupported(format!("two layers are named `{name}`")));
            }
            t.entries[at].node = Some(n);
        }
        // Numbered children are kept in numeric order so `nn.Sequential` indices match.
        for i in 0..t.entries.len() {
            if t.sequential(i) {
                let mut kids = std::mem::take(&mut t.entries[i].children);
                kids.sort_by_key(|&c| t.entries[c].segment.parse::<usize>().unwrap_or(0));
                t.entries[i].children = kids;
            }
        }
        Ok(t)
    }

    fn child(&self, at: usize, seg: &str) -> Option<usize> {
        self.entries[at]
            .children
            .iter()
            .copied()
            .find(|&c| self.entries[c].segment == seg)
    }

    /// A container without parameters of its own whose children are exactly `0..k`.
    pub(super) fn sequential(&self, i: usize) -> bool {
        let e = &self.entries[i];
        if i == 0 || e.node.is_some() || e.children.is_empty() {
            return false;
        }
        let mut idx: Vec<usize> = Vec::new();
        for &c in &e.children {
            match self.entries[c].segment.parse::<usize>() {
                Ok(k) if self.entries[c].segment == k.to_string() => idx.push(k),
                _ => return false,
            }
        }
        idx.sort_unstable();
        idx.iter().enumerate().all(|(i, &k)| i == k)
    }
}

/// A dotted name segment must be usable as a child module's name.
fn check_segment(seg: &str, name: &str) -> Result<()> {
    let ident = seg
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let number = !seg.is_empty() && seg.chars().all(|c| c.is_ascii_digit());
    if !(ident || number) {
        return Err(unsupported(format!(
            "layer `{name}`: `{seg}` is not a name PyTorch can use for a submodule"
        )));
    }
    if seg.starts_with('_') || TORCH_ATTRIBUTES.contains(&seg) {
        return Err(unsupported(format!(
            "layer `{name}`: `{seg}` is an attribute of torch.nn.Module or a layer class, so \
             no submodule can have that name"
        )));
    }
    Ok(())
}
