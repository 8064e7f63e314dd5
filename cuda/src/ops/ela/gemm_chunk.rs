//! The chunked form of fused ELA for the feature-map kernels (sum/sub squared Euclidean,
//! blueprint, Identity, elu+1) with f32/f16/bf16 inputs and any head size, built on cuBLAS
//! batched GEMMs (`kernels/ela/gemm_chunk.cu` has the small kernels around them): the path of
//! heads too wide for the fused kernels of `feature_chunk.rs` (e.g. `D = 256`), and of every call
//! with `ELA_CUDA_GEMM_CHUNK` set. The per-token scan of `recurrent.rs` stays the reference and
//! the path of f64 inputs.
//!
//! These kernels need no log-scale units (their features are not exponentials), so the whole
//! computation is one primitive applied four times, unnormalised causal linear attention
//!
//! ```text
//! LA(Q, K, V)_i = sum_{j <= i} (Q_i . K_j) V_j       (anti-causal: j >= i; non-causal: all j)
//! ```
//!
//! which the chunked form computes with GEMMs: per chunk of C rows, `H_c = K_c^T V_c`; an
//! exclusive prefix sum over chunks gives the state `S_c` each chunk starts from; then
//! `O_c = Q_c S_c + mask(Q_c K_c^T) V_c`. Everything is f32 (f16/bf16 inputs are widened when the
//! features are built), products are `CUBLAS_COMPUTE_32F`, so the results agree with the scan to
//! f32 rounding (TF32 only if the user turned it on with `Cuda::set_allow_tf32`).
//!
//! Forward, with `Phi = phi(q)`, `Psi = psi(k)` and the augmented values `V' = [v | 1]`:
//! `[N | den] = LA(Phi, Psi, V')`, `y = N / den` (eq. (L) of docs/ela.md).
//!
//! Backward: with `A_ij = Phi_i . Psi_j` (masked), `y_i = sum_j A_ij v_j / den_i`, the gradient of
//! the loss by `A_ij` is `G_i . V'_j` where `G_i = [dy_i / den_i | -(dy_i . y_i) / den_i]`, so
//!
//! ```text
//! dPhi = LA(G, V', Psi)          dPsi = LA~(V', G, Phi)          dV' = LA~(Psi, Phi, G)
//! ```
//!
//! (`LA~` the anti-causal form), `dv` the first `Dv` columns of `dV'`, and `dq`, `dk` the feature
//! maps' vector-Jacobian products (docs/ela.md, (V2)-(V6)). `den` is recomputed as
//! `LA(Phi, Psi, 1)`. The derivation is in docs/ela.md, "The cuBLAS chunked form".

use ela_core::ela::{ElaDims, ElaKernel, ElaParams, ElaStateBufs};
use ela_core::{DType, Result};

use crate::device::{Arg, Cfg, Cuda};
use crate::kernels::KernelFile::Ela as ELA;
use crate::ops::dt;
use crate::ops::matmul::Operand;
use crate::storage::CudaStorage;

/// Rows per chunk: the intra-chunk products are C x C blocks.
const CHUNK: usize = 64;

/// Row width of an f32 buffer with `cols` columns: a multiple of 4 floats (16 bytes), so every
/// leading dimension meets the alignment of cuBLAS's vectorised kernels even for `F = D + 2` or
/// `Dv + 1` columns (measured within 8 % of unpadded rows at T = 16k: docs/benchmarks.md). The
/// extra columns are zero.
fn ld(cols: usize) -> usize {
    cols.div_ceil(4) * 4
}

/// Whether this path takes `kernel` with inputs of `dtype`: every kernel but Hadamard Exp (its
/// exponentials need the units of `chunk.rs` or the scan), f32/f16/bf16 inputs (f64 keeps the scan,
/// the exact reference). `ELA_CUDA_SCAN_ONLY` forces the scan, for comparisons.
pub(super) fn applies(kernel: ElaKernel, dtype: DType) -> bool {
    kernel != ElaKernel::HadamardExp
        && matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
        && !super::switches().scan_only
}

/// Which rows a product sums over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    /// `j <= i`.
    Causal,
    /// `j >= i`.
    AntiCausal,
    /// Every row of the sequence.
    All,
}

/// Sizes of one call: `n` sequences of `t` rows, padded to `tp` rows (whole chunks of `c`).
#[derive(Clone, Copy, Debug)]
struct Geo {
    n: usize,
    t: usize,
    tp: usize,
    c: usize,
}

impl Geo {
    fn new(dims: &ElaDims) -> Geo {
        let c = CHUNK.min(dims.t.max(1));
        Geo { n: dims.sequences(), t: dims.t, tp: dims.t.div_ceil(c) * c, c }
    }
    fn chunks(&self) -> usize {
        self.tp / self.c
    }
    fn i64s(&self) -> [Arg; 3] {
        [Arg::n(self.n), Arg::n(self.t), Arg::n(self.tp)]
    }
}

/// A row-major f32 operand `[rows, cols]` per batch entry, rows `ld` apart.
fn op(ptr: u64, ld: usize, batch_stride: usize) -> Operand {
    Operand { ptr, rs: ld, cs: 1, batch_stride }
}

/// The transpose of a row-major `[rows, cols]` buffer (rows `ld` apart), viewed as `[cols, rows]`.
fn op_t(ptr: u64, ld: usize, batch_stride: usize) -> Operand {
    Operand { ptr, rs: 1, cs: ld, batch_stride }
}

impl Cuda {
    /// `LA(q, k, v)` over f32 buffers `[n][tp][fq]`, `[n][tp][fq]`, `[n][tp][e]` (see the module
    /// docs), from `init` (`[n][fq][e]`, causal only) and writing the final state to `fin`. `fq`
    /// and `e` are row widths ([`ld`]): multiples of 4.
    #[allow(clippy::too_many_arguments)]
    fn ela_gc_la(
        &self,
        g: Geo,
        [q, k, v]: [&CudaStorage; 3],
        fq: usize,
        e: usize,
        dir: Dir,
        init: Option<&CudaStorage>,
        fin: Option<&CudaStorage>,
    ) -> Result<CudaStorage> {
        // Row-major f32 `C = A B + beta C` for `batch` blocks (sizes m, n, k).
        let mm = |mnkb, a, b, c, beta| self.gemm(DType::F32, DType::F32, mnkb, a, b, c, beta);
        let out = self.alloc(DType::F32, g.n * g.tp * e)?;
        if dir == Dir::All {
            // One state per sequence: H = K^T V, O = Q H.
            let h = self.alloc(DType::F32, g.n * fq * e)?;
            let (kt, vv) = (op_t(k.ptr(), fq, g.tp * fq), op(v.ptr(), e, g.tp * e));
            mm((fq, e, g.tp, g.n), kt, vv, (h.ptr(), e, fq * e), 0.0)?;
            let (qq, hh) = (op(q.ptr(), fq, g.tp * fq), op(h.ptr(), e, fq * e));
            mm((g.tp, e, fq, g.n), qq, hh, (out.ptr(), e, g.tp * e), 0.0)?;
            return Ok(out);
        }
        let (c, nb) = (g.c, g.n * g.chunks());
        let (qc, kct, vc) = (op(q.ptr(), fq, c * fq), op_t(k.ptr(), fq, c * fq), op(v.ptr(), e, c * e));
        // The masked blocks mask(Q_c K_c^T).
        let a = self.alloc(DType::F32, nb * c * c)?;
        mm((c, c, fq, nb), qc, kct, (a.ptr(), c, c * c), 0.0)?;
        let mask = [Arg::Ptr(a.ptr()), Arg::n(nb), Arg::I32(c as i32), Arg::I32((dir == Dir::AntiCausal) as i32)];
        self.launch(ELA, "ela_gc_mask", Cfg::elems(nb * c * c), &mask)?;
        let blocks = op(a.ptr(), c, c * c);
        if g.chunks() == 1 && init.is_none() && fin.is_none() {
            // One chunk and no state: the masked block is all there is.
            mm((c, e, c, nb), blocks, vc, (out.ptr(), e, c * e), 0.0)?;
            return Ok(out);
        }
        // H_c = K_c^T V_c for every chunk, then the state each chunk starts from.
        let h = self.alloc(DType::F32, nb * fq * e)?;
        mm((fq, e, c, nb), kct, vc, (h.ptr(), e, fq * e), 0.0)?;
        let ptr = |s: Option<&CudaStorage>| s.map_or(0, |s| s.ptr());
        let scan = [
            Arg::Ptr(h.ptr()),
            Arg::Ptr(ptr(init)),
            Arg::Ptr(ptr(fin)),
            Arg::n(g.n),
            Arg::I32(g.chunks() as i32),
            Arg::n(fq * e),
            Arg::I32((dir == Dir::AntiCausal) as i32),
        ];
        self.launch(ELA, "ela_gc_scan", Cfg::elems(g.n * fq * e), &scan)?;
        // O_c = Q_c S_c + mask(Q_c K_c^T) V_c.
        mm((c, e, fq, nb), qc, op(h.ptr(), e, fq * e), (out.ptr(), e, c * e), 0.0)?;
        mm((c, e, c, nb), blocks, vc, (out.ptr(), e, c * e), 1.0)?;
        Ok(out)
    }

    /// `phi(x)` (`key` false) or `psi(x)` (`key` true) of every row, f32 `[n][tp][ld(F)]`.
    fn ela_gc_features(&self, g: Geo, x: &CudaStorage, d: usize, kernel: ElaKernel, key: bool) -> Result<CudaStorage> {
        let f = kernel.feature_size(d);
        let out = self.alloc(DType::F32, g.n * g.tp * ld(f))?;
        let [n, t, tp] = g.i64s();
        let args = [
            Arg::Ptr(x.ptr()),
            Arg::Ptr(out.ptr()),
            n,
            t,
            tp,
            Arg::I32(d as i32),
            Arg::I32(ld(f) as i32),
            Arg::I32(kernel.code()),
            Arg::I32(key as i32),
        ];
        let cfg = Cfg::rows(g.n * g.tp, d.max(f)).with_max_block(256);
        self.launch_smem(ELA, &format!("ela_gc_feat_{}", dt(x.dtype())), cfg, ((d + 32) * 4) as u32, &args)?;
        Ok(out)
    }

    /// `[v | 1]` of every row, f32 `[n][tp][ld(dv + 1)]`.
    fn ela_gc_augment(&self, g: Geo, v: &CudaStorage, dv: usize) -> Result<CudaStorage> {
        let w = ld(dv + 1);
        let out = self.alloc(DType::F32, g.n * g.tp * w)?;
        let [n, t, tp] = g.i64s();
        let args = [Arg::Ptr(v.ptr()), Arg::Ptr(out.ptr()), n, t, tp, Arg::I32(dv as i32), Arg::I32(w as i32)];
        self.launch(ELA, &format!("ela_gc_aug_{}", dt(v.dtype())), Cfg::elems(g.n * g.tp * w), &args)?;
        Ok(out)
    }

    /// Copies a carried state `(S, z)` into `[S | z]` (`to_aug`; f32 `[n][fp][ep]` with `fp >= f`
    /// rows and `ep > dv` columns, zero past the data) or back.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn ela_gc_state(
        &self,
        st: &ElaStateBufs<CudaStorage>,
        aug: &CudaStorage,
        n: usize,
        f: usize,
        fp: usize,
        dv: usize,
        ep: usize,
        to_aug: bool,
    ) -> Result<()> {
        let args = [
            Arg::Ptr(st.s.ptr()),
            Arg::Ptr(st.z.ptr()),
            Arg::Ptr(aug.ptr()),
            Arg::n(n),
            Arg::I32(f as i32),
            Arg::I32(fp as i32),
            Arg::I32(dv as i32),
            Arg::I32(ep as i32),
            Arg::I32(!to_aug as i32),
        ];
        self.launch(ELA, "ela_gc_state", Cfg::elems(n * fp * ep), &args)
    }

    /// The forward: `y` in the input dtype; a carried `state` (causal only) is read and updated.
    pub(super) fn ela_gc_forward(
        &self,
        [q, k, v]: [&CudaStorage; 3],
        dims: &ElaDims,
        p: &ElaParams,
        state: Option<&mut ElaStateBufs<CudaStorage>>,
    ) -> Result<CudaStorage> {
        let (d, dv, f) = (dims.d, dims.dv, p.kernel.feature_size(dims.d));
        let (fp, ep) = (ld(f), ld(dv + 1));
        let g = Geo::new(dims);
        let y = self.alloc(q.dtype(), g.n * g.t * dv)?;
        if g.n == 0 || g.t == 0 {
            return Ok(y);
        }
        debug_assert!(p.causal || state.is_none(), "ela_forward: a carried state is causal (ElaParams::validate)");
        let phi = self.ela_gc_features(g, q, d, p.kernel, false)?;
        let psi = self.ela_gc_features(g, k, d, p.kernel, true)?;
        let vaug = self.ela_gc_augment(g, v, dv)?;
        let carried = match &state {
            Some(st) => {
                debug_assert!(st.s.dtype() == DType::F32 && st.s.len() == g.n * f * dv, "ela: state for {dims:?}");
                let (init, fin) = (self.alloc(DType::F32, g.n * fp * ep)?, self.alloc(DType::F32, g.n * fp * ep)?);
                self.ela_gc_state(st, &init, g.n, f, fp, dv, ep, true)?;
                Some((init, fin))
            }
            None => None,
        };
        let dir = if p.causal { Dir::Causal } else { Dir::All };
        let (init, fin) = (carried.as_ref().map(|c| &c.0), carried.as_ref().map(|c| &c.1));
        let o = self.ela_gc_la(g, [&phi, &psi, &vaug], fp, ep, dir, init, fin)?;
        if let (Some(st), Some(fin)) = (state, fin) {
            self.ela_gc_state(st, fin, g.n, f, fp, dv, ep, false)?;
        }
        let [n, t, tp] = g.i64s();
        let args = [Arg::Ptr(o.ptr()), Arg::Ptr(y.ptr()), n, t, tp, Arg::I32(dv as i32), Arg::I32(ep as i32)];
        self.launch(ELA, &format!("ela_gc_out_{}", dt(q.dtype())), Cfg::elems(g.n * g.t * dv), &args)?;
        Ok(y)
    }

    /// The backward from an empty state: `(dq, dk, dv)` in the input dtype.
    pub(super) fn ela_gc_backward(
        &self,
        [q, k, v, y, dy]: [&CudaStorage; 5],
        dims: &ElaDims,
        p: &ElaParams,
    ) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
        let (d, dv, f, x) = (dims.d, dims.dv, p.kernel.feature_size(dims.d), q.dtype());
        let (fp, ep) = (ld(f), ld(dv + 1));
        let g = Geo::new(dims);
        let (dq, dk, dvo) = (self.alloc(x, q.len())?, self.alloc(x, k.len())?, self.alloc(x, v.len())?);
        if g.n == 0 || g.t == 0 {
            return Ok((dq, dk, dvo));
        }
        let (fwd, bwd) = if p.causal { (Dir::Causal, Dir::AntiCausal) } else { (Dir::All, Dir::All) };
        let phi = self.ela_gc_features(g, q, d, p.kernel, false)?;
        let psi = self.ela_gc_features(g, k, d, p.kernel, true)?;
        let vaug = self.ela_gc_augment(g, v, dv)?;
        // den = LA(Phi, Psi, 1), with 4 columns of ones for aligned rows (column 0 is read).
        let ones = self.full_impl(g.n * g.tp * 4, 1.0, DType::F32)?;
        let den = self.ela_gc_la(g, [&phi, &psi, &ones], fp, 4, fwd, None, None)?;
        // G = [dy / den | -(dy . y) / den], one block per row.
        let gg = self.alloc(DType::F32, g.n * g.tp * ep)?;
        let [n, t, tp] = g.i64s();
        let args = [
            Arg::Ptr(y.ptr()),
            Arg::Ptr(dy.ptr()),
            Arg::Ptr(den.ptr()),
            Arg::I32(4),
            Arg::Ptr(gg.ptr()),
            n,
            t,
            tp,
            Arg::I32(dv as i32),
            Arg::I32(ep as i32),
        ];
        let cfg = Cfg::rows(g.n * g.tp, dv).with_max_block(256);
        self.launch(ELA, &format!("ela_gc_grad_{}", dt(x)), cfg, &args)?;
        let dphi = self.ela_gc_la(g, [&gg, &vaug, &psi], ep, fp, fwd, None, None)?;
        let dpsi = self.ela_gc_la(g, [&vaug, &gg, &phi], ep, fp, bwd, None, None)?;
        let dvaug = self.ela_gc_la(g, [&psi, &phi, &gg], fp, ep, bwd, None, None)?;
        let take = [Arg::Ptr(dvaug.ptr()), Arg::Ptr(dvo.ptr()), n, t, tp, Arg::I32(ep as i32), Arg::I32(dv as i32)];
        self.launch(ELA, &format!("ela_gc_take_{}", dt(x)), Cfg::elems(g.n * g.t * dv), &take)?;
        for (src, gf, out, key) in [(q, &dphi, &dq, false), (k, &dpsi, &dk, true)] {
            let args = [
                Arg::Ptr(src.ptr()),
                Arg::Ptr(gf.ptr()),
                Arg::Ptr(out.ptr()),
                n,
                t,
                tp,
                Arg::I32(d as i32),
                Arg::I32(fp as i32),
                Arg::I32(p.kernel.code()),
                Arg::I32(key as i32),
            ];
            let cfg = Cfg::rows(g.n * g.t, d).with_max_block(256);
            self.launch_smem(ELA, &format!("ela_gc_vjp_{}", dt(x)), cfg, ((d + 32) * 4) as u32, &args)?;
        }
        Ok((dq, dk, dvo))
    }
}
