//! CPU elementwise / reduction benchmark at the YOLO-LAT detector's training shapes
//! (`--img 160 --batch 16`): broadcast binary ops, unary maps, reductions, broadcast copies; and
//! the language model's row ops at its training shapes (the README model: 16 x 128 tokens of width
//! 128, SwiGLU hidden 256): RMS norm and SwiGLU, forward and backward.
//!
//! Run: `cargo bench -p ela-core --bench elementwise` (prints a markdown table: best time of
//! several runs, and throughput in output elements per nanosecond). Extra arguments (after `--`)
//! keep only the rows whose label contains one of them. `ELEMENTWISE_BENCH_QUICK=1` shortens it.
//! The backend functions are called directly (no tensor or autograd overhead).

use std::hint::black_box;
use std::time::{Duration, Instant};

use ela_core::cpu::elementwise::{binary, copy_contiguous, unary};
use ela_core::cpu::nn::{rms_norm, rms_norm_backward, swiglu, swiglu_backward};
use ela_core::cpu::reduce::reduce;
use ela_core::cpu::CpuStorage;
use ela_core::{BinaryOp, Layout, ReduceOp, Shape, UnaryOp};

/// Deterministic values in [-1, 1).
fn fill(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn store(dims: &[usize], seed: u64) -> (CpuStorage, Layout) {
    let l = Layout::contiguous(dims.to_vec());
    (CpuStorage::F32(fill(l.elem_count(), seed)), l)
}

fn best_of(budget: Duration, mut f: impl FnMut()) -> Duration {
    f();
    let start = Instant::now();
    let mut best = Duration::MAX;
    let mut runs = 0;
    while runs < 5 || (start.elapsed() < budget && runs < 2000) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
        runs += 1;
    }
    best
}

fn main() {
    let quick = std::env::var("ELEMENTWISE_BENCH_QUICK").is_ok();
    let budget = Duration::from_millis(if quick { 150 } else { 600 });
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let keep = |label: &str| filters.is_empty() || filters.iter().any(|f| label.contains(f.as_str()));
    let threads = rayon::current_num_threads();
    println!("threads: {threads}\n");
    println!("| op | shape | best (us) | elems/ns |");
    println!("|---|---|---:|---:|");
    let row = |label: &str, shape: &str, n: usize, f: &mut dyn FnMut()| {
        if !keep(label) {
            return;
        }
        let t = best_of(budget, f);
        let us = t.as_secs_f64() * 1e6;
        println!("| {label} | {shape} | {us:.1} | {:.2} |", n as f64 / (us * 1e3));
    };

    // Binary: per-channel broadcast (BatchNorm scale / shift), same shape.
    for (op, name) in [(BinaryOp::Mul, "mul"), (BinaryOp::Sub, "sub")] {
        let (a, la) = store(&[16, 16, 80, 80], 1);
        let (b, lb) = store(&[1, 16, 1, 1], 2);
        let lb = lb.broadcast_as(la.shape(), "bench").unwrap();
        row(&format!("{name} per-channel"), "[16,16,80,80] op [1,16,1,1]", la.elem_count(), &mut || {
            black_box(binary(op, &a, &la, &b, &lb).unwrap());
        });
    }
    for dims in [[16, 128, 10, 10], [16, 32, 40, 40]] {
        let (a, la) = store(&dims, 3);
        let (b, lb) = store(&dims, 4);
        row("add same-shape", &format!("{dims:?}"), la.elem_count(), &mut || {
            black_box(binary(BinaryOp::Add, &a, &la, &b, &lb).unwrap());
        });
    }
    {
        // A transposed operand: [16,32,40,40] + permuted view.
        let (a, la) = store(&[16, 32, 40, 40], 5);
        let (b, lb0) = store(&[16, 32, 40, 40], 6);
        let lb = lb0.transpose(2, 3);
        row("add transposed", "[16,32,40,40] + T(2,3)", la.elem_count(), &mut || {
            black_box(binary(BinaryOp::Add, &a, &la, &b, &lb).unwrap());
        });
    }

    // Unary maps.
    for (op, name) in [
        (UnaryOp::Silu, "silu"),
        (UnaryOp::Sigmoid, "sigmoid"),
        (UnaryOp::Exp, "exp"),
        (UnaryOp::Square, "square"),
        (UnaryOp::Affine { mul: 0.5, add: 0.1 }, "affine"),
        (UnaryOp::Sqrt, "sqrt"),
    ] {
        let (a, la) = store(&[16, 32, 40, 40], 7);
        let a = match (op, a) {
            (UnaryOp::Sqrt, CpuStorage::F32(v)) => CpuStorage::F32(v.into_iter().map(f32::abs).collect()),
            (_, a) => a,
        };
        row(name, "[16,32,40,40]", la.elem_count(), &mut || {
            black_box(unary(op, &a, &la).unwrap());
        });
    }

    // Reductions (BatchNorm statistics, sum_to of per-channel gradients).
    let (x, lx) = store(&[16, 64, 20, 20], 8);
    for axis in [0, 1, 2, 3] {
        row(&format!("sum axis {axis}"), "[16,64,20,20]", lx.elem_count(), &mut || {
            black_box(reduce(ReduceOp::Sum, &x, &lx, axis).unwrap());
        });
    }
    row("max axis 3", "[16,64,20,20]", lx.elem_count(), &mut || {
        black_box(reduce(ReduceOp::Max, &x, &lx, 3).unwrap());
    });
    let flat = Layout::contiguous(vec![lx.elem_count()]);
    row("sum all", "[409600]", lx.elem_count(), &mut || {
        black_box(reduce(ReduceOp::Sum, &x, &flat, 0).unwrap());
    });

    // The LM's row ops: 2048 rows of 128 (RMS norm), 2048 x 256 (SwiGLU).
    let (rows, n) = (2048, 128);
    let ((x, _), (w, _), (dy, _)) = (store(&[rows, n], 10), store(&[n], 11), store(&[rows, n], 12));
    let (_, rstd) = rms_norm(&x, Some(&w), rows, n, 1e-5).unwrap();
    row("rms_norm", "[2048,128]", rows * n, &mut || {
        black_box(rms_norm(&x, Some(&w), rows, n, 1e-5).unwrap());
    });
    row("rms_norm backward", "[2048,128]", rows * n, &mut || {
        black_box(rms_norm_backward(&x, Some(&w), &rstd, &dy, None, rows, n).unwrap());
    });
    let ((a, la), (b, _), (g, _)) = (store(&[2048, 256], 13), store(&[2048, 256], 14), store(&[2048, 256], 15));
    let len = la.elem_count();
    row("swiglu", "[2048,256]", len, &mut || {
        black_box(swiglu(&a, &b, len).unwrap());
    });
    row("swiglu backward", "[2048,256]", len, &mut || {
        black_box(swiglu_backward(&a, &b, &g, len).unwrap());
    });

    // Broadcast copy (the backward of sum / mean materialises one).
    let (c, lc) = store(&[1, 64, 1, 1], 9);
    let lcb = lc.broadcast_as(&Shape::from([16, 64, 20, 20]), "bench").unwrap();
    row("broadcast copy", "[1,64,1,1] -> [16,64,20,20]", lcb.elem_count(), &mut || {
        black_box(copy_contiguous(&c, &lcb).unwrap());
    });
}
