//! The transactional widening pipeline (transform, then prove, then describe) and what it
//! writes: the student's `.arch` with an evidence header, safetensors metadata,
//! `report.json`; also `diff` of two architectures.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::ir::Graph;
use crate::params::Params;
use crate::prove::{check_equivalence, failure, Evidence, ProveOptions};
use crate::transform::{widen, Method, SpaceChange, WidenArgs, Widened};

/// `report.json` of a widening (CLI.md lists the fields).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub command: String,
    pub method: String,
    /// Whether the method preserves the function (noisy Net2Net and random pad do not).
    pub function_preserving: bool,
    pub site: Site,
    /// Old layer name -> new name (widening renames nothing).
    pub name_map: BTreeMap<String, String>,
    pub params_before: u64,
    pub params_after: u64,
    pub macs_before: u64,
    pub macs_after: u64,
    pub seed: u64,
    pub init: String,
    /// Where the teacher weights came from.
    pub teacher: String,
    pub notes: Vec<String>,
    pub proved: bool,
    pub evidence: Vec<Evidence>,
    /// Under `--names torchvision`: r2rc layer name -> torchvision module name, for every
    /// layer of teacher and student (the weights use those names; the `.arch` and the rest
    /// of the report use r2rc's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub torchvision_names: Option<BTreeMap<String, String>>,
}

/// What was widened.
#[derive(Debug, Clone, Serialize)]
pub struct Site {
    pub target: String,
    pub spaces: Vec<SpaceChange>,
}

/// A proved (or measured) student with its report.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub widened: Widened,
    pub report: Report,
}

/// Widens, rounds the new weights to the teacher's dtype (what will be written is what is
/// proved) and proves. A function-preserving method whose proof fails is an
/// [`Error::ProofFailed`]; a method that is not one gets its deviation measured instead.
/// `prove == None` skips the proof.
pub fn widen_proved(
    graph: &Graph,
    params: &Params,
    args: &WidenArgs,
    seed: u64,
    prove: Option<&ProveOptions>,
    teacher: &str,
) -> Result<Outcome> {
    let mut w = widen(graph, params, args, seed)?;
    w.params = w.params.with_dtype(params.dtype);
    let mut notes = w.notes.clone();
    let evidence = match prove {
        None => vec![],
        Some(opts) => {
            // Net2Net divides weights by replica counts.
            let rounds = w.exact && args.method == Method::Net2net;
            let (opts, note) =
                crate::prove::stored_options(opts, params.dtype, rounds, args.method.title());
            notes.extend(note);
            let ev = check_equivalence(graph, params, &w.graph, &w.params, &opts)?;
            if w.exact {
                if let Some(e) = failure(&ev) {
                    return Err(e);
                }
            } else {
                let dev = ev.iter().map(|e| e.max_rel_err).fold(0.0, f64::max);
                notes.push(format!(
                    "{} is not function preserving: the student deviates from the teacher by up to {dev:.3e} (relative)",
                    method_label(args)
                ));
            }
            ev
        }
    };
    let name_map = graph
        .order()
        .into_iter()
        .map(|n| (graph.g[n].name.clone(), graph.g[n].name.clone()))
        .collect();
    let report = Report {
        command: "widen".into(),
        method: args.method.name().into(),
        function_preserving: w.exact,
        site: Site {
            target: args.target.show(),
            spaces: w.changes.clone(),
        },
        name_map,
        params_before: crate::stats::param_count(graph),
        params_after: crate::stats::param_count(&w.graph),
        macs_before: crate::stats::mac_count(graph),
        macs_after: crate::stats::mac_count(&w.graph),
        seed,
        init: format!("{:?}", args.init).to_lowercase(),
        teacher: teacher.into(),
        notes,
        proved: prove.is_some() && w.exact,
        evidence,
        torchvision_names: None,
    };
    Ok(Outcome { widened: w, report })
}

fn method_label(args: &WidenArgs) -> String {
    match (args.method, args.noise) {
        (Method::Net2net, Some(s)) => format!("Net2WiderNet with noise {s}"),
        (m, _) => m.title().to_string(),
    }
}

impl Report {
    /// Comment lines recording the transform and its evidence.
    pub fn header(&self) -> String {
        let mut out = String::new();
        let widths: Vec<String> = self
            .site
            .spaces
            .iter()
            .map(|s| format!("{} {}->{}", s.label, s.from, s.to))
            .collect();
        out.push_str(&format!(
            "# r2rc widen {} --method {} --seed {} (init {}): {}\n",
            self.site.target,
            self.method,
            self.seed,
            self.init,
            widths.join(", ")
        ));
        out.push_str(&format!("# teacher weights: {}\n", self.teacher));
        for n in &self.notes {
            out.push_str(&format!("# note: {n}\n"));
        }
        if self.evidence.is_empty() {
            out.push_str("# not proved (--no-prove)\n");
        }
        for e in &self.evidence {
            out.push_str(&self.evidence_line("# ", e));
        }
        out
    }

    fn evidence_line(&self, prefix: &str, e: &Evidence) -> String {
        crate::prove::evidence_line(prefix, e, self.function_preserving)
    }

    /// `__metadata__` of the student's safetensors.
    pub fn metadata(&self) -> BTreeMap<String, String> {
        let mut m = crate::prove::provenance(
            &self.command,
            &self.method,
            &self.site.target,
            self.seed,
            self.function_preserving,
            &self.evidence,
        );
        crate::prove::add_names(&mut m, self.torchvision_names.as_ref());
        m
    }

    /// A short human summary for stderr.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for s in &self.site.spaces {
            out.push_str(&format!(
                "widened space `{}` ({}) from {} to {} channels\n",
                crate::names::shown(&s.label, self.torchvision_names.as_ref()),
                s.rows.join(", "),
                s.from,
                s.to
            ));
        }
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        out.push_str(&format!(
            "params {} -> {}, MACs {} -> {}\n",
            self.params_before, self.params_after, self.macs_before, self.macs_after
        ));
        for e in &self.evidence {
            out.push_str(&self.evidence_line("", e));
        }
        out
    }
}

/// The student's `.arch` text: the evidence header, then the canonical print.
pub fn student_arch(outcome: &Outcome) -> String {
    format!(
        "{}\n{}",
        outcome.report.header(),
        crate::print::print(&outcome.widened.graph)
    )
}

/// Writes `files` (name, bytes) into `dir` atomically: refuses before writing anything if
/// one is one of `inputs` (even with `force`) or exists and `force` is off, then writes each
/// through a temporary file and a rename.
pub fn write_outputs(
    dir: &Path,
    files: &[(String, Vec<u8>)],
    force: bool,
    inputs: &[&Path],
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
    let paths: Vec<PathBuf> = files.iter().map(|(n, _)| dir.join(n)).collect();
    crate::outputs::check_outputs(&paths, inputs, force).map_err(|e| match e {
        Error::Usage { message, hint } if message.ends_with(" exists; nothing was written") => {
            Error::Usage {
                message,
                hint: hint.map(|_| "pass --force to overwrite, or choose another -o DIR".into()),
            }
        }
        e => e,
    })?;
    for (p, (_, bytes)) in paths.iter().zip(files) {
        crate::params::write_atomic(p, bytes)?;
    }
    Ok(paths)
}

/// A unified diff of the canonical prints of `a` and `b`.
pub fn diff(a: &Graph, b: &Graph, a_name: &str, b_name: &str) -> String {
    let (ta, tb) = (crate::print::print(a), crate::print::print(b));
    similar::TextDiff::from_lines(&ta, &tb)
        .unified_diff()
        .context_radius(3)
        .header(a_name, b_name)
        .to_string()
}

/// Graphviz dot of the student `b`: nodes new relative to `a` green, widened ones orange
/// with old -> new widths, otherwise changed ones yellow; see [`crate::picture`].
pub fn diff_dot(a: &Graph, b: &Graph) -> String {
    crate::picture::diff_dot(a, b)
}
