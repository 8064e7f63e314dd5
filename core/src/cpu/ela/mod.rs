//! Exact Linear Attention on the CPU: the fused chunked forward and backward and the recurrent
//! step (the math, and the equation each block implements, is in `docs/ela.md`).
//!
//! Sequences (one per batch entry and head) run in parallel with rayon. Inside one, the chunked
//! form spends its time in the GEMM (`C x C` intra-chunk blocks, `C x F x Dv` state products);
//! there is never a `T x T` buffer. f16/bf16 inputs are computed in f32; the state `(S, z)` is
//! f32 for f16/bf16/f32 inputs and f64 for f64 inputs.
//!
//! Files: `chunk.rs` (per-chunk preparation, state update), `forward.rs`, `backward.rs`,
//! `slow.rs` (exact rows after underflow), `step.rs` (recurrent), `features.rs` (signed
//! kernels' feature maps), `exp.rs` (vectorizable `exp`).

mod backward;
mod chunk;
mod exp;
mod features;
mod forward;
mod slow;
mod step;
#[cfg(test)]
mod tests;

use std::borrow::Cow;

use rayon::prelude::*;

use self::chunk::{Seq, State};
use self::exp::ElaFloat;
use crate::cpu::storage::{widen, CpuElement, CpuStorage};
use crate::dtype::DType;
use crate::ela::{ElaDims, ElaKernel, ElaParams, ElaStateBufs};
use crate::error::{Error, Result};
use crate::layout::Layout;

/// Float inputs as compute slices: borrowed for f32/f64, widened to f32 for f16/bf16.
enum Inputs<'a> {
    F32(Vec<Cow<'a, [f32]>>),
    F64(Vec<&'a [f64]>),
}

fn inputs<'a>(op: &'static str, xs: &[&'a CpuStorage]) -> Result<(DType, Inputs<'a>)> {
    let dtype = xs[0].dtype();
    if let Some(x) = xs.iter().find(|x| x.dtype() != dtype) {
        return Err(Error::DTypeMismatch { op, lhs: dtype, rhs: x.dtype() });
    }
    let f32s = |x: &'a CpuStorage| -> Cow<'a, [f32]> {
        let l = Layout::contiguous(x.len());
        match x {
            CpuStorage::F32(v) => Cow::Borrowed(v),
            CpuStorage::F16(v) => Cow::Owned(widen(v, &l)),
            CpuStorage::BF16(v) => Cow::Owned(widen(v, &l)),
            _ => unreachable!("dtype checked"),
        }
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
        DType::F32 | DType::F16 | DType::BF16 => (dtype, Inputs::F32(xs.iter().map(|x| f32s(x)).collect())),
        _ => return Err(Error::UnsupportedDType { op, dtype, expected: "a float dtype (f16, bf16, f32, f64)" }),
    })
}

/// Store a compute result in the input dtype.
fn output_f32(v: Vec<f32>, dtype: DType) -> CpuStorage {
    CpuStorage::store_f32(v, dtype)
}

fn check_len(op: &'static str, what: &str, got: usize, want: usize, dims: &ElaDims) -> Result<()> {
    if got != want {
        return Err(Error::invalid(op, format!("{what} has {got} elements, expected {want} for {dims:?}")));
    }
    Ok(())
}

fn check_inputs(op: &'static str, q: &CpuStorage, k: &CpuStorage, v: &CpuStorage, dims: &ElaDims) -> Result<()> {
    let rows = dims.sequences() * dims.t;
    check_len(op, "q", q.len(), rows * dims.d, dims)?;
    check_len(op, "k", k.len(), rows * dims.d, dims)?;
    check_len(op, "v", v.len(), rows * dims.dv, dims)
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
    let (n, f, dv) = (dims.sequences(), kernel.feature_size(dims.d), dims.dv);
    let bad = |what: &str| {
        Error::invalid(
            op,
            format!(
                "the recurrent state's {what} buffer does not match {dims:?} with kernel {kernel} \
                 (expected {:?} state of F = {f} features; create it with ElaState::new)",
                if T::DTYPE == DType::F64 { "an f64" } else { "an f32" }
            ),
        )
    };
    let s = T::buf(&mut bufs.s).filter(|s| s.len() == n * f * dv).ok_or_else(|| bad("S"))?;
    let z = T::buf(&mut bufs.z).filter(|z| z.len() == n * f).ok_or_else(|| bad("z"))?;
    let m: &mut [T] = match (&mut bufs.m, kernel.has_units()) {
        (Some(m), true) => T::buf(m).filter(|m| m.len() == n * f).ok_or_else(|| bad("m"))?,
        (None, false) => &mut [],
        _ => return Err(bad("m (log-scale)")),
    };
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
        forward::forward_seq(&seq, p.causal, p.chunk, &mut State { s, z, m }, y);
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
        backward::backward_seq(&seq, p.causal, p.chunk, &y[rv.clone()], &dy[rv], dq, dk, dvo);
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
    check_inputs(OP, q, k, v, dims)?;
    check_params(OP, p, state.is_some())?;
    Ok(match inputs(OP, &[q, k, v])? {
        (_, Inputs::F64(x)) => CpuStorage::F64(forward_t(x[0], x[1], x[2], dims, p, state)?),
        (dtype, Inputs::F32(x)) => CpuStorage::store_f32(forward_t(&x[0], &x[1], &x[2], dims, p, state)?, dtype),
    })
}

fn check_params(op: &'static str, p: &ElaParams, with_state: bool) -> Result<()> {
    if p.chunk == 0 {
        return Err(Error::invalid(op, "chunk length must be >= 1"));
    }
    if with_state && !p.causal {
        return Err(Error::invalid(op, "a recurrent state only exists for causal attention (set causal: true)"));
    }
    Ok(())
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
    check_inputs(OP, q, k, v, dims)?;
    check_len(OP, "y", y.len(), v.len(), dims)?;
    check_len(OP, "dy", dy.len(), v.len(), dims)?;
    check_params(OP, p, false)?;
    Ok(match inputs(OP, &[q, k, v, y, dy])? {
        (_, Inputs::F64(x)) => {
            let (a, b, c) = backward_t([x[0], x[1], x[2], x[3], x[4]], dims, p);
            (CpuStorage::F64(a), CpuStorage::F64(b), CpuStorage::F64(c))
        }
        (dtype, Inputs::F32(x)) => {
            let (a, b, c) = backward_t([&x[0], &x[1], &x[2], &x[3], &x[4]], dims, p);
            (output_f32(a, dtype), output_f32(b, dtype), output_f32(c, dtype))
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
    check_inputs(OP, q, k, v, &one)?;
    Ok(match inputs(OP, &[q, k, v])? {
        (_, Inputs::F64(x)) => CpuStorage::F64(step_t(x[0], x[1], x[2], &one, kernel, state)?),
        (dtype, Inputs::F32(x)) => CpuStorage::store_f32(step_t(&x[0], &x[1], &x[2], &one, kernel, state)?, dtype),
    })
}
