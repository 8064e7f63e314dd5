//! Decoding with the whole step recorded once as a CUDA graph and replayed per token.
//!
//! A decoding step of a small LM is a hundred or so small kernels, and issuing them one by one
//! costs the host more time than the GPU spends on them. An ELA layer's step is the same work at
//! every position (its state `(S, z)` is updated in place, whatever the context), so the whole
//! step can be recorded once ([`ela_cuda::Cuda::capture`]) and replayed with one driver call:
//! the token ids are written into a fixed device buffer, the graph runs, and the logits appear in
//! a fixed output buffer.
//!
//! What cannot be replayed is refused up front, with the reason ([`ElaLm::step_replay_blocker`]):
//! a softmax KV cache and RoPE depend on the position, and MoE routing reads the experts' token
//! assignments back to the host. Token ids are range-checked on the host before they are written
//! (the recorded embedding lookup cannot check values that do not exist yet when it is recorded).

use ela_core::{Backend, Cpu, CpuStorage, Error, FusedElaState, Result, Tensor};
use ela_nn::optim::{AdamWConfig, InPlaceOperands};

use super::model::{DecodeState, ElaLm};

/// A device that can record queued work once and replay it: CUDA graphs. The CPU runs every
/// step directly and refuses to record.
pub trait ReplayDevice: Backend {
    /// A recorded, replayable piece of work.
    type Graph;
    /// Whether this device records graphs at all (what [`super::generate()`] checks before
    /// choosing a [`GraphDecoder`]).
    fn records_graphs(&self) -> bool;
    /// Records the device work that `f` queues (without running it) and returns it with `f`'s
    /// result, whose tensors hold values after each replay.
    fn record<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<(Self::Graph, T)>;
    /// Queues one run of `graph`.
    fn replay(&self, graph: &Self::Graph) -> Result<()>;
    /// The number of operations (kernels, copies) in `graph`.
    fn graph_nodes(graph: &Self::Graph) -> usize;
    /// Writes `data` into the existing buffer of `dst` (same element count), which a recorded
    /// graph reads.
    fn write_u32(&self, dst: &Tensor<Self>, data: &[u32]) -> Result<()>;
    /// [`ReplayDevice::write_u32`] for f64 values (a recorded training step's scalars).
    fn write_f64(&self, dst: &Tensor<Self>, data: &[f64]) -> Result<()>;
    /// Queues the in-place AdamW update of a recorded training step (`ela_cuda::Cuda::adamw_in_place`:
    /// the step's scalars in `hyper`, the gradients' sum of squares in `sumsq`, both read on the
    /// device when the work runs).
    fn adamw_in_place(
        &self,
        items: &[InPlaceOperands<Self>],
        cfg: &AdamWConfig,
        hyper: &Tensor<Self>,
        sumsq: &Tensor<Self>,
    ) -> Result<()>;
    /// A model's decoding step compiled into one kernel ([`super::FusedDecoder`]).
    type FusedPlan;
    /// Checks `model` and describes its fused decoding step, which is compiled at its first step
    /// (an error where there is none: the CPU, or a model [`ElaLm::fused_step_blocker`] refuses).
    fn fused_plan(model: &ElaLm<Self>) -> Result<Self::FusedPlan>;
    /// Queues one fused step of `plan` for `tokens` (one per sequence): updates `states` (one
    /// per layer) in place, counts the token on them and writes `logits` `[batch, vocab]`.
    fn fused_step(
        &self,
        plan: &Self::FusedPlan,
        states: &mut [&mut FusedElaState<Self>],
        tokens: &[u32],
        logits: &Tensor<Self>,
    ) -> Result<()>;
}

impl ReplayDevice for Cpu {
    type Graph = std::convert::Infallible;
    fn records_graphs(&self) -> bool {
        false
    }
    fn record<T>(&self, _f: impl FnOnce() -> Result<T>) -> Result<(Self::Graph, T)> {
        Err(Error::invalid(
            "GraphDecoder",
            "recording a decoding step needs a CUDA device (CUDA graphs); on the CPU decode with ElaLm::step, \
             which has no launch cost to save",
        ))
    }
    fn replay(&self, graph: &Self::Graph) -> Result<()> {
        match *graph {}
    }
    fn graph_nodes(graph: &Self::Graph) -> usize {
        match *graph {}
    }
    fn write_u32(&self, _dst: &Tensor<Self>, _data: &[u32]) -> Result<()> {
        Err(Error::invalid("write_u32", "no recorded graph on the CPU"))
    }
    fn write_f64(&self, _dst: &Tensor<Self>, _data: &[f64]) -> Result<()> {
        Err(Error::invalid("write_f64", "no recorded graph on the CPU"))
    }
    fn adamw_in_place(
        &self,
        _items: &[InPlaceOperands<Self>],
        _cfg: &AdamWConfig,
        _hyper: &Tensor<Self>,
        _sumsq: &Tensor<Self>,
    ) -> Result<()> {
        Err(Error::invalid(
            "adamw_in_place",
            "the CPU backend has no in-place update: use Optimizer::step (a recorded step needs CUDA)",
        ))
    }
    type FusedPlan = std::convert::Infallible;
    fn fused_plan(_model: &ElaLm<Self>) -> Result<Self::FusedPlan> {
        Err(Error::invalid(
            "FusedDecoder",
            "the fused decoding step is a CUDA kernel; on the CPU decode with ElaLm::step, which has no launch cost to save",
        ))
    }
    fn fused_step(
        &self,
        plan: &Self::FusedPlan,
        _states: &mut [&mut FusedElaState<Self>],
        _tokens: &[u32],
        _logits: &Tensor<Self>,
    ) -> Result<()> {
        match *plan {}
    }
}

/// One recording at a time in this process: a device records one CUDA graph at a time and
/// refuses a second concurrent one, so decoders recorded from several threads wait their turn
/// (a recording takes milliseconds) instead of failing.
static RECORDING: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl ReplayDevice for ela_cuda::Cuda {
    type Graph = ela_cuda::CudaGraphExec;
    fn records_graphs(&self) -> bool {
        true
    }
    fn record<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<(Self::Graph, T)> {
        let _turn = RECORDING.lock().unwrap_or_else(|p| p.into_inner());
        self.capture(f)
    }
    fn replay(&self, graph: &Self::Graph) -> Result<()> {
        graph.replay()
    }
    fn graph_nodes(graph: &Self::Graph) -> usize {
        graph.num_nodes()
    }
    fn write_u32(&self, dst: &Tensor<Self>, data: &[u32]) -> Result<()> {
        self.write_from_host(dst, data)
    }
    fn write_f64(&self, dst: &Tensor<Self>, data: &[f64]) -> Result<()> {
        self.write_from_host(dst, data)
    }
    fn adamw_in_place(
        &self,
        items: &[InPlaceOperands<Self>],
        cfg: &AdamWConfig,
        hyper: &Tensor<Self>,
        sumsq: &Tensor<Self>,
    ) -> Result<()> {
        let items: Vec<_> = items
            .iter()
            .map(|o| ela_cuda::AdamWInPlace { p: &o.p, g: &o.g, m: &o.m, v: &o.v, weight_decay: o.weight_decay })
            .collect();
        ela_cuda::Cuda::adamw_in_place(self, &items, (cfg.beta1, cfg.beta2, cfg.eps), hyper, sumsq)
    }
    type FusedPlan = ela_cuda::LmDecodePlan;
    fn fused_plan(model: &ElaLm<Self>) -> Result<Self::FusedPlan> {
        super::fused_decode::cuda_plan(model)
    }
    fn fused_step(
        &self,
        plan: &Self::FusedPlan,
        states: &mut [&mut FusedElaState<Self>],
        tokens: &[u32],
        logits: &Tensor<Self>,
    ) -> Result<()> {
        self.lm_decode_step(plan, states, tokens, logits)
    }
}

/// Decodes with one recorded step replayed per token (module docs). Holds the decoding state;
/// [`GraphDecoder::into_state`] hands it back, with its position, to decode eagerly again.
///
/// Replays read the weight buffers the step was recorded with, and the decoder keeps them alive,
/// so a replay never reads freed memory. New parameter values given afterwards (an optimizer
/// step, loading a checkpoint) are not guaranteed to reach a decoder recorded before: record a
/// new one.
///
/// ```no_run
/// # use ela_core::{DType, Result};
/// # use ela_models::lm::{ElaLm, GraphDecoder, LmConfig};
/// # use ela_nn::module::ParamStore;
/// # fn main() -> Result<()> {
/// let dev = ela_cuda::Cuda::new(0)?;
/// let mut cfg = LmConfig::small();
/// cfg.moe = None; // MoE routing reads back to the host: no graph
/// let model = ElaLm::new(&ParamStore::new(&dev, DType::F32, 0), cfg)?;
/// let prompt = ela_core::Tensor::from_vec(vec![72u32, 105], [1, 2], &dev)?;
/// let (_, state) = model.prefill(&prompt)?;
/// let mut dec = GraphDecoder::new(&model, state, &[33])?; // records, then runs token 33
/// let first = dec.logits().to_vec_f64()?;
/// let second = dec.step(&[10])?.to_vec_f64()?; // one replay
/// # let _ = (first, second);
/// # Ok(()) }
/// ```
pub struct GraphDecoder<'m, B: ReplayDevice> {
    model: &'m ElaLm<B>,
    state: DecodeState<B>,
    /// The recorded step's input `[batch, 1]`, rewritten before each replay.
    ids: Tensor<B>,
    /// The recorded step's output `[batch, vocab]`, rewritten by each replay.
    logits: Tensor<B>,
    graph: B::Graph,
    /// Every parameter and buffer as recorded: the graph reads their device buffers by address,
    /// so they must outlive it even if the model's variables are given new values meanwhile.
    _weights: Vec<Tensor<B>>,
}

impl<'m, B: ReplayDevice> GraphDecoder<'m, B> {
    /// Records one decoding step of `model` from `state` and runs it for `tokens` (one per batch
    /// row; their logits are then [`GraphDecoder::logits`]).
    ///
    /// Before recording, the step runs once on a copy of the state (which compiles its kernels
    /// and fills the allocator's cache, so that recording allocates nothing new); the copy is
    /// then dropped. Errors: a model or state whose step cannot be replayed (the reason is
    /// named), tokens out of the vocabulary or not one per row, a device without graphs.
    pub fn new(model: &'m ElaLm<B>, mut state: DecodeState<B>, tokens: &[u32]) -> Result<Self> {
        const OP: &str = "GraphDecoder::new";
        if let Some(why) = model.step_replay_blocker().or_else(|| state.replay_blocker()) {
            return Err(Error::invalid(
                OP,
                format!(
                    "this model's decoding step cannot be recorded once and replayed: {why}; decode with ElaLm::step"
                ),
            ));
        }
        check_tokens(OP, model, tokens, None)?;
        let dev = model.store().device();
        let ids = Tensor::from_cpu_storage(&CpuStorage::U32(tokens.to_vec()), [tokens.len(), 1], dev)?;
        {
            let mut scratch =
                state.try_clone_states().ok_or_else(|| Error::invalid(OP, "every layer must keep an ELA state"))??;
            model.step_ids(&ids, &mut scratch)?;
        }
        // The recorded call counts its step on `state` although nothing runs yet; the replay
        // right after runs it, so the count and the buffers agree again.
        let store = model.store();
        let weights =
            store.params().iter().chain(store.named_buffers().iter().map(|(_, v)| v)).map(|v| v.value()).collect();
        let (graph, logits) = dev.record(|| model.step_ids(&ids, &mut state))?;
        dev.replay(&graph)?;
        Ok(GraphDecoder { model, state, ids, logits, graph, _weights: weights })
    }

    /// Decodes one token per batch row by one replay, and returns the logits `[batch, vocab]`:
    /// the decoder's output buffer, which the next step overwrites (copy what must be kept).
    pub fn step(&mut self, tokens: &[u32]) -> Result<&Tensor<B>> {
        check_tokens("GraphDecoder::step", self.model, tokens, Some(self.ids.dims()[0]))?;
        let dev = self.model.store().device();
        dev.write_u32(&self.ids, tokens)?;
        dev.replay(&self.graph)?;
        self.state.count_replayed_steps(1)?;
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

    /// The number of operations one replay runs (kernels, GEMMs, copies).
    pub fn graph_nodes(&self) -> usize {
        B::graph_nodes(&self.graph)
    }

    /// Bytes of decoding state (constant in the context).
    pub fn state_bytes(&self) -> usize {
        self.state.bytes()
    }

    /// The decoding state, to continue with [`ElaLm::step`] (the graph is freed).
    pub fn into_state(self) -> DecodeState<B> {
        self.state
    }
}

pub(super) fn check_tokens<B: Backend>(
    op: &'static str,
    model: &ElaLm<B>,
    tokens: &[u32],
    batch: Option<usize>,
) -> Result<()> {
    if tokens.is_empty() || batch.is_some_and(|b| b != tokens.len()) {
        let want = batch.map_or("at least one".to_string(), |b| b.to_string());
        return Err(Error::invalid(
            op,
            format!("got {} tokens; the step was recorded for one per batch row ({want})", tokens.len()),
        ));
    }
    let vocab = model.config().vocab;
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::invalid(op, format!("token {bad} is outside the vocabulary of {vocab}")));
    }
    Ok(())
}
