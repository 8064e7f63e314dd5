//! One decoding step of a whole ELA language model in one launch (`kernels/lm_decode.cu`).
//!
//! A decoding step of a small LM is about a dozen tiny kernels per layer (norm, three products,
//! the ELA step, another product, the FFN's three products and SwiGLU, the residual adds). Even
//! recorded as a CUDA graph, each one waits for the previous one to finish and reads its inputs
//! back from global memory, and that latency, not the arithmetic, is the step's time. Here one
//! block per sequence walks every layer with the activations in shared memory (f32) and the
//! weights read straight from global memory (L2-resident for a small model), so the step is one
//! launch. On Hopper a small batch spreads each sequence over a thread-block cluster of up to 8
//! blocks, which split every product's rows and exchange the results through distributed shared
//! memory ([`LmDecodePlan::set_blocks_per_sequence`]). It is written for small models: a model
//! whose layers do not fit the reading rate of a few multiprocessors is better served by the
//! per-op kernels.
//!
//! The caller describes the model once ([`DecodeModel`] -> [`Cuda::lm_decode_plan`], which
//! checks every shape) and then runs steps on its ELA states
//! ([`Cuda::lm_decode_step`]). ela-models' `FusedDecoder` builds the description from an `ElaLm`.

use cudarc::driver::DeviceRepr;
use ela_core::{Backend, DType, ElaKernel, Error, FusedElaState, Result, Tensor};

use crate::device::{Arg, Cfg, Cuda};
use crate::kernels::{ElaDt, KernelFile, LmShape};

/// Pointers in the kernel's parameter block (`LM_PTRS` in lm_decode.cu): embedding, final norm,
/// head, then [`LAYER_PTRS`] per layer. With [`LM_IDS`] and the other arguments the block stays
/// under the 4 KiB a launch may pass by value.
const LM_PTRS: usize = 387;
/// Token ids passed by value in the parameter block (`LM_IDS`): a step of up to this many
/// sequences needs no copy to the device before its launch.
const LM_IDS: usize = 128;
/// Pointers per layer (`LM_LAYER_PTRS`), in the order of [`LayerSlot`].
const LAYER_PTRS: usize = 12;
/// Threads per block (`LM_THREADS`).
const THREADS: u32 = 512;
/// The most layers one launch takes (the parameter block's room).
pub const LM_DECODE_MAX_LAYERS: usize = (LM_PTRS - 3) / LAYER_PTRS;

/// A layer's pointer slots (`P_*` in lm_decode.cu).
#[derive(Clone, Copy)]
enum LayerSlot {
    Norm1,
    Norm2,
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
    S,
    Z,
    M,
}

/// Mirror of `LmPtrs` in lm_decode.cu.
#[repr(C)]
#[derive(Clone, Copy)]
struct LmPtrs {
    p: [u64; LM_PTRS],
    ids: [u32; LM_IDS],
}
// SAFETY: plain old data with the C layout of the kernel's parameter.
unsafe impl DeviceRepr for LmPtrs {}

impl LmPtrs {
    fn set(&mut self, layer: usize, slot: LayerSlot, ptr: u64) {
        self.p[3 + layer * LAYER_PTRS + slot as usize] = ptr;
    }
}

/// How a layer joins its attention and FFN (`LM_LINK`), as ela-models' `Link`:
/// with `x` the residual stream and `N1`, `N2` the layer's RMS norms,
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeLink {
    /// `a = Attn(N1(x)); x += a + FFN(a)` (no `N2`).
    Hyper,
    /// `h = x + Attn(N1(x)); x = h + FFN(N2(h))`.
    PreNorm,
    /// `h = N1(x + Attn(x)); x = N2(h + FFN(h))`.
    PostNorm,
}

/// One layer's weights, each `[out, in]` (as `ela_nn::layers::Linear` stores them), all of the
/// model's weight dtype. `Attn` is the `q`, `k`, `v` products, Hadamard-Exp ELA per head and the
/// `o` product; `FFN(u) = down (silu(gate u) * up u)`.
#[derive(Clone)]
pub struct DecodeLayer {
    /// Gain of the first RMS norm `[d]`.
    pub norm1: Tensor<Cuda>,
    /// Gain of the second RMS norm `[d]` (`None` under Hyper-Link, which has none).
    pub norm2: Option<Tensor<Cuda>>,
    /// Query projection `[d, d]`.
    pub q: Tensor<Cuda>,
    /// Key projection `[d, d]`.
    pub k: Tensor<Cuda>,
    /// Value projection `[d, d]`.
    pub v: Tensor<Cuda>,
    /// Output projection `[d, d]`.
    pub o: Tensor<Cuda>,
    /// FFN gate `[ff, d]`.
    pub gate: Tensor<Cuda>,
    /// FFN up `[ff, d]`.
    pub up: Tensor<Cuda>,
    /// FFN down `[d, ff]`.
    pub down: Tensor<Cuda>,
}

/// The model a fused decoding step runs: weights of one dtype (f32, f16 or bf16), activations
/// and ELA states in f32.
#[derive(Clone)]
pub struct DecodeModel {
    /// How each layer joins attention and FFN.
    pub link: DecodeLink,
    /// Attention heads per layer (dividing the width).
    pub heads: usize,
    /// `eps` of the layers' RMS norms.
    pub eps: f64,
    /// Token embedding `[vocab, d]`.
    pub embed: Tensor<Cuda>,
    /// The layers, at most [`LM_DECODE_MAX_LAYERS`].
    pub layers: Vec<DecodeLayer>,
    /// Gain `[d]` and `eps` of the RMS norm before the head, if any.
    pub final_norm: Option<(Tensor<Cuda>, f64)>,
    /// Output head `[vocab, d]`; `None` when tied to the embedding.
    pub head: Option<Tensor<Cuda>>,
}

/// A checked, compiled [`DecodeModel`], ready to run steps ([`Cuda::lm_decode_step`]). It holds
/// the weight tensors, so their buffers outlive every step queued with it.
pub struct LmDecodePlan {
    model: DecodeModel,
    ptrs: LmPtrs,
    shape: LmShape,
    dtype: DType,
    vocab: usize,
    smem: u32,
    /// Blocks per sequence when set by [`LmDecodePlan::set_blocks_per_sequence`].
    blocks: Option<usize>,
}

impl LmDecodePlan {
    /// Fixes how many blocks (a thread-block cluster) share each sequence of a step: 1, 2, 4 or
    /// 8, dividing the width; `None` (the default) picks per step the most that keep the batch
    /// within one wave of the GPU's multiprocessors (8 at batch 1 on an H100). For measuring
    /// the choice; more than 1 needs compute capability 9.0 (Hopper) or later.
    pub fn set_blocks_per_sequence(&mut self, blocks: Option<usize>) -> Result<()> {
        if let Some(c) = blocks {
            let d = self.shape.d as usize;
            if !matches!(c, 1 | 2 | 4 | 8) || !d.is_multiple_of(c) {
                return Err(Error::invalid(
                    OP,
                    format!("{c} blocks per sequence: it must be 1, 2, 4 or 8 and divide the width {d}"),
                ));
            }
        }
        self.blocks = blocks;
        Ok(())
    }
    /// The dtype of the weights and of the logits a step writes.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Vocabulary size (the logits' last axis).
    pub fn vocab(&self) -> usize {
        self.vocab
    }
    /// The model the plan runs.
    pub fn model(&self) -> &DecodeModel {
        &self.model
    }
}

const OP: &str = "lm_decode";

fn link_code(link: DecodeLink) -> u8 {
    match link {
        DecodeLink::Hyper => 0,
        DecodeLink::PreNorm => 1,
        DecodeLink::PostNorm => 2,
    }
}

/// Shared memory of one block (mirror of the layout at the top of `lm_decode` in lm_decode.cu).
fn smem_bytes(d: usize, heads: usize, ff: usize) -> usize {
    4 * (15 * d + heads + THREADS as usize + 2 * ff + 32)
}

/// The most blocks one sequence is spread over (a thread-block cluster of this many; 8 is the
/// size every Hopper GPU schedules).
const MAX_CLUSTER: usize = 8;

/// Blocks per sequence for a step of `batch` sequences of width `d`: the largest power of two up
/// to [`MAX_CLUSTER`] that divides `d` and keeps the whole batch within one wave of
/// `sms` multiprocessors (one block each), or 1 without clusters (before compute capability 9).
fn blocks_per_sequence(batch: usize, d: usize, sms: usize, cc_major: i32) -> usize {
    if cc_major < 9 {
        return 1;
    }
    let mut c = MAX_CLUSTER;
    while c > 1 && (batch.saturating_mul(c) > sms || !d.is_multiple_of(c)) {
        c /= 2;
    }
    c
}

impl Cuda {
    /// Checks `model` (shapes, dtypes, contiguity, this device). The kernel is compiled for the
    /// model's shape at the first step of each blocks-per-sequence count (a step's batch picks
    /// it, [`LmDecodePlan::set_blocks_per_sequence`]), so time steps after a first one. Errors
    /// name the tensor and the shape expected; a model wider than one block's shared memory (about
    /// `12 d + 2 ff` floats) or deeper than [`LM_DECODE_MAX_LAYERS`] is refused: decode it with the
    /// per-op kernels.
    pub fn lm_decode_plan(&self, model: DecodeModel) -> Result<LmDecodePlan> {
        let dtype = model.embed.dtype();
        let wt = match dtype {
            DType::F32 => ElaDt::F32,
            DType::F16 => ElaDt::F16,
            DType::BF16 => ElaDt::BF16,
            _ => {
                return Err(Error::UnsupportedDType { op: OP, dtype, expected: "f32, f16 or bf16 weights" });
            }
        };
        if model.embed.rank() != 2 {
            return Err(Error::RankMismatch {
                op: OP,
                expected: "2 ([vocab, d]) for the embedding",
                shape: model.embed.shape().clone(),
            });
        }
        let (vocab, d) = (model.embed.dims()[0], model.embed.dims()[1]);
        let layers = model.layers.len();
        if layers == 0 || layers > LM_DECODE_MAX_LAYERS {
            return Err(Error::invalid(
                OP,
                format!("the fused step takes 1 to {LM_DECODE_MAX_LAYERS} layers, got {layers}: decode with the per-op kernels"),
            ));
        }
        if i32::try_from(vocab).is_err() {
            return Err(Error::invalid(OP, format!("a vocabulary of {vocab} is larger than the kernel's i32 index")));
        }
        let heads = model.heads;
        let vec = 16 / dtype.size_in_bytes();
        if heads == 0 || d == 0 || !d.is_multiple_of(heads) || !d.is_multiple_of(vec) || vocab == 0 {
            return Err(Error::invalid(
                OP,
                format!(
                    "width {d} with {heads} heads and a vocabulary of {vocab}: the width must be a positive multiple of the \
                     heads and of {vec} (16 bytes of {dtype:?} weights), the vocabulary positive"
                ),
            ));
        }
        let ff = model.layers[0].gate.dims().first().copied().unwrap_or(0);
        if ff == 0 || !ff.is_multiple_of(vec) {
            return Err(Error::invalid(OP, format!("the FFN width {ff} must be a positive multiple of {vec}")));
        }
        let smem = smem_bytes(d, heads, ff);
        if smem > self.max_shared_memory_per_block() as usize {
            return Err(Error::invalid(
                OP,
                format!(
                    "width {d} and FFN width {ff} need {smem} bytes of shared memory per block, this GPU allows {}: \
                     decode this model with the per-op kernels",
                    self.max_shared_memory_per_block()
                ),
            ));
        }
        let mut ptrs = LmPtrs { p: [0; LM_PTRS], ids: [0; LM_IDS] };
        let check = |what: String, t: &Tensor<Cuda>, dims: &[usize]| -> Result<u64> {
            if t.dims() != dims {
                return Err(Error::invalid(OP, format!("{what} has shape {}, expected {dims:?}", t.shape())));
            }
            if t.dtype() != dtype {
                return Err(Error::DTypeMismatch { op: OP, lhs: dtype, rhs: t.dtype() });
            }
            if !t.device().same_device(self) {
                return Err(Error::DeviceMismatch { op: OP, lhs: self.device_name(), rhs: t.device().device_name() });
            }
            let ptr = match t.layout().contiguous_range() {
                Some(_) => t.storage().ptr_at(t.layout().offset()),
                None => return Err(Error::invalid(OP, format!("{what} must be contiguous (call .contiguous())"))),
            };
            if !ptr.is_multiple_of(16) {
                return Err(Error::invalid(OP, format!("{what} must start on a 16-byte boundary (copy it)")));
            }
            Ok(ptr)
        };
        ptrs.p[0] = check("the embedding".into(), &model.embed, &[vocab, d])?;
        if let Some((g, eps)) = &model.final_norm {
            ptrs.p[1] = check("the final norm".into(), g, &[d])?;
            check_eps(*eps)?;
        }
        ptrs.p[2] = match &model.head {
            Some(h) => check("the head".into(), h, &[vocab, d])?,
            None => ptrs.p[0],
        };
        check_eps(model.eps)?;
        for (i, l) in model.layers.iter().enumerate() {
            let w = |name: &str, t: &Tensor<Cuda>, dims: &[usize]| check(format!("layer {i}'s {name}"), t, dims);
            ptrs.set(i, LayerSlot::Norm1, w("norm1", &l.norm1, &[d])?);
            match (&l.norm2, model.link) {
                (Some(n), DecodeLink::PreNorm | DecodeLink::PostNorm) => {
                    ptrs.set(i, LayerSlot::Norm2, w("norm2", n, &[d])?)
                }
                (None, DecodeLink::Hyper) => {}
                (n, link) => {
                    return Err(Error::invalid(
                        OP,
                        format!(
                            "layer {i}: {link:?} {} a second norm, got {}",
                            if link == DecodeLink::Hyper { "has no" } else { "needs" },
                            if n.is_some() { "one" } else { "none" }
                        ),
                    ))
                }
            }
            for (slot, name, t, dims) in [
                (LayerSlot::Q, "q", &l.q, [d, d]),
                (LayerSlot::K, "k", &l.k, [d, d]),
                (LayerSlot::V, "v", &l.v, [d, d]),
                (LayerSlot::O, "o", &l.o, [d, d]),
                (LayerSlot::Gate, "gate", &l.gate, [ff, d]),
                (LayerSlot::Up, "up", &l.up, [ff, d]),
                (LayerSlot::Down, "down", &l.down, [d, ff]),
            ] {
                ptrs.set(i, slot, w(name, t, &dims)?);
            }
        }
        let shape =
            LmShape { wt, d: d as u32, heads: heads as u32, ff: ff as u32, link: link_code(model.link), cluster: 1 };
        Ok(LmDecodePlan { model, ptrs, shape, dtype, vocab, smem: smem as u32, blocks: None })
    }

    /// One decoding step of `plan`'s model for `tokens` (one per sequence): updates each layer's
    /// ELA state in `states` (Hadamard Exp, `batch x heads` sequences of head size `d / heads`,
    /// f32 buffers, as a prefill left them) in place, counts the token on them and writes the
    /// logits `[batch, vocab]` (the plan's dtype) into `logits`. Up to 128 tokens travel in the
    /// launch's parameters; a larger batch's are copied to the device first.
    pub fn lm_decode_step(
        &self,
        plan: &LmDecodePlan,
        states: &mut [&mut FusedElaState<Cuda>],
        tokens: &[u32],
        logits: &Tensor<Cuda>,
    ) -> Result<()> {
        let d = plan.shape.d as usize;
        let (heads, hd) = (plan.shape.heads as usize, d / plan.shape.heads as usize);
        let batch = tokens.len();
        if batch == 0 {
            return Err(Error::invalid(OP, "a step needs one token per sequence, got none"));
        }
        if let Some((row, t)) = tokens.iter().enumerate().find(|(_, &t)| t as usize >= plan.vocab) {
            return Err(Error::invalid(
                OP,
                format!("token {t} of sequence {row} is outside the vocabulary of {}", plan.vocab),
            ));
        }
        if logits.dtype() != plan.dtype || logits.dims() != [batch, plan.vocab] {
            return Err(Error::invalid(
                OP,
                format!(
                    "logits must be {:?} [{batch}, {}], got {:?} {}",
                    plan.dtype,
                    plan.vocab,
                    logits.dtype(),
                    logits.shape()
                ),
            ));
        }
        if states.len() != plan.model.layers.len() {
            return Err(Error::invalid(
                OP,
                format!("one ELA state per layer: {} layers, got {} states", plan.model.layers.len(), states.len()),
            ));
        }
        let mut ptrs = plan.ptrs;
        for (i, st) in states.iter_mut().enumerate() {
            let sd = st.dims();
            let ok = st.kernel() == ElaKernel::HadamardExp
                && st.state_dtype() == DType::F32
                && (sd.batch, sd.heads, sd.d, sd.dv) == (batch, heads, hd, hd)
                && st.device().same_device(self);
            if !ok {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "layer {i}'s state is {:?} with batch {}, heads {}, d {}, dv {} in {:?}; the step needs Hadamard Exp \
                         with batch {batch}, heads {heads}, d = dv = {hd} in f32 on this device",
                        st.kernel(),
                        sd.batch,
                        sd.heads,
                        sd.d,
                        sd.dv,
                        st.state_dtype()
                    ),
                ));
            }
            let bufs = st.storage_mut();
            let m = bufs.m.as_ref().ok_or_else(|| Error::invalid(OP, "a Hadamard-Exp state without log-scales"))?;
            ptrs.set(i, LayerSlot::S, bufs.s.ptr());
            ptrs.set(i, LayerSlot::Z, bufs.z.ptr());
            ptrs.set(i, LayerSlot::M, m.ptr());
        }
        let contiguous_ptr = |t: &Tensor<Cuda>, what: &str| -> Result<u64> {
            t.layout()
                .contiguous_range()
                .map(|_| t.storage().ptr_at(t.layout().offset()))
                .ok_or_else(|| Error::invalid(OP, format!("{what} must be contiguous")))
        };
        // The ids by value when they fit the parameter block, else in a device buffer (freed
        // after the launch is queued: the allocator hands it out again only to work queued
        // after it on the same stream).
        let mut ids_buf = None;
        if batch <= LM_IDS {
            ptrs.ids[..batch].copy_from_slice(tokens);
        } else {
            ids_buf = Some(self.upload(tokens, DType::U32)?);
        }
        let args = [
            Arg::Ptr(ids_buf.as_ref().map_or(0, |b| b.ptr())),
            Arg::Ptr(contiguous_ptr(logits, "logits")?),
            Arg::I32(plan.model.layers.len() as i32),
            Arg::I32(plan.vocab as i32),
            Arg::F64(plan.model.eps),
            Arg::F64(plan.model.final_norm.as_ref().map_or(0.0, |(_, e)| *e)),
        ];
        let cluster = match plan.blocks {
            Some(c) if c > 1 && self.compute_capability().0 < 9 => {
                return Err(Error::invalid(
                    OP,
                    format!("{c} blocks per sequence need thread-block clusters (compute capability 9.0 or later)"),
                ))
            }
            Some(c) => c,
            None => match blocks_override()? {
                Some(c) if c > 1 && self.compute_capability().0 < 9 => 1,
                Some(c) => c,
                None => blocks_per_sequence(batch, d, self.sm_count() as usize, self.compute_capability().0),
            },
        };
        if !d.is_multiple_of(cluster) {
            return Err(Error::invalid(OP, format!("{cluster} blocks per sequence do not divide the width {d}")));
        }
        let grid = batch
            .checked_mul(cluster)
            .and_then(|g| u32::try_from(g).ok())
            .ok_or_else(|| Error::invalid(OP, format!("batch {batch} is too large")))?;
        let shape = LmShape { cluster: cluster as u8, ..plan.shape };
        self.launch_list_smem(
            KernelFile::LmDecode(shape),
            OP,
            Cfg { grid, grid_y: 1, block: THREADS },
            plan.smem,
            &ptrs,
            &args,
        )?;
        for st in states.iter_mut() {
            st.count_replayed_steps(1);
        }
        Ok(())
    }
}

/// `ELA_CUDA_DECODE_BLOCKS=N` (1, 2, 4 or 8): blocks per sequence for every fused step whose
/// plan does not set them, to compare the choices (cuda/README.md). Read once per process: a
/// step is a few tens of microseconds.
fn blocks_override() -> Result<Option<usize>> {
    static OVERRIDE: std::sync::OnceLock<std::result::Result<Option<usize>, String>> = std::sync::OnceLock::new();
    OVERRIDE
        .get_or_init(|| match std::env::var("ELA_CUDA_DECODE_BLOCKS") {
            Err(_) => Ok(None),
            Ok(v) => match v.trim().parse::<usize>() {
                Ok(c @ (1 | 2 | 4 | 8)) => Ok(Some(c)),
                _ => Err(format!("ELA_CUDA_DECODE_BLOCKS={v:?}: expected 1, 2, 4 or 8")),
            },
        })
        .clone()
        .map_err(|msg| Error::invalid(OP, msg))
}

fn check_eps(eps: f64) -> Result<()> {
    if eps.is_finite() && eps > 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(OP, format!("a norm's eps must be positive and finite, got {eps}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequence_gets_the_most_blocks_that_keep_the_batch_in_one_wave() {
        // 132 multiprocessors (H100 SXM, H200), width 128.
        for (batch, want) in [(1, 8), (8, 8), (16, 8), (17, 4), (33, 4), (34, 2), (64, 2), (66, 2), (67, 1), (130, 1)] {
            assert_eq!(blocks_per_sequence(batch, 128, 132, 9), want, "batch {batch}");
        }
        // The width must split evenly; no clusters before Hopper.
        assert_eq!(blocks_per_sequence(1, 36, 132, 9), 4);
        assert_eq!(blocks_per_sequence(1, 30, 132, 9), 2);
        assert_eq!(blocks_per_sequence(1, 128, 132, 8), 1);
        assert_eq!(smem_bytes(128, 4, 256), 4 * (15 * 128 + 4 + 512 + 512 + 32));
    }
}
