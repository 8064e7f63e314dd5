//! No future leakage in causal mode: changing tokens after position i leaves the logits at
//! positions <= i unchanged, for every attention/lobe combination. The paper's bidirectional
//! Memory Lobe leaks, and this test detects that it does.

mod lm_common;

use ela_autograd::no_grad;
use ela_core::{Cpu, DType, Tensor};
use ela_models::lm::{ElaLm, Link, LobeMode};
use ela_nn::module::ParamStore;

fn logits(model: &ElaLm<Cpu>, ids: &[u32]) -> Vec<f64> {
    let t = Tensor::from_vec(ids.to_vec(), [1, ids.len()], &Cpu).unwrap();
    no_grad(|| model.forward(&t)).unwrap().logits.value().to_vec_f64().unwrap()
}

/// Largest change of the logits at positions `<= i` when every token after `i` changes.
fn leak(model: &ElaLm<Cpu>, vocab: usize, i: usize) -> f64 {
    let a: Vec<u32> = (0..12).map(|t| (t * 7 % vocab) as u32).collect();
    let mut b = a.clone();
    for t in b.iter_mut().skip(i + 1) {
        *t = (*t + 1 + (vocab as u32) / 2) % vocab as u32;
    }
    let (la, lb) = (logits(model, &a), logits(model, &b));
    la[..(i + 1) * vocab].iter().zip(&lb[..(i + 1) * vocab]).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn causal_models_do_not_leak() {
    for (n, cfg) in lm_common::causal_configs().into_iter().enumerate() {
        let model = ElaLm::new(&ParamStore::new(&Cpu, DType::F64, n as u64), cfg.clone()).unwrap();
        for i in [0, 3, 7, 10] {
            // Bit-identical: the computation of positions <= i never reads later tokens.
            assert_eq!(leak(&model, cfg.vocab, i), 0.0, "config {cfg:?} leaks at position {i}");
        }
    }
}

#[test]
fn bidirectional_lobe_leaks_and_is_detected() {
    for a in lm_common::attentions() {
        for link in [Link::Hyper, Link::Residual, Link::PostNorm] {
            let cfg = lm_common::tiny(a.clone(), link, LobeMode::Bidirectional, false);
            let model = ElaLm::new(&ParamStore::new(&Cpu, DType::F64, 3), cfg.clone()).unwrap();
            let l = leak(&model, cfg.vocab, 3);
            assert!(l > 1e-9, "expected the bidirectional lobe to leak future tokens ({cfg:?}), change {l:e}");
        }
    }
}
