//! `r2rc check`, `print`, `graph` (being written).
use r2rc::Result;
#[derive(clap::Args)]
pub struct Args {
    file: std::path::PathBuf,
}
#[derive(clap::Args)]
pub struct PrintArgs {
    file: std::path::PathBuf,
}
#[derive(clap::Args)]
pub struct GraphArgs {
    file: std::path::PathBuf,
}
pub fn run(a: Args) -> Result<()> {
    super::load_arch(&a.file, &[]).map(|_| ())
}
pub fn print(a: PrintArgs) -> Result<()> {
    super::load_arch(&a.file, &[]).map(|_| ())
}
pub fn graph(a: GraphArgs) -> Result<()> {
    super::load_arch(&a.file, &[]).map(|_| ())
}
