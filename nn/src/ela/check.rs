//! The kernel checker: samples inputs and reports whether `phi(q) . psi(k)` reproduces the
//! kernel's closed form, whether the kernel is non-negative (attention weights must be), and
//! whether the hand-derived VJPs match central finite differences. Everything runs in f64.

use ela_autograd::{no_grad, Var};
use ela_core::{Backend, DType, Error, Result, Rng, Tensor};

use super::kernel::Kernel;

/// What [`check_kernel`] samples.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Input dimension `D`.
    pub dim: usize,
    /// Vectors drawn per scale; every (query, key) pair among them is checked.
    pub samples: usize,
    /// Standard deviations of the normal inputs (one batch of samples per scale).
    pub scales: Vec<f64>,
    /// Rows whose VJPs are checked by finite differences.
    pub vjp_rows: usize,
    /// Finite-difference step.
    pub fd_step: f64,
    /// Seed of the samples.
    pub seed: u64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions { dim: 8, samples: 64, scales: vec![0.25, 1.0, 2.0], vjp_rows: 4, fd_step: 1e-6, seed: 0 }
    }
}

/// A pair of inputs where the kernel is negative.
#[derive(Clone, Debug)]
pub struct NegativePair {
    /// The query.
    pub q: Vec<f64>,
    /// The key.
    pub k: Vec<f64>,
    /// `q . k` (for the blueprint the kernel is negative exactly when this is < -1).
    pub q_dot_k: f64,
    /// The closed-form kernel value there (< 0).
    pub value: f64,
}

/// The checker's findings.
#[derive(Clone, Debug)]
pub struct KernelReport {
    /// Kernel name.
    pub name: String,
    /// Input dimension.
    pub dim: usize,
    /// Feature size `F`.
    pub feature_size: usize,
    /// (query, key) pairs compared.
    pub pairs: usize,
    /// Largest `|phi.psi - k| / max(|k|, 1)` over the pairs.
    pub max_decomposition_error: f64,
    /// Pairs where the closed form is negative.
    pub negative_pairs: usize,
    /// Smallest kernel value seen.
    pub min_value: f64,
    /// The most negative pair, if any.
    pub worst_negative: Option<NegativePair>,
    /// True when some `phi(q)` entry is negative (then the denominator is a cancelling sum).
    pub signed_phi: bool,
    /// True when some `psi(k)` entry is negative.
    pub signed_psi: bool,
    /// Largest relative error of `phi_vjp` against central differences.
    pub phi_vjp_error: f64,
    /// Largest relative error of `psi_vjp` against central differences.
    pub psi_vjp_error: f64,
}

impl KernelReport {
    /// `phi . psi` equals the closed form to `tol` (relative) and both VJPs match finite
    /// differences to `vjp_tol`.
    pub fn exact(&self, tol: f64, vjp_tol: f64) -> bool {
        self.max_decomposition_error <= tol && self.phi_vjp_error <= vjp_tol && self.psi_vjp_error <= vjp_tol
    }
    /// No sampled pair gave a negative kernel value.
    pub fn non_negative(&self) -> bool {
        self.negative_pairs == 0
    }
}

impl std::fmt::Display for KernelReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "kernel {} (D = {}, F = {}), {} pairs", self.name, self.dim, self.feature_size, self.pairs)?;
        writeln!(f, "  decomposition: max |phi.psi - k| / max(|k|, 1) = {:.3e}", self.max_decomposition_error)?;
        writeln!(f, "  VJPs vs finite differences: phi {:.3e}, psi {:.3e}", self.phi_vjp_error, self.psi_vjp_error)?;
        if let Some(n) = &self.worst_negative {
            writeln!(
                f,
                "  NON-NEGATIVITY VIOLATED: {} of {} pairs negative, min k = {:.4e} (at q.k = {:.4})",
                self.negative_pairs, self.pairs, n.value, n.q_dot_k
            )?;
        } else {
            writeln!(f, "  non-negative on every sampled pair (min k = {:.4e})", self.min_value)?;
        }
        if self.signed_phi || self.signed_psi {
            writeln!(f, "  features are signed: the linear-form denominator is a cancelling sum")?;
        }
        Ok(())
    }
}

type VjpFn<'a, B> = dyn Fn(&Tensor<B>, &Tensor<B>) -> Result<Tensor<B>> + 'a;

/// Relative error of a hand-derived VJP against central differences of `sum(map(x) * r)`.
fn vjp_error<B: Backend>(
    map: &dyn Fn(&Tensor<B>) -> Result<Tensor<B>>,
    vjp: &VjpFn<'_, B>,
    x: &Tensor<B>,
    r: &Tensor<B>,
    h: f64,
) -> Result<f64> {
    let analytic = vjp(x, r)?;
    if analytic.dims() != x.dims() {
        return Err(Error::ShapeMismatch {
            op: "check_kernel",
            lhs: x.shape().clone(),
            rhs: analytic.shape().clone(),
            hint: "a feature map's VJP must return a gradient of its input's shape".into(),
        });
    }
    let analytic = analytic.to_vec_f64()?;
    let rv = r.to_vec_f64()?;
    let base = x.to_vec_f64()?;
    let loss = |v: Vec<f64>| -> Result<f64> {
        let y = map(&Tensor::from_vec(v, x.shape().clone(), x.device())?)?.to_vec_f64()?;
        Ok(y.iter().zip(&rv).map(|(a, b)| a * b).sum())
    };
    let mut worst = 0f64;
    for e in 0..base.len() {
        let (mut p, mut m) = (base.clone(), base.clone());
        p[e] += h;
        m[e] -= h;
        let num = (loss(p)? - loss(m)?) / (2.0 * h);
        let err = (num - analytic[e]).abs() / num.abs().max(analytic[e].abs()).max(1.0);
        // `f64::max` drops a NaN operand: a VJP (or a map) that returns NaN must count as the
        // worst error, not as none.
        worst = if err.is_nan() { f64::INFINITY } else { worst.max(err) };
    }
    Ok(worst)
}

/// Sample inputs and check `kernel` (see [`KernelReport`]).
pub fn check_kernel<B: Backend>(kernel: &dyn Kernel<B>, device: &B, opts: &CheckOptions) -> Result<KernelReport> {
    let (d, n) = (opts.dim, opts.samples);
    let mut rng = Rng::new(opts.seed);
    let mut rep = KernelReport {
        name: kernel.name(),
        dim: d,
        feature_size: kernel.feature_size(d),
        pairs: 0,
        max_decomposition_error: 0.0,
        negative_pairs: 0,
        min_value: f64::INFINITY,
        worst_negative: None,
        signed_phi: false,
        signed_psi: false,
        phi_vjp_error: 0.0,
        psi_vjp_error: 0.0,
    };
    for &scale in &opts.scales {
        let q = Tensor::randn(0.0, scale, [n, d], DType::F64, &mut rng, device)?;
        let k = Tensor::randn(0.0, scale, [n, d], DType::F64, &mut rng, device)?;
        let closed = no_grad(|| kernel.kernel_matrix(&Var::constant(q.clone()), &Var::constant(k.clone())))?.value();
        let (phi, psi) = (kernel.phi(&q)?, kernel.psi(&k)?);
        let lin = phi.matmul(&psi.t()?)?;
        let (cv, lv) = (closed.to_vec_f64()?, lin.to_vec_f64()?);
        let (qv, kv) = (q.to_vec_f64()?, k.to_vec_f64()?);
        rep.signed_phi |= phi.to_vec_f64()?.iter().any(|&x| x < 0.0);
        rep.signed_psi |= psi.to_vec_f64()?.iter().any(|&x| x < 0.0);
        for (idx, (&c, &l)) in cv.iter().zip(&lv).enumerate() {
            rep.pairs += 1;
            let err = if c.is_finite() && l.is_finite() { (c - l).abs() / c.abs().max(1.0) } else { f64::INFINITY };
            rep.max_decomposition_error = rep.max_decomposition_error.max(err);
            rep.min_value = rep.min_value.min(c);
            if c < 0.0 {
                rep.negative_pairs += 1;
                if rep.worst_negative.as_ref().filter(|w| w.value <= c).is_none() {
                    let (i, j) = (idx / n, idx % n);
                    let (qi, kj) = (qv[i * d..(i + 1) * d].to_vec(), kv[j * d..(j + 1) * d].to_vec());
                    let q_dot_k = qi.iter().zip(&kj).map(|(a, b)| a * b).sum();
                    rep.worst_negative = Some(NegativePair { q: qi, k: kj, q_dot_k, value: c });
                }
            }
        }
        let rows = opts.vjp_rows.min(n);
        let (qr, kr) = (q.narrow(0, 0, rows)?, k.narrow(0, 0, rows)?);
        let f = kernel.feature_size(d);
        let r = Tensor::randn(0.0, 1.0, [rows, f], DType::F64, &mut rng, device)?;
        let e1 = vjp_error(&|x| kernel.phi(x), &|x, g| kernel.phi_vjp(x, g), &qr, &r, opts.fd_step)?;
        let e2 = vjp_error(&|x| kernel.psi(x), &|x, g| kernel.psi_vjp(x, g), &kr, &r, opts.fd_step)?;
        rep.phi_vjp_error = rep.phi_vjp_error.max(e1);
        rep.psi_vjp_error = rep.psi_vjp_error.max(e2);
    }
    Ok(rep)
}
