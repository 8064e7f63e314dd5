//! Options of `ela detect train` and the run settings a checkpoint keeps so `--resume`, `predict`
//! and `eval` rebuild exactly the same model and data.

use std::path::PathBuf;

use ela_core::{Error, Result};

use crate::report::run_dir::{check_resume_flags, check_storable_path, data_pairs, SavedSettings};

use super::run::DataSpec;
use crate::detect::model::{Arch, DetectorConfig, LossConfig, Neck};

/// Model switches shared by `detect train`, `info --model` and `bench detect`.
#[derive(clap::Args, Debug, Clone)]
pub struct DetectorArgs {
    /// Architecture: `yolo-lat` (ELA neck, single scale) or `yolov8n` (the conv baseline).
    #[arg(long = "arch", default_value = "yolo-lat")]
    pub arch: String,
    /// YOLO-LAT neck: `ela`, `softmax`, `conv` or `none`.
    #[arg(long, default_value = "ela")]
    pub neck: String,
    /// ELA kernel of the `ela` neck: hadamard-exp, sum-sq-euclid, sub-sq-euclid, blueprint.
    #[arg(long, default_value = "hadamard-exp")]
    pub kernel: ela_nn::ela::ElaKernel,
    /// Square input size in pixels (a multiple of 32; the embedded set is rendered at this size).
    #[arg(long, default_value_t = 192)]
    pub img: usize,
}

impl DetectorArgs {
    /// The detector these switches describe, for `num_classes` classes.
    pub fn to_config(&self, num_classes: usize) -> Result<DetectorConfig> {
        let arch = match self.arch.as_str() {
            "yolo-lat" => {
                let neck = match self.neck.as_str() {
                    "ela" => Neck::Ela(self.kernel),
                    "softmax" => Neck::Softmax,
                    "conv" => Neck::Conv,
                    "none" => Neck::None,
                    s => {
                        return Err(Error::invalid(
                            "detect",
                            format!("--neck must be ela, softmax, conv or none, got {s:?}"),
                        ))
                    }
                };
                Arch::YoloLat { neck }
            }
            "yolov8n" => Arch::YoloV8n,
            s => return Err(Error::invalid("detect", format!("--arch must be yolo-lat or yolov8n, got {s:?}"))),
        };
        let cfg = DetectorConfig { arch, num_classes, input_size: self.img };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Options of `ela detect train`.
#[derive(clap::Args, Debug, Clone)]
pub struct DetectTrainArgs {
    /// Model switches.
    #[command(flatten)]
    pub model: DetectorArgs,
    /// A dataset folder in COCO JSON or YOLO txt layout (see docs/yolo_lat.md); without it the
    /// embedded procedurally generated set is used.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Images in the embedded set's training split.
    #[arg(long, default_value_t = 4000)]
    pub synth_train: usize,
    /// Images in the embedded set's validation split.
    #[arg(long, default_value_t = 200)]
    pub synth_val: usize,
    /// Optimizer steps (the default fits in about 5 minutes on 2 CPU cores).
    #[arg(long, default_value_t = 1500)]
    pub steps: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Final learning rate of the cosine decay.
    #[arg(long, default_value_t = 1e-4)]
    pub min_lr: f64,
    /// Linear warmup steps.
    #[arg(long, default_value_t = 30)]
    pub warmup: usize,
    /// AdamW decoupled weight decay (not applied to norms and biases).
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f64,
    /// Clip gradients to this global norm (0 = off).
    #[arg(long, default_value_t = 10.0)]
    pub clip: f64,
    /// Weight of the box term (1 - CIoU) of the loss.
    #[arg(long, default_value_t = 5.0)]
    pub box_gain: f64,
    /// Weight of the class term (BCE) of the loss.
    #[arg(long, default_value_t = 2.0)]
    pub cls_gain: f64,
    /// Weight of the objectness term (focal BCE) of the loss.
    #[arg(long, default_value_t = 1.0)]
    pub obj_gain: f64,
    /// Train without augmentation (flip, HSV, scale, translate).
    #[arg(long)]
    pub no_augment: bool,
    /// Seed of initialisation, batch sampling and augmentation (and of the embedded set).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Validation (COCO AP on the validation split) every this many steps, and at the end.
    #[arg(long, default_value_t = 250)]
    pub eval_every: usize,
    /// Save a checkpoint every this many steps (and at the end); 0 = only at the end.
    #[arg(long, default_value_t = 250)]
    pub checkpoint_every: usize,
    /// Output folder (checkpoint, config.json, metrics.jsonl, loss.svg, ap.svg). Without it a
    /// new run goes to `runs/detect`, or to `runs/detect-2`, `-3`, ... when that holds a run. A
    /// new run refuses an existing folder that holds files no earlier run wrote.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run saved in `--out` (without `--out`: the newest `runs/detect*` run; its own
    /// settings are used; the loss sequence equals an uninterrupted run's).
    #[arg(long)]
    pub resume: bool,
    /// Device: `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Testing aid: abort the process (no cleanup, like a kill) right after this step.
    #[arg(long, hide = true)]
    pub abort_after: Option<usize>,
    /// The options given on the command line (clap ids), filled by the CLI, so `--resume` can
    /// refuse the ones that contradict the saved run. Empty for library callers.
    #[arg(skip)]
    pub given: Vec<String>,
}

impl DetectTrainArgs {
    /// The run settings (everything but the output path and the device) as `(key, value)`
    /// strings, saved with the checkpoint.
    pub fn run_pairs(&self) -> Vec<(String, String)> {
        data_pairs(self.data.as_deref())
            .into_iter()
            .chain([
                ("synth_train", self.synth_train.to_string()),
                ("synth_val", self.synth_val.to_string()),
                ("steps", self.steps.to_string()),
                ("batch", self.batch.to_string()),
                ("lr", format!("{:?}", self.lr)),
                ("min_lr", format!("{:?}", self.min_lr)),
                ("warmup", self.warmup.to_string()),
                ("weight_decay", format!("{:?}", self.weight_decay)),
                ("clip", format!("{:?}", self.clip)),
                ("augment", (!self.no_augment).to_string()),
                ("box_gain", format!("{:?}", self.box_gain)),
                ("cls_gain", format!("{:?}", self.cls_gain)),
                ("obj_gain", format!("{:?}", self.obj_gain)),
                ("seed", self.seed.to_string()),
                ("eval_every", self.eval_every.to_string()),
            ])
            .map(|(k, v)| (format!("run.{k}"), v))
            .collect()
    }

    /// Refuse options given with `--resume` that differ from the saved run's settings.
    pub fn check_resume_flags(&self, saved: impl Fn(&str) -> Option<String>) -> Result<()> {
        let user = self.run_pairs();
        let run_keys: Vec<String> = user.iter().map(|(k, _)| k.clone()).collect();
        let keys_of = |id: &str| -> Vec<String> {
            match id {
                "data" => vec!["run.data".into(), "run.data_hex".into()],
                "no_augment" => vec!["run.augment".into()],
                "img" => vec!["model.input_size".into()],
                "arch" => vec!["model.arch".into()],
                "neck" => vec!["model.neck".into()],
                id => run_keys.iter().filter(|k| **k == format!("run.{id}")).cloned().collect(),
            }
        };
        let mut user = user;
        if let Ok(cfg) = self.model.to_config(1) {
            // The class count comes from the data, so it is never an option to compare.
            user.extend(cfg.to_pairs().into_iter().filter(|(k, _)| k != "model.num_classes"));
        }
        check_resume_flags("detect train --resume", &self.given, &user, saved, keys_of)
    }

    /// Overwrite the run settings from saved pairs (for `--resume`).
    pub fn apply_run_pairs(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<()> {
        let saved = SavedSettings(get);
        self.data = saved.data_path()?;
        self.synth_train = saved.get("synth_train")?;
        self.synth_val = saved.get("synth_val")?;
        self.steps = saved.get("steps")?;
        self.batch = saved.get("batch")?;
        self.lr = saved.get("lr")?;
        self.min_lr = saved.get("min_lr")?;
        self.warmup = saved.get("warmup")?;
        self.weight_decay = saved.get("weight_decay")?;
        self.clip = saved.get("clip")?;
        self.no_augment = !saved.get::<bool>("augment")?;
        self.box_gain = saved.get("box_gain")?;
        self.cls_gain = saved.get("cls_gain")?;
        self.obj_gain = saved.get("obj_gain")?;
        self.seed = saved.get("seed")?;
        self.eval_every = saved.get("eval_every")?;
        Ok(())
    }

    /// The loss weights these options give (the rest of [`LossConfig`] at its defaults).
    pub fn loss_config(&self) -> LossConfig {
        LossConfig { box_gain: self.box_gain, cls_gain: self.cls_gain, obj_gain: self.obj_gain, ..Default::default() }
    }

    /// The data these options name.
    pub fn data_spec(&self) -> DataSpec {
        DataSpec {
            dir: self.data.clone(),
            synth_train: self.synth_train,
            synth_val: self.synth_val,
            seed: self.seed,
            image_size: self.model.img,
        }
    }

    /// Check ranges and finiteness before anything is built.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid("detect train", msg));
        if let Some(p) = &self.data {
            check_storable_path("detect train", p)?;
        }
        if self.steps == 0 || self.batch == 0 || self.eval_every == 0 {
            return bad("--steps, --batch and --eval-every must be positive".into());
        }
        if self.data.is_none() && (self.synth_train == 0 || self.synth_val == 0) {
            return bad("--synth-train and --synth-val must be positive".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return bad(format!("need 0 < --lr and 0 <= --min-lr <= --lr, got {} and {}", self.lr, self.min_lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!("--weight-decay must be finite and >= 0, got {}", self.weight_decay));
        }
        if !(self.clip.is_finite() && self.clip >= 0.0) {
            return bad(format!("--clip must be finite and >= 0 (0 = off), got {}", self.clip));
        }
        for (flag, v) in [("--box-gain", self.box_gain), ("--cls-gain", self.cls_gain), ("--obj-gain", self.obj_gain)] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{flag} must be finite and >= 0, got {v}"));
            }
        }
        if self.warmup > self.steps {
            return bad(format!("--warmup ({}) cannot exceed --steps ({})", self.warmup, self.steps));
        }
        Ok(())
    }
}
