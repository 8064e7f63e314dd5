//! Helpers shared by the ELA property tests (`ela_*.rs`): per-kernel input generators whose
//! denominators stay well away from 0, and comparisons.
//!
//! The device-generic tests (`NAME::cpu`, `NAME::cuda`) draw their inputs here on the CPU
//! (rounded once to the dtype under test), compute the f64 quadratic reference on the CPU from
//! those rounded values, [`up`]load the inputs to the device under test and compare what the device
//! computes with the reference; every comparison below accepts tensors of any backend.
#![allow(dead_code)]

use ela_core::{Backend, Cpu, DType, ElaKernel, Rng, Tensor};
use ela_tests::device::{download, upload};

/// Every fused kernel.
pub const KERNELS: [ElaKernel; 6] = ElaKernel::ALL;

fn tensor(v: Vec<f64>, shape: [usize; 4], dtype: DType) -> Tensor<Cpu> {
    // Round once to the target dtype; the f64 reference is then computed from the rounded values.
    Tensor::from_vec(v, shape, &Cpu).unwrap().to_dtype(dtype).unwrap()
}

fn uniform(n: usize, lo: f64, hi: f64, rng: &mut Rng) -> Vec<f64> {
    (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect()
}

/// `(q, k, v)` for `kernel`, drawn so that the quadratic denominator is bounded away from 0 and
/// the signed kernels' linear forms stay well conditioned (docs/ela.md#signed-kernels):
/// - Hadamard Exp, elu+1: q, k ~ N(0, scale^2) (any sign: their features are positive);
/// - Sum: q, k in [0.5, 1.5] (so |q + k|^2 >= D); Sub: q in [0.5, 1.5], k in [-1.5, -0.5];
/// - Blueprint: |q|, |k| <= 0.9 (so q.k > -0.81 and the kernel >= 0.19); Identity: q, k in [0.5, 1.5].
///
/// `v ~ N(0, 1)`.
#[allow(clippy::too_many_arguments)]
pub fn inputs(
    kernel: ElaKernel,
    b: usize,
    h: usize,
    t: usize,
    d: usize,
    dv: usize,
    scale: f64,
    seed: u64,
    dtype: DType,
) -> (Tensor<Cpu>, Tensor<Cpu>, Tensor<Cpu>) {
    let mut rng = Rng::new(seed);
    let n = b * h * t * d;
    let (q, k) = match kernel {
        ElaKernel::HadamardExp | ElaKernel::EluPlusOne => {
            ((0..n).map(|_| scale * rng.normal()).collect(), (0..n).map(|_| scale * rng.normal()).collect())
        }
        ElaKernel::SumSqEuclid | ElaKernel::Identity => {
            (uniform(n, 0.5, 1.5, &mut rng), uniform(n, 0.5, 1.5, &mut rng))
        }
        ElaKernel::SubSqEuclid => (uniform(n, 0.5, 1.5, &mut rng), uniform(n, -1.5, -0.5, &mut rng)),
        ElaKernel::Blueprint => {
            let r = 0.9 / (d as f64).sqrt();
            (uniform(n, -r, r, &mut rng), uniform(n, -r, r, &mut rng))
        }
    };
    let v = (0..b * h * t * dv).map(|_| rng.normal()).collect();
    (tensor(q, [b, h, t, d], dtype), tensor(k, [b, h, t, d], dtype), tensor(v, [b, h, t, dv], dtype))
}

/// `x` (a CPU tensor) on the device under test.
pub fn up<B: Backend>(dev: &B, x: &Tensor<Cpu>) -> Tensor<B> {
    upload(x, dev)
}

/// The same tensor on the CPU in f64.
pub fn f64t<B: Backend>(x: &Tensor<B>) -> Tensor<Cpu> {
    download(x).to_dtype(DType::F64).unwrap()
}

/// Normwise relative difference `max|a - b| / max|b|` (in f64 on the host, so `a` and `b` may
/// live on different devices; NaN counts as infinitely far).
pub fn rel<B1: Backend, B2: Backend>(a: &Tensor<B1>, b: &Tensor<B2>) -> f64 {
    ela_nn::ela::max_rel_diff(&f64t(a), &f64t(b)).unwrap()
}

/// True when every element is finite.
pub fn finite<B: Backend>(x: &Tensor<B>) -> bool {
    x.to_vec_f64().unwrap().iter().all(|v| v.is_finite())
}

/// `max|a - b| / max(max|b|, floor)`: for gradients that can vanish exactly (e.g. `dq` of a
/// one-token sequence), where `floor` is their natural scale `max|dy| * max|v|`.
pub fn rel_floor<B1: Backend, B2: Backend>(a: &Tensor<B1>, b: &Tensor<B2>, floor: f64) -> f64 {
    let (x, y) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
    assert_eq!(a.shape(), b.shape());
    let scale = y.iter().fold(floor, |m, v| m.max(v.abs()));
    x.iter().zip(&y).fold(0.0, |m, (p, q)| {
        let d = (p - q).abs() / scale;
        if d.is_nan() {
            f64::INFINITY
        } else {
            m.max(d)
        }
    })
}

/// `max|x|`.
pub fn max_abs<B: Backend>(x: &Tensor<B>) -> f64 {
    x.to_vec_f64().unwrap().iter().fold(0.0, |m, v| m.max(v.abs()))
}
