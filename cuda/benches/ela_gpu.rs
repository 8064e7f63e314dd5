//! Fused ELA on the GPU (causal): chunked forward and forward + backward, B = 8, H = 16,
//! D = Dv in {64, 128}, T = 1k..32k, bf16 and f32, for Hadamard Exp (default) or the kernels
//! named by `kernel=NAME` arguments (`kernel=sum-sq-euclid kernel=hadamard-exp`: elu+1 takes
//! Hadamard Exp's kernels on log-features, `ELA_CUDA_ELU_TILES=0` its feature-map path; Identity
//! takes them without exps (f32 inputs by default, `ELA_CUDA_ID_TILES=0` its feature-map path;
//! bf16 inputs with `ELA_CUDA_SIGNED_BF16=1`), and sum-sq, sub-sq and the blueprint take them as
//! Identity plus extra terms where Identity does (`ELA_CUDA_SIGNED_TILES=0` their feature-map
//! path); the other kernels take the chunked path of `ops/ela/feature_chunk.rs`;
//! `ELA_CUDA_GEMM_CHUNK=1` forces its cuBLAS form, `ELA_CUDA_SCAN_ONLY=1` the per-token scan).
//! Device time (CUDA events), median of repetitions after warm-up. Every configuration is also checked: the outputs start as
//! NaN (poisoned allocator blocks) and sequence 0 (batch 0, head 0) of y, dq, dk, dv is compared
//! with the CPU backend's f64 fused kernels on the same (rounded) inputs.
//!
//! Run on the GPU machine: `ela_gpu [filters]`, e.g. `ela_gpu d=64 bf16`; a filter keeps the rows
//! whose label (`kernel=K d=D dtype T=T`) contains it. `ELA_GPU_D=32,96` measures those head
//! sizes instead of 64 and 128; `ELA_GPU_DV=64` gives `v` (and `y`, `dy`) that width instead of
//! D's (e.g. a user feature map of width 66 on 64-wide values: `ELA_GPU_D=66 ELA_GPU_DV=64
//! kernel=identity`; the D column then reads `66/64`); `ELA_GPU_BH=4x16` other batch and head counts (the scans split
//! their walks into runs when the sequences alone do not fill the GPU); `ELA_GPU_SCAN_RUNS=K`
//! forces K runs (1: one walk per sequence, as before the split); `ELA_CUDA_MINB=out=2` (and
//! `scan=`, `bwd=`) compiles the chunked kernels for other blocks per multiprocessor. Prints a
//! markdown table.

mod common;

use common::{device, median, poison, rand_tensor, rel_err, selected};
use ela_core::ela::ElaParams;
use ela_core::{Cpu, DType, ElaKernel, Result, Tensor};
use ela_cuda::{Cuda, GpuTimer};

const TS: [usize; 6] = [1024, 2048, 4096, 8192, 16384, 32768];

/// Sequence 0 (batch 0, head 0) as an f64 CPU tensor `[1, 1, t, w]`.
fn seq0(x: &Tensor<Cuda>) -> Result<Tensor<Cpu>> {
    x.narrow(0, 0, 1)?.narrow(1, 0, 1)?.contiguous()?.to_device(&Cpu)?.to_dtype(DType::F64)
}

fn main() -> Result<()> {
    let runs = std::env::var("ELA_GPU_SCAN_RUNS").map_or(0, |v| v.trim().parse().expect("ELA_GPU_SCAN_RUNS: a count"));
    ela_cuda::with_scan_runs(runs, run)
}

fn run() -> Result<()> {
    let (b, h) = match std::env::var("ELA_GPU_BH") {
        Ok(v) => {
            let (b, h) = v.split_once('x').expect("ELA_GPU_BH: BATCHxHEADS, e.g. 4x16");
            (b.trim().parse().expect("ELA_GPU_BH batch"), h.trim().parse().expect("ELA_GPU_BH heads"))
        }
        Err(_) => (8usize, 16usize),
    };
    let dev = device();
    let timer = GpuTimer::new(&dev)?;
    println!(
        "device: {} (sm_{}{}), kernels for {}",
        dev.name(),
        dev.compute_capability().0,
        dev.compute_capability().1,
        dev.kernel_arch()
    );
    println!("B = {b}, H = {h}");
    if let Ok(m) = std::env::var("ELA_CUDA_MINB") {
        // Launch bounds other than the defaults (ela_cuda::kernels::ChunkMinBlocks).
        println!("ELA_CUDA_MINB={m}");
    }
    println!("| kernel | D | dtype | T | forward ms | fwd+bwd ms | y err | grad err |");
    println!("|---|---|---|---|---|---|---|---|");
    let named: Vec<ElaKernel> = std::env::args()
        .filter_map(|a| a.strip_prefix("kernel=").map(str::parse))
        .collect::<std::result::Result<_, _>>()?;
    let kernels = if named.is_empty() { vec![ElaKernel::HadamardExp] } else { named };
    // Head sizes: 64 and 128, or the comma-separated list in ELA_GPU_D (e.g. `32,96` for Hadamard
    // Exp's padded heads).
    let sizes: Vec<usize> = match std::env::var("ELA_GPU_D") {
        Ok(v) => v.split(',').map(|x| x.trim().parse().expect("ELA_GPU_D: comma-separated head sizes")).collect(),
        Err(_) => vec![64, 128],
    };
    let value_width: Option<usize> =
        std::env::var("ELA_GPU_DV").ok().map(|v| v.trim().parse().expect("ELA_GPU_DV: a value width"));
    for (kernel, d) in kernels.iter().flat_map(|&k| sizes.iter().map(move |&d| (k, d))) {
        let p = ElaParams::causal(kernel);
        let dv = value_width.unwrap_or(d);
        let width = if dv == d { d.to_string() } else { format!("{d}/{dv}") };
        for dtype in [DType::BF16, DType::F32] {
            let tag = format!("kernel={kernel} d={d} {dtype:?}").to_lowercase();
            if !TS.iter().any(|t| selected(&format!("{tag} T={t}"))) {
                continue;
            }
            let tmax = *TS.iter().filter(|t| selected(&format!("{tag} T={t}"))).max().unwrap_or(&TS[5]);
            // Hadamard Exp and elu+1: inputs as in the peer script, uniform with variance 1, q
            // shifted up and k down (both branches of elu). The other kernels get q, k in [0, 0.5):
            // positive kernels (the blueprint is negative, and the signed denominators cancel, for
            // unlucky q . k).
            let s3 = 3f32.sqrt();
            let (qr, kr) = match kernel {
                ElaKernel::HadamardExp | ElaKernel::EluPlusOne => ((-s3 + 0.5, s3 + 0.5), (-s3 - 0.5, s3 - 0.5)),
                _ => ((0.0, 0.5), (0.0, 0.5)),
            };
            let base = [
                rand_tensor(&dev, &[b, h, tmax, d], qr.0, qr.1, 1, dtype)?,
                rand_tensor(&dev, &[b, h, tmax, d], kr.0, kr.1, 2, dtype)?,
                rand_tensor(&dev, &[b, h, tmax, dv], -s3, s3, 3, dtype)?,
                rand_tensor(&dev, &[b, h, tmax, dv], -s3, s3, 4, dtype)?,
            ];
            for t in TS {
                let label = format!("{tag} T={t}");
                if t > tmax || !selected(&label) {
                    continue;
                }
                let cut = |x: &Tensor<Cuda>| x.narrow(2, 0, t).and_then(|x| x.contiguous());
                let (q, k, v, dy) = (cut(&base[0])?, cut(&base[1])?, cut(&base[2])?, cut(&base[3])?);
                let reps = if t <= 4096 { 10 } else { 5 };
                let mut fwd = Vec::new();
                let mut both = Vec::new();
                for i in 0..reps + 2 {
                    let (y, ms) = timer.time(|| q.ela(&k, &v, &p))?;
                    let (_, ms2) = timer.time(|| {
                        // As in training (the autograd node): the forward keeps its state for the backward.
                        let (y, saved) = q.ela_saving(&k, &v, &p)?;
                        Tensor::ela_backward_saved(&q, &k, &v, &y, &dy, &p, saved.as_ref())
                    })?;
                    drop(y);
                    if i >= 2 {
                        fwd.push(ms);
                        both.push(ms2);
                    }
                }
                // The checked run: outputs in NaN-filled blocks, sequence 0 against f64 on the CPU.
                poison(&dev, b * h * t * d.max(dv), dtype, 4)?;
                let (y, saved) = q.ela_saving(&k, &v, &p)?;
                poison(&dev, b * h * t * d.max(dv), dtype, 4)?;
                let (dq, dk, dv) = Tensor::ela_backward_saved(&q, &k, &v, &y, &dy, &p, saved.as_ref())?;
                drop(saved);
                let (q0, k0, v0, dy0) = (seq0(&q)?, seq0(&k)?, seq0(&v)?, seq0(&dy)?);
                let y64 = q0.ela(&k0, &v0, &p)?;
                let g64 = Tensor::ela_backward(&q0, &k0, &v0, &y64, &dy0, &p)?;
                let e = |a: &Tensor<Cuda>, b: &Tensor<Cpu>| -> Result<f64> {
                    Ok(rel_err(&seq0(a)?.to_vec_f64()?, &b.to_vec_f64()?))
                };
                let ey = e(&y, &y64)?;
                let eg = e(&dq, &g64.0)?.max(e(&dk, &g64.1)?).max(e(&dv, &g64.2)?);
                // Every element written and finite: a NaN or inf anywhere makes the sum non-finite.
                let mut all_finite = true;
                for x in [&y, &dq, &dk, &dv] {
                    let w = x.dims()[3];
                    let rows = x.to_dtype(DType::F32)?.reshape([b * h, t * w])?.sum(1, false)?;
                    all_finite &= rows.sum_all()?.to_scalar()?.is_finite();
                }
                println!(
                    "| {kernel} | {width} | {} | {t} | {:.3} | {:.3} | {ey:.1e} | {eg:.1e}{} |",
                    format!("{dtype:?}").to_lowercase(),
                    median(fwd),
                    median(both),
                    if all_finite { "" } else { " NON-FINITE" }
                );
            }
            drop(base);
            dev.empty_cache()?;
        }
    }
    // With ELA_CUDA_KERNEL_STATS=1: where the device time went, per kernel and cuBLAS call.
    if let Some(report) = dev.kernel_stats_report(25)? {
        println!("{report}");
    }
    Ok(())
}
