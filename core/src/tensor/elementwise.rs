//! Elementwise ops: unary maps, numpy-broadcast binary maps, scalar forms, comparisons, `where`.

use super::Tensor;
use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::op::{BinaryOp, CmpOp, UnaryOp};

macro_rules! unary_methods {
    ($($name:ident => $op:expr, $doc:literal;)*) => {
        impl<B: Backend> Tensor<B> {
            $(
                #[doc = $doc]
                pub fn $name(&self) -> Result<Self> {
                    self.unary($op)
                }
            )*
        }
    };
}

/// Calls the macro `$m` with the list of named unary methods, `name => UnaryOp, "doc";`. The one
/// list both `Tensor` (here) and `ela_autograd::Var` generate their methods from, so a map added
/// here has a differentiable twin (whose backward `Var::unary` must then handle).
#[doc(hidden)]
#[macro_export]
macro_rules! with_unary_methods {
    ($m:ident) => {
        $m! {
            neg => $crate::UnaryOp::Neg, "`-x`";
            exp => $crate::UnaryOp::Exp, "`e^x`";
            log => $crate::UnaryOp::Log, "natural logarithm";
            sqrt => $crate::UnaryOp::Sqrt, "square root";
            recip => $crate::UnaryOp::Recip, "`1/x`";
            abs => $crate::UnaryOp::Abs, "`|x|`";
            square => $crate::UnaryOp::Square, "`x^2`";
            relu => $crate::UnaryOp::Relu, "`max(x, 0)`";
            gelu => $crate::UnaryOp::Gelu, "GELU (tanh approximation)";
            silu => $crate::UnaryOp::Silu, "`x * sigmoid(x)`";
            sigmoid => $crate::UnaryOp::Sigmoid, "`1 / (1 + e^-x)`";
            tanh => $crate::UnaryOp::Tanh, "hyperbolic tangent";
            sign => $crate::UnaryOp::Sign, "sign in {-1, 0, 1} (its gradient is zero)";
        }
    };
}

crate::with_unary_methods!(unary_methods);

impl<B: Backend> Tensor<B> {
    /// Apply any [`UnaryOp`] elementwise.
    pub fn unary(&self, op: UnaryOp) -> Result<Self> {
        self.check_float(op.name())?;
        let s = self.device().unary(op, self.storage(), self.layout())?;
        Ok(Self::from_storage(s, self.shape().clone(), self.device()))
    }

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
    /// `x - c`.
    pub fn sub_scalar(&self, c: f64) -> Result<Self> {
        self.affine(1.0, -c)
    }
    /// `x * c`.
    pub fn mul_scalar(&self, c: f64) -> Result<Self> {
        self.affine(c, 0.0)
    }
    /// `x / c`.
    pub fn div_scalar(&self, c: f64) -> Result<Self> {
        self.affine(1.0 / c, 0.0)
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

    /// Broadcast two tensors to their common shape (views).
    pub fn broadcast_pair(&self, other: &Self, op: &'static str) -> Result<(Self, Self)> {
        self.check_same_device(other, op)?;
        if self.shape() == other.shape() {
            return Ok((self.clone(), other.clone()));
        }
        let shape = self.shape().broadcast_with(other.shape(), op)?;
        let a = self.with_layout(self.layout().broadcast_as(&shape, op)?);
        let b = other.with_layout(other.layout().broadcast_as(&shape, op)?);
        Ok((a, b))
    }

    /// Apply any [`BinaryOp`] with numpy broadcasting.
    pub fn binary(&self, op: BinaryOp, other: &Self) -> Result<Self> {
        self.check_same_dtype(other, op.name())?;
        self.check_float(op.name())?;
        let (a, b) = self.broadcast_pair(other, op.name())?;
        let s = self.device().binary(op, a.storage(), a.layout(), b.storage(), b.layout())?;
        Ok(Self::from_storage(s, a.shape().clone(), self.device()))
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
    /// Elementwise maximum (broadcasting; NaN propagates).
    pub fn maximum(&self, other: &Self) -> Result<Self> {
        self.binary(BinaryOp::Maximum, other)
    }
    /// Elementwise minimum (broadcasting; NaN propagates).
    pub fn minimum(&self, other: &Self) -> Result<Self> {
        self.binary(BinaryOp::Minimum, other)
    }

    /// Elementwise comparison with broadcasting; the result is a `U8` mask.
    pub fn cmp(&self, op: CmpOp, other: &Self) -> Result<Self> {
        self.check_same_dtype(other, "cmp")?;
        let (a, b) = self.broadcast_pair(other, "cmp")?;
        let s = self.device().cmp(op, a.storage(), a.layout(), b.storage(), b.layout())?;
        Ok(Self::from_storage(s, a.shape().clone(), self.device()))
    }

    /// Elementwise comparison against a scalar; the result is a `U8` mask.
    pub fn cmp_scalar(&self, op: CmpOp, c: f64) -> Result<Self> {
        let s = Self::scalar(c, self.dtype(), self.device())?;
        self.cmp(op, &s)
    }

    /// `mask ? on_true : on_false` with broadcasting of all three; `self` is the `U8` mask.
    pub fn where_cond(&self, on_true: &Self, on_false: &Self) -> Result<Self> {
        self.check_dtype(DType::U8, "where_cond", "a u8 mask as the condition")?;
        on_true.check_same_dtype(on_false, "where_cond")?;
        self.check_same_device(on_true, "where_cond")?;
        self.check_same_device(on_false, "where_cond")?;
        let shape = self
            .shape()
            .broadcast_with(on_true.shape(), "where_cond")?
            .broadcast_with(on_false.shape(), "where_cond")?;
        let c = self.broadcast_as(shape.clone())?;
        let t = on_true.broadcast_as(shape.clone())?;
        let f = on_false.broadcast_as(shape.clone())?;
        let s = self.device().where_cond(c.storage(), c.layout(), t.storage(), t.layout(), f.storage(), f.layout())?;
        Ok(Self::from_storage(s, shape, self.device()))
    }

    /// Replace the elements where `mask` (U8, broadcastable) is nonzero by `value`.
    pub fn masked_fill(&self, mask: &Self, value: f64) -> Result<Self> {
        if mask.dtype() != DType::U8 {
            return Err(Error::UnsupportedDType { op: "masked_fill", dtype: mask.dtype(), expected: "a u8 mask" });
        }
        let v = Self::scalar(value, self.dtype(), self.device())?;
        mask.where_cond(&v, self)
    }
}
