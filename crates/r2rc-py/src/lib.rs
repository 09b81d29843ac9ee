//! The Python package's native module `r2rc._r2rc`: conversions only. Architectures are
//! [`arch::Arch`]; steps go through [`r2rc::api`], the path the CLI's in-memory runs take,
//! so a student is the CLI's bit for bit. The Python layer (python/r2rc) turns torch
//! tensors into numpy arrays and back and the report's JSON into a dict.

mod arch;
mod convert;
mod errors;
mod grow;

use pyo3::prelude::*;

#[pymodule]
fn _r2rc(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<arch::Arch>()?;
    m.add_function(wrap_pyfunction!(grow::grow, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
