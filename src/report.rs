//! The one report of a rewrite step (`report.json`, the `.arch` header comment, the
//! safetensors `__metadata__`, the stderr summary), whatever the command: widen, deepen or
//! morph; a plan's report is its list of steps. Also what is written beside the student
//! and `diff` of two architectures.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::exec::Mode;
use crate::ir::Graph;
use crate::prove::Evidence;
use crate::transform::deepen::{DeepenArgs, Deepened};
use crate::transform::morph_kernel::Morphed;
use crate::transform::{Exactness, Plan, SpaceChange, WidenArgs};

/// `report.json` of one rewrite step (CLI.md lists the fields), also one step of an
/// `apply` report.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// widen, deepen or morph.
    pub command: String,
    pub method: String,
    /// Whether the method preserves the function (in the modes `exactness` says).
    pub function_preserving: bool,
    pub exactness: Exactness,
    /// The target as given (widen), or where layers went in (deepen) or what changed (morph).
    pub site: String,
    /// The widened channel spaces (widen only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub spaces: Vec<SpaceChange>,
    /// Old layer name -> new name, every layer that was renamed.
    pub name_map: BTreeMap<String, String>,
    pub inserted: Vec<String>,
    /// Existing layers whose tensors changed.
    pub changed: Vec<String>,
    pub params_before: u64,
    pub params_after: u64,
    pub macs_before: u64,
    pub macs_after: u64,
    pub seed: u64,
    /// How free new weights were drawn (widen only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
    /// Where the teacher weights came from.
    pub teacher: String,
    pub notes: Vec<String>,
    pub proved: bool,
    /// Whether the rewrite computed values its storage dtype cannot hold exactly (replica
    /// divisions, rescaled norm scales, orthogonal mixes): a later `r2rc prove` of the
    /// written files allows the storage error then.
    pub rounds: bool,
    pub evidence: Vec<Evidence>,
    /// Under `--names torchvision`: r2rc layer name -> torchvision module name, for every
    /// layer of teacher and student (the weights use those names; the `.arch` and the rest
    /// of the report use r2rc's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub torchvision_names: Option<BTreeMap<String, String>>,
    /// A plan's steps, in order (`apply` only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepReport>,
    /// The plan line of a step (`apply` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<String>,
    /// Seconds each phase took (absent where not measured).
    #[serde(skip_serializing_if = "Timings::is_empty")]
    pub timings: Timings,
}

/// Seconds each phase of a rewrite took: reading the teacher weights (`load`), planning
/// the step and computing every student tensor (`transform`), the proof (`prove`), and
/// encoding and writing the student's files other than report.json (`write`). A phase
/// not measured is absent: a streamed rewrite reads, computes and writes tensor by tensor
/// in one pass, so it records only `prove`; a step of a plan records its own `transform`
/// and `prove`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transform: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prove: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write: Option<f64>,
}

impl Timings {
    pub fn is_empty(&self) -> bool {
        self.load.is_none()
            && self.transform.is_none()
            && self.prove.is_none()
            && self.write.is_none()
    }

    /// Seconds since `t`, to the microsecond.
    pub fn since(t: std::time::Instant) -> Option<f64> {
        Some((t.elapsed().as_secs_f64() * 1e6).round() / 1e6)
    }
}

/// Whether a method of `exactness` must pass the proof in `e`'s mode (an unknown mode,
/// such as a local proof's label, counts as required).
pub fn required(exactness: Exactness, e: &Evidence) -> bool {
    let mode = e.mode.split(' ').next().unwrap_or("");
    Mode::parse(mode).map_or(true, |m| exactness.required(m))
}

/// Renames listed one by one up to this many; more are one line (report.json has them all).
const RENAMES_SHOWN: usize = 3;

impl StepReport {
    /// Comment lines recording the transform and its evidence, for the student's `.arch`.
    pub fn header(&self) -> String {
        let mut out = match &self.init {
            // A widening names its target first, as its command line does.
            Some(init) => format!(
                "# r2rc {} {} --method {} --seed {} (init {init}): {}\n",
                self.command,
                self.site,
                self.method,
                self.seed,
                self.widths()
            ),
            None => format!(
                "# r2rc {} --method {} --seed {}: {}\n",
                self.command, self.method, self.seed, self.site
            ),
        };
        out.push_str(&format!("# teacher weights: {}\n", self.teacher));
        for (i, step) in self.steps.iter().enumerate() {
            out.push_str(&format!("# step {}: {}\n", i + 1, step.plan_line()));
        }
        for line in self.rename_lines() {
            out.push_str(&format!("# {line}\n"));
        }
        for n in &self.notes {
            out.push_str(&format!("# note: {n}\n"));
        }
        if self.evidence.is_empty() && self.steps.is_empty() {
            out.push_str("# not proved (--no-prove)\n");
        }
        for e in &self.evidence {
            out.push_str(&self.evidence_line("# ", e));
        }
        out
    }

    /// A plan step as the student's header lists it: its line and, when the line does
    /// not say it, where it went (`deepen --after conv2_2 -> after conv2_2 (new block ...)`).
    fn plan_line(&self) -> String {
        let line = self.line.as_deref().unwrap_or(&self.command);
        match self.command.as_str() {
            "deepen" | "morph" => format!("{line} -> {}", self.site),
            _ => line.to_string(),
        }
    }

    /// `conv2_x 16->24, ...`: the widened spaces.
    fn widths(&self) -> String {
        let widths: Vec<String> = self
            .spaces
            .iter()
            .map(|s| format!("{} {}->{}", s.label, s.from, s.to))
            .collect();
        widths.join(", ")
    }

    /// `renamed a -> b` lines, or one line for a long list.
    fn rename_lines(&self) -> Vec<String> {
        let tv = self.torchvision_names.as_ref();
        let show = |n: &String| crate::names::shown(n, tv);
        if self.name_map.len() <= RENAMES_SHOWN {
            return self
                .name_map
                .iter()
                .map(|(a, b)| format!("renamed {} -> {}", show(a), show(b)))
                .collect();
        }
        let (a, b) = self.name_map.iter().next().expect("not empty");
        vec![format!(
            "renamed {} layers to make room ({} -> {}, ...; report.json's name_map has them all)",
            self.name_map.len(),
            show(a),
            show(b)
        )]
    }

    /// A line of evidence; a plan's is its end-to-end proof.
    fn evidence_line(&self, prefix: &str, e: &Evidence) -> String {
        match self.steps.is_empty() {
            true => crate::prove::evidence_line(prefix, e, self.required(e)),
            false => format!("{prefix}proof (end to end): {}\n", e.summary()),
        }
    }

    /// Whether the method must preserve the function in `e`'s mode.
    pub fn required(&self, e: &Evidence) -> bool {
        required(self.exactness, e)
    }

    /// `__metadata__` of the student's safetensors.
    pub fn metadata(&self) -> BTreeMap<String, String> {
        let mut m = crate::prove::provenance(
            &self.command,
            &self.method,
            &self.site,
            self.seed,
            self.function_preserving,
            &self.evidence,
        );
        m.insert("r2rc.rounds".into(), self.rounds.to_string());
        if !self.name_map.is_empty() {
            m.insert(
                "r2rc.name_map".into(),
                serde_json::to_string(&self.name_map).expect("a map serialises"),
            );
        }
        crate::prove::add_names(&mut m, self.torchvision_names.as_ref());
        if !self.steps.is_empty() {
            // A plan's steps, without their own proofs' details.
            let steps: Vec<String> = self.steps.iter().map(|s| s.plan_line()).collect();
            m.insert(
                "r2rc.steps".into(),
                serde_json::to_string(&steps).expect("strings serialise"),
            );
        }
        m
    }

    /// A short human summary for stderr.
    pub fn summary(&self) -> String {
        let tv = self.torchvision_names.as_ref();
        let show = |n: &String| crate::names::shown(n, tv);
        let mut out: String = self.steps.iter().map(|s| s.summary()).collect();
        if self.spaces.is_empty() && self.steps.is_empty() {
            out.push_str(&format!(
                "{} {}: {}\n",
                self.command, self.method, self.site
            ));
        }
        for s in &self.spaces {
            out.push_str(&format!(
                "widened space `{}` ({}) from {} to {} {}\n",
                show(&s.label),
                s.rows.join(", "),
                s.from,
                s.to,
                s.unit.word()
            ));
        }
        if !self.inserted.is_empty() && self.steps.is_empty() {
            let shown: Vec<String> = self.inserted.iter().map(show).collect();
            out.push_str(&format!("inserted {}\n", shown.join(", ")));
        }
        for line in self.rename_lines() {
            out.push_str(&format!("{line}\n"));
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

impl StepReport {
    /// The report of a step `command` by `method` rewriting `graph` into `student`,
    /// preserving the function in the modes `exactness` says, before any proof.
    fn new(
        (command, method): (&str, &str),
        (graph, student): (&Graph, &Graph),
        exactness: Exactness,
        seed: u64,
        teacher: &str,
    ) -> StepReport {
        StepReport {
            command: command.into(),
            method: method.into(),
            function_preserving: exactness != Exactness::NotPreserving,
            exactness,
            site: String::new(),
            spaces: Vec::new(),
            name_map: BTreeMap::new(),
            inserted: Vec::new(),
            changed: Vec::new(),
            params_before: crate::stats::param_count(graph),
            params_after: crate::stats::param_count(student),
            macs_before: crate::stats::mac_count(graph),
            macs_after: crate::stats::mac_count(student),
            seed,
            init: None,
            teacher: teacher.into(),
            notes: Vec::new(),
            proved: false,
            rounds: false,
            evidence: Vec::new(),
            torchvision_names: None,
            steps: Vec::new(),
            line: None,
            timings: Timings::default(),
        }
    }
}

/// The report of a widening planned as `plan`, before any proof ([`crate::pipeline::judge`]
/// adds the evidence).
pub fn widen_report(
    graph: &Graph,
    plan: &Plan,
    args: &WidenArgs,
    seed: u64,
    teacher: &str,
) -> StepReport {
    let exactness = if plan.exact {
        Exactness::Exact
    } else {
        Exactness::NotPreserving
    };
    let names = ("widen", args.method.name());
    StepReport {
        site: args.target.show(),
        spaces: plan.changes.clone(),
        init: Some(format!("{:?}", args.init).to_lowercase()),
        notes: plan.notes.clone(),
        ..StepReport::new(names, (graph, &plan.student), exactness, seed, teacher)
    }
}

/// The report of deepening `graph` into `d`, before any proof.
pub fn deepen_report(
    graph: &Graph,
    d: &Deepened,
    args: &DeepenArgs,
    seed: u64,
    teacher: &str,
) -> StepReport {
    let names = ("deepen", args.method.name());
    StepReport {
        site: d.site.clone(),
        name_map: d.name_map.clone(),
        inserted: d.inserted.clone(),
        changed: d.changed.clone(),
        notes: d.notes.clone(),
        ..StepReport::new(names, (graph, &d.graph), d.exactness, seed, teacher)
    }
}

/// The report of the kernel morph `m` of `graph`, before any proof.
pub fn morph_report(graph: &Graph, m: &Morphed, teacher: &str, seed: u64) -> StepReport {
    let c = &m.change;
    let names = ("morph", "zero-pad");
    StepReport {
        site: format!(
            "{}: kernel {}x{} -> {}x{}, padding {} -> {}",
            c.layer, c.from, c.from, c.to, c.to, c.padding_from, c.padding_to
        ),
        changed: vec![c.layer.clone()],
        notes: vec![format!(
            "the {}x{} kernel of `{}` sits at the centre of a zero {}x{} kernel",
            c.from, c.from, c.layer, c.to, c.to
        )],
        ..StepReport::new(names, (graph, &m.graph), Exactness::Exact, seed, teacher)
    }
}

/// The report of renaming the architecture `graph` to `name` (a plan's `name` step).
pub fn name_report(graph: &Graph, name: &str, teacher: &str) -> StepReport {
    StepReport {
        site: format!("{} -> {name}", graph.name),
        ..StepReport::new(
            ("name", "rename"),
            (graph, graph),
            Exactness::Exact,
            0,
            teacher,
        )
    }
}

/// The report of a plan: `steps` rewrote `graph` into `student`; the name map, exactness
/// and notes are the plan's, the evidence the end-to-end proof's (if any).
pub fn plan_report(
    graph: &Graph,
    student: &Graph,
    plan: &str,
    steps: Vec<StepReport>,
    seed: u64,
    teacher: &str,
) -> StepReport {
    let exactness = if steps.iter().all(|s| s.exactness == Exactness::Exact) {
        Exactness::Exact
    } else if steps.iter().all(|s| s.function_preserving) {
        Exactness::EvalOnly
    } else {
        Exactness::NotPreserving
    };
    StepReport {
        site: format!("{plan} ({} steps)", steps.len()),
        rounds: steps.iter().any(|s| s.rounds),
        steps,
        ..StepReport::new(
            ("apply", "plan"),
            (graph, student),
            exactness,
            seed,
            teacher,
        )
    }
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
    let paths: Vec<PathBuf> = files.iter().map(|(n, _)| dir.join(n)).collect();
    check_dir(dir, &paths, force, inputs)?;
    for (p, (_, bytes)) in paths.iter().zip(files) {
        crate::params::write_atomic(p, bytes)?;
    }
    Ok(paths)
}

/// [`write_outputs`] of `files`, then of `last` (a name and a function making its bytes
/// once the others are written: report.json, which says how long they took). Every path
/// is checked before anything is written.
pub fn write_outputs_then(
    dir: &Path,
    files: &[(String, Vec<u8>)],
    last: (&str, &mut dyn FnMut() -> Vec<u8>),
    force: bool,
    inputs: &[&Path],
) -> Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = files.iter().map(|(n, _)| dir.join(n)).collect();
    paths.push(dir.join(last.0));
    check_dir(dir, &paths, force, inputs)?;
    let mut written = write_outputs(dir, files, true, inputs)?;
    let p = dir.join(last.0);
    crate::params::write_atomic(&p, &(last.1)())?;
    written.push(p);
    Ok(written)
}

/// Makes `dir` and refuses before writing anything if one of `paths` is one of `inputs`
/// (even with `force`) or exists and `force` is off.
fn check_dir(dir: &Path, paths: &[PathBuf], force: bool, inputs: &[&Path]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
    crate::outputs::check_outputs(paths, inputs, force).map_err(|e| match e {
        Error::Usage { message, hint } if message.ends_with(" exists; nothing was written") => {
            Error::Usage {
                message,
                hint: hint.map(|_| "pass --force to overwrite, or choose another -o DIR".into()),
            }
        }
        e => e,
    })
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
