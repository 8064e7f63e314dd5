//! Shared helpers of the LM tests: small configurations covering every switch.
#![allow(dead_code)] // each test binary that includes this module uses a part of it

use ela_models::lm::{AttnKind, Link, LmConfig, LobeMode, MoeSpec};

/// A tiny configuration for tests.
pub fn tiny(attention: AttnKind, link: Link, lobe: LobeMode, moe: bool) -> LmConfig {
    LmConfig {
        vocab: 40,
        dim: 16,
        layers: 2,
        heads: 2,
        ffn_hidden: 24,
        attention,
        link,
        lobe,
        moe: moe.then(|| MoeSpec {
            experts: 3,
            top_k: 2,
            bias: "outer".into(),
            score: "softmax".into(),
            aux_alpha: 0.01,
            loss_free_gamma: 1e-3,
        }),
        final_norm: true,
        tied_embeddings: true,
        rope_max_len: Some(64),
    }
}

/// Every attention mixer the LM supports.
pub fn attentions() -> Vec<AttnKind> {
    let mut v = vec![AttnKind::Softmax];
    for k in ["hadamard-exp", "sum-sq-euclid", "sub-sq-euclid", "blueprint", "elu-plus-one"] {
        v.push(AttnKind::Ela { kernel: k.parse().unwrap(), chunk: 4 });
    }
    v
}

/// Every causal configuration: mixers x links x lobe {off, causal} x {dense, MoE}.
pub fn causal_configs() -> Vec<LmConfig> {
    let mut out = vec![];
    for a in attentions() {
        for link in [Link::Hyper, Link::Residual, Link::PostNorm] {
            for lobe in [LobeMode::Off, LobeMode::Causal] {
                for moe in [false, true] {
                    out.push(tiny(a.clone(), link, lobe, moe));
                }
            }
        }
    }
    out
}
