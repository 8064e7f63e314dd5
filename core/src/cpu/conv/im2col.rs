//! The general conv2d path: im2col + GEMM per image and group (see the module docs in `mod.rs`).
//!
//! im2col and col2im work a row segment at a time: [`Geo::rows`] / [`Geo::cols`] give the output
//! range each kernel tap reads inside the input, so the inner loops are plain (strided) copies
//! and adds with the padding zeros written as whole runs, not a bounds test per element.

use super::dot::gemm_nt;
use super::simd::SimdFloat;
use super::{copy_strided, for_images, Geo};
use crate::cpu::matmul::GemmFloat;
use crate::dtype::Float;
use rayon::prelude::*;

/// The col rows of input channel `ci` of a group, `kh * kw` rows of `oh * ow` (one per tap):
/// `col[ky * kw + kx, oy * ow + ox] = plane[iy, ix]`, 0 in the padding.
fn im2col_channel<T: Float>(plane: &[T], g: &Geo, col: &mut [T]) {
    let (ow, npix) = (g.ow, g.npix());
    for ky in 0..g.kh {
        let ys = g.rows(ky);
        for kx in 0..g.kw {
            let xs = g.cols(kx);
            let row = &mut col[(ky * g.kw + kx) * npix..][..npix];
            row[..ys.start * ow].fill(T::ZERO);
            row[ys.end * ow..].fill(T::ZERO);
            for oy in ys.clone() {
                let dst = &mut row[oy * ow..][..ow];
                dst[..xs.start].fill(T::ZERO);
                dst[xs.end..].fill(T::ZERO);
                if xs.is_empty() {
                    continue;
                }
                let src = &plane[g.iy(oy, ky) * g.w..][..g.w];
                copy_strided(&mut dst[xs.clone()], src, g.ix(xs.start, kx), g.sx);
            }
        }
    }
}

/// Adjoint of [`im2col_channel`]: `plane[iy, ix] += dcol[...]` over the channel's `kh * kw` rows.
fn col2im_channel<T: Float>(dcol: &[T], g: &Geo, plane: &mut [T]) {
    let (ow, npix) = (g.ow, g.npix());
    for ky in 0..g.kh {
        let ys = g.rows(ky);
        for kx in 0..g.kw {
            let xs = g.cols(kx);
            if xs.is_empty() {
                continue;
            }
            let row = &dcol[(ky * g.kw + kx) * npix..][..npix];
            let ix0 = g.ix(xs.start, kx);
            for oy in ys.clone() {
                let src = &row[oy * ow..][xs.clone()];
                let dst = &mut plane[g.iy(oy, ky) * g.w..][..g.w];
                if g.sx == 1 {
                    for (d, &s) in dst[ix0..ix0 + src.len()].iter_mut().zip(src) {
                        *d = *d + s;
                    }
                } else {
                    for (j, &s) in src.iter().enumerate() {
                        dst[ix0 + j * g.sx] = dst[ix0 + j * g.sx] + s;
                    }
                }
            }
        }
    }
}

/// col matrix of group `gi` of one image `xi`; channels in parallel when `par`.
fn im2col<T: Float>(xi: &[T], g: &Geo, gi: usize, col: &mut [T], par: bool) {
    let (hw, rows) = (g.h * g.w, g.kh * g.kw * g.npix());
    if rows == 0 {
        return;
    }
    let planes = &xi[gi * g.cg() * hw..];
    if par {
        col.par_chunks_mut(rows).enumerate().for_each(|(ci, c)| im2col_channel(&planes[ci * hw..][..hw], g, c));
    } else {
        col.chunks_mut(rows).enumerate().for_each(|(ci, c)| im2col_channel(&planes[ci * hw..][..hw], g, c));
    }
}

/// Adds the col-shaped `dcol` of group `gi` into one image's `dxi`; channels in parallel when `par`.
fn col2im<T: Float>(dcol: &[T], g: &Geo, gi: usize, dxi: &mut [T], par: bool) {
    let (hw, rows) = (g.h * g.w, g.kh * g.kw * g.npix());
    if hw == 0 || rows == 0 {
        return;
    }
    let planes = &mut dxi[gi * g.cg() * hw..(gi + 1) * g.cg() * hw];
    if par {
        planes.par_chunks_mut(hw).zip(dcol.par_chunks(rows)).for_each(|(p, d)| col2im_channel(d, g, p));
    } else {
        planes.chunks_mut(hw).zip(dcol.chunks(rows)).for_each(|(p, d)| col2im_channel(d, g, p));
    }
}

/// True when images are spread over threads, so the work inside one image stays serial.
fn images_parallel(g: &Geo) -> bool {
    g.n >= rayon::current_num_threads()
}

pub(super) fn forward<T: GemmFloat>(x: &[T], w: &[T], g: &Geo) -> Vec<T> {
    let npix = g.npix();
    let inner_par = !images_parallel(g);
    let cstride = g.c * g.h * g.w;
    for_images(g.n, g.o * npix, |col, img, o_img| {
        let xi = &x[img * cstride..(img + 1) * cstride];
        // Every element is written by im2col: the contents of a reused buffer do not matter.
        col.resize(g.krows() * npix, T::ZERO);
        for gi in 0..g.g {
            im2col(xi, g, gi, col, inner_par);
            let wg = &w[gi * g.og() * g.krows()..];
            let og = &mut o_img[gi * g.og() * npix..(gi + 1) * g.og() * npix];
            T::gemm(g.og(), npix, g.krows(), T::ONE, wg, g.krows(), 1, col, npix, 1, T::ZERO, og, npix, 1);
        }
    })
}

/// `dx = col2im(W_g^T @ dy_g)` per image and group.
/// Derivation: docs/autograd.md#convolution-and-pooling ("conv2d").
pub(super) fn backward_input<T: GemmFloat>(dy: &[T], w: &[T], g: &Geo) -> Vec<T> {
    let npix = g.npix();
    if npix == 0 {
        return vec![T::ZERO; g.n * g.c * g.h * g.w];
    }
    let inner_par = !images_parallel(g);
    for_images(g.n, g.c * g.h * g.w, |dcol, img, dxi| {
        // Written by the GEMM (beta = 0) before col2im reads it.
        dcol.resize(g.krows() * npix, T::ZERO);
        for gi in 0..g.g {
            let wg = &w[gi * g.og() * g.krows()..];
            let dyg = &dy[(img * g.o + gi * g.og()) * npix..];
            // dcol = W_g^T @ dy_g: read W_g [og, krows] transposed through its strides.
            T::gemm(g.krows(), npix, g.og(), T::ONE, wg, 1, g.krows(), dyg, npix, 1, T::ZERO, dcol, npix, 1);
            col2im(dcol, g, gi, dxi, inner_par);
        }
    })
}

/// `dW_g = sum over images of dy_g @ col^T`.
/// Derivation: docs/autograd.md#convolution-and-pooling ("conv2d").
pub(super) fn backward_weight<T: GemmFloat + SimdFloat>(x: &[T], dy: &[T], g: &Geo) -> Vec<T> {
    let npix = g.npix();
    let wlen = g.o * g.krows();
    let cstride = g.c * g.h * g.w;
    // dW_g += dy_g [og, npix] @ col^T [npix, krows] for image `img`, into `dw`: both operands
    // are contiguous along the pixels (`gemm_nt`, see `dot.rs`).
    let add_image = |img: usize, dw: &mut [T], col: &mut [T], inner_par: bool| {
        let xi = &x[img * cstride..(img + 1) * cstride];
        for gi in 0..g.g {
            im2col(xi, g, gi, col, inner_par);
            let dyg = &dy[(img * g.o + gi * g.og()) * npix..];
            let dwg = &mut dw[gi * g.og() * g.krows()..(gi + 1) * g.og() * g.krows()];
            gemm_nt(g.og(), g.krows(), npix, dyg, npix, col, npix, dwg, g.krows(), inner_par);
        }
    };
    let mut dw = vec![T::ZERO; wlen];
    if wlen == 0 || npix == 0 {
        return dw;
    }
    if !images_parallel(g) {
        let mut col = vec![T::ZERO; g.krows() * npix];
        for img in 0..g.n {
            add_image(img, &mut dw, &mut col, true);
        }
        return dw;
    }
    // One partial dW per thread-sized run of images (in parallel), then their sum.
    let parts = rayon::current_num_threads().min(g.n);
    let per = g.n.div_ceil(parts);
    let partial: Vec<Vec<T>> = (0..g.n.div_ceil(per))
        .into_par_iter()
        .map(|t| {
            let mut dw = vec![T::ZERO; wlen];
            let mut col = vec![T::ZERO; g.krows() * npix];
            for img in t * per..((t + 1) * per).min(g.n) {
                add_image(img, &mut dw, &mut col, false);
            }
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
