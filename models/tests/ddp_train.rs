//! Data-parallel training (`ela_models::train::train_data_parallel`) on the in-process thread
//! group (`ela_core::LocalComm`): W ranks with global batch B give the loss sequence of one
//! process with batch B, a run resumes under another world size, and a world size that does not
//! divide the batch is refused on every rank.

mod bin;

use std::path::Path;
use std::thread;

use clap::Parser;
use ela_core::{Cpu, Error, LocalComm, Result};
use ela_models::cli::{Cli, Command};
use ela_models::train::{train, train_data_parallel, TrainArgs, TrainReport};

/// A small MoE model (so the routing statistics are shared too), 20 steps of global batch 8.
fn args(out: &Path, extra: &[&str]) -> TrainArgs {
    let base = [
        "ela",
        "train",
        "--dim",
        "16",
        "--layers",
        "2",
        "--heads",
        "2",
        "--ffn-hidden",
        "16",
        "--experts",
        "4",
        "--top-k",
        "2",
        "--steps",
        "20",
        "--batch",
        "8",
        "--seq",
        "16",
        "--warmup",
        "2",
        "--eval-every",
        "10",
        "--eval-windows",
        "2",
        "--checkpoint-every",
        "10",
        "--sample-len",
        "4",
        "--out",
    ];
    let argv: Vec<&str> = base.iter().copied().chain([out.to_str().unwrap()]).chain(extra.iter().copied()).collect();
    match Cli::try_parse_from(argv).unwrap().command {
        Command::Train(a) => a,
        other => panic!("not train: {other:?}"),
    }
}

/// Runs `args` as `world` thread ranks; returns each rank's result.
fn run_ranks(world: usize, args: &TrainArgs) -> Vec<Result<Option<TrainReport>>> {
    let comms = LocalComm::group(world).unwrap();
    let handles: Vec<_> = comms
        .into_iter()
        .map(|c| {
            let a = args.clone();
            thread::spawn(move || train_data_parallel(&a, &Cpu, &c))
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("rank panicked")).collect()
}

/// `(step, loss, val_loss)` of each record of a run folder's metrics.
fn losses(dir: &Path) -> Vec<(u64, f64, Option<f64>)> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap(), v.get("val_loss").and_then(|x| x.as_f64()))
        })
        .collect()
}

/// Same steps, and each loss within `tol` (relative) of the reference.
fn assert_close(got: &[(u64, f64, Option<f64>)], want: &[(u64, f64, Option<f64>)], tol: f64, what: &str) {
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), want.iter().map(|w| w.0).collect::<Vec<_>>(), "{what}");
    for (g, w) in got.iter().zip(want) {
        assert!((g.1 - w.1).abs() <= tol * w.1.abs(), "{what}: step {} loss {} vs {}", g.0, g.1, w.1);
        match (g.2, w.2) {
            (Some(a), Some(b)) => assert!((a - b).abs() <= tol * b.abs(), "{what}: step {} val {a} vs {b}", g.0),
            (None, None) => {}
            _ => panic!("{what}: step {}: validation at different steps", g.0),
        }
    }
}

/// f32 sums in another order (the ranks' partial means, averaged) move the loss by a few ulps per
/// step (measured: at most 2.4e-7 absolute over these 20 steps, W = 2 and 4). A wrong shard, a
/// missing average or an unshared routing count moves it by orders of magnitude more (a shard
/// taken from the wrong rows fails this test).
const TOL: f64 = 2e-5;

#[test]
fn ranks_with_a_share_of_the_batch_reproduce_the_single_process_losses() {
    let tmp = bin::TempDir::new("ddp-equiv");
    let single = tmp.0.join("single");
    let report = train(&args(&single, &[]), &Cpu).unwrap();
    let want = losses(&single);
    assert_eq!(want.len(), 20);
    for (world, bucket_mb) in [(2usize, "0.01"), (4, "25")] {
        let out = tmp.0.join(format!("w{world}"));
        let results = run_ranks(world, &args(&out, &["--bucket-mb", bucket_mb]));
        for (r, res) in results.into_iter().enumerate() {
            match res.unwrap() {
                Some(rep) => {
                    assert_eq!(r, 0, "only rank 0 reports");
                    assert_eq!(rep.steps_run, 20);
                    assert!((rep.val_loss - report.val_loss).abs() <= TOL * report.val_loss, "val {}", rep.val_loss);
                }
                None => assert_ne!(r, 0, "rank 0 must report"),
            }
        }
        assert_close(&losses(&out), &want, TOL, &format!("{world} ranks"));
        // The differences that do exist are rounding, not zero by accident of a shortcut.
        println!("{world} ranks: max |loss diff| {:e}", max_diff(&losses(&out), &want));
    }
}

fn max_diff(a: &[(u64, f64, Option<f64>)], b: &[(u64, f64, Option<f64>)]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x.1 - y.1).abs()).fold(0.0, f64::max)
}

#[test]
fn a_run_resumes_under_another_world_size() {
    let tmp = bin::TempDir::new("ddp-resume");
    let single = tmp.0.join("single");
    train(&args(&single, &[]), &Cpu).unwrap();
    let want = losses(&single);
    // Two ranks stop after step 10 (the checkpoint of step 10 is on disk) ...
    let cut = tmp.0.join("cut");
    let mut first = args(&cut, &[]);
    first.stop_after = Some(10);
    for r in run_ranks(2, &first) {
        r.unwrap();
    }
    // ... and four ranks continue it (the settings come from rank 0's checkpoint).
    let mut resume = args(&cut, &[]);
    resume.resume = true;
    for r in run_ranks(4, &resume) {
        r.unwrap();
    }
    assert_close(&losses(&cut), &want, TOL, "2 ranks, then 4 after --resume");
}

#[test]
fn a_world_size_that_does_not_divide_the_batch_is_refused_on_every_rank() {
    let tmp = bin::TempDir::new("ddp-divide");
    for r in run_ranks(3, &args(&tmp.0.join("w3"), &[])) {
        let e = r.unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        assert!(e.to_string().contains("multiple of the world size"), "{e}");
    }
    assert!(!tmp.0.join("w3").exists(), "nothing is written before the check");
}
