//! CPU GEMM benchmark: ours vs `matrixmultiply` (both multi-threaded), plus
//! the machine's clock and its achievable FMA peak at each vector width.
//!
//! Run: `cargo bench -p ela-core --bench gemm` (prints a markdown table).
//! `GEMM_BENCH_QUICK=1` runs fewer repetitions; extra arguments (after
//! `--`) keep only the shapes whose row label contains one of them, e.g.
//! `cargo bench -p ela-core --bench gemm -- 1024x1024`. `GEMM_BENCH_SHAPES=MxKxN,...` replaces
//! the shapes, e.g. `GEMM_BENCH_SHAPES=128x2048x128` (m x k @ k x n).

use std::hint::black_box;
use std::time::{Duration, Instant};

use ela_core::cpu::gemm::{gemm_f32, gemm_f64, gemm_kernel_name};

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

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Clock estimate: a chain of dependent 1-cycle register-to-register adds (`x += x`). An
/// add of an immediate would not do: recent Intel cores (Golden Cove and later) fold chains of
/// `add reg, imm` at rename, so such a loop runs several adds a cycle and reports a clock of
/// 20 GHz.
#[cfg(target_arch = "x86_64")]
fn measure_ghz() -> f64 {
    let iters: u64 = 200_000_000;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let mut x: u64 = black_box(1);
        let mut n = iters / 8;
        // SAFETY: pure register arithmetic.
        unsafe {
            std::arch::asm!(
                "2:",
                "add {x}, {x}", "add {x}, {x}", "add {x}, {x}", "add {x}, {x}",
                "add {x}, {x}", "add {x}, {x}", "add {x}, {x}", "add {x}, {x}",
                "dec {n}",
                "jnz 2b",
                x = inout(reg) x,
                n = inout(reg) n,
                options(nomem, nostack),
            );
        }
        black_box((x, n));
        best = best.min(t.elapsed().as_secs_f64());
    }
    iters as f64 / best / 1e9
}

#[cfg(not(target_arch = "x86_64"))]
fn measure_ghz() -> f64 {
    f64::NAN
}

/// MHz reported by /proc/cpuinfo (often the nominal clock inside a VM).
fn cpuinfo(key: &str) -> Option<String> {
    let s = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    Some(line.split(':').nth(1)?.trim().to_string())
}

/// Register-only FMA loops, one per vector width: 12 independent accumulators (more than 2 pipes
/// x 4-cycle latency), so they run at the FMA throughput limit. Return flops.
macro_rules! fma_loop {
    ($name:ident, $feat:literal, $set1:ident, $fmadd:ident, $lanes:expr) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feat)]
        fn $name(iters: usize) -> f64 {
            use std::arch::x86_64::*;
            let mut acc = [$set1(0.0); 12];
            let x = $set1(black_box(0.999_999));
            let y = $set1(black_box(1e-7));
            for _ in 0..iters {
                for a in acc.iter_mut() {
                    *a = $fmadd(*a, x, y);
                }
            }
            black_box(acc);
            (iters * 12 * $lanes * 2) as f64
        }
    };
}
fma_loop!(fma_loop_256, "avx2,fma", _mm256_set1_ps, _mm256_fmadd_ps, 8);
fma_loop!(fma_loop_512, "avx512f", _mm512_set1_ps, _mm512_fmadd_ps, 16);

/// Achievable peak in GFLOP/s of one vector width: its FMA loop on every core at once.
#[cfg(target_arch = "x86_64")]
fn fma_peak(fma_loop: fn(usize) -> f64) -> f64 {
    let mut best = 0.0f64;
    for _ in 0..5 {
        let t = Instant::now();
        let flops: f64 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads()).map(|_| s.spawn(move || fma_loop(50_000_000))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        best = best.max(flops / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

/// Achievable peaks `(width in bits, GFLOP/s)` of the FMA widths this CPU has. Cores differ in
/// what a 512-bit FMA costs (Zen 4 splits it in two 256-bit halves, Intel server cores have two
/// full-width pipes), so the widths are measured rather than assumed.
#[cfg(target_arch = "x86_64")]
fn measure_fma_peaks() -> Vec<(u32, f64)> {
    let mut peaks = Vec::new();
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: avx2 and fma were detected above.
        peaks.push((256, fma_peak(|n| unsafe { fma_loop_256(n) })));
    }
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: avx512f was detected above.
        peaks.push((512, fma_peak(|n| unsafe { fma_loop_512(n) })));
    }
    peaks
}

#[cfg(not(target_arch = "x86_64"))]
fn measure_fma_peaks() -> Vec<(u32, f64)> {
    Vec::new()
}

/// Best wall time of `f` over at least 3 runs and `budget` seconds, after
/// one warm-up run. Background load only ever slows a run down, so the
/// minimum is the most faithful figure on a shared machine.
fn best_of(budget: f64, mut f: impl FnMut()) -> Duration {
    f();
    let start = Instant::now();
    let mut best = Duration::MAX;
    let mut runs = 0;
    while runs < 3 || start.elapsed().as_secs_f64() < budget {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
        runs += 1;
    }
    best
}

/// GFLOP/s of ours and of matrixmultiply on one shape, best of all runs.
/// Contenders alternate over rounds so background load hits both alike.
fn time_pair(flops: f64, quick: bool, mut ours: impl FnMut(), mut mm: impl FnMut()) -> (f64, f64) {
    let (rounds, budget) = if quick { (1, 0.1) } else { (5, 0.3) };
    let (mut t_ours, mut t_mm) = (Duration::MAX, Duration::MAX);
    for _ in 0..rounds {
        t_ours = t_ours.min(best_of(budget, &mut ours));
        t_mm = t_mm.min(best_of(budget, &mut mm));
    }
    (flops / t_ours.as_secs_f64() / 1e9, flops / t_mm.as_secs_f64() / 1e9)
}

/// Row-major `m x k @ k x n` in f32 (or f64 when `f64` is set).
fn bench_shape(m: usize, k: usize, n: usize, f64: bool, quick: bool) -> (f64, f64) {
    let flops = 2.0 * (m * n * k) as f64;
    let (a, b) = (fill(m * k, 1), fill(k * n, 2));
    let (mut c_ours, mut c_mm) = (vec![0.0f32; m * n], vec![0.0f32; m * n]);
    let (ad, bd): (Vec<f64>, Vec<f64>) = (a.iter().map(|&x| x.into()).collect(), b.iter().map(|&x| x.into()).collect());
    let (mut d_ours, mut d_mm) = (vec![0.0f64; m * n], vec![0.0f64; m * n]);
    let (ki, ni) = (k as isize, n as isize);
    let r = if f64 {
        time_pair(
            flops,
            quick,
            || gemm_f64(m, n, k, 1.0, black_box(&ad), k, 1, black_box(&bd), n, 1, 0.0, black_box(&mut d_ours), n, 1),
            // SAFETY: row-major buffers of exactly m*k, k*n and m*n elements.
            || unsafe {
                let (a, b, c) = (black_box(&ad).as_ptr(), black_box(&bd).as_ptr(), black_box(&mut d_mm).as_mut_ptr());
                matrixmultiply::dgemm(m, k, n, 1.0, a, ki, 1, b, ni, 1, 0.0, c, ni, 1);
            },
        )
    } else {
        time_pair(
            flops,
            quick,
            || gemm_f32(m, n, k, 1.0, black_box(&a), k, 1, black_box(&b), n, 1, 0.0, black_box(&mut c_ours), n, 1),
            // SAFETY: as above.
            || unsafe {
                let (a, b, c) = (black_box(&a).as_ptr(), black_box(&b).as_ptr(), black_box(&mut c_mm).as_mut_ptr());
                matrixmultiply::sgemm(m, k, n, 1.0, a, ki, 1, b, ni, 1, 0.0, c, ni, 1);
            },
        )
    };
    // A broken kernel must not look fast: the results have to agree.
    let tol = 1e-4 * (k as f64).sqrt();
    let bad = if f64 {
        d_ours.iter().zip(&d_mm).filter(|(x, y)| (*x - *y).abs() > 1e-9 * tol * (1.0 + y.abs())).count()
    } else {
        c_ours.iter().zip(&c_mm).filter(|(x, y)| f64::from((*x - *y).abs()) > tol * (1.0 + f64::from(y.abs()))).count()
    };
    assert_eq!(bad, 0, "{m}x{k} @ {k}x{n}: {bad} elements differ from matrixmultiply");
    r
}

fn main() {
    let quick = std::env::var_os("GEMM_BENCH_QUICK").is_some();
    let cores = threads();
    let ghz = measure_ghz();
    let mhz: f64 = cpuinfo("cpu MHz").and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
    let peaks = measure_fma_peaks();
    println!("CPU: {}, {cores} threads", cpuinfo("model name").unwrap_or_default());
    println!("kernel: {}; rayon threads: {}", gemm_kernel_name(), rayon::current_num_threads());
    println!("matrixmultiply: `threading` feature, MATMUL_NUM_THREADS default ({} physical cores)", cores);
    println!();
    println!("clock: {ghz:.2} GHz measured (dependent add chain), /proc/cpuinfo says {mhz:.0} MHz");
    for &(bits, p) in &peaks {
        let per_cycle = p / (cores as f64 * ghz);
        println!(
            "achievable peak, {bits}-bit FMA loop on {cores} threads: {p:.1} GFLOP/s ({per_cycle:.1} f32 flop per cycle and core)"
        );
    }
    // "% of peak" is against the best FMA loop: what the core can sustain, whatever the width.
    let peak = peaks.iter().map(|&(_, p)| p).fold(f64::NAN, f64::max);
    println!();
    println!("| dtype, shape (m x k @ k x n) | ours GFLOP/s | matrixmultiply GFLOP/s | ours / mm | ours % of peak |");
    println!("|---|---:|---:|---:|---:|");
    let custom: Vec<(usize, usize, usize)> = std::env::var("GEMM_BENCH_SHAPES")
        .unwrap_or_default()
        .split(',')
        .filter_map(|s| {
            let v: Vec<usize> = s.split('x').filter_map(|x| x.trim().parse().ok()).collect();
            (v.len() == 3).then(|| (v[0], v[1], v[2]))
        })
        .collect();
    let default_shapes: &[(usize, usize, usize)] = &[
        (128, 128, 128),
        (256, 256, 256),
        (512, 512, 512),
        (1024, 1024, 1024),
        (2048, 2048, 2048),
        (4096, 256, 1024),
        (4096, 1024, 256),
        (2048, 512, 2048),
    ];
    let shapes = if custom.is_empty() { default_shapes } else { &custom[..] };
    // `cargo bench` passes `--bench`; anything else filters the rows.
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let wanted = |label: &str| filters.is_empty() || filters.iter().any(|f| label.contains(f.as_str()));
    for &(m, k, n) in shapes {
        let label = format!("f32 {m}x{k} @ {k}x{n}");
        if wanted(&label) {
            let (ours, mm) = bench_shape(m, k, n, false, quick);
            println!("| {label} | {ours:.1} | {mm:.1} | {:.2} | {:.0}% |", ours / mm, 100.0 * ours / peak);
        }
    }
    // f64 (gradient checks): its peak is half the f32 one.
    if wanted("f64 1024x1024 @ 1024x1024") {
        let (ours, mm) = bench_shape(1024, 1024, 1024, true, quick);
        println!(
            "| f64 1024x1024 @ 1024x1024 | {ours:.1} | {mm:.1} | {:.2} | {:.0}% |",
            ours / mm,
            200.0 * ours / peak
        );
    }
}
