//! `r2rc export` (being written).

use r2rc::{Error, Result};

#[derive(clap::Args)]
pub struct Args {
    file: std::path::PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    Err(Error::usage(
        format!("{}: `export` is not available yet", args.file.display()),
        None,
    ))
}
