//! Portable micro-kernel: plain Rust over fixed-size arrays, which LLVM
//! keeps in registers and auto-vectorises with whatever SIMD the target
//! baseline offers (SSE2 on x86_64, NEON on aarch64).

use super::Elem;

/// Portable `MR x NR` micro-kernel with the same contract as the SIMD ones.
///
/// # Safety
/// `a` must be readable for `k * MR` and `b` for `k * NR` elements; every
/// `c[i * rsc + j * csc]` with `i < MR`, `j < NR` must be writable (and
/// readable if `beta != 0`).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn kernel<T: Elem, const MR: usize, const NR: usize, const AROWS: bool>(
    k: usize,
    a: *const T,
    b: *const T,
    c: *mut T,
    rsc: usize,
    csc: usize,
    alpha: T,
    beta: T,
) {
    let mut acc = [[T::ZERO; NR]; MR];
    for p in 0..k {
        // SAFETY: caller guarantees k * MR / k * NR readable elements.
        let bp = unsafe { &*(b.add(p * NR) as *const [T; NR]) };
        for (i, row) in acc.iter_mut().enumerate() {
            // See `Kernel::func_rows` for the two A panel layouts.
            let ai = unsafe { *a.add(if AROWS { i * k + p } else { p * MR + i }) };
            for (x, &bj) in row.iter_mut().zip(bp.iter()) {
                *x = *x + ai * bj;
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (j, &x) in row.iter().enumerate() {
            // SAFETY: caller guarantees the MR x NR tile of C is valid.
            let cp = unsafe { c.add(i * rsc + j * csc) };
            let v = alpha * x;
            unsafe { *cp = if beta == T::ZERO { v } else { v + beta * *cp } };
        }
    }
}
