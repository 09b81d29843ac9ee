//! `r2rc init` (being written).

use r2rc::{Error, Result};

#[derive(clap::Args)]
pub struct Args {
    file: std::path::PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    Err(Error::usage(
        format!("{}: `init` is not available yet", args.file.display()),
        None,
    ))
}
