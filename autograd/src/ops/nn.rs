//! Fused ops with dedicated backward kernels: softmax, log_softmax, RMS norm, layer norm and
//! cross-entropy. Derivations: docs/autograd.md#fused-ops.

use ela_core::{Backend, Dim, Result, Tensor};

use crate::var::Var;

impl<B: Backend> Var<B> {
    fn softmax_impl<D: Dim>(&self, axis: D, log: bool) -> Result<Self> {
        let x = self.value();
        let a = axis.to_index(x.shape(), "softmax")?;
        let y = if log { x.log_softmax(a)? } else { x.softmax(a)? };
        let ys = y.clone();
        let last = x.rank() - 1;
        Var::record(if log { "log_softmax" } else { "softmax" }, y, &[self], move |g, _| {
            // The kernel works on the last axis: move `a` there and back.
            let (yl, gl) =
                if a == last { (ys.clone(), g.clone()) } else { (ys.transpose(a, last)?, g.transpose(a, last)?) };
            let dx = yl.softmax_last_backward(&gl, log)?;
            Ok(vec![Some(if a == last { dx } else { dx.transpose(a, last)? })])
        })
    }

    /// softmax along `axis`: `dx = y * (dy - sum(dy * y))`.
    pub fn softmax<D: Dim>(&self, axis: D) -> Result<Self> {
        self.softmax_impl(axis, false)
    }

    /// log_softmax along `axis`: `dx = dy - softmax(x) * sum(dy)`.
    pub fn log_softmax<D: Dim>(&self, axis: D) -> Result<Self> {
        self.softmax_impl(axis, true)
    }

    /// The SwiGLU gate `silu(self) * up` as one node (one fused kernel each way):
    /// `d self = g * up * silu'(self)`, `d up = g * silu(self)` with
    /// `silu'(a) = s (1 + a (1 - s))`, `s = sigmoid(a)` (docs/autograd.md#swiglu).
    pub fn swiglu(&self, up: &Self) -> Result<Self> {
        let (a, b) = (self.value(), up.value());
        let y = a.swiglu(&b)?;
        Var::record("swiglu", y, &[self, up], move |g, _| {
            let (da, db) = a.swiglu_backward(&b, g)?;
            Ok(vec![Some(da), Some(db)])
        })
    }

    /// The SwiGLU gate of `self [.., 2h] = [gate | up]` (the two projections from one product
    /// with their weights stacked), `silu(gate) * up` `[.., h]`, as one node: the backward
    /// writes `[d gate | d up]` into one gradient of `self`'s shape, which the stacked product's
    /// backward reads as it is (no concatenation of two gradients). Same formulas as
    /// [`Var::swiglu`] (docs/autograd.md#swiglu).
    pub fn swiglu_packed(&self) -> Result<Self> {
        let x = self.value();
        let y = x.swiglu_packed()?;
        Var::record("swiglu_packed", y, &[self], move |g, _| Ok(vec![Some(x.swiglu_packed_backward(g)?)]))
    }

    /// `silu(self + bias)` with `bias [C]` along axis 1, as one node (a convolution's bias and
    /// activation). Forward in one fused kernel; the backward (used when training with it, not
    /// on the inference path it exists for) is composed: with `z = x + b`, `s = sigmoid(z)`,
    /// `dz = g s (1 + z (1 - s))`, `dx = dz` and `db = dz` summed over every axis but 1
    /// (docs/autograd.md#bias-silu).
    pub fn bias_silu(&self, bias: &Self) -> Result<Self> {
        let (x, b) = (self.value(), bias.value());
        let y = x.bias_silu(&b)?;
        Var::record("bias_silu", y, &[self, bias], move |g, _| {
            let c = b.dims()[0];
            let mut shape = vec![1; x.rank()];
            shape[1] = c;
            let z = x.add(&b.reshape(shape)?)?;
            let s = z.sigmoid()?;
            let one_minus_s = s.neg()?.add_scalar(1.0)?;
            let dz = g.mul(&s)?.mul(&z.mul(&one_minus_s)?.add_scalar(1.0)?)?;
            // Sum over batch and spatial axes: move axis 1 first, flatten the rest.
            let db = dz.transpose(0, 1)?.contiguous()?.reshape([c, x.elem_count() / c.max(1)])?.sum(1, false)?;
            Ok(vec![Some(dz), Some(db)])
        })
    }

    /// RMS norm over the last axis with an optional gain `weight [n]`.
    pub fn rms_norm(&self, weight: Option<&Self>, eps: f64) -> Result<Self> {
        let x = self.value();
        let w = weight.map(|w| w.value());
        let (y, rstd) = x.rms_norm_fwd(w.as_ref(), eps)?;
        self.record_rms_norm(weight, y, rstd)
    }

    /// `h = self + other` (same shape and dtype, no broadcasting) and `y = h.rms_norm(weight,
    /// eps)`: `(h, y)`, the same values and gradients as `add` followed by
    /// [`Var::rms_norm`], with both computed in one pass over the rows where the device can
    /// ([`Tensor::add_rms_norm_fwd`]). A pre-norm block's residual stream `h` goes on to the next
    /// sum; `y` feeds the layer.
    pub fn add_rms_norm(&self, other: &Self, weight: Option<&Self>, eps: f64) -> Result<(Self, Self)> {
        let w = weight.map(|w| w.value());
        let (h, y, rstd) = self.value().add_rms_norm_fwd(&other.value(), w.as_ref(), eps)?;
        // The sum's node is `add`'s for operands of one shape: the gradient passes to both.
        let h = Var::record("add", h, &[self, other], |g, needs| {
            Ok(vec![needs[0].then(|| g.clone()), needs[1].then(|| g.clone())])
        })?;
        let y = h.record_rms_norm(weight, y, rstd)?;
        Ok((h, y))
    }

    /// Records `y = rms_norm(self, weight)` computed elsewhere, with its `rstd`.
    fn record_rms_norm(&self, weight: Option<&Self>, y: Tensor<B>, rstd: Tensor<B>) -> Result<Self> {
        let x = self.value();
        let w = weight.map(|w| w.value());
        let inputs: Vec<&Var<B>> = std::iter::once(self).chain(weight).collect();
        // x's other gradients (in a pre-norm block, the residual branch's) are added by the
        // backward kernel as it writes dx: one pass over the rows instead of two
        // (docs/autograd.md#folding).
        Var::record_folding("rms_norm", y, &inputs, 0, move |g, _, pending| {
            let n = *x.dims().last().unwrap();
            let rows = rstd.elem_count();
            let (xc, gc) = (x.contiguous()?, g.contiguous()?);
            let wc = w.as_ref().map(|w| w.contiguous()).transpose()?;
            // The kernel takes the pending gradient as it is when it is x's dtype and a whole buffer.
            let (plus, rest) = match pending {
                Some(p) if p.dtype() == x.dtype() && p.is_exact_buffer() => (Some(p), None),
                other => (None, other),
            };
            let dev = x.device();
            let (dx, dw) = dev.rms_norm_backward(
                xc.storage(),
                wc.as_ref().map(|w| w.storage()),
                rstd.storage(),
                gc.storage(),
                plus.as_ref().map(|p| p.storage()),
                rows,
                n,
            )?;
            let mut dx = Tensor::from_storage(dx, x.shape().clone(), dev);
            if let Some(p) = rest {
                dx = dx.add(&p)?;
            }
            let mut out = vec![Some(dx)];
            if let Some(dw) = dw {
                out.push(Some(Tensor::from_storage(dw, n, dev)));
            }
            Ok(out)
        })
    }

    /// Layer norm over the last axis with optional `weight [n]` and `bias [n]`.
    pub fn layer_norm(&self, weight: Option<&Self>, bias: Option<&Self>, eps: f64) -> Result<Self> {
        let x = self.value();
        let (w, b) = (weight.map(|w| w.value()), bias.map(|b| b.value()));
        let (y, mean, rstd) = x.layer_norm_fwd(w.as_ref(), b.as_ref(), eps)?;
        let inputs: Vec<&Var<B>> = std::iter::once(self).chain(weight).chain(bias).collect();
        let (has_w, has_b) = (weight.is_some(), bias.is_some());
        Var::record("layer_norm", y, &inputs, move |g, _| {
            let n = *x.dims().last().unwrap();
            let rows = rstd.elem_count();
            let (xc, gc) = (x.contiguous()?, g.contiguous()?);
            let wc = w.as_ref().map(|w| w.contiguous()).transpose()?;
            let dev = x.device();
            let (dx, dw, db) = dev.layer_norm_backward(
                xc.storage(),
                wc.as_ref().map(|w| w.storage()),
                mean.storage(),
                rstd.storage(),
                gc.storage(),
                rows,
                n,
            )?;
            let mut out = vec![Some(Tensor::from_storage(dx, x.shape().clone(), dev))];
            if has_w {
                out.push(dw.map(|d| Tensor::from_storage(d, n, dev)));
            }
            if has_b {
                // Without a weight the kernel skips the affine grads; db = sum over rows of dy.
                let db = match db {
                    Some(d) => Tensor::from_storage(d, n, dev),
                    None => g.reshape([rows, n])?.sum(0usize, false)?,
                };
                out.push(Some(db));
            }
            Ok(out)
        })
    }

    /// Mean cross-entropy of logits `[rows, classes]` against `U32` targets `[rows]`, over the
    /// rows whose target is not `ignore_index`. Returns a rank-0 loss.
    pub fn cross_entropy(&self, targets: &Tensor<B>, ignore_index: Option<u32>) -> Result<Self> {
        let x = self.value();
        let (loss_rows, lse) = x.cross_entropy_fwd(targets, ignore_index)?;
        let counted = match ignore_index {
            None => targets.elem_count(),
            Some(ig) => targets.to_vec::<u32>()?.iter().filter(|&&t| t != ig).count(),
        };
        let scale = 1.0 / counted.max(1) as f64;
        let loss = loss_rows.sum_all()?.mul_scalar(scale)?;
        let t = targets.clone();
        Var::record("cross_entropy", loss, &[self], move |g, _| {
            // d mean / d loss_row = scale for every row; times the upstream scalar.
            let dl = g.to_dtype(lse.dtype())?.mul_scalar(scale)?.broadcast_as(lse.shape().clone())?;
            Ok(vec![Some(x.cross_entropy_backward(&t, &lse, &dl, ignore_index)?)])
        })
    }
}
