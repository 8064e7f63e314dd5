//! `ela launch` end to end on the CPU: two processes over the TCP rendezvous and communicator
//! train to the single process's losses; a rank that dies makes the launcher stop the others and
//! fail naming it; a rank whose peers never start fails at the rendezvous timeout.

mod bin;

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

const TRAIN: &[&str] = &[
    "train",
    "--device",
    "cpu",
    "--dim",
    "16",
    "--layers",
    "2",
    "--heads",
    "2",
    "--ffn-hidden",
    "16",
    "--experts",
    "2",
    "--top-k",
    "1",
    "--steps",
    "8",
    "--batch",
    "4",
    "--seq",
    "16",
    "--warmup",
    "1",
    "--eval-every",
    "4",
    "--eval-windows",
    "2",
    "--sample-len",
    "4",
];

fn free_port() -> String {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string()
}

fn ela() -> Command {
    let mut c = Command::new(bin::ela_exe());
    // A launcher test must not inherit a job's variables from the environment it runs in.
    for k in ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"] {
        c.env_remove(k);
    }
    c
}

fn losses(dir: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn two_processes_train_to_the_single_process_losses() {
    let tmp = bin::TempDir::new("launch-equiv");
    let (one, two) = (tmp.0.join("one"), tmp.0.join("two"));
    let out = ela().args(TRAIN).args(["--out", one.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let port = free_port();
    let out = ela()
        .args(["launch", "--nproc", "2", "--master-port", &port, "--"])
        .args(TRAIN)
        .args(["--out", two.to_str().unwrap()])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.matches("train loss:").count(), 1, "only rank 0 prints its report: {stdout}");
    assert!(stderr.contains("2 ranks of 2 sequences"), "{stderr}");
    let (a, b) = (losses(&one), losses(&two));
    assert_eq!(a.len(), 8);
    assert_eq!(b.len(), 8, "one metrics log, written by rank 0 only");
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 2e-5 * x.abs(), "{a:?} vs {b:?}");
    }
}

#[test]
fn a_rank_that_dies_stops_the_launch_with_an_error_naming_it() {
    let tmp = bin::TempDir::new("launch-dead");
    let port = free_port();
    let t0 = Instant::now();
    let out = ela()
        .env("ELA_DIST_TIMEOUT_S", "60")
        .args(["launch", "--nproc", "2", "--master-port", &port, "--"])
        .args(TRAIN)
        .args(["--out", tmp.0.join("run").to_str().unwrap(), "--abort-after", "2", "--abort-rank", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    // Either the launcher saw rank 1's abort first, or rank 0's failed collective ("rank 1
    // closed the connection"); both name rank 1, and neither waits for the 60 s timeout.
    assert!(stderr.contains("rank 1 (local rank 1)"), "the launcher names the rank that died: {stderr}");
    assert!(stderr.contains("launch (distributed)"), "{stderr}");
    assert!(t0.elapsed() < Duration::from_secs(30), "took {:?}", t0.elapsed());
}

#[test]
fn a_rank_alone_fails_at_the_rendezvous_timeout() {
    let tmp = bin::TempDir::new("launch-alone");
    let t0 = Instant::now();
    let out = ela()
        .envs([
            ("WORLD_SIZE", "2"),
            ("RANK", "0"),
            ("LOCAL_RANK", "0"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", &free_port()),
            ("ELA_RENDEZVOUS_TIMEOUT_S", "1"),
        ])
        .args(TRAIN)
        .args(["--out", tmp.0.join("run").to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("missing rank(s) [1]"), "{stderr}");
    assert!(t0.elapsed() < Duration::from_secs(20));
}

#[test]
fn launch_arguments_are_checked() {
    let out =
        ela().args(["launch", "--nproc", "2", "--nnodes", "2", "--node-rank", "2", "--", "train"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--node-rank 2 is not a node of --nnodes 2"));
    let out = ela().args(["launch", "--nproc", "2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "the command after -- is required");
}

#[test]
fn each_process_gets_torchruns_variables_and_nvls_off_unless_set() {
    use ela_models::dist::LaunchPlan;
    let plan = LaunchPlan { nproc: 4, nnodes: 2, node_rank: 1, master_addr: "node0".into(), master_port: 29500 };
    let env: std::collections::HashMap<String, String> = plan.env_of(2, false).into_iter().collect();
    for (k, v) in [
        ("RANK", "6"),
        ("LOCAL_RANK", "2"),
        ("WORLD_SIZE", "8"),
        ("LOCAL_WORLD_SIZE", "4"),
        ("GROUP_RANK", "1"),
        ("MASTER_ADDR", "node0"),
        ("MASTER_PORT", "29500"),
        ("NCCL_NVLS_ENABLE", "0"),
    ] {
        assert_eq!(env.get(k).map(String::as_str), Some(v), "{k}");
    }
    let user_set = plan.env_of(0, true);
    assert!(user_set.iter().all(|(k, _)| k != "NCCL_NVLS_ENABLE"), "the user's own setting is kept");
}
