//! Reading strided views on the host, and the joint iteration plan of the elementwise kernels.

use crate::cpu::alloc::reserve;
use crate::error::Result;
use crate::layout::Layout;
use rayon::prelude::*;
use std::mem::MaybeUninit;

use super::PAR_THRESHOLD;

/// Elements per parallel task of the elementwise kernels: large enough that scheduling is noise,
/// small enough that a few tasks per thread balance the load.
pub(crate) const PAR_CHUNK: usize = 1 << 15;

/// A joint walk over `N` same-shape views in logical row-major order.
///
/// Size-1 axes are dropped and adjacent axes are merged whenever every operand steps through them
/// as one axis (`stride[k] == stride[k + 1] * dim[k + 1]`, which includes a pair of stride-0
/// broadcast axes). What remains is `rows` rows of `len` elements, each operand stepping
/// `inner[i]` within a row: `[N, C, H, W] op [1, C, 1, 1]` becomes rows of `H * W` against one
/// scalar per row, and two contiguous operands one flat row.
#[derive(Clone, Debug)]
pub(crate) struct Plan<const N: usize> {
    /// Outer dimensions (innermost last), without the row axis.
    dims: Vec<usize>,
    /// Outer strides per operand, parallel to `dims`.
    strides: [Vec<usize>; N],
    offsets: [usize; N],
    /// Row length.
    pub len: usize,
    /// Stride within a row, per operand.
    pub inner: [usize; N],
    /// Total elements.
    pub n: usize,
}

impl<const N: usize> Plan<N> {
    pub fn new(layouts: [&Layout; N]) -> Self {
        let dims0 = layouts[0].dims();
        debug_assert!(layouts.iter().all(|l| l.dims() == dims0));
        let n = layouts[0].elem_count();
        let offsets = layouts.map(|l| l.offset());
        // Merged axes, outermost first.
        let mut dims: Vec<usize> = Vec::with_capacity(dims0.len());
        let mut strides: [Vec<usize>; N] = std::array::from_fn(|_| Vec::with_capacity(dims0.len()));
        for (k, &d) in dims0.iter().enumerate() {
            if d == 1 {
                continue;
            }
            let merge =
                dims.last().is_some_and(|_| (0..N).all(|i| *strides[i].last().unwrap() == layouts[i].strides()[k] * d));
            if merge {
                *dims.last_mut().unwrap() *= d;
                for i in 0..N {
                    *strides[i].last_mut().unwrap() = layouts[i].strides()[k];
                }
            } else {
                dims.push(d);
                for i in 0..N {
                    strides[i].push(layouts[i].strides()[k]);
                }
            }
        }
        let (len, inner) = match dims.pop() {
            Some(d) => (d, std::array::from_fn(|i| strides[i].pop().unwrap())),
            // Rank 0, or all axes of size 1: one row of one element (or of none when empty).
            None => (n.min(1), [1; N]),
        };
        Plan { dims, strides, offsets, len, inner, n }
    }

    /// Calls `f(offsets, start, count)` for each run of `count` output elements from `start`
    /// (in logical order) that lies in one row, covering `start..end`; `offsets` are the
    /// operands' storage offsets of the run's first element.
    #[inline]
    pub fn for_runs(&self, start: usize, end: usize, mut f: impl FnMut([usize; N], usize, usize)) {
        if start >= end || self.len == 0 {
            return;
        }
        let (row, mut j) = (start / self.len, start % self.len);
        // Multi-index of `row` over the outer dims, and the operands' offsets of its start.
        let r = self.dims.len();
        // Callers may walk many short ranges (a block per call): no allocation for the usual
        // ranks (axes are merged, so views rarely keep more than a few).
        let (mut stack, mut heap);
        let idx: &mut [usize] = if r <= 8 {
            stack = [0usize; 8];
            &mut stack[..r]
        } else {
            heap = vec![0usize; r];
            &mut heap
        };
        let mut off = self.offsets;
        let mut rem = row;
        for k in (0..r).rev() {
            idx[k] = rem % self.dims[k];
            rem /= self.dims[k];
            for (o, st) in off.iter_mut().zip(&self.strides) {
                *o += idx[k] * st[k];
            }
        }
        let mut pos = start;
        while pos < end {
            let count = (self.len - j).min(end - pos);
            f(std::array::from_fn(|i| off[i] + j * self.inner[i]), pos, count);
            pos += count;
            j = 0;
            // Odometer step to the next row.
            for k in (0..r).rev() {
                idx[k] += 1;
                for (o, st) in off.iter_mut().zip(&self.strides) {
                    *o += st[k];
                }
                if idx[k] < self.dims[k] {
                    break;
                }
                for (o, st) in off.iter_mut().zip(&self.strides) {
                    *o -= self.dims[k] * st[k];
                }
                idx[k] = 0;
            }
        }
    }
}

/// A vector of `n` elements each written exactly once by `fill(start, dst)` over consecutive
/// chunks `dst` starting at logical index `start` (in parallel for large `n`). The buffer is never
/// zero-filled first.
pub(crate) fn build<O: Copy + Send + Sync>(
    n: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<O>]) + Sync,
) -> Result<Vec<O>> {
    build_chunked(n, PAR_CHUNK, n >= PAR_THRESHOLD, fill)
}

/// [`build`] with chunks of `chunk` elements, in parallel only when `par`.
pub(crate) fn build_chunked<O: Copy + Send + Sync>(
    n: usize,
    chunk: usize,
    par: bool,
    fill: impl Fn(usize, &mut [MaybeUninit<O>]) + Sync,
) -> Result<Vec<O>> {
    let mut out: Vec<O> = reserve(n)?;
    let spare = &mut out.spare_capacity_mut()[..n];
    if par && n > chunk {
        spare.par_chunks_mut(chunk).enumerate().for_each(|(c, dst)| fill(c * chunk, dst));
    } else if n > 0 {
        fill(0, spare);
    }
    // SAFETY: `fill` wrote every element of each chunk it was given (the callers' contract), and
    // the chunks cover `0..n`; `O: Copy` has no drop to run if `fill` panicked instead.
    unsafe { out.set_len(n) };
    Ok(out)
}

/// Copy the view `src_l` of `src` into the view `dst_l` of `dst` (same shape), element by
/// element in logical order. Serial: its one caller writes a few rows of a cache per call.
pub(crate) fn scatter<T: Copy>(dst: &mut [T], dst_l: &Layout, src: &[T], src_l: &Layout) {
    let plan = Plan::new([dst_l, src_l]);
    let [sd, ss] = plan.inner;
    plan.for_runs(0, plan.n, |[od, os], _, count| {
        if sd == 1 && ss == 1 {
            dst[od..od + count].copy_from_slice(&src[os..os + count]);
        } else {
            for j in 0..count {
                dst[od + j * sd] = src[os + j * ss];
            }
        }
    });
}

/// The elements of `layout` in logical row-major order, as a new vector.
pub(crate) fn gather<T: Copy + Send + Sync>(v: &[T], layout: &Layout) -> Result<Vec<T>> {
    if let Some(r) = layout.contiguous_range() {
        let mut out = reserve(r.len())?;
        out.extend_from_slice(&v[r]);
        return Ok(out);
    }
    let plan = Plan::new([layout]);
    let s = plan.inner[0];
    build(plan.n, |start, dst| {
        plan.for_runs(start, start + dst.len(), |[o], pos, count| {
            let d = &mut dst[pos - start..pos - start + count];
            match s {
                1 => {
                    for (d, &x) in d.iter_mut().zip(&v[o..o + count]) {
                        d.write(x);
                    }
                }
                0 => {
                    let x = v[o];
                    for d in d {
                        d.write(x);
                    }
                }
                _ => {
                    for (j, d) in d.iter_mut().enumerate() {
                        d.write(v[o + j * s]);
                    }
                }
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::Shape;

    fn naive(l: &Layout) -> Vec<usize> {
        (0..l.elem_count()).map(|i| l.offset_of_linear(i)).collect()
    }

    #[test]
    fn plan_runs_match_offsets() {
        let base = Layout::contiguous([2, 3, 4, 5]);
        let cases = [
            base.clone(),
            Layout::contiguous([2, 4, 3, 5]).permute(&[0, 2, 1, 3], "t").unwrap(),
            Layout::contiguous([2, 3, 6, 5]).narrow(2, 1, 4, "t").unwrap(),
            Layout::contiguous([5, 3, 4, 2]).permute(&[3, 1, 2, 0], "t").unwrap(),
            Layout::contiguous([1, 3, 1, 1]).broadcast_as(&Shape::from([2, 3, 4, 5]), "t").unwrap(),
            Layout::contiguous([4, 1]).broadcast_as(&Shape::from([2, 3, 4, 5]), "t").unwrap(),
            Layout::contiguous([2, 3, 1, 5]).broadcast_as(&Shape::from([2, 3, 4, 5]), "t").unwrap(),
        ];
        for a in &cases {
            assert_eq!(a.dims(), base.dims());
            for b in &cases {
                let plan = Plan::new([a, b]);
                let (wa, wb) = (naive(a), naive(b));
                for (s, e) in [(0, 120), (7, 93), (5, 6), (119, 120), (40, 40)] {
                    let (mut ga, mut gb) = (vec![], vec![]);
                    plan.for_runs(s, e, |[oa, ob], pos, count| {
                        assert_eq!(pos, s + ga.len());
                        for j in 0..count {
                            ga.push(oa + j * plan.inner[0]);
                            gb.push(ob + j * plan.inner[1]);
                        }
                    });
                    assert_eq!(ga, wa[s..e], "{a:?} {b:?} {s}..{e}");
                    assert_eq!(gb, wb[s..e], "{a:?} {b:?} {s}..{e}");
                }
            }
        }
        // Per-channel broadcast coalesces to rows of H*W.
        let p = Plan::new([&base, &cases[4]]);
        assert_eq!((p.len, p.inner), (20, [1, 0]));
        assert_eq!(Plan::new([&base, &base]).len, 120);
    }

    #[test]
    fn gather_matches_offsets() {
        let base = Layout::contiguous([3, 50, 7, 100]);
        let v: Vec<u32> = (0..base.elem_count() as u32).collect();
        for l in [
            base.permute(&[3, 1, 0, 2], "t").unwrap(),
            base.narrow(3, 3, 90, "t").unwrap(),
            Layout::contiguous([50, 1, 100]).broadcast_as(&Shape::from([3, 50, 7, 100]), "t").unwrap(),
        ] {
            let want: Vec<u32> = naive(&l).into_iter().map(|o| v[o]).collect();
            assert_eq!(gather(&v, &l).unwrap(), want);
        }
    }
}
