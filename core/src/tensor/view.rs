//! Shape and view operations. Everything here except `reshape` of a non-contiguous tensor and
//! `flatten` of one is a view: it returns a new layout over the same buffer.

use super::Tensor;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::shape::{Dim, Shape};

impl<B: Backend> Tensor<B> {
    /// The same elements under a new shape with the same element count. One dimension may be
    /// given as `usize::MAX` to be inferred. Copies only when the tensor is not contiguous.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Self> {
        let mut dims = shape.into().dims().to_vec();
        let n = self.elem_count();
        let holes = dims.iter().filter(|&&d| d == usize::MAX).count();
        if holes > 1 {
            return Err(Error::invalid("reshape", "at most one dimension can be inferred (usize::MAX)"));
        }
        if holes == 1 {
            let known_dims: Vec<usize> = dims.iter().copied().filter(|&d| d != usize::MAX).collect();
            let known = crate::shape::checked_product(&known_dims)
                .ok_or_else(|| Error::TooLarge { op: "reshape", shape: Shape::from(known_dims.clone()) })?;
            if known == 0 || !n.is_multiple_of(known) {
                return Err(Error::invalid(
                    "reshape",
                    format!(
                        "cannot infer a dimension: {n} elements of shape {} do not divide into {known}",
                        self.shape()
                    ),
                ));
            }
            for d in dims.iter_mut().filter(|d| **d == usize::MAX) {
                *d = n / known;
            }
        }
        let shape = Shape::from(dims);
        if shape.elem_count() != n {
            return Err(Error::ElementCount { op: "reshape", shape, got: n, from: Some(self.shape().clone()) });
        }
        match self.layout().reshape_view(&shape) {
            Some(l) => Ok(self.with_layout(l)),
            None => self.contiguous()?.reshape(shape),
        }
    }

    /// Merge all axes into one.
    pub fn flatten_all(&self) -> Result<Self> {
        self.reshape(self.elem_count())
    }

    /// Merge axes `start..=end` into one.
    pub fn flatten<D: Dim>(&self, start: D, end: D) -> Result<Self> {
        let (s, e) = (start.to_index(self.shape(), "flatten")?, end.to_index(self.shape(), "flatten")?);
        if s > e {
            return Err(Error::invalid("flatten", format!("start axis {s} is after end axis {e}")));
        }
        let d = self.dims();
        let mut nd = d[..s].to_vec();
        nd.push(d[s..=e].iter().product());
        nd.extend_from_slice(&d[e + 1..]);
        self.reshape(nd)
    }

    /// Swap two axes (a view).
    pub fn transpose<D: Dim>(&self, a: D, b: D) -> Result<Self> {
        let (a, b) = (a.to_index(self.shape(), "transpose")?, b.to_index(self.shape(), "transpose")?);
        Ok(self.with_layout(self.layout().transpose(a, b)))
    }

    /// Swap the last two axes (a view): the matrix transpose of every batch entry.
    pub fn t(&self) -> Result<Self> {
        if self.rank() < 2 {
            return Err(Error::RankMismatch { op: "t", expected: "at least 2", shape: self.shape().clone() });
        }
        self.transpose(-2isize, -1isize)
    }

    /// Reorder axes: output axis `i` is input axis `perm[i]` (a view).
    pub fn permute(&self, perm: &[usize]) -> Result<Self> {
        Ok(self.with_layout(self.layout().permute(perm, "permute")?))
    }

    /// Elements `start..start+len` along `axis` (a view).
    pub fn narrow<D: Dim>(&self, axis: D, start: usize, len: usize) -> Result<Self> {
        let a = axis.to_index(self.shape(), "narrow")?;
        Ok(self.with_layout(self.layout().narrow(a, start, len, "narrow")?))
    }

    /// Split into pieces of `size` along `axis` (the last may be smaller); views.
    pub fn split<D: Dim>(&self, size: usize, axis: D) -> Result<Vec<Self>> {
        let a = axis.to_index(self.shape(), "split")?;
        if size == 0 {
            return Err(Error::invalid("split", "piece size must be positive"));
        }
        let n = self.dims()[a];
        (0..n).step_by(size).map(|s| self.narrow(a, s, size.min(n - s))).collect()
    }

    /// Split into `chunks` nearly equal pieces along `axis` (views); like PyTorch's `chunk`.
    pub fn chunk<D: Dim>(&self, chunks: usize, axis: D) -> Result<Vec<Self>> {
        let a = axis.to_index(self.shape(), "chunk")?;
        if chunks == 0 {
            return Err(Error::invalid("chunk", "number of chunks must be positive"));
        }
        let n = self.dims()[a];
        self.split(n.div_ceil(chunks).max(1), a)
    }

    /// Broadcast to `shape` (a view with stride-0 axes).
    pub fn broadcast_as(&self, shape: impl Into<Shape>) -> Result<Self> {
        Ok(self.with_layout(self.layout().broadcast_as(&shape.into(), "broadcast_as")?))
    }

    /// Insert an axis of size 1 (a view). `axis` may equal the rank (append).
    pub fn unsqueeze<D: Dim>(&self, axis: D) -> Result<Self> {
        let a = axis.to_index_plus_one(self.shape(), "unsqueeze")?;
        Ok(self.with_layout(self.layout().unsqueeze(a)))
    }

    /// Remove an axis of size 1 (a view).
    pub fn squeeze<D: Dim>(&self, axis: D) -> Result<Self> {
        let a = axis.to_index(self.shape(), "squeeze")?;
        if self.dims()[a] != 1 {
            return Err(Error::invalid(
                "squeeze",
                format!("axis {a} has size {} (shape {}), not 1", self.dims()[a], self.shape()),
            ));
        }
        Ok(self.with_layout(self.layout().squeeze(a)))
    }
}
