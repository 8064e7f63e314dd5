//! Fused optimizer updates on tensors.

use super::Tensor;
use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::op::{AdamWOperands, AdamWStep, AdamWUpdated};

/// One entry of [`Tensor::adamw_update_many`]: `(p, g, m, v, step)`.
pub type AdamWArgs<'a, B> = (&'a Tensor<B>, &'a Tensor<B>, &'a Tensor<B>, &'a Tensor<B>, AdamWStep);

impl<B: Backend> Tensor<B> {
    /// One fused AdamW update of the parameter `self` with gradient `g` and moments `m`, `v`
    /// (all of one shape, one device, f32 or f64 alike): returns `(p', m', v')` as
    /// [`AdamWStep`] defines them, in one pass over memory.
    pub fn adamw_update(&self, g: &Self, m: &Self, v: &Self, step: &AdamWStep) -> Result<(Self, Self, Self)> {
        self.check_adamw_operands(g, m, v, "adamw_update")?;
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

    /// [`Tensor::adamw_update`] of several parameters at once, each `(p, g, m, v, step)` with its
    /// own scalars: returns `(p', m', v')` per entry, in order, the same values bit for bit as
    /// updating them one at a time. The point is the launch count: the CUDA backend updates up to
    /// a few dozen parameters per kernel launch instead of one (docs/nn.md, "Multi-tensor
    /// updates").
    ///
    /// ```
    /// # use ela_core::{AdamWStep, Cpu, Tensor};
    /// let p = Tensor::from_vec(vec![1.0f32, -1.0], [2], &Cpu)?;
    /// let z = p.zeros_like()?;
    /// let s = AdamWStep { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, decay: 1.0, bc1: 0.1, bc2: 0.001 };
    /// let out = Tensor::adamw_update_many(&[(&p, &p, &z, &z, s), (&p, &p, &z, &z, s)])?;
    /// assert_eq!(out[0].0.to_vec::<f32>()?, p.adamw_update(&p, &z, &z, &s)?.0.to_vec::<f32>()?);
    /// # Ok::<(), ela_core::Error>(())
    /// ```
    pub fn adamw_update_many(items: &[AdamWArgs<'_, B>]) -> Result<Vec<AdamWUpdated<Self>>> {
        const OP: &str = "adamw_update_many";
        let Some(first) = items.first() else { return Ok(Vec::new()) };
        let mut owned = Vec::with_capacity(items.len());
        for &(p, g, m, v, step) in items {
            p.check_adamw_operands(g, m, v, OP)?;
            first.0.check_same_device(p, OP)?;
            let c = |t: &Self| t.contiguous();
            owned.push((c(p)?, c(g)?, c(m)?, c(v)?, step));
        }
        let ops: Vec<_> = owned
            .iter()
            .map(|(p, g, m, v, step)| AdamWOperands {
                p: p.storage(),
                g: g.storage(),
                m: m.storage(),
                v: v.storage(),
                n: p.elem_count(),
                step: *step,
            })
            .collect();
        let dev = first.0.device();
        let out = dev.adamw_update_many(&ops)?;
        if out.len() != items.len() {
            return Err(Error::Backend {
                backend: "any",
                op: OP,
                msg: format!("the backend returned {} updates for {} parameters", out.len(), items.len()),
            });
        }
        Ok(out
            .into_iter()
            .zip(items)
            .map(|((po, mo, vo), (p, ..))| {
                let sh = p.shape().clone();
                (
                    Self::from_storage(po, sh.clone(), dev),
                    Self::from_storage(mo, sh.clone(), dev),
                    Self::from_storage(vo, sh, dev),
                )
            })
            .collect())
    }

    /// The sum of the squares of every element of every tensor in `xs` (float dtypes, mixed
    /// allowed), squared and added in f64, as a rank-0 f64 tensor on `device` (0 for an empty
    /// list). A global gradient norm is its square root. The order of the additions is fixed,
    /// so the same inputs give the same bits from run to run; the CUDA backend covers up to a
    /// hundred tensors per launch.
    ///
    /// ```
    /// # use ela_core::{Cpu, Tensor};
    /// let a = Tensor::from_vec(vec![3.0f32], [1], &Cpu)?;
    /// let b = Tensor::from_vec(vec![4.0f64, 0.0], [2], &Cpu)?;
    /// assert_eq!(Tensor::sum_squares_many(&[&a, &b], &Cpu)?.to_scalar()?, 25.0);
    /// # Ok::<(), ela_core::Error>(())
    /// ```
    pub fn sum_squares_many(xs: &[&Self], device: &B) -> Result<Self> {
        const OP: &str = "sum_squares_many";
        let mut owned = Vec::with_capacity(xs.len());
        for x in xs {
            x.check_float(OP)?;
            if !device.same_device(x.device()) {
                return Err(Error::DeviceMismatch { op: OP, lhs: device.device_name(), rhs: x.device().device_name() });
            }
            owned.push(x.contiguous()?);
        }
        let bufs: Vec<_> = owned.iter().map(|x| (x.storage(), x.elem_count())).collect();
        Ok(Self::from_storage(device.sum_squares_many(&bufs)?, crate::shape::Shape::scalar(), device))
    }

    /// The checks of an AdamW update of `self`: f32 or f64, and `g`, `m`, `v` of its shape,
    /// dtype and device.
    fn check_adamw_operands(&self, g: &Self, m: &Self, v: &Self, op: &'static str) -> Result<()> {
        if !matches!(self.dtype(), DType::F32 | DType::F64) {
            return Err(Error::UnsupportedDType {
                op,
                dtype: self.dtype(),
                expected: "f32 or f64 (keep half-precision parameters' updates in f32)",
            });
        }
        for (what, t) in [("gradient", g), ("first moment", m), ("second moment", v)] {
            self.check_same_device(t, op)?;
            if t.shape() != self.shape() || t.dtype() != self.dtype() {
                return Err(Error::ShapeMismatch {
                    op,
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
        Ok(())
    }
}
