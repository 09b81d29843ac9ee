//! The architecture's parameters (with `--set` overrides) and the expressions that use
//! them.

use std::collections::BTreeMap;

use super::{err, name_err, suggest};
use crate::error::{SourceError, SourceErrorKind};
use crate::syntax::ast::{self, Expr};
use crate::syntax::parse_expr;

pub(super) fn evaluate_params(
    file: &ast::File,
    sets: &[(String, String)],
) -> Result<BTreeMap<String, f64>, SourceError> {
    let mut env = BTreeMap::new();
    for (name, _) in sets {
        if !file.params.iter().any(|p| &p.name.text == name) {
            let known: Vec<&str> = file.params.iter().map(|p| p.name.text.as_str()).collect();
            let hint = if known.is_empty() {
                format!("`{}` takes no parameters", file.name.text)
            } else {
                format!("its parameters are: {}", known.join(", "))
            };
            return Err(err(
                SourceErrorKind::Name,
                file.params_span,
                format!("--set {name}: the architecture has no parameter `{name}`"),
            )
            .label("parameters are declared here")
            .hint(hint));
        }
    }
    for (i, p) in file.params.iter().enumerate() {
        if file.params[..i].iter().any(|q| q.name.text == p.name.text) {
            return Err(name_err(
                &p.name,
                format!("parameter `{}` is declared twice", p.name.text),
                "declared again here",
            )
            .hint("give each parameter one default; override it with `--set`"));
        }
        let value = match sets.iter().rev().find(|(n, _)| n == &p.name.text) {
            Some((_, text)) => {
                let expr = parse_expr(text).map_err(|e| {
                    err(
                        SourceErrorKind::Value,
                        p.value.span(),
                        format!("--set {}={text}: {}", p.name.text, e.message),
                    )
                    .hint("values are expressions such as 3/16, 2^-3.5 or 0.125")
                })?;
                eval(&expr, &env).map_err(|e| SourceError {
                    span: p.value.span(),
                    message: format!("--set {}={text}: {}", p.name.text, e.message),
                    ..e
                })?
            }
            None => eval(&p.value, &env)?,
        };
        env.insert(p.name.text.clone(), value);
    }
    Ok(env)
}

/// Evaluates an expression; parameters must be defined before use.
pub fn eval(e: &Expr, env: &BTreeMap<String, f64>) -> Result<f64, SourceError> {
    let v = match e {
        Expr::Number(v, _) => *v,
        Expr::Var(id) => *env.get(&id.text).ok_or_else(|| {
            let known: Vec<&str> = env.keys().map(|k| k.as_str()).collect();
            let hint = if known.is_empty() {
                "declare it in the arch line: `arch Name(r = 1/8)`".to_string()
            } else {
                suggest(&id.text, &known, "known parameters")
            };
            err(
                SourceErrorKind::Name,
                id.span,
                format!("unknown parameter `{}`", id.text),
            )
            .label("not declared")
            .hint(hint)
        })?,
        Expr::Neg(x, _) => -eval(x, env)?,
        Expr::Floor(x, _) => floor(eval(x, env)?),
        Expr::Binary(a, op, b, _) => {
            let (a, b) = (eval(a, env)?, eval(b, env)?);
            match op {
                ast::BinOp::Add => a + b,
                ast::BinOp::Sub => a - b,
                ast::BinOp::Mul => a * b,
                ast::BinOp::Div => {
                    if b == 0.0 {
                        return Err(err(SourceErrorKind::Value, e.span(), "division by zero")
                            .label("divides by 0")
                            .hint("check the divisor and the parameters it uses"));
                    }
                    a / b
                }
                ast::BinOp::Pow => a.powf(b),
            }
        }
    };
    if !v.is_finite() {
        return Err(err(
            SourceErrorKind::Value,
            e.span(),
            "this expression has no finite value",
        )
        .label("not finite")
        .hint("check the parameters it uses"));
    }
    Ok(v)
}

/// The paper's ⌊·⌋, forgiving the rounding error of products like 64 * (1/3) * 3.
pub(super) fn floor(v: f64) -> f64 {
    (v + 1e-9 * v.abs().max(1.0)).floor()
}
