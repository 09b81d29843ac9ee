//! `r2rc._r2rc.grow`: one step (widen, deepen, morph) or a plan on a state dict, through
//! [`r2rc::api`], with the GIL released while r2rc works.

use pyo3::prelude::*;
use pyo3::types::PyDict;
use r2rc::api::{self, Options, WidenRequest};
use r2rc::names::Naming;
use r2rc::params::DType;
use r2rc::Error;

use crate::arch::Arch;
use crate::convert;
use crate::errors::{check, to_py};

/// What a step asks for, from the Python call's keywords.
fn request(
    py: Python<'_>,
    graph: &r2rc::ir::Graph,
    naming: Naming,
    kind: &str,
    a: &Bound<'_, PyDict>,
) -> PyResult<Request> {
    fn get<'py, T: FromPyObjectOwned<'py>>(a: &Bound<'py, PyDict>, k: &str) -> PyResult<Option<T>> {
        match a.get_item(k)? {
            Some(v) if !v.is_none() => Ok(Some(v.extract::<T>().map_err(Into::into)?)),
            _ => Ok(None),
        }
    }
    let text = |k: &str, default: &str| -> PyResult<String> {
        Ok(get::<String>(a, k)?.unwrap_or_else(|| default.to_string()))
    };
    Ok(match kind {
        "widen" => Request::Step(check(
            py,
            api::widen_step(
                graph,
                naming,
                &WidenRequest {
                    layer: get(a, "layer")?,
                    stage: get(a, "stage")?,
                    all: get(a, "all")?.unwrap_or(false),
                    by: get(a, "by")?,
                    to: get(a, "to")?,
                    add: get(a, "add")?,
                    method: text("method", "r2r")?,
                    init: text("init", "match")?,
                    noise: get(a, "noise")?,
                    noise_approx: get(a, "noise_approx")?,
                },
            ),
        )?),
        "deepen" => {
            let after: Option<String> = get(a, "after")?;
            let Some(after) = after else {
                return Err(to_py(py, Error::usage("deepen needs after= (the block or row after which to insert)", Some("for example after=\"conv2_2\", or after=\"model.layers.5\" with names=\"hf\"".into())), &[]));
            };
            Request::Step(check(
                py,
                api::deepen_step(
                    graph,
                    naming,
                    &after,
                    &text("method", "r2r")?,
                    get(a, "width")?,
                ),
            )?)
        }
        "morph" => {
            let (Some(layer), Some(kernel)) =
                (get::<String>(a, "layer")?, get::<usize>(a, "kernel")?)
            else {
                return Err(to_py(
                    py,
                    Error::usage(
                        "morph needs layer= (a convolution) and kernel= (its new size)",
                        Some("for example layer=\"conv1\", kernel=5".into()),
                    ),
                    &[],
                ));
            };
            Request::Step(check(py, api::morph_step(graph, naming, &layer, kernel))?)
        }
        "apply" => {
            let plan: String = get(a, "plan")?.unwrap_or_default();
            let shown = text("plan_name", "<plan>")?;
            Request::Plan(check(py, api::plan::parse(&plan, &shown))?, shown)
        }
        other => {
            return Err(to_py(
                py,
                Error::usage(
                    format!("unknown step `{other}`: widen, deepen, morph or apply"),
                    None,
                ),
                &[],
            ))
        }
    })
}

/// The student's Arch, state dict, optimizer state (or None) and report JSON.
type Out<'py> = (Arch, Bound<'py, PyDict>, Option<Bound<'py, PyDict>>, String);

enum Request {
    Step(r2rc::patch::Step),
    Plan(api::plan::Lines, String),
}

/// Runs step `kind` (widen, deepen, morph, apply; its keywords in `args`) on `state` (a
/// state dict of numpy arrays under `names`, held as `dtype`) with the teacher's Adam
/// `optimizer_state` (flat, as the CLI's optimizer file: `<param>.exp_avg`, ...) when
/// given. Returns the student's Arch, state dict, optimizer state (or None) and the
/// report's JSON (report.json's fields).
#[pyfunction]
#[pyo3(signature = (kind, arch, state, dtype, args, names="r2rc", prove=Some("full"), optimizer_state=None, optimizer_dtype=None, seed=0, precision="f64", inputs=2, name=None, source="the state dict"))]
#[allow(clippy::too_many_arguments)]
pub fn grow<'py>(
    py: Python<'py>,
    kind: &str,
    arch: &Arch,
    state: &Bound<'py, PyDict>,
    dtype: &str,
    args: &Bound<'py, PyDict>,
    names: &str,
    prove: Option<&str>,
    optimizer_state: Option<&Bound<'py, PyDict>>,
    optimizer_dtype: Option<&str>,
    seed: u64,
    precision: &str,
    inputs: usize,
    name: Option<&str>,
    source: &str,
) -> PyResult<Out<'py>> {
    let naming = check(py, Naming::parse(names))?;
    let dtype = check(py, DType::parse(dtype))?;
    let mut graph = arch.graph.clone();
    if let Some(n) = name {
        check(py, api::set_name(&mut graph, n))?;
    }
    let local = match prove {
        None => false,
        Some(how) => check(py, local_proof(how))?,
    };
    let o = Options {
        naming,
        seed,
        prove: check(
            py,
            api::prove_options(precision, inputs, seed, prove.is_some()),
        )?,
        local,
    };
    let request = request(py, &graph, naming, kind, args)?;
    if local && matches!(request, Request::Plan(..)) {
        return Err(to_py(py, Error::usage(
            "apply proves every step and the plan end to end in memory: prove=\"local\" is for single steps",
            Some("use prove=\"full\" (or None) for a plan".into()),
        ), &[]));
    }
    let tensors = convert::tensors_in(state)?;
    let moments = match optimizer_state {
        Some(d) => Some((
            convert::tensors_in(d)?,
            check(py, DType::parse(optimizer_dtype.unwrap_or("f32")))?,
        )),
        None => None,
    };
    let source = source.to_string();
    // r2rc's work, without the GIL: other Python threads (a data loader) keep running.
    let out = py.detach(|| -> Result<api::Grown, api::Failed> {
        let (teacher, notes) = api::state::read(&graph, naming, tensors, dtype, &source)?;
        let moments = match moments {
            Some((m, d)) => Some(api::state::read_moments(
                &graph,
                naming,
                m,
                d,
                "the optimizer state",
            )?),
            None => None,
        };
        let mut s = match request {
            Request::Step(step) => {
                let given = moments
                    .as_ref()
                    .map(|m| (m as &dyn r2rc::optim::MomentSource, m.avg.dtype));
                api::step(&graph, &teacher, &step, &o, &source, given)?
            }
            Request::Plan(lines, shown) => {
                api::plan::apply(&graph, &teacher, lines, &shown, &o, &source, moments)?
            }
        };
        s.report.notes.splice(0..0, notes);
        Ok(s)
    });
    let s = out.map_err(|f| to_py(py, f.error, &f.evidence))?;
    let (tensors, counters) = check(py, api::state::write(&s.graph, naming, &s.params))?;
    let state = convert::tensors_out(py, tensors, s.params.dtype, &counters)?;
    let moments = match &s.moments {
        Some(m) => {
            let t = check(py, api::state::write_moments(&s.graph, naming, m))?;
            let steps = t.keys().filter(|k| k.ends_with(".step")).cloned().collect();
            Some(convert::tensors_out(py, t, m.avg.dtype, &steps)?)
        }
        None => None,
    };
    let report = serde_json::to_string(&s.report).expect("the report serialises");
    Ok((Arch { graph: s.graph }, state, moments, report))
}

/// `prove="full"|"local"`: whether the proof is local (the CLI's `--prove`).
fn local_proof(how: &str) -> r2rc::Result<bool> {
    match how {
        "full" => Ok(false),
        "local" => Ok(true),
        other => Err(Error::usage(
            format!("prove={other:?}: use \"full\" or \"local\" (or None not to prove)"),
            None,
        )),
    }
}
