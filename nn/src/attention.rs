//! Multi-head attention with a pluggable token mixer, for training (whole sequences) and for
//! decoding (one token at a time from a cache).
//!
//! Projections `q, k, v, o` are [`Linear`] maps `d -> d` (no bias), split into `heads` heads of
//! `d / heads`; optional RoPE rotates `q` and `k`. The mixer combines the heads' values:
//!
//! - [`Mixer::Softmax`]: `softmax(q k^T / sqrt(d_h) + causal mask) v`, decoding from a
//!   [`KvCache`] written in place, one key and value per token (memory and time per token grow
//!   with context); prefill reads the prompt a block of queries at a time
//!   ([`blocked_causal_attention`]), never holding its `t x t` scores;
//! - [`Mixer::Ela`]: Exact Linear Attention with any built-in kernel (see [`crate::ela`]), decoding
//!   from its recurrent state `(S, z)` in constant time and memory per token.

use ela_autograd::{no_grad, Var};
use ela_core::{Backend, CmpOp, Error, Result, Tensor};

use crate::ela::{ElaAttention, ElaState};
use crate::kv_cache::{blocked_causal_attention, KvCache};
use crate::layers::{Linear, LinearConfig, LinearInit, Rope};
use crate::module::ParamStore;

/// How the heads mix tokens.
#[derive(Clone, Debug)]
pub enum Mixer {
    /// Scaled dot-product softmax attention (the baseline).
    Softmax,
    /// Exact Linear Attention.
    Ela(ElaAttention),
}

/// Shape and behaviour of an [`Attention`] layer.
#[derive(Clone, Debug)]
pub struct AttentionConfig {
    /// Model width `d`.
    pub dim: usize,
    /// Number of heads (must divide `dim`).
    pub heads: usize,
    /// Causal (decoder) or bidirectional.
    pub causal: bool,
    /// RoPE `(base, max_len)`, or none.
    pub rope: Option<(f64, usize)>,
    /// The token mixer.
    pub mixer: Mixer,
}

/// The decoding cache of one attention layer.
pub enum AttnCache<B: Backend> {
    /// Keys (after RoPE) and values of every token so far.
    Kv(KvCache<B>),
    /// The ELA recurrent state.
    Ela(ElaState<B>),
}

impl<B: Backend> AttnCache<B> {
    /// Bytes held by the cache (what grows, or not, with context length).
    pub fn bytes(&self) -> usize {
        match self {
            AttnCache::Kv(c) => c.bytes(),
            AttnCache::Ela(s) => s.bytes(),
        }
    }

    /// Make room for `additional` more tokens: a KV cache grows its buffers now rather than while
    /// decoding; the ELA state is fixed-size and needs nothing.
    pub fn reserve(&mut self, additional: usize) -> Result<()> {
        match self {
            AttnCache::Kv(c) => c.reserve(additional),
            AttnCache::Ela(_) => Ok(()),
        }
    }

    /// Why a decoding step with this cache cannot be recorded once and replayed (a CUDA graph),
    /// or `None` when it can: an ELA state is updated in place by work that is the same at every
    /// position; a KV cache is written at the current position and read up to it, so each step
    /// is different work.
    pub fn replay_blocker(&self) -> Option<&'static str> {
        match self {
            AttnCache::Kv(_) => Some("a softmax layer's KV cache is written and read up to the current position"),
            AttnCache::Ela(_) => None,
        }
    }

    /// Counts `n` steps run by replays of a recorded step (see
    /// [`ela_core::FusedElaState::count_replayed_steps`]); an error for a KV cache, whose
    /// steps cannot be replayed.
    pub fn count_replayed_steps(&mut self, n: usize) -> Result<()> {
        match self {
            AttnCache::Ela(s) => {
                s.count_replayed_steps(n);
                Ok(())
            }
            AttnCache::Kv(_) => {
                Err(Error::invalid("AttnCache::count_replayed_steps", "a KV cache step cannot be replayed"))
            }
        }
    }

    /// An independent copy of an ELA state (to run a step without changing this one); `None`
    /// for a KV cache.
    pub fn try_clone_state(&self) -> Option<Result<Self>> {
        match self {
            AttnCache::Ela(s) => Some(s.try_clone().map(AttnCache::Ela)),
            AttnCache::Kv(_) => None,
        }
    }
}

/// Multi-head attention (see the module docs).
pub struct Attention<B: Backend> {
    q: Linear<B>,
    k: Linear<B>,
    v: Linear<B>,
    o: Linear<B>,
    rope: Option<Rope<B>>,
    cfg: AttentionConfig,
}

impl<B: Backend> Attention<B> {
    /// Register `q`, `k`, `v`, `o` projections under `vs`.
    pub fn new(vs: &ParamStore<B>, cfg: AttentionConfig) -> Result<Self> {
        if cfg.heads == 0 || !cfg.dim.is_multiple_of(cfg.heads) {
            return Err(Error::invalid(
                "Attention",
                format!("heads ({}) must be positive and divide the model width ({})", cfg.heads, cfg.dim),
            ));
        }
        let lin = |name: &str| {
            let init = LinearInit::Normal { std: (1.0 / cfg.dim as f64).sqrt() };
            Linear::new(&vs.sub(name), cfg.dim, cfg.dim, LinearConfig::no_bias(init))
        };
        let rope = match cfg.rope {
            Some((base, max_len)) => Some(Rope::new(cfg.dim / cfg.heads, max_len, base, vs.dtype(), vs.device())?),
            None => None,
        };
        Ok(Attention { q: lin("q")?, k: lin("k")?, v: lin("v")?, o: lin("o")?, rope, cfg })
    }

    /// The configuration.
    pub fn config(&self) -> &AttentionConfig {
        &self.cfg
    }

    /// The projections `[q, k, v, o]`, each `[dim, dim]` without bias.
    pub fn projections(&self) -> [&Linear<B>; 4] {
        [&self.q, &self.k, &self.v, &self.o]
    }

    /// Why this layer's decoding step is different work at every position, so cannot be
    /// recorded once and replayed (a CUDA graph), or `None` (its cache may still block it:
    /// [`AttnCache::replay_blocker`]).
    pub fn step_replay_blocker(&self) -> Option<&'static str> {
        self.rope.as_ref().map(|_| "RoPE rotates q and k by the current position")
    }

    fn head_dim(&self) -> usize {
        self.cfg.dim / self.cfg.heads
    }

    /// `[b, t, d] -> [b, heads, t, d_h]`, rotated by RoPE at `offset` when enabled.
    fn heads(&self, x: &Var<B>, lin: &Linear<B>, rotate: bool, offset: usize) -> Result<Var<B>> {
        let d = x.dims();
        let h = lin.forward(x)?.reshape([d[0], d[1], self.cfg.heads, self.head_dim()])?.transpose(1usize, 2usize)?;
        match (&self.rope, rotate) {
            (Some(r), true) => r.apply(&h, offset),
            _ => Ok(h),
        }
    }

    /// `q, k, v` heads of a whole sequence `x [b, t, d]` (RoPE at position 0 on `q` and `k`) from
    /// one product with the three weights stacked ([`Linear::fused_forward`]): one GEMM each way
    /// instead of three, and `x`'s gradient from one product instead of a sum of three. Each head
    /// tensor is a strided view of the product; its gradient comes back as a window of the
    /// product's, placed without zero padding (the autograd's narrow).
    fn qkv_heads(&self, x: &Var<B>) -> Result<(Var<B>, Var<B>, Var<B>)> {
        let d = x.dims();
        let qkv = Linear::fused_forward(&[&self.q, &self.k, &self.v], x)?.reshape([
            d[0],
            d[1],
            3,
            self.cfg.heads,
            self.head_dim(),
        ])?;
        let head = |i: usize| qkv.narrow(2usize, i, 1)?.squeeze(2usize)?.transpose(1usize, 2usize);
        let (q, k, v) = (head(0)?, head(1)?, head(2)?);
        match &self.rope {
            Some(r) => Ok((r.apply(&q, 0)?, r.apply(&k, 0)?, v)),
            None => Ok((q, k, v)),
        }
    }

    fn check_input(&self, x: &Var<B>) -> Result<(usize, usize)> {
        let d = x.dims();
        if d.len() != 3 || d[2] != self.cfg.dim {
            return Err(Error::ShapeMismatch {
                op: "Attention",
                lhs: x.shape(),
                rhs: vec![self.cfg.dim].into(),
                hint: format!("expected input [batch, time, {}]", self.cfg.dim),
            });
        }
        Ok((d[0], d[1]))
    }

    fn merge(&self, y: &Var<B>, b: usize, t: usize) -> Result<Var<B>> {
        self.o.forward(&y.transpose(1usize, 2usize)?.reshape([b, t, self.cfg.dim])?)
    }

    /// Whole-sequence forward `x [batch, time, d] -> [batch, time, d]`.
    pub fn forward(&self, x: &Var<B>) -> Result<Var<B>> {
        let (b, t) = self.check_input(x)?;
        let (q, k, v) = self.qkv_heads(x)?;
        let y = match &self.cfg.mixer {
            Mixer::Softmax => softmax_attention(&q, &k, &v, self.cfg.causal)?,
            Mixer::Ela(ela) => ela.forward(&q, &k, &v, self.cfg.causal)?,
        };
        self.merge(&y, b, t)
    }

    /// Run a prompt `x [batch, time, d]` and return its output and the cache to decode from.
    pub fn prefill(&self, x: &Var<B>) -> Result<(Var<B>, AttnCache<B>)> {
        self.require_causal("prefill")?;
        let (b, t) = self.check_input(x)?;
        no_grad(|| {
            let (q, k, v) = self.qkv_heads(x)?;
            let (y, cache) = match &self.cfg.mixer {
                Mixer::Softmax => {
                    let (q, k, v) = (q.value(), k.value(), v.value());
                    let y = blocked_causal_attention(&q, &k, &v)?;
                    (Var::constant(y), AttnCache::Kv(KvCache::from_prompt(&k, &v, t)?))
                }
                Mixer::Ela(ela) => {
                    let (y, state) = ela.prefill(&q.value(), &k.value(), &v.value())?;
                    (Var::constant(y), AttnCache::Ela(state))
                }
            };
            Ok((self.merge(&y, b, t)?, cache))
        })
    }

    /// Decode one token `x [batch, 1, d]` at absolute position `pos`, updating `cache`.
    pub fn step(&self, x: &Var<B>, pos: usize, cache: &mut AttnCache<B>) -> Result<Var<B>> {
        self.require_causal("step")?;
        let (b, t) = self.check_input(x)?;
        if t != 1 {
            return Err(Error::invalid("Attention::step", format!("decodes one token at a time, got {t}")));
        }
        no_grad(|| {
            let (q, k, v) = (
                self.heads(x, &self.q, true, pos)?,
                self.heads(x, &self.k, true, pos)?,
                self.heads(x, &self.v, false, pos)?,
            );
            let y = match (cache, &self.cfg.mixer) {
                (AttnCache::Kv(kv), Mixer::Softmax) => {
                    kv.write(&k.value(), &v.value())?;
                    // The new query sees every cached token: no mask. The views end with this
                    // arm, before the next write.
                    softmax_attention(&q, &Var::constant(kv.keys()?), &Var::constant(kv.values()?), false)?
                }
                (AttnCache::Ela(state), Mixer::Ela(ela)) => {
                    Var::constant(ela.step(state, &q.value(), &k.value(), &v.value())?)
                }
                _ => return Err(Error::invalid("Attention::step", "the cache does not belong to this layer's mixer")),
            };
            self.merge(&y, b, 1)
        })
    }

    /// The normalised attention weights `[batch, heads, t, t]` of `x [batch, t, d]`: row `i` is
    /// the distribution over keys that output `i` averages values with (`a_ij / sum_j a_ij`,
    /// masked to `j <= i` when causal). For ELA it is the kernel's closed form, which the linear
    /// forms equal (docs/ela.md); signed kernels can give negative weights. O(t^2): for analysis
    /// (`ela claims dilution`), not for training.
    pub fn attention_weights(&self, x: &Var<B>) -> Result<Tensor<B>> {
        let (_, t) = self.check_input(x)?;
        no_grad(|| {
            let (q, k) = (self.heads(x, &self.q, true, 0)?, self.heads(x, &self.k, true, 0)?);
            let qv = q.value();
            let dev = qv.device();
            let a = match &self.cfg.mixer {
                Mixer::Softmax => {
                    let dh = self.head_dim() as f64;
                    let scores = q.matmul(&k.t()?)?.mul_scalar(1.0 / dh.sqrt())?.value();
                    let scores = if self.cfg.causal {
                        let allowed = Tensor::tril_mask(t, t, 0, dev)?;
                        scores.masked_fill(&allowed.cmp_scalar(CmpOp::Eq, 0.0)?, f64::NEG_INFINITY)?
                    } else {
                        scores
                    };
                    return scores.softmax(-1isize);
                }
                Mixer::Ela(ela) => crate::ela::builtin::<B>(ela.kernel).kernel_matrix(&q, &k)?.value(),
            };
            let a = if self.cfg.causal {
                let allowed = Tensor::tril_mask(t, t, 0, dev)?;
                a.masked_fill(&allowed.cmp_scalar(CmpOp::Eq, 0.0)?, 0.0)?
            } else {
                a
            };
            a.div(&a.sum(-1isize, true)?)
        })
    }

    fn require_causal(&self, op: &str) -> Result<()> {
        if !self.cfg.causal {
            return Err(Error::invalid("Attention", format!("{op} decodes left to right and needs a causal layer")));
        }
        Ok(())
    }
}

/// `softmax(q k^T / sqrt(d_h) [+ causal mask]) v` over `[.., t, d_h]` tensors.
pub fn softmax_attention<B: Backend>(q: &Var<B>, k: &Var<B>, v: &Var<B>, causal: bool) -> Result<Var<B>> {
    let dh = *q.dims().last().unwrap_or(&1);
    let scores = q.matmul(&k.t()?)?.mul_scalar(1.0 / (dh as f64).sqrt())?;
    let scores = if causal {
        let (tq, tk) = (q.dims()[q.rank() - 2], k.dims()[k.rank() - 2]);
        // Query i may see keys j <= i + (tk - tq) (queries are the last tq of tk positions).
        let allowed = Tensor::tril_mask(tq, tk, tk as isize - tq as isize, &q.device())?;
        scores.masked_fill(&allowed.cmp_scalar(CmpOp::Eq, 0.0)?, f64::NEG_INFINITY)?
    } else {
        scores
    };
    scores.softmax(-1isize)?.matmul(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ela_core::{Cpu, DType, Rng};

    /// The fused q/k/v projection gives the heads (and, through them, every gradient) that three
    /// separate projections give: same values, gradients of `x` and of each weight equal to
    /// rounding, for both mixers, with and without RoPE.
    #[test]
    fn fused_qkv_heads_match_three_projections() {
        let mixers = [Mixer::Softmax, Mixer::Ela(crate::ela::ElaAttention::default())];
        for (mixer, rope) in mixers.iter().flat_map(|m| [(m.clone(), None), (m.clone(), Some((10_000.0, 16)))]) {
            let vs = ParamStore::<Cpu>::new(&Cpu, DType::F64, 3);
            let cfg = AttentionConfig { dim: 12, heads: 3, causal: true, rope, mixer };
            let att = Attention::new(&vs, cfg).unwrap();
            let x = Var::param(Tensor::randn(0.0, 1.0, [2, 7, 12], DType::F64, &mut Rng::new(4), &Cpu).unwrap());
            let r = Tensor::randn(0.0, 1.0, [2, 3, 7, 4], DType::F64, &mut Rng::new(5), &Cpu).unwrap();
            // One loss over the three heads, weighted differently, so that each head's gradient
            // has to land in its own window.
            let loss = |(q, k, v): (Var<Cpu>, Var<Cpu>, Var<Cpu>)| -> Var<Cpu> {
                let rv = Var::constant(r.clone());
                let l = q.mul(&rv).unwrap().sum_all().unwrap();
                let l = l.add(&k.square().unwrap().mul(&rv).unwrap().sum_all().unwrap()).unwrap();
                l.add(&v.mul_scalar(-2.0).unwrap().sum_all().unwrap()).unwrap()
            };
            let fused = att.qkv_heads(&x).unwrap();
            let separate = (
                att.heads(&x, &att.q, true, 0).unwrap(),
                att.heads(&x, &att.k, true, 0).unwrap(),
                att.heads(&x, &att.v, false, 0).unwrap(),
            );
            for (a, b) in [(&fused.0, &separate.0), (&fused.1, &separate.1), (&fused.2, &separate.2)] {
                assert_eq!(a.dims(), b.dims());
                let (a, b) = (a.value().to_vec::<f64>().unwrap(), b.value().to_vec::<f64>().unwrap());
                assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-12), "heads differ");
            }
            let (gf, gs) = (loss(fused).backward().unwrap(), loss(separate).backward().unwrap());
            for p in [&x, att.q.weight(), att.k.weight(), att.v.weight()] {
                let (a, b) = (gf.get(p).unwrap().to_vec::<f64>().unwrap(), gs.get(p).unwrap().to_vec::<f64>().unwrap());
                assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-12 * (1.0 + y.abs())), "gradients differ");
            }
        }
    }
}
