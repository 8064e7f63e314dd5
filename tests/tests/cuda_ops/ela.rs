//! Fused ELA on the GPU against the CPU backend's chunked kernels: forward (causal, non-causal,
//! every built-in kernel), backward, prefill with a carried state and recurrent steps.

use ela_core::ela::ElaParams;
use ela_core::{Cpu, DType, ElaKernel, FusedElaState, Result, Rng, Tensor};
use ela_cuda::Cuda;

use crate::{check_tol, gpu, rel_err, Pair};

/// q, k scaled and shifted (large shifts stress Hadamard Exp's log-scales), v standard normal.
fn qkv(dims: [usize; 4], dv: usize, scale: f64, shift: f64, dtype: DType, seed: u64, dev: &Cuda) -> (Pair, Pair, Pair) {
    let mut rng = Rng::new(seed);
    let mut mk = |shape: Vec<usize>, s: f64, o: f64| {
        Pair::new(Tensor::randn(o, s, shape, DType::F64, &mut rng, &Cpu).unwrap().to_dtype(dtype).unwrap(), dev)
    };
    let [b, h, t, d] = dims;
    (mk(vec![b, h, t, d], scale, shift), mk(vec![b, h, t, d], scale, -shift), mk(vec![b, h, t, dv], 1.0, 0.0))
}

/// (rtol, atol) of GPU vs CPU ELA results: both are correct to rounding but sum in other orders
/// (recurrent scan vs chunked products).
fn ela_tol(d: DType) -> (f64, f64) {
    match d {
        DType::F64 => (1e-9, 1e-10),
        DType::F32 => (2e-4, 2e-5),
        DType::F16 => (4e-3, 2e-3),
        _ => (3e-2, 1e-2),
    }
}

#[test]
fn ela_forward_and_backward_match_the_cpu_for_every_kernel() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    for (ki, kernel) in ElaKernel::ALL.into_iter().enumerate() {
        for (di, &d) in [DType::F64, DType::F32, DType::F16, DType::BF16].iter().enumerate() {
            for causal in [true, false] {
                // Signed kernels: small inputs keep denominators away from 0 (|q+k|^2 is positive).
                let (scale, shift) = match kernel {
                    ElaKernel::HadamardExp => (1.0, 0.5),
                    ElaKernel::Identity => (0.1, 1.0),
                    _ => (0.3, 0.2),
                };
                let seed = 200 + 10 * ki as u64 + di as u64;
                let (q, k, v) = qkv([2, 3, 37, 8], 5, scale, shift, d, seed, &dev);
                let p = ElaParams { kernel, causal, chunk: 8 };
                let tag = format!("{kernel} causal={causal} {d:?}");
                let (cy, gy) = (q.cpu.ela(&k.cpu, &v.cpu, &p)?, q.gpu.ela(&k.gpu, &v.gpu, &p)?);
                let (rt, at) = ela_tol(d);
                check_tol(&format!("ela forward {tag}"), &cy, &gy, rt, at);
                let dy = Pair::randn(&[2, 3, 37, 5], d, seed + 1, &dev);
                let c = Tensor::ela_backward(&q.cpu, &k.cpu, &v.cpu, &cy, &dy.cpu, &p)?;
                let g = Tensor::ela_backward(&q.gpu, &k.gpu, &v.gpu, &gy, &dy.gpu, &p)?;
                for (name, c, g) in [("dq", c.0, g.0), ("dk", c.1, g.1), ("dv", c.2, g.2)] {
                    check_tol(&format!("ela {name} {tag}"), &c, &g, rt * 5.0, at * 5.0);
                }
            }
        }
    }
    Ok(())
}

/// Non-causal calls in both CUDA forms: the parallel form (`ops/ela/noncausal.rs`) at YOLO-LAT's
/// neck shape (4 heads of 16 over 20 x 20 cells; T not a multiple of the 32-token groups nor of
/// the staged rows) and with 120 sequences, and the scan where F x Dv is too large for the
/// parallel form. Gradients of the signed kernels cancel heavily at d = 80, so both devices are
/// judged against the f64 reference computed from the same rounded inputs: the GPU's normwise
/// error may not exceed the CPU's by more than a small factor.
#[test]
fn non_causal_forms_are_as_accurate_as_the_cpu() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let to64 = |t: &Tensor<Cpu>| t.to_dtype(DType::F64);
    let vec64 = |t: &Tensor<Cuda>| t.to_vec_f64();
    for (ki, kernel) in ElaKernel::ALL.into_iter().enumerate() {
        for (dims, dv) in [([2, 4, 400, 16], 16), ([3, 40, 67, 8], 8), ([1, 2, 45, 80], 80)] {
            for (di, &d) in [DType::F64, DType::F32, DType::BF16].iter().enumerate() {
                let (scale, shift) = match kernel {
                    ElaKernel::HadamardExp => (1.0, 0.5),
                    ElaKernel::Identity => (0.1, 1.0),
                    _ => (0.2, 0.1),
                };
                let seed = 400 + 10 * ki as u64 + di as u64;
                let (q, k, v) = qkv(dims, dv, scale, shift, d, seed, &dev);
                let p = ElaParams::non_causal(kernel);
                let tag = format!("{kernel} non-causal {dims:?}x{dv} {d:?}");
                let [b, h, t, _] = dims;
                let dy = Pair::randn(&[b, h, t, dv], d, seed + 1, &dev);
                let (q64, k64, v64, dy64) = (to64(&q.cpu)?, to64(&k.cpu)?, to64(&v.cpu)?, to64(&dy.cpu)?);
                let y64 = q64.ela(&k64, &v64, &p)?;
                let r = Tensor::ela_backward(&q64, &k64, &v64, &y64, &dy64, &p)?;
                let (cy, gy) = (q.cpu.ela(&k.cpu, &v.cpu, &p)?, q.gpu.ela(&k.gpu, &v.gpu, &p)?);
                let c = Tensor::ela_backward(&q.cpu, &k.cpu, &v.cpu, &cy, &dy.cpu, &p)?;
                let g = Tensor::ela_backward(&q.gpu, &k.gpu, &v.gpu, &gy, &dy.gpu, &p)?;
                let outs = [
                    ("y", &y64, &cy, &gy),
                    ("dq", &r.0, &c.0, &g.0),
                    ("dk", &r.1, &c.1, &g.1),
                    ("dv", &r.2, &c.2, &g.2),
                ];
                for (name, r, c, g) in outs {
                    let r = r.to_vec_f64()?;
                    let cpu_err = rel_err(&c.to_vec_f64()?, &r);
                    let gpu_err = rel_err(&vec64(g)?, &r);
                    let floor = match d {
                        DType::F64 => 1e-12,
                        DType::F32 => 1e-6,
                        _ => 1e-2,
                    };
                    assert!(
                        gpu_err <= 4.0 * cpu_err + floor,
                        "{name} {tag}: GPU error {gpu_err:e} vs the CPU's {cpu_err:e} (against f64)"
                    );
                }
            }
        }
    }
    Ok(())
}

#[test]
fn hadamard_exp_survives_inputs_that_overflow_exp() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    // exp(120) overflows f32 and f16: the log-scales keep every term <= 1.
    for d in [DType::F32, DType::F64] {
        for causal in [true, false] {
            let (q, k, v) = qkv([1, 2, 50, 6], 4, 3.0, 60.0, d, 7, &dev);
            let p = ElaParams { kernel: ElaKernel::HadamardExp, causal, chunk: 16 };
            let (cy, gy) = (q.cpu.ela(&k.cpu, &v.cpu, &p)?, q.gpu.ela(&k.gpu, &v.gpu, &p)?);
            assert!(gy.to_vec_f64()?.iter().all(|x| x.is_finite()), "finite outputs");
            let (rt, at) = ela_tol(d);
            check_tol(&format!("large-input ela causal={causal} {d:?}"), &cy, &gy, rt, at);
        }
    }
    Ok(())
}

#[test]
fn prefill_then_steps_match_the_cpu_state_and_outputs() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    for kernel in ElaKernel::ALL {
        for d in [DType::F32, DType::F64] {
            let (scale, shift) = if kernel == ElaKernel::HadamardExp { (2.0, 3.0) } else { (0.3, 0.2) };
            let (q, k, v) = qkv([2, 2, 12, 4], 3, scale, shift, d, 11, &dev);
            let mut cs = FusedElaState::new(kernel, 2, 2, 4, 3, d, &Cpu)?.with_chunk(4);
            let mut gs = FusedElaState::new(kernel, 2, 2, 4, 3, d, &dev)?.with_chunk(4);
            let cy = cs.prefill(&q.cpu.narrow(2, 0, 9)?, &k.cpu.narrow(2, 0, 9)?, &v.cpu.narrow(2, 0, 9)?)?;
            let gy = gs.prefill(&q.gpu.narrow(2, 0, 9)?, &k.gpu.narrow(2, 0, 9)?, &v.gpu.narrow(2, 0, 9)?)?;
            let (rt, at) = ela_tol(d);
            let tag = format!("{kernel} {d:?}");
            check_tol(&format!("prefill {tag}"), &cy, &gy, rt, at);
            for i in 9..12 {
                let cy = cs.step(&q.cpu.narrow(2, i, 1)?, &k.cpu.narrow(2, i, 1)?, &v.cpu.narrow(2, i, 1)?)?;
                let gy = gs.step(&q.gpu.narrow(2, i, 1)?, &k.gpu.narrow(2, i, 1)?, &v.gpu.narrow(2, i, 1)?)?;
                check_tol(&format!("step {i} {tag}"), &cy, &gy, rt, at);
            }
            // The carried state itself (S, z and the log-scales) agrees.
            let (cb, gb) = (cs.buffers()?, gs.buffers()?);
            check_tol(&format!("state S {tag}"), &cb.0, &gb.0, rt, at);
            check_tol(&format!("state z {tag}"), &cb.1, &gb.1, rt, at);
            if let (Some(cm), Some(gm)) = (cb.2, gb.2) {
                check_tol(&format!("state m {tag}"), &cm, &gm, 0.0, 0.0);
            }
            // The whole sequence in one causal call gives the same outputs as prefill + steps.
            let full = q.gpu.ela(&k.gpu, &v.gpu, &ElaParams::causal(kernel))?;
            let last = full.narrow(2, 11, 1)?;
            assert_eq!(gs.tokens(), 12);
            let cpu_full = q.cpu.ela(&k.cpu, &v.cpu, &ElaParams::causal(kernel))?.narrow(2, 11, 1)?;
            check_tol(&format!("full vs steps {tag}"), &cpu_full.contiguous()?, &last.contiguous()?, rt, at);
        }
    }
    // A non-causal state is rejected before any backend runs: by `ElaParams::validate`, the one
    // ELA argument check (tested in core/src/ela.rs); backends trust their callers.
    Ok(())
}
