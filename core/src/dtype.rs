//! Element types.
//!
//! `F32` and `F64` are compute types. `F16` and `BF16` are storage types: the CPU backend computes
//! on them in f32 and rounds once when it stores the result. `U32` holds indices (gather, topk,
//! argmax, token ids) and `U8` holds boolean masks (comparisons, `where_cond`).

use half::{bf16, f16};

/// The element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// Booleans and bytes (masks).
    U8,
    /// Unsigned 32-bit integers (indices).
    U32,
    /// IEEE half precision (storage).
    F16,
    /// bfloat16 (storage).
    BF16,
    /// Single precision.
    F32,
    /// Double precision.
    F64,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::U8 => 1,
            DType::F16 | DType::BF16 => 2,
            DType::U32 | DType::F32 => 4,
            DType::F64 => 8,
        }
    }

    /// True for the four floating-point dtypes.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }

    /// Lower-case name as used on the command line and in safetensors headers ("f32", "bf16", ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DType::U8 => "u8",
            DType::U32 => "u32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
        }
    }
}

impl std::str::FromStr for DType {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        Ok(match s {
            "u8" => DType::U8,
            "u32" => DType::U32,
            "f16" => DType::F16,
            "bf16" => DType::BF16,
            "f32" => DType::F32,
            "f64" => DType::F64,
            _ => {
                return Err(crate::Error::invalid(
                    "dtype",
                    format!("unknown dtype {s:?}; expected one of u8, u32, f16, bf16, f32, f64"),
                ))
            }
        })
    }
}

/// A Rust type that is the element of some [`DType`].
pub trait WithDType: Copy + Send + Sync + 'static + bytemuck::Pod + std::fmt::Debug + PartialOrd + Default {
    /// The matching dtype.
    const DTYPE: DType;
    /// Widening conversion (exact for every type here except u32 above 2^53, which cannot occur).
    fn as_f64(self) -> f64;
    /// Narrowing conversion (rounds to nearest; saturates for integers).
    fn from_f64(v: f64) -> Self;
}

macro_rules! with_dtype {
    ($t:ty, $d:ident, $to:expr, $from:expr) => {
        impl WithDType for $t {
            const DTYPE: DType = DType::$d;
            #[inline]
            fn as_f64(self) -> f64 {
                $to(self)
            }
            #[inline]
            fn from_f64(v: f64) -> Self {
                $from(v)
            }
        }
    };
}
with_dtype!(u8, U8, |v: u8| v as f64, |v: f64| v as u8);
with_dtype!(u32, U32, |v: u32| v as f64, |v: f64| v as u32);
with_dtype!(f16, F16, |v: f16| v.to_f64(), |v: f64| f16::from_f32(f64_to_f32_round_to_odd(v)));
with_dtype!(bf16, BF16, |v: bf16| v.to_f64(), |v: f64| bf16::from_f32(f64_to_f32_round_to_odd(v)));

/// f64 -> f32 rounding to *odd*: truncate toward zero, then set the last mantissa bit when the
/// result is inexact. A value rounded this way to f32 and then to nearest-even in f16 or bf16
/// equals the value rounded once to f16/bf16 (f32's 24 bits exceed 2p + 2 for both targets),
/// whereas rounding to nearest twice can land one unit off at ties (and half's own `from_f64`
/// goes through f32 that way on CPUs with F16C).
fn f64_to_f32_round_to_odd(v: f64) -> f32 {
    let r = v as f32;
    if !r.is_finite() || r as f64 == v {
        return r;
    }
    // Truncate toward zero: step back one ulp if nearest rounding moved away from zero.
    let t = if (r as f64).abs() > v.abs() { f32::from_bits(r.to_bits() - 1) } else { r };
    f32::from_bits(t.to_bits() | 1)
}
with_dtype!(f32, F32, |v: f32| v as f64, |v: f64| v as f32);
with_dtype!(f64, F64, |v: f64| v, |v: f64| v);

/// The compute floats (f32, f64): what CPU kernels are written over.
pub trait Float: WithDType + num_traits::Float + std::iter::Sum + Send + Sync {
    /// Lossless or rounding conversion from f32.
    fn from_f32(v: f32) -> Self;
    /// Zero.
    const ZERO: Self;
    /// One.
    const ONE: Self;
}
impl Float for f32 {
    fn from_f32(v: f32) -> Self {
        v
    }
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}
impl Float for f64 {
    fn from_f32(v: f32) -> Self {
        v as f64
    }
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f64_to_half_rounds_once() {
        // 1 + 2^-11 is the f16 tie between 1 and 1 + 2^-10; the extra 2^-30 breaks the tie
        // upward, but rounding to f32 first drops it and the tie then goes to even (down).
        let x = 1.0 + 2f64.powi(-11) + 2f64.powi(-30);
        assert_eq!(<f16 as WithDType>::from_f64(x), f16::from_f64(1.0 + 2f64.powi(-10)));
        let y = 1.0 + 2f64.powi(-8) + 2f64.powi(-30);
        assert_eq!(<bf16 as WithDType>::from_f64(y), bf16::from_f64(1.0 + 2f64.powi(-7)));
        // Exact values, ties, infinities and NaN behave as IEEE round-to-nearest-even.
        for v in [0.0, -0.0, 1.0, -2.5, 65504.0, 1e-8, f64::INFINITY, 1e300] {
            assert_eq!(<f16 as WithDType>::from_f64(v).to_f64(), f16::from_f32(v as f32).to_f64(), "{v}");
        }
        assert!(<bf16 as WithDType>::from_f64(f64::NAN).is_nan());
        assert_eq!(<f16 as WithDType>::from_f64(1.0 + 2f64.powi(-11)), f16::from_f64(1.0));
    }
}
