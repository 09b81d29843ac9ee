//! r2rc's errors as the Python exceptions of `r2rc.errors`: `ProofFailed` (with the
//! proof's evidence) for a failed proof, `R2rcError` for the rest, each with the CLI's
//! message and hint.

use pyo3::prelude::*;
use r2rc::prove::Evidence;
use r2rc::Error;

/// The exception for `e`; `evidence` is the failed proof's (empty for other errors).
pub fn to_py(py: Python<'_>, e: Error, evidence: &[Evidence]) -> PyErr {
    match build(py, e, evidence) {
        Ok(err) => err,
        Err(err) => err,
    }
}

fn build(py: Python<'_>, e: Error, evidence: &[Evidence]) -> PyResult<PyErr> {
    let module = py.import("r2rc.errors")?;
    let hint = e.hint_text().map(String::from);
    let message = e.to_string();
    let class = match e {
        Error::ProofFailed { .. } => "ProofFailed",
        _ => "R2rcError",
    };
    let evidence = serde_json::to_string(evidence).expect("evidence serialises");
    let exc = module
        .getattr(class)?
        .call1((message, hint, evidence, e.exit_code()))?;
    Ok(PyErr::from_value(exc))
}

/// `r2rc::Result` into a `PyResult`.
pub fn check<T>(py: Python<'_>, r: r2rc::Result<T>) -> PyResult<T> {
    r.map_err(|e| to_py(py, e, &[]))
}
