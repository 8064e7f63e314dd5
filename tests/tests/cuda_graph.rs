//! CUDA graph capture and replay (`Cuda::capture`, `CudaGraphExec`), the allocator's rules under
//! capture, in-place writes into a graph's input, and the errors for host synchronisation inside
//! a capture.
//!
//! Its own test binary: the tests read the allocator's counters, so they take one lock and run
//! one at a time (the concurrency test runs its second thread inside that lock). Without a GPU
//! each reports itself skipped (`ela_tests::device::cuda`), unless ELA_REQUIRE_CUDA=1.

use std::sync::Mutex;

use ela_core::{Conv2dParams, DType, Result, Rng, Tensor};
use ela_cuda::Cuda;
use ela_tests::device::cuda as gpu;

static LOCK: Mutex<()> = Mutex::new(());

/// The weights of a small conv net: depthwise 3x3, BN-like affine, SiLU, pointwise, 3x3 stride-2
/// conv, then a linear head and a softmax (matmul, conv and elementwise ops).
struct Net {
    dw: Tensor<Cuda>,
    scale: Tensor<Cuda>,
    shift: Tensor<Cuda>,
    pw: Tensor<Cuda>,
    c3: Tensor<Cuda>,
    fc: Tensor<Cuda>,
}

impl Net {
    fn new(dev: &Cuda, seed: u64) -> Result<Net> {
        let mut rng = Rng::new(seed);
        let mut r = |s: &[usize], sd: f64| Tensor::randn(0.0, sd, s.to_vec(), DType::F32, &mut rng, dev);
        Ok(Net {
            dw: r(&[8, 1, 3, 3], 0.3)?,
            scale: r(&[1, 8, 1, 1], 0.5)?,
            shift: r(&[1, 8, 1, 1], 0.1)?,
            pw: r(&[16, 8, 1, 1], 0.3)?,
            c3: r(&[16, 16, 3, 3], 0.1)?,
            fc: r(&[16 * 6 * 6, 10], 0.05)?,
        })
    }

    fn forward(&self, x: &Tensor<Cuda>) -> Result<Tensor<Cuda>> {
        let p = |s: usize, pd: usize, g: usize| Conv2dParams {
            stride: (s, s),
            padding: (pd, pd),
            dilation: (1, 1),
            groups: g,
        };
        let h = x.conv2d(&self.dw, &p(1, 1, 8))?;
        let h = h.mul(&self.scale)?.add(&self.shift)?.silu()?;
        let h = h.conv2d(&self.pw, &p(1, 0, 1))?.silu()?;
        let h = h.conv2d(&self.c3, &p(2, 1, 1))?.relu()?;
        let h = h.reshape([x.dims()[0], 16 * 6 * 6])?;
        h.matmul(&self.fc)?.softmax(1)
    }
}

fn randn(dev: &Cuda, shape: &[usize], seed: u64) -> Result<Tensor<Cuda>> {
    Tensor::randn(0.0, 1.0, shape.to_vec(), DType::F32, &mut Rng::new(seed), dev)
}

fn max_diff(a: &Tensor<Cuda>, b: &Tensor<Cuda>) -> Result<f64> {
    let (a, b) = (a.to_vec_f64()?, b.to_vec_f64()?);
    assert_eq!(a.len(), b.len());
    Ok(a.iter()
        .zip(&b)
        .map(|(x, y)| if x.is_nan() || y.is_nan() { f64::INFINITY } else { (x - y).abs() })
        .fold(0.0, f64::max))
}

#[test]
fn replay_after_new_input_matches_eager() -> Result<()> {
    let _l = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let Some(dev) = gpu() else { return Ok(()) };
    let net = Net::new(&dev, 1)?;
    let shape = [2, 8, 12, 12];
    let input = randn(&dev, &shape, 10)?;
    // Warm-up: compiles the kernels and fills the cache. The second run happens with the first
    // one's output alive, as the capture will, so the cache then holds every block it needs.
    let eager0 = net.forward(&input)?;
    drop(net.forward(&input)?);
    let before = dev.memory_stats();
    let (graph, out) = dev.capture(|| net.forward(&input))?;
    let after = dev.memory_stats();
    println!("captured {graph:?}; allocator {before:?} -> {after:?}");
    assert!(graph.num_nodes() >= 10, "every op is a node: {}", graph.num_nodes());
    assert_eq!(after.device_allocs, before.device_allocs, "a warm capture makes no cuMemAlloc");
    assert_eq!(after.device_frees, before.device_frees);
    assert!(after.graph_pool_bytes > 0, "the capture's temporaries stay reserved for the graph");
    assert!(!dev.is_capturing());

    graph.replay()?;
    assert!(max_diff(&out, &eager0)? <= 1e-6, "replay == eager on the captured input");

    // New data through the host, then through a device tensor (a strided view of one).
    for round in 0..3u64 {
        let fresh = randn(&dev, &shape, 100 + round)?;
        if round % 2 == 0 {
            dev.write_from_host(&input, &fresh.to_vec::<f32>()?)?;
        } else {
            let t = fresh.transpose(2, 3)?.contiguous()?.transpose(2, 3)?; // not contiguous
            assert!(!t.layout().is_contiguous());
            dev.copy_into(&input, &t)?;
        }
        graph.replay()?;
        let eager = net.forward(&fresh)?;
        let d = max_diff(&out, &eager)?;
        assert!(d <= 1e-6, "round {round}: replay vs eager differ by {d}");
        assert!(max_diff(&out, &eager0)? > 1e-4, "round {round}: the output changed with the input");
    }

    // Rule 1: eager allocations made while the graph lives never alias its blocks. Fill many
    // buffers of the graph's sizes, replay, and check that none changed.
    let sizes = [2 * 8 * 144, 2 * 16 * 144, 2 * 16 * 36, 20, 2 * 8 * 144 * 2];
    let held: Vec<Tensor<Cuda>> =
        sizes.iter().cycle().take(40).map(|&n| Tensor::full(7.0, [n], DType::F32, &dev)).collect::<Result<_>>()?;
    graph.replay()?;
    graph.replay()?;
    for t in &held {
        assert!(t.to_vec::<f32>()?.iter().all(|&v| v == 7.0), "a replay wrote into an eager buffer");
    }
    // Dropping the output keeps its block reserved (it goes to the graph's pool).
    let reserved = dev.memory_stats().graph_pool_bytes;
    let out_bytes = out.elem_count() * 4;
    drop(out);
    assert!(dev.memory_stats().graph_pool_bytes >= reserved + out_bytes);
    graph.replay()?;
    drop(held);
    drop(graph);
    assert_eq!(dev.memory_stats().graph_pool_bytes, 0, "dropping the graph returns its blocks to the cache");
    // The device works as before.
    assert!(max_diff(&net.forward(&input)?, &net.forward(&input)?)? == 0.0);
    Ok(())
}

#[test]
fn host_synchronisation_inside_a_capture_is_an_error() -> Result<()> {
    let _l = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let Some(dev) = gpu() else { return Ok(()) };
    let x = randn(&dev, &[4, 8], 3)?;
    let w = randn(&dev, &[8, 8], 4)?;
    let _ = x.matmul(&w)?.exp()?.to_vec::<f32>()?; // warm
    let expect_err = |what: &str, r: Result<((), ())>| {
        let msg = match r {
            Ok(_) => panic!("{what}: capture should fail"),
            Err(e) => e.to_string(),
        };
        println!("{what}: {msg}");
        assert!(msg.contains("CUDA graph"), "{what}: unclear error: {msg}");
    };
    let wrap = |r: Result<(ela_cuda::CudaGraphExec, ())>| r.map(|_| ((), ()));
    expect_err("to_vec", wrap(dev.capture(|| x.matmul(&w)?.to_vec::<f32>().map(|_| ()))));
    expect_err("to_scalar", wrap(dev.capture(|| x.sum_all()?.to_scalar().map(|_| ()))));
    expect_err("synchronize", wrap(dev.capture(|| dev.synchronize())));
    expect_err("upload", wrap(dev.capture(|| Tensor::from_vec(vec![1f32; 4], [4], &dev).map(|_| ()))));
    expect_err("write_from_host", wrap(dev.capture(|| dev.write_from_host(&x, &[0f32; 32]))));
    // Cross-entropy records without its target check (which reads back to the host; whoever
    // feeds the graph checks the targets it writes): a replay gives the eager loss.
    let t = Tensor::from_vec(vec![1u32, 2, 3, 4], [4], &dev)?;
    let eager = x.cross_entropy(&t, None)?.to_scalar()?;
    let (g, loss) = dev.capture(|| x.cross_entropy(&t, None))?;
    g.replay()?;
    assert_eq!(loss.to_scalar()?, eager, "a recorded cross-entropy gives the eager loss");
    drop(g);
    // A nested capture is refused, and so is freeing memory to the driver.
    let nested = dev.capture(|| dev.capture(|| Ok(())).map(|_| ()));
    assert!(nested.is_err());
    assert!(dev.capture(|| dev.empty_cache()).is_err());
    // A panic inside the closure ends the capture too.
    let p = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dev.capture(|| -> Result<()> { panic!("boom") })));
    assert!(p.is_err());
    assert!(!dev.is_capturing());
    // After all of that the device and a new capture work.
    let eager = x.matmul(&w)?.exp()?;
    let (g, y) = dev.capture(|| x.matmul(&w)?.exp())?;
    g.replay()?;
    assert!(max_diff(&y, &eager)? <= 1e-5);
    Ok(())
}

#[test]
fn other_threads_run_eagerly_while_one_captures() -> Result<()> {
    let _l = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let Some(dev) = gpu() else { return Ok(()) };
    let net = Net::new(&dev, 5)?;
    let input = randn(&dev, &[1, 8, 12, 12], 6)?;
    let reference = net.forward(&input)?.to_vec::<f32>()?;
    let a = randn(&dev, &[64, 64], 7)?;
    let expect = a.matmul(&a)?.to_vec::<f32>()?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| -> Result<()> {
        let worker = s.spawn(|| -> Result<usize> {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || n < 5 {
                assert_eq!(a.matmul(&a)?.to_vec::<f32>()?, expect, "eager work beside a capture");
                n += 1;
            }
            Ok(n)
        });
        for _ in 0..5 {
            let (g, out) = dev.capture(|| net.forward(&input))?;
            g.replay()?;
            let d = out.to_vec::<f32>()?.iter().zip(&reference).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(d <= 1e-6, "replay beside eager work differs by {d}");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let n = worker.join().expect("worker")?;
        println!("{n} eager products on another thread during 5 captures");
        Ok(())
    })
}

/// Sum-sq ELA on the Identity tiles (its chunk scans make the extra terms' chunk sums, a pass
/// prefixes them, the chunk kernels read them): a capture of its forward and backward replays to
/// the eager outputs and gradients, for the captured inputs and for new ones.
#[test]
fn a_capture_records_the_signed_ela_kernels() -> Result<()> {
    use ela_core::ela::{ElaKernel, ElaParams};
    let _l = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let Some(dev) = gpu() else { return Ok(()) };
    let p = ElaParams { kernel: ElaKernel::SumSqEuclid, causal: true, chunk: 64 };
    let shape = [2, 2, 700, 64];
    let u = |lo, hi, seed| Tensor::rand_uniform(lo, hi, shape, DType::F32, &mut Rng::new(seed), &dev);
    let (q, k, v, dy) = (u(0.5, 1.5, 21)?, u(0.5, 1.5, 22)?, u(-1.0, 1.0, 23)?, u(-1.0, 1.0, 24)?);
    // Forward with its saved state, then the backward from it.
    let step = || -> Result<Vec<Tensor<Cuda>>> {
        ela_cuda::with_signed_tiles(true, || {
            let (y, saved) = q.ela_saving(&k, &v, &p)?;
            let (dq, dk, dv) = Tensor::ela_backward_saved(&q, &k, &v, &y, &dy, &p, saved.as_ref())?;
            Ok(vec![y, dq, dk, dv])
        })
    };
    // The gradient kernel's row and column sums add in shared memory in no fixed order: runs
    // agree to f32 rounding, not bit for bit.
    let close = |a: &[Tensor<Cuda>], b: &[Tensor<Cuda>], what: &str| -> Result<()> {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let scale = y.to_vec_f64()?.iter().fold(0f64, |m, v| m.max(v.abs()));
            let d = max_diff(x, y)?;
            assert!(d <= 1e-5 * scale.max(1.0), "{what}: output {i} differs by {d} (scale {scale})");
        }
        Ok(())
    };
    let eager = step()?;
    drop(step()?);
    let (graph, outs) = dev.capture(step)?;
    graph.replay()?;
    close(&outs, &eager, "replay on the captured inputs")?;
    dev.write_from_host(&q, &u(0.4, 1.6, 31)?.to_vec::<f32>()?)?;
    dev.write_from_host(&dy, &u(-2.0, 2.0, 32)?.to_vec::<f32>()?)?;
    graph.replay()?;
    let fresh = step()?;
    close(&outs, &fresh, "replay on new inputs")?;
    assert!(max_diff(&outs[0], &eager[0])? > 1e-3, "the output changed with the input");
    Ok(())
}
