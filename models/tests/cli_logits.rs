//! `ela logits`: the saved ids are the text's bytes and the saved logits are exactly what the
//! library's forward pass gives for the same checkpoint; bad input is a one-line error.

mod bin;

use std::process::Command;

use ela_autograd::no_grad;
use ela_core::{Cpu, CpuStorage, DType, Tensor};
use ela_models::cli::generate::load_model;
use ela_nn::checkpoint;

fn ela(args: &[&str]) -> (Option<i32>, String, String) {
    let o = Command::new(bin::ela_exe()).args(args).output().unwrap();
    (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn logits_equal_the_library_forward() {
    let dir = bin::TempDir::new("logits");
    let run = dir.0.join("run");
    let run_s = run.to_str().unwrap();
    let mut train: Vec<&str> = bin::TINY_TRAIN.to_vec();
    train.extend(["--steps", "2", "--out", run_s]);
    let (code, _, err) = ela(&train);
    assert_eq!(code, Some(0), "{err}");

    let out = dir.0.join("logits.safetensors");
    let text = "ab\u{e9}c";
    let (code, stdout, err) = ela(&["logits", "--checkpoint", run_s, "--text", text, "--out", out.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(stdout.contains("logits [1, 5, 256]"), "{stdout}");

    let saved = checkpoint::load(&out, &Cpu).unwrap();
    let ids = &saved.tensors["ids"];
    assert_eq!(ids.dims(), [1, 5]);
    assert_eq!(ids.to_vec::<u32>().unwrap(), text.bytes().map(u32::from).collect::<Vec<_>>());
    let logits = &saved.tensors["logits"];
    assert_eq!((logits.dims(), logits.dtype()), (&[1, 5, 256][..], DType::F32));

    let model = load_model(&run, &Cpu).unwrap();
    let ids_t = Tensor::from_cpu_storage(&CpuStorage::U32(ids.to_vec::<u32>().unwrap()), [1, 5], &Cpu).unwrap();
    let want = no_grad(|| model.forward(&ids_t).map(|o| o.logits.value())).unwrap();
    assert_eq!(logits.to_vec::<f32>().unwrap(), want.to_vec::<f32>().unwrap());
}

#[test]
fn bad_input_is_one_line_error() {
    let dir = bin::TempDir::new("logits-bad");
    let out = dir.0.join("x.safetensors");
    let out_s = out.to_str().unwrap();
    let missing = dir.0.join("no-such-run");
    for args in [
        vec!["logits", "--checkpoint", missing.to_str().unwrap(), "--text", "abc", "--out", out_s],
        vec!["logits", "--checkpoint", missing.to_str().unwrap(), "--text", "", "--out", out_s],
    ] {
        let (code, _, err) = ela(&args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(!out.exists());
    }
}
