//! RMS norm on the CPU, forward and backward (re-exported by [`super::nn`]).
//!
//! For a row `x` of `n` values with gain `w` (ones without one):
//!
//! ```text
//! r   = (mean_j x_j^2 + eps)^(-1/2)            (kept for the backward: `rstd`)
//! y_j = x_j r w_j
//! dx_j = r w_j g_j - x_j r^3 / n * sum_k w_k g_k x_k
//! dw_j = sum over rows of g_j x_j r
//! ```
//!
//! (docs/autograd.md, "Fused ops", has the derivation.) Each row's sums run in f64 over
//! [`LANES`] interleaved partial sums, added in one fixed order at the end: a single running sum
//! is a chain of dependent additions, one every few cycles, which was most of these kernels'
//! time at the LM's 128-wide rows, while independent partial sums fill the vector lanes. The
//! order is fixed in the source, and Rust never fuses a multiply and an add on its own, so the
//! bits do not depend on the vector width the compiler picks. The weight gradient sums over
//! rows: blocks of [`BLOCK_ROWS`] rows each sum theirs (vectorized along the row), then the
//! blocks' sums are added in block order, so its bits do not depend on the thread count either.

use rayon::prelude::*;
use std::mem::MaybeUninit;

use super::alloc::{reserve, written};
use super::nn::{opt_weight, store, store_stat, with_float};
use super::storage::{CpuStorage, FloatCow};
use super::widest_isa::widest_isa;
use crate::dtype::{Float, WithDType};
use crate::error::{Error, Result};

/// Partial sums per row sum: an AVX-512 register of f64, and enough independent additions in
/// flight to hide their latency.
const LANES: usize = 8;
/// Rows per parallel task and per partial sum of the weight gradient: about 8k elements at the
/// LM's widths, so scheduling is noise and the partial sums few. A constant, not a function of the
/// thread count, so that results are the same with any number of threads.
const BLOCK_ROWS: usize = 64;

/// `sum_j a_j b_j` (or `sum_j a_j b_j c_j` with `c`) in f64, in [`LANES`] interleaved partial sums
/// added pairwise in a fixed order, then the tail.
#[inline(always)]
fn dot_f64<T: Float>(a: &[T], b: &[T], c: Option<&[T]>) -> f64 {
    let mut acc = [0f64; LANES];
    let whole = a.len() / LANES * LANES;
    let term = |j: usize| a[j].as_f64() * b[j].as_f64() * c.map_or(1.0, |c| c[j].as_f64());
    for j0 in (0..whole).step_by(LANES) {
        for (l, s) in acc.iter_mut().enumerate() {
            *s += term(j0 + l);
        }
    }
    let tail: f64 = (whole..a.len()).map(term).sum();
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail
}

/// The forward over rows of `n`: `(y, rstd)`.
fn rms_rows<T: Float>(x: &[T], w: Option<&[T]>, rows: usize, n: usize, eps: T) -> Result<(Vec<T>, Vec<T>)> {
    if n == 0 {
        // Empty rows: the mean of no squares is taken as 0.
        return Ok((Vec::new(), vec![T::ONE / eps.sqrt(); rows]));
    }
    let mut rstd = reserve(rows)?;
    let rstd_out = &mut rstd.spare_capacity_mut()[..rows];
    // SAFETY: the blocks cover `y` and `rstd_out`, and `fwd_block` writes every element of each.
    let y = unsafe {
        written(x.len(), |y| {
            let blocks = y.chunks_mut(BLOCK_ROWS * n).zip(rstd_out.chunks_mut(BLOCK_ROWS)).collect();
            map_row_blocks(blocks, x.len(), |r0, (yb, rb)| fwd_block(x, w, n, eps, r0, yb, rb));
        })?
    };
    // SAFETY: `rstd` has capacity `rows`, all written above.
    unsafe { rstd.set_len(rows) };
    Ok((y, rstd))
}

widest_isa! {
    /// Rows `r0..` of the forward, as many as `rb` holds: `y` into `yb`, `rstd` into `rb`
    /// (compiled for the widest vector instructions the CPU has: `widest_isa.rs`).
    fn fwd_block<T: Float>(
        x: &[T],
        w: Option<&[T]>,
        n: usize,
        eps: T,
        r0: usize,
        yb: &mut [MaybeUninit<T>],
        rb: &mut [MaybeUninit<T>],
    ) as fwd_block_body {
        for (i, (yr, rs)) in yb.chunks_mut(n).zip(rb.iter_mut()).enumerate() {
            let xr = &x[(r0 + i) * n..(r0 + i + 1) * n];
            let ms = dot_f64(xr, xr, None) / n as f64;
            let r = T::ONE / (T::from_f64(ms) + eps).sqrt();
            rs.write(r);
            match w {
                Some(w) => yr.iter_mut().zip(xr).zip(w).for_each(|((y, &x), &w)| {
                    y.write(x * r * w);
                }),
                None => yr.iter_mut().zip(xr).for_each(|(y, &x)| {
                    y.write(x * r);
                }),
            }
        }
    }
}

/// `f(first_row, block)` for each block of [`BLOCK_ROWS`] rows (`blocks`, in row order, `elems`
/// elements in all), in parallel when there is enough work; the results in block order.
fn map_row_blocks<I: Send, R: Send>(blocks: Vec<I>, elems: usize, f: impl Fn(usize, I) -> R + Send + Sync) -> Vec<R> {
    let first_row = |(b, block)| f(b * BLOCK_ROWS, block);
    if elems >= super::PAR_THRESHOLD {
        blocks.into_par_iter().enumerate().map(first_row).collect()
    } else {
        blocks.into_iter().enumerate().map(first_row).collect()
    }
}

/// RMS norm forward: `(y, rstd)` for `rows` rows of `n`.
pub fn rms_norm(
    x: &CpuStorage,
    w: Option<&CpuStorage>,
    rows: usize,
    n: usize,
    eps: f64,
) -> Result<(CpuStorage, CpuStorage)> {
    let dtype = x.dtype();
    Ok(with_float!(super::nn::contiguous_float(x, rows * n, "rms_norm")?, |x| {
        let w = opt_weight(w, n, dtype, "rms_norm")?;
        let (y, r) = rms_rows(&x, w.as_deref(), rows, n, WithDType::from_f64(eps))?;
        (store(y, dtype)?, store_stat(r, dtype)?)
    }))
}

/// The backward over rows of `n`: `dx`, and `dw` when there is a gain.
fn rms_bwd_rows<T: Float>(
    x: &[T],
    w: Option<&[T]>,
    rstd: &[T],
    dy: &[T],
    n: usize,
) -> Result<(Vec<T>, Option<Vec<T>>)> {
    // One block of rows: its `dx` rows, and (with a gain) its partial `dw` sums.
    let block = |r0: usize, dxb: &mut [MaybeUninit<T>]| -> Option<Vec<f64>> {
        let mut dw_part = w.map(|_| vec![0f64; n]);
        bwd_block(x, w, rstd, dy, n, r0, dxb, dw_part.as_deref_mut());
        dw_part
    };
    let mut parts: Vec<Option<Vec<f64>>> = Vec::new();
    // SAFETY: the blocks cover `dx`, and `block` writes every element of its rows.
    let dx = unsafe {
        written(x.len(), |dx| {
            if n == 0 {
                return;
            }
            parts = map_row_blocks(dx.chunks_mut(BLOCK_ROWS * n).collect(), x.len(), block);
        })?
    };
    let dw = w.map(|_| {
        let mut sum = vec![0f64; n];
        for p in parts.iter().flatten() {
            sum.iter_mut().zip(p).for_each(|(s, &v)| *s += v);
        }
        sum.into_iter().map(T::from_f64).collect()
    });
    Ok((dx, dw))
}

widest_isa! {
    /// Rows `r0..` of the backward, as many as `dxb` holds: `dx` into `dxb`, and their terms of
    /// `dw` added to `dw_part` (compiled for the widest vector instructions: `widest_isa.rs`).
    #[allow(clippy::too_many_arguments)]
    fn bwd_block<T: Float>(
        x: &[T],
        w: Option<&[T]>,
        rstd: &[T],
        dy: &[T],
        n: usize,
        r0: usize,
        dxb: &mut [MaybeUninit<T>],
        dw_part: Option<&mut [f64]>,
    ) as bwd_block_body {
        let mut dw_part = dw_part;
        let scale = 1.0 / n as f64;
        for (i, d) in dxb.chunks_mut(n).enumerate() {
            let row = r0 + i;
            let (xr, gr, r) = (&x[row * n..(row + 1) * n], &dy[row * n..(row + 1) * n], rstd[row]);
            let rf = r.as_f64();
            let dot = dot_f64(gr, xr, w);
            let c = T::from_f64(rf * rf * rf * dot * scale);
            match w {
                Some(w) => d.iter_mut().zip(gr.iter().zip(w)).zip(xr).for_each(|((d, (&g, &w)), &x)| {
                    d.write(r * (w * g) - x * c);
                }),
                None => d.iter_mut().zip(gr).zip(xr).for_each(|((d, &g), &x)| {
                    d.write(r * g - x * c);
                }),
            }
            if let Some(p) = dw_part.as_deref_mut() {
                p.iter_mut().zip(gr.iter().zip(xr)).for_each(|(s, (&g, &x))| *s += g.as_f64() * x.as_f64() * rf);
            }
        }
    }
}

/// RMS norm backward: `(dx, dw)` (`dw` in the gain's dtype, absent without a gain). With `plus`
/// (`[rows, n]` in `x`'s dtype: another gradient of `x`, e.g. a residual branch's), `dx` is
/// returned with it added, in the compute type before the one rounding to `x`'s dtype.
/// Derivation: docs/autograd.md#fused-ops ("RMS norm").
pub fn rms_norm_backward(
    x: &CpuStorage,
    w: Option<&CpuStorage>,
    rstd: &CpuStorage,
    dy: &CpuStorage,
    plus: Option<&CpuStorage>,
    rows: usize,
    n: usize,
) -> Result<(CpuStorage, Option<CpuStorage>)> {
    let dtype = x.dtype();
    let wdtype = w.map(|w| w.dtype());
    let op = "rms_norm_backward";
    let cf = super::nn::contiguous_float;
    if let Some(p) = plus {
        if p.dtype() != dtype {
            return Err(Error::invalid(op, format!("plus is {:?}, x is {dtype:?}: pass plus in x's dtype", p.dtype())));
        }
    }
    let plus = plus.map(|p| cf(p, rows * n, op)).transpose()?;
    Ok(match (cf(x, rows * n, op)?, cf(dy, rows * n, op)?, cf(rstd, rows, op)?) {
        (FloatCow::F64(x), FloatCow::F64(g), FloatCow::F64(r)) => {
            let w = opt_weight::<f64>(w, n, dtype, op)?;
            let (mut dx, dw) = rms_bwd_rows(&x, w.as_deref(), &r, &g, n)?;
            if let Some(FloatCow::F64(p)) = &plus {
                dx.par_iter_mut().zip(p.par_iter()).for_each(|(d, &p)| *d += p);
            }
            (store(dx, dtype)?, dw.map(|d| store(d, wdtype.unwrap())).transpose()?)
        }
        (FloatCow::F32(x), FloatCow::F32(g), FloatCow::F32(r)) => {
            let w = opt_weight::<f32>(w, n, dtype, op)?;
            let (mut dx, dw) = rms_bwd_rows(&x, w.as_deref(), &r, &g, n)?;
            if let Some(FloatCow::F32(p)) = &plus {
                dx.par_iter_mut().zip(p.par_iter()).for_each(|(d, &p)| *d += p);
            }
            (store(dx, dtype)?, dw.map(|d| store(d, wdtype.unwrap())).transpose()?)
        }
        _ => return Err(Error::invalid(op, "input, gradient and statistics dtypes differ")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The formulas of the module docs, element by element in f64 with one running sum; and the
    /// largest term of `dx`'s difference, the scale its rounding errors are relative to (the
    /// two terms cancel when a row has one dominant element).
    fn reference(x: &[f64], w: Option<&[f64]>, g: &[f64], n: usize, eps: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>, f64) {
        let rows = x.len().checked_div(n).unwrap_or(0);
        let (mut y, mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; x.len()], vec![0.0; n]);
        let mut dx_scale = 0f64;
        let wj = |j: usize| w.map_or(1.0, |w| w[j]);
        for i in 0..rows {
            let (xr, gr) = (&x[i * n..(i + 1) * n], &g[i * n..(i + 1) * n]);
            let r = 1.0 / (xr.iter().map(|v| v * v).sum::<f64>() / n as f64 + eps).sqrt();
            let dot: f64 = (0..n).map(|j| wj(j) * gr[j] * xr[j]).sum();
            for j in 0..n {
                y[i * n + j] = xr[j] * r * wj(j);
                let (a, b) = (r * wj(j) * gr[j], xr[j] * r * r * r / n as f64 * dot);
                dx[i * n + j] = a - b;
                dx_scale = dx_scale.max(a.abs()).max(b.abs());
                dw[j] += gr[j] * xr[j] * r;
            }
        }
        (y, dx, dw, dx_scale)
    }

    /// `got` within `tol` of `want`, relative to `scale` or else to the largest `|want|`.
    fn close(got: &[f64], want: &[f64], tol: f64, scale: Option<f64>, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        let scale = scale.unwrap_or_else(|| want.iter().fold(0f64, |m, v| m.max(v.abs()))).max(1e-30);
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!((a - b).abs() <= tol * scale, "{what}[{i}]: {a} vs {b}");
        }
    }

    /// Shapes around the lane count (tails of 1..7), one and several row blocks, and sizes on
    /// both sides of the parallel threshold, with and without a gain, in f64 and f32, against
    /// the one-running-sum formulas; and the same bits with one thread as with the default pool.
    #[test]
    fn rows_match_the_formulas_at_every_shape_and_any_thread_count() {
        let mut rng = Rng::new(3);
        for (rows, n) in [(1, 1), (3, 7), (5, 8), (2, 19), (130, 33), (700, 64), (300, 129), (4, 0), (0, 5)] {
            let draw = |rng: &mut Rng, len: usize| (0..len).map(|_| rng.normal()).collect::<Vec<f64>>();
            let (x, g, w) = (draw(&mut rng, rows * n), draw(&mut rng, rows * n), draw(&mut rng, n));
            for gain in [true, false] {
                let wv = gain.then_some(w.as_slice());
                let (y_ref, dx_ref, dw_ref, dxs) = reference(&x, wv, &g, n, 1e-5);
                let what = format!("{rows}x{n} gain {gain}");
                // f64 in, f64 out: agreement to f64 rounding.
                let (y, r) = rms_rows(&x, wv, rows, n, 1e-5).unwrap();
                let (dx, dw) = rms_bwd_rows(&x, wv, &r, &g, n).unwrap();
                close(&y, &y_ref, 1e-13, None, &format!("y f64 {what}"));
                close(&dx, &dx_ref, 1e-12, Some(dxs), &format!("dx f64 {what}"));
                if gain {
                    close(&dw.clone().unwrap(), &dw_ref, 1e-12, None, &format!("dw f64 {what}"));
                }
                // f32: to f32 rounding.
                let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
                let (xf, gf, wf) = (f(&x), f(&g), f(&w));
                let wfv = gain.then_some(wf.as_slice());
                let (yf, rf) = rms_rows(&xf, wfv, rows, n, 1e-5).unwrap();
                let (dxf, dwf) = rms_bwd_rows(&xf, wfv, &rf, &gf, n).unwrap();
                let up = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
                close(&up(&yf), &y_ref, 1e-5, None, &format!("y f32 {what}"));
                close(&up(&dxf), &dx_ref, 1e-5, Some(dxs), &format!("dx f32 {what}"));
                if gain {
                    close(&up(&dwf.clone().unwrap()), &dw_ref, 1e-5, None, &format!("dw f32 {what}"));
                }
                // One thread: the same bits.
                let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
                let (y1, r1) = pool.install(|| rms_rows(&xf, wfv, rows, n, 1e-5)).unwrap();
                let (dx1, dw1) = pool.install(|| rms_bwd_rows(&xf, wfv, &r1, &gf, n)).unwrap();
                let bits = |v: &[f32]| v.iter().map(|a| a.to_bits()).collect::<Vec<u32>>();
                assert_eq!((bits(&y1), bits(&r1)), (bits(&yf), bits(&rf)), "forward bits, one thread, {what}");
                assert_eq!(bits(&dx1), bits(&dxf), "dx bits, one thread, {what}");
                assert_eq!(dw1.map(|d| bits(&d)), dwf.map(|d| bits(&d)), "dw bits, one thread, {what}");
                // The baseline compilation of the row bodies (the calls above take the widest
                // instruction set the CPU has): the same bits.
                if n > 0 {
                    let mut yb = vec![MaybeUninit::uninit(); rows * n];
                    let (mut rb, mut dxb) = (vec![MaybeUninit::uninit(); rows], vec![MaybeUninit::uninit(); rows * n]);
                    fwd_block_body(&xf, wfv, n, 1e-5, 0, &mut yb, &mut rb);
                    bwd_block_body(&xf, wfv, &rf, &gf, n, 0, &mut dxb, None);
                    // SAFETY: the bodies wrote every element.
                    let done = |v: Vec<MaybeUninit<f32>>| {
                        v.into_iter().map(|x| unsafe { x.assume_init() }).collect::<Vec<_>>()
                    };
                    let (yb, rb, dxb) = (done(yb), done(rb), done(dxb));
                    assert_eq!(
                        (bits(&yb), bits(&rb), bits(&dxb)),
                        (bits(&yf), bits(&rf), bits(&dxf)),
                        "baseline, {what}"
                    );
                }
            }
        }
    }

    #[test]
    fn plus_is_added_to_dx_before_its_rounding() {
        use crate::DType;
        let mut rng = Rng::new(5);
        let (rows, n) = (37, 24);
        let draw = |rng: &mut Rng, len: usize| (0..len).map(|_| rng.normal()).collect::<Vec<f64>>();
        let (x, g, w, p) =
            (draw(&mut rng, rows * n), draw(&mut rng, rows * n), draw(&mut rng, n), draw(&mut rng, rows * n));
        let st = |v: &[f64], dtype: DType| CpuStorage::store_f32(v.iter().map(|&a| a as f32).collect(), dtype).unwrap();
        // f64: dx + plus exactly as a separate addition would give.
        let (xs, gs, ws, ps) = (
            CpuStorage::F64(x.clone()),
            CpuStorage::F64(g.clone()),
            CpuStorage::F64(w.clone()),
            CpuStorage::F64(p.clone()),
        );
        let (_, r) = rms_norm(&xs, Some(&ws), rows, n, 1e-5).unwrap();
        let (alone, _) = rms_norm_backward(&xs, Some(&ws), &r, &gs, None, rows, n).unwrap();
        let (with, dw) = rms_norm_backward(&xs, Some(&ws), &r, &gs, Some(&ps), rows, n).unwrap();
        let (CpuStorage::F64(a), CpuStorage::F64(b)) = (&alone, &with) else { panic!("f64 results") };
        let sum: Vec<f64> = a.iter().zip(&p).map(|(a, p)| a + p).collect();
        assert_eq!(b, &sum);
        assert!(dw.is_some());
        // bf16: one rounding of the f32 sum, so within half a bf16 ulp of the f32 sum.
        let (xb, gb, wb, pb) = (st(&x, DType::BF16), st(&g, DType::BF16), st(&w, DType::BF16), st(&p, DType::BF16));
        let (_, rb) = rms_norm(&xb, Some(&wb), rows, n, 1e-5).unwrap();
        let (with_b, _) = rms_norm_backward(&xb, Some(&wb), &rb, &gb, Some(&pb), rows, n).unwrap();
        let (alone_b, _) = rms_norm_backward(&xb, Some(&wb), &rb, &gb, None, rows, n).unwrap();
        fn f(s: &CpuStorage, len: usize) -> FloatCow<'_> {
            s.float_cow(&crate::Layout::contiguous(len), "test").unwrap()
        }
        let (FloatCow::F32(wb32), FloatCow::F32(ab32), FloatCow::F32(pb32)) =
            (f(&with_b, rows * n), f(&alone_b, rows * n), f(&pb, rows * n))
        else {
            panic!("bf16 widens to f32")
        };
        for i in 0..rows * n {
            let want = ab32[i] + pb32[i];
            let tol = (want.abs() + ab32[i].abs() + pb32[i].abs()) * 2f32.powi(-8);
            assert!((wb32[i] - want).abs() <= tol, "{i}: {} vs {want}", wb32[i]);
        }
        // A plus of another dtype is refused, naming it.
        let e = rms_norm_backward(&xs, Some(&ws), &r, &CpuStorage::F64(vec![0.0; rows * n]), Some(&pb), rows, n)
            .unwrap_err();
        assert!(e.to_string().contains("plus"), "{e}");
    }
}
