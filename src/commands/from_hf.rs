//! `r2rc from-hf CONFIG.json [-o NET.arch] [--name NAME] [--force]`: the `.arch` of a
//! Hugging Face config (Llama family, GPT-2), on stdout or into NET.arch.

use std::path::{Path, PathBuf};

use r2rc::{hf_config, Error, Result};

#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face model's config.json (model_type llama, mistral or gpt2).
    config: PathBuf,
    /// Write the architecture here instead of to stdout.
    #[arg(short = 'o', long = "output", value_name = "NET.arch")]
    output: Option<PathBuf>,
    /// The name on the arch line (default: the output's file stem when it is an
    /// identifier, else the model family: Llama, Mistral, GPT2).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Overwrite an existing output.
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> Result<()> {
    let shown = args.config.display().to_string();
    let bytes = std::fs::read(&args.config).map_err(|e| Error::io(&shown, e))?;
    let config: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        Error::usage(
            format!("{shown} is not JSON: {e}"),
            Some("pass a Hugging Face model's config.json".into()),
        )
    })?;
    let name = args
        .name
        .clone()
        .or_else(|| args.output.as_deref().and_then(stem_name));
    let text = hf_config::arch_text(&config, name.as_deref()).map_err(|e| in_file(e, &shown))?;
    let Some(out) = &args.output else {
        print!("{text}");
        return Ok(());
    };
    r2rc::outputs::check_outputs(
        std::slice::from_ref(out),
        &[args.config.as_path()],
        args.force,
    )?;
    r2rc::outputs::write_atomic(out, text.as_bytes())?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// The output's file stem, when it can name an architecture (`tinyllama.arch`).
fn stem_name(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_str()?;
    hf_config::is_identifier(stem).then(|| stem.to_string())
}

/// The config's refusals, prefixed with the file they are about.
fn in_file(e: Error, file: &str) -> Error {
    match e {
        Error::Usage { message, hint } => Error::Usage {
            message: format!("{file}: {message}"),
            hint,
        },
        other => other,
    }
}
