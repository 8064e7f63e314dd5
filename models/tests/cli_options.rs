//! Options that parse but would run silently wrong are refused with one line: numeric values
//! out of range or not finite, and flags given with `--resume` that contradict the saved run
//! (which would otherwise be ignored without a word).

mod bin;

use std::process::{Command, Output};

fn ela(args: &[&str]) -> Output {
    Command::new(bin::ela_exe()).args(args).output().unwrap()
}

fn one_line_error(o: &Output, args: &[&str], needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{args:?} should fail");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    assert!(err.starts_with("error: ") && err.contains(needle), "{args:?}: {err} should mention {needle:?}");
}

#[test]
fn out_of_range_numbers_are_refused() {
    for (args, needle) in [
        (vec!["demo", "--lr", "nan"], "--lr"),
        (vec!["demo", "--lr=-1"], "--lr"),
        // The gradient check needs 8 points of the first arm after its origin.
        (vec!["demo", "--points", "1"], "--points"),
        (vec!["demo", "--points", "8"], "--points"),
        (vec!["verify", "--max-reference-gib", "nan"], "--max-reference-gib"),
        (vec!["verify", "--max-reference-gib=-1"], "--max-reference-gib"),
        (vec!["verify", "--scale", "inf"], "--scale"),
        (vec!["generate", "--temperature", "nan", "--checkpoint", "/definitely/not/here"], "temperature"),
        (vec!["train", "--lr", "inf", "--out", "/tmp/ela-never-opt"], "--lr"),
        (vec!["train", "--min-lr", "nan", "--out", "/tmp/ela-never-opt"], "--min-lr"),
        (vec!["detect", "train", "--box-gain", "nan", "--out", "/tmp/ela-never-opt"], "--box-gain"),
    ] {
        one_line_error(&ela(&args), &args, needle);
    }
    assert!(!std::path::Path::new("/tmp/ela-never-opt").exists());
}

#[test]
fn resume_refuses_flags_that_contradict_the_saved_run() {
    let dir = std::env::temp_dir().join(format!("ela-resume-flags-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let tiny = [bin::TINY_TRAIN, &["--steps", "4", "--checkpoint-every", "2", "--out", d]].concat();
    let o = ela(&[&tiny[..], &["--abort-after", "3"]].concat());
    assert!(!o.status.success());
    for (flags, needle) in [
        (vec!["--lr", "0.1"], "--lr"),
        (vec!["--dim", "16"], "model.dim"),
        (vec!["--experts", "4"], "--experts"),
        (vec!["--steps", "100"], "run.steps"),
        (vec!["--attention", "softmax"], "model.attention"),
        (vec!["--precision", "bf16"], "run.precision"),
    ] {
        let args: Vec<&str> = ["train", "--resume", "--out", d].into_iter().chain(flags).collect();
        one_line_error(&ela(&args), &args, needle);
    }
    // The original command with --resume (equal values) and options that apply to the resumed
    // run itself (device, sample length) are fine.
    let o = ela(&[&tiny[..], &["--resume", "--device", "cpu"]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}
