//! One decode token of fused ELA for every sequence (`Backend::ela_step`): the one-launch step
//! kernel of `kernels/ela/step.cu` where the chunked path has a variant for the inputs
//! (`chunk.rs`), else the per-token scan of `recurrent.rs` with `T = 1`.

use ela_core::ela::{ElaDims, ElaKernel, ElaParams, ElaStateBufs};
use ela_core::Result;

use super::chunk::{self, Variant, THREADS};
use super::{qkv_dtype, state_ptrs};
use crate::device::{Arg, Cfg, Cuda};
use crate::ops::stat_dtype;
use crate::storage::CudaStorage;

impl Cuda {
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
        if let Some(cv) = chunk::variant(self, kernel, d, &one, true) {
            let (s, z, m) = state_ptrs(state, &one, kernel, stat_dtype(d));
            return self.ela_chunk_step(&cv, q, k, v, one.sequences(), [s, z, m]);
        }
        self.ela_scan_forward(OP, [q, k, v], &one, &ElaParams { kernel, causal: true, chunk: 1 }, Some(state))
    }

    /// `ela_step_fast` for every sequence in one launch, one block each (state buffers already
    /// checked).
    fn ela_chunk_step(
        &self,
        cv: &Variant,
        q: &CudaStorage,
        k: &CudaStorage,
        v: &CudaStorage,
        n: usize,
        state: [u64; 3],
    ) -> Result<CudaStorage> {
        let y = self.alloc(q.dtype(), n * cv.dv)?;
        let args = [
            Arg::Ptr(y.ptr()),
            Arg::Ptr(q.ptr()),
            Arg::Ptr(k.ptr()),
            Arg::Ptr(v.ptr()),
            Arg::Ptr(state[0]),
            Arg::Ptr(state[1]),
            Arg::Ptr(state[2]),
        ];
        self.launch(cv.file, "ela_step_fast", Cfg { grid: n as u32, grid_y: 1, block: THREADS }, &args)?;
        Ok(y)
    }
}
