//! What the decoders of this module have in common, and the choice of the fastest one.
//!
//! [`super::FusedDecoder`] (the whole step as one kernel) and [`super::GraphDecoder`] (the step
//! recorded once as a CUDA graph) both hold a [`DecodeState`] and step it one token per batch row,
//! returning the logits in a buffer of their own. [`fast_decoder`] builds the fastest one the
//! model allows; [`super::generate()`] decodes with it.

use ela_core::{Backend, Result, Tensor};

use super::fused_decode::FusedDecoder;
use super::graph_decode::{GraphDecoder, ReplayDevice};
use super::model::{DecodeState, ElaLm};

/// A decoding loop that owns its state: one token per batch row per [`Decoder::step`].
pub trait Decoder<B: Backend> {
    /// Decodes one token per batch row and returns the logits `[batch, vocab]`: the decoder's
    /// output buffer, which the next step overwrites (copy what must be kept).
    fn step(&mut self, tokens: &[u32]) -> Result<&Tensor<B>>;
    /// The logits of the last step `[batch, vocab]`.
    fn logits(&self) -> &Tensor<B>;
    /// Tokens processed so far (prompt and decoded).
    fn position(&self) -> usize;
    /// Bytes of decoding state (constant in the context).
    fn state_bytes(&self) -> usize;
    /// The decoding state, to continue with [`ElaLm::step`] or another decoder.
    fn into_state(self: Box<Self>) -> DecodeState<B>;
}

impl<B: ReplayDevice> Decoder<B> for FusedDecoder<'_, B> {
    fn step(&mut self, tokens: &[u32]) -> Result<&Tensor<B>> {
        FusedDecoder::step(self, tokens)
    }
    fn logits(&self) -> &Tensor<B> {
        FusedDecoder::logits(self)
    }
    fn position(&self) -> usize {
        FusedDecoder::position(self)
    }
    fn state_bytes(&self) -> usize {
        FusedDecoder::state_bytes(self)
    }
    fn into_state(self: Box<Self>) -> DecodeState<B> {
        FusedDecoder::into_state(*self)
    }
}

impl<B: ReplayDevice> Decoder<B> for GraphDecoder<'_, B> {
    fn step(&mut self, tokens: &[u32]) -> Result<&Tensor<B>> {
        GraphDecoder::step(self, tokens)
    }
    fn logits(&self) -> &Tensor<B> {
        GraphDecoder::logits(self)
    }
    fn position(&self) -> usize {
        GraphDecoder::position(self)
    }
    fn state_bytes(&self) -> usize {
        GraphDecoder::state_bytes(self)
    }
    fn into_state(self: Box<Self>) -> DecodeState<B> {
        GraphDecoder::into_state(*self)
    }
}

/// The fastest decoder `model` allows, started from `state` by running `tokens` (one per batch
/// row): a [`FusedDecoder`] when [`ElaLm::fused_step_blocker`] has no objection, else a
/// [`GraphDecoder`]. Errors: a model neither covers (see [`ElaLm::step_replay_blocker`]; decode
/// it with [`ElaLm::step`]), a device without graphs (the CPU), bad tokens.
pub fn fast_decoder<'m, B: ReplayDevice>(
    model: &'m ElaLm<B>,
    state: DecodeState<B>,
    tokens: &[u32],
) -> Result<Box<dyn Decoder<B> + 'm>> {
    Ok(match model.fused_step_blocker() {
        None => Box::new(FusedDecoder::new(model, state, tokens)?),
        Some(_) => Box::new(GraphDecoder::new(model, state, tokens)?),
    })
}
