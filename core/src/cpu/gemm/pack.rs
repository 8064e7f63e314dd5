//! Packing of A and B blocks into contiguous, zero-padded micro-panels.
//!
//! Packing turns any strided operand (row-major, transposed, broadcast with
//! stride 0) into the exact order the micro-kernel streams, so the kernel
//! only ever does unit-stride loads and never needs an edge case: partial
//! panels are padded up to the full `MR`/`NR` width. The padded lanes only
//! feed tile entries that are discarded, so padding with zeros is not needed
//! for correctness; it keeps stale buffer contents (possibly denormals or
//! NaN, slow on some CPUs) out of the FMAs.

use super::Elem;

/// Packs a `lanes x kb` block into `ceil(lanes / w)` micro-panels of width
/// `w`, panel after panel, each stored k-major: `dst[panel][p][lane]`.
///
/// For A the lanes are rows (`s_lane = rsa`, `s_k = csa`, `w = MR`); for B
/// they are columns (`s_lane = csb`, `s_k = rsb`, `w = NR`).
///
/// # Safety
/// `src[l * s_lane + p * s_k]` must be readable for all `l < lanes`,
/// `p < kb`, and `dst` writable for `ceil(lanes / w) * w * kb` elements.
pub(crate) unsafe fn pack<T: Elem>(
    w: usize,
    lanes: usize,
    kb: usize,
    src: *const T,
    s_lane: usize,
    s_k: usize,
    dst: *mut T,
) {
    let mut l0 = 0;
    let mut d = dst;
    if s_lane == 1 && lanes >= 2 * w {
        // Lanes contiguous in memory (row-major B, column-major A), several full panels: one pass
        // over the block, each k step's run of lanes copied into every panel at once. Panel by
        // panel, the copy would read every cache line of a strided source once per panel.
        let full = lanes / w;
        // SAFETY: lanes < full * w and k steps < kb are inside the caller's ranges; panel `q`
        // occupies dst[q * w * kb .. (q + 1) * w * kb].
        unsafe { copy_panels(w, full, kb, src, s_k, dst) };
        l0 = full * w;
        // SAFETY: full panels of w * kb elements precede the rest.
        d = unsafe { dst.add(full * w * kb) };
    }
    while l0 < lanes {
        let cols = w.min(lanes - l0);
        // SAFETY: every offset below is inside the ranges the caller vouched for.
        unsafe {
            let s = src.add(l0 * s_lane);
            if cols == w && s_lane == 1 {
                // Lanes contiguous in memory (row-major B, column-major A):
                // one short copy per k step.
                copy_panels(w, 1, kb, s, s_k, d);
            } else if cols == w && s_k == 1 && T::pack_transposed(w, kb, s, s_lane, d) {
                // k contiguous in memory (column-major B): transposed in 8 x 8 blocks.
            } else if s_k != 0 && s_k < s_lane {
                // k is the faster-varying direction in memory (row-major A,
                // column-major B): read each lane contiguously, scatter into
                // the panel, which is small enough to sit in L1.
                for l in 0..cols {
                    let sl = s.add(l * s_lane);
                    for p in 0..kb {
                        *d.add(p * w + l) = *sl.add(p * s_k);
                    }
                }
                zero_pad(w, cols, kb, d);
            } else {
                for p in 0..kb {
                    let sp = s.add(p * s_k);
                    for l in 0..cols {
                        *d.add(p * w + l) = *sp.add(l * s_lane);
                    }
                }
                zero_pad(w, cols, kb, d);
            }
            d = d.add(w * kb);
        }
        l0 += w;
    }
}

/// Copies `panels` full micro-panels of width `w` whose lanes are contiguous in memory: for every
/// k step `p`, the run `src[p * s_k .. p * s_k + panels * w]` goes `w` lanes to each panel,
/// `dst[q * w * kb + p * w ..]`, all panels in one pass over the k steps. A run is one
/// micro-panel row, 24-128 bytes: as a `memcpy` call each (the run length unknown at compile
/// time) the calls cost more than the copying, so the kernels' panel widths get copies of
/// compile-time length, which compile to a few vector moves.
///
/// # Safety
/// `src[p * s_k .. p * s_k + panels * w]` readable for `p < kb`, `dst[.. panels * w * kb]`
/// writable.
#[inline(always)]
unsafe fn copy_panels<T: Elem>(w: usize, panels: usize, kb: usize, src: *const T, s_k: usize, dst: *mut T) {
    /// [`copy_panels`] with `w = W`.
    ///
    /// # Safety
    /// As [`copy_panels`].
    #[inline(always)]
    unsafe fn fixed<T: Elem, const W: usize>(panels: usize, kb: usize, src: *const T, s_k: usize, dst: *mut T) {
        for p in 0..kb {
            for q in 0..panels {
                // SAFETY: the caller's ranges, with w = W.
                unsafe { core::ptr::copy_nonoverlapping(src.add(p * s_k + q * W), dst.add(q * W * kb + p * W), W) };
            }
        }
    }
    // SAFETY (every arm): the caller's ranges.
    unsafe {
        match w {
            4 => fixed::<T, 4>(panels, kb, src, s_k, dst),
            6 => fixed::<T, 6>(panels, kb, src, s_k, dst),
            8 => fixed::<T, 8>(panels, kb, src, s_k, dst),
            16 => fixed::<T, 16>(panels, kb, src, s_k, dst),
            32 => fixed::<T, 32>(panels, kb, src, s_k, dst),
            _ => {
                for p in 0..kb {
                    for q in 0..panels {
                        core::ptr::copy_nonoverlapping(src.add(p * s_k + q * w), dst.add(q * w * kb + p * w), w);
                    }
                }
            }
        }
    }
}

/// Packs an `rows x kb` block of A whose rows are contiguous (`csa == 1`,
/// plain row-major A) as `MR`-row micro-panels in *row* layout:
/// `dst[panel][row][p]`, each row a straight copy. The `func_rows` kernels
/// read this layout, which saves the scalar transpose of a k-major pack
/// (worth ~8% when n is small and A is re-packed often).
///
/// # Safety
/// `src[l * rsa + p]` must be readable for `l < rows`, `p < kb`, and `dst`
/// writable for `ceil(rows / mr) * mr * kb` elements.
pub(crate) unsafe fn pack_a_rows<T: Elem>(mr: usize, rows: usize, kb: usize, src: *const T, rsa: usize, dst: *mut T) {
    let padded = rows.div_ceil(mr) * mr;
    for l in 0..padded {
        // SAFETY: row l < rows is in bounds of src; l * kb + kb <= padded * kb.
        unsafe {
            let d = dst.add(l * kb);
            if l < rows {
                core::ptr::copy_nonoverlapping(src.add(l * rsa), d, kb);
            } else {
                core::ptr::write_bytes(d, 0, kb);
            }
        }
    }
}

/// Zeroes lanes `cols..w` of every k step of one panel.
///
/// # Safety
/// `d` must be writable for `w * kb` elements.
unsafe fn zero_pad<T: Elem>(w: usize, cols: usize, kb: usize, d: *mut T) {
    if cols < w {
        for p in 0..kb {
            for l in cols..w {
                // SAFETY: p * w + l < kb * w.
                unsafe { *d.add(p * w + l) = T::ZERO };
            }
        }
    }
}

/// [`super::Elem::pack_transposed`] for f32: one full micro-panel of width `w` (a multiple of 8)
/// whose lanes each hold `kb` contiguous values, `src[l * s_lane + p]`, written k-major,
/// `dst[p * w + l]`, by 8 x 8 transposes in AVX registers (the scalar scatter it replaces moves
/// one value per cycle at best; the weight products of the ELA kernels read `psi^T` this way).
/// Pure data movement: the packed panel is the same. `false` (nothing written) when the CPU
/// lacks AVX or `w` is not a multiple of 8.
///
/// # Safety
/// `src[l * s_lane + p]` readable for `l < w`, `p < kb`; `dst` writable for `w * kb` values.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn pack_transposed_f32(w: usize, kb: usize, src: *const f32, s_lane: usize, dst: *mut f32) -> bool {
    if !w.is_multiple_of(8) || !std::arch::is_x86_feature_detected!("avx") {
        return false;
    }
    // SAFETY: AVX is present; the ranges are the caller's.
    unsafe { transpose_panel_avx(w, kb, src, s_lane, dst) };
    true
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn pack_transposed_f32(_: usize, _: usize, _: *const f32, _: usize, _: *mut f32) -> bool {
    false
}

/// The body of [`pack_transposed_f32`].
///
/// # Safety
/// As [`pack_transposed_f32`], with AVX present and `w % 8 == 0`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose_panel_avx(w: usize, kb: usize, src: *const f32, s_lane: usize, dst: *mut f32) {
    use core::arch::x86_64::*;
    let full = kb / 8 * 8;
    for l0 in (0..w).step_by(8) {
        // SAFETY (whole loop): lanes l0..l0+8 < w and k steps < kb, as the caller vouched.
        unsafe {
            let row = |i: usize| src.add((l0 + i) * s_lane);
            for p0 in (0..full).step_by(8) {
                let r: [__m256; 8] = core::array::from_fn(|i| _mm256_loadu_ps(row(i).add(p0)));
                // Interleave pairs of rows, then pairs of pairs, then the 128-bit halves: out[j]
                // holds element j of rows 0..8.
                let t0 = _mm256_unpacklo_ps(r[0], r[1]);
                let t1 = _mm256_unpackhi_ps(r[0], r[1]);
                let t2 = _mm256_unpacklo_ps(r[2], r[3]);
                let t3 = _mm256_unpackhi_ps(r[2], r[3]);
                let t4 = _mm256_unpacklo_ps(r[4], r[5]);
                let t5 = _mm256_unpackhi_ps(r[4], r[5]);
                let t6 = _mm256_unpacklo_ps(r[6], r[7]);
                let t7 = _mm256_unpackhi_ps(r[6], r[7]);
                let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                let out = [
                    _mm256_permute2f128_ps::<0x20>(u0, u4),
                    _mm256_permute2f128_ps::<0x20>(u1, u5),
                    _mm256_permute2f128_ps::<0x20>(u2, u6),
                    _mm256_permute2f128_ps::<0x20>(u3, u7),
                    _mm256_permute2f128_ps::<0x31>(u0, u4),
                    _mm256_permute2f128_ps::<0x31>(u1, u5),
                    _mm256_permute2f128_ps::<0x31>(u2, u6),
                    _mm256_permute2f128_ps::<0x31>(u3, u7),
                ];
                for (j, v) in out.iter().enumerate() {
                    _mm256_storeu_ps(dst.add((p0 + j) * w + l0), *v);
                }
            }
            for p in full..kb {
                for i in 0..8 {
                    *dst.add(p * w + l0 + i) = *row(i).add(p);
                }
            }
        }
    }
}
