//! Last-axis normalisations: [`RmsNorm`] and [`LayerNorm`], both on the fused kernels (one
//! pass forward, one backward) rather than a chain of elementwise ops.

use ela_autograd::Var;
use ela_core::{Backend, Error, Result};

use super::linear::join;
use crate::module::{Forward, Init, Module, ParamStore};

fn check_eps(eps: f64, op: &'static str) -> Result<()> {
    if !(eps >= 0.0 && eps.is_finite()) {
        return Err(Error::invalid(op, format!("eps must be finite and >= 0, got {eps}")));
    }
    Ok(())
}

fn check_last(x: &Var<impl Backend>, dim: usize, op: &'static str) -> Result<()> {
    if x.dims().last() != Some(&dim) {
        return Err(Error::ShapeMismatch {
            op,
            lhs: x.shape(),
            rhs: dim.into(),
            hint: format!("the input's last dimension must be the normalised size {dim}"),
        });
    }
    Ok(())
}

/// `y = x / sqrt(mean(x^2) + eps) * weight` over the last axis (Zhang & Sennrich 2019).
pub struct RmsNorm<B: Backend> {
    weight: Var<B>,
    eps: f64,
    name: String,
}

impl<B: Backend> Clone for RmsNorm<B> {
    fn clone(&self) -> Self {
        RmsNorm { weight: self.weight.clone(), eps: self.eps, name: self.name.clone() }
    }
}

impl<B: Backend> RmsNorm<B> {
    /// Register `weight [dim]` (ones) under `vs`. Typical `eps`: 1e-5 or 1e-6.
    pub fn new(vs: &ParamStore<B>, dim: usize, eps: f64) -> Result<Self> {
        check_eps(eps, "RmsNorm::new")?;
        let weight = vs.param("weight", [dim], Init::Ones)?;
        Ok(RmsNorm { weight, eps, name: vs.prefix().to_string() })
    }

    /// A norm over an existing gain `weight [dim]`.
    pub fn from_var(name: &str, weight: Var<B>, eps: f64) -> Result<Self> {
        check_eps(eps, "RmsNorm")?;
        if weight.rank() != 1 {
            return Err(Error::RankMismatch {
                op: "RmsNorm",
                expected: "1 ([dim]) for the weight",
                shape: weight.shape(),
            });
        }
        Ok(RmsNorm { weight, eps, name: name.to_string() })
    }

    /// The gain `[dim]`.
    pub fn weight(&self) -> &Var<B> {
        &self.weight
    }

    /// The `eps` added to the mean square.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// Normalise `x [.., dim]`.
    pub fn forward(&self, x: &Var<B>) -> Result<Var<B>> {
        check_last(x, self.weight.dims()[0], "RmsNorm")?;
        x.rms_norm(Some(&self.weight), self.eps)
    }

    /// `h = x + r` and the norm of `h`: `(h, norm(h))`, a pre-norm block's residual sum and the
    /// norm that reads it. Operands of one shape and dtype take [`Var::add_rms_norm`] (one pass
    /// over the rows on a GPU); others (a broadcast or mixed-dtype sum) the add and then the norm.
    /// Either way the values and gradients are those of `x.add(r)` followed by
    /// [`RmsNorm::forward`].
    pub fn add_forward(&self, x: &Var<B>, r: &Var<B>) -> Result<(Var<B>, Var<B>)> {
        if x.shape() == r.shape() && x.dtype() == r.dtype() {
            check_last(x, self.weight.dims()[0], "RmsNorm")?;
            x.add_rms_norm(r, Some(&self.weight), self.eps)
        } else {
            let h = x.add(r)?;
            let y = self.forward(&h)?;
            Ok((h, y))
        }
    }
}

impl<B: Backend> Module<B> for RmsNorm<B> {
    fn named_params(&self) -> Vec<(String, Var<B>)> {
        vec![(join(&self.name, "weight"), self.weight.clone())]
    }
}

impl<B: Backend> Forward<B> for RmsNorm<B> {
    fn forward(&self, x: &Var<B>) -> Result<Var<B>> {
        RmsNorm::forward(self, x)
    }
}

/// `y = (x - mean) / sqrt(var + eps) * weight + bias` over the last axis (biased variance, as in
/// PyTorch).
pub struct LayerNorm<B: Backend> {
    weight: Option<Var<B>>,
    bias: Option<Var<B>>,
    dim: usize,
    eps: f64,
    name: String,
}

impl<B: Backend> Clone for LayerNorm<B> {
    fn clone(&self) -> Self {
        LayerNorm {
            weight: self.weight.clone(),
            bias: self.bias.clone(),
            dim: self.dim,
            eps: self.eps,
            name: self.name.clone(),
        }
    }
}

impl<B: Backend> LayerNorm<B> {
    /// Register `weight [dim]` (ones) and, when `bias`, `bias [dim]` (zeros) under `vs`.
    pub fn new(vs: &ParamStore<B>, dim: usize, eps: f64, bias: bool) -> Result<Self> {
        check_eps(eps, "LayerNorm::new")?;
        let weight = Some(vs.param("weight", [dim], Init::Ones)?);
        let bias = if bias { Some(vs.param("bias", [dim], Init::Zeros)?) } else { None };
        Ok(LayerNorm { weight, bias, dim, eps, name: vs.prefix().to_string() })
    }

    /// A norm over existing (optional) `weight [dim]` and `bias [dim]`; neither gives the plain
    /// standardisation.
    pub fn from_vars(name: &str, dim: usize, weight: Option<Var<B>>, bias: Option<Var<B>>, eps: f64) -> Result<Self> {
        check_eps(eps, "LayerNorm")?;
        for p in weight.iter().chain(bias.iter()) {
            if p.dims() != [dim] {
                return Err(Error::ShapeMismatch {
                    op: "LayerNorm",
                    lhs: dim.into(),
                    rhs: p.shape(),
                    hint: format!("weight and bias must have shape [{dim}]"),
                });
            }
        }
        Ok(LayerNorm { weight, bias, dim, eps, name: name.to_string() })
    }

    /// Normalise `x [.., dim]`.
    pub fn forward(&self, x: &Var<B>) -> Result<Var<B>> {
        check_last(x, self.dim, "LayerNorm")?;
        x.layer_norm(self.weight.as_ref(), self.bias.as_ref(), self.eps)
    }
}

impl<B: Backend> Module<B> for LayerNorm<B> {
    fn named_params(&self) -> Vec<(String, Var<B>)> {
        let mut v = Vec::new();
        if let Some(w) = &self.weight {
            v.push((join(&self.name, "weight"), w.clone()));
        }
        if let Some(b) = &self.bias {
            v.push((join(&self.name, "bias"), b.clone()));
        }
        v
    }
}

impl<B: Backend> Forward<B> for LayerNorm<B> {
    fn forward(&self, x: &Var<B>) -> Result<Var<B>> {
        LayerNorm::forward(self, x)
    }
}
