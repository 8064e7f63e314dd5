//! The recurrent form (decoding) for any [`Kernel`]: [`ElaState`], a state `(S, z)` per head,
//! one step per token in O(F Dv) whatever the context length, and a chunked prefill that hands
//! over its final state so decoding continues exactly where a prompt ended.
//!
//! Names: [`FusedElaState`] (ela-core) is the state of the fused ops (a built-in [`ElaKernel`],
//! or precomputed features with [`ElaKernel::Identity`]); [`ElaState`] wraps it for any kernel,
//! applying a user kernel's feature maps before every call. Both carry the chunk length their
//! prefill uses.

use std::sync::Arc;

use ela_core::{Backend, DType, ElaKernel, FusedElaState, Result, Tensor};

use super::chunked::user_features;
use super::kernel::Kernel;

/// The recurrent ELA state of `batch x heads` sequences for any [`Kernel`], and the chunk length
/// of its [`prefill`](ElaState::prefill). Built-in kernels use the backend's fused step; a user
/// kernel's `phi`/`psi` are applied first and the state holds its `F`-dimensional features
/// ([`ElaKernel::Identity`]).
pub struct ElaState<B: Backend> {
    inner: FusedElaState<B>,
    /// Set for user kernels: their feature maps run before every step.
    user: Option<Arc<dyn Kernel<B>>>,
}

impl<B: Backend> std::fmt::Debug for ElaState<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kernel = self.user.as_ref().map_or_else(|| self.inner.kernel().name().to_string(), |k| k.name());
        write!(f, "ElaState(kernel {kernel}, {} tokens, {} bytes)", self.inner.tokens(), self.inner.bytes())
    }
}

impl<B: Backend> ElaState<B> {
    /// An empty state for queries/keys of dimension `d` and values of dimension `dv`, for inputs of
    /// `dtype` (the buffers are f64 for f64 inputs, f32 otherwise), prefilling in chunks of
    /// [`DEFAULT_CHUNK`](ela_core::ela::DEFAULT_CHUNK) (see [`ElaState::with_chunk`]).
    pub fn new(
        kernel: &Arc<dyn Kernel<B>>,
        batch: usize,
        heads: usize,
        d: usize,
        dv: usize,
        dtype: DType,
        device: &B,
    ) -> Result<Self> {
        Ok(match kernel.fused() {
            Some(fused) => {
                ElaState { inner: FusedElaState::new(fused, batch, heads, d, dv, dtype, device)?, user: None }
            }
            None => ElaState {
                inner: FusedElaState::new(
                    ElaKernel::Identity,
                    batch,
                    heads,
                    kernel.feature_size(d),
                    dv,
                    dtype,
                    device,
                )?,
                user: Some(kernel.clone()),
            },
        })
    }

    /// The same state, prefilling in chunks of `chunk` rows (a chunk of 0 is an error at the
    /// next prefill).
    pub fn with_chunk(self, chunk: usize) -> Self {
        ElaState { inner: self.inner.with_chunk(chunk), ..self }
    }

    /// The chunk length of [`ElaState::prefill`].
    pub fn chunk(&self) -> usize {
        self.inner.chunk()
    }

    fn features(&self, q: &Tensor<B>, k: &Tensor<B>) -> Result<(Tensor<B>, Tensor<B>)> {
        match &self.user {
            Some(kern) => user_features(kern.as_ref(), q, k),
            None => Ok((q.clone(), k.clone())),
        }
    }

    /// Run the chunked form (in chunks of [`ElaState::chunk`] rows) over `q`, `k`
    /// `[batch, heads, t, d]`, `v` `[batch, heads, t, dv]` from this state, return the outputs,
    /// and keep the final state.
    pub fn prefill(&mut self, q: &Tensor<B>, k: &Tensor<B>, v: &Tensor<B>) -> Result<Tensor<B>> {
        let (phi, psi) = self.features(q, k)?;
        self.inner.prefill(&phi, &psi, v)
    }

    /// Decode one token for every sequence: `q`, `k` `[batch, heads, d]`, `v` `[batch, heads, dv]`
    /// (or with a time axis of length 1). Returns `y` with `v`'s shape.
    pub fn step(&mut self, q: &Tensor<B>, k: &Tensor<B>, v: &Tensor<B>) -> Result<Tensor<B>> {
        let (phi, psi) = self.features(q, k)?;
        self.inner.step(&phi, &psi, v)
    }

    /// Bytes held by the state (constant in the context length).
    pub fn bytes(&self) -> usize {
        self.inner.bytes()
    }

    /// Tokens absorbed so far.
    pub fn tokens(&self) -> usize {
        self.inner.tokens()
    }

    /// Counts `n` steps run by replays of a captured step (see
    /// [`FusedElaState::count_replayed_steps`]).
    pub fn count_replayed_steps(&mut self, n: usize) {
        self.inner.count_replayed_steps(n);
    }

    /// The state of the fused ops (buffers, feature size, dtypes).
    pub fn inner(&self) -> &FusedElaState<B> {
        &self.inner
    }

    /// The fused state itself, to update in place with a backend's own kernel (see
    /// [`FusedElaState::storage_mut`]), or `None` for a user kernel, whose feature maps must run
    /// before every step.
    pub fn fused_mut(&mut self) -> Option<&mut FusedElaState<B>> {
        match self.user {
            Some(_) => None,
            None => Some(&mut self.inner),
        }
    }

    /// An independent copy (e.g. to branch a decode).
    pub fn try_clone(&self) -> Result<Self> {
        Ok(ElaState { inner: self.inner.try_clone()?, user: self.user.clone() })
    }
}

/// Prefill from an empty state: the chunked outputs of a prompt and the state to decode from
/// (which keeps `chunk` for later prefills).
pub fn prefill<B: Backend>(
    q: &Tensor<B>,
    k: &Tensor<B>,
    v: &Tensor<B>,
    kernel: &Arc<dyn Kernel<B>>,
    chunk: usize,
) -> Result<(Tensor<B>, ElaState<B>)> {
    // Core's one ELA shape check gives the sizes the state is made for.
    let d = Tensor::ela_dims("ela_prefill", q, k, v)?;
    let mut st = ElaState::new(kernel, d.batch, d.heads, d.d, d.dv, q.dtype(), q.device())?.with_chunk(chunk);
    let y = st.prefill(q, k, v)?;
    Ok((y, st))
}

/// The recurrent form over a whole sequence: start from an empty state and step token by token
/// (the decoding path, used to verify it against the other forms).
pub fn recurrent<B: Backend>(
    q: &Tensor<B>,
    k: &Tensor<B>,
    v: &Tensor<B>,
    kernel: &Arc<dyn Kernel<B>>,
) -> Result<Tensor<B>> {
    let d = Tensor::ela_dims("ela_recurrent", q, k, v)?;
    let t = d.t;
    let mut st = ElaState::new(kernel, d.batch, d.heads, d.d, d.dv, q.dtype(), q.device())?;
    if t == 0 {
        return Tensor::zeros(v.shape().clone(), v.dtype(), v.device());
    }
    let ys: Vec<Tensor<B>> = (0..t)
        .map(|i| st.step(&q.narrow(2, i, 1)?, &k.narrow(2, i, 1)?, &v.narrow(2, i, 1)?))
        .collect::<Result<_>>()?;
    let refs: Vec<&Tensor<B>> = ys.iter().collect();
    Tensor::concat(&refs, 2)
}
