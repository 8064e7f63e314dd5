//! Elementwise ops. For `y = f(x)`: `dx = dy * f'(x)`. For broadcast binary ops the gradient of
//! each operand is summed back to its own shape (`sum_to`), the adjoint of broadcasting.
//! Derivations: docs/autograd.md#elementwise.

use ela_core::{Backend, BinaryOp, CmpOp, Result, Tensor, UnaryOp};

use crate::var::Var;

impl<B: Backend> Var<B> {
    /// Any elementwise [`UnaryOp`] (derivative ops are not differentiable again).
    pub fn unary(&self, op: UnaryOp) -> Result<Self> {
        let x = self.value();
        let y = x.unary(op)?;
        let (xs, ys) = (x.clone(), y.clone());
        Var::record(op.name(), y, &[self], move |g, _| {
            let (x, y) = (&xs, &ys);
            let dx = match op {
                UnaryOp::Neg => g.neg()?,
                UnaryOp::Exp => g.mul(y)?,                      // (e^x)' = e^x = y
                UnaryOp::Log => g.div(x)?,                      // 1/x
                UnaryOp::Sqrt => g.div(&y.mul_scalar(2.0)?)?,   // 1/(2 sqrt x)
                UnaryOp::Recip => g.mul(&y.square()?)?.neg()?,  // -1/x^2 = -y^2
                UnaryOp::Abs => g.mul(&x.sign()?)?,             // sign(x), 0 at 0
                UnaryOp::Square => g.mul(&x.mul_scalar(2.0)?)?, // 2x
                UnaryOp::Relu => g.mul(&x.unary(UnaryOp::Step)?)?,
                UnaryOp::Gelu => g.mul(&x.unary(UnaryOp::GeluGrad)?)?,
                UnaryOp::Silu => g.mul(&x.unary(UnaryOp::SiluGrad)?)?,
                UnaryOp::Sigmoid => g.mul(&y.mul(&y.affine(-1.0, 1.0)?)?)?, // s(1-s)
                UnaryOp::Tanh => g.mul(&y.square()?.affine(-1.0, 1.0)?)?,   // 1 - t^2
                UnaryOp::Powf(p) => g.mul(&x.powf(p - 1.0)?.mul_scalar(p)?)?, // p x^(p-1)
                UnaryOp::Affine { mul, .. } => g.mul_scalar(mul)?,
                // The gradient passes where x is the kept value (ties go to x).
                UnaryOp::MaxScalar(c) => g.mul(&x.cmp_scalar(CmpOp::Ge, c)?.to_dtype(x.dtype())?)?,
                UnaryOp::MinScalar(c) => g.mul(&x.cmp_scalar(CmpOp::Le, c)?.to_dtype(x.dtype())?)?,
                UnaryOp::Sign | UnaryOp::Step => g.zeros_like()?,
                UnaryOp::GeluGrad | UnaryOp::SiluGrad => {
                    return Err(ela_core::Error::invalid(
                        op.name(),
                        "second derivatives of GELU/SiLU are not implemented",
                    ))
                }
            };
            Ok(vec![Some(dx)])
        })
    }
}

macro_rules! unary_methods {
    ($($name:ident => $op:expr, $doc:literal;)*) => {
        impl<B: Backend> Var<B> {
            $(
                #[doc = $doc]
                pub fn $name(&self) -> Result<Self> {
                    self.unary($op)
                }
            )*
        }
    };
}

// The list is ela-core's, shared with `Tensor` (`with_unary_methods!`), so the two cannot drift.
ela_core::with_unary_methods!(unary_methods);

impl<B: Backend> Var<B> {
    /// `x^p`.
    pub fn powf(&self, p: f64) -> Result<Self> {
        self.unary(UnaryOp::Powf(p))
    }
    /// `x * mul + add`.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Self> {
        self.unary(UnaryOp::Affine { mul, add })
    }
    /// `x + c`.
    pub fn add_scalar(&self, c: f64) -> Result<Self> {
        self.affine(1.0, c)
    }
    /// `x * c`.
    pub fn mul_scalar(&self, c: f64) -> Result<Self> {
        self.affine(c, 0.0)
    }
    /// `max(x, c)`.
    pub fn maximum_scalar(&self, c: f64) -> Result<Self> {
        self.unary(UnaryOp::MaxScalar(c))
    }
    /// `min(x, c)`.
    pub fn minimum_scalar(&self, c: f64) -> Result<Self> {
        self.unary(UnaryOp::MinScalar(c))
    }
    /// Clamp to `[lo, hi]`.
    pub fn clamp(&self, lo: f64, hi: f64) -> Result<Self> {
        self.maximum_scalar(lo)?.minimum_scalar(hi)
    }

    /// Any [`BinaryOp`] with numpy broadcasting.
    pub fn binary(&self, op: BinaryOp, other: &Self) -> Result<Self> {
        let (a, b) = (self.value(), other.value());
        let y = a.binary(op, &b)?;
        let ys = y.clone();
        Var::record(op.name(), y, &[self, other], move |g, needs| {
            let (sa, sb) = (a.shape(), b.shape());
            // Gradients w.r.t. the broadcast operands, then summed back to each shape.
            let (ga, gb) = match op {
                BinaryOp::Add => (Some(g.clone()), Some(g.clone())),
                BinaryOp::Sub => (Some(g.clone()), needs[1].then(|| g.neg()).transpose()?),
                BinaryOp::Mul => (needs[0].then(|| g.mul(&b)).transpose()?, needs[1].then(|| g.mul(&a)).transpose()?),
                BinaryOp::Div => (
                    needs[0].then(|| g.div(&b)).transpose()?,
                    // d(a/b)/db = -a/b^2 = -y/b
                    needs[1].then(|| g.mul(&ys)?.div(&b)?.neg()).transpose()?,
                ),
                BinaryOp::Maximum | BinaryOp::Minimum => {
                    // The winner (ties: lhs, matching the forward) takes the gradient.
                    let cmp = if op == BinaryOp::Maximum { CmpOp::Ge } else { CmpOp::Le };
                    let m = a.cmp(cmp, &b)?;
                    let zero = Tensor::zeros((), g.dtype(), g.device())?;
                    (Some(m.where_cond(g, &zero)?), Some(m.where_cond(&zero, g)?))
                }
            };
            Ok(vec![
                ga.filter(|_| needs[0]).map(|t| t.sum_to(sa)).transpose()?,
                gb.filter(|_| needs[1]).map(|t| t.sum_to(sb)).transpose()?,
            ])
        })
    }

    /// `a + b` (broadcasting).
    pub fn add(&self, other: &Self) -> Result<Self> {
        self.binary(BinaryOp::Add, other)
    }
    /// `a - b` (broadcasting).
    pub fn sub(&self, other: &Self) -> Result<Self> {
        self.binary(BinaryOp::Sub, other)
    }
    /// `a * b` (broadcasting).
    pub fn mul(&self, other: &Self) -> Result<Self> {
        self.binary(BinaryOp::Mul, other)
    }
    /// `a / b` (broadcasting).
    pub fn div(&self, other: &Self) -> Result<Self> {
        self.binary(BinaryOp::Div, other)
    }
    /// Elementwise maximum (broadcasting).
    pub fn maximum(&self, other: &Self) -> Result<Self> {
        self.binary(BinaryOp::Maximum, other)
    }
    /// Elementwise minimum (broadcasting).
    pub fn minimum(&self, other: &Self) -> Result<Self> {
        self.binary(BinaryOp::Minimum, other)
    }

    /// `mask ? on_true : on_false` (the `U8` mask is a constant tensor; broadcasting).
    pub fn where_cond(mask: &Tensor<B>, on_true: &Self, on_false: &Self) -> Result<Self> {
        let (t, f) = (on_true.value(), on_false.value());
        let y = mask.where_cond(&t, &f)?;
        let m = mask.clone();
        Var::record("where_cond", y, &[on_true, on_false], move |g, needs| {
            let zero = Tensor::zeros((), g.dtype(), g.device())?;
            Ok(vec![
                needs[0].then(|| m.where_cond(g, &zero)?.sum_to(t.shape())).transpose()?,
                needs[1].then(|| m.where_cond(&zero, g)?.sum_to(f.shape())).transpose()?,
            ])
        })
    }

    /// Replace elements where the `U8` mask is nonzero by `value` (no gradient flows there).
    pub fn masked_fill(&self, mask: &Tensor<B>, value: f64) -> Result<Self> {
        let x = self.value();
        let y = x.masked_fill(mask, value)?;
        let m = mask.clone();
        Var::record("masked_fill", y, &[self], move |g, _| {
            let zero = Tensor::zeros((), g.dtype(), g.device())?;
            Ok(vec![Some(m.where_cond(&zero, g)?.sum_to(x.shape())?)])
        })
    }

    /// Convert to another float dtype; the gradient is converted back to the source dtype
    /// (`dx = g`: the cast is the identity up to rounding, docs/autograd.md#elementwise). This is
    /// how f32 master weights used as bf16 copies receive f32 gradients (mixed precision).
    pub fn to_dtype(&self, dtype: ela_core::DType) -> Result<Self> {
        let x = self.value();
        let src = x.dtype();
        Var::record("to_dtype", x.to_dtype(dtype)?, &[self], move |g, _| Ok(vec![Some(g.to_dtype(src)?)]))
    }
}
