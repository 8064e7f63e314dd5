//! Shapes and axis arguments.

use crate::error::{Error, Result};

/// The most elements any shape may describe: `isize::MAX / 8`, about 1.15e18 (2^60). A buffer's
/// bytes must fit in `isize::MAX` (the most Rust can allocate), and at 8 bytes per element (the
/// widest dtype) this bound keeps every dtype inside it, so a shape that passes is addressable
/// whatever its dtype and no byte count derived from it can overflow.
pub const MAX_ELEMENTS: usize = isize::MAX as usize / 8;

/// The product of `dims`, or `None` when the product of the *nonzero* dimensions exceeds
/// [`MAX_ELEMENTS`]. Zeros are skipped in that bound on purpose: kernels and ops multiply
/// sub-ranges of a shape (the rows before an axis, a reduced shape), and `[0, 2^40, 2^40]`,
/// although empty, has a `[2^40, 2^40]` reduction that must not pass unchecked.
pub fn checked_product(dims: &[usize]) -> Option<usize> {
    let bound = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d.max(1)))?;
    (bound <= MAX_ELEMENTS).then(|| if dims.contains(&0) { 0 } else { bound })
}

/// The extent of every dimension of a tensor, outermost first.
///
/// A rank-0 shape (`[]`) describes a scalar with one element; any zero
/// dimension makes the tensor empty.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    /// A shape from its dimensions.
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }

    /// The shape of a scalar.
    pub fn scalar() -> Self {
        Shape(Vec::new())
    }

    /// The dimensions, outermost first.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Number of elements (1 for a scalar, 0 when any dimension is 0). Saturates at
    /// `usize::MAX` for a shape beyond [`MAX_ELEMENTS`], so a wrapped product can never pass
    /// for a small (or empty) one; every tensor's shape was checked with [`Shape::check_size`]
    /// when it was made, so for them this is exact.
    pub fn elem_count(&self) -> usize {
        self.checked_elem_count().unwrap_or(usize::MAX)
    }

    /// Number of elements, or `None` when the product overflows or exceeds [`MAX_ELEMENTS`].
    pub fn checked_elem_count(&self) -> Option<usize> {
        checked_product(&self.0)
    }

    /// Number of elements, or [`Error::TooLarge`] naming `op` and this shape when it exceeds
    /// [`MAX_ELEMENTS`]. Every op that makes a tensor of a new, possibly larger shape calls this
    /// before it allocates.
    pub fn check_size(&self, op: &'static str) -> Result<usize> {
        self.checked_elem_count().ok_or_else(|| Error::TooLarge { op, shape: self.clone() })
    }

    /// A shape from dimensions computed by an op, checked with [`Shape::check_size`].
    pub fn checked(dims: impl Into<Vec<usize>>, op: &'static str) -> Result<Shape> {
        let s = Shape(dims.into());
        s.check_size(op)?;
        Ok(s)
    }

    /// Extent of `axis`, checked.
    pub fn dim<D: Dim>(&self, axis: D, op: &'static str) -> Result<usize> {
        Ok(self.0[axis.to_index(self, op)?])
    }

    /// Row-major (C order) strides of a contiguous tensor of this shape.
    pub fn contiguous_strides(&self) -> Vec<usize> {
        let mut strides = vec![0; self.0.len()];
        let mut acc = 1usize;
        for (s, &d) in strides.iter_mut().zip(&self.0).rev() {
            *s = acc;
            // Saturating: only an unchecked shape could overflow, and its strides are never used.
            acc = acc.saturating_mul(d.max(1));
        }
        strides
    }

    /// The numpy broadcast of two shapes: align trailing dimensions; each pair must be equal or
    /// contain a 1.
    pub fn broadcast_with(&self, other: &Shape, op: &'static str) -> Result<Shape> {
        let (a, b) = (&self.0, &other.0);
        let rank = a.len().max(b.len());
        let mut out = vec![0; rank];
        for i in 0..rank {
            let da = if i < rank - a.len() { 1 } else { a[i - (rank - a.len())] };
            let db = if i < rank - b.len() { 1 } else { b[i - (rank - b.len())] };
            out[i] = if da == db || db == 1 {
                da
            } else if da == 1 {
                db
            } else {
                return Err(Error::Broadcast { op, lhs: self.clone(), rhs: other.clone() });
            };
        }
        // Broadcasting multiplies sizes: [n, 1] with [1, n] has n^2 elements.
        Shape::checked(out, op)
    }

    /// A copy with `axis` removed.
    pub fn remove(&self, axis: usize) -> Shape {
        let mut d = self.0.clone();
        d.remove(axis);
        Shape(d)
    }

    /// A copy with dimension `axis` set to `size`.
    pub fn with_dim(&self, axis: usize, size: usize) -> Shape {
        let mut d = self.0.clone();
        d[axis] = size;
        Shape(d)
    }

    /// Splits `[.., m, n]` into (batch dims, m, n); errors for rank < 2.
    pub fn matrix_dims(&self, op: &'static str) -> Result<(&[usize], usize, usize)> {
        let r = self.rank();
        if r < 2 {
            return Err(Error::RankMismatch { op, expected: "at least 2", shape: self.clone() });
        }
        Ok((&self.0[..r - 2], self.0[r - 2], self.0[r - 1]))
    }
}

impl std::fmt::Debug for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl From<Vec<usize>> for Shape {
    fn from(v: Vec<usize>) -> Self {
        Shape(v)
    }
}
impl From<&[usize]> for Shape {
    fn from(v: &[usize]) -> Self {
        Shape(v.to_vec())
    }
}
impl From<&Vec<usize>> for Shape {
    fn from(v: &Vec<usize>) -> Self {
        Shape(v.clone())
    }
}
impl<const N: usize> From<[usize; N]> for Shape {
    fn from(v: [usize; N]) -> Self {
        Shape(v.to_vec())
    }
}
impl From<&Shape> for Shape {
    fn from(s: &Shape) -> Self {
        s.clone()
    }
}
impl From<()> for Shape {
    fn from(_: ()) -> Self {
        Shape(Vec::new())
    }
}
impl From<usize> for Shape {
    fn from(d: usize) -> Self {
        Shape(vec![d])
    }
}

/// An axis argument: a `usize` counts from the front, a negative `isize`/`i32` from the back
/// (`-1` is the last axis), as in numpy.
pub trait Dim: Copy + std::fmt::Debug {
    /// The axis as an index into `shape.dims()`, or [`Error::Axis`].
    fn to_index(self, shape: &Shape, op: &'static str) -> Result<usize>;
    /// As [`Dim::to_index`] but for inserting a new axis (valid range is one larger).
    fn to_index_plus_one(self, shape: &Shape, op: &'static str) -> Result<usize>;
}

fn signed_axis(axis: isize, rank: usize, shape: &Shape, op: &'static str) -> Result<usize> {
    let idx = if axis < 0 { axis + rank as isize } else { axis };
    if idx < 0 || idx >= rank as isize {
        return Err(Error::Axis { op, axis, shape: shape.clone() });
    }
    Ok(idx as usize)
}

/// An unsigned axis counts from the front only: one past the rank is an error, however large
/// (a cast to `isize` would turn values from 2^63 on into negative axes, counted from the back).
fn unsigned_axis(axis: usize, rank: usize, shape: &Shape, op: &'static str) -> Result<usize> {
    if axis < rank {
        return Ok(axis);
    }
    Err(Error::Axis { op, axis: isize::try_from(axis).unwrap_or(isize::MAX), shape: shape.clone() })
}

impl Dim for usize {
    fn to_index(self, shape: &Shape, op: &'static str) -> Result<usize> {
        unsigned_axis(self, shape.rank(), shape, op)
    }
    fn to_index_plus_one(self, shape: &Shape, op: &'static str) -> Result<usize> {
        unsigned_axis(self, shape.rank() + 1, shape, op)
    }
}
impl Dim for isize {
    fn to_index(self, shape: &Shape, op: &'static str) -> Result<usize> {
        signed_axis(self, shape.rank(), shape, op)
    }
    fn to_index_plus_one(self, shape: &Shape, op: &'static str) -> Result<usize> {
        signed_axis(self, shape.rank() + 1, shape, op)
    }
}
impl Dim for i32 {
    fn to_index(self, shape: &Shape, op: &'static str) -> Result<usize> {
        signed_axis(self as isize, shape.rank(), shape, op)
    }
    fn to_index_plus_one(self, shape: &Shape, op: &'static str) -> Result<usize> {
        signed_axis(self as isize, shape.rank() + 1, shape, op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsigned_axes_past_the_rank_are_errors() {
        let s = Shape::from([3, 4]);
        assert_eq!(1usize.to_index(&s, "t").unwrap(), 1);
        assert_eq!(2usize.to_index_plus_one(&s, "t").unwrap(), 2);
        for axis in [2usize, usize::MAX, usize::MAX / 2 + 1] {
            let e = axis.to_index(&s, "sum").unwrap_err().to_string();
            assert!(e.contains("sum"), "{e}");
        }
        assert!((-1isize).to_index(&s, "t").unwrap() == 1);
    }

    #[test]
    fn broadcast_rules() {
        let a = Shape::from([3, 1, 5]);
        let b = Shape::from([4, 1]);
        assert_eq!(a.broadcast_with(&b, "t").unwrap(), Shape::from([3, 4, 5]));
        let err = Shape::from([3]).broadcast_with(&Shape::from([4]), "add").unwrap_err();
        assert!(err.to_string().contains("[3]") && err.to_string().contains("[4]"));
    }

    #[test]
    fn negative_axes() {
        let s = Shape::from([2, 3, 4]);
        assert_eq!((-1isize).to_index(&s, "t").unwrap(), 2);
        assert_eq!(0usize.to_index(&s, "t").unwrap(), 0);
        assert!(3usize.to_index(&s, "t").is_err());
        assert!((-4isize).to_index(&s, "t").is_err());
    }

    #[test]
    fn strides() {
        assert_eq!(Shape::from([2, 3, 4]).contiguous_strides(), vec![12, 4, 1]);
        assert_eq!(Shape::scalar().elem_count(), 1);
        assert_eq!(Shape::from([2, 0]).elem_count(), 0);
    }

    #[test]
    fn overflowing_shapes_are_errors_not_wrapped_counts() {
        // 2^32 * 2^32 wraps to 0 in unchecked release arithmetic.
        let s = Shape::from([1usize << 32, 1 << 32]);
        assert_eq!(s.checked_elem_count(), None);
        assert_eq!(s.elem_count(), usize::MAX);
        let e = s.check_size("zeros").unwrap_err().to_string();
        assert!(e.contains("zeros") && e.contains("[4294967296, 4294967296]"), "{e}");
        assert!(Shape::from([usize::MAX]).check_size("t").is_err());
        assert_eq!(Shape::from([MAX_ELEMENTS]).check_size("t").unwrap(), MAX_ELEMENTS);
        assert!(Shape::from([MAX_ELEMENTS + 1]).check_size("t").is_err());
        // An empty shape is still bounded by its nonzero dimensions (its reductions are not empty).
        assert_eq!(Shape::from([1 << 20, 0, 1 << 20]).check_size("t").unwrap(), 0);
        assert!(Shape::from([1usize << 40, 0, 1 << 40]).check_size("t").is_err());
        let big = Shape::from([1usize << 40, 1]);
        assert!(big.broadcast_with(&Shape::from([1 << 40]), "add").is_err());
    }
}
