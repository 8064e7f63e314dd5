//! `C += A @ B^T` for row-major `A [m, k]` and `B [n, k]`: the weight-gradient product of the
//! GEMM paths (`dW_g += dy_g @ x_g^T` for 1x1 convolutions, `dy_g @ col^T` for im2col), where
//! both operands run contiguously along the summed pixels `k`.
//!
//! The GEMM would read `B^T` as a column-major `k x n` matrix and pack it with a transposing,
//! element-by-element copy, which took three quarters of the weight gradient's time on these
//! shapes (m and n at most a few hundred, k the pixels of an image). This computes the
//! `m * n` dot products directly: blocks of `MB` rows of A and `NB` rows of B keep `MB * NB`
//! vector accumulators in registers along k (`MB + NB` loads per `MB * NB` FMAs), reduced once
//! per block and slice of k. k is walked in slices of [`KC`] so that one slice of all of B stays
//! in L2 while every row block of A passes over it.

use super::simd::{best, multiversion, SimdFloat, Vector};
use crate::dtype::Float;
use rayon::prelude::*;

/// Pixels per slice of k: `n` rows of B times `KC` f32 is 576 KiB for the widest case here
/// (n = 288 col rows of a 3x3 conv over 32 channels), inside a 1-2 MiB L2.
const KC: usize = 512;

/// `c[i * ldc + j] += sum_{p < k} a[i * lda + p] * b[j * ldb + p]` for an `MB x NB` block.
///
/// # Safety
/// The CPU must support `V`'s instruction set; rows `i < MB` of `a`, `j < NB` of `b` must be
/// readable for `k` elements and the block of `c` writable.
#[inline(always)]
unsafe fn block<V: Vector, const MB: usize, const NB: usize>(
    k: usize,
    a: *const V::T,
    lda: usize,
    b: *const V::T,
    ldb: usize,
    c: *mut V::T,
    ldc: usize,
) {
    let full = k - k % V::W;
    // SAFETY: all offsets are below the extents the caller vouches for.
    unsafe {
        let mut acc = [[V::zero(); NB]; MB];
        let mut p = 0;
        while p < full {
            let mut av = [V::zero(); MB];
            for (i, v) in av.iter_mut().enumerate() {
                *v = V::load(a.add(i * lda + p));
            }
            let mut bv = [V::zero(); NB];
            for (j, v) in bv.iter_mut().enumerate() {
                *v = V::load(b.add(j * ldb + p));
            }
            for i in 0..MB {
                for j in 0..NB {
                    acc[i][j] = av[i].madd(bv[j], acc[i][j]);
                }
            }
            p += V::W;
        }
        for (i, acc) in acc.iter().enumerate() {
            // The lane sums, four accumulators per shuffle tree where possible.
            let mut sums = [V::T::ZERO; NB];
            let mut j = 0;
            while j + 4 <= NB {
                sums[j..j + 4].copy_from_slice(&V::hsum4([acc[j], acc[j + 1], acc[j + 2], acc[j + 3]]));
                j += 4;
            }
            for j in j..NB {
                sums[j] = acc[j].hsum();
            }
            for (j, mut s) in sums.into_iter().enumerate() {
                for p in full..k {
                    s = s + *a.add(i * lda + p) * *b.add(j * ldb + p);
                }
                let cp = c.add(i * ldc + j);
                *cp = *cp + s;
            }
        }
    }
}

/// `C += A @ B^T` over all blocks for one slice of k, rows `0..m` of C.
///
/// # Safety
/// As for [`block`], for the whole `m x k`, `n x k` and `m x n` matrices.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn slice<V: Vector, const MB: usize, const NB: usize>(
    m: usize,
    n: usize,
    k: usize,
    a: *const V::T,
    lda: usize,
    b: *const V::T,
    ldb: usize,
    c: *mut V::T,
    ldc: usize,
) {
    let (mf, nf) = (m - m % MB, n - n % NB);
    // SAFETY: every block lies inside the matrices (the caller's extents).
    unsafe {
        for i in (0..mf).step_by(MB) {
            let (ai, ci) = (a.add(i * lda), c.add(i * ldc));
            for j in (0..nf).step_by(NB) {
                block::<V, MB, NB>(k, ai, lda, b.add(j * ldb), ldb, ci.add(j), ldc);
            }
            for j in nf..n {
                block::<V, MB, 1>(k, ai, lda, b.add(j * ldb), ldb, ci.add(j), ldc);
            }
        }
        for i in mf..m {
            let (ai, ci) = (a.add(i * lda), c.add(i * ldc));
            for j in (0..nf).step_by(NB) {
                block::<V, 1, NB>(k, ai, lda, b.add(j * ldb), ldb, ci.add(j), ldc);
            }
            for j in nf..n {
                block::<V, 1, 1>(k, ai, lda, b.add(j * ldb), ldb, ci.add(j), ldc);
            }
        }
    }
}

/// Rows `r0..r0 + rows` of C, all slices of k.
///
/// # Safety
/// The CPU must support `V`'s instruction set.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn nt_rows<V: Vector>(
    n: usize,
    k: usize,
    a: &[V::T],
    lda: usize,
    b: &[V::T],
    ldb: usize,
    c: &mut [V::T],
    ldc: usize,
    rows: usize,
) {
    if rows == 0 || n == 0 || k == 0 {
        return;
    }
    // The raw reads and writes below stay inside these extents.
    assert!((rows - 1) * lda + k <= a.len() && (n - 1) * ldb + k <= b.len(), "dot: operand too short");
    assert!((rows - 1) * ldc + n <= c.len(), "dot: C too short");
    let (ap, bp, cp) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
    for p0 in (0..k).step_by(KC) {
        let kc = KC.min(k - p0);
        // SAFETY: checked extents; the register budget picks the block shape (4x4 needs 24
        // vector registers, 4x2 fits in 16).
        unsafe {
            if V::REGS >= 32 {
                slice::<V, 4, 4>(rows, n, kc, ap.add(p0), lda, bp.add(p0), ldb, cp, ldc);
            } else {
                slice::<V, 4, 2>(rows, n, kc, ap.add(p0), lda, bp.add(p0), ldb, cp, ldc);
            }
        }
    }
}

multiversion!(rows_mv => nt_rows(
    n: usize, k: usize, a: &[T], lda: usize, b: &[T], ldb: usize, c: &mut [T], ldc: usize, nrows: usize
));

/// `C [m, n] += A [m, k] @ B [n, k]^T` (row strides `lda`, `ldb`, `ldc`; unit column strides).
/// With `par`, row blocks of C run in parallel; else all on the calling thread.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_nt<T: SimdFloat>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    lda: usize,
    b: &[T],
    ldb: usize,
    c: &mut [T],
    ldc: usize,
    par: bool,
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let isa = best();
    // 8 rows per task: whole 4-row blocks, and enough tasks to balance a few threads.
    const ROWS: usize = 8;
    if par && m > ROWS {
        let c = &mut c[..(m - 1) * ldc + n];
        c.par_chunks_mut(ROWS * ldc).enumerate().for_each(|(t, ct)| {
            let r0 = t * ROWS;
            let nrows = ROWS.min(m - r0);
            rows_mv(isa, n, k, &a[r0 * lda..], lda, b, ldb, ct, ldc, nrows);
        });
    } else {
        rows_mv(isa, n, k, a, lda, b, ldb, c, ldc, m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::conv::simd::supported;

    #[test]
    fn every_isa_matches_loops() {
        // Odd sizes: edge blocks in both directions, a k tail after whole vectors and slices.
        for (m, n, k) in [(1, 1, 1), (5, 7, 37), (9, 6, 1100), (4, 4, 16), (3, 2, 513), (13, 27, 300)] {
            let (lda, ldb, ldc) = (k + 3, k + 1, n + 2);
            let a: Vec<f64> = (0..m * lda).map(|i| ((i * 7 % 11) as f64 - 5.0) / 3.0).collect();
            let b: Vec<f64> = (0..n * ldb).map(|i| ((i * 5 % 13) as f64 - 6.0) / 4.0).collect();
            let c0: Vec<f64> = (0..m * ldc).map(|i| i as f64 * 0.5).collect();
            let mut want = c0.clone();
            for i in 0..m {
                for j in 0..n {
                    want[i * ldc + j] += (0..k).map(|p| a[i * lda + p] * b[j * ldb + p]).sum::<f64>();
                }
            }
            for isa in supported() {
                for par in [false, true] {
                    let mut c = c0.clone();
                    if par {
                        let c = &mut c[..];
                        c.par_chunks_mut(8 * ldc).enumerate().for_each(|(t, ct)| {
                            let nrows = 8.min(m - t * 8);
                            rows_mv(isa, n, k, &a[t * 8 * lda..], lda, &b, ldb, ct, ldc, nrows);
                        });
                    } else {
                        rows_mv(isa, n, k, &a, lda, &b, ldb, &mut c, ldc, m);
                    }
                    for (i, (&g, &w)) in c.iter().zip(&want).enumerate() {
                        assert!((g - w).abs() <= 1e-12 * (1.0 + w.abs()), "{isa:?} {m}x{n}x{k} [{i}]: {g} vs {w}");
                    }
                }
                // f32 through the public entry point.
                let (a32, b32): (Vec<f32>, Vec<f32>) =
                    (a.iter().map(|&x| x as f32).collect(), b.iter().map(|&x| x as f32).collect());
                let mut c32: Vec<f32> = c0.iter().map(|&x| x as f32).collect();
                gemm_nt(m, n, k, &a32, lda, &b32, ldb, &mut c32, ldc, true);
                for (&g, &w) in c32.iter().zip(&want) {
                    assert!((g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()), "f32 {m}x{n}x{k}: {g} vs {w}");
                }
            }
        }
    }
}
