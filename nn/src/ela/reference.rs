//! The quadratic reference, docs/ela.md (Q): materialise the kernel matrix `K_ij = k(q_i, k_j)`
//! from the kernel's closed form, mask it, normalise. Built from ordinary autograd ops, so its gradient comes from
//! the tape. It is the oracle the fast forms are tested against, O(T^2) in time and memory.

use ela_autograd::Var;
use ela_core::{Backend, Result, Tensor};

use super::kernel::Kernel;

/// Un-normalised numerator `num_i = sum_j K_ij v_j` (`[batch, heads, t, dv]`) and denominator
/// `den_i = sum_j K_ij` (`[batch, heads, t, 1]`), sums over `j <= i` when `causal`.
pub fn quadratic_parts<B: Backend>(
    q: &Var<B>,
    k: &Var<B>,
    v: &Var<B>,
    kernel: &dyn Kernel<B>,
    causal: bool,
) -> Result<(Var<B>, Var<B>)> {
    // The reference is built from plain ops, not the fused one, so it asks core's one ELA shape
    // check itself (before indexing the time axis).
    Tensor::ela_dims("ela_quadratic", &q.value(), &k.value(), &v.value())?;
    let a = kernel.kernel_matrix(q, k)?;
    let a = if causal {
        let t = q.dims()[2];
        let keep = Tensor::tril_mask(t, t, 0, &q.device())?;
        let zero = Var::constant(Tensor::zeros((), a.dtype(), &q.device())?);
        Var::where_cond(&keep, &a, &zero)?
    } else {
        a
    };
    Ok((a.matmul(v)?, a.sum(-1isize, true)?))
}

/// `y_i = sum_j k(q_i,k_j) v_j / sum_j k(q_i,k_j)` (over `j <= i` when `causal`), the quadratic way.
pub fn quadratic<B: Backend>(
    q: &Var<B>,
    k: &Var<B>,
    v: &Var<B>,
    kernel: &dyn Kernel<B>,
    causal: bool,
) -> Result<Var<B>> {
    let (num, den) = quadratic_parts(q, k, v, kernel, causal)?;
    num.div(&den)
}
