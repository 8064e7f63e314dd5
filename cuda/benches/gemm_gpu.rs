//! Square matrix products through our stack (`Tensor::matmul` on the CUDA backend: one cuBLAS
//! call) in f32 with TF32 off and on, and bf16; TFLOP/s from the median device time (CUDA
//! events) after warm-up. Each product is checked: 256 sampled entries against f64 dot products
//! of the same (rounded) inputs, relative error `max |c - ref| / max |ref|` over the samples.
//!
//! Run on the GPU machine: `gemm_gpu [filters]`, e.g. `gemm_gpu 4096`.

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
    Ok(())
}
