//! Indexing and assembly: index_select / embedding / index_add, gather / scatter_add, concat,
//! stack, pad, and the causal (tril) mask.
//!
//! Index tensors are `U32`. They are range-checked on the host before any kernel runs, so an
//! out-of-range index is an [`Error::Index`] naming the index, the axis and the shape, never a
//! crash or a silent read of another row. The one exception is work recorded into a CUDA graph
//! ([`Backend::is_capturing`]), whose index values do not exist yet when it is recorded: the
//! kernels skip an out-of-range index there, and the code that writes the graph's inputs checks
//! them (as `ela_models`' graph decoder does for token ids).

use std::sync::Arc;

use super::Tensor;
use crate::backend::Backend;
use crate::cpu::CpuStorage;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::shape::{Dim, Shape};

/// The concatenation of `parts` along `axis` (of shape `out`) as a view, when they already lie
/// side by side in one buffer exactly where a contiguous result would hold them (e.g. the
/// gradients of the heads of a fused q/k/v product, written into one buffer by the ELA backward):
/// then there is nothing to copy. `None` otherwise.
fn adjacent_parts<B: Backend>(parts: &[&Tensor<B>], axis: usize, out: &Shape) -> Option<Tensor<B>> {
    let first = parts.first()?;
    if out.elem_count() == 0 || parts.iter().any(|p| p.elem_count() == 0) {
        return None;
    }
    let whole = Layout::contiguous(out.clone());
    let base = first.layout().offset();
    let mut at = 0;
    for p in parts {
        let placed = Arc::ptr_eq(&p.storage, &first.storage)
            && p.layout().offset() == base + at * whole.strides()[axis]
            && p.dims().iter().zip(p.layout().strides()).zip(whole.strides()).all(|((&n, &s), &w)| n == 1 || s == w);
        if !placed {
            return None;
        }
        at += p.dims()[axis];
    }
    (base + out.elem_count() <= B::storage_len(&first.storage))
        .then(|| first.with_layout(Layout::from_parts(out.clone(), whole.strides().to_vec(), base)))
}

impl<B: Backend> Tensor<B> {
    /// Check that every entry of the `U32` tensor `ids` is `< size`.
    fn check_ids(ids: &Self, size: usize, axis: usize, shape: &Shape, op: &'static str) -> Result<()> {
        ids.check_dtype(DType::U32, op, "u32 indices")?;
        if ids.device().is_capturing() {
            // Values cannot be read while a graph is recorded (`Backend::is_capturing`): the
            // kernels skip out-of-range indices, and the graph's feeder checks what it writes.
            return Ok(());
        }
        if let Some(&bad) = ids.to_vec::<u32>()?.iter().find(|&&i| i as usize >= size) {
            return Err(Error::Index { op, index: bad as usize, size, axis, shape: shape.clone() });
        }
        Ok(())
    }

    /// Entries `ids` (a `U32` vector) along `axis`.
    pub fn index_select<D: Dim>(&self, ids: &Self, axis: D) -> Result<Self> {
        const OP: &str = "index_select";
        let a = axis.to_index(self.shape(), OP)?;
        self.check_same_device(ids, OP)?;
        if ids.rank() != 1 {
            return Err(Error::RankMismatch { op: OP, expected: "1 for the indices", shape: ids.shape().clone() });
        }
        Self::check_ids(ids, self.dims()[a], a, self.shape(), OP)?;
        let out = self.shape().with_dim(a, ids.elem_count());
        out.check_size(OP)?;
        let s = self.device().index_select(self.storage(), self.layout(), a, ids.storage(), ids.layout())?;
        Ok(Self::from_storage(s, out, self.device()))
    }

    /// Embedding lookup: rows of the table `self [vocab, dim]` for `ids` of any shape; the
    /// output has shape `ids.shape + [dim]`.
    pub fn embedding(&self, ids: &Self) -> Result<Self> {
        if self.rank() != 2 {
            return Err(Error::RankMismatch {
                op: "embedding",
                expected: "2 ([vocab, dim]) for the table",
                shape: self.shape().clone(),
            });
        }
        self.check_same_device(ids, "embedding")?;
        // Checked here (once) so that errors name `embedding`, not an inner op.
        Self::check_ids(ids, self.dims()[0], 0, self.shape(), "embedding")?;
        let mut out = ids.dims().to_vec();
        out.push(self.dims()[1]);
        let out = Shape::checked(out, "embedding")?;
        let flat = ids.flatten_all()?;
        let s = self.device().index_select(self.storage(), self.layout(), 0, flat.storage(), flat.layout())?;
        Ok(Self::from_storage(s, out, self.device()))
    }

    /// Adjoint of [`Tensor::index_select`]: zeros of `out_shape` with slice `i` of `self` added
    /// at `ids[i]` along `axis` (repeated indices accumulate).
    pub fn index_add<D: Dim>(&self, ids: &Self, axis: D, out_shape: &Shape) -> Result<Self> {
        self.index_add_impl(ids, axis, out_shape, true)
    }

    /// [`Tensor::index_add`] for indices that an earlier op has already range-checked, e.g. in
    /// the backward of [`Tensor::index_select`] with the forward's `ids`. It skips the host-side
    /// read of `ids`, which on a GPU waits for all queued work (a stall in the middle of a
    /// backward pass). Shapes and dtypes are still checked; an out-of-range index would be
    /// skipped by the kernels, never written out of bounds.
    pub fn index_add_prechecked<D: Dim>(&self, ids: &Self, axis: D, out_shape: &Shape) -> Result<Self> {
        self.index_add_impl(ids, axis, out_shape, false)
    }

    fn index_add_impl<D: Dim>(&self, ids: &Self, axis: D, out_shape: &Shape, check: bool) -> Result<Self> {
        const OP: &str = "index_add";
        self.check_float(OP)?;
        out_shape.check_size(OP)?;
        let a = axis.to_index(self.shape(), OP)?;
        if out_shape.rank() != self.rank()
            || out_shape.remove(a) != self.shape().remove(a)
            || ids.elem_count() != self.dims()[a]
        {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: self.shape().clone(),
                rhs: out_shape.clone(),
                hint: format!("source and output must agree outside axis {a}, and the source has one slice per index"),
            });
        }
        if check {
            Self::check_ids(ids, out_shape.dims()[a], a, out_shape, OP)?;
        } else {
            ids.check_dtype(DType::U32, OP, "u32 indices")?;
        }
        let x = self.contiguous()?;
        let s = self.device().index_add(x.storage(), x.shape(), a, ids.storage(), ids.layout(), out_shape)?;
        Ok(Self::from_storage(s, out_shape.clone(), self.device()))
    }

    fn check_gather_shapes(&self, ids: &Self, a: usize, op: &'static str) -> Result<()> {
        self.check_same_device(ids, op)?;
        if ids.rank() != self.rank() || ids.shape().remove(a) != self.shape().remove(a) {
            return Err(Error::ShapeMismatch {
                op,
                lhs: self.shape().clone(),
                rhs: ids.shape().clone(),
                hint: format!("indices must have the source's shape except along axis {a}"),
            });
        }
        Self::check_ids(ids, self.dims()[a], a, self.shape(), op)
    }

    /// `out[.., i, ..] = self[.., ids[.., i, ..], ..]` along `axis` (numpy `take_along_axis`).
    pub fn gather<D: Dim>(&self, ids: &Self, axis: D) -> Result<Self> {
        let a = axis.to_index(self.shape(), "gather")?;
        self.check_gather_shapes(ids, a, "gather")?;
        let s = self.device().gather(self.storage(), self.layout(), a, ids.storage(), ids.layout())?;
        Ok(Self::from_storage(s, ids.shape().clone(), self.device()))
    }

    /// `self` plus every element of `src` added at the index `ids` gives along `axis`
    /// (the adjoint of [`Tensor::gather`]; repeated indices accumulate).
    pub fn scatter_add<D: Dim>(&self, ids: &Self, src: &Self, axis: D) -> Result<Self> {
        const OP: &str = "scatter_add";
        let a = axis.to_index(self.shape(), OP)?;
        self.check_gather_shapes(ids, a, OP)?;
        self.check_same_dtype(src, OP)?;
        if src.shape() != ids.shape() {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: ids.shape().clone(),
                rhs: src.shape().clone(),
                hint: "indices and source must have the same shape".into(),
            });
        }
        let s = self.device().scatter_add(
            self.storage(),
            self.layout(),
            a,
            ids.storage(),
            ids.layout(),
            src.storage(),
            src.layout(),
        )?;
        Ok(Self::from_storage(s, self.shape().clone(), self.device()))
    }

    /// Concatenate along `axis`; all other dimensions must agree.
    pub fn concat<D: Dim>(parts: &[&Self], axis: D) -> Result<Self> {
        const OP: &str = "concat";
        let first = parts.first().ok_or_else(|| Error::invalid(OP, "needs at least one tensor"))?;
        let a = axis.to_index(first.shape(), OP)?;
        let mut total = 0;
        for p in parts {
            first.check_same_device(p, OP)?;
            first.check_same_dtype(p, OP)?;
            if p.rank() != first.rank() || p.shape().remove(a) != first.shape().remove(a) {
                return Err(Error::ShapeMismatch {
                    op: OP,
                    lhs: first.shape().clone(),
                    rhs: p.shape().clone(),
                    hint: format!("all tensors must have the same shape except along axis {a}"),
                });
            }
            total = usize::checked_add(total, p.dims()[a])
                .ok_or_else(|| Error::TooLarge { op: OP, shape: first.shape().with_dim(a, usize::MAX) })?;
        }
        let out = first.shape().with_dim(a, total);
        out.check_size(OP)?;
        if let Some(view) = adjacent_parts(parts, a, &out) {
            return Ok(view);
        }
        let views: Vec<_> = parts.iter().map(|p| (p.storage(), p.layout())).collect();
        let s = first.device().concat(&views, a)?;
        Ok(Self::from_storage(s, out, first.device()))
    }

    /// Stack equal-shape tensors along a new axis.
    pub fn stack<D: Dim>(parts: &[&Self], axis: D) -> Result<Self> {
        let first = parts.first().ok_or_else(|| Error::invalid("stack", "needs at least one tensor"))?;
        let a = axis.to_index_plus_one(first.shape(), "stack")?;
        let ups: Vec<Self> = parts.iter().map(|p| p.unsqueeze(a)).collect::<Result<_>>()?;
        let refs: Vec<&Self> = ups.iter().collect();
        Self::concat(&refs, a)
    }

    /// Pad every axis with `value`: `pads[i] = (before, after)`, one pair per axis.
    pub fn pad(&self, pads: &[(usize, usize)], value: f64) -> Result<Self> {
        if pads.len() != self.rank() {
            return Err(Error::invalid(
                "pad",
                format!(
                    "got {} (before, after) pairs for a tensor of rank {} (shape {})",
                    pads.len(),
                    self.rank(),
                    self.shape()
                ),
            ));
        }
        // Saturating: an overflowing side makes the shape too large, which check_size reports.
        let out: Vec<usize> =
            self.dims().iter().zip(pads).map(|(&d, &(a, b))| d.saturating_add(a).saturating_add(b)).collect();
        let out = Shape::checked(out, "pad")?;
        let s = self.device().pad(self.storage(), self.layout(), pads, value)?;
        Ok(Self::from_storage(s, out, self.device()))
    }

    /// The causal mask `[rows, cols]`: 1 where `col <= row + diagonal`, else 0 (`U8`).
    pub fn tril_mask(rows: usize, cols: usize, diagonal: isize, device: &B) -> Result<Self> {
        Shape::from([rows, cols]).check_size("tril_mask")?;
        let v: Vec<u8> =
            // Saturating: a diagonal beyond every row keeps every column (or none), whatever its size.
            (0..rows).flat_map(|r| (0..cols).map(move |c| (c as isize <= (r as isize).saturating_add(diagonal)) as u8)).collect();
        Self::from_cpu_storage(&CpuStorage::U8(v), [rows, cols], device)
    }
}

#[cfg(test)]
mod tests {
    use crate::{Cpu, DType, Rng, Tensor};

    /// Parts that already lie side by side in one buffer concatenate to a view of it; any other
    /// parts (out of order, from two buffers) are copied. The values are the same either way.
    #[test]
    fn concat_of_adjacent_views_is_a_view() {
        let x = Tensor::<Cpu>::randn(0.0, 1.0, [2, 6, 3], DType::F32, &mut Rng::new(1), &Cpu).unwrap();
        let (a, b) = (x.narrow(1, 0, 2).unwrap(), x.narrow(1, 2, 4).unwrap());
        let joined = Tensor::concat(&[&a, &b], 1).unwrap();
        assert!(joined.same_storage(&x) && joined.layout().is_contiguous());
        assert_eq!(joined.to_vec_f64().unwrap(), x.to_vec_f64().unwrap());
        // Size-1 windows (whatever stride their axis has), as the autograd places them.
        let parts: Vec<Tensor<Cpu>> = (0..6).map(|i| x.narrow(1, i, 1).unwrap()).collect();
        let refs: Vec<&Tensor<Cpu>> = parts.iter().collect();
        assert!(Tensor::concat(&refs, 1).unwrap().same_storage(&x));
        // Swapped: a copy, in the order asked for.
        let swapped = Tensor::concat(&[&b, &a], 1).unwrap();
        assert!(!swapped.same_storage(&x));
        let want = Tensor::concat(&[&b.contiguous().unwrap(), &a.contiguous().unwrap()], 1).unwrap();
        assert_eq!(swapped.to_vec_f64().unwrap(), want.to_vec_f64().unwrap());
        // Adjacent along axis 1 but strided in another: a copy.
        let t = x.transpose(0, 2).unwrap();
        let (c, d) = (t.narrow(1, 0, 3).unwrap(), t.narrow(1, 3, 3).unwrap());
        let joined = Tensor::concat(&[&c, &d], 1).unwrap();
        assert!(!joined.same_storage(&x));
        assert_eq!(joined.to_vec_f64().unwrap(), t.to_vec_f64().unwrap());
    }
}
