//! The convolution blocks both detectors are made of, each with its analytic [`Cost`].
//!
//! - [`ConvBnAct`]: a bias-free convolution, batch normalisation and SiLU (ultralytics' `Conv`).
//!   The convolution has no bias because the batch norm's shift `beta` would absorb it.
//! - [`Dsc`]: a depthwise-separable block, a depthwise 3x3 [`ConvBnAct`] (`groups = channels`:
//!   each channel filtered on its own, `9 c` weights) followed by a pointwise 1x1 [`ConvBnAct`]
//!   (`c_in c_out` weights) that mixes channels. For 3x3 this costs `9 c + c c'` weights instead of
//!   `9 c c'`: about 8x less when `c'` is large.
//!
//! # Folding batch norm into the convolution (inference)
//! In eval mode batch norm is a fixed per-channel affine map of the convolution's output
//! `u = W * x`:
//!
//! ```text
//! BN(u)_o = gamma_o (u_o - mu_o) / sqrt(var_o + eps) + beta_o = s_o u_o + (beta_o - s_o mu_o),
//!           s_o = gamma_o / sqrt(var_o + eps)
//! ```
//!
//! and since convolution is linear in its weights, `s_o (W * x)_o = (s_o W_o) * x`. So the pair
//! equals ONE convolution with weights `W'_o = s_o W_o` (every input channel and tap of output
//! channel `o` scaled) and bias `b'_o = beta_o - s_o mu_o`: one kernel and one pass over memory
//! fewer per layer. [`ConvBnAct::fuse_for_inference`] builds it; the fused layer only runs in
//! eval mode (there are no batch statistics left to train with).

use ela_autograd::{no_grad, Var};
use ela_core::{Backend, Conv2dParams, Error, Result, Tensor};
use ela_nn::layers::{BatchNorm2d, BatchNormConfig, Conv2d, Conv2dConfig};
use ela_nn::module::{Init, ParamStore};

/// Batch norm as ultralytics configures it for YOLO (eps 1e-3, momentum 0.03): the smaller
/// momentum averages the running statistics over ~33 batches, steadier for small batches.
pub const BN: BatchNormConfig = BatchNormConfig { eps: 1e-3, momentum: 0.03 };

/// Parameters and multiply-adds of a piece of network at a given input size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    /// Trainable scalars (batch-norm running buffers are not parameters).
    pub params: usize,
    /// Multiply-accumulates for one image (FLOPs = 2 x MACs).
    pub macs: u64,
}

impl std::ops::Add for Cost {
    type Output = Cost;
    fn add(self, o: Cost) -> Cost {
        Cost { params: self.params + o.params, macs: self.macs + o.macs }
    }
}

impl std::ops::AddAssign for Cost {
    fn add_assign(&mut self, o: Cost) {
        *self = *self + o;
    }
}

impl std::iter::Sum for Cost {
    fn sum<I: Iterator<Item = Cost>>(it: I) -> Cost {
        it.fold(Cost::default(), |a, b| a + b)
    }
}

/// Cost of a `k x k` convolution `cin -> cout` with `groups`, producing an `(h, w)` map:
/// `cout (cin/groups) k^2` weights, plus `cout` for a bias, plus `2 cout` for a batch norm's gain
/// and shift; `weights x h x w` multiply-adds (bias, norm and activation are not counted).
pub fn conv_cost(cin: usize, cout: usize, k: usize, groups: usize, bias: bool, bn: bool, hw: (usize, usize)) -> Cost {
    let weights = cout * (cin / groups) * k * k;
    let params = weights + if bias { cout } else { 0 } + if bn { 2 * cout } else { 0 };
    Cost { params, macs: (weights * hw.0 * hw.1) as u64 }
}

/// Spatial size after a `k x k` convolution with stride `s` and "same" padding `k / 2`.
pub fn conv_out_hw(hw: (usize, usize), k: usize, s: usize) -> (usize, usize) {
    ((hw.0 + 2 * (k / 2) - k) / s + 1, (hw.1 + 2 * (k / 2) - k) / s + 1)
}

/// Cost of [`ConvBnAct::new`]`(cin, cout, k, stride, groups)` on an `hw` input, and the output size.
pub fn conv_bn_act_cost(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    groups: usize,
    hw: (usize, usize),
) -> (Cost, (usize, usize)) {
    let out = conv_out_hw(hw, k, stride);
    (conv_cost(cin, cout, k, groups, false, true, out), out)
}

/// Cost of [`Dsc::new`]`(cin, cout, stride)` on an `hw` input, and the output size.
pub fn dsc_cost(cin: usize, cout: usize, stride: usize, hw: (usize, usize)) -> (Cost, (usize, usize)) {
    let (dw, hw) = conv_bn_act_cost(cin, cin, 3, stride, cin, hw);
    let (pw, hw) = conv_bn_act_cost(cin, cout, 1, 1, 1, hw);
    (dw + pw, hw)
}

/// A 1x1 convolution `cin -> bias.len()` with PyTorch's default weight init and the given initial
/// bias, registered as `vs.weight`, `vs.bias` (the detectors' prediction layers, whose biases
/// start at the priors of [`super::output::prediction_bias`]).
pub fn conv1x1_with_bias<B: Backend>(vs: &ParamStore<B>, cin: usize, bias: &[f64]) -> Result<Conv2d<B>> {
    let cout = bias.len();
    let weight = vs.param("weight", [cout, cin, 1, 1], Init::uniform_symmetric(1.0 / (cin as f64).sqrt()))?;
    let b = Tensor::from_vec(bias.to_vec(), [cout], vs.device())?.to_dtype(vs.dtype())?;
    Conv2d::from_vars(vs.prefix(), weight, Some(vs.param_from_tensor("bias", b)?), Conv2dParams::default())
}

/// Convolution (no bias) + batch norm + SiLU, with "same" padding `k / 2`.
pub struct ConvBnAct<B: Backend> {
    conv: Conv2d<B>,
    /// `None` once folded into `conv` by [`ConvBnAct::fuse_for_inference`].
    bn: Option<BatchNorm2d<B>>,
    params: Conv2dParams,
    act: bool,
}

impl<B: Backend> Clone for ConvBnAct<B> {
    fn clone(&self) -> Self {
        ConvBnAct { conv: self.conv.clone(), bn: self.bn.clone(), params: self.params, act: self.act }
    }
}

impl<B: Backend> ConvBnAct<B> {
    /// `k x k` convolution `cin -> cout` with `stride` and `groups`, registered as `vs.conv.weight`
    /// and `vs.bn.{weight,bias,running_mean,running_var}`.
    pub fn new(vs: &ParamStore<B>, cin: usize, cout: usize, k: usize, stride: usize, groups: usize) -> Result<Self> {
        let params = Conv2dParams { stride: (stride, stride), padding: (k / 2, k / 2), dilation: (1, 1), groups };
        let conv = Conv2d::new(&vs.sub("conv"), cin, cout, (k, k), Conv2dConfig { params, bias: false })?;
        let bn = BatchNorm2d::new(&vs.sub("bn"), cout, BN)?;
        Ok(ConvBnAct { conv, bn: Some(bn), params, act: true })
    }

    /// The same block without the SiLU (for a linear projection followed by a residual sum).
    pub fn without_act(mut self) -> Self {
        self.act = false;
        self
    }

    /// The convolution (its bias is set only after fusion).
    pub fn conv(&self) -> &Conv2d<B> {
        &self.conv
    }

    /// The batch norm (`None` after fusion).
    pub fn bn(&self) -> Option<&BatchNorm2d<B>> {
        self.bn.as_ref()
    }

    /// `x [n, cin, h, w] -> [n, cout, h', w']`; batch statistics when `train`, running ones when not.
    pub fn forward(&self, x: &Var<B>, train: bool) -> Result<Var<B>> {
        // Fused for inference: the folded bias and the SiLU in one pass over the output.
        if let (None, true, false, Some(bias)) = (&self.bn, self.act, train, self.conv.bias()) {
            return x.conv2d(self.conv.weight(), &self.params)?.bias_silu(bias);
        }
        let y = self.conv.forward(x)?;
        let y = match &self.bn {
            Some(bn) => bn.forward(&y, train)?,
            None if train => {
                return Err(Error::invalid(
                    "ConvBnAct",
                    "this layer was fused for inference (batch norm folded into the convolution): it runs with \
                     train = false only",
                ))
            }
            None => y,
        };
        if self.act {
            y.silu()
        } else {
            Ok(y)
        }
    }

    /// The layer with its batch norm folded into the convolution (see the module docs): the same
    /// function as `forward(x, false)`, as one convolution with bias. The new weights are
    /// constants, outside any parameter store.
    pub fn fuse_for_inference(&self) -> Result<Self> {
        let Some(bn) = &self.bn else { return Ok(self.clone()) };
        no_grad(|| {
            let w = self.conv.weight().value();
            let cout = w.dims()[0];
            let scale = bn.weight().value().div(&bn.running_var().value().add_scalar(BN.eps)?.sqrt()?)?;
            let w2 = w.mul(&scale.reshape([cout, 1, 1, 1])?)?;
            let b2 = bn.bias().value().sub(&bn.running_mean().value().mul(&scale)?)?;
            let conv =
                Conv2d::from_vars("fused", Var::constant(w2.contiguous()?), Some(Var::constant(b2)), self.params)?;
            Ok(ConvBnAct { conv, bn: None, params: self.params, act: self.act })
        })
    }
}

/// Depthwise-separable block: depthwise 3x3 [`ConvBnAct`] (stride `s`) then pointwise 1x1
/// [`ConvBnAct`] `cin -> cout`, registered as `vs.dw` and `vs.pw`.
pub struct Dsc<B: Backend> {
    dw: ConvBnAct<B>,
    pw: ConvBnAct<B>,
}

impl<B: Backend> Clone for Dsc<B> {
    fn clone(&self) -> Self {
        Dsc { dw: self.dw.clone(), pw: self.pw.clone() }
    }
}

impl<B: Backend> Dsc<B> {
    /// A block `cin -> cout` with stride `stride` in the depthwise convolution.
    pub fn new(vs: &ParamStore<B>, cin: usize, cout: usize, stride: usize) -> Result<Self> {
        Ok(Dsc {
            dw: ConvBnAct::new(&vs.sub("dw"), cin, cin, 3, stride, cin)?,
            pw: ConvBnAct::new(&vs.sub("pw"), cin, cout, 1, 1, 1)?,
        })
    }

    /// `x [n, cin, h, w] -> [n, cout, h / s, w / s]`.
    pub fn forward(&self, x: &Var<B>, train: bool) -> Result<Var<B>> {
        self.pw.forward(&self.dw.forward(x, train)?, train)
    }

    /// Both halves with their batch norms folded (see [`ConvBnAct::fuse_for_inference`]).
    pub fn fuse_for_inference(&self) -> Result<Self> {
        Ok(Dsc { dw: self.dw.fuse_for_inference()?, pw: self.pw.fuse_for_inference()? })
    }
}
