//! Fused optimizer updates on tensors.

use super::Tensor;
use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::op::AdamWStep;

impl<B: Backend> Tensor<B> {
    /// One fused AdamW update of the parameter `self` with gradient `g` and moments `m`, `v`
    /// (all of one shape, one device, f32 or f64 alike): returns `(p', m', v')` as
    /// [`AdamWStep`] defines them, in one pass over memory.
    pub fn adamw_update(&self, g: &Self, m: &Self, v: &Self, step: &AdamWStep) -> Result<(Self, Self, Self)> {
        const OP: &str = "adamw_update";
        if !matches!(self.dtype(), DType::F32 | DType::F64) {
            return Err(Error::UnsupportedDType {
                op: OP,
                dtype: self.dtype(),
                expected: "f32 or f64 (keep half-precision parameters' updates in f32)",
            });
        }
        for (what, t) in [("gradient", g), ("first moment", m), ("second moment", v)] {
            self.check_same_device(t, OP)?;
            if t.shape() != self.shape() || t.dtype() != self.dtype() {
                return Err(Error::ShapeMismatch {
                    op: OP,
                    lhs: self.shape().clone(),
                    rhs: t.shape().clone(),
                    hint: format!(
                        "the {what} must have the parameter's shape and dtype ({:?}); it is {:?}",
                        self.dtype(),
                        t.dtype()
                    ),
                });
            }
        }
        let c = |t: &Self| t.contiguous();
        let (p, g, m, v) = (c(self)?, c(g)?, c(m)?, c(v)?);
        let dev = self.device();
        let n = self.elem_count();
        let (po, mo, vo) = dev.adamw_update(p.storage(), g.storage(), m.storage(), v.storage(), n, step)?;
        let sh = self.shape().clone();
        Ok((
            Self::from_storage(po, sh.clone(), dev),
            Self::from_storage(mo, sh.clone(), dev),
            Self::from_storage(vo, sh, dev),
        ))
    }
}
