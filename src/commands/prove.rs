//! `r2rc prove TEACHER.arch TEACHER.safetensors STUDENT.arch STUDENT.safetensors
//! [--mode eval|train|both] [--dtype f32|f64] [--inputs N] [--seed S] [--tolerance T]
//! [--json] [--names r2rc|torchvision] [--student-names r2rc|torchvision]`: checks a
//! teacher/student pair on its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use r2rc::exec::Mode;
use r2rc::ir::Graph;
use r2rc::names::{self, Naming};
use r2rc::prove::{failure, Precision, ProveOptions};
use r2rc::{Error, Result};

#[derive(clap::Args)]
pub struct Args {
    teacher: PathBuf,
    teacher_weights: PathBuf,
    student: PathBuf,
    student_weights: PathBuf,
    /// Batch norm statistics: eval, train or both.
    #[arg(long, default_value = "both")]
    mode: String,
    /// Precision: f64 (tolerance 1e-9) or f32 (1e-5).
    #[arg(long, default_value = "f64")]
    dtype: String,
    /// Batch size of the random input.
    #[arg(long, default_value_t = 2, value_name = "N")]
    inputs: usize,
    /// Seed of the random input.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Relative tolerance instead of the precision's default.
    #[arg(long, value_name = "T")]
    tolerance: Option<f64>,
    /// Print the evidence as JSON.
    #[arg(long)]
    json: bool,
    /// Parameters of the teacher architecture, e.g. `--set r=1/8`.
    #[arg(long = "set", value_name = "NAME=EXPR")]
    sets: Vec<String>,
    /// Parameters of the student architecture.
    #[arg(long = "student-set", value_name = "NAME=EXPR")]
    student_sets: Vec<String>,
    /// Tensor names: r2rc, torchvision (ResNets: `bn1`, `layer1.0.conv1`, `fc`), hf
    /// (transformers' LlamaForCausalLM, GPT2LMHeadModel) or timm (VisionTransformer).
    #[arg(long, default_value = "r2rc", value_name = "NAMING")]
    names: String,
    /// Tensor names of the student's weights when they differ from --names.
    #[arg(long, value_name = "NAMING")]
    student_names: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    let modes = match args.mode.as_str() {
        "both" => vec![Mode::Eval, Mode::Train],
        m => vec![Mode::parse(m)?],
    };
    if args.inputs == 0 {
        return Err(Error::usage("--inputs must be at least 1", None));
    }
    let t = super::load_arch(&args.teacher, &args.sets)?;
    let s = super::load_arch(&args.student, &args.student_sets)?;
    let naming = Naming::parse(&args.names)?;
    let student_naming = match &args.student_names {
        Some(n) => Naming::parse(n)?,
        None => naming,
    };
    let (tp, mut notes) = names::load_with_notes(&t, &args.teacher_weights, naming)?;
    let (sp, student_notes) = names::load_with_notes(&s, &args.student_weights, student_naming)
        .map_err(|e| student_hint(e, &s, &args.student_weights, student_naming))?;
    notes.extend(student_notes);
    for n in &notes {
        eprintln!("note: {n}");
    }
    let opts = ProveOptions {
        modes,
        precision: Precision::parse(&args.dtype)?,
        inputs: args.inputs,
        seed: args.seed,
        tolerance: args.tolerance,
    };
    // The one tolerance rule: `prove` cannot know what the rewrite computed, so weights
    // stored narrower than the proof's precision allow their dtype's storage error.
    let stored =
        if r2rc::prove::storage_tolerance(sp.dtype) > r2rc::prove::storage_tolerance(tp.dtype) {
            sp.dtype
        } else {
            tp.dtype
        };
    let record = Record::of(&args.student_weights);
    let (opts, note) = r2rc::prove::stored_options(&opts, stored, record.rounds, "the rewrite");
    if let Some(n) = note {
        eprintln!("note: {n}");
    }
    // A deepening renames layers (`conv2_3` becomes `conv2_4`): the teacher's values are
    // compared under the student's names, as the rewrite's own proof did.
    let renamed = (&record.name_map, &[][..]);
    let ev = r2rc::patch::prove_renamed((&t, &tp), (&s, &sp), renamed, &opts)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&ev).expect("json"));
    } else {
        for e in &ev {
            println!("{} ({} values compared)", e.summary(), e.values);
        }
    }
    match failure(&ev) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A student weights error whose file is in the other naming hints at `--student-names`
/// (what `--names`, which also sets the teacher's, cannot fix alone).
fn student_hint(e: Error, graph: &Graph, path: &Path, naming: Naming) -> Error {
    match (e, names::suggested_naming(graph, path, naming)) {
        (Error::Weights { message, .. }, Some(other)) => Error::Weights {
            message,
            hint: Some(format!(
                "{} names its tensors the {} way: pass --student-names {}",
                path.display(),
                other.keyword(),
                other.keyword()
            )),
        },
        (e, _) => e,
    }
}

/// What an r2rc student's metadata says about the rewrite that made it.
struct Record {
    /// Teacher layer -> student layer (`r2rc.name_map`).
    name_map: BTreeMap<String, String>,
    /// Whether the rewrite computed values its storage dtype cannot hold exactly (Net2Net's
    /// divisions, NetMorph-dense's mix): only then may the proof allow the storage error.
    /// Unknown (not an r2rc student, a plan): assumed.
    rounds: bool,
}

impl Record {
    fn of(weights: &Path) -> Record {
        let meta = r2rc::params::load_metadata(weights).unwrap_or_default();
        let name_map = meta
            .get("r2rc.name_map")
            .and_then(|m| serde_json::from_str(m).ok())
            .unwrap_or_default();
        let method = meta.get("r2rc.method").map(String::as_str).unwrap_or("");
        let recorded = meta.get("r2rc.rounds").and_then(|r| r.parse::<bool>().ok());
        let rounds = recorded.unwrap_or(match meta.get("r2rc.command").map(String::as_str) {
            Some("widen") => r2rc::transform::Method::parse(method).is_ok_and(|m| m.info().rounds),
            Some("deepen") => {
                r2rc::transform::deepen::DeepenMethod::parse(method).is_ok_and(|m| m.info().rounds)
            }
            Some("morph") => false,
            _ => true,
        });
        Record { name_map, rounds }
    }
}
