//! The depthwise conv2d path: one input channel per group, `m = O / C` output channels per input
//! channel (the channel multiplier, usually 1), direct loops over (image, channel) planes.
//!
//! # The phase buffer
//!
//! Output column `ox` at kernel column `kx` reads padded input column `q = ox * sx + kx * dx`
//! (`q = ix + px`). Each padded input row is stored split by column phase: `sx` rows of length
//! `l`, `phase[r][j] = padded[j * sx + r]`, zeros where the padding is. Then the tap `kx` of a
//! whole output row is the contiguous run `phase[t % sx][t / sx ..][.. ow]` with `t = kx * dx`,
//! for every stride and dilation, so all inner loops are `out[i] += w * src[i]` over
//! `i in 0..ow`: no bounds tests, no gathers, no border cases, and LLVM vectorizes them (they are
//! compiled for AVX-512F or AVX2+FMA when the CPU has them, see [`multiversion`]). Rows that
//! fall in the vertical padding are skipped instead of stored. Building the buffer costs one
//! pass over the input plane (a `memcpy` per row at stride 1), against `kh * kw` passes of
//! arithmetic over the output.
//!
//! - forward: fill the buffer from `x`, then `y[oy, :] += w[ky, kx] * run(iy, kx)` per tap;
//! - input gradient: the transpose, `run(iy, kx) += w[ky, kx] * dy[oy, :]` into a zeroed buffer,
//!   then its inner (non-padding) part is copied out to `dx`;
//! - weight gradient: fill from `x`, then `acc[ky, kx, :] += dy[oy, :] * run(iy, kx)` lane-wise
//!   over `ow` lanes, reduced to `dw[ky, kx]` once per plane; the per-image partials are summed.
//!
//! Planes run in parallel (rayon), each with its own scratch buffers reused across the planes
//! a worker runs.

use super::{valid, Geo};
use crate::dtype::Float;
use rayon::prelude::*;

/// Instruction sets the plane kernels are compiled for.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx2,
    Baseline,
}

#[cfg(target_arch = "x86_64")]
fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
            Isa::Avx512
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            Isa::Avx2
        } else {
            Isa::Baseline
        }
    })
}

/// Defines `fn $name<T>(args)` running `$body::<T, FMA>(args)` compiled for the widest
/// instruction set this CPU has. The bodies are plain slice loops that LLVM vectorizes to the
/// width of the enclosing function, so the AVX-512F / AVX2 copies differ only in codegen; they
/// use fused multiply-adds (`FMA = true`), the portable copy does not (without the `fma` feature
/// `mul_add` would be a libm call).
macro_rules! multiversion {
    ($name:ident => $body:ident ($($a:ident: $t:ty),* $(,)?)) => {
        fn $name<T: Float>($($a: $t),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512<T: Float>($($a: $t),*) {
                    $body::<T, true>($($a),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2<T: Float>($($a: $t),*) {
                    $body::<T, true>($($a),*)
                }
                match isa() {
                    // SAFETY: `isa` detected the features on this CPU.
                    Isa::Avx512 => return unsafe { avx512($($a),*) },
                    // SAFETY: as above.
                    Isa::Avx2 => return unsafe { avx2($($a),*) },
                    Isa::Baseline => {}
                }
            }
            $body::<T, false>($($a),*)
        }
    };
}

/// `a * b + c`, fused when `FMA`.
#[inline(always)]
fn madd<T: Float, const FMA: bool>(a: T, b: T, c: T) -> T {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Lanes per step of the slice loops below: a fixed-size inner loop that LLVM unrolls into one
/// or two vector operations, whatever the slice length. (A plain loop over a short row, e.g. the
/// 8 or 16 columns of a late layer, falls entirely into the scalar remainder of LLVM's unrolled
/// vector loop, which wants 64 and more elements.)
const LANES: usize = 16;

/// `y[i] += a * x[i]`.
#[inline(always)]
fn axpy<T: Float, const FMA: bool>(a: T, x: &[T], y: &mut [T]) {
    let n = y.len().min(x.len());
    let (x, y) = (&x[..n], &mut y[..n]);
    let mut yc = y.chunks_exact_mut(LANES);
    let mut xc = x.chunks_exact(LANES);
    for (y, x) in (&mut yc).zip(&mut xc) {
        for i in 0..LANES {
            y[i] = madd::<T, FMA>(a, x[i], y[i]);
        }
    }
    for (y, &x) in yc.into_remainder().iter_mut().zip(xc.remainder()) {
        *y = madd::<T, FMA>(a, x, *y);
    }
}

/// `acc[i] += x[i] * y[i]` (lane-wise: the reduction over `i` comes later).
#[inline(always)]
fn fma_lanes<T: Float, const FMA: bool>(acc: &mut [T], x: &[T], y: &[T]) {
    let n = acc.len().min(x.len()).min(y.len());
    let (acc, x, y) = (&mut acc[..n], &x[..n], &y[..n]);
    let mut ac = acc.chunks_exact_mut(LANES);
    let (mut xc, mut yc) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
    for ((a, x), y) in (&mut ac).zip(&mut xc).zip(&mut yc) {
        for i in 0..LANES {
            a[i] = madd::<T, FMA>(x[i], y[i], a[i]);
        }
    }
    for ((a, &x), &y) in ac.into_remainder().iter_mut().zip(xc.remainder()).zip(yc.remainder()) {
        *a = madd::<T, FMA>(x, y, *a);
    }
}

/// Sum of a slice in 8 interleaved partial sums (vectorizable, and more accurate than one chain).
#[inline(always)]
fn sum<T: Float>(v: &[T]) -> T {
    let mut s = [T::ZERO; 8];
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        for (s, &x) in s.iter_mut().zip(c) {
            *s = *s + x;
        }
    }
    let tail = chunks.remainder().iter().fold(T::ZERO, |a, &x| a + x);
    ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7])) + tail
}

/// Column pairs of a stride-2 row that [`fill`] and [`unfill`] move in one vector loop.
struct Pairs {
    n: usize,
    off0: usize,
    off1: usize,
}

/// The depthwise geometry: [`Geo`] plus the phase buffer's shape.
#[derive(Clone, Copy)]
struct Dw<'a> {
    g: &'a Geo,
    /// Output channels per input channel.
    m: usize,
    /// Taps per kernel, `kh * kw`.
    kk: usize,
    /// Length of one phase row: the furthest run any tap reads ends at `ow + (kw-1)*dx / sx`.
    l: usize,
}

impl<'a> Dw<'a> {
    fn new(g: &'a Geo) -> Self {
        let l = g.ow + g.kw.saturating_sub(1) * g.dx / g.sx;
        Dw { g, m: g.og(), kk: g.kh * g.kw, l }
    }
    /// Elements of the phase buffer of one plane: `h` rows of `sx` phases of `l`.
    fn buf_len(&self) -> usize {
        self.g.h * self.g.sx * self.l
    }
    /// Start of the run of `ow` buffer values that an output row reads at input row `iy`,
    /// kernel column `kx`.
    #[inline(always)]
    fn run(&self, iy: usize, kx: usize) -> usize {
        let t = kx * self.g.dx;
        (iy * self.g.sx + t % self.g.sx) * self.l + t / self.g.sx
    }
    /// Input row read by output row `oy` at kernel row `ky`, `None` in the padding.
    #[inline(always)]
    fn iy(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.g.sy + ky * self.g.dy).checked_sub(self.g.py).filter(|&iy| iy < self.g.h)
    }
    /// Stride 2: input columns `2k, 2k + 1` for `k < n` all land inside the buffer, column `2k`
    /// at entry `k + off0` of its phase (`px % 2`), column `2k + 1` at `k + off1` of the other.
    fn pairs(&self) -> Pairs {
        let (off0, off1) = (self.g.px / 2, self.g.px.div_ceil(2));
        let n = (self.g.w / 2).min(self.l - off0.min(self.l)).min(self.l - off1.min(self.l));
        Pairs { n, off0, off1 }
    }
    /// Buffer phase `r` of every row maps entries `j` in this range to input columns
    /// `j * sx + r - px` (the rest is padding).
    fn inner(&self, r: usize) -> std::ops::Range<usize> {
        valid(self.l, self.g.w, self.g.sx, self.g.px, r)
    }
}

/// Fills the phase buffer `buf` from the input plane `x [h, w]`.
#[inline(always)]
fn fill<T: Float>(d: &Dw, x: &[T], buf: &mut [T]) {
    let (g, l) = (d.g, d.l);
    for iy in 0..g.h {
        let src = &x[iy * g.w..][..g.w];
        let phases = &mut buf[iy * g.sx * l..][..g.sx * l];
        if g.sx == 2 {
            // Both phases in one pass over column pairs (a vectorizable de-interleave).
            phases.fill(T::ZERO);
            let pairs = d.pairs();
            let (p0, p1) = phases.split_at_mut(l);
            let (d0, d1) = if g.px % 2 == 0 { (p0, p1) } else { (p1, p0) };
            let (a, b) = (&mut d0[pairs.off0..][..pairs.n], &mut d1[pairs.off1..][..pairs.n]);
            for ((a, b), c) in a.iter_mut().zip(b.iter_mut()).zip(src.chunks_exact(2)) {
                *a = c[0];
                *b = c[1];
            }
            // Columns past the whole pairs: one at a time.
            for (ix, &v) in src.iter().enumerate().skip(2 * pairs.n) {
                let q = ix + g.px;
                if q / 2 < l {
                    phases[(q % 2) * l + q / 2] = v;
                }
            }
            continue;
        }
        for r in 0..g.sx {
            let dst = &mut phases[r * l..][..l];
            let js = d.inner(r);
            dst[..js.start].fill(T::ZERO);
            dst[js.end..].fill(T::ZERO);
            if js.is_empty() {
                continue;
            }
            let ix0 = js.start * g.sx + r - g.px;
            let dst = &mut dst[js];
            if g.sx == 1 {
                dst.copy_from_slice(&src[ix0..ix0 + dst.len()]);
            } else {
                for (j, v) in dst.iter_mut().enumerate() {
                    *v = src[ix0 + j * g.sx];
                }
            }
        }
    }
}

/// Copies the non-padding part of the phase buffer `buf` out to the plane `dx [h, w]`
/// (input columns no output reads keep their 0).
#[inline(always)]
fn unfill<T: Float>(d: &Dw, buf: &[T], dx: &mut [T]) {
    let (g, l) = (d.g, d.l);
    for iy in 0..g.h {
        let dst = &mut dx[iy * g.w..][..g.w];
        let phases = &buf[iy * g.sx * l..][..g.sx * l];
        if g.sx == 2 {
            // The adjoint of `fill`'s pair loop: an interleave.
            let pairs = d.pairs();
            let (p0, p1) = phases.split_at(l);
            let (d0, d1) = if g.px % 2 == 0 { (p0, p1) } else { (p1, p0) };
            let (a, b) = (&d0[pairs.off0..][..pairs.n], &d1[pairs.off1..][..pairs.n]);
            for ((&a, &b), c) in a.iter().zip(b).zip(dst.chunks_exact_mut(2)) {
                c[0] = a;
                c[1] = b;
            }
            for (ix, v) in dst.iter_mut().enumerate().skip(2 * pairs.n) {
                let q = ix + g.px;
                if q / 2 < l {
                    *v = phases[(q % 2) * l + q / 2];
                }
            }
            continue;
        }
        for r in 0..g.sx {
            let js = d.inner(r);
            if js.is_empty() {
                continue;
            }
            let src = &phases[r * l..][js.clone()];
            let ix0 = js.start * g.sx + r - g.px;
            if g.sx == 1 {
                dst[ix0..ix0 + src.len()].copy_from_slice(src);
            } else {
                for (j, &v) in src.iter().enumerate() {
                    dst[ix0 + j * g.sx] = v;
                }
            }
        }
    }
}

/// Forward of one input plane `x [h, w]` into its `m` output planes `y [m, oh, ow]`.
#[inline(always)]
fn fwd_plane<T: Float, const FMA: bool>(d: &Dw, x: &[T], w: &[T], y: &mut [T], buf: &mut [T]) {
    let g = d.g;
    fill(d, x, buf);
    for (wj, yj) in w.chunks_exact(d.kk).zip(y.chunks_exact_mut(g.npix())) {
        for (oy, row) in yj.chunks_exact_mut(g.ow).enumerate() {
            row.fill(T::ZERO);
            for ky in 0..g.kh {
                let Some(iy) = d.iy(oy, ky) else { continue };
                for kx in 0..g.kw {
                    axpy::<T, FMA>(wj[ky * g.kw + kx], &buf[d.run(iy, kx)..][..g.ow], row);
                }
            }
        }
    }
}

/// Input gradient of one plane: `dx [h, w]` from its `m` output gradients `dy [m, oh, ow]`.
#[inline(always)]
fn bwd_input_plane<T: Float, const FMA: bool>(d: &Dw, dy: &[T], w: &[T], dx: &mut [T], buf: &mut [T]) {
    let g = d.g;
    buf.fill(T::ZERO);
    for (wj, dyj) in w.chunks_exact(d.kk).zip(dy.chunks_exact(g.npix())) {
        for (oy, row) in dyj.chunks_exact(g.ow).enumerate() {
            for ky in 0..g.kh {
                let Some(iy) = d.iy(oy, ky) else { continue };
                for kx in 0..g.kw {
                    axpy::<T, FMA>(wj[ky * g.kw + kx], row, &mut buf[d.run(iy, kx)..][..g.ow]);
                }
            }
        }
    }
    unfill(d, buf, dx);
}

/// Weight gradient of one plane: `dw [m, kh*kw]` from `x [h, w]` and `dy [m, oh, ow]`.
#[inline(always)]
fn bwd_weight_plane<T: Float, const FMA: bool>(d: &Dw, x: &[T], dy: &[T], dw: &mut [T], buf: &mut [T], acc: &mut [T]) {
    let g = d.g;
    fill(d, x, buf);
    for (dwj, dyj) in dw.chunks_exact_mut(d.kk).zip(dy.chunks_exact(g.npix())) {
        acc.fill(T::ZERO);
        for (oy, row) in dyj.chunks_exact(g.ow).enumerate() {
            for ky in 0..g.kh {
                let Some(iy) = d.iy(oy, ky) else { continue };
                for kx in 0..g.kw {
                    let a = &mut acc[(ky * g.kw + kx) * g.ow..][..g.ow];
                    fma_lanes::<T, FMA>(a, row, &buf[d.run(iy, kx)..][..g.ow]);
                }
            }
        }
        for (t, v) in dwj.iter_mut().enumerate() {
            *v = sum(&acc[t * g.ow..][..g.ow]);
        }
    }
}

multiversion!(fwd_plane_mv => fwd_plane(d: &Dw, x: &[T], w: &[T], y: &mut [T], buf: &mut [T]));
multiversion!(bwd_input_plane_mv => bwd_input_plane(d: &Dw, dy: &[T], w: &[T], dx: &mut [T], buf: &mut [T]));
multiversion!(bwd_weight_plane_mv => bwd_weight_plane(
    d: &Dw, x: &[T], dy: &[T], dw: &mut [T], buf: &mut [T], acc: &mut [T]
));

/// A scratch vector of at least `len` elements (contents unspecified; every kernel overwrites or
/// zeroes what it reads).
fn scratch<T: Float>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    if v.len() < len {
        v.resize(len, T::ZERO);
    }
    &mut v[..len]
}

pub(super) fn forward<T: Float>(x: &[T], w: &[T], g: &Geo) -> Vec<T> {
    let d = Dw::new(g);
    let mut y = vec![T::ZERO; g.n * g.o * g.npix()];
    if y.is_empty() || d.kk == 0 {
        return y; // no output, or an empty sum
    }
    let plane = g.h * g.w;
    // Input plane `p = (image, channel)` feeds output planes `p * m .. (p + 1) * m`.
    y.par_chunks_mut(d.m * g.npix()).enumerate().for_each_init(Vec::new, |buf, (p, yp)| {
        let wp = &w[(p % g.c) * d.m * d.kk..][..d.m * d.kk];
        fwd_plane_mv(&d, &x[p * plane..][..plane], wp, yp, scratch(buf, d.buf_len()));
    });
    y
}

pub(super) fn backward_input<T: Float>(dy: &[T], w: &[T], g: &Geo) -> Vec<T> {
    let d = Dw::new(g);
    let plane = g.h * g.w;
    let mut dx = vec![T::ZERO; g.n * g.c * plane];
    if dx.is_empty() || g.npix() == 0 || d.kk == 0 {
        return dx;
    }
    let opl = d.m * g.npix();
    dx.par_chunks_mut(plane).enumerate().for_each_init(Vec::new, |buf, (p, dxp)| {
        let wp = &w[(p % g.c) * d.m * d.kk..][..d.m * d.kk];
        bwd_input_plane_mv(&d, &dy[p * opl..][..opl], wp, dxp, scratch(buf, d.buf_len()));
    });
    dx
}

pub(super) fn backward_weight<T: Float>(x: &[T], dy: &[T], g: &Geo) -> Vec<T> {
    let d = Dw::new(g);
    let wlen = g.o * d.kk;
    let mut dw = vec![T::ZERO; wlen];
    if wlen == 0 || g.n == 0 || g.npix() == 0 {
        return dw;
    }
    let (plane, opl) = (g.h * g.w, d.m * g.npix());
    // One `[m, kh*kw]` partial per (image, channel) plane, in parallel; then the sum over images.
    let mut partial = vec![T::ZERO; g.n * wlen];
    partial.par_chunks_mut(d.m * d.kk).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(buf, acc), (p, dwp)| {
            let (buf, acc) = (scratch(buf, d.buf_len()), scratch(acc, d.kk * g.ow));
            bwd_weight_plane_mv(&d, &x[p * plane..][..plane], &dy[p * opl..][..opl], dwp, buf, acc);
        },
    );
    for img in partial.chunks_exact(wlen) {
        for (a, &b) in dw.iter_mut().zip(img) {
            *a = *a + b;
        }
    }
    dw
}
