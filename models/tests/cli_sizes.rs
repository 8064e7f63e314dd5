//! Sizes far beyond the machine are a one-line error within moments, for every command, before
//! anything is allocated or built: no abort (`memory allocation of N bytes failed`), no hang
//! while memory grows, no panic. Also a checkpoint whose stored configuration was changed.

mod bin;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ela_core::Cpu;
use ela_nn::checkpoint;

fn ela(args: &[&str]) -> (Output, Duration) {
    let t0 = Instant::now();
    let o = Command::new(bin::ela_exe()).args(args).output().unwrap();
    (o, t0.elapsed())
}

fn fails_fast(args: &[&str], needles: &[&str]) {
    let (o, took) = ela(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    assert!(err.starts_with("error: ") && !err.contains("panicked"), "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: {err} should mention {n:?}");
    }
    // Generous for a loaded debug build; the real figure is milliseconds.
    assert!(took < Duration::from_secs(20), "{args:?} took {took:?}");
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ela-sizes-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn impossible_sizes_are_refused_up_front() {
    let out = tmp("never");
    let o = out.to_str().unwrap();
    let needs = ["needs", "available"];
    for args in [
        vec!["train", "--batch", "100000000000", "--out", o],
        vec!["train", "--dim", "100000000", "--out", o],
        vec!["train", "--experts", "100000000", "--out", o],
        vec!["train", "--sample-len", "100000000000", "--out", o],
        vec!["train", "--layers", "100000000", "--out", o],
        vec!["demo", "--points", "100000000000"],
        vec!["bench", "ela", "--times", "1000000000"],
        vec!["bench", "decode", "--contexts", "10000000000"],
        vec!["verify", "--dim", "100000000", "--time", "4"],
        vec!["detect", "train", "--batch", "100000000", "--out", o],
    ] {
        fails_fast(&args, &needs);
    }
    assert!(!out.exists(), "a refused run created its folder");
}

#[test]
fn info_counts_any_size_without_building_the_model() {
    for args in [
        vec!["info", "--dim", "65536", "--ffn-hidden", "65536", "--experts", "100000"],
        vec!["info", "--dim", "1000000", "--layers", "1000000"],
    ] {
        let (o, took) = ela(&args);
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stdout).contains("total"));
        assert!(took < Duration::from_secs(20), "{args:?} took {took:?}");
    }
    // 4 d^2 L overflows 64 bits: an error, not a wrapped count.
    fails_fast(&["info", "--dim", "1099511627776", "--layers", "1048576", "--heads", "1"], &["overflows"]);
}

/// A tiny trained run to tamper with.
fn tiny_run(dir: &Path) {
    let (o, _) = ela(&[bin::TINY_TRAIN, &["--steps", "1", "--out", dir.to_str().unwrap()]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_checkpoint_whose_stored_config_was_changed_fails_before_building() {
    let dir = tmp("stored");
    tiny_run(&dir);
    let path = dir.join("checkpoint.safetensors");
    let ck = checkpoint::load_verified(&path, &Cpu).unwrap();
    for (key, value) in [("model.dim", "100000000"), ("model.vocab", "10000000000"), ("model.layers", "1000000000")] {
        // Rewritten with a valid checksum: only the size check stands between it and an abort.
        let mut meta = ck.metadata.clone();
        meta.insert(key.into(), value.into());
        checkpoint::save(&path, &ck.tensors, &meta).unwrap();
        let d = dir.to_str().unwrap();
        fails_fast(&["generate", "--checkpoint", d, "--tokens", "4"], &["needs"]);
        fails_fast(&["train", "--resume", "--out", d], &["needs"]);

        // The same file with its checksum entry blanked out is damage, whatever it says.
        let mut bytes = checkpoint::serialize(&ck.tensors, &meta).unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let at = text.find("\"ela.checksum\"").unwrap();
        let end = at + text[at..].find(',').unwrap() + 1;
        bytes[at..end].fill(b' ');
        std::fs::write(&path, &bytes).unwrap();
        fails_fast(&["generate", "--checkpoint", d], &["checksum"]);
        fails_fast(&["train", "--resume", "--out", d], &["checksum"]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn generate_past_the_rotary_length_fails_before_the_work() {
    let dir = tmp("rope");
    let (o, _) = ela(&[bin::TINY_TRAIN, &["--steps", "1", "--rope", "16", "--out", dir.to_str().unwrap()]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let d = dir.to_str().unwrap();
    fails_fast(&["generate", "--checkpoint", d, "--prompt", "the ", "--tokens", "100"], &["rotary", "at most 13"]);
    let (o, _) = ela(&["generate", "--checkpoint", d, "--prompt", "the ", "--tokens", "13"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    fails_fast(&["generate", "--checkpoint", d, "--tokens", "18446744073709551615"], &["--tokens"]);
    fails_fast(&["train", "--rope", "16", "--sample-len", "100", "--out", d], &["--sample-len", "rotary"]);
    let _ = std::fs::remove_dir_all(&dir);
}
