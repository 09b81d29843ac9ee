//! `r2rc check`, `r2rc print` and `r2rc graph`: the front end's views of a file.

use std::path::PathBuf;

use r2rc::{picture, print, stats, Result};

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
    /// Rendered by Graphviz's `dot`, which must be installed.
    Svg,
    Png,
}

#[derive(clap::Args)]
pub struct GraphArgs {
    file: PathBuf,
    #[arg(long = "set", value_name = "NAME=EXPR")]
    sets: Vec<String>,
    #[arg(long, value_enum, default_value = "dot")]
    format: GraphFormat,
    /// Draw only this row (`conv2_x`), block (`conv2_1`) or layer, with its neighbours.
    #[arg(long, value_name = "NAME")]
    focus: Option<String>,
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
        GraphFormat::Dot => print!("{}", picture::dot_focus(&graph, a.focus.as_deref())?),
        GraphFormat::Svg | GraphFormat::Png => {
            let format = if matches!(a.format, GraphFormat::Svg) {
                "svg"
            } else {
                "png"
            };
            let text = picture::dot_focus(&graph, a.focus.as_deref())?;
            super::diff::write_picture(&text, format)?
        }
        GraphFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&r2rc::emit::json::graph_json(&graph))
                .expect("JSON of plain data")
        ),
    }
    Ok(())
}
