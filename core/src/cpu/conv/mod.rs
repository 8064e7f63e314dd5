//! Convolution, pooling and nearest upsampling over NCHW tensors.
//!
//! # conv2d
//!
//! The forward and both backward kernels (`dx`, `dW`) take one of three paths, picked from the
//! shapes alone by `Geo::path`. All three compute the same sums, in different orders:
//!
//! - **depthwise** (`depthwise.rs`): one input channel per group (`groups == in_channels`) and at
//!   most [`DEPTHWISE_MAX_MULT`] output channels per group; any kernel size, stride, padding and
//!   dilation. Direct loops over (image, channel) planes, planes in parallel. The im2col path
//!   would run a GEMM with 1..4 rows per channel and build a col buffer per channel: all packing
//!   and no reuse. This is the MobileNet-style depthwise 3x3 of the YOLO-LAT backbone.
//! - **pointwise** (`pointwise.rs`): a 1x1 kernel with stride 1 and no padding (any groups;
//!   dilation is moot). The input plane `[C/g, H*W]` already is the col matrix, so the GEMMs read
//!   `x`, `dy` and `dx` in place: no col buffer, no copy.
//! - **im2col** (`im2col.rs`): everything else. Per image and group,
//!   `out_g [O/g, OH*OW] = W_g [O/g, C/g*kh*kw] @ col [C/g*kh*kw, OH*OW]`, where `col` holds,
//!   for every output pixel, the input taps its kernel window reads (zeros for padding). The
//!   backward passes are the two other products of the same matrices: `dcol = W_g^T @ dy_g`
//!   folded back by col2im (dx), and `dW_g += dy_g @ col^T` (dW, as dot products of rows:
//!   `dot.rs`, shared with the pointwise path).
//!
//! Parallelism: with at least as many images as rayon threads, images (depthwise: image and
//! channel planes) run in parallel, each on one thread. With fewer (batch 1 inference, tiny
//! batches) the work inside an image is split instead: the GEMMs split their own rows or
//! columns, im2col and col2im split by channel.
//!
//! Inputs that are contiguous f32/f64 views are read in place (`CpuStorage::float_cow`);
//! other views are gathered first. f16/bf16 are widened to f32 and rounded once on store, as
//! everywhere in the CPU backend.

mod depthwise;
mod dot;
mod im2col;
mod pointwise;
pub(crate) mod simd;

use crate::cpu::alloc::filled;
use crate::cpu::matmul::GemmFloat;
use crate::cpu::storage::{CpuStorage, FloatCow, FloatVec};
use crate::cpu::PAR_THRESHOLD;
use crate::dtype::{DType, Float};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::op::{Conv2dParams, Pool2dParams};
use crate::shape::Shape;
use rayon::prelude::*;
use simd::SimdFloat;
use std::mem::MaybeUninit;
use std::ops::Range;

/// Largest channel multiplier (`out_channels / in_channels`, one input channel per group) that
/// the depthwise path takes. Its direct loops do `kh * kw` FMAs per output with no reuse across
/// output channels, which a GEMM over a col matrix gets once the multiplier is large. The bound
/// is a judgement, not a measurement: only multiplier 1 (YOLO-LAT, MobileNets) was benchmarked,
/// where the direct path is 4-10x faster than im2col (docs/benchmarks.md, CPU convolution).
pub const DEPTHWISE_MAX_MULT: usize = 4;

/// Geometry of one conv2d call, shared by all paths: `x [n, c, h, w]`, `weight [o, c/g, kh, kw]`,
/// output `[n, o, oh, ow]`; stride `(sy, sx)`, padding `(py, px)`, dilation `(dy, dx)`.
#[derive(Clone, Copy, Debug)]
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
    sy: usize,
    sx: usize,
    py: usize,
    px: usize,
    dy: usize,
    dx: usize,
}

/// The kernel family a conv2d call runs (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Depthwise,
    Pointwise,
    Im2col,
}

impl Geo {
    fn new(x: &[usize], wd: &[usize], p: &Conv2dParams) -> Result<Geo> {
        let (oh, ow) = p
            .output_hw((x[2], x[3]), (wd[2], wd[3]))
            .ok_or_else(|| Error::invalid("conv2d", "kernel larger than the padded input"))?;
        Ok(Geo {
            n: x[0],
            c: x[1],
            h: x[2],
            w: x[3],
            o: wd[0],
            kh: wd[2],
            kw: wd[3],
            oh,
            ow,
            g: p.groups,
            sy: p.stride.0,
            sx: p.stride.1,
            py: p.padding.0,
            px: p.padding.1,
            dy: p.dilation.0,
            dx: p.dilation.1,
        })
    }
    fn cg(&self) -> usize {
        self.c / self.g
    }
    fn og(&self) -> usize {
        self.o / self.g
    }
    /// Rows of the col matrix: one per (input channel of a group, kernel tap).
    fn krows(&self) -> usize {
        self.cg() * self.kh * self.kw
    }
    fn npix(&self) -> usize {
        self.oh * self.ow
    }
    fn path(&self) -> Path {
        if self.cg() == 1 && self.og() <= DEPTHWISE_MAX_MULT {
            Path::Depthwise
        } else if self.kh == 1 && self.kw == 1 && (self.sy, self.sx, self.py, self.px) == (1, 1, 0, 0) {
            Path::Pointwise
        } else {
            Path::Im2col
        }
    }
    /// Output rows whose kernel row `ky` reads inside the input (the others read padding).
    fn rows(&self, ky: usize) -> Range<usize> {
        valid(self.oh, self.h, self.sy, self.py, ky * self.dy)
    }
    /// Output columns whose kernel column `kx` reads inside the input.
    fn cols(&self, kx: usize) -> Range<usize> {
        valid(self.ow, self.w, self.sx, self.px, kx * self.dx)
    }
    /// Input row read by output row `oy` at kernel row `ky` (`oy` in [`Geo::rows`]`(ky)`).
    fn iy(&self, oy: usize, ky: usize) -> usize {
        oy * self.sy + ky * self.dy - self.py
    }
    /// Input column read by output column `ox` at kernel column `kx` (`ox` in [`Geo::cols`]`(kx)`).
    fn ix(&self, ox: usize, kx: usize) -> usize {
        ox * self.sx + kx * self.dx - self.px
    }
}

/// Outputs `o < out_len` along one axis with `0 <= o * stride + tap - pad < in_len`, where `tap`
/// is the dilated kernel offset: one range, since the input position grows with `o`.
fn valid(out_len: usize, in_len: usize, stride: usize, pad: usize, tap: usize) -> Range<usize> {
    // First o with o * stride + tap >= pad; last with o * stride + tap - pad <= in_len - 1.
    let lo = pad.saturating_sub(tap).div_ceil(stride).min(out_len);
    let hi = match (in_len + pad).checked_sub(tap + 1) {
        Some(last) => (last / stride + 1).min(out_len),
        None => 0,
    };
    lo..hi.max(lo)
}

/// A new vector of `chunks * per` elements, chunk `i` written by `f(&mut scratch, i, chunk)`,
/// in parallel over chunks when `par` (`init` makes one scratch value per rayon task), else in
/// order on the calling thread.
///
/// Each chunk is zeroed just before `f` runs, by the thread that runs it: the zeros go to that
/// thread's cache and `f`'s writes hit them there, where a `vec![0; len]` up front would be a
/// serial pass over the whole output in memory (for an 8 MiB `dx`, a fifth of the depthwise
/// kernels' time) before any parallel work starts.
fn new_chunked<T: Float, S>(
    chunks: usize,
    per: usize,
    par: bool,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, usize, &mut [T]) + Sync + Send,
) -> Vec<T> {
    let len = chunks * per;
    let mut v: Vec<T> = Vec::with_capacity(len);
    if len == 0 {
        return v;
    }
    let run = |s: &mut S, i: usize, c: &mut [MaybeUninit<T>]| {
        if par || c.len() < PAR_THRESHOLD {
            for x in c.iter_mut() {
                x.write(T::ZERO);
            }
        } else {
            // One large chunk at a time (a batch smaller than the thread count): `f`
            // parallelises inside it, so zero it in parallel too rather than on one thread.
            c.par_chunks_mut(PAR_THRESHOLD).for_each(|c| {
                for x in c.iter_mut() {
                    x.write(T::ZERO);
                }
            });
        }
        // SAFETY: every element of `c` was initialized just above; MaybeUninit<T> and T have
        // the same layout.
        let c = unsafe { &mut *(c as *mut [MaybeUninit<T>] as *mut [T]) };
        f(s, i, c)
    };
    let spare = &mut v.spare_capacity_mut()[..len];
    if par {
        spare.par_chunks_mut(per).enumerate().for_each_init(&init, |s, (i, c)| run(s, i, c));
    } else {
        let mut s = init();
        spare.chunks_mut(per).enumerate().for_each(|(i, c)| run(&mut s, i, c));
    }
    // SAFETY: the chunks cover the first `len` elements, and each was initialized. (If `f`
    // panics, the panic propagates before this line and `v` drops with length 0.)
    unsafe { v.set_len(len) };
    v
}

/// [`new_chunked`] with one chunk per image: in parallel, one image per task, when there are at
/// least as many images as threads; else in order, and `f` is expected to parallelise inside
/// the image. `f` also gets a scratch vector, reused across the images a task runs.
fn for_images<T: Float>(n: usize, per: usize, f: impl Fn(&mut Vec<T>, usize, &mut [T]) + Sync + Send) -> Vec<T> {
    new_chunked(n, per, n >= rayon::current_num_threads(), Vec::new, f)
}

/// `dst[j] = src[start + j * stride]`; stride 2 as a vectorizable de-interleave.
#[inline]
fn copy_strided<T: Copy>(dst: &mut [T], src: &[T], start: usize, stride: usize) {
    let src = &src[start..];
    match stride {
        1 => dst.copy_from_slice(&src[..dst.len()]),
        2 => {
            let pairs = dst.len().min(src.len() / 2);
            for (d, c) in dst[..pairs].iter_mut().zip(src.chunks_exact(2)) {
                *d = c[0];
            }
            for (j, d) in dst.iter_mut().enumerate().skip(pairs) {
                *d = src[2 * j];
            }
        }
        _ => {
            for (j, d) in dst.iter_mut().enumerate() {
                *d = src[j * stride];
            }
        }
    }
}

fn conv_fwd<T: GemmFloat + SimdFloat>(x: &[T], w: &[T], g: &Geo) -> Vec<T> {
    match g.path() {
        Path::Depthwise => depthwise::forward(x, w, g),
        Path::Pointwise => pointwise::forward(x, w, g),
        Path::Im2col => im2col::forward(x, w, g),
    }
}

fn conv_bwd_input<T: GemmFloat + SimdFloat>(dy: &[T], w: &[T], g: &Geo) -> Vec<T> {
    match g.path() {
        Path::Depthwise => depthwise::backward_input(dy, w, g),
        Path::Pointwise => pointwise::backward_input(dy, w, g),
        Path::Im2col => im2col::backward_input(dy, w, g),
    }
}

fn conv_bwd_weight<T: GemmFloat + SimdFloat>(x: &[T], dy: &[T], g: &Geo) -> Vec<T> {
    match g.path() {
        Path::Depthwise => depthwise::backward_weight(x, dy, g),
        Path::Pointwise => pointwise::backward_weight(x, dy, g),
        Path::Im2col => im2col::backward_weight(x, dy, g),
    }
}

fn store(v: FloatVec, dtype: DType) -> Result<CpuStorage> {
    match v {
        FloatVec::F64(v) => Ok(CpuStorage::F64(v)),
        FloatVec::F32(v) => CpuStorage::store_f32(v, dtype),
    }
}

macro_rules! two_floats {
    ($op:expr, $a:expr, $b:expr, |$x:ident, $y:ident| $body:expr) => {
        match ($a, $b) {
            (FloatCow::F32($x), FloatCow::F32($y)) => FloatVec::F32($body),
            (FloatCow::F64($x), FloatCow::F64($y)) => FloatVec::F64($body),
            _ => return Err(Error::invalid($op, "operand dtypes differ")),
        }
    };
}

/// conv2d forward.
pub fn conv2d(x: &CpuStorage, lx: &Layout, w: &CpuStorage, lw: &Layout, p: &Conv2dParams) -> Result<CpuStorage> {
    let g = Geo::new(lx.dims(), lw.dims(), p)?;
    let (xv, wv) = (x.float_cow(lx, "conv2d")?, w.float_cow(lw, "conv2d")?);
    store(two_floats!("conv2d", xv, wv, |a, b| conv_fwd(&a, &b, &g)), x.dtype())
}

/// conv2d gradient w.r.t. the input.
/// Derivation: docs/autograd.md#convolution-and-pooling ("conv2d").
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
        (dy.float_cow(&Layout::contiguous(dys.clone()), "conv2d_backward")?, w.float_cow(lw, "conv2d_backward")?);
    store(two_floats!("conv2d_backward", dv, wv, |a, b| conv_bwd_input(&a, &b, &g)), dy.dtype())
}

/// conv2d gradient w.r.t. the weight.
/// Derivation: docs/autograd.md#convolution-and-pooling ("conv2d").
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
        (x.float_cow(lx, "conv2d_backward")?, dy.float_cow(&Layout::contiguous(dys.clone()), "conv2d_backward")?);
    store(two_floats!("conv2d_backward", xv, dv, |a, b| conv_bwd_weight(&a, &b, &g)), dy.dtype())
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
) -> Result<(Vec<T>, Vec<u32>)> {
    let mut y = filled(planes * oh * ow, T::ZERO)?;
    let mut am = filled(planes * oh * ow, 0u32)?;
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
    Ok((y, am))
}

/// Max pooling forward: `(y, argmax)`.
pub fn max_pool2d(x: &CpuStorage, l: &Layout, p: &Pool2dParams) -> Result<(CpuStorage, CpuStorage)> {
    let (planes, h, w, oh, ow) = pool_geo(l.dims(), p)?;
    Ok(match x.float_vec(l, "max_pool2d")? {
        FloatVec::F32(v) => {
            let (y, a) = max_pool(&v, planes, h, w, oh, ow, p)?;
            (CpuStorage::store_f32(y, x.dtype())?, CpuStorage::U32(a))
        }
        FloatVec::F64(v) => {
            let (y, a) = max_pool(&v, planes, h, w, oh, ow, p)?;
            (CpuStorage::F64(y), CpuStorage::U32(a))
        }
    })
}

/// Max pooling backward.
/// Derivation: docs/autograd.md#convolution-and-pooling ("max_pool2d").
pub fn max_pool2d_backward(dy: &CpuStorage, argmax: &CpuStorage, dys: &Shape, xs: &Shape) -> Result<CpuStorage> {
    let d = dys.dims();
    let (planes, opix) = (d[0] * d[1], d[2] * d[3]);
    let ipix = xs.dims()[2] * xs.dims()[3];
    let am = argmax.u32_view(&Layout::contiguous(dys.clone()), "max_pool2d_backward")?;
    fn go<T: Float>(g: &[T], am: &[u32], planes: usize, opix: usize, ipix: usize) -> Result<Vec<T>> {
        let mut dx = filled(planes * ipix, T::ZERO)?;
        for pl in 0..planes {
            for o in 0..opix {
                let i = pl * ipix + am[pl * opix + o] as usize;
                dx[i] = dx[i] + g[pl * opix + o];
            }
        }
        Ok(dx)
    }
    let v = match dy.float_vec(&Layout::contiguous(dys.clone()), "max_pool2d_backward")? {
        FloatVec::F32(g) => FloatVec::F32(go(&g, &am, planes, opix, ipix)?),
        FloatVec::F64(g) => FloatVec::F64(go(&g, &am, planes, opix, ipix)?),
    };
    store(v, dy.dtype())
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
    fn go<T: Float>(
        x: &[T],
        planes: usize,
        h: usize,
        w: usize,
        oh: usize,
        ow: usize,
        p: &Pool2dParams,
    ) -> Result<Vec<T>> {
        let mut y = filled(planes * oh * ow, T::ZERO)?;
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
        Ok(y)
    }
    let v = match x.float_vec(l, "avg_pool2d")? {
        FloatVec::F32(v) => FloatVec::F32(go(&v, planes, h, w, oh, ow, p)?),
        FloatVec::F64(v) => FloatVec::F64(go(&v, planes, h, w, oh, ow, p)?),
    };
    store(v, x.dtype())
}

/// Average pooling backward: every valid cell of window `o` receives `dy_o / D_o`, with the
/// forward's divisor `D_o` (`avg_div`).
/// Derivation: docs/autograd.md#convolution-and-pooling ("avg_pool2d").
pub fn avg_pool2d_backward(dy: &CpuStorage, dys: &Shape, xs: &Shape, p: &Pool2dParams) -> Result<CpuStorage> {
    let (planes, h, w, oh, ow) = pool_geo(xs.dims(), p)?;
    fn go<T: Float>(
        g: &[T],
        planes: usize,
        h: usize,
        w: usize,
        oh: usize,
        ow: usize,
        p: &Pool2dParams,
    ) -> Result<Vec<T>> {
        let mut dx = filled(planes * h * w, T::ZERO)?;
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
        Ok(dx)
    }
    let v = match dy.float_vec(&Layout::contiguous(dys.clone()), "avg_pool2d_backward")? {
        FloatVec::F32(g) => FloatVec::F32(go(&g, planes, h, w, oh, ow, p)?),
        FloatVec::F64(g) => FloatVec::F64(go(&g, planes, h, w, oh, ow, p)?),
    };
    store(v, dy.dtype())
}

/// Nearest-neighbour upsampling by integer factors.
pub fn upsample_nearest2d(x: &CpuStorage, l: &Layout, (fh, fw): (usize, usize)) -> Result<CpuStorage> {
    let d = l.dims();
    let (planes, h, w) = (d[0] * d[1], d[2], d[3]);
    fn go<T: Float>(x: &[T], planes: usize, h: usize, w: usize, fh: usize, fw: usize) -> Result<Vec<T>> {
        let (oh, ow) = (h * fh, w * fw);
        let mut y = filled(planes * oh * ow, T::ZERO)?;
        for pl in 0..planes {
            for oy in 0..oh {
                for ox in 0..ow {
                    y[(pl * oh + oy) * ow + ox] = x[(pl * h + oy / fh) * w + ox / fw];
                }
            }
        }
        Ok(y)
    }
    let v = match x.float_vec(l, "upsample_nearest2d")? {
        FloatVec::F32(v) => FloatVec::F32(go(&v, planes, h, w, fh, fw)?),
        FloatVec::F64(v) => FloatVec::F64(go(&v, planes, h, w, fh, fw)?),
    };
    store(v, x.dtype())
}

/// Backward of nearest upsampling: each input cell receives the sum of its `fh x fw` block.
/// Derivation: docs/autograd.md#convolution-and-pooling ("upsample_nearest2d").
pub fn upsample_nearest2d_backward(dy: &CpuStorage, dys: &Shape, (fh, fw): (usize, usize)) -> Result<CpuStorage> {
    let d = dys.dims();
    let (planes, oh, ow) = (d[0] * d[1], d[2], d[3]);
    let (h, w) = (oh / fh, ow / fw);
    // Output (oy, ox) feeds input (oy / fh, ox / fw): one pass over dy accumulates each block.
    #[allow(clippy::too_many_arguments)]
    fn go<T: Float>(
        g: &[T],
        planes: usize,
        oh: usize,
        ow: usize,
        fh: usize,
        fw: usize,
        h: usize,
        w: usize,
    ) -> Result<Vec<T>> {
        let mut dx = filled(planes * h * w, T::ZERO)?;
        for pl in 0..planes {
            for oy in 0..oh {
                for ox in 0..ow {
                    let i = (pl * h + oy / fh) * w + ox / fw;
                    dx[i] = dx[i] + g[(pl * oh + oy) * ow + ox];
                }
            }
        }
        Ok(dx)
    }
    let v = match dy.float_vec(&Layout::contiguous(dys.clone()), "upsample_nearest2d_backward")? {
        FloatVec::F32(g) => FloatVec::F32(go(&g, planes, oh, ow, fh, fw, h, w)?),
        FloatVec::F64(g) => FloatVec::F64(go(&g, planes, oh, ow, fh, fw, h, w)?),
    };
    store(v, dy.dtype())
}
