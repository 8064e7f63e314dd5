//! Decoding from the recurrent state (ELA) or the KV cache (softmax) gives the same logits as
//! re-running the full forward on the growing prefix, for every configuration.

mod lm_common;

use ela_autograd::no_grad;
use ela_core::{Cpu, DType, Rng, Tensor};
use ela_models::lm::ElaLm;
use ela_nn::module::ParamStore;

fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / (1.0 + y.abs())).fold(0.0, f64::max)
}

fn check(dtype: DType, tol: f64) {
    for (i, cfg) in lm_common::causal_configs().into_iter().enumerate() {
        let store = ParamStore::new(&Cpu, dtype, i as u64);
        let model = ElaLm::new(&store, cfg.clone()).unwrap();
        let mut rng = Rng::new(i as u64);
        let prompt: Vec<u32> = (0..5).map(|_| rng.below(cfg.vocab as u64) as u32).collect();
        let (mut logits, mut state) = model.prefill(&Tensor::from_vec(prompt.clone(), [1, 5], &Cpu).unwrap()).unwrap();
        let mut seq = prompt;
        for step in 0..7 {
            // Full forward on the whole prefix; its last position must match the decoder's.
            let t = seq.len();
            let full = no_grad(|| model.forward(&Tensor::from_vec(seq.clone(), [1, t], &Cpu).unwrap())).unwrap();
            let last =
                full.logits.value().narrow(1usize, t - 1, 1).unwrap().flatten_all().unwrap().to_vec_f64().unwrap();
            let dec = logits.flatten_all().unwrap().to_vec_f64().unwrap();
            let err = max_rel(&dec, &last);
            assert!(err < tol, "config {i} {cfg:?} step {step}: decode vs full forward differ by {err:e}");
            // Greedy next token.
            let next =
                dec.iter().enumerate().fold((0, f64::MIN), |b, (j, &v)| if v > b.1 { (j, v) } else { b }).0 as u32;
            seq.push(next);
            logits = model.step(&[next], &mut state).unwrap();
        }
        assert_eq!(state.position(), seq.len());
    }
}

#[test]
fn decoding_matches_full_forward_f64() {
    check(DType::F64, 1e-10);
}

#[test]
fn decoding_matches_full_forward_f32() {
    check(DType::F32, 1e-5);
}

#[test]
fn ela_state_is_constant_while_kv_cache_grows() {
    use ela_models::lm::{AttnKind, Link, LobeMode};
    let ela = lm_common::tiny(
        AttnKind::Ela { kernel: ela_nn::ela::ElaKernel::HadamardExp, chunk: 4 },
        Link::Hyper,
        LobeMode::Causal,
        false,
    );
    let soft = lm_common::tiny(AttnKind::Softmax, Link::Hyper, LobeMode::Off, false);
    for (cfg, grows) in [(ela, false), (soft, true)] {
        let model = ElaLm::new(&ParamStore::new(&Cpu, DType::F32, 0), cfg).unwrap();
        let (_, mut state) = model.prefill(&Tensor::from_vec(vec![1u32, 2, 3], [1, 3], &Cpu).unwrap()).unwrap();
        let before = state.bytes();
        for t in 0..5 {
            model.step(&[t], &mut state).unwrap();
        }
        assert_eq!(state.bytes() > before, grows, "state bytes {before} -> {}", state.bytes());
    }
}
