//! Mixture-of-Experts with top-k routing, SwiGLU experts, the paper's routing-score bias, and the
//! two usual load-balancing methods.
//!
//! For tokens `x [N, d]` the router gives logits `x W_r^T` (`W_r [E, d]`) and scores
//! `s = softmax(logits)` or `sigmoid(logits)`. Each token goes to the `k` experts with the largest
//! *selection* scores `s + b` (where `b` is the loss-free balancing bias, zero unless enabled);
//! the gate weights are the *unbiased* scores of the selected experts, optionally renormalised to
//! sum to one. With `S_e` the gate of expert `e` (zero when not selected):
//!
//! - no bias:       `y = sum_e S_e ffn_e(x)`
//! - inner bias:    `y = sum_e S_e (ffn_e(x) + B_e)`
//! - outer bias:    `y = sum_e (S_e ffn_e(x) + B_e)`, the sum over the selected experts
//!
//! where, as in the paper, `B_e` is the router's weight row `W_r[e]` (a `d`-vector, so it lives in
//! the model space and is trained through both the routing and the bias path). Sums run over the
//! selected experts only: an unselected expert contributes nothing, its bias included.
//!
//! Balancing: the Switch auxiliary loss `alpha * E * sum_i f_i P_i` (`f_i` the fraction of routed
//! assignments that went to expert `i`, `P_i` the mean normalised score of expert `i`), returned
//! for the caller to add to its loss; and loss-free balancing, `b_i += gamma * sign(mean_load -
//! load_i)` after each step, used for selection only.
//!
//! With half-precision activations on f32 parameters (mixed precision, docs/nn.md) the routing
//! (router product, scores, top-k, gates, balancing) runs in f32 and the experts in bf16.
//!
//! Expert compute is batched per expert: the tokens routed to an expert are gathered
//! (`index_select`), run through its SwiGLU as one matrix product, weighted, and scattered back
//! with a single `index_add`; there is no loop over tokens.

use ela_autograd::{no_grad, Var};
use ela_core::{Backend, CpuStorage, DType, Error, Result, Tensor};

use crate::layers::{Linear, LinearConfig, LinearInit, SwiGlu};
use crate::module::ParamStore;
use crate::precision::{is_half, weight_for};

/// How router logits become scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScoreFn {
    /// Softmax over the experts (scores sum to one).
    Softmax,
    /// Independent sigmoid per expert (DeepSeek-V3 style).
    Sigmoid,
}

/// The paper's routing-score bias mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoutingBias {
    /// No bias term.
    None,
    /// `y = sum_e S_e (ffn_e(x) + B_e)`.
    Inner,
    /// `y = sum_e (S_e ffn_e(x) + B_e)`.
    Outer,
}

/// Shape and behaviour of an [`Moe`] layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MoeConfig {
    /// Model width `d`.
    pub dim: usize,
    /// Hidden width of each SwiGLU expert.
    pub hidden: usize,
    /// Number of experts `E`.
    pub experts: usize,
    /// Experts per token `k`.
    pub top_k: usize,
    /// Score function.
    pub score: ScoreFn,
    /// Routing-score bias mode.
    pub bias: RoutingBias,
    /// Renormalise the selected gates to sum to one.
    pub normalize_gates: bool,
    /// Weight `alpha` of the Switch auxiliary loss (0 disables it).
    pub aux_alpha: f64,
    /// Step `gamma` of loss-free balancing (0 disables it; 1e-3 is the usual value).
    pub loss_free_gamma: f64,
}

impl MoeConfig {
    /// Softmax routing, no bias, no balancing.
    pub fn new(dim: usize, hidden: usize, experts: usize, top_k: usize) -> Self {
        MoeConfig {
            dim,
            hidden,
            experts,
            top_k,
            score: ScoreFn::Softmax,
            bias: RoutingBias::None,
            normalize_gates: false,
            aux_alpha: 0.0,
            loss_free_gamma: 0.0,
        }
    }
}

/// Routing statistics of one forward pass.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutingStats {
    /// Tokens routed to each expert (each token counts once per selected expert).
    pub counts: Vec<usize>,
    /// `counts / (tokens * k)`: the fraction of assignments per expert (sums to 1).
    pub load: Vec<f64>,
    /// Mean over tokens of the entropy (nats) of the normalised routing scores.
    pub entropy: f64,
    /// Per token (in input order), the expert of its highest selection score (the first of its
    /// top-k): what `ela claims moe` correlates with the token's class.
    pub choice: Vec<u32>,
}

/// Output of [`Moe::forward`].
pub struct MoeOutput<B: Backend> {
    /// The layer output, same shape as the input.
    pub y: Var<B>,
    /// The Switch auxiliary loss when `aux_alpha > 0` (add it to the training loss).
    pub aux_loss: Option<Var<B>>,
    /// Load and entropy of this pass.
    pub stats: RoutingStats,
}

/// A Mixture-of-Experts layer (see the module docs).
pub struct Moe<B: Backend> {
    router: Linear<B>,
    experts: Vec<SwiGlu<B>>,
    selection_bias: Var<B>,
    cfg: MoeConfig,
}

impl<B: Backend> Moe<B> {
    /// Register `router.weight [E, d]`, `experts.{i}.*` and the buffer `selection_bias [E]`.
    pub fn new(vs: &ParamStore<B>, cfg: MoeConfig) -> Result<Self> {
        if cfg.experts == 0 || cfg.top_k == 0 || cfg.top_k > cfg.experts {
            return Err(Error::invalid(
                "Moe",
                format!("need 1 <= top_k <= experts, got top_k = {} with {} experts", cfg.top_k, cfg.experts),
            ));
        }
        let init = LinearInit::Normal { std: 0.02 };
        let router = Linear::new(&vs.sub("router"), cfg.dim, cfg.experts, LinearConfig::no_bias(init))?;
        let experts = (0..cfg.experts)
            .map(|e| SwiGlu::new(&vs.sub("experts").sub(e), cfg.dim, cfg.hidden, init))
            .collect::<Result<Vec<_>>>()?;
        let bias = Tensor::zeros([cfg.experts], vs.dtype(), vs.device())?;
        let selection_bias = vs.buffer("selection_bias", bias)?;
        Ok(Moe { router, experts, selection_bias, cfg })
    }

    /// The configuration.
    pub fn config(&self) -> &MoeConfig {
        &self.cfg
    }

    /// The loss-free balancing bias (selection only).
    pub fn selection_bias(&self) -> Tensor<B> {
        self.selection_bias.value()
    }

    /// Route and mix `x [.., d]`.
    pub fn forward(&self, x: &Var<B>) -> Result<MoeOutput<B>> {
        let cfg = &self.cfg;
        let dims = x.dims();
        if dims.last() != Some(&cfg.dim) {
            return Err(Error::ShapeMismatch {
                op: "Moe",
                lhs: x.shape(),
                rhs: vec![cfg.dim].into(),
                hint: format!("the input's last dimension must be the model width {}", cfg.dim),
            });
        }
        let n = x.value().elem_count() / cfg.dim;
        if n == 0 {
            // Routing statistics (loads, entropy) of no tokens are undefined.
            return Err(Error::invalid(
                "Moe",
                format!("the input {} holds no tokens to route (an empty batch or sequence)", x.shape()),
            ));
        }
        let (e_count, k) = (cfg.experts, cfg.top_k);
        let xf = x.reshape([n, cfg.dim])?;
        // Routing runs in the router weight's (master) dtype even for half-precision
        // activations (widening them is exact): bf16 has 8 significant bits, so near-equal scores
        // of different experts would tie in top-k, and a loss-free bias step of 1e-3 is below
        // bf16's resolution at the scores' scale (2^-9 near 0.25) and would be lost in `s + b`.
        let master = self.router.weight().dtype();
        let xr = if is_half(xf.dtype()) && master != xf.dtype() { xf.to_dtype(master)? } else { xf.clone() };
        let logits = self.router.forward(&xr)?;
        let scores = match cfg.score {
            ScoreFn::Softmax => logits.softmax(1usize)?,
            ScoreFn::Sigmoid => logits.sigmoid()?,
        };
        // Selection uses the biased scores and is not differentiated.
        let sel = scores.value().add(&self.selection_bias.value().unsqueeze(0usize)?)?;
        let (_, idx) = sel.topk(k, 1usize)?;
        let idx_host = idx.to_vec::<u32>()?;
        let mut gates = scores.gather(&idx, 1usize)?;
        if cfg.normalize_gates {
            gates = gates.div(&gates.sum(1usize, true)?)?;
        }
        // The gates (master dtype) scale the experts' outputs in the activations' dtype.
        let gates_flat = weight_for(&gates.reshape([n * k])?, x.dtype())?;

        let dev = x.device();
        let mut contribs = Vec::new();
        let mut all_ids: Vec<u32> = Vec::with_capacity(n * k);
        let mut counts = vec![0usize; e_count];
        for (e, expert) in self.experts.iter().enumerate() {
            // Slots (token * k + j) that chose expert e, and their tokens.
            let slots: Vec<u32> = (0..n * k).filter(|&s| idx_host[s] as usize == e).map(|s| s as u32).collect();
            counts[e] = slots.len();
            if slots.is_empty() {
                continue;
            }
            let tokens: Vec<u32> = slots.iter().map(|&s| s / k as u32).collect();
            let tok_ids = Tensor::from_cpu_storage(&CpuStorage::U32(tokens.clone()), tokens.len(), &dev)?;
            let slot_ids = Tensor::from_cpu_storage(&CpuStorage::U32(slots), tokens.len(), &dev)?;
            let h = expert.forward(&xf.index_select(&tok_ids, 0usize)?)?;
            let g = gates_flat.index_select(&slot_ids, 0usize)?.unsqueeze(1usize)?;
            let b_e = || weight_for(&self.router.weight().narrow(0usize, e, 1)?, h.dtype());
            let c = match cfg.bias {
                RoutingBias::None => h.mul(&g)?,
                RoutingBias::Inner => h.add(&b_e()?)?.mul(&g)?,
                RoutingBias::Outer => h.mul(&g)?.add(&b_e()?)?,
            };
            contribs.push(c);
            all_ids.extend(tokens);
        }
        let refs: Vec<&Var<B>> = contribs.iter().collect();
        let stacked = Var::concat(&refs, 0usize)?;
        let ids = Tensor::from_cpu_storage(&CpuStorage::U32(all_ids), n * k, &dev)?;
        let y = stacked.index_add(&ids, 0usize, &vec![n, cfg.dim].into())?.reshape(dims)?;

        // Normalised scores for the statistics and the auxiliary loss.
        let norm_scores = match cfg.score {
            ScoreFn::Softmax => scores.clone(),
            ScoreFn::Sigmoid => scores.div(&scores.sum(1usize, true)?)?,
        };
        let total = (n * k).max(1) as f64;
        let load: Vec<f64> = counts.iter().map(|&c| c as f64 / total).collect();
        let entropy = no_grad(|| -> Result<f64> {
            let p = norm_scores.value().to_dtype(DType::F64)?;
            let plogp = p.mul(&p.maximum_scalar(1e-300)?.log()?)?;
            Ok(-plogp.sum_all()?.to_scalar()? / n.max(1) as f64)
        })?;
        let aux_loss = if cfg.aux_alpha > 0.0 {
            let f = Tensor::from_cpu_storage(&CpuStorage::from_f64_vec(&load, scores.dtype())?, e_count, &dev)?;
            let p_mean = norm_scores.mean(0usize, false)?;
            Some(p_mean.mul(&Var::constant(f))?.sum_all()?.mul_scalar(cfg.aux_alpha * e_count as f64)?)
        } else {
            None
        };
        let choice = idx_host.iter().step_by(k).copied().collect();
        Ok(MoeOutput { y, aux_loss, stats: RoutingStats { counts, load, entropy, choice } })
    }

    /// Loss-free balancing step after an optimizer step: `b_i += gamma * sign(mean_load - load_i)`.
    /// A no-op when `loss_free_gamma` is 0.
    pub fn update_selection_bias(&self, stats: &RoutingStats) -> Result<()> {
        let gamma = self.cfg.loss_free_gamma;
        if gamma == 0.0 {
            return Ok(());
        }
        let mean = 1.0 / self.cfg.experts as f64;
        let b = self.selection_bias.value();
        let mut v = b.to_vec_f64()?;
        for (bi, &li) in v.iter_mut().zip(&stats.load) {
            let d = mean - li;
            *bi += gamma
                * if d > 0.0 {
                    1.0
                } else if d < 0.0 {
                    -1.0
                } else {
                    0.0
                };
        }
        let t = Tensor::from_cpu_storage(&CpuStorage::from_f64_vec(&v, b.dtype())?, b.shape().clone(), b.device())?;
        self.selection_bias.set_value(t)
    }
}
