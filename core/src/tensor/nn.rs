//! Fused neural-network kernels: softmax, norms, cross-entropy, top-k. Norms and cross-entropy
//! also return the per-row statistics that their backward passes reuse (`*_fwd` methods).

use super::Tensor;
use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::shape::{Dim, Shape};

impl<B: Backend> Tensor<B> {
    /// Moves `axis` last (a view), so a last-axis kernel can run; returns the axis index.
    fn axis_last<D: Dim>(&self, axis: D, op: &'static str) -> Result<(Self, usize)> {
        let a = axis.to_index(self.shape(), op)?;
        let last = self.rank() - 1;
        Ok((if a == last { self.clone() } else { self.transpose(a, last)? }, a))
    }

    fn softmax_impl<D: Dim>(&self, axis: D, log: bool, op: &'static str) -> Result<Self> {
        self.check_float(op)?;
        let (x, a) = self.axis_last(axis, op)?;
        let s = self.device().softmax_last(x.storage(), x.layout(), log)?;
        let y = Self::from_storage(s, x.shape().clone(), self.device());
        let last = self.rank() - 1;
        if a == last {
            Ok(y)
        } else {
            y.transpose(a, last)
        }
    }

    /// softmax along `axis`.
    pub fn softmax<D: Dim>(&self, axis: D) -> Result<Self> {
        self.softmax_impl(axis, false, "softmax")
    }

    /// log_softmax along `axis`.
    pub fn log_softmax<D: Dim>(&self, axis: D) -> Result<Self> {
        self.softmax_impl(axis, true, "log_softmax")
    }

    /// Backward of softmax/log_softmax along the last axis from the output `self` and `dy`.
    /// Derivation: docs/autograd.md#fused-ops ("softmax", "log_softmax").
    pub fn softmax_last_backward(&self, dy: &Self, log: bool) -> Result<Self> {
        if self.shape() != dy.shape() || self.rank() == 0 {
            return Err(Error::ShapeMismatch {
                op: "softmax_backward",
                lhs: self.shape().clone(),
                rhs: dy.shape().clone(),
                hint: "the output and its gradient must have the same shape (rank >= 1)".into(),
            });
        }
        self.check_same_dtype(dy, "softmax_backward")?;
        let (y, g) = (self.contiguous()?, dy.contiguous()?);
        let s = self.device().softmax_last_backward(y.storage(), g.storage(), y.shape(), log)?;
        Ok(Self::from_storage(s, y.shape().clone(), self.device()))
    }

    fn check_norm_param(&self, p: Option<&Self>, n: usize, op: &'static str) -> Result<()> {
        if let Some(p) = p {
            self.check_same_device(p, op)?;
            if p.dims() != [n] {
                return Err(Error::ShapeMismatch {
                    op,
                    lhs: self.shape().clone(),
                    rhs: p.shape().clone(),
                    hint: format!("the weight/bias must have shape [{n}] (the input's last dimension)"),
                });
            }
        }
        Ok(())
    }

    fn rows_n(&self, op: &'static str) -> Result<(usize, usize)> {
        let n = *self.dims().last().ok_or(Error::RankMismatch {
            op,
            expected: "at least 1",
            shape: self.shape().clone(),
        })?;
        Ok((self.elem_count().checked_div(n).unwrap_or(0), n))
    }

    /// RMS norm over the last axis, returning `(y, rstd)` with `rstd` of shape `[rows]`.
    pub fn rms_norm_fwd(&self, weight: Option<&Self>, eps: f64) -> Result<(Self, Self)> {
        const OP: &str = "rms_norm";
        self.check_float(OP)?;
        let (rows, n) = self.rows_n(OP)?;
        self.check_norm_param(weight, n, OP)?;
        let x = self.contiguous()?;
        let w = weight.map(|w| w.to_dtype(self.dtype()).and_then(|w| w.contiguous())).transpose()?;
        let (y, r) = self.device().rms_norm(x.storage(), w.as_ref().map(|w| w.storage()), rows, n, eps)?;
        Ok((Self::from_storage(y, self.shape().clone(), self.device()), Self::from_storage(r, rows, self.device())))
    }

    /// `h = self + other` (same shape, dtype and device; no broadcasting) and the RMS norm of
    /// `h` over the last axis: `(h, y, rstd)`, bit for bit `self.add(other)` followed by
    /// [`Tensor::rms_norm_fwd`] of the sum. This is a pre-norm block's residual stream and the
    /// norm that reads it; a GPU computes both in one pass over the rows.
    pub fn add_rms_norm_fwd(&self, other: &Self, weight: Option<&Self>, eps: f64) -> Result<(Self, Self, Self)> {
        const OP: &str = "add_rms_norm";
        self.check_float(OP)?;
        self.check_same_device(other, OP)?;
        self.check_same_dtype(other, OP)?;
        if self.shape() != other.shape() {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: self.shape().clone(),
                rhs: other.shape().clone(),
                hint: "both summands must have one shape; for a broadcast sum, call add and then rms_norm_fwd".into(),
            });
        }
        let (rows, n) = self.rows_n(OP)?;
        self.check_norm_param(weight, n, OP)?;
        let (a, b) = (self.contiguous()?, other.contiguous()?);
        let w = weight.map(|w| w.to_dtype(self.dtype()).and_then(|w| w.contiguous())).transpose()?;
        let dev = self.device();
        let (h, y, r) = dev.add_rms_norm(a.storage(), b.storage(), w.as_ref().map(|w| w.storage()), rows, n, eps)?;
        let shape = self.shape().clone();
        Ok((
            Self::from_storage(h, shape.clone(), dev),
            Self::from_storage(y, shape, dev),
            Self::from_storage(r, rows, dev),
        ))
    }

    /// RMS norm over the last axis: `x / sqrt(mean(x^2) + eps) * weight`.
    pub fn rms_norm(&self, weight: Option<&Self>, eps: f64) -> Result<Self> {
        Ok(self.rms_norm_fwd(weight, eps)?.0)
    }

    /// The SwiGLU gate `silu(self) * up` (same shape, dtype and device), in one kernel: the
    /// composed `self.silu()?.mul(up)` makes and reads back an intermediate of the full size.
    pub fn swiglu(&self, up: &Self) -> Result<Self> {
        const OP: &str = "swiglu";
        self.check_swiglu(up, OP)?;
        let (a, b) = (self.contiguous()?, up.contiguous()?);
        let y = self.device().swiglu(a.storage(), b.storage(), self.elem_count())?;
        Ok(Self::from_storage(y, self.shape().clone(), self.device()))
    }

    /// `silu(self + bias)` with `bias [C]` broadcast along axis 1 of `self [N, C, ...]` (a
    /// convolution's output), in one pass; the composed `self.add(bias)?.silu()` writes and reads
    /// back an intermediate of the full size. Computed in f32 (f64 for f64) and rounded once.
    pub fn bias_silu(&self, bias: &Self) -> Result<Self> {
        const OP: &str = "bias_silu";
        self.check_float(OP)?;
        self.check_same_device(bias, OP)?;
        let d = self.dims();
        if d.len() < 2 || bias.dims() != [d[1]] || bias.dtype() != self.dtype() {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: self.shape().clone(),
                rhs: bias.shape().clone(),
                hint: format!(
                    "x must be [N, C, ...] and the bias [C] of its dtype ({:?} vs {:?}); reshape the bias to [C]",
                    self.dtype(),
                    bias.dtype()
                ),
            });
        }
        let (outer, chans) = (d[0], d[1]);
        let inner: usize = d[2..].iter().product();
        let (x, b) = (self.contiguous()?, bias.contiguous()?);
        let y = self.device().bias_silu(x.storage(), b.storage(), outer, chans, inner)?;
        Ok(Self::from_storage(y, self.shape().clone(), self.device()))
    }

    /// Gradients `(d self, d up)` of [`Tensor::swiglu`] for the upstream gradient `g`.
    /// Derivation: docs/autograd.md#swiglu.
    pub fn swiglu_backward(&self, up: &Self, g: &Self) -> Result<(Self, Self)> {
        const OP: &str = "swiglu_backward";
        self.check_swiglu(up, OP)?;
        self.check_swiglu(g, OP)?;
        let (a, b, gc) = (self.contiguous()?, up.contiguous()?, g.contiguous()?);
        let dev = self.device();
        let (da, db) = dev.swiglu_backward(a.storage(), b.storage(), gc.storage(), self.elem_count())?;
        Ok((Self::from_storage(da, self.shape().clone(), dev), Self::from_storage(db, self.shape().clone(), dev)))
    }

    /// The SwiGLU gate of the gate and up projections side by side in the last axis: `self [..,
    /// 2h]` holds `[gate | up]` (one product with the two weights stacked, as
    /// `Linear::fused_forward` of the nn crate makes it) and the result is `silu(gate) * up`,
    /// `[.., h]`: the same bits as [`Tensor::swiglu`] on the two halves, without copying them
    /// out first.
    pub fn swiglu_packed(&self) -> Result<Self> {
        let (rows, h) = self.check_swiglu_packed(None, "swiglu_packed")?;
        let x = self.contiguous()?;
        let y = self.device().swiglu_packed(x.storage(), rows, h)?;
        Ok(Self::from_storage(y, self.packed_half_shape(h), self.device()))
    }

    /// The gradient of `self` (`[.., 2h]`, `[d gate | d up]` in the last axis) through
    /// [`Tensor::swiglu_packed`] for the upstream gradient `g [.., h]`.
    /// Derivation: docs/autograd.md#swiglu.
    pub fn swiglu_packed_backward(&self, g: &Self) -> Result<Self> {
        let (rows, h) = self.check_swiglu_packed(Some(g), "swiglu_packed_backward")?;
        let (x, gc) = (self.contiguous()?, g.contiguous()?);
        let dx = self.device().swiglu_packed_backward(x.storage(), gc.storage(), rows, h)?;
        Ok(Self::from_storage(dx, self.shape().clone(), self.device()))
    }

    /// `self`'s shape with the last axis `h` (half of it).
    fn packed_half_shape(&self, h: usize) -> Shape {
        let mut d = self.dims().to_vec();
        if let Some(last) = d.last_mut() {
            *last = h;
        }
        Shape::from(d)
    }

    /// `(rows, h)` of a packed SwiGLU input `[.., 2h]`, and the upstream gradient's shape `[.., h]`.
    fn check_swiglu_packed(&self, g: Option<&Self>, op: &'static str) -> Result<(usize, usize)> {
        self.check_float(op)?;
        let last = match self.dims().last() {
            Some(&n) if n % 2 == 0 => n,
            _ => {
                return Err(Error::invalid(
                    op,
                    format!(
                        "the input is {}, but it must be [.., 2h] with an even last axis: the gate's h \
                         columns, then the up projection's h",
                        self.shape()
                    ),
                ))
            }
        };
        let h = last / 2;
        if let Some(g) = g {
            self.check_same_device(g, op)?;
            if g.dtype() != self.dtype() {
                return Err(Error::DTypeMismatch { op, lhs: self.dtype(), rhs: g.dtype() });
            }
            let want = self.packed_half_shape(h);
            if g.shape() != &want {
                return Err(Error::ShapeMismatch {
                    op,
                    lhs: self.shape().clone(),
                    rhs: g.shape().clone(),
                    hint: format!("the gradient must have the output's shape {want} (the input's, last axis halved)"),
                });
            }
        }
        Ok((self.elem_count() / last.max(1), h))
    }

    fn check_swiglu(&self, other: &Self, op: &'static str) -> Result<()> {
        self.check_float(op)?;
        self.check_same_device(other, op)?;
        if other.shape() != self.shape() || other.dtype() != self.dtype() {
            return Err(Error::ShapeMismatch {
                op,
                lhs: self.shape().clone(),
                rhs: other.shape().clone(),
                hint: format!(
                    "the gate, the up projection (and the gradient) must have one shape and dtype ({:?} vs {:?})",
                    self.dtype(),
                    other.dtype()
                ),
            });
        }
        Ok(())
    }

    /// Layer norm over the last axis, returning `(y, mean, rstd)`.
    pub fn layer_norm_fwd(&self, weight: Option<&Self>, bias: Option<&Self>, eps: f64) -> Result<(Self, Self, Self)> {
        const OP: &str = "layer_norm";
        self.check_float(OP)?;
        let (rows, n) = self.rows_n(OP)?;
        self.check_norm_param(weight, n, OP)?;
        self.check_norm_param(bias, n, OP)?;
        let x = self.contiguous()?;
        let w = weight.map(|w| w.to_dtype(self.dtype()).and_then(|w| w.contiguous())).transpose()?;
        let b = bias.map(|b| b.to_dtype(self.dtype()).and_then(|b| b.contiguous())).transpose()?;
        let (y, m, r) = self.device().layer_norm(
            x.storage(),
            w.as_ref().map(|w| w.storage()),
            b.as_ref().map(|b| b.storage()),
            rows,
            n,
            eps,
        )?;
        let d = self.device();
        Ok((
            Self::from_storage(y, self.shape().clone(), d),
            Self::from_storage(m, rows, d),
            Self::from_storage(r, rows, d),
        ))
    }

    /// Layer norm over the last axis: `(x - mean) / sqrt(var + eps) * weight + bias`.
    pub fn layer_norm(&self, weight: Option<&Self>, bias: Option<&Self>, eps: f64) -> Result<Self> {
        Ok(self.layer_norm_fwd(weight, bias, eps)?.0)
    }

    fn check_ce(&self, targets: &Self) -> Result<(usize, usize)> {
        const OP: &str = "cross_entropy";
        self.check_float(OP)?;
        self.check_same_device(targets, OP)?;
        targets.check_dtype(DType::U32, OP, "u32 class indices as targets")?;
        if self.rank() != 2 || targets.rank() != 1 || targets.dims()[0] != self.dims()[0] {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: self.shape().clone(),
                rhs: targets.shape().clone(),
                hint: "expected logits [rows, classes] and targets [rows] (flatten batch and time first)".into(),
            });
        }
        Ok((self.dims()[0], self.dims()[1]))
    }

    /// Per-row cross-entropy `lse(logits) - logits[target]` (0 where the target is
    /// `ignore_index`), with the row log-sum-exp: `(loss [rows], lse [rows])`.
    pub fn cross_entropy_fwd(&self, targets: &Self, ignore_index: Option<u32>) -> Result<(Self, Self)> {
        let (rows, classes) = self.check_ce(targets)?;
        let (x, t) = (self.contiguous()?, targets.contiguous()?);
        let (l, s) = self.device().cross_entropy(x.storage(), t.storage(), rows, classes, ignore_index)?;
        let d = self.device();
        Ok((Self::from_storage(l, rows, d), Self::from_storage(s, rows, d)))
    }

    /// Mean cross-entropy over the rows whose target is not `ignore_index`, as a rank-0 tensor.
    /// When every row is ignored the loss is 0 (an empty mean contributes nothing to training;
    /// PyTorch returns NaN here).
    pub fn cross_entropy(&self, targets: &Self, ignore_index: Option<u32>) -> Result<Self> {
        let (loss, _) = self.cross_entropy_fwd(targets, ignore_index)?;
        let counted = match ignore_index {
            None => targets.elem_count(),
            Some(ig) => targets.to_vec::<u32>()?.iter().filter(|&&t| t != ig).count(),
        };
        loss.sum_all()?.mul_scalar(1.0 / counted.max(1) as f64)
    }

    /// Backward of [`Tensor::cross_entropy_fwd`] given `dloss [rows]`: row `r` of the result is
    /// `dloss_r (softmax(x_r) - onehot(t_r))`, 0 for an ignored row.
    /// Derivation: docs/autograd.md#fused-ops ("Cross-entropy").
    pub fn cross_entropy_backward(
        &self,
        targets: &Self,
        lse: &Self,
        dloss: &Self,
        ignore_index: Option<u32>,
    ) -> Result<Self> {
        let (rows, classes) = self.check_ce(targets)?;
        for (name, t) in [("lse", lse), ("dloss", dloss)] {
            if t.dims() != [rows] {
                return Err(Error::ShapeMismatch {
                    op: "cross_entropy_backward",
                    lhs: self.shape().clone(),
                    rhs: t.shape().clone(),
                    hint: format!("{name} must have one entry per row of the logits: shape [{rows}]"),
                });
            }
        }
        let (x, t, s, g) =
            (self.contiguous()?, targets.contiguous()?, lse.contiguous()?, dloss.to_dtype(lse.dtype())?.contiguous()?);
        let out = self.device().cross_entropy_backward(
            x.storage(),
            t.storage(),
            s.storage(),
            g.storage(),
            rows,
            classes,
            ignore_index,
        )?;
        Ok(Self::from_storage(out, self.shape().clone(), self.device()))
    }

    /// The `k` largest values along `axis`, sorted descending, and their `U32` indices.
    pub fn topk<D: Dim>(&self, k: usize, axis: D) -> Result<(Self, Self)> {
        const OP: &str = "topk";
        let (x, a) = self.axis_last(axis, OP)?;
        let n = *x.dims().last().unwrap();
        if k > n {
            return Err(Error::invalid(
                OP,
                format!("k = {k} exceeds the size {n} of axis {a} (shape {})", self.shape()),
            ));
        }
        let (v, i) = self.device().topk_last(x.storage(), x.layout(), k)?;
        let shape = x.shape().with_dim(x.rank() - 1, k);
        let (v, i) = (Self::from_storage(v, shape.clone(), self.device()), Self::from_storage(i, shape, self.device()));
        let last = self.rank() - 1;
        if a == last {
            Ok((v, i))
        } else {
            Ok((v.transpose(a, last)?, i.transpose(a, last)?))
        }
    }
}
