//! Fused optimizer updates on the CPU (`Backend::adamw_update`).

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
