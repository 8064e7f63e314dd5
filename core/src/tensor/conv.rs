//! Convolution, pooling and upsampling over NCHW tensors.

use super::Tensor;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::op::{Conv2dParams, Pool2dParams};
use crate::shape::Shape;

impl<B: Backend> Tensor<B> {
    fn check_nchw(&self, op: &'static str) -> Result<()> {
        self.check_float(op)?;
        if self.rank() != 4 {
            return Err(Error::RankMismatch {
                op,
                expected: "4 ([batch, channels, height, width])",
                shape: self.shape().clone(),
            });
        }
        Ok(())
    }

    /// Output shape of `conv2d(self, weight, p)` after checking every argument.
    pub fn conv2d_out_shape(&self, weight: &Self, p: &Conv2dParams) -> Result<Shape> {
        const OP: &str = "conv2d";
        self.check_nchw(OP)?;
        weight.check_nchw(OP)?;
        self.check_same_dtype(weight, OP)?;
        self.check_same_device(weight, OP)?;
        let (x, w) = (self.dims(), weight.dims());
        let bad = |hint: String| Error::ShapeMismatch {
            op: OP,
            lhs: self.shape().clone(),
            rhs: weight.shape().clone(),
            hint,
        };
        if p.groups == 0 || p.stride.0 == 0 || p.stride.1 == 0 || p.dilation.0 == 0 || p.dilation.1 == 0 {
            return Err(Error::invalid(OP, format!("groups, stride and dilation must be positive, got {p:?}")));
        }
        if w[2] == 0 || w[3] == 0 {
            return Err(bad("the kernel's height and width must be positive (weight [out, in/groups, kh, kw])".into()));
        }
        if x[1] % p.groups != 0 || w[0] % p.groups != 0 {
            return Err(bad(format!(
                "input channels {} and output channels {} must both be divisible by groups {}",
                x[1], w[0], p.groups
            )));
        }
        if w[1].checked_mul(p.groups) != Some(x[1]) {
            return Err(bad(format!(
                "weight [out, in/groups, kh, kw] expects {} input channels per group, the input has {} channels in {} groups",
                w[1], x[1], p.groups
            )));
        }
        let (oh, ow) = p.output_hw((x[2], x[3]), (w[2], w[3])).ok_or_else(|| {
            bad(format!(
                "the {}x{} kernel (dilation {:?}) does not fit the padded {}x{} input",
                w[2], w[3], p.dilation, x[2], x[3]
            ))
        })?;
        Shape::checked([x[0], w[0], oh, ow], OP)
    }

    /// 2-D convolution (cross-correlation, as in PyTorch): `self [n, c, h, w]`,
    /// `weight [o, c/groups, kh, kw]` -> `[n, o, oh, ow]`. Add a bias by broadcasting.
    pub fn conv2d(&self, weight: &Self, p: &Conv2dParams) -> Result<Self> {
        let out = self.conv2d_out_shape(weight, p)?;
        let s = self.device().conv2d(self.storage(), self.layout(), weight.storage(), weight.layout(), p)?;
        Ok(Self::from_storage(s, out, self.device()))
    }

    /// Check that `self` is a valid `dy` for `conv2d(x, w, p)` with `x: x_shape`, `w: w_shape`.
    fn check_conv_grad(&self, x_shape: &Shape, w_shape: &Shape, p: &Conv2dParams, op: &'static str) -> Result<()> {
        self.check_nchw(op)?;
        if x_shape.rank() != 4 || w_shape.rank() != 4 {
            return Err(Error::ShapeMismatch {
                op,
                lhs: x_shape.clone(),
                rhs: w_shape.clone(),
                hint: "input and weight shapes must both be rank 4 ([n, c, h, w] and [o, c/groups, kh, kw])".into(),
            });
        }
        // The forward's own checks, on shapes only, give the dy shape that must come back.
        let x = Self::zeros(x_shape.clone(), self.dtype(), self.device())?;
        let w = Self::zeros(w_shape.clone(), self.dtype(), self.device())?;
        let out = x.conv2d_out_shape(&w, p).map_err(|e| Error::invalid(op, e.to_string()))?;
        if &out != self.shape() {
            return Err(Error::ShapeMismatch {
                op,
                lhs: self.shape().clone(),
                rhs: out,
                hint: format!("dy must have conv2d's output shape for input {x_shape} and weight {w_shape}"),
            });
        }
        Ok(())
    }

    /// Gradient of conv2d w.r.t. the input, from `dy = self`.
    /// Derivation: docs/autograd.md#convolution-and-pooling ("conv2d").
    pub fn conv2d_backward_input(&self, weight: &Self, x_shape: &Shape, p: &Conv2dParams) -> Result<Self> {
        self.check_conv_grad(x_shape, weight.shape(), p, "conv2d_backward_input")?;
        self.check_same_dtype(weight, "conv2d_backward_input")?;
        let dy = self.contiguous()?;
        let s = self.device().conv2d_backward_input(
            dy.storage(),
            dy.shape(),
            weight.storage(),
            weight.layout(),
            x_shape,
            p,
        )?;
        Ok(Self::from_storage(s, x_shape.clone(), self.device()))
    }

    /// Gradient of conv2d w.r.t. the weight, from `dy = self` and the input `x`.
    /// Derivation: docs/autograd.md#convolution-and-pooling ("conv2d").
    pub fn conv2d_backward_weight(&self, x: &Self, w_shape: &Shape, p: &Conv2dParams) -> Result<Self> {
        self.check_conv_grad(x.shape(), w_shape, p, "conv2d_backward_weight")?;
        self.check_same_dtype(x, "conv2d_backward_weight")?;
        let dy = self.contiguous()?;
        let s = self.device().conv2d_backward_weight(x.storage(), x.layout(), dy.storage(), dy.shape(), w_shape, p)?;
        Ok(Self::from_storage(s, w_shape.clone(), self.device()))
    }

    fn pool_out_shape(&self, p: &Pool2dParams, op: &'static str) -> Result<Shape> {
        self.check_nchw(op)?;
        let d = self.dims();
        if d[2] == 0 || d[3] == 0 {
            return Err(Error::invalid(op, format!("the input {} has no pixels to pool", self.shape())));
        }
        if p.kernel.0 == 0 || p.kernel.1 == 0 || p.stride.0 == 0 || p.stride.1 == 0 {
            return Err(Error::invalid(op, format!("kernel and stride must be positive, got {p:?}")));
        }
        if p.padding.0 * 2 > p.kernel.0 || p.padding.1 * 2 > p.kernel.1 {
            return Err(Error::invalid(
                op,
                format!("padding {:?} must be at most half the kernel {:?}", p.padding, p.kernel),
            ));
        }
        let (oh, ow) = p.output_hw((d[2], d[3])).ok_or_else(|| {
            Error::invalid(
                op,
                format!(
                    "the {:?} window does not fit the padded {}x{} input (shape {})",
                    p.kernel,
                    d[2],
                    d[3],
                    self.shape()
                ),
            )
        })?;
        Shape::checked([d[0], d[1], oh, ow], op)
    }

    /// Max pooling, returning `(y, argmax)` (argmax: flat `h*w` index of each window's winner).
    pub fn max_pool2d_fwd(&self, p: &Pool2dParams) -> Result<(Self, Self)> {
        let out = self.pool_out_shape(p, "max_pool2d")?;
        let (y, a) = self.device().max_pool2d(self.storage(), self.layout(), p)?;
        Ok((Self::from_storage(y, out.clone(), self.device()), Self::from_storage(a, out, self.device())))
    }

    /// Max pooling.
    pub fn max_pool2d(&self, p: &Pool2dParams) -> Result<Self> {
        Ok(self.max_pool2d_fwd(p)?.0)
    }

    /// Backward of max pooling from `dy = self`.
    /// Derivation: docs/autograd.md#convolution-and-pooling ("max_pool2d").
    pub fn max_pool2d_backward(&self, argmax: &Self, x_shape: &Shape) -> Result<Self> {
        const OP: &str = "max_pool2d_backward";
        self.check_nchw(OP)?;
        argmax.check_dtype(crate::DType::U32, OP, "the u32 argmax of max_pool2d_fwd")?;
        let xd = x_shape.dims();
        if argmax.shape() != self.shape() || xd.len() != 4 || xd[..2] != self.dims()[..2] {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: self.shape().clone(),
                rhs: x_shape.clone(),
                hint: format!(
                    "dy and argmax ({}) must have the pooled shape, and x_shape the same batch and channels",
                    argmax.shape()
                ),
            });
        }
        let am = argmax.contiguous()?;
        let Some(pixels) = xd[2].checked_mul(xd[3]) else {
            return Err(Error::invalid(OP, format!("x_shape {x_shape} has more pixels than usize can count")));
        };
        if let Some(&bad) = am.to_vec::<u32>()?.iter().find(|&&i| i as usize >= pixels) {
            return Err(Error::Index { op: OP, index: bad as usize, size: pixels, axis: 2, shape: x_shape.clone() });
        }
        let dy = self.contiguous()?;
        let s = self.device().max_pool2d_backward(dy.storage(), am.storage(), dy.shape(), x_shape)?;
        Ok(Self::from_storage(s, x_shape.clone(), self.device()))
    }

    /// Average pooling.
    pub fn avg_pool2d(&self, p: &Pool2dParams) -> Result<Self> {
        let out = self.pool_out_shape(p, "avg_pool2d")?;
        let s = self.device().avg_pool2d(self.storage(), self.layout(), p)?;
        Ok(Self::from_storage(s, out, self.device()))
    }

    /// Backward of average pooling from `dy = self`.
    /// Derivation: docs/autograd.md#convolution-and-pooling ("avg_pool2d").
    pub fn avg_pool2d_backward(&self, x_shape: &Shape, p: &Pool2dParams) -> Result<Self> {
        const OP: &str = "avg_pool2d_backward";
        self.check_nchw(OP)?;
        let out = Self::zeros(x_shape.clone(), self.dtype(), self.device())?.pool_out_shape(p, OP)?;
        if &out != self.shape() {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: self.shape().clone(),
                rhs: out,
                hint: format!("dy must have avg_pool2d's output shape for input {x_shape}"),
            });
        }
        let dy = self.contiguous()?;
        let s = self.device().avg_pool2d_backward(dy.storage(), dy.shape(), x_shape, p)?;
        Ok(Self::from_storage(s, x_shape.clone(), self.device()))
    }

    /// Nearest-neighbour upsampling by integer factors `(fh, fw)`.
    pub fn upsample_nearest2d(&self, factor: (usize, usize)) -> Result<Self> {
        const OP: &str = "upsample_nearest2d";
        self.check_nchw(OP)?;
        if factor.0 == 0 || factor.1 == 0 {
            return Err(Error::invalid(OP, format!("scale factors must be positive, got {factor:?}")));
        }
        let d = self.dims();
        let out = Shape::checked([d[0], d[1], d[2].saturating_mul(factor.0), d[3].saturating_mul(factor.1)], OP)?;
        let s = self.device().upsample_nearest2d(self.storage(), self.layout(), factor)?;
        Ok(Self::from_storage(s, out, self.device()))
    }

    /// Backward of nearest upsampling from `dy = self`.
    /// Derivation: docs/autograd.md#convolution-and-pooling ("upsample_nearest2d").
    pub fn upsample_nearest2d_backward(&self, factor: (usize, usize)) -> Result<Self> {
        const OP: &str = "upsample_nearest2d_backward";
        self.check_nchw(OP)?;
        let d = self.dims();
        if factor.0 == 0 || factor.1 == 0 || !d[2].is_multiple_of(factor.0) || !d[3].is_multiple_of(factor.1) {
            return Err(Error::invalid(
                OP,
                format!(
                    "dy {} must be an upsampled image: height and width divisible by the factors {factor:?}",
                    self.shape()
                ),
            ));
        }
        let dy = self.contiguous()?;
        let d = dy.dims();
        let s = self.device().upsample_nearest2d_backward(dy.storage(), dy.shape(), factor)?;
        Ok(Self::from_storage(s, [d[0], d[1], d[2] / factor.0, d[3] / factor.1], self.device()))
    }
}
