//! Sampling: greedy, temperature, top-k and top-p (nucleus), decoding from the model's state.

use ela_core::{Backend, Error, Result, Rng};

use super::decoder::{fast_decoder, Decoder};
use super::graph_decode::ReplayDevice;
use super::model::{DecodeState, ElaLm};

/// Sampling options.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleConfig {
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f64,
    /// Keep only the `k` most likely tokens (0 = no limit).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `p` (1 = no limit).
    pub top_p: f64,
}

impl Default for SampleConfig {
    fn default() -> Self {
        SampleConfig { temperature: 0.8, top_k: 40, top_p: 0.95 }
    }
}

impl SampleConfig {
    /// Check the ranges.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::invalid("sample", format!("temperature must be >= 0, got {}", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::invalid("sample", format!("top_p must be in (0, 1], got {}", self.top_p)));
        }
        Ok(())
    }
}

/// Draw one token id from `logits` (one row; an empty row is an error).
pub fn sample(logits: &[f64], cfg: &SampleConfig, rng: &mut Rng) -> Result<usize> {
    if logits.is_empty() {
        return Err(Error::invalid("sample", "no logits to draw a token from (a vocabulary of 0)"));
    }
    if cfg.temperature == 0.0 {
        return Ok(logits
            .iter()
            .enumerate()
            .fold((0, f64::NEG_INFINITY), |b, (i, &l)| if l > b.1 { (i, l) } else { b })
            .0);
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].partial_cmp(&logits[a]).unwrap_or(std::cmp::Ordering::Equal));
    if cfg.top_k > 0 {
        order.truncate(cfg.top_k.max(1));
    }
    let m = logits[order[0]];
    let mut probs: Vec<f64> = order.iter().map(|&i| ((logits[i] - m) / cfg.temperature).exp()).collect();
    let z: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= z);
    // Nucleus: the shortest prefix (most likely first) whose mass reaches top_p.
    let mut mass = 0.0;
    let mut keep = probs.len();
    for (i, p) in probs.iter().enumerate() {
        mass += p;
        if mass >= cfg.top_p {
            keep = i + 1;
            break;
        }
    }
    let z: f64 = probs[..keep].iter().sum();
    let mut u = rng.uniform() * z;
    for (i, p) in probs[..keep].iter().enumerate() {
        u -= p;
        if u <= 0.0 {
            return Ok(order[i]);
        }
    }
    Ok(order[keep - 1])
}

/// The positions a decode of `new_tokens` after a `prompt_len`-token prompt feeds through the
/// model (the last sampled token is never fed back), checked before any work: the sum must not
/// overflow, and with RoPE it must stay within the model's `rope_max_len`, which would
/// otherwise fail only at the first position past it, after all the tokens before.
pub fn check_positions(cfg: &super::LmConfig, prompt_len: usize, new_tokens: usize) -> Result<usize> {
    if prompt_len == 0 {
        return Err(Error::invalid("generate", "the prompt must not be empty"));
    }
    let positions = prompt_len.checked_add(new_tokens.saturating_sub(1)).ok_or_else(|| {
        Error::invalid(
            "generate",
            format!("{new_tokens} new tokens after a {prompt_len}-token prompt overflow a count"),
        )
    })?;
    if let Some(max) = cfg.rope_max_len {
        if positions > max {
            return Err(Error::invalid(
                "generate",
                format!(
                    "the {prompt_len}-token prompt and {new_tokens} new tokens need {positions} positions, but the \
                     model's rotary embedding covers {max}; generate at most {} tokens",
                    (max + 1).saturating_sub(prompt_len)
                ),
            ));
        }
    }
    Ok(positions)
}

/// Continue `prompt` by `new_tokens` tokens (batch of one), returning only the new tokens.
///
/// On a device that records graphs (CUDA), a model whose decoding step can be replayed
/// ([`ElaLm::step_replay_blocker`]) decodes with [`fast_decoder`]'s choice: one kernel launch per
/// token ([`super::FusedDecoder`]; its activations stay in f32 between operations, so bf16 models
/// can sample slightly differently from [`generate_eager`]) where [`ElaLm::fused_step_blocker`]
/// allows, else one graph replay per token ([`super::GraphDecoder`]) instead of a launch per
/// kernel. Other models, and the CPU, step eagerly ([`generate_eager`]).
pub fn generate<B: ReplayDevice>(
    model: &ElaLm<B>,
    prompt: &[u32],
    new_tokens: usize,
    cfg: &SampleConfig,
    rng: &mut Rng,
) -> Result<Vec<u32>> {
    let dev = model.store().device();
    if !(dev.records_graphs() && model.step_replay_blocker().is_none()) {
        return generate_eager(model, prompt, new_tokens, cfg, rng);
    }
    let (logits, state, mut out) = start(model, prompt, new_tokens, cfg)?;
    let mut dec: Option<Box<dyn Decoder<B> + '_>> = None;
    let mut state = Some(state);
    // The first step builds the decoder (and runs it); the state moves into it.
    decode(logits, new_tokens, cfg, rng, &mut out, |next| {
        match (dec.as_mut(), state.take()) {
            (Some(d), _) => d.step(&[next]).map(drop)?,
            (None, Some(st)) => dec = Some(fast_decoder(model, st, &[next])?),
            (None, None) => return Err(Error::invalid("generate", "the decoding state was lost")),
        }
        dec.as_ref().ok_or_else(|| Error::invalid("generate", "no decoder"))?.logits().to_vec_f64()
    })?;
    Ok(out)
}

/// [`generate`] stepping the model eagerly on any backend (one launch per kernel on a GPU). A
/// mixed-precision model's weights are cast to its compute dtype once, at their first use, not
/// for every token ([`ela_nn::precision::with_cast_cache`]).
pub fn generate_eager<B: Backend>(
    model: &ElaLm<B>,
    prompt: &[u32],
    new_tokens: usize,
    cfg: &SampleConfig,
    rng: &mut Rng,
) -> Result<Vec<u32>> {
    ela_nn::precision::with_cast_cache(|| {
        let (logits, mut state, mut out) = start(model, prompt, new_tokens, cfg)?;
        decode(logits, new_tokens, cfg, rng, &mut out, |next| model.step(&[next], &mut state)?.to_vec_f64())?;
        Ok(out)
    })
}

/// Checks, the output buffer and the prefill: the prompt's last logits and the state after it.
fn start<B: Backend>(
    model: &ElaLm<B>,
    prompt: &[u32],
    new_tokens: usize,
    cfg: &SampleConfig,
) -> Result<(Vec<f64>, DecodeState<B>, Vec<u32>)> {
    cfg.validate()?;
    check_positions(model.config(), prompt.len(), new_tokens)?;
    // Reserved fallibly: the count comes from the user, and an infallible `Vec` aborts.
    let mut out = Vec::new();
    out.try_reserve_exact(new_tokens).map_err(|_| Error::OutOfMemory {
        op: "generate",
        what: format!("the output of {new_tokens} tokens"),
        needed: (new_tokens as u64).saturating_mul(4),
        available: None,
        source: "",
    })?;
    let dev = model.store().device();
    let ids = ela_core::Tensor::from_vec(prompt.to_vec(), [1, prompt.len()], dev)?;
    let (logits, state) = model.prefill(&ids)?;
    Ok((logits.to_vec_f64()?, state, out))
}

/// Samples `new_tokens` tokens into `out`: the first from `logits`, each next one from
/// `step(previous token)`.
fn decode(
    logits: Vec<f64>,
    new_tokens: usize,
    cfg: &SampleConfig,
    rng: &mut Rng,
    out: &mut Vec<u32>,
    mut step: impl FnMut(u32) -> Result<Vec<f64>>,
) -> Result<()> {
    let mut logits = logits;
    for i in 0..new_tokens {
        let next = sample(&logits, cfg, rng)? as u32;
        out.push(next);
        if i + 1 < new_tokens {
            logits = step(next)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_topk_topp() {
        let logits = [0.0, 3.0, 1.0, 2.9];
        let mut rng = Rng::new(0);
        assert_eq!(sample(&logits, &SampleConfig { temperature: 0.0, top_k: 0, top_p: 1.0 }, &mut rng).unwrap(), 1);
        // top_k = 1 is greedy whatever the temperature.
        for _ in 0..20 {
            assert_eq!(sample(&logits, &SampleConfig { temperature: 5.0, top_k: 1, top_p: 1.0 }, &mut rng).unwrap(), 1);
        }
        // A tiny top_p keeps only the most likely token.
        for _ in 0..20 {
            assert_eq!(
                sample(&logits, &SampleConfig { temperature: 1.0, top_k: 0, top_p: 1e-6 }, &mut rng).unwrap(),
                1
            );
        }
        // top_k = 2 only ever returns tokens 1 or 3, and both occur.
        let draws: Vec<usize> = (0..200)
            .map(|_| sample(&logits, &SampleConfig { temperature: 1.0, top_k: 2, top_p: 1.0 }, &mut rng).unwrap())
            .collect();
        assert!(draws.iter().all(|&d| d == 1 || d == 3) && draws.contains(&1) && draws.contains(&3));
        assert!(SampleConfig { temperature: -1.0, top_k: 0, top_p: 1.0 }.validate().is_err());
        // No logits: an error naming the op, whatever the settings.
        for temperature in [0.0, 1.0] {
            let e = sample(&[], &SampleConfig { temperature, top_k: 0, top_p: 1.0 }, &mut rng).unwrap_err();
            assert!(e.to_string().contains("sample"), "{e}");
        }
    }
}
