//! `r2rc check`, `r2rc print` and `r2rc graph`: the front end's views of a file.

use std::path::PathBuf;

use r2rc::{print, stats, Result};

#[derive(clap::Args)]
pub struct Args {
    /// The `.arch` file.
    file: PathBuf,
    /// Override an architecture parameter: `--set r=3/16`.
    #[arg(long = "set", value_name = "NAME=EXPR")]
    sets: Vec<String>,
    /// Print the table as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct PrintArgs {
    file: PathBuf,
    #[arg(long = "set", value_name = "NAME=EXPR")]
    sets: Vec<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum GraphFormat {
    Dot,
    Json,
}

#[derive(clap::Args)]
pub struct GraphArgs {
    file: PathBuf,
    #[arg(long = "set", value_name = "NAME=EXPR")]
    sets: Vec<String>,
    #[arg(long, value_enum, default_value = "dot")]
    format: GraphFormat,
}

pub fn run(a: Args) -> Result<()> {
    let graph = super::load_arch(&a.file, &a.sets)?;
    if a.json {
        let (layers, totals) = stats::layer_stats(&graph);
        let v = serde_json::json!({
            "name": graph.name,
            "input": graph.input_shape(),
            "output": graph.output_shape(),
            "layers": layers,
            "totals": totals,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&v).expect("JSON of plain data")
        );
    } else {
        print!("{}", stats::table(&graph));
    }
    Ok(())
}

pub fn print(a: PrintArgs) -> Result<()> {
    let graph = super::load_arch(&a.file, &a.sets)?;
    print!("{}", print::print(&graph));
    Ok(())
}

pub fn graph(a: GraphArgs) -> Result<()> {
    let graph = super::load_arch(&a.file, &a.sets)?;
    match a.format {
        GraphFormat::Dot => print!("{}", print::dot(&graph)),
        GraphFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&r2rc::emit::json::graph_json(&graph))
                .expect("JSON of plain data")
        ),
    }
    Ok(())
}
