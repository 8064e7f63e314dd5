//! `ela train --graph`: the whole training step (forward, backward, gradient norm, clipping and
//! the AdamW update) recorded once as a CUDA graph and replayed for every later step.
//!
//! Why: a step of the GPU model in docs/benchmarks.md is about a thousand kernel launches, many
//! of them a few microseconds of GPU work, and at every read-back (the loss) the GPU waits while
//! the host issues the next launches one by one. A replay issues them all with one driver call.
//!
//! What makes a step replayable: its inputs live in fixed device buffers (the batch's token ids
//! are written into them before each replay); the update writes the parameters and moments in
//! place (their addresses are frozen in the graph), reading the step's learning rate and bias
//! corrections from a small device buffer the host writes; the gradient norm and the clipping
//! stay on the device. The first step of a run is eager: it creates the optimizer's state,
//! compiles the kernels and fills the allocator's cache, so that recording allocates little.
//! Given the same gradients, the replayed update has the bits of the eager one (the kernel rounds
//! every scalar as the host does). The GPU backward is not bit-reproducible from run to run
//! (the embedding gradient adds rows with atomics), so whole runs agree to within that
//! variation: `models/tests/train_graph.rs` holds losses, gradient norms and validation losses
//! of eight steps to 1e-6 relative (measured: losses equal, norms within 3e-8).
//!
//! Refused up front: the CPU (no graphs), mixture-of-experts layers (the routing statistics are
//! read back every step), several ranks (the gradient reduction talks to other processes),
//! half-precision parameters, and per-layer gradient norms.

use ela_core::{DType, Error, Result, Tensor};
use ela_nn::optim::{grad_sum_squares, AdamW, Optimizer};

use crate::data::Batch;
use crate::lm::{ElaLm, LmConfig, ReplayDevice};

/// A recorded training step and the device buffers it reads and writes.
pub(super) struct GraphStep<B: ReplayDevice> {
    graph: B::Graph,
    /// The batch's input and target token ids `[batch, seq]`, rewritten before each replay.
    inputs: Tensor<B>,
    targets: Tensor<B>,
    /// `[lr, 1 - beta1^t, 1 - beta2^t, weight_decay, max_norm]`, rewritten before each replay.
    hyper: Tensor<B>,
    /// The step's mean cross-entropy and the gradients' sum of squares, rewritten by each replay.
    ce: Tensor<B>,
    sumsq: Tensor<B>,
    clip: f64,
    /// Token ids must be below this (checked on the host: the recorded lookups cannot check).
    vocab: usize,
}

/// Why a run cannot record its step, or `None`.
pub(super) fn graph_blocker<B: ReplayDevice>(
    device: &B,
    cfg: &LmConfig,
    world: usize,
    layer_grad_norms: bool,
) -> Option<&'static str> {
    if !device.records_graphs() {
        Some("--graph records the step as a CUDA graph: use --device cuda")
    } else if cfg.moe.is_some() {
        Some("--graph cannot record mixture-of-experts layers (their routing is read back every step): use --experts 0")
    } else if world > 1 {
        Some("--graph records one process's step; data-parallel runs reduce gradients across processes")
    } else if layer_grad_norms {
        Some("--graph reads back one norm per step; per-layer gradient norms need the eager step")
    } else {
        None
    }
}

impl<B: ReplayDevice> GraphStep<B> {
    /// Records one step of `model` and `opt` on batches of `batch x seq` tokens with gradient
    /// clipping at `clip` (0: off). `opt` must have updated every parameter once (the eager
    /// first step). Nothing runs until the first [`GraphStep::run`].
    pub(super) fn record(
        model: &ElaLm<B>,
        opt: &AdamW<B>,
        device: &B,
        (batch, seq): (usize, usize),
        clip: f64,
    ) -> Result<Self> {
        let inputs = Tensor::zeros([batch, seq], DType::U32, device)?;
        let targets = Tensor::zeros([batch, seq], DType::U32, device)?;
        let hyper = Tensor::zeros([5], DType::F64, device)?;
        let params: Vec<_> = opt.params().iter().map(|(_, v)| v.clone()).collect();
        let (graph, (ce, sumsq)) = device.record(|| {
            let (loss, ce, _) = model.loss(&inputs, &targets)?;
            let grads = loss.backward()?;
            let sumsq = grad_sum_squares(&params, &grads)?
                .ok_or_else(|| Error::invalid("train --graph", "the model has no gradients"))?;
            let ops = opt.in_place_operands(&grads)?;
            device.adamw_in_place(&ops, opt.config(), &hyper, &sumsq)?;
            Ok((ce, sumsq))
        })?;
        Ok(GraphStep { graph, inputs, targets, hyper, ce, sumsq, clip, vocab: model.config().vocab })
    }

    /// One step on `b` at the optimizer's current learning rate: writes the batch and the
    /// scalars, replays, and reads the gradient norm. Returns the loss tensor (read it later:
    /// reading waits for the step) and the norm before clipping; a non-finite norm with
    /// clipping on means the update was skipped, and the step counts do not advance.
    pub(super) fn run(&self, device: &B, opt: &mut AdamW<B>, b: &Batch) -> Result<(Tensor<B>, f64)> {
        if let Some(&t) = b.inputs.iter().chain(&b.targets).find(|&&t| t as usize >= self.vocab) {
            return Err(Error::Index {
                op: "train --graph",
                index: t as usize,
                size: self.vocab,
                axis: 1,
                shape: ela_core::Shape::from(vec![b.batch, b.seq]),
            });
        }
        device.write_u32(&self.inputs, &b.inputs)?;
        device.write_u32(&self.targets, &b.targets)?;
        let (bc1, bc2) = opt.next_bias_corrections()?;
        let c = opt.config();
        device.write_f64(&self.hyper, &[opt.lr(), bc1, bc2, c.weight_decay, self.clip])?;
        device.replay(&self.graph)?;
        let norm = self.sumsq.to_scalar()?.sqrt();
        if norm.is_finite() || self.clip == 0.0 {
            opt.count_in_place_step()?;
        }
        Ok((self.ce.clone(), norm))
    }
}
