//! What the decoder tests share (`lm_graph_decode.rs`, `lm_fused_decode.rs`): a prompt of three
//! rows, six steps of tokens, and the check that a decoder's steps give the per-op step's logits,
//! keep the position and hand back a state that eager decoding continues from.

use ela_core::{Backend, CpuStorage, Result, Tensor};
use ela_models::lm::{AttnKind, DecodeState, Decoder, ElaLm, Link, LmConfig, LobeMode};
use ela_nn::ela::ElaKernel;

/// The decoder tests' tiny ELA LM (vocabulary 50, width 32, two layers of two heads, FFN 48,
/// Hadamard-Exp ELA, tied embeddings, final norm) with the given link and Memory Lobe.
pub fn tiny(link: Link, lobe: LobeMode) -> LmConfig {
    LmConfig {
        vocab: 50,
        dim: 32,
        layers: 2,
        heads: 2,
        ffn_hidden: 48,
        attention: AttnKind::Ela { kernel: ElaKernel::HadamardExp, chunk: 64 },
        link,
        lobe,
        moe: None,
        final_norm: true,
        tied_embeddings: true,
        rope_max_len: None,
    }
}

/// Three rows of seven tokens below 50.
pub fn prompt<B: Backend>(dev: &B) -> Result<Tensor<B>> {
    let ids: Vec<u32> = (0..3 * 7).map(|i| (i * 17 + 3) % 50).collect();
    Tensor::from_cpu_storage(&CpuStorage::U32(ids), [3, 7], dev)
}

/// Largest `|a - b|` over the largest `|b|`.
pub fn rel(a: &Tensor<impl Backend>, b: &Tensor<impl Backend>) -> Result<f64> {
    let (a, b) = (a.to_vec_f64()?, b.to_vec_f64()?);
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    Ok(a.iter().zip(&b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs())) / scale)
}

/// Six steps of one token for each of the three rows.
pub const STEPS: [[u32; 3]; 6] = [[1, 2, 3], [4, 5, 6], [49, 0, 7], [8, 9, 10], [11, 12, 13], [14, 15, 16]];

/// Builds a decoder with `build` from `reference`'s prefill of [`prompt`] and the first step's
/// tokens, decodes [`STEPS`] with it and eagerly with `reference`, and checks each step's logits
/// within `tol` (relative to the largest), the position, a refused wrong batch size, and an eager
/// step from the handed-back state.
pub fn check_decoder<'m, B: Backend>(
    reference: &ElaLm<B>,
    tol: f64,
    what: &str,
    build: impl FnOnce(DecodeState<B>, &[u32]) -> Result<Box<dyn Decoder<B> + 'm>>,
) -> Result<()> {
    let dev = reference.store().device();
    let (_, mut eager) = reference.prefill(&prompt(dev)?)?;
    let (_, state) = reference.prefill(&prompt(dev)?)?;
    let mut dec = build(state, &STEPS[0])?;
    let want = reference.step(&STEPS[0], &mut eager)?;
    assert!(rel(dec.logits(), &want)? <= tol, "{what} first step: {:.2e}", rel(dec.logits(), &want)?);
    for (i, t) in STEPS.iter().enumerate().skip(1) {
        let got = dec.step(t)?.clone();
        let want = reference.step(t, &mut eager)?;
        let err = rel(&got, &want)?;
        assert!(err <= tol, "{what} step {i}: decoder vs per-op step {err:.2e}");
        assert_eq!(dec.position(), eager.position());
    }
    let e = dec.step(&[1, 2]).expect_err("two tokens for three rows").to_string();
    assert!(e.contains("one per batch row (3)"), "{e}");
    let mut state = dec.into_state();
    assert_eq!(state.position(), 7 + STEPS.len());
    let (a, b) = (reference.step(&[20, 21, 22], &mut state)?, reference.step(&[20, 21, 22], &mut eager)?);
    assert!(rel(&a, &b)? <= tol, "{what}: eager step after the decoder's: {:.2e}", rel(&a, &b)?);
    Ok(())
}
