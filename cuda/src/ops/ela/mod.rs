//! Fused Exact Linear Attention on CUDA: the dispatch of the fused ops (`Backend::ela_forward`,
//! `ela_forward_saving`, `ela_backward`, `ela_step`) to the algorithms, one file each, named like
//! their CPU counterparts (`core/src/cpu/ela/`) and kernel files (`cuda/kernels/ela/`):
//!
//! - `chunk.rs`: Hadamard Exp with f32/f16/bf16 inputs and head sizes 64 or 128 (256 with 16-bit
//!   inputs), the chunked tensor-core kernels (`chunk_fwd.cu`, `chunk_bwd.cu`); elu+1 with f32/bf16
//!   inputs at those sizes and no carried state too, as Hadamard Exp on log-features
//!   ([`ELU_TILES_DEFAULT`]), and Identity with f32 inputs (bf16 with [`with_signed_bf16`]) as
//!   Hadamard Exp without exps or units ([`IDENTITY_TILES_DEFAULT`]);
//! - `signed.rs`: sum-sq, sub-sq and the blueprint where Identity takes the tiles, as Identity
//!   plus rank-one extra terms per row (`chunk_ext.cu`; [`SIGNED_TILES_DEFAULT`]);
//! - `padded.rs`: Hadamard Exp with f32/bf16 inputs at the other head sizes up to 128 (bf16: 256),
//!   the same kernels on copies padded to the next compiled size with features and columns that
//!   contribute nothing;
//! - `noncausal.rs`: non-causal calls with small heads, the parallel form (`noncausal.cu`);
//! - `feature_chunk.rs`: the other kernels with f32/f16/bf16 inputs, the fused chunked form
//!   (`la_chunk.cu`: bf16 tensor cores for elu+1 with bf16 inputs, f32 3xTF32 products otherwise),
//!   where its tiles fit in shared memory;
//! - `gemm_chunk.rs`: the same kernels at larger head sizes, the chunked form on cuBLAS GEMMs
//!   (`gemm_chunk.cu` holds the small kernels around both);
//! - `recurrent.rs`: every other call (f64 inputs, Hadamard Exp heads wider than the compiled
//!   sizes or with f16 inputs outside them), the per-token scan (`recurrent.cu`; its header has the
//!   math and the numerics);
//! - `step.rs`: one decode token (`step.cu` for the chunked variants, else the scan).
//!
//! Arguments are checked once, by `Tensor` (`ElaDims::from_shapes`, `ElaParams::validate`, the
//! state's sizes in `FusedElaState`); these functions trust them (debug builds assert the buffer
//! lengths). What is checked here is this device's own limit: the scan kernel's shared memory.

mod chunk;
pub use chunk::with_scan_runs;
mod feature_chunk;
pub use feature_chunk::{with_la_rows, with_la_scan, with_signed_bf16};
mod gemm_chunk;
mod noncausal;
mod padded;
mod recurrent;
mod signed;
pub use signed::{with_signed_tiles, SIGNED_TILES_DEFAULT};
mod step;

use ela_core::ela::{ElaArg, ElaDims, ElaGrads, ElaKernel, ElaParams, ElaRows, ElaSaved, ElaStateBufs};
use ela_core::{DType, Result};

use super::stat_dtype;
use crate::device::Cuda;
use crate::storage::CudaStorage;

use super::with_override;

/// The ELA paths' debugging switches, read from the environment once per process (every ELA
/// call consults them, several times; reading the environment takes a lock).
pub(super) struct Switches {
    /// `ELA_CUDA_SCAN_ONLY`: every call takes the per-token scan.
    pub scan_only: bool,
    /// `ELA_CUDA_GEMM_CHUNK`: the feature-map kernels take their cuBLAS form.
    pub gemm_chunk: bool,
    /// `ELA_CUDA_PROFILE`: each chunked launch is timed alone and reported on stderr.
    pub profile: bool,
    /// `ELA_CUDA_SCAN_RUNS=K`: every split-able scan forced into K runs (as
    /// [`with_scan_runs`] does for one thread; that call takes precedence), for timing the split
    /// choices in a whole model. 0 or unset: chosen per call.
    pub scan_runs: usize,
    /// `ELA_CUDA_LA_SCAN=half|narrow`: the feature-map kernels' scan forced to `la_scan` (half
    /// the columns a block) or, with f32 operands, `la_scan_narrow` (16), for timing the choice;
    /// unset: the one that takes fewer waves.
    pub la_scan: Option<&'static str>,
    /// `ELA_CUDA_ELU_TILES=1|0`: elu+1 takes the Hadamard-Exp kernels on log-features where they
    /// apply, or the feature-map path (`feature_chunk.rs`) everywhere (as [`with_elu_tiles`] does
    /// for one thread), for timing the two; unset: [`ELU_TILES_DEFAULT`].
    pub elu_tiles: Option<bool>,
    /// `ELA_CUDA_ID_TILES=1|0`: the Identity kernel takes the Hadamard-Exp kernels without
    /// exps where they apply, or the feature-map path everywhere (as [`with_identity_tiles`]
    /// does for one thread); unset: [`IDENTITY_TILES_DEFAULT`].
    pub identity_tiles: Option<bool>,
    /// `ELA_CUDA_SIGNED_TILES=1|0`: sum-sq, sub-sq and the blueprint take the Identity tiles with
    /// extra terms where they apply (`signed.rs`), or the feature-map path everywhere (as
    /// [`with_signed_tiles`] does for one thread); unset: [`SIGNED_TILES_DEFAULT`].
    pub signed_tiles: Option<bool>,
    /// `ELA_CUDA_SIGNED_BF16`: the signed feature-map kernels with bf16 inputs take bf16
    /// operands (as [`feature_chunk::with_signed_bf16`] does for one thread, which takes
    /// precedence), an approximate fast path; unset: f32 operands.
    pub signed_bf16: bool,
}

pub(super) fn switches() -> &'static Switches {
    static SWITCHES: std::sync::OnceLock<Switches> = std::sync::OnceLock::new();
    SWITCHES.get_or_init(|| {
        let on = |name| std::env::var_os(name).is_some();
        Switches {
            scan_only: on("ELA_CUDA_SCAN_ONLY"),
            gemm_chunk: on("ELA_CUDA_GEMM_CHUNK"),
            signed_bf16: on("ELA_CUDA_SIGNED_BF16"),
            profile: on("ELA_CUDA_PROFILE"),
            scan_runs: match std::env::var("ELA_CUDA_SCAN_RUNS") {
                Err(_) => 0,
                Ok(v) => v.trim().parse().unwrap_or_else(|_| {
                    eprintln!("ela-cuda: ELA_CUDA_SCAN_RUNS={v:?} ignored: expected a count of runs");
                    0
                }),
            },
            elu_tiles: on_off("ELA_CUDA_ELU_TILES"),
            identity_tiles: on_off("ELA_CUDA_ID_TILES"),
            signed_tiles: on_off("ELA_CUDA_SIGNED_TILES"),
            la_scan: match std::env::var("ELA_CUDA_LA_SCAN").as_deref() {
                Err(_) => None,
                Ok("half") => Some("half"),
                Ok("narrow") => Some("narrow"),
                Ok(v) => {
                    eprintln!("ela-cuda: ELA_CUDA_LA_SCAN={v:?} ignored: expected half or narrow");
                    None
                }
            },
        }
    })
}

/// A switch set to `1` or `0` in the environment (`None`: unset, or anything else, which is
/// reported and ignored).
fn on_off(name: &str) -> Option<bool> {
    match std::env::var(name).as_deref() {
        Err(_) => None,
        Ok("1") => Some(true),
        Ok("0") => Some(false),
        Ok(v) => {
            eprintln!("ela-cuda: {name}={v:?} ignored: expected 1 or 0");
            None
        }
    }
}

/// Whether elu+1 takes the Hadamard-Exp kernels on log-features (`chunk.rs`, `ChunkMap::EluPlusOne`)
/// where they apply, unless `ELA_CUDA_ELU_TILES` or [`with_elu_tiles`] says otherwise: on, they
/// were 1.7-1.8x faster than the feature-map path in bf16 fwd+bwd (H100, B8 H16 T16k;
/// docs/benchmarks.md, "GPU ELA: elu+1 on the Hadamard-Exp kernels").
pub const ELU_TILES_DEFAULT: bool = true;

thread_local! {
    /// Set by [`with_elu_tiles`] on this thread.
    static ELU_TILES: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with every elu+1 call it issues on this thread on the Hadamard-Exp kernels on
/// log-features where they apply (`on`), or on the feature-map path (`la_chunk.cu`) everywhere:
/// for tests and benchmarks that check or time one of the two paths whatever the default.
pub fn with_elu_tiles<R>(on: bool, f: impl FnOnce() -> R) -> R {
    with_override(&ELU_TILES, Some(on), f)
}

/// Whether elu+1 may take the Hadamard-Exp kernels: [`with_elu_tiles`] on this thread, else
/// `ELA_CUDA_ELU_TILES`, else [`ELU_TILES_DEFAULT`].
fn elu_on_tiles() -> bool {
    ELU_TILES.with(|c| c.get()).or(switches().elu_tiles).unwrap_or(ELU_TILES_DEFAULT)
}

/// Whether the Identity kernel takes the Hadamard-Exp kernels without exps or units (`chunk.rs`,
/// `ChunkMap::Identity`) where they apply, unless `ELA_CUDA_ID_TILES` or [`with_identity_tiles`]
/// says otherwise. On: its GPU test and both sanitizers passed on an H100 (2026-12-07), and the
/// tiles took 0.92-0.97x Hadamard Exp's time where the feature-map path took 1.21-2.16x
/// (docs/benchmarks.md, "GPU ELA: Identity on the Hadamard-Exp kernels").
pub const IDENTITY_TILES_DEFAULT: bool = true;

thread_local! {
    /// Set by [`with_identity_tiles`] on this thread.
    static IDENTITY_TILES: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with every Identity call it issues on this thread on the Hadamard-Exp kernels
/// without exps where they apply (`on`), or on the feature-map path everywhere: for tests and
/// benchmarks that check or time one path whatever the default.
pub fn with_identity_tiles<R>(on: bool, f: impl FnOnce() -> R) -> R {
    with_override(&IDENTITY_TILES, Some(on), f)
}

/// Whether Identity may take the Hadamard-Exp kernels: [`with_identity_tiles`] on this thread,
/// else `ELA_CUDA_ID_TILES`, else [`IDENTITY_TILES_DEFAULT`].
fn identity_on_tiles() -> bool {
    IDENTITY_TILES.with(|c| c.get()).or(switches().identity_tiles).unwrap_or(IDENTITY_TILES_DEFAULT)
}

/// Rows per chunk of the tile kernels (`chunk_fwd.cu`, `chunk_bwd.cu`, `la_chunk.cu`) for
/// feature width `f` and value width `e` as compiled: 32 where 64-row tiles would not fit in
/// shared memory (f32 operands wider than 64; anything wider than 144, i.e. 256-wide heads),
/// else 64. This must stay tile.cuh's `ELA_C` rule: the launch geometry and the shared-memory
/// byte counts on this side are computed from it.
pub(crate) fn tile_chunk_rows(f32_operands: bool, f: usize, e: usize) -> usize {
    if (f32_operands && (f > 64 || e > 64)) || f > 144 || e > 144 {
        32
    } else {
        64
    }
}

/// The dtype of q/k/v (one float dtype, lengths matching `dims`: checked by `Tensor`; asserted in
/// debug builds).
fn qkv_dtype(q: &CudaStorage, k: &CudaStorage, v: &CudaStorage, dims: &ElaDims) -> DType {
    let rows = dims.sequences() * dims.t;
    debug_assert!(q.dtype() == k.dtype() && q.dtype() == v.dtype() && q.dtype().is_float(), "ela: dtypes");
    debug_assert!(q.len() == rows * dims.d && k.len() == rows * dims.d, "ela: q, k for {dims:?}");
    debug_assert_eq!(v.len(), rows * dims.dv, "ela: v for {dims:?}");
    q.dtype()
}

/// The error for saved forward buffers that do not fit the backward's call (`have`, `want`:
/// their lengths; `kind`: what they hold, for the message).
fn saved_mismatch(have: &[usize], want: &[usize], kind: String) -> ela_core::Error {
    ela_core::Error::Backend {
        backend: "cuda",
        op: "ela_backward",
        msg: format!(
            "saved forward buffers of {have:?} elements, expected {want:?} ({kind}): pass what ela_saving \
             returned for these inputs"
        ),
    }
}

/// The error of a strided call this device does not take (the tensor layer asks
/// `ela_rows_supported` first, so this is a caller's bug).
fn rows_unsupported(op: &'static str, dims: &ElaDims, p: &ElaParams) -> ela_core::Error {
    ela_core::Error::Backend {
        backend: "cuda",
        op,
        msg: format!("{dims:?} with {p:?} does not take the chunked path: check ela_rows_supported first"),
    }
}

/// The state buffers' device addresses. The state was made by `FusedElaState::new` for these sizes and
/// kernel, and `FusedElaState` checks what it is fed (debug builds assert it here).
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
    /// `Backend::ela_forward_saving`: the chunked paths keep their state slots and per-row
    /// scales (Hadamard Exp) or operands and denominators (feature maps) for the backward; other
    /// shapes save nothing.
    pub(crate) fn ela_forward_saving_impl(
        &self,
        [q, k, v]: [&CudaStorage; 3],
        dims: &ElaDims,
        p: &ElaParams,
    ) -> Result<(CudaStorage, Option<ElaSaved<CudaStorage>>)> {
        let d = qkv_dtype(q, k, v, dims);
        let keep = |bufs: Option<Vec<CudaStorage>>| bufs.map(|buffers| ElaSaved { buffers, dims: *dims, params: *p });
        if let Some(cv) = chunk::variant(self, p.kernel, d, dims, false) {
            let io = chunk::Io::packed(dims, [q, k, v], None);
            let (y, bufs) = self.ela_chunk_forward(&cv, &io, d, dims, p.causal, None, true)?;
            return Ok((y, keep(bufs)));
        }
        if let Some(pl) = signed::plan(self, p.kernel, d, dims, false) {
            let (y, bufs) = self.ela_signed_forward(&pl, [q, k, v], d, dims, p.causal, true)?;
            return Ok((y, keep(bufs)));
        }
        // Non-causal calls that the parallel form takes save nothing: their backward does not
        // use it. The order of the rest is `ela_backward_impl`'s, so the backward finds what its
        // path saved.
        if !p.causal && noncausal::plan(p.kernel, dims, stat_dtype(d)).is_some() {
            return Ok((self.ela_forward_impl(q, k, v, dims, p, None)?, None));
        }
        if let Some(pp) = padded::plan(self, p.kernel, d, dims) {
            let (y, bufs) = self.ela_padded_forward(&pp, [q, k, v], dims, p.causal, None, true)?;
            return Ok((y, keep(bufs)));
        }
        if let Some(pl) = feature_chunk::plan(self, p.kernel, d, dims) {
            let (y, bufs) = self.ela_fc_forward(&pl, [q, k, v], dims, p, None, true)?;
            return Ok((y, keep(bufs)));
        }
        Ok((self.ela_forward_impl(q, k, v, dims, p, None)?, None))
    }

    /// `Backend::ela_rows_supported`: the chunked Hadamard-Exp path reads strided rows.
    pub(crate) fn ela_rows_supported_impl(&self, dtype: DType, dims: &ElaDims, p: &ElaParams) -> bool {
        chunk::variant(self, p.kernel, dtype, dims, false).is_some()
    }

    /// `Backend::ela_forward_rows` (only for what [`Cuda::ela_rows_supported_impl`] accepts).
    pub(crate) fn ela_forward_rows_impl(
        &self,
        qkv: [&ElaArg<'_, CudaStorage>; 3],
        y_rows: ElaRows,
        dims: &ElaDims,
        p: &ElaParams,
        save: bool,
    ) -> Result<(CudaStorage, Option<ElaSaved<CudaStorage>>)> {
        let d = qkv[0].storage.dtype();
        let cv = chunk::variant(self, p.kernel, d, dims, false)
            .ok_or_else(|| rows_unsupported("ela_forward_rows", dims, p))?;
        let io = chunk::Io::of_args(dims, qkv, y_rows, None);
        let (y, bufs) = self.ela_chunk_forward(&cv, &io, d, dims, p.causal, None, save)?;
        Ok((y, bufs.map(|buffers| ElaSaved { buffers, dims: *dims, params: *p })))
    }

    /// `Backend::ela_backward_rows` (only for what [`Cuda::ela_rows_supported_impl`] accepts).
    pub(crate) fn ela_backward_rows_impl(
        &self,
        [q, k, v, y, dy]: [&ElaArg<'_, CudaStorage>; 5],
        dims: &ElaDims,
        p: &ElaParams,
        saved: Option<&ElaSaved<CudaStorage>>,
        shared: Option<usize>,
    ) -> Result<ElaGrads<CudaStorage>> {
        let d = q.storage.dtype();
        let cv = chunk::variant(self, p.kernel, d, dims, false)
            .ok_or_else(|| rows_unsupported("ela_backward_rows", dims, p))?;
        let saved = saved.filter(|s| s.dims == *dims && s.params == *p).map(|s| s.buffers.as_slice());
        let io = chunk::Io::of_args(dims, [q, k, v], y.rows, Some([y, dy]));
        let Some(len) = shared else {
            let (dq, dk, dv) = self.ela_chunk_backward(&cv, &io, d, dims, p.causal, saved, None)?;
            return Ok(ElaGrads::Separate(dq, dk, dv));
        };
        // One buffer, each gradient at its input's offset and strides.
        let buf = self.alloc(d, len)?;
        let at = |a: &ElaArg<'_, CudaStorage>| buf.ptr_at(a.rows.offset);
        let into = [at(q), at(k), at(v)];
        self.ela_chunk_backward(&cv, &io, d, dims, p.causal, saved, Some(into))?;
        Ok(ElaGrads::Shared(buf))
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
        let d = qkv_dtype(q, k, v, dims);
        debug_assert!(p.chunk >= 1 && (p.causal || state.is_none()), "ela_forward: {p:?} (ElaParams::validate)");
        let sd = stat_dtype(d);
        if let Some(cv) = chunk::variant(self, p.kernel, d, dims, state.is_some()) {
            let state = match state {
                Some(st) => {
                    let ptrs = state_ptrs(st, dims, p.kernel, sd);
                    Some((st, [ptrs.0, ptrs.1, ptrs.2]))
                }
                None => None,
            };
            let io = chunk::Io::packed(dims, [q, k, v], None);
            return Ok(self.ela_chunk_forward(&cv, &io, d, dims, p.causal, state, false)?.0);
        }
        if let Some(pl) = signed::plan(self, p.kernel, d, dims, state.is_some()) {
            return Ok(self.ela_signed_forward(&pl, [q, k, v], d, dims, p.causal, false)?.0);
        }
        if !p.causal && state.is_none() {
            if let Some(plan) = noncausal::plan(p.kernel, dims, sd) {
                return self.ela_nc_forward(&plan, q, k, v, dims, p.kernel, sd);
            }
        }
        if let Some(pp) = padded::plan(self, p.kernel, d, dims) {
            return Ok(self.ela_padded_forward(&pp, [q, k, v], dims, p.causal, state, false)?.0);
        }
        if let Some(pl) = feature_chunk::plan(self, p.kernel, d, dims) {
            return Ok(self.ela_fc_forward(&pl, [q, k, v], dims, p, state, false)?.0);
        }
        if gemm_chunk::applies(p.kernel, d) {
            return self.ela_gc_forward([q, k, v], dims, p, state);
        }
        self.ela_scan_forward("ela_forward", [q, k, v], dims, p, state)
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
        let sd = stat_dtype(d);
        if let Some(cv) = chunk::variant(self, p.kernel, d, dims, false) {
            let saved = saved.filter(|s| s.dims == *dims && s.params == *p).map(|s| s.buffers.as_slice());
            let io = chunk::Io::packed(dims, [q, k, v], Some([y, dy]));
            return self.ela_chunk_backward(&cv, &io, d, dims, p.causal, saved, None);
        }
        if let Some(pl) = signed::plan(self, p.kernel, d, dims, false) {
            let saved = saved.filter(|s| s.dims == *dims && s.params == *p).map(|s| s.buffers.as_slice());
            return self.ela_signed_backward(&pl, [q, k, v, y, dy], d, dims, p.causal, saved);
        }
        if !p.causal {
            if let Some(plan) = noncausal::plan(p.kernel, dims, sd) {
                return self.ela_nc_backward(&plan, [q, k, v, y, dy], dims, p.kernel, sd);
            }
        }
        if let Some(pp) = padded::plan(self, p.kernel, d, dims) {
            let saved = saved.filter(|s| s.dims == *dims && s.params == *p).map(|s| s.buffers.as_slice());
            return self.ela_padded_backward(&pp, [q, k, v, y, dy], dims, p.causal, saved);
        }
        if let Some(pl) = feature_chunk::plan(self, p.kernel, d, dims) {
            let saved = saved.filter(|s| s.dims == *dims && s.params == *p).map(|s| s.buffers.as_slice());
            return self.ela_fc_backward(&pl, [q, k, v, y, dy], dims, p, saved);
        }
        if gemm_chunk::applies(p.kernel, d) {
            return self.ela_gc_backward([q, k, v, y, dy], dims, p);
        }
        self.ela_scan_backward([q, k, v, y, dy], dims, p)
    }
}

#[cfg(test)]
mod tests {
    use super::{tile_chunk_rows, with_override};
    use crate::kernels::{ChunkMap, ElaDt, KernelFile};
    use ela_core::ela::ElaDims;
    use ela_core::{DType, ElaKernel};

    /// Identity takes the chunk kernels' Identity modules with f32 inputs (f32 operands), and with
    /// bf16 inputs (bf16 operands) only where the caller accepts bf16 operands for the signed
    /// kernels; never with f16 inputs, a carried state, or the tiles switched off.
    #[test]
    fn identity_takes_the_tiles_with_f32_operands_or_the_signed_opt_in() {
        use super::{with_identity_tiles, with_signed_bf16};
        let map = |dtype, d, dv, carried| {
            let dims = ElaDims { batch: 2, heads: 2, t: 300, d, dv };
            super::chunk::variant_for(ElaKernel::Identity, dtype, &dims, carried).map(|cv| cv.file)
        };
        let on_tiles = |f: Option<KernelFile>, operands: ElaDt| matches!(f, Some(KernelFile::ElaChunk { map: ChunkMap::Identity, dt, .. }) if dt == operands);
        with_identity_tiles(true, || {
            with_signed_bf16(false, || {
                for (d, dv) in [(64, 64), (128, 128), (64, 128)] {
                    assert!(on_tiles(map(DType::F32, d, dv, false), ElaDt::F32), "f32 {d}x{dv}");
                    assert!(map(DType::F32, d, dv, true).is_none(), "carried state");
                }
                assert!(map(DType::BF16, 64, 64, false).is_none(), "bf16 operands only with the opt-in");
                assert!(map(DType::F32, 256, 256, false).is_none(), "f32 tiles of 256 do not fit");
            });
            with_signed_bf16(true, || {
                assert!(on_tiles(map(DType::BF16, 256, 256, false), ElaDt::BF16), "bf16 with the opt-in");
                assert!(map(DType::F16, 64, 64, false).is_none(), "f16 inputs keep f32 operands");
            });
        });
        assert!(with_identity_tiles(false, || map(DType::F32, 64, 64, false)).is_none());
    }

    /// The kernels take their chunk length from tile.cuh's `ELA_C`, the launches from
    /// `tile_chunk_rows`: a mismatch runs 32-row kernels over a 64-row launch geometry. This pins
    /// the `#if` that picks 32 rows to the rule above; change both together.
    #[test]
    fn chunk_rows_mirror_tile_cuh() {
        let tile = include_str!("../../../kernels/ela/tile.cuh");
        let rule = "#if (ELA_DT == 0 && (ELA_D > 64 || ELA_DV > 64)) || ELA_D > 144 || ELA_DV > 144\n#define ELA_C 32";
        assert!(tile.contains(rule), "tile.cuh's ELA_C rule changed: update tile_chunk_rows and this test");
        for (f32_operands, f, e, c) in [
            (true, 64, 64, 64),
            (true, 64, 80, 32),
            (true, 128, 128, 32),
            (false, 128, 144, 64),
            (false, 144, 144, 64),
            (false, 256, 256, 32),
            (false, 64, 256, 32),
            (false, 160, 64, 32),
        ] {
            assert_eq!(tile_chunk_rows(f32_operands, f, e), c, "f32 operands {f32_operands}, {f} x {e}");
        }
    }

    thread_local! {
        static SETTING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    #[test]
    fn an_override_holds_inside_and_is_restored_on_return_and_unwind() {
        let inside = with_override(&SETTING, 3, || with_override(&SETTING, 5, || SETTING.with(|c| c.get())));
        assert_eq!(inside, 5);
        assert_eq!(SETTING.with(|c| c.get()), 0);
        let r = std::panic::catch_unwind(|| with_override(&SETTING, 7, || panic!("inside")));
        assert!(r.is_err());
        assert_eq!(SETTING.with(|c| c.get()), 0, "restored after a panic");
    }
}
