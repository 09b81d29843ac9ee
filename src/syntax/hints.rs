//! Syntax errors as users read them: pest's expected rules in words, and a hint fitted to
//! what stands where parsing stopped (a misspelt or misplaced option, a half-written size,
//! an unclosed bracket).

use crate::error::{SourceError, SourceErrorKind, Span};

use super::{err, Rule};

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
        | Rule::block
        | Rule::embedding
        | Rule::positions
        | Rule::class_token => LAYER,
        Rule::attention | Rule::mlp => "a sublayer such as `attention 12 heads` or `mlp 3072`",
        Rule::kw_heads => "`heads`",
        Rule::kw_token => "`token`",
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
pub(super) fn syntax_error(src: &str, e: pest::error::Error<Rule>) -> SourceError {
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

/// The options of transformer rows and of dense blocks, for "did you mean" only (the
/// listed options above are the ones most rows take).
const SEQ_OPTIONS: [(&str, &str); 5] = [
    ("head", "head dim D"),
    ("rope", "rope THETA"),
    ("causal", "causal"),
    ("tied", "tied"),
    ("dense", "dense"),
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
    // ResNeXt's cardinality written another way: `C 32`, `C:32`, `cardinality 32`.
    if (lower == "c" || lower == "cardinality") && expected.contains(&OPTION) {
        return Some((
            format!("`{token}` is not how cardinality is written"),
            "not an option",
            "cardinality is `C=G` after a layer's width (ResNeXt's `[1x1, 128; 3x3, 128, C=32; 1x1, 256] x 3`), the same as `groups G`".into(),
        ));
    }
    let keyword = OPTIONS
        .iter()
        .chain(&SEQ_OPTIONS)
        .find(|(k, _)| *k == lower);
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
    let item_words = [
        "softmax",
        "avg",
        "max",
        "pool",
        "fc",
        "class",
        "learned",
        "attention",
        "mlp",
    ];
    if expected.contains(&OPTION) && !item_words.contains(&lower.as_str()) {
        let mut words: Vec<&str> = OPTIONS
            .iter()
            .chain(&SEQ_OPTIONS)
            .map(|(k, _)| *k)
            .collect();
        words.push("softmax");
        let hint = match crate::lower::closest(&lower, &words) {
            Some(n) => {
                let written = OPTIONS
                    .iter()
                    .chain(&SEQ_OPTIONS)
                    .find(|(k, _)| *k == n)
                    .map_or(n, |(_, w)| w);
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
