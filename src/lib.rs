//! r2rc: a compiler for neural-network architectures that grows trained networks with
//! function-preserving transforms (R2R, Net2Net, NetMorph), proving every rewrite.
//!
//! Stages: [`syntax::parse`] (text to AST), [`lower::lower`] (AST to [`ir::Graph`] with
//! shapes), [`print::print`] (graph back to canonical text), [`params`] (weights),
//! [`exec`] (forward pass), [`analysis`] (channel spaces, signs), [`transform`] (one file
//! per method), [`prove`] (teacher vs student evidence), [`report`] (outputs), [`emit`]
//! (ONNX, JSON, PyTorch).

pub mod alloc;
pub mod analysis;
pub mod api;
pub mod cpu;
pub mod direct;
pub mod emit;
pub mod error;
pub mod exec;
pub mod hf_config;
pub mod hf_config_out;
pub mod ir;
pub mod local_proof;
pub mod lower;
pub mod names;
pub mod optim;
pub mod outputs;
pub mod params;
pub mod patch;
pub mod picture;
pub mod pipeline;
pub mod print;
pub mod progress;
pub mod prove;
pub mod report;
pub mod shards;
pub mod stats;
pub mod stream;
pub mod syntax;
pub mod transform;

pub use error::{Error, Result};
