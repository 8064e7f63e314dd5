//! Vision layers over NCHW tensors: [`Conv2d`] and [`BatchNorm2d`].

use ela_autograd::{no_grad, Var};
use ela_core::{Backend, Conv2dParams, Error, Result, Tensor};

use super::linear::join;
use crate::module::{Forward, Init, Module, ParamStore};

/// Options of [`Conv2d::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dConfig {
    /// Stride, padding, dilation and groups.
    pub params: Conv2dParams,
    /// Whether the layer adds a per-channel bias.
    pub bias: bool,
}

impl Default for Conv2dConfig {
    /// Stride 1, no padding, no dilation, one group, with bias.
    fn default() -> Self {
        Conv2dConfig { params: Conv2dParams::default(), bias: true }
    }
}

/// 2-D convolution (cross-correlation, as in PyTorch) with `weight [out, in/groups, kh, kw]` and
/// an optional `bias [out]`. Init as PyTorch: uniform in `+-1/sqrt(fan_in)`,
/// `fan_in = in/groups * kh * kw`, for weight and bias.
pub struct Conv2d<B: Backend> {
    weight: Var<B>,
    bias: Option<Var<B>>,
    params: Conv2dParams,
    name: String,
}

impl<B: Backend> Clone for Conv2d<B> {
    fn clone(&self) -> Self {
        Conv2d { weight: self.weight.clone(), bias: self.bias.clone(), params: self.params, name: self.name.clone() }
    }
}

impl<B: Backend> Conv2d<B> {
    /// Register the weight (and bias) under `vs`.
    pub fn new(
        vs: &ParamStore<B>,
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize),
        cfg: Conv2dConfig,
    ) -> Result<Self> {
        let g = cfg.params.groups;
        if in_channels.checked_rem(g) != Some(0)
            || out_channels.checked_rem(g) != Some(0)
            || kernel.0 == 0
            || kernel.1 == 0
        {
            return Err(Error::invalid(
                "Conv2d::new",
                format!(
                    "in {in_channels} and out {out_channels} channels must be divisible by groups {g} (> 0) and the \
                     kernel {kernel:?} positive"
                ),
            ));
        }
        let fan_in = in_channels / g * kernel.0 * kernel.1;
        let init = Init::uniform_symmetric(1.0 / (fan_in as f64).sqrt());
        let weight = vs.param("weight", [out_channels, in_channels / g, kernel.0, kernel.1], init)?;
        let bias = if cfg.bias { Some(vs.param("bias", [out_channels], init)?) } else { None };
        Ok(Conv2d { weight, bias, params: cfg.params, name: vs.prefix().to_string() })
    }

    /// A convolution over existing `weight [out, in/groups, kh, kw]` and `bias [out]`.
    pub fn from_vars(name: &str, weight: Var<B>, bias: Option<Var<B>>, params: Conv2dParams) -> Result<Self> {
        if weight.rank() != 4 {
            return Err(Error::RankMismatch {
                op: "Conv2d",
                expected: "4 ([out, in/groups, kh, kw]) for the weight",
                shape: weight.shape(),
            });
        }
        if let Some(b) = &bias {
            if b.dims() != [weight.dims()[0]] {
                return Err(Error::ShapeMismatch {
                    op: "Conv2d",
                    lhs: weight.shape(),
                    rhs: b.shape(),
                    hint: format!("the bias must have shape [{}] (output channels)", weight.dims()[0]),
                });
            }
        }
        Ok(Conv2d { weight, bias, params, name: name.to_string() })
    }

    /// The weight `[out, in/groups, kh, kw]`.
    pub fn weight(&self) -> &Var<B> {
        &self.weight
    }
    /// The bias `[out]`, if any.
    pub fn bias(&self) -> Option<&Var<B>> {
        self.bias.as_ref()
    }

    /// `x [n, in, h, w] -> [n, out, oh, ow]`.
    pub fn forward(&self, x: &Var<B>) -> Result<Var<B>> {
        let y = x.conv2d(&self.weight, &self.params)?;
        match &self.bias {
            Some(b) => y.add(&b.reshape([1, b.dims()[0], 1, 1])?),
            None => Ok(y),
        }
    }
}

impl<B: Backend> Module<B> for Conv2d<B> {
    fn named_params(&self) -> Vec<(String, Var<B>)> {
        let mut v = vec![(join(&self.name, "weight"), self.weight.clone())];
        if let Some(b) = &self.bias {
            v.push((join(&self.name, "bias"), b.clone()));
        }
        v
    }
}

impl<B: Backend> Forward<B> for Conv2d<B> {
    fn forward(&self, x: &Var<B>) -> Result<Var<B>> {
        Conv2d::forward(self, x)
    }
}

/// Options of [`BatchNorm2d`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormConfig {
    /// Added to the variance before the square root.
    pub eps: f64,
    /// Weight of the new batch statistic in the running averages:
    /// `running = (1 - momentum) running + momentum batch` (PyTorch's convention).
    pub momentum: f64,
}

impl Default for BatchNormConfig {
    /// eps 1e-5, momentum 0.1 (PyTorch's defaults).
    fn default() -> Self {
        BatchNormConfig { eps: 1e-5, momentum: 0.1 }
    }
}

/// Batch normalisation over the channels of NCHW input (Ioffe & Szegedy 2015).
///
/// Training mode normalises with the batch's per-channel mean and biased variance over
/// `(n, h, w)` (gradients flow through both) and updates the running buffers with the mean and
/// the *unbiased* variance (`* m / (m - 1)`, `m = n h w`), as PyTorch does. Eval mode
/// normalises with the running buffers.
pub struct BatchNorm2d<B: Backend> {
    weight: Var<B>,
    bias: Var<B>,
    running_mean: Var<B>,
    running_var: Var<B>,
    cfg: BatchNormConfig,
    name: String,
}

impl<B: Backend> Clone for BatchNorm2d<B> {
    fn clone(&self) -> Self {
        BatchNorm2d {
            weight: self.weight.clone(),
            bias: self.bias.clone(),
            running_mean: self.running_mean.clone(),
            running_var: self.running_var.clone(),
            cfg: self.cfg,
            name: self.name.clone(),
        }
    }
}

impl<B: Backend> BatchNorm2d<B> {
    /// Register `weight`, `bias` and the buffers `running_mean`, `running_var` (all `[channels]`).
    pub fn new(vs: &ParamStore<B>, channels: usize, cfg: BatchNormConfig) -> Result<Self> {
        if !(cfg.eps >= 0.0 && (0.0..=1.0).contains(&cfg.momentum)) {
            return Err(Error::invalid(
                "BatchNorm2d::new",
                format!("need eps >= 0 and momentum in [0, 1], got {cfg:?}"),
            ));
        }
        let weight = vs.param("weight", [channels], Init::Ones)?;
        let bias = vs.param("bias", [channels], Init::Zeros)?;
        let running_mean = vs.buffer("running_mean", Tensor::zeros([channels], vs.dtype(), vs.device())?)?;
        let running_var = vs.buffer("running_var", Tensor::ones([channels], vs.dtype(), vs.device())?)?;
        Ok(BatchNorm2d { weight, bias, running_mean, running_var, cfg, name: vs.prefix().to_string() })
    }

    /// The per-channel gain.
    pub fn weight(&self) -> &Var<B> {
        &self.weight
    }
    /// The per-channel shift.
    pub fn bias(&self) -> &Var<B> {
        &self.bias
    }
    /// The running mean buffer (a constant var; updated in training mode).
    pub fn running_mean(&self) -> &Var<B> {
        &self.running_mean
    }
    /// The running variance buffer.
    pub fn running_var(&self) -> &Var<B> {
        &self.running_var
    }

    /// Normalise `x [n, c, h, w]` with batch statistics (`train`, updating the running buffers)
    /// or with the running statistics (`!train`).
    pub fn forward(&self, x: &Var<B>, train: bool) -> Result<Var<B>> {
        let c = self.weight.dims()[0];
        let d = x.dims();
        if d.len() != 4 || d[1] != c {
            return Err(Error::ShapeMismatch {
                op: "BatchNorm2d",
                lhs: x.shape(),
                rhs: c.into(),
                hint: format!("expected input [batch, {c}, height, width]"),
            });
        }
        let per_channel = |v: &Var<B>| v.reshape([1, c, 1, 1]);
        let (w, b) = (per_channel(&self.weight)?, per_channel(&self.bias)?);
        if !train {
            let mean = per_channel(&self.running_mean)?;
            let rstd = per_channel(&self.running_var)?.add_scalar(self.cfg.eps)?.sqrt()?.recip()?;
            return x.sub(&mean)?.mul(&rstd.mul(&w)?)?.add(&b);
        }
        let m = d[0] * d[2] * d[3];
        if m < 2 {
            return Err(Error::invalid(
                "BatchNorm2d",
                format!("training mode needs more than one value per channel to estimate a variance, got input {d:?}"),
            ));
        }
        let mean_nhw =
            |v: &Var<B>| v.sum(0usize, true)?.sum(2usize, true)?.sum(3usize, true)?.mul_scalar(1.0 / m as f64);
        let mean = mean_nhw(x)?;
        let xc = x.sub(&mean)?;
        let var = mean_nhw(&xc.square()?)?;
        let y = xc.mul(&var.add_scalar(self.cfg.eps)?.sqrt()?.recip()?)?.mul(&w)?.add(&b)?;
        // Running statistics are bookkeeping, not part of the graph.
        no_grad(|| -> Result<()> {
            let mo = self.cfg.momentum;
            let upd = |run: &Var<B>, batch: &Tensor<B>, scale: f64| -> Result<()> {
                let new = run.value().mul_scalar(1.0 - mo)?.add(&batch.reshape([c])?.mul_scalar(mo * scale)?)?;
                run.set_value(new.to_dtype(run.dtype())?)
            };
            upd(&self.running_mean, &mean.value(), 1.0)?;
            upd(&self.running_var, &var.value(), m as f64 / (m - 1) as f64)
        })?;
        Ok(y)
    }
}

impl<B: Backend> Module<B> for BatchNorm2d<B> {
    fn named_params(&self) -> Vec<(String, Var<B>)> {
        vec![(join(&self.name, "weight"), self.weight.clone()), (join(&self.name, "bias"), self.bias.clone())]
    }
}
