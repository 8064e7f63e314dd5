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
    match grad_sum_squares(params, grads)? {
        None => Ok(0.0),
        Some(s) => Ok(s.to_scalar()?.sqrt()),
    }
}

/// The sum of squares behind [`global_grad_norm`], left on the device (a rank-0 f64 tensor;
/// `None` when no parameter has a gradient): what a recorded training step, which cannot read
/// values back in the middle, hands to its update. Each parameter counts once, in the order of
/// `params`, so the sum has the same bits as the one `global_grad_norm` reads.
pub fn grad_sum_squares<B: Backend>(params: &[Var<B>], grads: &Grads<B>) -> Result<Option<Tensor<B>>> {
    no_grad(|| {
        let mut seen = std::collections::HashSet::new();
        let gs: Vec<&Tensor<B>> = params.iter().filter(|p| seen.insert(p.id())).filter_map(|p| grads.get(p)).collect();
        let Some(first) = gs.first() else { return Ok(None) };
        Tensor::sum_squares_many(&gs, first.device()).map(Some)
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
