//! The SwiGLU feed-forward block (Shazeer 2020), used by the dense MLPs and the MoE experts.

use ela_autograd::Var;
use ela_core::{Backend, Error, Result};

use super::linear::{Linear, LinearConfig, LinearInit};
use crate::module::{Forward, Module, ParamStore};

/// `y = w_down(silu(w_gate(x)) * w_up(x))`, all three projections without bias.
///
/// With `dim -> hidden -> dim` it has `3 * dim * hidden` parameters; LLaMA picks
/// `hidden ~ 8/3 dim` so that it matches a 4x GELU MLP's `8 dim^2`.
pub struct SwiGlu<B: Backend> {
    w_gate: Linear<B>,
    w_up: Linear<B>,
    w_down: Linear<B>,
}

impl<B: Backend> Clone for SwiGlu<B> {
    fn clone(&self) -> Self {
        SwiGlu { w_gate: self.w_gate.clone(), w_up: self.w_up.clone(), w_down: self.w_down.clone() }
    }
}

impl<B: Backend> SwiGlu<B> {
    /// Register `w_gate`, `w_up` (`[hidden, dim]`) and `w_down` (`[dim, hidden]`) under `vs`.
    pub fn new(vs: &ParamStore<B>, dim: usize, hidden: usize, init: LinearInit) -> Result<Self> {
        let cfg = LinearConfig::no_bias(init);
        Ok(SwiGlu {
            w_gate: Linear::new(&vs.sub("w_gate"), dim, hidden, cfg)?,
            w_up: Linear::new(&vs.sub("w_up"), dim, hidden, cfg)?,
            w_down: Linear::new(&vs.sub("w_down"), hidden, dim, cfg)?,
        })
    }

    /// A block over existing projections (checked to chain `dim -> hidden -> dim`).
    pub fn from_linears(w_gate: Linear<B>, w_up: Linear<B>, w_down: Linear<B>) -> Result<Self> {
        let ok = w_gate.in_dim() == w_up.in_dim()
            && w_gate.out_dim() == w_up.out_dim()
            && w_down.in_dim() == w_gate.out_dim()
            && w_down.out_dim() == w_gate.in_dim();
        if !ok {
            return Err(Error::ShapeMismatch {
                op: "SwiGlu",
                lhs: w_gate.weight().shape(),
                rhs: w_down.weight().shape(),
                hint: format!(
                    "w_gate and w_up must be [hidden, dim] and w_down [dim, hidden]; got w_up {}",
                    w_up.weight().shape()
                ),
            });
        }
        Ok(SwiGlu { w_gate, w_up, w_down })
    }

    /// The gate projection.
    pub fn w_gate(&self) -> &Linear<B> {
        &self.w_gate
    }
    /// The up projection.
    pub fn w_up(&self) -> &Linear<B> {
        &self.w_up
    }
    /// The down projection.
    pub fn w_down(&self) -> &Linear<B> {
        &self.w_down
    }

    /// `x [.., dim] -> [.., dim]`. With at least as many rows in `x` as the stacked gate and up
    /// weights have (`2 hidden`: training, prefill), the two projections are one product with
    /// the weights stacked ([`Linear::fused_forward`]) and the gate reads its halves
    /// ([`Var::swiglu_packed`]): one GEMM each way instead of two, `x`'s gradient from one product
    /// instead of the sum of two. Fewer rows (a decoding step) take the two products, where
    /// copying the stacked weight would cost more than the rows' work.
    pub fn forward(&self, x: &Var<B>) -> Result<Var<B>> {
        let h = if self.fuses_gate_up(x) {
            Linear::fused_forward(&[&self.w_gate, &self.w_up], x)?.swiglu_packed()?
        } else {
            self.w_gate.forward(x)?.swiglu(&self.w_up.forward(x)?)?
        };
        self.w_down.forward(&h)
    }

    /// Whether [`SwiGlu::forward`] runs the gate and up projections as one stacked product for
    /// `x`: when its rows are at least the stacked weight's (`2 hidden`).
    pub fn fuses_gate_up(&self, x: &Var<B>) -> bool {
        let rows = x.value().elem_count() / self.w_gate.in_dim().max(1);
        rows >= 2 * self.w_gate.out_dim()
    }
}

impl<B: Backend> Module<B> for SwiGlu<B> {
    fn named_params(&self) -> Vec<(String, Var<B>)> {
        let mut v = self.w_gate.named_params();
        v.extend(self.w_up.named_params());
        v.extend(self.w_down.named_params());
        v
    }
}

impl<B: Backend> Forward<B> for SwiGlu<B> {
    fn forward(&self, x: &Var<B>) -> Result<Var<B>> {
        SwiGlu::forward(self, x)
    }
}
