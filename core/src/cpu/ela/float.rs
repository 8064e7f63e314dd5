//! The compute float of the ELA kernels: the GEMM, an in-place `exp` over slices, and the
//! threshold below which a row's denominator is recomputed exactly (see `exact_rows.rs`).

use crate::cpu::matmul::GemmFloat;

/// f32 or f64, as the ELA kernels need them.
pub(crate) trait ElaFloat: GemmFloat {
    /// A row whose shifted denominator falls below this may have lost its dominant terms to
    /// underflow in the fast path and is recomputed with its exact log-scale (`exact_rows.rs`). Chosen so
    /// that above it the dominant term is a normal number with room for 2^-mantissa smaller ones
    /// (docs/ela.md#numerics).
    const TINY: Self;
    /// `x <- exp(x)` for every element. Arguments are log-ratios `<= 0` (up to rounding) in every
    /// call the kernels make; `-inf` gives 0 and NaN stays NaN.
    fn exp_slice(xs: &mut [Self]);
    /// `exp` of one value, bit-identical to [`ElaFloat::exp_slice`].
    fn exp1(x: Self) -> Self {
        let mut a = [x];
        Self::exp_slice(&mut a);
        a[0]
    }
}

impl ElaFloat for f32 {
    const TINY: f32 = 1e-20;
    fn exp_slice(xs: &mut [f32]) {
        // The loop vectorizes; wider instruction sets are picked at run time when present. Every
        // variant runs the same IEEE operations (no FMA contraction), so results are identical.
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports AVX-512F (checked just above).
                return unsafe { exp_slice_avx512(xs) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2 (checked just above).
                return unsafe { exp_slice_avx2(xs) };
            }
        }
        exp_slice_portable(xs)
    }
}

/// Lanes of the widest vector [`ElaFloat::exp_slice`] runs (AVX-512, f32): a slice whose length
/// is a multiple of it leaves nothing to the scalar tail.
pub(crate) const EXP_LANES: usize = 16;

fn exp_slice_portable(xs: &mut [f32]) {
    for x in xs.iter_mut() {
        *x = exp_f32(*x);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn exp_slice_avx2(xs: &mut [f32]) {
    exp_slice_portable(xs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_slice_avx512(xs: &mut [f32]) {
    exp_slice_portable(xs)
}

impl ElaFloat for f64 {
    const TINY: f64 = 1e-250;
    fn exp_slice(xs: &mut [f64]) {
        // f64 is the exactness reference: use the correctly-rounded-ish libm exp.
        for x in xs.iter_mut() {
            *x = x.exp();
        }
    }
}

/// `exp(x)` in f32 by Cody-Waite range reduction `x = n ln2 + r`, `|r| <= ln2/2`, and the Cephes
/// `expf` polynomial for `e^r` (relative error ~1e-7), scaled by `2^n` built from its bits.
/// Results below `exp(-87)` flush to 0 (the kernels only need them relative to terms near 1),
/// above `exp(88.3)` give +inf.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer, kept in the low bits
                                     // Not `clamp`: max/min keep the loop vectorizable (NaN is restored below).
    #[allow(clippy::manual_clamp)]
    let xc = x.max(-87.0).min(88.3);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    // n as an integer without a float->int conversion (those do not vectorize everywhere).
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes: 5.0000001201e-1, which rounds to 0.5 in f32
    let e = p * r * r + r + 1.0;
    let y = e * f32::from_bits((ni.wrapping_add(127) as u32) << 23);
    let y = if x < -87.0 { 0.0 } else { y };
    let y = if x > 88.3 { f32::INFINITY } else { y };
    #[allow(clippy::eq_op)] // NaN test that vectorizes
    let nan = x != x;
    if nan {
        x
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_is_accurate_and_handles_specials() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = exp_f32(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
            x += 0.013;
        }
        assert!(worst < 3e-7, "max relative error {worst}");
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-1000.0), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(100.0), f32::INFINITY);
    }

    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        let xs: Vec<f32> = (0..4099).map(|i| -90.0 + i as f32 * 0.0437).chain([f32::NAN, f32::NEG_INFINITY]).collect();
        let mut a = xs.clone();
        exp_slice_portable(&mut a);
        let mut b = xs.clone();
        f32::exp_slice(&mut b);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b));
    }
}
