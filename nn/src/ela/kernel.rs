//! The [`Kernel`] trait (an exactly decomposable attention kernel `k(q,k) = phi(q) . psi(k)`)
//! and the built-in kernels (the paper's four, the identity, and the elu+1 baseline).
//!
//! A kernel supplies its feature maps and their hand-derived vector-Jacobian products as tensor
//! ops (so the fused chunked op can run it on any backend as [`ElaKernel::Identity`]), and its
//! closed form as autograd ops (the oracle of the quadratic reference and of the
//! [checker](super::check_kernel), which never goes through `phi`/`psi`). The built-ins also name
//! the fused backend kernel that computes their features in place ([`Kernel::fused`]).

use std::sync::Arc;

use ela_autograd::Var;
use ela_core::{Backend, ElaKernel, Result, Tensor};

/// An attention kernel that decomposes exactly as `k(q, k) = phi(q) . psi(k)` with finite
/// feature maps `phi, psi : R^D -> R^F`. All maps act on the last axis and broadcast over the
/// leading ones.
///
/// To add a kernel, implement this trait, then check it with [`super::check_kernel`] (exactness
/// of `phi . psi` against [`Kernel::kernel_matrix`], non-negativity, and the VJPs against
/// finite differences).
pub trait Kernel<B: Backend>: Send + Sync {
    /// Name used in reports.
    fn name(&self) -> String;
    /// Feature size `F` for inputs of dimension `d`.
    fn feature_size(&self, d: usize) -> usize;
    /// `phi(q)`: `[.., d] -> [.., F]`.
    fn phi(&self, q: &Tensor<B>) -> Result<Tensor<B>>;
    /// `psi(k)`: `[.., d] -> [.., F]`.
    fn psi(&self, k: &Tensor<B>) -> Result<Tensor<B>>;
    /// `dq = (d phi / d q)^T d_phi`: `[.., d]` from `[.., F]`.
    fn phi_vjp(&self, q: &Tensor<B>, d_phi: &Tensor<B>) -> Result<Tensor<B>>;
    /// `dk = (d psi / d k)^T d_psi`: `[.., d]` from `[.., F]`.
    fn psi_vjp(&self, k: &Tensor<B>, d_psi: &Tensor<B>) -> Result<Tensor<B>>;
    /// The closed form `k(q_i, k_j)` for every pair: `[.., Tq, d] x [.., Tk, d] -> [.., Tq, Tk]`,
    /// written with autograd ops so its gradient comes from the tape. It must not be computed
    /// through `phi`/`psi`: it is what they are checked against.
    fn kernel_matrix(&self, q: &Var<B>, k: &Var<B>) -> Result<Var<B>>;
    /// The fused backend kernel that computes these features itself, if there is one. User
    /// kernels return `None` and run through [`ElaKernel::Identity`] on `phi(q)`, `psi(k)`.
    fn fused(&self) -> Option<ElaKernel> {
        None
    }
}

/// `|x|^2` over the last axis, keeping it: `[.., 1]`.
fn sq_norm<B: Backend>(x: &Tensor<B>) -> Result<Tensor<B>> {
    x.square()?.sum(-1isize, true)
}

fn sq_norm_var<B: Backend>(x: &Var<B>) -> Result<Var<B>> {
    x.square()?.sum(-1isize, true)
}

fn last_dim<B: Backend>(x: &Tensor<B>) -> usize {
    x.dims().last().copied().unwrap_or(0)
}

/// `x[.., a .. a+len]`.
fn cols<B: Backend>(x: &Tensor<B>, a: usize, len: usize) -> Result<Tensor<B>> {
    x.narrow(-1isize, a, len)
}

/// `(q, |q|^2, 1)`: the query map of both squared-Euclidean kernels.
fn sq_euclid_phi<B: Backend>(q: &Tensor<B>) -> Result<Tensor<B>> {
    let n = sq_norm(q)?;
    Tensor::concat(&[q, &n, &n.ones_like()?], -1isize)
}

/// `(sign 2k, 1, |k|^2)`.
fn sq_euclid_psi<B: Backend>(k: &Tensor<B>, sign: f64) -> Result<Tensor<B>> {
    let n = sq_norm(k)?;
    Tensor::concat(&[&k.mul_scalar(2.0 * sign)?, &n.ones_like()?, &n], -1isize)
}

/// (V2) `phi = (q, |q|^2, 1)`: `dq = d_phi[..d] + 2 q d_phi[d]`.
fn sq_euclid_phi_vjp<B: Backend>(q: &Tensor<B>, g: &Tensor<B>) -> Result<Tensor<B>> {
    let d = last_dim(q);
    cols(g, 0, d)?.add(&q.mul(&cols(g, d, 1)?)?.mul_scalar(2.0)?)
}

/// (V3), (V4) `psi = (sign 2k, 1, |k|^2)`: `dk = sign 2 d_psi[..d] + 2 k d_psi[d+1]`.
fn sq_euclid_psi_vjp<B: Backend>(k: &Tensor<B>, g: &Tensor<B>, sign: f64) -> Result<Tensor<B>> {
    let d = last_dim(k);
    cols(g, 0, d)?.mul_scalar(2.0 * sign)?.add(&k.mul(&cols(g, d + 1, 1)?)?.mul_scalar(2.0)?)
}

/// `(|x|^2 + 1)(x, 1)`: both blueprint maps.
fn blueprint_map<B: Backend>(x: &Tensor<B>) -> Result<Tensor<B>> {
    let n = sq_norm(x)?.add_scalar(1.0)?;
    let ones = n.ones_like()?;
    Tensor::concat(&[x, &ones], -1isize)?.mul(&n)
}

/// (V5) `f = n (x, 1)`, `n = |x|^2 + 1`: `dx = n g[..d] + 2 x (g[..d] . x + g[d])`.
fn blueprint_vjp<B: Backend>(x: &Tensor<B>, g: &Tensor<B>) -> Result<Tensor<B>> {
    let d = last_dim(x);
    let gx = cols(g, 0, d)?;
    let n = sq_norm(x)?.add_scalar(1.0)?;
    let s = gx.mul(x)?.sum(-1isize, true)?.add(&cols(g, d, 1)?)?;
    gx.mul(&n)?.add(&x.mul(&s)?.mul_scalar(2.0)?)
}

/// Hadamard Exp, the default: `k(q,k) = sum_d exp(q_d) exp(k_d)`, `phi = exp(q)`, `psi = exp(k)`,
/// `F = D`. Positive everywhere. The tensor-level maps are the plain exponentials (they overflow
/// f32 above ~88); the fused op applies exact shifts instead (docs/ela.md#numerics).
#[derive(Clone, Copy, Debug, Default)]
pub struct HadamardExp;

impl<B: Backend> Kernel<B> for HadamardExp {
    fn name(&self) -> String {
        ElaKernel::HadamardExp.name().into()
    }
    fn feature_size(&self, d: usize) -> usize {
        d
    }
    fn phi(&self, q: &Tensor<B>) -> Result<Tensor<B>> {
        q.exp()
    }
    fn psi(&self, k: &Tensor<B>) -> Result<Tensor<B>> {
        k.exp()
    }
    fn phi_vjp(&self, q: &Tensor<B>, d_phi: &Tensor<B>) -> Result<Tensor<B>> {
        // (V1)
        d_phi.mul(&q.exp()?)
    }
    fn psi_vjp(&self, k: &Tensor<B>, d_psi: &Tensor<B>) -> Result<Tensor<B>> {
        d_psi.mul(&k.exp()?)
    }
    /// `sum_d exp(q_d + k_d) = sum_d exp(q_d) exp(k_d)`: for this kernel the closed form is itself
    /// a product of exponentials, so it is written as one (`exp(Q) exp(K)^T`).
    fn kernel_matrix(&self, q: &Var<B>, k: &Var<B>) -> Result<Var<B>> {
        q.exp()?.matmul(&k.exp()?.t()?)
    }
    fn fused(&self) -> Option<ElaKernel> {
        Some(ElaKernel::HadamardExp)
    }
}

/// Summation Squared Euclidean: `k(q,k) = |q+k|^2`, `phi = (q, |q|^2, 1)`,
/// `psi = (2k, 1, |k|^2)`, `F = D + 2`. The kernel is >= 0 but the features are signed, so the
/// linear form's denominator is a cancelling sum (docs/ela.md#signed-kernels).
#[derive(Clone, Copy, Debug, Default)]
pub struct SumSqEuclid;

impl<B: Backend> Kernel<B> for SumSqEuclid {
    fn name(&self) -> String {
        ElaKernel::SumSqEuclid.name().into()
    }
    fn feature_size(&self, d: usize) -> usize {
        d + 2
    }
    fn phi(&self, q: &Tensor<B>) -> Result<Tensor<B>> {
        sq_euclid_phi(q)
    }
    fn psi(&self, k: &Tensor<B>) -> Result<Tensor<B>> {
        sq_euclid_psi(k, 1.0)
    }
    fn phi_vjp(&self, q: &Tensor<B>, d_phi: &Tensor<B>) -> Result<Tensor<B>> {
        sq_euclid_phi_vjp(q, d_phi)
    }
    fn psi_vjp(&self, k: &Tensor<B>, d_psi: &Tensor<B>) -> Result<Tensor<B>> {
        sq_euclid_psi_vjp(k, d_psi, 1.0)
    }
    /// `|q|^2 + 2 q.k + |k|^2`.
    fn kernel_matrix(&self, q: &Var<B>, k: &Var<B>) -> Result<Var<B>> {
        let qk = q.matmul(&k.t()?)?.mul_scalar(2.0)?;
        sq_norm_var(q)?.add(&qk)?.add(&sq_norm_var(k)?.t()?)
    }
    fn fused(&self) -> Option<ElaKernel> {
        Some(ElaKernel::SumSqEuclid)
    }
}

/// Subtraction Squared Euclidean: `k(q,k) = |q-k|^2`, `phi = (q, |q|^2, 1)`,
/// `psi = (-2k, 1, |k|^2)`, `F = D + 2`. Same caveat as [`SumSqEuclid`]; the denominator
/// vanishes when every key equals the query.
#[derive(Clone, Copy, Debug, Default)]
pub struct SubSqEuclid;

impl<B: Backend> Kernel<B> for SubSqEuclid {
    fn name(&self) -> String {
        ElaKernel::SubSqEuclid.name().into()
    }
    fn feature_size(&self, d: usize) -> usize {
        d + 2
    }
    fn phi(&self, q: &Tensor<B>) -> Result<Tensor<B>> {
        sq_euclid_phi(q)
    }
    fn psi(&self, k: &Tensor<B>) -> Result<Tensor<B>> {
        sq_euclid_psi(k, -1.0)
    }
    fn phi_vjp(&self, q: &Tensor<B>, d_phi: &Tensor<B>) -> Result<Tensor<B>> {
        sq_euclid_phi_vjp(q, d_phi)
    }
    fn psi_vjp(&self, k: &Tensor<B>, d_psi: &Tensor<B>) -> Result<Tensor<B>> {
        sq_euclid_psi_vjp(k, d_psi, -1.0)
    }
    /// `|q|^2 - 2 q.k + |k|^2`.
    fn kernel_matrix(&self, q: &Var<B>, k: &Var<B>) -> Result<Var<B>> {
        let qk = q.matmul(&k.t()?)?.mul_scalar(-2.0)?;
        sq_norm_var(q)?.add(&qk)?.add(&sq_norm_var(k)?.t()?)
    }
    fn fused(&self) -> Option<ElaKernel> {
        Some(ElaKernel::SubSqEuclid)
    }
}

/// The paper's "restore standard attention" blueprint `(q.k + 1)(|q|^2 + 1)(|k|^2 + 1)`,
/// `phi = (|q|^2+1)(q, 1)`, `psi = (|k|^2+1)(k, 1)`, `F = D + 1`. It is **negative whenever
/// `q.k < -1`**, violating the non-negativity attention weights need; the checker reports it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Blueprint;

impl<B: Backend> Kernel<B> for Blueprint {
    fn name(&self) -> String {
        ElaKernel::Blueprint.name().into()
    }
    fn feature_size(&self, d: usize) -> usize {
        d + 1
    }
    fn phi(&self, q: &Tensor<B>) -> Result<Tensor<B>> {
        blueprint_map(q)
    }
    fn psi(&self, k: &Tensor<B>) -> Result<Tensor<B>> {
        blueprint_map(k)
    }
    fn phi_vjp(&self, q: &Tensor<B>, d_phi: &Tensor<B>) -> Result<Tensor<B>> {
        blueprint_vjp(q, d_phi)
    }
    fn psi_vjp(&self, k: &Tensor<B>, d_psi: &Tensor<B>) -> Result<Tensor<B>> {
        blueprint_vjp(k, d_psi)
    }
    fn kernel_matrix(&self, q: &Var<B>, k: &Var<B>) -> Result<Var<B>> {
        let qk1 = q.matmul(&k.t()?)?.add_scalar(1.0)?;
        qk1.mul(&sq_norm_var(q)?.add_scalar(1.0)?)?.mul(&sq_norm_var(k)?.add_scalar(1.0)?.t()?)
    }
    fn fused(&self) -> Option<ElaKernel> {
        Some(ElaKernel::Blueprint)
    }
}

/// The linear kernel `k(q,k) = q.k` with `phi = q`, `psi = k`: for inputs that already are
/// feature vectors. Not non-negative in general.
#[derive(Clone, Copy, Debug, Default)]
pub struct Identity;

impl<B: Backend> Kernel<B> for Identity {
    fn name(&self) -> String {
        ElaKernel::Identity.name().into()
    }
    fn feature_size(&self, d: usize) -> usize {
        d
    }
    fn phi(&self, q: &Tensor<B>) -> Result<Tensor<B>> {
        Ok(q.clone())
    }
    fn psi(&self, k: &Tensor<B>) -> Result<Tensor<B>> {
        Ok(k.clone())
    }
    fn phi_vjp(&self, _q: &Tensor<B>, d_phi: &Tensor<B>) -> Result<Tensor<B>> {
        Ok(d_phi.clone())
    }
    fn psi_vjp(&self, _k: &Tensor<B>, d_psi: &Tensor<B>) -> Result<Tensor<B>> {
        Ok(d_psi.clone())
    }
    fn kernel_matrix(&self, q: &Var<B>, k: &Var<B>) -> Result<Var<B>> {
        q.matmul(&k.t()?)
    }
    fn fused(&self) -> Option<ElaKernel> {
        Some(ElaKernel::Identity)
    }
}

/// `elu(x) + 1 = max(x, 0) + exp(min(x, 0))`: `x + 1` for `x > 0`, `exp(x)` otherwise.
fn elu_plus_one_map<B: Backend>(x: &Tensor<B>) -> Result<Tensor<B>> {
    x.relu()?.add(&x.minimum_scalar(0.0)?.exp()?)
}

/// `d(elu(x) + 1)/dx = [x > 0] + exp(x) [x <= 0] = exp(min(x, 0))`, so `dx = g * exp(min(x, 0))`
/// (docs/ela.md (V6)); at `x = 0` both sides give 1, so the map is continuously differentiable.
fn elu_plus_one_vjp<B: Backend>(x: &Tensor<B>, g: &Tensor<B>) -> Result<Tensor<B>> {
    g.mul(&x.minimum_scalar(0.0)?.exp()?)
}

/// Linear attention with the `elu(x) + 1` feature map (Katharopoulos et al., 2020), the
/// "earlier linear attention" the paper compares against: `k(q,k) = sum_d (elu(q_d)+1)(elu(k_d)+1)`,
/// `phi = elu(q) + 1`, `psi = elu(k) + 1`, `F = D`. Features are positive (so the denominator is
/// a sum of positive terms), but a feature grows only linearly in its input, which makes the
/// attention weights far less peaked than softmax's or Hadamard Exp's.
#[derive(Clone, Copy, Debug, Default)]
pub struct EluPlusOne;

impl<B: Backend> Kernel<B> for EluPlusOne {
    fn name(&self) -> String {
        ElaKernel::EluPlusOne.name().into()
    }
    fn feature_size(&self, d: usize) -> usize {
        d
    }
    fn phi(&self, q: &Tensor<B>) -> Result<Tensor<B>> {
        elu_plus_one_map(q)
    }
    fn psi(&self, k: &Tensor<B>) -> Result<Tensor<B>> {
        elu_plus_one_map(k)
    }
    fn phi_vjp(&self, q: &Tensor<B>, d_phi: &Tensor<B>) -> Result<Tensor<B>> {
        elu_plus_one_vjp(q, d_phi)
    }
    fn psi_vjp(&self, k: &Tensor<B>, d_psi: &Tensor<B>) -> Result<Tensor<B>> {
        elu_plus_one_vjp(k, d_psi)
    }
    /// Like Hadamard Exp, the kernel is *defined* as a sum of per-coordinate products, so its closed
    /// form is the product of the two maps, here written with the autograd ops `max(x, 0)` and
    /// `exp(min(x, 0))` (a different op path from the tensor-level `relu`-based map).
    fn kernel_matrix(&self, q: &Var<B>, k: &Var<B>) -> Result<Var<B>> {
        let f = |x: &Var<B>| -> Result<Var<B>> { x.maximum_scalar(0.0)?.add(&x.minimum_scalar(0.0)?.exp()?) };
        f(q)?.matmul(&f(k)?.t()?)
    }
    fn fused(&self) -> Option<ElaKernel> {
        Some(ElaKernel::EluPlusOne)
    }
}

/// The built-in kernel object for a fused kernel id.
pub fn builtin<B: Backend>(kernel: ElaKernel) -> Arc<dyn Kernel<B>> {
    match kernel {
        ElaKernel::HadamardExp => Arc::new(HadamardExp),
        ElaKernel::SumSqEuclid => Arc::new(SumSqEuclid),
        ElaKernel::SubSqEuclid => Arc::new(SubSqEuclid),
        ElaKernel::Blueprint => Arc::new(Blueprint),
        ElaKernel::Identity => Arc::new(Identity),
        ElaKernel::EluPlusOne => Arc::new(EluPlusOne),
    }
}

/// The built-in kernel named `name` (`hadamard-exp`, `sum-sq-euclid`, `sub-sq-euclid`,
/// `blueprint`, `identity`, `elu-plus-one`).
pub fn builtin_by_name<B: Backend>(name: &str) -> Result<Arc<dyn Kernel<B>>> {
    Ok(builtin(name.parse::<ElaKernel>()?))
}
