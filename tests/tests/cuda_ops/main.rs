//! CUDA backend vs CPU backend: every op of the `Backend` trait, forward and backward, on random
//! data and shapes, with contiguous and non-contiguous inputs, plus gradient checks on the GPU,
//! the caching allocator and the typed errors. Where `device_tests!` runs one test on every
//! backend against a reference, these compare the two backends directly, case by case, on the
//! paths of their own the CUDA kernels have (tiling, tensor cores, fast paths).
//!
//! One test binary on purpose: NVRTC compiles the kernel files once per process.
//!
//! The device comes from the one harness, `ela_tests::device::cuda`: without a usable GPU every
//! test writes `skipped: no CUDA device: <test>` to stderr and returns, and the binary ends with a
//! `SKIPPED N test(s)` line (`ela_cuda::testing`); with `ELA_REQUIRE_CUDA=1` (set by the GPU
//! runner) it fails instead.

mod alloc_errors;
mod conv;
mod ela;
mod ela_fast;
mod ela_gemm;
mod elementwise;
mod grads;
mod index;
mod nn;
mod optim;
mod reduce_matmul;

use ela_core::{Cpu, DType, Rng, Shape, Tensor};
use ela_cuda::Cuda;

pub use ela_tests::device::{cuda as gpu, proptest_cases as cases};
pub use ela_tests::reference::rel_err;

/// The same tensor on the CPU and on the GPU.
pub struct Pair {
    pub cpu: Tensor<Cpu>,
    pub gpu: Tensor<Cuda>,
}

impl Pair {
    /// Copies a CPU tensor to the GPU.
    pub fn new(cpu: Tensor<Cpu>, dev: &Cuda) -> Pair {
        let gpu = cpu.to_device(dev).expect("upload");
        Pair { cpu, gpu }
    }
    /// Standard normal values of `dtype`.
    pub fn randn(shape: &[usize], dtype: DType, seed: u64, dev: &Cuda) -> Pair {
        let t = Tensor::randn(0.0, 1.0, shape.to_vec(), dtype, &mut Rng::new(seed), &Cpu).expect("randn");
        Pair::new(t, dev)
    }
    /// Uniform values in `[lo, hi)`.
    pub fn uniform(shape: &[usize], lo: f64, hi: f64, dtype: DType, seed: u64, dev: &Cuda) -> Pair {
        let t = Tensor::rand_uniform(lo, hi, shape.to_vec(), dtype, &mut Rng::new(seed), &Cpu).expect("rand");
        Pair::new(t, dev)
    }
    /// `u32` values in `0..n`.
    pub fn ids(shape: &[usize], n: u32, seed: u64, dev: &Cuda) -> Pair {
        let mut rng = Rng::new(seed);
        let count = Shape::from(shape.to_vec()).elem_count();
        let v: Vec<u32> = (0..count).map(|_| rng.below(n as u64) as u32).collect();
        Pair::new(Tensor::from_vec(v, shape.to_vec(), &Cpu).expect("ids"), dev)
    }
    /// A non-contiguous view with the logical shape `shape`: the data is stored with the last two
    /// axes swapped and a padding column, then viewed back (transpose + narrow).
    pub fn randn_strided(shape: &[usize], dtype: DType, seed: u64, dev: &Cuda) -> Pair {
        let r = shape.len();
        assert!(r >= 2);
        let mut stored = shape.to_vec();
        stored.swap(r - 2, r - 1);
        stored[r - 1] += 1;
        let p = Pair::randn(&stored, dtype, seed, dev);
        let f = |t: &Tensor<Cpu>| t.narrow(r - 1, 1, shape[r - 2]).unwrap().transpose(r - 2, r - 1).unwrap();
        let g = |t: &Tensor<Cuda>| t.narrow(r - 1, 1, shape[r - 2]).unwrap().transpose(r - 2, r - 1).unwrap();
        let out = Pair { cpu: f(&p.cpu), gpu: g(&p.gpu) };
        assert!(!out.gpu.layout().is_contiguous() || shape[r - 1] <= 1);
        out
    }
}

/// Runs the same expression on the CPU and the GPU halves of `Pair`s:
/// `both!(|a, b| a.add(b)?)` gives `(cpu_result, gpu_result)`.
#[macro_export]
macro_rules! both {
    (|$($t:ident),*| $e:expr) => {{
        let c = { $(let $t = &$t.cpu;)* $e };
        let g = { $(let $t = &$t.gpu;)* $e };
        (c, g)
    }};
}

/// Default (rtol, atol) of a GPU result against the CPU backend's result in `dtype`: f32/f64
/// differ only by summation order and last-ulp library differences; f16/bf16 may land one unit
/// in the last place apart after rounding the same f32 value.
pub fn tol(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F64 => (1e-11, 1e-12),
        DType::F32 => (2e-5, 1e-6),
        DType::F16 => (2e-3, 1e-4),
        DType::BF16 => (1.6e-2, 1e-3),
        _ => (0.0, 0.0),
    }
}

/// Asserts that a GPU result equals the CPU backend's within `tol(dtype)` (NaN matches NaN), with
/// the same shape and dtype.
pub fn check(name: &str, cpu: &Tensor<Cpu>, gpu: &Tensor<Cuda>) {
    let (rtol, atol) = tol(cpu.dtype());
    check_tol(name, cpu, gpu, rtol, atol)
}

/// [`check`] with explicit tolerances.
pub fn check_tol(name: &str, cpu: &Tensor<Cpu>, gpu: &Tensor<Cuda>, rtol: f64, atol: f64) {
    assert_eq!(cpu.shape(), gpu.shape(), "{name}: shapes differ");
    assert_eq!(cpu.dtype(), gpu.dtype(), "{name}: dtypes differ");
    let (c, g) = (cpu.to_vec_f64().unwrap(), gpu.to_vec_f64().unwrap());
    for (i, (x, y)) in c.iter().zip(&g).enumerate() {
        let ok = (x.is_nan() && y.is_nan()) || x == y || (x - y).abs() <= atol + rtol * x.abs();
        assert!(ok, "{name}: element {i} of shape {}: cpu {x:e} vs gpu {y:e} ({:?})", cpu.shape(), cpu.dtype());
    }
}

pub const FLOATS: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];
pub const ALL: [DType; 6] = [DType::U8, DType::U32, DType::F16, DType::BF16, DType::F32, DType::F64];
