//! The training loop: data, model, AdamW with warmup + cosine, clipping, MoE balancing, metrics,
//! validation, checkpoints that resume exactly, the loss plot and a sample.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ela_autograd::no_grad;
use ela_core::{Backend, Communicator, CpuStorage, DType, Error, Result, Rng, Tensor};
use ela_nn::checkpoint::{self, xxh64, Metadata};
use ela_nn::ddp::{DdpConfig, GradReducer};
use ela_nn::module::ParamStore;
use ela_nn::optim::{clip_grad_norm, AdamW, AdamWConfig, Optimizer, WarmupCosine};

use super::args::TrainArgs;
use super::dist;
use super::graph_step::{graph_blocker, GraphStep};
use crate::budget::Estimate;
use crate::data::{default_corpus, Batch, ByteTokenizer, TextDataset};
use crate::lm::{generate_eager, ElaLm, LmConfig, ReplayDevice, SampleConfig};
use crate::report::metrics::Value;
use crate::report::plot::{write_svg, Series};
use crate::report::progress::Progress;
use crate::report::run_dir::{open_run, restore, start_metrics, CHECKPOINT_FILE};

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// Trainable parameters.
    pub params: usize,
    /// Steps run in this invocation.
    pub steps_run: usize,
    /// Training tokens per second over this invocation.
    pub tokens_per_sec: f64,
    /// Cross-entropy (nats/byte) of the first step of the run.
    pub first_loss: Option<f64>,
    /// Cross-entropy of the last step.
    pub last_loss: f64,
    /// Validation cross-entropy at the end.
    pub val_loss: f64,
    /// Validation cross-entropy of the unigram (byte-frequency) model fitted on the train split.
    pub unigram_loss: f64,
    /// Generated sample text.
    pub sample: String,
    /// The checkpoint file.
    pub checkpoint: PathBuf,
    /// The loss plot.
    pub plot: PathBuf,
    /// The metrics log.
    pub metrics: PathBuf,
    /// Wall-clock seconds of this invocation.
    pub seconds: f64,
}

const CKPT: &str = CHECKPOINT_FILE;

/// The prompt of the sample printed at the end of a run.
const SAMPLE_PROMPT: &str = "the ";

/// Where a run goes without `--out` (see [`crate::report::run_dir::resolve_run_dir`]).
pub const DEFAULT_OUT: &str = "runs/ela-small";

fn io(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io { path: path.display().to_string(), msg: e.to_string() }
}

/// The training data's bytes exactly as stored: the embedded corpus, or the `--data` file
/// read without any decoding (the model is byte-level; see [`ByteTokenizer::encode_bytes`]).
pub fn load_text(path: &Option<PathBuf>) -> Result<Vec<u8>> {
    match path {
        None => Ok(default_corpus().into_bytes()),
        Some(p) => {
            let bytes = std::fs::read(p).map_err(|e| io(p, format!("cannot read the training text: {e}")))?;
            if bytes.is_empty() {
                return Err(io(p, "the training text is empty"));
            }
            Ok(bytes)
        }
    }
}

/// Refuse a run whose model, optimizer state, activations, data or sample cannot fit in the
/// memory available (see [`crate::budget`]), from the configuration alone.
fn check_memory(cfg: &LmConfig, args: &TrainArgs) -> Result<()> {
    let params = crate::lm::size::param_count(cfg)?;
    let mut e = Estimate::new();
    crate::lm::size::add_training(&mut e, cfg, params, args.batch, args.seq);
    let data_bytes = match &args.data {
        None => default_corpus().len() as u64,
        // Unreadable files are reported by the load itself, with its own message.
        Some(p) => std::fs::metadata(p).map_or(0, |m| m.len()),
    };
    // The bytes, and one u32 token per byte.
    e.add("training data", data_bytes, 1 + 4);
    e.add("the sample", args.sample_len as u64, 4 + 1);
    e.check_for("train", args.device.parse()?)?;
    // The sample at the end must fit the rotary embedding: say so now, not after training.
    if cfg.lobe != crate::lm::LobeMode::Bidirectional {
        crate::lm::generate::check_positions(cfg, SAMPLE_PROMPT.len(), args.sample_len)
            .map_err(|e| Error::invalid("train", format!("--sample-len {}: {e}", args.sample_len)))?;
    }
    Ok(())
}

/// Cross-entropy on `val` of byte frequencies counted on `train` (add-one smoothing).
pub fn unigram_loss(train: &[u32], val: &[u32], vocab: usize) -> f64 {
    let mut counts = vec![1.0f64; vocab];
    for &t in train {
        counts[t as usize] += 1.0;
    }
    let total: f64 = counts.iter().sum();
    -val.iter().map(|&t| (counts[t as usize] / total).ln()).sum::<f64>() / val.len().max(1) as f64
}

/// The batch of step `step`: a function of the seed and the step only, so a resumed run draws
/// exactly the batches the uninterrupted run would have.
fn batch_for_step(ds: &TextDataset, args: &TrainArgs, step: usize) -> Result<Batch> {
    let mut rng = Rng::new(args.seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0xB5));
    ds.train_batch(args.batch, args.seq, &mut rng)
}

fn ids<B: Backend>(v: &[u32], b: usize, t: usize, dev: &B) -> Result<Tensor<B>> {
    Tensor::from_cpu_storage(&CpuStorage::U32(v.to_vec()), [b, t], dev)
}

/// Mean validation cross-entropy over up to `windows` windows.
pub fn validate<B: Backend>(
    model: &ElaLm<B>,
    ds: &TextDataset,
    seq: usize,
    batch: usize,
    windows: usize,
) -> Result<f64> {
    let dev = model.store().device();
    let (mut sum, mut n) = (0.0, 0usize);
    for b in ds.val_batches(batch, seq, windows)? {
        let (_, ce, _) =
            no_grad(|| model.loss(&ids(&b.inputs, b.batch, seq, dev)?, &ids(&b.targets, b.batch, seq, dev)?))?;
        sum += ce.to_scalar()? * b.batch as f64;
        n += b.batch;
    }
    Ok(sum / n.max(1) as f64)
}

fn metadata(cfg: &LmConfig, args: &TrainArgs, step: usize, data_hash: u64) -> Metadata {
    let mut m: Metadata = BTreeMap::new();
    for (k, v) in cfg.to_pairs().into_iter().chain(args.run_pairs()) {
        m.insert(k, v);
    }
    m.insert("run.step".into(), step.to_string());
    m.insert("run.data_hash".into(), format!("{data_hash:016x}"));
    m.insert("format".into(), "ela-rs checkpoint v1".into());
    m
}

pub(crate) fn write_config_json(out: &Path, meta: &Metadata) -> Result<()> {
    let fields: Vec<(&str, Value)> = meta.iter().map(|(k, v)| (k.as_str(), Value::Str(v.clone()))).collect();
    let text = crate::report::metrics::json_line(&fields) + "\n";
    checkpoint::write_atomic(&out.join("config.json"), text.as_bytes())
}

/// Train (or resume) as `args` says, on `device`.
pub fn train<B: ReplayDevice>(args: &TrainArgs, device: &B) -> Result<TrainReport> {
    run_loop(args, device, None)?.ok_or_else(|| Error::invalid("train", "a single-process run always reports"))
}

/// Train as one rank of `comm`'s group (data parallelism, docs/distributed.md): `--batch` is
/// the global batch, of which each rank takes an equal, contiguous share of rows; gradients are
/// averaged across ranks in buckets of `--bucket-mb` while the backward pass runs; rank 0's
/// weights (and, on `--resume`, its checkpoint's settings and optimizer state) are copied to
/// every rank first; only rank 0 writes the run folder and prints. Returns the report on rank 0
/// and `None` on the others. The loss sequence equals a single process's with the same global
/// batch, up to the order of floating-point sums.
pub fn train_data_parallel<B: ReplayDevice>(
    args: &TrainArgs,
    device: &B,
    comm: &dyn Communicator<B>,
) -> Result<Option<TrainReport>> {
    run_loop(args, device, Some(comm))
}

fn run_loop<B: ReplayDevice>(
    args: &TrainArgs,
    device: &B,
    comm: Option<&dyn Communicator<B>>,
) -> Result<Option<TrainReport>> {
    let mut args = args.clone();
    // A group of one is a plain run.
    let dist = comm.filter(|c| c.world_size() > 1);
    let (rank, world) = dist.map_or((0, 1), |c| (c.rank(), c.world_size()));
    let lead = rank == 0;
    // The chunk the user gave (a resumed run's stored one is a CPU setting the GPU never reads).
    if args.model.attention == "ela" {
        crate::device::check_chunk(args.model.chunk, &device.device_name(), "train")?;
    }
    if !args.resume {
        // A new run's settings are all known now: refuse bad ones (and sizes the machine cannot
        // hold) before a folder is made.
        args.validate()?;
        dist::check_world(args.batch, world)?;
        check_memory(&args.model.to_config()?, &per_rank(&args, world))?;
    }
    // Only rank 0 owns the run folder, and holds its lock to the end of the run (no other process
    // may write into it meanwhile); the other ranks learn what they need from rank 0.
    let (out, resumed, _lock) = if lead {
        let run = open_run("train", args.out.as_deref(), Path::new(DEFAULT_OUT), args.resume, device)?;
        (Some(run.dir), run.resumed, Some(run.lock))
    } else {
        (None, None, None)
    };
    let mut meta = resumed.as_ref().map(|ck| ck.metadata.clone());
    if let Some(c) = dist {
        meta = dist::share_metadata(c, device, meta.as_ref())?;
    }
    if let Some(m) = &meta {
        args.check_resume_flags(|k| m.get(k).cloned())?;
        args.apply_run_pairs(|k| m.get(k).cloned())?;
    }
    args.validate()?;
    dist::check_world(args.batch, world)?;
    let cfg = match &meta {
        Some(m) => LmConfig::from_pairs(|k| m.get(k).cloned())?,
        None => args.model.to_config()?,
    };
    // Refused before anything is trained or logged.
    if args.graph {
        if let Some(why) = graph_blocker(device, &cfg, world, args.layer_grad_norms) {
            return Err(Error::invalid("train --graph", why));
        }
    }
    if cfg.lobe == crate::lm::LobeMode::Bidirectional && lead {
        crate::errln!(
            "warning: --lobe bidirectional lets every position see later tokens, so this causal LM's loss is \
             not a next-token loss and the model cannot decode left to right (see docs/model.md)"
        );
    }
    // The stored config of a resumed run is checked here, before anything is built from it.
    check_memory(&cfg, &per_rank(&args, world))?;
    let text = load_text(&args.data)?;
    let data_hash = xxh64(&text, 0);
    let tokens = ByteTokenizer.encode_bytes(&text);
    let ds = TextDataset::split(tokens, 0.1, args.seq)?;

    let store = ParamStore::new(device, DType::F32, args.seed);
    let model = ElaLm::new(&store, cfg.clone())?.with_precision(args.precision);
    let params = store.num_params();
    let mut opt = AdamW::new(
        store.named_params(),
        AdamWConfig { lr: args.lr, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: args.weight_decay },
    )?;
    opt.exclude_from_weight_decay(|_, v| v.rank() < 2);
    let sched = WarmupCosine::new(args.lr, args.min_lr, args.warmup, args.steps)?;

    let mut start = 0;
    if let Some(m) = &meta {
        let hash = m.get("run.data_hash").cloned().unwrap_or_default();
        if hash != format!("{data_hash:016x}") {
            return Err(Error::invalid(
                "train --resume",
                "the training text differs from the one the run started with",
            ));
        }
        start = m.get("run.step").and_then(|s| s.parse().ok()).unwrap_or(0);
    }
    if let Some(ck) = &resumed {
        start = restore(ck, &store, &mut opt)?;
    }
    if let Some(c) = dist {
        // Every replica starts from rank 0's weights, buffers and optimizer state.
        let sd = dist::share_state(c, device, &store.state_dict())?;
        let osd = dist::share_state(c, device, &opt.state_dict()?)?;
        if !lead {
            store.load_state_dict(&sd, true)?;
            opt.load_state_dict(&osd)?;
        }
    }
    let metrics = match &out {
        Some(out) => {
            // config.json first: it marks the folder as a run's (see `open_run`) before the
            // metrics log replaces an older one.
            write_config_json(out, &metadata(&cfg, &args, start, data_hash))?;
            let (path, log) = start_metrics(out, resumed.is_some())?;
            Some((path, log))
        }
        None => None,
    };
    let (metrics_path, mut log) = match metrics {
        Some((p, l)) => (Some(p), Some(l)),
        None => (None, None),
    };
    let ckpt_path = out.as_ref().map(|o| o.join(CKPT));

    if lead {
        crate::errln!(
            "model: {params} parameters ({}, {} precision); data: {} train / {} validation bytes; {} steps of {}x{} tokens{}{}",
            describe(&cfg),
            args.precision,
            ds.train.len(),
            ds.val.len(),
            args.steps,
            args.batch,
            args.seq,
            if world > 1 { format!(" ({world} ranks of {} sequences)", args.batch / world) } else { String::new() },
            if start > 0 { format!(", resuming at step {start}") } else { String::new() }
        );
    }
    let mut reducer =
        dist.map(|c| GradReducer::new(c, store.params(), DdpConfig { bucket_bytes: args.bucket_bytes() }));
    let mut graph: Option<GraphStep<B>> = None;
    let progress = lead.then(|| Progress::new(args.steps.saturating_sub(start), 10));
    let t0 = Instant::now();
    let (mut first_loss, mut last_loss, mut val_loss) = (None, f64::NAN, f64::NAN);
    for step in start..args.steps {
        let lr = sched.lr_at(step);
        opt.set_lr(lr)?;
        let b = batch_for_step(&ds, &args, step)?;
        let b = if world > 1 { dist::shard(b, rank, world) } else { b };
        // With --graph every step after the run's first is a replay of the recorded one; the
        // first runs eagerly (it creates the optimizer state the recording updates in place).
        let (ce, norm, routing, layer_norms) = if args.graph && step > start {
            let g = match &mut graph {
                Some(g) => g,
                None => graph.insert(GraphStep::record(&model, &opt, device, (b.batch, b.seq), args.clip)?),
            };
            let (ce, norm) = g.run(device, &mut opt, &b)?;
            (ce, if args.clip > 0.0 { norm } else { f64::NAN }, Vec::new(), Vec::new())
        } else {
            let (loss, ce, out) =
                model.loss(&ids(&b.inputs, b.batch, b.seq, device)?, &ids(&b.targets, b.batch, b.seq, device)?)?;
            let mut grads = match &mut reducer {
                // Buckets start reducing as their gradients become final, during the backward pass.
                Some(red) => {
                    let mut g = loss.backward_with_hook(&mut |v, g| red.on_grad(v, g))?;
                    red.finish(&mut g)?;
                    g
                }
                None => loss.backward()?,
            };
            let layer_norms =
                if args.layer_grad_norms { layer_grad_norms(&store, &grads, cfg.layers)? } else { vec![] };
            let norm = if args.clip > 0.0 { clip_grad_norm(&store.params(), &mut grads, args.clip)? } else { f64::NAN };
            if norm.is_finite() || args.clip == 0.0 {
                opt.step(&grads)?;
            }
            (ce, norm, out.routing, layer_norms)
        };
        // A non-finite norm (with clipping on) skipped the update above, eager or replayed.
        if !(norm.is_finite() || args.clip == 0.0) {
            if !args.skip_nonfinite {
                return Err(nonfinite_error(step + 1, "gradient norm", norm));
            }
            if lead {
                crate::errln!(
                    "warning: step {}: gradient norm {norm}; the update was skipped (--skip-nonfinite)",
                    step + 1
                );
            }
        }
        // Read only now: on a GPU the update is already queued behind the forward. With several
        // ranks, the mean of the ranks' means over equal shares: the global batch's loss.
        let ce = match dist {
            Some(c) => dist::global_mean(c, &ce)?,
            None => ce.to_scalar()?,
        };
        if !ce.is_finite() && !args.skip_nonfinite {
            return Err(nonfinite_error(step + 1, "loss", ce));
        }
        let mut routing = routing;
        if let Some(c) = dist {
            dist::global_routing(c, device, &mut routing)?;
        }
        let moes: Vec<_> = model.blocks().iter().filter_map(|b| b.moe()).collect();
        for (m, stats) in moes.iter().zip(&routing) {
            m.update_selection_bias(stats)?;
        }
        first_loss.get_or_insert(ce);
        last_loss = ce;
        let done = step + 1;
        // Testing aid: a kill right after this step's record and checkpoint.
        let abort_here = args.abort_after == Some(done) && args.abort_rank.is_none_or(|r| r == rank);
        let Some(log) = log.as_mut() else {
            // Ranks other than 0 neither log, validate nor save.
            if abort_here {
                std::process::abort();
            }
            if args.stop_after == Some(done) {
                break;
            }
            continue;
        };
        let tps = ((done - start) * args.batch * args.seq) as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        let mut rec = vec![
            ("step", Value::Int(done as i64)),
            ("loss", Value::Num(ce)),
            ("lr", Value::Num(lr)),
            ("grad_norm", Value::Num(norm)),
            ("tokens_per_sec", Value::Num(tps)),
        ];
        let layer_keys: Vec<String> = (0..layer_norms.len()).map(|i| format!("grad_norm_layer_{i}")).collect();
        for (k, n) in layer_keys.iter().zip(&layer_norms) {
            rec.push((k.as_str(), Value::Num(*n)));
        }
        if !routing.is_empty() {
            let ent = routing.iter().map(|r| r.entropy).sum::<f64>() / routing.len() as f64;
            let max_load = routing.iter().flat_map(|r| r.load.iter().copied()).fold(0.0, f64::max);
            rec.push(("moe_entropy", Value::Num(ent)));
            rec.push(("moe_max_load", Value::Num(max_load)));
        }
        if done % args.eval_every == 0 || done == args.steps {
            val_loss = validate(&model, &ds, args.seq, args.batch, args.eval_windows)?;
            rec.push(("val_loss", Value::Num(val_loss)));
        }
        log.write(&rec)?;
        if let Some(p) = &progress {
            p.update(step - start, &format!("loss {ce:.3} | val {val_loss:.3} | {tps:.0} tok/s"));
        }
        if let Some(ckpt_path) = &ckpt_path {
            if (args.checkpoint_every > 0 && done % args.checkpoint_every == 0) || done == args.steps {
                let mut tensors = checkpoint::with_prefix(&store.state_dict(), "model");
                tensors.extend(checkpoint::with_prefix(&opt.state_dict()?, "optim"));
                checkpoint::save(ckpt_path, &tensors, &metadata(&cfg, &args, done, data_hash))?;
            }
        }
        if abort_here {
            std::process::abort();
        }
        if args.stop_after == Some(done) {
            break;
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let (Some(out), Some(metrics_path), Some(ckpt_path)) = (out, metrics_path, ckpt_path) else {
        return Ok(None);
    };
    let steps_run = args.stop_after.map_or(args.steps, |s| s.min(args.steps)).saturating_sub(start);
    if steps_run == 0 {
        val_loss = validate(&model, &ds, args.seq, args.batch, args.eval_windows)?;
    }
    let plot = out.join("loss.svg");
    plot_metrics(&metrics_path, &plot)?;
    let prompt = ByteTokenizer.encode(SAMPLE_PROMPT);
    let sample_cfg = SampleConfig::default();
    // A bidirectional lobe sees the future, so such a model has no left-to-right sample.
    let sample = if cfg.lobe == crate::lm::LobeMode::Bidirectional {
        "(no sample: a model with a bidirectional lobe cannot decode left to right)".to_string()
    } else {
        let new = generate_eager(&model, &prompt, args.sample_len, &sample_cfg, &mut Rng::new(args.seed))?;
        format!("{SAMPLE_PROMPT}{}", ByteTokenizer.decode(&new))
    };
    Ok(Some(TrainReport {
        params,
        steps_run,
        tokens_per_sec: (steps_run * args.batch * args.seq) as f64 / seconds.max(1e-9),
        first_loss,
        last_loss,
        val_loss,
        unigram_loss: unigram_loss(&ds.train, &ds.val, cfg.vocab),
        sample,
        checkpoint: ckpt_path,
        plot,
        metrics: metrics_path,
        seconds,
    }))
}

/// The settings one rank's memory must hold: its share of the batch.
fn per_rank(args: &TrainArgs, world: usize) -> TrainArgs {
    TrainArgs { batch: (args.batch / world).max(1), ..args.clone() }
}

/// The gradient norm of each layer's parameters (`layers.<i>.*`), before clipping.
fn layer_grad_norms<B: Backend>(
    store: &ParamStore<B>,
    grads: &ela_autograd::Grads<B>,
    layers: usize,
) -> Result<Vec<f64>> {
    let named = store.named_params();
    (0..layers)
        .map(|i| {
            let prefix = format!("layers.{i}.");
            let params: Vec<_> = named.iter().filter(|(n, _)| n.starts_with(&prefix)).map(|(_, v)| v.clone()).collect();
            ela_nn::optim::global_grad_norm(&params, grads)
        })
        .collect()
}

/// The error that stops a run at its first non-finite loss or gradient norm. The last checkpoint
/// on disk predates it, so `--resume` (perhaps with a lower `--lr`) starts from sound weights.
fn nonfinite_error(step: usize, what: &str, value: f64) -> Error {
    Error::invalid(
        "train",
        format!(
            "step {step}: the {what} is {value}; stopping (the last checkpoint is from before this step). Lower --lr \
             or --clip, or pass --skip-nonfinite to skip such steps"
        ),
    )
}

/// A short description of the switches, for logs.
pub fn describe(cfg: &LmConfig) -> String {
    let attn = match &cfg.attention {
        crate::lm::AttnKind::Softmax => "softmax attention".to_string(),
        crate::lm::AttnKind::Ela { kernel, chunk } => format!("ELA {kernel} chunk {chunk}"),
    };
    let ffn = match &cfg.moe {
        None => "dense FFN".to_string(),
        Some(m) => format!("MoE {}x top-{} {} bias", m.experts, m.top_k, m.bias),
    };
    format!("d={} L={} H={}, {attn}, {:?} link, lobe {:?}, {ffn}", cfg.dim, cfg.layers, cfg.heads, cfg.link, cfg.lobe)
}

/// Draw train and validation loss from a metrics log into an SVG.
pub fn plot_metrics(metrics: &Path, svg: &Path) -> Result<()> {
    let text = std::fs::read_to_string(metrics).map_err(|e| io(metrics, e))?;
    let num = |line: &str, key: &str| -> Option<f64> {
        let at = line.find(&format!("\"{key}\":"))? + key.len() + 3;
        let rest = &line[at..];
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        rest[..end].parse().ok()
    };
    // A resumed run appends: keep the last record of each step.
    let mut train = BTreeMap::new();
    let mut val = BTreeMap::new();
    for line in text.lines() {
        if let Some(step) = num(line, "step") {
            let s = step as i64;
            if let Some(l) = num(line, "loss") {
                train.insert(s, l);
            }
            if let Some(v) = num(line, "val_loss") {
                val.insert(s, v);
            }
        }
    }
    let tr: Vec<(f64, f64)> = train.into_iter().map(|(s, l)| (s as f64, l)).collect();
    let va: Vec<(f64, f64)> = val.into_iter().map(|(s, l)| (s as f64, l)).collect();
    write_svg(
        svg,
        "ELA-rs training loss",
        "step",
        "cross-entropy (nats/byte)",
        &[
            Series { label: "train", points: &tr, color: "#1f77b4" },
            Series { label: "validation", points: &va, color: "#d62728" },
        ],
    )
}
