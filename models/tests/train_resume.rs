//! Resuming a run reproduces the uninterrupted run's loss sequence exactly: in process, and
//! after the process is killed mid-run (simulated by `--abort-after`, which aborts without any
//! cleanup, like SIGKILL).

mod bin;

use std::path::Path;
use std::process::Command;

fn ela() -> Command {
    Command::new(bin::ela_exe())
}

const TINY: &[&str] = &[
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
    "2",
    "--top-k",
    "1",
    "--steps",
    "12",
    "--batch",
    "2",
    "--seq",
    "16",
    "--warmup",
    "2",
    "--eval-every",
    "6",
    "--eval-windows",
    "4",
    "--checkpoint-every",
    "4",
    "--sample-len",
    "8",
];

/// `(step, loss)` of every record, in file order.
fn losses(dir: &Path) -> Vec<(u64, String)> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let field = |k: &str| {
                let at = l.find(&format!("\"{k}\":")).unwrap() + k.len() + 3;
                l[at..].split([',', '}']).next().unwrap().to_string()
            };
            (field("step").parse().unwrap(), field("loss"))
        })
        .collect()
}

fn run(args: &[&str]) -> std::process::Output {
    ela().args(args).output().unwrap()
}

#[test]
fn killed_run_resumes_to_the_same_losses() {
    let tmp = std::env::temp_dir().join(format!("ela-resume-{}", std::process::id()));
    let (full, cut) = (tmp.join("full"), tmp.join("cut"));
    let _ = std::fs::remove_dir_all(&tmp);

    let out = run(&[TINY, &["--out", full.to_str().unwrap()]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reference = losses(&full);
    assert_eq!(reference.len(), 12);

    // Killed after step 6: the last checkpoint is from step 4, and steps 5-6 were logged.
    let out = run(&[TINY, &["--out", cut.to_str().unwrap(), "--abort-after", "6"]].concat());
    assert!(!out.status.success(), "the run should have been aborted");
    let before = losses(&cut);
    assert_eq!(before.len(), 6);

    // A fresh run into the same folder refuses to overwrite it.
    let out = run(&[TINY, &["--out", cut.to_str().unwrap()]].concat());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));

    // What else a kill can leave: a record cut mid-line and the temporary file of a save that
    // never reached its rename. The resume removes both.
    let mut log = std::fs::OpenOptions::new().append(true).open(cut.join("metrics.jsonl")).unwrap();
    std::io::Write::write_all(&mut log, b"{\"step\":7,\"loss\":4.1").unwrap();
    drop(log);
    let stale = cut.join(".checkpoint.safetensors.tmp-999999-0");
    std::fs::write(&stale, vec![0u8; 4096]).unwrap();

    let out = run(&["train", "--resume", "--out", cut.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("removed a torn last record") && err.contains("removed 1 temporary file"), "{err}");
    assert!(!stale.exists());
    for line in std::fs::read_to_string(cut.join("metrics.jsonl")).unwrap().lines() {
        assert!(serde_json::from_str::<serde_json::Value>(line).is_ok(), "invalid JSONL line {line:?}");
    }
    let after = losses(&cut);
    // Steps 5 and 6 appear twice (before the kill and after resuming from step 4); every record
    // of a step must carry exactly the uninterrupted run's loss, as text, bit for bit.
    assert_eq!(after.len(), 6 + 8);
    for (step, loss) in &after {
        assert_eq!(loss, &reference[*step as usize - 1].1, "step {step}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A mixed-precision run resumes like an f32 one: `--resume` (without `--precision`) continues
/// in bf16 from the saved run settings, with the uninterrupted run's losses bit for bit, and the
/// checkpoint holds f32 master weights.
#[test]
fn killed_bf16_run_resumes_to_the_same_losses() {
    let tmp = bin::TempDir::new("resume-bf16");
    let (full, cut) = (tmp.0.join("full"), tmp.0.join("cut"));
    // TINY with 8 steps instead of 12.
    let bf16: Vec<&str> =
        TINY.iter().map(|a| if *a == "12" { "8" } else { a }).chain(["--precision", "bf16"]).collect();
    let out = run(&[&bf16[..], &["--out", full.to_str().unwrap()]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bf16 precision"));
    let reference = losses(&full);
    // Killed after step 6: the checkpoint is from step 4.
    let out = run(&[&bf16[..], &["--out", cut.to_str().unwrap(), "--abort-after", "6"]].concat());
    assert!(!out.status.success(), "the run should have been aborted");
    let ck = ela_nn::checkpoint::load(cut.join("checkpoint.safetensors"), &ela_core::Cpu).unwrap();
    assert_eq!(ck.metadata.get("run.precision").map(String::as_str), Some("bf16"));
    for (name, t) in ck.tensors.iter().filter(|(n, _)| n.starts_with("model.")) {
        assert_eq!(t.dtype(), ela_core::DType::F32, "{name}: the checkpoint must hold the f32 master weights");
    }
    let out = run(&["train", "--resume", "--out", cut.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after = losses(&cut);
    assert_eq!(after.len(), 6 + 4);
    for (step, loss) in &after {
        assert_eq!(loss, &reference[*step as usize - 1].1, "step {step}");
    }
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let cases: &[&[&str]] = &[
        &["train", "--steps", "abc"],
        &["train", "--attention", "magic"],
        &["train", "--precision", "f16"],
        &["train", "--kernel", "nope"],
        &["train", "--data", "/definitely/not/here.txt", "--out", "/tmp/ela-never"],
        &["train", "--heads", "3"],
        &["generate", "--checkpoint", "/definitely/not/here"],
        &["train", "--resume", "--out", "/definitely/not/here"],
        &["frobnicate"],
        // Values that parse but would train silently wrong.
        &["train", "--clip", "nan", "--out", "/tmp/ela-never"],
        &["train", "--clip", "-1", "--out", "/tmp/ela-never"],
        &["train", "--eval-windows", "0", "--out", "/tmp/ela-never"],
        &["train", "--loss-free-gamma", "nan", "--out", "/tmp/ela-never"],
        &["train", "--loss-free-gamma", "-1", "--out", "/tmp/ela-never"],
        &["train", "--aux-alpha", "nan", "--out", "/tmp/ela-never"],
        &["train", "--weight-decay", "inf", "--out", "/tmp/ela-never"],
        &["train", "--warmup", "500", "--steps", "10", "--out", "/tmp/ela-never"],
    ];
    for args in cases {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?} printed more than one line: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // A refused run leaves no folder behind (not even one holding only its lock).
    assert!(!Path::new("/tmp/ela-never").exists());
}

#[test]
fn bidirectional_lobe_warns_and_skips_sampling() {
    let dir = std::env::temp_dir().join(format!("ela-bidir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = run(&[TINY, &["--lobe", "bidirectional", "--out", dir.to_str().unwrap()]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: --lobe bidirectional"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("cannot decode left to right"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rerunning the same command without `--out` starts a new run beside the first (runs/ela-small,
/// then runs/ela-small-2) instead of refusing; `--resume` without `--out` continues the newest.
#[test]
fn rerun_without_out_takes_the_next_free_folder() {
    let cwd = std::env::temp_dir().join(format!("ela-rerun-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cwd);
    std::fs::create_dir_all(&cwd).unwrap();
    // TINY with 2 steps instead of 12.
    let short: Vec<&str> = TINY.iter().map(|a| if *a == "12" { "2" } else { a }).collect();
    for want in ["runs/ela-small", "runs/ela-small-2"] {
        let out = ela().args(&short).current_dir(&cwd).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("run folder: {want}")), "expected {want}: {err}");
        assert!(cwd.join(want).join("checkpoint.safetensors").exists());
    }
    let out = ela().args(["train", "--resume"]).current_dir(&cwd).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("run folder: runs/ela-small-2"));
    std::fs::remove_dir_all(&cwd).unwrap();
}

/// A Latin-1 `--data` file is trained on byte for byte (not re-encoded through a lossy UTF-8
/// decode, which grows every byte >= 0x80 into three), and a path that is not valid Unicode is
/// saved exactly, so `--resume` finds the file again.
#[cfg(unix)]
#[test]
fn non_utf8_data_and_path_are_kept_as_bytes() {
    use std::os::unix::ffi::OsStrExt;
    let dir = std::env::temp_dir().join(format!("ela-latin1-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // "caf\xe9 " repeated: invalid UTF-8 in the content and in the file name.
    let text: Vec<u8> = b"caf\xe9 cr\xe8me br\xfbl\xe9e, ".iter().copied().cycle().take(3000).collect();
    let data = dir.join(std::ffi::OsStr::from_bytes(b"donn\xe9es.txt"));
    std::fs::write(&data, &text).unwrap();
    let run_dir = dir.join("run");
    // 8 steps, killed after 6 (the checkpoint is from step 4).
    let short: Vec<&str> = TINY.iter().map(|a| if *a == "12" { "8" } else { a }).collect();
    let mut cmd = ela();
    cmd.args(&short).arg("--data").arg(&data).args(["--out", run_dir.to_str().unwrap(), "--abort-after", "6"]);
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // 10% validation: 2700 + 300 bytes, exactly the file's 3000.
    assert!(err.contains("data: 2700 train / 300 validation bytes"), "{err}");
    let out = run(&["train", "--resume", "--out", run_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(losses(&run_dir).last().unwrap().0, 8);
    let _ = std::fs::remove_dir_all(&dir);
}
