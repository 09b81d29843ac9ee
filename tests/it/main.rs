//! The integration tests, one binary: each module was once a test binary of its own.
//! Paths in the tests are relative to the crate root, where cargo runs them.

mod common;

mod apply;
mod block_act;
mod chains;
mod checkpoints;
mod cli_front;
mod concat;
mod deepen;
mod deepen_bn_scale;
mod deepen_local;
mod deepen_snapshots;
mod errors;
mod examples;
mod exec;
mod families;
mod family_growth;
mod from_hf;
mod fused_streaming;
mod hf_outputs;
mod hostile;
mod large;
mod local_regions;
mod morph;
mod names_hf;
mod net2net_noise;
mod onnx_tract;
mod optimizer_state;
mod params;
mod picture;
mod pipeline_cli;
mod prove;
mod roundtrip;
mod safe_outputs;
mod shards_cli;
mod spaces;
mod torch_names;
mod transformer_deepen;
mod transformer_exec;
mod transformer_run;
mod transformer_widen;
mod transformers;
mod widen;
mod widen_cli;
mod widen_snapshots;
