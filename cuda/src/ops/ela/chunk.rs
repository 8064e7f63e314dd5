//! The chunked tensor-core path of fused Hadamard-Exp ELA, forward and backward
//! (`kernels/ela/tile.cuh`, `chunk_fwd.cu`, `chunk_out.cu`, `chunk_bwd.cu`; the algorithm is in the header of
//! `chunk_fwd.cu`). The same module holds the one-launch decode step (`step.rs`).
//!
//! Taken for Hadamard Exp with f32/f16/bf16 inputs and head sizes `d`, `dv` in {64, 128} (and 256
//! with 16-bit inputs, in 32-row chunks; see [`variant`]), for elu+1 with f32/bf16 inputs at
//! the same sizes without a carried state, as Hadamard Exp on log-features, and for Identity with
//! f32 inputs (bf16 with the signed kernels' opt-in) likewise, without exps (`ChunkMap`); every
//! other call runs the per-token scan of `recurrent.rs` (or the parallel form of `noncausal.rs`). Work is split into launches with parallel
//! work: a scan over chunks per (sequence, 32 value columns) writes the state before every chunk
//! ("slots"), then one block per (chunk, sequence) computes the chunk's rows; the backward adds
//! a per-row pass (units, denominators), a reverse scan for the accumulators `U, w` and one block
//! per (chunk, sequence) for `dq, dk, dv`.

use cudarc::driver::DeviceRepr;
use ela_core::ela::{ElaArg, ElaDims, ElaKernel, ElaRows, ElaStateBufs};
use ela_core::{DType, Result};

use crate::device::{Arg, Cfg, Cuda};
use crate::kernels::{ChunkMap, ChunkMinBlocks, ElaDt, KernelFile};
use crate::storage::CudaStorage;

/// Threads per block of every chunked kernel (8 warps).
pub(super) const THREADS: u32 = 256;
/// State rows (features) per scan block (`SCAN_FB` in `kernels/ela/chunk_fwd.cu`).
const SCAN_FB: usize = 64;

/// Value columns per block of the scan kernel (`SCAN_DVB` in chunk_fwd.cu).
fn scan_dvb(dv: usize) -> usize {
    if dv > 64 {
        64
    } else {
        32
    }
}

/// Floats a per-feature vector of `n` entries takes in shared memory with operands of type `mt`
/// (`FVEC` in tile.cuh: skewed, 4 more every 32, for 16-bit operands).
fn fvec(mt: DType, n: usize) -> usize {
    if mt == DType::F32 {
        n
    } else {
        n + n / 8
    }
}

/// Launches one chunked kernel; with `ELA_CUDA_PROFILE` set, each launch is timed alone (CUDA
/// events, synchronizing) and reported on stderr: a debugging aid for where the time goes.
pub(super) fn launch(dev: &Cuda, cv: &Variant, name: &str, cfg: Cfg, smem: u32, args: &[Arg]) -> Result<()> {
    if !super::switches().profile {
        return dev.launch_smem(cv.file, name, cfg, smem, args);
    }
    let timer = crate::GpuTimer::new(dev)?;
    let ((), ms) = timer.time(|| dev.launch_smem(cv.file, name, cfg, smem, args))?;
    eprintln!("ela-profile {name} grid {}x{} smem {smem}: {:.1} us", cfg.grid, cfg.grid_y, ms * 1e3);
    Ok(())
}

/// One compiled variant of the chunked kernels and its sizes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Variant {
    pub(super) file: KernelFile,
    /// Chunk length (`ELA_C`).
    pub(super) c: usize,
    f: usize,
    pub(super) dv: usize,
    /// Operand type of the state slots: bf16 (16-bit inputs) or f32.
    mt: DType,
    /// Blocks per multiprocessor its kernels are compiled for.
    min_blocks: ChunkMinBlocks,
}

/// Feature blocks of one sequence's scan (`SCAN_FB` features each): the planes of the chunk
/// sums a scan makes for the signed kernels (`ExtScan` in chunk_fwd.cu).
pub(super) fn scan_feature_blocks(cv: &Variant) -> usize {
    cv.f / SCAN_FB
}

/// The variant for these inputs, if the chunked path supports them on `dev`: every kernel's
/// shared memory must fit in what one block of this GPU may have (256-wide heads need 229,632
/// bytes, which an H100/H200 has and an A100 does not). `carried`: the call starts from or
/// returns a carried state (prefill, a decode step), which only Hadamard Exp's take here (the
/// kernels keep a state in per-feature units; elu+1's and Identity's carried states have none).
pub(crate) fn variant(dev: &Cuda, kernel: ElaKernel, dtype: DType, dims: &ElaDims, carried: bool) -> Option<Variant> {
    fits(dev, variant_for(kernel, dtype, dims, carried)?)
}

/// `cv` if its kernels' shared memory fits in one block of `dev`.
pub(super) fn fits(dev: &Cuda, cv: Variant) -> Option<Variant> {
    let most = cv.scan_smem_mode(1).max(cv.out_smem()).max(cv.bwd_smem());
    (most <= dev.max_shared_memory_per_block()).then_some(cv)
}

/// [`variant`] before the device's shared-memory limit.
pub(super) fn variant_for(kernel: ElaKernel, dtype: DType, dims: &ElaDims, carried: bool) -> Option<Variant> {
    if super::switches().scan_only {
        // Debugging/benchmark switch: force the per-token scan.
        return None;
    }
    let dt = ElaDt::of(dtype)?;
    // elu+1 with f16 inputs keeps the feature-map path's f32 operands: these kernels' bf16
    // operands are coarser than f16 (docs/ela.md, "The chunked form of the feature-map kernels").
    // Identity's f32 inputs take f32 operands (3xTF32, as the feature-map path's); its bf16
    // inputs bf16 operands only where the caller accepts them for the signed kernels
    // (`with_signed_bf16`: the state slots are rounded to bf16 once a chunk, and its sums cancel).
    let map = match kernel {
        ElaKernel::HadamardExp => ChunkMap::Exp,
        ElaKernel::EluPlusOne if !carried && dt != ElaDt::F16 && super::elu_on_tiles() => ChunkMap::EluPlusOne,
        ElaKernel::Identity
            if !carried
                && super::identity_on_tiles()
                && (dt == ElaDt::F32 || (dt == ElaDt::BF16 && super::feature_chunk::signed_bf16())) =>
        {
            ChunkMap::Identity
        }
        _ => return None,
    };
    tiles(map, dt, dims)
}

/// The chunk module of `map` for these inputs, where one is compiled (before the device's limit).
pub(super) fn tiles(map: ChunkMap, dt: ElaDt, dims: &ElaDims) -> Option<Variant> {
    // 256-wide heads only with 16-bit operands: their tiles fit in shared memory with 32-row
    // chunks (the backward's: 229,632 of the 232,448 bytes an H100/H200 block may have); f32
    // tiles would not.
    let sizes = if dt == ElaDt::F32 { &[64, 128][..] } else { &[64, 128, 256][..] };
    let sizes_ok = sizes.contains(&dims.d) && sizes.contains(&dims.dv);
    if !sizes_ok || dims.sequences() > 65_535 {
        return None;
    }
    let c = super::tile_chunk_rows(dt == ElaDt::F32, dims.d, dims.dv);
    if dims.t.div_ceil(c) >= i32::MAX as usize {
        return None;
    }
    Some(Variant {
        file: KernelFile::ElaChunk { map, dt, d: dims.d as u16, dv: dims.dv as u16 },
        min_blocks: ChunkMinBlocks::of(dt, dims.d as u16, dims.dv as u16),
        c,
        f: dims.d,
        dv: dims.dv,
        mt: if dt == ElaDt::F32 { DType::F32 } else { DType::BF16 },
    })
}

fn lp(cv: &Variant, n: usize) -> usize {
    n + if cv.mt == DType::F32 { 4 } else { 8 }
}

impl Variant {
    fn nch(&self, t: usize) -> usize {
        t.div_ceil(self.c)
    }
    /// Whether the scan takes one chunk a step (`SCAN_WIDE` in chunk_fwd.cu: heads or values
    /// wider than 64), else two.
    fn scan_wide(&self) -> bool {
        self.f > 64 || self.dv > 64
    }
    /// Chunks per scan step (`SCAN_P`).
    fn scan_p(&self) -> usize {
        if self.scan_wide() {
            1
        } else {
            2
        }
    }

    /// Blocks of one sequence's scan: column blocks x feature blocks.
    fn scan_blocks(&self) -> usize {
        (self.dv / scan_dvb(self.dv)) * (self.f / SCAN_FB)
    }
    /// Whether the reverse scan computes the rows' `dy . y` itself (`SCAN_DOT` in chunk_fwd.cu:
    /// 16-bit operands), so that a backward from saved slots needs no `ela_rows_dot` pass.
    pub(super) fn scan_dot(&self) -> bool {
        self.mt != DType::F32
    }
    /// The row stride, in elements, of the reverse scan's dy and y copies (`SCAN_LDY`: padded by
    /// the threads a row's dot takes, `SCAN_DOT_TPR`).
    fn scan_dot_ldy(&self) -> usize {
        let pad = match THREADS as usize / (self.scan_p() * self.c) {
            2 => 16,
            4 => 32,
            _ => 8,
        };
        self.dv + pad
    }
    /// Dynamic shared memory of `ela_scan` in `mode` (mirrors its carve: with [`Variant::scan_dot`]
    /// the reverse scan's row copies follow the rest).
    fn scan_smem_mode(&self, mode: i32) -> u32 {
        self.scan_smem_with(mode == 1 && self.scan_dot())
    }
    /// Dynamic shared memory of `ela_scan`, with or without the row copies of the dots: per chunk
    /// of a step, its dy and y rows (`[c][2][ldy]`) and this block's q rows (`[c][SCAN_FB + 8]`),
    /// 16-bit.
    fn scan_smem_with(&self, dot: bool) -> u32 {
        let rows = 2 * self.scan_dot_ldy() + lp(self, SCAN_FB);
        self.scan_smem() + if dot { (self.scan_p() * self.c * rows * 2) as u32 } else { 0 }
    }
    /// Dynamic shared memory of `ela_scan` without the reverse scan's dy and y copies.
    fn scan_smem(&self) -> u32 {
        let (c, f) = (self.c, SCAN_FB);
        // SCAN_P chunks per step, each with its tiles and per-feature / per-row vectors.
        let per_step = self.scan_p();
        // The value tile: DVB + 8 columns, 8 more with 16-bit operands (an odd count of 16-byte
        // units per row: conflict-free ldmatrix reads; `LDV` in the kernel).
        let value_cols = scan_dvb(self.dv) + if self.mt == DType::F32 { 8 } else { 16 };
        // Identity's modules also hold the weight tile of the signed kernels' chunk sums, 16 wide.
        let identity = matches!(self.file, KernelFile::ElaChunk { map: ChunkMap::Identity, .. });
        let weights = if identity { c * lp(self, 16) } else { 0 };
        let tiles = c * lp(self, f) + c * lp(self, value_cols) + weights;
        (per_step * (tiles * self.mt.size_in_bytes() + (10 * f + 4 * c) * 4)) as u32
    }
    /// Dynamic shared memory of `ela_out`.
    fn out_smem(&self) -> u32 {
        let (c, f, dv) = (self.c, self.f, self.dv);
        let (ldf, ldv, ldc) = (lp(self, f), lp(self, dv), lp(self, c));
        let r0 = (2 * c * ldf).max(f * ldv);
        let groups = 8 / (c / 16);
        let tiles = r0 + c * ldf + c * ldv + c * ldc;
        (tiles * self.mt.size_in_bytes() + 4 * (2 * fvec(self.mt, f) + 6 * c + groups * c + c + 32)) as u32
    }
    /// Dynamic shared memory of `ela_bwd`.
    fn bwd_smem(&self) -> u32 {
        let (c, f, dv) = (self.c, self.f, self.dv);
        let (ldf, ldv, ldc) = (lp(self, f), lp(self, dv), lp(self, c));
        let tiles = 3 * c * ldf + 2 * c * ldv + 2 * c * ldc + f * ldv;
        (tiles * self.mt.size_in_bytes() + 4 * (3 * f + fvec(self.mt, f) + 6 * c)) as u32
    }
}

/// Mirror of `struct ElaIo` in `kernels/ela/tile.cuh`: the (batch, head, row) strides, in
/// elements, of q, k, v, dy and y (a row's own elements are contiguous), and the head count that
/// splits a sequence index into (batch, head).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct IoRows {
    q: [i64; 3],
    k: [i64; 3],
    v: [i64; 3],
    dy: [i64; 3],
    y: [i64; 3],
    heads: i32,
    pad: i32,
}
// SAFETY: plain-old-data with the C layout of the kernel-side struct.
unsafe impl DeviceRepr for IoRows {}

/// Mirror of `struct ScanSegs` in `kernels/ela/chunk_fwd.cu`: the f32 buffers of a scan split
/// into runs (all null: one walk per sequence).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct ScanSegs {
    s: u64,
    z: u64,
    m: u64,
    end_s: u64,
    end_z: u64,
    end_m: u64,
    runs: i32,
    len: i32,
}
// SAFETY: plain-old-data with the C layout of the kernel-side struct.
unsafe impl DeviceRepr for ScanSegs {}

thread_local! {
    /// Runs forced by [`with_scan_runs`] on this thread (0: chosen per call).
    static SCAN_RUNS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Runs `f` with every chunked ELA scan it issues on this thread split into `runs` runs where
/// the call allows it (causal, no carried state; at most one run per chunk); 1 never splits, 0 (the
/// default) chooses per call: enough runs for the walks to fill the GPU when the sequences alone
/// would not (cuda/README.md, "Scans in runs"). Results agree to rounding whatever the choice.
/// For tests and benchmarks that compare the choices; per thread, so concurrent tests do not
/// see each other's setting.
#[doc(hidden)]
pub fn with_scan_runs<R>(runs: usize, f: impl FnOnce() -> R) -> R {
    super::with_override(&SCAN_RUNS, runs, f)
}

/// Slots one thread of `ela_scan_join` joins (`JOIN_SLOTS` in chunk_fwd.cu).
const JOIN_SLOTS: usize = 8;

/// Fewest chunks a run of a split scan walks: shorter runs would spend more on the join than the
/// walk saves.
const MIN_RUN_CHUNKS: usize = 4;

/// Runs of `len` chunks each for a scan of `nch` chunks: `wanted` (at most one per
/// `MIN_RUN_CHUNKS` chunks unless forced), returned as `(runs, len)` with no empty run.
fn runs_of(nch: usize, wanted: usize, forced: bool) -> (usize, usize) {
    let most = if forced { nch } else { nch / MIN_RUN_CHUNKS };
    let runs = wanted.min(most).max(1);
    let len = nch.div_ceil(runs);
    (nch.div_ceil(len), len)
}

fn strides(r: &ElaRows) -> [i64; 3] {
    [r.batch as i64, r.head as i64, r.row as i64]
}

/// Mirror of `struct ElaExt` in `kernels/ela/chunk_fwd.cu`: the rank-one extra terms of the signed
/// kernels on Identity's tiles (`signed.rs`; all zero elsewhere): the scanned chunk sums
/// `ela_out` (forward sums) or `ela_bwd` (backward sums, and the forward's in `pre`) reads, each
/// row's `(a, g)` where given (0: from the rows), the kind of the terms and `1 / s`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ExtArgs {
    pub(super) sums: u64,
    pub(super) pre: u64,
    pub(super) ag: u64,
    pub(super) kind: i32,
    pub(super) inv_s: f32,
}
// SAFETY: plain-old-data with the C layout of the kernel-side struct.
unsafe impl DeviceRepr for ExtArgs {}

/// Mirror of `struct ExtScan` in `kernels/ela/chunk_fwd.cu`: where a scan writes each chunk's own
/// sums for the signed kernels (`sums` 0: nowhere), `plane` floats apart per feature block, and
/// whether they weigh rows by their norms (`norms`, with `1 / s`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ExtScanArgs {
    pub(super) sums: u64,
    pub(super) plane: i64,
    pub(super) inv_s: f32,
    pub(super) norms: i32,
}
// SAFETY: plain-old-data with the C layout of the kernel-side struct.
unsafe impl DeviceRepr for ExtScanArgs {}

/// The operands of one chunked call: the address of each one's first row (`y`, `dy`: 0 in a
/// forward, which makes `y` itself with the layout `rows.y`) and where their rows lie.
pub(crate) struct Io {
    pub(super) q: u64,
    pub(super) k: u64,
    pub(super) v: u64,
    pub(super) y: u64,
    pub(super) dy: u64,
    /// The extra terms `ela_out` and `ela_bwd` add (none by default; `signed.rs`).
    pub(super) ext: ExtArgs,
    /// The chunk sums the scans make for those terms (none by default; `signed.rs`), prefixed by
    /// `ela_ext_scan` after the scan.
    pub(super) ext_scan: ExtScanArgs,
    pub(super) rows: IoRows,
}

impl Io {
    /// Operands given by their rows (`y`, `dy` for a backward; for a forward `y_rows` is the
    /// layout of the `y` to make).
    pub(crate) fn of_args(
        dims: &ElaDims,
        [q, k, v]: [&ElaArg<'_, CudaStorage>; 3],
        y_rows: ElaRows,
        y_dy: Option<[&ElaArg<'_, CudaStorage>; 2]>,
    ) -> Io {
        let at = |a: &ElaArg<'_, CudaStorage>| a.storage.ptr_at(a.rows.offset);
        let (y, dy, yr, dyr) = match y_dy {
            Some([y, dy]) => (at(y), at(dy), y.rows, dy.rows),
            None => (0, 0, y_rows, ElaRows::contiguous(dims, dims.dv)),
        };
        Io {
            q: at(q),
            k: at(k),
            v: at(v),
            y,
            dy,
            ext: ExtArgs::default(),
            ext_scan: ExtScanArgs::default(),
            rows: IoRows {
                q: strides(&q.rows),
                k: strides(&k.rows),
                v: strides(&v.rows),
                dy: strides(&dyr),
                y: strides(&yr),
                heads: dims.heads as i32,
                pad: 0,
            },
        }
    }

    /// Contiguous `[batch, heads, t, width]` operands (`y`, `dy` for a backward; a forward makes
    /// a contiguous `y`).
    pub(crate) fn packed(dims: &ElaDims, [q, k, v]: [&CudaStorage; 3], y_dy: Option<[&CudaStorage; 2]>) -> Io {
        let (rd, rv) = (ElaRows::contiguous(dims, dims.d), ElaRows::contiguous(dims, dims.dv));
        let arg = |s, rows| ElaArg { storage: s, rows };
        let (qa, ka, va) = (arg(q, rd), arg(k, rd), arg(v, rv));
        match y_dy {
            Some([y, dy]) => Io::of_args(dims, [&qa, &ka, &va], rv, Some([&arg(y, rv), &arg(dy, rv)])),
            None => Io::of_args(dims, [&qa, &ka, &va], rv, None),
        }
    }
}

/// Where `ela_bwd` writes `dq`, `dk`, `dv`: the addresses of their first rows, packed
/// `[sequence][t][width]` or (`like_inputs`) with `q`, `k`, `v`'s strides.
pub(super) struct Grads {
    pub(super) ptrs: [u64; 3],
    pub(super) like_inputs: bool,
}

/// What `ela_out` computes: mode 0 writes `y` (and, with `rows != 0`, the row info a saving
/// forward keeps); mode 1 writes the row info of a backward that recomputes the forward.
#[derive(Clone, Copy)]
enum OutMode {
    Forward { y: u64, rows: u64 },
    Rows { rows: u64, dy: u64, y: u64 },
}

/// The per-chunk states: `s` `[seq][nch+1][F][Dv]` (operand type), `z`, `m` `[seq][nch+1][F]` f32.
struct Slots {
    s: CudaStorage,
    z: CudaStorage,
    m: CudaStorage,
}

impl Cuda {
    fn ela_slots(&self, cv: &Variant, n: usize, slots: usize) -> Result<Slots> {
        Ok(Slots {
            s: self.alloc(cv.mt, n * slots * cv.f * cv.dv)?,
            z: self.alloc(DType::F32, n * slots * cv.f)?,
            m: self.alloc(DType::F32, n * slots * cv.f)?,
        })
    }

    /// Runs for each sequence's walk in a scan over `nch` chunks of `n` sequences (`(1, nch)`:
    /// one walk). Each walk is a chain of dependent steps, about 2.7 us per chunk on an H100
    /// whether one or two blocks share a multiprocessor, so when the sequences' blocks fill fewer
    /// than the blocks that can be resident, splitting the walks into runs (joined after by
    /// `ela_scan_join`) shortens the chain for the same work.
    fn scan_runs(&self, cv: &Variant, n: usize, nch: usize) -> (usize, usize) {
        let forced = match SCAN_RUNS.with(|c| c.get()) {
            0 => super::switches().scan_runs,
            k => k,
        };
        match forced {
            0 => {
                let resident = self.sm_count() as usize * cv.min_blocks.scan as usize;
                runs_of(nch, resident / (n * cv.scan_blocks()).max(1), false)
            }
            k => runs_of(nch, k, true),
        }
    }

    /// `ela_scan_m0` / `ela_scan_m1` (one kernel per mode; `ela_scan_x0` / `ela_scan_x1` with
    /// `io.ext_scan`): mode 0 writes the forward
    /// slots from `x = k`, `val = v` (and an optional initial state; `fin` receives the final
    /// state in f32); mode 1 the reverse accumulators from `x = q`, `val = dy` and the row info.
    /// Causal calls without a carried state may split each walk into runs ([`Cuda::scan_runs`]),
    /// joined by `ela_scan_join` (or folded by `ela_scan_fold` at one chunk a run). With
    /// `io.ext_scan`, the scan also makes the signed kernels' chunk sums, prefixed here.
    #[allow(clippy::too_many_arguments)]
    fn ela_scan(
        &self,
        cv: &Variant,
        n: usize,
        t: usize,
        x: u64,
        val: u64,
        out: (&CudaStorage, &CudaStorage),
        m: &CudaStorage,
        rows: u64,
        init: [u64; 3],
        fin: [u64; 3],
        io: &Io,
        mode: i32,
        causal: bool,
        yin: u64,
    ) -> Result<()> {
        let nch = cv.nch(t);
        let plain = !causal || init[0] != 0 || fin[0] != 0;
        // The join's grid puts (sequence, feature group) in y, which must stay <= 65,535; n * f
        // bounds it (splits pay only for far fewer sequences than that).
        let plain = plain || n * cv.f > u16::MAX as usize;
        let (runs, len) = if plain { (1, nch) } else { self.scan_runs(cv, n, nch) };
        // The runs' relative slots and end states, in f32 (only while the scan and join run). Runs
        // of one chunk have no relative slots (each would be the empty state): a fold follows.
        let (nslot, fs) = (if mode == 0 { nch + 1 } else { nch }, cv.f * cv.dv);
        let relative = if len > 1 { nslot } else { 0 };
        let bufs = if runs > 1 {
            let f32s = |len| self.alloc(DType::F32, len);
            Some([
                f32s(n * relative * fs)?,
                f32s(n * relative * cv.f)?,
                f32s(if mode == 0 { n * relative * cv.f } else { 0 })?,
                f32s(n * runs * fs)?,
                f32s(n * runs * cv.f)?,
                f32s(if mode == 0 { n * runs * cv.f } else { 0 })?,
            ])
        } else {
            None
        };
        let ptr_or_null = |b: &CudaStorage| if b.is_empty() { 0 } else { b.ptr() };
        let segs = match &bufs {
            Some([s, z, m, es, ez, em]) => ScanSegs {
                s: ptr_or_null(s),
                z: ptr_or_null(z),
                m: ptr_or_null(m),
                end_s: es.ptr(),
                end_z: ez.ptr(),
                end_m: em.ptr(),
                runs: runs as i32,
                len: len as i32,
            },
            None => ScanSegs::default(),
        };
        let mut args = vec![
            Arg::Ptr(x),
            Arg::Ptr(val),
            Arg::Ptr(out.0.ptr()),
            Arg::Ptr(out.1.ptr()),
            Arg::Ptr(m.ptr()),
            Arg::Ptr(rows),
            Arg::Ptr(init[0]),
            Arg::Ptr(init[1]),
            Arg::Ptr(init[2]),
            Arg::Ptr(fin[0]),
            Arg::Ptr(fin[1]),
            Arg::Ptr(fin[2]),
            Arg::by_value(segs),
            Arg::by_value(io.rows),
            Arg::by_value(io.ext_scan),
            Arg::n(t),
            Arg::I32(nch as i32),
            Arg::I32(causal as i32),
        ];
        if cv.scan_dot() {
            // The reverse scan's y (both kernels take it with SCAN_DOT; the forward's is unused).
            args.push(Arg::Ptr(yin));
        }
        let name = match (mode, io.ext_scan.sums != 0) {
            (0, false) => "ela_scan_m0",
            (_, false) => "ela_scan_m1",
            (0, true) => "ela_scan_x0",
            (_, true) => "ela_scan_x1",
        };
        let cfg = Cfg { grid: n as u32, grid_y: (runs * cv.scan_blocks()) as u32, block: THREADS };
        launch(self, cv, name, cfg, cv.scan_smem_mode(mode), &args)?;
        if runs > 1 {
            let mut args = vec![
                Arg::Ptr(out.0.ptr()),
                Arg::Ptr(out.1.ptr()),
                Arg::Ptr(m.ptr()),
                Arg::by_value(segs),
                Arg::I32(nch as i32),
                Arg::I32(mode),
            ];
            if len == 1 {
                // A thread folds 4 value columns of one feature of one sequence.
                args.push(Arg::n(n));
                let threads = n * cv.f * cv.dv / 4;
                let cfg = Cfg { grid: threads.div_ceil(THREADS as usize) as u32, grid_y: 1, block: THREADS };
                launch(self, cv, "ela_scan_fold", cfg, 0, &args)?;
            } else {
                // The relative slots: after the first run (mode 0, with the final slot) or before the last.
                let joined = if mode == 0 { nch + 1 - len } else { (runs - 1) * len };
                // A thread joins 4 value columns of one feature: JOIN_FPB features a block.
                let groups_y = n * cv.f / (4 * THREADS as usize / cv.dv);
                let cfg = Cfg { grid: joined.div_ceil(JOIN_SLOTS) as u32, grid_y: groups_y as u32, block: THREADS };
                launch(self, cv, "ela_scan_join", cfg, 0, &args)?;
            }
        }
        if io.ext_scan.sums != 0 {
            self.ela_ext_prefix(cv, io.ext_scan, n, nch, mode == 1, scan_feature_blocks(cv))?;
        }
        Ok(())
    }

    /// `ela_out` over every chunk of `n` sequences (mode 0 or 1, see `kernels/ela/chunk_fwd.cu`).
    #[allow(clippy::too_many_arguments)]
    fn ela_out(
        &self,
        cv: &Variant,
        n: usize,
        t: usize,
        mode: OutMode,
        io: &Io,
        sl: &Slots,
        causal: bool,
    ) -> Result<()> {
        let ((y, rows, dy, yin), code) = match mode {
            OutMode::Forward { y, rows } => ((y, rows, 0, 0), 0),
            OutMode::Rows { rows, dy, y } => ((0, rows, dy, y), 1),
        };
        let nch = cv.nch(t);
        let args = [
            Arg::Ptr(y),
            Arg::Ptr(rows),
            Arg::Ptr(io.q),
            Arg::Ptr(io.k),
            Arg::Ptr(io.v),
            Arg::Ptr(dy),
            Arg::Ptr(yin),
            Arg::Ptr(sl.s.ptr()),
            Arg::Ptr(sl.z.ptr()),
            Arg::Ptr(sl.m.ptr()),
            Arg::by_value(io.ext),
            Arg::by_value(io.rows),
            Arg::n(t),
            Arg::I32(nch as i32),
            Arg::I32(code),
            Arg::I32(causal as i32),
        ];
        let cfg = Cfg { grid: nch as u32, grid_y: n as u32, block: THREADS };
        launch(self, cv, "ela_out", cfg, cv.out_smem(), &args)
    }

    /// Chunked forward (`Backend::ela_forward` for the supported shapes) from `state` or an
    /// empty one, on operands of dtype `dtype` where `io` says (`y` is made in the layout
    /// `io.rows.y`). With `save` (empty state only), it also keeps for the backward the slots and
    /// the row info `(u, den, 0, exact-path flag)`: buffers `[s, z, m, rows]` (`None` for an empty
    /// call or without `save`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn ela_chunk_forward(
        &self,
        cv: &Variant,
        io: &Io,
        dtype: DType,
        dims: &ElaDims,
        causal: bool,
        state: Option<(&mut ElaStateBufs<CudaStorage>, [u64; 3])>,
        save: bool,
    ) -> Result<(CudaStorage, Option<Vec<CudaStorage>>)> {
        let (n, t) = (dims.sequences(), dims.t);
        let y = self.alloc(dtype, n * t * dims.dv)?;
        if n == 0 || t == 0 {
            return Ok((y, None));
        }
        let nch = cv.nch(t);
        let sl = self.ela_slots(cv, n, nch + 1)?;
        let rows = if save { Some(self.alloc(DType::F32, n * t * 4)?) } else { None };
        let (f, dv) = (cv.f, cv.dv);
        let fin = match &state {
            Some(_) => Some((
                self.alloc(DType::F32, n * f * dv)?,
                self.alloc(DType::F32, n * f)?,
                self.alloc(DType::F32, n * f)?,
            )),
            None => None,
        };
        let init = state.as_ref().map_or([0; 3], |s| s.1);
        let finp = fin.as_ref().map_or([0; 3], |x| [x.0.ptr(), x.1.ptr(), x.2.ptr()]);
        self.ela_scan(cv, n, t, io.k, io.v, (&sl.s, &sl.z), &sl.m, 0, init, finp, io, 0, causal, 0)?;
        let rows_ptr = rows.as_ref().map_or(0, |r| r.ptr());
        self.ela_out(cv, n, t, OutMode::Forward { y: y.ptr(), rows: rows_ptr }, io, &sl, causal)?;
        if let (Some((st, _)), Some((fs, fz, fm))) = (state, fin) {
            // The final state, f32, back into the carried buffers (separate from the initial ones:
            // the scan's blocks read the initial log-scales while others finish).
            self.copy_d2d(st.s.ptr(), fs.ptr(), n * f * dv * 4)?;
            self.copy_d2d(st.z.ptr(), fz.ptr(), n * f * 4)?;
            if let Some(m) = &st.m {
                self.copy_d2d(m.ptr(), fm.ptr(), n * f * 4)?;
            }
        }
        Ok((y, rows.map(|r| vec![sl.s, sl.z, sl.m, r])))
    }

    /// Chunked backward from an empty state (`Backend::ela_backward` for the supported shapes).
    /// With `saved` (the buffers a saving [`Cuda::ela_chunk_forward`] kept for the same call) the
    /// forward's slots and row scales are reused: only `c = dy . y / den` is computed per row;
    /// without, the slots are rescanned and the rows recomputed (`ela_out` mode 1).
    ///
    /// The operands (dtype `dtype`, with `y` and `dy`) lie where `io` says. `dq`, `dk`, `dv` come
    /// back contiguous, or, with `into` (the addresses of their first rows in a buffer the caller
    /// owns), are written there with `q`, `k`, `v`'s strides, and the three returned buffers are
    /// empty.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn ela_chunk_backward(
        &self,
        cv: &Variant,
        io: &Io,
        dtype: DType,
        dims: &ElaDims,
        causal: bool,
        saved: Option<&[CudaStorage]>,
        into: Option<[u64; 3]>,
    ) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
        let (n, t, d) = (dims.sequences(), dims.t, dtype);
        let (rq, rv) = match into {
            Some(_) => (0, 0),
            None => (n * t * dims.d, n * t * dims.dv),
        };
        let (dq, dk, dvo) = (self.alloc(d, rq)?, self.alloc(d, rq)?, self.alloc(d, rv)?);
        if n == 0 || t == 0 {
            return Ok((dq, dk, dvo));
        }
        let out = match into {
            Some(ptrs) => Grads { ptrs, like_inputs: true },
            None => Grads { ptrs: [dq.ptr(), dk.ptr(), dvo.ptr()], like_inputs: false },
        };
        let nch = cv.nch(t);
        // (A set of another count, from another path, is recomputed here as before.)
        if let Some(saved) = saved.filter(|s| s.len() == 4) {
            let [s, z, m, rows] = self.ela_saved_rows(cv, io, (n, t), saved)?;
            let uw = self.ela_reverse_scan(cv, io, m, rows, (n, t), causal)?;
            self.ela_bwd(cv, io, [s, z, m], rows, &uw, &out, (n, t), causal)?;
            return Ok((dq, dk, dvo));
        }
        let sl = self.ela_slots(cv, n, nch + 1)?;
        self.ela_scan(cv, n, t, io.k, io.v, (&sl.s, &sl.z), &sl.m, 0, [0; 3], [0; 3], io, 0, causal, 0)?;
        // Per row (u, den, c, exact-path flag).
        let rows = self.alloc(DType::F32, n * t * 4)?;
        let mode = OutMode::Rows { rows: rows.ptr(), dy: io.dy, y: io.y };
        self.ela_out(cv, n, t, mode, io, &sl, causal)?;
        let uw = self.ela_reverse_scan(cv, io, &sl.m, &rows, (n, t), causal)?;
        self.ela_bwd(cv, io, [&sl.s, &sl.z, &sl.m], &rows, &uw, &out, (n, t), causal)?;
        Ok((dq, dk, dvo))
    }

    /// The buffers a saving [`Cuda::ela_chunk_forward`] kept (`[s, z, m, rows]`), checked against
    /// this call, with `c = dy . y / den` filled into the row info where the reverse scan does
    /// not compute it.
    pub(super) fn ela_saved_rows<'a>(
        &self,
        cv: &Variant,
        io: &Io,
        (n, t): (usize, usize),
        saved: &'a [CudaStorage],
    ) -> Result<[&'a CudaStorage; 4]> {
        let nch = cv.nch(t);
        let want = [n * (nch + 1) * cv.f * cv.dv, n * (nch + 1) * cv.f, n * (nch + 1) * cv.f, n * t * 4];
        let have: Vec<usize> = saved.iter().map(|b| b.len()).collect();
        let (s, z, m, rows) = match saved {
            [s, z, m, rows] if want[..] == have[..] && s.dtype() == cv.mt => (s, z, m, rows),
            _ => return Err(super::saved_mismatch(&have, &want, format!("{:?} slots", cv.mt))),
        };
        if !cv.scan_dot() {
            // c = dy . y / den per row (with `scan_dot` the reverse scan computes it).
            let args = [Arg::Ptr(rows.ptr()), Arg::Ptr(io.dy), Arg::Ptr(io.y), Arg::by_value(io.rows), Arg::n(t)];
            let cfg = Cfg { grid: nch as u32, grid_y: n as u32, block: THREADS };
            launch(self, cv, "ela_rows_dot", cfg, 0, &args)?;
        }
        Ok([s, z, m, rows])
    }

    /// The backward's reverse scan: `U`, `w` of the rows after every chunk (and, with
    /// [`Variant::scan_dot`], each row's `c` into the row info).
    pub(super) fn ela_reverse_scan(
        &self,
        cv: &Variant,
        io: &Io,
        sm: &CudaStorage,
        rows: &CudaStorage,
        (n, t): (usize, usize),
        causal: bool,
    ) -> Result<(CudaStorage, CudaStorage)> {
        let nch = cv.nch(t);
        let (u, w) = (self.alloc(cv.mt, n * nch * cv.f * cv.dv)?, self.alloc(DType::F32, n * nch * cv.f)?);
        self.ela_scan(cv, n, t, io.q, io.dy, (&u, &w), sm, rows.ptr(), [0; 3], [0; 3], io, 1, causal, io.y)?;
        Ok((u, w))
    }

    /// The gradient kernel, from the forward slots, the row info and the reverse accumulators
    /// `(U, w)`, with `io.ext`'s extra terms.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn ela_bwd(
        &self,
        cv: &Variant,
        io: &Io,
        [ss, sz, sm]: [&CudaStorage; 3],
        rows: &CudaStorage,
        (u, w): &(CudaStorage, CudaStorage),
        out: &Grads,
        (n, t): (usize, usize),
        causal: bool,
    ) -> Result<()> {
        let nch = cv.nch(t);
        let per_chunk = Cfg { grid: nch as u32, grid_y: n as u32, block: THREADS };
        let args = [
            Arg::Ptr(out.ptrs[0]),
            Arg::Ptr(out.ptrs[1]),
            Arg::Ptr(out.ptrs[2]),
            Arg::Ptr(io.q),
            Arg::Ptr(io.k),
            Arg::Ptr(io.v),
            Arg::Ptr(io.dy),
            Arg::Ptr(rows.ptr()),
            Arg::Ptr(ss.ptr()),
            Arg::Ptr(sz.ptr()),
            Arg::Ptr(sm.ptr()),
            Arg::Ptr(u.ptr()),
            Arg::Ptr(w.ptr()),
            Arg::by_value(io.ext),
            Arg::by_value(io.rows),
            Arg::n(t),
            Arg::I32(nch as i32),
            Arg::I32(causal as i32),
            Arg::I32(out.like_inputs as i32),
        ];
        launch(self, cv, "ela_bwd", per_chunk, cv.bwd_smem(), &args)
    }
}

#[cfg(test)]
#[path = "chunk_tests.rs"]
mod tests;
