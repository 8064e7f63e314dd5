//! Reductions along one axis, cumulative sums and top-k (kernels in `kernels/reduce.cu`).

use ela_core::{DType, Error, Layout, ReduceOp, Result};

use super::{check_float, dt};
use crate::device::{Arg, Cfg, Cuda};
use crate::kernels::KernelFile::Reduce as RED;
use crate::storage::CudaStorage;

/// (outer, len, inner) of `axis` in a row-major shape.
pub(crate) fn split_axis(dims: &[usize], axis: usize) -> (usize, usize, usize) {
    (dims[..axis].iter().product(), dims[axis], dims[axis + 1..].iter().product())
}

/// Reduced axes at least this long get a block per output; shorter ones a thread per output.
const BLOCK_REDUCE_MIN_LEN: usize = 64;

/// Blocks a split reduction aims for: a few per multiprocessor of a large GPU.
const SPLIT_TARGET_BLOCKS: usize = 512;
/// Elements a split reduction's block reduces at least.
const SPLIT_MIN_SEG: usize = 4096;

/// Segments per output when few outputs reduce long axes (a whole-tensor sum): one block per
/// output would leave all but a few multiprocessors idle. 1 = no split.
fn split_parts(n_out: usize, len: usize) -> usize {
    if n_out == 0 || n_out >= SPLIT_TARGET_BLOCKS / 2 {
        return 1;
    }
    len.div_ceil(SPLIT_MIN_SEG).min(SPLIT_TARGET_BLOCKS.div_ceil(n_out)).min(u16::MAX as usize)
}

fn reduce_code(op: ReduceOp) -> i32 {
    match op {
        ReduceOp::Sum => 0,
        ReduceOp::Max => 1,
        ReduceOp::Min => 2,
        ReduceOp::ArgMax => 3,
        ReduceOp::ArgMin => 4,
        ReduceOp::LogSumExp => 5,
    }
}

impl Cuda {
    /// Reduce a float view along `axis` (ArgMax/ArgMin give `U32`).
    pub(crate) fn reduce_impl(&self, op: ReduceOp, src: &CudaStorage, l: &Layout, axis: usize) -> Result<CudaStorage> {
        check_float(op.name(), src.dtype())?;
        let (outer, len, inner) = split_axis(l.dims(), axis);
        if len == 0 && !matches!(op, ReduceOp::Sum | ReduceOp::LogSumExp) {
            return Err(Error::invalid(
                op.name(),
                format!("cannot reduce over axis {axis} of size 0 (shape {})", l.shape()),
            ));
        }
        let is_arg = matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin);
        let n_out = outer * inner;
        if len == 0 {
            // Empty sums are 0 and empty logsumexps -inf, as on the CPU.
            return self.full_impl(n_out, if op == ReduceOp::Sum { 0.0 } else { f64::NEG_INFINITY }, src.dtype());
        }
        let out = self.alloc(if is_arg { DType::U32 } else { src.dtype() }, n_out)?;
        let x = self.contig(src, l)?;
        let (vals, idx) = if is_arg { (0, out.ptr()) } else { (out.ptr(), 0) };
        let args = [
            Arg::Ptr(vals),
            Arg::Ptr(idx),
            Arg::Ptr(x.ptr()),
            Arg::n(outer),
            Arg::n(len),
            Arg::n(inner),
            Arg::I32(reduce_code(op)),
        ];
        let d = dt(src.dtype());
        let parts = split_parts(n_out, len);
        if parts > 1 {
            self.reduce_split(op, x.ptr(), src.dtype(), &out, n_out, len, inner, parts)?;
        } else if len >= BLOCK_REDUCE_MIN_LEN {
            let cfg = Cfg { grid: n_out.min(1 << 20) as u32, grid_y: 1, block: 256 };
            self.launch(RED, &format!("reduce_block_{d}"), cfg, &args)?;
        } else {
            self.launch(RED, &format!("reduce_thread_{d}"), Cfg::elems(n_out), &args)?;
        }
        Ok(out)
    }

    /// Few outputs over long axes: `parts` blocks per output write partials (f64 sums, exact
    /// picks), then one block per output combines them (`reduce_split*` in `kernels/reduce.cu`).
    #[allow(clippy::too_many_arguments)]
    fn reduce_split(
        &self,
        op: ReduceOp,
        x: u64,
        dtype: DType,
        out: &CudaStorage,
        n_out: usize,
        len: usize,
        inner: usize,
        parts: usize,
    ) -> Result<()> {
        let d = dt(dtype);
        let is_arg = matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin);
        let n_part = n_out * parts;
        let psum = self.alloc(DType::F64, n_part)?;
        let pval = self.alloc(DType::F64, n_part)?;
        let pidx = self.alloc(DType::U32, n_part)?;
        let shift = self.alloc(DType::F64, n_out)?;
        let (vals, idx) = if is_arg { (0, out.ptr()) } else { (out.ptr(), 0) };
        let seg = len.div_ceil(parts);
        let split = Cfg { grid: parts as u32, grid_y: n_out as u32, block: 256 };
        let finish = Cfg { grid: n_out as u32, grid_y: 1, block: 256 };
        let phases: &[i32] = if op == ReduceOp::LogSumExp { &[0, 1] } else { &[1] };
        for &phase in phases {
            let split_args = [
                Arg::Ptr(psum.ptr()),
                Arg::Ptr(pval.ptr()),
                Arg::Ptr(pidx.ptr()),
                Arg::Ptr(shift.ptr()),
                Arg::Ptr(x),
                Arg::n(len),
                Arg::n(inner),
                Arg::n(seg),
                Arg::I32(reduce_code(op)),
                Arg::I32(phase),
            ];
            self.launch(RED, &format!("reduce_split_{d}"), split, &split_args)?;
            let finish_args = [
                Arg::Ptr(vals),
                Arg::Ptr(idx),
                Arg::Ptr(shift.ptr()),
                Arg::Ptr(psum.ptr()),
                Arg::Ptr(pval.ptr()),
                Arg::Ptr(pidx.ptr()),
                Arg::I32(parts as i32),
                Arg::I32(reduce_code(op)),
                Arg::I32(phase),
            ];
            self.launch(RED, &format!("reduce_split_finish_{d}"), finish, &finish_args)?;
        }
        Ok(())
    }

    /// Cumulative sum along `axis`.
    pub(crate) fn cumsum_impl(
        &self,
        src: &CudaStorage,
        l: &Layout,
        axis: usize,
        exclusive: bool,
        reverse: bool,
    ) -> Result<CudaStorage> {
        check_float("cumsum", src.dtype())?;
        let (outer, len, inner) = split_axis(l.dims(), axis);
        let out = self.alloc(src.dtype(), l.elem_count())?;
        if len == 0 {
            return Ok(out);
        }
        let x = self.contig(src, l)?;
        let args = [
            Arg::Ptr(out.ptr()),
            Arg::Ptr(x.ptr()),
            Arg::n(outer),
            Arg::n(len),
            Arg::n(inner),
            Arg::I32(exclusive as i32),
            Arg::I32(reverse as i32),
        ];
        self.launch(RED, &format!("cumsum_{}", dt(src.dtype())), Cfg::elems(outer * inner), &args)?;
        Ok(out)
    }

    /// The `k` largest elements of each last-axis row (NaN first, ties to the lower index).
    pub(crate) fn topk_impl(&self, src: &CudaStorage, l: &Layout, k: usize) -> Result<(CudaStorage, CudaStorage)> {
        let n = l.dims().last().copied().unwrap_or(1);
        let rows = l.elem_count().checked_div(n).unwrap_or(0);
        if k > n {
            return Err(Error::invalid("topk", format!("k = {k} exceeds the row length {n} (shape {})", l.shape())));
        }
        let vals = self.alloc(src.dtype(), rows * k)?;
        let idx = self.alloc(DType::U32, rows * k)?;
        if rows * k == 0 {
            return Ok((vals, idx));
        }
        let x = self.contig(src, l)?;
        let args = [Arg::Ptr(vals.ptr()), Arg::Ptr(idx.ptr()), Arg::Ptr(x.ptr()), Arg::n(rows), Arg::n(n), Arg::n(k)];
        let cfg = Cfg::rows(rows, n).with_max_block(256);
        self.launch(RED, &format!("topk_{}", dt(src.dtype())), cfg, &args)?;
        Ok((vals, idx))
    }
}
