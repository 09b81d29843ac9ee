//! `r2rc check`, `r2rc print` and `r2rc graph`: the front end's views of a file; `graph`
//! writes to `-o FILE` or standard output (png only to a file).

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
    /// Graphviz dot text.
    Dot,
    /// The graph JSON of `export --json`.
    Json,
    /// Rendered by Graphviz's `dot`, which must be installed.
    Svg,
    /// Rendered by Graphviz's `dot`; binary, so it needs `-o FILE`.
    Png,
}

impl GraphFormat {
    fn name(self) -> &'static str {
        match self {
            GraphFormat::Dot => "dot",
            GraphFormat::Json => "json",
            GraphFormat::Svg => "svg",
            GraphFormat::Png => "png",
        }
    }
}

#[derive(clap::Args)]
pub struct GraphArgs {
    /// The `.arch` file.
    file: PathBuf,
    /// Override an architecture parameter: `--set r=3/16`.
    #[arg(long = "set", value_name = "NAME=EXPR")]
    sets: Vec<String>,
    #[arg(long, value_enum, default_value = "dot")]
    format: GraphFormat,
    /// Draw only this row (`conv2_x`), block (`conv2_1`) or layer, with its neighbours.
    #[arg(long, value_name = "NAME")]
    focus: Option<String>,
    /// Write the picture to FILE instead of standard output (required for png).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
    /// Overwrite FILE if it exists.
    #[arg(long)]
    force: bool,
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
    let format = a.format.name();
    let out = super::diff::Destination::new(format, a.output.as_deref(), a.force, &[&a.file])?;
    let graph = super::load_arch(&a.file, &a.sets)?;
    match a.format {
        GraphFormat::Dot => out.write(picture::dot_focus(&graph, a.focus.as_deref())?.as_bytes()),
        GraphFormat::Svg | GraphFormat::Png => {
            let text = picture::dot_focus(&graph, a.focus.as_deref())?;
            out.write(&picture::render_with_graphviz(&text, format)?)
        }
        GraphFormat::Json => {
            let mut text = serde_json::to_string_pretty(&r2rc::emit::json::graph_json(&graph))
                .expect("JSON of plain data");
            text.push('\n');
            out.write(text.as_bytes())
        }
    }
}
