//! The language model's switches.

use ela_core::{Error, Result};
use ela_nn::ela::ElaKernel;

/// The longest RoPE table an LM may ask for: 2^24 positions (a table of `2^24 x head/2` f64
/// angles is already gigabytes; no run here comes near it).
pub const MAX_ROPE_LEN: usize = 1 << 24;

/// Which token mixer the attention layers use.
#[derive(Clone, Debug, PartialEq)]
pub enum AttnKind {
    /// Softmax attention (the baseline), decoding from a KV cache.
    Softmax,
    /// Exact Linear Attention with a built-in kernel.
    Ela {
        /// The kernel (stored by name, `hadamard-exp`, ..., in checkpoints).
        kernel: ElaKernel,
        /// Chunk size of the chunked training form.
        chunk: usize,
    },
}

/// How layers are connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Hyper-Link: `a = Attn(RMSNorm(x))`, `f = a + FFN(a)`, `m = Lobe(f)`, `x' = x + f + m`.
    Hyper,
    /// Standard pre-norm residual: `h = x + Attn(N1(x))`, `f = FFN(N2(h))`, `x' = h + f + Lobe(f)`.
    Residual,
    /// Post-norm residual (the original Transformer's): `h = N1(x + Attn(x))`, `f = FFN(h)`,
    /// `x' = N2(h + f + Lobe(f))`. The baseline of `ela claims link`.
    PostNorm,
}

impl Link {
    /// The name used by `--link`, config.json and checkpoints.
    pub fn name(self) -> &'static str {
        match self {
            Link::Hyper => "hyper",
            Link::Residual => "residual",
            Link::PostNorm => "post-norm",
        }
    }

    /// Parse [`Link::name`].
    pub fn parse(s: &str) -> Option<Link> {
        [Link::Hyper, Link::Residual, Link::PostNorm].into_iter().find(|l| l.name() == s)
    }
}

/// The Memory Lobe's mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LobeMode {
    /// No lobe.
    Off,
    /// Causal ELA over positions (the default in a causal LM: no future leakage).
    Causal,
    /// Bidirectional ELA over positions, as in the paper. In a causal LM this leaks future tokens
    /// into every prediction; it exists for encoders and to demonstrate the leak.
    Bidirectional,
}

/// Mixture-of-Experts switches (`None` in [`LmConfig::moe`] means a dense SwiGLU FFN).
#[derive(Clone, Debug, PartialEq)]
pub struct MoeSpec {
    /// Number of experts.
    pub experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// Routing-score bias: "none", "inner" or "outer".
    pub bias: String,
    /// Score function: "softmax" or "sigmoid".
    pub score: String,
    /// Switch auxiliary-loss weight (0 = off).
    pub aux_alpha: f64,
    /// Loss-free balancing step (0 = off).
    pub loss_free_gamma: f64,
}

/// Every switch of [`super::ElaLm`].
#[derive(Clone, Debug, PartialEq)]
pub struct LmConfig {
    /// Vocabulary size (256 for the byte tokenizer).
    pub vocab: usize,
    /// Model width.
    pub dim: usize,
    /// Number of layers.
    pub layers: usize,
    /// Attention heads per layer.
    pub heads: usize,
    /// Hidden width of the SwiGLU FFN (or of each expert).
    pub ffn_hidden: usize,
    /// Attention mixer.
    pub attention: AttnKind,
    /// Layer connection.
    pub link: Link,
    /// Memory Lobe mode.
    pub lobe: LobeMode,
    /// Mixture-of-Experts, or a dense FFN when `None`.
    pub moe: Option<MoeSpec>,
    /// Apply RMSNorm before the output head (the paper drops it; on by default here).
    pub final_norm: bool,
    /// Share the embedding matrix with the output head.
    pub tied_embeddings: bool,
    /// Rotary position embedding with this maximum length (None: no positional encoding
    /// beyond causality).
    pub rope_max_len: Option<usize>,
}

impl LmConfig {
    /// The default model of `ela train`: small enough to train on two CPU cores in minutes.
    pub fn small() -> Self {
        LmConfig {
            vocab: 256,
            dim: 128,
            layers: 4,
            heads: 4,
            ffn_hidden: 256,
            attention: AttnKind::Ela { kernel: ElaKernel::HadamardExp, chunk: 64 },
            link: Link::Residual,
            lobe: LobeMode::Causal,
            moe: Some(MoeSpec {
                experts: 4,
                top_k: 2,
                bias: "outer".into(),
                score: "softmax".into(),
                aux_alpha: 0.0,
                loss_free_gamma: 1e-3,
            }),
            final_norm: true,
            tied_embeddings: true,
            rope_max_len: None,
        }
    }

    /// Check the switches against each other (and bound what would otherwise only fail, or
    /// exhaust memory, at the first forward pass).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid("LmConfig", m));
        if self.vocab == 0 || self.dim == 0 || self.layers == 0 || self.ffn_hidden == 0 {
            return bad("vocab, dim, layers and ffn_hidden must be positive".into());
        }
        if self.heads == 0 || !self.dim.is_multiple_of(self.heads) {
            return bad(format!("heads ({}) must divide dim ({})", self.heads, self.dim));
        }
        if self.rope_max_len.is_some() && !(self.dim / self.heads).is_multiple_of(2) {
            return bad(format!("RoPE needs an even head size, got {}", self.dim / self.heads));
        }
        if let Some(len) = self.rope_max_len {
            if len == 0 || len > MAX_ROPE_LEN {
                return bad(format!("rope_max_len must be in 1..={MAX_ROPE_LEN} positions, got {len}"));
            }
        }
        if let AttnKind::Ela { chunk: 0, .. } = self.attention {
            return bad("the ELA chunk length must be positive".into());
        }
        if let Some(m) = &self.moe {
            if m.top_k == 0 || m.top_k > m.experts {
                return bad(format!("MoE needs 1 <= top_k <= experts, got {} of {}", m.top_k, m.experts));
            }
            if !["none", "inner", "outer"].contains(&m.bias.as_str()) {
                return bad(format!("the MoE routing-score bias must be none, inner or outer, got {:?}", m.bias));
            }
            if !["softmax", "sigmoid"].contains(&m.score.as_str()) {
                return bad(format!("the MoE score function must be softmax or sigmoid, got {:?}", m.score));
            }
            // NaN compares false both ways, so the ranges are written to reject it.
            if !(m.aux_alpha.is_finite() && m.aux_alpha >= 0.0) {
                return bad(format!("the auxiliary-loss weight must be finite and >= 0, got {}", m.aux_alpha));
            }
            if !(m.loss_free_gamma.is_finite() && m.loss_free_gamma >= 0.0) {
                return bad(format!("the loss-free balancing step must be finite and >= 0, got {}", m.loss_free_gamma));
            }
        }
        Ok(())
    }
}

impl LmConfig {
    /// The configuration as `(key, value)` strings, stored in checkpoint metadata and config.json.
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        let mut v = vec![
            ("vocab", self.vocab.to_string()),
            ("dim", self.dim.to_string()),
            ("layers", self.layers.to_string()),
            ("heads", self.heads.to_string()),
            ("ffn_hidden", self.ffn_hidden.to_string()),
            (
                "attention",
                match &self.attention {
                    AttnKind::Softmax => "softmax".to_string(),
                    AttnKind::Ela { kernel, .. } => format!("ela:{kernel}"),
                },
            ),
            (
                "chunk",
                match &self.attention {
                    AttnKind::Ela { chunk, .. } => chunk.to_string(),
                    AttnKind::Softmax => "0".into(),
                },
            ),
            ("link", self.link.name().into()),
            (
                "lobe",
                match self.lobe {
                    LobeMode::Off => "off",
                    LobeMode::Causal => "causal",
                    LobeMode::Bidirectional => "bidirectional",
                }
                .into(),
            ),
            ("final_norm", self.final_norm.to_string()),
            ("tied_embeddings", self.tied_embeddings.to_string()),
            ("rope_max_len", self.rope_max_len.map_or("none".into(), |l| l.to_string())),
        ];
        match &self.moe {
            None => v.push(("moe", "none".into())),
            Some(m) => {
                v.push(("moe", "on".into()));
                v.push(("moe.experts", m.experts.to_string()));
                v.push(("moe.top_k", m.top_k.to_string()));
                v.push(("moe.bias", m.bias.clone()));
                v.push(("moe.score", m.score.clone()));
                v.push(("moe.aux_alpha", format!("{:?}", m.aux_alpha)));
                v.push(("moe.loss_free_gamma", format!("{:?}", m.loss_free_gamma)));
            }
        }
        v.into_iter().map(|(k, v)| (format!("model.{k}"), v)).collect()
    }

    /// Read a configuration written by [`LmConfig::to_pairs`].
    pub fn from_pairs(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let field = |k: &str| {
            get(&format!("model.{k}")).ok_or_else(|| Error::invalid("LmConfig", format!("missing key model.{k}")))
        };
        fn num<T: std::str::FromStr>(k: &str, v: String) -> Result<T> {
            v.parse().map_err(|_| Error::invalid("LmConfig", format!("model.{k}: cannot parse {v:?}")))
        }
        let attention = match field("attention")?.as_str() {
            "softmax" => AttnKind::Softmax,
            s => match s.strip_prefix("ela:") {
                Some(k) => AttnKind::Ela { kernel: k.parse()?, chunk: num("chunk", field("chunk")?)? },
                None => return Err(Error::invalid("LmConfig", format!("model.attention: unknown value {s:?}"))),
            },
        };
        let link = field("link")?;
        let link = Link::parse(&link)
            .ok_or_else(|| Error::invalid("LmConfig", format!("model.link: unknown value {link:?}")))?;
        let lobe = match field("lobe")?.as_str() {
            "off" => LobeMode::Off,
            "causal" => LobeMode::Causal,
            "bidirectional" => LobeMode::Bidirectional,
            s => return Err(Error::invalid("LmConfig", format!("model.lobe: unknown value {s:?}"))),
        };
        let moe = match field("moe")?.as_str() {
            "none" => None,
            _ => Some(MoeSpec {
                experts: num("moe.experts", field("moe.experts")?)?,
                top_k: num("moe.top_k", field("moe.top_k")?)?,
                bias: field("moe.bias")?,
                score: field("moe.score")?,
                aux_alpha: num("moe.aux_alpha", field("moe.aux_alpha")?)?,
                loss_free_gamma: num("moe.loss_free_gamma", field("moe.loss_free_gamma")?)?,
            }),
        };
        let rope = field("rope_max_len")?;
        let cfg = LmConfig {
            vocab: num("vocab", field("vocab")?)?,
            dim: num("dim", field("dim")?)?,
            layers: num("layers", field("layers")?)?,
            heads: num("heads", field("heads")?)?,
            ffn_hidden: num("ffn_hidden", field("ffn_hidden")?)?,
            attention,
            link,
            lobe,
            moe,
            final_norm: num("final_norm", field("final_norm")?)?,
            tied_embeddings: num("tied_embeddings", field("tied_embeddings")?)?,
            rope_max_len: if rope == "none" { None } else { Some(num("rope_max_len", rope)?) },
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_bounds_what_would_fail_later() {
        let ok = LmConfig::small();
        ok.validate().unwrap();
        let mut c = ok.clone();
        c.attention = AttnKind::Ela { kernel: ElaKernel::HadamardExp, chunk: 0 };
        assert!(c.validate().unwrap_err().to_string().contains("chunk"));
        for len in [0, MAX_ROPE_LEN + 1, usize::MAX] {
            let c = LmConfig { rope_max_len: Some(len), ..ok.clone() };
            assert!(c.validate().unwrap_err().to_string().contains("rope_max_len"), "{len}");
        }
        let moe = ok.moe.clone().expect("the small model has MoE");
        let c = LmConfig { moe: Some(MoeSpec { bias: "sideways".into(), ..moe.clone() }), ..ok.clone() };
        assert!(c.validate().unwrap_err().to_string().contains("bias"));
        let c = LmConfig { moe: Some(MoeSpec { score: "tanh".into(), ..moe }), ..ok };
        assert!(c.validate().unwrap_err().to_string().contains("score"));
    }

    #[test]
    fn pairs_round_trip() {
        let mut c = LmConfig::small();
        c.rope_max_len = Some(512);
        for cfg in [c.clone(), LmConfig { moe: None, attention: AttnKind::Softmax, ..c }] {
            let pairs = cfg.to_pairs();
            let back = LmConfig::from_pairs(|k| pairs.iter().find(|p| p.0 == k).map(|p| p.1.clone())).unwrap();
            assert_eq!(back, cfg);
        }
        assert!(LmConfig::from_pairs(|_| None).is_err());
    }
}
