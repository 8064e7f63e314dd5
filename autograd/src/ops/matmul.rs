//! Matrix product. For `Y = A B`: `dA = dY B^T`, `dB = A^T dY`, each summed over broadcast batch
//! dims. The transposes are views, so no copies are made. Derivation: docs/autograd.md#matmul.

use ela_core::{Backend, Result};

use crate::var::Var;

impl<B: Backend> Var<B> {
    /// Matrix product with broadcast batch dims (see [`ela_core::Tensor::matmul`]).
    pub fn matmul(&self, rhs: &Self) -> Result<Self> {
        let (a, b) = (self.value(), rhs.value());
        let y = a.matmul(&b)?;
        Var::record("matmul", y, &[self, rhs], move |g, needs| {
            Ok(vec![
                needs[0].then(|| g.matmul(&b.t()?)?.sum_to(a.shape())).transpose()?,
                needs[1].then(|| a.t()?.matmul(g)?.sum_to(b.shape())).transpose()?,
            ])
        })
    }
}
