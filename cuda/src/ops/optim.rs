//! Fused elementwise chains: the AdamW update, the SwiGLU gate and a convolution's bias + SiLU
//! (`adamw_*`, `swiglu*`, `bias_silu_*` in `kernels/elementwise.cu`).

use ela_core::{AdamWStep, DType, Error, Result};

use super::elementwise::{aligned16, fast_cfg};
use super::{check_float, dt};

use crate::device::{Arg, Cfg, Cuda};
use crate::kernels::KernelFile::Elementwise as EW;
use crate::storage::CudaStorage;

impl Cuda {
    /// `Backend::adamw_update`: one launch per parameter.
    pub(crate) fn adamw_update_impl(
        &self,
        p: &CudaStorage,
        g: &CudaStorage,
        m: &CudaStorage,
        v: &CudaStorage,
        n: usize,
        s: &AdamWStep,
    ) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
        const OP: &str = "adamw_update";
        let d = p.dtype();
        let name = match d {
            DType::F32 => "adamw_f32",
            DType::F64 => "adamw_f64",
            _ => return Err(Error::UnsupportedDType { op: OP, dtype: d, expected: "f32 or f64" }),
        };
        for (what, x) in [("gradient", g), ("first moment", m), ("second moment", v), ("parameter", p)] {
            if x.dtype() != d || x.len() < n {
                return Err(Error::invalid(
                    OP,
                    format!("the {what} buffer is {:?} x {}, need {d:?} x {n}", x.dtype(), x.len()),
                ));
            }
        }
        let (po, mo, vo) = (self.alloc(d, n)?, self.alloc(d, n)?, self.alloc(d, n)?);
        let args = [
            Arg::Ptr(po.ptr()),
            Arg::Ptr(mo.ptr()),
            Arg::Ptr(vo.ptr()),
            Arg::Ptr(p.ptr()),
            Arg::Ptr(g.ptr()),
            Arg::Ptr(m.ptr()),
            Arg::Ptr(v.ptr()),
            Arg::n(n),
            Arg::F64(s.beta1),
            Arg::F64(s.beta2),
            Arg::F64(s.decay),
            Arg::F64(s.lr / s.bc1),
            Arg::F64(1.0 / s.bc2.sqrt()),
            Arg::F64(s.eps),
        ];
        self.launch(EW, name, Cfg::elems(n), &args)?;
        Ok((po, mo, vo))
    }

    /// `Backend::swiglu`.
    pub(crate) fn swiglu_impl(&self, a: &CudaStorage, b: &CudaStorage, n: usize) -> Result<CudaStorage> {
        check_float("swiglu", a.dtype())?;
        let out = self.alloc(a.dtype(), n)?;
        let vec = aligned16(&[out.ptr(), a.ptr(), b.ptr()]);
        let args = [Arg::Ptr(out.ptr()), Arg::Ptr(a.ptr()), Arg::Ptr(b.ptr()), Arg::n(n), Arg::I32(vec as i32)];
        self.launch(EW, &format!("swiglu_{}", dt(a.dtype())), fast_cfg(n, a.dtype(), vec), &args)?;
        Ok(out)
    }

    /// `Backend::swiglu_backward`.
    pub(crate) fn swiglu_backward_impl(
        &self,
        a: &CudaStorage,
        b: &CudaStorage,
        g: &CudaStorage,
        n: usize,
    ) -> Result<(CudaStorage, CudaStorage)> {
        check_float("swiglu_backward", a.dtype())?;
        let (da, db) = (self.alloc(a.dtype(), n)?, self.alloc(a.dtype(), n)?);
        let vec = aligned16(&[da.ptr(), db.ptr(), a.ptr(), b.ptr(), g.ptr()]);
        let args = [
            Arg::Ptr(da.ptr()),
            Arg::Ptr(db.ptr()),
            Arg::Ptr(a.ptr()),
            Arg::Ptr(b.ptr()),
            Arg::Ptr(g.ptr()),
            Arg::n(n),
            Arg::I32(vec as i32),
        ];
        self.launch(EW, &format!("swiglu_bwd_{}", dt(a.dtype())), fast_cfg(n, a.dtype(), vec), &args)?;
        Ok((da, db))
    }

    /// `Backend::swiglu_packed`: `y [rows, h]` from the halves of each row of `x [rows, 2h]`.
    pub(crate) fn swiglu_packed_impl(&self, x: &CudaStorage, rows: usize, h: usize) -> Result<CudaStorage> {
        check_float("swiglu_packed", x.dtype())?;
        let y = self.alloc(x.dtype(), rows * h)?;
        let vec = packed_vec(x.dtype(), h, &[y.ptr(), x.ptr()]);
        let args = [Arg::Ptr(y.ptr()), Arg::Ptr(x.ptr()), Arg::n(rows), Arg::n(h), Arg::I32(vec as i32)];
        self.launch(EW, &format!("swiglu_packed_{}", dt(x.dtype())), fast_cfg(rows * h, x.dtype(), vec), &args)?;
        Ok(y)
    }

    /// `Backend::swiglu_packed_backward`: `dx [rows, 2h]` (`[d gate | d up]` a row) from `x` and
    /// the upstream gradient `g [rows, h]`.
    pub(crate) fn swiglu_packed_backward_impl(
        &self,
        x: &CudaStorage,
        g: &CudaStorage,
        rows: usize,
        h: usize,
    ) -> Result<CudaStorage> {
        check_float("swiglu_packed_backward", x.dtype())?;
        let dx = self.alloc(x.dtype(), rows * 2 * h)?;
        let vec = packed_vec(x.dtype(), h, &[dx.ptr(), x.ptr(), g.ptr()]);
        let args =
            [Arg::Ptr(dx.ptr()), Arg::Ptr(x.ptr()), Arg::Ptr(g.ptr()), Arg::n(rows), Arg::n(h), Arg::I32(vec as i32)];
        let name = format!("swiglu_packed_bwd_{}", dt(x.dtype()));
        self.launch(EW, &name, fast_cfg(rows * h, x.dtype(), vec), &args)?;
        Ok(dx)
    }

    /// `Backend::bias_silu`: one pass, 16-byte vectors where a vector cannot straddle channels.
    pub(crate) fn bias_silu_impl(
        &self,
        x: &CudaStorage,
        bias: &CudaStorage,
        outer: usize,
        chans: usize,
        inner: usize,
    ) -> Result<CudaStorage> {
        const OP: &str = "bias_silu";
        check_float(OP, x.dtype())?;
        let n = outer * chans * inner;
        // The kernel's 32-bit grid-stride loop must not wrap (the fast elementwise kernels' bound).
        if n >= 1 << 31 {
            return Err(Error::invalid(OP, format!("{n} elements exceed the kernel's 31-bit index; split the batch")));
        }
        let out = self.alloc(x.dtype(), n)?;
        let lanes = 16 / x.dtype().size_in_bytes();
        let vec = inner.is_multiple_of(lanes) && aligned16(&[out.ptr(), x.ptr()]);
        let args = [
            Arg::Ptr(out.ptr()),
            Arg::Ptr(x.ptr()),
            Arg::Ptr(bias.ptr()),
            Arg::U32(n as u32),
            Arg::U32(inner as u32),
            Arg::U32(chans as u32),
            Arg::I32(vec as i32),
        ];
        self.launch(EW, &format!("bias_silu_{}", dt(x.dtype())), fast_cfg(n, x.dtype(), vec), &args)?;
        Ok(out)
    }
}

/// Whether the packed SwiGLU kernels may move 16-byte vectors: rows of whole vectors (then every
/// row of `x`, `2h` wide, starts on a vector too) and 16-byte aligned buffers.
fn packed_vec(dtype: DType, h: usize, ptrs: &[u64]) -> bool {
    h.is_multiple_of(16 / dtype.size_in_bytes()) && aligned16(ptrs)
}
