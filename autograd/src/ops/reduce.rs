//! Reductions and scans. `sum`: the gradient is broadcast back over the reduced axis. `max`/`min`:
//! it flows to the (first) arg-extremum only. `logsumexp`: `dx = dy * softmax(x)`. `cumsum`: a
//! cumulative sum in the opposite direction. Derivations: docs/autograd.md#reductions.

use ela_core::{Backend, Dim, ReduceOp, Result};

use crate::var::Var;

impl<B: Backend> Var<B> {
    /// Sum along `axis`.
    pub fn sum<D: Dim>(&self, axis: D, keepdim: bool) -> Result<Self> {
        let x = self.value();
        let a = axis.to_index(x.shape(), "sum")?;
        let y = x.sum(a, keepdim)?;
        Var::record("sum", y, &[self], move |g, _| {
            let g = if keepdim { g.clone() } else { g.unsqueeze(a)? };
            Ok(vec![Some(g.broadcast_as(x.shape().clone())?.contiguous()?)])
        })
    }

    /// Mean along `axis`.
    pub fn mean<D: Dim>(&self, axis: D, keepdim: bool) -> Result<Self> {
        let a = axis.to_index(self.value().shape(), "mean")?;
        let n = self.value().dims()[a];
        self.sum(a, keepdim)?.mul_scalar(1.0 / n as f64)
    }

    /// Sum of all elements (rank 0).
    pub fn sum_all(&self) -> Result<Self> {
        let x = self.value();
        let y = x.sum_all()?;
        Var::record("sum_all", y, &[self], move |g, _| {
            Ok(vec![Some(g.reshape(vec![1; x.rank()])?.broadcast_as(x.shape().clone())?.contiguous()?)])
        })
    }

    /// Mean of all elements (rank 0).
    pub fn mean_all(&self) -> Result<Self> {
        let n = self.value().elem_count();
        self.sum_all()?.mul_scalar(1.0 / n.max(1) as f64)
    }

    fn extremum<D: Dim>(&self, op: ReduceOp, axis: D, keepdim: bool) -> Result<Self> {
        let x = self.value();
        let a = axis.to_index(x.shape(), op.name())?;
        let y = x.reduce(op, a, keepdim)?;
        let arg = if op == ReduceOp::Max { ReduceOp::ArgMax } else { ReduceOp::ArgMin };
        Var::record(op.name(), y, &[self], move |g, _| {
            // Route each output gradient to the position of the winner (first on ties).
            let idx = x.reduce(arg, a, true)?;
            let g = if keepdim { g.clone() } else { g.unsqueeze(a)? };
            Ok(vec![Some(x.zeros_like()?.scatter_add(&idx, &g.contiguous()?, a)?)])
        })
    }

    /// Maximum along `axis` (gradient to the first maximum).
    pub fn max<D: Dim>(&self, axis: D, keepdim: bool) -> Result<Self> {
        self.extremum(ReduceOp::Max, axis, keepdim)
    }

    /// Minimum along `axis` (gradient to the first minimum).
    pub fn min<D: Dim>(&self, axis: D, keepdim: bool) -> Result<Self> {
        self.extremum(ReduceOp::Min, axis, keepdim)
    }

    /// `log(sum(exp(x)))` along `axis`.
    pub fn logsumexp<D: Dim>(&self, axis: D, keepdim: bool) -> Result<Self> {
        let x = self.value();
        let a = axis.to_index(x.shape(), "logsumexp")?;
        let y = x.logsumexp(a, true)?;
        let out = if keepdim { y.clone() } else { y.squeeze(a)? };
        Var::record("logsumexp", out, &[self], move |g, _| {
            let g = if keepdim { g.clone() } else { g.unsqueeze(a)? };
            // d lse / dx_i = exp(x_i - lse) = softmax(x)_i
            Ok(vec![Some(x.sub(&y)?.exp()?.mul(&g)?)])
        })
    }

    /// Cumulative sum along `axis` (see [`ela_core::Tensor::cumsum`]).
    pub fn cumsum<D: Dim>(&self, axis: D, exclusive: bool, reverse: bool) -> Result<Self> {
        let x = self.value();
        let a = axis.to_index(x.shape(), "cumsum")?;
        let y = x.cumsum(a, exclusive, reverse)?;
        // y_i = sum_{j<=i} x_j  =>  dx_j = sum_{i>=j} dy_i: the same scan, reversed.
        Var::record("cumsum", y, &[self], move |g, _| Ok(vec![Some(g.cumsum(a, exclusive, !reverse)?)]))
    }

    /// Sum over broadcast axes down to `shape` (see [`ela_core::Tensor::sum_to`]).
    pub fn sum_to(&self, shape: &ela_core::Shape) -> Result<Self> {
        let x = self.value();
        let y = x.sum_to(shape)?;
        Var::record("sum_to", y, &[self], move |g, _| Ok(vec![Some(g.broadcast_as(x.shape().clone())?.contiguous()?)]))
    }
}
