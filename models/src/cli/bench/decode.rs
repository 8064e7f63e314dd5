//! `ela bench decode`: per-token decoding latency and decoding-state bytes of the LM with ELA
//! attention against the same LM with softmax attention, over context length.
//!
//! Two models that differ only in their attention mixer (Hyper-Link, dense SwiGLU FFN, Memory Lobe
//! off, no RoPE, f32) are built from the same seed; each first runs an untimed 64-token warm-up (one-off
//! costs such as CUDA kernel compilation). For every context N a random prompt of N tokens is
//! prefilled (timed once), then `--steps` single-token steps are timed after one warm-up step;
//! each timed step includes copying the logits to the host (what sampling needs, and a device
//! synchronisation on CUDA). The bytes are `DecodeState::bytes()` after the prefill: the ELA
//! state `(S, z, m)` per layer and head, or the softmax KV cache of N keys and values per layer.
//!
//! Softmax decodes from a KV cache written in place and prefills a block of queries at a time
//! (no `[heads, N, N]` matrix); it runs only up to `--softmax-max-context` because its prefill
//! still does O(N^2) work, minutes on a CPU at long contexts. Nothing is extrapolated: unmeasured
//! cells print "-".

use std::time::Instant;

use ela_core::{Backend, CpuStorage, DType, Error, Result, Rng, Tensor};
use ela_nn::module::ParamStore;

use super::{fmt_bytes, fmt_ms, machine, median, parse_list};
use crate::budget::Estimate;
use crate::lm::size::{add_decoding, add_prefill, param_count};
use crate::lm::{AttnKind, DecodeState, ElaLm, FusedDecoder, GraphDecoder, Link, LmConfig, LobeMode, ReplayDevice};

/// Options of `ela bench decode`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchDecodeArgs {
    /// Context lengths N (prompt tokens before decoding), comma-separated.
    #[arg(long, default_value = "1024,2048,4096,8192,16384,32768,65536")]
    pub contexts: String,
    /// Batch sizes (sequences decoded together, one token each per step), comma-separated.
    #[arg(long, default_value = "1")]
    pub batch: String,
    /// Also time the ELA model's step recorded once as a CUDA graph and replayed per token
    /// (`GraphDecoder`; needs `--device cuda`).
    #[arg(long)]
    pub graph: bool,
    /// Also time the ELA model's whole step as one kernel launch per token (`FusedDecoder`;
    /// needs `--device cuda`).
    #[arg(long)]
    pub fused: bool,
    /// Dtype of the weights and activations: f32, or bf16 (weights stored in bf16, as for
    /// inference; ELA states and every sum stay f32).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub dtype: String,
    /// Timed decoding steps per context (the median is reported), after one warm-up step.
    #[arg(long, default_value_t = 16)]
    pub steps: usize,
    /// Model width.
    #[arg(long, default_value_t = 128)]
    pub dim: usize,
    /// Layers.
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// FFN hidden width (dense SwiGLU).
    #[arg(long, default_value_t = 256)]
    pub ffn_hidden: usize,
    /// ELA kernel.
    #[arg(long, default_value = "hadamard-exp")]
    pub kernel: ela_nn::ela::ElaKernel,
    /// Chunk length of the ELA prefill on the CPU. The CUDA backend picks its own chunking (see
    /// cuda/README.md), so with `--device cuda` any other value than 64 is refused.
    #[arg(long, default_value_t = 64)]
    pub chunk: usize,
    /// Largest context for the softmax model (its prefill does O(N^2) work).
    #[arg(long, default_value_t = 8192)]
    pub softmax_max_context: usize,
    /// Device: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Seed of the weights and the prompts.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Measurements of one model at one context.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cell {
    /// Median milliseconds per decoded token (all batch rows together).
    pub step_ms: f64,
    /// Seconds of the prefill.
    pub prefill_s: f64,
    /// `DecodeState::bytes()` after the prefill.
    pub bytes: usize,
}

/// The LM both benchmarks decode with (Hyper-Link, dense SwiGLU, no lobe, no RoPE).
pub(crate) fn config(args: &BenchDecodeArgs, attention: AttnKind) -> LmConfig {
    LmConfig {
        vocab: 256,
        dim: args.dim,
        layers: args.layers,
        heads: args.heads,
        ffn_hidden: args.ffn_hidden,
        attention,
        link: Link::Hyper,
        lobe: LobeMode::Off,
        moe: None,
        final_norm: true,
        tied_embeddings: true,
        rope_max_len: None,
    }
}

/// Prefill `batch` rows of `n` random tokens: the state and the prefill's seconds (until its
/// logits are on the host).
fn prefill_random<B: Backend>(
    model: &ElaLm<B>,
    n: usize,
    batch: usize,
    rng: &mut Rng,
    dev: &B,
) -> Result<(DecodeState<B>, f64)> {
    let ids = random_bytes(batch * n, rng);
    let ids = Tensor::from_cpu_storage(&CpuStorage::U32(ids), [batch, n], dev)?;
    let t0 = Instant::now();
    let (logits, state) = model.prefill(&ids)?;
    logits.to_vec_f64()?;
    Ok((state, t0.elapsed().as_secs_f64()))
}

/// `n` uniformly random byte tokens.
fn random_bytes(n: usize, rng: &mut Rng) -> Vec<u32> {
    (0..n).map(|_| rng.below(256) as u32).collect()
}

/// Prefill `batch` rows of `n` random tokens, then time single-token steps (one token per row).
pub(crate) fn measure<B: Backend>(
    model: &ElaLm<B>,
    n: usize,
    batch: usize,
    steps: usize,
    rng: &mut Rng,
    dev: &B,
) -> Result<Cell> {
    let (mut state, prefill_s) = prefill_random(model, n, batch, rng, dev)?;
    // Room for every timed step up front, as a server sizes its cache: no reallocation is timed.
    state.reserve(steps + 1)?;
    let bytes = state.bytes();
    let mut times = Vec::with_capacity(steps);
    for i in 0..=steps {
        let tokens = random_bytes(batch, rng);
        let t0 = Instant::now();
        model.step(&tokens, &mut state)?.to_vec_f64()?;
        if i > 0 {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(Cell { step_ms: median(&mut times), prefill_s, bytes })
}

/// [`measure`] with the ELA model's step recorded once and replayed per token
/// ([`GraphDecoder`]): the same prompt handling; recording, and the first replay, untimed.
pub(crate) fn measure_graph<B: ReplayDevice>(
    model: &ElaLm<B>,
    n: usize,
    batch: usize,
    steps: usize,
    rng: &mut Rng,
    dev: &B,
) -> Result<Cell> {
    let (state, prefill_s) = prefill_random(model, n, batch, rng, dev)?;
    let bytes = state.bytes();
    let mut dec = GraphDecoder::new(model, state, &random_bytes(batch, rng))?;
    crate::errln!("ela bench decode: the recorded step has {} operations", dec.graph_nodes());
    let step_ms = time_decoder("graph", batch, steps, rng, |t, read| read_if(dec.step(t)?, read))?;
    Ok(Cell { step_ms, prefill_s, bytes })
}

/// [`measure`] with the ELA model's whole step as one kernel ([`FusedDecoder`]): the same prompt
/// handling; the decoder's construction (its kernel's compilation) and first step untimed.
pub(crate) fn measure_fused<B: ReplayDevice>(
    model: &ElaLm<B>,
    n: usize,
    batch: usize,
    steps: usize,
    rng: &mut Rng,
    dev: &B,
) -> Result<Cell> {
    let (state, prefill_s) = prefill_random(model, n, batch, rng, dev)?;
    let bytes = state.bytes();
    let mut dec = FusedDecoder::new(model, state, &random_bytes(batch, rng))?;
    let step_ms = time_decoder("fused", batch, steps, rng, |t, read| read_if(dec.step(t)?, read))?;
    Ok(Cell { step_ms, prefill_s, bytes })
}

/// Copies `logits` to the host when `read` (what sampling needs; it waits for the step).
fn read_if<B: Backend>(logits: &Tensor<B>, read: bool) -> Result<()> {
    if read {
        logits.to_vec_f64()?;
    }
    Ok(())
}

/// The median milliseconds of `steps` decoder steps (`step(tokens, read the logits)`), each
/// reading its logits back, after one untimed step. Also prints, as a diagnostic, the time per
/// step when the logits are read only after the last one (the tokens are still written and
/// checked each step): the difference is the host-device round trip.
fn time_decoder(
    what: &str,
    batch: usize,
    steps: usize,
    rng: &mut Rng,
    mut step: impl FnMut(&[u32], bool) -> Result<()>,
) -> Result<f64> {
    step(&random_bytes(batch, rng), true)?;
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let next = random_bytes(batch, rng);
        let t0 = Instant::now();
        step(&next, true)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let next = random_bytes(batch, rng);
    let t0 = Instant::now();
    for i in 0..steps {
        step(&next, i + 1 == steps)?;
    }
    let queued = t0.elapsed().as_secs_f64() * 1e3 / steps as f64;
    crate::errln!("ela bench decode: {what} steps without reading the logits: {queued:.4} ms per step");
    Ok(median(&mut times))
}

/// The cells of one batch size and context: ELA eager, ELA graph, ELA fused, softmax.
type Row = [Option<Cell>; 4];

/// Measure both models at every batch size and context.
fn go<B: ReplayDevice>(args: &BenchDecodeArgs, batches: &[usize], contexts: &[usize], dev: &B) -> Result<Vec<Row>> {
    let kinds = [AttnKind::Ela { kernel: args.kernel, chunk: args.chunk }, AttnKind::Softmax];
    let dtype = args.weight_dtype();
    let mut out = vec![[None, None, None, None]; batches.len() * contexts.len()];
    for kind in kinds {
        let is_softmax = kind == AttnKind::Softmax;
        let store = ParamStore::new(dev, dtype, args.seed);
        let model = ElaLm::new(&store, config(args, kind))?;
        let mut rng = Rng::new(args.seed ^ 0xdec0de);
        // Untimed warm-up: first calls pay one-off costs (CUDA kernel compilation, allocator growth).
        measure(&model, 64, 1, 1, &mut rng, dev)?;
        for (r, (&batch, &n)) in batches.iter().flat_map(|b| contexts.iter().map(move |n| (b, n))).enumerate() {
            if is_softmax && n > args.softmax_max_context {
                continue;
            }
            crate::errln!(
                "ela bench decode: {} batch {batch}, context {n}",
                if is_softmax { "softmax" } else { "ELA" }
            );
            let cell = Some(measure(&model, n, batch, args.steps, &mut rng, dev)?);
            if is_softmax {
                out[r][3] = cell;
            } else {
                out[r][0] = cell;
                if args.graph {
                    out[r][1] = Some(measure_graph(&model, n, batch, args.steps, &mut rng, dev)?);
                }
                if args.fused {
                    out[r][2] = Some(measure_fused(&model, n, batch, args.steps, &mut rng, dev)?);
                }
            }
        }
    }
    Ok(out)
}

/// Run `ela bench decode`.
pub fn run(args: &BenchDecodeArgs) -> Result<()> {
    let contexts = parse_list("--contexts", &args.contexts)?;
    let batches = parse_list("--batch", &args.batch)?;
    if args.steps == 0 {
        return Err(Error::invalid("ela bench decode", "--steps must be at least 1"));
    }
    if args.graph && !args.device.starts_with("cuda") {
        return Err(Error::invalid("ela bench decode", "--graph records CUDA graphs: it needs --device cuda"));
    }
    if args.fused && !args.device.starts_with("cuda") {
        return Err(Error::invalid("ela bench decode", "--fused runs a CUDA kernel: it needs --device cuda"));
    }
    args.check_kernel()?;
    config(args, AttnKind::Softmax).validate()?;
    // The longest context of each model decides (softmax only up to its own limit).
    for (kind, limit) in [
        (AttnKind::Ela { kernel: args.kernel, chunk: args.chunk }, usize::MAX),
        (AttnKind::Softmax, args.softmax_max_context),
    ] {
        let cfg = config(args, kind);
        let Some(&n) = contexts.iter().filter(|&&n| n <= limit).max() else { continue };
        // The estimate is per sequence; the largest batch multiplies the context's share.
        let n = n.saturating_mul(batches.iter().copied().max().unwrap_or(1));
        let mut e = Estimate::new();
        add_decoding(&mut e, &cfg, param_count(&cfg)?, n.saturating_add(args.steps + 1));
        add_prefill(&mut e, &cfg, n);
        e.add("prompt", n as u64, 4);
        e.check_for("ela bench decode", args.device.parse()?)?;
    }
    // A missing GPU is a one-line error before any output.
    crate::on_device!(&args.device, |_dev| Ok::<(), Error>(()))?;
    crate::outln!(
        "ela bench decode: LM dim {} layers {} heads {} ffn {} (Hyper-Link, dense SwiGLU, lobe off, {}), ELA kernel {} chunk {}, batch {}, on {}",
        args.dim, args.layers, args.heads, args.ffn_hidden, args.dtype, args.kernel, args.chunk, args.batch, args.device
    );
    crate::outln!("machine: {}", machine());
    if let crate::cli::DeviceChoice::Cuda(ordinal) = crate::cli::parse_device(&args.device)? {
        crate::outln!("gpu: {}", ela_cuda::Cuda::new(ordinal)?.name());
    }
    crate::outln!("command: {}", std::env::args().collect::<Vec<_>>().join(" "));
    crate::outln!(
        "date: {} (UTC); per-token latency = median of {} steps after 1 warm-up (logits copied to the host); bytes after the prefill",
        super::today_utc(),
        args.steps
    );
    let cells = crate::on_device!(&args.device, |dev| go(args, &batches, &contexts, dev))?;
    crate::outln!();
    crate::outln!("| batch | context | ELA ms/token | ELA graph ms/token | ELA fused ms/token | ELA state bytes | softmax ms/token | softmax KV-cache bytes | ELA prefill s | softmax prefill s |");
    crate::outln!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let rows = batches.iter().flat_map(|b| contexts.iter().map(move |n| (b, n)));
    for ((b, n), [e, g, f, s]) in rows.zip(&cells) {
        let col = |c: &Option<Cell>| {
            (
                fmt_ms(c.map(|c| c.step_ms)),
                c.map_or("-".into(), |c| fmt_bytes(c.bytes)),
                c.map_or("-".into(), |c| format!("{:.2}", c.prefill_s)),
            )
        };
        let ((em, eb, ep), (sm, sb, sp)) = (col(e), col(s));
        let (gm, fm) = (fmt_ms(g.map(|c| c.step_ms)), fmt_ms(f.map(|c| c.step_ms)));
        crate::outln!("| {b} | {n} | {em} | {gm} | {fm} | {eb} | {sm} | {sb} | {ep} | {sp} |");
    }
    if let Some(&n) = contexts.iter().find(|&&n| n > args.softmax_max_context) {
        // q k^T and p v: 2 N^2 d_h flops each per head and layer, half of them under the mask.
        let tflop = (2 * args.layers * args.dim) as f64 * (n as f64).powi(2) / 1e12;
        crate::outln!(
            "\nsoftmax skipped above N = {} (--softmax-max-context): its prefill does O(N^2) work \
             ({tflop:.1} TFLOP of attention at N = {n})",
            args.softmax_max_context
        );
    }
    crate::outln!("load average after: {}", super::load());
    Ok(())
}

impl BenchDecodeArgs {
    fn weight_dtype(&self) -> DType {
        if self.dtype == "bf16" {
            DType::BF16
        } else {
            DType::F32
        }
    }

    /// The chunk, checked for a one-line error before any work (the kernel is parsed by clap).
    fn check_kernel(&self) -> Result<()> {
        crate::device::check_chunk(self.chunk, &self.device, "ela bench decode")
    }
}
