//! What every rewrite command shares: its flags ([`Common`]), running one step in memory
//! or streamed ([`run_one`]), and writing the student as CLI.md says ([`emit`],
//! [`StreamOut`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use r2rc::hf_config_out;
use r2rc::ir::Graph;
use r2rc::names::{self, Naming};
use r2rc::optim::{self, Moments};
use r2rc::params::{self, Params};
use r2rc::patch::Step;
use r2rc::prove::ProveOptions;
use r2rc::report::{write_outputs, write_outputs_then, StepReport};
use r2rc::stream::{Job, Streamed};
use r2rc::{Error, Result};

/// Loads `file` under the common flags, builds its step with `build` (given the graph and
/// the naming of `--names`, whose module names name r2rc's layers) and runs it.
pub fn load_and_run(
    file: &Path,
    c: &Common,
    build: impl FnOnce(&Graph, Naming) -> Result<Step>,
) -> Result<()> {
    let graph = super::load_named(file, &c.sets, c.name.as_deref())?;
    let naming = Naming::parse(&c.names)?;
    let step = build(&graph, naming)?;
    run_one(file, c, &graph, &step)
}

/// Runs `step` on the teacher of `file` (`graph`) as a command does: streamed when the
/// weights and -o are given and the proof is local or skipped, else in memory; then
/// writes the student.
pub fn run_one(file: &Path, c: &Common, graph: &Graph, step: &Step) -> Result<()> {
    let local = super::local_proof(&c.prove)?;
    let state = c.optimizer_state(graph)?;
    if let (Some(w), Some(dir), true) = (&c.weights, &c.output, c.no_prove || local) {
        return streamed_command(file, c, w, dir, |job, place| {
            let at = state.as_ref().map(|st| (st, c.optimizer_path(file, dir)));
            let at = at.as_ref().map(|(st, p)| (*st, p.as_path()));
            r2rc::stream::step_with_state(graph, job, step, place, at)
        });
    }
    let t = std::time::Instant::now();
    let (teacher, source, read_notes) = c.teacher(graph)?;
    let load = r2rc::report::Timings::since(t);
    // The same in-memory run as the Python package's (r2rc::api).
    let o = r2rc::api::Options {
        naming: Naming::parse(&c.names)?,
        seed: c.seed,
        prove: c.prove_options()?,
        local,
    };
    let src = state.as_ref().map(optim::Mapped::new);
    let given = src
        .as_ref()
        .zip(state.as_ref())
        .map(|(m, st)| (m as &dyn optim::MomentSource, st.dtype()));
    let mut s = r2rc::api::step(graph, &teacher, step, &o, &source, given)?;
    s.report.notes.extend(read_notes);
    s.report.timings.load = load;
    let mut student = Student::of(&s.graph, &s.params, &s.report);
    student.moments = s.moments.as_ref();
    emit(file, c, student)
}

/// Flags shared by `widen`, `deepen`, `morph` and `apply`.
#[derive(clap::Args, Clone)]
pub struct Common {
    /// Teacher weights (.safetensors); without, a seeded random teacher with random biases
    /// and BN statistics.
    #[arg(long, value_name = "W")]
    pub weights: Option<PathBuf>,
    /// Write DIR/<stem>.arch, DIR/<stem>.safetensors and DIR/report.json (under --names
    /// hf the weights are DIR/model.safetensors, with DIR/config.json: a from_pretrained
    /// folder).
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Name the student: its `arch` line and its output files (DIR/NAME.arch, ...);
    /// default: the teacher's name and the architecture file's stem.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Overwrite existing outputs.
    #[arg(long)]
    pub force: bool,
    /// Seed of new weights, the random teacher and the proof inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Skip the proof.
    #[arg(long)]
    pub no_prove: bool,
    /// full (run teacher and student whole) or local (run only the rewritten region: each
    /// widened space, the inserted layers, the morphed conv, each step of a plan; far
    /// cheaper on large nets, and streamed with --weights and -o).
    #[arg(
        long,
        value_name = "HOW",
        default_value = "full",
        conflicts_with = "no_prove"
    )]
    pub prove: String,
    /// Precision of the proof: f64 (tolerance 1e-9) or f32 (1e-5).
    #[arg(long, default_value = "f64")]
    pub dtype: String,
    /// Batch size of the proof's random input.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub inputs: usize,
    /// Print the report as JSON on stdout (with the student text when there is no -o).
    #[arg(long)]
    pub json: bool,
    /// Architecture parameters, e.g. `--set r=1/8`.
    #[arg(long = "set", value_name = "NAME=EXPR")]
    pub sets: Vec<String>,
    /// Tensor names: r2rc, torchvision (ResNets: `bn1`, `layer1.0.conv1`, `fc`), hf
    /// (transformers' LlamaForCausalLM, GPT2LMHeadModel) or timm (VisionTransformer).
    #[arg(long, default_value = "r2rc", value_name = "NAMING")]
    pub names: String,
    /// Write the student's weights as shards of at most SIZE (2GB, 500MB, 1GiB) with a
    /// `<stem>.safetensors.index.json`, as Hugging Face does.
    #[arg(long, value_name = "SIZE")]
    pub shard_size: Option<String>,
    /// Adam's state of the teacher (exp_avg, exp_avg_sq, step per trainable parameter,
    /// under --names): the student's is written as DIR/<stem>.optimizer.safetensors
    /// (optimizer.safetensors under --names hf), each moment following its weight.
    #[arg(long, value_name = "ADAM")]
    pub optimizer_state: Option<PathBuf>,
    /// Another input the outputs must not overwrite (apply's plan); not a flag.
    #[arg(skip)]
    pub plan: Option<PathBuf>,
}

impl Common {
    /// The teacher's weights, where they came from, and how the checkpoint was read (notes
    /// for the report: a stripped `module.` prefix, missing counters).
    pub fn teacher(&self, graph: &Graph) -> Result<(Params, String, Vec<String>)> {
        Ok(match &self.weights {
            Some(w) => {
                let (p, notes) = names::load_with_notes(graph, w, Naming::parse(&self.names)?)?;
                (p, w.display().to_string(), notes)
            }
            None => (
                {
                    params::check_memory(graph, 0, false, "a random teacher for this network")?;
                    params::init(graph, self.seed, true)
                },
                format!(
                    "random (seed {}, random biases and BN statistics)",
                    self.seed
                ),
                Vec::new(),
            ),
        })
    }

    pub fn shard_size(&self) -> Result<Option<u64>> {
        self.shard_size
            .as_deref()
            .map(r2rc::shards::parse_size)
            .transpose()
    }

    /// Every file the outputs must not overwrite: the architecture, the weights (and the
    /// shards an index names), apply's plan.
    fn inputs<'a>(&'a self, file: &'a Path, extra: &'a [PathBuf]) -> Vec<&'a Path> {
        let mut inputs = vec![file];
        inputs.extend(self.weights.as_deref());
        inputs.extend(self.plan.as_deref());
        inputs.extend(self.optimizer_state.as_deref());
        inputs.extend(extra.iter().map(|p| p.as_path()));
        inputs
    }

    /// The teacher's optimizer state, checked against `graph` (refused before any work);
    /// it needs -o.
    pub fn optimizer_state(&self, graph: &Graph) -> Result<Option<optim::State>> {
        let Some(p) = &self.optimizer_state else {
            return Ok(None);
        };
        if self.output.is_none() {
            return Err(Error::usage(
                "--optimizer-state needs -o DIR: the student's state is written beside its weights",
                None,
            ));
        }
        optim::State::open(p, graph, Naming::parse(&self.names)?).map(Some)
    }

    /// Where the student's optimizer state goes in `dir`.
    pub fn optimizer_path(&self, file: &Path, dir: &Path) -> PathBuf {
        let stem = super::stem_of(file, self.name.as_deref());
        dir.join(optim::file_name(
            &stem,
            Naming::parse(&self.names).unwrap_or(Naming::R2rc),
        ))
    }

    pub fn prove_options(&self) -> Result<Option<ProveOptions>> {
        r2rc::api::prove_options(&self.dtype, self.inputs, self.seed, !self.no_prove)
    }
}

/// What a rewrite command hands to [`emit`].
pub struct Student<'a> {
    pub graph: &'a Graph,
    pub params: &'a Params,
    /// Comment lines for the top of the `.arch`.
    pub header: String,
    pub report: serde_json::Value,
    pub summary: String,
    pub metadata: BTreeMap<String, String>,
    /// The student's optimizer state (`--optimizer-state`), by r2rc names.
    pub moments: Option<&'a Moments>,
}

impl<'a> Student<'a> {
    /// The student of a step or a plan with its report.
    pub fn of(graph: &'a Graph, params: &'a Params, report: &StepReport) -> Student<'a> {
        Student {
            graph,
            params,
            header: report.header(),
            report: serde_json::to_value(report).expect("the report serialises"),
            summary: report.summary(),
            metadata: report.metadata(),
            moments: None,
        }
    }
}

/// Writes the student as CLI.md says: with `-o DIR` the `.arch`, safetensors and
/// report.json atomically (nothing if one exists without --force); else the `.arch` on
/// stdout and the summary on stderr (or JSON with the student text on stdout).
pub fn emit(file: &Path, common: &Common, s: Student) -> Result<()> {
    let started = std::time::Instant::now();
    let arch = format!("{}\n{}", s.header, r2rc::print::print(s.graph));
    let mut report_json = serde_json::to_string_pretty(&s.report).expect("the report serialises");
    // report.json is written last and says how long the other files took.
    let mut report_bytes = || {
        let mut v = s.report.clone();
        v["timings"]["write"] = serde_json::json!(r2rc::report::Timings::since(started));
        report_json = serde_json::to_string_pretty(&v).expect("the report serialises");
        format!("{report_json}\n").into_bytes()
    };
    match &common.output {
        Some(dir) => {
            let stem = super::stem_of(file, common.name.as_deref());
            let naming = Naming::parse(&common.names)?;
            // --names hf|timm: refused here when the scheme cannot hold the student.
            let extras =
                hf_config_out::extras(s.graph, naming, common.weights.as_deref(), s.params.dtype)?;
            let weights_name = hf_config_out::weights_name(&stem, naming);
            let metadata = hf_config_out::file_metadata(&s.metadata, naming);
            let mut files = vec![(format!("{stem}.arch"), arch.into_bytes())];
            files.extend(
                extras
                    .config
                    .map(|c| (hf_config_out::CONFIG.to_string(), c)),
            );
            let teacher_config: Vec<PathBuf> = extras.teacher_config.into_iter().collect();
            let inputs = common.inputs(file, &teacher_config);
            let optimizer = s.moments.map(|m| (m, common.optimizer_path(file, dir)));
            if let Some((_, p)) = &optimizer {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
                r2rc::outputs::check_outputs(std::slice::from_ref(p), &inputs, common.force)?;
            }
            let written = match common.shard_size()? {
                None => {
                    let st = names::to_bytes(s.params, s.graph, Some(&metadata), naming)?;
                    files.insert(1, (weights_name, st));
                    let last = (
                        "report.json",
                        &mut report_bytes as &mut dyn FnMut() -> Vec<u8>,
                    );
                    write_outputs_then(dir, &files, last, common.force, &inputs)?
                }
                Some(size) => {
                    let path = dir.join(weights_name);
                    let entries = names::file_entries(s.graph, naming)?;
                    let dtype = s.params.dtype;
                    let mut outs = r2rc::shards::output_paths(&path, &entries, dtype, Some(size));
                    outs.extend(files.iter().map(|(n, _)| dir.join(n)));
                    outs.push(dir.join("report.json"));
                    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
                    r2rc::outputs::check_outputs(&outs, &inputs, common.force)?;
                    let mut written = names::save_sharded(
                        s.params,
                        s.graph,
                        &path,
                        Some(&metadata),
                        naming,
                        Some(size),
                    )?;
                    let last = (
                        "report.json",
                        &mut report_bytes as &mut dyn FnMut() -> Vec<u8>,
                    );
                    written.extend(write_outputs_then(dir, &files, last, true, &inputs)?);
                    written
                }
            };
            let mut written = written;
            if let Some((m, p)) = optimizer {
                written.push(optim::save(m, s.graph, naming, &p)?);
            }
            announce(common, &s.summary, &report_json, &written);
        }
        None if common.json => {
            let mut v = s.report.clone();
            v["student_arch"] = serde_json::Value::String(arch);
            println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        }
        None => {
            print!("{arch}");
            eprint!("{}", s.summary);
        }
    }
    Ok(())
}

/// What a written student says on stderr (or the report as JSON on stdout).
fn announce(common: &Common, summary: &str, report_json: &str, written: &[PathBuf]) {
    if common.json {
        println!("{report_json}");
    } else {
        eprint!("{summary}");
        for p in written {
            eprintln!("wrote {}", p.display());
        }
    }
}

/// A streamed rewrite of `weights` (the teacher of `file`) into `dir` as a command does it:
/// `step` gets the job (the opened teacher, naming, seed, proof) and a `place` that checks
/// the student's outputs and says where its weights go; then the `.arch` and report are
/// written.
pub fn streamed_command(
    file: &Path,
    c: &Common,
    weights: &Path,
    dir: &Path,
    step: impl FnOnce(&Job, &mut dyn FnMut(&Graph) -> Result<PathBuf>) -> Result<Streamed>,
) -> Result<()> {
    let src = r2rc::shards::Source::open(weights)?;
    let opts = c.prove_options()?;
    let teacher = weights.display().to_string();
    let job = Job {
        src: &src,
        naming: Naming::parse(&c.names)?,
        seed: c.seed,
        prove: opts.as_ref(),
        teacher: &teacher,
        shard_size: c.shard_size()?,
    };
    let mut out = None;
    let mut place = |student: &Graph| {
        let o = StreamOut::check(file, c, &src, weights, dir, student)?;
        let path = o.path.clone();
        out = Some(o);
        Ok(path)
    };
    let mut s = step(&job, &mut place)?;
    s.report.notes.extend(src.notes());
    out.expect("checked before writing")
        .finish(c, &s.report, &s.student, &s.files)
}

/// Where a streamed rewrite writes: checked (nothing exists without --force, no input is
/// overwritten) before any weights are written.
pub struct StreamOut {
    pub dir: PathBuf,
    pub stem: String,
    /// The weights at `<dir>/<stem>.safetensors` (or its shards).
    pub path: PathBuf,
    /// The architecture, the weights and their shards: never overwritten.
    inputs: Vec<PathBuf>,
    /// The student's config.json (`--names hf`).
    config: Option<Vec<u8>>,
}

impl StreamOut {
    /// Checks the outputs of writing `student` into `dir` from the teacher `file` and its
    /// `weights` (opened as `src`).
    pub fn check(
        file: &Path,
        c: &Common,
        src: &r2rc::shards::Source,
        weights: &Path,
        dir: &Path,
        student: &Graph,
    ) -> Result<StreamOut> {
        let stem = super::stem_of(file, c.name.as_deref());
        let naming = Naming::parse(&c.names)?;
        // --names hf|timm: refused here, before any weights are written.
        let extras = hf_config_out::extras(student, naming, Some(weights), src.dtype())?;
        let path = dir.join(hf_config_out::weights_name(&stem, naming));
        let mut outs = r2rc::stream::student_paths(student, src, &path, naming, c.shard_size()?)?;
        outs.push(dir.join(format!("{stem}.arch")));
        outs.push(dir.join("report.json"));
        if c.optimizer_state.is_some() {
            outs.push(c.optimizer_path(file, dir));
        }
        if extras.config.is_some() {
            outs.push(dir.join(hf_config_out::CONFIG));
        }
        let mut extra = vec![r2rc::shards::resolve(weights)?];
        extra.extend(extras.teacher_config);
        extra.extend(src.files.iter().map(|(s, _)| PathBuf::from(s)));
        let mut inputs: Vec<PathBuf> = c
            .inputs(file, &extra)
            .into_iter()
            .map(PathBuf::from)
            .collect();
        inputs.dedup();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
        let refs: Vec<&Path> = inputs.iter().map(|p| p.as_path()).collect();
        r2rc::outputs::check_outputs(&outs, &refs, c.force)?;
        Ok(StreamOut {
            dir: dir.to_path_buf(),
            stem,
            path,
            inputs,
            config: extras.config,
        })
    }

    /// After the weights (`files`): writes the `.arch` and report.json and says what was
    /// written.
    pub fn finish(
        &self,
        c: &Common,
        report: &StepReport,
        student: &Graph,
        files: &[PathBuf],
    ) -> Result<()> {
        self.finish_with(
            c,
            &report.header(),
            &report.summary(),
            report,
            student,
            files,
        )
    }

    /// [`StreamOut::finish`] for any report, with its `.arch` header and summary.
    pub fn finish_with(
        &self,
        c: &Common,
        header: &str,
        summary: &str,
        report: &impl serde::Serialize,
        student: &Graph,
        files: &[PathBuf],
    ) -> Result<()> {
        let refs: Vec<&Path> = self.inputs.iter().map(|p| p.as_path()).collect();
        let (mut written, report_json) = super::write_arch_and_report(
            &self.dir, &self.stem, header, student, report, files, &refs,
        )?;
        if let Some(config) = &self.config {
            let config = [(hf_config_out::CONFIG.to_string(), config.clone())];
            written.extend(write_outputs(&self.dir, &config, true, &refs)?);
        }
        announce(c, summary, &report_json, &written);
        Ok(())
    }
}
