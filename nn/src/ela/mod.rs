//! Exact Linear Attention (ELA).
//!
//! For a kernel that decomposes exactly as `k(q,k) = phi(q) . psi(k)`, causal attention
//! `y_i = sum_{j<=i} k(q_i,k_j) v_j / sum_{j<=i} k(q_i,k_j)` equals
//! `phi(q_i)^T S_i / (phi(q_i) . z_i)` with the running sums `S_i = sum_{j<=i} psi(k_j) v_j^T`,
//! `z_i = sum_{j<=i} psi(k_j)`: linear time, constant memory per decoded token, and *the same
//! function*, which this module lets you verify. Tensors are `[batch, heads, time, dim]`; `v` has
//! its own `dv`.
//!
//! - [`Kernel`]: the trait of a decomposable kernel (feature maps, their VJPs, the closed form);
//!   built-ins [`HadamardExp`] (default), [`SumSqEuclid`], [`SubSqEuclid`], [`Blueprint`],
//!   [`EluPlusOne`] (the earlier linear-attention baseline) and [`Identity`] for precomputed
//!   features; [`check_kernel`] tests a kernel.
//! - Three forms that agree: [`quadratic`] (the oracle, autograd ops), [`chunked`] (one autograd
//!   node, hand-derived backward: `Var::ela` of `ela-autograd` for the built-ins) and the
//!   recurrent [`ElaState`] (`step`, `prefill`).
//! - [`Ela`] bundles kernel, causal flag and chunk length and runs any [`Form`]
//!   ([`Ela::run`]), which is what `ela verify` and the benchmarks call.
//! - [`ElaAttention`]: the built-in-kernel mixer used by the attention layer.
//!
//! The math, the numerics (shifts, epsilon policy) and the derivation of every gradient are in
//! `docs/ela.md`.

mod check;
mod chunked;
mod forms;
mod kernel;
mod recurrent;
mod reference;

pub use check::{check_kernel, CheckOptions, KernelReport, NegativePair};
pub use chunked::chunked;
pub use ela_core::ela::DEFAULT_CHUNK;
pub use ela_core::{ElaKernel, ElaParams};
pub use forms::{max_rel_diff, Ela, Form, FormOutput, Grads};
pub use kernel::{
    builtin, builtin_by_name, Blueprint, EluPlusOne, HadamardExp, Identity, Kernel, SubSqEuclid, SumSqEuclid,
};
pub use recurrent::{prefill, recurrent, ElaState};
pub use reference::{quadratic, quadratic_parts};

use ela_autograd::Var;
use ela_core::{Backend, Result, Tensor};

/// ELA with a built-in kernel as an attention mixer: the chunked node for training, prefill and
/// recurrent steps for decoding. Not tied to a backend, so it can sit in a layer's config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElaAttention {
    /// The kernel.
    pub kernel: ElaKernel,
    /// Chunk length of the chunked form.
    pub chunk: usize,
}

impl Default for ElaAttention {
    fn default() -> Self {
        ElaAttention { kernel: ElaKernel::HadamardExp, chunk: DEFAULT_CHUNK }
    }
}

impl ElaAttention {
    /// A mixer with `kernel` and chunk length `chunk`.
    pub fn new(kernel: ElaKernel, chunk: usize) -> Self {
        ElaAttention { kernel, chunk }
    }

    /// A mixer with the kernel named `name` (`hadamard-exp`, `sum-sq-euclid`, `sub-sq-euclid`,
    /// `blueprint`, `identity`, `elu-plus-one`).
    pub fn from_name(name: &str, chunk: usize) -> Result<Self> {
        Ok(ElaAttention { kernel: name.parse()?, chunk })
    }

    /// `y` for `q`, `k` `[batch, heads, t, d]`, `v` `[batch, heads, t, dv]` (one autograd node).
    pub fn forward<B: Backend>(&self, q: &Var<B>, k: &Var<B>, v: &Var<B>, causal: bool) -> Result<Var<B>> {
        q.ela(k, v, &ElaParams { kernel: self.kernel, causal, chunk: self.chunk })
    }

    /// Causal outputs of a prompt and the recurrent state after it.
    pub fn prefill<B: Backend>(&self, q: &Tensor<B>, k: &Tensor<B>, v: &Tensor<B>) -> Result<(Tensor<B>, ElaState<B>)> {
        prefill(q, k, v, &builtin(self.kernel), self.chunk)
    }

    /// One decoding step (`q`, `k` `[batch, heads, 1, d]` or `[batch, heads, d]`).
    pub fn step<B: Backend>(
        &self,
        state: &mut ElaState<B>,
        q: &Tensor<B>,
        k: &Tensor<B>,
        v: &Tensor<B>,
    ) -> Result<Tensor<B>> {
        state.step(q, k, v)
    }
}
