//! [`Linear`] (affine map) and [`Embedding`] (table lookup).

use ela_autograd::Var;
use ela_core::{Backend, Error, Result, Tensor};

use crate::module::{Forward, Init, Module, ParamStore};
use crate::precision::{stacked_weight_casts, times_weight_t, weight_for};

/// How a [`Linear`] weight is initialised.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LinearInit {
    /// PyTorch's default: weight and bias uniform in `[-1/sqrt(in), 1/sqrt(in))`. Keeps the
    /// output variance about a third of the input's whatever the width.
    Uniform,
    /// Weight normal with mean 0 and this standard deviation (e.g. 0.02 as in GPT-2); bias zeros.
    Normal {
        /// Standard deviation of the weight.
        std: f64,
    },
}

/// Options of [`Linear::new`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearConfig {
    /// Whether the layer adds a bias.
    pub bias: bool,
    /// Weight init.
    pub init: LinearInit,
}

impl Default for LinearConfig {
    /// With bias, uniform init (PyTorch's `nn.Linear`).
    fn default() -> Self {
        LinearConfig { bias: true, init: LinearInit::Uniform }
    }
}

impl LinearConfig {
    /// No bias, the given init.
    pub fn no_bias(init: LinearInit) -> Self {
        LinearConfig { bias: false, init }
    }
}

/// `y = x W^T + b` over the last axis, with the weight stored `[out, in]` as in PyTorch (so its
/// rows are the output units and checkpoints interoperate).
pub struct Linear<B: Backend> {
    weight: Var<B>,
    bias: Option<Var<B>>,
    name: String,
}

impl<B: Backend> Clone for Linear<B> {
    fn clone(&self) -> Self {
        Linear { weight: self.weight.clone(), bias: self.bias.clone(), name: self.name.clone() }
    }
}

impl<B: Backend> Linear<B> {
    /// Register `weight [out_dim, in_dim]` (and `bias [out_dim]`) under `vs`.
    pub fn new(vs: &ParamStore<B>, in_dim: usize, out_dim: usize, cfg: LinearConfig) -> Result<Self> {
        if in_dim == 0 || out_dim == 0 {
            return Err(Error::invalid(
                "Linear::new",
                format!("dimensions must be positive, got {in_dim} -> {out_dim}"),
            ));
        }
        let bound = 1.0 / (in_dim as f64).sqrt();
        let (w_init, b_init) = match cfg.init {
            LinearInit::Uniform => (Init::uniform_symmetric(bound), Init::uniform_symmetric(bound)),
            LinearInit::Normal { std } => (Init::Normal { mean: 0.0, std }, Init::Zeros),
        };
        let weight = vs.param("weight", [out_dim, in_dim], w_init)?;
        let bias = if cfg.bias { Some(vs.param("bias", [out_dim], b_init)?) } else { None };
        Ok(Linear { weight, bias, name: vs.prefix().to_string() })
    }

    /// A layer over existing vars (weight tying, tests): `weight [out, in]`, `bias [out]`.
    /// `name` is the scope reported by [`Module::named_params`].
    pub fn from_vars(name: &str, weight: Var<B>, bias: Option<Var<B>>) -> Result<Self> {
        let wd = weight.dims();
        if wd.len() != 2 {
            return Err(Error::RankMismatch {
                op: "Linear",
                expected: "2 ([out, in]) for the weight",
                shape: weight.shape(),
            });
        }
        if wd.contains(&0) {
            return Err(Error::invalid(
                "Linear::from_vars",
                format!(
                    "the weight {} has a zero dimension; both in and out features must be positive",
                    weight.shape()
                ),
            ));
        }
        if let Some(b) = &bias {
            if b.dims() != [wd[0]] {
                return Err(Error::ShapeMismatch {
                    op: "Linear",
                    lhs: weight.shape(),
                    rhs: b.shape(),
                    hint: format!("the bias must have shape [{}] (the weight's out dimension)", wd[0]),
                });
            }
        }
        Ok(Linear { weight, bias, name: name.to_string() })
    }

    /// The weight `[out, in]`.
    pub fn weight(&self) -> &Var<B> {
        &self.weight
    }
    /// The bias `[out]`, if any.
    pub fn bias(&self) -> Option<&Var<B>> {
        self.bias.as_ref()
    }
    /// Input features.
    pub fn in_dim(&self) -> usize {
        self.weight.dims()[1]
    }
    /// Output features.
    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    /// `x [.., in] -> [.., out]`. Half-precision `x` (f16, bf16) with f32 parameters computes in
    /// `x`'s dtype on cast copies of the weight and bias ([`weight_for`]).
    pub fn forward(&self, x: &Var<B>) -> Result<Var<B>> {
        affine(x, &[&self.weight], self.bias.as_ref())
    }

    /// `[x W_1^T + b_1 | x W_2^T + b_2 | ...]`: several layers applied to the same input `x
    /// [.., in]` as one product with their weights stacked (`[sum of out, in]`), giving `[..,
    /// sum of out]`. The same values as running each layer and concatenating (up to the order of
    /// the sums in the gradient of `x`), but one GEMM each way instead of one per layer, and `x`'s
    /// gradient comes out of one product instead of a sum of several (a transformer's q, k, v
    /// projections). The stacked weight is a copy made at every call, so this pays where the
    /// input has many more rows than the weights (training, prefill), not for a decoding step.
    /// The layers must share `in` and either all have a bias or none.
    pub fn fused_forward(layers: &[&Linear<B>], x: &Var<B>) -> Result<Var<B>> {
        let Some(first) = layers.first() else {
            return Err(Error::invalid("Linear::fused_forward", "needs at least one layer"));
        };
        if let Some(bad) = layers.iter().find(|l| l.in_dim() != first.in_dim()) {
            return Err(Error::ShapeMismatch {
                op: "Linear::fused_forward",
                lhs: first.weight.shape(),
                rhs: bad.weight.shape(),
                hint: "every fused layer must take the same input features (weights [out, in] with one in)".into(),
            });
        }
        let biases: Vec<&Var<B>> = layers.iter().filter_map(|l| l.bias.as_ref()).collect();
        if !biases.is_empty() && biases.len() != layers.len() {
            return Err(Error::invalid(
                "Linear::fused_forward",
                format!(
                    "{} of {} layers have a bias: fuse layers that all have one or none",
                    biases.len(),
                    layers.len()
                ),
            ));
        }
        let weights: Vec<&Var<B>> = layers.iter().map(|l| &l.weight).collect();
        let b = if biases.is_empty() { None } else { Some(Var::concat(&biases, 0usize)?) };
        affine(x, &weights, b.as_ref())
    }
}

/// `x [.., in] W^T + b` for `W [out, in]`, or for several weights stacked along their rows
/// (the body of [`Linear::forward`] and [`Linear::fused_forward`]).
fn affine<B: Backend>(x: &Var<B>, weights: &[&Var<B>], bias: Option<&Var<B>>) -> Result<Var<B>> {
    let dims = x.dims();
    let weight = weights[0];
    let in_dim = weight.dims()[1];
    let out_dim: usize = weights.iter().map(|w| w.dims()[0]).sum();
    if dims.last() != Some(&in_dim) {
        return Err(Error::ShapeMismatch {
            op: "Linear",
            lhs: x.shape(),
            rhs: weight.shape(),
            hint: format!("the input's last dimension must be in_features = {in_dim} (weight is [out, in])"),
        });
    }
    // Flatten the leading dims so the forward is one GEMM and the weight gradient one GEMM
    // `x^T dy` of shape [in, out], instead of a batched product summed over the batch.
    let rows = x.value().elem_count() / in_dim;
    let x2 = x.reshape([rows, in_dim])?;
    // Half-precision activations meet a copy of the weights in their dtype (mixed precision:
    // the parameters stay f32 masters and get f32 gradients; docs/nn.md, "Mixed precision").
    // Stacked weights are one node over the weights themselves (`Var::linear_stacked`: no
    // stacked copy of the f32 masters kept for the backward).
    // Inside `with_weight_casts` the stacked product reads the casts made there (in place when
    // they lie back to back).
    let y = match (weights, stacked_weight_casts(weights, x.dtype())) {
        ([w], _) => times_weight_t(&x2, w)?,
        (_, Some(casts)) => x2.linear_stacked_cast(weights, &casts.iter().collect::<Vec<_>>())?,
        (_, None) => x2.linear_stacked(weights)?,
    };
    let y = match bias {
        Some(b) => y.add(&weight_for(b, x.dtype())?)?,
        None => y,
    };
    let mut out = dims;
    *out.last_mut().expect("rank checked") = out_dim;
    if y.dims() == out {
        return Ok(y);
    }
    y.reshape(out)
}

impl<B: Backend> Module<B> for Linear<B> {
    fn named_params(&self) -> Vec<(String, Var<B>)> {
        let mut v = vec![(join(&self.name, "weight"), self.weight.clone())];
        if let Some(b) = &self.bias {
            v.push((join(&self.name, "bias"), b.clone()));
        }
        v
    }
}

impl<B: Backend> Forward<B> for Linear<B> {
    fn forward(&self, x: &Var<B>) -> Result<Var<B>> {
        Linear::forward(self, x)
    }
}

/// `scope.name`, or `name` at the root.
pub(crate) fn join(scope: &str, name: &str) -> String {
    if scope.is_empty() {
        name.to_string()
    } else {
        format!("{scope}.{name}")
    }
}

/// A table of `vocab` learned vectors of size `dim`, looked up by `U32` ids.
pub struct Embedding<B: Backend> {
    weight: Var<B>,
    name: String,
}

impl<B: Backend> Clone for Embedding<B> {
    fn clone(&self) -> Self {
        Embedding { weight: self.weight.clone(), name: self.name.clone() }
    }
}

impl<B: Backend> Embedding<B> {
    /// Register `weight [vocab, dim]` under `vs`, drawn from normal(0, std) (PyTorch uses std 1;
    /// language models commonly 0.02).
    pub fn new(vs: &ParamStore<B>, vocab: usize, dim: usize, std: f64) -> Result<Self> {
        if vocab == 0 || dim == 0 {
            return Err(Error::invalid(
                "Embedding::new",
                format!("vocab and dim must be positive, got {vocab}, {dim}"),
            ));
        }
        let weight = vs.param("weight", [vocab, dim], Init::Normal { mean: 0.0, std })?;
        Ok(Embedding { weight, name: vs.prefix().to_string() })
    }

    /// An embedding over an existing `weight [vocab, dim]`.
    pub fn from_var(name: &str, weight: Var<B>) -> Result<Self> {
        if weight.rank() != 2 {
            return Err(Error::RankMismatch {
                op: "Embedding",
                expected: "2 ([vocab, dim]) for the table",
                shape: weight.shape(),
            });
        }
        Ok(Embedding { weight, name: name.to_string() })
    }

    /// The table `[vocab, dim]`.
    pub fn weight(&self) -> &Var<B> {
        &self.weight
    }

    /// Rows for `ids` (`U32`, any shape): output `ids.shape + [dim]`. An id `>= vocab` is an
    /// [`Error::Index`].
    pub fn forward(&self, ids: &Tensor<B>) -> Result<Var<B>> {
        self.weight.embedding(ids)
    }
}

impl<B: Backend> Module<B> for Embedding<B> {
    fn named_params(&self) -> Vec<(String, Var<B>)> {
        vec![(join(&self.name, "weight"), self.weight.clone())]
    }
}
