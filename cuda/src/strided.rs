//! Strided views as kernel arguments.
//!
//! Kernels read their inputs through a [`Desc`] (the `Desc` struct of `kernels/common.cuh`): up to
//! [`MAX_RANK`] dimensions with per-view strides and an offset. Before a launch, the layouts of all
//! operands of one op are *coalesced together*: size-1 axes are dropped and neighbouring axes that
//! are contiguous with each other in every operand are merged, so a contiguous tensor becomes one
//! axis and a transposed matrix stays two. Only views that still have more than `MAX_RANK` axes
//! after that need a copy (see `Cuda::contiguous_view`).

use cudarc::driver::DeviceRepr;
use ela_core::Layout;

/// Axes a [`Desc`] can describe (must match `MAX_RANK` in kernels/common.cuh).
pub(crate) const MAX_RANK: usize = 6;

/// A strided view as the kernels see it; layout-compatible with `struct Desc` in common.cuh.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Desc {
    dims: [i64; MAX_RANK],
    strides: [i64; MAX_RANK],
    offset: i64,
    rank: i32,
    pad: i32,
}

// SAFETY: plain-old-data with the same C layout as the kernel-side struct.
unsafe impl DeviceRepr for Desc {}

impl Desc {
    /// The descriptor of `dims`/`strides` at `offset`, or `None` beyond [`MAX_RANK`] axes.
    pub(crate) fn new(dims: &[usize], strides: &[usize], offset: usize) -> Option<Desc> {
        if dims.len() > MAX_RANK {
            return None;
        }
        let mut d = Desc { offset: offset as i64, rank: dims.len() as i32, ..Desc::default() };
        for (k, (&n, &s)) in dims.iter().zip(strides).enumerate() {
            d.dims[k] = n as i64;
            d.strides[k] = s as i64;
        }
        Some(d)
    }

    /// A contiguous run of `n` elements starting at `offset`.
    pub(crate) fn contiguous(n: usize, offset: usize) -> Desc {
        Desc::new(&[n], &[1], offset).expect("rank 1")
    }
}

/// Jointly coalesced dims and per-operand strides of several same-shape layouts.
#[derive(Debug, Clone)]
pub(crate) struct Coalesced {
    /// Merged dimensions (none of size 1).
    pub dims: Vec<usize>,
    /// Strides of each operand over `dims`.
    pub strides: Vec<Vec<usize>>,
}

/// Merges the axes of same-shape views. Axis `k` folds into axis `k-1` when, for every operand,
/// `stride[k-1] == stride[k] * dim[k]` (stepping the outer axis equals stepping past the whole
/// inner one), which holds for contiguous runs and for broadcast runs (all strides 0).
pub(crate) fn coalesce(dims: &[usize], strides: &[&[usize]]) -> Coalesced {
    let mut out_d: Vec<usize> = Vec::with_capacity(dims.len());
    let mut out_s: Vec<Vec<usize>> = vec![Vec::with_capacity(dims.len()); strides.len()];
    for (k, &d) in dims.iter().enumerate() {
        if d == 1 {
            continue;
        }
        let mergeable =
            !out_d.is_empty() && strides.iter().zip(&out_s).all(|(s, o)| *o.last().expect("non-empty") == s[k] * d);
        if mergeable {
            *out_d.last_mut().expect("non-empty") *= d;
            for (s, o) in strides.iter().zip(out_s.iter_mut()) {
                *o.last_mut().expect("non-empty") = s[k];
            }
        } else {
            out_d.push(d);
            for (s, o) in strides.iter().zip(out_s.iter_mut()) {
                o.push(s[k]);
            }
        }
    }
    Coalesced { dims: out_d, strides: out_s }
}

/// Kernel descriptors of same-shape layouts after joint coalescing, or `None` when the result
/// still has more than [`MAX_RANK`] axes.
pub(crate) fn descs(layouts: &[&Layout]) -> Option<Vec<Desc>> {
    let dims = layouts[0].dims();
    let strides: Vec<&[usize]> = layouts.iter().map(|l| l.strides()).collect();
    let c = coalesce(dims, &strides);
    layouts.iter().zip(&c.strides).map(|(l, s)| Desc::new(&c.dims, s, l.offset())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ela_core::Shape;

    #[test]
    fn contiguous_becomes_one_axis() {
        let l = Layout::contiguous([2, 3, 4]);
        let c = coalesce(l.dims(), &[l.strides()]);
        assert_eq!(c.dims, vec![24]);
        assert_eq!(c.strides, vec![vec![1]]);
    }

    #[test]
    fn transpose_stays_two_axes_and_broadcast_merges() {
        let t = Layout::contiguous([4, 5]).transpose(0, 1);
        let c = coalesce(t.dims(), &[t.strides()]);
        assert_eq!(c.dims, vec![5, 4]);
        assert_eq!(c.strides, vec![vec![1, 5]]);
        // A [3] vector broadcast to [2, 5, 3] against a contiguous [2, 5, 3] tensor: the outer
        // two axes merge (stride 0 for the vector, 3 for the tensor).
        let v = Layout::contiguous([3]).broadcast_as(&Shape::from([2, 5, 3]), "t").unwrap();
        let a = Layout::contiguous([2, 5, 3]);
        let c = coalesce(a.dims(), &[a.strides(), v.strides()]);
        assert_eq!(c.dims, vec![10, 3]);
        assert_eq!(c.strides, vec![vec![3, 1], vec![0, 1]]);
    }

    #[test]
    fn offsets_match_layout() {
        // Every coalesced descriptor must address the same elements as the layout.
        let l = Layout::contiguous([3, 1, 4, 2]).permute(&[2, 0, 3, 1], "t").unwrap().narrow(0, 1, 2, "t").unwrap();
        let d = descs(&[&l]).unwrap()[0];
        for i in 0..l.elem_count() {
            let mut off = d.offset;
            let mut r = i as i64;
            for k in (0..d.rank as usize).rev() {
                off += (r % d.dims[k]) * d.strides[k];
                r /= d.dims[k];
            }
            assert_eq!(off as usize, l.offset_of_linear(i));
        }
        assert!(Desc::new(&[1; 7], &[1; 7], 0).is_none());
    }
}
