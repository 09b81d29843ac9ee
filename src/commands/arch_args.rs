//! The architecture a command reads: the `.arch` file and its `--set` parameters, which
//! always go together to [`super::load_arch`].

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ArchArgs {
    /// The architecture (.arch) file.
    pub file: PathBuf,
    /// Architecture parameters, e.g. `--set r=1/8`.
    #[arg(long = "set", value_name = "NAME=EXPR")]
    pub sets: Vec<String>,
}

impl ArchArgs {
    /// Reads and compiles the architecture, with rendered diagnostics.
    pub fn load(&self) -> r2rc::Result<r2rc::ir::Graph> {
        super::load_arch(&self.file, &self.sets)
    }
}
