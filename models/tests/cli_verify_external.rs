//! `ela verify --external` against fixtures written by independent JAX implementations
//! (benches/peers/verify_external_fixture.py): exact ones pass, a naive overflowing one, softmax
//! attention and elu+1 linear attention offered as ELA fail with exit 1, and malformed files get
//! one-line errors. The library call behind it is checked on the same files.

mod bin;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ela_core::{Cpu, DType, ElaKernel, Tensor};
use ela_models::external::{verify_external, ExternalOptions, Layout};
use ela_nn::checkpoint::{self, Metadata};
use ela_nn::module::StateDict;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/verify_external").join(format!("{name}.safetensors"))
}

fn verify(file: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let o: Output = Command::new(bin::ela_exe()).arg("verify").arg("--external").arg(file).args(args).output().unwrap();
    (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn exact_implementations_pass() {
    for (name, args) in [
        ("exact_f64_bhtd", &[][..]),
        ("exact_f32_bthd", &["--layout", "bthd", "--causal", "false"][..]),
        ("stable_f32_large", &[][..]),
    ] {
        let (code, out, err) = verify(&fixture(name), args);
        assert_eq!(code, Some(0), "{name}: {out}\n{err}");
        for t in ["y", "dq", "dk", "dv"] {
            assert!(out.contains(&format!("| {t} |")), "{name}: {t} missing:\n{out}");
        }
        assert!(out.contains("PASS: 4 tensors") && !out.contains("FAIL"), "{name}: {out}");
    }
    let (code, out, _) = verify(&fixture("exact_y_only_f32"), &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("no dy in the file: gradients not checked") && out.contains("PASS: 1 tensor "), "{out}");
}

#[test]
fn inexact_implementations_fail_with_exit_1() {
    for name in ["naive_f32_large", "softmax_f64", "elu1_f64"] {
        let (code, out, err) = verify(&fixture(name), &[]);
        assert_eq!(code, Some(1), "{name}: {out}\n{err}");
        assert!(out.contains("FAIL: 4 of 4 tensors"), "{name}: {out}");
        assert_eq!(err.lines().count(), 1, "{name}: one-line error: {err}");
    }
    // The overflowing implementation is reported by its non-finite values, not only its error.
    let (_, out, _) = verify(&fixture("naive_f32_large"), &[]);
    let y = out.lines().find(|l| l.starts_with("| y |")).unwrap();
    assert!(y.contains("inf/NaN") && !y.contains("| 0 |"), "{y}");
    // The wrong settings make an exact file fail: the check is not vacuous.
    let (code, out, _) = verify(&fixture("exact_f64_bhtd"), &["--causal", "false"]);
    assert_eq!(code, Some(1), "{out}");
    let (code, out, _) = verify(&fixture("exact_f32_bthd"), &["--causal", "false"]);
    assert_eq!(code, Some(1), "layout bhtd read as bthd: {out}");
}

#[test]
fn tolerances_can_be_set() {
    // elu+1's y differs by ~0.19 (relative): a tolerance of 0.5 accepts it, 1e-3 does not.
    let (code, out, _) = verify(&fixture("elu1_f64"), &["--tol", "0.5", "--grad-tol", "0.5"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, _, err) = verify(&fixture("elu1_f64"), &["--tol", "nan"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--tol must be finite"), "{err}");
}

#[test]
fn the_library_call_reports_worst_positions_in_the_file_order() {
    let opts = |layout, causal| ExternalOptions {
        kernel: ElaKernel::HadamardExp,
        causal,
        layout,
        tol_y: None,
        tol_grad: None,
        max_reference_gib: 1.0,
    };
    let r = verify_external(&fixture("exact_f32_bthd"), &opts(Layout::Bthd, false)).unwrap();
    assert!(r.passed());
    assert_eq!(r.dims, [1, 2, 24, 8]);
    assert_eq!(r.dv, 4);
    for c in &r.checks {
        let bound = if c.name == "dq" || c.name == "dk" { [1, 24, 2, 8] } else { [1, 24, 2, 4] };
        assert!(c.worst.iter().zip(bound).all(|(i, n)| *i < n), "{}: {:?} in bthd {bound:?}", c.name, c.worst);
        assert_eq!(c.dtype, DType::F32);
    }
    let r = verify_external(&fixture("softmax_f64"), &opts(Layout::Bhtd, true)).unwrap();
    assert!(!r.passed() && r.checks.iter().all(|c| !c.passed()));
}

/// Writes `tensors` (name, shape, values) as f32 to a fresh file and returns its path.
fn write(dir: &Path, name: &str, tensors: &[(&str, Vec<usize>)]) -> PathBuf {
    let mut sd = StateDict::new();
    for (n, shape) in tensors {
        let len = shape.iter().product();
        let t = Tensor::from_vec((0..len).map(|i| (i % 7) as f64 * 0.1).collect::<Vec<_>>(), shape.clone(), &Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        sd.insert(n.to_string(), t);
    }
    let path = dir.join(name);
    checkpoint::save(&path, &sd, &Metadata::new()).unwrap();
    path
}

#[test]
fn malformed_files_get_one_line_errors() {
    let tmp = bin::TempDir::new("verify-external");
    let dir = tmp.0.clone();
    let qk = vec![1, 2, 5, 3];
    let vy = vec![1, 2, 5, 2];
    // (file name, tensors written, what the error must say)
    type Case<'a> = (&'a str, Vec<(&'a str, Vec<usize>)>, &'a str);
    let cases: Vec<Case> = vec![
        ("no_v", vec![("q", qk.clone()), ("k", qk.clone()), ("y", vy.clone())], "no tensor named \"v\""),
        (
            "bad_k",
            vec![("q", qk.clone()), ("k", vec![1, 2, 6, 3]), ("v", vy.clone()), ("y", vy.clone())],
            "k has shape [1, 2, 6, 3], expected [1, 2, 5, 3]",
        ),
        (
            "grads_without_dy",
            vec![("q", qk.clone()), ("k", qk.clone()), ("v", vy.clone()), ("y", vy.clone()), ("dq", qk.clone())],
            "but no dy",
        ),
        ("rank3", vec![("q", vec![2, 5, 3]), ("k", qk.clone()), ("v", vy.clone()), ("y", vy.clone())], "4 axes"),
        (
            "empty",
            vec![("q", vec![1, 2, 0, 3]), ("k", vec![1, 2, 0, 3]), ("v", vec![1, 2, 0, 2]), ("y", vec![1, 2, 0, 2])],
            "empty",
        ),
    ];
    for (name, tensors, want) in cases {
        let path = write(&dir, &format!("{name}.safetensors"), &tensors);
        let (code, out, err) = verify(&path, &[]);
        assert_eq!(code, Some(1), "{name}: {out}\n{err}");
        assert!(err.contains(want) && err.lines().count() == 1, "{name}: {err}");
    }
    let (code, _, err) = verify(&dir.join("missing.safetensors"), &[]);
    assert_eq!(code, Some(1));
    assert_eq!(err.lines().count(), 1, "{err}");
    // Options that only make sense for random inputs are refused beside --external.
    let (code, _, err) = verify(&fixture("exact_f64_bhtd"), &["--time", "8"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
}
