//! AVX2+FMA micro-kernels (16 ymm registers, 8 f32 / 4 f64 lanes).
//!
//! 6x16 f32 (6x8 f64) is the classic Haswell-era shape: 12 accumulators +
//! 2 B vectors + 1 broadcast = 15 of the 16 ymm registers, and 12
//! independent FMA chains cover Zen 4's 4-cycle latency x 2 FMA pipes.

use core::arch::x86_64::*;

use super::kernel_simd::simd_kernel;

simd_kernel!(
    /// f32 AVX2+FMA micro-kernel: `MR x (NV * 8)` tile.
    kernel_f32, f32, __m256, 8, "avx2,fma",
    setzero = _mm256_setzero_ps, set1 = _mm256_set1_ps, loadu = _mm256_loadu_ps,
    storeu = _mm256_storeu_ps, fmadd = _mm256_fmadd_ps, mul = _mm256_mul_ps
);

simd_kernel!(
    /// f64 AVX2+FMA micro-kernel: `MR x (NV * 4)` tile.
    kernel_f64, f64, __m256d, 4, "avx2,fma",
    setzero = _mm256_setzero_pd, set1 = _mm256_set1_pd, loadu = _mm256_loadu_pd,
    storeu = _mm256_storeu_pd, fmadd = _mm256_fmadd_pd, mul = _mm256_mul_pd
);
