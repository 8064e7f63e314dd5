//! CPU convolution benchmark: the layer shapes of the YOLO-LAT backbone (a 3x3 stem, then
//! depthwise 3x3 + pointwise 1x1 pairs) and one YOLOv8n-style 3x3 conv, f32, NCHW, forward and
//! forward+backward (`conv2d`, then `conv2d_backward_input` and `conv2d_backward_weight` from a
//! fixed random `dy`), through the public `Tensor` API so the times include the dispatch, the
//! gathers and the output allocation a training step pays.
//!
//! Run: `cargo bench -p ela-core --bench conv` (prints a markdown table, times in ms, median of
//! the timed runs after one warm-up run). Options after `--`:
//! - `--jax`: afterwards, run the JAX peer (`benches/peers/conv_jax.py`, same shapes) as a
//!   subprocess, so the two never share the cores, once in our NCHW layout and once in XLA's
//!   native NHWC, and add its columns;
//! - `--quick`: fewer repetitions;
//! - `--split`: instead, time the forward, the input gradient and the weight gradient apart;
//! - any other word keeps only the rows whose label contains it.

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use ela_core::{Conv2dParams, Cpu, Tensor};

/// One benchmarked layer: input `[n, c, hw, hw]`, weight `[o, c/groups, k, k]`.
#[derive(Clone, Copy)]
struct Layer {
    label: &'static str,
    n: usize,
    c: usize,
    hw: usize,
    o: usize,
    k: usize,
    stride: usize,
    pad: usize,
    groups: usize,
}

#[allow(clippy::too_many_arguments)]
const fn layer(
    label: &'static str,
    n: usize,
    c: usize,
    hw: usize,
    o: usize,
    k: usize,
    stride: usize,
    groups: usize,
) -> Layer {
    Layer { label, n, c, hw, o, k, stride, pad: k / 2, groups }
}

/// The shapes; `benches/peers/conv_jax.py` holds the same list (checked by label).
const LAYERS: &[Layer] = &[
    layer("conv3x3 s2 3->16 @256", 8, 3, 256, 16, 3, 2, 1),
    layer("dw3x3 s2 16 @128", 8, 16, 128, 16, 3, 2, 16),
    layer("pw 16->32 @64", 8, 16, 64, 32, 1, 1, 1),
    layer("dw3x3 s2 32 @64", 8, 32, 64, 32, 3, 2, 32),
    layer("pw 32->64 @32", 8, 32, 32, 64, 1, 1, 1),
    layer("dw3x3 s2 64 @32", 8, 64, 32, 64, 3, 2, 64),
    layer("pw 64->128 @16", 8, 64, 16, 128, 1, 1, 1),
    layer("dw3x3 s1 128 @16", 8, 128, 16, 128, 3, 1, 128),
    layer("pw 128->128 @16", 8, 128, 16, 128, 1, 1, 1),
    layer("conv3x3 s2 32->64 @160", 8, 32, 160, 64, 3, 2, 1),
    // Batch smaller than the thread count (inference, tiny batches): the general path's
    // parallelism inside one image.
    layer("b1 conv3x3 s2 3->16 @256", 1, 3, 256, 16, 3, 2, 1),
    layer("b1 conv3x3 s2 32->64 @160", 1, 32, 160, 64, 3, 2, 1),
    layer("b1 dw3x3 s2 16 @128", 1, 16, 128, 16, 3, 2, 16),
    layer("b1 pw 16->32 @64", 1, 16, 64, 32, 1, 1, 1),
];

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

/// Median wall time of `f` in ms: one warm-up run, then at least 5 runs and until `budget`
/// seconds have passed (at most 100 runs).
fn median_ms(budget: f64, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut times: Vec<Duration> = Vec::new();
    while times.len() < 5 || (start.elapsed().as_secs_f64() < budget && times.len() < 100) {
        let t = Instant::now();
        f();
        times.push(t.elapsed());
    }
    times.sort();
    times[times.len() / 2].as_secs_f64() * 1e3
}

/// Tensors and parameters of one layer's benchmark.
struct Case {
    p: Conv2dParams,
    x: Tensor<Cpu>,
    w: Tensor<Cpu>,
    dy: Tensor<Cpu>,
}

fn case(l: &Layer) -> Case {
    let p = Conv2dParams { stride: (l.stride, l.stride), padding: (l.pad, l.pad), dilation: (1, 1), groups: l.groups };
    let x_shape = [l.n, l.c, l.hw, l.hw];
    let w_shape = [l.o, l.c / l.groups, l.k, l.k];
    let x = Tensor::from_vec(fill(x_shape.iter().product(), 1), x_shape, &Cpu).unwrap();
    let w = Tensor::from_vec(fill(w_shape.iter().product(), 2), w_shape, &Cpu).unwrap();
    let y = x.conv2d(&w, &p).unwrap();
    let dy = Tensor::from_vec(fill(y.elem_count(), 3), y.shape().clone(), &Cpu).unwrap();
    Case { p, x, w, dy }
}

fn bench(l: &Layer, budget: f64) -> (f64, f64) {
    let Case { p, x, w, dy } = case(l);
    let fwd = median_ms(budget, || {
        black_box(black_box(&x).conv2d(black_box(&w), &p).unwrap());
    });
    let fwdbwd = median_ms(budget, || {
        let y = black_box(&x).conv2d(black_box(&w), &p).unwrap();
        let dx = black_box(&dy).conv2d_backward_input(&w, x.shape(), &p).unwrap();
        let dw = black_box(&dy).conv2d_backward_weight(&x, w.shape(), &p).unwrap();
        black_box((y, dx, dw));
    });
    (fwd, fwdbwd)
}

/// Times of the three kernels apart: (fwd, dx, dW) in ms.
fn split(l: &Layer, budget: f64) -> (f64, f64, f64) {
    let Case { p, x, w, dy } = case(l);
    let fwd = median_ms(budget, || {
        black_box(black_box(&x).conv2d(black_box(&w), &p).unwrap());
    });
    let dx = median_ms(budget, || {
        black_box(black_box(&dy).conv2d_backward_input(&w, x.shape(), &p).unwrap());
    });
    let dw = median_ms(budget, || {
        black_box(black_box(&dy).conv2d_backward_weight(&x, w.shape(), &p).unwrap());
    });
    (fwd, dx, dw)
}

/// Runs the JAX peer with `layout` (`nchw` or `nhwc`); returns `(label, fwd_ms, fwdbwd_ms)` per
/// shape it printed.
fn jax(labels: &[&str], layout: &str, quick: bool) -> Vec<(String, f64, f64)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../benches/peers/conv_jax.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg("--only").arg(labels.join(",")).arg("--layout").arg(layout);
    if quick {
        cmd.arg("--reps").arg("3");
    }
    let out = match cmd.output() {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            eprintln!("JAX peer failed: {}", String::from_utf8_lossy(&o.stderr));
            return Vec::new();
        }
        Err(e) => {
            eprintln!("JAX peer did not start: {e}");
            return Vec::new();
        }
    };
    // One line per shape: `label<TAB>fwd_ms<TAB>fwdbwd_ms` (no JSON parser needed here).
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() != 3 {
                return None;
            }
            Some((f[0].to_string(), f[1].parse().ok()?, f[2].parse().ok()?))
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let with_jax = args.iter().any(|a| a == "--jax");
    // `cargo bench` passes `--bench`; words without dashes filter the rows.
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let wanted = |l: &Layer| filters.is_empty() || filters.iter().any(|f| l.label.contains(f.as_str()));
    let budget = if quick { 0.1 } else { 1.0 };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!("CPU: {cpu}; rayon threads: {}", rayon::current_num_threads());
    let layers: Vec<&Layer> = LAYERS.iter().filter(|l| wanted(l)).collect();
    if args.iter().any(|a| a == "--split") {
        println!("| layer (f32, NCHW) | fwd ms | dx ms | dW ms |");
        println!("|---|---:|---:|---:|");
        for l in &layers {
            let (f, dx, dw) = split(l, budget);
            println!("| {} | {f:.3} | {dx:.3} | {dw:.3} |", l.label);
        }
        return;
    }
    let ours: Vec<(f64, f64)> = layers.iter().map(|l| bench(l, budget)).collect();
    let labels: Vec<&str> = layers.iter().map(|l| l.label).collect();
    let (nchw, nhwc) =
        if with_jax { (jax(&labels, "nchw", quick), jax(&labels, "nhwc", quick)) } else { (Vec::new(), Vec::new()) };
    println!();
    println!(
        "| layer (f32) | ours fwd | ours fwd+bwd | JAX NCHW fwd | JAX NCHW fwd+bwd | JAX NHWC fwd | \
         JAX NHWC fwd+bwd | best JAX / ours fwd | best JAX / ours fwd+bwd |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let find = |v: &[(String, f64, f64)], label: &str| v.iter().find(|(l, _, _)| l == label).map(|&(_, f, fb)| (f, fb));
    let ms = |t: Option<(f64, f64)>| t.map_or("- | -".to_string(), |(f, fb)| format!("{f:.3} | {fb:.3}"));
    for (l, &(f, fb)) in layers.iter().zip(&ours) {
        let (a, b) = (find(&nchw, l.label), find(&nhwc, l.label));
        let best = match (a, b) {
            (Some(a), Some(b)) => Some((a.0.min(b.0), a.1.min(b.1))),
            (a, b) => a.or(b),
        };
        let ratio = best.map_or("- | -".to_string(), |(bf, bfb)| format!("{:.2}x | {:.2}x", bf / f, bfb / fb));
        println!("| {} | {f:.3} | {fb:.3} | {} | {} | {ratio} |", l.label, ms(a), ms(b));
    }
    println!();
    println!("Times in ms (median). best JAX / ours > 1: ours is faster.");
}
