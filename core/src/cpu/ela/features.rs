//! Feature maps of the built-in kernels other than Hadamard Exp (the signed ones, Identity and
//! elu+1) and their vector-Jacobian products (docs/ela.md, (V2)-(V6)), one row at a time. Hadamard Exp has no entry here: its features carry log-scales and are built in
//! `chunk.rs` / `step.rs` (docs/ela.md#numerics).
//!
//! | kernel | phi(q) | psi(k) |
//! |---|---|---|
//! | SumSqEuclid | (q, \|q\|^2, 1) | (2k, 1, \|k\|^2) |
//! | SubSqEuclid | (q, \|q\|^2, 1) | (-2k, 1, \|k\|^2) |
//! | Blueprint | (\|q\|^2+1)(q, 1) | (\|k\|^2+1)(k, 1) |
//! | Identity | q | k |
//! | EluPlusOne | elu(q) + 1 | elu(k) + 1 |

use crate::dtype::Float;
use crate::ela::ElaKernel;

fn sq_norm<T: Float>(x: &[T]) -> T {
    x.iter().fold(T::ZERO, |a, &b| a + b * b)
}

/// `out = phi(q)` (`out.len() == F`).
pub(crate) fn phi_row<T: Float>(kernel: ElaKernel, q: &[T], out: &mut [T]) {
    let d = q.len();
    match kernel {
        ElaKernel::SumSqEuclid | ElaKernel::SubSqEuclid => {
            out[..d].copy_from_slice(q);
            out[d] = sq_norm(q);
            out[d + 1] = T::ONE;
        }
        ElaKernel::Blueprint => blueprint(q, out),
        ElaKernel::EluPlusOne => elu_plus_one(q, out),
        // Identity; Hadamard Exp never reaches here (its features are shifted exps).
        ElaKernel::Identity | ElaKernel::HadamardExp => out.copy_from_slice(q),
    }
}

/// `out = psi(k)`.
pub(crate) fn psi_row<T: Float>(kernel: ElaKernel, k: &[T], out: &mut [T]) {
    let d = k.len();
    match kernel {
        ElaKernel::SumSqEuclid | ElaKernel::SubSqEuclid => {
            let two = if kernel == ElaKernel::SumSqEuclid { T::ONE + T::ONE } else { -(T::ONE + T::ONE) };
            for (o, &x) in out[..d].iter_mut().zip(k) {
                *o = two * x;
            }
            out[d] = T::ONE;
            out[d + 1] = sq_norm(k);
        }
        ElaKernel::Blueprint => blueprint(k, out),
        ElaKernel::EluPlusOne => elu_plus_one(k, out),
        ElaKernel::Identity | ElaKernel::HadamardExp => out.copy_from_slice(k),
    }
}

/// `(|x|^2 + 1)(x, 1)`: both blueprint feature maps.
fn blueprint<T: Float>(x: &[T], out: &mut [T]) {
    let d = x.len();
    let n = sq_norm(x) + T::ONE;
    for (o, &xi) in out[..d].iter_mut().zip(x) {
        *o = n * xi;
    }
    out[d] = n;
}

/// `elu(x) + 1`: `x + 1` for `x > 0`, `exp(x)` otherwise (both maps of EluPlusOne, docs/ela.md (K5)).
fn elu_plus_one<T: Float>(x: &[T], out: &mut [T]) {
    for (o, &xi) in out.iter_mut().zip(x) {
        *o = if xi > T::ZERO { xi + T::ONE } else { xi.exp() };
    }
}

/// `d(elu(x) + 1)/dx = exp(min(x, 0))`, so `dx = g * exp(min(x, 0))` (docs/ela.md (V6)).
fn elu_plus_one_vjp<T: Float>(x: &[T], g: &[T], dx: &mut [T]) {
    for ((o, &xi), &gi) in dx.iter_mut().zip(x).zip(g) {
        *o = if xi > T::ZERO { gi } else { gi * xi.exp() };
    }
}

/// `dq = (d phi / d q)^T dphi`.
pub(crate) fn phi_vjp_row<T: Float>(kernel: ElaKernel, q: &[T], dphi: &[T], dq: &mut [T]) {
    let d = q.len();
    match kernel {
        // (V2) phi = (q, |q|^2, 1): dq = dphi[..d] + 2 q dphi[d]
        ElaKernel::SumSqEuclid | ElaKernel::SubSqEuclid => {
            let s = (T::ONE + T::ONE) * dphi[d];
            for e in 0..d {
                dq[e] = dphi[e] + s * q[e];
            }
        }
        ElaKernel::Blueprint => blueprint_vjp(q, dphi, dq),
        ElaKernel::EluPlusOne => elu_plus_one_vjp(q, dphi, dq),
        ElaKernel::Identity | ElaKernel::HadamardExp => dq.copy_from_slice(dphi),
    }
}

/// `dk = (d psi / d k)^T dpsi`.
pub(crate) fn psi_vjp_row<T: Float>(kernel: ElaKernel, k: &[T], dpsi: &[T], dk: &mut [T]) {
    let d = k.len();
    match kernel {
        // (V3), (V4) psi = (+-2k, 1, |k|^2): dk = +-2 dpsi[..d] + 2 k dpsi[d+1]
        ElaKernel::SumSqEuclid | ElaKernel::SubSqEuclid => {
            let two = T::ONE + T::ONE;
            let lin = if kernel == ElaKernel::SumSqEuclid { two } else { -two };
            let s = two * dpsi[d + 1];
            for e in 0..d {
                dk[e] = lin * dpsi[e] + s * k[e];
            }
        }
        ElaKernel::Blueprint => blueprint_vjp(k, dpsi, dk),
        ElaKernel::EluPlusOne => elu_plus_one_vjp(k, dpsi, dk),
        ElaKernel::Identity | ElaKernel::HadamardExp => dk.copy_from_slice(dpsi),
    }
}

/// (V5) For `f = n (x, 1)`, `n = |x|^2 + 1`: `f_d = n x_d`, `f_D = n`, so
/// `dx_e = n g_e + 2 x_e (sum_d g_d x_d + g_D)`.
fn blueprint_vjp<T: Float>(x: &[T], g: &[T], dx: &mut [T]) {
    let d = x.len();
    let n = sq_norm(x) + T::ONE;
    let s = x.iter().zip(g).fold(g[d], |a, (&xi, &gi)| a + xi * gi);
    let two_s = (T::ONE + T::ONE) * s;
    for e in 0..d {
        dx[e] = n * g[e] + two_s * x[e];
    }
}
