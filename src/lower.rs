//! AST to graph (being written).
use crate::error::SourceError;
use crate::ir::Graph;

/// Parses and lowers `src` with `--set` overrides.
pub fn compile(_src: &str, _sets: &[(String, String)]) -> Result<Graph, SourceError> {
    todo!("front end being written")
}
