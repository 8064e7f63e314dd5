//! The chunked form of any [`Kernel`] as ONE autograd node. A built-in kernel is the fused op
//! `Var::ela` of `ela-autograd` (autograd/src/ops/ela.rs, with every other backward); a user
//! kernel runs that fused op on its own features `phi(q)`, `psi(k)` ([`ElaKernel::Identity`]),
//! and its backward maps `(dphi, dpsi)` of the reverse chunk scan (`Tensor::ela_backward`,
//! docs/ela.md#backward) through the kernel's own feature-map VJPs, which only this crate knows.

use std::sync::Arc;

use ela_autograd::Var;
use ela_core::{Backend, ElaKernel, ElaParams, Error, Result, Tensor};

use super::kernel::Kernel;

/// The features `phi(q)`, `psi(k)` of a user kernel, checked against its feature size.
pub(crate) fn user_features<B: Backend>(
    kernel: &dyn Kernel<B>,
    q: &Tensor<B>,
    k: &Tensor<B>,
) -> Result<(Tensor<B>, Tensor<B>)> {
    let (phi, psi) = (kernel.phi(q)?, kernel.psi(k)?);
    let d = q.dims().last().copied().unwrap_or(0);
    let f = kernel.feature_size(d);
    let mut want = q.dims().to_vec();
    if let Some(last) = want.last_mut() {
        *last = f;
    }
    for (x, what) in [(&phi, "phi(q)"), (&psi, "psi(k)")] {
        if x.dims() != want.as_slice() {
            return Err(Error::ShapeMismatch {
                op: "ela_chunked",
                lhs: q.shape().clone(),
                rhs: x.shape().clone(),
                hint: format!("kernel {}: {what} must be [.., {f}] (feature_size({d}))", kernel.name()),
            });
        }
    }
    Ok((phi, psi))
}

/// Chunked ELA with any [`Kernel`]: built-ins run fused (`Var::ela`); a user kernel runs as
/// `ela(phi(q), psi(k), v)` with [`ElaKernel::Identity`], its backward mapping `(dphi, dpsi)` back
/// through the kernel's `phi_vjp` / `psi_vjp`. Either way the result is one autograd node.
pub fn chunked<B: Backend>(
    q: &Var<B>,
    k: &Var<B>,
    v: &Var<B>,
    kernel: &Arc<dyn Kernel<B>>,
    causal: bool,
    chunk: usize,
) -> Result<Var<B>> {
    if let Some(fused) = kernel.fused() {
        return q.ela(k, v, &ElaParams { kernel: fused, causal, chunk });
    }
    let (qv, kv, vv) = (q.value(), k.value(), v.value());
    // Core's one ELA shape check, on q and k themselves: the fused op below only sees phi(q), psi(k).
    Tensor::ela_dims("ela_chunked", &qv, &kv, &vv)?;
    let (phi, psi) = user_features(kernel.as_ref(), &qv, &kv)?;
    let params = ElaParams { kernel: ElaKernel::Identity, causal, chunk };
    let y = phi.ela(&psi, &vv, &params)?;
    let (ys, kern) = (y.clone(), kernel.clone());
    Var::record("ela_chunked", y, &[q, k, v], move |g, needs| {
        let (dphi, dpsi, dv) = Tensor::ela_backward(&phi, &psi, &vv, &ys, g, &params)?;
        Ok(vec![
            needs[0].then(|| kern.phi_vjp(&qv, &dphi)).transpose()?,
            needs[1].then(|| kern.psi_vjp(&kv, &dpsi)).transpose()?,
            needs[2].then_some(dv),
        ])
    })
}
