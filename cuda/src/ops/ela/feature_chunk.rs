//! The chunked path of fused ELA for the feature-map kernels (sum/sub squared Euclidean,
//! blueprint, Identity, elu+1, any feature size `F`): the fast path of these kernels on the GPU
//! (`kernels/ela/la_chunk.cu`; the operand rows are built by `gemm_chunk.cu`). docs/ela.md, "The
//! chunked form of the feature-map kernels", has the derivation.
//!
//! These kernels need no log-scale units, so the forward and backward are made of one primitive,
//! unnormalised linear attention
//!
//! ```text
//! LA(A, B, X)_i = sum_{j <= i} (A_i . B_j) X_j       (anti-causal LA~: j >= i; global: all j)
//! ```
//!
//! computed in chunks of `C` rows: a scan over the chunks writes the state each chunk starts from,
//! `S_c = sum_{c' < c} B_c'^T X_c'` (the reverse scan: `c' > c`), and one block per chunk computes
//! `O_c = A_c S_c + mask(A_c B_c^T) X_c`. Operands are materialised rows: `Phi = phi(q)`,
//! `Psi = psi(k)` (`F` padded to a multiple of 16) and `V' = [v | 1]` (`E` = `Dv + 1` padded): bf16
//! for elu+1 with bf16 inputs (tensor cores, f32 accumulation, bf16 state slots, like the
//! Hadamard-Exp kernels), else f32 (3xTF32 tensor-core products, accurate to f32 rounding; see
//! [`plan`] for why).
//!
//! Forward: `S = scan(Psi, V')`, `y = N / den` with `[N | den] = LA(Phi, Psi, V')` (eq. (L) of
//! docs/ela.md), the division in the output pass's epilogue.
//!
//! Backward: with `G_i = [dy_i / den_i | -(dy_i . y_i) / den_i]`,
//!
//! ```text
//! dPhi = LA(G, V', Psi)      dPsi = LA~(V', G, Phi)      dV' = LA~(Psi, Phi, G)
//! ```
//!
//! Their states are the forward state `S = sum Psi^T V'` (read transposed for `dPhi`) and the
//! reverse state `R = sum_{later} Phi^T G` (transposed for `dPsi`): two scans serve all three.
//! `G` comes from the denominators a saving forward kept (or from the forward's output pass
//! again, with a `G` epilogue), and the three output passes write `dq`, `dk` (their epilogue
//! applies the feature maps' vector-Jacobian products) and `dv` in the input dtype.
//!
//! Taken when every kernel's tiles fit in the GPU's shared memory (on an H100/H200, `D = Dv` up to
//! 190 with f32 operands, 256 with bf16), else the cuBLAS form of `gemm_chunk.rs`.

use ela_core::ela::{ElaDims, ElaKernel, ElaParams, ElaStateBufs};
use ela_core::{DType, Result};

use crate::device::{Arg, Cfg, Cuda};
use crate::kernels::{ElaDt, KernelFile};
use crate::ops::dt;
use crate::storage::CudaStorage;

/// Threads per block of the chunk kernels (8 warps; `ELA_THREADS` in tile.cuh).
const THREADS: u32 = 256;
/// Chunks staged at once by `la_scan` (`LA_STAGES` in la_chunk.cu).
const SCAN_STAGES: usize = 3;
/// Rows per block of the row kernels: 8 warps (`NC_WARPS` in noncausal.cu) of `LA_RB` = 4 rows
/// (gemm_chunk.cu; `la_grad` in la_chunk.cu alike).
const ROWS_PER_BLOCK: usize = 32;

/// The widest input row (`d`, `dv`) and operand row (`f`, `e`) the row kernels hold in
/// registers (their `_e8` variant: 8 elements per lane, one more for operand rows).
const MAX_IN: usize = 256;
const MAX_OPERAND: usize = 288;

/// The row kernels' variant for input rows of `width` elements (`ME` in gemm_chunk.cu: 2, 4 or 8
/// per lane; an operand row of the padded width `pad16(width + 2)` fits in `ME + 1`).
fn row_variant(width: usize) -> &'static str {
    match width {
        0..=64 => "e2",
        65..=128 => "e4",
        _ => "e8",
    }
}

/// The epilogue of an output pass (`LA_OUT_*` in la_chunk.cu).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Epilogue {
    /// `y = N / den` in the input dtype.
    Y = 1,
    /// `G = [dy / den | -(dy . y) / den]` in the operand type.
    G = 2,
    /// The first `dv` columns in the input dtype.
    Take = 3,
    /// `O` is a feature gradient: `dq` or `dk` in the input dtype (the feature map's VJP).
    Vjp = 4,
}

/// The feature map a [`Epilogue::Vjp`] pass differentiates: the kernel and `key` (psi) or query
/// (phi); `None` for the other epilogues.
type Features = Option<(ElaKernel, bool)>;

/// Which rows a product sums over (`dir` in la_chunk.cu).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Causal = 0,
    AntiCausal = 1,
    All = 2,
}

/// Which output kernel: `A`, `B` of width `f` and `X` of width `e`, or the reverse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Widths {
    Fe,
    Ef,
}

/// One compiled variant and the sizes of a call.
#[derive(Clone, Copy, Debug)]
pub(super) struct Plan {
    file: KernelFile,
    /// Chunk length (`ELA_C` of tile.cuh for this variant).
    c: usize,
    /// Padded feature width.
    f: usize,
    /// Padded width of `[v | 1]`.
    e: usize,
    /// Operand type: bf16 (elu+1 with bf16 inputs) or f32.
    mt: DType,
    /// elu+1 with bf16 inputs whose rows are whole 16-byte vectors (`d` a multiple of 16, so
    /// `F = d`; `dv` of 8) reads q, k, v where they lie and maps them in shared memory
    /// ([`Op::Feat`], [`Op::Aug`]) instead of operand rows: no row kernels, no row buffers.
    raw: bool,
}

/// An operand of a scan or an output pass (`LA_MAP_*` in la_chunk.cu): materialised rows
/// (`[n][tp][width]`, zero rows past `t`), or input rows (`[n][t][width]`) mapped as their tiles
/// load: elu+1 of them, or `[v | 1]`.
#[derive(Clone, Copy)]
enum Op<'a> {
    Rows(&'a CudaStorage),
    Feat(&'a CudaStorage),
    Aug(&'a CudaStorage),
}

impl Op<'_> {
    fn ptr(&self) -> u64 {
        match self {
            Op::Rows(b) | Op::Feat(b) | Op::Aug(b) => b.ptr(),
        }
    }
    fn map(&self) -> i32 {
        match self {
            Op::Rows(_) => 0,
            Op::Feat(_) => 1,
            Op::Aug(_) => 2,
        }
    }
}

/// `maps` of la_chunk.cu: 2 bits per operand, `A` first.
fn maps(ops: [Op; 3]) -> i32 {
    ops[0].map() | ops[1].map() << 2 | ops[2].map() << 4
}

fn pad16(n: usize) -> usize {
    n.div_ceil(16) * 16
}

/// The plan for these inputs, if this path takes them: a feature-map kernel, f32/f16/bf16
/// inputs, tiles that fit in this GPU's shared memory. `ELA_CUDA_SCAN_ONLY` forces the scan and
/// `ELA_CUDA_GEMM_CHUNK` the cuBLAS form (for comparisons).
pub(super) fn plan(dev: &Cuda, kernel: ElaKernel, dtype: DType, dims: &ElaDims) -> Option<Plan> {
    if super::switches().scan_only || super::switches().gemm_chunk {
        return None;
    }
    plan_for(kernel, dtype, dims, dev.max_shared_memory_per_block(), signed_bf16())
}

/// Whether the signed kernels' bf16 inputs take bf16 operands on this thread:
/// [`with_signed_bf16`], else `ELA_CUDA_SIGNED_BF16`.
pub(super) fn signed_bf16() -> bool {
    SIGNED_BF16.with(|c| c.get()).unwrap_or(super::switches().signed_bf16)
}

/// [`plan`] for a GPU whose blocks may have `smem_limit` bytes of shared memory; `signed_bf16`:
/// the signed kernels with bf16 inputs take bf16 operands ([`with_signed_bf16`]).
fn plan_for(kernel: ElaKernel, dtype: DType, dims: &ElaDims, smem_limit: u32, signed_bf16: bool) -> Option<Plan> {
    let dt = ElaDt::of(dtype)?;
    if kernel == ElaKernel::HadamardExp || dims.sequences() > 65_535 {
        return None;
    }
    let (f, e) = (pad16(kernel.feature_size(dims.d)), pad16(dims.dv + 1));
    if dims.d > MAX_IN || dims.dv > MAX_IN || f > MAX_OPERAND || e > MAX_OPERAND {
        return None;
    }
    let (f16, e16) = (u16::try_from(f).ok()?, u16::try_from(e).ok()?);
    // bf16 operands only where they lose nothing the inputs had and no sum cancels: bf16 inputs
    // of elu+1, whose features are positive, so every term of every product is and bf16 rounding
    // costs a relative 2^-8 per term. The signed kernels' sums cancel (bf16 operands measured
    // two to three times the f32 operands' error, up to 5.9e-3, on an H100), and f16 inputs carry
    // 3 more mantissa bits than bf16 (measured: 1 % off the CPU's f16 result): they take f32
    // operands, unless the caller accepts bf16 operands for the signed kernels' bf16 inputs
    // (`ELA_CUDA_SIGNED_BF16`, [`with_signed_bf16`]: an approximate fast path, 2.1-3.1x faster).
    let tc = dt == ElaDt::BF16 && (kernel == ElaKernel::EluPlusOne || signed_bf16);
    let mt = if tc { DType::BF16 } else { DType::F32 };
    let c = super::tile_chunk_rows(!tc, f, e);
    if dims.t.div_ceil(c) >= i32::MAX as usize {
        return None;
    }
    // Only elu+1's features are mapped as tiles load (`LA_MAP_FEAT`); the others take rows.
    let raw = tc && kernel == ElaKernel::EluPlusOne && dims.d.is_multiple_of(16) && dims.dv.is_multiple_of(8);
    let plan = Plan { file: KernelFile::ElaLa { dt, tc, f: f16, e: e16 }, c, f, e, mt, raw };
    let scan = plan.scan_kinds().iter().map(|&k| plan.scan_smem(k)).min()?;
    let most = [scan, plan.out_smem(Widths::Fe), plan.out_smem(Widths::Ef)].into_iter().max()?;
    (most <= smem_limit).then_some(plan)
}

thread_local! {
    /// The scan forced by [`with_la_scan`] on this thread (`None`: the environment's, else chosen).
    static LA_SCAN: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with every feature-map scan it issues on this thread forced to `scan`: `"half"`
/// (`la_scan`) or `"narrow"` (`la_scan_narrow`, f32 operands only; other calls keep their
/// choice); `None` chooses per call. Takes precedence over `ELA_CUDA_LA_SCAN`. The two scans sum
/// every state entry in the same order, so results are the same bits whichever runs. For tests
/// and benchmarks that compare them; per thread, so concurrent tests do not see each other's
/// setting.
#[doc(hidden)]
pub fn with_la_scan<R>(scan: Option<&'static str>, f: impl FnOnce() -> R) -> R {
    super::with_override(&LA_SCAN, scan, f)
}

thread_local! {
    /// Set by [`with_signed_bf16`] on this thread (`None`: `ELA_CUDA_SIGNED_BF16`).
    static SIGNED_BF16: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with the signed feature-map kernels (sum/sub squared Euclidean, blueprint, Identity)
/// it issues on this thread with bf16 inputs on bf16 operands (`on`: bf16 tensor-core products,
/// f32 accumulation, state slots rounded to bf16 once a chunk, as elu+1's), or on f32 operands
/// (3xTF32, accurate to f32 rounding: the default). An approximate fast path, also set for a
/// whole process by `ELA_CUDA_SIGNED_BF16=1`; cuda/README.md ("Signed kernels on bf16 operands")
/// has its measured error and speed (on an H100 at B8 H16 T16k: 2.1-3.1x faster, normwise
/// errors up to 5.7e-3 on `y` and 5.9e-3 on the gradients against 1.6e-3 and 3.1e-3).
pub fn with_signed_bf16<R>(on: bool, f: impl FnOnce() -> R) -> R {
    super::with_override(&SIGNED_BF16, Some(on), f)
}

thread_local! {
    /// Set by [`with_la_rows`]: this thread's calls materialise their operand rows even where they
    /// would read q, k, v where they lie ([`Plan::raw`]).
    static LA_ROWS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with every feature-map call it issues on this thread reading operand rows that the
/// row kernels wrote, also where they would read q, k, v where they lie (elu+1 with bf16
/// inputs; the kernels take either).
/// For tests that compare the two: they give the same bits.
#[doc(hidden)]
pub fn with_la_rows<R>(f: impl FnOnce() -> R) -> R {
    super::with_override(&LA_ROWS, true, f)
}

/// Of `(kernel, blocks, resident blocks)`, the kernel whose blocks take the fewest waves of
/// resident ones (the first of a tie; none where nothing is resident).
fn fewest_waves(options: &[(ScanKind, usize, usize)]) -> Option<ScanKind> {
    // `min_by_key` keeps the first of equal minima.
    options
        .iter()
        .filter(|&&(_, _, resident)| resident > 0)
        .min_by_key(|&&(_, blocks, resident)| blocks.div_ceil(resident))
        .map(|&(k, _, _)| k)
}

/// The two scan kernels of la_chunk.cu: `la_scan`, a block per half of `X`'s columns, and (f32
/// operands only) `la_scan_narrow`, a block per 16 columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ScanKind {
    Narrow,
    Half,
}

impl ScanKind {
    fn kernel(self) -> &'static str {
        match self {
            ScanKind::Narrow => "la_scan_narrow",
            ScanKind::Half => "la_scan",
        }
    }
    fn label(self) -> &'static str {
        match self {
            ScanKind::Narrow => "narrow",
            ScanKind::Half => "half",
        }
    }
}

impl Plan {
    /// Row stride in shared memory of an `n`-wide tile (`LDP` of tile.cuh).
    fn lp(&self, n: usize) -> usize {
        n + if self.mt == DType::F32 { 4 } else { 8 }
    }
    /// The scan kernels compiled for this plan, the narrow one first (it wins a tie).
    fn scan_kinds(&self) -> &'static [ScanKind] {
        if self.mt == DType::F32 {
            &[ScanKind::Narrow, ScanKind::Half]
        } else {
            &[ScanKind::Half]
        }
    }
    /// Columns of `X` per block of scan `k` (`LA_EB_HALF`, `LA_EB_NARROW` in la_chunk.cu).
    fn scan_cols(&self, k: ScanKind) -> usize {
        match k {
            ScanKind::Narrow => 16,
            ScanKind::Half => self.e / 2,
        }
    }
    /// Dynamic shared memory of scan `k` (mirrors `la_scan_impl`'s carve).
    fn scan_smem(&self, k: ScanKind) -> u32 {
        (SCAN_STAGES * self.c * (self.lp(self.f) + self.lp(self.scan_cols(k))) * self.mt.size_in_bytes()) as u32
    }
    /// Dynamic shared memory of `la_out_fe` / `la_out_ef` (mirrors `la_out_impl`'s carve: the
    /// operand tiles, or the f32 output tile that replaces them).
    fn out_smem(&self, w: Widths) -> u32 {
        let (c, ki, no) = match w {
            Widths::Fe => (self.c, self.f, self.e),
            Widths::Ef => (self.c, self.e, self.f),
        };
        let (sr, sc) = if w == Widths::Fe { (ki, no) } else { (no, ki) };
        let tiles = 2 * c * self.lp(ki) + c * self.lp(no) + sr * self.lp(sc) + c * self.lp(c);
        (tiles * self.mt.size_in_bytes()).max(c * (no + 4) * 4) as u32
    }
}

/// Sizes of one call: `n` sequences of `t` rows, `nch` chunks of `c` (`tp = nch * c` rows per
/// sequence in the operand buffers).
#[derive(Clone, Copy, Debug)]
struct Geo {
    n: usize,
    t: usize,
    nch: usize,
    tp: usize,
    /// The value width (`[v | 1]`'s `v` for [`Op::Aug`]).
    dv: usize,
}

impl Geo {
    fn new(pl: &Plan, dims: &ElaDims) -> Geo {
        let nch = dims.t.div_ceil(pl.c);
        Geo { n: dims.sequences(), t: dims.t, nch, tp: nch * pl.c, dv: dims.dv }
    }
    /// The launch of a row kernel over `rows` rows of each sequence (grid y: the sequence).
    fn rows_cfg(&self, rows: usize) -> Cfg {
        Cfg { grid: rows.div_ceil(ROWS_PER_BLOCK) as u32, grid_y: self.n as u32, block: THREADS }
    }
}

impl Cuda {
    /// `phi(x)` (`key` false) or `psi(x)` (`key` true) of every row, `[n][tp][f]` operands.
    fn ela_fc_features(
        &self,
        pl: &Plan,
        g: Geo,
        x: &CudaStorage,
        d: usize,
        kernel: ElaKernel,
        key: bool,
    ) -> Result<CudaStorage> {
        let out = self.alloc(pl.mt, g.n * g.tp * pl.f)?;
        let args = [
            Arg::Ptr(x.ptr()),
            Arg::Ptr(out.ptr()),
            Arg::n(g.t),
            Arg::n(g.tp),
            Arg::I32(d as i32),
            Arg::I32(pl.f as i32),
            Arg::I32(kernel.code()),
            Arg::I32(key as i32),
        ];
        let name = format!("ela_la_feat_{}_{}_{}", dt(x.dtype()), dt(pl.mt), row_variant(d));
        self.launch(KernelFile::Ela, &name, g.rows_cfg(g.tp), &args)?;
        Ok(out)
    }

    /// `[v | 1]` of every row, `[n][tp][e]` operands.
    fn ela_fc_augment(&self, pl: &Plan, g: Geo, v: &CudaStorage, dv: usize) -> Result<CudaStorage> {
        let out = self.alloc(pl.mt, g.n * g.tp * pl.e)?;
        let args = [
            Arg::Ptr(v.ptr()),
            Arg::Ptr(out.ptr()),
            Arg::n(g.t),
            Arg::n(g.tp),
            Arg::I32(dv as i32),
            Arg::I32(pl.e as i32),
        ];
        let name = format!("ela_la_aug_{}_{}_{}", dt(v.dtype()), dt(pl.mt), row_variant(dv));
        self.launch(KernelFile::Ela, &name, g.rows_cfg(g.tp), &args)?;
        Ok(out)
    }

    /// The state slots `[n][nch + 1][f][e]` of `sum B^T X` over chunks (forward or `reverse`),
    /// from `init` and writing the total to `fin` (both f32 `[n][f][e]`, optional).
    #[allow(clippy::too_many_arguments)]
    fn ela_fc_scan(&self, pl: &Plan, g: Geo, b: Op, x: Op, init: u64, fin: u64, reverse: bool) -> Result<CudaStorage> {
        let slots = self.alloc(pl.mt, g.n * (g.nch + 1) * pl.f * pl.e)?;
        let args = [
            Arg::Ptr(b.ptr()),
            Arg::Ptr(x.ptr()),
            Arg::Ptr(slots.ptr()),
            Arg::Ptr(init),
            Arg::Ptr(fin),
            Arg::I32(g.nch as i32),
            Arg::I32(reverse as i32),
            // The maps of B and X, the value width and T (for operands read where they lie).
            Arg::I32(b.map() << 2 | x.map() << 4),
            Arg::I32(g.dv as i32),
            Arg::n(g.t),
        ];
        let k = self.la_scan_kind(pl, g.n)?;
        let cfg = Cfg { grid: g.n as u32, grid_y: (pl.e / pl.scan_cols(k)) as u32, block: THREADS };
        self.launch_smem(pl.file, k.kernel(), cfg, pl.scan_smem(k), &args)?;
        Ok(slots)
    }

    /// The scan kernel for `n` sequences: every block walks its sequence's chunks from the first
    /// to the last, so the time is the number of waves of resident blocks times one walk, and
    /// the kernel with fewer waves wins (a tie goes to the narrow one, whose step is shorter).
    /// [`with_la_scan`] or `ELA_CUDA_LA_SCAN` forces one (for tests and for timing the choice).
    fn la_scan_kind(&self, pl: &Plan, n: usize) -> Result<ScanKind> {
        let limit = self.max_shared_memory_per_block();
        let kinds: Vec<ScanKind> = pl.scan_kinds().iter().copied().filter(|&k| pl.scan_smem(k) <= limit).collect();
        if let Some(forced) = LA_SCAN.with(|c| c.get()).or(super::switches().la_scan) {
            if let Some(&k) = kinds.iter().find(|k| k.label() == forced) {
                return Ok(k);
            }
        }
        let mut options = Vec::with_capacity(kinds.len());
        for k in kinds {
            let per_sm = self.resident_blocks(pl.file, k.kernel(), THREADS, pl.scan_smem(k))? as usize;
            options.push((k, n * (pl.e / pl.scan_cols(k)), per_sm * self.sm_count() as usize));
        }
        fewest_waves(&options).ok_or_else(|| ela_core::Error::Backend {
            backend: "cuda",
            op: "ela",
            msg: format!("no scan kernel of {} fits a multiprocessor of this GPU", pl.file.label()),
        })
    }

    /// One output pass `O = LA(a, b, x)` from `slots` into `out` with the given epilogue (`aux`:
    /// `y` and `dy` for [`Epilogue::G`], the input rows for [`Epilogue::Vjp`]; `den`: where
    /// [`Epilogue::Y`] keeps the denominators, or 0; `width`: `dv`, or `d` for [`Epilogue::Vjp`]).
    #[allow(clippy::too_many_arguments)]
    fn ela_fc_out(
        &self,
        pl: &Plan,
        g: Geo,
        w: Widths,
        ops: [Op; 3],
        slots: &CudaStorage,
        out: u64,
        aux: [u64; 2],
        den: u64,
        dir: Dir,
        (epi, feat): (Epilogue, Features),
        width: usize,
    ) -> Result<()> {
        let (kern, key) = feat.map_or((0, 0), |(k, key)| (k.code(), key as i32));
        let [a, b, x] = ops;
        let args = [
            Arg::Ptr(a.ptr()),
            Arg::Ptr(b.ptr()),
            Arg::Ptr(x.ptr()),
            Arg::Ptr(slots.ptr()),
            Arg::Ptr(out),
            Arg::Ptr(aux[0]),
            Arg::Ptr(aux[1]),
            Arg::Ptr(den),
            Arg::n(g.t),
            Arg::I32(g.nch as i32),
            Arg::I32(dir as i32),
            Arg::I32(epi as i32),
            Arg::I32(width as i32),
            Arg::I32(kern),
            Arg::I32(key),
            Arg::I32(maps(ops)),
            Arg::I32(g.dv as i32),
        ];
        let name = if w == Widths::Fe { "la_out_fe" } else { "la_out_ef" };
        let cfg = Cfg { grid: g.nch as u32, grid_y: g.n as u32, block: THREADS };
        self.launch_smem(pl.file, name, cfg, pl.out_smem(w), &args)
    }

    /// The forward: `y` in the input dtype; a carried `state` (causal only) is read and updated.
    /// With `save` (no state) it also returns what the backward reuses: `[Phi, Psi, V', S, den]`.
    pub(super) fn ela_fc_forward(
        &self,
        pl: &Plan,
        [q, k, v]: [&CudaStorage; 3],
        dims: &ElaDims,
        p: &ElaParams,
        state: Option<&mut ElaStateBufs<CudaStorage>>,
        save: bool,
    ) -> Result<(CudaStorage, Option<Vec<CudaStorage>>)> {
        let (d, dv, f) = (dims.d, dims.dv, p.kernel.feature_size(dims.d));
        let g = Geo::new(pl, dims);
        let y = self.alloc(q.dtype(), g.n * g.t * dv)?;
        if g.n == 0 || g.t == 0 {
            return Ok((y, None));
        }
        debug_assert!(p.causal || state.is_none(), "ela_forward: a carried state is causal (ElaParams::validate)");
        let raw = Self::ela_fc_raw(pl, [q, k, v]);
        let mats = self.ela_fc_operands(pl, g, [q, k, v], d, dv, p.kernel, raw)?;
        let ops = Self::ela_fc_ops(mats.as_ref().map(|m| &m[..]), [q, k, v]);
        // A carried (S, z) travels as one f32 [S | z] block of the padded widths.
        let carried = match &state {
            Some(st) => {
                debug_assert!(st.s.dtype() == DType::F32 && st.s.len() == g.n * f * dv, "ela: state for {dims:?}");
                let size = g.n * pl.f * pl.e;
                let (init, fin) = (self.alloc(DType::F32, size)?, self.alloc(DType::F32, size)?);
                self.ela_gc_state(st, &init, g.n, f, pl.f, dv, pl.e, true)?;
                Some((init, fin))
            }
            None => None,
        };
        let (init, fin) = carried.as_ref().map_or((0, 0), |(i, f)| (i.ptr(), f.ptr()));
        let slots = self.ela_fc_scan(pl, g, ops[1], ops[2], init, fin, false)?;
        let dir = if p.causal { Dir::Causal } else { Dir::All };
        let den = if save && state.is_none() { Some(self.alloc(DType::F32, g.n * g.t)?) } else { None };
        let den_ptr = den.as_ref().map_or(0, |x| x.ptr());
        self.ela_fc_out(pl, g, Widths::Fe, ops, &slots, y.ptr(), [0, 0], den_ptr, dir, (Epilogue::Y, None), dv)?;
        if let (Some(st), Some((_, fin))) = (state, &carried) {
            self.ela_gc_state(st, fin, g.n, f, pl.f, dv, pl.e, false)?;
        }
        let Some(den) = den else { return Ok((y, None)) };
        let [phi, psi, vaug] = match mats {
            Some(m) => m,
            // (Read where they lie: nothing to keep but empty buffers in their places.)
            None => [self.alloc(pl.mt, 0)?, self.alloc(pl.mt, 0)?, self.alloc(pl.mt, 0)?],
        };
        Ok((y, Some(vec![phi, psi, vaug, slots, den])))
    }

    /// Whether this call reads q, k, v where they lie ([`Plan::raw`], not [`with_la_rows`], and
    /// rows whose 16-byte vectors are aligned: a view may start anywhere).
    fn ela_fc_raw(pl: &Plan, inputs: [&CudaStorage; 3]) -> bool {
        pl.raw && !LA_ROWS.with(|c| c.get()) && inputs.iter().all(|x| x.ptr().is_multiple_of(16))
    }

    /// `Phi`, `Psi` and `[v | 1]` as operand rows, or none when they are read where they lie.
    #[allow(clippy::too_many_arguments)]
    fn ela_fc_operands(
        &self,
        pl: &Plan,
        g: Geo,
        [q, k, v]: [&CudaStorage; 3],
        d: usize,
        dv: usize,
        kernel: ElaKernel,
        raw: bool,
    ) -> Result<Option<[CudaStorage; 3]>> {
        if raw {
            return Ok(None);
        }
        let phi = self.ela_fc_features(pl, g, q, d, kernel, false)?;
        let psi = self.ela_fc_features(pl, g, k, d, kernel, true)?;
        let vaug = self.ela_fc_augment(pl, g, v, dv)?;
        Ok(Some([phi, psi, vaug]))
    }

    /// The operands `Phi`, `Psi`, `[v | 1]`: the rows in `mats`, or (none) q, k, v mapped as they
    /// load.
    fn ela_fc_ops<'a>(mats: Option<&'a [CudaStorage]>, [q, k, v]: [&'a CudaStorage; 3]) -> [Op<'a>; 3] {
        match mats {
            Some([phi, psi, vaug, ..]) => [Op::Rows(phi), Op::Rows(psi), Op::Rows(vaug)],
            _ => [Op::Feat(q), Op::Feat(k), Op::Aug(v)],
        }
    }

    /// The sizes of the buffers a saving forward keeps (see [`Cuda::ela_fc_forward`]; `raw`: the
    /// operands were read where they lie, and their places hold empty buffers).
    fn ela_fc_saved_lens(pl: &Plan, g: Geo, raw: bool) -> [usize; 5] {
        let rows = if raw { 0 } else { g.n * g.tp };
        [rows * pl.f, rows * pl.f, rows * pl.e, g.n * (g.nch + 1) * pl.f * pl.e, g.n * g.t]
    }

    /// The backward from an empty state: `(dq, dk, dv)` in the input dtype. With `saved` (what a
    /// saving forward of the same call kept) the operands, the forward state and the denominators
    /// are reused; without, they are recomputed.
    pub(super) fn ela_fc_backward(
        &self,
        pl: &Plan,
        [q, k, v, y, dy]: [&CudaStorage; 5],
        dims: &ElaDims,
        p: &ElaParams,
        saved: Option<&[CudaStorage]>,
    ) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
        let (d, dv, x) = (dims.d, dims.dv, q.dtype());
        let g = Geo::new(pl, dims);
        let (dq, dk, dvo) = (self.alloc(x, q.len())?, self.alloc(x, k.len())?, self.alloc(x, v.len())?);
        if g.n == 0 || g.t == 0 {
            return Ok((dq, dk, dvo));
        }
        let (fwd, bwd) = if p.causal { (Dir::Causal, Dir::AntiCausal) } else { (Dir::All, Dir::All) };
        let gg = self.alloc(pl.mt, g.n * g.tp * pl.e)?;
        let raw = Self::ela_fc_raw(pl, [q, k, v]);
        let recomputed;
        let ([phi, psi, vaug], s) = match saved {
            Some(bufs) => {
                let want = Self::ela_fc_saved_lens(pl, g, raw);
                let have: Vec<usize> = bufs.iter().map(|b| b.len()).collect();
                if have != want || bufs[..4].iter().any(|b| b.dtype() != pl.mt) {
                    return Err(super::saved_mismatch(&have, &want, format!("{:?} operands", pl.mt)));
                }
                // G from the kept denominators.
                let args = [
                    Arg::Ptr(y.ptr()),
                    Arg::Ptr(dy.ptr()),
                    Arg::Ptr(bufs[4].ptr()),
                    Arg::Ptr(gg.ptr()),
                    Arg::n(g.t),
                    Arg::I32(g.nch as i32),
                    Arg::I32(dv as i32),
                ];
                self.launch(pl.file, "la_grad", g.rows_cfg(g.tp), &args)?;
                (Self::ela_fc_ops((!raw).then_some(&bufs[..3]), [q, k, v]), &bufs[3])
            }
            None => {
                let made = self.ela_fc_operands(pl, g, [q, k, v], d, dv, p.kernel, raw)?;
                let ops = Self::ela_fc_ops(made.as_ref().map(|m| &m[..]), [q, k, v]);
                let s = self.ela_fc_scan(pl, g, ops[1], ops[2], 0, 0, false)?;
                // The forward's output pass again, its epilogue turning den into G.
                let aux = [y.ptr(), dy.ptr()];
                self.ela_fc_out(pl, g, Widths::Fe, ops, &s, gg.ptr(), aux, 0, fwd, (Epilogue::G, None), dv)?;
                recomputed = (made, s);
                (Self::ela_fc_ops(recomputed.0.as_ref().map(|m| &m[..]), [q, k, v]), &recomputed.1)
            }
        };
        let gr = Op::Rows(&gg);
        // R = sum over later chunks of Phi^T G (global calls: the total, slot nch, either way).
        let r = self.ela_fc_scan(pl, g, phi, gr, 0, 0, p.causal)?;
        // dPhi, dPsi straight into dq, dk (their epilogue applies the feature maps' VJPs).
        let (kq, kk) = ((Epilogue::Vjp, Some((p.kernel, false))), (Epilogue::Vjp, Some((p.kernel, true))));
        self.ela_fc_out(pl, g, Widths::Ef, [gr, vaug, psi], s, dq.ptr(), [q.ptr(), 0], 0, fwd, kq, d)?;
        self.ela_fc_out(pl, g, Widths::Ef, [vaug, gr, phi], &r, dk.ptr(), [k.ptr(), 0], 0, bwd, kk, d)?;
        let take = (Epilogue::Take, None);
        self.ela_fc_out(pl, g, Widths::Fe, [psi, phi, gr], &r, dvo.ptr(), [0, 0], 0, bwd, take, dv)?;
        Ok((dq, dk, dvo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The opt-in shared memory of an H100/H200 block (227 KiB).
    const HOPPER: u32 = 232_448;

    fn dims(t: usize, d: usize, dv: usize) -> ElaDims {
        ElaDims { batch: 8, heads: 16, t, d, dv }
    }

    #[test]
    fn bf16_operands_for_elu_plus_one_with_bf16_inputs_and_signed_ones_on_request() {
        let tc = |k, dt| plan_for(k, dt, &dims(4096, 64, 64), HOPPER, false).map(|p| p.mt);
        assert_eq!(tc(ElaKernel::EluPlusOne, DType::BF16), Some(DType::BF16));
        for dt in [DType::F16, DType::F32] {
            assert_eq!(tc(ElaKernel::EluPlusOne, dt), Some(DType::F32), "{dt:?}");
        }
        for k in [ElaKernel::SumSqEuclid, ElaKernel::SubSqEuclid, ElaKernel::Blueprint, ElaKernel::Identity] {
            assert_eq!(tc(k, DType::BF16), Some(DType::F32), "{k}");
        }
        assert!(tc(ElaKernel::HadamardExp, DType::BF16).is_none(), "Hadamard Exp has its own kernels");
        // The opt-in: bf16 operands for the signed kernels' bf16 inputs, never for f16 or f32.
        let tc_signed = |k, dt| plan_for(k, dt, &dims(4096, 64, 64), HOPPER, true).map(|p| (p.mt, p.f, p.c));
        for k in [ElaKernel::SumSqEuclid, ElaKernel::SubSqEuclid, ElaKernel::Blueprint, ElaKernel::Identity] {
            let f = pad16(k.feature_size(64));
            assert_eq!(tc_signed(k, DType::BF16), Some((DType::BF16, f, 64)), "{k}");
            for dt in [DType::F16, DType::F32] {
                assert_eq!(tc_signed(k, dt).map(|p| p.0), Some(DType::F32), "{k} {dt:?}");
            }
        }
        assert!(tc(ElaKernel::Identity, DType::F64).is_none(), "f64 keeps the scan");
    }

    #[test]
    fn raw_operands_only_from_modules_compiled_to_read_them() {
        // elu+1 with bf16 inputs reads q, k, v where they lie when its rows are whole 16-byte
        // vectors; its module must then carry that staging (LA_RAW), whatever the widths.
        // Identity's bf16 operands (the signed opt-in) take rows: only elu+1 is mapped as it loads.
        for (d, dv) in [(64, 64), (16, 128), (32, 40), (128, 128), (256, 256), (64, 5), (24, 64)] {
            for (kernel, dt, signed) in [
                (ElaKernel::EluPlusOne, DType::BF16, false),
                (ElaKernel::Identity, DType::BF16, false),
                (ElaKernel::Identity, DType::BF16, true),
            ] {
                // (Identity's f32 operands at 256 do not fit: the cuBLAS form, no plan.)
                let Some(p) = plan_for(kernel, dt, &dims(100, d, dv), HOPPER, signed) else {
                    assert!(kernel == ElaKernel::Identity && d == 256, "{kernel} {d}x{dv}: no plan");
                    continue;
                };
                let KernelFile::ElaLa { tc, f, e, .. } = p.file else { panic!("{:?}", p.file) };
                let whole = d % 16 == 0 && dv % 8 == 0;
                assert_eq!(tc, kernel == ElaKernel::EluPlusOne || signed, "{kernel} {d}x{dv}");
                assert_eq!(p.raw, tc && whole && kernel == ElaKernel::EluPlusOne, "{kernel} {d}x{dv}");
                assert!(!p.raw || crate::kernels::la_raw_code(tc, f, e), "{kernel} {d}x{dv}");
            }
        }
    }

    #[test]
    fn widths_pad_to_16_and_chunks_follow_the_operand_type() {
        // sum-sq: F = D + 2 = 66 -> 80, [v | 1] = 65 -> 80; f32 operands wider than 64: C = 32.
        let p = plan_for(ElaKernel::SumSqEuclid, DType::F32, &dims(100, 64, 64), HOPPER, false).unwrap();
        assert_eq!((p.f, p.e, p.c), (80, 80, 32));
        let p = plan_for(ElaKernel::EluPlusOne, DType::BF16, &dims(100, 64, 5), HOPPER, false).unwrap();
        assert_eq!((p.f, p.e, p.c), (64, 16, 64));
        assert_eq!(p.file, KernelFile::ElaLa { dt: ElaDt::BF16, tc: true, f: 64, e: 16 });
    }

    #[test]
    fn heads_too_wide_for_shared_memory_take_the_cublas_form() {
        // The largest D = Dv whose tiles fit on an H100/H200 (docs/ela.md): 190 with f32
        // operands, 256 with bf16 ones (32-row chunks beyond 144-wide tiles).
        let fits = |k, dt, d| plan_for(k, dt, &dims(64, d, d), HOPPER, false).is_some();
        assert!(fits(ElaKernel::SumSqEuclid, DType::F32, 190) && !fits(ElaKernel::SumSqEuclid, DType::F32, 191));
        assert!(fits(ElaKernel::EluPlusOne, DType::BF16, 256) && !fits(ElaKernel::EluPlusOne, DType::BF16, 257));
        assert!(!fits(ElaKernel::Identity, DType::F32, 256));
        // A GPU with less shared memory (99 KiB, sm_86) takes narrower heads only.
        assert!(plan_for(ElaKernel::SumSqEuclid, DType::F32, &dims(64, 128, 128), 101_376, false).is_none());
        assert!(plan_for(ElaKernel::SumSqEuclid, DType::F32, &dims(64, 64, 64), 101_376, false).is_some());
    }

    #[test]
    fn the_scan_with_fewer_waves_wins() {
        use ScanKind::{Half, Narrow};
        // B8 H16 sum-sq f32, D = 64 (E = 80) on 132 multiprocessors: 5 narrow blocks a sequence
        // at 4 a multiprocessor (640 of 528: two waves) against 2 half ones at 3 (one wave).
        assert_eq!(fewest_waves(&[(Narrow, 128 * 5, 4 * 132), (Half, 128 * 2, 3 * 132)]), Some(Half));
        // Few sequences: one wave either way, and the narrow blocks' shorter step wins the tie.
        assert_eq!(fewest_waves(&[(Narrow, 16 * 5, 4 * 132), (Half, 16 * 2, 3 * 132)]), Some(Narrow));
        // A kernel that no multiprocessor can hold is never picked; nothing at all: none.
        assert_eq!(fewest_waves(&[(Narrow, 10, 0), (Half, 4_000, 1)]), Some(Half));
        assert_eq!(fewest_waves(&[(Half, 4, 0)]), None);
    }

    #[test]
    fn every_row_width_has_a_row_kernel_variant() {
        // The row kernels hold ME (+ 1) elements per lane: inputs up to 32 ME, operand rows up to
        // 32 (ME + 1) = the widest padded feature row of an input that wide.
        for d in 1..=MAX_IN {
            let me = match row_variant(d) {
                "e2" => 2,
                "e4" => 4,
                _ => 8,
            };
            assert!(d <= 32 * me && pad16(d + 2) <= 32 * (me + 1), "d = {d}");
        }
    }
}
