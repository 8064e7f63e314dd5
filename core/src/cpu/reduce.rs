//! Reductions along one axis and cumulative sums.
//!
//! Both work on the contiguous decomposition `[outer, len, inner]` of the input (a strided view
//! is gathered first): the reduced axis has `len` entries spaced `inner` apart, so reducing a
//! middle or leading axis streams whole rows instead of striding through memory.

use crate::cpu::alloc::filled;
use crate::cpu::storage::{CpuStorage, FloatCow, FloatVec};
use crate::cpu::strided::{build_chunked, PAR_CHUNK};
use crate::dtype::Float;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::op::ReduceOp;
use rayon::prelude::*;
use std::mem::MaybeUninit;

use super::PAR_THRESHOLD;

/// (outer, len, inner) of `axis` in a contiguous shape.
pub(crate) fn split_axis(dims: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = dims[..axis].iter().product();
    let inner = dims[axis + 1..].iter().product();
    (outer, dims[axis], inner)
}

fn reduce_float<T: Float>(op: ReduceOp, x: &[T], outer: usize, len: usize, inner: usize) -> Result<(Vec<T>, Vec<u32>)> {
    let is_arg = matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin);
    let mut vals = filled(if is_arg { 0 } else { outer * inner }, T::ZERO)?;
    let mut idxs = filled(if is_arg { outer * inner } else { 0 }, 0u32)?;
    // One output block (`inner` results) per outer index; blocks are independent.
    let block = |o: usize, vals: &mut [T], idxs: &mut [u32]| {
        let base = o * len * inner;
        for j in 0..inner {
            let at = |i: usize| x[base + i * inner + j];
            match op {
                ReduceOp::Sum => {
                    // f64 accumulation keeps f32 sums of long rows accurate.
                    let mut acc = 0f64;
                    for i in 0..len {
                        acc += at(i).as_f64();
                    }
                    vals[j] = T::from_f64(acc);
                }
                ReduceOp::Max | ReduceOp::Min => {
                    let mut m = at(0);
                    for i in 1..len {
                        let v = at(i);
                        let better = if op == ReduceOp::Max { v > m } else { v < m };
                        if v.is_nan() || (better && !m.is_nan()) {
                            m = v;
                        }
                    }
                    vals[j] = m;
                }
                ReduceOp::ArgMax | ReduceOp::ArgMin => {
                    let (mut m, mut mi) = (at(0), 0usize);
                    for i in 1..len {
                        let v = at(i);
                        let better = if op == ReduceOp::ArgMax { v > m } else { v < m };
                        if !m.is_nan() && (v.is_nan() || better) {
                            m = v;
                            mi = i;
                        }
                    }
                    idxs[j] = mi as u32;
                }
                ReduceOp::LogSumExp => {
                    let mut m = T::neg_infinity();
                    for i in 0..len {
                        m = m.max(at(i));
                    }
                    if m == T::neg_infinity() || !m.is_finite() {
                        vals[j] = if len == 0 { T::neg_infinity() } else { m };
                        continue;
                    }
                    let mut acc = 0f64;
                    for i in 0..len {
                        acc += (at(i) - m).exp().as_f64();
                    }
                    vals[j] = m + T::from_f64(acc.ln());
                }
            }
        }
    };
    let work = outer * len * inner;
    if is_arg {
        if work >= PAR_THRESHOLD && inner > 0 {
            idxs.par_chunks_mut(inner).enumerate().for_each(|(o, ix)| block(o, &mut [], ix));
        } else if inner > 0 {
            idxs.chunks_mut(inner).enumerate().for_each(|(o, ix)| block(o, &mut [], ix));
        }
    } else if work >= PAR_THRESHOLD && inner > 0 {
        vals.par_chunks_mut(inner).enumerate().for_each(|(o, v)| block(o, v, &mut []));
    } else if inner > 0 {
        vals.chunks_mut(inner).enumerate().for_each(|(o, v)| block(o, v, &mut []));
    }
    Ok((vals, idxs))
}

/// Columns per strip of the column reductions: the accumulators of one strip live on the stack.
const COLS: usize = 256;
/// Elements per block of a long row sum; the block partials are added in block order.
const BLOCK: usize = 1 << 15;

/// Sum of a contiguous run, accumulated in f64 by eight interleaved lanes (lane `k` takes the
/// elements `i = k mod 8`) combined pairwise at the end, then the tail: a fixed order, so the
/// result never depends on how the work was split between threads.
#[inline]
fn sum_run<T: Float>(x: &[T]) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] += c[k].as_f64();
        }
    }
    let mut t = 0f64;
    for v in tail {
        t += v.as_f64();
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + t
}

/// Sum of one contiguous row: [`sum_run`] over blocks of [`BLOCK`] elements, the block partials
/// added in order (in parallel over the blocks when `par`, with the same result).
fn sum_row<T: Float>(x: &[T], par: bool) -> f64 {
    if x.len() <= BLOCK {
        return sum_run(x);
    }
    if par {
        let parts: Vec<f64> = x.par_chunks(BLOCK).map(sum_run).collect();
        parts.into_iter().fold(0.0, |a, p| a + p)
    } else {
        x.chunks(BLOCK).map(sum_run).fold(0.0, |a, p| a + p)
    }
}

/// Max/min with the NaN rule of the generic kernel: NaN wins, else the first extremum.
#[inline(always)]
fn pick<T: Float>(max: bool, m: T, v: T) -> T {
    let better = if max { v > m } else { v < m };
    if v.is_nan() || (better && !m.is_nan()) {
        v
    } else {
        m
    }
}

/// Sum, max or min along the last axis of a contiguous `[outer, len]` buffer.
fn reduce_rows<T: Float>(op: ReduceOp, x: &[T], outer: usize, len: usize) -> Vec<T> {
    let par = outer * len >= PAR_THRESHOLD;
    let row = |o: usize, par_blocks: bool| -> T {
        let r = &x[o * len..(o + 1) * len];
        match op {
            ReduceOp::Sum => T::from_f64(sum_row(r, par_blocks)),
            _ => {
                let max = op == ReduceOp::Max;
                r[1..].iter().fold(r[0], |m, &v| pick(max, m, v))
            }
        }
    };
    if !par {
        return (0..outer).map(|o| row(o, false)).collect();
    }
    if outer < rayon::current_num_threads() * 4 && op == ReduceOp::Sum {
        // Few long rows: split each row into blocks instead.
        return (0..outer).map(|o| row(o, true)).collect();
    }
    let min_rows = PAR_CHUNK.div_ceil(len.max(1)).max(1);
    (0..outer).into_par_iter().with_min_len(min_rows).map(|o| row(o, false)).collect()
}

/// Sum, max or min along the middle axis of a contiguous `[outer, len, inner]` buffer (`inner >
/// 1`): each output column accumulates its `len` entries in order, strips of [`COLS`] adjacent
/// columns at a time so the loads are contiguous and vectorise.
fn reduce_cols<T: Float>(op: ReduceOp, x: &[T], outer: usize, len: usize, inner: usize) -> Result<Vec<T>> {
    let n = outer * inner;
    let fill = |start: usize, dst: &mut [MaybeUninit<T>]| {
        let mut i0 = start;
        let end = start + dst.len();
        while i0 < end {
            let (o, j0) = (i0 / inner, i0 % inner);
            let w = (inner - j0).min(end - i0).min(COLS);
            let base = o * len * inner + j0;
            let d = &mut dst[i0 - start..i0 - start + w];
            match op {
                ReduceOp::Sum => {
                    let mut acc = [0f64; COLS];
                    let acc = &mut acc[..w];
                    for i in 0..len {
                        let r = &x[base + i * inner..base + i * inner + w];
                        for (a, v) in acc.iter_mut().zip(r) {
                            *a += v.as_f64();
                        }
                    }
                    for (d, &a) in d.iter_mut().zip(acc.iter()) {
                        d.write(T::from_f64(a));
                    }
                }
                _ => {
                    let max = op == ReduceOp::Max;
                    let mut acc = [T::ZERO; COLS];
                    let acc = &mut acc[..w];
                    acc.copy_from_slice(&x[base..base + w]);
                    for i in 1..len {
                        let r = &x[base + i * inner..base + i * inner + w];
                        for (a, &v) in acc.iter_mut().zip(r) {
                            *a = pick(max, *a, v);
                        }
                    }
                    for (d, &a) in d.iter_mut().zip(acc.iter()) {
                        d.write(a);
                    }
                }
            }
            i0 += w;
        }
    };
    let par = n * len >= PAR_THRESHOLD;
    let chunk = PAR_CHUNK.div_ceil(len.max(1)).max(COLS);
    build_chunked(n, chunk, par, fill)
}

/// Reduce a view along `axis`.
pub fn reduce(op: ReduceOp, s: &CpuStorage, layout: &Layout, axis: usize) -> Result<CpuStorage> {
    let (outer, len, inner) = split_axis(layout.dims(), axis);
    if len == 0 && !matches!(op, ReduceOp::Sum | ReduceOp::LogSumExp) {
        return Err(Error::invalid(
            op.name(),
            format!("cannot reduce over axis {axis} of size 0 (shape {})", layout.shape()),
        ));
    }
    let dtype = s.dtype();
    let is_arg = matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin);
    // Sum / max / min of a non-empty axis take the streaming kernels; the rest the generic one.
    let fast = matches!(op, ReduceOp::Sum | ReduceOp::Max | ReduceOp::Min) && len > 0;
    fn go<T: Float>(
        op: ReduceOp,
        fast: bool,
        x: &[T],
        outer: usize,
        len: usize,
        inner: usize,
    ) -> Result<(Vec<T>, Vec<u32>)> {
        if fast && inner == 1 {
            Ok((reduce_rows(op, x, outer, len), vec![]))
        } else if fast {
            Ok((reduce_cols(op, x, outer, len, inner)?, vec![]))
        } else {
            reduce_float(op, x, outer, len, inner)
        }
    }
    Ok(match s.float_cow(layout, op.name())? {
        FloatCow::F64(x) => {
            let (v, i) = go(op, fast, &x, outer, len, inner)?;
            if is_arg {
                CpuStorage::U32(i)
            } else {
                CpuStorage::F64(v)
            }
        }
        FloatCow::F32(x) => {
            let (v, i) = go(op, fast, &x, outer, len, inner)?;
            if is_arg {
                CpuStorage::U32(i)
            } else {
                CpuStorage::store_f32(v, dtype)?
            }
        }
    })
}

fn cumsum_float<T: Float>(
    x: &[T],
    _outer: usize,
    len: usize,
    inner: usize,
    exclusive: bool,
    reverse: bool,
) -> Result<Vec<T>> {
    let mut out = filled(x.len(), T::ZERO)?;
    let block = |o: usize, dst: &mut [T]| {
        let base = o * len * inner;
        for j in 0..inner {
            let mut acc = T::ZERO;
            for step in 0..len {
                let i = if reverse { len - 1 - step } else { step };
                let v = x[base + i * inner + j];
                if exclusive {
                    dst[i * inner + j] = acc;
                    acc = acc + v;
                } else {
                    acc = acc + v;
                    dst[i * inner + j] = acc;
                }
            }
        }
    };
    let bl = len * inner;
    if bl == 0 {
        return Ok(out);
    }
    if x.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(bl).enumerate().for_each(|(o, d)| block(o, d));
    } else {
        out.chunks_mut(bl).enumerate().for_each(|(o, d)| block(o, d));
    }
    Ok(out)
}

/// Cumulative sum of a view along `axis`.
pub fn cumsum(s: &CpuStorage, layout: &Layout, axis: usize, exclusive: bool, reverse: bool) -> Result<CpuStorage> {
    let (outer, len, inner) = split_axis(layout.dims(), axis);
    let dtype = s.dtype();
    Ok(match s.float_vec(layout, "cumsum")? {
        FloatVec::F64(x) => CpuStorage::F64(cumsum_float(&x, outer, len, inner, exclusive, reverse)?),
        FloatVec::F32(x) => CpuStorage::store_f32(cumsum_float(&x, outer, len, inner, exclusive, reverse)?, dtype)?,
    })
}
