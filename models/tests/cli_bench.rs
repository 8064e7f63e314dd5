//! `ela bench ela` and `ela bench decode` run end to end at tiny sizes and print their tables
//! (and the plot). No timing is asserted: only that every cell that should be measured is.

mod bin;

use std::process::{Command, Output};

fn ela(args: &[&str]) -> Output {
    Command::new(bin::ela_exe()).args(args).output().unwrap()
}

/// The data rows of the first markdown table in `out`, split into trimmed cells.
fn table_rows(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .filter(|l| l.starts_with("| ") && l.chars().nth(2).is_some_and(|c| c.is_ascii_digit()))
        .map(|l| l.trim_matches('|').split('|').map(|c| c.trim().to_string()).collect())
        .collect()
}

#[test]
fn bench_ela_prints_the_table_and_the_plot() {
    let svg = std::env::temp_dir().join(format!("ela-bench-{}.svg", std::process::id()));
    let svg_arg = svg.display().to_string();
    let o = ela(&["bench", "ela", "--times", "64,128", "--reps", "1", "--quadratic-max-t", "64", "--svg", &svg_arg]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("| T | ELA fwd | ELA fwd+bwd | quadratic fwd |") && out.contains("machine: "), "{out}");
    let rows = table_rows(&out);
    assert_eq!(rows.len(), 2, "{out}");
    for (row, t) in rows.iter().zip(["64", "128"]) {
        assert_eq!(row[0], t);
        assert_eq!(row.len(), 7, "no JAX columns without --jax: {row:?}");
        for cell in &row[1..3] {
            assert!(cell.parse::<f64>().is_ok_and(|ms| ms >= 0.0), "ELA is measured at every T: {row:?}");
        }
    }
    // The quadratic methods stop at --quadratic-max-t.
    assert!(rows[0][3..].iter().all(|c| c.parse::<f64>().is_ok()), "{:?}", rows[0]);
    assert!(rows[1][3..].iter().all(|c| c == "-"), "{:?}", rows[1]);
    let plot = std::fs::read_to_string(&svg).unwrap();
    let _ = std::fs::remove_file(&svg);
    assert!(plot.starts_with("<svg") && plot.matches("<polyline fill=\"none\" stroke=\"#").count() == 6, "{plot}");
    assert!(plot.contains(">ELA-rs fwd<") && plot.contains("log2 T"));
}

#[test]
fn bench_decode_prints_latency_and_constant_ela_state() {
    const STEPS: usize = 2;
    let o = ela(&[
        "bench",
        "decode",
        "--contexts",
        "16,32,48",
        "--steps",
        "2",
        "--dim",
        "16",
        "--layers",
        "2",
        "--heads",
        "2",
        "--ffn-hidden",
        "16",
        "--softmax-max-context",
        "32",
        "--batch",
        "1,2",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains(
            "| batch | context | ELA ms/token | ELA graph ms/token | ELA fused ms/token | ELA state bytes | softmax ms/token |"
        ),
        "{out}"
    );
    let rows = table_rows(&out);
    assert_eq!(rows.len(), 6, "{out}");
    // ELA: the same state at every context (per row of the batch); softmax: a KV cache allocated
    // for the prompt and every timed step (N + steps + 1 positions) of 2 * layers * dim f32 each
    // per row. No graph column on the CPU.
    let bytes = |c: &str| c.split_whitespace().next().unwrap().parse::<usize>().unwrap();
    let cases = [1usize, 2].into_iter().flat_map(|b| [16usize, 32, 48].map(move |n| (b, n)));
    for (row, (b, n)) in rows.iter().zip(cases) {
        assert_eq!((row[0].clone(), row[1].clone()), (b.to_string(), n.to_string()));
        assert!(row[2].parse::<f64>().is_ok(), "{row:?}");
        assert_eq!((row[3].as_str(), row[4].as_str()), ("-", "-"), "{row:?}");
        assert_eq!(bytes(&row[5]), b * bytes(&rows[0][5]), "ELA state is constant in the context: {row:?}");
        if n <= 32 {
            assert_eq!(bytes(&row[7]), b * 2 * 2 * 16 * (n + STEPS + 1) * 4, "{row:?}");
        } else {
            assert_eq!((row[6].as_str(), row[7].as_str()), ("-", "-"), "softmax skipped above the limit: {row:?}");
        }
    }
    assert!(out.contains("softmax skipped above N = 32"), "{out}");
}

#[test]
fn bench_errors_are_one_line() {
    for args in [
        &["bench", "ela", "--times", "64,abc"][..],
        &["bench", "ela", "--times", "100", "--jax"][..],
        &["bench", "decode", "--steps", "0"][..],
        &["bench", "decode", "--heads", "3"][..],
        &["bench", "decode", "--graph"][..],
        &["bench", "decode", "--fused"][..],
        &["bench", "decode", "--batch", "0"][..],
    ] {
        let o = ela(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?}");
    }
}
