//! The depthwise conv2d path: one input channel per group, `m = O / C` output channels per input
//! channel (the channel multiplier, usually 1), direct loops over (image, channel) planes.
//!
//! # The phase buffer
//!
//! Output column `ox` at kernel column `kx` reads padded input column `q = ox * sx + kx * dx`
//! (`q = ix + px`). Each padded input row is stored split by column phase: `sx` rows of length
//! `l`, `phase[r][j] = padded[j * sx + r]`, zeros where the padding is. Then the tap `kx` of a
//! whole output row is the contiguous run `phase[t % sx][t / sx ..][.. ow]` with `t = kx * dx`,
//! for every stride and dilation: all inner loops read unit-stride runs, with no bounds tests,
//! no gathers and no border cases. Rows that fall in the vertical padding are skipped instead of
//! stored. Building the buffer costs one pass over the input plane (a `memcpy` per row at stride
//! 1, a vectorized de-interleave at stride 2), against `kh * kw` passes of arithmetic.
//!
//! # The three kernels
//!
//! - forward: fill the buffer from `x`; each output row is `sum over taps w[ky, kx] *
//!   run(iy, kx)` ([`gather_row`]), accumulated in registers one vector of columns at a time
//!   (16 f32 with AVX-512) in four independent chains, so the FMA latency is hidden, and stored
//!   once.
//! - input gradient: the same gather on the transposed problem. `dy` is copied into rows padded
//!   on both sides, so that entry `j` of phase row `(iy, r)` is `sum w[ky, kx] *
//!   dy[oy, j - t / sx]` over the taps that reach it, a contiguous run again. At stride 1 the
//!   phase row is the `dx` row, computed in place; at larger strides one input row's phase rows
//!   are computed, then interleaved into `dx`. (Scattering `dy` tap by tap instead would store
//!   and reload overlapping, misaligned runs: store-forwarding stalls on every tap.)
//! - weight gradient: fill from `x`; `dw[ky, kx] = sum over rows and columns dy[oy, :] *
//!   run(iy, kx)` ([`dot_rows`]), one tap at a time over its valid rows. The per-image partials
//!   are summed at the end.
//!
//! Which taps each row reads, and where their runs start, depends only on the geometry: the
//! lists are built once per call ([`TapRows`]). The kernels are compiled for AVX-512F and
//! AVX2+FMA as well as the baseline and picked at run time ([`multiversion`]). Planes run in
//! parallel (rayon), each worker reusing its scratch buffers across the planes it runs.

#[cfg(test)]
use super::simd::supported;
use super::simd::{best, multiversion, Isa, SimdFloat, Vector};
use super::{copy_strided, new_chunked, valid, Geo};
use crate::dtype::Float;
use rayon::prelude::*;
use std::ops::Range;

/// `out[i] = sum over taps (w, off) of w * src[off + i]`, for `i < out.len()`.
///
/// Per vector of columns, four accumulators take the taps in turn, so four FMA chains run in
/// parallel; they stay in registers and the output is stored once (accumulating tap by tap in
/// memory would put a store-to-load round trip on every FMA).
///
/// # Safety
/// The CPU must support `V`'s instruction set.
#[inline(always)]
unsafe fn gather_row<V: Vector>(taps: &[(V::T, usize)], src: &[V::T], out: &mut [V::T]) {
    let n = out.len();
    // Every tap reads src[off .. off + n]: one check per row makes the raw loads below sound.
    assert!(taps.iter().all(|&(_, off)| off + n <= src.len()), "depthwise: tap outside its buffer");
    let full = n - n % V::W;
    let (sp, op) = (src.as_ptr(), out.as_mut_ptr());
    // SAFETY: loads at off + c0 .. off + c0 + W <= off + n (checked above), stores inside `out`.
    unsafe {
        for c0 in (0..full).step_by(V::W) {
            let (mut a0, mut a1, mut a2, mut a3) = (V::zero(), V::zero(), V::zero(), V::zero());
            let mut quads = taps.chunks_exact(4);
            for q in &mut quads {
                a0 = V::splat(q[0].0).madd(V::load(sp.add(q[0].1 + c0)), a0);
                a1 = V::splat(q[1].0).madd(V::load(sp.add(q[1].1 + c0)), a1);
                a2 = V::splat(q[2].0).madd(V::load(sp.add(q[2].1 + c0)), a2);
                a3 = V::splat(q[3].0).madd(V::load(sp.add(q[3].1 + c0)), a3);
            }
            for &(w, off) in quads.remainder() {
                a0 = V::splat(w).madd(V::load(sp.add(off + c0)), a0);
            }
            a0.add(a1).add(a2.add(a3)).store(op.add(c0));
        }
    }
    for (i, o) in out.iter_mut().enumerate().skip(full) {
        *o = taps.iter().fold(V::T::ZERO, |acc, &(w, off)| acc + w * src[off + i]);
    }
}

/// `sum over r < rows, i < len of a[r * sa + i] * b[r * sb + i]`: the dot product of two sets
/// of `rows` strided rows. Per vector of columns, four accumulators take the rows in turn.
///
/// # Safety
/// The CPU must support `V`'s instruction set.
#[inline(always)]
unsafe fn dot_rows<V: Vector>(a: &[V::T], sa: usize, b: &[V::T], sb: usize, rows: usize, len: usize) -> V::T {
    if rows == 0 || len == 0 {
        return V::T::ZERO;
    }
    assert!((rows - 1) * sa + len <= a.len() && (rows - 1) * sb + len <= b.len(), "depthwise: rows outside");
    let full = len - len % V::W;
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    // SAFETY: every load lies in the first `len` columns of a row (checked above).
    let mut total = unsafe {
        let mut tot = V::zero();
        for c0 in (0..full).step_by(V::W) {
            let (mut a0, mut a1, mut a2, mut a3) = (V::zero(), V::zero(), V::zero(), V::zero());
            let ld = |r: usize| (V::load(ap.add(r * sa + c0)), V::load(bp.add(r * sb + c0)));
            let mut r = 0;
            while r + 4 <= rows {
                let ((x0, y0), (x1, y1)) = (ld(r), ld(r + 1));
                let ((x2, y2), (x3, y3)) = (ld(r + 2), ld(r + 3));
                a0 = x0.madd(y0, a0);
                a1 = x1.madd(y1, a1);
                a2 = x2.madd(y2, a2);
                a3 = x3.madd(y3, a3);
                r += 4;
            }
            for r in r..rows {
                let (x, y) = ld(r);
                a0 = x.madd(y, a0);
            }
            tot = tot.add(a0.add(a1).add(a2.add(a3)));
        }
        tot.hsum()
    };
    for r in 0..rows {
        for i in full..len {
            total = total + a[r * sa + i] * b[r * sb + i];
        }
    }
    total
}

/// Column pairs of a stride-2 row that [`fill`] and [`unfill`] move in one vector loop.
struct Pairs {
    n: usize,
    off0: usize,
    off1: usize,
}

/// Per-row lists of `(tap, offset)` pairs: `tap = ky * kw + kx` indexes a channel's weights,
/// `offset` is where the tap's run starts in the buffer the row reads. They depend only on the
/// geometry, so they are built once per call (with the divisions that takes) and shared by all
/// planes.
struct TapRows {
    starts: Vec<usize>,
    taps: Vec<(usize, usize)>,
}

impl TapRows {
    fn new() -> Self {
        TapRows { starts: vec![0], taps: Vec::new() }
    }
    /// Closes the row whose taps were pushed since the last call.
    fn end_row(&mut self) {
        self.starts.push(self.taps.len());
    }
    fn row(&self, i: usize) -> &[(usize, usize)] {
        &self.taps[self.starts[i]..self.starts[i + 1]]
    }
}

/// The depthwise geometry: [`Geo`] plus the buffers' shapes and the tap lists.
struct Dw<'a> {
    g: &'a Geo,
    /// Output channels per input channel.
    m: usize,
    /// Taps per kernel, `kh * kw`.
    kk: usize,
    /// Length of one phase row: the furthest run any tap reads ends at `ow + (kw-1)*dx / sx`.
    l: usize,
    /// Zeros on the left of each padded `dy` row (input gradient): the largest `t / sx`.
    pad: usize,
    /// Length of a padded `dy` row: `pad + l`.
    lp: usize,
    /// Per phase `r`: the buffer entries that hold input columns (`j * sx + r - px`).
    inner: Vec<Range<usize>>,
    /// Forward and weight gradient, per output row `oy`: the taps inside the input and the
    /// offsets of their runs in the phase buffer.
    fwd: TapRows,
    /// Input gradient, per phase row `(iy, r)`: the taps that reach it and the offsets of their
    /// runs in one channel's padded `dy` rows, from entry `inner[r].start` on.
    bwd: TapRows,
    /// Per kernel row `ky`: the output rows whose taps read inside the input.
    rows: Vec<Range<usize>>,
}

impl<'a> Dw<'a> {
    fn new(g: &'a Geo) -> Self {
        let pad = g.kw.saturating_sub(1) * g.dx / g.sx;
        let l = g.ow + pad;
        let lp = pad + l;
        let inner: Vec<Range<usize>> = (0..g.sx).map(|r| valid(l, g.w, g.sx, g.px, r)).collect();
        // Kernel column kx: phase t % sx, shift t / sx, with t = kx * dx.
        let cols: Vec<(usize, usize)> = (0..g.kw).map(|kx| (kx * g.dx % g.sx, kx * g.dx / g.sx)).collect();
        let mut fwd = TapRows::new();
        for oy in 0..g.oh {
            for ky in 0..g.kh {
                let Some(iy) = (oy * g.sy + ky * g.dy).checked_sub(g.py).filter(|&iy| iy < g.h) else { continue };
                for (kx, &(r, q)) in cols.iter().enumerate() {
                    fwd.taps.push((ky * g.kw + kx, (iy * g.sx + r) * l + q));
                }
            }
            fwd.end_row();
        }
        // Entry j of phase row (iy, r) gets w[ky, kx] * dy[oy, j - t / sx] from every tap with
        // t % sx == r whose kernel row maps output row oy onto input row iy.
        let mut bwd = TapRows::new();
        for iy in 0..g.h {
            for (r, js) in inner.iter().enumerate() {
                for ky in 0..g.kh {
                    let Some(a) = (iy + g.py).checked_sub(ky * g.dy) else { continue };
                    if a % g.sy != 0 || a / g.sy >= g.oh {
                        continue;
                    }
                    for (kx, &(tr, q)) in cols.iter().enumerate() {
                        if tr == r {
                            bwd.taps.push((ky * g.kw + kx, (a / g.sy) * lp + pad - q + js.start));
                        }
                    }
                }
                bwd.end_row();
            }
        }
        let rows = (0..g.kh).map(|ky| g.rows(ky)).collect();
        Dw { g, m: g.og(), kk: g.kh * g.kw, l, pad, lp, inner, fwd, bwd, rows }
    }
    /// Elements of the phase buffer of one plane: `h` rows of `sx` phases of `l`.
    fn buf_len(&self) -> usize {
        self.g.h * self.g.sx * self.l
    }
    /// Stride 2: input columns `2k, 2k + 1` for `k < n` all land inside the buffer, column `2k`
    /// at entry `k + off0` of its phase (`px % 2`), column `2k + 1` at `k + off1` of the other.
    fn pairs(&self) -> Pairs {
        let (off0, off1) = (self.g.px / 2, self.g.px.div_ceil(2));
        let n = (self.g.w / 2).min(self.l - off0.min(self.l)).min(self.l - off1.min(self.l));
        Pairs { n, off0, off1 }
    }
}

/// A worker's scratch buffers, reused across the planes it runs.
struct Scratch<T> {
    /// The phase buffer of one plane (input gradient: the phase rows of one input row).
    buf: Vec<T>,
    /// Padded `dy` rows (input gradient).
    dyp: Vec<T>,
    /// The (weight, offset) taps of one row.
    taps: Vec<(T, usize)>,
}

impl<T> Default for Scratch<T> {
    fn default() -> Self {
        Scratch { buf: Vec::new(), dyp: Vec::new(), taps: Vec::new() }
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
            let js = d.inner[r].clone();
            dst[..js.start].fill(T::ZERO);
            dst[js.end..].fill(T::ZERO);
            if js.is_empty() {
                continue;
            }
            copy_strided(&mut dst[js.clone()], src, js.start * g.sx + r - g.px, g.sx);
        }
    }
}

/// Copies the input columns of one row's `sx` phase rows `phases` out to the row `dst [w]`
/// (columns no output reads keep their 0).
#[inline(always)]
fn unfill_row<T: Float>(d: &Dw, phases: &[T], dst: &mut [T]) {
    let (g, l) = (d.g, d.l);
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
        return;
    }
    for (r, js) in d.inner.iter().enumerate() {
        if js.is_empty() {
            continue;
        }
        let src = &phases[r * l..][js.clone()];
        let ix0 = js.start * g.sx + r - g.px;
        for (j, &v) in src.iter().enumerate() {
            dst[ix0 + j * g.sx] = v;
        }
    }
}

/// Forward of one input plane `x [h, w]` into its `m` output planes `y [m, oh, ow]`.
///
/// # Safety
/// The CPU must support `V`'s instruction set (as for the two kernels below).
#[inline(always)]
unsafe fn fwd_plane<V: Vector>(d: &Dw, x: &[V::T], w: &[V::T], y: &mut [V::T], s: &mut Scratch<V::T>) {
    let g = d.g;
    let buf = scratch(&mut s.buf, d.buf_len());
    fill(d, x, buf);
    for (wj, yj) in w.chunks_exact(d.kk).zip(y.chunks_exact_mut(g.npix())) {
        for (oy, row) in yj.chunks_exact_mut(g.ow).enumerate() {
            s.taps.clear();
            s.taps.extend(d.fwd.row(oy).iter().map(|&(t, off)| (wj[t], off)));
            // SAFETY: the caller vouches for the CPU.
            unsafe { gather_row::<V>(&s.taps, buf, row) };
        }
    }
}

/// Input gradient of one plane: `dx [h, w]` from its `m` output gradients `dy [m, oh, ow]`.
#[inline(always)]
unsafe fn bwd_input_plane<V: Vector>(d: &Dw, dy: &[V::T], w: &[V::T], dx: &mut [V::T], s: &mut Scratch<V::T>) {
    let g = d.g;
    // dy rows with `pad` zeros on the left and `l - ow` on the right.
    let dyp = scratch(&mut s.dyp, d.m * g.oh * d.lp);
    for (src, dst) in dy.chunks_exact(g.ow).zip(dyp.chunks_exact_mut(d.lp)) {
        dst[..d.pad].fill(V::T::ZERO);
        dst[d.pad..d.pad + g.ow].copy_from_slice(src);
        dst[d.pad + g.ow..].fill(V::T::ZERO);
    }
    // One input row's phase rows (stride > 1; at stride 1 the row is computed in place).
    let phases = scratch(&mut s.buf, g.sx * d.l);
    for (iy, dxr) in dx.chunks_exact_mut(g.w).enumerate() {
        for (r, js) in d.inner.iter().enumerate() {
            if js.is_empty() {
                continue;
            }
            s.taps.clear();
            for jm in 0..d.m {
                let (wj, base) = (&w[jm * d.kk..][..d.kk], jm * g.oh * d.lp);
                s.taps.extend(d.bwd.row(iy * g.sx + r).iter().map(|&(t, off)| (wj[t], base + off)));
            }
            let out =
                if g.sx == 1 { &mut dxr[js.start - g.px..][..js.len()] } else { &mut phases[r * d.l..][js.clone()] };
            // SAFETY: the caller vouches for the CPU.
            unsafe { gather_row::<V>(&s.taps, dyp, out) };
        }
        if g.sx > 1 {
            unfill_row(d, phases, dxr);
        }
    }
}

/// Weight gradient of one plane: `dw [m, kh*kw]` from `x [h, w]` and `dy [m, oh, ow]`.
#[inline(always)]
unsafe fn bwd_weight_plane<V: Vector>(d: &Dw, x: &[V::T], dy: &[V::T], dw: &mut [V::T], s: &mut Scratch<V::T>) {
    let g = d.g;
    let buf = scratch(&mut s.buf, d.buf_len());
    fill(d, x, buf);
    // Consecutive output rows of one tap read input rows `sy` apart.
    let row_step = g.sy * g.sx * d.l;
    for (dwj, dyj) in dw.chunks_exact_mut(d.kk).zip(dy.chunks_exact(g.npix())) {
        for (ky, rows) in d.rows.iter().enumerate() {
            if rows.is_empty() {
                dwj[ky * g.kw..][..g.kw].fill(V::T::ZERO);
                continue;
            }
            let a = &dyj[rows.start * g.ow..];
            // The first valid row's taps of this kernel row, in kx order.
            let first = d.fwd.row(rows.start);
            let kys = first.iter().filter(|&&(t, _)| t / g.kw == ky);
            for (kx, &(_, off)) in kys.enumerate() {
                // SAFETY: the caller vouches for the CPU.
                dwj[ky * g.kw + kx] = unsafe { dot_rows::<V>(a, g.ow, &buf[off..], row_step, rows.len(), g.ow) };
            }
        }
    }
}

multiversion!(fwd_plane_mv => fwd_plane(d: &Dw, x: &[T], w: &[T], y: &mut [T], s: &mut Scratch<T>));
multiversion!(bwd_input_plane_mv => bwd_input_plane(d: &Dw, dy: &[T], w: &[T], dx: &mut [T], s: &mut Scratch<T>));
multiversion!(bwd_weight_plane_mv => bwd_weight_plane(d: &Dw, x: &[T], dy: &[T], dw: &mut [T], s: &mut Scratch<T>));

/// A scratch vector of at least `len` elements (contents unspecified; every kernel overwrites or
/// zeroes what it reads).
fn scratch<T: Float>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    if v.len() < len {
        v.resize(len, T::ZERO);
    }
    &mut v[..len]
}

pub(super) fn forward<T: SimdFloat>(x: &[T], w: &[T], g: &Geo) -> Vec<T> {
    forward_with(best(), x, w, g)
}

/// Input gradient: conv2d's `col2im(W^T dy)` with one channel per group, as direct loops.
/// Derivation: docs/autograd.md#convolution-and-pooling ("conv2d").
pub(super) fn backward_input<T: SimdFloat>(dy: &[T], w: &[T], g: &Geo) -> Vec<T> {
    backward_input_with(best(), dy, w, g)
}

/// Weight gradient: conv2d's `sum over images of dy col^T` with one channel per group, as dot
/// products of rows. Derivation: docs/autograd.md#convolution-and-pooling ("conv2d").
pub(super) fn backward_weight<T: SimdFloat>(x: &[T], dy: &[T], g: &Geo) -> Vec<T> {
    backward_weight_with(best(), x, dy, g)
}

fn forward_with<T: SimdFloat>(isa: Isa, x: &[T], w: &[T], g: &Geo) -> Vec<T> {
    let d = Dw::new(g);
    if d.kk == 0 {
        return vec![T::ZERO; g.n * g.o * g.npix()]; // an empty sum
    }
    let plane = g.h * g.w;
    // Input plane `p = (image, channel)` feeds output planes `p * m .. (p + 1) * m`.
    new_chunked(g.n * g.c, d.m * g.npix(), true, Scratch::default, |s, p, yp| {
        let wp = &w[(p % g.c) * d.m * d.kk..][..d.m * d.kk];
        fwd_plane_mv(isa, &d, &x[p * plane..][..plane], wp, yp, s);
    })
}

fn backward_input_with<T: SimdFloat>(isa: Isa, dy: &[T], w: &[T], g: &Geo) -> Vec<T> {
    let d = Dw::new(g);
    let plane = g.h * g.w;
    if g.npix() == 0 || d.kk == 0 {
        return vec![T::ZERO; g.n * g.c * plane];
    }
    let opl = d.m * g.npix();
    new_chunked(g.n * g.c, plane, true, Scratch::default, |s, p, dxp| {
        let wp = &w[(p % g.c) * d.m * d.kk..][..d.m * d.kk];
        bwd_input_plane_mv(isa, &d, &dy[p * opl..][..opl], wp, dxp, s);
    })
}

fn backward_weight_with<T: SimdFloat>(isa: Isa, x: &[T], dy: &[T], g: &Geo) -> Vec<T> {
    let d = Dw::new(g);
    let wlen = g.o * d.kk;
    let mut dw = vec![T::ZERO; wlen];
    if wlen == 0 || g.n == 0 || g.npix() == 0 {
        return dw;
    }
    let (plane, opl) = (g.h * g.w, d.m * g.npix());
    // One `[m, kh*kw]` partial per (image, channel) plane, in parallel; then the sum over images.
    let mut partial = vec![T::ZERO; g.n * wlen];
    partial.par_chunks_mut(d.m * d.kk).enumerate().for_each_init(Scratch::default, |s, (p, dwp)| {
        bwd_weight_plane_mv(isa, &d, &x[p * plane..][..plane], &dy[p * opl..][..opl], dwp, s);
    });
    for img in partial.chunks_exact(wlen) {
        for (a, &b) in dw.iter_mut().zip(img) {
            *a = *a + b;
        }
    }
    dw
}

#[cfg(test)]
mod tests {
    //! Every instruction-set variant of the three kernels against direct loops. (The property
    //! tests in `tests/` only reach the widest variant this CPU has.)
    use super::*;
    use crate::dtype::WithDType;
    use crate::op::Conv2dParams;

    /// Direct loops in f64: `(y, dx, dw)` for `dy`.
    fn reference(x: &[f64], w: &[f64], dy: &[f64], g: &Geo) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (m, kk) = (g.og(), g.kh * g.kw);
        let mut y = vec![0.0; g.n * g.o * g.npix()];
        let mut dx = vec![0.0; g.n * g.c * g.h * g.w];
        let mut dw = vec![0.0; g.o * kk];
        for i in 0..g.n {
            for o in 0..g.o {
                let c = o / m;
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let yi = ((i * g.o + o) * g.oh + oy) * g.ow + ox;
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let iy = (oy * g.sy + ky * g.dy) as isize - g.py as isize;
                                let ix = (ox * g.sx + kx * g.dx) as isize - g.px as isize;
                                if iy < 0 || ix < 0 || iy as usize >= g.h || ix as usize >= g.w {
                                    continue;
                                }
                                let xi = ((i * g.c + c) * g.h + iy as usize) * g.w + ix as usize;
                                let wi = o * kk + ky * g.kw + kx;
                                y[yi] += w[wi] * x[xi];
                                dx[xi] += w[wi] * dy[yi];
                                dw[wi] += dy[yi] * x[xi];
                            }
                        }
                    }
                }
            }
        }
        (y, dx, dw)
    }

    fn values(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
            })
            .collect()
    }

    fn check<T: SimdFloat>(got: &[T], want: &[f64], tol: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
            let a = WithDType::as_f64(a);
            assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{what}: element {i}: got {a}, want {b}");
        }
    }

    fn run<T: SimdFloat>(isa: Isa, tol: f64) {
        // (n, c, mult, h, w, kernel, stride, padding, dilation): odd widths that leave a
        // remainder after whole vectors, rows shorter than a vector, every stride case of the
        // phase buffer (1, 2 with either padding parity, 3), dilation, multipliers.
        let cases = [
            (2, 3, 1, 9, 37, (3, 3), (1, 1), (1, 1), (1, 1)),
            (1, 2, 1, 8, 40, (3, 3), (2, 2), (1, 1), (1, 1)),
            (2, 2, 2, 7, 35, (3, 3), (2, 2), (0, 2), (1, 1)),
            (1, 2, 1, 6, 5, (3, 3), (2, 1), (1, 0), (1, 1)),
            (1, 1, 3, 10, 50, (3, 5), (3, 3), (2, 2), (2, 1)),
            (2, 2, 1, 5, 70, (2, 4), (1, 2), (0, 1), (1, 2)),
            (1, 2, 1, 3, 3, (3, 3), (1, 1), (2, 2), (2, 2)),
        ];
        for (n, c, mult, h, w, k, stride, padding, dilation) in cases {
            let p = Conv2dParams { stride, padding, dilation, groups: c };
            let g = Geo::new(&[n, c, h, w], &[c * mult, 1, k.0, k.1], &p).unwrap();
            let (x, wt) = (values(n * c * h * w, 1), values(g.o * k.0 * k.1, 2));
            let dy = values(n * g.o * g.npix(), 3);
            let (ry, rdx, rdw) = reference(&x, &wt, &dy, &g);
            let cast = |v: &[f64]| v.iter().map(|&a| <T as WithDType>::from_f64(a)).collect::<Vec<T>>();
            let (xt, wtt, dyt) = (cast(&x), cast(&wt), cast(&dy));
            let what = format!("{isa:?} {} {g:?}", std::any::type_name::<T>());
            check(&forward_with(isa, &xt, &wtt, &g), &ry, tol, &format!("forward {what}"));
            check(&backward_input_with(isa, &dyt, &wtt, &g), &rdx, tol, &format!("dx {what}"));
            check(&backward_weight_with(isa, &xt, &dyt, &g), &rdw, tol, &format!("dw {what}"));
        }
    }

    #[test]
    fn every_isa_matches_direct_loops() {
        for isa in supported() {
            run::<f64>(isa, 1e-12);
            run::<f32>(isa, 1e-4);
        }
    }
}
