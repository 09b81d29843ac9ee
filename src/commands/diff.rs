//! `r2rc diff A.arch B.arch [--format text|dot]`: a unified diff of the canonical prints,
//! or B as Graphviz dot with new nodes green and changed ones yellow.

use std::path::PathBuf;

use r2rc::{Error, Result};

#[derive(clap::Args)]
pub struct Args {
    a: PathBuf,
    b: PathBuf,
    /// text (unified diff) or dot.
    #[arg(long, default_value = "text")]
    format: String,
    /// Parameters of A, e.g. `--set r=1/8`.
    #[arg(long = "set", value_name = "NAME=EXPR")]
    sets: Vec<String>,
    /// Parameters of B.
    #[arg(long = "b-set", value_name = "NAME=EXPR")]
    b_sets: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let a = super::load_arch(&args.a, &args.sets)?;
    let b = super::load_arch(&args.b, &args.b_sets)?;
    match args.format.as_str() {
        "text" => print!(
            "{}",
            r2rc::report::diff(
                &a,
                &b,
                &args.a.display().to_string(),
                &args.b.display().to_string()
            )
        ),
        "dot" => print!("{}", r2rc::report::diff_dot(&a, &b)),
        f => {
            return Err(Error::usage(
                format!("unknown diff format `{f}`"),
                Some("use text or dot".into()),
            ))
        }
    }
    Ok(())
}
