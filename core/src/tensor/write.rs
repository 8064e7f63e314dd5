//! The one in-place operation: [`Tensor::write_slice`], for buffers that are filled a piece at a
//! time (a key-value cache written one position per decoding step).
//!
//! Tensors are otherwise immutable values whose buffers are shared by clones and views. Writing
//! into a shared buffer would change every tensor that shares it, so the write is refused unless
//! this tensor is the buffer's only owner; the check is `Arc::get_mut`, which cannot be fooled.

use std::sync::Arc;

use super::Tensor;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::shape::Dim;

impl<B: Backend> Tensor<B> {
    /// Overwrite, in place, the slice of `self` at `offset..offset + src.dim(axis)` along `axis`
    /// with `src` (which has `self`'s shape except along `axis`, and its dtype and device).
    ///
    /// `self` must own its buffer exclusively and be that whole buffer (not a view): clone or
    /// view a tensor and neither copy can be written. Allocate the target with
    /// [`Tensor::zeros`] and keep it unshared; read it through views (`narrow`) that are dropped
    /// before the next write.
    ///
    /// ```
    /// # use ela_core::{Cpu, DType, Tensor};
    /// let mut cache = Tensor::zeros([2, 4], DType::F32, &Cpu)?;
    /// let row = Tensor::from_vec(vec![1.0f32, 2.0], [2, 1], &Cpu)?;
    /// cache.write_slice(1usize, 3, &row)?;
    /// assert_eq!(cache.to_vec::<f32>()?, [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 2.0]);
    /// # Ok::<(), ela_core::Error>(())
    /// ```
    pub fn write_slice<D: Dim>(&mut self, axis: D, offset: usize, src: &Self) -> Result<()> {
        const OP: &str = "write_slice";
        let a = axis.to_index(self.shape(), OP)?;
        self.check_same_device(src, OP)?;
        self.check_same_dtype(src, OP)?;
        let len = src.dims().get(a).copied().unwrap_or(0);
        let other_axes_match = src.rank() == self.rank()
            && self.dims().iter().zip(src.dims()).enumerate().all(|(i, (&d, &s))| i == a || d == s);
        if !other_axes_match {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: self.shape().clone(),
                rhs: src.shape().clone(),
                hint: format!("the written tensor must match the target on every axis but {a}"),
            });
        }
        if offset.checked_add(len).is_none_or(|end| end > self.dims()[a]) {
            return Err(Error::Index {
                op: OP,
                index: offset.saturating_add(len),
                size: self.dims()[a],
                axis: a,
                shape: self.shape().clone(),
            });
        }
        if !self.is_exact_buffer() {
            return Err(Error::invalid(
                OP,
                format!(
                    "the target {:?} is a view into a larger buffer; write into a tensor that is its whole buffer \
                     (e.g. from Tensor::zeros)",
                    self.shape()
                ),
            ));
        }
        let dst_layout = self.layout().narrow(a, offset, len, OP)?;
        let device = self.device().clone();
        let storage = Arc::get_mut(&mut self.storage).ok_or_else(|| {
            Error::invalid(
                OP,
                "the target's buffer is shared with another tensor (a clone or a view); writing would change that \
                 tensor too: drop the other handles first, or write into a copy",
            )
        })?;
        device.copy_into(storage, &dst_layout, src.storage(), src.layout())
    }
}
