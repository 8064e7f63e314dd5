//! `FusedDecoder`: the whole decoding step in one kernel must give the per-op step's logits
//! (f32: to f32 rounding; bf16 weights: against the same weights in f32, to the logits' bf16
//! rounding), under every link, keep the position and hand back a state that eager decoding
//! continues from; models it does not cover are refused with the reason. The CUDA instances skip
//! without a GPU (`ELA_REQUIRE_CUDA=1` makes them fail instead).

mod decode_common;

use decode_common::{check_decoder, prompt, rel, STEPS};
use ela_core::{Backend, DType, Result, Rng};
use ela_models::lm::{
    generate, generate_eager, AttnKind, ElaLm, FusedDecoder, Link, LmConfig, LobeMode, ReplayDevice, SampleConfig,
};
use ela_nn::ela::ElaKernel;
use ela_nn::module::{ParamStore, StateDict};
use ela_nn::precision::Precision;
use ela_tests::device::is_cuda;
use ela_tests::device_tests;

/// A tiny ELA LM without the Memory Lobe (which the fused step does not cover).
fn cfg(link: Link) -> LmConfig {
    decode_common::tiny(link, LobeMode::Off)
}

/// The fused decoder of `fused`, checked against `reference`'s per-op steps
/// ([`decode_common::check_decoder`]).
fn check_against<B: ReplayDevice>(fused: &ElaLm<B>, reference: &ElaLm<B>, tol: f64, what: &str) -> Result<()> {
    check_decoder(reference, tol, what, |state, tokens| Ok(Box::new(FusedDecoder::new(fused, state, tokens)?)))
}

/// The f32 twin of `model`: the same parameters, cast to f32.
fn f32_twin<B: Backend>(model: &ElaLm<B>) -> Result<ElaLm<B>> {
    let store = ParamStore::new(model.store().device(), DType::F32, 99);
    let twin = ElaLm::new(&store, model.config().clone())?;
    let sd: StateDict<B> =
        model.store().state_dict().into_iter().map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?))).collect::<Result<_>>()?;
    store.load_state_dict(&sd, true)?;
    Ok(twin)
}

device_tests! {
    /// f32 weights under each link: the fused step against the per-op step, to f32 rounding
    /// (the sums run in another order). On the CPU: a clean error.
    fn fused_decoding_equals_the_per_op_step_in_f32<B: ReplayDevice>(dev: &B) -> Result<()> {
        for link in [Link::Hyper, Link::Residual, Link::PostNorm] {
            let model = ElaLm::new(&ParamStore::new(dev, DType::F32, 7), cfg(link))?;
            if !is_cuda(dev) {
                let (_, state) = model.prefill(&prompt(dev)?)?;
                let e = FusedDecoder::new(&model, state, &STEPS[0]).err().expect("no fused kernel on the CPU").to_string();
                assert!(e.contains("CUDA kernel"), "{e}");
                return Ok(());
            }
            check_against(&model, &model, 2e-5, &format!("{link:?} f32"))?;
        }
        Ok(())
    }
}

device_tests! {
    /// Shapes the small model does not reach: heads of 128 (four warps' worth of features), a
    /// width above the block's 512 threads (the state columns take two rounds), an untied head
    /// and no final norm, in f32 and bf16.
    fn fused_decoding_of_wide_heads_and_an_untied_head<B: ReplayDevice>(dev: &B) -> Result<()> {
        if !is_cuda(dev) {
            return Ok(());
        }
        let wide = LmConfig { dim: 640, heads: 5, ffn_hidden: 96, layers: 1, tied_embeddings: false, final_norm: false, ..cfg(Link::Hyper) };
        let model = ElaLm::new(&ParamStore::new(dev, DType::F32, 5), wide.clone())?;
        check_against(&model, &model, 5e-5, "wide f32")?;
        let half = ElaLm::new(&ParamStore::new(dev, DType::BF16, 5), wide)?;
        let twin = f32_twin(&half)?;
        check_against(&half, &twin, 8e-3, "wide bf16")
    }
}

device_tests! {
    /// Batch sizes that spread a sequence over 4, 2 and 1 blocks on a GPU of 132
    /// multiprocessors (batch 3, in the other tests, takes 8), the last above the 128 token ids
    /// the launch carries in its parameters (its ids go through a device buffer). Every row's
    /// logits against the per-op step, for three steps.
    fn fused_decoding_of_larger_batches<B: ReplayDevice>(dev: &B) -> Result<()> {
        if !is_cuda(dev) {
            return Ok(());
        }
        let model = ElaLm::new(&ParamStore::new(dev, DType::F32, 17), cfg(Link::Residual))?;
        for rows in [20usize, 40, 130] {
            let ids: Vec<u32> = (0..rows * 3).map(|i| (i as u32 * 7 + 1) % 50).collect();
            let prompt = ela_core::Tensor::from_cpu_storage(&ela_core::CpuStorage::U32(ids), [rows, 3], dev)?;
            let (_, mut eager) = model.prefill(&prompt)?;
            let (_, state) = model.prefill(&prompt)?;
            let tokens = |s: u32| (0..rows as u32).map(|r| (r * 3 + s) % 50).collect::<Vec<_>>();
            let mut dec = FusedDecoder::new(&model, state, &tokens(0))?;
            let want = model.step(&tokens(0), &mut eager)?;
            assert!(rel(dec.logits(), &want)? <= 2e-5, "batch {rows} first step: {:.2e}", rel(dec.logits(), &want)?);
            for s in 1..3 {
                let got = dec.step(&tokens(s))?.clone();
                let want = model.step(&tokens(s), &mut eager)?;
                assert!(rel(&got, &want)? <= 2e-5, "batch {rows} step {s}: {:.2e}", rel(&got, &want)?);
            }
        }
        Ok(())
    }
}

device_tests! {
    /// 16-bit weights: bf16- and f16-stored models, and a bf16-precision model over f32 master
    /// weights (decoded from a bf16 copy), against the per-op step of the same weights in f32.
    /// Their logits are rounded to 16 bits, hence the tolerance; the sums are f32 on both sides.
    fn fused_decoding_of_16_bit_weights_matches_their_f32_twin<B: ReplayDevice>(dev: &B) -> Result<()> {
        if !is_cuda(dev) {
            return Ok(());
        }
        for (link, dtype) in [(Link::Hyper, DType::BF16), (Link::Residual, DType::F16), (Link::PostNorm, DType::BF16)] {
            let model = ElaLm::new(&ParamStore::new(dev, dtype, 11), cfg(link))?;
            let twin = f32_twin(&model)?;
            let tol = if dtype == DType::BF16 { 8e-3 } else { 1e-3 };
            check_against(&model, &twin, tol, &format!("{link:?} {dtype:?}"))?;
        }
        // Mixed precision: f32 master weights, bf16 compute. Its bf16 copy is the twin's weights
        // rounded, so compare with a twin of the rounded weights.
        let master = ElaLm::new(&ParamStore::new(dev, DType::F32, 13), cfg(Link::Hyper))?;
        let rounded = ElaLm::new(&ParamStore::new(dev, DType::BF16, 0), cfg(Link::Hyper))?;
        let sd: StateDict<B> =
            master.store().state_dict().into_iter().map(|(k, v)| Ok((k, v.to_dtype(DType::BF16)?))).collect::<Result<_>>()?;
        rounded.store().load_state_dict(&sd, true)?;
        let mixed = master.with_precision(Precision::Bf16);
        check_against(&mixed, &f32_twin(&rounded)?, 8e-3, "bf16 precision over f32 masters")?;
        Ok(())
    }
}

device_tests! {
    /// `generate` (a FusedDecoder on CUDA for this model) and `generate_eager` sample the same
    /// tokens with the same seed, greedily and at temperature 1 with top-k and top-p.
    fn generate_with_the_fused_step_equals_eager_generation<B: ReplayDevice>(dev: &B) -> Result<()> {
        let model = ElaLm::new(&ParamStore::new(dev, DType::F32, 3), cfg(Link::Hyper))?;
        let prompt = [5u32, 17, 33, 2];
        for sc in [SampleConfig { temperature: 0.0, top_k: 0, top_p: 1.0 }, SampleConfig { temperature: 1.0, top_k: 20, top_p: 0.9 }] {
            let a = generate(&model, &prompt, 24, &sc, &mut Rng::new(9))?;
            let b = generate_eager(&model, &prompt, 24, &sc, &mut Rng::new(9))?;
            assert_eq!(a, b, "{sc:?}");
        }
        Ok(())
    }
}

/// Models the fused step does not cover are refused, naming why (checked before any device
/// work, so on the CPU too).
#[test]
fn models_outside_the_fused_step_are_refused_with_the_reason() -> Result<()> {
    let dev = ela_core::Cpu;
    let why = |c: LmConfig, dtype: DType| -> Result<String> {
        let model = ElaLm::new(&ParamStore::new(&dev, dtype, 0), c)?;
        Ok(model.fused_step_blocker().unwrap_or("covered").to_string())
    };
    assert_eq!(why(cfg(Link::Hyper), DType::F32)?, "covered");
    assert!(why(LmConfig { lobe: LobeMode::Causal, ..cfg(Link::Hyper) }, DType::F32)?.contains("Memory Lobe"));
    assert!(why(LmConfig { attention: AttnKind::Softmax, ..cfg(Link::Hyper) }, DType::F32)?.contains("KV cache"));
    let elu = AttnKind::Ela { kernel: ElaKernel::EluPlusOne, chunk: 64 };
    assert!(why(LmConfig { attention: elu, ..cfg(Link::Hyper) }, DType::F32)?.contains("Hadamard-Exp"));
    assert!(why(LmConfig { moe: LmConfig::small().moe, ..cfg(Link::Hyper) }, DType::F32)?.contains("MoE"));
    assert!(why(cfg(Link::Hyper), DType::F64)?.contains("f64"));
    // The decoder itself says so, before touching a device.
    let model =
        ElaLm::new(&ParamStore::new(&dev, DType::F32, 0), LmConfig { lobe: LobeMode::Causal, ..cfg(Link::Hyper) })?;
    let (_, state) = model.prefill(&prompt(&dev)?)?;
    let e = FusedDecoder::new(&model, state, &[1, 2, 3]).err().expect("refused").to_string();
    assert!(e.contains("cannot run as one kernel") && e.contains("Memory Lobe"), "{e}");
    Ok(())
}
