//! Square matrix products through our stack (`Tensor::matmul` on the CUDA backend: one cuBLAS
//! call) in f32 with TF32 off and on, and bf16; TFLOP/s from the median device time (CUDA
//! events) after warm-up. Each product is checked: 256 sampled entries against f64 dot products
//! of the same (rounded) inputs, relative error `max |c - ref| / max |ref|` over the samples.
//!
//! Then the LM training step's projection shapes (`proj MxNxK dtype`), with the host time of
//! issuing each call.
//!
//! Run on the GPU machine: `gemm_gpu [filters]`, e.g. `gemm_gpu 4096` or `gemm_gpu proj`.

mod common;

use common::{device, median, rand_tensor, selected};
use ela_core::{DType, Result};
use ela_cuda::GpuTimer;

fn main() -> Result<()> {
    let dev = device();
    let timer = GpuTimer::new(&dev)?;
    println!("device: {}", dev.name());
    println!("| n | mode | ms | TFLOP/s | sampled err |");
    println!("|---|---|---|---|---|");
    for n in [1024usize, 2048, 4096, 8192] {
        for (mode, dtype, tf32) in
            [("f32", DType::F32, false), ("f32+tf32", DType::F32, true), ("bf16", DType::BF16, false)]
        {
            let label = format!("{n} {mode}");
            if !selected(&label) {
                continue;
            }
            dev.set_allow_tf32(tf32);
            let a = rand_tensor(&dev, &[n, n], -1.0, 1.0, 1, dtype)?;
            let b = rand_tensor(&dev, &[n, n], -1.0, 1.0, 2, dtype)?;
            let reps = if n >= 8192 { 10 } else { 20 };
            let mut ts = Vec::new();
            for i in 0..reps + 3 {
                let (_, ms) = timer.time(|| a.matmul(&b))?;
                if i >= 3 {
                    ts.push(ms);
                }
            }
            let ms = median(ts);
            let c = a.matmul(&b)?.to_vec_f64()?;
            let (av, bv) = (a.to_vec_f64()?, b.to_vec_f64()?);
            let (mut err, mut scale) = (0f64, 0f64);
            let mut s = 12345u64;
            for _ in 0..256 {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let (i, j) = ((s >> 33) as usize % n, (s >> 13) as usize % n);
                let want: f64 = (0..n).map(|l| av[i * n + l] * bv[l * n + j]).sum();
                err = err.max((c[i * n + j] - want).abs());
                scale = scale.max(want.abs());
            }
            println!(
                "| {n} | {mode} | {ms:.3} | {:.1} | {:.1e} |",
                2.0 * (n as f64).powi(3) / (ms * 1e-3) / 1e12,
                err / scale
            );
        }
    }
    dev.set_allow_tf32(false);
    projections(&dev, &timer)
}

/// The products of the LM training step (d512, 8 x 2048 tokens): `x [m, k] @ w[n, k]^T` as
/// `Linear` issues them, device time and the host time of issuing one call, two ways (50 calls
/// queued without waiting, divided by 50): each output dropped before the next call, so the
/// caching allocator hands the same block back (a training step's steady state), and all 50
/// outputs kept, so each call allocates a fresh block from the driver (`cuMemAlloc`).
fn projections(dev: &ela_cuda::Cuda, timer: &GpuTimer) -> Result<()> {
    println!();
    println!("| m | n | k | dtype | device ms | host us per call | host us, fresh outputs |");
    println!("|---|---|---|---|---|---|---|");
    for (m, n, k) in [(16384, 512, 512), (16384, 2048, 512), (16384, 512, 2048)] {
        for (mode, dtype) in [("bf16", DType::BF16), ("f32", DType::F32)] {
            if !selected(&format!("proj {m}x{n}x{k} {mode}")) {
                continue;
            }
            let x = rand_tensor(dev, &[m, k], -1.0, 1.0, 3, dtype)?;
            let w = rand_tensor(dev, &[n, k], -1.0, 1.0, 4, dtype)?;
            let wt = w.t()?;
            let mut ts = Vec::new();
            for i in 0..23 {
                let (_, ms) = timer.time(|| x.matmul(&wt))?;
                if i >= 3 {
                    ts.push(ms);
                }
            }
            dev.synchronize()?;
            let t0 = std::time::Instant::now();
            for _ in 0..50 {
                drop(x.matmul(&wt)?);
            }
            let reused_us = t0.elapsed().as_secs_f64() * 1e6 / 50.0;
            dev.synchronize()?;
            dev.empty_cache()?;
            let t0 = std::time::Instant::now();
            let outs: Vec<_> = (0..50).map(|_| x.matmul(&wt)).collect::<Result<_>>()?;
            let fresh_us = t0.elapsed().as_secs_f64() * 1e6 / 50.0;
            dev.synchronize()?;
            drop(outs);
            println!("| {m} | {n} | {k} | {mode} | {:.3} | {reused_us:.1} | {fresh_us:.1} |", median(ts));
        }
    }
    Ok(())
}
