//! Parallel GEMM over k for small, deep products (a weight gradient `X^T dY`: m and n the layer
//! widths, k the tokens of a batch), with the same bits as the serial algorithm.
//!
//! Split over m or n, every thread packs the whole of the other operand: for `128 x 2048 @ 2048 x
//! 128` on two threads both pack all of B, and packing is then a large share of the work. Split
//! over the `kc` blocks instead, each thread packs only its own blocks of A and B.
//!
//! Why the result is bit-identical to [`super::block::serial`] (when `alpha == 1` and C's rows
//! are contiguous): serial computes each element as a chain over the kc blocks, block `i`
//! contributing the micro-kernel's accumulator `x_i` (its k steps in order, starting from zero),
//! and its epilogue adds it with one rounding: the first block writes `x_0` (`beta == 0`),
//! `x_0 + c` (`beta == 1`, `fma(x, 1, c)` rounds once) or `x_0 + round(beta c)`; every later
//! block writes `x_i + c`. With `alpha == 1`, `x_i` is also exactly what a product over block
//! `i` alone writes with `beta == 0` (`x * 1`). So the threads write every `x_i` into a scratch
//! buffer, and one pass adds them in block order with the same roundings.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::{block, Elem, Kernel, SendPtr};

/// At most this many C elements (a 256 x 256 output): each kc block gets a scratch copy of C.
const MAX_C: usize = 256 * 256;

/// At least this many C elements: below it (e.g. 32 x 64) the extra tasks and the pass over the
/// copies cost more than the packing saved (measured: `GEMM_BENCH_SHAPES=32x2048x64`, 10%
/// slower split over k; 64 x 2048 @ 2048 x 128, 5-9% faster).
const MIN_C: usize = 64 * 128;

thread_local! {
    /// The calling thread's scratch copies, kept between calls: a weight gradient's are 512 KiB,
    /// which a default `malloc` would map and unmap (page faults included) at every call.
    static SCRATCH: RefCell<Vec<MaybeUninit<u64>>> = const { RefCell::new(Vec::new()) };
}

/// The kc block size `serial` would use for this `k`, when a split over the blocks is worth
/// taking (`None`: split over m or n instead). It needs a block per thread and a C small enough
/// for a scratch copy per block, but not so small that the split's own costs dominate; and it
/// must save more than it adds. Split over m (or n), each of `threads` threads packs the whole
/// of the other operand, `k x n` values, so `(threads - 1) k n` are packed twice; split over k,
/// the `k / kc` copies of C are written and read once, `2 (k / kc) m n`. So the split over k
/// pays when `(threads - 1) kc >= 2 m`, m being the dimension the other split would cut. On the
/// 2-core Intel machine of docs/benchmarks.md (kc = 256): 128 x 2048 @ 2048 x 128 and x 256
/// 4-6% faster split over k, 256 x 2048 @ 2048 x 128 10% slower (so not split).
pub(super) fn plan<T>(kern: &Kernel<T>, m: usize, n: usize, k: usize, threads: usize) -> Option<usize> {
    let kc = block::k_block_size(k, kern.kc);
    let blocks = k.div_ceil(kc);
    let c_fits = m.checked_mul(n).is_some_and(|mn| (MIN_C..=MAX_C).contains(&mn));
    // The dimension the split over m or n would cut (`gemm_with`'s choice).
    let cut = if m.div_ceil(kern.mr) >= n.div_ceil(kern.nr) { m } else { n };
    let pays = threads.saturating_sub(1).saturating_mul(kc) >= cut.saturating_mul(2);
    (threads > 1 && blocks >= threads && c_fits && pays).then_some(kc)
}

/// `C = A B + beta C` (alpha 1) with the kc blocks of size `kc` spread over the rayon pool, then
/// summed in block order into C (module docs). C's rows must be contiguous (`csc == 1`).
///
/// # Safety
/// As [`super::block::serial`]; `c` must be initialised when `beta != 0`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm<T: Elem>(
    kern: &Kernel<T>,
    kc: usize,
    m: usize,
    n: usize,
    k: usize,
    a: *const T,
    rsa: usize,
    csa: usize,
    b: *const T,
    rsb: usize,
    csb: usize,
    beta: T,
    c: &mut [MaybeUninit<T>],
    rsc: usize,
) {
    let blocks = k.div_ceil(kc);
    let mn = m * n;
    let words = (blocks * mn * size_of::<T>()).div_ceil(size_of::<u64>());
    SCRATCH.with(|cell| {
        let mut held = cell.try_borrow_mut();
        let mut fresh = Vec::new();
        let buf = match held {
            Ok(ref mut buf) => &mut **buf,
            // Re-entered on this thread (a task of the split ran another such product): fresh copies.
            Err(_) => &mut fresh,
        };
        if buf.len() < words {
            buf.resize(words, MaybeUninit::uninit());
        }
        // SAFETY: `buf` holds `words` 8-byte-aligned words, room for `blocks * mn` values of T
        // (f32 or f64, alignment at most 8).
        let scratch = unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<MaybeUninit<T>>(), blocks * mn) };
        // SAFETY: the caller's contract.
        unsafe { sum_blocks(kern, kc, (m, n, k), (a, rsa, csa), (b, rsb, csb), beta, c, rsc, scratch) }
    })
}

/// The body of [`gemm`], with `blocks * m * n` elements of scratch.
///
/// # Safety
/// As [`gemm`].
#[allow(clippy::too_many_arguments)]
unsafe fn sum_blocks<T: Elem>(
    kern: &Kernel<T>,
    kc: usize,
    (m, n, k): (usize, usize, usize),
    (a, rsa, csa): (*const T, usize, usize),
    (b, rsb, csb): (*const T, usize, usize),
    beta: T,
    c: &mut [MaybeUninit<T>],
    rsc: usize,
    scratch: &mut [MaybeUninit<T>],
) {
    let blocks = k.div_ceil(kc);
    let mn = m * n;
    let (ap, bp) = (SendPtr(a as *mut T), SendPtr(b as *mut T));
    scratch.par_chunks_mut(mn).enumerate().for_each(|(i, x)| {
        let p0 = i * kc;
        let kb = kc.min(k - p0);
        // SAFETY: block i's columns of A and rows of B lie inside the caller's extents; `x` is
        // an m x n row-major buffer, written in full (beta 0).
        unsafe {
            block::serial(
                kern,
                m,
                n,
                kb,
                T::ONE,
                ap.get().add(p0 * csa),
                rsa,
                csa,
                bp.get().add(p0 * rsb),
                rsb,
                csb,
                T::ZERO,
                x.as_mut_ptr().cast::<T>(),
                n,
                1,
            )
        };
    });
    // SAFETY: every block's product was written in full above.
    let x: &[T] = unsafe { &*(scratch as *const [MaybeUninit<T>] as *const [T]) };
    let cp = SendPtr(c.as_mut_ptr());
    (0..m).into_par_iter().for_each(|r| {
        // SAFETY: row r of C (n contiguous elements at r * rsc) is inside the caller's extent,
        // and rows are disjoint (the caller checked `no_overlap`).
        let row = unsafe { std::slice::from_raw_parts_mut(cp.get().add(r * rsc), n) };
        let block_row = |blk: usize| &x[blk * mn + r * n..blk * mn + (r + 1) * n];
        // The first block's epilogue, as the micro-kernel writes it ...
        for (cj, &x0) in row.iter_mut().zip(block_row(0)) {
            let v = if beta == T::ZERO {
                x0
            } else {
                // SAFETY: beta != 0 is only passed with an initialised C.
                let old = unsafe { cj.assume_init() };
                if beta == T::ONE {
                    x0 + old
                } else {
                    x0 + beta * old
                }
            };
            cj.write(v);
        }
        // ... then every later block's, in block order.
        for blk in 1..blocks {
            for (cj, &xi) in row.iter_mut().zip(block_row(blk)) {
                // SAFETY: written by the first pass.
                cj.write(xi + unsafe { cj.assume_init() });
            }
        }
    });
}
