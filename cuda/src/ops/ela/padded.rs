//! Hadamard Exp at the head sizes the chunked kernels are not compiled for: any `d`, `dv` up to
//! 128, or 256 with bf16 inputs (e.g. the 32-wide heads of a 128-wide model with 4 heads) runs
//! the chunked kernels of `chunk.rs` at the next compiled size (64, 128 or 256), on copies of its inputs padded with extra
//! features and value columns that provably contribute nothing; the outputs are cut back. Without
//! this, such heads would run the per-token scan, whose sequential loop over the tokens is orders
//! of magnitude slower on long sequences. The CPU runs every head size natively.
//!
//! Why the padding changes nothing (docs/ela.md, "The chunked form at other head sizes"):
//!
//! - an extra feature `f` gets `q_f = k_f = NEG`, a finite number so negative that every
//!   exponential the kernels form with it underflows to exactly 0 in f32
//!   (`exp(q_f - mq_i)`, `exp(k_f - mk_j)`, `exp(q_f + m_f - u_i)`), while the per-feature
//!   log-scale `m_f = NEG` stays finite, so its rescaling `exp(m_f - m'_f)` is `exp(0)`, never
//!   `exp(-inf + inf)`. The row maxima `mq_i`, `mk_j` and `u_i` are maxima over features
//!   that include the real ones, so an extra feature never attains them (for inputs above
//!   `NEG`, i.e. every input of f16, and in f32 / bf16 any input above -1e30);
//! - extra value columns are 0 in `v` (and in `y`, `dy` for the backward), so they add nothing to
//!   any sum over columns, and their outputs (0) are dropped;
//! - extra features' gradients (0) are dropped.
//!
//! The cost is the copies and the wider products (a 32-wide head does the work of a 64-wide one),
//! still far below the scan. A carried state (prefill) is padded the same way — `S`, `z` with 0,
//! `m` with `NEG` — and its real part copied back after the call.

use ela_core::ela::{ElaDims, ElaKernel, ElaStateBufs};
use ela_core::{DType, Layout, Result};

use super::chunk::{self, Variant};
use crate::device::Cuda;
use crate::storage::CudaStorage;

/// The value of extra query/key features: finite, and far enough below any input that `exp` of
/// it minus a real maximum underflows to 0 (f16 inputs cannot hold -1e30: its most negative
/// finite value serves, since exp(-65504) is 0 in f32 too).
fn neg(dtype: DType) -> f64 {
    if dtype == DType::F16 {
        -65504.0
    } else {
        -1e30
    }
}

/// A call run at padded head sizes: the compiled variant and the padded dims.
pub(super) struct Padded {
    cv: Variant,
    dims: ElaDims,
}

/// The padded plan of a Hadamard Exp call the chunked kernels do not take as it is: head sizes
/// rounded up to the next compiled one (64, 128, and 256 for bf16 on GPUs with the shared memory
/// for it), for f32 and bf16 inputs (f16 inputs keep the scan: the chunked kernels round their
/// operands to bf16, coarser than f16 itself).
pub(super) fn plan(dev: &Cuda, kernel: ElaKernel, dtype: DType, dims: &ElaDims) -> Option<Padded> {
    // (Hadamard Exp only, whose kernels take a carried state too: `carried` changes nothing.)
    let padded = padded_dims(kernel, dtype, dims, |d| chunk::variant(dev, kernel, dtype, d, true).is_some())?;
    Some(Padded { cv: chunk::variant(dev, kernel, dtype, &padded, true)?, dims: padded })
}

/// The padded sizes of [`plan`], given which sizes the chunked kernels take (`compiled`).
fn padded_dims(
    kernel: ElaKernel,
    dtype: DType,
    dims: &ElaDims,
    compiled: impl Fn(&ElaDims) -> bool,
) -> Option<ElaDims> {
    if kernel != ElaKernel::HadamardExp || !matches!(dtype, DType::F32 | DType::BF16) || compiled(dims) {
        return None;
    }
    let up = |x: usize| match x {
        1..=64 => Some(64),
        65..=128 => Some(128),
        129..=256 => Some(256),
        _ => None,
    };
    let padded = ElaDims { d: up(dims.d)?, dv: up(dims.dv)?, ..*dims };
    compiled(&padded).then_some(padded)
}

impl Cuda {
    /// Rows of `w` columns widened to `wp` columns filled with `value`; `None` when `w == wp`
    /// (use the input itself).
    fn widen_rows(&self, x: &CudaStorage, rows: usize, w: usize, wp: usize, value: f64) -> Result<Option<CudaStorage>> {
        if w == wp {
            return Ok(None);
        }
        self.pad_impl(x, &Layout::contiguous([rows, w]), &[(0, 0), (0, wp - w)], value).map(Some)
    }

    /// The first `w` of `wp` columns of every row, contiguous.
    fn cut_rows(&self, x: CudaStorage, rows: usize, wp: usize, w: usize) -> Result<CudaStorage> {
        if w == wp {
            return Ok(x);
        }
        let out = self.alloc(x.dtype(), rows * w)?;
        let src = Layout::from_parts([rows, w].into(), vec![wp, 1], 0);
        self.copy_strided(&out, &Layout::contiguous([rows, w]), &x, &src)?;
        Ok(out)
    }

    /// Padded q, k, v (`[rows, d]`, `[rows, d]`, `[rows, dv]` to the padded widths; `None` where
    /// a width is already the padded one).
    fn padded_qkv(
        &self,
        pp: &Padded,
        [q, k, v]: [&CudaStorage; 3],
        dims: &ElaDims,
    ) -> Result<[Option<CudaStorage>; 3]> {
        let rows = dims.sequences() * dims.t;
        let nv = neg(q.dtype());
        Ok([
            self.widen_rows(q, rows, dims.d, pp.dims.d, nv)?,
            self.widen_rows(k, rows, dims.d, pp.dims.d, nv)?,
            self.widen_rows(v, rows, dims.dv, pp.dims.dv, 0.0)?,
        ])
    }

    /// Forward at padded sizes, with a carried state (padded, then its real part copied back) and
    /// optionally the buffers the backward reuses (they belong to the padded call).
    pub(super) fn ela_padded_forward(
        &self,
        pp: &Padded,
        qkv: [&CudaStorage; 3],
        dims: &ElaDims,
        causal: bool,
        state: Option<&mut ElaStateBufs<CudaStorage>>,
        save: bool,
    ) -> Result<(CudaStorage, Option<Vec<CudaStorage>>)> {
        let [qp, kp, vp] = self.padded_qkv(pp, qkv, dims)?;
        let [qp, kp, vp] = [or(&qp, qkv[0]), or(&kp, qkv[1]), or(&vp, qkv[2])];
        let (n, rows) = (dims.sequences(), dims.sequences() * dims.t);
        let (f, fp, dv, dvp) = (dims.d, pp.dims.d, dims.dv, pp.dims.dv);
        let (yp, saved) = match state {
            None => {
                let io = chunk::Io::packed(&pp.dims, [qp, kp, vp], None);
                self.ela_chunk_forward(&pp.cv, &io, qp.dtype(), &pp.dims, causal, None, save)?
            }
            Some(st) => {
                let Some(m) = st.m.as_ref() else {
                    return Err(ela_core::Error::Backend {
                        backend: "cuda",
                        op: "ela_forward",
                        msg: "a Hadamard Exp state without log-scales (make it with FusedElaState::new)".into(),
                    });
                };
                // Always fresh copies (even where a width needs no padding): the chunked forward
                // writes the final state into these buffers, which are then copied back.
                let pad = |x: &CudaStorage, cols: (usize, usize), value: f64| {
                    let (c, cp) = cols;
                    self.pad_impl(x, &Layout::contiguous([n, f, c]), &[(0, 0), (0, fp - f), (0, cp - c)], value)
                };
                let mut padded = ElaStateBufs {
                    s: pad(&st.s, (dv, dvp), 0.0)?,
                    z: pad(&st.z, (1, 1), 0.0)?,
                    m: Some(pad(m, (1, 1), neg(DType::F32))?),
                };
                let ptrs = [padded.s.ptr(), padded.z.ptr(), padded.m.as_ref().map_or(0, |m| m.ptr())];
                let io = chunk::Io::packed(&pp.dims, [qp, kp, vp], None);
                let out =
                    self.ela_chunk_forward(&pp.cv, &io, qp.dtype(), &pp.dims, causal, Some((&mut padded, ptrs)), save)?;
                // The real features and columns back into the caller's buffers.
                let s_view = Layout::from_parts([n, f, dv].into(), vec![fp * dvp, dvp, 1], 0);
                self.copy_strided(&st.s, &Layout::contiguous([n, f, dv]), &padded.s, &s_view)?;
                let row_view = Layout::from_parts([n, f].into(), vec![fp, 1], 0);
                self.copy_strided(&st.z, &Layout::contiguous([n, f]), &padded.z, &row_view)?;
                if let (Some(m), Some(pm)) = (&st.m, &padded.m) {
                    self.copy_strided(m, &Layout::contiguous([n, f]), pm, &row_view)?;
                }
                out
            }
        };
        Ok((self.cut_rows(yp, rows, dvp, dv)?, saved))
    }

    /// Backward at padded sizes (`saved`: what the padded saving forward of the same call kept).
    pub(super) fn ela_padded_backward(
        &self,
        pp: &Padded,
        [q, k, v, y, dy]: [&CudaStorage; 5],
        dims: &ElaDims,
        causal: bool,
        saved: Option<&[CudaStorage]>,
    ) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
        let [qp, kp, vp] = self.padded_qkv(pp, [q, k, v], dims)?;
        let rows = dims.sequences() * dims.t;
        let (dv, dvp) = (dims.dv, pp.dims.dv);
        let (yp, dyp) = (self.widen_rows(y, rows, dv, dvp, 0.0)?, self.widen_rows(dy, rows, dv, dvp, 0.0)?);
        let io = chunk::Io::packed(&pp.dims, [or(&qp, q), or(&kp, k), or(&vp, v)], Some([or(&yp, y), or(&dyp, dy)]));
        let (dq, dk, dvo) = self.ela_chunk_backward(&pp.cv, &io, q.dtype(), &pp.dims, causal, saved, None)?;
        Ok((
            self.cut_rows(dq, rows, pp.dims.d, dims.d)?,
            self.cut_rows(dk, rows, pp.dims.d, dims.d)?,
            self.cut_rows(dvo, rows, dvp, dv)?,
        ))
    }
}

/// The padded copy where there is one, else the input itself.
fn or<'a>(padded: &'a Option<CudaStorage>, x: &'a CudaStorage) -> &'a CudaStorage {
    padded.as_ref().unwrap_or(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(d: usize, dv: usize) -> ElaDims {
        ElaDims { batch: 2, heads: 4, t: 300, d, dv }
    }

    #[test]
    fn small_and_odd_heads_pad_to_the_compiled_sizes() {
        let k = ElaKernel::HadamardExp;
        let plan =
            |dtype, d, dv| padded_dims(k, dtype, &dims(d, dv), |x| chunk::variant_for(k, dtype, x, true).is_some());
        for (dtype, d, dv, want) in [
            (DType::BF16, 32, 32, (64, 64)),
            (DType::BF16, 8, 5, (64, 64)),
            (DType::F32, 96, 32, (128, 64)),
            (DType::F32, 64, 100, (64, 128)),
            (DType::BF16, 200, 256, (256, 256)),
            (DType::BF16, 64, 130, (64, 256)),
        ] {
            let p = plan(dtype, d, dv).expect("padded");
            assert_eq!((p.d, p.dv), want, "{dtype:?} d {d} dv {dv}");
        }
        // Compiled sizes run as they are; f32 beyond 128, f16/f64 inputs and other kernels do not
        // pad.
        assert!(plan(DType::F32, 64, 128).is_none());
        assert!(plan(DType::BF16, 256, 256).is_none());
        assert!(plan(DType::F32, 200, 200).is_none());
        assert!(plan(DType::BF16, 300, 64).is_none());
        assert!(plan(DType::F16, 32, 32).is_none());
        assert!(plan(DType::F64, 32, 32).is_none());
        assert!(padded_dims(ElaKernel::EluPlusOne, DType::F32, &dims(32, 32), |_| true).is_none());
    }
}
