//! `r2rc widen FILE (--layer NAME | --stage ROW | --all) (--by F | --to C | --add E)
//! [--method M] [--init match|he] [--noise SIGMA | --noise-approx SIGMA]` and the flags
//! every rewrite command shares ([`Common`]: weights, outputs, seed, proof, naming, shards).

use std::path::PathBuf;

use r2rc::api::WidenRequest;
use r2rc::names::Naming;
use r2rc::Result;

use super::step::Common;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["layer", "stage", "all"])))]
#[command(group(clap::ArgGroup::new("amount").required(true).args(["by", "to", "add"])))]
pub struct Args {
    /// The teacher architecture (.arch).
    file: PathBuf,
    /// A layer (its output channels), block (its hidden widths), single-layer row or stage
    /// (its residual stream only); in a transformer `layers_x` (the residual stream),
    /// `layers_3.mlp` or `layers_x.mlp` (MLP features), `layers_3.attention` or
    /// `layers_x.attention` (heads, in kv groups), or the file's module names under
    /// --names hf|timm (`model.layers.0.mlp`).
    #[arg(long, value_name = "NAME")]
    layer: Option<String>,
    /// A stage or row whole: its residual stream and the hidden widths of every block in it.
    #[arg(long, value_name = "ROW")]
    stage: Option<String>,
    /// Widen every channel space that can be widened.
    #[arg(long)]
    all: bool,
    /// New width = floor(width * F) in every space widened.
    #[arg(long, value_name = "F")]
    by: Option<f64>,
    /// New width of every space widened.
    #[arg(long, value_name = "C")]
    to: Option<usize>,
    /// Channels added to every space widened (even for r2r).
    #[arg(long, value_name = "E")]
    add: Option<usize>,
    /// r2r, netmorph, net2net or random.
    #[arg(long, default_value = "r2r")]
    method: String,
    /// New free weights: match (uniform, the existing kernel's standard deviation) or he.
    #[arg(long, default_value = "match")]
    init: String,
    /// Net2WiderNet: break the replicas' symmetry with noise of SIGMA standard deviations of
    /// each consumer weight, in zero-sum sets on the consumer columns of a channel's copies
    /// (+N and -N for two); the student stays exact and is proved.
    #[arg(long, value_name = "SIGMA", conflicts_with = "noise_approx")]
    noise: Option<f64>,
    /// Net2WiderNet as its paper: independent noise of SIGMA standard deviations on the new
    /// rows and columns; the student is only approximately the teacher (measured, not proved).
    #[arg(long, value_name = "SIGMA")]
    noise_approx: Option<f64>,
    #[command(flatten)]
    pub common: Common,
}

pub fn run(args: Args) -> Result<()> {
    let c = &args.common;
    let naming = Naming::parse(&c.names)?;
    let graph = super::load_named(&args.file, &c.sets, c.name.as_deref())?;
    let req = WidenRequest {
        layer: args.layer,
        stage: args.stage,
        all: args.all,
        by: args.by,
        to: args.to,
        add: args.add,
        method: args.method,
        init: args.init,
        noise: args.noise,
        noise_approx: args.noise_approx,
    };
    let step = r2rc::api::widen_step(&graph, naming, &req)?;
    super::step::run_one(&args.file, c, &graph, &step)
}
