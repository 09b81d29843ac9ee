//! Text to syntax tree: `parse(&str) -> ast::File`. The grammar is `grammar/arch.pest`.

pub mod ast;

use pest::iterators::Pair;
use pest::Parser;

use crate::error::{SourceError, SourceErrorKind, Span};
use ast::*;

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

/// Words for the grammar rules a user may see in "expected ..." messages.
fn describe(rule: &Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::arch_line | Rule::kw_arch => "`arch NAME`",
        Rule::row => "a row `NAME [HxW] ITEM, ...`",
        Rule::ident => "a name",
        Rule::dims => SIZE,
        Rule::int => INT,
        Rule::number => "a number",
        Rule::expr | Rule::term | Rule::power | Rule::unary => "an expression such as `64r`",
        Rule::elements
        | Rule::item
        | Rule::conv
        | Rule::pool
        | Rule::global_pool
        | Rule::fc
        | Rule::softmax
        | Rule::block => LAYER,
        Rule::option => OPTION,
        Rule::layer => "a layer such as `3x3, 64` inside the brackets",
        Rule::arch_params => "`(` with parameters",
        Rule::param_def => "a parameter `NAME = VALUE`",
        Rule::kw_pool => "`pool`",
        Rule::kw_fc => "`fc`",
        Rule::act_spec => "an activation name",
        Rule::EOI => EOF,
        Rule::continuation => "a continuation line",
        _ => return None,
    })
}

/// A pest failure as a diagnostic with a hint fitted to what stands at the failure.
fn syntax_error(src: &str, e: pest::error::Error<Rule>) -> SourceError {
    let pos = match e.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((s, _)) => s,
    };
    let mut expected: Vec<&str> = match &e.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => {
            positives.iter().filter_map(describe).collect()
        }
        pest::error::ErrorVariant::CustomError { .. } => vec![],
    };
    let mut seen = Vec::new();
    expected.retain(|x| {
        let new = !seen.contains(x);
        seen.push(*x);
        new
    });
    let rest = &src[pos.min(src.len())..];
    let line_start = src[..pos.min(src.len())].rfind('\n').map_or(0, |i| i + 1);
    let mid_line = !src[line_start..pos.min(src.len())].trim().is_empty();
    // The file rule ends in EOI, so pest offers "the end of the file" wherever a row may
    // end; in the middle of the file that is the end of the line (or, at a line start,
    // nothing worth saying).
    if !rest.trim().is_empty() || mid_line {
        expected.retain(|x| mid_line || *x != EOF);
        for x in expected.iter_mut() {
            if *x == EOF {
                *x = "the end of the line";
            }
        }
    }
    // A size or a number here is the start of a layer: say "a layer" once.
    if expected.contains(&LAYER) {
        expected.retain(|x| *x != SIZE && *x != INT);
    }
    // The end of the line goes last: "a layer ..., an option ... or the end of the line".
    expected.sort_by_key(|x| x.contains("the end of"));
    let token: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != ',' && *c != ';')
        .take(24)
        .collect();
    let end = pos + token.len().max(if rest.is_empty() { 0 } else { 1 });
    let end = (pos..=end.min(src.len()))
        .rev()
        .find(|i| src.is_char_boundary(*i))
        .unwrap_or(pos);
    let found = if rest.is_empty() {
        "the end of the file".to_string()
    } else if rest.starts_with(['\n', '\r']) {
        "the end of the line".to_string()
    } else if token.is_empty() {
        format!("`{}`", rest.chars().next().unwrap_or(' ').escape_debug())
    } else {
        format!("`{}`", token.escape_debug())
    };
    if let Some((message, label, hint)) = misspelt_option(src, pos, &token, &expected) {
        return err(SourceErrorKind::Syntax, Span::new(pos, end), message)
            .label(label)
            .hint(hint);
    }
    let message = if expected.is_empty() {
        format!("unexpected {}", found.trim_start_matches("the "))
    } else {
        format!("expected {}, found {found}", join_or(&expected))
    };
    let hint = syntax_hint(src, pos, &token, &expected).unwrap_or_else(|| {
        if expected.contains(&"a name") {
            "names start with a letter or `_` and continue with letters, digits and `_`".into()
        } else if rest
            .chars()
            .next()
            .is_some_and(|c| c.is_control() || c == '\u{fffd}')
        {
            "the file contains bytes that are not text; is this an .arch file?".into()
        } else {
            "rows are `NAME [HxW] ITEM, ITEM, ...` as in the ResNet tables (see LANGUAGE.md)".into()
        }
    });
    err(SourceErrorKind::Syntax, Span::new(pos, end), message)
        .label("here")
        .hint(hint)
}

const EOF: &str = "the end of the file";
const LAYER: &str = "a layer such as `3x3, 64`";
const OPTION: &str = "an option such as `stride 2`";
const SIZE: &str = "a size such as `3x3`";
const INT: &str = "a whole number";

/// Every option keyword, and how each is written.
const OPTIONS: [(&str, &str); 9] = [
    ("stride", "stride S"),
    ("pad", "pad P"),
    ("dilation", "dilation D"),
    ("groups", "groups G"),
    ("bias", "bias"),
    ("norm", "norm"),
    ("no", "no norm|bias|act"),
    ("act", "act NAME"),
    ("shortcut", "shortcut KIND"),
];

fn options_list() -> String {
    let all: Vec<String> = OPTIONS.iter().map(|(_, w)| format!("`{w}`")).collect();
    format!("options are {}", all.join(", "))
}

/// An option written wrongly where the parser stopped: without the comma before it
/// (`3x3, 64 stride 2`), with `=` (`groups=32`), or misspelt (`strid 2`). Returns the
/// message, the label and a hint that names the nearest valid spelling.
fn misspelt_option(
    src: &str,
    pos: usize,
    token: &str,
    expected: &[&str],
) -> Option<(String, &'static str, String)> {
    let word: String = token
        .chars()
        .take_while(|c| c.is_ascii_alphabetic() || *c == '_')
        .collect();
    if word.is_empty() {
        return None;
    }
    let lower = word.to_ascii_lowercase();
    let keyword = OPTIONS.iter().find(|(k, _)| *k == lower);
    let line_start = src[..pos].rfind('\n').map_or(0, |i| i + 1);
    let before = src[line_start..pos].trim_end();
    let in_block = before.rfind('[') > before.rfind(']');
    let example = if in_block {
        "`[3x3, 64; 3x3, 64, stride 2] x 2`"
    } else {
        "`3x3, 64, stride 2`"
    };
    let after = &token[word.len()..];
    if let Some((k, _)) = keyword {
        // `conv1  32x32  stride 2`: where an item must start.
        if expected.contains(&SIZE) && !expected.contains(&OPTION) {
            return Some((
                format!("the option `{word}` needs an item before it"),
                "option without an item",
                format!(
                    "write the layer first, e.g. {example}; items are {ITEMS}; {}",
                    options_list()
                ),
            ));
        }
        // `3x3, 64 stride 2`: after a complete item, where only the end of its row or
        // layer may follow, with white space but no comma in between.
        if pos > before.len() + line_start
            && !before.is_empty()
            && !before.ends_with([',', '[', ';'])
            && expected.iter().all(|x| x.contains("the end of"))
            && (after.is_empty() || after.starts_with(['=', ':']))
        {
            return Some((
                format!("missing `,` before the option `{word}`"),
                "needs a `,` before it",
                format!(
                    "an option follows its item after a comma: {example}; {}",
                    options_list()
                ),
            ));
        }
        // `groups=32`, `stride:2`: options take their value after a space.
        if let Some(value) = after.strip_prefix(['=', ':']) {
            if expected.contains(&OPTION) {
                let fixed = if value.is_empty() {
                    k.to_string()
                } else {
                    format!("{k} {value}")
                };
                return Some((
                    format!("`{token}` is not how an option is written"),
                    "not an option",
                    format!(
                        "did you mean `{fixed}`? an option's value follows it after a space; {}",
                        options_list()
                    ),
                ));
            }
        }
        return None;
    }
    // A word that is no option nor item keyword, after a comma, where an option may stand.
    let item_words = ["softmax", "avg", "max", "pool", "fc"];
    if expected.contains(&OPTION) && !item_words.contains(&lower.as_str()) {
        let mut words: Vec<&str> = OPTIONS.iter().map(|(k, _)| *k).collect();
        words.push("softmax");
        let hint = match crate::lower::closest(&lower, &words) {
            Some(n) => {
                let written = OPTIONS.iter().find(|(k, _)| *k == n).map_or(n, |(_, w)| w);
                format!(
                    "did you mean `{written}`? {}; items are {ITEMS}",
                    options_list()
                )
            }
            None => format!("{}; items are {ITEMS}", options_list()),
        };
        return Some((format!("unknown option or item `{word}`"), "unknown", hint));
    }
    None
}

/// Every item, as the hints show them.
const ITEMS: &str = "`3x3, 64`, `3x3 max pool`, `avg pool`, `[...] x N`, `10-d fc`, `softmax`";

fn join_or(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

fn syntax_hint(src: &str, pos: usize, token: &str, expected: &[&str]) -> Option<String> {
    let line_start = src[..pos.min(src.len())].rfind('\n').map_or(0, |i| i + 1);
    let before = src[line_start..pos.min(src.len())].trim();
    if src[..pos.min(src.len())].trim().is_empty() {
        return Some("every file starts with `arch NAME` (and then `input CxHxW`)".into());
    }
    if token.starts_with('\t') || before.is_empty() && src[line_start..].starts_with([' ', '\t']) {
        return Some(
            "a line that starts with white space continues the row above; start a new row at the first column".into(),
        );
    }
    let unclosed =
        |open: char, close: char| before.matches(open).count() > before.matches(close).count();
    if unclosed('⌊', '⌋') || unclosed('(', ')') {
        return Some("a bracket is opened but not closed on this line".into());
    }
    let lower = token.to_ascii_lowercase();
    if let Some(stripped) = lower.strip_suffix("x") {
        if stripped.chars().all(|c| c.is_ascii_digit()) && !stripped.is_empty() {
            return Some("sizes are written with both sides, like `3x3`".into());
        }
    }
    if before.ends_with(|c: char| c.is_ascii_digit())
        && token.chars().next().is_some_and(|c| c.is_ascii_digit())
    {
        return Some("a convolution is `KxK, WIDTH` with a comma between kernel and width".into());
    }
    if before.to_ascii_lowercase().ends_with("floor") {
        return Some("the floor is written `floor(64r)` or `⌊64r⌋`".into());
    }
    if before.ends_with("max") || before.ends_with("avg") {
        return Some("pooling is written `3x3 max pool` or `avg pool` for global pooling".into());
    }
    let open_block = before.rfind('[')
        > before
            .rfind(']')
            .or(Some(0))
            .filter(|_| before.contains(']'));
    if before.ends_with(['[', ';']) || before.ends_with(']') || token.starts_with(']') || open_block
    {
        return Some(
            "a residual block is `[3x3, 64; 3x3, 64] x 2`: layers separated by `;`, then `x` and a count".into(),
        );
    }
    if expected.contains(&"an expression such as `64r`") {
        return Some(
            "expressions use numbers, parameters, + - * / ^, `64r`, `⌊64r⌋` or `floor(64r)`".into(),
        );
    }
    if expected.contains(&OPTION) || expected.contains(&LAYER) {
        return Some(format!("items are {ITEMS}; {}", options_list()));
    }
    None
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
            Rule::input_decl => headers.push(Header::Input(dims(first(p))?)),
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
    p.as_str()
        .parse::<usize>()
        .ok()
        .filter(|v| *v <= MAX_INT)
        .ok_or_else(|| {
            err(
                SourceErrorKind::Value,
                span(p),
                format!("{} is too large", p.as_str()),
            )
            .label("too large")
            .hint(format!("sizes, counts and options are at most {MAX_INT}"))
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
        let v = part
            .parse::<usize>()
            .ok()
            .filter(|v| *v <= MAX_INT)
            .ok_or_else(|| {
                err(
                    SourceErrorKind::Value,
                    Span::new(offset, offset + part.len()),
                    format!("{part} is too large"),
                )
                .label("too large")
                .hint(format!("sizes are at most {MAX_INT}"))
            })?;
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
            Rule::block => {
                let mut layers = Vec::new();
                let mut count = 1;
                for q in e.into_inner() {
                    match q.as_rule() {
                        Rule::layer => {
                            let mut it = q.into_inner();
                            let conv = it.next().expect("layer conv");
                            let options = it.map(build_option).collect::<Result<Vec<_>, _>>()?;
                            layers.push(build_conv(conv, options)?);
                        }
                        Rule::int => count = int(&q)?,
                        _ => {}
                    }
                }
                ItemKind::Block { layers, count }
            }
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
        Rule::opt_groups => OptionKind::Groups(int(&first(o))?),
        Rule::opt_bias => OptionKind::Bias,
        Rule::opt_norm => OptionKind::Norm,
        Rule::opt_no => OptionKind::No(ident(first(o))),
        Rule::opt_act => OptionKind::Act(act_spec(first(o))?),
        Rule::opt_shortcut => OptionKind::Shortcut(ident(first(o))),
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
