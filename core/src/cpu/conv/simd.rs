//! A minimal vector type for the depthwise kernels (`depthwise.rs`) and the weight-gradient dot
//! products (`dot.rs`): f32/f64 lanes on AVX-512F and AVX2+FMA, and a one-lane fallback, behind
//! one trait, so each kernel is written once; and the run-time choice among them.
//!
//! Explicit vectors, not auto-vectorized loops: the kernels keep several accumulators in
//! registers across taps or rows, a shape LLVM's vectorizers do not reliably find from scalar
//! code (they spilled the accumulator arrays to the stack). Each method is a `#[target_feature]`
//! function; they inline into the kernels, which [`multiversion`] compiles with the same
//! features, picked at run time.

use crate::dtype::Float;

/// Instruction sets the kernels are compiled for (the x86 ones are only ever picked on
/// x86_64 CPUs that have them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) enum Isa {
    Avx512,
    Avx2,
    Baseline,
}

/// Every instruction set this CPU can run, widest first.
pub(super) fn supported() -> Vec<Isa> {
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
            v.push(Isa::Avx512);
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            v.push(Isa::Avx2);
        }
    }
    v.push(Isa::Baseline);
    v
}

/// The widest supported instruction set.
pub(super) fn best() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| supported()[0])
}

/// Defines `fn $name<T>(isa, args)` running `$body::<V>(args)` with the vector type `V` of `T`
/// for `isa` (one of [`supported`]): AVX-512F, AVX2+FMA, or one plain lane. The bodies are
/// `#[inline(always)]`, so each copy is compiled with its instruction set enabled throughout
/// (the vector methods, and the plain loops such as the depthwise de-interleave, which LLVM
/// vectorizes on its own).
macro_rules! multiversion {
    ($name:ident => $body:ident ($($a:ident: $t:ty),* $(,)?)) => {
        #[allow(clippy::too_many_arguments)]
        fn $name<T: $crate::cpu::conv::simd::SimdFloat>(isa: $crate::cpu::conv::simd::Isa, $($a: $t),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512<T: $crate::cpu::conv::simd::SimdFloat>($($a: $t),*) {
                    // SAFETY: the caller checked the features.
                    unsafe { $body::<T::V512>($($a),*) }
                }
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2<T: $crate::cpu::conv::simd::SimdFloat>($($a: $t),*) {
                    // SAFETY: the caller checked the features.
                    unsafe { $body::<T::V256>($($a),*) }
                }
                match isa {
                    // SAFETY: `isa` is one of `supported()`, which detected the features.
                    $crate::cpu::conv::simd::Isa::Avx512 => return unsafe { avx512($($a),*) },
                    // SAFETY: as above.
                    $crate::cpu::conv::simd::Isa::Avx2 => return unsafe { avx2($($a),*) },
                    $crate::cpu::conv::simd::Isa::Baseline => {}
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = isa;
            // SAFETY: one plain lane runs on any CPU.
            unsafe { $body::<$crate::cpu::conv::simd::Scalar<T>>($($a),*) }
        }
    };
}

pub(super) use multiversion;

/// `W` lanes of `T`.
///
/// # Safety
/// The methods may only run on a CPU with the vector's instruction set; pointers must be valid
/// for `W` elements.
pub(super) trait Vector: Copy {
    type T: Float;
    /// Lanes.
    const W: usize;
    /// Vector registers of the instruction set (sizes the register blocks).
    const REGS: usize;
    unsafe fn zero() -> Self;
    unsafe fn splat(x: Self::T) -> Self;
    unsafe fn load(p: *const Self::T) -> Self;
    unsafe fn store(self, p: *mut Self::T);
    /// `self * b + c`, fused where the instruction set has FMA.
    unsafe fn madd(self, b: Self, c: Self) -> Self;
    unsafe fn add(self, b: Self) -> Self;
    /// Sum of the lanes.
    unsafe fn hsum(self) -> Self::T;
    /// The lane sums of four vectors (what four [`Vector::hsum`] give, up to rounding order):
    /// one shuffle tree for all four where the instruction set allows.
    #[inline(always)]
    unsafe fn hsum4(v: [Self; 4]) -> [Self::T; 4] {
        // SAFETY: as for the caller.
        unsafe { [v[0].hsum(), v[1].hsum(), v[2].hsum(), v[3].hsum()] }
    }
}

/// One lane, plain arithmetic (no fused multiply-add: without the `fma` target feature
/// `mul_add` is a library call). The baseline build and non-x86 targets use it.
#[derive(Clone, Copy)]
pub(super) struct Scalar<T>(T);

impl<T: Float> Vector for Scalar<T> {
    type T = T;
    const W: usize = 1;
    const REGS: usize = 16;
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
        ($name:ident, $t:ty, $v:ty, $w:expr, $regs:expr, $feat:literal,
         zero = $zero:ident, splat = $splat:ident, load = $load:ident, store = $store:ident,
         fmadd = $fmadd:ident, add = $add:ident $(, hsum4 = $hsum4:ident)?) => {
            #[derive(Clone, Copy)]
            pub(in super::super) struct $name($v);

            impl Vector for $name {
                type T = $t;
                const W: usize = $w;
                const REGS: usize = $regs;
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
                $(
                #[inline]
                #[target_feature(enable = $feat)]
                unsafe fn hsum4(v: [Self; 4]) -> [$t; 4] {
                    $hsum4([v[0].0, v[1].0, v[2].0, v[3].0])
                }
                )?
            }
        };
    }

    /// Lane sums of four f32x16: pairs interleaved and added (unpack), then the pairs of pairs
    /// (shuffle), leaving `[a, b, c, d]` partial sums in each 128-bit lane, whose four copies
    /// are added last.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn hsum4_f32x16(v: [__m512; 4]) -> [f32; 4] {
        let ab = _mm512_add_ps(_mm512_unpacklo_ps(v[0], v[1]), _mm512_unpackhi_ps(v[0], v[1]));
        let cd = _mm512_add_ps(_mm512_unpacklo_ps(v[2], v[3]), _mm512_unpackhi_ps(v[2], v[3]));
        let s = _mm512_add_ps(_mm512_shuffle_ps::<0x44>(ab, cd), _mm512_shuffle_ps::<0xEE>(ab, cd));
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(s)));
        let t = _mm256_add_ps(_mm512_castps512_ps256(s), hi);
        let u = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps::<1>(t));
        let mut out = [0.0f32; 4];
        // SAFETY: `out` holds 4 floats.
        unsafe { _mm_storeu_ps(out.as_mut_ptr(), u) };
        out
    }

    /// [`hsum4_f32x16`] for f32x8.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum4_f32x8(v: [__m256; 4]) -> [f32; 4] {
        let ab = _mm256_add_ps(_mm256_unpacklo_ps(v[0], v[1]), _mm256_unpackhi_ps(v[0], v[1]));
        let cd = _mm256_add_ps(_mm256_unpacklo_ps(v[2], v[3]), _mm256_unpackhi_ps(v[2], v[3]));
        let s = _mm256_add_ps(_mm256_shuffle_ps::<0x44>(ab, cd), _mm256_shuffle_ps::<0xEE>(ab, cd));
        let u = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
        let mut out = [0.0f32; 4];
        // SAFETY: `out` holds 4 floats.
        unsafe { _mm_storeu_ps(out.as_mut_ptr(), u) };
        out
    }

    vector!(
        F32x16,
        f32,
        __m512,
        16,
        32,
        "avx512f",
        zero = _mm512_setzero_ps,
        splat = _mm512_set1_ps,
        load = _mm512_loadu_ps,
        store = _mm512_storeu_ps,
        fmadd = _mm512_fmadd_ps,
        add = _mm512_add_ps,
        hsum4 = hsum4_f32x16
    );
    vector!(
        F64x8,
        f64,
        __m512d,
        8,
        32,
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
        16,
        "avx2,fma",
        zero = _mm256_setzero_ps,
        splat = _mm256_set1_ps,
        load = _mm256_loadu_ps,
        store = _mm256_storeu_ps,
        fmadd = _mm256_fmadd_ps,
        add = _mm256_add_ps,
        hsum4 = hsum4_f32x8
    );
    vector!(
        F64x4,
        f64,
        __m256d,
        4,
        16,
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
