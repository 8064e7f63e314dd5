//! Convolution (im2col + GEMM), pooling and nearest upsampling over NCHW tensors.
//!
//! conv2d per image and group: `out_g [O/g, OH*OW] = W_g [O/g, C/g*kh*kw] @ col [C/g*kh*kw, OH*OW]`
//! where `col` holds, for every output pixel, the input taps its kernel window reads (zeros for
//! padding). The backward passes are the two other products of the same matrices:
//! `dcol = W_g^T @ dy_g` folded back by col2im (dx), and `dW_g += dy_g @ col^T` (dW).

use crate::cpu::matmul::GemmFloat;
use crate::cpu::storage::{CpuStorage, FloatVec};
use crate::dtype::{DType, Float};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::op::{Conv2dParams, Pool2dParams};
use crate::shape::Shape;
use rayon::prelude::*;

struct Geo {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    g: usize,
}

impl Geo {
    fn new(x: &[usize], wd: &[usize], p: &Conv2dParams) -> Result<Geo> {
        let (oh, ow) = p
            .output_hw((x[2], x[3]), (wd[2], wd[3]))
            .ok_or_else(|| Error::invalid("conv2d", "kernel larger than the padded input"))?;
        Ok(Geo { n: x[0], c: x[1], h: x[2], w: x[3], o: wd[0], kh: wd[2], kw: wd[3], oh, ow, g: p.groups })
    }
    fn cg(&self) -> usize {
        self.c / self.g
    }
    fn og(&self) -> usize {
        self.o / self.g
    }
    fn krows(&self) -> usize {
        self.cg() * self.kh * self.kw
    }
}

/// Input row/col read by output pixel (oy, ox) at tap (ky, kx), or None in the padding.
#[inline]
fn tap(p: &Conv2dParams, g: &Geo, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<(usize, usize)> {
    let iy = (oy * p.stride.0 + ky * p.dilation.0) as isize - p.padding.0 as isize;
    let ix = (ox * p.stride.1 + kx * p.dilation.1) as isize - p.padding.1 as isize;
    (iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w).then_some((iy as usize, ix as usize))
}

/// col[(ci*kh + ky)*kw + kx, oy*ow + ox] for channels `c0..c0+cg` of image `img`.
fn im2col<T: Float>(x: &[T], g: &Geo, p: &Conv2dParams, c0: usize, col: &mut [T]) {
    let npix = g.oh * g.ow;
    for ci in 0..g.cg() {
        let plane = &x[(c0 + ci) * g.h * g.w..(c0 + ci + 1) * g.h * g.w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = &mut col[((ci * g.kh + ky) * g.kw + kx) * npix..][..npix];
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        row[oy * g.ow + ox] = match tap(p, g, oy, ox, ky, kx) {
                            Some((iy, ix)) => plane[iy * g.w + ix],
                            None => T::ZERO,
                        };
                    }
                }
            }
        }
    }
}

/// Adjoint of im2col: dx[c0 + ci, iy, ix] += dcol[...].
fn col2im<T: Float>(dcol: &[T], g: &Geo, p: &Conv2dParams, c0: usize, dx: &mut [T]) {
    let npix = g.oh * g.ow;
    for ci in 0..g.cg() {
        let plane = &mut dx[(c0 + ci) * g.h * g.w..(c0 + ci + 1) * g.h * g.w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = &dcol[((ci * g.kh + ky) * g.kw + kx) * npix..][..npix];
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        if let Some((iy, ix)) = tap(p, g, oy, ox, ky, kx) {
                            plane[iy * g.w + ix] = plane[iy * g.w + ix] + row[oy * g.ow + ox];
                        }
                    }
                }
            }
        }
    }
}

fn conv_fwd<T: GemmFloat>(x: &[T], w: &[T], g: &Geo, p: &Conv2dParams) -> Vec<T> {
    let npix = g.oh * g.ow;
    let mut out = vec![T::ZERO; g.n * g.o * npix];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(g.o * npix).enumerate().for_each(|(img, o_img)| {
        let xi = &x[img * g.c * g.h * g.w..(img + 1) * g.c * g.h * g.w];
        let mut col = vec![T::ZERO; g.krows() * npix];
        for gi in 0..g.g {
            im2col(xi, g, p, gi * g.cg(), &mut col);
            let wg = &w[gi * g.og() * g.krows()..];
            let og = &mut o_img[gi * g.og() * npix..(gi + 1) * g.og() * npix];
            T::gemm(g.og(), npix, g.krows(), T::ONE, wg, g.krows(), 1, &col, npix, 1, T::ZERO, og, npix, 1);
        }
    });
    out
}

fn conv_bwd_input<T: GemmFloat>(dy: &[T], w: &[T], g: &Geo, p: &Conv2dParams) -> Vec<T> {
    let npix = g.oh * g.ow;
    let mut dx = vec![T::ZERO; g.n * g.c * g.h * g.w];
    if dx.is_empty() {
        return dx;
    }
    dx.par_chunks_mut(g.c * g.h * g.w).enumerate().for_each(|(img, dxi)| {
        let mut dcol = vec![T::ZERO; g.krows() * npix];
        for gi in 0..g.g {
            let wg = &w[gi * g.og() * g.krows()..];
            let dyg = &dy[(img * g.o + gi * g.og()) * npix..];
            // dcol = W_g^T @ dy_g: read W_g [og, krows] transposed through its strides.
            T::gemm(g.krows(), npix, g.og(), T::ONE, wg, 1, g.krows(), dyg, npix, 1, T::ZERO, &mut dcol, npix, 1);
            col2im(&dcol, g, p, gi * g.cg(), dxi);
        }
    });
    dx
}

fn conv_bwd_weight<T: GemmFloat>(x: &[T], dy: &[T], g: &Geo, p: &Conv2dParams) -> Vec<T> {
    let npix = g.oh * g.ow;
    let wlen = g.o * g.krows();
    // One partial dW per image (in parallel), then a sum: images are independent.
    let partial: Vec<Vec<T>> = (0..g.n)
        .into_par_iter()
        .map(|img| {
            let xi = &x[img * g.c * g.h * g.w..(img + 1) * g.c * g.h * g.w];
            let mut col = vec![T::ZERO; g.krows() * npix];
            let mut dw = vec![T::ZERO; wlen];
            for gi in 0..g.g {
                im2col(xi, g, p, gi * g.cg(), &mut col);
                let dyg = &dy[(img * g.o + gi * g.og()) * npix..];
                let dwg = &mut dw[gi * g.og() * g.krows()..(gi + 1) * g.og() * g.krows()];
                // dW_g = dy_g [og, npix] @ col^T [npix, krows]
                T::gemm(g.og(), g.krows(), npix, T::ONE, dyg, npix, 1, &col, 1, npix, T::ZERO, dwg, g.krows(), 1);
            }
            dw
        })
        .collect();
    let mut dw = vec![T::ZERO; wlen];
    for pw in partial {
        for (a, b) in dw.iter_mut().zip(pw) {
            *a = *a + b;
        }
    }
    dw
}

fn store(v: FloatVec, dtype: DType) -> CpuStorage {
    match v {
        FloatVec::F64(v) => CpuStorage::F64(v),
        FloatVec::F32(v) => CpuStorage::store_f32(v, dtype),
    }
}

macro_rules! two_floats {
    ($op:expr, $a:expr, $b:expr, |$x:ident, $y:ident| $body:expr) => {
        match ($a, $b) {
            (FloatVec::F32($x), FloatVec::F32($y)) => FloatVec::F32($body),
            (FloatVec::F64($x), FloatVec::F64($y)) => FloatVec::F64($body),
            _ => return Err(Error::invalid($op, "operand dtypes differ")),
        }
    };
}

/// conv2d forward.
pub fn conv2d(x: &CpuStorage, lx: &Layout, w: &CpuStorage, lw: &Layout, p: &Conv2dParams) -> Result<CpuStorage> {
    let g = Geo::new(lx.dims(), lw.dims(), p)?;
    let (xv, wv) = (x.float_vec(lx, "conv2d")?, w.float_vec(lw, "conv2d")?);
    Ok(store(two_floats!("conv2d", xv, wv, |a, b| conv_fwd(&a, &b, &g, p)), x.dtype()))
}

/// conv2d gradient w.r.t. the input.
pub fn conv2d_backward_input(
    dy: &CpuStorage,
    dys: &Shape,
    w: &CpuStorage,
    lw: &Layout,
    xs: &Shape,
    p: &Conv2dParams,
) -> Result<CpuStorage> {
    let g = Geo::new(xs.dims(), lw.dims(), p)?;
    let (dv, wv) =
        (dy.float_vec(&Layout::contiguous(dys.clone()), "conv2d_backward")?, w.float_vec(lw, "conv2d_backward")?);
    Ok(store(two_floats!("conv2d_backward", dv, wv, |a, b| conv_bwd_input(&a, &b, &g, p)), dy.dtype()))
}

/// conv2d gradient w.r.t. the weight.
pub fn conv2d_backward_weight(
    x: &CpuStorage,
    lx: &Layout,
    dy: &CpuStorage,
    dys: &Shape,
    ws: &Shape,
    p: &Conv2dParams,
) -> Result<CpuStorage> {
    let g = Geo::new(lx.dims(), ws.dims(), p)?;
    let (xv, dv) =
        (x.float_vec(lx, "conv2d_backward")?, dy.float_vec(&Layout::contiguous(dys.clone()), "conv2d_backward")?);
    Ok(store(two_floats!("conv2d_backward", xv, dv, |a, b| conv_bwd_weight(&a, &b, &g, p)), dy.dtype()))
}

// ---------------------------------------------------------------- pooling

fn pool_geo(d: &[usize], p: &Pool2dParams) -> Result<(usize, usize, usize, usize, usize)> {
    let (oh, ow) =
        p.output_hw((d[2], d[3])).ok_or_else(|| Error::invalid("pool2d", "window larger than the padded input"))?;
    Ok((d[0] * d[1], d[2], d[3], oh, ow))
}

/// Input cells covered by window (oy, ox), clipped to the input.
fn window(
    p: &Pool2dParams,
    h: usize,
    w: usize,
    oy: usize,
    ox: usize,
) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    let y0 = (oy * p.stride.0) as isize - p.padding.0 as isize;
    let x0 = (ox * p.stride.1) as isize - p.padding.1 as isize;
    let ys = y0.max(0) as usize..((y0 + p.kernel.0 as isize).max(0) as usize).min(h);
    let xs = x0.max(0) as usize..((x0 + p.kernel.1 as isize).max(0) as usize).min(w);
    (ys, xs)
}

fn max_pool<T: Float>(
    x: &[T],
    planes: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    p: &Pool2dParams,
) -> (Vec<T>, Vec<u32>) {
    let mut y = vec![T::ZERO; planes * oh * ow];
    let mut am = vec![0u32; planes * oh * ow];
    y.par_chunks_mut(oh * ow.max(1)).zip(am.par_chunks_mut(oh * ow.max(1))).enumerate().for_each(|(pl, (yo, ao))| {
        let xp = &x[pl * h * w..(pl + 1) * h * w];
        for oy in 0..oh {
            for ox in 0..ow {
                let (ys, xs) = window(p, h, w, oy, ox);
                let (mut best, mut bi) = (T::neg_infinity(), u32::MAX);
                for iy in ys {
                    for ix in xs.clone() {
                        let v = xp[iy * w + ix];
                        if bi == u32::MAX || v > best || v.is_nan() {
                            best = v;
                            bi = (iy * w + ix) as u32;
                        }
                    }
                }
                yo[oy * ow + ox] = best;
                ao[oy * ow + ox] = bi;
            }
        }
    });
    (y, am)
}

/// Max pooling forward: `(y, argmax)`.
pub fn max_pool2d(x: &CpuStorage, l: &Layout, p: &Pool2dParams) -> Result<(CpuStorage, CpuStorage)> {
    let (planes, h, w, oh, ow) = pool_geo(l.dims(), p)?;
    Ok(match x.float_vec(l, "max_pool2d")? {
        FloatVec::F32(v) => {
            let (y, a) = max_pool(&v, planes, h, w, oh, ow, p);
            (CpuStorage::store_f32(y, x.dtype()), CpuStorage::U32(a))
        }
        FloatVec::F64(v) => {
            let (y, a) = max_pool(&v, planes, h, w, oh, ow, p);
            (CpuStorage::F64(y), CpuStorage::U32(a))
        }
    })
}

/// Max pooling backward.
pub fn max_pool2d_backward(dy: &CpuStorage, argmax: &CpuStorage, dys: &Shape, xs: &Shape) -> Result<CpuStorage> {
    let d = dys.dims();
    let (planes, opix) = (d[0] * d[1], d[2] * d[3]);
    let ipix = xs.dims()[2] * xs.dims()[3];
    let am = argmax.u32_view(&Layout::contiguous(dys.clone()), "max_pool2d_backward")?;
    fn go<T: Float>(g: &[T], am: &[u32], planes: usize, opix: usize, ipix: usize) -> Vec<T> {
        let mut dx = vec![T::ZERO; planes * ipix];
        for pl in 0..planes {
            for o in 0..opix {
                let i = pl * ipix + am[pl * opix + o] as usize;
                dx[i] = dx[i] + g[pl * opix + o];
            }
        }
        dx
    }
    let v = match dy.float_vec(&Layout::contiguous(dys.clone()), "max_pool2d_backward")? {
        FloatVec::F32(g) => FloatVec::F32(go(&g, &am, planes, opix, ipix)),
        FloatVec::F64(g) => FloatVec::F64(go(&g, &am, planes, opix, ipix)),
    };
    Ok(store(v, dy.dtype()))
}

fn avg_div(p: &Pool2dParams, ys: &std::ops::Range<usize>, xs: &std::ops::Range<usize>) -> f64 {
    if p.count_include_pad {
        (p.kernel.0 * p.kernel.1) as f64
    } else {
        (ys.len() * xs.len()).max(1) as f64
    }
}

/// Average pooling forward.
pub fn avg_pool2d(x: &CpuStorage, l: &Layout, p: &Pool2dParams) -> Result<CpuStorage> {
    let (planes, h, w, oh, ow) = pool_geo(l.dims(), p)?;
    fn go<T: Float>(x: &[T], planes: usize, h: usize, w: usize, oh: usize, ow: usize, p: &Pool2dParams) -> Vec<T> {
        let mut y = vec![T::ZERO; planes * oh * ow];
        y.par_chunks_mut((oh * ow).max(1)).enumerate().for_each(|(pl, yo)| {
            let xp = &x[pl * h * w..(pl + 1) * h * w];
            for oy in 0..oh {
                for ox in 0..ow {
                    let (ys, xs) = window(p, h, w, oy, ox);
                    let div = T::from_f64(avg_div(p, &ys, &xs));
                    let mut s = T::ZERO;
                    for iy in ys {
                        for ix in xs.clone() {
                            s = s + xp[iy * w + ix];
                        }
                    }
                    yo[oy * ow + ox] = s / div;
                }
            }
        });
        y
    }
    let v = match x.float_vec(l, "avg_pool2d")? {
        FloatVec::F32(v) => FloatVec::F32(go(&v, planes, h, w, oh, ow, p)),
        FloatVec::F64(v) => FloatVec::F64(go(&v, planes, h, w, oh, ow, p)),
    };
    Ok(store(v, x.dtype()))
}

/// Average pooling backward.
pub fn avg_pool2d_backward(dy: &CpuStorage, dys: &Shape, xs: &Shape, p: &Pool2dParams) -> Result<CpuStorage> {
    let (planes, h, w, oh, ow) = pool_geo(xs.dims(), p)?;
    fn go<T: Float>(g: &[T], planes: usize, h: usize, w: usize, oh: usize, ow: usize, p: &Pool2dParams) -> Vec<T> {
        let mut dx = vec![T::ZERO; planes * h * w];
        dx.par_chunks_mut((h * w).max(1)).enumerate().for_each(|(pl, dxp)| {
            for oy in 0..oh {
                for ox in 0..ow {
                    let (ys, xs) = window(p, h, w, oy, ox);
                    let v = g[pl * oh * ow + oy * ow + ox] / T::from_f64(avg_div(p, &ys, &xs));
                    for iy in ys {
                        for ix in xs.clone() {
                            dxp[iy * w + ix] = dxp[iy * w + ix] + v;
                        }
                    }
                }
            }
        });
        dx
    }
    let v = match dy.float_vec(&Layout::contiguous(dys.clone()), "avg_pool2d_backward")? {
        FloatVec::F32(g) => FloatVec::F32(go(&g, planes, h, w, oh, ow, p)),
        FloatVec::F64(g) => FloatVec::F64(go(&g, planes, h, w, oh, ow, p)),
    };
    Ok(store(v, dy.dtype()))
}

/// Nearest-neighbour upsampling by integer factors.
pub fn upsample_nearest2d(x: &CpuStorage, l: &Layout, (fh, fw): (usize, usize)) -> Result<CpuStorage> {
    let d = l.dims();
    let (planes, h, w) = (d[0] * d[1], d[2], d[3]);
    fn go<T: Float>(x: &[T], planes: usize, h: usize, w: usize, fh: usize, fw: usize) -> Vec<T> {
        let (oh, ow) = (h * fh, w * fw);
        let mut y = vec![T::ZERO; planes * oh * ow];
        for pl in 0..planes {
            for oy in 0..oh {
                for ox in 0..ow {
                    y[(pl * oh + oy) * ow + ox] = x[(pl * h + oy / fh) * w + ox / fw];
                }
            }
        }
        y
    }
    let v = match x.float_vec(l, "upsample_nearest2d")? {
        FloatVec::F32(v) => FloatVec::F32(go(&v, planes, h, w, fh, fw)),
        FloatVec::F64(v) => FloatVec::F64(go(&v, planes, h, w, fh, fw)),
    };
    Ok(store(v, x.dtype()))
}

/// Backward of nearest upsampling: each input cell receives the sum of its `fh x fw` block.
pub fn upsample_nearest2d_backward(dy: &CpuStorage, dys: &Shape, (fh, fw): (usize, usize)) -> Result<CpuStorage> {
    let d = dys.dims();
    let (planes, oh, ow) = (d[0] * d[1], d[2], d[3]);
    let (h, w) = (oh / fh, ow / fw);
    // Output (oy, ox) feeds input (oy / fh, ox / fw): one pass over dy accumulates each block.
    #[allow(clippy::too_many_arguments)]
    fn go<T: Float>(g: &[T], planes: usize, oh: usize, ow: usize, fh: usize, fw: usize, h: usize, w: usize) -> Vec<T> {
        let mut dx = vec![T::ZERO; planes * h * w];
        for pl in 0..planes {
            for oy in 0..oh {
                for ox in 0..ow {
                    let i = (pl * h + oy / fh) * w + ox / fw;
                    dx[i] = dx[i] + g[(pl * oh + oy) * ow + ox];
                }
            }
        }
        dx
    }
    let v = match dy.float_vec(&Layout::contiguous(dys.clone()), "upsample_nearest2d_backward")? {
        FloatVec::F32(g) => FloatVec::F32(go(&g, planes, oh, ow, fh, fw, h, w)),
        FloatVec::F64(g) => FloatVec::F64(go(&g, planes, oh, ow, fh, fw, h, w)),
    };
    Ok(store(v, dy.dtype()))
}
