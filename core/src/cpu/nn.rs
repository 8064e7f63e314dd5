//! Fused last-axis kernels: softmax, RMS/layer norm, cross-entropy, top-k.
//!
//! All take contiguous `[rows, n]` data (the tensor layer arranges that) and work row by row in
//! parallel. Per-row statistics (rstd, mean, logsumexp) are returned in the compute dtype (f64
//! for f64 inputs, f32 otherwise) because the backward pass needs them at full precision.

use crate::cpu::alloc::{collect, filled, reserve, written};
use crate::cpu::ela::ElaFloat;
use crate::cpu::storage::{CpuStorage, FloatCow};
use crate::cpu::strided::gather;
use crate::cpu::widest_isa::widest_isa;
use crate::dtype::{DType, Float};
use crate::error::{Error, Result};
use crate::layout::Layout;
use rayon::prelude::*;
use std::mem::MaybeUninit;

pub use super::rms_norm::{rms_norm, rms_norm_backward};

fn rows_mut<T: Send>(out: &mut [T], n: usize, f: impl Fn(usize, &mut [T]) + Send + Sync) {
    if n == 0 {
        return;
    }
    if out.len() >= super::PAR_THRESHOLD {
        out.par_chunks_mut(n).enumerate().for_each(|(r, d)| f(r, d));
    } else {
        out.chunks_mut(n).enumerate().for_each(|(r, d)| f(r, d));
    }
}

/// Store a compute vector in the input's dtype.
pub(super) fn store<T: Float>(v: Vec<T>, dtype: DType) -> Result<CpuStorage> {
    // T is f64 only when dtype is F64; otherwise it is f32 (then f16/bf16 round in store_f32).
    if dtype == DType::F64 {
        Ok(CpuStorage::F64(retype(v, |x| x.as_f64())?))
    } else {
        CpuStorage::store_f32(retype(v, |x| x.as_f64() as f32)?, dtype)
    }
}

/// Statistics stay in the compute dtype (f64 or f32).
pub(super) fn store_stat<T: Float>(v: Vec<T>, dtype: DType) -> Result<CpuStorage> {
    Ok(if dtype == DType::F64 {
        CpuStorage::F64(retype(v, |x| x.as_f64())?)
    } else {
        CpuStorage::F32(retype(v, |x| x.as_f64() as f32)?)
    })
}

/// `v` mapped elementwise into a `Vec<U>`. When `T` and `U` have one size (f32 -> f32, f64 ->
/// f64: every call above), the standard library's in-place collection reuses `v`'s buffer, so
/// the result costs one pass over warm memory instead of a fresh allocation (whose first touch
/// was 2.5 % of a CPU training step); otherwise a new buffer is allocated fallibly.
fn retype<T, U>(v: Vec<T>, f: impl Fn(T) -> U) -> Result<Vec<U>> {
    if std::mem::size_of::<T>() == std::mem::size_of::<U>() && std::mem::align_of::<T>() == std::mem::align_of::<U>() {
        Ok(v.into_iter().map(f).collect())
    } else {
        collect(v.len(), v.into_iter().map(f))
    }
}

/// `$body` with `$x` bound to the f32 or f64 slice of a [`FloatCow`].
macro_rules! with_float {
    ($fv:expr, |$x:ident| $body:expr) => {
        match $fv {
            FloatCow::F32($x) => $body,
            FloatCow::F64($x) => $body,
        }
    };
}
pub(super) use with_float;

/// The first `len` elements of `s` in the compute float: borrowed when `s` is f32/f64 already
/// (these kernels only read their inputs), widened copies of f16/bf16.
pub(super) fn contiguous_float<'a>(s: &'a CpuStorage, len: usize, op: &'static str) -> Result<FloatCow<'a>> {
    s.float_cow(&Layout::contiguous(len), op)
}

// ---------------------------------------------------------------- softmax

fn softmax_rows<T: Float>(x: &[T], n: usize, log: bool) -> Vec<T> {
    let mut out = x.to_vec();
    rows_mut(&mut out, n, |_, row| {
        let m = row.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
        // A row of all -inf (fully masked) gives NaN in softmax, as in PyTorch.
        let mut sum = T::ZERO;
        for v in row.iter_mut() {
            *v = *v - m;
            sum = sum + v.exp();
        }
        if log {
            let ls = sum.ln();
            row.iter_mut().for_each(|v| *v = *v - ls);
        } else {
            let inv = T::ONE / sum;
            row.iter_mut().for_each(|v| *v = v.exp() * inv);
        }
    });
    out
}

/// softmax / log_softmax along the last axis.
pub fn softmax_last(s: &CpuStorage, layout: &Layout, log: bool) -> Result<CpuStorage> {
    let n = layout.dims().last().copied().unwrap_or(1);
    let dtype = s.dtype();
    Ok(with_float!(s.float_cow(layout, "softmax")?, |x| store(softmax_rows(&x, n, log), dtype)?))
}

fn softmax_bwd_rows<T: Float>(y: &[T], dy: &[T], n: usize, log: bool) -> Result<Vec<T>> {
    // SAFETY: every element of every row is written.
    unsafe {
        written(y.len(), |out| {
            rows_mut(out, n, |r, dx| {
                let (yr, gr) = (&y[r * n..(r + 1) * n], &dy[r * n..(r + 1) * n]);
                if log {
                    let s: T = gr.iter().copied().sum();
                    for i in 0..n {
                        dx[i].write(gr[i] - yr[i].exp() * s);
                    }
                } else {
                    let s: T = yr.iter().zip(gr).map(|(&a, &b)| a * b).sum();
                    for i in 0..n {
                        dx[i].write(yr[i] * (gr[i] - s));
                    }
                }
            })
        })
    }
}

/// Backward of softmax / log_softmax.
/// Derivation: docs/autograd.md#fused-ops ("softmax", "log_softmax").
pub fn softmax_last_backward(y: &CpuStorage, dy: &CpuStorage, len: usize, n: usize, log: bool) -> Result<CpuStorage> {
    let dtype = y.dtype();
    let (y, dy) = (contiguous_float(y, len, "softmax_backward")?, contiguous_float(dy, len, "softmax_backward")?);
    Ok(match (y, dy) {
        (FloatCow::F32(y), FloatCow::F32(g)) => store(softmax_bwd_rows(&y, &g, n, log)?, dtype)?,
        (FloatCow::F64(y), FloatCow::F64(g)) => store(softmax_bwd_rows(&y, &g, n, log)?, dtype)?,
        _ => return Err(Error::invalid("softmax_backward", "output and gradient dtypes differ")),
    })
}

// ---------------------------------------------------------------- norms

/// A norm parameter in the compute type, rounded first to the input's dtype `like` when that is
/// half precision: the forward (`Tensor::rms_norm_fwd`, `layer_norm_fwd`) runs on the parameter
/// cast to the input's dtype, so the backward of a bf16 input with f32 master weights must use
/// the same rounded values (the CUDA backward casts them the same way).
pub(super) fn opt_weight<T: Float>(
    w: Option<&CpuStorage>,
    n: usize,
    like: DType,
    op: &'static str,
) -> Result<Option<Vec<T>>> {
    let all = Layout::contiguous(n);
    w.map(|w| {
        // The very cast the forward made (`Tensor::to_dtype`), so both see the same values.
        let rounded = (matches!(like, DType::F16 | DType::BF16) && w.dtype() != like)
            .then(|| crate::cpu::elementwise::cast(w, &all, like))
            .transpose()?;
        let v = rounded.as_ref().unwrap_or(w).to_f64_vec(&all)?;
        Ok(v.into_iter().map(T::from_f64).collect())
    })
    .transpose()
    .map_err(|e: Error| Error::invalid(op, e.to_string()))
}

fn ln_rows<T: Float>(
    x: &[T],
    w: Option<&[T]>,
    b: Option<&[T]>,
    rows: usize,
    n: usize,
    eps: T,
) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
    // (mean in f64, rstd)
    let stats: Vec<(f64, T)> = (0..rows)
        .into_par_iter()
        .map(|r| {
            let row = &x[r * n..(r + 1) * n];
            let nn = n.max(1) as f64;
            let mean = row.iter().map(|v| v.as_f64()).sum::<f64>() / nn;
            let var = row.iter().map(|v| (v.as_f64() - mean).powi(2)).sum::<f64>() / nn;
            (mean, T::ONE / (T::from_f64(var) + eps).sqrt())
        })
        .collect();
    let mut y = filled(x.len(), T::ZERO)?;
    rows_mut(&mut y, n, |i, yr| {
        let (m, r) = stats[i];
        for j in 0..n {
            // Centred against the f64 mean and rounded once: in f32, `x - mean` with the mean
            // rounded first loses the digits of nearly constant rows (the mean's rounding error
            // is then comparable to `x - mean` itself).
            let h = T::from_f64(x[i * n + j].as_f64() - m) * r;
            yr[j] = h * w.map_or(T::ONE, |w| w[j]) + b.map_or(T::ZERO, |b| b[j]);
        }
    });
    Ok((y, stats.iter().map(|s| T::from_f64(s.0)).collect(), stats.iter().map(|s| s.1).collect()))
}

/// Layer norm forward.
pub fn layer_norm(
    x: &CpuStorage,
    w: Option<&CpuStorage>,
    b: Option<&CpuStorage>,
    rows: usize,
    n: usize,
    eps: f64,
) -> Result<(CpuStorage, CpuStorage, CpuStorage)> {
    let dtype = x.dtype();
    Ok(with_float!(contiguous_float(x, rows * n, "layer_norm")?, |x| {
        let w = opt_weight(w, n, dtype, "layer_norm")?;
        let b = opt_weight(b, n, dtype, "layer_norm")?;
        let (y, m, r) = ln_rows(&x, w.as_deref(), b.as_deref(), rows, n, crate::dtype::WithDType::from_f64(eps))?;
        (store(y, dtype)?, store_stat(m, dtype)?, store_stat(r, dtype)?)
    }))
}

type LnGrads<T> = (Vec<T>, Option<Vec<T>>, Option<Vec<T>>);

fn ln_bwd_rows<T: Float>(
    x: &[T],
    w: Option<&[T]>,
    mean: &[T],
    rstd: &[T],
    dy: &[T],
    rows: usize,
    n: usize,
) -> Result<LnGrads<T>> {
    // h = (x - m) r; with g' = g w: dx = r (g' - mean(g') - h mean(g' h))
    let mut dx = filled(x.len(), T::ZERO)?;
    let nn = T::from_f64(n.max(1) as f64);
    rows_mut(&mut dx, n, |i, d| {
        let (m, r) = (mean[i], rstd[i]);
        let h = |j: usize| (x[i * n + j] - m) * r;
        let gw = |j: usize| dy[i * n + j] * w.map_or(T::ONE, |w| w[j]);
        let s1: T = (0..n).map(gw).sum::<T>() / nn;
        let s2: T = (0..n).map(|j| gw(j) * h(j)).sum::<T>() / nn;
        for (j, dj) in d.iter_mut().enumerate() {
            *dj = r * (gw(j) - s1 - h(j) * s2);
        }
    });
    let dw = w.map(|_| {
        (0..n)
            .into_par_iter()
            .map(|j| {
                T::from_f64((0..rows).map(|i| (dy[i * n + j] * (x[i * n + j] - mean[i]) * rstd[i]).as_f64()).sum())
            })
            .collect()
    });
    let db = w.map(|_| {
        (0..n).into_par_iter().map(|j| T::from_f64((0..rows).map(|i| dy[i * n + j].as_f64()).sum())).collect()
    });
    Ok((dx, dw, db))
}

/// Layer norm backward: `(dx, dweight, dbias)`; the affine grads exist when a weight was given.
/// Derivation: docs/autograd.md#fused-ops ("Layer norm").
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward(
    x: &CpuStorage,
    w: Option<&CpuStorage>,
    mean: &CpuStorage,
    rstd: &CpuStorage,
    dy: &CpuStorage,
    rows: usize,
    n: usize,
) -> Result<(CpuStorage, Option<CpuStorage>, Option<CpuStorage>)> {
    let dtype = x.dtype();
    let wd = w.map(|w| w.dtype()).unwrap_or(dtype);
    let op = "layer_norm_backward";
    let f = (
        contiguous_float(x, rows * n, op)?,
        contiguous_float(dy, rows * n, op)?,
        contiguous_float(mean, rows, op)?,
        contiguous_float(rstd, rows, op)?,
    );
    Ok(match f {
        (FloatCow::F64(x), FloatCow::F64(g), FloatCow::F64(m), FloatCow::F64(r)) => {
            let w = opt_weight::<f64>(w, n, dtype, op)?;
            let (dx, dw, db) = ln_bwd_rows(&x, w.as_deref(), &m, &r, &g, rows, n)?;
            (store(dx, dtype)?, dw.map(|d| store(d, wd)).transpose()?, db.map(|d| store(d, wd)).transpose()?)
        }
        (FloatCow::F32(x), FloatCow::F32(g), FloatCow::F32(m), FloatCow::F32(r)) => {
            let w = opt_weight::<f32>(w, n, dtype, op)?;
            let (dx, dw, db) = ln_bwd_rows(&x, w.as_deref(), &m, &r, &g, rows, n)?;
            (store(dx, dtype)?, dw.map(|d| store(d, wd)).transpose()?, db.map(|d| store(d, wd)).transpose()?)
        }
        _ => return Err(Error::invalid(op, "input, gradient and statistics dtypes differ")),
    })
}

// ---------------------------------------------------------------- cross-entropy

fn ce_rows<T: Float>(x: &[T], t: &[u32], classes: usize, ignore: Option<u32>) -> (Vec<T>, Vec<T>) {
    let res: Vec<(T, T)> = (0..t.len())
        .into_par_iter()
        .map(|r| {
            let row = &x[r * classes..(r + 1) * classes];
            let m = row.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
            let s: f64 = row.iter().map(|&v| (v - m).exp().as_f64()).sum();
            let lse = m + T::from_f64(s.ln());
            if Some(t[r]) == ignore {
                (T::ZERO, lse)
            } else {
                (lse - row[t[r] as usize], lse)
            }
        })
        .collect();
    (res.iter().map(|p| p.0).collect(), res.iter().map(|p| p.1).collect())
}

/// Every target is a class (or the ignored index): the kernels index rows by it.
fn check_targets(t: &[u32], classes: usize, ignore: Option<u32>, op: &'static str) -> Result<()> {
    match t.iter().find(|&&c| Some(c) != ignore && c as usize >= classes) {
        Some(&bad) => {
            let shape = vec![t.len(), classes].into();
            Err(Error::Index { op, index: bad as usize, size: classes, axis: 1, shape })
        }
        None => Ok(()),
    }
}

/// Fused log-softmax + NLL per row.
pub fn cross_entropy(
    logits: &CpuStorage,
    targets: &CpuStorage,
    rows: usize,
    classes: usize,
    ignore: Option<u32>,
) -> Result<(CpuStorage, CpuStorage)> {
    let dtype = logits.dtype();
    let t = targets.u32_view(&Layout::contiguous(rows), "cross_entropy")?;
    check_targets(&t, classes, ignore, "cross_entropy")?;
    Ok(with_float!(contiguous_float(logits, rows * classes, "cross_entropy")?, |x| {
        let (l, s) = ce_rows(&x, &t, classes, ignore);
        (store_stat(l, dtype)?, store_stat(s, dtype)?)
    }))
}

fn ce_bwd_rows<T: Float>(
    x: &[T],
    t: &[u32],
    lse: &[T],
    dl: &[T],
    classes: usize,
    ignore: Option<u32>,
) -> Result<Vec<T>> {
    // SAFETY: every element of every row is written: zeros for an ignored row, else the
    // softmax times the upstream gradient (the target's entry then adjusted in place).
    unsafe {
        written(x.len(), |out| {
            rows_mut(out, classes, |r, d| {
                if Some(t[r]) == ignore {
                    d.fill(MaybeUninit::new(T::ZERO));
                    return;
                }
                for c in 0..classes {
                    d[c].write((x[r * classes + c] - lse[r]).exp() * dl[r]);
                }
                let target = &mut d[t[r] as usize];
                target.write(target.assume_init_read() - dl[r]);
            })
        })
    }
}

/// Backward of the fused cross-entropy: `dx_r = dloss_r (softmax(x_r) - onehot(t_r))`, 0 for
/// ignored rows (`dloss` carries the mean's `1/N`).
/// Derivation: docs/autograd.md#fused-ops ("Cross-entropy").
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_backward(
    logits: &CpuStorage,
    targets: &CpuStorage,
    lse: &CpuStorage,
    dloss: &CpuStorage,
    rows: usize,
    classes: usize,
    ignore: Option<u32>,
) -> Result<CpuStorage> {
    let op = "cross_entropy_backward";
    let dtype = logits.dtype();
    let t = targets.u32_view(&Layout::contiguous(rows), op)?;
    check_targets(&t, classes, ignore, op)?;
    Ok(
        match (
            contiguous_float(logits, rows * classes, op)?,
            contiguous_float(lse, rows, op)?,
            contiguous_float(dloss, rows, op)?,
        ) {
            (FloatCow::F64(x), FloatCow::F64(s), FloatCow::F64(g)) => {
                store(ce_bwd_rows(&x, &t, &s, &g, classes, ignore)?, dtype)?
            }
            (FloatCow::F32(x), FloatCow::F32(s), FloatCow::F32(g)) => {
                store(ce_bwd_rows(&x, &t, &s, &g, classes, ignore)?, dtype)?
            }
            _ => return Err(Error::invalid(op, "logits, statistics and gradient dtypes differ")),
        },
    )
}

// ---------------------------------------------------------------- top-k

/// The k largest entries of each last-axis row, descending, ties broken by lower index.
pub fn topk_last(s: &CpuStorage, layout: &Layout, k: usize) -> Result<(CpuStorage, CpuStorage)> {
    let n = layout.dims().last().copied().unwrap_or(1);
    let rows = layout.elem_count().checked_div(n).unwrap_or(0);
    fn go<T: Copy + PartialOrd + Send + Sync + Default>(
        x: &[T],
        rows: usize,
        n: usize,
        k: usize,
    ) -> Result<(Vec<T>, Vec<u32>)> {
        let per: Vec<(Vec<T>, Vec<u32>)> = (0..rows)
            .into_par_iter()
            .map(|r| {
                let row = &x[r * n..(r + 1) * n];
                let mut idx: Vec<u32> = (0..n as u32).collect();
                // NaN sorts first (as the largest), keeping the order total.
                let key = |i: u32| row[i as usize];
                idx.sort_by(|&a, &b| {
                    let (va, vb) = (key(a), key(b));
                    let na = va.partial_cmp(&va).is_none();
                    let nb = vb.partial_cmp(&vb).is_none();
                    match (na, nb) {
                        (true, true) => a.cmp(&b),
                        (true, false) => std::cmp::Ordering::Less,
                        (false, true) => std::cmp::Ordering::Greater,
                        _ => vb.partial_cmp(&va).unwrap().then(a.cmp(&b)),
                    }
                });
                idx.truncate(k);
                (idx.iter().map(|&i| row[i as usize]).collect(), idx)
            })
            .collect();
        let mut v = reserve(rows * k)?;
        let mut i = reserve(rows * k)?;
        for (a, b) in per {
            v.extend(a);
            i.extend(b);
        }
        Ok((v, i))
    }
    Ok(match s {
        CpuStorage::F32(x) => {
            let (v, i) = go(&gather(x, layout)?, rows, n, k)?;
            (CpuStorage::F32(v), CpuStorage::U32(i))
        }
        CpuStorage::F64(x) => {
            let (v, i) = go(&gather(x, layout)?, rows, n, k)?;
            (CpuStorage::F64(v), CpuStorage::U32(i))
        }
        CpuStorage::F16(x) => {
            let (v, i) = go(&gather(x, layout)?, rows, n, k)?;
            (CpuStorage::F16(v), CpuStorage::U32(i))
        }
        CpuStorage::BF16(x) => {
            let (v, i) = go(&gather(x, layout)?, rows, n, k)?;
            (CpuStorage::BF16(v), CpuStorage::U32(i))
        }
        CpuStorage::U32(x) => {
            let (v, i) = go(&gather(x, layout)?, rows, n, k)?;
            (CpuStorage::U32(v), CpuStorage::U32(i))
        }
        CpuStorage::U8(x) => {
            let (v, i) = go(&gather(x, layout)?, rows, n, k)?;
            (CpuStorage::U8(v), CpuStorage::U32(i))
        }
    })
}

// ---------------------------------------------------------------- SwiGLU

/// Elements per parallel task of the SwiGLU kernels.
const SWIGLU_GRAIN: usize = 1 << 14;
/// Values per `exp_slice` call (a stack buffer).
const SWIGLU_BLOCK: usize = 256;

/// `silu(a) * b` and its backward, elementwise in the compute float (f32 for half types).
/// `sigmoid(x) = 1 / (1 + exp(-x))` takes its `exp` from the vectorized [`ElaFloat::exp_slice`]
/// (the ELA kernels' f32 `exp`, relative error ~1e-7; libm's for f64), a block of values at a
/// time: a scalar `expf` call per element was the larger part of this kernel's time. Each task's
/// arithmetic is compiled for the widest vector instructions the CPU has ([`swiglu_task`]).
fn swiglu_slices<T: ElaFloat>(a: &[T], b: &[T], g: Option<&[T]>) -> Result<(Vec<T>, Option<Vec<T>>)> {
    let n = a.len();
    match g {
        None => {
            // SAFETY: the chunks cover `out`, and every element of each is written.
            let out = unsafe {
                written(n, |out| {
                    out.par_chunks_mut(SWIGLU_GRAIN).enumerate().for_each(|(ci, o)| {
                        swiglu_task(a, b, None, ci * SWIGLU_GRAIN, o, None);
                    })
                })?
            };
            Ok((out, None))
        }
        Some(g) => {
            let mut db = reserve(n)?;
            // SAFETY: the chunks cover `da` and `db[..n]`, and every element of each is written.
            let da = unsafe {
                written(n, |da| {
                    let db = &mut db.spare_capacity_mut()[..n];
                    da.par_chunks_mut(SWIGLU_GRAIN)
                        .zip(db.par_chunks_mut(SWIGLU_GRAIN))
                        .enumerate()
                        .for_each(|(ci, (da, db))| swiglu_task(a, b, Some(g), ci * SWIGLU_GRAIN, da, Some(db)))
                })?
            };
            // SAFETY: `db` has capacity `n` and the loop above initialised all of it.
            unsafe { db.set_len(n) };
            Ok((da, Some(db)))
        }
    }
}

widest_isa! {
    /// One task of [`swiglu_slices`]: elements `k0..k0 + out.len()`, forward (`g` and `db`
    /// absent: `out = silu(a) * b`) or backward (`out = da`), compiled for AVX-512F or AVX2 when
    /// the CPU has them (`widest_isa.rs`): the loops vectorize 16 (or 8) f32 lanes wide instead of
    /// the baseline's 4, with the same bits.
    fn swiglu_task<T: ElaFloat>(
        a: &[T],
        b: &[T],
        g: Option<&[T]>,
        k0: usize,
        out: &mut [MaybeUninit<T>],
        db: Option<&mut [MaybeUninit<T>]>,
    ) as swiglu_task_body {
        let mut db = db;
        let mut e = [T::ZERO; SWIGLU_BLOCK];
        for (bi, o) in out.chunks_mut(SWIGLU_BLOCK).enumerate() {
            let k = k0 + bi * SWIGLU_BLOCK;
            let len = o.len();
            let (x, v) = (&a[k..k + len], &b[k..k + len]);
            // `exp(-x)` of the block into `e[..len]`.
            for (ei, &xi) in e[..len].iter_mut().zip(x) {
                *ei = -xi;
            }
            T::exp_slice(&mut e[..len]);
            match (g, db.as_deref_mut()) {
                (Some(g), Some(db)) => {
                    let (gs, dbs) = (&g[k..k + len], &mut db[bi * SWIGLU_BLOCK..bi * SWIGLU_BLOCK + len]);
                    for i in 0..len {
                        let (x, v, gk) = (x[i], v[i], gs[i]);
                        let s = T::ONE / (T::ONE + e[i]);
                        o[i].write(gk * v * (s * (T::ONE + x * (T::ONE - s))));
                        dbs[i].write(gk * (x * s));
                    }
                }
                _ => {
                    for i in 0..len {
                        o[i].write(x[i] / (T::ONE + e[i]) * v[i]);
                    }
                }
            }
        }
    }
}

/// `Backend::swiglu` on the CPU.
pub fn swiglu(a: &CpuStorage, b: &CpuStorage, n: usize) -> Result<CpuStorage> {
    const OP: &str = "swiglu";
    let dtype = a.dtype();
    Ok(match (contiguous_float(a, n, OP)?, contiguous_float(b, n, OP)?) {
        (FloatCow::F64(a), FloatCow::F64(b)) => store(swiglu_slices(&a, &b, None)?.0, dtype)?,
        (FloatCow::F32(a), FloatCow::F32(b)) => store(swiglu_slices(&a, &b, None)?.0, dtype)?,
        _ => return Err(Error::invalid(OP, "a and b must have one dtype")),
    })
}

/// `Backend::swiglu_backward` on the CPU. Derivation: docs/autograd.md#swiglu.
pub fn swiglu_backward(a: &CpuStorage, b: &CpuStorage, g: &CpuStorage, n: usize) -> Result<(CpuStorage, CpuStorage)> {
    const OP: &str = "swiglu_backward";
    let dtype = a.dtype();
    Ok(match (contiguous_float(a, n, OP)?, contiguous_float(b, n, OP)?, contiguous_float(g, n, OP)?) {
        (FloatCow::F64(a), FloatCow::F64(b), FloatCow::F64(g)) => {
            let (da, db) = swiglu_slices(&a, &b, Some(&g))?;
            let db = db.expect("the backward returns db");
            (store(da, dtype)?, store(db, dtype)?)
        }
        (FloatCow::F32(a), FloatCow::F32(b), FloatCow::F32(g)) => {
            let (da, db) = swiglu_slices(&a, &b, Some(&g))?;
            let db = db.expect("the backward returns db");
            (store(da, dtype)?, store(db, dtype)?)
        }
        _ => return Err(Error::invalid(OP, "a, b and the gradient must have one dtype")),
    })
}

/// The packed SwiGLU over rows `[gate | up]` of `x [rows, 2h]`: forward `y [rows, h]` (`g`
/// absent) or backward `dx [rows, 2h]` (`[d gate | d up]` a row, for `g [rows, h]`). Each row's
/// halves go through [`swiglu_task`], so the bits are those of [`swiglu_slices`] on the halves;
/// a parallel task takes whole rows, about [`SWIGLU_GRAIN`] outputs of `y` together.
fn swiglu_packed_rows<T: ElaFloat>(x: &[T], g: Option<&[T]>, h: usize) -> Result<Vec<T>> {
    let rows = if h == 0 { 0 } else { x.len() / (2 * h) };
    let per = (SWIGLU_GRAIN / h.max(1)).max(1);
    let row = |r: usize| (&x[2 * h * r..2 * h * r + h], &x[2 * h * r + h..2 * h * (r + 1)]);
    match g {
        // SAFETY (both arms): the tasks' chunks cover the output, and every row of each is written.
        _ if rows == 0 => Ok(Vec::new()),
        None => unsafe {
            written(rows * h, |y| {
                y.par_chunks_mut(per * h).enumerate().for_each(|(t, ys)| {
                    for (i, yr) in ys.chunks_mut(h).enumerate() {
                        let (a, b) = row(t * per + i);
                        swiglu_task(a, b, None, 0, yr, None);
                    }
                })
            })
        },
        Some(g) => unsafe {
            written(rows * 2 * h, |dx| {
                dx.par_chunks_mut(per * 2 * h).enumerate().for_each(|(t, ds)| {
                    for (i, dr) in ds.chunks_mut(2 * h).enumerate() {
                        let r = t * per + i;
                        let ((a, b), (da, db)) = (row(r), dr.split_at_mut(h));
                        swiglu_task(a, b, Some(&g[h * r..h * (r + 1)]), 0, da, Some(db));
                    }
                })
            })
        },
    }
}

/// `Backend::swiglu_packed` on the CPU.
pub fn swiglu_packed(x: &CpuStorage, rows: usize, h: usize) -> Result<CpuStorage> {
    let dtype = x.dtype();
    Ok(match contiguous_float(x, rows * 2 * h, "swiglu_packed")? {
        FloatCow::F64(x) => store(swiglu_packed_rows(&x, None, h)?, dtype)?,
        FloatCow::F32(x) => store(swiglu_packed_rows(&x, None, h)?, dtype)?,
    })
}

/// `Backend::swiglu_packed_backward` on the CPU. Derivation: docs/autograd.md#swiglu.
pub fn swiglu_packed_backward(x: &CpuStorage, g: &CpuStorage, rows: usize, h: usize) -> Result<CpuStorage> {
    const OP: &str = "swiglu_packed_backward";
    let dtype = x.dtype();
    Ok(match (contiguous_float(x, rows * 2 * h, OP)?, contiguous_float(g, rows * h, OP)?) {
        (FloatCow::F64(x), FloatCow::F64(g)) => store(swiglu_packed_rows(&x, Some(&g), h)?, dtype)?,
        (FloatCow::F32(x), FloatCow::F32(g)) => store(swiglu_packed_rows(&x, Some(&g), h)?, dtype)?,
        _ => return Err(Error::invalid(OP, "x and the gradient must have one dtype")),
    })
}

// ---------------------------------------------------------------- bias + SiLU

/// `silu(x + b[c])` over `[outer, chans, inner]` in the compute float. Tasks take whole planes
/// (`inner` values of one channel) of at least ~16k elements together, so small feature maps do
/// not cost a task each.
fn bias_silu_slices<T: Float>(x: &[T], b: &[T], chans: usize, inner: usize) -> Result<Vec<T>> {
    const GRAIN: usize = 1 << 14;
    let mut out = filled(x.len(), T::ZERO)?;
    if inner == 0 || chans == 0 {
        return Ok(out);
    }
    let planes = (GRAIN / inner).max(1);
    out.par_chunks_mut(planes * inner).zip(x.par_chunks(planes * inner)).enumerate().for_each(|(task, (o, xs))| {
        for (p, (o, xs)) in o.chunks_mut(inner).zip(xs.chunks(inner)).enumerate() {
            let bc = b[(task * planes + p) % chans];
            for (y, &v) in o.iter_mut().zip(xs) {
                let z = v + bc;
                *y = z / (T::ONE + (-z).exp());
            }
        }
    });
    Ok(out)
}

/// `Backend::bias_silu` on the CPU (f32 and f64 inputs are read in place).
pub fn bias_silu(x: &CpuStorage, b: &CpuStorage, outer: usize, chans: usize, inner: usize) -> Result<CpuStorage> {
    const OP: &str = "bias_silu";
    let dtype = x.dtype();
    let (lx, lb) = (Layout::contiguous(outer * chans * inner), Layout::contiguous(chans));
    Ok(match (x.float_cow(&lx, OP)?, b.float_cow(&lb, OP)?) {
        (FloatCow::F64(x), FloatCow::F64(b)) => CpuStorage::F64(bias_silu_slices(&x, &b, chans, inner)?),
        (FloatCow::F32(x), FloatCow::F32(b)) => CpuStorage::store_f32(bias_silu_slices(&x, &b, chans, inner)?, dtype)?,
        _ => return Err(Error::invalid(OP, "x and the bias must have one dtype")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The packed SwiGLU is the two-buffer one on each row's halves, bit for bit, forward and
    /// backward, in f32 and bf16 (rounded once from f32), for halves shorter and longer than a
    /// block of `exp_slice` and rows enough for several tasks.
    #[test]
    fn swiglu_packed_is_swiglu_on_the_halves() {
        let mut rng = Rng::new(12);
        for dtype in [DType::F32, DType::BF16] {
            for (rows, h) in [(1usize, 1usize), (3, 7), (40, 300), (9, 2048)] {
                let mut draw = |n: usize| {
                    let v: Vec<f32> = (0..n).map(|_| (4.0 * rng.normal()) as f32).collect();
                    CpuStorage::store_f32(v, dtype).unwrap()
                };
                let (x, g) = (draw(rows * 2 * h), draw(rows * h));
                let all = |s: &CpuStorage| s.to_f64_vec(&Layout::contiguous(s.len())).unwrap();
                let xs = all(&x);
                let half = |off: usize| {
                    let v: Vec<f32> = (0..rows)
                        .flat_map(|r| xs[2 * h * r + off..2 * h * r + off + h].to_vec())
                        .map(|v| v as f32)
                        .collect();
                    CpuStorage::store_f32(v, dtype).unwrap()
                };
                let (a, b) = (half(0), half(h));
                let y = all(&swiglu_packed(&x, rows, h).unwrap());
                assert_eq!(y, all(&swiglu(&a, &b, rows * h).unwrap()), "y {dtype:?} {rows}x{h}");
                let dx = all(&swiglu_packed_backward(&x, &g, rows, h).unwrap());
                let (da, db) = swiglu_backward(&a, &b, &g, rows * h).unwrap();
                let (da, db) = (all(&da), all(&db));
                for r in 0..rows {
                    assert_eq!(dx[2 * h * r..2 * h * r + h], da[h * r..h * (r + 1)], "d gate {dtype:?} row {r}");
                    assert_eq!(dx[2 * h * r + h..2 * h * (r + 1)], db[h * r..h * (r + 1)], "d up {dtype:?} row {r}");
                }
            }
        }
    }

    /// The SwiGLU tasks give the same bits whichever instruction set they were compiled for:
    /// the dispatched variant (AVX-512F or AVX2 where the CPU has them) against the baseline
    /// compilation of the same body, forward and backward, over lengths with every tail.
    #[test]
    fn swiglu_variants_agree_to_the_bit() {
        let mut rng = Rng::new(11);
        for len in [1usize, 15, 16, 17, 255, 256, 257, 1000] {
            let mut draw = || (0..len).map(|_| (4.0 * rng.normal()) as f32).collect::<Vec<f32>>();
            let (a, b, g) = (draw(), draw(), draw());
            let run = |dispatch: bool| {
                let (mut o, mut db) = (vec![MaybeUninit::uninit(); len], vec![MaybeUninit::uninit(); len]);
                let mut of = o.clone();
                if dispatch {
                    swiglu_task(&a, &b, None, 0, &mut of, None);
                    swiglu_task(&a, &b, Some(&g), 0, &mut o, Some(&mut db));
                } else {
                    swiglu_task_body(&a, &b, None, 0, &mut of, None);
                    swiglu_task_body(&a, &b, Some(&g), 0, &mut o, Some(&mut db));
                }
                // SAFETY: every element was written by the task.
                let bits =
                    |v: &[MaybeUninit<f32>]| v.iter().map(|x| unsafe { x.assume_init() }.to_bits()).collect::<Vec<_>>();
                (bits(&of), bits(&o), bits(&db))
            };
            assert_eq!(run(true), run(false), "length {len}");
        }
    }
}
