//! Gradient clipping by global norm (Pascanu et al. 2013), as PyTorch's `clip_grad_norm_`.
//!
//! `norm = sqrt(sum over params of sum(g^2))`; when `norm > max_norm` every gradient is
//! multiplied by `max_norm / (norm + 1e-6)`, which keeps the update direction and bounds its
//! length.

use ela_autograd::{no_grad, Grads, Var};
use ela_core::{Backend, Error, Result, Tensor};

/// The global L2 norm of the gradients of `params` (those without a gradient count as zero):
/// every square summed in f64 on the device by one multi-tensor reduction
/// ([`Tensor::sum_squares_many`]: two kernel launches on a GPU for a hundred gradients), then a
/// single read-back.
pub fn global_grad_norm<B: Backend>(params: &[Var<B>], grads: &Grads<B>) -> Result<f64> {
    no_grad(|| {
        let mut seen = std::collections::HashSet::new();
        let gs: Vec<&Tensor<B>> = params.iter().filter(|p| seen.insert(p.id())).filter_map(|p| grads.get(p)).collect();
        let Some(first) = gs.first() else { return Ok(0.0) };
        Ok(Tensor::sum_squares_many(&gs, first.device())?.to_scalar()?.sqrt())
    })
}

/// Scale the gradients of `params` in place so their global norm is at most `max_norm`.
/// Returns the norm *before* clipping (log it: spikes show instabilities).
///
/// A non-finite norm (an inf or NaN gradient) leaves the gradients untouched and is returned as
/// is, so the caller can skip the step instead of writing NaNs into the weights.
pub fn clip_grad_norm<B: Backend>(params: &[Var<B>], grads: &mut Grads<B>, max_norm: f64) -> Result<f64> {
    if max_norm.is_nan() || max_norm <= 0.0 {
        return Err(Error::invalid("clip_grad_norm", format!("max_norm must be positive, got {max_norm}")));
    }
    let norm = global_grad_norm(params, grads)?;
    if norm.is_finite() && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        no_grad(|| -> Result<()> {
            let mut seen = std::collections::HashSet::new();
            for p in params.iter().filter(|p| seen.insert(p.id())) {
                if let Some(g) = grads.remove(p) {
                    grads.insert(p, g.mul_scalar(scale)?);
                }
            }
            Ok(())
        })?;
    }
    Ok(norm)
}
