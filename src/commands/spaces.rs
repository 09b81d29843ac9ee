//! `r2rc spaces FILE [--json]`: every channel space, what widening it touches, and whether
//! it can be widened.

use std::path::PathBuf;

use r2rc::analysis::channel_spaces;
use r2rc::Result;

#[derive(clap::Args)]
pub struct Args {
    /// The architecture (.arch) file.
    file: PathBuf,
    /// Print the spaces as JSON.
    #[arg(long)]
    json: bool,
    /// Architecture parameters, e.g. `--set r=1/8`.
    #[arg(long = "set", value_name = "NAME=EXPR")]
    sets: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let graph = super::load_arch(&args.file, &args.sets)?;
    let spaces = channel_spaces(&graph);
    if args.json {
        let v: Vec<serde_json::Value> = spaces
            .spaces
            .iter()
            .map(|s| {
                let mut v = serde_json::to_value(s).expect("a space serialises");
                v["widenable"] = serde_json::Value::Bool(s.widenable());
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return Ok(());
    }
    print!("{}", r2rc::analysis::spaces::table(&spaces));
    Ok(())
}
