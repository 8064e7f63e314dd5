//! NCCL collectives of `ela_cuda::NcclComm` against a CPU computation, in a group of one rank
//! (one process, one GPU). Without a GPU it prints why and reports itself skipped
//! (`ela_tests::device::cuda`), unless ELA_REQUIRE_CUDA=1; a GPU machine without libnccl fails
//! under ELA_REQUIRE_CUDA=1 and is skipped otherwise.
//!
//! Several ranks in one process on one GPU are not tested: NCCL refuses two ranks of one
//! communicator on the same device ("Duplicate GPU detected", ncclInvalidUsage). The multi-rank
//! paths are covered on the CPU (the thread group and `ela launch` over TCP) and by
//! `benches/scale_out.sh` on a multi-GPU machine (docs/distributed.md).

use std::time::Duration;

use ela_autograd::Var;
use ela_core::{CommOp, Communicator, Cpu, DType, Error, Result, Rng, Tensor};
use ela_cuda::NcclComm;
use ela_nn::ddp::{DdpConfig, GradReducer};

fn comm() -> Option<NcclComm> {
    let dev = ela_tests::device::cuda()?;
    match NcclComm::unique_id().and_then(|id| NcclComm::new(&dev, 0, 1, &id, Duration::from_secs(60))) {
        Ok(c) => Some(c),
        Err(e) if ela_cuda::testing::cuda_required() => panic!("NCCL on {dev:?}: {e}"),
        Err(e) => {
            ela_cuda::testing::skip("nccl", &e.to_string());
            None
        }
    }
}

/// A collective's name, its result, and the expected dims and values.
type Case = (&'static str, Tensor<ela_cuda::Cuda>, Vec<usize>, Vec<f64>);

#[test]
fn single_rank_collectives_equal_the_cpu() -> Result<()> {
    let Some(c) = comm() else { return Ok(()) };
    let dev = c.device().clone();
    println!("NCCL version {}", NcclComm::version()?);
    let mut rng = Rng::new(3);
    for dtype in [DType::F32, DType::BF16, DType::F64] {
        let x = Tensor::randn(0.0, 1.0, [6, 5], DType::F32, &mut rng, &Cpu)?.to_dtype(dtype)?;
        let want = x.to_vec_f64()?;
        let g = x.to_device(&dev)?;
        // Also a strided view: the communicator must read its logical elements.
        let gt = g.transpose(0, 1)?;
        let cases: Vec<Case> = vec![
            ("all_reduce sum", c.all_reduce(&g, CommOp::Sum)?, vec![6, 5], want.clone()),
            ("all_reduce avg", c.all_reduce_start(&g, CommOp::Avg)?.wait()?, vec![6, 5], want.clone()),
            ("broadcast", c.broadcast(&g, 0)?, vec![6, 5], want.clone()),
            ("all_gather", c.all_gather(&g)?, vec![6, 5], want.clone()),
            ("reduce_scatter", c.reduce_scatter(&g, CommOp::Sum)?, vec![6, 5], want.clone()),
            (
                "all_reduce of a transposed view",
                c.all_reduce(&gt, CommOp::Sum)?,
                vec![5, 6],
                x.transpose(0, 1)?.contiguous()?.to_vec_f64()?,
            ),
        ];
        for (what, got, dims, want) in cases {
            assert_eq!(got.dims(), &dims[..], "{what} {dtype:?}");
            assert_eq!(got.dtype(), dtype, "{what}");
            assert_eq!(got.to_vec_f64()?, want, "{what} {dtype:?}: one rank's collective is the identity");
        }
        // The input is not written.
        assert_eq!(g.to_vec_f64()?, want);
    }
    Ok(())
}

#[test]
fn a_collective_overlaps_compute_queued_after_it_and_orders_before_later_reads() -> Result<()> {
    let Some(c) = comm() else { return Ok(()) };
    let dev = c.device().clone();
    let mut rng = Rng::new(4);
    let x = Tensor::randn(0.0, 1.0, [1 << 20], DType::F32, &mut rng, &Cpu)?;
    let g = x.to_device(&dev)?;
    let pending = c.all_reduce_start(&g, CommOp::Sum)?;
    // Compute queued meanwhile, and a result used right after the wait.
    let y = g.mul_scalar(2.0)?;
    let r = pending.wait()?.add(&y)?;
    // One rank: the sum is `x` itself, so `r = x + 2x` rounded to f32 once, like this.
    let want = x.to_vec_f64()?.iter().map(|&v| f64::from(v as f32 + 2.0 * v as f32)).collect::<Vec<_>>();
    let got = r.to_vec_f64()?;
    // Compare without printing a million elements on failure: name the first mismatch.
    if let Some(i) = (0..want.len()).find(|&i| got[i] != want[i]) {
        panic!("element {i}: got {}, want {} (x = {})", got[i], want[i], x.to_vec_f64()?[i]);
    }
    Ok(())
}

#[test]
fn bucketed_gradient_averaging_over_nccl_equals_plain_backward() -> Result<()> {
    // The data-parallel machinery on the GPU (the backward hook starting NCCL all-reduces on the
    // comm stream mid-backward, the presence flags filled on the device, the wait before the
    // optimizer reads): with one rank the average is the gradient itself.
    let Some(c) = comm() else { return Ok(()) };
    let dev = c.device().clone();
    let mut rng = Rng::new(5);
    let mut param = |dims: &[usize]| -> Result<Var<ela_cuda::Cuda>> {
        Ok(Var::param(Tensor::randn(0.0, 0.5, dims.to_vec(), DType::F32, &mut rng, &Cpu)?.to_device(&dev)?))
    };
    let (w1, w2, unused) = (param(&[16, 32])?, param(&[32, 8])?, param(&[8])?);
    let x = Var::constant(Tensor::randn(0.0, 1.0, [4, 16], DType::F32, &mut Rng::new(6), &Cpu)?.to_device(&dev)?);
    let loss = x.matmul(&w1)?.relu()?.matmul(&w2)?.square()?.mean_all()?;
    let plain = loss.backward()?;
    for bucket_bytes in [0, 1 << 20] {
        let params = vec![w1.clone(), w2.clone(), unused.clone()];
        let mut red = GradReducer::new(&c, params, DdpConfig { bucket_bytes });
        let mut g = loss.backward_with_hook(&mut |v, g| red.on_grad(v, g))?;
        red.finish(&mut g)?;
        for (name, v) in [("w1", &w1), ("w2", &w2)] {
            let (got, want) = (g.get(v).unwrap().to_vec_f64()?, plain.get(v).unwrap().to_vec_f64()?);
            assert_eq!(got, want, "{name}, buckets of {bucket_bytes} bytes");
        }
        assert!(g.get(&unused).is_none(), "a parameter no rank has a gradient for gets none");
    }
    Ok(())
}

#[test]
fn bad_calls_are_typed_errors() {
    let Some(c) = comm() else { return };
    let dev = c.device().clone();
    let x = Tensor::zeros([3, 2], DType::F32, &dev).unwrap();
    assert!(matches!(c.broadcast(&x, 1), Err(Error::InvalidArgument { .. })));
    let s = Tensor::scalar(1.0, DType::F32, &dev).unwrap();
    assert!(matches!(c.all_gather(&s), Err(Error::RankMismatch { .. })));
    let id = NcclComm::unique_id().unwrap();
    assert!(NcclComm::new(&dev, 1, 1, &id, Duration::from_secs(1)).is_err(), "rank 1 of a group of 1");
}

#[test]
fn without_libnccl_the_calls_are_typed_errors_not_panics() {
    // Runs everywhere: on a machine with NCCL it checks the id instead.
    match NcclComm::unique_id() {
        Ok(id) => assert!(id.iter().any(|&b| b != 0), "an NCCL unique id is not all zeros"),
        Err(Error::DeviceUnavailable { reason, .. }) => {
            assert!(reason.contains("NCCL library was not found"), "{reason}")
        }
        Err(e) => panic!("unexpected error kind: {e}"),
    }
    if let Err(e) = NcclComm::version() {
        assert!(matches!(e, Error::DeviceUnavailable { .. }), "{e}");
    }
}
