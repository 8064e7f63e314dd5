//! Non-causal fused ELA in the parallel form (`kernels/ela/noncausal.cu`), forward and backward,
//! for any built-in kernel with small heads: the state is one reduction over all tokens (a block
//! per sequence) and every output row is independent (a warp per token), where the scan of
//! `recurrent.rs` walks the tokens one after another. Without a mask this is the same sum, in another order.
//!
//! Used for non-causal calls without a carried state whose `F x Dv` fits the per-thread
//! accumulators (`F x Dv <= 4096`, `F <= 256`) and whose rows fit in shared memory; YOLO-LAT's
//! neck (4 heads of 16 over all cells) is the case it was written for. Other shapes keep the scan.

use ela_core::ela::{ElaDims, ElaKernel};
use ela_core::{DType, Result};

use crate::device::{Arg, Cfg, Cuda};
use crate::kernels::KernelFile::Ela as ELA;
use crate::ops::dt;
use crate::storage::CudaStorage;

/// Threads per block (8 warps): must match `NC_WARPS` and the accumulator count `NC_ACC` of the
/// .cu file (`F x Dv <= NC_ACC x THREADS`).
const THREADS: usize = 256;
const NC_ACC: usize = 16;
/// Tokens per block of the row kernels (4 per warp).
const TOKENS_PER_BLOCK: usize = 32;
/// Most staged rows per block of the reduction kernel.
const MAX_STAGED: usize = 64;
/// Dynamic shared memory available to a block without opting in to more.
const SMEM_LIMIT: usize = 48 * 1024;
/// Blocks per launch at most (grid-stride loops cover the rest).
const MAX_GRID: usize = 1 << 20;

/// Launch geometry of the parallel non-causal form for one shape.
#[derive(Clone, Copy, Debug)]
pub(super) struct Plan {
    f: usize,
    /// Rows staged per step of the reduction kernel, and its shared memory.
    staged: usize,
    smem_outer: u32,
    /// Shared memory of the row kernels.
    smem_rows: u32,
}

/// The plan for `dims` with `kernel` and state dtype `sd`, or `None` when the shape is too large
/// for this form (the caller runs the scan).
pub(super) fn plan(kernel: ElaKernel, dims: &ElaDims, sd: DType) -> Option<Plan> {
    let (d, dv, f) = (dims.d, dims.dv, kernel.feature_size(dims.d));
    if f == 0 || dv == 0 || f > THREADS || f * dv > NC_ACC * THREADS {
        return None;
    }
    let c = sd.size_in_bytes();
    let fixed = (f + THREADS) * c;
    let per_row = (f + dv + 1 + d + 1) * c;
    let staged = (SMEM_LIMIT.checked_sub(fixed)? / per_row).min(MAX_STAGED);
    let rows = (f * dv + 2 * f + (THREADS / 32) * (2 * f + d + dv)) * c;
    if staged == 0 || rows > SMEM_LIMIT {
        return None;
    }
    Some(Plan { f, staged, smem_outer: (fixed + staged * per_row) as u32, smem_rows: rows as u32 })
}

fn outer_cfg(n: usize) -> Cfg {
    Cfg { grid: n.min(MAX_GRID) as u32, grid_y: 1, block: THREADS as u32 }
}

fn rows_cfg(n: usize, t: usize) -> Cfg {
    Cfg { grid: (n * t.div_ceil(TOKENS_PER_BLOCK)).min(MAX_GRID) as u32, grid_y: 1, block: THREADS as u32 }
}

/// The state of each sequence: `S` [F x Dv], `z` [F] and (Hadamard Exp) the log-scales `m` [F].
struct State {
    s: CudaStorage,
    z: CudaStorage,
    m: Option<CudaStorage>,
}

impl State {
    fn m_ptr(&self) -> u64 {
        self.m.as_ref().map_or(0, |m| m.ptr())
    }
}

impl Cuda {
    /// `S = sum_j psi_j v_j^T`, `z = sum_j psi_j` (and `m`) for every sequence.
    fn ela_nc_state(
        &self,
        plan: &Plan,
        k: &CudaStorage,
        v: &CudaStorage,
        dims: &ElaDims,
        kernel: ElaKernel,
        sd: DType,
    ) -> Result<State> {
        let (n, f, dv) = (dims.sequences(), plan.f, dims.dv);
        let st = State {
            s: self.alloc(sd, n * f * dv)?,
            z: self.alloc(sd, n * f)?,
            m: kernel.has_units().then(|| self.alloc(sd, n * f)).transpose()?,
        };
        let args = [
            Arg::Ptr(st.s.ptr()),
            Arg::Ptr(st.z.ptr()),
            Arg::Ptr(st.m_ptr()),
            Arg::Ptr(k.ptr()),
            Arg::Ptr(v.ptr()),
            Arg::n(n),
            Arg::n(dims.t),
            Arg::I32(dims.d as i32),
            Arg::I32(dv as i32),
            Arg::I32(kernel.code()),
            Arg::I32(plan.staged as i32),
        ];
        self.launch_smem(ELA, &format!("ela_nc_state_{}", dt(k.dtype())), outer_cfg(n), plan.smem_outer, &args)?;
        Ok(st)
    }

    /// Non-causal forward of `n x T` rows (`q`, `k`, `v` already checked by the caller).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn ela_nc_forward(
        &self,
        plan: &Plan,
        q: &CudaStorage,
        k: &CudaStorage,
        v: &CudaStorage,
        dims: &ElaDims,
        kernel: ElaKernel,
        sd: DType,
    ) -> Result<CudaStorage> {
        let (n, t) = (dims.sequences(), dims.t);
        let y = self.alloc(q.dtype(), n * t * dims.dv)?;
        if n == 0 || t == 0 {
            return Ok(y);
        }
        let st = self.ela_nc_state(plan, k, v, dims, kernel, sd)?;
        let args = [
            Arg::Ptr(y.ptr()),
            Arg::Ptr(q.ptr()),
            Arg::Ptr(st.s.ptr()),
            Arg::Ptr(st.z.ptr()),
            Arg::Ptr(st.m_ptr()),
            Arg::n(n),
            Arg::n(t),
            Arg::I32(dims.d as i32),
            Arg::I32(dims.dv as i32),
            Arg::I32(kernel.code()),
            Arg::I32(TOKENS_PER_BLOCK as i32),
        ];
        self.launch_smem(ELA, &format!("ela_nc_query_{}", dt(q.dtype())), rows_cfg(n, t), plan.smem_rows, &args)?;
        Ok(y)
    }

    /// Non-causal backward: `(dq, dk, dv)` (arguments already checked by the caller).
    pub(super) fn ela_nc_backward(
        &self,
        plan: &Plan,
        [q, k, v, y, dy]: [&CudaStorage; 5],
        dims: &ElaDims,
        kernel: ElaKernel,
        sd: DType,
    ) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
        let (n, t, f, dv) = (dims.sequences(), dims.t, plan.f, dims.dv);
        let d = q.dtype();
        let (dq, dk, dvo) = (self.alloc(d, q.len())?, self.alloc(d, k.len())?, self.alloc(d, v.len())?);
        if n == 0 || t == 0 {
            return Ok((dq, dk, dvo));
        }
        let code = kernel.code();
        let st = self.ela_nc_state(plan, k, v, dims, kernel, sd)?;
        // Per row: phi, g = dy / den and c = g . y, kept for the reduction into U and w.
        let (p, g, c) = (self.alloc(sd, n * t * f)?, self.alloc(sd, n * t * dv)?, self.alloc(sd, n * t)?);
        let args = [
            Arg::Ptr(dq.ptr()),
            Arg::Ptr(p.ptr()),
            Arg::Ptr(g.ptr()),
            Arg::Ptr(c.ptr()),
            Arg::Ptr(q.ptr()),
            Arg::Ptr(y.ptr()),
            Arg::Ptr(dy.ptr()),
            Arg::Ptr(st.s.ptr()),
            Arg::Ptr(st.z.ptr()),
            Arg::Ptr(st.m_ptr()),
            Arg::n(n),
            Arg::n(t),
            Arg::I32(dims.d as i32),
            Arg::I32(dv as i32),
            Arg::I32(code),
            Arg::I32(TOKENS_PER_BLOCK as i32),
        ];
        self.launch_smem(ELA, &format!("ela_nc_query_bwd_{}", dt(d)), rows_cfg(n, t), plan.smem_rows, &args)?;
        // U = sum_i phi_i g_i^T, w = sum_i c_i phi_i.
        let (u, w) = (self.alloc(sd, n * f * dv)?, self.alloc(sd, n * f)?);
        let args = [
            Arg::Ptr(u.ptr()),
            Arg::Ptr(w.ptr()),
            Arg::Ptr(p.ptr()),
            Arg::Ptr(g.ptr()),
            Arg::Ptr(c.ptr()),
            Arg::n(n),
            Arg::n(t),
            Arg::I32(dims.d as i32),
            Arg::I32(dv as i32),
            Arg::I32(code),
            Arg::I32(plan.staged as i32),
        ];
        self.launch_smem(ELA, &format!("ela_nc_outer_{}", dt(d)), outer_cfg(n), plan.smem_outer, &args)?;
        let args = [
            Arg::Ptr(dk.ptr()),
            Arg::Ptr(dvo.ptr()),
            Arg::Ptr(k.ptr()),
            Arg::Ptr(v.ptr()),
            Arg::Ptr(u.ptr()),
            Arg::Ptr(w.ptr()),
            Arg::Ptr(st.m_ptr()),
            Arg::n(n),
            Arg::n(t),
            Arg::I32(dims.d as i32),
            Arg::I32(dv as i32),
            Arg::I32(code),
            Arg::I32(TOKENS_PER_BLOCK as i32),
        ];
        self.launch_smem(ELA, &format!("ela_nc_key_bwd_{}", dt(d)), rows_cfg(n, t), plan.smem_rows, &args)?;
        Ok((dq, dk, dvo))
    }
}
