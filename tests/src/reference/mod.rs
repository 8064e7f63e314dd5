//! Naive, obviously-correct reference implementations of the ela-core ops.
//!
//! Everything here works on [`RefTensor`], a row-major `Vec<f64>` with an explicit shape, and is
//! written as plain loops over multi-indices: no strides tricks, no blocking, no parallelism.
//! Speed is irrelevant; the point is that each function can be checked by reading it. The
//! property tests in `tests/core_forward_*.rs` compare every tensor op, on every backend, against
//! these.
//!
//! This module holds [`RefTensor`] and its index helpers; the op families live in submodules and
//! are re-exported here, so every reference is reached as `ela_tests::reference::NAME`.

mod conv;
mod elementwise;
mod index;
mod matmul;
mod nn;
mod pool;
mod reduce;
mod rng;

pub use conv::*;
pub use elementwise::*;
pub use index::*;
pub use matmul::*;
pub use nn::*;
pub use pool::*;
pub use reduce::*;
pub use rng::*;

/// A dense row-major f64 tensor with an explicit shape (rank 0 = one element).
#[derive(Clone, Debug, PartialEq)]
pub struct RefTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Elements in row-major order; `data.len() == shape.iter().product()`.
    pub data: Vec<f64>,
}

/// The normwise relative error `|a - b| / |b|` (Euclidean norms over all elements; `b` is the
/// reference).
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    num / den.max(f64::MIN_POSITIVE)
}

/// Number of elements of a shape (1 for rank 0).
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Row-major flat position of a multi-index.
pub fn ravel(shape: &[usize], idx: &[usize]) -> usize {
    assert_eq!(shape.len(), idx.len(), "index rank");
    let mut flat = 0;
    for (d, (&n, &i)) in shape.iter().zip(idx).enumerate() {
        assert!(i < n, "index {i} out of range for axis {d} of size {n}");
        flat = flat * n + i;
    }
    flat
}

/// Multi-index of a row-major flat position.
pub fn unravel(shape: &[usize], mut flat: usize) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = flat % shape[d];
        flat /= shape[d];
    }
    idx
}

/// Every multi-index of `shape` in row-major order.
pub fn indices(shape: &[usize]) -> Vec<Vec<usize>> {
    (0..numel(shape)).map(|i| unravel(shape, i)).collect()
}

/// Resolves a numpy-style axis (negative counts from the back) against `rank`.
pub fn norm_axis(axis: isize, rank: usize) -> Option<usize> {
    let a = if axis < 0 { axis + rank as isize } else { axis };
    (a >= 0 && (a as usize) < rank).then_some(a as usize)
}

impl RefTensor {
    /// A tensor from its parts (panics when the lengths disagree: reference misuse).
    pub fn new(shape: Vec<usize>, data: Vec<f64>) -> Self {
        assert_eq!(numel(&shape), data.len(), "RefTensor::new: shape {shape:?} vs {} values", data.len());
        RefTensor { shape, data }
    }

    /// A tensor of `value`.
    pub fn full(shape: &[usize], value: f64) -> Self {
        RefTensor { shape: shape.to_vec(), data: vec![value; numel(shape)] }
    }

    /// Zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Self::full(shape, 0.0)
    }

    /// `out[idx] = f(idx)` for every multi-index.
    pub fn from_fn(shape: &[usize], mut f: impl FnMut(&[usize]) -> f64) -> Self {
        let data = indices(shape).iter().map(|i| f(i)).collect();
        RefTensor { shape: shape.to_vec(), data }
    }

    /// Rank.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Element at a multi-index.
    pub fn get(&self, idx: &[usize]) -> f64 {
        self.data[ravel(&self.shape, idx)]
    }

    /// Mutable element at a multi-index.
    pub fn at_mut(&mut self, idx: &[usize]) -> &mut f64 {
        let i = ravel(&self.shape, idx);
        &mut self.data[i]
    }

    /// Elementwise map.
    pub fn map(&self, f: impl Fn(f64) -> f64) -> Self {
        RefTensor { shape: self.shape.clone(), data: self.data.iter().map(|&v| f(v)).collect() }
    }

    /// The same data under another shape of the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Self {
        RefTensor::new(shape.to_vec(), self.data.clone())
    }
}
