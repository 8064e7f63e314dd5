//! Exact Linear Attention on the CPU: the dispatch of the fused ops (`Backend::ela_forward`,
//! `ela_backward`, `ela_step`) to the algorithms, one file each (the math, and the equation each
//! block implements, is in `docs/ela.md`).
//!
//! Sequences (one per batch entry and head) run in parallel with rayon. Inside one, the chunked
//! form spends its time in the GEMM (`C x C` intra-chunk blocks, `C x F x Dv` state products);
//! there is never a `T x T` buffer. f16/bf16 inputs are computed in f32; the state `(S, z)` is
//! f32 for f16/bf16/f32 inputs and f64 for f64 inputs.
//!
//! Files, named like their CUDA counterparts (`cuda/src/ops/ela/`, `cuda/kernels/ela/`):
//! `chunk_fwd.rs` and `chunk_bwd.rs` (the causal chunked form and its reverse scan),
//! `noncausal.rs` (one global state, forward and backward), `step.rs` (one decode token),
//! `exact_rows.rs` (rows recomputed after underflow), and what they share: `chunk.rs` (per-chunk
//! preparation, state update), `features.rs` (the built-in feature maps and their VJPs),
//! `linalg.rs` (GEMM wrapper, triangular products, reductions), `float.rs` (the compute float,
//! vectorizable `exp`).
//!
//! Arguments are not checked here: `Tensor` (core/src/tensor/ela.rs) checks every ELA call once,
//! through `ElaDims::from_shapes` and `ElaParams::validate`, and hands over contiguous buffers of
//! one float dtype whose lengths match `dims`, and states made by `FusedElaState::new` for them. Debug
//! builds assert that contract.

mod chunk;
mod chunk_bwd;
mod chunk_fwd;
mod exact_rows;
mod features;
mod float;
/// The compute float with a vectorized `exp`, shared with the other CPU kernels (SwiGLU).
pub(crate) use float::ElaFloat;
mod linalg;
mod noncausal;
mod step;

use std::borrow::Cow;

use rayon::prelude::*;

use self::chunk::{Seq, State};
use crate::cpu::storage::{widen, CpuElement, CpuStorage};
use crate::dtype::DType;
use crate::ela::{ElaDims, ElaKernel, ElaParams, ElaStateBufs};
use crate::error::Result;
use crate::layout::Layout;

/// Float inputs as compute slices: borrowed for f32/f64, widened to f32 for f16/bf16.
enum Inputs<'a> {
    F32(Vec<Cow<'a, [f32]>>),
    F64(Vec<&'a [f64]>),
}

fn inputs<'a>(op: &'static str, xs: &[&'a CpuStorage]) -> Result<(DType, Inputs<'a>)> {
    let dtype = xs[0].dtype();
    debug_assert!(xs.iter().all(|x| x.dtype() == dtype), "{op}: inputs of several dtypes (Tensor checks them)");
    let f32s = |x: &'a CpuStorage| -> Result<Cow<'a, [f32]>> {
        let l = Layout::contiguous(x.len());
        Ok(match x {
            CpuStorage::F32(v) => Cow::Borrowed(v),
            CpuStorage::F16(v) => Cow::Owned(widen(v, &l)?),
            CpuStorage::BF16(v) => Cow::Owned(widen(v, &l)?),
            _ => unreachable!("dtype checked"),
        })
    };
    Ok(match dtype {
        DType::F64 => (
            dtype,
            Inputs::F64(
                xs.iter()
                    .map(|x| match x {
                        CpuStorage::F64(v) => v.as_slice(),
                        _ => unreachable!("dtype checked"),
                    })
                    .collect(),
            ),
        ),
        DType::F32 | DType::F16 | DType::BF16 => {
            (dtype, Inputs::F32(xs.iter().map(|x| f32s(x)).collect::<Result<_>>()?))
        }
        _ => unreachable!("{op}: {dtype:?} inputs (Tensor checks for a float dtype)"),
    })
}

/// Store a compute result in the input dtype.
fn output_f32(v: Vec<f32>, dtype: DType) -> Result<CpuStorage> {
    CpuStorage::store_f32(v, dtype)
}

/// Debug builds: the buffers have the lengths `dims` says (Tensor made them so).
fn debug_check_inputs(q: &CpuStorage, k: &CpuStorage, v: &CpuStorage, dims: &ElaDims) {
    let rows = dims.sequences() * dims.t;
    debug_assert_eq!(q.len(), rows * dims.d, "q for {dims:?}");
    debug_assert_eq!(k.len(), rows * dims.d, "k for {dims:?}");
    debug_assert_eq!(v.len(), rows * dims.dv, "v for {dims:?}");
}

/// Split `v` into `parts` consecutive slices of `len` (all empty when `len == 0`).
fn split_mut<T>(v: &mut [T], parts: usize, len: usize) -> Vec<&mut [T]> {
    if len == 0 {
        return (0..parts).map(|_| <&mut [T]>::default()).collect();
    }
    v.chunks_mut(len).take(parts).collect()
}

/// Mutable per-sequence state buffers of dtype `T`.
trait StateElem: ElaFloat + CpuElement {
    fn buf(s: &mut CpuStorage) -> Option<&mut Vec<Self>>;
}
impl StateElem for f32 {
    fn buf(s: &mut CpuStorage) -> Option<&mut Vec<f32>> {
        match s {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
}
impl StateElem for f64 {
    fn buf(s: &mut CpuStorage) -> Option<&mut Vec<f64>> {
        match s {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
}

/// A state buffer set split per sequence: `(s, z, m)` slices.
type SeqStates<'a, T> = Vec<((&'a mut [T], &'a mut [T]), &'a mut [T])>;

fn state_parts<'a, T: StateElem>(
    op: &'static str,
    bufs: &'a mut ElaStateBufs<CpuStorage>,
    dims: &ElaDims,
    kernel: ElaKernel,
) -> Result<SeqStates<'a, T>> {
    // The state comes from `FusedElaState::new` for these sizes and kernel, and `FusedElaState` checks
    // what it is fed: a mismatch here is a bug in the caller, not a user error.
    let (n, f, dv) = (dims.sequences(), kernel.feature_size(dims.d), dims.dv);
    let bad = |what: &str| format!("{op}: the state's {what} buffer does not match {dims:?} with kernel {kernel}");
    let s = T::buf(&mut bufs.s).expect("state dtype");
    let z = T::buf(&mut bufs.z).expect("state dtype");
    debug_assert!(s.len() == n * f * dv, "{}", bad("S"));
    debug_assert!(z.len() == n * f, "{}", bad("z"));
    let m: &mut [T] = match (&mut bufs.m, kernel.has_units()) {
        (Some(m), true) => T::buf(m).expect("state dtype"),
        (None, false) => &mut [],
        _ => unreachable!("{}", bad("m (log-scale)")),
    };
    debug_assert!(m.len() == if kernel.has_units() { n * f } else { 0 }, "{}", bad("m"));
    let ms = split_mut(m, n, if kernel.has_units() { f } else { 0 });
    Ok(split_mut(s, n, f * dv).into_iter().zip(split_mut(z, n, f)).zip(ms).collect())
}

fn forward_t<T: StateElem>(
    q: &[T],
    k: &[T],
    v: &[T],
    dims: &ElaDims,
    p: &ElaParams,
    state: Option<&mut ElaStateBufs<CpuStorage>>,
) -> Result<Vec<T>> {
    const OP: &str = "ela_forward";
    let (n, t, d, dv) = (dims.sequences(), dims.t, dims.d, dims.dv);
    let f = p.kernel.feature_size(d);
    let mut y = vec![T::ZERO; n * t * dv];
    let mut scratch = ElaStateBufs {
        s: T::wrap(vec![T::ZERO; n * f * dv]),
        z: T::wrap(vec![T::ZERO; n * f]),
        m: p.kernel.has_units().then(|| T::wrap(vec![T::neg_infinity(); n * f])),
    };
    let bufs = match state {
        Some(s) => s,
        None => &mut scratch,
    };
    let states = state_parts::<T>(OP, bufs, dims, p.kernel)?;
    split_mut(&mut y, n, t * dv).into_par_iter().zip(states).enumerate().for_each(|(b, (y, ((s, z), m)))| {
        let seq = Seq {
            q: &q[b * t * d..(b + 1) * t * d],
            k: &k[b * t * d..(b + 1) * t * d],
            v: &v[b * t * dv..(b + 1) * t * dv],
            t,
            d,
            dv,
            kernel: p.kernel,
        };
        let st = &mut State { s, z, m };
        if p.causal {
            chunk_fwd::forward_seq(&seq, p.chunk, st, y);
        } else {
            noncausal::forward_seq(&seq, p.chunk, st, y);
        }
    });
    Ok(y)
}

fn backward_t<T: ElaFloat>(x: [&[T]; 5], dims: &ElaDims, p: &ElaParams) -> (Vec<T>, Vec<T>, Vec<T>) {
    let [q, k, v, y, dy] = x;
    let (n, t, d, dv) = (dims.sequences(), dims.t, dims.d, dims.dv);
    let (mut dq, mut dk, mut dvo) = (vec![T::ZERO; n * t * d], vec![T::ZERO; n * t * d], vec![T::ZERO; n * t * dv]);
    let parts =
        split_mut(&mut dq, n, t * d).into_iter().zip(split_mut(&mut dk, n, t * d)).zip(split_mut(&mut dvo, n, t * dv));
    parts.collect::<Vec<_>>().into_par_iter().enumerate().for_each(|(b, ((dq, dk), dvo))| {
        let (rq, rv) = (b * t * d..(b + 1) * t * d, b * t * dv..(b + 1) * t * dv);
        let seq = Seq { q: &q[rq.clone()], k: &k[rq], v: &v[rv.clone()], t, d, dv, kernel: p.kernel };
        let (y, dy) = (&y[rv.clone()], &dy[rv]);
        if p.causal {
            chunk_bwd::backward_seq(&seq, p.chunk, [y, dy], [dq, dk, dvo]);
        } else {
            noncausal::backward_seq(&seq, p.chunk, [y, dy], [dq, dk, dvo]);
        }
    });
    (dq, dk, dvo)
}

fn step_t<T: StateElem>(
    q: &[T],
    k: &[T],
    v: &[T],
    dims: &ElaDims,
    kernel: ElaKernel,
    state: &mut ElaStateBufs<CpuStorage>,
) -> Result<Vec<T>> {
    let (n, d, dv) = (dims.sequences(), dims.d, dims.dv);
    let mut y = vec![T::ZERO; n * dv];
    let states = state_parts::<T>("ela_step", state, dims, kernel)?;
    let one = |b: usize, y: &mut [T], ((s, z), m): ((&mut [T], &mut [T]), &mut [T])| {
        let (qr, vr) = (b * d..(b + 1) * d, b * dv..(b + 1) * dv);
        step::step_seq(kernel, &q[qr.clone()], &k[qr], &v[vr], &mut State { s, z, m }, y);
    };
    let work = split_mut(&mut y, n, dv).into_iter().zip(states).collect::<Vec<_>>();
    // One token is O(F Dv) per sequence: only large batches are worth the threads.
    if n * kernel.feature_size(d) * dv >= crate::cpu::PAR_THRESHOLD {
        work.into_par_iter().enumerate().for_each(|(b, (y, st))| one(b, y, st));
    } else {
        work.into_iter().enumerate().for_each(|(b, (y, st))| one(b, y, st));
    }
    Ok(y)
}

/// Fused chunked ELA forward (see [`Backend::ela_forward`](crate::Backend::ela_forward)).
pub fn forward(
    q: &CpuStorage,
    k: &CpuStorage,
    v: &CpuStorage,
    dims: &ElaDims,
    p: &ElaParams,
    state: Option<&mut ElaStateBufs<CpuStorage>>,
) -> Result<CpuStorage> {
    const OP: &str = "ela_forward";
    debug_check_inputs(q, k, v, dims);
    debug_assert!(p.chunk >= 1 && (p.causal || state.is_none()), "{OP}: {p:?} (ElaParams::validate)");
    Ok(match inputs(OP, &[q, k, v])? {
        (_, Inputs::F64(x)) => CpuStorage::F64(forward_t(x[0], x[1], x[2], dims, p, state)?),
        (dtype, Inputs::F32(x)) => CpuStorage::store_f32(forward_t(&x[0], &x[1], &x[2], dims, p, state)?, dtype)?,
    })
}

/// Backward of [`forward`] (see [`Backend::ela_backward`](crate::Backend::ela_backward)).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    q: &CpuStorage,
    k: &CpuStorage,
    v: &CpuStorage,
    y: &CpuStorage,
    dy: &CpuStorage,
    dims: &ElaDims,
    p: &ElaParams,
) -> Result<(CpuStorage, CpuStorage, CpuStorage)> {
    const OP: &str = "ela_backward";
    debug_check_inputs(q, k, v, dims);
    debug_assert!(y.len() == v.len() && dy.len() == v.len(), "{OP}: y, dy for {dims:?}");
    debug_assert!(p.chunk >= 1, "{OP}: chunk 0");
    Ok(match inputs(OP, &[q, k, v, y, dy])? {
        (_, Inputs::F64(x)) => {
            let (a, b, c) = backward_t([x[0], x[1], x[2], x[3], x[4]], dims, p);
            (CpuStorage::F64(a), CpuStorage::F64(b), CpuStorage::F64(c))
        }
        (dtype, Inputs::F32(x)) => {
            let (a, b, c) = backward_t([&x[0], &x[1], &x[2], &x[3], &x[4]], dims, p);
            (output_f32(a, dtype)?, output_f32(b, dtype)?, output_f32(c, dtype)?)
        }
    })
}

/// One recurrent step (see [`Backend::ela_step`](crate::Backend::ela_step)).
pub fn step(
    q: &CpuStorage,
    k: &CpuStorage,
    v: &CpuStorage,
    dims: &ElaDims,
    kernel: ElaKernel,
    state: &mut ElaStateBufs<CpuStorage>,
) -> Result<CpuStorage> {
    const OP: &str = "ela_step";
    let one = ElaDims { t: 1, ..*dims };
    debug_check_inputs(q, k, v, &one);
    Ok(match inputs(OP, &[q, k, v])? {
        (_, Inputs::F64(x)) => CpuStorage::F64(step_t(x[0], x[1], x[2], &one, kernel, state)?),
        (dtype, Inputs::F32(x)) => CpuStorage::store_f32(step_t(&x[0], &x[1], &x[2], &one, kernel, state)?, dtype)?,
    })
}
