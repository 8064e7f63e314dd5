//! Decoding with the whole model's step in one kernel launch.
//!
//! Recorded as a CUDA graph ([`super::GraphDecoder`]), a step of a small model still runs about a
//! dozen kernels per layer one after another, each reading its inputs back from global memory
//! and waiting for the one before it. [`FusedDecoder`] runs the step as one kernel instead
//! (`ela_cuda::Cuda::lm_decode_step`, kernels/lm_decode.cu): a block per sequence walks every
//! layer with its activations in shared memory in f32, reads the weights once, and updates each
//! layer's ELA state in place. It covers the models whose step is Hadamard-Exp ELA attention and
//! a dense SwiGLU FFN under any link, without a Memory Lobe ([`ElaLm::fused_step_blocker`]).
//!
//! The activations stay in f32 between the operations (the per-op path rounds each result to the
//! compute dtype), so for f32 models the logits agree with [`ElaLm::step`] to f32 rounding and for
//! bf16 ones they are closer to the exact values than the per-op step's. A model computing in bf16
//! over f32 master weights ([`ela_nn::precision::Precision::Bf16`]) is decoded from a bf16 copy of
//! its weights made once, when the decoder is built.

use ela_core::{DType, Error, FusedElaState, Result, Tensor};
use ela_nn::attention::Mixer;
use ela_nn::ela::ElaKernel;

use super::config::Link;
use super::graph_decode::{check_tokens, ReplayDevice};
use super::model::{DecodeState, ElaLm};

impl<B: ela_core::Backend> ElaLm<B> {
    /// Why this model's decoding step cannot run as one fused kernel ([`FusedDecoder`]), or
    /// `None` when it can (on a CUDA device).
    pub fn fused_step_blocker(&self) -> Option<&'static str> {
        if let Some(why) = self.step_replay_blocker() {
            return Some(why);
        }
        if self.store().dtype() == DType::F64 {
            return Some("the fused step computes in f32 and reads f32, f16 or bf16 weights, not f64");
        }
        for b in self.blocks() {
            if b.has_lobe() {
                return Some("the Memory Lobe is not part of the fused step");
            }
            match &b.attn().config().mixer {
                Mixer::Ela(e) if e.kernel == ElaKernel::HadamardExp => {}
                _ => return Some("the fused step implements Hadamard-Exp ELA attention only"),
            }
            let ffn = match b.dense_ffn() {
                Some(f) => f,
                None => return Some("the fused step has a dense SwiGLU FFN, not an MoE"),
            };
            let linears = b.attn().projections().into_iter().chain([ffn.w_gate(), ffn.w_up(), ffn.w_down()]);
            if linears.into_iter().any(|l| l.bias().is_some()) {
                return Some("the fused step's products have no bias");
            }
        }
        if self.output_layers().1.is_some_and(|h| h.bias().is_some()) {
            return Some("the fused step's head has no bias");
        }
        None
    }

    /// The dtype the fused step reads its weights in and writes its logits in: the compute dtype
    /// of the model's precision, else the store's.
    pub(crate) fn fused_step_dtype(&self) -> DType {
        self.precision().compute_dtype().unwrap_or(self.store().dtype())
    }
}

/// Decodes with one kernel launch per token (module docs). Holds the decoding state;
/// [`FusedDecoder::into_state`] hands it back, with its position, to decode eagerly again.
///
/// The decoder reads the weights it was built with (for a bf16-precision model, its own bf16
/// copy): new parameter values given afterwards (an optimizer step, a loaded checkpoint) do not
/// reach it; build a new one.
///
/// ```no_run
/// # use ela_core::{DType, Result};
/// # use ela_models::lm::{ElaLm, FusedDecoder, LmConfig, LobeMode};
/// # use ela_nn::module::ParamStore;
/// # fn main() -> Result<()> {
/// let dev = ela_cuda::Cuda::new(0)?;
/// let mut cfg = LmConfig::small();
/// cfg.moe = None; // MoE routing reads back to the host
/// cfg.lobe = LobeMode::Off; // not part of the fused step
/// let model = ElaLm::new(&ParamStore::new(&dev, DType::BF16, 0), cfg)?;
/// let prompt = ela_core::Tensor::from_vec(vec![72u32, 105], [1, 2], &dev)?;
/// let (_, state) = model.prefill(&prompt)?;
/// let mut dec = FusedDecoder::new(&model, state, &[33])?; // runs token 33
/// let second = dec.step(&[10])?.to_vec_f64()?; // one launch
/// # let _ = second;
/// # Ok(()) }
/// ```
pub struct FusedDecoder<'m, B: ReplayDevice> {
    model: &'m ElaLm<B>,
    state: DecodeState<B>,
    /// Sequences per step (the batch the state was prefilled with).
    batch: usize,
    /// The step's output `[batch, vocab]`, rewritten by each launch.
    logits: Tensor<B>,
    plan: B::FusedPlan,
}

impl<'m, B: ReplayDevice> FusedDecoder<'m, B> {
    /// Checks and compiles the fused step of `model` and runs it for `tokens` (one per batch row;
    /// their logits are then [`FusedDecoder::logits`]). Errors: a model or state the fused step
    /// does not cover (the reason is named), tokens out of the vocabulary or not one per row, a
    /// device without the fused kernel (the CPU).
    pub fn new(model: &'m ElaLm<B>, mut state: DecodeState<B>, tokens: &[u32]) -> Result<Self> {
        const OP: &str = "FusedDecoder::new";
        if let Some(why) = model.fused_step_blocker() {
            return Err(Error::invalid(
                OP,
                format!("this model's decoding step cannot run as one kernel: {why}; decode with GraphDecoder or ElaLm::step"),
            ));
        }
        if state.fused_states().is_none() {
            return Err(Error::invalid(
                OP,
                "every layer's state must be a Hadamard-Exp ELA state (from ElaLm::prefill)",
            ));
        }
        check_tokens(OP, model, tokens, None)?;
        let plan = B::fused_plan(model)?;
        let dev = model.store().device();
        let logits = Tensor::zeros([tokens.len(), model.config().vocab], model.fused_step_dtype(), dev)?;
        let mut dec = FusedDecoder { model, state, batch: tokens.len(), logits, plan };
        dec.run(tokens)?;
        Ok(dec)
    }

    fn run(&mut self, tokens: &[u32]) -> Result<()> {
        let dev = self.model.store().device();
        let mut states: Vec<&mut FusedElaState<B>> = self
            .state
            .fused_states()
            .ok_or_else(|| Error::invalid("FusedDecoder", "the decoding state lost its ELA states"))?;
        dev.fused_step(&self.plan, &mut states, tokens, &self.logits)?;
        self.state.advance_position();
        Ok(())
    }

    /// Decodes one token per batch row by one launch, and returns the logits `[batch, vocab]`:
    /// the decoder's output buffer, which the next step overwrites (copy what must be kept).
    pub fn step(&mut self, tokens: &[u32]) -> Result<&Tensor<B>> {
        check_tokens("FusedDecoder::step", self.model, tokens, Some(self.batch))?;
        self.run(tokens)?;
        Ok(&self.logits)
    }

    /// The logits of the last step `[batch, vocab]`.
    pub fn logits(&self) -> &Tensor<B> {
        &self.logits
    }

    /// Tokens processed so far (prompt and decoded).
    pub fn position(&self) -> usize {
        self.state.position()
    }

    /// Bytes of decoding state (constant in the context).
    pub fn state_bytes(&self) -> usize {
        self.state.bytes()
    }

    /// The decoding state, to continue with [`ElaLm::step`] or another decoder.
    pub fn into_state(self) -> DecodeState<B> {
        self.state
    }
}

/// The CUDA description of `model`'s step (`ela_cuda::DecodeModel`), checked and compiled: the
/// weights as they are, or cast once to the compute dtype of a mixed-precision model.
pub(crate) fn cuda_plan(model: &ElaLm<ela_cuda::Cuda>) -> Result<ela_cuda::LmDecodePlan> {
    if let Some(why) = model.fused_step_blocker() {
        return Err(Error::invalid("FusedDecoder", format!("this model's step cannot run as one kernel: {why}")));
    }
    let dtype = model.fused_step_dtype();
    let w = |v: &ela_autograd::Var<ela_cuda::Cuda>| -> Result<Tensor<ela_cuda::Cuda>> {
        let t = v.value();
        if t.dtype() == dtype {
            t.contiguous()
        } else {
            t.to_dtype(dtype)
        }
    };
    let cfg = model.config();
    // The kernel takes one eps for the norms of every layer: refuse a model whose norms differ.
    let eps = model.blocks().first().map(|b| b.norms().0.eps());
    let mut layers = Vec::with_capacity(model.blocks().len());
    for b in model.blocks() {
        let (n1, n2) = b.norms();
        if std::iter::once(n1).chain(n2).any(|n| Some(n.eps()) != eps) {
            return Err(Error::invalid("FusedDecoder", "the fused step takes one eps for every norm of the layers"));
        }
        let [q, k, v, o] = b.attn().projections();
        let ffn = b.dense_ffn().ok_or_else(|| Error::invalid("FusedDecoder", "an MoE layer"))?;
        layers.push(ela_cuda::DecodeLayer {
            norm1: w(n1.weight())?,
            norm2: n2.map(|n| w(n.weight())).transpose()?,
            q: w(q.weight())?,
            k: w(k.weight())?,
            v: w(v.weight())?,
            o: w(o.weight())?,
            gate: w(ffn.w_gate().weight())?,
            up: w(ffn.w_up().weight())?,
            down: w(ffn.w_down().weight())?,
        });
    }
    let (final_norm, head) = model.output_layers();
    let desc = ela_cuda::DecodeModel {
        link: match cfg.link {
            Link::Hyper => ela_cuda::DecodeLink::Hyper,
            Link::Residual => ela_cuda::DecodeLink::PreNorm,
            Link::PostNorm => ela_cuda::DecodeLink::PostNorm,
        },
        heads: cfg.heads,
        eps: eps.ok_or_else(|| Error::invalid("FusedDecoder", "a model without layers"))?,
        embed: w(model.embed_table())?,
        layers,
        final_norm: final_norm.map(|n| Ok::<_, Error>((w(n.weight())?, n.eps()))).transpose()?,
        head: head.map(|h| w(h.weight())).transpose()?,
    };
    model.store().device().lm_decode_plan(desc)
}
