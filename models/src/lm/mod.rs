//! The ELA language model: configuration, blocks (Hyper-Link or residual, MoE, Memory Lobe),
//! the model with its decoding state, and sampling.

pub mod block;
pub mod config;
pub mod decoder;
pub mod fused_decode;
pub mod generate;
pub mod graph_decode;
mod mixer;
pub mod model;
pub mod size;

pub use config::{AttnKind, Link, LmConfig, LobeMode, MoeSpec};
pub use decoder::{fast_decoder, Decoder};
pub use fused_decode::FusedDecoder;
pub use generate::{generate, generate_eager, sample, SampleConfig};
pub use graph_decode::{GraphDecoder, ReplayDevice};
pub use model::{DecodeState, ElaLm, LmOutput};
