//! The module-level helpers a transformer's PyTorch file needs (written only when the
//! graph uses them): learned positions and the class token as modules holding `weight`
//! (so their state_dict keys are r2rc's), layer and RMS norm as transformers computes them,
//! and the attention core (grouped-query heads, rotate-half RoPE with tables built as
//! transformers' Llama builds them in f32, causal mask).

use crate::ir::{Graph, Op};

const POSITIONS: &str = r#"class Positions(nn.Module):
    """Adds a learned table [tokens, dim], its first T rows for T tokens."""

    def __init__(self, tokens, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(tokens, dim))

    def forward(self, x):
        return x + self.weight[: x.shape[1]]


"#;

const CLASS_TOKEN: &str = r#"class ClassToken(nn.Module):
    """Prepends a learned token [dim] to every sequence."""

    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return torch.cat([self.weight.expand(x.shape[0], 1, -1), x], dim=1)


"#;

const NORM: &str = r#"class Norm(nn.Module):
    """Layer norm, or RMS norm as transformers' LlamaRMSNorm (statistics in float32)."""

    def __init__(self, dim, eps, rms, bias):
        super().__init__()
        self.eps, self.rms = eps, rms
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias and not rms else None

    def forward(self, x):
        if self.rms:
            h = x.float()
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
            return self.weight * h.to(x.dtype)
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


"#;

const ATTENTION: &str = r#"def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def attention(q, k, v, heads, kv_heads, head_dim, theta, causal):
    """softmax(q k^T / sqrt(head_dim)) v per head; query head h reads kv head
    h // (heads // kv_heads); RoPE (rotate-half) with base theta when given."""
    n, t, _ = q.shape
    q = q.view(n, t, heads, head_dim).transpose(1, 2)
    k = k.view(n, t, kv_heads, head_dim).transpose(1, 2)
    v = v.view(n, t, kv_heads, head_dim).transpose(1, 2)
    if theta is not None:
        steps = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
        inv_freq = 1.0 / (theta ** steps)
        freqs = torch.arange(t, dtype=torch.float32)[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1).to(q.device)
        cos, sin = emb.cos().to(q.dtype), emb.sin().to(q.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
    group = heads // kv_heads
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
    if causal:
        future = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    out = scores.softmax(dim=-1) @ v
    return out.transpose(1, 2).reshape(n, t, heads * head_dim)


"#;

/// The helpers `graph` uses, in a fixed order (empty for a conv net).
pub(super) fn helpers(graph: &Graph) -> String {
    let uses = |f: fn(&Op) -> bool| graph.g.node_weights().any(|n| f(&n.op));
    let mut s = String::new();
    if uses(|op| matches!(op, Op::Attention(_))) {
        s.push_str("import math\n\n\n");
    }
    for (used, text) in [
        (uses(|op| matches!(op, Op::Positions(_))), POSITIONS),
        (uses(|op| matches!(op, Op::ClassToken(_))), CLASS_TOKEN),
        (uses(|op| matches!(op, Op::Norm(_))), NORM),
        (uses(|op| matches!(op, Op::Attention(_))), ATTENTION),
    ] {
        if used {
            s.push_str(text);
        }
    }
    s
}
