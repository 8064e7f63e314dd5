//! The multi-tensor optimizer ops on every backend (`NAME::cpu`, `NAME::cuda`):
//! `Tensor::sum_squares_many` against an f64 sum over the elements, and
//! `Tensor::adamw_update_many` against `Tensor::adamw_update` of one parameter at a time, bit for
//! bit. The CUDA backend splits long lists into several launches (32 parameters per AdamW
//! launch, 96 buffers per sum-of-squares launch) and each buffer into fixed segments, so the
//! lists below are longer than that and the sizes straddle the segments.

mod core_forward_common;

use core_forward_common::*;
use ela_core::{AdamWStep, Backend, DType, Error, Tensor};
use ela_tests::reference::TestRng;
use ela_tests::{device_proptest, device_tests};
use proptest::prelude::*;

/// `sum(x^2)` over every element of `xs`, in f64 (the values are exact in f64).
fn sum_squares_ref(xs: &[Vec<f64>]) -> f64 {
    xs.iter().flatten().map(|v| v * v).sum()
}

fn float_dtype(i: usize) -> DType {
    [DType::F32, DType::F64, DType::BF16, DType::F16][i % 4]
}

device_proptest! {
    #![proptest_config(cfg())]

    /// Lists of 0..=6 tensors of mixed float dtypes and any layout (views are made contiguous).
    fn sum_squares_many_is_the_f64_sum<B: Backend>(
        dev: &B,
        shapes in prop::collection::vec((shape(0..=3, 0..=5), 0usize..4, lay_nb()), 0..=6),
        seed in any::<u64>(),
    ) {
        let mut rng = TestRng::new(seed);
        let (mut refs, mut ts) = (Vec::new(), Vec::new());
        for (s, d, l) in &shapes {
            let (_, t) = input(dev, s, float_dtype(*d), *l, Vals::Uni, &mut rng);
            // The reference from the tensor's own (rounded) values.
            refs.push(t.to_vec_f64().map_err(|e| TestCaseError::fail(e.to_string()))?);
            ts.push(t);
        }
        let views: Vec<&Tensor<B>> = ts.iter().collect();
        let got = Tensor::sum_squares_many(&views, dev).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(got.dtype(), DType::F64);
        prop_assert_eq!(got.rank(), 0);
        let got = got.to_scalar().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let want = sum_squares_ref(&refs);
        prop_assert!((got - want).abs() <= 1e-12 * want, "{got} vs {want}");
    }
}

device_tests!(
    sum_squares_many_over_long_lists,
    adamw_update_many_has_the_bits_of_one_at_a_time,
    multi_tensor_errors_are_typed
);

/// Sizes around the CUDA segments (16384 elements per block of the sum, 4096 of AdamW).
const SIZES: [usize; 10] = [0, 1, 31, 4095, 4097, 16383, 16385, 40_000, 3, 70_001];

/// 130 buffers (two launches of the CUDA sum) of mixed dtypes; the same bits on a second call.
fn sum_squares_many_over_long_lists<B: Backend>(dev: &B) -> ela_core::Result<()> {
    let mut rng = TestRng::new(7);
    let mut ts = Vec::new();
    for i in 0..130 {
        let n = SIZES[i % SIZES.len()];
        let data: Vec<f64> = (0..n).map(|_| rng.range(-3.0, 3.0)).collect();
        ts.push(Tensor::from_vec(data, [n], dev)?.to_dtype(float_dtype(i / SIZES.len()))?);
    }
    let views: Vec<&Tensor<B>> = ts.iter().collect();
    let refs: Vec<Vec<f64>> = ts.iter().map(|t| t.to_vec_f64()).collect::<ela_core::Result<_>>()?;
    let got = Tensor::sum_squares_many(&views, dev)?.to_scalar()?;
    let want = sum_squares_ref(&refs);
    assert!((got - want).abs() <= 1e-12 * want, "{got} vs {want}");
    assert_eq!(Tensor::sum_squares_many(&views, dev)?.to_scalar()?.to_bits(), got.to_bits());
    assert_eq!(Tensor::sum_squares_many(&[], dev)?.to_scalar()?, 0.0);
    Ok(())
}

fn step(t: u64, decay: f64, beta2: f64) -> AdamWStep {
    let beta1 = 0.9;
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

/// 70 parameters (three CUDA launches of 32), runs of f32 and f64, two values of beta2 (which
/// travel once per launch), different step counts and decays, empty parameters.
fn adamw_update_many_has_the_bits_of_one_at_a_time<B: Backend>(dev: &B) -> ela_core::Result<()> {
    let mut rng = TestRng::new(11);
    let mut ops = Vec::new();
    for i in 0..70 {
        let n = SIZES[i % SIZES.len()];
        let dtype = if (i / 20) % 2 == 0 { DType::F32 } else { DType::F64 };
        let mut make = |lo: f64, hi: f64| -> ela_core::Result<Tensor<B>> {
            let data: Vec<f64> = (0..n).map(|_| rng.range(lo, hi)).collect();
            Tensor::from_vec(data, [n], dev)?.to_dtype(dtype)
        };
        let (p, g, m, v) = (make(-1.0, 1.0)?, make(-1.0, 1.0)?, make(-0.1, 0.1)?, make(0.0, 0.01)?);
        let s = step(1 + (i % 5) as u64, if i % 3 == 0 { 1.0 } else { 1.0 - 3e-4 }, if i < 50 { 0.95 } else { 0.999 });
        ops.push((p, g, m, v, s));
    }
    let args: Vec<_> = ops.iter().map(|(p, g, m, v, s)| (p, g, m, v, *s)).collect();
    let many = Tensor::adamw_update_many(&args)?;
    assert_eq!(many.len(), ops.len());
    for (i, ((p, g, m, v, s), got)) in ops.iter().zip(&many).enumerate() {
        let want = p.adamw_update(g, m, v, s)?;
        for (what, a, b) in [("p", &got.0, &want.0), ("m", &got.1, &want.1), ("v", &got.2, &want.2)] {
            assert_eq!(a.shape(), b.shape());
            let (a, b) = (a.to_vec_f64()?, b.to_vec_f64()?);
            let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "parameter {i} ({:?}, {} elements): {what} differs", p.dtype(), p.elem_count());
        }
    }
    assert!(Tensor::<B>::adamw_update_many(&[])?.is_empty());
    Ok(())
}

fn multi_tensor_errors_are_typed<B: Backend>(dev: &B) -> ela_core::Result<()> {
    let p = Tensor::zeros([4], DType::F32, dev)?;
    let p5 = Tensor::zeros([5], DType::F32, dev)?;
    let h = Tensor::zeros([4], DType::BF16, dev)?;
    let s = step(1, 1.0, 0.95);
    let e = Tensor::adamw_update_many(&[(&p, &p, &p, &p, s), (&p, &p5, &p, &p, s)]).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { op: "adamw_update_many", .. }), "{e}");
    let e = Tensor::adamw_update_many(&[(&h, &h, &h, &h, s)]).unwrap_err();
    assert!(matches!(e, Error::UnsupportedDType { op: "adamw_update_many", .. }), "{e}");
    let ids = Tensor::zeros([3], DType::U32, dev)?;
    let e = Tensor::sum_squares_many(&[&p, &ids], dev).unwrap_err();
    assert!(matches!(e, Error::UnsupportedDType { op: "sum_squares_many", .. }), "{e}");
    Ok(())
}
