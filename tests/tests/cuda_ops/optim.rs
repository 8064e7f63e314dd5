//! The fused AdamW update on the GPU against the CPU backend (f32, f64: the same bits) and a
//! scalar f64 reference, plus its typed errors.

use ela_core::{AdamWStep, DType, Result};

use crate::{check_tol, gpu, Pair};

fn step(t: u64, decay: f64) -> AdamWStep {
    let (beta1, beta2) = (0.9, 0.95);
    AdamWStep {
        lr: 3e-3,
        beta1,
        beta2,
        eps: 1e-8,
        decay,
        bc1: 1.0 - f64::powi(beta1, t as i32),
        bc2: 1.0 - f64::powi(beta2, t as i32),
    }
}

#[test]
fn adamw_update_matches_the_cpu_and_f64() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    // 70_001 elements: several blocks and a ragged tail; strided views are made contiguous.
    for (k, dtype) in [DType::F32, DType::F64].into_iter().enumerate() {
        let n = 70_001;
        let p = Pair::randn(&[n], dtype, 50 + k as u64, &dev);
        let g = Pair::randn(&[n], dtype, 60 + k as u64, &dev);
        let m = Pair::randn(&[n], dtype, 70 + k as u64, &dev);
        let v = Pair::uniform(&[n], 0.0, 2.0, dtype, 80 + k as u64, &dev);
        for (t, decay) in [(1, 1.0 - 3e-4), (7, 1.0)] {
            let s = step(t, decay);
            let c = p.cpu.adamw_update(&g.cpu, &m.cpu, &v.cpu, &s)?;
            let gp = p.gpu.adamw_update(&g.gpu, &m.gpu, &v.gpu, &s)?;
            // Every product and sum is rounded on its own on the GPU too (no fused multiply-add):
            // the CPU's bits exactly.
            for (name, a, b) in [("p", &c.0, &gp.0), ("m", &c.1, &gp.1), ("v", &c.2, &gp.2)] {
                check_tol(&format!("adamw {name} {dtype:?} t={t}"), a, b, 0.0, 0.0);
                let (a, b) = (a.to_vec_f64()?, b.to_vec_f64()?);
                let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "adamw {name} {dtype:?} t={t}: the GPU's bits differ from the CPU's");
            }
            // Scalar reference in f64 on a few elements.
            let (pv, gv, mv, vv) = (p.cpu.to_vec_f64()?, g.cpu.to_vec_f64()?, m.cpu.to_vec_f64()?, v.cpu.to_vec_f64()?);
            let out = gp.0.to_vec_f64()?;
            for i in [0, 1, 12_345, n - 1] {
                let mi = s.beta1 * mv[i] + (1.0 - s.beta1) * gv[i];
                let vi = s.beta2 * vv[i] + (1.0 - s.beta2) * gv[i] * gv[i];
                let want = pv[i] * s.decay - s.lr / s.bc1 * mi / (vi.sqrt() / s.bc2.sqrt() + s.eps);
                let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
                assert!((out[i] - want).abs() <= tol * (1.0 + want.abs()), "element {i}: {} vs {want}", out[i]);
            }
        }
    }
    // Mixed dtypes, half parameters and mismatched shapes are typed errors.
    let p = Pair::randn(&[8], DType::F32, 1, &dev);
    let p64 = Pair::randn(&[8], DType::F64, 2, &dev);
    let p9 = Pair::randn(&[9], DType::F32, 3, &dev);
    let half = Pair::randn(&[8], DType::BF16, 4, &dev);
    let s = step(1, 1.0);
    assert!(p.gpu.adamw_update(&p64.gpu, &p.gpu, &p.gpu, &s).is_err());
    assert!(p.gpu.adamw_update(&p9.gpu, &p.gpu, &p.gpu, &s).is_err());
    let e = half.gpu.adamw_update(&half.gpu, &half.gpu, &half.gpu, &s).unwrap_err();
    assert!(e.to_string().contains("adamw_update"), "{e}");
    Ok(())
}
