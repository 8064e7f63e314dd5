//! Fault injection on a run folder, through the `ela` binary: two runs on one folder, a full
//! disk under the metrics log, and a folder that cannot be written. Each ends in a one-line
//! error (exit 1) naming the cause; none corrupts what was saved. (Kills during checkpoint and
//! metrics writes are in train_resume.rs and detect_cli.rs.)

mod bin;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The tiny run of `bin::TINY_TRAIN`, checkpointing at every step.
fn tiny() -> Vec<&'static str> {
    [bin::TINY_TRAIN, &["--checkpoint-every", "1"]].concat()
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ela-faults-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn ela(args: &[&str]) -> Output {
    Command::new(bin::ela_exe()).args(args).output().unwrap()
}

fn one_line_error(o: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{err}");
    for n in needles {
        assert!(last.contains(n), "{last:?} should mention {n:?}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

fn train(out: &Path, steps: &str, extra: &[&str]) -> Output {
    ela(&[&tiny()[..], &["--steps", steps, "--out", out.to_str().unwrap()], extra].concat())
}

#[test]
fn a_second_run_on_a_busy_folder_fails_naming_the_holder() {
    let dir = tmp("busy");
    let mut first = Command::new(bin::ela_exe())
        .args(
            [&tiny()[..], &["--steps", "1000000", "--eval-every", "1000000", "--out", dir.to_str().unwrap()]].concat(),
        )
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // The lock file holds the owner's pid once the lock is taken.
    let pid = first.id().to_string();
    let t0 = Instant::now();
    while std::fs::read_to_string(dir.join(".lock")).unwrap_or_default() != pid {
        assert!(t0.elapsed() < Duration::from_secs(60), "the first run never took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    one_line_error(&train(&dir, "2", &[]), &["in use by", &pid]);
    // A resume is refused too (once there is a checkpoint to resume from).
    while !dir.join("checkpoint.safetensors").exists() {
        assert!(t0.elapsed() < Duration::from_secs(120), "the first run never saved");
        std::thread::sleep(Duration::from_millis(20));
    }
    one_line_error(&ela(&["train", "--resume", "--out", dir.to_str().unwrap()]), &["in use by", &pid]);
    first.kill().unwrap();
    first.wait().unwrap();
    // Killed, it holds nothing: the kernel dropped the lock with the process.
    let o = train(&dir, "2", &[]);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("in use by"), "{}", String::from_utf8_lossy(&o.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_under_the_metrics_log_is_an_error_and_the_checkpoint_survives() {
    let dir = tmp("full");
    // Killed after step 2 of 4, so a resume has steps to run (and records to write).
    let o = train(&dir, "4", &["--abort-after", "2"]);
    assert!(!o.status.success());
    let ckpt = std::fs::read(dir.join("checkpoint.safetensors")).unwrap();
    // Every write to the log now fails with ENOSPC, as on a full disk.
    std::fs::remove_file(dir.join("metrics.jsonl")).unwrap();
    std::os::unix::fs::symlink("/dev/full", dir.join("metrics.jsonl")).unwrap();
    let o = ela(&["train", "--resume", "--out", dir.to_str().unwrap()]);
    one_line_error(&o, &["metrics.jsonl", "No space left"]);
    assert_eq!(std::fs::read(dir.join("checkpoint.safetensors")).unwrap(), ckpt, "the checkpoint changed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_folder_that_cannot_be_written_is_an_error() {
    let dir = tmp("ro");
    std::fs::create_dir_all(&dir).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    // root ignores permissions; /proc refuses new entries to everyone.
    let writable = std::fs::write(dir.join("probe"), b"").is_ok();
    let target = if writable { PathBuf::from("/proc/ela-read-only-test/run") } else { dir.join("run") };
    let o = train(&target, "1", &[]);
    one_line_error(&o, &[target.parent().unwrap().to_str().unwrap()]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A run that diverges (a learning rate of 1e30 blows the weights up in its first step) stops at
/// the first non-finite gradient norm with a one-line error; with `--skip-nonfinite` it skips
/// every such step and finishes.
#[test]
fn a_diverging_run_stops_or_skips_at_non_finite_gradient_norms() {
    let dir = tmp("diverge");
    let diverge = ["--lr", "1e30"];
    one_line_error(&train(&dir, "4", &diverge), &["step 2", "gradient norm is NaN", "--skip-nonfinite"]);
    let _ = std::fs::remove_dir_all(&dir);
    let o = train(&dir, "4", &[&diverge[..], &["--skip-nonfinite"]].concat());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    for step in 2..=4 {
        assert!(err.contains(&format!("step {step}: gradient norm NaN; the update was skipped")), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
