//! The syntax tree of an `.arch` file. Every node carries its byte span; no pest type
//! escapes the `syntax` module.

use crate::error::Span;

/// A name as written, with its place.
#[derive(Debug, Clone, PartialEq)]
pub struct Ident {
    pub text: String,
    pub span: Span,
}

/// An arithmetic expression over numbers and architecture parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Number(f64, Span),
    Var(Ident),
    Neg(Box<Expr>, Span),
    Binary(Box<Expr>, BinOp, Box<Expr>, Span),
    Floor(Box<Expr>, Span),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

impl Expr {
    pub fn span(&self) -> Span {
        match self {
            Expr::Number(_, s) | Expr::Neg(_, s) | Expr::Binary(_, _, _, s) | Expr::Floor(_, s) => {
                *s
            }
            Expr::Var(i) => i.span,
        }
    }
}

/// `p = EXPR` in the `arch` line.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamDef {
    pub name: Ident,
    pub value: Expr,
}

/// Integers separated by `x`: `3x32x32`, `7x7`, `16x16`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dims {
    pub values: Vec<usize>,
    pub span: Span,
}

/// An activation as written: `relu`, `leaky_relu(0.2)`.
#[derive(Debug, Clone, PartialEq)]
pub struct ActSpec {
    pub name: Ident,
    pub arg: Option<f64>,
    pub span: Span,
}

/// A header line that changes the defaults of the whole file.
#[derive(Debug, Clone, PartialEq)]
pub enum Header {
    Input(Dims),
    /// `input T tokens, vocab V`.
    Tokens {
        tokens: usize,
        vocab: usize,
        span: Span,
    },
    /// `bias` (true) or `no bias` (false).
    Bias(bool, Span),
    Postnorm(Span),
    /// `preact`: blocks and transitions are BN-act-conv (pre-activation).
    Preact(Span),
    Norm(Ident),
    Act(ActSpec),
    Shortcut(Ident),
    Eps(f64, Span),
}

/// An option after an item or layer: `stride 2`, `no norm`, `act prelu`.
#[derive(Debug, Clone, PartialEq)]
pub enum OptionKind {
    Stride(usize),
    Pad(usize),
    Dilation(usize),
    Groups(usize),
    Bias,
    Norm,
    /// `no norm`, `no bias`, `no act`: the word after `no`.
    No(Ident),
    Act(ActSpec),
    Shortcut(Ident),
    /// `4 kv heads`.
    KvHeads(usize),
    /// `head dim 64`.
    HeadDim(usize),
    /// `rope 10000`.
    Rope(f64),
    Causal,
    Tied,
    /// `dense` after `x N`: DenseNet's concatenating block.
    Dense,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ItemOption {
    pub kind: OptionKind,
    pub span: Span,
}

/// `KxK, WIDTH` with its options (a row item or a layer inside a block).
#[derive(Debug, Clone, PartialEq)]
pub struct ConvSpec {
    pub kernel: Dims,
    pub width: Expr,
    pub options: Vec<ItemOption>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ItemKind {
    Conv(ConvSpec),
    /// `KxK max pool` (`max` true) or `KxK avg pool`.
    Pool {
        kernel: Dims,
        max: bool,
    },
    /// `avg pool` without a size.
    GlobalAvgPool,
    /// `N-d fc`.
    Fc {
        features: usize,
    },
    Softmax,
    /// `transition THETA`: DenseNet's transition with compression THETA.
    Transition {
        compression: Expr,
    },
    /// `[L1; L2; ...] x N`.
    Block {
        layers: Vec<ConvSpec>,
        count: usize,
    },
    /// `D-d token embedding`.
    TokenEmbedding {
        dim: usize,
    },
    /// `learned positions`.
    Positions,
    /// `class token`: prepends one (the first in a file) or selects token 0 (a later one).
    ClassToken,
    /// A bare `norm` that does not follow a convolution: a layer or RMS norm.
    Norm,
    /// `[attention ...; mlp ...] x N`: N transformer layers of residual sublayers.
    Transformer {
        sublayers: Vec<Sublayer>,
        count: usize,
    },
}

/// A transformer block's sublayer with its options.
#[derive(Debug, Clone, PartialEq)]
pub struct Sublayer {
    pub kind: SublayerKind,
    pub options: Vec<ItemOption>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SublayerKind {
    /// `attention H heads`.
    Attention { heads: usize },
    /// `mlp W` or `mlp W gated`.
    Mlp { width: usize, gated: bool },
}

/// One item of a row with the options written after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub kind: ItemKind,
    pub options: Vec<ItemOption>,
    pub span: Span,
}

/// `NAME [HxW] ITEM, ...` with its continuation lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub name: Ident,
    pub size: Option<Dims>,
    pub items: Vec<Item>,
    pub span: Span,
}

/// A whole `.arch` file.
#[derive(Debug, Clone, PartialEq)]
pub struct File {
    pub name: Ident,
    pub params: Vec<ParamDef>,
    /// Span of the parameter list `( ... )`, or of the name when there is none.
    pub params_span: Span,
    pub headers: Vec<Header>,
    pub rows: Vec<Row>,
}
