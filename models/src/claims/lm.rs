//! `ela claims lm` (claim 4): the same LM with softmax attention, ELA with each built-in kernel
//! and elu+1 linear attention, on the same tokens: validation loss curves and training throughput,
//! on the embedded corpus or (`--corpus`) a text file such as the English corpus.

use crate::lm::ReplayDevice;
use ela_core::Result;
use serde_json::{json, Value as Json};

use super::common::{
    arms_table, lr_text, mean_sd, plot_val, provenance, run_arm, small_lm, Budget, LmBudget, Results, Verdict,
};
use super::corpus::{Corpus, CorpusRunArgs, ENGLISH_SHA256};
use super::mqar::mixers;

fn plan(b: Budget) -> (usize, usize, LmBudget) {
    match b {
        Budget::Tiny => (16, 1, LmBudget::tiny()),
        Budget::Quick => (
            64,
            2,
            LmBudget {
                steps: 100,
                batch: 8,
                seq: 128,
                warmup: 10,
                eval_every: 20,
                lrs: vec![3e-3],
                stop_after: None,
                data: None,
            },
        ),
        Budget::Full => (
            128,
            4,
            LmBudget {
                steps: 1000,
                batch: 16,
                seq: 256,
                warmup: 100,
                eval_every: 50,
                lrs: vec![1e-3, 3e-3],
                stop_after: None,
                data: None,
            },
        ),
    }
}

/// Run `ela claims lm` on the embedded corpus, or on `--corpus` (results in `lm-<file stem>`).
pub fn run<B: ReplayDevice>(args: &CorpusRunArgs, dev: &B) -> Result<()> {
    let (dim, layers, mut b) = plan(args.run.budget);
    // Checked before the results folder is emptied: a bad --corpus leaves earlier results alone.
    let corpus = Corpus::load("claims lm", args.corpus.as_deref(), b.seq)?;
    b.data = corpus.path.clone();
    let dir = args.run.fresh_dir(&args.results_name("lm"))?;
    let args = &args.run;
    let seeds = args.seeds();
    let mut res =
        Results::new(&dir, "lm", "4", "ELA gives comparable or superior training performance to full attention", args);
    res.set("corpus", corpus.to_json());
    res.set(
        "config",
        json!({"dim": dim, "layers": layers, "heads": 2, "ffn": "dense SwiGLU 2d", "link": "residual", "lobe": "off",
        "steps": b.steps, "batch": b.batch, "seq": b.seq, "lrs": b.lrs, "data": corpus.to_json()}),
    );
    let mut arms = Vec::new();
    for (name, attention) in mixers() {
        let cfg = small_lm(dim, layers, 2, attention);
        arms.push(run_arm(&dir, &name, &cfg, &b, &seeds, false, dev)?);
    }
    plot_val(&dir.join("val.svg"), "Validation loss by token mixer", &arms)?;
    res.set("arms", Json::Array(arms.iter().map(|a| a.to_json()).collect()));
    let val = |n: &str| arms.iter().find(|a| a.name == n).map_or(f64::NAN, |a| mean_sd(&a.val_losses()).0);
    let (soft, hexp, elu) = (val("softmax"), val("ELA hadamard-exp"), val("elu+1 (linear attn)"));
    let best_ela = arms
        .iter()
        .filter(|a| a.name.starts_with("ELA"))
        .map(|a| mean_sd(&a.val_losses()).0)
        .filter(|x| x.is_finite())
        .fold(f64::INFINITY, f64::min);
    let (_, sd) = arms.iter().find(|a| a.name == "softmax").map_or((0.0, 0.0), |a| mean_sd(&a.val_losses()));
    let tol = (2.0 * sd).max(0.02);
    let verdict = if hexp <= soft + tol {
        Verdict::Confirmed
    } else if best_ela <= soft + tol {
        Verdict::Partly
    } else {
        Verdict::Contradicted
    };
    let measured = format!(
        "final val loss (nats/byte): softmax {soft:.3}, ELA hadamard-exp {hexp:.3}, best ELA kernel {best_ela:.3}, elu+1 {elu:.3} (comparable = within max(2 sd of softmax, 0.02))"
    );
    let section = format!(
        "{}\n\nThe LM of `ela train` at width {dim}, {layers} layers, 2 heads, pre-norm residual, dense SwiGLU, no lobe, no RoPE, with each token mixer; \
         every arm sees the same batches (a function of seed and step) of {}. {} steps of {}x{} bytes; {} \
         by final validation loss. Throughput is training tokens per second on this machine (shared, so noisy).\n\n{}\n\
         Caveats: {} Short runs compare early training, not converged models.\n",
        provenance(args), corpus.describe(), b.steps, b.batch, b.seq, lr_text(&b.lrs, "final validation loss"), arms_table(&arms), caveat(&corpus)
    );
    res.finish(verdict, &measured, &section, &["val.svg"])?;
    Ok(())
}

/// The corpus caveat of the section.
fn caveat(corpus: &Corpus) -> String {
    match &corpus.path {
        None => "the embedded corpus is generated text (about 1 MiB), not natural English; the same comparison on 6.5 MB of \
                 English (`--corpus data/english.txt`, written by `python3 scripts/get_corpus.py`) is its own section, `lm-english`, \
                 when it has been run."
            .into(),
        Some(_) if corpus.sha256 == ENGLISH_SHA256 => "byte-level loss on one text, validated on its last 10% (the last \
            plays in file order: held-out text of the same authors); it is Early Modern verse and drama plus Milton, not modern prose."
            .into(),
        Some(_) => "byte-level loss on one text, validated on its last 10%; it says how well each mixer models this text.".into(),
    }
}
