//! The squared-Euclidean kernels and the blueprint on the Identity tiles: Identity's chunk
//! kernels (`chunk.rs`, `ChunkMap::Identity`) plus rank-one extra terms per row
//! (`kernels/ela/chunk_ext.cu`; the derivation is in docs/ela.md, "The signed kernels on the
//! Identity tiles").
//!
//! With `s` the key scale (2 sum-sq, -2 sub-sq, 1 the blueprint), the kernel is `s` times
//! Identity's on `(q, k)` (the blueprint: on `(q, k')`, `k' = (|k|^2 + 1) k`) plus terms of rank
//! one, `a_i + g_j`: `ela_out` and `ela_bwd` add them to their chunk's block of entries and take
//! what the other chunks add from chunk sums, which the chunk scans make as they walk the rows
//! (the blueprint's forward: `ela_bp_sums`, before its scan) and `ela_ext_scan` prefixes, so the
//! row info holds the denominator over `s` that Identity's backward divides by. Taken where the
//! Identity tiles are and no state is carried (f32 inputs; bf16 inputs with the signed kernels'
//! bf16-operand opt-in), unless [`with_signed_tiles`] or `ELA_CUDA_SIGNED_TILES=0` turns it off
//! ([`SIGNED_TILES_DEFAULT`]).

use ela_core::ela::{ElaDims, ElaKernel};
use ela_core::{DType, Result};

use super::chunk::{self, launch, ExtArgs, ExtScanArgs, Grads, Io, Variant};
use crate::device::{Arg, Cfg, Cuda};
use crate::kernels::{ChunkMap, ElaDt};
use crate::storage::CudaStorage;

/// Threads per block of `ela_bp_sums` (`EXT_THREADS` in chunk_ext.cu; a block per chunk).
const EXT_THREADS: u32 = 256;

/// Whether sum-sq, sub-sq and the blueprint take the Identity tiles with extra terms where they
/// apply (f32 inputs; bf16 inputs with the signed kernels' bf16-operand opt-in), unless
/// `ELA_CUDA_SIGNED_TILES` or [`with_signed_tiles`] says otherwise. On: their GPU tests and both
/// sanitizers passed (H100, 2026-12-08), and at B8 H16 T16k their fwd+bwd took 1.17-1.21x
/// Hadamard Exp's time in f32 and 1.25-1.33x in bf16 on an H100, where the feature-map path took
/// 1.44-1.92x and 1.90-2.26x (H200), with errors of the same order (docs/benchmarks.md, "GPU ELA:
/// the signed kernels on the Identity tiles", all rounds).
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

/// Whether calls take the tiles (where their operands allow): as [`with_signed_tiles`] on this
/// thread, else `ELA_CUDA_SIGNED_TILES`, else [`SIGNED_TILES_DEFAULT`].
fn signed_on_tiles() -> bool {
    SIGNED_TILES.with(|c| c.get()).or(super::switches().signed_tiles).unwrap_or(SIGNED_TILES_DEFAULT)
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
    if carried || !operands_ok || super::switches().scan_only || !signed_on_tiles() {
        return None;
    }
    Some(Plan { cv: chunk::tiles(ChunkMap::Identity, dt, dims)?, kind, scale })
}

impl Plan {
    /// The chunk sums' segments: the chunk kernels' chunks (`EXT_SEG` is `ELA_C`).
    fn segments(&self, t: usize) -> usize {
        t.div_ceil(self.cv.c)
    }
    /// Floats per row of the chunk sums (`EXT_SUM_LD`).
    fn sum_ld(&self) -> usize {
        3 * self.cv.dv + 4
    }
    /// Floats per plane of the chunk sums: one row per slot of every sequence.
    fn plane(&self, dims: &ElaDims) -> usize {
        dims.sequences() * (self.segments(dims.t) + 1) * self.sum_ld()
    }
    /// The planes the scans write: one per feature block of a scan (`ExtScan` in chunk_fwd.cu).
    fn parts(&self) -> usize {
        chunk::scan_feature_blocks(&self.cv)
    }
    /// The kernel-side description of the extra terms: the scanned sums `ela_out` or `ela_bwd`
    /// reads, the forward's (`pre`, backward only) and the rows' `(a, g)` (0: from the rows).
    fn ext(&self, sums: &CudaStorage, pre: u64, ag: u64) -> ExtArgs {
        ExtArgs { sums: sums.ptr(), pre, ag, kind: self.kind, inv_s: 1.0 / self.scale as f32 }
    }
    /// What a scan makes of the chunk sums into `sums` (weighing rows by their norms: sum/sub-sq).
    fn ext_scan(&self, sums: &CudaStorage, dims: &ElaDims) -> ExtScanArgs {
        ExtScanArgs {
            sums: sums.ptr(),
            plane: self.plane(dims) as i64,
            inv_s: 1.0 / self.scale as f32,
            norms: (self.kind == 0) as i32,
        }
    }
}

impl Cuda {
    /// `ela_ext_scan`: the chunk sums of `n` sequences of `nch` chunks, summed over the `parts`
    /// planes a scan wrote, to prefix sums (forward: `V1`, `V2`, `G`) or suffix sums (`bwd`: `RG`,
    /// `RaG`, `Rc`) in the first plane, with each sequence's total in slot `nch`.
    pub(super) fn ela_ext_prefix(
        &self,
        cv: &Variant,
        ext: ExtScanArgs,
        n: usize,
        nch: usize,
        bwd: bool,
        parts: usize,
    ) -> Result<()> {
        let args = [
            Arg::Ptr(ext.sums),
            Arg::I32(nch as i32),
            Arg::I32(bwd as i32),
            Arg::I64(ext.plane),
            Arg::I32(parts as i32),
        ];
        let cfg = Cfg { grid: n as u32, grid_y: 1, block: (2 * cv.dv + 1).next_multiple_of(32) as u32 };
        launch(self, cv, "ela_ext_scan", cfg, 0, &args)
    }

    /// The blueprint's forward chunk sums, scanned, into `sums`, with each row's `(0, g)` into
    /// `ag` and its keys `k' = (|k|^2 + 1) k` into `kp`, packed like `k`: its scan reads `k'`.
    fn ela_bp_sums(
        &self,
        pl: &Plan,
        io: &Io,
        dims: &ElaDims,
        ag: &CudaStorage,
        kp: &CudaStorage,
        sums: &CudaStorage,
    ) -> Result<()> {
        let (n, t) = (dims.sequences(), dims.t);
        let nseg = pl.segments(t);
        let mut args: Vec<Arg> = [sums.ptr(), ag.ptr(), kp.ptr(), io.k, io.v].map(Arg::Ptr).to_vec();
        args.extend([Arg::by_value(io.rows), Arg::n(t), Arg::I32(nseg as i32)]);
        let cfg = Cfg { grid: nseg as u32, grid_y: n as u32, block: EXT_THREADS };
        launch(self, &pl.cv, "ela_bp_sums", cfg, 0, &args)?;
        self.ela_ext_prefix(&pl.cv, pl.ext_scan(sums, dims), n, nseg, false, 1)
    }

    /// The chunk sums' buffer for these dims: `parts` planes.
    fn ela_ext_buffer(&self, pl: &Plan, dims: &ElaDims, parts: usize) -> Result<CudaStorage> {
        self.alloc(DType::F32, parts * pl.plane(dims))
    }

    /// Forward on the Identity tiles with the extra terms; with `save`, the buffers
    /// [`Cuda::ela_signed_backward`] reuses: Identity's four (whose row info holds the
    /// denominators over `s`), the scanned forward sums and, for the blueprint, each row's
    /// `(a, g)` and the keys `k'`.
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
        let (y, saved) = if pl.kind == 1 {
            // The blueprint's scan reads the keys k' its sums write: sums first, then Identity.
            let ag = self.alloc(DType::F32, n * t * 2)?;
            let kp = self.alloc(dtype, n * t * dims.d)?;
            let sums = self.ela_ext_buffer(pl, dims, 1)?;
            self.ela_bp_sums(pl, &io, dims, &ag, &kp, &sums)?;
            let mut tio = Io::packed(dims, [q, &kp, v], None);
            tio.ext = pl.ext(&sums, 0, ag.ptr());
            let (y, saved) = self.ela_chunk_forward(&pl.cv, &tio, dtype, dims, causal, None, save)?;
            (
                y,
                saved.map(|mut b| {
                    b.extend([sums, ag, kp]);
                    b
                }),
            )
        } else {
            // The forward scan makes the chunk sums as it walks k and v (ExtScan); `ela_out`
            // takes each row's a and g from the q and k rows it reads.
            let sums = self.ela_ext_buffer(pl, dims, pl.parts())?;
            let mut tio = Io::packed(dims, [q, k, v], None);
            tio.ext = pl.ext(&sums, 0, 0);
            tio.ext_scan = pl.ext_scan(&sums, dims);
            let (y, saved) = self.ela_chunk_forward(&pl.cv, &tio, dtype, dims, causal, None, save)?;
            (
                y,
                saved.map(|mut b| {
                    b.push(sums);
                    b
                }),
            )
        };
        Ok((y, saved))
    }

    /// Backward: Identity's gradient kernel on the tiles with the extra terms, from `saved` or
    /// from a saving forward run here.
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
        let count = if pl.kind == 1 { 7 } else { 5 };
        let saved = match saved.filter(|s| s.len() == count) {
            Some(s) => s,
            None => {
                fresh = self.ela_signed_forward(pl, [q, k, v], dtype, dims, causal, true)?.1.unwrap_or_default();
                &fresh[..]
            }
        };
        let (tiles, rest) = saved.split_at(4);
        let fwd_len = pl.parts() * pl.plane(dims);
        let bp_len = pl.plane(dims);
        let (pre, ag, kp) = match rest {
            [pre] if pl.kind == 0 && pre.len() == fwd_len => (pre, 0, k),
            [pre, ag, kp] if pre.len() == bp_len && ag.len() == n * t * 2 && kp.len() == n * t * dims.d => {
                (pre, ag.ptr(), kp)
            }
            _ => {
                let have: Vec<usize> = saved.iter().map(|b| b.len()).collect();
                let want = if pl.kind == 1 { vec![bp_len, n * t * 2, n * t * dims.d] } else { vec![fwd_len] };
                let what = "the forward's chunk sums, then the blueprint's (a, g) rows and k', last";
                return Err(super::saved_mismatch(&have, &want, what.into()));
            }
        };
        // The reverse scan makes the backward chunk sums as it walks q and dy (ExtScan).
        let sums = self.ela_ext_buffer(pl, dims, pl.parts())?;
        let mut tio = Io::packed(dims, [q, kp, v], Some([y, dy]));
        tio.ext_scan = pl.ext_scan(&sums, dims);
        let [s, z, m, rows] = self.ela_saved_rows(&pl.cv, &tio, (n, t), tiles)?;
        let uw = self.ela_reverse_scan(&pl.cv, &tio, m, rows, (n, t), causal)?;
        tio.ext = pl.ext(&sums, pre.ptr(), ag);
        let (dq, dk, dv) = (
            self.alloc(dtype, n * t * dims.d)?,
            self.alloc(dtype, n * t * dims.d)?,
            self.alloc(dtype, n * t * dims.dv)?,
        );
        let out = Grads { ptrs: [dq.ptr(), dk.ptr(), dv.ptr()], like_inputs: false };
        // (The blueprint's gradient kernel turns dk' into dk itself: its dk epilogue.)
        self.ela_bwd(&pl.cv, &tio, [s, z, m], rows, &uw, &out, (n, t), causal)?;
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
            // Unasked: f32 inputs take the tiles, and bf16 inputs with the bf16-operand opt-in.
            let sum = ElaKernel::SumSqEuclid;
            assert!(plan_for(sum, DType::F32, &dims(64, 64), false).is_some(), "f32 by default");
            let bf = with_signed_bf16(true, || plan_for(sum, DType::BF16, &dims(64, 64), false));
            assert!(bf.is_some(), "bf16 with the opt-in by default");
        }
        for k in [ElaKernel::HadamardExp, ElaKernel::EluPlusOne, ElaKernel::Identity] {
            assert!(take(k, DType::F32, 64, 64, false).is_none(), "{k:?} is not this path's");
        }
    }
}
