//! # ela-autograd
//!
//! Reverse-mode automatic differentiation over [`ela_core::Tensor`].
//!
//! A [`Var`] is a tensor plus, when it was computed from other vars while gradients are enabled,
//! a node recording its inputs and a backward closure. Calling [`Var::backward`] on a scalar
//! walks that graph in reverse topological order, accumulating gradients (a var used twice
//! receives the sum of both contributions) and returns them as [`Grads`].
//!
//! Every op's backward is written by hand directly under its forward, in `ops/` (one file per op
//! family), using only `Tensor` ops, so it runs on any backend. The derivations are in
//! `docs/autograd.md`. [`gradcheck()`] compares any function's gradients with central finite
//! differences in f64.
//!
//! ```
//! use ela_autograd::Var;
//! use ela_core::{Cpu, Tensor};
//! let x = Var::param(Tensor::from_vec(vec![1.0f64, 2.0, 3.0], [3], &Cpu)?);
//! let y = x.mul(&x)?.sum_all()?;         // y = sum x^2
//! let grads = y.backward()?;
//! assert_eq!(grads.get(&x).unwrap().to_vec::<f64>()?, vec![2.0, 4.0, 6.0]);
//! # Ok::<(), ela_core::Error>(())
//! ```
#![warn(missing_docs)]

// The crate README's example runs as a doctest, so the front page cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod accumulate;
mod grad_mode;
pub mod gradcheck;
mod graph;
mod ops;
mod var;

pub use grad_mode::{is_grad_enabled, no_grad, NoGradGuard};
pub use gradcheck::{gradcheck, GradcheckOptions, GradcheckReport};
pub use graph::{GradHook, Grads};
pub use var::{BackwardFn, Var};
