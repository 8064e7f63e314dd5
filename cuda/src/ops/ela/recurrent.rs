//! The per-token scan of fused ELA (`kernels/ela/recurrent.cu`), any built-in kernel, dtype and
//! head size: one block per (batch, head) sequence walks time in the recurrent form, forward
//! (causal with an optional carried state, or non-causal) and backward. The fallback of the
//! dispatch in `mod.rs` for every call the chunked (`chunk.rs`) and parallel non-causal
//! (`noncausal.rs`) paths do not take, and the decode step of those kernels (`step.rs`).

use ela_core::ela::{ElaDims, ElaKernel, ElaParams, ElaStateBufs};
use ela_core::{DType, Error, Result};

use super::state_ptrs;
use crate::device::{Arg, Cfg, Cuda};
use crate::kernels::KernelFile::Ela as ELA;
use crate::ops::{dt, stat_dtype};
use crate::storage::CudaStorage;

/// Threads per sequence block.
const THREADS: u32 = 256;
/// Dynamic shared memory available to a block without opting in to more.
const SMEM_LIMIT: usize = 48 * 1024;

/// Bytes of dynamic shared memory per block: q, k (d), v, y, g (dv), phi, psi, r, t (F), 32 for
/// reductions, in the compute type. This device's limit on the head sizes of the scan path (it
/// also keeps them far inside the kernels' `int` arguments).
fn smem_bytes(op: &'static str, dims: &ElaDims, f: usize, c: DType) -> Result<u32> {
    let bytes = (2 * dims.d + 3 * dims.dv + 4 * f + 32).saturating_mul(c.size_in_bytes());
    if bytes > SMEM_LIMIT {
        return Err(Error::invalid(
            op,
            format!(
                "head dimensions d = {}, dv = {} need {bytes} bytes of shared memory per block (limit {SMEM_LIMIT})",
                dims.d, dims.dv
            ),
        ));
    }
    Ok(bytes as u32)
}

fn launch_cfg(n: usize) -> Cfg {
    Cfg { grid: n.min(1 << 16) as u32, grid_y: 1, block: THREADS }
}

impl Cuda {
    /// A fresh state scratch `(S, z, m)` for `n` sequences: zeros, and -inf log-scales.
    fn ela_scratch(
        &self,
        n: usize,
        f: usize,
        dv: usize,
        kernel: ElaKernel,
        sd: DType,
    ) -> Result<ElaStateBufs<CudaStorage>> {
        Ok(ElaStateBufs {
            s: self.zeros(sd, n * f * dv)?,
            z: self.zeros(sd, n * f)?,
            m: kernel.has_units().then(|| self.full_impl(n * f, f64::NEG_INFINITY, sd)).transpose()?,
        })
    }

    /// The scan forward of `[q, k, v]` (`op` names the public op in errors), from `state` or an
    /// empty one.
    pub(super) fn ela_scan_forward(
        &self,
        op: &'static str,
        [q, k, v]: [&CudaStorage; 3],
        dims: &ElaDims,
        p: &ElaParams,
        state: Option<&mut ElaStateBufs<CudaStorage>>,
    ) -> Result<CudaStorage> {
        let (d, n, f) = (q.dtype(), dims.sequences(), p.kernel.feature_size(dims.d));
        let sd = stat_dtype(d);
        let y = self.alloc(d, n * dims.t * dims.dv)?;
        let scratch;
        let (s, z, m) = match state {
            Some(st) => state_ptrs(st, dims, p.kernel, sd),
            None => {
                scratch = self.ela_scratch(n, f, dims.dv, p.kernel, sd)?;
                (scratch.s.ptr(), scratch.z.ptr(), scratch.m.as_ref().map_or(0, |m| m.ptr()))
            }
        };
        if n == 0 || dims.t == 0 {
            return Ok(y);
        }
        let args = [
            Arg::Ptr(y.ptr()),
            Arg::Ptr(q.ptr()),
            Arg::Ptr(k.ptr()),
            Arg::Ptr(v.ptr()),
            Arg::Ptr(s),
            Arg::Ptr(z),
            Arg::Ptr(m),
            Arg::n(n),
            Arg::n(dims.t),
            Arg::I32(dims.d as i32),
            Arg::I32(dims.dv as i32),
            Arg::I32(p.kernel.code()),
            Arg::I32(p.causal as i32),
        ];
        let smem = smem_bytes(op, dims, f, sd)?;
        self.launch_smem(ELA, &format!("ela_fwd_{}", dt(d)), launch_cfg(n), smem, &args)?;
        Ok(y)
    }

    /// The scan backward of `[q, k, v, y, dy]` (forward scan for `dphi`, reverse scan for `U, w`)
    /// from an empty state.
    pub(super) fn ela_scan_backward(
        &self,
        [q, k, v, y, dy]: [&CudaStorage; 5],
        dims: &ElaDims,
        p: &ElaParams,
    ) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
        const OP: &str = "ela_backward";
        let (d, n, t, f) = (q.dtype(), dims.sequences(), dims.t, p.kernel.feature_size(dims.d));
        let sd = stat_dtype(d);
        let (dq, dk, dvo) = (self.alloc(d, q.len())?, self.alloc(d, k.len())?, self.alloc(d, v.len())?);
        if t == 0 || n == 0 {
            return Ok((dq, dk, dvo));
        }
        let st = self.ela_scratch(n, f, dims.dv, p.kernel, sd)?;
        let (u, w) = (self.zeros(sd, n * f * dims.dv)?, self.zeros(sd, n * f)?);
        let mh = if p.kernel.has_units() && p.causal { Some(self.alloc(sd, n * t * f)?) } else { None };
        let dn = self.alloc(sd, n * t)?;
        let args = [
            Arg::Ptr(dq.ptr()),
            Arg::Ptr(dk.ptr()),
            Arg::Ptr(dvo.ptr()),
            Arg::Ptr(q.ptr()),
            Arg::Ptr(k.ptr()),
            Arg::Ptr(v.ptr()),
            Arg::Ptr(y.ptr()),
            Arg::Ptr(dy.ptr()),
            Arg::Ptr(st.s.ptr()),
            Arg::Ptr(st.z.ptr()),
            Arg::Ptr(st.m.as_ref().map_or(0, |m| m.ptr())),
            Arg::Ptr(u.ptr()),
            Arg::Ptr(w.ptr()),
            Arg::Ptr(mh.as_ref().map_or(0, |m| m.ptr())),
            Arg::Ptr(dn.ptr()),
            Arg::n(n),
            Arg::n(t),
            Arg::I32(dims.d as i32),
            Arg::I32(dims.dv as i32),
            Arg::I32(p.kernel.code()),
            Arg::I32(p.causal as i32),
        ];
        let smem = smem_bytes(OP, dims, f, sd)?;
        self.launch_smem(ELA, &format!("ela_bwd_{}", dt(d)), launch_cfg(n), smem, &args)?;
        Ok((dq, dk, dvo))
    }
}
