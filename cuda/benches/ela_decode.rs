//! One recurrent ELA decoding step for all heads and the whole batch (B = 8, H = 16), Hadamard
//! Exp, from a state that has absorbed a 1024-token prompt: device time of one step (CUDA events
//! around a single `FusedElaState::step`, median of 200), device time per step of 200 back-to-back
//! steps, host wall time per step, and the state's bytes (constant in the context; a KV cache
//! grows by 2 B H D bytes-per-element per token: see the peer script for softmax attention).
//! The first step is checked against the CPU backend stepping the same prefilled state.
//!
//! Run on the GPU machine: `ela_decode [filters]`.

mod common;

use std::time::Instant;

use common::{device, median, rand_tensor, rel_err, selected};
use ela_core::{Cpu, DType, ElaKernel, FusedElaState, Result, Tensor};
use ela_cuda::{Cuda, GpuTimer};

const B: usize = 8;
const H: usize = 16;
const PROMPT: usize = 1024;

fn main() -> Result<()> {
    let dev = device();
    let timer = GpuTimer::new(&dev)?;
    println!("device: {}", dev.name());
    println!("| D | dtype | one step (us, device) | per step, 200 queued (us) | host wall per step (us) | state bytes | step err vs CPU |");
    println!("|---|---|---|---|---|---|---|");
    for (d, dtype) in [(128, DType::BF16), (128, DType::F32), (64, DType::BF16), (64, DType::F32)] {
        let label = format!("d={d} {dtype:?}").to_lowercase();
        if !selected(&label) {
            continue;
        }
        let s3 = 3f32.sqrt();
        let mk = |t: usize, lo: f32, seed: u64| rand_tensor(&dev, &[B, H, t, d], lo, lo + 2.0 * s3, seed, dtype);
        let (qp, kp, vp) = (mk(PROMPT, -s3 + 0.5, 1)?, mk(PROMPT, -s3 - 0.5, 2)?, mk(PROMPT, -s3, 3)?);
        let steps: Vec<(Tensor<Cuda>, Tensor<Cuda>, Tensor<Cuda>)> = (0..8)
            .map(|i| Ok((mk(1, -s3 + 0.5, 10 + i)?, mk(1, -s3 - 0.5, 20 + i)?, mk(1, -s3, 30 + i)?)))
            .collect::<Result<_>>()?;
        let mut st = FusedElaState::new(ElaKernel::HadamardExp, B, H, d, d, dtype, &dev)?;
        st.prefill(&qp, &kp, &vp)?;
        // Correctness: the same prompt and first step on the CPU.
        let mut cs = FusedElaState::new(ElaKernel::HadamardExp, B, H, d, d, dtype, &Cpu)?;
        let c = |x: &Tensor<Cuda>| x.to_device(&Cpu);
        cs.prefill(&c(&qp)?, &c(&kp)?, &c(&vp)?)?;
        let (q0, k0, v0) = &steps[0];
        let gy = st.step(q0, k0, v0)?;
        let cy = cs.step(&c(q0)?, &c(k0)?, &c(v0)?)?;
        let err = rel_err(&gy.to_vec_f64()?, &cy.to_vec_f64()?);
        for i in 0..20 {
            let (q, k, v) = &steps[i % 8];
            st.step(q, k, v)?;
        }
        dev.synchronize()?;
        let mut one = Vec::new();
        for i in 0..200 {
            let (q, k, v) = &steps[i % 8];
            one.push(timer.time(|| st.step(q, k, v))?.1 * 1e3);
        }
        let (_, queued) = timer.time(|| {
            for i in 0..200 {
                let (q, k, v) = &steps[i % 8];
                st.step(q, k, v)?;
            }
            Ok(())
        })?;
        let t0 = Instant::now();
        for i in 0..200 {
            let (q, k, v) = &steps[i % 8];
            st.step(q, k, v)?;
        }
        dev.synchronize()?;
        let wall = t0.elapsed().as_secs_f64() * 1e6 / 200.0;
        println!(
            "| {d} | {} | {:.1} | {:.1} | {wall:.1} | {} | {err:.1e} |",
            format!("{dtype:?}").to_lowercase(),
            median(one),
            queued * 1e3 / 200.0,
            st.bytes()
        );
    }
    Ok(())
}
