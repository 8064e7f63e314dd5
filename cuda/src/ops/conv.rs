//! Convolution, pooling and nearest upsampling over NCHW tensors (kernels in
//! `kernels/conv_pool.cu`).
//!
//! Four conv2d paths:
//! - **depthwise** (`groups == C == O`): direct kernels, one thread per output (forward) or input
//!   (dx) pixel, and a deterministic block reduction per weight tap (per channel for 3x3) for dW
//!   (`dw_*` kernels); no im2col and no GEMM.
//! - **few input taps** (`groups == 1`, `C*kh*kw <= 27`, not 1x1: a detector's stem, 3 -> 16
//!   channels 3x3): forward by a direct kernel, a thread per output pixel (or 4 on large grids)
//!   reading its input taps once and writing every output channel (`conv_small_fwd*`); both
//!   gradients take the general path (the input of a stem is the image: no dx in training).
//! - **pointwise** (1x1, stride 1, no padding): cuBLAS on the input itself, viewed as `[C, H*W]` per
//!   image, strided-batched over the images: `y_g = W_g @ x_g`, `dx_g = W_g^T @ dy_g` (straight into
//!   dx), and for dW either `dW_g = dyT_g @ xT_g^T` over channel-major copies `[C, n*H*W]` of x
//!   and dy (one GEMM whose K spans every image and pixel; large images) or `dy_g @ x_g^T` per
//!   image as one GEMM batched over the images into a workspace folded in image order by
//!   `batch_sum` (small images; no atomics either way).
//! - **general**: per group g, `out_g [O/g, OH*OW] = W_g [O/g, K] @ col_g [K, OH*OW]`, K =
//!   C/g*kh*kw, one strided-batched GEMM over the images of a chunk (the weight has batch stride
//!   0). The backward passes are the other two products of the same matrices: `dcol = W_g^T @
//!   dy_g` folded back by col2im (dx), and `dW_g = sum_img dy_g @ col_g^T` (dW, batched over
//!   groups, accumulated over images with beta = 1).
//!
//! f16/bf16 gradients accumulate in f32 and round once.

use cudarc::driver::DeviceRepr;
use ela_core::{Conv2dParams, DType, Error, Layout, Pool2dParams, Result, Shape};

use super::matmul::Operand;
use super::{check_float, check_same, dt, stat_dtype, width};
use crate::device::{Arg, Cfg, Cuda};
use crate::kernels::KernelFile::ConvPool as CP;
use crate::storage::CudaStorage;

/// Elements of im2col buffer per launch chunk (256 MiB of f32): bounds the scratch memory.
const COL_LIMIT: usize = 1 << 26;

/// Output pixels from which a 1x1 weight gradient runs as one GEMM over channel-major copies
/// (K = n*H*W) rather than a GEMM batched over images (K = H*W) folded by `batch_sum`. Measured
/// on an H200, batch 32, f32 (README): 125 vs 225 us at 80x80 (16 -> 32 channels); 62 vs 44
/// at 40x40, 41-52 vs 26-28 at 20x20.
const PW_PERMUTE_PIX: usize = 4096;

/// Most input taps (C*kh*kw) of the direct few-channel convolution (`SMALL_TAPS` in conv_pool.cu).
const SMALL_TAPS: usize = 27;

/// Blocks from which the few-channel direct conv gives each thread several pixels (fewer
/// shared-memory reads per product) rather than one (more blocks): two per multiprocessor of an
/// H200 (132).
const SMALL_MULTI_BLOCKS: usize = 264;

/// Mirror of `struct ConvGeo` in conv_pool.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ConvGeo {
    n: i64,
    c: i64,
    h: i64,
    w: i64,
    kh: i64,
    kw: i64,
    oh: i64,
    ow: i64,
    sh: i64,
    sw: i64,
    ph: i64,
    pw: i64,
    dh: i64,
    dw: i64,
}
// SAFETY: plain-old-data with the C layout of the kernel-side struct.
unsafe impl DeviceRepr for ConvGeo {}

/// Mirror of `struct PoolGeo` in conv_pool.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PoolGeo {
    planes: i64,
    h: i64,
    w: i64,
    oh: i64,
    ow: i64,
    kh: i64,
    kw: i64,
    sh: i64,
    sw: i64,
    ph: i64,
    pw: i64,
    include_pad: i64,
}
// SAFETY: as above.
unsafe impl DeviceRepr for PoolGeo {}

/// Sizes of one convolution: input [n, c, h, w], weight [o, c/g, kh, kw], output [n, o, oh, ow].
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
    p: Conv2dParams,
}

impl Geo {
    fn new(x: &[usize], wd: &[usize], p: &Conv2dParams) -> Result<Geo> {
        let (oh, ow) = p
            .output_hw((x[2], x[3]), (wd[2], wd[3]))
            .ok_or_else(|| Error::invalid("conv2d", "kernel larger than the padded input"))?;
        Ok(Geo { n: x[0], c: x[1], h: x[2], w: x[3], o: wd[0], kh: wd[2], kw: wd[3], oh, ow, g: p.groups, p: *p })
    }
    fn npix(&self) -> usize {
        self.oh * self.ow
    }
    /// Rows of one group's im2col matrix.
    fn krows(&self) -> usize {
        self.c / self.g * self.kh * self.kw
    }
    fn og(&self) -> usize {
        self.o / self.g
    }
    /// im2col elements per image (all groups).
    fn col_per_img(&self) -> usize {
        self.c * self.kh * self.kw * self.npix()
    }
    /// Images per chunk so the im2col buffer stays under [`COL_LIMIT`] (pointwise convolutions
    /// have no im2col buffer: one chunk).
    fn chunk(&self) -> usize {
        if self.pointwise() {
            return self.n.max(1);
        }
        (COL_LIMIT / self.col_per_img().max(1)).clamp(1, self.n.max(1))
    }
    /// `groups == C == O` (weight `[C, 1, kh, kw]`), with planes small enough for the direct
    /// kernels' 32-bit in-plane indices.
    fn depthwise(&self) -> bool {
        let fits = |v: usize| v < (1 << 31);
        self.g == self.c && self.o == self.c && fits(self.h * self.w) && fits(self.npix())
    }
    /// groups 1 with at most [`SMALL_TAPS`] input taps (C*kh*kw; a stem conv), not pointwise,
    /// with images and output maps small enough for the direct kernel's 32-bit indices.
    fn small_taps(&self) -> bool {
        let fits = |v: usize| v < (1 << 31);
        self.g == 1
            && (1..=SMALL_TAPS).contains(&self.krows())
            && !self.pointwise()
            && fits(self.c * self.h * self.w)
            && fits(self.o * self.npix())
    }
    /// 1x1, stride 1, no padding: the input already is the im2col matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.p.stride == (1, 1) && self.p.padding == (0, 0)
    }
    fn kernel_geo(&self, n: usize) -> ConvGeo {
        let i = |v: usize| v as i64;
        ConvGeo {
            n: i(n),
            c: i(self.c),
            h: i(self.h),
            w: i(self.w),
            kh: i(self.kh),
            kw: i(self.kw),
            oh: i(self.oh),
            ow: i(self.ow),
            sh: i(self.p.stride.0),
            sw: i(self.p.stride.1),
            ph: i(self.p.padding.0),
            pw: i(self.p.padding.1),
            dh: i(self.p.dilation.0),
            dw: i(self.p.dilation.1),
        }
    }
}

fn pool_geo(d: &[usize], p: &Pool2dParams, op: &'static str) -> Result<PoolGeo> {
    let (oh, ow) =
        p.output_hw((d[2], d[3])).ok_or_else(|| Error::invalid(op, "window larger than the padded input"))?;
    let i = |v: usize| v as i64;
    Ok(PoolGeo {
        planes: i(d[0] * d[1]),
        h: i(d[2]),
        w: i(d[3]),
        oh: i(oh),
        ow: i(ow),
        kh: i(p.kernel.0),
        kw: i(p.kernel.1),
        sh: i(p.stride.0),
        sw: i(p.stride.1),
        ph: i(p.padding.0),
        pw: i(p.padding.1),
        include_pad: p.count_include_pad as i64,
    })
}

impl Cuda {
    /// im2col of images `i0..i0+n` into `col` (or the input itself for pointwise convolutions).
    fn im2col(&self, g: &Geo, x: u64, dtype: DType, i0: usize, n: usize, col: &Option<CudaStorage>) -> Result<u64> {
        let es = dtype.size_in_bytes() as u64;
        let xp = x + (i0 * g.c * g.h * g.w) as u64 * es;
        match col {
            None => Ok(xp),
            Some(col) => {
                let args = [Arg::Ptr(col.ptr()), Arg::Ptr(xp), Arg::by_value(g.kernel_geo(n))];
                // One thread per (image, channel, output pixel): see `im2col_w*` in conv_pool.cu.
                self.launch(CP, &format!("im2col_{}", width(dtype)), Cfg::elems(n * g.c * g.npix()), &args)?;
                Ok(col.ptr())
            }
        }
    }

    fn col_buffer(&self, g: &Geo, dtype: DType) -> Result<Option<CudaStorage>> {
        if g.pointwise() {
            Ok(None)
        } else {
            Ok(Some(self.alloc(dtype, g.chunk() * g.col_per_img())?))
        }
    }

    /// Launch of a depthwise kernel over every pixel of every (image, channel) plane; `kind` is
    /// `fwd` or `bwd_input` (3x3 kernels use the unrolled variant).
    fn depthwise_launch(&self, kind: &str, g: &Geo, dtype: DType, pix: usize, ptrs: [u64; 3]) -> Result<()> {
        let planes = g.n * g.c;
        if pix == 0 || planes == 0 {
            return Ok(());
        }
        let k3 = if g.kh == 3 && g.kw == 3 { "3" } else { "" };
        let cfg = Cfg { grid: pix.div_ceil(256).min(1 << 16) as u32, grid_y: planes.min(65_535) as u32, block: 256 };
        let args = [Arg::Ptr(ptrs[0]), Arg::Ptr(ptrs[1]), Arg::Ptr(ptrs[2]), Arg::by_value(g.kernel_geo(g.n))];
        self.launch(CP, &format!("dw_{kind}{k3}_{}", dt(dtype)), cfg, &args)
    }

    /// Weight gradient of a depthwise convolution: one block (or, for long reductions, a fixed
    /// number of blocks whose partials are added in order) per weight tap, or per channel for
    /// 3x3 kernels (all 9 taps in registers).
    /// Derivation: docs/autograd.md#convolution-and-pooling ("conv2d").
    fn depthwise_weight_grad(&self, g: &Geo, dtype: DType, x: u64, dy: u64) -> Result<CudaStorage> {
        let taps = g.kh * g.kw;
        let cts = g.c * taps;
        let dw = self.alloc(dtype, cts)?;
        let total = g.n * g.npix();
        if cts == 0 {
            return Ok(dw);
        }
        if total == 0 {
            self.memset_zero(dw.ptr(), cts * dtype.size_in_bytes())?;
            return Ok(dw);
        }
        // 3x3: a block per channel computes its 9 taps together; else a block per tap. About 1024
        // blocks in all, each summing at least 2048 output pixels.
        let k3 = g.kh == 3 && g.kw == 3;
        let rows = if k3 { g.c } else { cts };
        let splits = 1024usize.div_ceil(rows).clamp(1, total.div_ceil(2048)).min(65_535);
        let per = total.div_ceil(splits);
        let splits = total.div_ceil(per);
        let acc = stat_dtype(dtype);
        let partial = if splits > 1 { Some(self.alloc(acc, cts * splits)?) } else { None };
        let pp = partial.as_ref().map_or(0, |p| p.ptr());
        let cfg = Cfg { grid: rows as u32, grid_y: splits as u32, block: 256 };
        let args = [
            Arg::Ptr(dw.ptr()),
            Arg::Ptr(pp),
            Arg::Ptr(x),
            Arg::Ptr(dy),
            Arg::by_value(g.kernel_geo(g.n)),
            Arg::n(per),
        ];
        let name = if k3 { "dw_bwd_weight3" } else { "dw_bwd_weight" };
        self.launch(CP, &format!("{name}_{}", dt(dtype)), cfg, &args)?;
        if splits > 1 {
            let args = [Arg::Ptr(dw.ptr()), Arg::Ptr(pp), Arg::n(cts), Arg::n(splits)];
            self.launch(CP, &format!("dw_wgrad_sum_{}", dt(dtype)), Cfg::elems(cts), &args)?;
        }
        Ok(dw)
    }

    /// Whether the direct depthwise kernels are used (else every conv goes through im2col + GEMM).
    fn direct_depthwise(&self, g: &Geo) -> bool {
        g.depthwise() && self.direct_conv()
    }

    /// 2-D convolution.
    pub(crate) fn conv2d_impl(
        &self,
        x: &CudaStorage,
        lx: &Layout,
        w: &CudaStorage,
        lw: &Layout,
        p: &Conv2dParams,
    ) -> Result<CudaStorage> {
        check_float("conv2d", x.dtype())?;
        check_same("conv2d", x, w)?;
        let g = Geo::new(lx.dims(), lw.dims(), p)?;
        let d = x.dtype();
        let es = d.size_in_bytes() as u64;
        let out = self.alloc(d, g.n * g.o * g.npix())?;
        if out.is_empty() {
            return Ok(out);
        }
        if g.krows() == 0 {
            self.memset_zero(out.ptr(), out.len() * d.size_in_bytes())?;
            return Ok(out);
        }
        let (xc, wc) = (self.contig(x, lx)?, self.contig(w, lw)?);
        if self.direct_depthwise(&g) {
            self.depthwise_launch("fwd", &g, d, g.npix(), [out.ptr(), xc.ptr(), wc.ptr()])?;
            return Ok(out);
        }
        if g.small_taps() && self.direct_small_conv() {
            // Threads of a few output pixels each, every output channel (conv_small_fwd_impl):
            // 4 pixels a thread (2 in f64) when that still gives SMALL_MULTI_BLOCKS blocks.
            let multi = if d == DType::F64 { 2 } else { 4 };
            let (px, name) = if g.n * g.npix().div_ceil(256 * multi) >= SMALL_MULTI_BLOCKS {
                (multi, "conv_small_fwd_multi")
            } else {
                (1, "conv_small_fwd")
            };
            let grid = g.npix().div_ceil(256 * px) as u32;
            let cfg = Cfg { grid, grid_y: g.n.min(65_535) as u32, block: 256 };
            let args = [
                Arg::Ptr(out.ptr()),
                Arg::Ptr(xc.ptr()),
                Arg::Ptr(wc.ptr()),
                Arg::by_value(g.kernel_geo(g.n)),
                Arg::I32(g.o as i32),
            ];
            self.launch(CP, &format!("{name}_{}", dt(d)), cfg, &args)?;
            return Ok(out);
        }
        let col = self.col_buffer(&g, d)?;
        let (npix, krows, og) = (g.npix(), g.krows(), g.og());
        let mut i0 = 0;
        while i0 < g.n {
            let n = g.chunk().min(g.n - i0);
            let colp = self.im2col(&g, xc.ptr(), d, i0, n, &col)?;
            for gi in 0..g.g {
                let a = Operand { ptr: wc.ptr() + (gi * og * krows) as u64 * es, rs: krows, cs: 1, batch_stride: 0 };
                let b = Operand {
                    ptr: colp + (gi * krows * npix) as u64 * es,
                    rs: npix,
                    cs: 1,
                    batch_stride: g.col_per_img(),
                };
                let c = out.ptr() + ((i0 * g.o + gi * og) * npix) as u64 * es;
                self.gemm(d, d, (og, npix, krows, n), a, b, (c, npix, g.o * npix), 0.0)?;
            }
            i0 += n;
        }
        Ok(out)
    }

    /// Gradient of conv2d w.r.t. its input.
    /// Derivation: docs/autograd.md#convolution-and-pooling ("conv2d").
    pub(crate) fn conv2d_bwd_input_impl(
        &self,
        dy: &CudaStorage,
        w: &CudaStorage,
        lw: &Layout,
        xs: &Shape,
        p: &Conv2dParams,
    ) -> Result<CudaStorage> {
        check_float("conv2d_backward", dy.dtype())?;
        check_same("conv2d_backward", dy, w)?;
        let g = Geo::new(xs.dims(), lw.dims(), p)?;
        let d = dy.dtype();
        let acc = stat_dtype(d);
        let (es, ea) = (d.size_in_bytes() as u64, acc.size_in_bytes() as u64);
        let dx = self.alloc(d, xs.elem_count())?;
        if dx.is_empty() {
            return Ok(dx);
        }
        let wc = self.contig(w, lw)?;
        let (npix, krows, og) = (g.npix(), g.krows(), g.og());
        if self.direct_depthwise(&g) {
            self.depthwise_launch("bwd_input", &g, d, g.h * g.w, [dx.ptr(), dy.ptr(), wc.ptr()])?;
            return Ok(dx);
        }
        if g.pointwise() {
            // dx_g [C/g, HW] = W_g^T [C/g, O/g] @ dy_g [O/g, HW], batched over images, into dx.
            if og == 0 {
                self.memset_zero(dx.ptr(), dx.len() * es as usize)?;
            }
            for gi in 0..g.g {
                let a = Operand { ptr: wc.ptr() + (gi * og * krows) as u64 * es, rs: 1, cs: krows, batch_stride: 0 };
                let b =
                    Operand { ptr: dy.ptr() + (gi * og * npix) as u64 * es, rs: npix, cs: 1, batch_stride: g.o * npix };
                let c = dx.ptr() + (gi * krows * npix) as u64 * es;
                if og > 0 {
                    self.gemm(d, d, (krows, npix, og, g.n), a, b, (c, npix, g.c * npix), 0.0)?;
                }
            }
            return Ok(dx);
        }
        let dcol = self.alloc(acc, g.chunk() * g.col_per_img())?;
        if npix == 0 || og == 0 {
            self.memset_zero(dcol.ptr(), dcol.len() * acc.size_in_bytes())?;
        }
        let mut i0 = 0;
        while i0 < g.n {
            let n = g.chunk().min(g.n - i0);
            for gi in 0..g.g {
                // W_g^T [krows, og]: the row-major W_g read with swapped strides.
                let a = Operand { ptr: wc.ptr() + (gi * og * krows) as u64 * es, rs: 1, cs: krows, batch_stride: 0 };
                let b = Operand {
                    ptr: dy.ptr() + ((i0 * g.o + gi * og) * npix) as u64 * es,
                    rs: npix,
                    cs: 1,
                    batch_stride: g.o * npix,
                };
                let c = dcol.ptr() + (gi * krows * npix) as u64 * ea;
                if og > 0 {
                    self.gemm(d, acc, (krows, npix, og, n), a, b, (c, npix, g.col_per_img()), 0.0)?;
                }
            }
            let dxp = dx.ptr() + (i0 * g.c * g.h * g.w) as u64 * es;
            let args = [Arg::Ptr(dxp), Arg::Ptr(dcol.ptr()), Arg::by_value(g.kernel_geo(n))];
            self.launch(CP, &format!("col2im_{}", dt(d)), Cfg::elems(n * g.c * g.h * g.w), &args)?;
            i0 += n;
        }
        Ok(dx)
    }

    /// Gradient of conv2d w.r.t. its weight.
    /// Derivation: docs/autograd.md#convolution-and-pooling ("conv2d").
    pub(crate) fn conv2d_bwd_weight_impl(
        &self,
        x: &CudaStorage,
        lx: &Layout,
        dy: &CudaStorage,
        ws: &Shape,
        p: &Conv2dParams,
    ) -> Result<CudaStorage> {
        check_float("conv2d_backward", dy.dtype())?;
        check_same("conv2d_backward", x, dy)?;
        let g = Geo::new(lx.dims(), ws.dims(), p)?;
        let d = dy.dtype();
        let acc = stat_dtype(d);
        let es = d.size_in_bytes() as u64;
        let (npix, krows, og) = (g.npix(), g.krows(), g.og());
        if self.direct_depthwise(&g) {
            let xc = self.contig(x, lx)?;
            return self.depthwise_weight_grad(&g, d, xc.ptr(), dy.ptr());
        }
        let wlen = ws.elem_count();
        if g.pointwise() && g.n > 1 && npix >= PW_PERMUTE_PIX && krows > 0 && og > 0 {
            // Channel-major copies dyT [O, n*HW] and xT [C, n*HW] (of a chunk of images), then
            // dW_g = dyT_g @ xT_g^T: one GEMM per group whose K runs over every image and pixel,
            // accumulated over chunks with beta = 1 (cuBLAS splits the long K itself).
            let ea = acc.size_in_bytes() as u64;
            let imgs = (COL_LIMIT / ((g.c + g.o) * npix)).clamp(1, g.n).min(i32::MAX as usize / npix);
            let (xt, dyt) = (self.alloc(d, imgs * g.c * npix)?, self.alloc(d, imgs * g.o * npix)?);
            let dw = self.alloc(acc, wlen)?;
            let dyl = Layout::contiguous(vec![g.n, g.o, g.oh, g.ow]);
            let mut i0 = 0;
            while i0 < g.n {
                let n = imgs.min(g.n - i0);
                let k = n * npix;
                let xv = lx.narrow(0, i0, n, "conv2d_backward")?.transpose(0, 1);
                self.copy_strided(&xt, &Layout::contiguous(xv.shape().clone()), x, &xv)?;
                let dyv = dyl.narrow(0, i0, n, "conv2d_backward")?.transpose(0, 1);
                self.copy_strided(&dyt, &Layout::contiguous(dyv.shape().clone()), dy, &dyv)?;
                for gi in 0..g.g {
                    let a = Operand { ptr: dyt.ptr() + (gi * og * k) as u64 * es, rs: k, cs: 1, batch_stride: 0 };
                    let b = Operand { ptr: xt.ptr() + (gi * krows * k) as u64 * es, rs: 1, cs: k, batch_stride: 0 };
                    let c = dw.ptr() + (gi * og * krows) as u64 * ea;
                    let beta = if i0 == 0 { 0.0 } else { 1.0 };
                    self.gemm(d, acc, (og, krows, k, 1), a, b, (c, krows, 0), beta)?;
                }
                i0 += n;
            }
            return if acc == d { Ok(dw) } else { self.cast_impl(&dw, &Layout::contiguous(ws.clone()), d) };
        }
        if g.pointwise() && g.g + 1 < g.n && npix > 0 && krows > 0 && og > 0 {
            // Small images: dW_g [O/g, C/g] of every image in one GEMM batched over the images of a
            // chunk (into a workspace laid out like the weight, one copy per image), folded in
            // image order by `batch_sum`.
            let ea = acc.size_in_bytes() as u64;
            let xc = self.contig(x, lx)?;
            let imgs = (COL_LIMIT / wlen.max(1)).clamp(1, g.n);
            let (wsb, dw) = (self.alloc(acc, imgs * wlen)?, self.alloc(acc, wlen)?);
            let mut i0 = 0;
            while i0 < g.n {
                let n = imgs.min(g.n - i0);
                for gi in 0..g.g {
                    let dyp = dy.ptr() + ((i0 * g.o + gi * og) * npix) as u64 * es;
                    let a = Operand { ptr: dyp, rs: npix, cs: 1, batch_stride: g.o * npix };
                    let xp = xc.ptr() + ((i0 * g.c + gi * krows) * npix) as u64 * es;
                    let b = Operand { ptr: xp, rs: 1, cs: npix, batch_stride: g.c * npix };
                    let c = wsb.ptr() + (gi * og * krows) as u64 * ea;
                    self.gemm(d, acc, (og, krows, npix, n), a, b, (c, krows, wlen), 0.0)?;
                }
                let args =
                    [Arg::Ptr(dw.ptr()), Arg::Ptr(wsb.ptr()), Arg::n(n), Arg::n(wlen), Arg::I32((i0 > 0) as i32)];
                self.launch(CP, &format!("batch_sum_{}", dt(d)), Cfg::elems(wlen), &args)?;
                i0 += n;
            }
            return if acc == d { Ok(dw) } else { self.cast_impl(&dw, &Layout::contiguous(ws.clone()), d) };
        }
        let dw = self.zeros(acc, wlen)?;
        if g.n > 0 && npix > 0 && krows > 0 && og > 0 {
            let xc = self.contig(x, lx)?;
            let col = self.col_buffer(&g, d)?;
            let mut i0 = 0;
            while i0 < g.n {
                let n = g.chunk().min(g.n - i0);
                let colp = self.im2col(&g, xc.ptr(), d, i0, n, &col)?;
                for img in 0..n {
                    // Batched over groups: dW_g [og, krows] += dy_g [og, npix] @ col_g^T [npix, krows].
                    let dyp = dy.ptr() + ((i0 + img) * g.o * npix) as u64 * es;
                    let a = Operand { ptr: dyp, rs: npix, cs: 1, batch_stride: og * npix };
                    let cp = colp + (img * g.col_per_img()) as u64 * es;
                    let b = Operand { ptr: cp, rs: 1, cs: npix, batch_stride: krows * npix };
                    self.gemm(d, acc, (og, krows, npix, g.g), a, b, (dw.ptr(), krows, og * krows), 1.0)?;
                }
                i0 += n;
            }
        }
        if acc == d {
            Ok(dw)
        } else {
            self.cast_impl(&dw, &Layout::contiguous(ws.clone()), d)
        }
    }

    /// Max pooling: `(y, argmax)` with the flat `h*w` index of each window's winner.
    pub(crate) fn max_pool_impl(
        &self,
        x: &CudaStorage,
        l: &Layout,
        p: &Pool2dParams,
    ) -> Result<(CudaStorage, CudaStorage)> {
        check_float("max_pool2d", x.dtype())?;
        let geo = pool_geo(l.dims(), p, "max_pool2d")?;
        let n = (geo.planes * geo.oh * geo.ow) as usize;
        let (y, am) = (self.alloc(x.dtype(), n)?, self.alloc(DType::U32, n)?);
        let xc = self.contig(x, l)?;
        let args = [Arg::Ptr(y.ptr()), Arg::Ptr(am.ptr()), Arg::Ptr(xc.ptr()), Arg::by_value(geo)];
        self.launch(CP, &format!("max_pool_{}", dt(x.dtype())), Cfg::elems(n), &args)?;
        Ok((y, am))
    }

    /// Backward of max pooling: routes `dy` to the recorded winners.
    /// Derivation: docs/autograd.md#convolution-and-pooling ("max_pool2d").
    pub(crate) fn max_pool_bwd_impl(
        &self,
        dy: &CudaStorage,
        am: &CudaStorage,
        dys: &Shape,
        xs: &Shape,
    ) -> Result<CudaStorage> {
        const OP: &str = "max_pool2d_backward";
        check_float(OP, dy.dtype())?;
        if am.dtype() != DType::U32 {
            return Err(Error::UnsupportedDType { op: OP, dtype: am.dtype(), expected: "u32 argmax indices" });
        }
        let (d, acc) = (dy.dtype(), stat_dtype(dy.dtype()));
        let dd = dys.dims();
        let (planes, opix, ipix) = (dd[0] * dd[1], dd[2] * dd[3], xs.dims()[2] * xs.dims()[3]);
        let dx = self.zeros(acc, xs.elem_count())?;
        let args =
            [Arg::Ptr(dx.ptr()), Arg::Ptr(dy.ptr()), Arg::Ptr(am.ptr()), Arg::n(planes), Arg::n(opix), Arg::n(ipix)];
        self.launch(CP, &format!("max_pool_bwd_{}", dt(d)), Cfg::elems(planes * opix), &args)?;
        if acc == d {
            Ok(dx)
        } else {
            self.cast_impl(&dx, &Layout::contiguous(xs.clone()), d)
        }
    }

    /// Average pooling.
    pub(crate) fn avg_pool_impl(&self, x: &CudaStorage, l: &Layout, p: &Pool2dParams) -> Result<CudaStorage> {
        check_float("avg_pool2d", x.dtype())?;
        let geo = pool_geo(l.dims(), p, "avg_pool2d")?;
        let n = (geo.planes * geo.oh * geo.ow) as usize;
        let y = self.alloc(x.dtype(), n)?;
        let xc = self.contig(x, l)?;
        let args = [Arg::Ptr(y.ptr()), Arg::Ptr(xc.ptr()), Arg::by_value(geo)];
        self.launch(CP, &format!("avg_pool_{}", dt(x.dtype())), Cfg::elems(n), &args)?;
        Ok(y)
    }

    /// Backward of average pooling.
    /// Derivation: docs/autograd.md#convolution-and-pooling ("avg_pool2d").
    pub(crate) fn avg_pool_bwd_impl(&self, dy: &CudaStorage, xs: &Shape, p: &Pool2dParams) -> Result<CudaStorage> {
        check_float("avg_pool2d_backward", dy.dtype())?;
        let geo = pool_geo(xs.dims(), p, "avg_pool2d_backward")?;
        let dx = self.alloc(dy.dtype(), xs.elem_count())?;
        let args = [Arg::Ptr(dx.ptr()), Arg::Ptr(dy.ptr()), Arg::by_value(geo)];
        self.launch(CP, &format!("avg_pool_bwd_{}", dt(dy.dtype())), Cfg::elems(dx.len()), &args)?;
        Ok(dx)
    }

    /// Nearest-neighbour upsampling by integer factors.
    pub(crate) fn upsample_impl(&self, x: &CudaStorage, l: &Layout, (fh, fw): (usize, usize)) -> Result<CudaStorage> {
        check_float("upsample_nearest2d", x.dtype())?;
        let d = l.dims();
        let (planes, h, w) = (d[0] * d[1], d[2], d[3]);
        let y = self.alloc(x.dtype(), planes * h * fh * w * fw)?;
        let xc = self.contig(x, l)?;
        let args =
            [Arg::Ptr(y.ptr()), Arg::Ptr(xc.ptr()), Arg::n(planes), Arg::n(h), Arg::n(w), Arg::n(fh), Arg::n(fw)];
        self.launch(CP, &format!("upsample_{}", dt(x.dtype())), Cfg::elems(y.len()), &args)?;
        Ok(y)
    }

    /// Backward of nearest upsampling: each input cell sums its `fh x fw` block.
    /// Derivation: docs/autograd.md#convolution-and-pooling ("upsample_nearest2d").
    pub(crate) fn upsample_bwd_impl(
        &self,
        dy: &CudaStorage,
        dys: &Shape,
        (fh, fw): (usize, usize),
    ) -> Result<CudaStorage> {
        check_float("upsample_nearest2d_backward", dy.dtype())?;
        if fh == 0 || fw == 0 {
            return Err(Error::invalid("upsample_nearest2d_backward", "factors must be at least 1"));
        }
        let d = dys.dims();
        let (planes, h, w) = (d[0] * d[1], d[2] / fh, d[3] / fw);
        let dx = self.alloc(dy.dtype(), planes * h * w)?;
        let args =
            [Arg::Ptr(dx.ptr()), Arg::Ptr(dy.ptr()), Arg::n(planes), Arg::n(h), Arg::n(w), Arg::n(fh), Arg::n(fw)];
        self.launch(CP, &format!("upsample_bwd_{}", dt(dy.dtype())), Cfg::elems(dx.len()), &args)?;
        Ok(dx)
    }
}
