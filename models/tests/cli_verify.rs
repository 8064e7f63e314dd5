//! `ela verify` as a user runs it: the table is printed, a correct implementation passes (exit
//! 0), and a planted error in the chunked output fails (exit 1) with a one-line error.

mod bin;

use std::process::{Command, Output};

fn verify(args: &[&str]) -> Output {
    let small = ["verify", "--batch", "1", "--heads", "2", "--time", "37", "--dim", "5", "--dv", "3", "--chunk", "8"];
    Command::new(bin::ela_exe()).args(small).args(args).output().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn every_kernel_passes_and_the_table_is_printed() {
    for dtype in ["f32", "f64"] {
        let o = verify(&["--dtype", dtype]);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(0), "{dtype}: {out}\n{err}");
        assert!(out.contains("| kernel | form | y abs | y rel | dq abs |"), "{out}");
        for kernel in ["hadamard-exp", "sum-sq-euclid", "sub-sq-euclid", "blueprint", "identity", "elu-plus-one"] {
            assert!(out.contains(&format!("| {kernel} | chunked |")), "{kernel} missing:\n{out}");
            assert!(out.contains(&format!("| {kernel} | recurrent |")), "{kernel} missing:\n{out}");
        }
        assert!(out.contains("PASS: all 30 errors within") && !out.contains("FAIL"), "{out}");
    }
}

#[test]
fn a_planted_error_fails_with_exit_1() {
    // 1e-3 of max |y| is far above the f32 tolerance (1e-5) and far below what would be visible
    // in a plot: exactly the kind of error the check exists to catch.
    let o = verify(&["--kernel", "hadamard-exp", "--plant-error", "1e-3"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(out.contains("| hadamard-exp | chunked |") && out.contains("FAIL"), "{out}");
    assert!(out.contains("| hadamard-exp | recurrent |"), "the unperturbed form is still reported:\n{out}");
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    assert!(err.contains("exceed the f32 tolerance"), "{err}");
}

#[test]
fn non_causal_skips_the_recurrent_form() {
    let o = verify(&["--causal", "false", "--dtype", "f64", "--kernel", "blueprint"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(out.contains("| blueprint | chunked |") && !out.contains("| blueprint | recurrent |"), "{out}");
    assert!(out.contains("recurrent form skipped"), "{out}");
}

#[test]
fn bad_arguments_are_one_line_errors() {
    for (args, code, needle) in [
        // Parsed by clap (the kernel travels as `ElaKernel`): an argument error, exit 2.
        (&["--kernel", "nope"][..], 2, "unknown ELA kernel \"nope\""),
        (&["--dtype", "u8"][..], 1, "dtype U8 is not supported"),
        (&["--scale", "0"][..], 1, "--scale must be positive"),
        (&["--inputs", "weird"][..], 1, "unknown --inputs"),
        (&["--causal", "maybe"][..], 2, "--causal"),
        (&["--max-reference-gib", "0.000001"][..], 1, "lower --time"),
        (&["--device", "tpu"][..], 1, "unknown device \"tpu\""),
    ] {
        let o = verify(args);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {out}\n{err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: nothing printed before the error, got {out}");
    }
}
