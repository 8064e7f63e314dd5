//! A full stdout or stderr (`ela info > /dev/full`) is a one-line error and exit code 1, never
//! a panic (exit code 101) from `println!`.

mod bin;

use std::process::{Command, Output, Stdio};

#[cfg(target_os = "linux")]
fn full() -> Stdio {
    Stdio::from(std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap())
}

#[cfg(target_os = "linux")]
fn run(args: &[&str], stdout_full: bool) -> Output {
    let mut c = Command::new(bin::ela_exe());
    c.args(args);
    if stdout_full {
        c.stdout(full());
    } else {
        c.stderr(full());
    }
    c.output().unwrap()
}

#[cfg(target_os = "linux")]
#[test]
fn a_full_stdout_is_an_error_for_every_command_that_prints() {
    let dir = std::env::temp_dir().join(format!("ela-streams-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let tiny = [bin::TINY_TRAIN, &["--steps", "1"]].concat();
    let out = dir.join("run");
    let train: Vec<&str> = tiny.iter().copied().chain(["--out", out.to_str().unwrap()]).collect();
    let cases: Vec<Vec<&str>> = vec![
        vec!["info"],
        vec!["info", "--model", "yolo-lat"],
        vec!["--help"],
        vec!["verify", "--time", "9", "--dim", "4", "--dv", "2", "--heads", "1", "--chunk", "4"],
        // Trains (1 step), saves, then fails on the report.
        train,
        vec!["generate", "--checkpoint", out.to_str().unwrap(), "--tokens", "4"],
    ];
    for args in &cases {
        let o = run(args, true);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("stdout") && err.contains("No space left"), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().last().map(|l| l.starts_with("error: ")), Some(true), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // The run saved its checkpoint before the report failed.
    assert!(out.join("checkpoint.safetensors").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(target_os = "linux")]
#[test]
fn a_full_stderr_ends_the_command_with_exit_1_not_a_panic() {
    let dir = std::env::temp_dir().join(format!("ela-streams-err-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = dir.join("run");
    // `train` writes its notices to stderr before training; a bad argument writes only there.
    for args in [
        vec!["train", "--steps", "1", "--out", out.to_str().unwrap()],
        vec!["train", "--steps", "abc"],
        vec!["info", "--model", "nope"],
    ] {
        let o = run(&args, false);
        assert!(matches!(o.status.code(), Some(1) | Some(2)), "{args:?}: {:?}", o.status);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
