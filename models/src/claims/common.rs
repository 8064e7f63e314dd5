//! What every `ela claims` experiment shares: the budget and seeds, the results file
//! (`results.json`), LM training runs through the ordinary training loop ([`crate::train::train`])
//! with a learning-rate sweep, statistics and plots.

use std::path::{Path, PathBuf};

use clap::Parser;
use ela_core::{Error, Result};
use serde_json::{json, Map, Value as Json};

use crate::lm::{AttnKind, Link, LmConfig, LobeMode, ReplayDevice};
use crate::report::plot::{write_svg, Series};
use crate::train::{ModelArgs, TrainArgs};

/// How much compute an experiment spends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Budget {
    /// Seconds: the end-to-end check the tests run (numbers mean nothing).
    Tiny,
    /// A few minutes per experiment on 2 CPU cores: provisional numbers.
    Quick,
    /// The GPU budget (`--device cuda`): `decode` takes ~11 s on an H200, but `lm` alone ran past 510 s
    /// there (stopped at step 940 of one of its 1500-step runs), so the whole set needs well over 20 minutes.
    Full,
}

impl Budget {
    /// The name on the command line and in results.json.
    pub fn name(self) -> &'static str {
        match self {
            Budget::Tiny => "tiny",
            Budget::Quick => "quick",
            Budget::Full => "full",
        }
    }
}

/// Options every experiment takes.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// tiny (pipeline check), quick (CPU, minutes) or full (GPU).
    #[arg(long, value_enum, default_value = "quick")]
    pub budget: Budget,
    /// Device: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Folder of all experiments; each writes `<out>/<name>/results.json` and its plots.
    #[arg(long, default_value = "runs/claims")]
    pub out: PathBuf,
    /// Seeds per training arm (default: 2 for tiny, 3 for quick and full).
    #[arg(long)]
    pub seeds: Option<usize>,
}

impl RunArgs {
    /// The seeds of every training comparison: the same list for every arm, so arms see the same
    /// initialisation seeds and the same data order.
    pub fn seeds(&self) -> Vec<u64> {
        let n = self.seeds.unwrap_or(match self.budget {
            Budget::Tiny => 2,
            Budget::Quick => 3,
            Budget::Full => 3,
        });
        (0..n.max(1) as u64).collect()
    }

    /// `<out>/<name>`, created empty: a rerun replaces the experiment's previous results (they
    /// are ours, written by an earlier run of the same experiment).
    pub fn fresh_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.out.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        Ok(dir)
    }
}

/// An I/O error naming the path.
pub fn io(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io { path: path.display().to_string(), msg: e.to_string() }
}

/// The verdict vocabulary of docs/claims.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// What we measured agrees with the claim.
    Confirmed,
    /// Agrees in part (some arms, sizes or metrics).
    Partly,
    /// What we measured does not show it (a null result).
    NotConfirmed,
    /// What we measured shows the opposite.
    Contradicted,
}

impl Verdict {
    /// As written in the summary table.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Confirmed => "confirmed",
            Verdict::Partly => "partly",
            Verdict::NotConfirmed => "not confirmed",
            Verdict::Contradicted => "contradicted",
        }
    }
}

/// The results file of one experiment, built up as it runs.
pub struct Results {
    dir: PathBuf,
    doc: Map<String, Json>,
    start: std::time::Instant,
}

/// The host, and the GPU's name when the run is on one.
fn machine(device: &str) -> String {
    let host = crate::cli::bench::machine();
    match device.parse() {
        Ok(crate::device::Device::Cuda(n)) => match ela_cuda::Cuda::new(n) {
            Ok(gpu) => format!("{} ({device}) on {host}", gpu.name()),
            Err(_) => host,
        },
        _ => host,
    }
}

impl Results {
    /// A results document for experiment `name` (claim `claim`, which says `paper`), with the
    /// header every experiment records: budget, device, seeds, machine, git commit, date.
    pub fn new(dir: &Path, name: &str, claim: &str, paper: &str, args: &RunArgs) -> Self {
        let mut doc = Map::new();
        doc.insert("experiment".into(), json!(name));
        doc.insert("claim".into(), json!(claim));
        doc.insert("paper_says".into(), json!(paper));
        doc.insert("budget".into(), json!(args.budget.name()));
        doc.insert("device".into(), json!(args.device));
        doc.insert("seeds".into(), json!(args.seeds()));
        doc.insert("machine".into(), json!(machine(&args.device)));
        doc.insert("commit".into(), json!(git_commit()));
        doc.insert("date".into(), json!(crate::cli::bench::today_utc()));
        doc.insert("command".into(), json!(std::env::args().collect::<Vec<_>>().join(" ")));
        Results { dir: dir.to_path_buf(), doc, start: std::time::Instant::now() }
    }

    /// Record `value` under `key`.
    pub fn set(&mut self, key: &str, value: Json) {
        self.doc.insert(key.into(), value);
    }

    /// The experiment's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Write `results.json` with the verdict, the one-line measurement for the summary table and
    /// the markdown section of docs/claims.md (tables; plots are listed in `plots`).
    pub fn finish(mut self, verdict: Verdict, measured: &str, section: &str, plots: &[&str]) -> Result<PathBuf> {
        self.doc.insert("verdict".into(), json!(verdict.name()));
        self.doc.insert("measured".into(), json!(measured));
        self.doc.insert("section".into(), json!(section));
        self.doc.insert("plots".into(), json!(plots));
        self.doc.insert("seconds".into(), json!(self.start.elapsed().as_secs_f64()));
        let path = self.dir.join("results.json");
        let text = serde_json::to_string_pretty(&Json::Object(self.doc))
            .map_err(|e| Error::invalid("claims", format!("results.json: {e}")))?;
        ela_nn::checkpoint::write_atomic(&path, text.as_bytes())?;
        crate::outln!("{}: {} -- {}", path.display(), verdict.name(), measured);
        Ok(path)
    }
}

/// The short git commit this binary was built from (`-dirty` when the tree had changes), recorded
/// at build time by `build.rs`: a binary carried to another machine reports its own code.
pub fn git_commit() -> String {
    env!("ELA_BUILD_COMMIT").to_string()
}

/// Whether the mean of `a` exceeds the mean of `b` by more than `floor` and by more than two
/// standard errors of the difference of the means (`sqrt(sd_a^2/n_a + sd_b^2/n_b)`, from the
/// seeds' sample standard deviations): the test a verdict uses so that seed noise alone does not
/// decide it. False when either side has no finite value.
pub fn clearly_above(a: &[f64], b: &[f64], floor: f64) -> bool {
    let n = |xs: &[f64]| xs.iter().filter(|x| x.is_finite()).count() as f64;
    let ((ma, sa), (mb, sb)) = (mean_sd(a), mean_sd(b));
    let se = (sa * sa / n(a) + sb * sb / n(b)).sqrt();
    ma - mb > floor.max(2.0 * se)
}

/// Mean and sample standard deviation (0 for one value) of the finite values; NaN when none.
pub fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = if v.len() > 1 { v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64 } else { 0.0 };
    (m, var.sqrt())
}

/// `mean ± sd` with `prec` decimals, and how many values were not finite (diverged runs).
pub fn pm(xs: &[f64], prec: usize) -> String {
    let (m, s) = mean_sd(xs);
    let bad = xs.iter().filter(|x| !x.is_finite()).count();
    let mut out = if m.is_finite() { format!("{m:.prec$} ± {s:.prec$}") } else { "-".into() };
    if bad > 0 {
        out += &format!(" ({bad} of {} non-finite)", xs.len());
    }
    out
}

/// Colours of the arms in every plot (seeds of one arm share its colour).
pub const COLORS: [&str; 10] =
    ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];

/// One labelled arm of a plot: its curves, one per seed, each a list of `(x, y)` points.
pub type ArmCurves = (String, Vec<Vec<(f64, f64)>>);

/// One curve per arm and seed (`arms[i] = (label, curves per seed)`); the legend names each arm
/// once, at its first seed.
pub fn plot_arms(path: &Path, title: &str, x: &str, y: &str, arms: &[ArmCurves]) -> Result<()> {
    let mut series = Vec::new();
    for (i, (label, curves)) in arms.iter().enumerate() {
        for (s, c) in curves.iter().enumerate() {
            series.push(Series { label: if s == 0 { label } else { "" }, points: c, color: COLORS[i % COLORS.len()] });
        }
    }
    write_svg(path, title, x, y, &series)
}

/// The small LM every training comparison starts from (each experiment changes the switch it
/// studies): byte vocabulary, width `dim`, `layers`, `heads`, dense SwiGLU of `2 dim`, pre-norm
/// residual, no lobe, no RoPE, final norm, tied embeddings.
pub fn small_lm(dim: usize, layers: usize, heads: usize, attention: AttnKind) -> LmConfig {
    LmConfig {
        vocab: 256,
        dim,
        layers,
        heads,
        ffn_hidden: 2 * dim,
        attention,
        link: Link::Residual,
        lobe: LobeMode::Off,
        moe: None,
        final_norm: true,
        tied_embeddings: true,
        rope_max_len: None,
    }
}

/// ELA with the default kernel (Hadamard Exp), the mixer of the comparisons that study something else.
pub fn ela_default() -> AttnKind {
    AttnKind::Ela { kernel: ela_core::ElaKernel::HadamardExp, chunk: ela_core::ela::DEFAULT_CHUNK }
}

/// The LM training settings of one experiment.
#[derive(Clone, Debug)]
pub struct LmBudget {
    /// Optimizer steps.
    pub steps: usize,
    /// Sequences per batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Warm-up steps.
    pub warmup: usize,
    /// Validation every this many steps.
    pub eval_every: usize,
    /// Peak learning rates swept on the first seed; the best (lowest final validation loss) is
    /// used for every seed.
    pub lrs: Vec<f64>,
    /// Stop after this many steps of the `steps`-step schedule (to look at the start of a long
    /// run on its own schedule); `None` runs every step.
    pub stop_after: Option<usize>,
    /// The text file to train on (`ela train --data`); `None` is the embedded corpus.
    pub data: Option<PathBuf>,
}

impl LmBudget {
    /// The tiny budget of every LM experiment: 3 steps of 2 x 16 bytes, a pipeline check.
    pub fn tiny() -> Self {
        LmBudget {
            steps: 3,
            batch: 2,
            seq: 16,
            warmup: 1,
            eval_every: 3,
            lrs: vec![1e-3],
            stop_after: None,
            data: None,
        }
    }
}

/// One step of a training run, from its metrics.jsonl.
#[derive(Clone, Debug, Default)]
pub struct StepRecord {
    /// Step (1-based).
    pub step: usize,
    /// Training cross-entropy (nats/byte); NaN when not finite.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Validation loss, at evaluation steps.
    pub val_loss: Option<f64>,
    /// Per-layer gradient norms (when asked for).
    pub layer_norms: Vec<f64>,
    /// Mean routing entropy (MoE models).
    pub moe_entropy: Option<f64>,
}

/// One finished LM training run.
#[derive(Clone, Debug)]
pub struct LmRun {
    /// Seed (initialisation and data order).
    pub seed: u64,
    /// Peak learning rate.
    pub lr: f64,
    /// Final validation loss (nats/byte).
    pub val_loss: f64,
    /// Training tokens per second.
    pub tokens_per_sec: f64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Every step.
    pub steps: Vec<StepRecord>,
    /// The run folder (checkpoint, metrics).
    pub dir: PathBuf,
}

impl LmRun {
    /// `(step, training loss)`.
    pub fn train_curve(&self) -> Vec<(f64, f64)> {
        self.steps.iter().map(|s| (s.step as f64, s.loss)).collect()
    }
    /// `(step, validation loss)` at evaluation steps.
    pub fn val_curve(&self) -> Vec<(f64, f64)> {
        self.steps.iter().filter_map(|s| s.val_loss.map(|v| (s.step as f64, v))).collect()
    }
    /// Mean training loss of the last quarter of the steps (less noisy than the last step).
    pub fn late_train_loss(&self) -> f64 {
        let n = self.steps.len();
        let tail = &self.steps[n - (n / 4).max(1)..];
        tail.iter().map(|s| s.loss).sum::<f64>() / tail.len() as f64
    }
    /// The first evaluation step whose validation loss is at most `target`.
    pub fn steps_to(&self, target: f64) -> Option<usize> {
        self.steps.iter().find(|s| s.val_loss.is_some_and(|v| v <= target)).map(|s| s.step)
    }
    /// JSON of the run (every number).
    pub fn to_json(&self) -> Json {
        json!({
            "seed": self.seed, "lr": self.lr, "val_loss": num(self.val_loss),
            "tokens_per_sec": self.tokens_per_sec, "seconds": self.seconds,
            "loss": self.steps.iter().map(|s| num(s.loss)).collect::<Vec<_>>(),
            "grad_norm": self.steps.iter().map(|s| num(s.grad_norm)).collect::<Vec<_>>(),
            "val": self.val_curve(),
            "layer_grad_norms": self.steps.iter().map(|s| s.layer_norms.iter().map(|&x| num(x)).collect::<Vec<_>>()).collect::<Vec<_>>(),
            "moe_entropy": self.steps.iter().filter_map(|s| s.moe_entropy).collect::<Vec<_>>(),
        })
    }
}

/// A number for JSON (non-finite values become null, as JSON requires).
pub fn num(x: f64) -> Json {
    if x.is_finite() {
        json!(x)
    } else {
        Json::Null
    }
}

/// Wraps [`TrainArgs`] so its defaults come from the one place they are written (clap).
#[derive(Parser)]
struct Defaults {
    #[command(flatten)]
    train: TrainArgs,
}

/// Train `cfg` on the embedded corpus (or `b.data`) with the ordinary training loop (AdamW, warm-up + cosine to
/// `lr / 10`, clipping at 1, MoE balancing, metrics.jsonl) into `dir/tag`. Non-finite steps are
/// skipped and counted rather than stopping the run (a diverging arm is a result).
#[allow(clippy::too_many_arguments)]
pub fn train_lm<B: ReplayDevice>(
    dir: &Path,
    tag: &str,
    cfg: &LmConfig,
    b: &LmBudget,
    lr: f64,
    seed: u64,
    layer_norms: bool,
    dev: &B,
) -> Result<LmRun> {
    let mut a = Defaults::try_parse_from(["claims"])
        .map_err(|e| Error::invalid("claims", format!("training defaults: {e}")))?
        .train;
    let out = dir.join("runs").join(tag);
    if out.exists() {
        std::fs::remove_dir_all(&out).map_err(|e| io(&out, e))?;
    }
    a.model = ModelArgs::from_config(cfg);
    a.steps = b.steps;
    a.batch = b.batch;
    a.seq = b.seq;
    a.lr = lr;
    a.min_lr = lr / 10.0;
    a.warmup = b.warmup.min(b.steps);
    a.seed = seed;
    a.eval_every = b.eval_every;
    a.eval_windows = 16;
    a.checkpoint_every = 0;
    a.sample_len = 1;
    a.skip_nonfinite = true;
    a.layer_grad_norms = layer_norms;
    a.stop_after = b.stop_after;
    a.data = b.data.clone();
    a.out = Some(out.clone());
    let report = crate::train::train(&a, dev)?;
    let steps = read_metrics(&report.metrics)?;
    Ok(LmRun {
        seed,
        lr,
        val_loss: report.val_loss,
        tokens_per_sec: report.tokens_per_sec,
        seconds: report.seconds,
        steps,
        dir: out,
    })
}

fn read_metrics(path: &Path) -> Result<Vec<StepRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let v: Json = serde_json::from_str(line).map_err(|e| io(path, format!("bad metrics line: {e}")))?;
        let f = |k: &str| v.get(k).and_then(Json::as_f64);
        let mut layer_norms = Vec::new();
        while let Some(x) = v.get(format!("grad_norm_layer_{}", layer_norms.len())) {
            layer_norms.push(x.as_f64().unwrap_or(f64::NAN));
        }
        out.push(StepRecord {
            step: f("step").unwrap_or(0.0) as usize,
            loss: f("loss").unwrap_or(f64::NAN),
            grad_norm: f("grad_norm").unwrap_or(f64::NAN),
            val_loss: f("val_loss"),
            layer_norms,
            moe_entropy: f("moe_entropy"),
        });
    }
    Ok(out)
}

/// One arm of a training comparison: its tuned learning rate and a run per seed.
#[derive(Clone, Debug)]
pub struct Arm {
    /// Label.
    pub name: String,
    /// The learning rate picked by the sweep.
    pub lr: f64,
    /// `(lr, final validation loss)` of the sweep on the first seed.
    pub sweep: Vec<(f64, f64)>,
    /// One run per seed at `lr`.
    pub runs: Vec<LmRun>,
}

impl Arm {
    /// Final validation losses, one per seed.
    pub fn val_losses(&self) -> Vec<f64> {
        self.runs.iter().map(|r| r.val_loss).collect()
    }
    /// Training tokens per second, one per seed.
    pub fn throughput(&self) -> Vec<f64> {
        self.runs.iter().map(|r| r.tokens_per_sec).collect()
    }
    /// JSON of the arm (every run).
    pub fn to_json(&self) -> Json {
        json!({
            "arm": self.name, "lr": self.lr,
            "sweep": self.sweep.iter().map(|&(lr, v)| json!([lr, num(v)])).collect::<Vec<_>>(),
            "runs": self.runs.iter().map(LmRun::to_json).collect::<Vec<_>>(),
        })
    }
}

/// Sweep the learning rates of `b` on the first seed, then run the other seeds at the best one.
pub fn run_arm<B: ReplayDevice>(
    dir: &Path,
    name: &str,
    cfg: &LmConfig,
    b: &LmBudget,
    seeds: &[u64],
    layer_norms: bool,
    dev: &B,
) -> Result<Arm> {
    let tag = |lr: f64, seed: u64| format!("{}-lr{lr:e}-s{seed}", name.replace([' ', '/', '+'], "_"));
    let first = seeds.first().copied().unwrap_or(0);
    let mut sweep_runs = Vec::new();
    for &lr in &b.lrs {
        crate::errln!("claims: arm {name}, lr {lr:e}, seed {first}");
        sweep_runs.push(train_lm(dir, &tag(lr, first), cfg, b, lr, first, layer_norms, dev)?);
    }
    let score = |r: &LmRun| if r.val_loss.is_finite() { r.val_loss } else { f64::INFINITY };
    let best = sweep_runs
        .iter()
        .enumerate()
        .min_by(|a, b| score(a.1).total_cmp(&score(b.1)))
        .map(|(i, _)| i)
        .ok_or_else(|| Error::invalid("claims", "the learning-rate list is empty"))?;
    let sweep = sweep_runs.iter().map(|r| (r.lr, r.val_loss)).collect();
    let lr = b.lrs[best];
    let mut runs = vec![sweep_runs.swap_remove(best)];
    for &seed in seeds.iter().skip(1) {
        crate::errln!("claims: arm {name}, lr {lr:e}, seed {seed}");
        runs.push(train_lm(dir, &tag(lr, seed), cfg, b, lr, seed, layer_norms, dev)?);
    }
    Ok(Arm { name: name.into(), lr, sweep, runs })
}

/// Gradient-norm statistics of runs: the largest norm, spikes (a step whose norm exceeds 5 times
/// the median of the 10 steps before it) and non-finite steps, summed over the runs.
pub fn grad_stats(runs: &[LmRun]) -> (f64, usize, usize) {
    let (mut max, mut spikes, mut bad) = (0.0f64, 0, 0);
    for r in runs {
        let norms: Vec<f64> = r.steps.iter().map(|s| s.grad_norm).collect();
        for (i, &n) in norms.iter().enumerate() {
            if !n.is_finite() {
                bad += 1;
                continue;
            }
            max = max.max(n);
            if i >= 10 {
                let mut w: Vec<f64> = norms[i - 10..i].iter().copied().filter(|x| x.is_finite()).collect();
                if !w.is_empty() && n > 5.0 * crate::cli::bench::median(&mut w) {
                    spikes += 1;
                }
            }
        }
    }
    (max, spikes, bad)
}

/// The markdown table of a training comparison: per arm the tuned lr, final validation loss,
/// late training loss, training throughput and gradient statistics (mean ± sd over seeds).
pub fn arms_table(arms: &[Arm]) -> String {
    let mut s = String::from(
        "| arm | tuned lr | lr sweep (seed 0: lr → val) | final val loss | late train loss | tokens/s | max grad norm | spikes | non-finite steps |\n|---|---:|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for a in arms {
        let late: Vec<f64> = a.runs.iter().map(LmRun::late_train_loss).collect();
        let (max, spikes, bad) = grad_stats(&a.runs);
        let sweep: Vec<String> = a.sweep.iter().map(|(lr, v)| format!("{lr:e} → {v:.3}")).collect();
        s += &format!(
            "| {} | {:e} | {} | {} | {} | {} | {max:.2} | {spikes} | {bad} |\n",
            a.name,
            a.lr,
            sweep.join(", "),
            pm(&a.val_losses(), 3),
            pm(&late, 3),
            pm(&a.throughput(), 0),
        );
    }
    s
}

/// Validation-loss curves of every arm and seed.
pub fn plot_val(path: &Path, title: &str, arms: &[Arm]) -> Result<()> {
    let series: Vec<ArmCurves> =
        arms.iter().map(|a| (a.name.clone(), a.runs.iter().map(LmRun::val_curve).collect())).collect();
    plot_arms(path, title, "step", "validation loss (nats/byte)", &series)
}

/// Training-loss curves of every arm and seed.
pub fn plot_train(path: &Path, title: &str, arms: &[Arm]) -> Result<()> {
    let series: Vec<ArmCurves> =
        arms.iter().map(|a| (a.name.clone(), a.runs.iter().map(LmRun::train_curve).collect())).collect();
    plot_arms(path, title, "step", "training loss (nats/byte)", &series)
}

/// How the learning rate was chosen, for the sections: a sweep on the first seed, or the one rate
/// of a budget too small to sweep.
pub fn lr_text(lrs: &[f64], by: &str) -> String {
    match lrs {
        [lr] => format!("one peak lr, {lr:e}, for every arm (no sweep at this budget)"),
        _ => format!("peak lr swept over {lrs:?} on seed 0 (by {by}), then every seed at the arm's best"),
    }
}

/// The sentence every section starts with: budget, device, seeds, commit.
pub fn provenance(args: &RunArgs) -> String {
    format!(
        "Budget `{}` on `{}` ({}), seeds {:?}, commit {}.",
        args.budget.name(),
        args.device,
        machine(&args.device),
        args.seeds(),
        git_commit()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clearly_above_needs_the_floor_and_two_standard_errors() {
        // Means 0.30 vs 0.28 with no spread: 0.02 clears a 0.01 floor.
        assert!(clearly_above(&[0.3, 0.3, 0.3], &[0.28, 0.28, 0.28], 0.01));
        assert!(!clearly_above(&[0.3, 0.3, 0.3], &[0.28, 0.28, 0.28], 0.05));
        // Same means, sd 0.02 each side over 3 seeds: 2 se = 2 sqrt(2 * 0.0004 / 3) = 0.0327 > 0.02.
        assert!(!clearly_above(&[0.28, 0.30, 0.32], &[0.26, 0.28, 0.30], 0.01));
        assert!(!clearly_above(&[f64::NAN], &[0.1], 0.0));
    }
}
