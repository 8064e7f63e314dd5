//! The language model's size from its configuration alone: parameter counts per component
//! (what `ela info` prints, for any size, at once) and the memory estimates of training and
//! decoding that [`crate::budget`] checks before anything is built.
//!
//! The counts mirror the modules' constructors (`ElaLm::new`, `Block::new`, `Attention`, `Moe`,
//! `SwiGlu`, `RmsNorm`); a test builds models of several configurations and compares, so the
//! two cannot drift apart silently.

use ela_core::{Error, Result};

use super::{AttnKind, Link, LmConfig, LobeMode};
use crate::budget::Estimate;

/// Trainable parameters per component, grouped as `ela info` prints them (`embed`,
/// `layers.*.attn`, ...), in name order. An overflowing count is an error naming the setting.
pub fn param_report(cfg: &LmConfig) -> Result<Vec<(String, u64)>> {
    let overflow = || Error::invalid("LmConfig", format!("the parameter count of {cfg:?} overflows 64 bits"));
    let mul = |a: u64, b: u64| a.checked_mul(b).ok_or_else(overflow);
    let (d, v, layers, hidden) = (cfg.dim as u64, cfg.vocab as u64, cfg.layers as u64, cfg.ffn_hidden as u64);
    let per_layer = |n: u64| mul(n, layers);
    let proj = mul(mul(4, d)?, d)?; // q, k, v, o: [d, d] each, no bias
    let swiglu = mul(mul(3, d)?, hidden)?; // w_gate, w_up [hidden, d], w_down [d, hidden]
    let mut v_out = vec![("embed".to_string(), mul(v, d)?)];
    if cfg.final_norm {
        v_out.push(("final_norm".into(), d));
    }
    if !cfg.tied_embeddings {
        v_out.push(("head".into(), mul(v, d)?));
    }
    v_out.push(("layers.*.attn".into(), per_layer(proj)?));
    match &cfg.moe {
        None => v_out.push(("layers.*.ffn".into(), per_layer(swiglu)?)),
        Some(m) => {
            let e = m.experts as u64;
            let moe = mul(e, d)?.checked_add(mul(e, swiglu)?).ok_or_else(overflow)?; // router + experts
            v_out.push(("layers.*.moe".into(), per_layer(moe)?));
        }
    }
    if cfg.lobe != LobeMode::Off {
        v_out.push(("layers.*.lobe".into(), per_layer(proj)?));
    }
    v_out.push(("layers.*.norm1".into(), per_layer(d)?));
    if cfg.link != Link::Hyper {
        v_out.push(("layers.*.norm2".into(), per_layer(d)?));
    }
    v_out.sort();
    Ok(v_out)
}

/// Total trainable parameters (see [`param_report`]).
pub fn param_count(cfg: &LmConfig) -> Result<u64> {
    param_report(cfg)?
        .iter()
        .try_fold(0u64, |a, (_, n)| a.checked_add(*n))
        .ok_or_else(|| Error::invalid("LmConfig", "the parameter count overflows 64 bits"))
}

/// Buffers that are not parameters: the MoE selection bias and the RoPE tables.
fn buffer_elems(cfg: &LmConfig) -> u64 {
    let layers = cfg.layers as u64;
    let bias = cfg.moe.as_ref().map_or(0, |m| m.experts as u64).saturating_mul(layers);
    // cos and sin, [max_len, head_dim / 2] each, in every attention layer.
    let rope = cfg.rope_max_len.map_or(0, |l| (l as u64).saturating_mul((cfg.dim / cfg.heads.max(1)) as u64));
    bias.saturating_add(rope.saturating_mul(layers))
}

/// The model itself: f32 parameters and buffers.
pub fn add_model(e: &mut Estimate, cfg: &LmConfig, params: u64) {
    e.add("parameters", params, 4);
    e.add("buffers", buffer_elems(cfg), 4);
}

/// Training one step of `batch x seq` tokens: parameters with their gradients and AdamW's two
/// moments (16 bytes a parameter in f32), and the activations the backward keeps. The
/// activation count is a lower bound: per token and layer the block's inputs and outputs
/// (about 12 widths for attention, norms and residuals, 4 more with the lobe) and the FFN's
/// hidden units (3 per expert used); the logits with their softmax and gradient; and for
/// softmax attention the `T x T` score and probability matrices of every head.
pub fn add_training(e: &mut Estimate, cfg: &LmConfig, params: u64, batch: usize, seq: usize) {
    e.add("parameters, gradients and AdamW state", params, 16);
    e.add("buffers", buffer_elems(cfg), 4);
    let tokens = (batch as u64).saturating_mul(seq as u64);
    let (d, h) = (cfg.dim as u64, cfg.ffn_hidden as u64);
    let used = cfg.moe.as_ref().map_or(1, |m| m.top_k as u64);
    let lobe = if cfg.lobe == LobeMode::Off { 0 } else { 4 };
    let per_layer = d.saturating_mul(12 + lobe).saturating_add(h.saturating_mul(3).saturating_mul(used));
    let mut acts = per_layer.saturating_mul(cfg.layers as u64).saturating_add((cfg.vocab as u64).saturating_mul(3));
    if cfg.attention == AttnKind::Softmax {
        let scores = (cfg.heads as u64).saturating_mul(seq as u64).saturating_mul(2).saturating_mul(cfg.layers as u64);
        acts = acts.saturating_add(scores);
    }
    e.add("activations", tokens.saturating_mul(acts), 4);
}

/// A forward over `tokens` positions without gradients (a prefill): the largest layer's
/// temporaries (the same widths as in [`add_training`], for one layer at a time), the logits,
/// and for softmax attention one layer's `T x T` scores and probabilities per head.
pub fn add_prefill(e: &mut Estimate, cfg: &LmConfig, tokens: usize) {
    let t = tokens as u64;
    let per_tok = (cfg.dim as u64).saturating_mul(16).saturating_add((cfg.ffn_hidden as u64).saturating_mul(3));
    e.add("prefill activations", t.saturating_mul(per_tok.saturating_add(cfg.vocab as u64)), 4);
    if cfg.attention == AttnKind::Softmax {
        // The prefill holds one block of queries' scores at a time (about three tensors of it
        // alive: scores, masked, softmax), at most PREFILL_SCORES elements each.
        let full = (cfg.heads as u64).saturating_mul(t).saturating_mul(t);
        let scores = full.min(ela_nn::kv_cache::PREFILL_SCORES as u64).saturating_mul(3);
        e.add("softmax attention scores", scores, 4);
    }
}

/// Decoding `positions` tokens in total (prompt and generated): the model, and for softmax
/// attention the key/value cache that grows with every position (ELA's state does not).
pub fn add_decoding(e: &mut Estimate, cfg: &LmConfig, params: u64, positions: usize) {
    add_model(e, cfg, params);
    if cfg.attention == AttnKind::Softmax {
        let per_pos = (cfg.dim as u64).saturating_mul(2).saturating_mul(cfg.layers as u64);
        e.add("key/value cache", per_pos.saturating_mul(positions as u64), 4);
    }
    e.add("generated tokens", positions as u64, 4);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm::{ElaLm, MoeSpec};
    use ela_core::{Cpu, DType};
    use ela_nn::module::ParamStore;

    /// The report equals the counts of the model actually built, by component.
    #[test]
    fn counts_match_a_built_model() {
        let small = LmConfig { dim: 16, heads: 2, ffn_hidden: 24, layers: 2, vocab: 40, ..LmConfig::small() };
        let cases = [
            small.clone(),
            LmConfig { moe: None, lobe: LobeMode::Off, link: Link::Hyper, tied_embeddings: false, ..small.clone() },
            LmConfig { final_norm: false, rope_max_len: Some(32), attention: AttnKind::Softmax, ..small.clone() },
            LmConfig {
                moe: Some(MoeSpec { experts: 3, top_k: 3, ..small.moe.clone().unwrap() }),
                lobe: LobeMode::Bidirectional,
                ..small
            },
        ];
        for cfg in cases {
            let store = ParamStore::new(&Cpu, DType::F32, 0);
            ElaLm::new(&store, cfg.clone()).unwrap();
            let mut built = std::collections::BTreeMap::<String, u64>::new();
            for (name, v) in store.named_params() {
                let parts: Vec<&str> = name.split('.').collect();
                let key = if parts[0] == "layers" { format!("layers.*.{}", parts[2]) } else { parts[0].to_string() };
                *built.entry(key).or_default() += v.value().elem_count() as u64;
            }
            let report: std::collections::BTreeMap<String, u64> = param_report(&cfg).unwrap().into_iter().collect();
            assert_eq!(report, built, "{cfg:?}");
            assert_eq!(param_count(&cfg).unwrap(), store.num_params() as u64);
        }
    }

    #[test]
    fn huge_configurations_are_counted_at_once_or_refused() {
        let cfg = LmConfig { dim: 1_000_000, layers: 1_000_000, ..LmConfig::small() };
        // 4e18 in the attention alone: counted, no model built.
        assert!(param_count(&cfg).unwrap() > 4_000_000_000_000_000_000);
        let cfg = LmConfig { dim: 1 << 40, layers: 1 << 20, ..LmConfig::small() };
        assert!(param_count(&cfg).unwrap_err().to_string().contains("overflows"));
    }
}
