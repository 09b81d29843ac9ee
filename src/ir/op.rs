//! Operations of the graph IR and their shape rules.
//!
//! Shapes never include the batch dimension: a feature map is `[C, H, W]`, a vector `[F]`.

use serde::Serialize;

pub use super::seq::{Attention, ClassToken, Embedding, Norm, NormKind, Positions, TiedLinear};

/// A value's shape without the batch dimension.
pub type Shape = Vec<usize>;

/// Element-wise activation functions.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Activation {
    Relu,
    /// Per-channel learned slope for negative inputs (PyTorch `nn.PReLU(num_parameters=channels)`).
    Prelu {
        channels: usize,
    },
    LeakyRelu {
        slope: f64,
    },
    Tanh,
    Sigmoid,
    /// Exact (erf) GELU, PyTorch's default.
    Gelu,
    /// GELU's tanh form (`F.gelu(x, approximate='tanh')`, GPT-2's `gelu_new`):
    /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
    GeluTanh,
    /// `x * sigmoid(x)` (Llama's `silu`).
    Silu,
    Identity,
}

impl Activation {
    /// The keyword the language uses for this activation.
    pub fn keyword(&self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Prelu { .. } => "prelu",
            Activation::LeakyRelu { .. } => "leaky_relu",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_tanh",
            Activation::Silu => "silu",
            Activation::Identity => "identity",
        }
    }
}

/// 2-d convolution (PyTorch `nn.Conv2d`): cross-correlation with zero padding, weight OIHW.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Conv2d {
    pub in_channels: usize,
    pub out_channels: usize,
    /// `[kh, kw]`.
    pub kernel: [usize; 2],
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub groups: usize,
    pub bias: bool,
}

/// Batch normalisation over channels (PyTorch `nn.BatchNorm2d` / `BatchNorm1d`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchNorm {
    pub channels: usize,
    pub eps: f64,
}

/// Fully connected layer (PyTorch `nn.Linear`): `y = x @ w.t() + b`, weight `(out, in)`.
/// On a vector `[in]` it gives `[out]`; on a sequence `[T, in]` it acts on each token
/// (the last axis), giving `[T, out]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Linear {
    pub in_features: usize,
    pub out_features: usize,
    pub bias: bool,
}

/// Windowed max or average pooling. Max pooling pads with -inf; average pooling counts
/// padded zeros (PyTorch's `count_include_pad=True`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pool {
    pub kernel: [usize; 2],
    pub stride: usize,
    pub padding: usize,
}

/// He et al.'s option-A shortcut: take every `stride`-th pixel and append zero channels up
/// to `out_channels`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShortcutPad {
    pub stride: usize,
    pub out_channels: usize,
}

/// One operation of the graph.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Input,
    Conv2d(Conv2d),
    BatchNorm(BatchNorm),
    Activation(Activation),
    MaxPool(Pool),
    AvgPool(Pool),
    /// Mean over H and W; the output keeps `[C, 1, 1]` like `nn.AdaptiveAvgPool2d(1)`.
    GlobalAvgPool,
    /// `[C, H, W]` to `[C*H*W]`, channel-major like `torch.flatten(x, 1)`.
    Flatten,
    Linear(Linear),
    /// Element-wise sum of its inputs (port 0 the residual branch, port 1 the shortcut).
    Add,
    /// Softmax over the feature dimension.
    Softmax,
    ShortcutPad(ShortcutPad),
    /// Its inputs' feature maps stacked along the channel axis, in port order
    /// (`torch.cat(xs, 1)`): `[C0, H, W]`, `[C1, H, W]`... to `[C0 + C1 + ..., H, W]`.
    /// A DenseNet layer's output is the concatenation of its input (port 0) and its new
    /// features (port 1).
    Concat,
    // ---- transformer rows (see `seq.rs` for each op's exact semantics) ----
    /// Token ids `[T]` to `[T, dim]`.
    Embedding(Embedding),
    /// Adds learned positions to `[T, dim]`.
    Positions(Positions),
    /// Prepends a learned token: `[T, dim]` to `[T + 1, dim]`.
    ClassToken(ClassToken),
    /// A feature map `[C, H, W]` as `H*W` tokens of width C, row-major over (H, W):
    /// `x.flatten(2).transpose(1, 2)` (a ViT patch embedding is a conv, then this).
    ToTokens,
    /// Layer or RMS norm over the last axis.
    Norm(Norm),
    /// Multi-head attention core: q, k, v (ports 0, 1, 2) to the heads' outputs.
    Attention(Attention),
    /// Element-wise product of two values of one shape (a gated MLP's `act(gate) * up`:
    /// port 0 the activated gate, port 1 up).
    Mul,
    /// Token 0 of `[T, D]` as a vector `[D]` (class-token pooling).
    ClassPool,
    /// A head sharing the token embedding's weight (no tensor of its own).
    TiedLinear(TiedLinear),
}

/// Which role a parameter tensor plays; decides init and whether it is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    ConvWeight,
    LinearWeight,
    Bias,
    BnWeight,
    BnBias,
    RunningMean,
    RunningVar,
    /// int64 scalar counter, shape `[]`.
    NumBatchesTracked,
    PreluWeight,
}

impl ParamKind {
    /// Whether an optimiser updates this tensor (running statistics are buffers).
    pub fn trainable(self) -> bool {
        !matches!(
            self,
            ParamKind::RunningMean | ParamKind::RunningVar | ParamKind::NumBatchesTracked
        )
    }
}

/// A parameter tensor's PyTorch-style suffix, shape and role.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamSlot {
    pub suffix: &'static str,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
}

fn slot(suffix: &'static str, shape: Vec<usize>, kind: ParamKind) -> ParamSlot {
    ParamSlot {
        suffix,
        shape,
        kind,
    }
}

impl Op {
    /// Short lower-case name used in tables and JSON.
    /// Whether this is a transformer op (`seq.rs`): its values are token sequences or
    /// ids, or it reads them.
    pub fn is_sequence(&self) -> bool {
        matches!(
            self,
            Op::Embedding(_)
                | Op::Positions(_)
                | Op::ClassToken(_)
                | Op::ToTokens
                | Op::Norm(_)
                | Op::Attention(_)
                | Op::Mul
                | Op::ClassPool
                | Op::TiedLinear(_)
        )
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            Op::Input => "input",
            Op::Conv2d(_) => "conv2d",
            Op::BatchNorm(_) => "batch_norm",
            Op::Activation(a) => a.keyword(),
            Op::MaxPool(_) => "max_pool",
            Op::AvgPool(_) => "avg_pool",
            Op::GlobalAvgPool => "global_avg_pool",
            Op::Flatten => "flatten",
            Op::Linear(_) => "linear",
            Op::Add => "add",
            Op::Softmax => "softmax",
            Op::ShortcutPad(_) => "shortcut_pad",
            Op::Concat => "concat",
            Op::Embedding(_) => "embedding",
            Op::Positions(_) => "positions",
            Op::ClassToken(_) => "class_token",
            Op::ToTokens => "to_tokens",
            Op::Norm(n) => match n.kind {
                NormKind::Layer => "layer_norm",
                NormKind::Rms => "rms_norm",
            },
            Op::Attention(_) => "attention",
            Op::Mul => "mul",
            Op::ClassPool => "class_pool",
            Op::TiedLinear(_) => "tied_linear",
        }
    }

    /// The parameter tensors this op owns, in PyTorch's state_dict order.
    pub fn param_slots(&self) -> Vec<ParamSlot> {
        match self {
            Op::Conv2d(c) => {
                let mut v = vec![slot(
                    "weight",
                    vec![
                        c.out_channels,
                        c.in_channels / c.groups.max(1),
                        c.kernel[0],
                        c.kernel[1],
                    ],
                    ParamKind::ConvWeight,
                )];
                if c.bias {
                    v.push(slot("bias", vec![c.out_channels], ParamKind::Bias));
                }
                v
            }
            Op::Linear(l) => {
                let mut v = vec![slot(
                    "weight",
                    vec![l.out_features, l.in_features],
                    ParamKind::LinearWeight,
                )];
                if l.bias {
                    v.push(slot("bias", vec![l.out_features], ParamKind::Bias));
                }
                v
            }
            Op::BatchNorm(b) => vec![
                slot("weight", vec![b.channels], ParamKind::BnWeight),
                slot("bias", vec![b.channels], ParamKind::BnBias),
                slot("running_mean", vec![b.channels], ParamKind::RunningMean),
                slot("running_var", vec![b.channels], ParamKind::RunningVar),
                slot("num_batches_tracked", vec![], ParamKind::NumBatchesTracked),
            ],
            Op::Activation(Activation::Prelu { channels }) => {
                vec![slot("weight", vec![*channels], ParamKind::PreluWeight)]
            }
            // Tables are initialised like linear weights, a class token and a norm's shift
            // like a batch norm's shift, a norm's scale like its scale (ParamKind decides
            // initialisation, which these share).
            Op::Embedding(e) => vec![slot(
                "weight",
                vec![e.vocab, e.dim],
                ParamKind::LinearWeight,
            )],
            Op::Positions(p) => vec![slot(
                "weight",
                vec![p.tokens, p.dim],
                ParamKind::LinearWeight,
            )],
            Op::ClassToken(c) => vec![slot("weight", vec![c.dim], ParamKind::BnBias)],
            Op::Norm(n) => {
                let mut v = vec![slot("weight", vec![n.dim], ParamKind::BnWeight)];
                if n.bias && n.kind == NormKind::Layer {
                    v.push(slot("bias", vec![n.dim], ParamKind::BnBias));
                }
                v
            }
            _ => vec![],
        }
    }

    /// Multiply-accumulates for one sample producing `out` (convs, linears and the
    /// products of attention; element-wise ops count none).
    pub fn macs(&self, out: &Shape) -> u64 {
        // Linears over a sequence run once per token.
        let tokens = if out.len() == 2 { out[0] as u64 } else { 1 };
        match self {
            Op::Conv2d(c) => {
                let spatial: usize = out.iter().skip(1).product();
                (c.out_channels
                    * spatial
                    * (c.in_channels / c.groups.max(1))
                    * c.kernel[0]
                    * c.kernel[1]) as u64
            }
            Op::Linear(l) => (l.in_features as u64)
                .saturating_mul(l.out_features as u64)
                .saturating_mul(tokens),
            Op::TiedLinear(l) => (l.dim as u64)
                .saturating_mul(l.vocab as u64)
                .saturating_mul(tokens),
            // q k^T and the weighted sum of v: T x T x head_dim per head, each.
            Op::Attention(a) => 2 * tokens * tokens * (a.heads * a.head_dim) as u64,
            _ => 0,
        }
    }

    /// Output shape from input shapes, or a sentence saying why the inputs do not fit.
    pub fn infer_shape(&self, inputs: &[&Shape]) -> Result<Shape, String> {
        let one = |what: &str| -> Result<&Shape, String> {
            match inputs {
                [s] => Ok(*s),
                _ => Err(format!("{what} takes one input, got {}", inputs.len())),
            }
        };
        let image = |what: &str| -> Result<[usize; 3], String> {
            let s = one(what)?;
            match s.as_slice() {
                [c, h, w] => Ok([*c, *h, *w]),
                _ => Err(format!(
                    "{what} needs a CxHxW feature map, but its input is a vector of {}",
                    s.iter().product::<usize>()
                )),
            }
        };
        match self {
            Op::Input => Err("an input node has no inputs to infer from".into()),
            Op::Conv2d(c) => {
                let [ci, h, w] = image("a convolution")?;
                if ci != c.in_channels {
                    return Err(format!(
                        "the convolution expects {} input channels but receives {ci}",
                        c.in_channels
                    ));
                }
                if c.groups == 0 || ci % c.groups != 0 || c.out_channels % c.groups != 0 {
                    return Err(format!(
                        "groups {} must divide both the input channels ({ci}) and the output channels ({})",
                        c.groups, c.out_channels
                    ));
                }
                let oh = window_out(h, c.kernel[0], c.stride, c.padding, c.dilation)?;
                let ow = window_out(w, c.kernel[1], c.stride, c.padding, c.dilation)?;
                Ok(vec![c.out_channels, oh, ow])
            }
            Op::BatchNorm(b) => {
                let s = one("batch norm")?;
                if s[0] != b.channels {
                    return Err(format!(
                        "batch norm has {} channels but its input has {}",
                        b.channels, s[0]
                    ));
                }
                Ok(s.clone())
            }
            Op::Activation(a) => {
                let s = one("an activation")?;
                if let Activation::Prelu { channels } = a {
                    if s[0] != *channels {
                        return Err(format!(
                            "prelu has {channels} channels but its input has {}",
                            s[0]
                        ));
                    }
                }
                Ok(s.clone())
            }
            Op::MaxPool(p) | Op::AvgPool(p) => {
                let [c, h, w] = image("pooling")?;
                if 2 * p.padding > p.kernel[0].min(p.kernel[1]) {
                    return Err(format!(
                        "pool padding {} is more than half the kernel {}x{}",
                        p.padding, p.kernel[0], p.kernel[1]
                    ));
                }
                let oh = window_out(h, p.kernel[0], p.stride, p.padding, 1)?;
                let ow = window_out(w, p.kernel[1], p.stride, p.padding, 1)?;
                Ok(vec![c, oh, ow])
            }
            Op::GlobalAvgPool => {
                let [c, _, _] = image("global average pooling")?;
                Ok(vec![c, 1, 1])
            }
            Op::Flatten => Ok(vec![one("flatten")?.iter().product()]),
            Op::Linear(l) => {
                let s = one("a fully connected layer")?;
                if s.len() != 1 && s.len() != 2 {
                    return Err("a fully connected layer needs a flattened input".into());
                }
                let last = s[s.len() - 1];
                if last != l.in_features {
                    return Err(format!(
                        "the fully connected layer expects {} inputs but receives {last}",
                        l.in_features
                    ));
                }
                let mut out = s.clone();
                *out.last_mut().expect("not empty") = l.out_features;
                Ok(out)
            }
            Op::Add => {
                let first = inputs.first().ok_or("add needs inputs")?;
                for s in inputs {
                    if s != first {
                        return Err(format!(
                            "a residual add joins shapes {} and {}",
                            show_shape(first),
                            show_shape(s)
                        ));
                    }
                }
                Ok((*first).clone())
            }
            Op::Softmax => Ok(one("softmax")?.clone()),
            Op::ShortcutPad(p) => {
                let [c, h, w] = image("a padding shortcut")?;
                if p.out_channels < c {
                    return Err(format!(
                        "a padding shortcut cannot shrink {c} channels to {}",
                        p.out_channels
                    ));
                }
                let oh = window_out(h, 1, p.stride, 0, 1)?;
                let ow = window_out(w, 1, p.stride, 0, 1)?;
                Ok(vec![p.out_channels, oh, ow])
            }
            Op::Concat => concat_shape(inputs),
            _ => super::seq::infer_shape(self, inputs),
        }
    }
}

/// `[C0 + C1 + ..., H, W]` from feature maps of one size.
fn concat_shape(inputs: &[&Shape]) -> Result<Shape, String> {
    if inputs.len() < 2 {
        return Err(format!(
            "a concatenation joins at least two values, got {}",
            inputs.len()
        ));
    }
    let mut channels = 0usize;
    for s in inputs {
        let [c, h, w] = s.as_slice() else {
            return Err(format!(
                "a concatenation joins CxHxW feature maps, but one input is {}",
                show_shape(s)
            ));
        };
        if [*h, *w] != inputs[0][1..] {
            return Err(format!(
                "a concatenation joins feature maps of one size, got {} and {}",
                show_shape(inputs[0]),
                show_shape(s)
            ));
        }
        channels = channels.checked_add(*c).ok_or("too many channels")?;
    }
    Ok(vec![channels, inputs[0][1], inputs[0][2]])
}

/// PyTorch's output size of a sliding window.
fn window_out(
    size: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
) -> Result<usize, String> {
    if stride == 0 || dilation == 0 || kernel == 0 {
        return Err("kernel, stride and dilation must be at least 1".into());
    }
    let span = dilation
        .checked_mul(kernel - 1)
        .and_then(|s| s.checked_add(1))
        .ok_or("the kernel is too large")?;
    let padded = size
        .checked_add(2 * pad)
        .ok_or("the padding is too large")?;
    if padded < span {
        return Err(format!(
            "a {kernel}x{kernel} window (dilation {dilation}) does not fit an input of size {size} with padding {pad}"
        ));
    }
    Ok((padded - span) / stride + 1)
}

/// `64x8x8` or `10` for a vector.
pub fn show_shape(s: &Shape) -> String {
    s.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}
