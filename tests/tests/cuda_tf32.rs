//! The opt-in TF32 mode of f32 matrix products: its error, measured against f64.
//!
//! Its own binary because the switch is per device (all handles of one GPU share it): flipping it
//! while other tests multiply matrices would change their results. Without a GPU it prints why
//! and reports itself skipped (`ela_tests::device::cuda`), unless ELA_REQUIRE_CUDA=1.

use ela_core::{Cpu, DType, Result, Rng, Tensor};

use ela_tests::reference::rel_err;

#[test]
fn tf32_is_off_by_default_and_its_error_is_bounded() -> Result<()> {
    let Some(dev) = ela_tests::device::cuda() else { return Ok(()) };
    assert!(!dev.allow_tf32(), "TF32 is opt-in");
    let mut rng = Rng::new(6);
    for n in [256usize, 1024] {
        let a = Tensor::randn(0.0, 1.0, [n, n], DType::F32, &mut rng, &Cpu)?;
        let b = Tensor::randn(0.0, 1.0, [n, n], DType::F32, &mut rng, &Cpu)?;
        let want = a.to_dtype(DType::F64)?.matmul(&b.to_dtype(DType::F64)?)?.to_vec_f64()?;
        let (ga, gb) = (a.to_device(&dev)?, b.to_device(&dev)?);
        let exact = rel_err(&ga.matmul(&gb)?.to_vec_f64()?, &want);
        dev.set_allow_tf32(true);
        let tf32 = rel_err(&ga.matmul(&gb)?.to_vec_f64()?, &want);
        dev.set_allow_tf32(false);
        println!("f32 matmul {n}x{n}x{n}, standard normal inputs, rel err vs f64: TF32 off {exact:.3e}, on {tf32:.3e}");
        assert!(exact < 1e-6, "f32 without TF32: {exact:e}");
        assert!(tf32 > exact && tf32 < 5e-3, "TF32 error {tf32:e}");
    }
    Ok(())
}
