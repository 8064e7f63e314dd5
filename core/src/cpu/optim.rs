//! Fused optimizer updates on the CPU (`Backend::adamw_update`) and the multi-tensor sum of
//! squares of a global gradient norm (`Backend::sum_squares_many`).

use rayon::prelude::*;

use super::alloc::filled;
use super::storage::CpuStorage;
use crate::dtype::{Float, WithDType};
use crate::error::{Error, Result};
use crate::op::AdamWStep;

/// Elements per rayon task: large enough that the split costs nothing next to the work.
const GRAIN: usize = 1 << 14;

fn adamw_slices<T: Float>(p: &[T], g: &[T], m: &[T], v: &[T], s: &AdamWStep) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
    let c = |x: f64| <T as WithDType>::from_f64(x);
    let (b1, b2, one) = (c(s.beta1), c(s.beta2), T::ONE);
    let (decay, step, inv_sqrt_bc2, eps) = (c(s.decay), c(s.lr / s.bc1), c(1.0 / s.bc2.sqrt()), c(s.eps));
    let n = p.len();
    let (mut po, mut mo, mut vo) = (filled(n, T::ZERO)?, filled(n, T::ZERO)?, filled(n, T::ZERO)?);
    po.par_chunks_mut(GRAIN).zip(mo.par_chunks_mut(GRAIN)).zip(vo.par_chunks_mut(GRAIN)).enumerate().for_each(
        |(ci, ((po, mo), vo))| {
            let o = ci * GRAIN;
            for i in 0..po.len() {
                let gi = g[o + i];
                let mi = b1 * m[o + i] + (one - b1) * gi;
                let vi = b2 * v[o + i] + (one - b2) * (gi * gi);
                po[i] = p[o + i] * decay - step * (mi / (vi.sqrt() * inv_sqrt_bc2 + eps));
                mo[i] = mi;
                vo[i] = vi;
            }
        },
    );
    Ok((po, mo, vo))
}

/// `Backend::adamw_update` on contiguous f32 or f64 buffers of `n` elements.
pub fn adamw_update(
    p: &CpuStorage,
    g: &CpuStorage,
    m: &CpuStorage,
    v: &CpuStorage,
    n: usize,
    step: &AdamWStep,
) -> Result<(CpuStorage, CpuStorage, CpuStorage)> {
    const OP: &str = "adamw_update";
    for (what, s) in [("gradient", g), ("first moment", m), ("second moment", v), ("parameter", p)] {
        if s.len() < n {
            return Err(Error::invalid(OP, format!("the {what} buffer holds {} elements, need {n}", s.len())));
        }
    }
    match (p, g, m, v) {
        (CpuStorage::F32(p), CpuStorage::F32(g), CpuStorage::F32(m), CpuStorage::F32(v)) => {
            let (p, m, v) = adamw_slices(&p[..n], &g[..n], &m[..n], &v[..n], step)?;
            Ok((CpuStorage::F32(p), CpuStorage::F32(m), CpuStorage::F32(v)))
        }
        (CpuStorage::F64(p), CpuStorage::F64(g), CpuStorage::F64(m), CpuStorage::F64(v)) => {
            let (p, m, v) = adamw_slices(&p[..n], &g[..n], &m[..n], &v[..n], step)?;
            Ok((CpuStorage::F64(p), CpuStorage::F64(m), CpuStorage::F64(v)))
        }
        _ => Err(Error::UnsupportedDType {
            op: OP,
            dtype: p.dtype(),
            expected: "f32 or f64 for the parameter, gradient and both moments alike",
        }),
    }
}

/// The sum of `x^2` over a slice, squared and added in f64: rayon tasks of `GRAIN` elements,
/// their sums added in task order, so the result does not depend on the thread count.
fn sum_squares_slice<T: WithDType>(x: &[T]) -> f64 {
    let parts: Vec<f64> = x
        .par_chunks(GRAIN)
        .map(|c| {
            c.iter().fold(0.0f64, |s, &v| {
                let v = v.as_f64();
                s + v * v
            })
        })
        .collect();
    parts.iter().sum()
}

/// `Backend::sum_squares_many`: the per-buffer sums added in order, in f64.
pub fn sum_squares_many(xs: &[(&CpuStorage, usize)]) -> Result<CpuStorage> {
    const OP: &str = "sum_squares_many";
    let mut total = 0.0f64;
    for (i, &(x, n)) in xs.iter().enumerate() {
        if x.len() < n {
            return Err(Error::invalid(OP, format!("buffer {i} holds {} elements, need {n}", x.len())));
        }
        total += match x {
            CpuStorage::F16(x) => sum_squares_slice(&x[..n]),
            CpuStorage::BF16(x) => sum_squares_slice(&x[..n]),
            CpuStorage::F32(x) => sum_squares_slice(&x[..n]),
            CpuStorage::F64(x) => sum_squares_slice(&x[..n]),
            _ => {
                return Err(Error::UnsupportedDType {
                    op: OP,
                    dtype: x.dtype(),
                    expected: "a float dtype (the squares of integers are not a gradient norm)",
                })
            }
        };
    }
    Ok(CpuStorage::F64(vec![total]))
}
