//! The linear algebra of the CPU ELA kernels: the GEMM wrapper, the block-triangular products
//! with the masked intra-chunk block `A`, and the lane-split reductions (dot, sum, max) whose fixed
//! order keeps every result independent of anything but its operands.

use super::float::ElaFloat;

/// `C = A B + beta C`, `A: m x k`, `B: k x n`, with (row, column) strides; `C` has row stride
/// `rsc`. Degenerate sizes are handled here so the GEMM never sees them.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn mm<T: ElaFloat>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    sa: (usize, usize),
    b: &[T],
    sb: (usize, usize),
    beta: T,
    c: &mut [T],
    rsc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            for x in &mut c[i * rsc..i * rsc + n] {
                *x = if beta == T::ZERO { T::ZERO } else { *x * beta };
            }
        }
        return;
    }
    T::gemm(m, n, k, T::ONE, a, sa.0, sa.1, b, sb.0, sb.1, beta, c, rsc, 1);
}

/// Rows per block of the block-triangular intra-chunk products: a chunk of `n` rows is cut into
/// blocks of this many rows and only blocks on or below the diagonal are multiplied (3/4 of the
/// full `n x n` work for `n = 64`). Entries above the diagonal inside a diagonal block are
/// computed and then discarded.
const TRI: usize = 32;

fn tri_blocks(n: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n).step_by(TRI).map(move |s| (s, (s + TRI).min(n)))
}

/// `C = A B` for an `n x n` output of which only the block-lower-triangular part is needed
/// (`A`: `n x k`, `B`: `k x n`). Entries right of each row block's diagonal block are left
/// untouched.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mm_lower_out<T: ElaFloat>(
    n: usize,
    k: usize,
    a: &[T],
    sa: (usize, usize),
    b: &[T],
    sb: (usize, usize),
    c: &mut [T],
    rsc: usize,
) {
    for (s, e) in tri_blocks(n) {
        mm(e - s, e, k, &a[s * sa.0..], sa, b, sb, T::ZERO, &mut c[s * rsc..], rsc);
    }
}

/// `C = L X (+ beta C)` with `L` (`n x n`, row stride `rsl`) zero above its diagonal: row block
/// `[s, e)` only needs columns `..e` of `L` and rows `..e` of `X` (`n x m`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn mm_lower_left<T: ElaFloat>(
    n: usize,
    m: usize,
    l: &[T],
    rsl: usize,
    x: &[T],
    sx: (usize, usize),
    beta: T,
    c: &mut [T],
    rsc: usize,
) {
    for (s, e) in tri_blocks(n) {
        mm(e - s, m, e, &l[s * rsl..], (rsl, 1), x, sx, beta, &mut c[s * rsc..], rsc);
    }
}

/// `C = L^T X (+ beta C)` with `L` lower triangular: row block `[s, e)` of `C` (column block of
/// `L`) only needs rows `s..` of `L` and of `X`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mm_lower_t_left<T: ElaFloat>(
    n: usize,
    m: usize,
    l: &[T],
    rsl: usize,
    x: &[T],
    sx: (usize, usize),
    beta: T,
    c: &mut [T],
    rsc: usize,
) {
    for (s, e) in tri_blocks(n) {
        mm(e - s, m, n - s, &l[s * rsl + s..], (1, rsl), &x[s * sx.0..], sx, beta, &mut c[s * rsc..], rsc);
    }
}

/// Lanes of the reductions below: independent partial sums let the loop vectorize and hide the
/// add latency (a single running sum is a serial dependency chain). The order is fixed, so the
/// result does not depend on anything but the operands.
const LANES: usize = 8;

/// Dot product.
#[inline]
pub(crate) fn dot<T: ElaFloat>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [T::ZERO; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] = acc[l] + x[l] * y[l];
        }
    }
    let mut s = fold_lanes(acc);
    for (&x, &y) in ra.iter().zip(rb) {
        s = s + x * y;
    }
    s
}

/// Sum of a slice.
#[inline]
pub(crate) fn sum<T: ElaFloat>(a: &[T]) -> T {
    let mut acc = [T::ZERO; LANES];
    let c = a.chunks_exact(LANES);
    let r = c.remainder();
    for x in c {
        for l in 0..LANES {
            acc[l] = acc[l] + x[l];
        }
    }
    r.iter().fold(fold_lanes(acc), |s, &x| s + x)
}

#[inline]
fn fold_lanes<T: ElaFloat>(a: [T; LANES]) -> T {
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
}

/// `if x > m { x } else { m }`: one `maxps`, where `f32::max`'s NaN rules cost a compare and a
/// blend per element. NaN operands are skipped here; they still reach the output through the
/// values they feed.
#[inline(always)]
pub(crate) fn gt_max<T: ElaFloat>(m: T, x: T) -> T {
    if x > m {
        x
    } else {
        m
    }
}

/// Maximum of `a[i] + b[i]` over the shorter length (`-inf` when empty).
#[inline]
pub(crate) fn max_of_sum<T: ElaFloat>(a: &[T], b: &[T]) -> T {
    max_of_zip(a, b, |x, y| x + y)
}

/// Maximum of a slice (`-inf` when empty).
#[inline]
pub(crate) fn max_of<T: ElaFloat>(a: &[T]) -> T {
    max_of_zip(a, a, |x, _| x)
}

/// Maximum of `f(a[i], b[i])` over the shorter length (`-inf` when empty). The maximum is exact
/// in any order; the fixed lanes (and a fixed order for equal values such as `-0` and `+0`) over
/// fixed-width chunks, which need no bounds checks, let the compiler turn each step into one
/// vector `max`.
#[inline(always)]
fn max_of_zip<T: ElaFloat>(a: &[T], b: &[T], f: impl Fn(T, T) -> T) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [T::neg_infinity(); LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] = gt_max(acc[l], f(x[l], y[l]));
        }
    }
    let m = acc.iter().fold(T::neg_infinity(), |m, &x| gt_max(m, x));
    ra.iter().zip(rb).fold(m, |m, (&x, &y)| gt_max(m, f(x, y)))
}
