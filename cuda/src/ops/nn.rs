//! Fused last-axis kernels: softmax, RMS/layer norm and cross-entropy, forward and backward
//! (kernels in `kernels/softmax_norm.cu` and `kernels/cross_entropy.cu`).

use ela_core::{DType, Error, Layout, Result, Shape};

use super::{check_float, dt, stat_dtype};
use crate::device::{Arg, Cfg, Cuda};
use crate::kernels::KernelFile::{CrossEntropy as CE, SoftmaxNorm as SN};
use crate::storage::CudaStorage;

/// Blocks the column sums of weight gradients aim for: the rows are split into as many chunks as
/// it takes for the `[n / 256, chunks]` grid to fill the GPU (a norm weight of 512 columns over
/// 16k rows: 2 x 512 blocks of 32 rows: 28 us on an H200, where 2 x 64 blocks took 122 us).
const COLSUM_TARGET_BLOCKS: usize = 1024;

fn expect_dtype(op: &'static str, s: &CudaStorage, d: DType, what: &'static str) -> Result<()> {
    if s.dtype() == d {
        Ok(())
    } else {
        Err(Error::invalid(op, format!("{what} has dtype {:?}, expected {d:?}", s.dtype())))
    }
}

/// Rows at most this long take the warp-per-row RMS norm kernels (`RMS_WARP_MAX` in
/// softmax_norm.cu); longer ones a block per row.
const RMS_WARP_MAX: usize = 2048;
/// Rows per block of the warp-per-row kernels (256 threads).
const WARP_ROWS_PER_BLOCK: usize = 8;

/// Most 16-byte vectors per lane of a row in the RMS norm backward that also sums the weight's
/// gradient (`RMS_DW_MAXV` in softmax_norm.cu): rows up to 1024 16-bit or 512 f32 elements.
const RMS_DW_MAXV: usize = 4;

/// Whether `add_rms_norm` runs as one kernel (`add_rms_norm_warp`, the default) instead of the
/// add and the norm (`ELA_CUDA_ADD_RMS=0`, or [`with_fused_add_rms`]; the same bits either way).
fn add_rms_fused() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let env = || *ON.get_or_init(|| std::env::var("ELA_CUDA_ADD_RMS").as_deref() != Ok("0"));
    FUSED_ADD_RMS.with(|c| c.get()).unwrap_or_else(env)
}

thread_local! {
    /// Set by [`with_fused_add_rms`] on this thread (`None`: `ELA_CUDA_ADD_RMS`).
    static FUSED_ADD_RMS: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with this thread's `add_rms_norm` calls taking the one-kernel form (`on`) or the add
/// and the norm apart, whatever `ELA_CUDA_ADD_RMS` says. For tests that compare the two.
#[doc(hidden)]
pub fn with_fused_add_rms<R>(on: bool, f: impl FnOnce() -> R) -> R {
    super::with_override(&FUSED_ADD_RMS, Some(on), f)
}

/// The RMS norm backward that also sums the weight's gradient, for rows of `n` elements that are
/// whole 16-byte vectors, at most [`RMS_DW_MAXV`] a lane: (kernel, dynamic shared memory in
/// bytes). `rms_norm_bwd_dw{nv}` holds the row in registers, nv vectors a lane (x, dy and plus
/// read once, the weight once a warp, the next row's loads issued early). bf16 rows of four
/// vectors (the d1024 LM's) take `rms_norm_bwd_dw4_bf16`, which keeps the warps' column sums in
/// shared memory (n doubles a warp), as in registers beside the row they would spill; f16 rows of
/// four vectors, whose kernel would spill even so, keep `rms_norm_bwd_dw`, which reads the row
/// twice.
fn rms_dw_kernel(dtype: DType, n: usize) -> (String, u32) {
    let nv = n / (32 * vector_len(dtype));
    if nv < 4 || dtype.size_in_bytes() > 2 {
        (format!("rms_norm_bwd_dw{nv}_{}", dt(dtype)), 0)
    } else if dtype == DType::BF16 {
        (format!("rms_norm_bwd_dw4_{}", dt(dtype)), (WARP_ROWS_PER_BLOCK * n * 8) as u32)
    } else {
        (format!("rms_norm_bwd_dw_{}", dt(dtype)), 0)
    }
}

/// Elements of `dtype` in a 16-byte vector.
fn vector_len(dtype: DType) -> usize {
    16 / dtype.size_in_bytes()
}

/// The launch of a warp-per-row kernel over `rows` rows of `n` elements, and whether its 16-byte
/// vector path applies (`n` a whole number of vectors, every buffer in `ptrs` aligned; a null
/// optional buffer counts as aligned). `None`: rows too long or empty, take the block kernel.
fn warp_rows(rows: usize, n: usize, dtype: DType, ptrs: &[u64]) -> Option<(Cfg, bool)> {
    if n == 0 || n > RMS_WARP_MAX {
        return None;
    }
    let vec = n.is_multiple_of(16 / dtype.size_in_bytes()) && super::elementwise::aligned16(ptrs);
    let grid = rows.div_ceil(WARP_ROWS_PER_BLOCK).min(1 << 20) as u32;
    Some((Cfg { grid, grid_y: 1, block: (32 * WARP_ROWS_PER_BLOCK) as u32 }, vec))
}

impl Cuda {
    /// softmax / log_softmax along the last axis of a view.
    pub(crate) fn softmax_impl(&self, src: &CudaStorage, l: &Layout, log: bool) -> Result<CudaStorage> {
        check_float("softmax", src.dtype())?;
        let n = l.dims().last().copied().unwrap_or(1);
        let rows = l.elem_count().checked_div(n).unwrap_or(0);
        let out = self.alloc(src.dtype(), l.elem_count())?;
        let x = self.contig(src, l)?;
        let args = [Arg::Ptr(out.ptr()), Arg::Ptr(x.ptr()), Arg::n(rows), Arg::n(n), Arg::I32(log as i32)];
        self.launch(SN, &format!("softmax_{}", dt(src.dtype())), Cfg::rows(rows, n), &args)?;
        Ok(out)
    }

    /// Backward of softmax / log_softmax from contiguous `y` and `dy`.
    /// Derivation: docs/autograd.md#fused-ops ("softmax", "log_softmax").
    pub(crate) fn softmax_bwd_impl(
        &self,
        y: &CudaStorage,
        dy: &CudaStorage,
        shape: &Shape,
        log: bool,
    ) -> Result<CudaStorage> {
        const OP: &str = "softmax_backward";
        check_float(OP, y.dtype())?;
        expect_dtype(OP, dy, y.dtype(), "the gradient")?;
        let n = shape.dims().last().copied().unwrap_or(1);
        let rows = shape.elem_count().checked_div(n).unwrap_or(0);
        let out = self.alloc(y.dtype(), shape.elem_count())?;
        let args =
            [Arg::Ptr(out.ptr()), Arg::Ptr(y.ptr()), Arg::Ptr(dy.ptr()), Arg::n(rows), Arg::n(n), Arg::I32(log as i32)];
        self.launch(SN, &format!("softmax_bwd_{}", dt(y.dtype())), Cfg::rows(rows, n), &args)?;
        Ok(out)
    }

    /// A norm parameter in the input's dtype (cast when it differs), or a null pointer.
    fn param_as(&self, p: Option<&CudaStorage>, d: DType, n: usize) -> Result<(u64, Option<CudaStorage>)> {
        match p {
            None => Ok((0, None)),
            Some(p) if p.dtype() == d => Ok((p.ptr(), None)),
            Some(p) => {
                let c = self.cast_impl(p, &Layout::contiguous(n), d)?;
                Ok((c.ptr(), Some(c)))
            }
        }
    }

    /// RMS norm of contiguous `[rows, n]`: `(y, rstd)`.
    pub(crate) fn rms_norm_impl(
        &self,
        x: &CudaStorage,
        w: Option<&CudaStorage>,
        rows: usize,
        n: usize,
        eps: f64,
    ) -> Result<(CudaStorage, CudaStorage)> {
        check_float("rms_norm", x.dtype())?;
        let y = self.alloc(x.dtype(), rows * n)?;
        let rstd = self.alloc(stat_dtype(x.dtype()), rows)?;
        let (wp, _wc) = self.param_as(w, x.dtype(), n)?;
        let args = [
            Arg::Ptr(y.ptr()),
            Arg::Ptr(rstd.ptr()),
            Arg::Ptr(x.ptr()),
            Arg::Ptr(wp),
            Arg::n(rows),
            Arg::n(n),
            Arg::F64(eps),
        ];
        match warp_rows(rows, n, x.dtype(), &[y.ptr(), x.ptr(), wp]) {
            Some((cfg, vec)) => {
                let args = [&args[..], &[Arg::I32(vec as i32)]].concat();
                self.launch(SN, &format!("rms_norm_warp_{}", dt(x.dtype())), cfg, &args)?
            }
            None => self.launch(SN, &format!("rms_norm_{}", dt(x.dtype())), Cfg::rows(rows, n), &args)?,
        }
        Ok((y, rstd))
    }

    /// `h = a + b` and the RMS norm of `h` for contiguous `[rows, n]` buffers of one dtype:
    /// `(h, y, rstd)`, in one pass when the rows take the warp-per-row kernels and
    /// [`add_rms_fused`] (bit for bit the add and the norm: `add_rms_warp_impl` in
    /// softmax_norm.cu), else as the two kernels.
    pub(crate) fn add_rms_norm_impl(
        &self,
        a: &CudaStorage,
        b: &CudaStorage,
        w: Option<&CudaStorage>,
        rows: usize,
        n: usize,
        eps: f64,
    ) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
        const OP: &str = "add_rms_norm";
        check_float(OP, a.dtype())?;
        expect_dtype(OP, b, a.dtype(), "the second summand")?;
        let d = a.dtype();
        let apart = || {
            let l = Layout::contiguous(rows * n);
            let h = self.binary_impl(ela_core::BinaryOp::Add, a, &l, b, &l)?;
            let (y, rstd) = self.rms_norm_impl(&h, w, rows, n, eps)?;
            Ok((h, y, rstd))
        };
        if !add_rms_fused() || n > RMS_WARP_MAX {
            return apart();
        }
        let h = self.alloc(d, rows * n)?;
        let y = self.alloc(d, rows * n)?;
        let rstd = self.alloc(stat_dtype(d), rows)?;
        let (wp, _wc) = self.param_as(w, d, n)?;
        let Some((cfg, vec)) = warp_rows(rows, n, d, &[h.ptr(), y.ptr(), a.ptr(), b.ptr(), wp]) else {
            return apart();
        };
        let args = [
            Arg::Ptr(h.ptr()),
            Arg::Ptr(y.ptr()),
            Arg::Ptr(rstd.ptr()),
            Arg::Ptr(a.ptr()),
            Arg::Ptr(b.ptr()),
            Arg::Ptr(wp),
            Arg::n(rows),
            Arg::n(n),
            Arg::F64(eps),
            Arg::I32(vec as i32),
        ];
        self.launch(SN, &format!("add_rms_norm_warp_{}", dt(d)), cfg, &args)?;
        Ok((h, y, rstd))
    }

    /// Sums over rows of `[rows, n]` per-element terms (see `colsum` in softmax_norm.cu), stored
    /// in `out_dtype`.
    #[allow(clippy::too_many_arguments)]
    fn colsum(
        &self,
        x: &CudaStorage,
        dy: &CudaStorage,
        mean: u64,
        rstd: u64,
        rows: usize,
        n: usize,
        mode: i32,
        out_dtype: DType,
    ) -> Result<CudaStorage> {
        let out = self.alloc(out_dtype, n)?;
        if n == 0 {
            return Ok(out);
        }
        let grid_x = n.div_ceil(256).min(1 << 16);
        let chunks = COLSUM_TARGET_BLOCKS.div_ceil(grid_x).clamp(1, rows.max(1)).min(u16::MAX as usize);
        let partial = self.scratch(chunks * n * 8)?;
        let cfg = Cfg { grid: grid_x as u32, grid_y: chunks as u32, block: 256 };
        let args = [
            Arg::Ptr(partial.ptr()),
            Arg::Ptr(x.ptr()),
            Arg::Ptr(dy.ptr()),
            Arg::Ptr(mean),
            Arg::Ptr(rstd),
            Arg::n(rows),
            Arg::n(n),
            Arg::I32(mode),
        ];
        self.launch(SN, &format!("colsum_{}", dt(x.dtype())), cfg, &args)?;
        let args = [Arg::Ptr(out.ptr()), Arg::Ptr(partial.ptr()), Arg::n(chunks), Arg::n(n)];
        let finish = Cfg { grid: n.div_ceil(32) as u32, grid_y: 1, block: 256 };
        self.launch(SN, &format!("colsum_finish_{}", dt(out_dtype)), finish, &args)?;
        Ok(out)
    }

    /// Backward of RMS norm: `(dx, dweight)`, with `plus` (another gradient of `x`) added to
    /// `dx` inside the kernel when given.
    /// Derivation: docs/autograd.md#fused-ops ("RMS norm").
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rms_norm_bwd_impl(
        &self,
        x: &CudaStorage,
        w: Option<&CudaStorage>,
        rstd: &CudaStorage,
        dy: &CudaStorage,
        plus: Option<&CudaStorage>,
        rows: usize,
        n: usize,
    ) -> Result<(CudaStorage, Option<CudaStorage>)> {
        const OP: &str = "rms_norm_backward";
        check_float(OP, x.dtype())?;
        expect_dtype(OP, dy, x.dtype(), "the gradient")?;
        expect_dtype(OP, rstd, stat_dtype(x.dtype()), "rstd")?;
        if let Some(p) = plus {
            expect_dtype(OP, p, x.dtype(), "plus (another gradient of x)")?;
            if p.len() < rows * n {
                return Err(Error::invalid(OP, format!("plus holds {} elements, the rows need {}", p.len(), rows * n)));
            }
        }
        let pp = plus.map_or(0, |p| p.ptr());
        let dx = self.alloc(x.dtype(), rows * n)?;
        let (wp, _wc) = self.param_as(w, x.dtype(), n)?;
        let args = [
            Arg::Ptr(dx.ptr()),
            Arg::Ptr(x.ptr()),
            Arg::Ptr(wp),
            Arg::Ptr(rstd.ptr()),
            Arg::Ptr(dy.ptr()),
            Arg::Ptr(pp),
            Arg::n(rows),
            Arg::n(n),
        ];
        let warp = warp_rows(rows, n, x.dtype(), &[dx.ptr(), x.ptr(), wp, dy.ptr(), pp]);
        if let (Some(w), Some((_, true))) = (w, warp) {
            if rows > 0 && n.is_multiple_of(32 * vector_len(x.dtype())) && n <= RMS_DW_MAXV * 32 * vector_len(x.dtype())
            {
                // One pass for dx and the weight's column sums.
                let blocks = rows.div_ceil(WARP_ROWS_PER_BLOCK).min(2 * self.sm_count() as usize);
                let partial = self.scratch(blocks * n * 8)?;
                let cfg = Cfg { grid: blocks as u32, grid_y: 1, block: (32 * WARP_ROWS_PER_BLOCK) as u32 };
                let mut dw_args = args.to_vec();
                dw_args.insert(1, Arg::Ptr(partial.ptr()));
                let (kernel, smem) = rms_dw_kernel(x.dtype(), n);
                self.launch_smem(SN, &kernel, cfg, smem, &dw_args)?;
                let dw = self.alloc(w.dtype(), n)?;
                let args = [Arg::Ptr(dw.ptr()), Arg::Ptr(partial.ptr()), Arg::n(blocks), Arg::n(n)];
                let finish = Cfg { grid: n.div_ceil(32) as u32, grid_y: 1, block: 256 };
                self.launch(SN, &format!("colsum_finish_{}", dt(w.dtype())), finish, &args)?;
                return Ok((dx, Some(dw)));
            }
        }
        match warp {
            Some((cfg, vec)) => {
                let args = [&args[..], &[Arg::I32(vec as i32)]].concat();
                self.launch(SN, &format!("rms_norm_bwd_warp_{}", dt(x.dtype())), cfg, &args)?
            }
            None => self.launch(SN, &format!("rms_norm_bwd_{}", dt(x.dtype())), Cfg::rows(rows, n), &args)?,
        }
        let dw = w.map(|w| self.colsum(x, dy, 0, rstd.ptr(), rows, n, 0, w.dtype())).transpose()?;
        Ok((dx, dw))
    }

    /// Layer norm of contiguous `[rows, n]`: `(y, mean, rstd)`.
    pub(crate) fn layer_norm_impl(
        &self,
        x: &CudaStorage,
        w: Option<&CudaStorage>,
        b: Option<&CudaStorage>,
        rows: usize,
        n: usize,
        eps: f64,
    ) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
        check_float("layer_norm", x.dtype())?;
        let y = self.alloc(x.dtype(), rows * n)?;
        let mean = self.alloc(stat_dtype(x.dtype()), rows)?;
        let rstd = self.alloc(stat_dtype(x.dtype()), rows)?;
        let (wp, _wc) = self.param_as(w, x.dtype(), n)?;
        let (bp, _bc) = self.param_as(b, x.dtype(), n)?;
        let args = [
            Arg::Ptr(y.ptr()),
            Arg::Ptr(mean.ptr()),
            Arg::Ptr(rstd.ptr()),
            Arg::Ptr(x.ptr()),
            Arg::Ptr(wp),
            Arg::Ptr(bp),
            Arg::n(rows),
            Arg::n(n),
            Arg::F64(eps),
        ];
        self.launch(SN, &format!("layer_norm_{}", dt(x.dtype())), Cfg::rows(rows, n), &args)?;
        Ok((y, mean, rstd))
    }

    /// Backward of layer norm: `(dx, dweight, dbias)`; the parameter gradients exist when a
    /// weight was given (as on the CPU).
    /// Derivation: docs/autograd.md#fused-ops ("Layer norm").
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    pub(crate) fn layer_norm_bwd_impl(
        &self,
        x: &CudaStorage,
        w: Option<&CudaStorage>,
        mean: &CudaStorage,
        rstd: &CudaStorage,
        dy: &CudaStorage,
        rows: usize,
        n: usize,
    ) -> Result<(CudaStorage, Option<CudaStorage>, Option<CudaStorage>)> {
        const OP: &str = "layer_norm_backward";
        check_float(OP, x.dtype())?;
        expect_dtype(OP, dy, x.dtype(), "the gradient")?;
        expect_dtype(OP, mean, stat_dtype(x.dtype()), "mean")?;
        expect_dtype(OP, rstd, stat_dtype(x.dtype()), "rstd")?;
        let dx = self.alloc(x.dtype(), rows * n)?;
        let (wp, _wc) = self.param_as(w, x.dtype(), n)?;
        let args = [
            Arg::Ptr(dx.ptr()),
            Arg::Ptr(x.ptr()),
            Arg::Ptr(wp),
            Arg::Ptr(mean.ptr()),
            Arg::Ptr(rstd.ptr()),
            Arg::Ptr(dy.ptr()),
            Arg::n(rows),
            Arg::n(n),
        ];
        self.launch(SN, &format!("layer_norm_bwd_{}", dt(x.dtype())), Cfg::rows(rows, n), &args)?;
        let (mut dw, mut db) = (None, None);
        if let Some(w) = w {
            dw = Some(self.colsum(x, dy, mean.ptr(), rstd.ptr(), rows, n, 1, w.dtype())?);
            db = Some(self.colsum(x, dy, mean.ptr(), rstd.ptr(), rows, n, 2, w.dtype())?);
        }
        Ok((dx, dw, db))
    }

    /// Fused cross-entropy: `(loss[rows], lse[rows])` in the statistics dtype. An out-of-range
    /// target (not `ignore`) is an [`Error::Index`] naming the first such row's target.
    pub(crate) fn cross_entropy_impl(
        &self,
        logits: &CudaStorage,
        targets: &CudaStorage,
        rows: usize,
        classes: usize,
        ignore: Option<u32>,
    ) -> Result<(CudaStorage, CudaStorage)> {
        const OP: &str = "cross_entropy";
        check_float(OP, logits.dtype())?;
        if targets.dtype() != DType::U32 {
            return Err(Error::UnsupportedDType { op: OP, dtype: targets.dtype(), expected: "u32 class indices" });
        }
        let sd = stat_dtype(logits.dtype());
        let (loss, lse) = (self.alloc(sd, rows)?, self.alloc(sd, rows)?);
        if rows == 0 {
            return Ok((loss, lse));
        }
        let bad = self.scratch(4)?;
        self.memset_byte(bad.ptr(), 0xff, 4)?;
        let args = [
            Arg::Ptr(loss.ptr()),
            Arg::Ptr(lse.ptr()),
            Arg::Ptr(bad.ptr()),
            Arg::Ptr(logits.ptr()),
            Arg::Ptr(targets.ptr()),
            Arg::n(rows),
            Arg::n(classes),
            Arg::I32(ignore.is_some() as i32),
            Arg::U32(ignore.unwrap_or(0)),
        ];
        self.launch(CE, &format!("ce_fwd_{}", dt(logits.dtype())), Cfg::rows(rows, classes), &args)?;
        if self.capturing() {
            // Nothing can be read back while a graph is recorded: the kernel skips an
            // out-of-range target (its row's loss is NaN), and whoever feeds the graph checks
            // the targets it writes (ela train --graph does).
            return Ok((loss, lse));
        }
        let mut row = [0u32];
        self.download(bad.ptr(), &mut row)?;
        if row[0] != u32::MAX {
            let mut t = [0u32];
            self.download(targets.ptr_at(row[0] as usize), &mut t)?;
            let shape = Shape::from(vec![rows, classes]);
            return Err(Error::Index { op: OP, index: t[0] as usize, size: classes, axis: 1, shape });
        }
        Ok((loss, lse))
    }

    /// Backward of the fused cross-entropy: `dloss * (softmax - onehot)` in the logits' dtype.
    /// Derivation: docs/autograd.md#fused-ops ("Cross-entropy").
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn cross_entropy_bwd_impl(
        &self,
        logits: &CudaStorage,
        targets: &CudaStorage,
        lse: &CudaStorage,
        dloss: &CudaStorage,
        rows: usize,
        classes: usize,
        ignore: Option<u32>,
    ) -> Result<CudaStorage> {
        const OP: &str = "cross_entropy_backward";
        check_float(OP, logits.dtype())?;
        if targets.dtype() != DType::U32 {
            return Err(Error::UnsupportedDType { op: OP, dtype: targets.dtype(), expected: "u32 class indices" });
        }
        let sd = stat_dtype(logits.dtype());
        expect_dtype(OP, lse, sd, "lse")?;
        expect_dtype(OP, dloss, sd, "dloss")?;
        let dx = self.alloc(logits.dtype(), rows * classes)?;
        let args = [
            Arg::Ptr(dx.ptr()),
            Arg::Ptr(logits.ptr()),
            Arg::Ptr(targets.ptr()),
            Arg::Ptr(lse.ptr()),
            Arg::Ptr(dloss.ptr()),
            Arg::n(rows),
            Arg::n(classes),
            Arg::I32(ignore.is_some() as i32),
            Arg::U32(ignore.unwrap_or(0)),
        ];
        self.launch(CE, &format!("ce_bwd_{}", dt(logits.dtype())), Cfg::rows(rows, classes), &args)?;
        Ok(dx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which weight-gradient kernel each row width takes (the names must match the instances
    /// compiled in softmax_norm.cu: `RMS_DWR_3(f16)`, `RMS_DWR_4` for bf16, f32 and f64).
    #[test]
    fn rms_weight_gradient_kernels_by_row_width() {
        assert_eq!(rms_dw_kernel(DType::BF16, 512), ("rms_norm_bwd_dw2_bf16".into(), 0));
        assert_eq!(rms_dw_kernel(DType::F16, 768), ("rms_norm_bwd_dw3_f16".into(), 0));
        assert_eq!(rms_dw_kernel(DType::F32, 512), ("rms_norm_bwd_dw4_f32".into(), 0));
        assert_eq!(rms_dw_kernel(DType::F64, 256), ("rms_norm_bwd_dw4_f64".into(), 0));
        // 16-bit rows of four vectors: bf16 with the column sums in shared memory, f16 the
        // two-read kernel.
        assert_eq!(rms_dw_kernel(DType::BF16, 1024), ("rms_norm_bwd_dw4_bf16".into(), 8 * 1024 * 8));
        assert_eq!(rms_dw_kernel(DType::F16, 1024), ("rms_norm_bwd_dw_f16".into(), 0));
    }
}
