//! The loss's building blocks as functions over [`Var`]s, composed of existing differentiable ops
//! so that autograd derives their gradients (and `gradcheck` can check them):
//! [`softplus`], [`bce_with_logits`], [`focal_bce`], [`atan_ratio`] and [`ciou`].
//!
//! # Numerics
//! - `softplus(x) = log(1 + e^x)` is computed as `logsumexp([0, x])`: no overflow for large `x`,
//!   no `log(0)` for very negative `x`, and its gradient is exactly `sigmoid(x)` everywhere. (The
//!   textbook `relu(x) + log(1 + e^-|x|)` has the right value but, built from `relu` and `abs`
//!   whose derivatives at 0 are taken as 0, a wrong gradient `-y` instead of `0.5 - y` at
//!   `x = 0` exactly, which a zero-initialised bias hits.)
//! - There is no `atan` op, and CIoU's aspect-ratio term needs `atan(w/h)`. For `a, b > 0`,
//!   `atan(a/b) = pi/4 + atan(u)` with `u = (a-b)/(a+b)` in `(-1, 1)` (the tangent subtraction
//!   formula), then the half-angle step `atan(u) = 2 atan(r)`, `r = u / (1 + sqrt(1 + u^2))`,
//!   brings the argument within `tan(pi/8) = 0.414`, where the Taylor series to `r^15` is exact to
//!   `2 x 0.414^17 / 17 < 4e-8` — below f32 rounding. Every step is an autograd op, so the
//!   gradient is that of this (numerically exact) function.

use std::f64::consts::PI;

use ela_autograd::Var;
use ela_core::{Backend, Result, Tensor};

/// Added to unions and enclosing diagonals (squared pixels) so that degenerate boxes give a
/// finite loss.
const EPS: f64 = 1e-7;

/// `log(1 + e^x)`, elementwise, as `logsumexp([0, x])`.
pub fn softplus<B: Backend>(x: &Var<B>) -> Result<Var<B>> {
    let zero = Var::constant(x.value().zeros_like()?);
    let r = x.rank();
    Var::stack(&[&zero, x], r)?.logsumexp(r, false)
}

/// Binary cross-entropy of logits `x` against targets `y` in `[0, 1]` (same shape), elementwise:
/// `-y log sigmoid(x) - (1-y) log(1 - sigmoid(x)) = softplus(x) - x y`.
pub fn bce_with_logits<B: Backend>(x: &Var<B>, y: &Tensor<B>) -> Result<Var<B>> {
    softplus(x)?.sub(&x.mul(&Var::constant(y.clone()))?)
}

/// Focal binary cross-entropy (Lin et al. 2017), elementwise, for logits `x` and targets `y` in
/// `{0, 1}`:
///
/// ```text
/// FL = alpha_t (1 - p_t)^gamma BCE(x, y),   p = sigmoid(x),
/// 1 - p_t = y (1 - p) + (1 - y) p = p (1 - 2y) + y,   alpha_t = alpha y + (1 - alpha)(1 - y)
/// ```
///
/// The factor `(1 - p_t)^gamma` shrinks the loss of cells already classified confidently (the
/// thousands of easy empty cells), so the rare positives are not drowned out. `gamma = 0` and
/// `alpha = 0.5` give half the plain BCE; `alpha < 0` turns the class weighting off.
pub fn focal_bce<B: Backend>(x: &Var<B>, y: &Tensor<B>, gamma: f64, alpha: f64) -> Result<Var<B>> {
    let bce = bce_with_logits(x, y)?;
    let modulated = if gamma == 0.0 {
        bce
    } else {
        // 1 - p_t; its gradient flows through p (the modulating factor is part of the loss).
        let m = x.sigmoid()?.mul(&Var::constant(y.affine(-2.0, 1.0)?))?.add(&Var::constant(y.clone()))?;
        let f = if gamma == 2.0 { m.square()? } else { m.powf(gamma)? };
        f.mul(&bce)?
    };
    if alpha < 0.0 {
        return Ok(modulated);
    }
    modulated.mul(&Var::constant(y.affine(2.0 * alpha - 1.0, 1.0 - alpha)?))
}

/// `atan(a / b)` for positive `a`, `b` (same shapes), to f32 precision, from autograd ops (see the
/// module docs).
pub fn atan_ratio<B: Backend>(a: &Var<B>, b: &Var<B>) -> Result<Var<B>> {
    let u = a.sub(b)?.div(&a.add(b)?.add_scalar(1e-12)?)?;
    let r = u.div(&u.square()?.add_scalar(1.0)?.sqrt()?.add_scalar(1.0)?)?;
    let r2 = r.square()?;
    // atan(r) = r (1 - r^2/3 + r^4/5 - ... - r^14/15), by Horner in r^2.
    let mut poly = r2.mul_scalar(-1.0 / 15.0)?;
    for k in (1..7).rev() {
        let c = if k % 2 == 0 { 1.0 } else { -1.0 } / (2 * k + 1) as f64;
        poly = poly.add_scalar(c)?.mul(&r2)?;
    }
    r.mul(&poly.add_scalar(1.0)?)?.mul_scalar(2.0)?.add_scalar(PI / 4.0)
}

/// Complete IoU (Zheng et al. 2020) of boxes `pred` and `target`, both `[P, 4]` as
/// `x0, y0, x1, y1`, one value per row (`[P]`), in `[-1.5, 1]`:
///
/// ```text
/// CIoU = IoU - rho^2 / c^2 - alpha v
/// rho^2: squared distance between the centres; c^2: squared diagonal of the smallest box
///        enclosing both (so the centre term is scale-invariant and pulls even disjoint boxes)
/// v = 4/pi^2 (atan(w_t/h_t) - atan(w_p/h_p))^2    aspect-ratio mismatch, in [0, 1)
/// alpha = v / ((1 - IoU) + v)                     weighs v in only once the boxes overlap
/// ```
///
/// Gradients flow into both boxes, through `alpha` too (the paper and ultralytics treat `alpha` as
/// a constant; differentiating it keeps the gradient that of the value computed, which a
/// gradient check can verify).
pub fn ciou<B: Backend>(pred: &Var<B>, target: &Var<B>) -> Result<Var<B>> {
    let col = |b: &Var<B>, i: usize| b.narrow(1usize, i, 1);
    let (px0, py0, px1, py1) = (col(pred, 0)?, col(pred, 1)?, col(pred, 2)?, col(pred, 3)?);
    let (tx0, ty0, tx1, ty1) = (col(target, 0)?, col(target, 1)?, col(target, 2)?, col(target, 3)?);
    let (pw, ph, tw, th) = (px1.sub(&px0)?, py1.sub(&py0)?, tx1.sub(&tx0)?, ty1.sub(&ty0)?);
    let iw = px1.minimum(&tx1)?.sub(&px0.maximum(&tx0)?)?.relu()?;
    let ih = py1.minimum(&ty1)?.sub(&py0.maximum(&ty0)?)?.relu()?;
    let inter = iw.mul(&ih)?;
    let union = pw.mul(&ph)?.add(&tw.mul(&th)?)?.sub(&inter)?.add_scalar(EPS)?;
    let iou = inter.div(&union)?;
    let cw = px1.maximum(&tx1)?.sub(&px0.minimum(&tx0)?)?;
    let ch = py1.maximum(&ty1)?.sub(&py0.minimum(&ty0)?)?;
    let c2 = cw.square()?.add(&ch.square()?)?.add_scalar(EPS)?;
    // Centres differ by ((p0 + p1) - (t0 + t1)) / 2 on each axis.
    let dx = px0.add(&px1)?.sub(&tx0.add(&tx1)?)?;
    let dy = py0.add(&py1)?.sub(&ty0.add(&ty1)?)?;
    let rho2 = dx.square()?.add(&dy.square()?)?.mul_scalar(0.25)?;
    let v = atan_ratio(&tw, &th)?.sub(&atan_ratio(&pw, &ph)?)?.square()?.mul_scalar(4.0 / (PI * PI))?;
    let alpha = v.div(&v.sub(&iou)?.add_scalar(1.0 + EPS)?)?;
    let out = iou.sub(&rho2.div(&c2)?)?.sub(&alpha.mul(&v)?)?;
    out.reshape([out.dims()[0]])
}
