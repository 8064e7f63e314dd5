//! Every differentiable op: the forward (a `Tensor` op) and, right below it, its backward.
//! Derivations: docs/autograd.md.

mod conv;
mod ela;
mod elementwise;
mod index;
mod matmul;
mod nn;
mod reduce;
mod view;
