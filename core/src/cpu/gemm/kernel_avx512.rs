//! AVX-512F micro-kernels (32 zmm registers, 16 f32 / 8 f64 lanes).
//!
//! Zen 4 executes a 512-bit FMA as two 256-bit halves, so peak flops equal
//! AVX2's; the gain is the doubled register file: a 12x32 f32 tile keeps
//! 24 accumulators + 2 B vectors in registers, halving the loads per FMA
//! compared with the 16-register AVX2 6x16 tile.

use core::arch::x86_64::*;

use super::kernel_simd::simd_kernel;

simd_kernel!(
    /// f32 AVX-512F micro-kernel: `MR x (NV * 16)` tile.
    kernel_f32, f32, __m512, 16, "avx512f",
    setzero = _mm512_setzero_ps, set1 = _mm512_set1_ps, loadu = _mm512_loadu_ps,
    storeu = _mm512_storeu_ps, fmadd = _mm512_fmadd_ps, mul = _mm512_mul_ps
);

simd_kernel!(
    /// f64 AVX-512F micro-kernel: `MR x (NV * 8)` tile.
    kernel_f64, f64, __m512d, 8, "avx512f",
    setzero = _mm512_setzero_pd, set1 = _mm512_set1_pd, loadu = _mm512_loadu_pd,
    storeu = _mm512_storeu_pd, fmadd = _mm512_fmadd_pd, mul = _mm512_mul_pd
);
