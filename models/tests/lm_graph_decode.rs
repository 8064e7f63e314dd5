//! `GraphDecoder`: a decoding step recorded once as a CUDA graph and replayed per token must give
//! the eager step's logits, keep the position, and hand back a state that eager decoding
//! continues from; models whose step cannot be replayed are refused with the reason. The CUDA
//! instances skip without a GPU (`ELA_REQUIRE_CUDA=1` makes them fail instead).

mod decode_common;

use decode_common::{check_decoder, prompt, STEPS};
use ela_core::{DType, Result, Rng};
use ela_models::lm::{
    generate, generate_eager, AttnKind, ElaLm, GraphDecoder, Link, LmConfig, LobeMode, ReplayDevice, SampleConfig,
};
use ela_nn::module::ParamStore;
use ela_tests::device::is_cuda;
use ela_tests::device_tests;

/// A tiny ELA LM with Hyper-Link and the causal Memory Lobe (two ELA states per layer).
fn cfg() -> LmConfig {
    decode_common::tiny(Link::Hyper, LobeMode::Causal)
}

device_tests! {
    /// Six decoded tokens for three rows: graph replays against eager steps, in f32 and bf16,
    /// then eager decoding continues from the decoder's state. On the CPU: a clean error.
    fn graph_decoding_equals_eager<B: ReplayDevice>(dev: &B) -> Result<()> {
        for dtype in [DType::F32, DType::BF16] {
            let model = ElaLm::new(&ParamStore::new(dev, dtype, 7), cfg())?;
            if !is_cuda(dev) {
                let (_, state) = model.prefill(&prompt(dev)?)?;
                let e = GraphDecoder::new(&model, state, &STEPS[0]).err().expect("the CPU records no graphs").to_string();
                assert!(e.contains("needs a CUDA device"), "{e}");
                return Ok(());
            }
            // Replays run the recorded kernels on the same shapes: the same sums in the same order.
            let tol = if dtype == DType::F32 { 1e-6 } else { 1e-2 };
            let what = format!("{dtype:?}");
            check_decoder(&model, tol, &what, |state, tokens| Ok(Box::new(GraphDecoder::new(&model, state, tokens)?)))?;
        }
        Ok(())
    }
}

device_tests! {
    /// `generate` (a GraphDecoder on CUDA for a replayable model) and `generate_eager` sample the
    /// same tokens with the same seed: greedily, and at temperature 1 with top-k and top-p.
    fn generate_with_graphs_equals_eager_generation<B: ReplayDevice>(dev: &B) -> Result<()> {
        let model = ElaLm::new(&ParamStore::new(dev, DType::F32, 3), cfg())?;
        let prompt = [5u32, 17, 33, 2];
        for sc in [SampleConfig { temperature: 0.0, top_k: 0, top_p: 1.0 }, SampleConfig { temperature: 1.0, top_k: 20, top_p: 0.9 }] {
            let a = generate(&model, &prompt, 24, &sc, &mut Rng::new(9))?;
            let b = generate_eager(&model, &prompt, 24, &sc, &mut Rng::new(9))?;
            assert_eq!(a, b, "{sc:?}");
            assert_eq!(a.len(), 24);
        }
        // Edge counts: nothing to decode, and one token (no step at all).
        let sc = SampleConfig::default();
        assert!(generate(&model, &prompt, 0, &sc, &mut Rng::new(1))?.is_empty());
        assert_eq!(generate(&model, &prompt, 1, &sc, &mut Rng::new(1))?, generate_eager(&model, &prompt, 1, &sc, &mut Rng::new(1))?);
        Ok(())
    }
}

/// Each model whose step differs by position or reads back to the host is refused, naming why;
/// so are out-of-vocabulary tokens (checked on the host: the recorded lookup cannot check them).
#[test]
fn unreplayable_models_and_bad_tokens_are_refused() -> Result<()> {
    let dev = ela_core::Cpu;
    let refuse = |c: LmConfig, tokens: &[u32], why: &str| -> Result<()> {
        let model = ElaLm::new(&ParamStore::new(&dev, DType::F32, 0), c)?;
        let (_, state) = model.prefill(&prompt(&dev)?)?;
        let e = GraphDecoder::new(&model, state, tokens).err().expect("refused").to_string();
        assert!(e.contains(why), "{e}");
        Ok(())
    };
    refuse(LmConfig { attention: AttnKind::Softmax, ..cfg() }, &[1, 2, 3], "KV cache")?;
    refuse(LmConfig { rope_max_len: Some(64), ..cfg() }, &[1, 2, 3], "RoPE")?;
    let moe = LmConfig::small().moe;
    refuse(LmConfig { moe, ..cfg() }, &[1, 2, 3], "MoE routing")?;
    refuse(cfg(), &[1, 50, 3], "token 50 is outside the vocabulary of 50")?;
    Ok(())
}
