//! Fused Exact Linear Attention: forward (causal with an optional carried state, non-causal),
//! backward and the recurrent step. Hadamard Exp with f32/f16/bf16 inputs and head sizes 64 or
//! 128 runs the chunked tensor-core kernels of `ops/ela_fast.rs`; non-causal calls with small
//! heads run the parallel form of `ops/ela_noncausal.rs`; every other call runs
//! `kernels/ela.cu`, where one block per (batch, head) sequence scans time in the recurrent
//! form (see the .cu file for the math and the numerics).
//!
//! Arguments are checked once, by `Tensor` (`ElaDims::from_shapes`, `ElaParams::validate`, the
//! state's sizes in `ElaState`); these functions trust them (debug builds assert the buffer
//! lengths). What is checked here is this device's own limit: the scan kernel's shared memory.

use ela_core::ela::{ElaDims, ElaKernel, ElaParams, ElaSaved, ElaStateBufs};
use ela_core::{DType, Error, Result};

use super::{dt, stat_dtype};
use super::{ela_fast, ela_noncausal};
use crate::device::{Arg, Cfg, Cuda};
use crate::kernels::KernelFile::Ela as ELA;
use crate::storage::CudaStorage;

/// Threads per sequence block.
const THREADS: u32 = 256;
/// Dynamic shared memory available to a block without opting in to more.
const SMEM_LIMIT: usize = 48 * 1024;

/// The dtype of q/k/v (one float dtype, lengths matching `dims`: checked by `Tensor`; asserted in
/// debug builds).
fn qkv_dtype(q: &CudaStorage, k: &CudaStorage, v: &CudaStorage, dims: &ElaDims) -> DType {
    let rows = dims.sequences() * dims.t;
    debug_assert!(q.dtype() == k.dtype() && q.dtype() == v.dtype() && q.dtype().is_float(), "ela: dtypes");
    debug_assert!(q.len() == rows * dims.d && k.len() == rows * dims.d, "ela: q, k for {dims:?}");
    debug_assert_eq!(v.len(), rows * dims.dv, "ela: v for {dims:?}");
    q.dtype()
}

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

/// The state buffers' device addresses. The state was made by `ElaState::new` for these sizes and
/// kernel, and `ElaState` checks what it is fed (debug builds assert it here).
fn state_ptrs(st: &ElaStateBufs<CudaStorage>, dims: &ElaDims, kernel: ElaKernel, sd: DType) -> (u64, u64, u64) {
    let (n, f, dv) = (dims.sequences(), kernel.feature_size(dims.d), dims.dv);
    let ok = |s: &CudaStorage, len: usize| s.dtype() == sd && s.len() == len;
    debug_assert!(ok(&st.s, n * f * dv) && ok(&st.z, n * f), "ela: state S, z for {dims:?}, {kernel}");
    debug_assert!(
        st.m.as_ref().map_or(!kernel.has_units(), |m| kernel.has_units() && ok(m, n * f)),
        "ela: state m for {dims:?}, {kernel}"
    );
    (st.s.ptr(), st.z.ptr(), st.m.as_ref().map_or(0, |m| m.ptr()))
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

    fn ela_launch_cfg(n: usize) -> Cfg {
        Cfg { grid: n.min(1 << 16) as u32, grid_y: 1, block: THREADS }
    }

    /// Fused ELA forward (see `Backend::ela_forward`).
    pub(crate) fn ela_forward_impl(
        &self,
        q: &CudaStorage,
        k: &CudaStorage,
        v: &CudaStorage,
        dims: &ElaDims,
        p: &ElaParams,
        state: Option<&mut ElaStateBufs<CudaStorage>>,
    ) -> Result<CudaStorage> {
        self.ela_forward_op("ela_forward", q, k, v, dims, p, state)
    }

    /// `Backend::ela_forward_saving`: the chunked path keeps its slots and per-row scales for the
    /// backward; other shapes save nothing.
    pub(crate) fn ela_forward_saving_impl(
        &self,
        q: &CudaStorage,
        k: &CudaStorage,
        v: &CudaStorage,
        dims: &ElaDims,
        p: &ElaParams,
    ) -> Result<(CudaStorage, Option<ElaSaved<CudaStorage>>)> {
        const OP: &str = "ela_forward";
        let d = qkv_dtype(q, k, v, dims);
        match ela_fast::variant(p.kernel, d, dims) {
            Some(fast) => {
                let (y, bufs) = self.ela_fast_forward_saving(&fast, q, k, v, dims, p.causal)?;
                Ok((y, bufs.map(|buffers| ElaSaved { buffers, dims: *dims, params: *p })))
            }
            None => Ok((self.ela_forward_op(OP, q, k, v, dims, p, None)?, None)),
        }
    }

    /// The forward under the name `op` (errors name the public op).
    #[allow(clippy::too_many_arguments)]
    fn ela_forward_op(
        &self,
        op: &'static str,
        q: &CudaStorage,
        k: &CudaStorage,
        v: &CudaStorage,
        dims: &ElaDims,
        p: &ElaParams,
        state: Option<&mut ElaStateBufs<CudaStorage>>,
    ) -> Result<CudaStorage> {
        let d = qkv_dtype(q, k, v, dims);
        debug_assert!(p.chunk >= 1 && (p.causal || state.is_none()), "{op}: {p:?} (ElaParams::validate)");
        let (n, f, sd) = (dims.sequences(), p.kernel.feature_size(dims.d), stat_dtype(d));
        if let Some(fast) = ela_fast::variant(p.kernel, d, dims) {
            let state = match state {
                Some(st) => {
                    let ptrs = state_ptrs(st, dims, p.kernel, sd);
                    Some((st, [ptrs.0, ptrs.1, ptrs.2]))
                }
                None => None,
            };
            return self.ela_fast_forward(&fast, q, k, v, dims, p.causal, state);
        }
        if !p.causal && state.is_none() {
            if let Some(plan) = ela_noncausal::plan(p.kernel, dims, sd) {
                return self.ela_nc_forward(&plan, q, k, v, dims, p.kernel, sd);
            }
        }
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
        self.launch_smem(ELA, &format!("ela_fwd_{}", dt(d)), Self::ela_launch_cfg(n), smem, &args)?;
        Ok(y)
    }

    /// Backward of the fused forward from an empty state (see `Backend::ela_backward`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn ela_backward_impl(
        &self,
        q: &CudaStorage,
        k: &CudaStorage,
        v: &CudaStorage,
        y: &CudaStorage,
        dy: &CudaStorage,
        dims: &ElaDims,
        p: &ElaParams,
        saved: Option<&ElaSaved<CudaStorage>>,
    ) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
        const OP: &str = "ela_backward";
        let d = qkv_dtype(q, k, v, dims);
        debug_assert!(y.dtype() == d && dy.dtype() == d, "{OP}: y, dy dtypes");
        debug_assert!(y.len() == v.len() && dy.len() == v.len(), "{OP}: y, dy for {dims:?}");
        let (n, t, f, sd) = (dims.sequences(), dims.t, p.kernel.feature_size(dims.d), stat_dtype(d));
        if let Some(fast) = ela_fast::variant(p.kernel, d, dims) {
            let saved = saved.filter(|s| s.dims == *dims && s.params == *p).map(|s| s.buffers.as_slice());
            return self.ela_fast_backward(&fast, q, k, v, y, dy, dims, p.causal, saved);
        }
        if !p.causal {
            if let Some(plan) = ela_noncausal::plan(p.kernel, dims, sd) {
                return self.ela_nc_backward(&plan, q, k, v, y, dy, dims, p.kernel, sd);
            }
        }
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
        self.launch_smem(ELA, &format!("ela_bwd_{}", dt(d)), Self::ela_launch_cfg(n), smem, &args)?;
        Ok((dq, dk, dvo))
    }

    /// One recurrent step: the causal forward of one token from the carried state.
    pub(crate) fn ela_step_impl(
        &self,
        q: &CudaStorage,
        k: &CudaStorage,
        v: &CudaStorage,
        dims: &ElaDims,
        kernel: ElaKernel,
        state: &mut ElaStateBufs<CudaStorage>,
    ) -> Result<CudaStorage> {
        const OP: &str = "ela_step";
        let one = ElaDims { t: 1, ..*dims };
        let d = qkv_dtype(q, k, v, &one);
        if let Some(fast) = ela_fast::variant(kernel, d, &one) {
            // All sequences in one launch, one block each (ela_chunk_bwd.cu, `ela_step_fast`).
            let (s, z, m) = state_ptrs(state, &one, kernel, stat_dtype(d));
            return self.ela_fast_step(&fast, q, k, v, one.sequences(), [s, z, m]);
        }
        self.ela_forward_op(OP, q, k, v, &one, &ElaParams { kernel, causal: true, chunk: 1 }, Some(state))
    }
}
