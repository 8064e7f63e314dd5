//! A minimal vector type for the depthwise kernels: f32/f64 lanes on AVX-512F and AVX2+FMA, and
//! a one-lane fallback, behind one trait, so each kernel is written once.
//!
//! Explicit vectors, not auto-vectorized loops: the kernels keep several accumulators in
//! registers across taps or rows, a shape LLVM's vectorizers do not reliably find from scalar
//! code (they spilled the accumulator arrays to the stack). Each method is a `#[target_feature]`
//! function; they inline into the kernels, which [`multiversion`](super::depthwise) compiles
//! with the same features.

use crate::dtype::Float;

/// `W` lanes of `T`.
///
/// # Safety
/// The methods may only run on a CPU with the vector's instruction set; pointers must be valid
/// for `W` elements.
pub(super) trait Vector: Copy {
    type T: Float;
    const W: usize;
    unsafe fn zero() -> Self;
    unsafe fn splat(x: Self::T) -> Self;
    unsafe fn load(p: *const Self::T) -> Self;
    unsafe fn store(self, p: *mut Self::T);
    /// `self * b + c`, fused where the instruction set has FMA.
    unsafe fn madd(self, b: Self, c: Self) -> Self;
    unsafe fn add(self, b: Self) -> Self;
    /// Sum of the lanes.
    unsafe fn hsum(self) -> Self::T;
}

/// One lane, plain arithmetic (no fused multiply-add: without the `fma` target feature
/// `mul_add` is a library call). The baseline build and non-x86 targets use it.
#[derive(Clone, Copy)]
pub(super) struct Scalar<T>(T);

impl<T: Float> Vector for Scalar<T> {
    type T = T;
    const W: usize = 1;
    #[inline(always)]
    unsafe fn zero() -> Self {
        Scalar(T::ZERO)
    }
    #[inline(always)]
    unsafe fn splat(x: T) -> Self {
        Scalar(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const T) -> Self {
        // SAFETY: the caller guarantees `p` is readable.
        Scalar(unsafe { *p })
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut T) {
        // SAFETY: the caller guarantees `p` is writable.
        unsafe { *p = self.0 }
    }
    #[inline(always)]
    unsafe fn madd(self, b: Self, c: Self) -> Self {
        Scalar(self.0 * b.0 + c.0)
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        Scalar(self.0 + b.0)
    }
    #[inline(always)]
    unsafe fn hsum(self) -> T {
        self.0
    }
}

/// The vector types of a compute float for each instruction set.
pub(super) trait SimdFloat: Float {
    #[cfg(target_arch = "x86_64")]
    type V512: Vector<T = Self>;
    #[cfg(target_arch = "x86_64")]
    type V256: Vector<T = Self>;
}

#[cfg(not(target_arch = "x86_64"))]
impl SimdFloat for f32 {}
#[cfg(not(target_arch = "x86_64"))]
impl SimdFloat for f64 {}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{SimdFloat, Vector};
    use core::arch::x86_64::*;

    macro_rules! vector {
        ($name:ident, $t:ty, $v:ty, $w:expr, $feat:literal,
         zero = $zero:ident, splat = $splat:ident, load = $load:ident, store = $store:ident,
         fmadd = $fmadd:ident, add = $add:ident) => {
            #[derive(Clone, Copy)]
            pub(in super::super) struct $name($v);

            impl Vector for $name {
                type T = $t;
                const W: usize = $w;
                #[inline]
                #[target_feature(enable = $feat)]
                unsafe fn zero() -> Self {
                    $name($zero())
                }
                #[inline]
                #[target_feature(enable = $feat)]
                unsafe fn splat(x: $t) -> Self {
                    $name($splat(x))
                }
                #[inline]
                #[target_feature(enable = $feat)]
                unsafe fn load(p: *const $t) -> Self {
                    // SAFETY: the caller guarantees `p` is readable for `W` lanes.
                    $name(unsafe { $load(p) })
                }
                #[inline]
                #[target_feature(enable = $feat)]
                unsafe fn store(self, p: *mut $t) {
                    // SAFETY: the caller guarantees `p` is writable for `W` lanes.
                    unsafe { $store(p, self.0) }
                }
                #[inline]
                #[target_feature(enable = $feat)]
                unsafe fn madd(self, b: Self, c: Self) -> Self {
                    $name($fmadd(self.0, b.0, c.0))
                }
                #[inline]
                #[target_feature(enable = $feat)]
                unsafe fn add(self, b: Self) -> Self {
                    $name($add(self.0, b.0))
                }
                #[inline]
                #[target_feature(enable = $feat)]
                unsafe fn hsum(self) -> $t {
                    let mut lanes = [0.0 as $t; $w];
                    // SAFETY: `lanes` holds exactly `W` elements.
                    unsafe { $store(lanes.as_mut_ptr(), self.0) };
                    // Pairwise, like the vector adds it replaces.
                    let mut n = $w;
                    while n > 1 {
                        n /= 2;
                        for i in 0..n {
                            lanes[i] += lanes[i + n];
                        }
                    }
                    lanes[0]
                }
            }
        };
    }

    vector!(
        F32x16,
        f32,
        __m512,
        16,
        "avx512f",
        zero = _mm512_setzero_ps,
        splat = _mm512_set1_ps,
        load = _mm512_loadu_ps,
        store = _mm512_storeu_ps,
        fmadd = _mm512_fmadd_ps,
        add = _mm512_add_ps
    );
    vector!(
        F64x8,
        f64,
        __m512d,
        8,
        "avx512f",
        zero = _mm512_setzero_pd,
        splat = _mm512_set1_pd,
        load = _mm512_loadu_pd,
        store = _mm512_storeu_pd,
        fmadd = _mm512_fmadd_pd,
        add = _mm512_add_pd
    );
    vector!(
        F32x8,
        f32,
        __m256,
        8,
        "avx2,fma",
        zero = _mm256_setzero_ps,
        splat = _mm256_set1_ps,
        load = _mm256_loadu_ps,
        store = _mm256_storeu_ps,
        fmadd = _mm256_fmadd_ps,
        add = _mm256_add_ps
    );
    vector!(
        F64x4,
        f64,
        __m256d,
        4,
        "avx2,fma",
        zero = _mm256_setzero_pd,
        splat = _mm256_set1_pd,
        load = _mm256_loadu_pd,
        store = _mm256_storeu_pd,
        fmadd = _mm256_fmadd_pd,
        add = _mm256_add_pd
    );

    impl SimdFloat for f32 {
        type V512 = F32x16;
        type V256 = F32x8;
    }
    impl SimdFloat for f64 {
        type V512 = F64x8;
        type V256 = F64x4;
    }
}
