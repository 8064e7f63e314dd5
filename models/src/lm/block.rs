//! One layer of the LM: attention, FFN (dense SwiGLU or MoE), optional Memory Lobe, connected by
//! Hyper-Link, by the standard pre-norm residual or by the post-norm residual.

use ela_autograd::Var;
use ela_core::{Backend, Error, Result};
use ela_nn::attention::{Attention, AttentionConfig, AttnCache};
use ela_nn::layers::{LinearInit, RmsNorm, SwiGlu};
use ela_nn::module::ParamStore;
use ela_nn::moe::{Moe, MoeConfig, RoutingBias, RoutingStats, ScoreFn};

use super::config::{Link, LmConfig, LobeMode};
use super::mixer::{attention_mixer, lobe_mixer};

/// The FFN of a block.
pub enum Ffn<B: Backend> {
    /// Dense SwiGLU.
    Dense(SwiGlu<B>),
    /// Mixture of SwiGLU experts.
    Moe(Moe<B>),
}

/// What a block's forward returns besides its output.
pub struct BlockAux<B: Backend> {
    /// MoE auxiliary loss, when enabled.
    pub aux_loss: Option<Var<B>>,
    /// MoE routing statistics, when the FFN is an MoE.
    pub stats: Option<RoutingStats>,
}

/// A layer's output, that output normalised by the norm the next layer (or the head) applies
/// first when it was asked for ([`Block::forward_chained`]), and the rest of what it returns.
pub(crate) type Chained<B> = (Var<B>, Option<Var<B>>, BlockAux<B>);

/// Decoding caches of one block.
pub struct BlockCache<B: Backend> {
    attn: AttnCache<B>,
    lobe: Option<AttnCache<B>>,
}

impl<B: Backend> BlockCache<B> {
    /// Bytes held (attention cache plus lobe state).
    pub fn bytes(&self) -> usize {
        self.attn.bytes() + self.lobe.as_ref().map_or(0, |c| c.bytes())
    }

    /// Make room for `additional` more tokens (see [`AttnCache::reserve`]).
    pub fn reserve(&mut self, additional: usize) -> Result<()> {
        self.attn.reserve(additional)?;
        self.lobe.as_mut().map_or(Ok(()), |c| c.reserve(additional))
    }

    fn caches(&self) -> impl Iterator<Item = &AttnCache<B>> {
        std::iter::once(&self.attn).chain(self.lobe.as_ref())
    }

    /// Why a step with these caches cannot be replayed ([`AttnCache::replay_blocker`]).
    pub fn replay_blocker(&self) -> Option<&'static str> {
        self.caches().find_map(|c| c.replay_blocker())
    }

    /// Counts `n` replayed steps in every cache ([`AttnCache::count_replayed_steps`]).
    pub fn count_replayed_steps(&mut self, n: usize) -> Result<()> {
        self.attn.count_replayed_steps(n)?;
        self.lobe.as_mut().map_or(Ok(()), |c| c.count_replayed_steps(n))
    }

    /// The attention layer's fused ELA state, when it has one and no lobe state beside it.
    pub(crate) fn fused_attn_state(&mut self) -> Option<&mut ela_core::FusedElaState<B>> {
        match (&mut self.attn, &self.lobe) {
            (AttnCache::Ela(s), None) => s.fused_mut(),
            _ => None,
        }
    }

    /// An independent copy of ELA caches (`None` if a cache is a KV cache).
    pub fn try_clone_states(&self) -> Option<Result<Self>> {
        let attn = self.attn.try_clone_state()?;
        let lobe = match &self.lobe {
            Some(c) => Some(c.try_clone_state()?),
            None => None,
        };
        Some((|| Ok(BlockCache { attn: attn?, lobe: lobe.transpose()? }))())
    }
}

/// One layer.
pub struct Block<B: Backend> {
    norm1: RmsNorm<B>,
    norm2: Option<RmsNorm<B>>,
    attn: Attention<B>,
    ffn: Ffn<B>,
    lobe: Option<Attention<B>>,
    link: Link,
}

fn parse_bias(s: &str) -> Result<RoutingBias> {
    Ok(match s {
        "none" => RoutingBias::None,
        "inner" => RoutingBias::Inner,
        "outer" => RoutingBias::Outer,
        _ => return Err(Error::invalid("LmConfig", format!("unknown MoE bias {s:?}; expected none, inner or outer"))),
    })
}

fn parse_score(s: &str) -> Result<ScoreFn> {
    Ok(match s {
        "softmax" => ScoreFn::Softmax,
        "sigmoid" => ScoreFn::Sigmoid,
        _ => return Err(Error::invalid("LmConfig", format!("unknown MoE score {s:?}; expected softmax or sigmoid"))),
    })
}

impl<B: Backend> Block<B> {
    /// Register the layer's parameters under `vs`.
    pub fn new(vs: &ParamStore<B>, cfg: &LmConfig) -> Result<Self> {
        let eps = 1e-6;
        let attn_cfg = AttentionConfig {
            dim: cfg.dim,
            heads: cfg.heads,
            causal: true,
            rope: cfg.rope_max_len.map(|l| (10_000.0, l)),
            mixer: attention_mixer(&cfg.attention)?,
        };
        let ffn = match &cfg.moe {
            None => Ffn::Dense(SwiGlu::new(&vs.sub("ffn"), cfg.dim, cfg.ffn_hidden, LinearInit::Normal { std: 0.02 })?),
            Some(m) => {
                let mut mc = MoeConfig::new(cfg.dim, cfg.ffn_hidden, m.experts, m.top_k);
                mc.bias = parse_bias(&m.bias)?;
                mc.score = parse_score(&m.score)?;
                mc.aux_alpha = m.aux_alpha;
                mc.loss_free_gamma = m.loss_free_gamma;
                Ffn::Moe(Moe::new(&vs.sub("moe"), mc)?)
            }
        };
        let lobe = match cfg.lobe {
            LobeMode::Off => None,
            mode => {
                let lc = AttentionConfig {
                    dim: cfg.dim,
                    heads: 1,
                    causal: mode == LobeMode::Causal,
                    rope: None,
                    mixer: lobe_mixer()?,
                };
                Some(Attention::new(&vs.sub("lobe"), lc)?)
            }
        };
        Ok(Block {
            norm1: RmsNorm::new(&vs.sub("norm1"), cfg.dim, eps)?,
            norm2: (cfg.link != Link::Hyper).then(|| RmsNorm::new(&vs.sub("norm2"), cfg.dim, eps)).transpose()?,
            attn: Attention::new(&vs.sub("attn"), attn_cfg)?,
            ffn,
            lobe,
            link: cfg.link,
        })
    }

    /// The norms `(N1, N2)` (no `N2` under Hyper-Link).
    pub(crate) fn norms(&self) -> (&RmsNorm<B>, Option<&RmsNorm<B>>) {
        (&self.norm1, self.norm2.as_ref())
    }

    /// The attention layer.
    pub(crate) fn attn(&self) -> &Attention<B> {
        &self.attn
    }

    /// The dense FFN, if the FFN is not an MoE.
    pub(crate) fn dense_ffn(&self) -> Option<&SwiGlu<B>> {
        match &self.ffn {
            Ffn::Dense(m) => Some(m),
            Ffn::Moe(_) => None,
        }
    }

    /// Whether the layer has a Memory Lobe.
    pub(crate) fn has_lobe(&self) -> bool {
        self.lobe.is_some()
    }

    /// The MoE layer, if the FFN is one.
    pub fn moe(&self) -> Option<&Moe<B>> {
        match &self.ffn {
            Ffn::Moe(m) => Some(m),
            Ffn::Dense(_) => None,
        }
    }

    fn ffn(&self, x: &Var<B>) -> Result<(Var<B>, BlockAux<B>)> {
        Ok(match &self.ffn {
            Ffn::Dense(m) => (m.forward(x)?, BlockAux { aux_loss: None, stats: None }),
            Ffn::Moe(m) => {
                let o = m.forward(x)?;
                (o.y, BlockAux { aux_loss: o.aux_loss, stats: Some(o.stats) })
            }
        })
    }

    /// Combine the attention output `a` (or the residual stream) into the layer output, given
    /// the lobe's way of running (whole sequence or one step). With `next` (the norm the next
    /// layer or the head applies to this output), also that norm of the output, computed with
    /// the output's last sum in one pass ([`RmsNorm::add_forward`]).
    fn connect(
        &self,
        x: &Var<B>,
        a: Var<B>,
        next: Option<&RmsNorm<B>>,
        mut lobe: impl FnMut(&Attention<B>, &Var<B>) -> Result<Var<B>>,
    ) -> Result<Chained<B>> {
        // `p + q`, and its norm by `next` from the same pass.
        let sum = |p: &Var<B>, q: &Var<B>| -> Result<(Var<B>, Option<Var<B>>)> {
            match next {
                Some(n) => n.add_forward(p, q).map(|(s, y)| (s, Some(y))),
                None => Ok((p.add(q)?, None)),
            }
        };
        match self.link {
            Link::Hyper => {
                // f = a + FFN(a); m = Lobe(f); x' = x + f + m (no residual around attention).
                let (h, aux) = self.ffn(&a)?;
                let f = a.add(&h)?;
                let (out, out_n) = match &self.lobe {
                    Some(l) => sum(&x.add(&f)?, &lobe(l, &f)?)?,
                    None => sum(x, &f)?,
                };
                Ok((out, out_n, aux))
            }
            Link::Residual => {
                let norm2 = self.norm2.as_ref().expect("residual blocks have norm2");
                let (h, hn) = norm2.add_forward(x, &a)?;
                let (f, aux) = self.ffn(&hn)?;
                let (out, out_n) = match &self.lobe {
                    Some(l) => sum(&h.add(&f)?, &lobe(l, &f)?)?,
                    None => sum(&h, &f)?,
                };
                Ok((out, out_n, aux))
            }
            Link::PostNorm => {
                // `a = Attn(x)` here (see `attn_input`): h = N1(x + a), x' = N2(h + f + Lobe(f)).
                let h = self.norm1.forward(&x.add(&a)?)?;
                let norm2 = self.norm2.as_ref().expect("post-norm blocks have norm2");
                let (f, aux) = self.ffn(&h)?;
                let sum = match &self.lobe {
                    Some(l) => h.add(&f)?.add(&lobe(l, &f)?)?,
                    None => h.add(&f)?,
                };
                let out = norm2.forward(&sum)?;
                let out_n = next.map(|n| n.forward(&out)).transpose()?;
                Ok((out, out_n, aux))
            }
        }
    }

    /// The norm this layer applies to its input before attention (`N1` of the pre-norm links;
    /// none for the post-norm residual).
    pub(crate) fn input_norm(&self) -> Option<&RmsNorm<B>> {
        match self.link {
            Link::PostNorm => None,
            Link::Hyper | Link::Residual => Some(&self.norm1),
        }
    }

    /// What the attention layer reads: `RMSNorm_1(x)` for the pre-norm links, `x` itself for
    /// the post-norm residual (whose norms come after each sum).
    fn attn_input(&self, x: &Var<B>) -> Result<Var<B>> {
        match self.link {
            Link::PostNorm => Ok(x.clone()),
            Link::Hyper | Link::Residual => self.norm1.forward(x),
        }
    }

    /// Whole-sequence forward `[batch, time, dim]`.
    pub fn forward(&self, x: &Var<B>) -> Result<(Var<B>, BlockAux<B>)> {
        let (out, _, aux) = self.forward_chained(x, None, None)?;
        Ok((out, aux))
    }

    /// [`Block::forward`] in a stack: `xn` is [`Block::input_norm`] of `x` when the layer before
    /// computed it, and `next` the norm applied to this layer's output (the next layer's input
    /// norm, or the final norm), which comes back computed with the output's last residual sum
    /// in one pass: `(out, next(out), aux)`. The values and gradients are those of
    /// [`Block::forward`] followed by `next`.
    pub(crate) fn forward_chained(
        &self,
        x: &Var<B>,
        xn: Option<Var<B>>,
        next: Option<&RmsNorm<B>>,
    ) -> Result<Chained<B>> {
        let xn = match xn {
            Some(v) if self.input_norm().is_some() => v,
            _ => self.attn_input(x)?,
        };
        let a = self.attn.forward(&xn)?;
        self.connect(x, a, next, |l, f| l.forward(f))
    }

    /// The attention layer's normalised weights `[batch, heads, t, t]` for the block input `x`
    /// (see [`Attention::attention_weights`]).
    pub fn attention_weights(&self, x: &Var<B>) -> Result<ela_core::Tensor<B>> {
        self.attn.attention_weights(&self.attn_input(x)?)
    }

    /// Run a prompt and keep the caches for decoding.
    pub fn prefill(&self, x: &Var<B>) -> Result<(Var<B>, BlockCache<B>)> {
        let (a, attn_cache) = self.attn.prefill(&self.attn_input(x)?)?;
        let mut lobe_cache = None;
        let (out, _, _) = self.connect(x, a, None, |l, f| {
            let (m, c) = l.prefill(f)?;
            lobe_cache = Some(c);
            Ok(m)
        })?;
        Ok((out, BlockCache { attn: attn_cache, lobe: lobe_cache }))
    }

    /// Why this layer's decoding step is different work at every position or reads values back
    /// to the host, so cannot be recorded once and replayed, or `None` (its caches may still
    /// block it: [`BlockCache::replay_blocker`]).
    pub fn step_replay_blocker(&self) -> Option<&'static str> {
        if let Ffn::Moe(_) = self.ffn {
            return Some("MoE routing reads each expert's tokens back to the host");
        }
        self.attn.step_replay_blocker().or_else(|| self.lobe.as_ref().and_then(|l| l.step_replay_blocker()))
    }

    /// Decode one position `x [batch, 1, dim]` at absolute position `pos`.
    pub fn step(&self, x: &Var<B>, pos: usize, cache: &mut BlockCache<B>) -> Result<Var<B>> {
        let a = self.attn.step(&self.attn_input(x)?, pos, &mut cache.attn)?;
        let lobe_cache = &mut cache.lobe;
        let (out, _, _) = self.connect(x, a, None, |l, f| {
            let c = lobe_cache.as_mut().ok_or_else(|| Error::invalid("Block::step", "missing lobe cache"))?;
            l.step(f, pos, c)
        })?;
        Ok(out)
    }
}
