//! `Attention2d`: multi-head attention over the cells of a feature map, the mixer of YOLO-LAT's
//! neck (the paper's "HadamardAttention2D" with the default kernel).
//!
//! For `x [n, c, h, w]` every one of the `t = h w` cells is a token:
//!
//! ```text
//! q, k, v = split(W_qkv * x + b_qkv)              1x1 convolution c -> 3c, heads of d_h = c / heads
//! ELA:     y_i = sum_j k(q_i/s, k_j/s) v_j / sum_j k(q_i/s, k_j/s),   s = sqrt(d_h), all j (non-causal)
//! softmax: y_i = sum_j exp(q_i.k_j / s) v_j / sum_j exp(q_i.k_j / s)
//! out = BN(x + W_o * y + b_o)
//! ```
//!
//! With Hadamard Exp, `k(q/s, k/s) = sum_d exp(q_d/s) exp(k_d/s)`: the same `1/sqrt(d_h)`
//! temperature as scaled dot-product softmax, but the kernel factorises, so ELA computes
//! `S = sum_j psi(k_j) v_j^T` (`F x d_h`) and `z = sum_j psi(k_j)` once per head and then every
//! output as `phi(q_i)^T S / phi(q_i).z`: `O(t F d_h)` work instead of softmax's `O(t^2 d_h)`,
//! exactly (not an approximation of *this* kernel). Per cell, with 4 heads of 16, ELA's core
//! costs `2 x 4 x 16 x 17 = 2176` multiply-adds at any map size, 13% on top of the 1x1
//! projections' 16,384; softmax costs `2 x 4 x t x 16`: 51k at 320x320 input (`t = 400`), 205k at
//! 640x640 (`t = 1600`), 3x and 12x the projections.
//!
//! (The output projection's bias is redundant, since the batch norm right after it removes any
//! per-channel constant: its gradient is zero. It is kept to match the paper's parameter count.)
//!
//! The ELA path is the fused op (`Var::ela` with `causal = false`): one autograd node with
//! a hand-derived backward, on every backend. Softmax goes through
//! [`ela_nn::attention::softmax_attention`], which applies the `1/sqrt(d_h)` itself.

use ela_autograd::Var;
use ela_core::{Backend, ElaKernel, ElaParams, Error, Result};
use ela_nn::attention::softmax_attention;
use ela_nn::layers::{BatchNorm2d, Conv2d, Conv2dConfig};
use ela_nn::module::ParamStore;

use super::layers::{conv_cost, Cost, BN};

/// How the cells attend to each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mixer2d {
    /// Non-causal Exact Linear Attention with this kernel.
    Ela(ElaKernel),
    /// Softmax attention.
    Softmax,
}

/// Multi-head attention over the `h w` cells of a feature map, with a residual sum and a batch
/// norm (see the module docs). Registered as `vs.qkv`, `vs.proj` (1x1 convolutions with bias) and
/// `vs.bn`.
pub struct Attention2d<B: Backend> {
    qkv: Conv2d<B>,
    proj: Conv2d<B>,
    bn: BatchNorm2d<B>,
    heads: usize,
    mixer: Mixer2d,
}

impl<B: Backend> Clone for Attention2d<B> {
    fn clone(&self) -> Self {
        Attention2d {
            qkv: self.qkv.clone(),
            proj: self.proj.clone(),
            bn: self.bn.clone(),
            heads: self.heads,
            mixer: self.mixer,
        }
    }
}

impl<B: Backend> Attention2d<B> {
    /// A block over `channels` channels split into `heads` heads.
    pub fn new(vs: &ParamStore<B>, channels: usize, heads: usize, mixer: Mixer2d) -> Result<Self> {
        if heads == 0 || !channels.is_multiple_of(heads) {
            return Err(Error::invalid("Attention2d", format!("heads ({heads}) must divide channels ({channels})")));
        }
        let cfg = Conv2dConfig::default();
        Ok(Attention2d {
            qkv: Conv2d::new(&vs.sub("qkv"), channels, 3 * channels, (1, 1), cfg)?,
            proj: Conv2d::new(&vs.sub("proj"), channels, channels, (1, 1), cfg)?,
            bn: BatchNorm2d::new(&vs.sub("bn"), channels, BN)?,
            heads,
            mixer,
        })
    }

    /// The mixer.
    pub fn mixer(&self) -> Mixer2d {
        self.mixer
    }

    /// The attention alone, without projections, residual or norm: `q, k, v [n, heads, t, d_h]`
    /// to `y [n, heads, t, d_h]` (public so tests can compare it with a naive computation).
    pub fn attend(&self, q: &Var<B>, k: &Var<B>, v: &Var<B>) -> Result<Var<B>> {
        match self.mixer {
            Mixer2d::Ela(kernel) => {
                let s = 1.0 / (*q.dims().last().unwrap_or(&1) as f64).sqrt();
                q.mul_scalar(s)?.ela(&k.mul_scalar(s)?, v, &ElaParams::non_causal(kernel))
            }
            Mixer2d::Softmax => softmax_attention(q, k, v, false),
        }
    }

    /// `q, k, v` as `[n, heads, t, d_h]` from `x [n, c, h, w]` (the 1x1 projection, split).
    pub fn project(&self, x: &Var<B>) -> Result<(Var<B>, Var<B>, Var<B>)> {
        let d = x.dims();
        let (n, c, t) = (d[0], d[1], d[2] * d[3]);
        let qkv = self.qkv.forward(x)?.reshape([n, 3, self.heads, c / self.heads, t])?;
        // Channel block i of [n, 3, heads, d_h, t] -> [n, heads, t, d_h]: cells become the rows.
        let part =
            |i: usize| qkv.narrow(1usize, i, 1)?.reshape([n, self.heads, c / self.heads, t])?.transpose(2usize, 3);
        Ok((part(0)?, part(1)?, part(2)?))
    }

    /// `x [n, c, h, w] -> BN(x + proj(attention(x)))`, same shape.
    pub fn forward(&self, x: &Var<B>, train: bool) -> Result<Var<B>> {
        let d = x.dims();
        if d.len() != 4 {
            return Err(Error::RankMismatch { op: "Attention2d", expected: "4 ([n, c, h, w])", shape: x.shape() });
        }
        let (q, k, v) = self.project(x)?;
        // [n, heads, t, d_h] -> [n, heads, d_h, t] -> [n, c, h, w] (one copy).
        let y = self.attend(&q, &k, &v)?.transpose(2usize, 3)?.reshape([d[0], d[1], d[2], d[3]])?;
        self.bn.forward(&x.add(&self.proj.forward(&y)?)?, train)
    }
}

/// Cost of an [`Attention2d`] block over `channels` channels, `heads` heads, on an `hw` map. The attention
/// itself counts `2 heads t F (d_h + 1)` multiply-adds for ELA (`S`, `z`, numerators and
/// denominators; `F` the kernel's feature size) and `2 heads t^2 d_h` for softmax (`q k^T` and
/// the weighted sum of `v`); exponentials and the normalisation are not counted.
pub fn attention_cost(channels: usize, heads: usize, mixer: Mixer2d, hw: (usize, usize)) -> Cost {
    let c = channels;
    let t = (hw.0 * hw.1) as u64;
    let dh = (c / heads) as u64;
    let core = match mixer {
        Mixer2d::Ela(kernel) => 2 * heads as u64 * t * kernel.feature_size(c / heads) as u64 * (dh + 1),
        Mixer2d::Softmax => 2 * heads as u64 * t * t * dh,
    };
    conv_cost(c, 3 * c, 1, 1, true, false, hw)
        + conv_cost(c, c, 1, 1, true, false, hw)
        + Cost { params: 2 * c, macs: core }
}
