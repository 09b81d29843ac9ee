//! The `r2rc` command line: a thin clap layer over the library.

mod commands;

#[global_allocator]
static ALLOC: r2rc::alloc::ReusingAlloc = r2rc::alloc::ReusingAlloc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "r2rc",
    version,
    about = "Grow trained networks with function-preserving transforms"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Worker threads for any command (default: one per core).
    #[arg(long, global = true, value_name = "T")]
    threads: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Parse, infer shapes and print a per-layer table with parameter and MAC totals.
    Check(commands::check::Args),
    /// Print the canonical form of an architecture.
    Print(commands::check::PrintArgs),
    /// Draw the graph as Graphviz dot, JSON, or an svg/png picture (png needs -o FILE).
    Graph(commands::check::GraphArgs),
    /// Write seeded PyTorch-style initial weights as safetensors.
    Init(commands::init::Args),
    /// Run the network forward on inputs from .npy or seeded random inputs.
    Run(commands::run::Args),
    /// Export to ONNX (--onnx), graph JSON (--json) or a PyTorch module source (--torch).
    Export(commands::export::Args),
    /// List channel spaces: what widening each touches, and whether it can be widened.
    Spaces(commands::spaces::Args),
    /// Widen a layer, block, stream or every space with a proved function-preserving transform.
    Widen(commands::widen::Args),
    /// Insert proved function-preserving layers after a block or row (R2DeeperR, Net2DeeperNet, NetMorph).
    Deepen(commands::deepen::Args),
    /// Grow a convolution's kernel by zero-padding it, proved.
    Morph(commands::morph::Args),
    /// Apply a plan of transforms in order, each proved, with one report.
    Apply(commands::apply::Args),
    /// Check that a student computes the teacher's function on every shared value.
    Prove(commands::prove::Args),
    /// Diff two architectures: unified text, or a picture of what the rewrite changed (-o FILE).
    Diff(commands::diff::Args),
    /// Write the .arch of a Hugging Face config.json (Llama family, GPT-2).
    FromHf(commands::from_hf::Args),
}

/// Runs a rewrite whose outputs go to `dir`: they appear together, or (on an error or a
/// kill) not at all ([`r2rc::outputs::Set`]).
fn one_set(
    dir: Option<std::path::PathBuf>,
    run: impl FnOnce() -> r2rc::Result<()>,
) -> r2rc::Result<()> {
    let Some(dir) = dir else {
        return run();
    };
    let set = r2rc::outputs::Set::begin(&dir)?;
    run()?;
    set.commit()
}

fn main() {
    r2rc::alloc::keep_small_blocks();
    let cli = Cli::parse();
    if let Err(e) = commands::start_pool(cli.threads) {
        std::process::exit(commands::report_error(&e));
    }
    let result = match cli.command {
        Command::Check(a) => commands::check::run(a),
        Command::Print(a) => commands::check::print(a),
        Command::Graph(a) => commands::check::graph(a),
        Command::Init(a) => commands::init::run(a),
        Command::Run(a) => commands::run::run(a),
        Command::Export(a) => commands::export::run(a),
        Command::Spaces(a) => commands::spaces::run(a),
        Command::Widen(a) => one_set(a.common.output.clone(), || commands::widen::run(a)),
        Command::Deepen(a) => one_set(a.common.output.clone(), || commands::deepen::run(a)),
        Command::Morph(a) => one_set(a.common.output.clone(), || commands::morph::run(a)),
        Command::Apply(a) => one_set(a.common.output.clone(), || commands::apply::run(a)),
        Command::Prove(a) => commands::prove::run(a),
        Command::Diff(a) => commands::diff::run(a),
        Command::FromHf(a) => commands::from_hf::run(a),
    };
    if let Err(e) = result {
        std::process::exit(commands::report_error(&e));
    }
}
