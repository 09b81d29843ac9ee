//! Text to syntax tree: `parse(&str) -> ast::File`. The grammar is `grammar/arch.pest`.
//!
//! Messages for what the parser refuses (hints, "expected ..." wording) are in `hints.rs`.

pub mod ast;
mod hints;

use pest::iterators::Pair;
use pest::Parser;

use crate::error::{SourceError, SourceErrorKind, Span};
use ast::*;
use hints::syntax_error;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/arch.pest"]
struct ArchParser;

/// Brackets nested deeper than this are refused before parsing, so hostile input cannot
/// exhaust the stack of the recursive-descent parser.
const MAX_NESTING: usize = 64;

/// Parses an `.arch` text.
pub fn parse(src: &str) -> Result<File, SourceError> {
    check_nesting(src)?;
    let mut pairs = ArchParser::parse(Rule::file, src).map_err(|e| syntax_error(src, e))?;
    let file = pairs.next().expect("the file rule matched");
    build_file(file)
}

/// Parses a `--set` value such as `3/16` or `2^-3.5`.
pub fn parse_expr(src: &str) -> Result<Expr, SourceError> {
    check_nesting(src)?;
    let mut pairs = ArchParser::parse(Rule::set_expr, src).map_err(|e| syntax_error(src, e))?;
    let top = pairs.next().expect("set_expr matched");
    let expr = top
        .into_inner()
        .find(|p| p.as_rule() == Rule::expr)
        .expect("set_expr holds an expr");
    build_expr(expr)
}

/// Longer lines are refused: expressions are parsed and evaluated recursively.
const MAX_LINE: usize = 1000;

fn check_nesting(src: &str) -> Result<(), SourceError> {
    let mut offset = 0;
    for line in src.split('\n') {
        let too = |what: &str, hint: &str| {
            Err(SourceError::new(
                SourceErrorKind::Syntax,
                Span::new(offset, offset + line.len().min(MAX_LINE)),
                what.to_string(),
            )
            .label("here")
            .hint(hint.to_string()))
        };
        if line.len() > MAX_LINE {
            return too(
                &format!("this line is longer than {MAX_LINE} bytes"),
                "split the row over continuation lines that start with white space",
            );
        }
        if line.matches('^').count() > MAX_NESTING {
            return too(
                &format!("this line has more than {MAX_NESTING} powers"),
                "simplify the expression",
            );
        }
        offset += line.len() + 1;
    }
    let mut depth = 0usize;
    for (i, c) in src.char_indices() {
        match c {
            '(' | '[' | '⌊' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(SourceError::new(
                        SourceErrorKind::Syntax,
                        Span::new(i, i + c.len_utf8()),
                        format!("brackets are nested more than {MAX_NESTING} deep"),
                    )
                    .label("too deep")
                    .hint("write the expression with fewer brackets"));
                }
            }
            ')' | ']' | '⌋' => depth = depth.saturating_sub(1),
            '\n' => depth = 0,
            _ => {}
        }
    }
    Ok(())
}

fn span(p: &Pair<Rule>) -> Span {
    Span::new(p.as_span().start(), p.as_span().end())
}

fn err(kind: SourceErrorKind, span: Span, msg: impl Into<String>) -> SourceError {
    SourceError::new(kind, span, msg)
}

fn build_file(file: Pair<Rule>) -> Result<File, SourceError> {
    let mut name = None;
    let mut params = Vec::new();
    let mut params_span = Span::default();
    let mut headers = Vec::new();
    let mut rows = Vec::new();
    for p in file.into_inner() {
        match p.as_rule() {
            Rule::arch_line => {
                for q in p.into_inner() {
                    match q.as_rule() {
                        Rule::ident => {
                            params_span = span(&q);
                            name = Some(ident(q));
                        }
                        Rule::arch_params => {
                            params_span = span(&q);
                            for d in q.into_inner() {
                                let mut it = d.into_inner();
                                let n = ident(it.next().expect("param name"));
                                let v = build_expr(it.next().expect("param value"))?;
                                params.push(ParamDef { name: n, value: v });
                            }
                        }
                        _ => {}
                    }
                }
            }
            Rule::input_decl => {
                let q = first(p);
                if q.as_rule() == Rule::token_input {
                    let s = span(&q);
                    let ints: Vec<Pair<Rule>> = q
                        .into_inner()
                        .filter(|r| r.as_rule() == Rule::int)
                        .collect();
                    headers.push(Header::Tokens {
                        tokens: int(&ints[0])?,
                        vocab: int(&ints[1])?,
                        span: s,
                    });
                } else {
                    headers.push(Header::Input(dims(q)?));
                }
            }
            Rule::bias_decl => headers.push(Header::Bias(true, span(&p))),
            Rule::no_bias_decl => headers.push(Header::Bias(false, span(&p))),
            Rule::postnorm_decl => headers.push(Header::Postnorm(span(&p))),
            Rule::preact_decl => headers.push(Header::Preact(span(&p))),
            Rule::norm_decl => headers.push(Header::Norm(ident(first(p)))),
            Rule::act_decl => headers.push(Header::Act(act_spec(first(p))?)),
            Rule::shortcut_decl => headers.push(Header::Shortcut(ident(first(p)))),
            Rule::eps_decl => {
                let n = first(p);
                let s = span(&n);
                headers.push(Header::Eps(number(&n)?, s));
            }
            Rule::row => rows.push(build_row(p)?),
            _ => {}
        }
    }
    Ok(File {
        name: name.expect("arch line has a name"),
        params,
        params_span,
        headers,
        rows,
    })
}

fn first(p: Pair<Rule>) -> Pair<Rule> {
    p.into_inner().next().expect("rule has an inner pair")
}

/// The whole number inside a rule that holds one among keywords.
fn inner_int(p: Pair<Rule>) -> Pair<Rule> {
    p.into_inner()
        .find(|q| q.as_rule() == Rule::int)
        .expect("the rule holds a whole number")
}

fn ident(p: Pair<Rule>) -> Ident {
    Ident {
        text: p.as_str().to_string(),
        span: span(&p),
    }
}

fn number(p: &Pair<Rule>) -> Result<f64, SourceError> {
    let v: f64 = p.as_str().parse().map_err(|_| {
        err(
            SourceErrorKind::Value,
            span(p),
            "this number cannot be read",
        )
        .hint("numbers are written like 12, 0.5 or 1e-5")
    })?;
    if !v.is_finite() {
        return Err(
            err(SourceErrorKind::Value, span(p), "this number is too large")
                .label("too large")
                .hint("use a smaller number"),
        );
    }
    Ok(v)
}

fn int(p: &Pair<Rule>) -> Result<usize, SourceError> {
    bounded(p.as_str(), span(p), "sizes, counts and options")
}

/// `text` as an integer of at most `MAX_INT`, else a "too large" error naming `what`.
fn bounded(text: &str, at: Span, what: &str) -> Result<usize, SourceError> {
    text.parse::<usize>()
        .ok()
        .filter(|v| *v <= MAX_INT)
        .ok_or_else(|| {
            err(SourceErrorKind::Value, at, format!("{text} is too large"))
                .label("too large")
                .hint(format!("{what} are at most {MAX_INT}"))
        })
}

/// Bounds every integer in the language so products of sizes cannot overflow.
pub const MAX_INT: usize = 1 << 20;

fn dims(p: Pair<Rule>) -> Result<Dims, SourceError> {
    let s = span(&p);
    let text = p.as_str();
    let mut values = Vec::new();
    let mut offset = s.start;
    for part in text.split(['x', 'X', '×']) {
        let v = bounded(part, Span::new(offset, offset + part.len()), "sizes")?;
        values.push(v);
        offset += part.len() + 1;
    }
    Ok(Dims { values, span: s })
}

fn act_spec(p: Pair<Rule>) -> Result<ActSpec, SourceError> {
    let s = span(&p);
    let mut it = p.into_inner();
    let name = ident(it.next().expect("activation name"));
    let arg = it.next().map(|n| number(&n)).transpose()?;
    Ok(ActSpec { name, arg, span: s })
}

fn build_row(p: Pair<Rule>) -> Result<Row, SourceError> {
    let s = span(&p);
    let mut name = None;
    let mut size = None;
    let mut items: Vec<Item> = Vec::new();
    for q in p.into_inner() {
        match q.as_rule() {
            Rule::ident => name = Some(ident(q)),
            Rule::size_col => size = Some(dims(first(q))?),
            Rule::elements => build_elements(q, &mut items)?,
            Rule::continuation => build_elements(first(q), &mut items)?,
            _ => {}
        }
    }
    Ok(Row {
        name: name.expect("row has a name"),
        size,
        items,
        span: s,
    })
}

/// Items and the options that follow them; an option belongs to the item before it.
fn build_elements(p: Pair<Rule>, items: &mut Vec<Item>) -> Result<(), SourceError> {
    for e in p.into_inner() {
        let s = span(&e);
        if e.as_rule() == Rule::option {
            let opt = build_option(e)?;
            // `norm` after a convolution is its batch norm; elsewhere it is a norm layer.
            let conv_before = items
                .last()
                .is_some_and(|i| matches!(i.kind, ItemKind::Conv(_)));
            if opt.kind == OptionKind::Norm && !conv_before {
                items.push(Item {
                    kind: ItemKind::Norm,
                    options: Vec::new(),
                    span: s,
                });
                continue;
            }
            match items.last_mut() {
                Some(item) => {
                    item.span = item.span.join(s);
                    item.options.push(opt);
                }
                None => {
                    return Err(err(
                        SourceErrorKind::Syntax,
                        s,
                        "an option needs an item before it",
                    )
                    .label("option without an item")
                    .hint("write the layer first, e.g. `3x3, 64, stride 2`"))
                }
            }
            continue;
        }
        let kind = match e.as_rule() {
            Rule::conv => ItemKind::Conv(build_conv(e, Vec::new())?),
            Rule::pool => {
                let mut it = e.into_inner();
                let kernel = dims(it.next().expect("pool kernel"))?;
                let max = it.next().expect("pool kind").as_rule() == Rule::kw_max;
                ItemKind::Pool { kernel, max }
            }
            Rule::global_pool => ItemKind::GlobalAvgPool,
            Rule::fc => ItemKind::Fc {
                features: int(&first(e))?,
            },
            Rule::softmax => ItemKind::Softmax,
            Rule::transition => ItemKind::Transition {
                compression: build_expr(
                    e.into_inner()
                        .find(|q| q.as_rule() == Rule::expr)
                        .expect("a transition holds its compression"),
                )?,
            },
            Rule::block => build_block(e)?,
            Rule::embedding => ItemKind::TokenEmbedding {
                dim: int(&first(e))?,
            },
            Rule::positions => ItemKind::Positions,
            Rule::class_token => ItemKind::ClassToken,
            r => unreachable!("element rule {r:?}"),
        };
        items.push(Item {
            kind,
            options: Vec::new(),
            span: s,
        });
    }
    Ok(())
}

/// `[...] x N`: convolutions make a residual block, sublayers a transformer block.
fn build_block(e: Pair<Rule>) -> Result<ItemKind, SourceError> {
    let mut layers = Vec::new();
    let mut sublayers = Vec::new();
    let mut count = 1;
    for q in e.into_inner() {
        match q.as_rule() {
            Rule::layer => {
                let s = span(&q);
                let mut it = q.into_inner();
                let head = it.next().expect("layer head");
                let options = it.map(build_option).collect::<Result<Vec<_>, _>>()?;
                let kind = match head.as_rule() {
                    Rule::attention => SublayerKind::Attention {
                        heads: int(&inner_int(head))?,
                    },
                    Rule::mlp => {
                        let gated = head
                            .clone()
                            .into_inner()
                            .any(|r| r.as_rule() == Rule::kw_gated);
                        SublayerKind::Mlp {
                            width: int(&inner_int(head))?,
                            gated,
                        }
                    }
                    _ => {
                        layers.push(build_conv(head, options)?);
                        continue;
                    }
                };
                sublayers.push(Sublayer {
                    kind,
                    options,
                    span: s,
                });
            }
            Rule::int => count = int(&q)?,
            _ => {}
        }
    }
    if !layers.is_empty() && !sublayers.is_empty() {
        let s = sublayers[0].span;
        return Err(err(
            SourceErrorKind::Syntax,
            s,
            "a block holds either convolutions or transformer sublayers, not both",
        )
        .label("a sublayer among convolutions")
        .hint("write the convolutions and the transformer layers in blocks of their own"));
    }
    Ok(if sublayers.is_empty() {
        ItemKind::Block { layers, count }
    } else {
        ItemKind::Transformer { sublayers, count }
    })
}

fn build_conv(p: Pair<Rule>, options: Vec<ItemOption>) -> Result<ConvSpec, SourceError> {
    let mut s = span(&p);
    for o in &options {
        s = s.join(o.span);
    }
    let mut it = p.into_inner();
    let kernel = dims(it.next().expect("conv kernel"))?;
    let width = build_expr(it.next().expect("conv width"))?;
    Ok(ConvSpec {
        kernel,
        width,
        options,
        span: s,
    })
}

fn build_option(p: Pair<Rule>) -> Result<ItemOption, SourceError> {
    let s = span(&p);
    let o = first(p);
    let kind = match o.as_rule() {
        Rule::opt_stride => OptionKind::Stride(int(&first(o))?),
        Rule::opt_pad => OptionKind::Pad(int(&first(o))?),
        Rule::opt_dilation => OptionKind::Dilation(int(&first(o))?),
        Rule::opt_groups | Rule::opt_card => OptionKind::Groups(int(&first(o))?),
        Rule::opt_dense => OptionKind::Dense,
        Rule::opt_bias => OptionKind::Bias,
        Rule::opt_norm => OptionKind::Norm,
        Rule::opt_no => OptionKind::No(ident(first(o))),
        Rule::opt_act => OptionKind::Act(act_spec(first(o))?),
        Rule::opt_shortcut => OptionKind::Shortcut(ident(first(o))),
        Rule::opt_kv_heads => OptionKind::KvHeads(int(&first(o))?),
        Rule::opt_head_dim => OptionKind::HeadDim(int(&inner_int(o))?),
        Rule::opt_rope => OptionKind::Rope(number(&first(o))?),
        Rule::opt_causal => OptionKind::Causal,
        Rule::opt_tied => OptionKind::Tied,
        r => unreachable!("option rule {r:?}"),
    };
    Ok(ItemOption { kind, span: s })
}

fn build_expr(p: Pair<Rule>) -> Result<Expr, SourceError> {
    let s = span(&p);
    match p.as_rule() {
        Rule::expr => {
            let mut it = p.into_inner();
            let mut acc = build_expr(it.next().expect("term"))?;
            while let Some(op) = it.next() {
                let rhs = build_expr(it.next().expect("term after operator"))?;
                let op = if op.as_str() == "+" {
                    BinOp::Add
                } else {
                    BinOp::Sub
                };
                let sp = acc.span().join(rhs.span());
                acc = Expr::Binary(Box::new(acc), op, Box::new(rhs), sp);
            }
            Ok(acc)
        }
        Rule::term => {
            let mut it = p.into_inner().peekable();
            let mut acc = build_expr(it.next().expect("power"))?;
            while let Some(q) = it.next() {
                let (op, rhs) = match q.as_rule() {
                    Rule::mul_op => {
                        let op = if q.as_str() == "*" {
                            BinOp::Mul
                        } else {
                            BinOp::Div
                        };
                        (op, build_expr(it.next().expect("factor"))?)
                    }
                    Rule::implicit => (BinOp::Mul, build_expr(first(q))?),
                    _ => (BinOp::Mul, build_expr(q)?),
                };
                let sp = acc.span().join(rhs.span());
                acc = Expr::Binary(Box::new(acc), op, Box::new(rhs), sp);
            }
            Ok(acc)
        }
        Rule::power => {
            let mut it = p.into_inner();
            let base = build_expr(it.next().expect("base"))?;
            match it.next() {
                Some(exp) => {
                    let exp = build_expr(exp)?;
                    Ok(Expr::Binary(Box::new(base), BinOp::Pow, Box::new(exp), s))
                }
                None => Ok(base),
            }
        }
        Rule::unary => {
            let inner: Vec<Pair<Rule>> = p.into_inner().collect();
            let (negs, atom) = inner.split_at(inner.len() - 1);
            let mut e = build_expr(atom[0].clone())?;
            for _ in negs {
                e = Expr::Neg(Box::new(e), s);
            }
            Ok(e)
        }
        Rule::number => Ok(Expr::Number(number(&p)?, s)),
        Rule::ident => Ok(Expr::Var(ident(p))),
        Rule::paren => build_expr(first(p)),
        Rule::floor | Rule::floor_call => Ok(Expr::Floor(Box::new(build_expr(first(p))?), s)),
        r => unreachable!("expression rule {r:?}"),
    }
}
