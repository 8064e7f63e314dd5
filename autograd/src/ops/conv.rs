//! Convolution, pooling and upsampling, each with its dedicated backward kernels.
//! Derivations: docs/autograd.md#convolution-and-pooling.

use ela_core::{Backend, Conv2dParams, Pool2dParams, Result};

use crate::var::Var;

impl<B: Backend> Var<B> {
    /// 2-D convolution of `self [n, c, h, w]` with `weight [o, c/groups, kh, kw]`.
    pub fn conv2d(&self, weight: &Self, p: &Conv2dParams) -> Result<Self> {
        let (x, w) = (self.value(), weight.value());
        let y = x.conv2d(&w, p)?;
        let p = *p;
        Var::record("conv2d", y, &[self, weight], move |g, needs| {
            Ok(vec![
                needs[0].then(|| g.conv2d_backward_input(&w, x.shape(), &p)).transpose()?,
                needs[1].then(|| g.conv2d_backward_weight(&x, w.shape(), &p)).transpose()?,
            ])
        })
    }

    /// Max pooling; the gradient goes to each window's winner.
    pub fn max_pool2d(&self, p: &Pool2dParams) -> Result<Self> {
        let x = self.value();
        let (y, argmax) = x.max_pool2d_fwd(p)?;
        Var::record("max_pool2d", y, &[self], move |g, _| Ok(vec![Some(g.max_pool2d_backward(&argmax, x.shape())?)]))
    }

    /// Average pooling; the gradient is spread evenly over each window.
    pub fn avg_pool2d(&self, p: &Pool2dParams) -> Result<Self> {
        let x = self.value();
        let y = x.avg_pool2d(p)?;
        let p = *p;
        Var::record("avg_pool2d", y, &[self], move |g, _| Ok(vec![Some(g.avg_pool2d_backward(x.shape(), &p)?)]))
    }

    /// Nearest-neighbour upsampling; the gradient sums each replicated block.
    pub fn upsample_nearest2d(&self, factor: (usize, usize)) -> Result<Self> {
        let y = self.value().upsample_nearest2d(factor)?;
        Var::record("upsample_nearest2d", y, &[self], move |g, _| {
            Ok(vec![Some(g.upsample_nearest2d_backward(factor)?)])
        })
    }
}
