//! `r2rc export FILE --weights W (--onnx OUT.onnx | --json OUT.json) [--force]`.

use std::path::PathBuf;

use r2rc::{emit, params, Error, Result};

#[derive(clap::Args)]
pub struct Args {
    /// The architecture (.arch) file.
    file: PathBuf,
    /// Weights (.safetensors) for the ONNX initializers; not needed for --json.
    #[arg(long, value_name = "W")]
    weights: Option<PathBuf>,
    /// Write an ONNX model (opset 13, f32 weights, input `input`, output `output`).
    #[arg(long, value_name = "OUT.onnx")]
    onnx: Option<PathBuf>,
    /// Write the graph as JSON (nodes, ops, attributes, inputs, parameter names and shapes).
    #[arg(long, value_name = "OUT.json")]
    json: Option<PathBuf>,
    /// Architecture parameters, e.g. `--set r=1/8`.
    #[arg(long = "set", value_name = "NAME=EXPR")]
    sets: Vec<String>,
    /// Overwrite existing output files.
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> Result<()> {
    if args.onnx.is_none() && args.json.is_none() {
        return Err(Error::usage(
            "export needs an output: --onnx OUT.onnx or --json OUT.json",
            Some(
                "for example `r2rc export net.arch --weights w.safetensors --onnx net.onnx`".into(),
            ),
        ));
    }
    let graph = super::load_arch(&args.file, &args.sets)?;
    // Everything is produced before anything is written, so a failure writes nothing.
    let mut outputs: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    if let Some(path) = &args.onnx {
        let w = args.weights.as_ref().ok_or_else(|| {
            Error::usage(
                "ONNX export needs the weights: pass --weights W.safetensors",
                Some("make some with `r2rc init FILE -o W.safetensors`".into()),
            )
        })?;
        let p = params::load(&graph, w)?;
        outputs.push((path.clone(), emit::to_onnx(&graph, &p)?));
    }
    if let Some(path) = &args.json {
        let mut text = serde_json::to_string_pretty(&emit::graph_json(&graph))
            .map_err(|e| Error::usage(format!("cannot encode the graph as JSON: {e}"), None))?;
        text.push('\n');
        outputs.push((path.clone(), text.into_bytes()));
    }
    for (path, _) in &outputs {
        if path.exists() && !args.force {
            return Err(Error::usage(
                format!("{} already exists", path.display()),
                Some("pass --force to overwrite it".into()),
            ));
        }
    }
    for (path, bytes) in &outputs {
        emit::write_new(path, bytes, args.force)?;
        eprintln!("wrote {} ({} bytes)", path.display(), bytes.len());
    }
    Ok(())
}
