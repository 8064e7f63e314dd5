//! Strided layouts: how a tensor's logical indices map to offsets in its storage.
//!
//! Element `[i0, i1, ..]` lives at `offset + sum_k i_k * strides[k]`. Views (transpose, permute,
//! narrow, broadcast, unsqueeze) only change this mapping and never copy; a stride of 0 repeats an
//! element (broadcasting).

use crate::error::{Error, Result};
use crate::shape::Shape;

/// Shape, strides (in elements) and starting offset of a view into a storage buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    shape: Shape,
    strides: Vec<usize>,
    offset: usize,
}

impl Layout {
    /// The row-major layout of a fresh buffer of `shape`.
    pub fn contiguous(shape: impl Into<Shape>) -> Self {
        let shape = shape.into();
        let strides = shape.contiguous_strides();
        Layout { shape, strides, offset: 0 }
    }

    /// A layout from raw parts (no checks; used by backends).
    pub fn from_parts(shape: Shape, strides: Vec<usize>, offset: usize) -> Self {
        debug_assert_eq!(shape.rank(), strides.len());
        Layout { shape, strides, offset }
    }

    /// The logical shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    /// The logical dimensions.
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }
    /// Strides in elements.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    /// Offset of element `[0, .., 0]`.
    pub fn offset(&self) -> usize {
        self.offset
    }
    /// Number of logical elements.
    pub fn elem_count(&self) -> usize {
        self.shape.elem_count()
    }

    /// True when the elements are stored row-major without gaps (dimensions of size 1 may have any
    /// stride; an empty view is trivially contiguous).
    pub fn is_contiguous(&self) -> bool {
        if self.elem_count() == 0 {
            return true;
        }
        let mut acc = 1;
        for (&d, &s) in self.dims().iter().zip(&self.strides).rev() {
            if d != 1 && s != acc {
                return false;
            }
            acc *= d;
        }
        true
    }

    /// `Some(start..end)` of the storage when contiguous. An empty view gives `0..0`: its
    /// offset may point past the end of an empty buffer and must never be used to index.
    pub fn contiguous_range(&self) -> Option<std::ops::Range<usize>> {
        if self.elem_count() == 0 {
            return Some(0..0);
        }
        self.is_contiguous().then(|| self.offset..self.offset + self.elem_count())
    }

    /// Swap two axes (a view). A building block: `Tensor::transpose` checks the axes first.
    ///
    /// # Panics
    /// If `a` or `b` is not an axis of this layout.
    pub fn transpose(&self, a: usize, b: usize) -> Layout {
        let mut dims = self.dims().to_vec();
        let mut strides = self.strides.clone();
        dims.swap(a, b);
        strides.swap(a, b);
        Layout { shape: dims.into(), strides, offset: self.offset }
    }

    /// Reorder axes: output axis `i` is input axis `perm[i]` (a view).
    pub fn permute(&self, perm: &[usize], op: &'static str) -> Result<Layout> {
        let r = self.shape.rank();
        let mut seen = vec![false; r];
        if perm.len() != r || perm.iter().any(|&p| p >= r || std::mem::replace(&mut seen[p], true)) {
            return Err(Error::invalid(
                op,
                format!("{perm:?} is not a permutation of the {r} axes of shape {}", self.shape),
            ));
        }
        let dims: Vec<usize> = perm.iter().map(|&p| self.dims()[p]).collect();
        let strides = perm.iter().map(|&p| self.strides[p]).collect();
        Ok(Layout { shape: dims.into(), strides, offset: self.offset })
    }

    /// Elements `start..start+len` along `axis` (a view).
    pub fn narrow(&self, axis: usize, start: usize, len: usize, op: &'static str) -> Result<Layout> {
        let Some(&size) = self.dims().get(axis) else {
            return Err(Error::Axis {
                op,
                axis: isize::try_from(axis).unwrap_or(isize::MAX),
                shape: self.shape.clone(),
            });
        };
        if start.checked_add(len).is_none_or(|e| e > size) {
            return Err(Error::invalid(
                op,
                format!(
                    "range {start}..{} is out of bounds for axis {axis} of size {size} (shape {})",
                    start.saturating_add(len),
                    self.shape
                ),
            ));
        }
        let offset = if len == 0 { self.offset } else { self.offset + start * self.strides[axis] };
        Ok(Layout { shape: self.shape.with_dim(axis, len), strides: self.strides.clone(), offset })
    }

    /// Broadcast to `target` by prepending axes and stretching size-1 axes with stride 0 (a view).
    pub fn broadcast_as(&self, target: &Shape, op: &'static str) -> Result<Layout> {
        let (src, tgt) = (self.dims(), target.dims());
        // A broadcast view is free, but the first op that reads it allocates its full size.
        target.check_size(op)?;
        if src.len() > tgt.len() {
            return Err(Error::Broadcast { op, lhs: self.shape.clone(), rhs: target.clone() });
        }
        let lead = tgt.len() - src.len();
        let mut strides = vec![0; tgt.len()];
        for (i, &t) in tgt.iter().enumerate().skip(lead) {
            let (d, s) = (src[i - lead], self.strides[i - lead]);
            strides[i] = if d == t {
                s
            } else if d == 1 {
                0
            } else {
                return Err(Error::Broadcast { op, lhs: self.shape.clone(), rhs: target.clone() });
            };
        }
        Ok(Layout { shape: target.clone(), strides, offset: self.offset })
    }

    /// Insert an axis of size 1 at `axis` (a view). A building block: `Tensor::unsqueeze` checks
    /// the axis first.
    ///
    /// # Panics
    /// If `axis` is greater than the rank.
    pub fn unsqueeze(&self, axis: usize) -> Layout {
        let mut dims = self.dims().to_vec();
        let mut strides = self.strides.clone();
        let s = if axis < strides.len() { strides[axis] * dims[axis] } else { 1 };
        dims.insert(axis, 1);
        strides.insert(axis, s);
        Layout { shape: dims.into(), strides, offset: self.offset }
    }

    /// Remove an axis of size 1 (a view). A building block: the caller (`Tensor::squeeze`) checks
    /// the axis and its size.
    ///
    /// # Panics
    /// If `axis` is not an axis of this layout.
    pub fn squeeze(&self, axis: usize) -> Layout {
        let mut dims = self.dims().to_vec();
        let mut strides = self.strides.clone();
        dims.remove(axis);
        strides.remove(axis);
        Layout { shape: dims.into(), strides, offset: self.offset }
    }

    /// The same elements under a new shape, when that needs no copy (contiguous input).
    pub fn reshape_view(&self, shape: &Shape) -> Option<Layout> {
        self.is_contiguous().then(|| Layout {
            shape: shape.clone(),
            strides: shape.contiguous_strides(),
            offset: self.offset,
        })
    }

    /// Storage offset of the element at `index` (one entry per axis).
    #[inline]
    pub fn offset_of(&self, index: &[usize]) -> usize {
        self.offset + index.iter().zip(&self.strides).map(|(i, s)| i * s).sum::<usize>()
    }

    /// Storage offset of the `i`-th element in row-major logical order.
    #[inline]
    pub fn offset_of_linear(&self, mut i: usize) -> usize {
        let mut off = self.offset;
        for (&d, &s) in self.dims().iter().zip(&self.strides).rev() {
            if d > 1 {
                off += (i % d) * s;
                i /= d;
            }
        }
        off
    }

    /// Splits the layout into "rows": the innermost axis (length `inner_len`, stride
    /// `inner_stride`) and the start offset of each of the `rows` outer positions, computed on
    /// demand by [`Rows::row_offset`]. Rank-0 layouts are one row of one element.
    pub fn rows(&self) -> Rows<'_> {
        match self.dims().last() {
            None => Rows { layout: self, rows: 1, inner_len: 1, inner_stride: 1 },
            Some(&n) => Rows {
                layout: self,
                rows: self.elem_count().checked_div(n).unwrap_or(0),
                inner_len: n,
                inner_stride: *self.strides.last().unwrap(),
            },
        }
    }
}

/// Row decomposition of a layout, see [`Layout::rows`].
#[derive(Clone, Copy, Debug)]
pub struct Rows<'a> {
    layout: &'a Layout,
    /// Number of rows (product of all but the last dimension).
    pub rows: usize,
    /// Length of each row (last dimension).
    pub inner_len: usize,
    /// Stride between consecutive elements of a row.
    pub inner_stride: usize,
}

impl Rows<'_> {
    /// Storage offset of the first element of row `r`.
    #[inline]
    pub fn row_offset(&self, mut r: usize) -> usize {
        let dims = self.layout.dims();
        let strides = self.layout.strides();
        let mut off = self.layout.offset;
        let n = dims.len();
        if n == 0 {
            return off;
        }
        for k in (0..n - 1).rev() {
            let d = dims[k];
            if d > 1 {
                off += (r % d) * strides[k];
                r /= d;
            }
        }
        off
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_and_offsets() {
        let l = Layout::contiguous([2, 3]);
        let t = l.transpose(0, 1);
        assert_eq!(t.dims(), &[3, 2]);
        assert!(!t.is_contiguous());
        // t[2][1] == l[1][2] == 5
        assert_eq!(t.offset_of(&[2, 1]), 5);
        assert_eq!(t.offset_of_linear(5), 5);
        assert_eq!(t.offset_of_linear(1), 3);
    }

    #[test]
    fn broadcast_and_narrow() {
        let l = Layout::contiguous([3, 1]);
        let b = l.broadcast_as(&Shape::from([2, 3, 4]), "t").unwrap();
        assert_eq!(b.strides(), &[0, 1, 0]);
        let n = Layout::contiguous([4, 5]).narrow(1, 2, 3, "t").unwrap();
        assert_eq!(n.offset(), 2);
        assert_eq!(n.offset_of(&[1, 0]), 7);
        assert!(Layout::contiguous([4, 5]).narrow(1, 3, 3, "narrow").is_err());
    }

    #[test]
    fn rows_cover_all_elements() {
        let l = Layout::contiguous([2, 3, 4]).permute(&[2, 0, 1], "t").unwrap();
        let rows = l.rows();
        let mut all = vec![];
        for r in 0..rows.rows {
            for j in 0..rows.inner_len {
                all.push(rows.row_offset(r) + j * rows.inner_stride);
            }
        }
        let lin: Vec<usize> = (0..24).map(|i| l.offset_of_linear(i)).collect();
        assert_eq!(all, lin);
    }
}
