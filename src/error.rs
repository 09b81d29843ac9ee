//! One error type for the whole compiler. Errors carry spans and hints; rendering with
//! file, line, column and a caret happens only at the edge (`render`).

use std::fmt;

/// A byte range in a source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }

    /// The smallest span covering both.
    pub fn join(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
}

/// What part of the front end found a problem in the source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceErrorKind {
    Syntax,
    Name,
    Shape,
    Size,
    Value,
}

impl SourceErrorKind {
    pub fn code(self) -> &'static str {
        match self {
            SourceErrorKind::Syntax => "r2rc::syntax",
            SourceErrorKind::Name => "r2rc::name",
            SourceErrorKind::Shape => "r2rc::shape",
            SourceErrorKind::Size => "r2rc::size",
            SourceErrorKind::Value => "r2rc::value",
        }
    }
}

/// A problem at a place in an `.arch` text.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceError {
    pub kind: SourceErrorKind,
    pub message: String,
    pub span: Span,
    /// Short text shown under the caret.
    pub label: String,
    pub hint: Option<String>,
}

impl SourceError {
    pub fn new(kind: SourceErrorKind, span: Span, message: impl Into<String>) -> SourceError {
        SourceError {
            kind,
            message: message.into(),
            span,
            label: String::new(),
            hint: None,
        }
    }

    pub fn label(mut self, label: impl Into<String>) -> SourceError {
        self.label = label.into();
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> SourceError {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Every error r2rc reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A problem in an `.arch` text (syntax, names, shapes, size column).
    #[error("{0}")]
    Source(SourceError),
    /// A weights file that does not fit the network or is damaged.
    #[error("{message}")]
    Weights {
        message: String,
        hint: Option<String>,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    /// A request that makes no sense for this network (unknown target, refused rewrite).
    #[error("{message}")]
    Usage {
        message: String,
        hint: Option<String>,
    },
    /// A diagnostic already rendered with its file, line, column and caret.
    #[error("{0}")]
    Rendered(String),
    /// Teacher and student disagree: the rewrite is not function preserving.
    #[error("{message}")]
    ProofFailed { message: String },
}

impl From<SourceError> for Error {
    fn from(e: SourceError) -> Error {
        Error::Source(e)
    }
}

impl Error {
    pub fn weights(message: impl Into<String>) -> Error {
        Error::Weights {
            message: message.into(),
            hint: None,
        }
    }

    pub fn usage(message: impl Into<String>, hint: Option<String>) -> Error {
        Error::Usage {
            message: message.into(),
            hint,
        }
    }

    pub fn io(path: impl fmt::Display, e: impl fmt::Display) -> Error {
        Error::Io {
            path: path.to_string(),
            message: e.to_string(),
        }
    }

    /// The process exit code: 1 for a failed proof, 2 for bad input or usage.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::ProofFailed { .. } => 1,
            _ => 2,
        }
    }

    pub fn hint_text(&self) -> Option<&str> {
        match self {
            Error::Source(e) => e.hint.as_deref(),
            Error::Weights { hint, .. } | Error::Usage { hint, .. } => hint.as_deref(),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// miette's view of a source error, only used for rendering.
#[derive(Debug)]
struct Rendered<'a> {
    error: &'a SourceError,
    source: miette::NamedSource<String>,
}

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.error.message)
    }
}

impl std::error::Error for Rendered<'_> {}

impl miette::Diagnostic for Rendered<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        Some(Box::new(self.error.kind.code()))
    }

    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.error
            .hint
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.source)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        let len = self.source.inner().len();
        let start = self.error.span.start.min(len);
        let end = self.error.span.end.clamp(start, len);
        let label = (!self.error.label.is_empty()).then(|| self.error.label.clone());
        Some(Box::new(std::iter::once(miette::LabeledSpan::new(
            label,
            start,
            end - start,
        ))))
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..floor_char_boundary(src, offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Renders a source error as text: `error[code]: message`, then `file:line:col`, the
/// source line with a caret under the span, and the hint. No colours when `color` is off.
pub fn render(error: &SourceError, file: &str, src: &str, color: bool) -> String {
    let (line, col) = line_col(src, error.span.start);
    let rendered = Rendered {
        error,
        source: miette::NamedSource::new(file, src.to_string()),
    };
    let theme = if color {
        miette::GraphicalTheme::unicode()
    } else {
        miette::GraphicalTheme::unicode_nocolor()
    };
    let handler = miette::GraphicalReportHandler::new_themed(theme)
        .with_width(100)
        .with_links(false);
    let mut out = format!("{file}:{line}:{col}: ");
    let mut body = String::new();
    if handler.render_report(&mut body, &rendered).is_err() {
        body = error.message.clone();
    }
    out.push_str(body.trim_start());
    out
}
