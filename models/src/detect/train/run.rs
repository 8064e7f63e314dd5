//! The detector's training loop: seeded batches with augmentation, AdamW with warmup + cosine,
//! clipping, COCO AP on the validation split, metrics, plots, and checkpoints that resume bit
//! for bit (the batch of step `s` is a function of the seed and `s` only, and the checkpoint
//! holds the weights, the batch-norm running statistics and the optimizer state).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ela_autograd::Var;
use ela_core::{Backend, DType, Error, Result, Rng};
use ela_nn::checkpoint::{self, Metadata};
use ela_nn::module::ParamStore;
use ela_nn::optim::{clip_grad_norm, AdamW, AdamWConfig, Optimizer, WarmupCosine};

use super::args::DetectTrainArgs;
use crate::detect::data::{batch_to_tensor, make_batch, AugmentConfig, DatasetSplit};
use crate::detect::eval::CocoMetrics;
use crate::detect::infer::evaluate;
use crate::detect::model::{detection_loss, Detector, DetectorConfig};
use crate::report::metrics::Value;
use crate::report::plot::{write_svg, Series};
use crate::report::progress::Progress;
use crate::report::run_dir::{open_run, restore, start_metrics, CHECKPOINT_FILE};

/// The checkpoint's file name inside the run folder.
pub const CKPT: &str = CHECKPOINT_FILE;

/// Where a run goes without `--out` (see [`crate::report::run_dir::resolve_run_dir`]).
pub const DEFAULT_OUT: &str = "runs/detect";

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct DetectReport {
    /// Trainable parameters.
    pub params: usize,
    /// Steps run in this invocation.
    pub steps_run: usize,
    /// Training images per second over this invocation (validation time excluded).
    pub images_per_sec: f64,
    /// Loss of the first and last step of this invocation.
    pub first_loss: Option<f64>,
    /// Loss of the last step.
    pub last_loss: f64,
    /// COCO metrics on the validation split at the end.
    pub val: CocoMetrics,
    /// Class names, for the per-class table.
    pub class_names: Vec<String>,
    /// The checkpoint file.
    pub checkpoint: PathBuf,
    /// The loss and AP plots.
    pub plots: Vec<PathBuf>,
    /// The metrics log.
    pub metrics: PathBuf,
    /// Wall-clock seconds of this invocation.
    pub seconds: f64,
}

fn io(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io { path: path.display().to_string(), msg: e.to_string() }
}

/// Which data a run uses: a dataset folder, or the embedded set's split sizes and seed (its
/// images are rendered at the model's input size, so no resize touches them).
#[derive(Clone, Debug, PartialEq)]
pub struct DataSpec {
    /// A COCO or YOLO folder; `None` for the embedded set.
    pub dir: Option<PathBuf>,
    /// Embedded set: training images.
    pub synth_train: usize,
    /// Embedded set: validation images.
    pub synth_val: usize,
    /// Embedded set: the seed that draws every scene.
    pub seed: u64,
    /// Embedded set: the side of its square images.
    pub image_size: usize,
}

/// The data a run trains on: the folder it names, or the embedded set.
pub fn open_data(spec: &DataSpec) -> Result<DatasetSplit> {
    match &spec.dir {
        Some(dir) => crate::detect::data::open_dataset(dir),
        None => {
            let image_size = u32::try_from(spec.image_size)
                .map_err(|_| Error::invalid("detect", format!("image size {} is too large", spec.image_size)))?;
            crate::detect::data::synthetic(&crate::detect::data::SynthConfig {
                seed: spec.seed,
                train: spec.synth_train,
                val: spec.synth_val,
                image_size,
                ..Default::default()
            })
        }
    }
}

/// The image indices of step `step`: a function of the seed and the step only.
fn batch_indices(n: usize, batch: usize, seed: u64, step: usize) -> (Vec<usize>, Rng) {
    let mut rng = Rng::new(seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0xD1B5));
    let idx = (0..batch).map(|_| rng.below(n as u64) as usize).collect();
    (idx, rng)
}

fn metadata(cfg: &DetectorConfig, args: &DetectTrainArgs, classes: &[String], step: usize) -> Metadata {
    let mut m: Metadata = BTreeMap::new();
    for (k, v) in cfg.to_pairs().into_iter().chain(args.run_pairs()) {
        m.insert(k, v);
    }
    m.insert("data.classes".into(), classes.join("\n"));
    m.insert("run.step".into(), step.to_string());
    m.insert("format".into(), "ela-rs detector checkpoint v1".into());
    m
}

/// Refuse a run whose model, optimizer state and batches cannot fit in the memory available.
fn check_memory(cfg: &DetectorConfig, args: &DetectTrainArgs) -> Result<()> {
    let mut e = crate::budget::Estimate::new();
    crate::detect::model::cost::add_memory(&mut e, cfg, args.batch, true)?;
    e.check_for("detect train", args.device.parse()?)
}

/// Train (or resume) as `args` says, on `device`.
pub fn train<B: Backend>(args: &DetectTrainArgs, device: &B) -> Result<DetectReport> {
    let mut args = args.clone();
    if !args.resume {
        // A new run's settings are all known now: refuse bad ones before a folder is made.
        args.validate()?;
        // The class count is known only from the data; one class is the least the run needs.
        check_memory(&args.model.to_config(1)?, &args)?;
    }
    let run = open_run("detect train", args.out.as_deref(), Path::new(DEFAULT_OUT), args.resume, device)?;
    // Held to the end of the run: no other process may write into this folder meanwhile.
    let (out, resumed, _lock) = (run.dir, run.resumed, run.lock);
    let ckpt_path = out.join(CKPT);
    if let Some(ck) = &resumed {
        args.check_resume_flags(|k| ck.metadata.get(k).cloned())?;
        args.apply_run_pairs(|k| ck.metadata.get(k).cloned())?;
    }
    let saved_cfg = match &resumed {
        Some(ck) => Some(DetectorConfig::from_pairs(|k| ck.metadata.get(k).cloned())?),
        None => None,
    };
    if let Some(c) = &saved_cfg {
        // The embedded set is rendered at the model's input size: take the saved one.
        args.model.img = c.input_size;
    }
    args.validate()?;
    let data = open_data(&args.data_spec())?;
    if data.train.is_empty() || data.val.is_empty() {
        return Err(Error::invalid(
            "detect train",
            format!(
                "the training split has {} images and the validation split {}; both need at least one",
                data.train.len(),
                data.val.len()
            ),
        ));
    }
    let classes = data.train.class_names().to_vec();
    let cfg = match saved_cfg {
        Some(c) => c,
        None => args.model.to_config(classes.len())?,
    };
    // A resumed run's stored configuration is checked here, before anything is built from it.
    check_memory(&cfg, &args)?;
    if cfg.num_classes != classes.len() {
        return Err(Error::invalid(
            "detect train --resume",
            format!("the checkpoint has {} classes, the data {}", cfg.num_classes, classes.len()),
        ));
    }
    if !data.skipped.is_empty() {
        crate::errln!("data: {}", data.skipped);
    }

    let store = ParamStore::new(device, DType::F32, args.seed);
    let model = Detector::new(&store, cfg)?;
    let params = store.num_params();
    let mut opt = AdamW::new(
        store.named_params(),
        AdamWConfig { lr: args.lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: args.weight_decay },
    )?;
    opt.exclude_from_weight_decay(|_, v| v.rank() < 2);
    let sched = WarmupCosine::new(args.lr, args.min_lr, args.warmup, args.steps)?;
    let loss_cfg = args.loss_config();
    let augment = (!args.no_augment).then(AugmentConfig::default);

    let mut start = 0;
    if let Some(ck) = &resumed {
        start = restore(ck, &store, &mut opt)?;
    }
    // config.json first, as in `ela train`: it marks the folder as a run's.
    crate::train::run::write_config_json(&out, &metadata(&cfg, &args, &classes, start))?;
    let (metrics_path, mut log) = start_metrics(&out, resumed.is_some())?;

    crate::errln!(
        "model: {} ({params} parameters); data: {} ({} train / {} validation images); {} steps of {} images{}",
        cfg,
        data.train.describe(),
        data.train.len(),
        data.val.len(),
        args.steps,
        args.batch,
        if start > 0 { format!(", resuming at step {start}") } else { String::new() }
    );
    let progress = Progress::new(args.steps.saturating_sub(start), 10);
    let t0 = Instant::now();
    let mut eval_seconds = 0.0;
    let (mut first_loss, mut last_loss) = (None, f64::NAN);
    let mut val: Option<CocoMetrics> = None;
    for step in start..args.steps {
        let lr = sched.lr_at(step);
        opt.set_lr(lr)?;
        let (idx, mut rng) = batch_indices(data.train.len(), args.batch, args.seed, step);
        let b = make_batch(data.train.as_ref(), &idx, cfg.input_size, augment.as_ref(), &mut rng)?;
        let x = Var::constant(batch_to_tensor(&b, device)?);
        let outs = model.forward(&x, true)?;
        let (loss, parts) = detection_loss(&outs, model.strides(), &b.targets, &loss_cfg)?;
        let mut grads = loss.backward()?;
        let norm = if args.clip > 0.0 { clip_grad_norm(&store.params(), &mut grads, args.clip)? } else { f64::NAN };
        let value = loss.value().to_scalar()?;
        if !value.is_finite() || (args.clip > 0.0 && !norm.is_finite()) {
            return Err(Error::invalid(
                "detect train",
                format!(
                    "step {}: the loss ({value}) or gradient norm ({norm}) is not finite; lower --lr or check the data",
                    step + 1
                ),
            ));
        }
        opt.step(&grads)?;
        first_loss.get_or_insert(value);
        last_loss = value;
        let done = step + 1;
        let ips = ((done - start) * args.batch) as f64 / (t0.elapsed().as_secs_f64() - eval_seconds).max(1e-9);
        let mut rec = vec![
            ("step", Value::Int(done as i64)),
            ("loss", Value::Num(value)),
            ("loss_obj", Value::Num(parts.obj)),
            ("loss_box", Value::Num(parts.boxes)),
            ("loss_cls", Value::Num(parts.cls)),
            ("positives", Value::Int(parts.num_pos as i64)),
            ("lr", Value::Num(lr)),
            ("grad_norm", Value::Num(norm)),
            ("images_per_sec", Value::Num(ips)),
        ];
        if done % args.eval_every == 0 || done == args.steps {
            let te = Instant::now();
            let m = evaluate(&model, data.val.as_ref(), args.batch, device)?;
            eval_seconds += te.elapsed().as_secs_f64();
            rec.push(("val_map", Value::Num(m.ap)));
            rec.push(("val_map50", Value::Num(m.ap50)));
            rec.push(("val_map75", Value::Num(m.ap75)));
            rec.push(("val_ar100", Value::Num(m.ar100)));
            val = Some(m);
        }
        log.write(&rec)?;
        let ap = val.as_ref().map_or(f64::NAN, |m| m.ap50);
        progress.update(step - start, &format!("loss {value:.3} | mAP50 {ap:.3} | {ips:.1} img/s"));
        if (args.checkpoint_every > 0 && done % args.checkpoint_every == 0) || done == args.steps {
            let mut tensors = checkpoint::with_prefix(&store.state_dict(), "model");
            tensors.extend(checkpoint::with_prefix(&opt.state_dict()?, "optim"));
            checkpoint::save(&ckpt_path, &tensors, &metadata(&cfg, &args, &classes, done))?;
        }
        if args.abort_after == Some(done) {
            std::process::abort();
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let steps_run = args.steps.saturating_sub(start);
    let val = match val {
        Some(m) => m,
        None => evaluate(&model, data.val.as_ref(), args.batch, device)?,
    };
    let plots = plot_metrics(&metrics_path, &out)?;
    Ok(DetectReport {
        params,
        steps_run,
        images_per_sec: (steps_run * args.batch) as f64 / (seconds - eval_seconds).max(1e-9),
        first_loss,
        last_loss,
        val,
        class_names: classes,
        checkpoint: ckpt_path,
        plots,
        metrics: metrics_path,
        seconds,
    })
}

/// Draw the loss curves and the validation AP curves from a metrics log: `loss.svg`, `ap.svg`.
pub fn plot_metrics(metrics: &Path, out: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(metrics).map_err(|e| io(metrics, e))?;
    // A resumed run appends: keep the last record of each step.
    let mut series: BTreeMap<&str, BTreeMap<i64, f64>> = BTreeMap::new();
    let keys = ["loss", "loss_obj", "loss_box", "loss_cls", "val_map", "val_map50"];
    for line in text.lines() {
        let Ok(rec) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let Some(step) = rec.get("step").and_then(|s| s.as_i64()) else { continue };
        for k in keys {
            if let Some(v) = rec.get(k).and_then(|v| v.as_f64()) {
                series.entry(k).or_default().insert(step, v);
            }
        }
    }
    let pts = |k: &str| -> Vec<(f64, f64)> {
        series.get(k).map(|m| m.iter().map(|(&s, &v)| (s as f64, v)).collect()).unwrap_or_default()
    };
    let (l, lo, lb, lc) = (pts("loss"), pts("loss_obj"), pts("loss_box"), pts("loss_cls"));
    let loss_svg = out.join("loss.svg");
    write_svg(
        &loss_svg,
        "YOLO-LAT training loss",
        "step",
        "loss",
        &[
            Series { label: "total", points: &l, color: "#1f77b4" },
            Series { label: "objectness", points: &lo, color: "#ff7f0e" },
            Series { label: "box (1 - CIoU)", points: &lb, color: "#2ca02c" },
            Series { label: "class", points: &lc, color: "#9467bd" },
        ],
    )?;
    let (m, m50) = (pts("val_map"), pts("val_map50"));
    let ap_svg = out.join("ap.svg");
    write_svg(
        &ap_svg,
        "YOLO-LAT validation AP",
        "step",
        "AP",
        &[
            Series { label: "mAP@0.5", points: &m50, color: "#d62728" },
            Series { label: "mAP@[.5:.95]", points: &m, color: "#1f77b4" },
        ],
    )?;
    Ok(vec![loss_svg, ap_svg])
}
