//! `ElaLm`: the decoder language model.

use ela_autograd::{is_grad_enabled, no_grad, Var};
use ela_core::{Backend, CpuStorage, DType, Error, Result, Tensor};
use ela_nn::layers::{Embedding, Linear, LinearConfig, LinearInit, RmsNorm};
use ela_nn::module::ParamStore;
use ela_nn::moe::RoutingStats;
use ela_nn::precision::{times_weight_t, with_weight_casts, Precision};

use super::block::{Block, BlockCache};
use super::config::LmConfig;

/// Output of a training forward pass.
pub struct LmOutput<B: Backend> {
    /// Logits `[batch, time, vocab]`.
    pub logits: Var<B>,
    /// Sum of the layers' MoE auxiliary losses, when enabled.
    pub aux_loss: Option<Var<B>>,
    /// Routing statistics per MoE layer (empty for dense models).
    pub routing: Vec<RoutingStats>,
}

/// Decoding state of the whole model: one cache per layer and the next position.
pub struct DecodeState<B: Backend> {
    caches: Vec<BlockCache<B>>,
    pos: usize,
}

impl<B: Backend> DecodeState<B> {
    /// Tokens processed so far.
    pub fn position(&self) -> usize {
        self.pos
    }
    /// Bytes of state held across layers: constant for ELA layers, growing for softmax KV caches.
    pub fn bytes(&self) -> usize {
        self.caches.iter().map(|c| c.bytes()).sum()
    }

    /// Make room for `additional` more decoded tokens now, so that no softmax KV cache is
    /// reallocated while they are decoded (ELA states are fixed-size; nothing to do).
    pub fn reserve(&mut self, additional: usize) -> Result<()> {
        self.caches.iter_mut().try_for_each(|c| c.reserve(additional))
    }

    /// Why a step from this state cannot be replayed ([`BlockCache::replay_blocker`]).
    pub(crate) fn replay_blocker(&self) -> Option<&'static str> {
        self.caches.iter().find_map(|c| c.replay_blocker())
    }

    /// Counts `n` steps run by replays of a recorded [`ElaLm::step_ids`]: the position and every
    /// ELA state's token count advance; no buffer changes.
    pub(crate) fn count_replayed_steps(&mut self, n: usize) -> Result<()> {
        self.caches.iter_mut().try_for_each(|c| c.count_replayed_steps(n))?;
        self.pos += n;
        Ok(())
    }

    /// Every layer's fused ELA attention state, in order (`None` if a layer has a KV cache, a
    /// lobe state or a user kernel's state).
    pub(crate) fn fused_states(&mut self) -> Option<Vec<&mut ela_core::FusedElaState<B>>> {
        self.caches.iter_mut().map(|c| c.fused_attn_state()).collect()
    }

    /// Moves the position on by one token, after a step that counted its token in the states
    /// itself (the fused step: `ela_cuda::Cuda::lm_decode_step`).
    pub(crate) fn advance_position(&mut self) {
        self.pos += 1;
    }

    /// An independent copy when every cache is an ELA state (`None` for KV caches).
    pub(crate) fn try_clone_states(&self) -> Option<Result<Self>> {
        let caches: Option<Vec<Result<BlockCache<B>>>> = self.caches.iter().map(|c| c.try_clone_states()).collect();
        Some(caches?.into_iter().collect::<Result<Vec<_>>>().map(|caches| DecodeState { caches, pos: self.pos }))
    }
}

/// The ELA language model (see docs/model.md).
pub struct ElaLm<B: Backend> {
    cfg: LmConfig,
    embed: Embedding<B>,
    blocks: Vec<Block<B>>,
    final_norm: Option<RmsNorm<B>>,
    head: Option<Linear<B>>,
    store: ParamStore<B>,
    precision: Precision,
}

impl<B: Backend> ElaLm<B> {
    /// Build the model with parameters registered in `store`.
    pub fn new(store: &ParamStore<B>, cfg: LmConfig) -> Result<Self> {
        cfg.validate()?;
        let embed = Embedding::new(&store.sub("embed"), cfg.vocab, cfg.dim, 0.02)?;
        let blocks =
            (0..cfg.layers).map(|i| Block::new(&store.sub("layers").sub(i), &cfg)).collect::<Result<Vec<_>>>()?;
        let final_norm = cfg.final_norm.then(|| RmsNorm::new(&store.sub("final_norm"), cfg.dim, 1e-6)).transpose()?;
        let head = (!cfg.tied_embeddings)
            .then(|| {
                Linear::new(
                    &store.sub("head"),
                    cfg.dim,
                    cfg.vocab,
                    LinearConfig::no_bias(LinearInit::Normal { std: 0.02 }),
                )
            })
            .transpose()?;
        Ok(ElaLm { cfg, embed, blocks, final_norm, head, store: store.clone(), precision: Precision::F32 })
    }

    /// The same model computing in `precision` (forward, loss, prefill and decoding steps). With
    /// [`Precision::Bf16`] the parameters stay in the store's dtype (f32: the master weights that
    /// gradients, the optimizer and checkpoints see) and the activations run in bf16; see
    /// docs/nn.md, "Mixed precision".
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// The precision the model computes in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The embedding rows of `ids`, in the dtype the model computes in: the lookup reads the
    /// master table and only the rows used are cast (the gradient comes back in the master dtype
    /// and is scattered into the table in it).
    fn embed(&self, ids: &Tensor<B>) -> Result<Var<B>> {
        let h = self.embed.forward(ids)?;
        match self.precision.compute_dtype() {
            Some(d) if d != h.dtype() => h.to_dtype(d),
            _ => Ok(h),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LmConfig {
        &self.cfg
    }

    /// The parameter store (names, counts, state dict).
    pub fn store(&self) -> &ParamStore<B> {
        &self.store
    }

    /// The layers.
    pub fn blocks(&self) -> &[Block<B>] {
        &self.blocks
    }

    /// The embedding table `[vocab, dim]` (also the head when tied).
    pub(crate) fn embed_table(&self) -> &Var<B> {
        self.embed.weight()
    }

    /// The final norm and the untied head, if the model has them.
    pub(crate) fn output_layers(&self) -> (Option<&RmsNorm<B>>, Option<&Linear<B>>) {
        (self.final_norm.as_ref(), self.head.as_ref())
    }

    fn check_ids(&self, ids: &Tensor<B>) -> Result<(usize, usize)> {
        if ids.dtype() != DType::U32 || ids.rank() != 2 {
            return Err(Error::invalid(
                "ElaLm",
                format!("token ids must be a u32 tensor [batch, time], got {:?} {}", ids.dtype(), ids.shape()),
            ));
        }
        Ok((ids.dims()[0], ids.dims()[1]))
    }

    fn logits(&self, h: &Var<B>) -> Result<Var<B>> {
        match &self.final_norm {
            Some(n) => self.head_logits(&n.forward(h)?),
            None => self.head_logits(h),
        }
    }

    /// The head on the final hidden states, after the final norm.
    fn head_logits(&self, h: &Var<B>) -> Result<Var<B>> {
        match &self.head {
            Some(l) => l.forward(h),
            None => {
                let d = h.dims();
                let flat = h.reshape([d[0] * d[1], self.cfg.dim])?;
                times_weight_t(&flat, self.embed.weight())?.reshape([d[0], d[1], self.cfg.vocab])
            }
        }
    }

    /// Logits for token ids `[batch, time]` (causal: position t sees tokens <= t only, unless a
    /// bidirectional lobe was chosen).
    pub fn forward(&self, ids: &Tensor<B>) -> Result<LmOutput<B>> {
        self.check_ids(ids)?;
        match self.precision.compute_dtype() {
            // Training in mixed precision: every weight matrix cast to bf16 in one call at the
            // start of the step instead of one cast per product (a CUDA step had about a hundred
            // such launches; docs/nn.md, "Mixed precision"). The values are the same. Without
            // gradients (evaluation, decoding) the casts stay per use, where decoding caches them.
            Some(d) if is_grad_enabled() => {
                let params = self.store.params();
                let matrices: Vec<&Var<B>> = params.iter().filter(|p| p.rank() == 2).collect();
                with_weight_casts(&matrices, d, || self.forward_layers(ids))
            }
            _ => self.forward_layers(ids),
        }
    }

    /// The body of [`ElaLm::forward`].
    fn forward_layers(&self, ids: &Tensor<B>) -> Result<LmOutput<B>> {
        let mut h = self.embed(ids)?;
        let mut aux: Option<Var<B>> = None;
        let mut routing = Vec::new();
        // Each layer hands on its output and, where the next layer (or the head) normalises it
        // first, that norm too, computed with the output's last residual sum in one pass.
        let mut hn = None;
        for (i, b) in self.blocks.iter().enumerate() {
            let next = match self.blocks.get(i + 1) {
                Some(nb) => nb.input_norm(),
                None => self.final_norm.as_ref(),
            };
            let (out, out_n, a) = b.forward_chained(&h, hn.take(), next)?;
            h = out;
            hn = out_n;
            if let Some(l) = a.aux_loss {
                aux = Some(match aux {
                    Some(prev) => prev.add(&l)?,
                    None => l,
                });
            }
            routing.extend(a.stats);
        }
        let logits = match hn {
            Some(hn) => self.head_logits(&hn)?,
            None => self.logits(&h)?,
        };
        Ok(LmOutput { logits, aux_loss: aux, routing })
    }

    /// Mean next-token cross-entropy of `ids` against `targets` (both `[batch, time]`), plus the
    /// auxiliary loss if any: `(total loss, cross-entropy, output)`. Under [`Precision::Bf16`]
    /// both losses are still f32 (the cross-entropy reads the bf16 logits and accumulates in f32;
    /// the MoE auxiliary loss comes from the router, which runs in f32). The cross-entropy is a scalar
    /// tensor on the model's device: read it (`to_scalar`) after the backward and the update are
    /// queued, since reading makes the host wait for the GPU to finish the forward.
    pub fn loss(&self, ids: &Tensor<B>, targets: &Tensor<B>) -> Result<(Var<B>, Tensor<B>, LmOutput<B>)> {
        let (b, t) = self.check_ids(ids)?;
        if targets.dims() != [b, t] {
            return Err(Error::ShapeMismatch {
                op: "ElaLm::loss",
                lhs: ids.shape().clone(),
                rhs: targets.shape().clone(),
                hint: "targets must have the ids' shape [batch, time]".into(),
            });
        }
        let out = self.forward(ids)?;
        let ce = out.logits.reshape([b * t, self.cfg.vocab])?.cross_entropy(&targets.flatten_all()?, None)?;
        let ce_value = ce.value();
        let total = match &out.aux_loss {
            Some(a) => ce.add(a)?,
            None => ce,
        };
        Ok((total, ce_value, out))
    }

    /// Every layer's normalised attention weights `[batch, heads, t, t]` for token ids
    /// `[batch, t]` (O(t^2) per layer; for analysis, see `ela claims dilution`).
    pub fn attention_weights(&self, ids: &Tensor<B>) -> Result<Vec<Tensor<B>>> {
        self.check_ids(ids)?;
        no_grad(|| {
            let mut h = self.embed.forward(ids)?;
            let mut out = Vec::with_capacity(self.blocks.len());
            for b in &self.blocks {
                out.push(b.attention_weights(&h)?);
                h = b.forward(&h)?.0;
            }
            Ok(out)
        })
    }

    /// Why this model's decoding step cannot be recorded once and replayed as a CUDA graph, or
    /// `None` when it can: the step must be the same work at every position (no RoPE, no softmax
    /// KV cache) and read nothing back to the host (no MoE routing).
    pub fn step_replay_blocker(&self) -> Option<&'static str> {
        if self.cfg.attention == super::AttnKind::Softmax {
            return Some("a softmax layer's KV cache is written and read up to the current position");
        }
        self.blocks.iter().find_map(|b| b.step_replay_blocker())
    }

    /// Run a prompt `[batch, time]` and return the logits of its last position `[batch, vocab]`
    /// and the state to continue decoding from.
    pub fn prefill(&self, ids: &Tensor<B>) -> Result<(Tensor<B>, DecodeState<B>)> {
        let (_, t) = self.check_ids(ids)?;
        if t == 0 {
            return Err(Error::invalid("ElaLm::prefill", "the prompt must hold at least one token"));
        }
        no_grad(|| {
            let mut h = self.embed(ids)?;
            let mut caches = Vec::with_capacity(self.blocks.len());
            for b in &self.blocks {
                let (out, c) = b.prefill(&h)?;
                h = out;
                caches.push(c);
            }
            let logits = self.logits(&h.narrow(1usize, t - 1, 1)?)?.value().squeeze(1usize)?;
            Ok((logits, DecodeState { caches, pos: t }))
        })
    }

    /// Feed one token per batch row (`[batch]` u32) and return the next logits `[batch, vocab]`.
    /// Every ELA layer (attention and causal lobe) does O(1) work and memory per token.
    pub fn step(&self, tokens: &[u32], state: &mut DecodeState<B>) -> Result<Tensor<B>> {
        let dev = self.store.device();
        let ids = Tensor::from_cpu_storage(&CpuStorage::U32(tokens.to_vec()), [tokens.len(), 1], dev)?;
        self.step_ids(&ids, state)
    }

    /// [`ElaLm::step`] with the tokens already on the device: `ids` `[batch, 1]` u32. Nothing in
    /// it reads back to the host for a model without [`ElaLm::step_replay_blocker`], so it can be
    /// recorded into a CUDA graph (see [`super::GraphDecoder`]).
    pub fn step_ids(&self, ids: &Tensor<B>, state: &mut DecodeState<B>) -> Result<Tensor<B>> {
        let (_, t) = self.check_ids(ids)?;
        if t != 1 {
            return Err(Error::invalid("ElaLm::step_ids", format!("ids must be [batch, 1], got {}", ids.shape())));
        }
        no_grad(|| {
            let mut h = self.embed(ids)?;
            for (b, c) in self.blocks.iter().zip(state.caches.iter_mut()) {
                h = b.step(&h, state.pos, c)?;
            }
            state.pos += 1;
            self.logits(&h)?.value().squeeze(1usize)
        })
    }
}

#[cfg(test)]
mod tests {
    use ela_core::{Cpu, DType, Tensor};
    use ela_nn::ela::ElaKernel;
    use ela_nn::module::ParamStore;

    use super::ElaLm;
    use crate::lm::{AttnKind, Link, LmConfig, LobeMode};

    /// `forward` hands each layer's output norm on from the layer's last residual sum
    /// (`Block::forward_chained`); the same model run layer by layer with `Block::forward` and
    /// the final norm apart gives the same logits and gradients, bit for bit, for every link,
    /// with and without the lobe and the final norm.
    #[test]
    fn chained_norms_give_the_layer_by_layer_bits() {
        for link in [Link::Hyper, Link::Residual, Link::PostNorm] {
            for lobe in [LobeMode::Off, LobeMode::Causal] {
                for final_norm in [true, false] {
                    let cfg = LmConfig {
                        vocab: 30,
                        dim: 16,
                        layers: 3,
                        heads: 2,
                        ffn_hidden: 24,
                        attention: AttnKind::Ela { kernel: ElaKernel::HadamardExp, chunk: 4 },
                        link,
                        lobe,
                        moe: None,
                        final_norm,
                        tied_embeddings: true,
                        rope_max_len: None,
                    };
                    let tag = format!("{link:?} {lobe:?} final_norm {final_norm}");
                    let store = ParamStore::new(&Cpu, DType::F64, 11);
                    let model = ElaLm::new(&store, cfg).unwrap();
                    // Norm gains of their own (they start at 1), so a layer normalised by
                    // another layer's norm would show.
                    for (k, (name, p)) in store.named_params().into_iter().enumerate() {
                        if name.contains("norm") {
                            let g: Vec<f64> = (0..p.value().elem_count())
                                .map(|i| 0.5 + ((i * 13 + k * 7) % 17) as f64 / 16.0)
                                .collect();
                            p.set_value(Tensor::from_vec(g, p.dims(), &Cpu).unwrap()).unwrap();
                        }
                    }
                    let ids: Vec<u32> = (0..2 * 9).map(|i| (i * 7 % 30) as u32).collect();
                    let ids = Tensor::from_vec(ids, [2, 9], &Cpu).unwrap();
                    let chained = model.forward(&ids).unwrap().logits;
                    let mut h = model.embed(&ids).unwrap();
                    for b in &model.blocks {
                        h = b.forward(&h).unwrap().0;
                    }
                    let apart = model.logits(&h).unwrap();
                    let bits = |v: &ela_autograd::Var<Cpu>| -> Vec<u64> {
                        v.value().to_vec_f64().unwrap().iter().map(|x| x.to_bits()).collect()
                    };
                    assert_eq!(bits(&chained), bits(&apart), "{tag}: logits");
                    // Weight both logits alike and compare every parameter's gradient.
                    let (gc, ga) =
                        (chained.sum_all().unwrap().backward().unwrap(), apart.sum_all().unwrap().backward().unwrap());
                    for (name, p) in store.named_params() {
                        let (c, a) =
                            (gc.get(&p).unwrap().to_vec_f64().unwrap(), ga.get(&p).unwrap().to_vec_f64().unwrap());
                        assert!(c.iter().zip(&a).all(|(x, y)| x.to_bits() == y.to_bits()), "{tag}: gradient of {name}");
                    }
                }
            }
        }
    }

    /// Mixed-precision training casts the weight matrices in one `with_weight_casts` call at the
    /// start of `forward`: the logits and every gradient have the bits of the per-use casts, and
    /// the weights that run as one stacked product (q, k, v; gate, up) are registered next to
    /// each other, so their casts are the stacked weight in place.
    #[test]
    fn precast_weights_give_the_bits_of_per_use_casts() {
        let cfg = LmConfig {
            vocab: 30,
            dim: 16,
            layers: 2,
            heads: 2,
            ffn_hidden: 24,
            attention: AttnKind::Ela { kernel: ElaKernel::HadamardExp, chunk: 8 },
            link: Link::Residual,
            lobe: LobeMode::Off,
            moe: None,
            final_norm: true,
            tied_embeddings: true,
            rope_max_len: None,
        };
        let store = ParamStore::new(&Cpu, DType::F32, 12);
        let model = ElaLm::new(&store, cfg).unwrap().with_precision(ela_nn::precision::Precision::Bf16);
        // 64 rows: enough for the gate and up projections to run stacked (2 x 24).
        let ids: Vec<u32> = (0..2 * 32).map(|i| (i * 11 % 30) as u32).collect();
        let ids = Tensor::from_vec(ids, [2, 32], &Cpu).unwrap();
        let (pre, per_use) = (model.forward(&ids).unwrap().logits, model.forward_layers(&ids).unwrap().logits);
        let bits = |t: &Tensor<Cpu>| -> Vec<u64> { t.to_vec_f64().unwrap().iter().map(|x| x.to_bits()).collect() };
        assert_eq!(pre.dtype(), DType::BF16);
        assert_eq!(bits(&pre.value()), bits(&per_use.value()), "logits");
        let (gp, gu) = (pre.sum_all().unwrap().backward().unwrap(), per_use.sum_all().unwrap().backward().unwrap());
        for (name, p) in store.named_params() {
            assert_eq!(bits(gp.get(&p).unwrap()), bits(gu.get(&p).unwrap()), "gradient of {name}");
        }
        let names: Vec<String> = store.named_params().into_iter().map(|(n, _)| n).collect();
        let next_to =
            |a: &str, b: &str| names.iter().zip(&names[1..]).filter(|(x, y)| x.ends_with(a) && y.ends_with(b)).count();
        assert_eq!((next_to(".q.weight", ".k.weight"), next_to(".k.weight", ".v.weight")), (2, 2), "{names:?}");
        assert_eq!(next_to(".w_gate.weight", ".w_up.weight"), 2, "{names:?}");
    }
}
