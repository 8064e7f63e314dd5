//! Matrix product. For `Y = A B`: `dA = dY B^T`, `dB = A^T dY`, each summed over broadcast batch
//! dims. The transposes are views, so no copies are made. Derivation: docs/autograd.md#matmul.
//! And the mixed-precision linear map `Y = X cast(W)^T`, whose `dW = dY^T X` is one product with
//! an f32 result (docs/autograd.md#mixed-precision-linear-maps).

use ela_core::{Backend, DType, Error, Result};

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

    /// `self [rows, in] @ cast(w)^T` for a weight `w [out, in]` kept in a wider float dtype than
    /// `self`'s f16/bf16 (mixed precision's f32 master weights): the product runs in `self`'s
    /// dtype on a cast copy of `w`, and `w`'s gradient `dY^T X` is one product of 16-bit operands
    /// with an f32 result ([`ela_core::Tensor::matmul_f32`]), cast to `w`'s dtype only if that is
    /// not f32. The same as `self.matmul(&w.to_dtype(self.dtype())?.t()?)` but for that gradient,
    /// which there is a 16-bit product rounded to 16 bits and then cast back (two launches and
    /// one rounding more).
    pub fn linear_mixed(&self, w: &Self) -> Result<Self> {
        const OP: &str = "linear_mixed";
        let (x, wv) = (self.value(), w.value());
        let half = matches!(x.dtype(), DType::F16 | DType::BF16);
        if !half || x.rank() != 2 || wv.rank() != 2 || !wv.dtype().is_float() {
            return Err(Error::invalid(
                OP,
                format!(
                    "takes x [rows, in] in f16/bf16 and a float weight [out, in], got x {:?} {:?} and w {:?} {:?}",
                    x.dims(),
                    x.dtype(),
                    wv.dims(),
                    wv.dtype()
                ),
            ));
        }
        let (wdt, wc) = (wv.dtype(), wv.to_dtype(x.dtype())?);
        let y = x.matmul(&wc.t()?)?;
        Var::record(OP, y, &[self, w], move |g, needs| {
            let dx = needs[0].then(|| g.matmul(&wc)).transpose()?;
            let dw = match needs[1] {
                true => Some(g.t()?.matmul_f32(&x)?.to_dtype(wdt)?),
                false => None,
            };
            Ok(vec![dx, dw])
        })
    }
}
