//! `r2rc diff A.arch B.arch [--format text|dot|svg|png] [--focus NAME] [-o FILE]`: a unified
//! diff of the canonical prints, or a picture of B with what the rewrite added (green) or
//! widened (orange, old -> new widths) marked; svg and png are rendered by Graphviz's `dot`.
//! Also holds the output handling `graph` shares: png only with `-o FILE`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use r2rc::picture::diff_dot_renamed;
use r2rc::{Error, Result};

#[derive(clap::Args)]
pub struct Args {
    a: PathBuf,
    b: PathBuf,
    /// text (unified diff), dot, or svg/png (rendered by Graphviz's `dot`); png needs -o.
    #[arg(long, default_value = "text")]
    format: String,
    /// Write the diff or picture to FILE instead of standard output (required for png).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
    /// Overwrite FILE if it exists.
    #[arg(long)]
    force: bool,
    /// Pictures: draw only this row (`conv2_x`), block (`conv2_1`) or layer of B.
    #[arg(long, value_name = "NAME")]
    focus: Option<String>,
    /// Pictures: the report.json of the rewrite from A to B, whose `name_map` says which
    /// teacher layers were renamed; by default B's directory's report.json when it exists.
    #[arg(long, value_name = "REPORT")]
    report: Option<PathBuf>,
    /// Parameters of A, e.g. `--set r=1/8`.
    #[arg(long = "set", value_name = "NAME=EXPR")]
    sets: Vec<String>,
    /// Parameters of B.
    #[arg(long = "b-set", value_name = "NAME=EXPR")]
    b_sets: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    if !matches!(args.format.as_str(), "text" | "dot" | "svg" | "png") {
        return Err(Error::usage(
            format!("unknown diff format `{}`", args.format),
            Some("use text, dot, svg or png".into()),
        ));
    }
    let out = Destination::new(
        &args.format,
        args.output.as_deref(),
        args.force,
        &[&args.a, &args.b],
    )?;
    let a = super::load_arch(&args.a, &args.sets)?;
    let b = super::load_arch(&args.b, &args.b_sets)?;
    match args.format.as_str() {
        "text" => out.write(
            r2rc::report::diff(
                &a,
                &b,
                &args.a.display().to_string(),
                &args.b.display().to_string(),
            )
            .as_bytes(),
        ),
        f => {
            let renames = renames(&args)?;
            let text = diff_dot_renamed(&a, &b, &renames, args.focus.as_deref())?;
            if f == "dot" {
                out.write(text.as_bytes())
            } else {
                out.write(&r2rc::picture::render_with_graphviz(&text, f)?)
            }
        }
    }
}

/// The teacher -> student renames of the rewrite's report, if there is one.
fn renames(args: &Args) -> Result<BTreeMap<String, String>> {
    let path = match &args.report {
        Some(p) => p.clone(),
        None => match args.b.parent().map(|d| d.join("report.json")) {
            Some(p) if p.is_file() => p,
            _ => return Ok(BTreeMap::new()),
        },
    };
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&shown, e))?;
    let bad = |why: String| {
        Error::usage(
            format!("{shown}: {why}"),
            Some("pass the report.json that r2rc widen/deepen/morph wrote next to B".into()),
        )
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON ({e})")))?;
    let mut map = BTreeMap::new();
    if let Some(m) = v.get("name_map") {
        let m = m
            .as_object()
            .ok_or_else(|| bad("`name_map` is not an object".into()))?;
        for (k, s) in m {
            let s = s
                .as_str()
                .ok_or_else(|| bad(format!("`name_map.{k}` is not a string")))?;
            map.insert(k.clone(), s.to_string());
        }
    }
    Ok(map)
}

/// Formats whose bytes are not text: never written to standard output, where they would
/// fill a terminal with garbage.
const BINARY_FORMATS: &[&str] = &["png"];

/// Where `graph` or `diff` writes: `-o FILE`, or standard output for text formats.
pub struct Destination<'a> {
    file: Option<&'a Path>,
    force: bool,
}

impl<'a> Destination<'a> {
    /// Checked before any work (and before Graphviz runs): a binary format needs `-o FILE`,
    /// and FILE is never one of `inputs` nor, without `force`, an existing file.
    pub fn new(
        format: &str,
        file: Option<&'a Path>,
        force: bool,
        inputs: &[&Path],
    ) -> Result<Self> {
        match file {
            None if BINARY_FORMATS.contains(&format) => Err(Error::usage(
                format!(
                    "--format {format} is binary image data, which r2rc does not write to \
                     standard output"
                ),
                Some(format!(
                    "write it to a file with `-o FILE`, e.g. `-o picture.{format}`"
                )),
            )),
            None => Ok(Self { file, force }),
            Some(path) => {
                r2rc::outputs::check_outputs(&[path.to_path_buf()], inputs, force)?;
                Ok(Self { file, force })
            }
        }
    }

    /// Writes the bytes to the file (atomically) or to standard output.
    pub fn write(&self, bytes: &[u8]) -> Result<()> {
        match self.file {
            Some(path) => {
                r2rc::emit::write_new(path, bytes, self.force)?;
                eprintln!("wrote {} ({} bytes)", path.display(), bytes.len());
                Ok(())
            }
            None => {
                let mut out = std::io::stdout().lock();
                out.write_all(bytes)
                    .and_then(|_| out.flush())
                    .map_err(|e| Error::io("standard output", e))
            }
        }
    }
}
