//! Reductions along an axis (with `keepdim`), whole-tensor sums, cumulative sums, and
//! `sum_to`, the adjoint of broadcasting.

use super::Tensor;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::op::ReduceOp;
use crate::shape::{Dim, Shape};

impl<B: Backend> Tensor<B> {
    /// Apply any [`ReduceOp`] along `axis`; `keepdim` keeps it with size 1.
    pub fn reduce<D: Dim>(&self, op: ReduceOp, axis: D, keepdim: bool) -> Result<Self> {
        self.check_float(op.name())?;
        let a = axis.to_index(self.shape(), op.name())?;
        let s = self.device().reduce(op, self.storage(), self.layout(), a)?;
        let out = if keepdim { self.shape().with_dim(a, 1) } else { self.shape().remove(a) };
        Ok(Self::from_storage(s, out, self.device()))
    }

    /// Sum along `axis`.
    pub fn sum<D: Dim>(&self, axis: D, keepdim: bool) -> Result<Self> {
        self.reduce(ReduceOp::Sum, axis, keepdim)
    }
    /// Mean along `axis`.
    pub fn mean<D: Dim>(&self, axis: D, keepdim: bool) -> Result<Self> {
        let a = axis.to_index(self.shape(), "mean")?;
        let n = self.dims()[a];
        self.sum(a, keepdim)?.mul_scalar(1.0 / n as f64)
    }
    /// Maximum along `axis`.
    pub fn max<D: Dim>(&self, axis: D, keepdim: bool) -> Result<Self> {
        self.reduce(ReduceOp::Max, axis, keepdim)
    }
    /// Minimum along `axis`.
    pub fn min<D: Dim>(&self, axis: D, keepdim: bool) -> Result<Self> {
        self.reduce(ReduceOp::Min, axis, keepdim)
    }
    /// Index of the maximum along `axis` (`U32`, first on ties).
    pub fn argmax<D: Dim>(&self, axis: D, keepdim: bool) -> Result<Self> {
        self.reduce(ReduceOp::ArgMax, axis, keepdim)
    }
    /// Index of the minimum along `axis` (`U32`, first on ties).
    pub fn argmin<D: Dim>(&self, axis: D, keepdim: bool) -> Result<Self> {
        self.reduce(ReduceOp::ArgMin, axis, keepdim)
    }
    /// `log(sum(exp(x)))` along `axis`, computed stably.
    pub fn logsumexp<D: Dim>(&self, axis: D, keepdim: bool) -> Result<Self> {
        self.reduce(ReduceOp::LogSumExp, axis, keepdim)
    }

    /// Sum of all elements, as a rank-0 tensor.
    pub fn sum_all(&self) -> Result<Self> {
        self.flatten_all()?.sum(0usize, false)
    }
    /// Mean of all elements, as a rank-0 tensor.
    pub fn mean_all(&self) -> Result<Self> {
        let n = self.elem_count();
        self.sum_all()?.mul_scalar(1.0 / n as f64)
    }

    /// Cumulative sum along `axis`: inclusive (`y_i = sum_{j<=i} x_j`) or exclusive
    /// (`sum_{j<i}`), and from the end when `reverse`.
    pub fn cumsum<D: Dim>(&self, axis: D, exclusive: bool, reverse: bool) -> Result<Self> {
        self.check_float("cumsum")?;
        let a = axis.to_index(self.shape(), "cumsum")?;
        let s = self.device().cumsum(self.storage(), self.layout(), a, exclusive, reverse)?;
        Ok(Self::from_storage(s, self.shape().clone(), self.device()))
    }

    /// Sum over the axes that broadcasting from `shape` to `self.shape()` created or stretched,
    /// giving a tensor of `shape`: the gradient rule for every broadcast operand.
    pub fn sum_to(&self, shape: &Shape) -> Result<Self> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let (src, tgt) = (self.dims(), shape.dims());
        let lead = src.len().checked_sub(tgt.len()).ok_or_else(|| Error::Broadcast {
            op: "sum_to",
            lhs: self.shape().clone(),
            rhs: shape.clone(),
        })?;
        let mut t = self.clone();
        for _ in 0..lead {
            t = t.sum(0usize, false)?;
        }
        for (i, (&d, &s)) in tgt.iter().zip(&src[lead..]).enumerate() {
            if d == 1 && s != 1 {
                t = t.sum(i, true)?;
            } else if d != s {
                return Err(Error::Broadcast { op: "sum_to", lhs: self.shape().clone(), rhs: shape.clone() });
            }
        }
        Ok(t)
    }
}
