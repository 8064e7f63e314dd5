//! Elementwise kernels: unary maps, broadcast binary maps, comparisons, `where`, casts.

use crate::cpu::storage::{CpuElement, CpuStorage, FloatMap1};
use crate::cpu::strided::{contiguous_cow, gather};
use crate::cpu::PAR_THRESHOLD;
use crate::dtype::{DType, Float, WithDType};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::op::{BinaryOp, CmpOp, UnaryOp};
use half::{bf16, f16};
use rayon::prelude::*;

/// Scalar definition of every unary op: the single source of truth that the CUDA kernels and the
/// tests mirror.
#[inline]
pub fn unary_scalar<T: Float>(op: UnaryOp, x: T) -> T {
    let c = |v: f64| T::from_f64(v);
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Recip => x.recip(),
        UnaryOp::Abs => x.abs(),
        UnaryOp::Square => x * x,
        UnaryOp::Relu => {
            if x > T::ZERO {
                x
            } else {
                T::ZERO
            }
        }
        UnaryOp::Gelu => {
            let k = c(0.797_884_560_802_865_4); // sqrt(2/pi)
            c(0.5) * x * (T::ONE + (k * (x + c(0.044715) * x * x * x)).tanh())
        }
        UnaryOp::GeluGrad => {
            // d/dx [0.5 x (1 + tanh(u))], u = k (x + 0.044715 x^3)
            let k = c(0.797_884_560_802_865_4);
            let u = k * (x + c(0.044715) * x * x * x);
            let t = u.tanh();
            let du = k * (T::ONE + c(3.0 * 0.044715) * x * x);
            c(0.5) * (T::ONE + t) + c(0.5) * x * (T::ONE - t * t) * du
        }
        UnaryOp::Silu => x / (T::ONE + (-x).exp()),
        UnaryOp::SiluGrad => {
            let s = T::ONE / (T::ONE + (-x).exp());
            s * (T::ONE + x * (T::ONE - s))
        }
        UnaryOp::Sigmoid => {
            // Two branches so neither exp overflows.
            if x >= T::ZERO {
                T::ONE / (T::ONE + (-x).exp())
            } else {
                let e = x.exp();
                e / (T::ONE + e)
            }
        }
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sign => {
            if x > T::ZERO {
                T::ONE
            } else if x < T::ZERO {
                -T::ONE
            } else {
                T::ZERO
            }
        }
        UnaryOp::Step => {
            if x > T::ZERO {
                T::ONE
            } else {
                T::ZERO
            }
        }
        UnaryOp::Powf(p) => x.powf(c(p)),
        UnaryOp::Affine { mul, add } => x * c(mul) + c(add),
        UnaryOp::MaxScalar(v) => x.max(c(v)),
        UnaryOp::MinScalar(v) => x.min(c(v)),
    }
}

/// Scalar definition of every binary op.
#[inline]
pub fn binary_scalar<T: Float>(op: BinaryOp, a: T, b: T) -> T {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        // NaN propagates, as in numpy's maximum/minimum.
        BinaryOp::Maximum => {
            if a.is_nan() || a >= b {
                a
            } else {
                b
            }
        }
        BinaryOp::Minimum => {
            if a.is_nan() || a <= b {
                a
            } else {
                b
            }
        }
    }
}

struct Unary(UnaryOp);
impl FloatMap1 for Unary {
    const OP: &'static str = "unary";
    fn f<T: Float>(&self, v: &[T], layout: &Layout) -> Result<Vec<T>> {
        let op = self.0;
        let src = contiguous_cow(v, layout);
        Ok(if src.len() >= PAR_THRESHOLD {
            src.par_iter().map(|&x| unary_scalar(op, x)).collect()
        } else {
            src.iter().map(|&x| unary_scalar(op, x)).collect()
        })
    }
}

/// `op(x)` over a float view.
pub fn unary(op: UnaryOp, s: &CpuStorage, layout: &Layout) -> Result<CpuStorage> {
    match Unary(op).map(s, layout) {
        Err(Error::UnsupportedDType { dtype, expected, .. }) => {
            Err(Error::UnsupportedDType { op: op.name(), dtype, expected })
        }
        r => r,
    }
}

/// Applies `f(a, b)` over two same-shape views row by row, so that broadcast operands (stride 0)
/// are never materialised. Rows are processed in parallel for large outputs.
pub(crate) fn zip_map<A, B, O, F>(a: &[A], la: &Layout, b: &[B], lb: &Layout, f: F) -> Vec<O>
where
    A: Copy + Send + Sync,
    B: Copy + Send + Sync,
    O: Copy + Send + Sync + Default,
    F: Fn(A, B) -> O + Send + Sync,
{
    let n = la.elem_count();
    if let (Some(ra), Some(rb)) = (la.contiguous_range(), lb.contiguous_range()) {
        let (a, b) = (&a[ra], &b[rb]);
        return if n >= PAR_THRESHOLD {
            a.par_iter().zip(b.par_iter()).map(|(&x, &y)| f(x, y)).collect()
        } else {
            a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
        };
    }
    let (ra, rb) = (la.rows(), lb.rows());
    let len = ra.inner_len;
    let mut out = vec![O::default(); n];
    if len == 0 {
        return out;
    }
    let row = |r: usize, dst: &mut [O]| {
        let (oa, ob) = (ra.row_offset(r), rb.row_offset(r));
        let (sa, sb) = (ra.inner_stride, rb.inner_stride);
        match (sa, sb) {
            (1, 1) => {
                for ((d, &x), &y) in dst.iter_mut().zip(&a[oa..oa + len]).zip(&b[ob..ob + len]) {
                    *d = f(x, y);
                }
            }
            (1, 0) => {
                let y = b[ob];
                for (d, &x) in dst.iter_mut().zip(&a[oa..oa + len]) {
                    *d = f(x, y);
                }
            }
            (0, 1) => {
                let x = a[oa];
                for (d, &y) in dst.iter_mut().zip(&b[ob..ob + len]) {
                    *d = f(x, y);
                }
            }
            _ => {
                for (j, d) in dst.iter_mut().enumerate() {
                    *d = f(a[oa + j * sa], b[ob + j * sb]);
                }
            }
        }
    };
    if n >= PAR_THRESHOLD {
        out.par_chunks_mut(len).enumerate().for_each(|(r, dst)| row(r, dst));
    } else {
        out.chunks_mut(len).enumerate().for_each(|(r, dst)| row(r, dst));
    }
    out
}

/// `op(a, b)` over two same-shape float views of one dtype.
pub fn binary(op: BinaryOp, a: &CpuStorage, la: &Layout, b: &CpuStorage, lb: &Layout) -> Result<CpuStorage> {
    fn half<H: WithDType + CpuElement>(op: BinaryOp, a: &[H], la: &Layout, b: &[H], lb: &Layout) -> CpuStorage {
        let out = zip_map(a, la, b, lb, |x: H, y: H| {
            H::from_f64(binary_scalar(op, x.as_f64() as f32, y.as_f64() as f32) as f64)
        });
        H::wrap(out)
    }
    Ok(match (a, b) {
        (CpuStorage::F32(x), CpuStorage::F32(y)) => {
            CpuStorage::F32(zip_map(x, la, y, lb, |p, q| binary_scalar(op, p, q)))
        }
        (CpuStorage::F64(x), CpuStorage::F64(y)) => {
            CpuStorage::F64(zip_map(x, la, y, lb, |p, q| binary_scalar(op, p, q)))
        }
        (CpuStorage::F16(x), CpuStorage::F16(y)) => half::<f16>(op, x, la, y, lb),
        (CpuStorage::BF16(x), CpuStorage::BF16(y)) => half::<bf16>(op, x, la, y, lb),
        (x, y) if x.dtype() != y.dtype() => {
            return Err(Error::DTypeMismatch { op: op.name(), lhs: x.dtype(), rhs: y.dtype() })
        }
        (x, _) => return Err(Error::UnsupportedDType { op: op.name(), dtype: x.dtype(), expected: "a float dtype" }),
    })
}

/// Elementwise comparison of two same-shape views of one dtype, as a `U8` mask.
pub fn cmp(op: CmpOp, a: &CpuStorage, la: &Layout, b: &CpuStorage, lb: &Layout) -> Result<CpuStorage> {
    fn go<T: WithDType>(op: CmpOp, a: &[T], la: &Layout, b: &[T], lb: &Layout) -> Vec<u8> {
        zip_map(a, la, b, lb, |x: T, y: T| {
            let r = match op {
                CmpOp::Eq => x == y,
                CmpOp::Ne => x != y,
                CmpOp::Lt => x < y,
                CmpOp::Le => x <= y,
                CmpOp::Gt => x > y,
                CmpOp::Ge => x >= y,
            };
            r as u8
        })
    }
    Ok(CpuStorage::U8(match (a, b) {
        (CpuStorage::U8(x), CpuStorage::U8(y)) => go(op, x, la, y, lb),
        (CpuStorage::U32(x), CpuStorage::U32(y)) => go(op, x, la, y, lb),
        (CpuStorage::F16(x), CpuStorage::F16(y)) => go(op, x, la, y, lb),
        (CpuStorage::BF16(x), CpuStorage::BF16(y)) => go(op, x, la, y, lb),
        (CpuStorage::F32(x), CpuStorage::F32(y)) => go(op, x, la, y, lb),
        (CpuStorage::F64(x), CpuStorage::F64(y)) => go(op, x, la, y, lb),
        (x, y) => return Err(Error::DTypeMismatch { op: "cmp", lhs: x.dtype(), rhs: y.dtype() }),
    }))
}

/// `cond ? t : f` over three same-shape views.
pub fn where_cond(
    cond: &CpuStorage,
    lc: &Layout,
    t: &CpuStorage,
    lt: &Layout,
    f: &CpuStorage,
    lf: &Layout,
) -> Result<CpuStorage> {
    let CpuStorage::U8(c) = cond else {
        return Err(Error::UnsupportedDType { op: "where_cond", dtype: cond.dtype(), expected: "a u8 mask" });
    };
    // Pick in two passes through zip_map: first (cond, t) -> Option, then with f. Values are
    // copied, never computed, so every dtype is handled the same way.
    fn go<T: CpuElement + Default>(c: &[u8], lc: &Layout, t: &[T], lt: &Layout, f: &[T], lf: &Layout) -> CpuStorage {
        let picked: Vec<(u8, T)> = zip_map(c, lc, t, lt, |m, x| (m, x));
        let pl = Layout::contiguous(lc.shape().clone());
        T::wrap(zip_map(&picked, &pl, f, lf, |(m, x), y| if m != 0 { x } else { y }))
    }
    Ok(match (t, f) {
        (CpuStorage::U8(x), CpuStorage::U8(y)) => go(c, lc, x, lt, y, lf),
        (CpuStorage::U32(x), CpuStorage::U32(y)) => go(c, lc, x, lt, y, lf),
        (CpuStorage::F16(x), CpuStorage::F16(y)) => go(c, lc, x, lt, y, lf),
        (CpuStorage::BF16(x), CpuStorage::BF16(y)) => go(c, lc, x, lt, y, lf),
        (CpuStorage::F32(x), CpuStorage::F32(y)) => go(c, lc, x, lt, y, lf),
        (CpuStorage::F64(x), CpuStorage::F64(y)) => go(c, lc, x, lt, y, lf),
        (x, y) => return Err(Error::DTypeMismatch { op: "where_cond", lhs: x.dtype(), rhs: y.dtype() }),
    })
}

/// A buffer of `len` copies of `value`.
pub fn full(len: usize, value: f64, dtype: DType) -> CpuStorage {
    fn go<T: CpuElement>(len: usize, v: f64) -> CpuStorage {
        T::wrap(vec![T::from_f64(v); len])
    }
    match dtype {
        DType::U8 => go::<u8>(len, value),
        DType::U32 => go::<u32>(len, value),
        DType::F16 => go::<f16>(len, value),
        DType::BF16 => go::<bf16>(len, value),
        DType::F32 => go::<f32>(len, value),
        DType::F64 => go::<f64>(len, value),
    }
}

/// Contiguous copy of a view.
pub fn copy_contiguous(s: &CpuStorage, layout: &Layout) -> CpuStorage {
    match s {
        CpuStorage::U8(v) => CpuStorage::U8(gather(v, layout)),
        CpuStorage::U32(v) => CpuStorage::U32(gather(v, layout)),
        CpuStorage::F16(v) => CpuStorage::F16(gather(v, layout)),
        CpuStorage::BF16(v) => CpuStorage::BF16(gather(v, layout)),
        CpuStorage::F32(v) => CpuStorage::F32(gather(v, layout)),
        CpuStorage::F64(v) => CpuStorage::F64(gather(v, layout)),
    }
}

/// Contiguous copy converted to `dtype` (rounding to nearest; floats to integers truncate).
pub fn cast(s: &CpuStorage, layout: &Layout, dtype: DType) -> CpuStorage {
    if s.dtype() == dtype {
        return copy_contiguous(s, layout);
    }
    match (s, dtype) {
        // Direct paths avoid double rounding through f64 for the common float casts.
        (CpuStorage::F32(v), DType::F16) => CpuStorage::F16(gather(v, layout).into_iter().map(f16::from_f32).collect()),
        (CpuStorage::F32(v), DType::BF16) => {
            CpuStorage::BF16(gather(v, layout).into_iter().map(bf16::from_f32).collect())
        }
        (CpuStorage::F64(v), DType::F32) => CpuStorage::F32(gather(v, layout).into_iter().map(|x| x as f32).collect()),
        _ => CpuStorage::from_f64_vec(&s.to_f64_vec(layout), dtype),
    }
}
