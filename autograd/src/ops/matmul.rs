//! Matrix product. For `Y = A B`: `dA = dY B^T`, `dB = A^T dY`, each summed over broadcast batch
//! dims. The transposes are views, so no copies are made. Derivation: docs/autograd.md#matmul.
//! And the mixed-precision linear map `Y = X cast(W)^T`, whose `dW = dY^T X` is one product with
//! an f32 result (docs/autograd.md#mixed-precision-linear-maps), and the stacked linear map of
//! several weights that read one input.

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
        self.linear_mixed_from("linear_mixed", w, None)
    }

    /// [`Var::linear_mixed`] with `w`'s cast already made: `wc` holds `w`'s values in `self`'s
    /// dtype (a view of [`ela_core::Tensor::cast_concat`]'s buffer, when a training step casts
    /// all its weights at once). Its shape and dtype are checked; its values are taken as the
    /// cast of `w`'s (checking them would cost the cast this saves), and the gradients are those
    /// of [`Var::linear_mixed`].
    pub fn linear_mixed_cast(&self, w: &Self, wc: &ela_core::Tensor<B>) -> Result<Self> {
        self.linear_mixed_from("linear_mixed_cast", w, Some(wc))
    }

    fn linear_mixed_from(&self, op: &'static str, w: &Self, wc: Option<&ela_core::Tensor<B>>) -> Result<Self> {
        let (x, wv) = (self.value(), w.value());
        let half = matches!(x.dtype(), DType::F16 | DType::BF16);
        if !half || x.rank() != 2 || wv.rank() != 2 || !wv.dtype().is_float() {
            return Err(Error::invalid(
                op,
                format!(
                    "takes x [rows, in] in f16/bf16 and a float weight [out, in], got x {:?} {:?} and w {:?} {:?}",
                    x.dims(),
                    x.dtype(),
                    wv.dims(),
                    wv.dtype()
                ),
            ));
        }
        let wc = match wc {
            None => wv.to_dtype(x.dtype())?,
            Some(c) => {
                check_cast(op, &[&wv], &[c], x.dtype())?;
                c.clone()
            }
        };
        let wdt = wv.dtype();
        let y = x.matmul(&wc.t()?)?;
        Var::record(op, y, &[self, w], move |g, needs| {
            let dx = needs[0].then(|| g.matmul(&wc)).transpose()?;
            let dw = match needs[1] {
                true => Some(g.t()?.matmul_f32(&x)?.to_dtype(wdt)?),
                false => None,
            };
            Ok(vec![dx, dw])
        })
    }

    /// `self [rows, in] @ [w_1; w_2; ..]^T`: several weights `w_i [out_i, in]` that read the same
    /// input, as one product with their rows stacked, `[rows, sum of out_i]` (a transformer's q,
    /// k, v projections, or SwiGLU's gate and up). One node whose parents are `self` and the
    /// weights themselves: it keeps one stacked copy of the weights, in `self`'s dtype (what `dx
    /// = dY W` reads); a `Var::concat` of wider master weights would keep a second one, in their
    /// dtype, alive as the concat node's value until the backward. The weights share one float
    /// dtype: that of `self`, or (mixed precision) a wider one than `self`'s f16/bf16, whose
    /// gradient `dW = dY^T X` is then one product with an f32 result as in
    /// [`Var::linear_mixed`]. Each weight's gradient is its rows of `dW`.
    pub fn linear_stacked(&self, ws: &[&Self]) -> Result<Self> {
        self.linear_stacked_from("linear_stacked", ws, None)
    }

    /// [`Var::linear_stacked`] with the weights' casts already made: `casts[i]` holds `ws[i]`'s
    /// values in `self`'s dtype. Casts that lie back to back in one buffer (views of one
    /// [`ela_core::Tensor::cast_concat`], in the weights' order) are the stacked weight as they
    /// are, with no copy; others are concatenated. As with [`Var::linear_mixed_cast`], shapes
    /// and dtypes are checked, values are not, and the gradients are [`Var::linear_stacked`]'s.
    pub fn linear_stacked_cast(&self, ws: &[&Self], casts: &[&ela_core::Tensor<B>]) -> Result<Self> {
        self.linear_stacked_from("linear_stacked_cast", ws, Some(casts))
    }

    fn linear_stacked_from(
        &self,
        op: &'static str,
        ws: &[&Self],
        casts: Option<&[&ela_core::Tensor<B>]>,
    ) -> Result<Self> {
        let x = self.value();
        let Some(first) = ws.first().map(|w| w.value()) else {
            return Err(Error::invalid(op, "needs at least one weight"));
        };
        let (cdt, wdt) = (x.dtype(), first.dtype());
        let half = matches!(cdt, DType::F16 | DType::BF16);
        let ok_dtypes = cdt.is_float() && wdt.is_float() && (wdt == cdt || half);
        let vals: Vec<_> = ws.iter().map(|w| w.value()).collect();
        // Every operand a matrix, the weights of one dtype, all reading `in = x.dims()[1]`.
        let in_dim = (x.rank() == 2).then(|| x.dims()[1]);
        let fits = |w: &ela_core::Tensor<B>| w.rank() == 2 && w.dtype() == wdt && Some(w.dims()[1]) == in_dim;
        if !ok_dtypes || !vals.iter().all(fits) {
            let ws: Vec<String> = vals.iter().map(|w| format!("{:?} {:?}", w.dims(), w.dtype())).collect();
            return Err(Error::invalid(
                op,
                format!(
                    "takes x [rows, in] and weights [out_i, in] of one float dtype (x's, or wider than x's f16/bf16); \
                     got x {:?} {:?} and weights {}",
                    x.dims(),
                    cdt,
                    ws.join(", ")
                ),
            ));
        }
        let wc = match casts {
            // The casts are temporaries, freed before the product; only the stacked copy lives on.
            None => {
                let cast: Vec<_> = vals.iter().map(|w| w.to_dtype(cdt)).collect::<Result<_>>()?;
                ela_core::Tensor::concat(&cast.iter().collect::<Vec<_>>(), 0)?
            }
            Some(casts) => {
                check_cast(op, &vals.iter().collect::<Vec<_>>(), casts, cdt)?;
                ela_core::Tensor::concat(casts, 0)?
            }
        };
        let y = x.matmul(&wc.t()?)?;
        let outs: Vec<usize> = vals.iter().map(|w| w.dims()[0]).collect();
        let parents: Vec<&Self> = std::iter::once(self).chain(ws.iter().copied()).collect();
        Var::record(op, y, &parents, move |g, needs| {
            let mut grads = vec![needs[0].then(|| g.matmul(&wc)).transpose()?];
            // In one dtype, `dW` is formed as `(X^T G)^T` (a transposed view; each weight's rows
            // are copied out below): the product the matmul node forms for `x @ w^T`, so
            // stacking the weights leaves their gradients' GEMM as it was.
            let dw = match needs[1..].iter().any(|&n| n) {
                true if wdt != cdt => Some(g.t()?.matmul_f32(&x)?),
                true => Some(x.t()?.matmul(g)?.t()?),
                false => None,
            };
            let mut at = 0;
            for (&n, &need) in outs.iter().zip(&needs[1..]) {
                let part = match (&dw, need) {
                    (Some(dw), true) => {
                        let rows = dw.narrow(0, at, n)?.contiguous()?;
                        Some(if rows.dtype() == wdt { rows } else { rows.to_dtype(wdt)? })
                    }
                    _ => None,
                };
                grads.push(part);
                at += n;
            }
            Ok(grads)
        })
    }
}

/// That `casts` are one tensor per weight of `ws`, each of its weight's shape in dtype `to`.
fn check_cast<B: Backend>(
    op: &'static str,
    ws: &[&ela_core::Tensor<B>],
    casts: &[&ela_core::Tensor<B>],
    to: DType,
) -> Result<()> {
    let fits = ws.len() == casts.len() && ws.iter().zip(casts).all(|(w, c)| w.dims() == c.dims() && c.dtype() == to);
    if fits {
        return Ok(());
    }
    let list =
        |ts: &[&ela_core::Tensor<B>]| ts.iter().map(|t| format!("{:?} {:?}", t.dims(), t.dtype())).collect::<Vec<_>>();
    Err(Error::invalid(
        op,
        format!(
            "takes one cast per weight, of the weight's shape in the input's dtype {to:?}; got weights {:?} and casts {:?}",
            list(ws),
            list(casts)
        ),
    ))
}
