//! Batched matrix products on the CPU: a loop over batch entries around the GEMM in `gemm/`.
//!
//! Operand views are passed to the GEMM with their own row and column strides, so transposed
//! operands (column stride != 1) are read in place; the GEMM's packing step absorbs the stride.

use std::mem::MaybeUninit;

use crate::cpu::alloc::{filled, reserve};
use crate::cpu::gemm::{gemm_f32, gemm_f64, gemm_into};
use crate::cpu::storage::{widen, CpuStorage};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::shape::Shape;
use rayon::prelude::*;

/// Offsets of each batch entry's matrix in a `[batch.., r, c]` view.
fn batch_offsets(l: &Layout) -> Vec<usize> {
    let rank = l.dims().len();
    let bdims = &l.dims()[..rank - 2];
    let nb: usize = bdims.iter().product();
    let bl = Layout::from_parts(Shape::from(bdims.to_vec()), l.strides()[..rank - 2].to_vec(), l.offset());
    (0..nb).map(|b| bl.offset_of_linear(b)).collect()
}

macro_rules! batched {
    ($t:ty, $a:expr, $la:expr, $b:expr, $lb:expr) => {{
        let (a, la, b, lb): (&[$t], &Layout, &[$t], &Layout) = ($a, $la, $b, $lb);
        let r = la.dims().len();
        let (m, k, n) = (la.dims()[r - 2], la.dims()[r - 1], lb.dims()[r - 1]);
        let (rsa, csa) = (la.strides()[r - 2], la.strides()[r - 1]);
        let (rsb, csb) = (lb.strides()[r - 2], lb.strides()[r - 1]);
        let (oa, ob) = (batch_offsets(la), batch_offsets(lb));
        let len = oa.len() * m * n;
        if m * n > 0 && k > 0 {
            // The GEMM writes every element of each product (beta = 0 never reads C), so the
            // output is not zero-filled first: that pass cost ~5% of a CPU training step.
            let mut out = reserve::<$t>(len)?;
            let c = &mut out.spare_capacity_mut()[..len];
            let one = |bi: usize, c: &mut [MaybeUninit<$t>]| {
                gemm_into(m, n, k, &a[oa[bi]..], rsa, csa, &b[ob[bi]..], rsb, csb, c, n, 1);
            };
            // Many small products: one per thread. Few large ones: the GEMM parallelises inside.
            if oa.len() > 1 && m * n * k < (1 << 18) {
                c.par_chunks_mut(m * n).enumerate().for_each(|(bi, c)| one(bi, c));
            } else {
                c.chunks_mut(m * n).enumerate().for_each(|(bi, c)| one(bi, c));
            }
            // SAFETY: the `len / (m n)` products wrote all `len` elements (row stride n, each
            // its own contiguous m x n block of the spare capacity).
            unsafe { out.set_len(len) };
            out
        } else {
            // k = 0: all zeros (an empty sum); the operands' offsets may then point past their
            // empty buffers and must not be sliced.
            filled(len, <$t>::default())?
        }
    }};
}

/// `[batch.., m, k] @ [batch.., k, n]` with identical batch dims.
pub fn matmul(a: &CpuStorage, la: &Layout, b: &CpuStorage, lb: &Layout) -> Result<CpuStorage> {
    Ok(match (a, b) {
        (CpuStorage::F32(x), CpuStorage::F32(y)) => CpuStorage::F32(batched!(f32, x, la, y, lb)),
        (CpuStorage::F64(x), CpuStorage::F64(y)) => CpuStorage::F64(batched!(f64, x, la, y, lb)),
        (CpuStorage::F16(_), CpuStorage::F16(_)) | (CpuStorage::BF16(_), CpuStorage::BF16(_)) => {
            let (wa, wb) = match (a, b) {
                (CpuStorage::F16(x), CpuStorage::F16(y)) => (widen(x, la)?, widen(y, lb)?),
                (CpuStorage::BF16(x), CpuStorage::BF16(y)) => (widen(x, la)?, widen(y, lb)?),
                _ => unreachable!(),
            };
            let (ca, cb) = (Layout::contiguous(la.shape().clone()), Layout::contiguous(lb.shape().clone()));
            CpuStorage::store_f32(batched!(f32, &wa, &ca, &wb, &cb), a.dtype())?
        }
        (x, y) if x.dtype() != y.dtype() => {
            return Err(Error::DTypeMismatch { op: "matmul", lhs: x.dtype(), rhs: y.dtype() })
        }
        (x, _) => return Err(Error::UnsupportedDType { op: "matmul", dtype: x.dtype(), expected: "a float dtype" }),
    })
}

/// The GEMM for a compute float, so generic kernels (convolution, ELA) can call it.
pub trait GemmFloat: crate::dtype::Float {
    /// `C = alpha A B + beta C` with arbitrary strides (see [`gemm_f32`]).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        m: usize,
        n: usize,
        k: usize,
        alpha: Self,
        a: &[Self],
        rsa: usize,
        csa: usize,
        b: &[Self],
        rsb: usize,
        csb: usize,
        beta: Self,
        c: &mut [Self],
        rsc: usize,
        csc: usize,
    );
}

impl GemmFloat for f32 {
    fn gemm(
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: &[f32],
        rsa: usize,
        csa: usize,
        b: &[f32],
        rsb: usize,
        csb: usize,
        beta: f32,
        c: &mut [f32],
        rsc: usize,
        csc: usize,
    ) {
        gemm_f32(m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
    }
}

impl GemmFloat for f64 {
    fn gemm(
        m: usize,
        n: usize,
        k: usize,
        alpha: f64,
        a: &[f64],
        rsa: usize,
        csa: usize,
        b: &[f64],
        rsb: usize,
        csb: usize,
        beta: f64,
        c: &mut [f64],
        rsc: usize,
        csc: usize,
    ) {
        gemm_f64(m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
    }
}
