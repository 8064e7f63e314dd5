//! Rotary position embedding (RoPE, Su et al. 2021).
//!
//! Each head vector of size `d` (even) is split into `d/2` pairs, and pair `i` of the token at
//! position `p` is rotated by the angle `p * theta_i`, `theta_i = base^(-2i/d)`. The pairs are
//! `(x[i], x[i + d/2])` (the "rotate-half" layout of GPT-NeoX and LLaMA in Hugging Face):
//!
//! ```text
//! y[i]       = x[i] cos(p theta_i) - x[i + d/2] sin(p theta_i)
//! y[i + d/2] = x[i + d/2] cos(p theta_i) + x[i] sin(p theta_i)
//! ```
//!
//! A rotation is orthogonal, so it preserves norms, and for dot-product attention
//! `(R_i q) . (R_j k) = q . R_{j-i} k` depends on positions only through `i - j`.
//!
//! # RoPE and linear-attention feature maps
//! That relative-position property is a property of the *dot product*. A kernel applied after
//! the rotation, `k(R_i q, R_j k) = phi(R_i q) . psi(R_j k)` with a non-linear feature map
//! (Hadamard exp: `sum_d exp((R_i q)_d) exp((R_j k)_d)`; the squared-Euclidean maps), is in
//! general *not* a function of `i - j`: rotating both arguments by the same angle does not leave
//! `exp(a) . exp(b)` unchanged the way it leaves `a . b` unchanged. So RoPE followed by an ELA
//! feature map gives absolute position information mixed with content, not relative positions;
//! the model can still learn from it, but the textbook RoPE guarantee does not carry over.
//!
//! # Decoding
//! The rotation is a function of the absolute position, so a decoder that feeds one token at a
//! time passes `offset = number of tokens already processed`; the result equals the matching
//! slice of the full-sequence result (tested).
//!
//! The backward pass is the transposed rotation, obtained here from the autograd of the
//! `narrow`/`mul`/`add`/`concat` ops the forward is written with (the rotation is linear in `x`).

use ela_autograd::Var;
use ela_core::{Backend, DType, Error, Result, Tensor};

/// `cos(p theta_i)` and `sin(p theta_i)` for positions `start..start + len` and `i < dim/2`, as
/// two `[len, dim/2]` tensors. Angles are computed in f64 and rounded once to `dtype`.
pub fn rope_tables<B: Backend>(
    dim: usize,
    start: usize,
    len: usize,
    base: f64,
    dtype: DType,
    device: &B,
) -> Result<(Tensor<B>, Tensor<B>)> {
    if dim == 0 || dim % 2 == 1 {
        return Err(Error::invalid("rope", format!("the rotated dimension must be even and positive, got {dim}")));
    }
    if !(base > 1.0 && base.is_finite()) {
        return Err(Error::invalid("rope", format!("base must be finite and > 1 (commonly 10000), got {base}")));
    }
    let half = dim / 2;
    let too_long =
        || Error::invalid("rope", format!("{len} positions from {start} of {half} angles each are too many"));
    let end = start.checked_add(len).ok_or_else(too_long)?;
    let n = len.checked_mul(half).ok_or_else(too_long)?;
    // Fallible reservations: a table too large for memory is an error, not an abort.
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for v in [&mut cos, &mut sin] {
        v.try_reserve_exact(n).map_err(|_| {
            Error::invalid("rope", format!("tables of {len} x {half} f64 angles do not fit in host memory"))
        })?;
    }
    for p in start..end {
        for i in 0..half {
            let theta = base.powf(-2.0 * i as f64 / dim as f64);
            let (s, c) = (p as f64 * theta).sin_cos();
            cos.push(c);
            sin.push(s);
        }
    }
    let mk = |v: Vec<f64>| Tensor::from_vec(v, [len, half], device)?.to_dtype(dtype);
    Ok((mk(cos)?, mk(sin)?))
}

/// Rotate `x [.., time, dim]` with tables `cos`, `sin` of shape `[time, dim/2]`
/// (from [`rope_tables`]). Any number of leading axes (batch, heads) is allowed.
pub fn apply_rope<B: Backend>(x: &Var<B>, cos: &Tensor<B>, sin: &Tensor<B>) -> Result<Var<B>> {
    let dims = x.dims();
    if dims.len() < 2 {
        return Err(Error::RankMismatch { op: "rope", expected: "at least 2 ([.., time, dim])", shape: x.shape() });
    }
    let (t, d) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    if d % 2 != 0 || cos.dims() != [t, d / 2] || sin.dims() != cos.dims() {
        return Err(Error::ShapeMismatch {
            op: "rope",
            lhs: x.shape(),
            rhs: cos.shape().clone(),
            hint: format!("x is [.., time={t}, dim={d}] with dim even; cos and sin must both be [{t}, {}]", d / 2),
        });
    }
    let (cos, sin) = (Var::constant(cos.to_dtype(x.dtype())?), Var::constant(sin.to_dtype(x.dtype())?));
    let half = d / 2;
    let x1 = x.narrow(-1isize, 0, half)?;
    let x2 = x.narrow(-1isize, half, half)?;
    let y1 = x1.mul(&cos)?.sub(&x2.mul(&sin)?)?;
    let y2 = x2.mul(&cos)?.add(&x1.mul(&sin)?)?;
    Var::concat(&[&y1, &y2], -1isize)
}

/// Precomputed rotary tables for positions `0..max_len`.
pub struct Rope<B: Backend> {
    cos: Tensor<B>,
    sin: Tensor<B>,
    dim: usize,
    base: f64,
}

impl<B: Backend> Clone for Rope<B> {
    fn clone(&self) -> Self {
        Rope { cos: self.cos.clone(), sin: self.sin.clone(), dim: self.dim, base: self.base }
    }
}

impl<B: Backend> Rope<B> {
    /// Tables for head size `dim` (even), positions `0..max_len`, frequency `base` (10000 in the
    /// original), stored in `dtype` on `device`.
    pub fn new(dim: usize, max_len: usize, base: f64, dtype: DType, device: &B) -> Result<Self> {
        let (cos, sin) = rope_tables(dim, 0, max_len, base, dtype, device)?;
        Ok(Rope { cos, sin, dim, base })
    }

    /// The rotated head size.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// The frequency base.
    pub fn base(&self) -> f64 {
        self.base
    }
    /// The number of positions covered.
    pub fn max_len(&self) -> usize {
        self.cos.dims()[0]
    }

    /// Rotate `x [.., time, dim]` whose first time step is at absolute position `offset`
    /// (0 for training; the number of cached tokens when decoding).
    pub fn apply(&self, x: &Var<B>, offset: usize) -> Result<Var<B>> {
        let dims = x.dims();
        if dims.len() < 2 || dims[dims.len() - 1] != self.dim {
            return Err(Error::ShapeMismatch {
                op: "Rope::apply",
                lhs: x.shape(),
                rhs: self.cos.shape().clone(),
                hint: format!("x must be [.., time, {}] (the head size the tables were built for)", self.dim),
            });
        }
        let t = dims[dims.len() - 2];
        if offset + t > self.max_len() {
            return Err(Error::invalid(
                "Rope::apply",
                format!(
                    "positions {offset}..{} exceed the {} precomputed positions; build the Rope with a larger max_len",
                    offset + t,
                    self.max_len()
                ),
            ));
        }
        apply_rope(x, &self.cos.narrow(0usize, offset, t)?, &self.sin.narrow(0usize, offset, t)?)
    }
}
