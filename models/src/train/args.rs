//! Command-line options of `ela train` and how they become a model configuration.

use std::path::PathBuf;

use ela_core::{Error, Result};
use ela_nn::ela::ElaKernel;
use ela_nn::precision::Precision;

use crate::report::run_dir::{check_resume_flags, check_storable_path, data_pairs, SavedSettings};

use crate::lm::{AttnKind, Link, LmConfig, LobeMode, MoeSpec};

/// Model switches shared by `train`, `info` and `bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Token mixer of the attention layers: `ela` or `softmax`.
    #[arg(long, default_value = "ela")]
    pub attention: String,
    /// ELA kernel: hadamard-exp, sum-sq-euclid, sub-sq-euclid, blueprint, elu-plus-one (plain
    /// linear attention with the elu+1 feature map) (parsed here, so a bad name is an argument error).
    #[arg(long, default_value = "hadamard-exp")]
    pub kernel: ElaKernel,
    /// Chunk length of the chunked ELA form on the CPU. The CUDA backend picks its own chunking
    /// (cuda/README.md), so with `--device cuda` any other value than 64 is refused; results agree
    /// for every chunk length up to rounding.
    #[arg(long, default_value_t = 64)]
    pub chunk: usize,
    /// Layer connection: `residual` (pre-norm), `post-norm` (post-norm residual) or `hyper` (the
    /// paper's Hyper-Link, which trains more slowly at this size: see docs/model.md).
    #[arg(long, default_value = "residual")]
    pub link: String,
    /// Memory Lobe: `off`, `causal`, or `bidirectional` (leaks future tokens in an LM).
    #[arg(long, default_value = "causal")]
    pub lobe: String,
    /// Model width.
    #[arg(long, default_value_t = 128)]
    pub dim: usize,
    /// Number of layers.
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// FFN (or expert) hidden width.
    #[arg(long, default_value_t = 256)]
    pub ffn_hidden: usize,
    /// Number of experts (0: a dense SwiGLU FFN).
    #[arg(long, default_value_t = 4)]
    pub experts: usize,
    /// Experts per token.
    #[arg(long, default_value_t = 2)]
    pub top_k: usize,
    /// Routing-score bias: none, inner, outer.
    #[arg(long, default_value = "outer")]
    pub moe_bias: String,
    /// Router score function: softmax or sigmoid.
    #[arg(long, default_value = "softmax")]
    pub moe_score: String,
    /// Switch auxiliary-loss weight (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub aux_alpha: f64,
    /// Loss-free balancing step (0 = off).
    #[arg(long, default_value_t = 1e-3)]
    pub loss_free_gamma: f64,
    /// Drop the final RMSNorm (the paper's setting).
    #[arg(long)]
    pub no_final_norm: bool,
    /// Use a separate output matrix instead of the embedding.
    #[arg(long)]
    pub untied: bool,
    /// Rotary position embedding up to this many positions (0 = off).
    #[arg(long, default_value_t = 0)]
    pub rope: usize,
}

impl ModelArgs {
    /// The switches that describe `cfg` (the inverse of [`ModelArgs::to_config`] for a byte
    /// vocabulary), so library callers can hand a configuration to [`crate::train::train`].
    pub fn from_config(cfg: &LmConfig) -> ModelArgs {
        let (attention, kernel, chunk) = match &cfg.attention {
            AttnKind::Softmax => ("softmax", ElaKernel::HadamardExp, 64),
            AttnKind::Ela { kernel, chunk } => ("ela", *kernel, *chunk),
        };
        let lobe = match cfg.lobe {
            LobeMode::Off => "off",
            LobeMode::Causal => "causal",
            LobeMode::Bidirectional => "bidirectional",
        };
        let moe = cfg.moe.clone();
        ModelArgs {
            attention: attention.into(),
            kernel,
            chunk,
            link: cfg.link.name().into(),
            lobe: lobe.into(),
            dim: cfg.dim,
            layers: cfg.layers,
            heads: cfg.heads,
            ffn_hidden: cfg.ffn_hidden,
            experts: moe.as_ref().map_or(0, |m| m.experts),
            top_k: moe.as_ref().map_or(1, |m| m.top_k),
            moe_bias: moe.as_ref().map_or("none".into(), |m| m.bias.clone()),
            moe_score: moe.as_ref().map_or("softmax".into(), |m| m.score.clone()),
            aux_alpha: moe.as_ref().map_or(0.0, |m| m.aux_alpha),
            loss_free_gamma: moe.as_ref().map_or(0.0, |m| m.loss_free_gamma),
            no_final_norm: !cfg.final_norm,
            untied: !cfg.tied_embeddings,
            rope: cfg.rope_max_len.unwrap_or(0),
        }
    }

    /// The model configuration these switches describe.
    pub fn to_config(&self) -> Result<LmConfig> {
        let attention = match self.attention.as_str() {
            "softmax" => AttnKind::Softmax,
            "ela" => {
                if self.chunk == 0 {
                    return Err(Error::invalid("train", "--chunk must be positive"));
                }
                AttnKind::Ela { kernel: self.kernel, chunk: self.chunk }
            }
            s => return Err(Error::invalid("train", format!("--attention must be `ela` or `softmax`, got {s:?}"))),
        };
        let link = Link::parse(&self.link).ok_or_else(|| {
            Error::invalid("train", format!("--link must be `hyper`, `residual` or `post-norm`, got {:?}", self.link))
        })?;
        let lobe = match self.lobe.as_str() {
            "off" => LobeMode::Off,
            "causal" => LobeMode::Causal,
            "bidirectional" => LobeMode::Bidirectional,
            s => {
                return Err(Error::invalid("train", format!("--lobe must be off, causal or bidirectional, got {s:?}")))
            }
        };
        if !["none", "inner", "outer"].contains(&self.moe_bias.as_str()) {
            return Err(Error::invalid(
                "train",
                format!("--moe-bias must be none, inner or outer, got {:?}", self.moe_bias),
            ));
        }
        if !["softmax", "sigmoid"].contains(&self.moe_score.as_str()) {
            return Err(Error::invalid(
                "train",
                format!("--moe-score must be softmax or sigmoid, got {:?}", self.moe_score),
            ));
        }
        let cfg = LmConfig {
            vocab: 256,
            dim: self.dim,
            layers: self.layers,
            heads: self.heads,
            ffn_hidden: self.ffn_hidden,
            attention,
            link,
            lobe,
            moe: (self.experts > 0).then(|| MoeSpec {
                experts: self.experts,
                top_k: self.top_k,
                bias: self.moe_bias.clone(),
                score: self.moe_score.clone(),
                aux_alpha: self.aux_alpha,
                loss_free_gamma: self.loss_free_gamma,
            }),
            final_norm: !self.no_final_norm,
            tied_embeddings: !self.untied,
            rope_max_len: (self.rope > 0).then_some(self.rope),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Options of `ela train`.
#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    /// Model switches.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Train on this text file instead of the embedded corpus.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Optimizer steps (the default trains in about a minute on 2 CPU cores).
    #[arg(long, default_value_t = 350)]
    pub steps: usize,
    /// Sequences per batch.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Final learning rate of the cosine decay.
    #[arg(long, default_value_t = 3e-4)]
    pub min_lr: f64,
    /// Linear warmup steps.
    #[arg(long, default_value_t = 40)]
    pub warmup: usize,
    /// AdamW decoupled weight decay (not applied to norms, biases or the selection bias).
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f64,
    /// Clip gradients to this global norm (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Skip an update whose gradient norm is not finite (with a warning) instead of stopping
    /// the run with an error.
    #[arg(long)]
    pub skip_nonfinite: bool,
    /// Seed of initialisation and batch sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Validation every this many steps (and at the end).
    #[arg(long, default_value_t = 50)]
    pub eval_every: usize,
    /// At most this many validation windows.
    #[arg(long, default_value_t = 32)]
    pub eval_windows: usize,
    /// Save a checkpoint every this many steps (and at the end); 0 = only at the end.
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: usize,
    /// Output folder (checkpoint, config.json, metrics.jsonl, loss.svg). Without it a new run
    /// goes to `runs/ela-small`, or to `runs/ela-small-2`, `-3`, ... when that holds a run. A new
    /// run refuses an existing folder that holds files no earlier run wrote.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run saved in `--out` (without `--out`: the newest `runs/ela-small*` run; its
    /// own settings are used; the loss sequence equals an uninterrupted run's).
    #[arg(long)]
    pub resume: bool,
    /// Characters of sample text printed at the end.
    #[arg(long, default_value_t = 200)]
    pub sample_len: usize,
    /// Device: `cpu` or `cuda`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute precision: `f32`, or `bf16` mixed precision (bf16 activations and bf16 copies of
    /// the weights for the products; f32 master weights, gradients, optimizer state, checkpoints
    /// and loss: docs/nn.md, "Mixed precision"). Saved with the run, so `--resume` keeps it.
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// Record the whole training step (forward, backward, gradient norm, clipping, AdamW) as a
    /// CUDA graph after the first step and replay it for the others: the eager run's results
    /// (to within the GPU's run-to-run variation) without the host's launch cost (docs/usage.md,
    /// "Recorded training steps"). CUDA only; not with `--experts` > 0.
    #[arg(long)]
    pub graph: bool,
    /// Data-parallel runs: gradients are averaged across ranks in buckets of about this many MiB
    /// (PyTorch DDP's default 25), each started as soon as its gradients are final. Not a run
    /// setting: it changes only the order of floating-point sums.
    #[arg(long, default_value_t = 25.0)]
    pub bucket_mb: f64,
    /// Testing aid: abort the process (no cleanup, like a kill) right after this step.
    #[arg(long, hide = true)]
    pub abort_after: Option<usize>,
    /// Testing aid: with `--abort-after`, only this rank of a distributed run aborts.
    #[arg(long, hide = true)]
    pub abort_rank: Option<usize>,
    /// Also log each layer's gradient norm (before clipping) per step as `grad_norm_layer_<i>`
    /// in metrics.jsonl (what `ela claims link` plots). Library callers only.
    #[arg(skip)]
    pub layer_grad_norms: bool,
    /// Stop after this step, keeping the schedule of `steps` (no final checkpoint, plot or
    /// sample; `ela claims dilution` looks at the start of the default run this way). Library
    /// callers only.
    #[arg(skip)]
    pub stop_after: Option<usize>,
    /// The options given on the command line (clap ids), filled by the CLI, so `--resume` can
    /// refuse the ones that contradict the saved run (see [`TrainArgs::check_resume_flags`]).
    /// Empty for library callers.
    #[arg(skip)]
    pub given: Vec<String>,
}

impl TrainArgs {
    /// The run settings (everything but paths and the device) as `(key, value)` strings, saved
    /// with the checkpoint so `--resume` continues the same run.
    pub fn run_pairs(&self) -> Vec<(String, String)> {
        data_pairs(self.data.as_deref())
            .into_iter()
            .chain([
                ("steps", self.steps.to_string()),
                ("batch", self.batch.to_string()),
                ("seq", self.seq.to_string()),
                ("lr", format!("{:?}", self.lr)),
                ("min_lr", format!("{:?}", self.min_lr)),
                ("warmup", self.warmup.to_string()),
                ("weight_decay", format!("{:?}", self.weight_decay)),
                ("clip", format!("{:?}", self.clip)),
                ("seed", self.seed.to_string()),
                ("eval_every", self.eval_every.to_string()),
                ("eval_windows", self.eval_windows.to_string()),
                ("precision", self.precision.to_string()),
            ])
            .map(|(k, v)| (format!("run.{k}"), v))
            .collect()
    }

    /// Refuse options given with `--resume` that differ from the saved run's settings.
    pub fn check_resume_flags(&self, saved: impl Fn(&str) -> Option<String>) -> Result<()> {
        if self.given.is_empty() {
            return Ok(());
        }
        let mut user = self.run_pairs();
        // The model options only as far as they describe a valid model; a broken one is reported
        // by its own check when it matters.
        if let Ok(cfg) = self.model.to_config() {
            user.extend(cfg.to_pairs());
        }
        let keys_of = |id: &str| -> Vec<String> {
            let keys: &[&str] = match id {
                "data" => &["run.data", "run.data_hex"],
                "steps" | "batch" | "seq" | "lr" | "min_lr" | "warmup" | "weight_decay" | "clip" | "seed"
                | "eval_every" | "eval_windows" | "precision" => return vec![format!("run.{id}")],
                "dim" | "layers" | "heads" | "ffn_hidden" | "chunk" | "link" | "lobe" => {
                    return vec![format!("model.{id}")]
                }
                "attention" | "kernel" => &["model.attention"],
                "experts" => &["model.moe", "model.moe.experts"],
                "top_k" => &["model.moe.top_k"],
                "moe_bias" => &["model.moe.bias"],
                "moe_score" => &["model.moe.score"],
                "aux_alpha" => &["model.moe.aux_alpha"],
                "loss_free_gamma" => &["model.moe.loss_free_gamma"],
                "no_final_norm" => &["model.final_norm"],
                "untied" => &["model.tied_embeddings"],
                "rope" => &["model.rope_max_len"],
                // Paths, the device, reporting and testing options apply to the resumed run.
                _ => &[],
            };
            keys.iter().map(|k| k.to_string()).collect()
        };
        // Runs saved before `--precision` existed trained in f32.
        let saved = |k: &str| saved(k).or_else(|| (k == "run.precision").then(|| Precision::F32.to_string()));
        check_resume_flags("train --resume", &self.given, &user, saved, keys_of)
    }

    /// Overwrite the run settings from saved pairs (for `--resume`).
    pub fn apply_run_pairs(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<()> {
        // Runs saved before `--precision` existed trained in f32.
        self.precision = match get("run.precision") {
            None => Precision::F32,
            Some(p) => p.parse().map_err(|_| Error::invalid("resume", format!("run.precision: cannot parse {p:?}")))?,
        };
        let saved = SavedSettings(get);
        self.data = saved.data_path()?;
        self.steps = saved.get("steps")?;
        self.batch = saved.get("batch")?;
        self.seq = saved.get("seq")?;
        self.lr = saved.get("lr")?;
        self.min_lr = saved.get("min_lr")?;
        self.warmup = saved.get("warmup")?;
        self.weight_decay = saved.get("weight_decay")?;
        self.clip = saved.get("clip")?;
        self.seed = saved.get("seed")?;
        self.eval_every = saved.get("eval_every")?;
        self.eval_windows = saved.get("eval_windows")?;
        Ok(())
    }

    /// `--bucket-mb` in bytes.
    pub fn bucket_bytes(&self) -> usize {
        (self.bucket_mb * (1u64 << 20) as f64) as usize
    }

    /// Check ranges before anything is built.
    pub fn validate(&self) -> Result<()> {
        if !(self.bucket_mb.is_finite() && self.bucket_mb >= 0.0) {
            return Err(Error::invalid(
                "train",
                format!("--bucket-mb must be finite and >= 0, got {}", self.bucket_mb),
            ));
        }
        if let Some(p) = &self.data {
            check_storable_path("train", p)?;
        }
        if self.steps == 0 || self.batch == 0 || self.seq == 0 {
            return Err(Error::invalid("train", "--steps, --batch and --seq must be positive"));
        }
        let lr_ok = self.lr > 0.0 && self.lr.is_finite();
        let min_ok = self.min_lr >= 0.0 && self.min_lr <= self.lr;
        if !lr_ok || !min_ok {
            return Err(Error::invalid(
                "train",
                format!("need 0 < --lr and 0 <= --min-lr <= --lr, got {} and {}", self.lr, self.min_lr),
            ));
        }
        if self.eval_every == 0 || self.eval_windows == 0 {
            return Err(Error::invalid("train", "--eval-every and --eval-windows must be positive"));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::invalid(
                "train",
                format!("--weight-decay must be finite and >= 0, got {}", self.weight_decay),
            ));
        }
        if !(self.clip.is_finite() && self.clip >= 0.0) {
            return Err(Error::invalid(
                "train",
                format!("--clip must be finite and >= 0 (0 = off), got {}", self.clip),
            ));
        }
        if self.warmup > self.steps {
            return Err(Error::invalid(
                "train",
                format!("--warmup ({}) cannot exceed --steps ({})", self.warmup, self.steps),
            ));
        }
        Ok(())
    }
}
