//! Fused Exact Linear Attention at the tensor level: argument checks around the backend's
//! `ela_forward` / `ela_backward` / `ela_step` kernels, and [`FusedElaState`], the recurrent state
//! of those kernels, used for decoding (`ela_nn::ela::ElaState` wraps it for any kernel). This is the only place ELA arguments are checked (shapes by
//! [`ElaDims::from_shapes`], options by [`ElaParams::validate`], device, dtype and state here):
//! the backends, `ela-autograd` and `ela-nn` trust what arrives through it. The math is in
//! `docs/ela.md`; the autograd node is `Var::ela` (autograd/src/ops/ela.rs), the user-kernel path
//! `ela_nn::ela`.

use std::sync::Arc;

use super::Tensor;
use crate::backend::Backend;
use crate::dtype::DType;
use crate::ela::{ElaArg, ElaDims, ElaGrads, ElaKernel, ElaParams, ElaRows, ElaSaved, ElaStateBufs, DEFAULT_CHUNK};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::shape::Shape;

/// Checks shared by the fused ops; returns the sizes of the call.
fn check_qkv<B: Backend>(
    op: &'static str,
    q: &Tensor<B>,
    k: &Tensor<B>,
    v: &Tensor<B>,
    p: &ElaParams,
) -> Result<ElaDims> {
    for t in [k, v] {
        q.check_same_device(t, op)?;
        q.check_same_dtype(t, op)?;
    }
    q.check_float(op)?;
    let dims = Tensor::ela_dims(op, q, k, v)?;
    p.validate(op, &dims, false)?;
    Ok(dims)
}

impl<B: Backend> Tensor<B> {
    /// Check the shapes of an ELA call, `q`, `k` `[batch, heads, t, d]` and `v`
    /// `[batch, heads, t, dv]`, and return its sizes (shared by every ELA form).
    pub fn ela_dims(op: &'static str, q: &Tensor<B>, k: &Tensor<B>, v: &Tensor<B>) -> Result<ElaDims> {
        ElaDims::from_shapes(op, q.shape(), k.shape(), v.shape())
    }
}

/// The rows of `t` if a backend may read it in place ([`Backend::ela_rows_supported`]): a rank-4
/// view whose last axis is contiguous and whose rows start on 16-byte boundaries (the kernels'
/// vector loads), so a transposed view of a `[batch, t, heads, d]` product qualifies.
fn readable_rows<B: Backend>(t: &Tensor<B>) -> Option<ElaRows> {
    let r = ElaRows::of_layout(t.layout())?;
    let size = t.dtype().size_in_bytes();
    [r.offset, r.batch, r.head, r.row].iter().all(|x| (x * size).is_multiple_of(16)).then_some(r)
}

/// The length of the buffer `q`, `k`, `v` are disjoint views of, when they are laid out like the
/// heads of one fused `[batch, t, 3, heads, d]` product (in any order of the three): one buffer,
/// one set of strides, the heads of a position side by side (`head == d == dv`), the three
/// blocks of `heads x d` elements of a position apart and within one row stride, positions and
/// batch entries apart. Their gradients can then be written into one buffer laid out like it,
/// which is the fused product's gradient as it stands (the autograd's concatenation of the
/// three is a view of it).
fn fused_operands<B: Backend>(t: [&Tensor<B>; 3], r: [ElaRows; 3], dims: &ElaDims) -> Option<usize> {
    let same_buffer = t.iter().all(|x| Arc::ptr_eq(&x.storage, &t[0].storage));
    let same_strides = r.iter().all(|x| (x.batch, x.head, x.row) == (r[0].batch, r[0].head, r[0].row));
    if !same_buffer || !same_strides || dims.d != dims.dv || (dims.heads > 1 && r[0].head != dims.d) {
        return None;
    }
    let block = dims.heads * dims.d;
    let mut offsets = r.map(|x| x.offset);
    offsets.sort_unstable();
    let apart = offsets.windows(2).all(|p| p[1] - p[0] >= block);
    let span = offsets[2] + block - offsets[0];
    let rows_apart = dims.t <= 1 || r[0].row >= span;
    let batches_apart = dims.batch <= 1 || r[0].batch >= (dims.t.max(1) - 1) * r[0].row + span;
    (apart && rows_apart && batches_apart).then(|| B::storage_len(t[0].storage()))
}

/// An ELA output with what the backend kept for the backward.
type Saving<B> = (Tensor<B>, Option<ElaSaved<<B as Backend>::Storage>>);

/// `t`'s buffer with the rows `rows`.
fn arg<B: Backend>(t: &Tensor<B>, rows: ElaRows) -> ElaArg<'_, B::Storage> {
    ElaArg { storage: t.storage(), rows }
}

impl<B: Backend> Tensor<B> {
    /// The strided forward: `Some` when the backend reads `q` (self), `k`, `v` where they lie.
    /// `y` follows `v`'s order: made `[batch, t, heads, dv]` (and returned as its transposed
    /// view) when `v` is a view of that order, so that merging the heads back costs no copy.
    fn ela_rows_forward(
        &self,
        k: &Self,
        v: &Self,
        dims: &ElaDims,
        params: &ElaParams,
        save: bool,
    ) -> Result<Option<Saving<B>>> {
        let dev = self.device();
        if !dev.ela_rows_supported(self.dtype(), dims, params) {
            return Ok(None);
        }
        let (Some(qr), Some(kr), Some(vr)) = (readable_rows(self), readable_rows(k), readable_rows(v)) else {
            return Ok(None);
        };
        let token = vr.is_token_major();
        let y_rows = if token { ElaRows::token_major(dims, dims.dv) } else { ElaRows::contiguous(dims, dims.dv) };
        let (y, saved) = dev.ela_forward_rows(arg(self, qr), arg(k, kr), arg(v, vr), y_rows, dims, params, save)?;
        let y = if token {
            Self::from_storage(y, [dims.batch, dims.t, dims.heads, dims.dv], dev).transpose(1usize, 2usize)?
        } else {
            Self::from_storage(y, v.shape().clone(), dev)
        };
        Ok(Some((y, saved)))
    }

    /// Fused chunked Exact Linear Attention with `self` as the queries: `q`, `k`:
    /// `[batch, heads, time, d]`, `v`: `[batch, heads, time, dv]` (one float dtype, one device).
    /// Returns `y` `[batch, heads, time, dv]`,
    /// `y_i = sum_j k(q_i,k_j) v_j / sum_j k(q_i,k_j)` over `j <= i` (causal) or all `j`. The
    /// division is exact (no epsilon): for Hadamard Exp the denominator is always positive; for the
    /// signed kernels it can vanish (docs/ela.md#epsilon-policy). For [`ElaKernel::Identity`] `q` and `k`
    /// are the feature vectors `phi(q)`, `psi(k)`.
    ///
    /// Where the backend can ([`Backend::ela_rows_supported`]: CUDA's chunked Hadamard-Exp path),
    /// strided `q`, `k`, `v` (e.g. transposed views of a `[batch, time, heads, d]` product) are
    /// read in place, and `y` is then laid out in `v`'s order; elsewhere they are copied to
    /// contiguous buffers first and `y` is contiguous.
    pub fn ela(&self, k: &Self, v: &Self, params: &ElaParams) -> Result<Self> {
        let dims = check_qkv("ela", self, k, v, params)?;
        if let Some((y, _)) = self.ela_rows_forward(k, v, &dims, params, false)? {
            return Ok(y);
        }
        let (q, k, v) = (self.contiguous()?, k.contiguous()?, v.contiguous()?);
        let y = self.device().ela_forward(q.storage(), k.storage(), v.storage(), &dims, params, None)?;
        Ok(Self::from_storage(y, v.shape().clone(), self.device()))
    }

    /// [`Tensor::ela`] for training: also returns what the backend keeps for
    /// [`Tensor::ela_backward_saved`] (`None` where it keeps nothing, e.g. on the CPU). The CUDA
    /// chunked path keeps its per-chunk states and per-row scales so that the backward does not
    /// recompute the forward: faster, for about one more `k` of memory until the backward.
    pub fn ela_saving(&self, k: &Self, v: &Self, params: &ElaParams) -> Result<(Self, Option<ElaSaved<B::Storage>>)> {
        let dims = check_qkv("ela", self, k, v, params)?;
        if let Some(out) = self.ela_rows_forward(k, v, &dims, params, true)? {
            return Ok(out);
        }
        let (q, k, v) = (self.contiguous()?, k.contiguous()?, v.contiguous()?);
        let (y, saved) = self.device().ela_forward_saving(q.storage(), k.storage(), v.storage(), &dims, params)?;
        Ok((Self::from_storage(y, v.shape().clone(), self.device()), saved))
    }

    /// Gradients `(dq, dk, dv)` of [`Tensor::ela`] given its output `y` and the upstream gradient
    /// `dy` (both `[batch, heads, time, dv]`), by the hand-derived reverse chunk scan.
    pub fn ela_backward(
        q: &Self,
        k: &Self,
        v: &Self,
        y: &Self,
        dy: &Self,
        params: &ElaParams,
    ) -> Result<(Self, Self, Self)> {
        Self::ela_backward_saved(q, k, v, y, dy, params, None)
    }

    /// [`Tensor::ela_backward`] reusing what [`Tensor::ela_saving`] kept for the same `q, k, v`
    /// and `params` (`y` is its output). A `saved` made for other sizes or options is an error.
    pub fn ela_backward_saved(
        q: &Self,
        k: &Self,
        v: &Self,
        y: &Self,
        dy: &Self,
        params: &ElaParams,
        saved: Option<&ElaSaved<B::Storage>>,
    ) -> Result<(Self, Self, Self)> {
        const OP: &str = "ela_backward";
        let dims = check_qkv(OP, q, k, v, params)?;
        if let Some(s) = saved {
            if s.dims != dims || s.params != *params {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "the saved forward state is for {:?} with {:?}, this call is {dims:?} with {params:?}: \
                         pass what ela_saving returned for these q, k, v",
                        s.dims, s.params
                    ),
                ));
            }
        }
        for t in [y, dy] {
            q.check_same_device(t, OP)?;
            if t.shape() != v.shape() {
                return Err(Error::ShapeMismatch {
                    op: OP,
                    lhs: v.shape().clone(),
                    rhs: t.shape().clone(),
                    hint: "y and dy must have v's shape [batch, heads, time, dv]".into(),
                });
            }
        }
        let dev = q.device();
        let same = [y, dy].iter().all(|t| t.dtype() == q.dtype());
        if same && dev.ela_rows_supported(q.dtype(), &dims, params) {
            let rows = [q, k, v, y, dy].map(readable_rows);
            if let [Some(rq), Some(rk), Some(rv), Some(ry), Some(rdy)] = rows {
                let shared = fused_operands([q, k, v], [rq, rk, rv], &dims);
                let grads = dev.ela_backward_rows(
                    arg(q, rq),
                    arg(k, rk),
                    arg(v, rv),
                    arg(y, ry),
                    arg(dy, rdy),
                    &dims,
                    params,
                    saved,
                    shared,
                )?;
                return Ok(match grads {
                    ElaGrads::Separate(dq, dk, dv) => (
                        Self::from_storage(dq, q.shape().clone(), dev),
                        Self::from_storage(dk, k.shape().clone(), dev),
                        Self::from_storage(dv, v.shape().clone(), dev),
                    ),
                    ElaGrads::Shared(buf) => {
                        // Each gradient is a view of the one buffer, laid out like its input.
                        let all = Self::from_storage(buf, [B::storage_len(q.storage())], dev);
                        let like = |t: &Self| all.with_layout(t.layout().clone());
                        (like(q), like(k), like(v))
                    }
                });
            }
        }
        let c = |t: &Self| t.to_dtype(q.dtype())?.contiguous();
        let (qc, kc, vc, yc, gc) = (c(q)?, c(k)?, c(v)?, c(y)?, c(dy)?);
        let (dq, dk, dv) = dev.ela_backward(
            qc.storage(),
            kc.storage(),
            vc.storage(),
            yc.storage(),
            gc.storage(),
            &dims,
            params,
            saved,
        )?;
        Ok((
            Self::from_storage(dq, q.shape().clone(), dev),
            Self::from_storage(dk, k.shape().clone(), dev),
            Self::from_storage(dv, v.shape().clone(), dev),
        ))
    }
}

/// `(S, z, m)` of an [`FusedElaState`] as tensors (see [`FusedElaState::buffers`]).
pub type StateTensors<B> = (Tensor<B>, Tensor<B>, Option<Tensor<B>>);

/// The recurrent state of the fused causal ELA ops for `batch x heads` sequences: per sequence `S`
/// (`F x Dv`), `z` (`F`) and, for Hadamard Exp, the per-feature log-scales `m` (`F`); and the
/// chunk length of its [`prefill`](FusedElaState::prefill). Decoding one token costs O(F Dv) per
/// head whatever the context length. Its kernel is an [`ElaKernel`]; for a kernel given by its own
/// feature maps use `ela_nn::ela::ElaState`, which wraps this one.
///
/// ```
/// use ela_core::{Cpu, DType, ElaKernel, ElaParams, FusedElaState, Rng, Tensor};
/// let mut rng = Rng::new(0);
/// let mut x = |t| Tensor::<Cpu>::randn(0.0, 1.0, [1, 2, t, 4], DType::F64, &mut rng, &Cpu);
/// let (q, k, v) = (x(5)?, x(5)?, x(5)?);
/// let full = q.ela(&k, &v, &ElaParams::causal(ElaKernel::HadamardExp))?;
/// // Prefill the first 3 tokens, then decode the last 2 one at a time.
/// let mut st = FusedElaState::new(ElaKernel::HadamardExp, 1, 2, 4, 4, DType::F64, &Cpu)?.with_chunk(2);
/// st.prefill(&q.narrow(2, 0, 3)?, &k.narrow(2, 0, 3)?, &v.narrow(2, 0, 3)?)?;
/// st.step(&q.narrow(2, 3, 1)?, &k.narrow(2, 3, 1)?, &v.narrow(2, 3, 1)?)?;
/// let y4 = st.step(&q.narrow(2, 4, 1)?, &k.narrow(2, 4, 1)?, &v.narrow(2, 4, 1)?)?;
/// assert!(y4.all_close(&full.narrow(2, 4, 1)?, 1e-12, 1e-12)?);
/// # Ok::<(), ela_core::Error>(())
/// ```
#[derive(Debug)]
pub struct FusedElaState<B: Backend> {
    bufs: ElaStateBufs<B::Storage>,
    kernel: ElaKernel,
    dims: ElaDims,
    dtype: DType,
    tokens: usize,
    chunk: usize,
    device: B,
}

impl<B: Backend> FusedElaState<B> {
    /// An empty state for `batch x heads` sequences with queries/keys of dimension `d` (the
    /// feature size for [`ElaKernel::Identity`]) and values of dimension `dv`, for inputs of
    /// `dtype`. The buffers are f64 for f64 inputs and f32 otherwise. Prefills run in chunks of
    /// [`DEFAULT_CHUNK`] rows (see [`FusedElaState::with_chunk`]).
    pub fn new(
        kernel: ElaKernel,
        batch: usize,
        heads: usize,
        d: usize,
        dv: usize,
        dtype: DType,
        device: &B,
    ) -> Result<Self> {
        const OP: &str = "FusedElaState::new";
        if !dtype.is_float() {
            return Err(Error::UnsupportedDType { op: OP, dtype, expected: "a float dtype (f16, bf16, f32, f64)" });
        }
        ElaParams::causal(kernel).validate(OP, &ElaDims { batch, heads, t: 0, d, dv }, true)?;
        let sd = Self::state_dtype_for(dtype);
        // Checked before allocating: batch, heads and sizes come from the caller, and a wrapped
        // product would make a tiny state (and `bytes()` report 0) instead of an error.
        // `d, dv` bounded first, so the feature size and `per_seq` below cannot overflow; the
        // second check bounds all buffers together (`bytes()` relies on it).
        Shape::from([d, dv]).check_size(OP)?;
        let f = kernel.feature_size(d);
        let per_seq = f * dv + f + if kernel.has_units() { f } else { 0 };
        Shape::checked([batch, heads, per_seq], OP)?;
        let n = batch * heads;
        let bufs = ElaStateBufs {
            s: device.full(n * f * dv, 0.0, sd)?,
            z: device.full(n * f, 0.0, sd)?,
            m: if kernel.has_units() { Some(device.full(n * f, f64::NEG_INFINITY, sd)?) } else { None },
        };
        let dims = ElaDims { batch, heads, t: 0, d, dv };
        Ok(FusedElaState { bufs, kernel, dims, dtype, tokens: 0, chunk: DEFAULT_CHUNK, device: device.clone() })
    }

    /// The same state, prefilling in chunks of `chunk` rows (a chunk of 0 is an error at the next
    /// prefill, from [`ElaParams::validate`]).
    pub fn with_chunk(self, chunk: usize) -> Self {
        FusedElaState { chunk, ..self }
    }

    /// The chunk length of [`FusedElaState::prefill`].
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    fn state_dtype_for(dtype: DType) -> DType {
        if dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        }
    }

    /// Run the chunked form (in chunks of [`FusedElaState::chunk`] rows) over a prompt `q`, `k`
    /// `[batch, heads, t, d]`, `v` `[batch, heads, t, dv]`, continuing from this state, and return
    /// its outputs; the state then holds every token seen.
    pub fn prefill(&mut self, q: &Tensor<B>, k: &Tensor<B>, v: &Tensor<B>) -> Result<Tensor<B>> {
        const OP: &str = "FusedElaState::prefill";
        let p = ElaParams { kernel: self.kernel, causal: true, chunk: self.chunk };
        let dims = check_qkv(OP, q, k, v, &p)?;
        p.validate(OP, &dims, true)?;
        self.check_matches(OP, q, &dims)?;
        let (qc, kc, vc) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
        let y = self.device.ela_forward(qc.storage(), kc.storage(), vc.storage(), &dims, &p, Some(&mut self.bufs))?;
        self.tokens += dims.t;
        Ok(Tensor::from_storage(y, v.shape().clone(), &self.device))
    }

    /// Decode one token: `q`, `k` `[batch, heads, d]` and `v` `[batch, heads, dv]` (or the same
    /// with a time axis of length 1 before the last). Returns `y` with `v`'s shape.
    pub fn step(&mut self, q: &Tensor<B>, k: &Tensor<B>, v: &Tensor<B>) -> Result<Tensor<B>> {
        const OP: &str = "FusedElaState::step";
        let r = q.rank();
        if !(r == 3 || (r == 4 && q.dims()[2] == 1)) || k.rank() != r || v.rank() != r {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: q.shape().clone(),
                rhs: v.shape().clone(),
                hint: "a step takes q, k [batch, heads, d] and v [batch, heads, dv] (or [batch, heads, 1, ..])".into(),
            });
        }
        let as4 = |t: &Tensor<B>| if r == 3 { t.unsqueeze(2) } else { Ok(t.clone()) };
        let (q4, k4, v4) = (as4(q)?, as4(k)?, as4(v)?);
        let p = ElaParams::causal(self.kernel);
        let dims = check_qkv(OP, &q4, &k4, &v4, &p)?;
        self.check_matches(OP, q, &dims)?;
        let (qc, kc, vc) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
        let y = self.device.ela_step(qc.storage(), kc.storage(), vc.storage(), &dims, self.kernel, &mut self.bufs)?;
        self.tokens += 1;
        Ok(Tensor::from_storage(y, v.shape().clone(), &self.device))
    }

    fn check_matches(&self, op: &'static str, q: &Tensor<B>, dims: &ElaDims) -> Result<()> {
        let want = (self.dims.batch, self.dims.heads, self.dims.d, self.dims.dv);
        if (dims.batch, dims.heads, dims.d, dims.dv) != want {
            return Err(Error::invalid(
                op,
                format!(
                    "inputs have batch {}, heads {}, d {}, dv {} but the state was made for batch {}, heads {}, \
                     d {}, dv {}",
                    dims.batch, dims.heads, dims.d, dims.dv, want.0, want.1, want.2, want.3
                ),
            ));
        }
        if q.dtype() != self.dtype {
            return Err(Error::DTypeMismatch { op, lhs: self.dtype, rhs: q.dtype() });
        }
        if !self.device.same_device(q.device()) {
            return Err(Error::DeviceMismatch { op, lhs: self.device.device_name(), rhs: q.device().device_name() });
        }
        Ok(())
    }

    /// Bytes held by the state buffers: `batch * heads * (F Dv + F [+ F]) * size_of(state dtype)`.
    pub fn bytes(&self) -> usize {
        let (n, f) = (self.dims.sequences(), self.feature_size());
        let units = if self.kernel.has_units() { f } else { 0 };
        n * (f * self.dims.dv + f + units) * self.state_dtype().size_in_bytes()
    }

    /// Dtype of the state buffers (f64 for f64 inputs, else f32).
    pub fn state_dtype(&self) -> DType {
        Self::state_dtype_for(self.dtype)
    }
    /// Dtype of the inputs and outputs.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// The kernel.
    pub fn kernel(&self) -> ElaKernel {
        self.kernel
    }
    /// Feature size `F`.
    pub fn feature_size(&self) -> usize {
        self.kernel.feature_size(self.dims.d)
    }
    /// Number of tokens absorbed so far.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// The device holding the buffers.
    pub fn device(&self) -> &B {
        &self.device
    }

    /// The sizes the state was made for (`t` is 0): batch, heads, `d` and `dv`.
    pub fn dims(&self) -> ElaDims {
        self.dims
    }

    /// The state buffers themselves, for a backend's own kernel that updates them in place (a
    /// whole decoding step in one launch: `ela_cuda::Cuda::lm_decode_step`). Such a kernel must
    /// keep the layout and meaning of [`FusedElaState::buffers`] and count its tokens with
    /// [`FusedElaState::count_replayed_steps`].
    pub fn storage_mut(&mut self) -> &mut ElaStateBufs<B::Storage> {
        &mut self.bufs
    }

    /// Counts `n` steps that ran without [`FusedElaState::step`]: replays of a CUDA graph that
    /// recorded one `step` on this state's buffers, or a fused kernel that updated them through
    /// [`FusedElaState::storage_mut`] (both update the buffers in place without counting; of a
    /// graph, only the host call that was recorded counted its token). Changes no buffer.
    pub fn count_replayed_steps(&mut self, n: usize) {
        self.tokens += n;
    }

    /// Copies of the buffers as tensors: `S` `[batch, heads, F, dv]`, `z` `[batch, heads, F]` and
    /// the log-scales `m` `[batch, heads, F]` (Hadamard Exp), in the state dtype. For Hadamard Exp
    /// the true sums are `exp(m) * S` and `exp(m) * z` (row-wise).
    pub fn buffers(&self) -> Result<StateTensors<B>> {
        let (b, h, f, dv) = (self.dims.batch, self.dims.heads, self.feature_size(), self.dims.dv);
        let copy = |s: &B::Storage, shape: Shape| -> Result<Tensor<B>> {
            let c = self.device.copy_contiguous(s, &Layout::contiguous(shape.clone()))?;
            Ok(Tensor::from_storage(c, shape, &self.device))
        };
        Ok((
            copy(&self.bufs.s, Shape::from(vec![b, h, f, dv]))?,
            copy(&self.bufs.z, Shape::from(vec![b, h, f]))?,
            self.bufs.m.as_ref().map(|m| copy(m, Shape::from(vec![b, h, f]))).transpose()?,
        ))
    }

    /// An independent copy (e.g. to branch a decode).
    pub fn try_clone(&self) -> Result<Self> {
        let copy = |s: &B::Storage| self.device.copy_contiguous(s, &Layout::contiguous(B::storage_len(s)));
        Ok(FusedElaState {
            bufs: ElaStateBufs {
                s: copy(&self.bufs.s)?,
                z: copy(&self.bufs.z)?,
                m: self.bufs.m.as_ref().map(copy).transpose()?,
            },
            kernel: self.kernel,
            dims: self.dims,
            dtype: self.dtype,
            tokens: self.tokens,
            chunk: self.chunk,
            device: self.device.clone(),
        })
    }
}

#[cfg(test)]
mod fused_tests {
    use super::*;
    use crate::{Cpu, Rng};

    /// Views a backend may read in place: rank 4, a contiguous last axis, rows on 16-byte
    /// boundaries (offset and every stride, in bytes).
    #[test]
    fn readable_rows_need_contiguous_aligned_rows() {
        let x = Tensor::<Cpu>::zeros([2, 3, 5, 16], DType::BF16, &Cpu).unwrap();
        assert_eq!(readable_rows(&x), Some(ElaRows { offset: 0, batch: 240, head: 80, row: 16 }));
        // Eight bf16 elements = 16 bytes: aligned; one element off: not.
        assert!(readable_rows(&x.narrow(3, 8, 8).unwrap()).is_some());
        assert!(readable_rows(&x.narrow(3, 1, 8).unwrap()).is_none());
        // A row stride of 12 bf16 elements (24 bytes) is not a multiple of 16 bytes.
        let y = Tensor::<Cpu>::zeros([2, 3, 5, 12], DType::BF16, &Cpu).unwrap();
        assert!(readable_rows(&y.narrow(3, 0, 8).unwrap()).is_none());
        // Features strided (a transposed last pair of axes) or another rank: no rows.
        assert!(readable_rows(&x.transpose(2, 3).unwrap()).is_none());
        assert!(readable_rows(&x.reshape([6, 5, 16]).unwrap()).is_none());
    }

    /// The heads of a fused `[batch, t, 3, heads, d]` product are recognised (their gradients
    /// can share one buffer); the same view three times, unequal strides, or separate buffers
    /// are not.
    #[test]
    fn heads_of_a_fused_product_are_disjoint_views_of_one_buffer() {
        let (b, t, h, d) = (2, 5, 4, 8);
        let qkv = Tensor::<Cpu>::randn(0.0, 1.0, [b, t, 3, h, d], DType::F32, &mut Rng::new(3), &Cpu).unwrap();
        let head = |i: usize| qkv.narrow(2, i, 1).unwrap().squeeze(2).unwrap().transpose(1, 2).unwrap();
        let (q, k, v) = (head(0), head(1), head(2));
        let dims = Tensor::ela_dims("test", &q, &k, &v).unwrap();
        let rows = |x: &Tensor<Cpu>| readable_rows(x).unwrap();
        assert_eq!(fused_operands([&q, &k, &v], [rows(&q), rows(&k), rows(&v)], &dims), Some(b * t * 3 * h * d));
        // In another order (v, q, k as the operands) too.
        assert!(fused_operands([&v, &q, &k], [rows(&v), rows(&q), rows(&k)], &dims).is_some());
        // Overlapping: one view thrice.
        assert_eq!(fused_operands([&q, &q, &q], [rows(&q); 3], &dims), None);
        // Separate buffers.
        let (qc, kc, vc) = (q.contiguous().unwrap(), k.contiguous().unwrap(), v.contiguous().unwrap());
        assert_eq!(fused_operands([&qc, &kc, &vc], [rows(&qc), rows(&kc), rows(&vc)], &dims), None);
        // Two heads' worth of columns apart is not enough room for four heads: views of the same
        // buffer with the same strides as q, k, v, but q2 at offset 0 and k2 at 2 d.
        let at = |offset: usize| {
            let strides = vec![t * 3 * h * d, d, 3 * h * d, 1];
            qkv.with_layout(crate::layout::Layout::from_parts(Shape::from(vec![b, h, t, d]), strides, offset))
        };
        let (q2, k2) = (at(0), at(2 * d));
        assert_eq!((rows(&q2).row, rows(&k2).offset), (rows(&q).row, 2 * d));
        assert_eq!(fused_operands([&q2, &k2, &v], [rows(&q2), rows(&k2), rows(&v)], &dims), None);
        // The same views a whole block of heads apart are recognised: only the room was missing.
        let k3 = at(h * d);
        assert!(fused_operands([&q2, &k3, &v], [rows(&q2), rows(&k3), rows(&v)], &dims).is_some());
    }
}
