//! Gradient checking by central finite differences in f64.
//!
//! For `y = f(x_1, .., x_n)` and a fixed random cotangent `r` of `y`'s shape, the scalar
//! `L = sum(y * r)` has gradient `J^T r` with respect to every input, which backward computes.
//! Perturbing one input element by `+-eps` gives the same quantity numerically:
//! `dL/dx ~ (L(x + eps) - L(x - eps)) / (2 eps)`, with error O(eps^2). Comparing the two for every
//! element of every input checks the whole vector-Jacobian product, not just one direction.

use ela_core::{Backend, DType, Error, Result, Rng, Tensor};

use crate::grad_mode::no_grad;
use crate::var::Var;

/// Step size and tolerances of [`gradcheck`].
#[derive(Clone, Copy, Debug)]
pub struct GradcheckOptions {
    /// Finite-difference step.
    pub eps: f64,
    /// Relative tolerance (to the larger of the two gradient magnitudes).
    pub rtol: f64,
    /// Absolute tolerance.
    pub atol: f64,
    /// Seed of the random cotangent.
    pub seed: u64,
}

impl Default for GradcheckOptions {
    fn default() -> Self {
        GradcheckOptions { eps: 1e-6, rtol: 1e-5, atol: 1e-7, seed: 0 }
    }
}

/// Outcome of a gradient check.
#[derive(Clone, Debug)]
pub struct GradcheckReport {
    /// True when every element is within tolerance.
    pub passed: bool,
    /// Largest |analytic - numeric| over all checked elements.
    pub max_abs_err: f64,
    /// Largest |analytic - numeric| / max(|analytic|, |numeric|, tiny).
    pub max_rel_err: f64,
    /// The worst element: (input index, element index, analytic, numeric).
    pub worst: Option<(usize, usize, f64, f64)>,
    /// Number of elements compared.
    pub checked: usize,
}

impl std::fmt::Display for GradcheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "gradcheck {}: {} elements, max abs err {:.3e}, max rel err {:.3e}",
            if self.passed { "passed" } else { "FAILED" },
            self.checked,
            self.max_abs_err,
            self.max_rel_err
        )?;
        if let Some((i, e, a, n)) = self.worst {
            write!(f, "; worst at input {i} element {e}: analytic {a:.10e} vs numeric {n:.10e}")?;
        }
        Ok(())
    }
}

/// Check the gradients of `f` at `inputs` (f64 tensors) against central differences.
pub fn gradcheck<B, F>(f: F, inputs: &[Tensor<B>], opts: GradcheckOptions) -> Result<GradcheckReport>
where
    B: Backend,
    F: Fn(&[Var<B>]) -> Result<Var<B>>,
{
    for t in inputs {
        if t.dtype() != DType::F64 {
            return Err(Error::UnsupportedDType { op: "gradcheck", dtype: t.dtype(), expected: "f64 inputs" });
        }
    }
    let vars: Vec<Var<B>> = inputs.iter().map(|t| Var::param(t.contiguous().expect("contiguous"))).collect();
    let y = f(&vars)?;
    let yv = y.value();
    let dev = yv.device().clone();
    let mut rng = Rng::new(opts.seed);
    let r = Tensor::rand_uniform(-1.0, 1.0, yv.shape().clone(), DType::F64, &mut rng, &dev)?;
    let grads = y.backward_with(r.clone())?;
    let rv = r.to_vec::<f64>()?;

    let loss = |xs: &[Tensor<B>]| -> Result<f64> {
        let vs: Vec<Var<B>> = xs.iter().map(|t| Var::constant(t.clone())).collect();
        let out = no_grad(|| f(&vs))?.value().to_vec::<f64>()?;
        Ok(out.iter().zip(&rv).map(|(a, b)| a * b).sum())
    };

    let mut report = GradcheckReport { passed: true, max_abs_err: 0.0, max_rel_err: 0.0, worst: None, checked: 0 };
    let mut worst_excess = 0.0f64;
    for (i, input) in inputs.iter().enumerate() {
        let analytic = match grads.get(&vars[i]) {
            Some(g) => g.to_vec_f64()?,
            None => vec![0.0; input.elem_count()],
        };
        let base = input.to_vec::<f64>()?;
        let mut xs: Vec<Tensor<B>> = inputs.to_vec();
        for e in 0..base.len() {
            let mut plus = base.clone();
            plus[e] += opts.eps;
            xs[i] = Tensor::from_vec(plus, input.shape().clone(), &dev)?;
            let lp = loss(&xs)?;
            let mut minus = base.clone();
            minus[e] -= opts.eps;
            xs[i] = Tensor::from_vec(minus, input.shape().clone(), &dev)?;
            let lm = loss(&xs)?;
            let numeric = (lp - lm) / (2.0 * opts.eps);
            let a = analytic[e];
            let abs = (a - numeric).abs();
            let scale = a.abs().max(numeric.abs());
            let rel = abs / scale.max(1e-300);
            let allowed = opts.atol + opts.rtol * scale;
            report.checked += 1;
            report.max_abs_err = report.max_abs_err.max(abs);
            if scale > opts.atol {
                report.max_rel_err = report.max_rel_err.max(rel);
            }
            // Written so that a NaN error counts as a failure.
            let within = abs <= allowed;
            if !within {
                report.passed = false;
            }
            if abs - allowed > worst_excess || report.worst.is_none() || (!within && !abs.is_finite()) {
                worst_excess = abs - allowed;
                report.worst = Some((i, e, a, numeric));
            }
        }
        xs[i] = input.clone();
    }
    Ok(report)
}
