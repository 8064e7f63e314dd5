//! Exact Linear Attention as one node: the fused chunked forward of a built-in kernel
//! ([`Tensor::ela_saving`]) and, below it, its hand-derived backward, the reverse chunk scan
//! ([`Tensor::ela_backward_saved`]). Derivation: docs/autograd.md#exact-linear-attention, which
//! points to docs/ela.md ("Backward", equations (B1)-(B5) and (R)). A kernel given by its own
//! feature maps (`ela_nn::ela::Kernel`) composes this op with its maps' VJPs in `ela-nn`.

use ela_core::{Backend, ElaParams, Result, Tensor};

use crate::var::Var;

impl<B: Backend> Var<B> {
    /// Fused Exact Linear Attention with `self` as the queries (see [`Tensor::ela`]): `q`, `k`
    /// `[batch, heads, time, d]`, `v` `[batch, heads, time, dv]`, recorded as one node
    /// `ela_chunked` with inputs `(q, k, v)`.
    pub fn ela(&self, k: &Self, v: &Self, params: &ElaParams) -> Result<Self> {
        let (qv, kv, vv) = (self.value(), k.value(), v.value());
        // The backend may keep its forward's chunk states for the backward (CUDA does: the backward
        // then skips recomputing them); they live as long as this node.
        let (y, saved) = qv.ela_saving(&kv, &vv, params)?;
        let (ys, params) = (y.clone(), *params);
        Var::record("ela_chunked", y, &[self, k, v], move |g, needs| {
            let (dq, dk, dv) = Tensor::ela_backward_saved(&qv, &kv, &vv, &ys, g, &params, saved.as_ref())?;
            Ok(vec![needs[0].then_some(dq), needs[1].then_some(dk), needs[2].then_some(dv)])
        })
    }
}
