//! Elementwise kernels: unary maps, broadcast binary maps, comparisons, `where`, casts.

use crate::cpu::alloc::filled;
use crate::cpu::storage::{CpuElement, CpuStorage};
use crate::cpu::strided::{build, gather, Plan};
use crate::dtype::{DType, Float, WithDType};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::op::{BinaryOp, CmpOp, UnaryOp};
use half::{bf16, f16};

/// Scalar definition of every unary op: the single source of truth that the CUDA kernels and the
/// tests mirror. The CPU kernels call it with a constant `op` and rely on it being inlined so the
/// `match` folds away.
#[inline(always)]
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
            // `1 / (1 + exp(-x))` for x >= 0 and `exp(x) / (1 + exp(x))` below, so neither exp
            // overflows. Both exponents are `-|x|`, so one unconditional exp and a select serve
            // both (no data-dependent branch around the call).
            let e = (-x.abs()).exp();
            let num = if x >= T::ZERO { T::ONE } else { e };
            num / (T::ONE + e)
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

/// Scalar definition of every binary op (inlined like [`unary_scalar`]).
#[inline(always)]
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

/// One unary op as a type, so each op gets its own monomorphised (vectorisable) loop: every
/// `apply` calls [`unary_scalar`] with an `op` whose variant is a compile-time constant, so its
/// `match` folds away and the results are exactly `unary_scalar`'s.
trait UnaryKernel: Copy + Send + Sync {
    fn apply<T: Float>(self, x: T) -> T;
}

mod kernels {
    use super::{unary_scalar, UnaryKernel};
    use crate::dtype::Float;
    use crate::op::UnaryOp;

    macro_rules! unit {
        ($($name:ident),*) => {$(
            #[derive(Clone, Copy)]
            pub(super) struct $name;
            impl UnaryKernel for $name {
                #[inline(always)]
                fn apply<T: Float>(self, x: T) -> T {
                    unary_scalar(UnaryOp::$name, x)
                }
            }
        )*};
    }
    unit!(Neg, Exp, Log, Sqrt, Recip, Abs, Square, Relu, Gelu, GeluGrad, Silu, SiluGrad, Sigmoid, Tanh, Sign, Step);

    #[derive(Clone, Copy)]
    pub(super) struct Powf(pub f64);
    #[derive(Clone, Copy)]
    pub(super) struct Affine(pub f64, pub f64);
    #[derive(Clone, Copy)]
    pub(super) struct MaxScalar(pub f64);
    #[derive(Clone, Copy)]
    pub(super) struct MinScalar(pub f64);
    impl UnaryKernel for Powf {
        #[inline(always)]
        fn apply<T: Float>(self, x: T) -> T {
            unary_scalar(UnaryOp::Powf(self.0), x)
        }
    }
    impl UnaryKernel for Affine {
        #[inline(always)]
        fn apply<T: Float>(self, x: T) -> T {
            unary_scalar(UnaryOp::Affine { mul: self.0, add: self.1 }, x)
        }
    }
    impl UnaryKernel for MaxScalar {
        #[inline(always)]
        fn apply<T: Float>(self, x: T) -> T {
            unary_scalar(UnaryOp::MaxScalar(self.0), x)
        }
    }
    impl UnaryKernel for MinScalar {
        #[inline(always)]
        fn apply<T: Float>(self, x: T) -> T {
            unary_scalar(UnaryOp::MinScalar(self.0), x)
        }
    }
}

/// Same as [`with_unary_op`] for [`BinaryOp`].
macro_rules! with_binary_op {
    ($op:expr, $k:ident => $body:expr) => {
        match $op {
            BinaryOp::Add => {
                const $k: BinaryOp = BinaryOp::Add;
                $body
            }
            BinaryOp::Sub => {
                const $k: BinaryOp = BinaryOp::Sub;
                $body
            }
            BinaryOp::Mul => {
                const $k: BinaryOp = BinaryOp::Mul;
                $body
            }
            BinaryOp::Div => {
                const $k: BinaryOp = BinaryOp::Div;
                $body
            }
            BinaryOp::Maximum => {
                const $k: BinaryOp = BinaryOp::Maximum;
                $body
            }
            BinaryOp::Minimum => {
                const $k: BinaryOp = BinaryOp::Minimum;
                $body
            }
        }
    };
}

/// Applies `f` to every element of a view, in logical order. Strided and broadcast views are
/// walked through a coalesced [`Plan`], never gathered first; large outputs are built in parallel
/// chunks of [`PAR_CHUNK`](crate::cpu::strided::PAR_CHUNK) elements.
pub(crate) fn map1<A, O, F>(a: &[A], la: &Layout, f: F) -> Result<Vec<O>>
where
    A: Copy + Send + Sync,
    O: Copy + Send + Sync,
    F: Fn(A) -> O + Send + Sync,
{
    if let Some(r) = la.contiguous_range() {
        let a = &a[r];
        return build(a.len(), |start, dst| {
            for (d, &x) in dst.iter_mut().zip(&a[start..]) {
                d.write(f(x));
            }
        });
    }
    let plan = Plan::new([la]);
    let s = plan.inner[0];
    build(plan.n, |start, dst| {
        plan.for_runs(start, start + dst.len(), |[o], pos, count| {
            let d = &mut dst[pos - start..pos - start + count];
            if s == 1 {
                for (d, &x) in d.iter_mut().zip(&a[o..o + count]) {
                    d.write(f(x));
                }
            } else {
                for (j, d) in d.iter_mut().enumerate() {
                    d.write(f(a[o + j * s]));
                }
            }
        })
    })
}

fn unary_with<K: UnaryKernel>(k: K, s: &CpuStorage, l: &Layout) -> Result<Option<CpuStorage>> {
    // f16/bf16 widen to f32, compute, and round once on store.
    Ok(Some(match s {
        CpuStorage::F32(v) => CpuStorage::F32(map1(v, l, move |x: f32| k.apply(x))?),
        CpuStorage::F64(v) => CpuStorage::F64(map1(v, l, move |x: f64| k.apply(x))?),
        CpuStorage::F16(v) => CpuStorage::F16(map1(v, l, move |x: f16| f16::from_f32(k.apply(x.to_f32())))?),
        CpuStorage::BF16(v) => CpuStorage::BF16(map1(v, l, move |x: bf16| bf16::from_f32(k.apply(x.to_f32())))?),
        _ => return Ok(None),
    }))
}

/// `op(x)` over a float view.
pub fn unary(op: UnaryOp, s: &CpuStorage, layout: &Layout) -> Result<CpuStorage> {
    use kernels as k;
    let (s, l) = (s, layout);
    let out = match op {
        UnaryOp::Neg => unary_with(k::Neg, s, l),
        UnaryOp::Exp => unary_with(k::Exp, s, l),
        UnaryOp::Log => unary_with(k::Log, s, l),
        UnaryOp::Sqrt => unary_with(k::Sqrt, s, l),
        UnaryOp::Recip => unary_with(k::Recip, s, l),
        UnaryOp::Abs => unary_with(k::Abs, s, l),
        UnaryOp::Square => unary_with(k::Square, s, l),
        UnaryOp::Relu => unary_with(k::Relu, s, l),
        UnaryOp::Gelu => unary_with(k::Gelu, s, l),
        UnaryOp::GeluGrad => unary_with(k::GeluGrad, s, l),
        UnaryOp::Silu => unary_with(k::Silu, s, l),
        UnaryOp::SiluGrad => unary_with(k::SiluGrad, s, l),
        UnaryOp::Sigmoid => unary_with(k::Sigmoid, s, l),
        UnaryOp::Tanh => unary_with(k::Tanh, s, l),
        UnaryOp::Sign => unary_with(k::Sign, s, l),
        UnaryOp::Step => unary_with(k::Step, s, l),
        UnaryOp::Powf(p) => unary_with(k::Powf(p), s, l),
        UnaryOp::Affine { mul, add } => unary_with(k::Affine(mul, add), s, l),
        UnaryOp::MaxScalar(v) => unary_with(k::MaxScalar(v), s, l),
        UnaryOp::MinScalar(v) => unary_with(k::MinScalar(v), s, l),
    };
    out?.ok_or_else(|| Error::UnsupportedDType { op: op.name(), dtype: s.dtype(), expected: "a float dtype" })
}

/// Applies `f(a, b)` over two same-shape views in logical order. The views are walked jointly
/// through a coalesced [`Plan`] (so broadcast operands, stride 0, are never materialised and a
/// per-channel operand is one scalar per row); large outputs are built in parallel chunks.
pub(crate) fn zip_map<A, B, O, F>(a: &[A], la: &Layout, b: &[B], lb: &Layout, f: F) -> Result<Vec<O>>
where
    A: Copy + Send + Sync,
    B: Copy + Send + Sync,
    O: Copy + Send + Sync,
    F: Fn(A, B) -> O + Send + Sync,
{
    let plan = Plan::new([la, lb]);
    let [sa, sb] = plan.inner;
    build(plan.n, |start, dst| {
        plan.for_runs(start, start + dst.len(), |[oa, ob], pos, len| {
            let dst = &mut dst[pos - start..pos - start + len];
            match (sa, sb) {
                (1, 1) => {
                    for ((d, &x), &y) in dst.iter_mut().zip(&a[oa..oa + len]).zip(&b[ob..ob + len]) {
                        d.write(f(x, y));
                    }
                }
                (1, 0) => {
                    let y = b[ob];
                    for (d, &x) in dst.iter_mut().zip(&a[oa..oa + len]) {
                        d.write(f(x, y));
                    }
                }
                (0, 1) => {
                    let x = a[oa];
                    for (d, &y) in dst.iter_mut().zip(&b[ob..ob + len]) {
                        d.write(f(x, y));
                    }
                }
                _ => {
                    for (j, d) in dst.iter_mut().enumerate() {
                        d.write(f(a[oa + j * sa], b[ob + j * sb]));
                    }
                }
            }
        })
    })
}

/// `op(a, b)` over two same-shape float views of one dtype.
pub fn binary(op: BinaryOp, a: &CpuStorage, la: &Layout, b: &CpuStorage, lb: &Layout) -> Result<CpuStorage> {
    fn half<H: WithDType + CpuElement>(op: BinaryOp, a: &[H], la: &Layout, b: &[H], lb: &Layout) -> Result<CpuStorage> {
        let out = with_binary_op!(op, K => zip_map(a, la, b, lb, |x: H, y: H| {
            H::from_f64(binary_scalar(K, x.as_f64() as f32, y.as_f64() as f32) as f64)
        }));
        Ok(H::wrap(out?))
    }
    Ok(match (a, b) {
        (CpuStorage::F32(x), CpuStorage::F32(y)) => {
            CpuStorage::F32((with_binary_op!(op, K => zip_map(x, la, y, lb, |p, q| binary_scalar(K, p, q))))?)
        }
        (CpuStorage::F64(x), CpuStorage::F64(y)) => {
            CpuStorage::F64((with_binary_op!(op, K => zip_map(x, la, y, lb, |p, q| binary_scalar(K, p, q))))?)
        }
        (CpuStorage::F16(x), CpuStorage::F16(y)) => half::<f16>(op, x, la, y, lb)?,
        (CpuStorage::BF16(x), CpuStorage::BF16(y)) => half::<bf16>(op, x, la, y, lb)?,
        (x, y) if x.dtype() != y.dtype() => {
            return Err(Error::DTypeMismatch { op: op.name(), lhs: x.dtype(), rhs: y.dtype() })
        }
        (x, _) => return Err(Error::UnsupportedDType { op: op.name(), dtype: x.dtype(), expected: "a float dtype" }),
    })
}

/// Elementwise comparison of two same-shape views of one dtype, as a `U8` mask.
pub fn cmp(op: CmpOp, a: &CpuStorage, la: &Layout, b: &CpuStorage, lb: &Layout) -> Result<CpuStorage> {
    fn go<T: WithDType>(op: CmpOp, a: &[T], la: &Layout, b: &[T], lb: &Layout) -> Result<Vec<u8>> {
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
        (CpuStorage::U8(x), CpuStorage::U8(y)) => go(op, x, la, y, lb)?,
        (CpuStorage::U32(x), CpuStorage::U32(y)) => go(op, x, la, y, lb)?,
        (CpuStorage::F16(x), CpuStorage::F16(y)) => go(op, x, la, y, lb)?,
        (CpuStorage::BF16(x), CpuStorage::BF16(y)) => go(op, x, la, y, lb)?,
        (CpuStorage::F32(x), CpuStorage::F32(y)) => go(op, x, la, y, lb)?,
        (CpuStorage::F64(x), CpuStorage::F64(y)) => go(op, x, la, y, lb)?,
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
    fn go<T: CpuElement>(c: &[u8], lc: &Layout, t: &[T], lt: &Layout, f: &[T], lf: &Layout) -> Result<CpuStorage> {
        let picked: Vec<(u8, T)> = zip_map(c, lc, t, lt, |m, x| (m, x))?;
        let pl = Layout::contiguous(lc.shape().clone());
        Ok(T::wrap(zip_map(&picked, &pl, f, lf, |(m, x), y| if m != 0 { x } else { y })?))
    }
    Ok(match (t, f) {
        (CpuStorage::U8(x), CpuStorage::U8(y)) => go(c, lc, x, lt, y, lf)?,
        (CpuStorage::U32(x), CpuStorage::U32(y)) => go(c, lc, x, lt, y, lf)?,
        (CpuStorage::F16(x), CpuStorage::F16(y)) => go(c, lc, x, lt, y, lf)?,
        (CpuStorage::BF16(x), CpuStorage::BF16(y)) => go(c, lc, x, lt, y, lf)?,
        (CpuStorage::F32(x), CpuStorage::F32(y)) => go(c, lc, x, lt, y, lf)?,
        (CpuStorage::F64(x), CpuStorage::F64(y)) => go(c, lc, x, lt, y, lf)?,
        (x, y) => return Err(Error::DTypeMismatch { op: "where_cond", lhs: x.dtype(), rhs: y.dtype() }),
    })
}

/// A buffer of `len` copies of `value` (reserved fallibly, as every CPU buffer: see `alloc.rs`).
pub fn full(len: usize, value: f64, dtype: DType) -> Result<CpuStorage> {
    fn go<T: CpuElement>(len: usize, v: f64) -> Result<CpuStorage> {
        Ok(T::wrap(filled(len, T::from_f64(v))?))
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
pub fn copy_contiguous(s: &CpuStorage, layout: &Layout) -> Result<CpuStorage> {
    Ok(match s {
        CpuStorage::U8(v) => CpuStorage::U8(gather(v, layout)?),
        CpuStorage::U32(v) => CpuStorage::U32(gather(v, layout)?),
        CpuStorage::F16(v) => CpuStorage::F16(gather(v, layout)?),
        CpuStorage::BF16(v) => CpuStorage::BF16(gather(v, layout)?),
        CpuStorage::F32(v) => CpuStorage::F32(gather(v, layout)?),
        CpuStorage::F64(v) => CpuStorage::F64(gather(v, layout)?),
    })
}

/// Write the view `src_l` of `src` into the view `dst_l` of `dst` in place (same shape; the
/// dtypes must match, which the caller checked).
pub fn copy_into(dst: &mut CpuStorage, dst_l: &Layout, src: &CpuStorage, src_l: &Layout) -> Result<()> {
    use crate::cpu::strided::scatter;
    match (dst, src) {
        (CpuStorage::U8(d), CpuStorage::U8(s)) => scatter(d, dst_l, s, src_l),
        (CpuStorage::U32(d), CpuStorage::U32(s)) => scatter(d, dst_l, s, src_l),
        (CpuStorage::F16(d), CpuStorage::F16(s)) => scatter(d, dst_l, s, src_l),
        (CpuStorage::BF16(d), CpuStorage::BF16(s)) => scatter(d, dst_l, s, src_l),
        (CpuStorage::F32(d), CpuStorage::F32(s)) => scatter(d, dst_l, s, src_l),
        (CpuStorage::F64(d), CpuStorage::F64(s)) => scatter(d, dst_l, s, src_l),
        (d, s) => return Err(Error::DTypeMismatch { op: "copy_into", lhs: d.dtype(), rhs: s.dtype() }),
    }
    Ok(())
}

/// Contiguous copy converted to `dtype` (rounding to nearest; floats to integers truncate).
pub fn cast(s: &CpuStorage, layout: &Layout, dtype: DType) -> Result<CpuStorage> {
    if s.dtype() == dtype {
        return copy_contiguous(s, layout);
    }
    Ok(match (s, dtype) {
        // Direct paths avoid double rounding through f64 for the common float casts.
        (CpuStorage::F32(v), DType::F16) => CpuStorage::F16(map1(v, layout, f16::from_f32)?),
        (CpuStorage::F32(v), DType::BF16) => CpuStorage::BF16(map1(v, layout, bf16::from_f32)?),
        (CpuStorage::F64(v), DType::F32) => CpuStorage::F32(map1(v, layout, |x| x as f32)?),
        _ => CpuStorage::from_f64_vec(&s.to_f64_vec(layout)?, dtype)?,
    })
}
