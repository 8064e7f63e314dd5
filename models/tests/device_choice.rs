//! The run-time device choice of the library (`ela_models::device`): names parse and print back,
//! `with_device!` runs a generic body on the CPU, and a CUDA device that is not there is a typed
//! `DeviceUnavailable` error (on a GPU machine the same body runs on the GPU and agrees).

mod bin;

use ela_models::device::Device;
use ela_models::ela_core::{Backend, DType, Error, Result, Rng, Tensor};
use ela_models::with_device;

fn product_sum<B: Backend>(dev: &B) -> Result<f64> {
    let mut rng = Rng::new(7);
    let a = Tensor::randn(0.0, 1.0, [5, 6], DType::F64, &mut rng, dev)?;
    let b = Tensor::randn(0.0, 1.0, [6, 2], DType::F64, &mut rng, dev)?;
    a.matmul(&b)?.sum_all()?.to_scalar()
}

#[test]
fn device_names_parse_and_print_back() {
    for (s, d) in [("cpu", Device::Cpu), ("cuda", Device::Cuda(0)), ("cuda:3", Device::Cuda(3))] {
        assert_eq!(s.parse::<Device>().unwrap(), d);
    }
    assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
    assert_eq!(Device::Cpu.to_string().parse::<Device>().unwrap(), Device::Cpu);
    for bad in ["gpu", "cuda:", "cuda:x", "CPU", ""] {
        let e = bad.parse::<Device>().unwrap_err();
        assert!(e.to_string().contains("expected cpu, cuda or cuda:N"), "{bad}: {e}");
    }
}

#[test]
fn with_device_runs_generic_code_and_reports_a_missing_gpu() {
    let cpu = with_device!(Device::Cpu, |dev| product_sum(dev)).unwrap();
    assert!(cpu.is_finite());
    match with_device!(Device::Cuda(0), |dev| product_sum(dev)) {
        Ok(gpu) => assert!((gpu - cpu).abs() <= 1e-9 * (1.0 + cpu.abs()), "gpu {gpu} vs cpu {cpu}"),
        Err(e) => {
            assert!(std::env::var_os("ELA_REQUIRE_CUDA").is_none(), "ELA_REQUIRE_CUDA is set: {e}");
            assert!(matches!(e, Error::DeviceUnavailable { .. }), "{e:?}");
        }
    }
}

/// Up-front memory checks on a GPU compare with the GPU's free memory (not the host's), which
/// the CUDA device reports through `Backend::available_memory`.
#[test]
fn memory_checks_on_a_gpu_use_its_free_memory() {
    use ela_models::budget::Estimate;
    let Some(gpu) = ela_models::ela_cuda::testing::device_or_skip() else { return };
    if std::env::var_os("ELA_MEMORY_LIMIT").is_some() {
        return ela_models::ela_cuda::testing::skip("memory_checks_on_a_gpu", "ELA_MEMORY_LIMIT overrides the device");
    }
    let free = gpu.available_memory().expect("a CUDA device reports its free memory");
    assert!(free > 0, "free memory {free}");
    let mut fits = Estimate::new();
    fits.add("small", 1 << 20, 1);
    fits.check_on("t", &gpu).unwrap();
    let mut too_big = Estimate::new();
    too_big.add("huge", free + (1 << 30), 1);
    let e = too_big.check_on("t", &gpu).unwrap_err().to_string();
    assert!(e.contains("free GPU memory"), "{e}");
    let e = too_big.check_for("t", Device::Cuda(0)).unwrap_err().to_string();
    assert!(e.contains("free GPU memory"), "{e}");
}

/// `--chunk` is a CPU setting: on a CUDA device a chunk other than the default is refused (the
/// check runs before any device is opened, so it holds on machines without a GPU too).
#[test]
fn a_chunk_for_the_gpu_is_refused_not_ignored() {
    use ela_models::device::check_chunk;
    assert!(check_chunk(64, "cuda:0", "t").is_ok());
    assert!(check_chunk(32, "cpu", "t").is_ok());
    let e = check_chunk(32, "cuda:0", "t").unwrap_err().to_string();
    assert!(e.contains("--chunk 32 applies to the CPU only") && e.contains("--device cpu"), "{e}");
    assert!(check_chunk(0, "cpu", "t").unwrap_err().to_string().contains("at least 1"));
    for args in [
        &["verify", "--device", "cuda", "--chunk", "32"][..],
        &["bench", "decode", "--device", "cuda", "--chunk", "32"][..],
    ] {
        let o = std::process::Command::new(bin::ela_exe()).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("applies to the CPU only") && err.trim().lines().count() == 1, "{args:?}: {err}");
    }
}
