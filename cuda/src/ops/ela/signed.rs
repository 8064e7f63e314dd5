//! The squared-Euclidean kernels and the blueprint on the Identity tiles: Identity's chunk
//! kernels (`chunk.rs`, `ChunkMap::Identity`) plus rank-one extra terms per row
//! (`kernels/ela/chunk_ext.cu`; the derivation is in docs/ela.md, "The signed kernels on the
//! Identity tiles").
//!
//! With `s` the key scale (2 sum-sq, -2 sub-sq, 1 the blueprint), the kernel is `s` times
//! Identity's on `(q, k)` (the blueprint: on `(q, k')`, `k' = (|k|^2 + 1) k`) plus terms of rank
//! one in each row, whose sums over the visible keys are prefix sums: the forward adds them to
//! each row's numerator and denominator before the division (`ela_out`'s `ext`), so the row info
//! holds the denominator over `s` that Identity's backward divides by, and `ela_bwd` gives the
//! Identity part of every gradient; `ela_ext_grads` adds the rest. Taken where the Identity tiles
//! are and no state is carried: f32 inputs by default ([`SIGNED_TILES_DEFAULT`]), bf16 inputs
//! (with the signed kernels' bf16-operand opt-in) when asked by [`with_signed_tiles`] or
//! `ELA_CUDA_SIGNED_TILES=1`.

use ela_core::ela::{ElaDims, ElaKernel};
use ela_core::{DType, Result};

use super::chunk::{self, launch, Io, Variant};
use crate::device::{Arg, Cfg, Cuda};
use crate::kernels::{ChunkMap, ElaDt};
use crate::storage::CudaStorage;

/// Rows per segment of the extra terms' sums, and threads per block (`EXT_SEG`, `EXT_THREADS` in
/// chunk_ext.cu).
const EXT_SEG: usize = 64;
const EXT_THREADS: u32 = 256;

/// Whether sum-sq, sub-sq and the blueprint with f32 inputs take the Identity tiles with extra
/// terms where they apply, unless `ELA_CUDA_SIGNED_TILES` or [`with_signed_tiles`] says otherwise.
/// On: their GPU tests and both sanitizers passed on an H100 (2026-12-07), and at B8 H16 T16k
/// their fwd+bwd took 15.2-15.6 ms at D = 64 and 36.1-37.7 at D = 128 where the feature-map path
/// took 15.7-15.9 and 50.2-50.8, with smaller errors (docs/benchmarks.md, "GPU ELA: the signed
/// kernels on the Identity tiles"). bf16 inputs (with the bf16-operand opt-in) take them only when
/// asked: there the feature-map path was faster (7.3 against 7.4-7.7 ms at D = 64, 16.6-16.8
/// against 17.2-19.1 at D = 128).
pub const SIGNED_TILES_DEFAULT: bool = true;

thread_local! {
    /// Set by [`with_signed_tiles`] on this thread.
    static SIGNED_TILES: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with every sum-sq, sub-sq and blueprint call it issues on this thread on the Identity
/// tiles with extra terms where they apply (`on`), or on the feature-map path everywhere: for
/// tests and benchmarks that check or time one path whatever the default.
pub fn with_signed_tiles<R>(on: bool, f: impl FnOnce() -> R) -> R {
    crate::ops::with_override(&SIGNED_TILES, Some(on), f)
}

/// Whether inputs of type `dt` take the tiles: as [`with_signed_tiles`] on this thread, else
/// `ELA_CUDA_SIGNED_TILES`, else [`SIGNED_TILES_DEFAULT`] for f32 inputs.
fn signed_on_tiles(dt: ElaDt) -> bool {
    let asked = SIGNED_TILES.with(|c| c.get()).or(super::switches().signed_tiles);
    asked.unwrap_or(SIGNED_TILES_DEFAULT && dt == ElaDt::F32)
}

/// A call this path takes: the Identity variant, what the extra terms are (`kind` 0: `a_i =
/// |q_i|^2 / s`, `g_j = |k_j|^2 / s`; 1: the blueprint, `a = 0`, `g_j = |k_j|^2 + 1` and keys
/// `k'`) and the key scale `s`.
pub(super) struct Plan {
    cv: Variant,
    kind: i32,
    scale: i32,
}

/// The plan for these inputs, if this path takes them on `dev`.
pub(super) fn plan(dev: &Cuda, kernel: ElaKernel, dtype: DType, dims: &ElaDims, carried: bool) -> Option<Plan> {
    let pl = plan_for(kernel, dtype, dims, carried)?;
    Some(Plan { cv: chunk::fits(dev, pl.cv)?, ..pl })
}

/// [`plan`] before the device's shared-memory limit.
fn plan_for(kernel: ElaKernel, dtype: DType, dims: &ElaDims, carried: bool) -> Option<Plan> {
    let (kind, scale) = match kernel {
        ElaKernel::SumSqEuclid => (0, 2),
        ElaKernel::SubSqEuclid => (0, -2),
        ElaKernel::Blueprint => (1, 1),
        _ => return None,
    };
    let dt = ElaDt::of(dtype)?;
    let operands_ok = dt == ElaDt::F32 || (dt == ElaDt::BF16 && super::feature_chunk::signed_bf16());
    if carried || !operands_ok || super::switches().scan_only || !signed_on_tiles(dt) {
        return None;
    }
    Some(Plan { cv: chunk::tiles(ChunkMap::Identity, dt, dims)?, kind, scale })
}

impl Plan {
    fn segments(&self, t: usize) -> usize {
        t.div_ceil(EXT_SEG)
    }
    /// Floats per row of the segment sums (`SUM_LD`).
    fn sum_ld(&self) -> usize {
        3 * self.cv.dv + 4
    }
    /// Bytes of one staged `[EXT_SEG][dv + 1]` f32 tile (`ela_ext_rows` takes one, `ela_ext_grads` two).
    fn ext_tile(&self) -> u32 {
        (EXT_SEG * (self.cv.dv + 1) * 4) as u32
    }
}

impl Cuda {
    /// The blueprint's keys `k' = (|k|^2 + 1) k`, packed like `k`.
    fn ela_ext_keys(&self, pl: &Plan, io: &Io, dtype: DType, dims: &ElaDims) -> Result<CudaStorage> {
        let (n, t) = (dims.sequences(), dims.t);
        let kp = self.alloc(dtype, n * t * dims.d)?;
        let args = [Arg::Ptr(kp.ptr()), Arg::Ptr(io.k), Arg::by_value(io.rows), Arg::n(t)];
        let cfg = Cfg { grid: t.div_ceil(8) as u32, grid_y: n as u32, block: 256 };
        launch(self, &pl.cv, "ela_ext_keys", cfg, 0, &args)?;
        Ok(kp)
    }

    /// One launch of a kernel with a block per (segment, sequence), whose arguments are `ptrs`,
    /// then the rows' strides, `T`, the segment count, `kind`, `scale` and, where given, `causal`.
    #[allow(clippy::too_many_arguments)]
    fn ela_ext_launch(
        &self,
        pl: &Plan,
        name: &str,
        io: &Io,
        dims: &ElaDims,
        ptrs: &[u64],
        causal: Option<bool>,
        smem: u32,
    ) -> Result<()> {
        let (n, t, nseg) = (dims.sequences(), dims.t, pl.segments(dims.t));
        let mut args: Vec<Arg> = ptrs.iter().map(|&p| Arg::Ptr(p)).collect();
        args.extend([Arg::by_value(io.rows), Arg::n(t), Arg::I32(nseg as i32), Arg::I32(pl.kind), Arg::I32(pl.scale)]);
        args.extend(causal.map(|c| Arg::I32(c as i32)));
        let cfg = Cfg { grid: nseg as u32, grid_y: n as u32, block: EXT_THREADS };
        launch(self, &pl.cv, name, cfg, smem, &args)
    }

    /// The segment sums of the forward (`dy_rows` None) or the backward (`(dy, row info)`),
    /// scanned: `[sequence][segment + 1][sum_ld]` f32.
    fn ela_ext_sums(&self, pl: &Plan, io: &Io, dims: &ElaDims, dy_rows: Option<(u64, u64)>) -> Result<CudaStorage> {
        let (n, t) = (dims.sequences(), dims.t);
        let nseg = pl.segments(t);
        let sums = self.alloc(DType::F32, n * (nseg + 1) * pl.sum_ld())?;
        let (dy, rows) = dy_rows.unwrap_or((0, 0));
        let ptrs = [sums.ptr(), io.q, io.k, io.v, dy, rows];
        self.ela_ext_launch(pl, "ela_ext_sums", io, dims, &ptrs, None, 0)?;
        let bwd = dy_rows.is_some() as i32;
        let cols = if bwd == 1 { 3 * pl.cv.dv + 1 } else { 2 * pl.cv.dv + 1 };
        let args = [Arg::Ptr(sums.ptr()), Arg::I32(nseg as i32), Arg::I32(bwd)];
        let cfg = Cfg { grid: n as u32, grid_y: 1, block: cols.next_multiple_of(32) as u32 };
        launch(self, &pl.cv, "ela_ext_scan", cfg, 0, &args)?;
        Ok(sums)
    }

    /// Forward on the Identity tiles with the extra terms; with `save`, the buffers
    /// [`Cuda::ela_chunk_backward`] reuses (the row info holds the denominators over `s`).
    pub(super) fn ela_signed_forward(
        &self,
        pl: &Plan,
        [q, k, v]: [&CudaStorage; 3],
        dtype: DType,
        dims: &ElaDims,
        causal: bool,
        save: bool,
    ) -> Result<(CudaStorage, Option<Vec<CudaStorage>>)> {
        let (n, t) = (dims.sequences(), dims.t);
        let io = Io::packed(dims, [q, k, v], None);
        if n == 0 || t == 0 {
            return self.ela_chunk_forward(&pl.cv, &io, dtype, dims, causal, None, save);
        }
        let sums = self.ela_ext_sums(pl, &io, dims, None)?;
        let ext = self.alloc(DType::F32, n * t * (pl.cv.dv + 4))?;
        let ptrs = [ext.ptr(), sums.ptr(), io.q, io.k, io.v];
        self.ela_ext_launch(pl, "ela_ext_rows", &io, dims, &ptrs, Some(causal), pl.ext_tile())?;
        let kp = if pl.kind == 1 { Some(self.ela_ext_keys(pl, &io, dtype, dims)?) } else { None };
        let mut tio = Io::packed(dims, [q, kp.as_ref().unwrap_or(k), v], None);
        tio.ext = ext.ptr();
        self.ela_chunk_forward(&pl.cv, &tio, dtype, dims, causal, None, save)
    }

    /// Backward: Identity's on the tiles (from `saved`, or from a saving forward run here), then
    /// the extra terms' gradients added to it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn ela_signed_backward(
        &self,
        pl: &Plan,
        [q, k, v, y, dy]: [&CudaStorage; 5],
        dtype: DType,
        dims: &ElaDims,
        causal: bool,
        saved: Option<&[CudaStorage]>,
    ) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
        let (n, t) = (dims.sequences(), dims.t);
        let io = Io::packed(dims, [q, k, v], Some([y, dy]));
        if n == 0 || t == 0 {
            return self.ela_chunk_backward(&pl.cv, &io, dtype, dims, causal, None, None);
        }
        // What another path saved (the switches changed between the calls) is not reusable here.
        let fresh;
        let saved = match saved.filter(|s| s.len() == 4) {
            Some(s) => s,
            None => {
                fresh = self.ela_signed_forward(pl, [q, k, v], dtype, dims, causal, true)?.1.unwrap_or_default();
                &fresh[..]
            }
        };
        let kp = if pl.kind == 1 { Some(self.ela_ext_keys(pl, &io, dtype, dims)?) } else { None };
        let tio = Io::packed(dims, [q, kp.as_ref().unwrap_or(k), v], Some([y, dy]));
        let (dq, dk, dv) = self.ela_chunk_backward(&pl.cv, &tio, dtype, dims, causal, Some(saved), None)?;
        // The row info (u, den', c, flag) the backward completed.
        let Some(rows) = saved.get(3).map(|r| r.ptr()) else {
            return Err(super::saved_mismatch(&[saved.len()], &[4], "buffers".into()));
        };
        let sums = self.ela_ext_sums(pl, &io, dims, Some((io.dy, rows)))?;
        let ptrs = [dq.ptr(), dk.ptr(), dv.ptr(), sums.ptr(), io.q, io.k, io.v, io.dy, rows];
        self.ela_ext_launch(pl, "ela_ext_grads", &io, dims, &ptrs, Some(causal), 2 * pl.ext_tile())?;
        Ok((dq, dk, dv))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::KernelFile;

    fn dims(d: usize, dv: usize) -> ElaDims {
        ElaDims { batch: 2, heads: 3, t: 500, d, dv }
    }

    /// The three kernels take the Identity tiles where Identity would (f32 inputs; bf16 only with
    /// the bf16-operand opt-in; compiled head sizes; no carried state), each with its extra terms
    /// and key scale; the switch turns them off; no other kernel is taken.
    #[test]
    fn sum_sub_and_the_blueprint_take_the_identity_tiles_with_their_scales() {
        use crate::ops::ela::with_signed_bf16;
        let take = |k, dt, d, dv, carried| {
            with_signed_tiles(true, || plan_for(k, dt, &dims(d, dv), carried)).map(|p| (p.kind, p.scale, p.cv.file))
        };
        let id = |dt, d: u16, dv: u16| KernelFile::ElaChunk { map: ChunkMap::Identity, dt, d, dv };
        assert_eq!(take(ElaKernel::SumSqEuclid, DType::F32, 64, 64, false), Some((0, 2, id(ElaDt::F32, 64, 64))));
        assert_eq!(take(ElaKernel::SubSqEuclid, DType::F32, 128, 64, false), Some((0, -2, id(ElaDt::F32, 128, 64))));
        assert_eq!(take(ElaKernel::Blueprint, DType::F32, 64, 128, false), Some((1, 1, id(ElaDt::F32, 64, 128))));
        for k in [ElaKernel::SumSqEuclid, ElaKernel::SubSqEuclid, ElaKernel::Blueprint] {
            assert_eq!(take(k, DType::F32, 64, 64, true), None, "{k:?}: a carried state");
            assert_eq!(take(k, DType::F32, 96, 96, false), None, "{k:?}: not a compiled size");
            assert_eq!(take(k, DType::F32, 256, 256, false), None, "{k:?}: f32 tiles of 256 do not fit");
            assert_eq!(take(k, DType::F16, 64, 64, false), None, "{k:?}: f16");
            assert_eq!(with_signed_bf16(false, || take(k, DType::BF16, 64, 64, false)), None, "{k:?}: bf16, no opt-in");
            let bf = with_signed_bf16(true, || take(k, DType::BF16, 256, 256, false));
            assert_eq!(bf.map(|p| p.2), Some(id(ElaDt::BF16, 256, 256)), "{k:?}: bf16 with the opt-in");
            let off = with_signed_tiles(false, || plan_for(k, DType::F32, &dims(64, 64), false));
            assert!(off.is_none(), "{k:?}: switched off");
        }
        if std::env::var_os("ELA_CUDA_SIGNED_TILES").is_none() {
            // Unasked: f32 inputs take the tiles, bf16 inputs (even with the opt-in) do not.
            let sum = ElaKernel::SumSqEuclid;
            assert!(plan_for(sum, DType::F32, &dims(64, 64), false).is_some(), "f32 by default");
            let bf = with_signed_bf16(true, || plan_for(sum, DType::BF16, &dims(64, 64), false));
            assert!(bf.is_none(), "bf16 only when asked");
        }
        for k in [ElaKernel::HadamardExp, ElaKernel::EluPlusOne, ElaKernel::Identity] {
            assert!(take(k, DType::F32, 64, 64, false).is_none(), "{k:?} is not this path's");
        }
    }
}
