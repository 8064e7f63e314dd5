//! Reductions along one axis and cumulative sums.
//!
//! Both work on the contiguous decomposition `[outer, len, inner]` of the input (a strided view
//! is gathered first): the reduced axis has `len` entries spaced `inner` apart, so reducing a
//! middle or leading axis streams whole rows instead of striding through memory.

use crate::cpu::storage::{CpuStorage, FloatVec};
use crate::dtype::Float;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::op::ReduceOp;
use rayon::prelude::*;

use super::PAR_THRESHOLD;

/// (outer, len, inner) of `axis` in a contiguous shape.
pub(crate) fn split_axis(dims: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = dims[..axis].iter().product();
    let inner = dims[axis + 1..].iter().product();
    (outer, dims[axis], inner)
}

fn reduce_float<T: Float>(op: ReduceOp, x: &[T], outer: usize, len: usize, inner: usize) -> (Vec<T>, Vec<u32>) {
    let is_arg = matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin);
    let mut vals = vec![T::ZERO; if is_arg { 0 } else { outer * inner }];
    let mut idxs = vec![0u32; if is_arg { outer * inner } else { 0 }];
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
    (vals, idxs)
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
    Ok(match s.float_vec(layout, op.name())? {
        FloatVec::F64(x) => {
            let (v, i) = reduce_float(op, &x, outer, len, inner);
            if is_arg {
                CpuStorage::U32(i)
            } else {
                CpuStorage::F64(v)
            }
        }
        FloatVec::F32(x) => {
            let (v, i) = reduce_float(op, &x, outer, len, inner);
            if is_arg {
                CpuStorage::U32(i)
            } else {
                CpuStorage::store_f32(v, dtype)
            }
        }
    })
}

fn cumsum_float<T: Float>(x: &[T], _outer: usize, len: usize, inner: usize, exclusive: bool, reverse: bool) -> Vec<T> {
    let mut out = vec![T::ZERO; x.len()];
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
        return out;
    }
    if x.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(bl).enumerate().for_each(|(o, d)| block(o, d));
    } else {
        out.chunks_mut(bl).enumerate().for_each(|(o, d)| block(o, d));
    }
    out
}

/// Cumulative sum of a view along `axis`.
pub fn cumsum(s: &CpuStorage, layout: &Layout, axis: usize, exclusive: bool, reverse: bool) -> Result<CpuStorage> {
    let (outer, len, inner) = split_axis(layout.dims(), axis);
    let dtype = s.dtype();
    Ok(match s.float_vec(layout, "cumsum")? {
        FloatVec::F64(x) => CpuStorage::F64(cumsum_float(&x, outer, len, inner, exclusive, reverse)),
        FloatVec::F32(x) => CpuStorage::store_f32(cumsum_float(&x, outer, len, inner, exclusive, reverse), dtype),
    })
}
