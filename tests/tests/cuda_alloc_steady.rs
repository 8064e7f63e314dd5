//! A training step makes no `cuMemAlloc`/`cuMemFree` once the caching allocator is warm.
//!
//! Its own test binary (a single test) so no concurrent test touches the allocator counters.
//! Without a GPU it reports itself skipped (`ela_tests::device::cuda`), unless
//! ELA_REQUIRE_CUDA=1.

use ela_autograd::Var;
use ela_core::{DType, Result, Rng, Tensor};
use ela_cuda::Cuda;

/// Forward, backward and an SGD update of a two-layer MLP with RMS norm and cross-entropy.
fn train_step(x: &Tensor<Cuda>, t: &Tensor<Cuda>, params: &mut [Tensor<Cuda>; 3]) -> Result<f64> {
    let vars: Vec<Var<Cuda>> = params.iter().map(|p| Var::param(p.clone())).collect();
    let h = Var::constant(x.clone()).matmul(&vars[0])?.gelu()?.rms_norm(Some(&vars[2]), 1e-5)?;
    let loss = h.matmul(&vars[1].t()?)?.cross_entropy(t, None)?;
    let grads = loss.backward()?;
    for (p, v) in params.iter_mut().zip(&vars) {
        let g = grads.get(v).expect("every parameter gets a gradient");
        *p = p.sub(&g.mul_scalar(0.1)?)?;
    }
    loss.value().to_scalar()
}

#[test]
fn training_steps_reuse_cached_device_memory() -> Result<()> {
    let Some(dev) = ela_tests::device::cuda() else { return Ok(()) };
    let mut rng = Rng::new(3);
    let mut mk = |s: [usize; 2], sd: f64| Tensor::randn(0.0, sd, s, DType::F32, &mut rng, &dev);
    let x = mk([128, 64], 1.0)?;
    let mut params = [mk([64, 96], 0.1)?, mk([10, 96], 0.1)?, Tensor::ones([96], DType::F32, &dev)?];
    let t = Tensor::from_vec((0..128u32).map(|i| (i * 3) % 10).collect::<Vec<_>>(), [128], &dev)?;
    let first = train_step(&x, &t, &mut params)?;
    let _ = train_step(&x, &t, &mut params)?;
    let warm = dev.memory_stats();
    let mut last = first;
    for _ in 0..10 {
        last = train_step(&x, &t, &mut params)?;
    }
    let after = dev.memory_stats();
    println!("steady state: {warm:?} -> {after:?}; loss {first:.4} -> {last:.4}");
    assert_eq!(after.device_allocs, warm.device_allocs, "no cuMemAlloc in steady state");
    assert_eq!(after.device_frees, warm.device_frees, "no cuMemFree in steady state");
    assert_eq!(after.current_bytes, warm.current_bytes, "no device memory leak across steps");
    assert!(after.cache_hits > warm.cache_hits);
    assert!(last < first, "SGD lowers the loss: {first} -> {last}");
    Ok(())
}
