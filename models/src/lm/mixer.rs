//! Mapping the LM's switches onto attention mixers.

use ela_core::Result;
use ela_nn::attention::Mixer;
use ela_nn::ela::{ElaAttention, ElaKernel, DEFAULT_CHUNK};

use super::config::AttnKind;

/// The mixer of the attention layers.
pub fn attention_mixer(kind: &AttnKind) -> Result<Mixer> {
    Ok(match kind {
        AttnKind::Softmax => Mixer::Softmax,
        AttnKind::Ela { kernel, chunk } => Mixer::Ela(ElaAttention::new(*kernel, *chunk)),
    })
}

/// The Memory Lobe's mixer: single-head Hadamard-Exp ELA (docs/model.md, "Memory Lobe").
pub fn lobe_mixer() -> Result<Mixer> {
    Ok(Mixer::Ela(ElaAttention::new(ElaKernel::HadamardExp, DEFAULT_CHUNK)))
}
