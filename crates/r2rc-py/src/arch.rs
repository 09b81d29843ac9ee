//! `r2rc.Arch`: a compiled architecture (r2rc's graph) with its text, its check table and
//! what the Python conveniences need from it (a random teacher, the PyTorch module's
//! source, the Hugging Face config of a student).

use std::collections::BTreeSet;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use r2rc::ir::Graph;
use r2rc::names::{self, Naming};
use r2rc::params::DType;

use crate::convert;
use crate::errors::check;

#[pyclass(name = "Arch", module = "r2rc", frozen)]
#[derive(Clone)]
pub struct Arch {
    pub graph: Graph,
}

/// `{"r": "3/16"}` as the compiler's (name, expression) pairs.
fn pairs(sets: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<(String, String)>> {
    let Some(d) = sets else {
        return Ok(Vec::new());
    };
    d.iter()
        .map(|(k, v)| Ok((k.extract::<String>()?, v.str()?.to_string())))
        .collect()
}

#[pymethods]
impl Arch {
    /// Compiles architecture text; `sets` overrides parameters (`{"r": "3/16"}`).
    #[staticmethod]
    #[pyo3(signature = (text, sets=None, name=None))]
    fn parse(
        py: Python<'_>,
        text: &str,
        sets: Option<&Bound<'_, PyDict>>,
        name: Option<&str>,
    ) -> PyResult<Arch> {
        let mut graph = check(py, r2rc::api::compile(text, "<text>", &pairs(sets)?, false))?;
        if let Some(n) = name {
            check(py, r2rc::api::set_name(&mut graph, n))?;
        }
        Ok(Arch { graph })
    }

    /// Reads and compiles an `.arch` file.
    #[staticmethod]
    #[pyo3(signature = (path, sets=None, name=None))]
    fn load(
        py: Python<'_>,
        path: std::path::PathBuf,
        sets: Option<&Bound<'_, PyDict>>,
        name: Option<&str>,
    ) -> PyResult<Arch> {
        let shown = path.display().to_string();
        let bytes = check(
            py,
            std::fs::read(&path).map_err(|e| r2rc::Error::io(&shown, e)),
        )?;
        let text = String::from_utf8_lossy(&bytes);
        let mut graph = check(py, r2rc::api::compile(&text, &shown, &pairs(sets)?, false))?;
        if let Some(n) = name {
            check(py, r2rc::api::set_name(&mut graph, n))?;
        }
        Ok(Arch { graph })
    }

    /// The architecture of a Hugging Face config (its JSON text; `r2rc from-hf`).
    #[staticmethod]
    #[pyo3(signature = (config_json, name=None))]
    fn from_hf_json(py: Python<'_>, config_json: &str, name: Option<&str>) -> PyResult<Arch> {
        let config: serde_json::Value = check(
            py,
            serde_json::from_str(config_json).map_err(|e| {
                r2rc::Error::usage(
                    format!("the config is not JSON: {e}"),
                    Some("pass a Hugging Face model's config (a dict or config.json)".into()),
                )
            }),
        )?;
        let text = check(py, r2rc::hf_config::arch_text(&config, name))?;
        let graph = check(py, r2rc::api::compile(&text, "<from_hf>", &[], false))?;
        Ok(Arch { graph })
    }

    /// The architecture's name (its `arch` line).
    #[getter]
    fn name(&self) -> String {
        self.graph.name.clone()
    }

    /// The canonical text (`r2rc print`).
    #[getter]
    fn text(&self) -> String {
        r2rc::print::print(&self.graph)
    }

    /// `r2rc check --json`'s table as JSON: name, input, output, layers, totals.
    fn check_json(&self) -> String {
        let (layers, totals) = r2rc::stats::layer_stats(&self.graph);
        let v = serde_json::json!({
            "name": self.graph.name,
            "input": self.graph.input_shape(),
            "output": self.graph.output_shape(),
            "layers": layers,
            "totals": totals,
        });
        serde_json::to_string(&v).expect("JSON of plain data")
    }

    /// `r2rc check`'s table as text.
    fn table(&self) -> String {
        r2rc::stats::table(&self.graph)
    }

    /// The state dict's tensor names and shapes under `names`.
    #[pyo3(signature = (names="r2rc"))]
    fn shapes(&self, py: Python<'_>, names: &str) -> PyResult<Vec<(String, Vec<usize>)>> {
        let naming = check(py, Naming::parse(names))?;
        let stored = check(py, names::stored(&self.graph, naming))?;
        Ok(stored.into_iter().map(|s| (s.name, s.shape)).collect())
    }

    /// A random teacher as the CLI draws one without --weights (seeded, random biases and
    /// BN statistics), as a state dict under `names` in `dtype`.
    #[pyo3(signature = (seed=0, names="r2rc", dtype="f32"))]
    fn init<'py>(
        &self,
        py: Python<'py>,
        seed: u64,
        names: &str,
        dtype: &str,
    ) -> PyResult<Bound<'py, PyDict>> {
        let naming = check(py, Naming::parse(names))?;
        let dtype = check(py, DType::parse(dtype))?;
        check(
            py,
            r2rc::params::check_memory(&self.graph, 0, false, "a random teacher for this network"),
        )?;
        let p = r2rc::params::init(&self.graph, seed, true).with_dtype(dtype);
        let (tensors, counters) = check(py, r2rc::api::state::write(&self.graph, naming, &p))?;
        convert::tensors_out(py, tensors, dtype, &counters)
    }

    /// The source of a standalone PyTorch module (`r2rc export --torch`) whose state_dict
    /// has this architecture's tensors under `names`.
    #[pyo3(signature = (names="r2rc"))]
    fn torch_source(&self, py: Python<'_>, names: &str) -> PyResult<String> {
        let naming = check(py, Naming::parse(names))?;
        let named = check(py, names::renamed_graph(&self.graph, naming))?;
        check(py, r2rc::emit::to_torch(&named))
    }

    /// The Hugging Face config (JSON) of this architecture, starting from `base` (the
    /// teacher's config, JSON) as `r2rc widen --names hf` writes config.json.
    #[pyo3(signature = (base=None, dtype=None))]
    fn hf_config_json(
        &self,
        py: Python<'_>,
        base: Option<&str>,
        dtype: Option<&str>,
    ) -> PyResult<String> {
        let base: Option<serde_json::Value> = match base {
            Some(b) => Some(check(
                py,
                serde_json::from_str(b).map_err(|e| {
                    r2rc::Error::usage(format!("the base config is not JSON: {e}"), None)
                }),
            )?),
            None => None,
        };
        let dtype = dtype.map(DType::parse).transpose();
        let dtype = check(py, dtype)?;
        let v = check(
            py,
            r2rc::hf_config_out::config(&self.graph, base.as_ref(), dtype),
        )?;
        Ok(serde_json::to_string(&v).expect("a config serialises"))
    }

    /// Names of the batch counters (`num_batches_tracked`) under `names`: integers in
    /// PyTorch.
    #[pyo3(signature = (names="r2rc"))]
    fn counters(&self, py: Python<'_>, names: &str) -> PyResult<BTreeSet<String>> {
        let naming = check(py, Naming::parse(names))?;
        Ok(check(py, names::file_entries(&self.graph, naming))?
            .into_iter()
            .filter(|e| e.counter)
            .map(|e| e.name)
            .collect())
    }

    fn __str__(&self) -> String {
        self.text()
    }

    fn __repr__(&self) -> String {
        let (_, totals) = r2rc::stats::layer_stats(&self.graph);
        format!("<r2rc.Arch {} params={}>", self.graph.name, totals.params)
    }

    fn __eq__(&self, other: &Arch) -> bool {
        r2rc::print::print(&self.graph) == r2rc::print::print(&other.graph)
    }
}
