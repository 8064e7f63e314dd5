//! The 1x1 conv2d path (stride 1, no padding): GEMMs straight on the NCHW tensors.
//!
//! Image `i`'s channels of group `gi` form a row-major `[C/g, H*W]` matrix, which is exactly the
//! col matrix im2col would build, so per image and group:
//!
//! - forward:  `y_i,g [O/g, HW] = W_g [O/g, C/g] @ x_i,g [C/g, HW]`
//! - input:    `dx_i,g [C/g, HW] = W_g^T @ dy_i,g [O/g, HW]` (W read transposed through strides)
//! - weight:   `dW_g [O/g, C/g] = sum_i dy_i,g @ x_i,g^T`, as dot products of rows (`dot.rs`)
//!
//! all reading and writing the tensors in place. The images are not fused into one GEMM: in
//! NCHW their `N*HW` columns are not one strided matrix, so that takes a copy of `x` into
//! `[C, N*HW]` and of `y` back. Measured on the YOLO-LAT 1x1 shapes at batch 8 (2 cores), one
//! fused GEMM with those copies was 1.5x (128 -> 128 at 16x16) to 5x (16 -> 32 at 64x64) slower
//! than one GEMM per image, images in parallel.

use super::dot::gemm_nt;
use super::simd::SimdFloat;
use super::{for_images, Geo};
use crate::cpu::matmul::GemmFloat;
use rayon::prelude::*;

pub(super) fn forward<T: GemmFloat>(x: &[T], w: &[T], g: &Geo) -> Vec<T> {
    let (hw, cg, og) = (g.h * g.w, g.cg(), g.og());
    for_images(g.n, g.o * hw, |_, img, yi| {
        for gi in 0..g.g {
            let xg = &x[(img * g.c + gi * cg) * hw..];
            let yg = &mut yi[gi * og * hw..(gi + 1) * og * hw];
            T::gemm(og, hw, cg, T::ONE, &w[gi * og * cg..], cg, 1, xg, hw, 1, T::ZERO, yg, hw, 1);
        }
    })
}

/// `dx_i,g = W_g^T @ dy_i,g`: conv2d's input gradient with `col = x`.
/// Derivation: docs/autograd.md#convolution-and-pooling ("conv2d").
pub(super) fn backward_input<T: GemmFloat>(dy: &[T], w: &[T], g: &Geo) -> Vec<T> {
    let (hw, cg, og) = (g.h * g.w, g.cg(), g.og());
    for_images(g.n, g.c * hw, |_, img, dxi| {
        for gi in 0..g.g {
            let dyg = &dy[(img * g.o + gi * og) * hw..];
            let dxg = &mut dxi[gi * cg * hw..(gi + 1) * cg * hw];
            T::gemm(cg, hw, og, T::ONE, &w[gi * og * cg..], 1, cg, dyg, hw, 1, T::ZERO, dxg, hw, 1);
        }
    })
}

/// `dW_g = sum_i dy_i,g @ x_i,g^T`: conv2d's weight gradient with `col = x`.
/// Derivation: docs/autograd.md#convolution-and-pooling ("conv2d").
pub(super) fn backward_weight<T: GemmFloat + SimdFloat>(x: &[T], dy: &[T], g: &Geo) -> Vec<T> {
    let (hw, cg, og) = (g.h * g.w, g.cg(), g.og());
    let wlen = g.o * cg;
    // dW_g += dy_i,g @ x_i,g^T for the images `imgs` (both operands contiguous along the pixels:
    // `gemm_nt`, see `dot.rs`), row blocks of dW in parallel when `par`.
    let add = |imgs: std::ops::Range<usize>, dw: &mut [T], par: bool| {
        for img in imgs {
            for gi in 0..g.g {
                let dyg = &dy[(img * g.o + gi * og) * hw..];
                let xg = &x[(img * g.c + gi * cg) * hw..];
                gemm_nt(og, cg, hw, dyg, hw, xg, hw, &mut dw[gi * og * cg..(gi + 1) * og * cg], cg, par);
            }
        }
    };
    let mut dw = vec![T::ZERO; wlen];
    let threads = rayon::current_num_threads();
    if g.n < threads {
        // Few images: one after the other, each product split across the threads.
        add(0..g.n, &mut dw, true);
        return dw;
    }
    // One partial per thread over a run of images, then their sum (a dW is small).
    let per = g.n.div_ceil(threads);
    let partial: Vec<Vec<T>> = (0..g.n.div_ceil(per))
        .into_par_iter()
        .map(|t| {
            let mut dw = vec![T::ZERO; wlen];
            add(t * per..((t + 1) * per).min(g.n), &mut dw, false);
            dw
        })
        .collect();
    for pw in partial {
        for (a, b) in dw.iter_mut().zip(pw) {
            *a = *a + b;
        }
    }
    dw
}
