//! `r2rc export FILE [--weights W] (--onnx OUT.onnx | --json OUT.json | --torch OUT.py)
//! [--names r2rc|torchvision] [--force]`.

use std::path::PathBuf;

use r2rc::names::{self, Naming};
use r2rc::{emit, Error, Result};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    arch: super::arch_args::ArchArgs,
    /// Weights (.safetensors) for the ONNX initializers; not needed for --json or --torch
    /// (checked against the network when given).
    #[arg(long, value_name = "W")]
    weights: Option<PathBuf>,
    /// Write an ONNX model (opset 13, f32 weights, input `input`, output `output`).
    #[arg(long, value_name = "OUT.onnx")]
    onnx: Option<PathBuf>,
    /// Write the graph as JSON (nodes, ops, attributes, inputs, parameter names and shapes).
    #[arg(long, value_name = "OUT.json")]
    json: Option<PathBuf>,
    /// Write a standalone PyTorch module (torch.nn.Module source) whose state_dict keys and
    /// shapes are those of the weights file.
    #[arg(long, value_name = "OUT.py")]
    torch: Option<PathBuf>,
    /// Tensor names: r2rc, torchvision (ResNets: `bn1`, `layer1.0.conv1`, `fc`), hf
    /// (transformers' LlamaForCausalLM, GPT2LMHeadModel) or timm (VisionTransformer).
    #[arg(long, default_value = "r2rc", value_name = "NAMING")]
    names: String,
    /// Overwrite existing output files.
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> Result<()> {
    if args.onnx.is_none() && args.json.is_none() && args.torch.is_none() {
        return Err(Error::usage(
            "export needs an output: --onnx OUT.onnx, --json OUT.json or --torch OUT.py",
            Some(
                "for example `r2rc export net.arch --weights w.safetensors --onnx net.onnx`".into(),
            ),
        ));
    }
    let naming = Naming::parse(&args.names)?;
    let graph = args.arch.load()?;
    // Every output names the parameter-owning layers in the chosen naming.
    let named = names::renamed_graph(&graph, naming)?;
    let weights = |w: &PathBuf| -> Result<_> {
        let (p, notes) = names::load_with_notes(&graph, w, naming)?;
        for n in notes {
            eprintln!("note: {n}");
        }
        names::to_naming(&p, &graph, naming)
    };
    // Everything is produced before anything is written, so a failure writes nothing.
    let mut outputs: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    if let Some(path) = &args.onnx {
        let w = args.weights.as_ref().ok_or_else(|| {
            Error::usage(
                "ONNX export needs the weights: pass --weights W.safetensors",
                Some("make some with `r2rc init FILE -o W.safetensors`".into()),
            )
        })?;
        outputs.push((path.clone(), emit::to_onnx(&named, &weights(w)?)?));
    }
    if let Some(path) = &args.torch {
        if let Some(w) = &args.weights {
            weights(w)?;
        }
        outputs.push((path.clone(), emit::to_torch(&named)?.into_bytes()));
        // The optimizer-state helper beside the module (unless it is already there).
        let helper = path.with_file_name("optim_state.py");
        let text = include_str!("../../scripts/optim_state.py");
        if helper != *path && std::fs::read(&helper).ok().as_deref() != Some(text.as_bytes()) {
            outputs.push((helper, text.as_bytes().to_vec()));
        }
    }
    if let Some(path) = &args.json {
        let mut text = serde_json::to_string_pretty(&emit::graph_json(&named))
            .map_err(|e| Error::usage(format!("cannot encode the graph as JSON: {e}"), None))?;
        text.push('\n');
        outputs.push((path.clone(), text.into_bytes()));
    }
    let mut inputs = vec![args.arch.file.as_path()];
    inputs.extend(args.weights.as_deref());
    let paths: Vec<PathBuf> = outputs.iter().map(|(p, _)| p.clone()).collect();
    r2rc::outputs::check_outputs(&paths, &inputs, true)?;
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
