//! Forward correctness of the reductions (sum, mean, max, min, argmax, argmin, logsumexp,
//! cumsum, sum_all / mean_all, sum_to) against `ela_tests::reference`, on every backend
//! (`NAME::cpu`, `NAME::cuda`).
//!
//! The tolerances are the CPU's on CUDA too: its tree reductions and scans add in another order
//! than the sequential reference, but over at most 5 values of magnitude <= 3, where any order is
//! within a few ulps: far inside 1e-12 (f64) and 2e-5 (f32).

mod core_forward_common;

use core_forward_common::*;
use ela_core::{Backend, DType, Shape, Tensor};
use ela_tests::reference::{self as r, RefTensor, TestRng};
use ela_tests::{device_proptest, device_tests};
use proptest::prelude::*;

// ====================================================================== reductions

type RedFn<B> = fn(&Tensor<B>, isize, bool) -> ela_core::Result<Tensor<B>>;
/// (name, op, lane reference, errors on an empty axis)
type RedCase<B> = (&'static str, RedFn<B>, fn(&[f64]) -> f64, bool);

fn reduce_cases<B: Backend>() -> Vec<RedCase<B>> {
    vec![
        ("sum", |t, a, k| t.sum(a, k), r::lane_sum, false),
        ("mean", |t, a, k| t.mean(a, k), r::lane_mean, false),
        ("max", |t, a, k| t.max(a, k), r::lane_max, true),
        ("min", |t, a, k| t.min(a, k), r::lane_min, true),
        ("argmax", |t, a, k| t.argmax(a, k), r::lane_argmax, true),
        ("argmin", |t, a, k| t.argmin(a, k), r::lane_argmin, true),
        ("logsumexp", |t, a, k| t.logsumexp(a, k), r::lane_logsumexp, false),
    ]
}

fn run_reduce<B: Backend>(dev: &B, s: &[usize], seed: u64, l: Lay, dt: DType, ints: bool) -> TestResult {
    let mut rng = TestRng::new(seed);
    let (rt, at) = tol(dt);
    let vals = if ints { Vals::Ints } else { Vals::Uni };
    let (x, t) = input(dev, s, dt, l, vals, &mut rng);
    for (name, op, f, empty_err) in reduce_cases::<B>() {
        let (a, ai) = axis_of(s.len(), &mut rng);
        let keep = rng.below(2) == 0;
        let what = format!("{name} axis {a} keepdim {keep} of {s:?} {dt:?} {l:?}");
        let got = op(&t, a, keep);
        if s[ai] == 0 && empty_err {
            prop_assert!(got.is_err(), "{}: reducing an empty axis must be an error", what);
            continue;
        }
        let got = got.ctx(&what)?;
        if name.starts_with("arg") {
            prop_assert_eq!(got.dtype(), DType::U32, "{}", what);
            check_exact(&got, &r::reduce(&x, ai, keep, f), &what)?;
        } else {
            prop_assert_eq!(got.dtype(), dt, "{}", what);
            check(&got, &r::reduce(&x, ai, keep, f), rt, at, &what)?;
        }
    }
    Ok(())
}

device_proptest! {
    #![proptest_config(cfg())]

    fn reductions_f64<B: Backend>(
        dev: &B,
        s in shape(1..=4, 0..=5),
        seed in any::<u64>(),
        l in lay(),
        ints in any::<bool>(),
    ) {
        run_reduce(dev, &s, seed, l, DType::F64, ints)?;
    }

    fn reductions_f32<B: Backend>(
        dev: &B,
        s in shape(1..=4, 0..=5),
        seed in any::<u64>(),
        l in lay(),
        ints in any::<bool>(),
    ) {
        run_reduce(dev, &s, seed, l, DType::F32, ints)?;
    }

    fn sum_all_mean_all<B: Backend>(dev: &B, s in shape(0..=4, 0..=5), seed in any::<u64>(), l in lay()) {
        let mut rng = TestRng::new(seed);
        let (x, t) = input(dev, &s, DType::F64, l, Vals::Uni, &mut rng);
        let total: f64 = x.data.iter().sum();
        let what = format!("sum_all F64 {s:?} {l:?}");
        let sa = t.sum_all().ctx(&what)?;
        prop_assert_eq!(sa.rank(), 0, "{}", what);
        check(&sa, &RefTensor::full(&[], total), 1e-12, 1e-12, &what)?;
        let what = format!("mean_all F64 {s:?} {l:?}");
        let ma = t.mean_all().ctx(&what)?;
        prop_assert_eq!(ma.rank(), 0, "{}", what);
        check(&ma, &RefTensor::full(&[], total / x.numel() as f64), 1e-12, 1e-12, &what)?;
    }

    fn cumsum_all_modes<B: Backend>(
        dev: &B,
        s in shape(1..=4, 0..=5),
        seed in any::<u64>(),
        l in lay(),
        f32_ in any::<bool>(),
    ) {
        let mut rng = TestRng::new(seed);
        let dt = if f32_ { DType::F32 } else { DType::F64 };
        let (rt, at) = tol(dt);
        let (x, t) = input(dev, &s, dt, l, Vals::Uni, &mut rng);
        for (exclusive, reverse) in [(false, false), (true, false), (false, true), (true, true)] {
            let (a, ai) = axis_of(s.len(), &mut rng);
            let what = format!("cumsum axis {a} exclusive {exclusive} reverse {reverse} of {s:?} {dt:?} {l:?}");
            let got = t.cumsum(a, exclusive, reverse).ctx(&what)?;
            check(&got, &r::cumsum(&x, ai, exclusive, reverse), rt, at, &what)?;
        }
    }

    fn sum_to_is_the_adjoint_of_broadcast<B: Backend>(
        dev: &B,
        out in shape(0..=4, 0..=5),
        seed in any::<u64>(),
        l in lay(),
    ) {
        let mut rng = TestRng::new(seed);
        let target = broadcastable_to(&out, &mut rng);
        let (x, t) = input(dev, &out, DType::F64, l, Vals::Uni, &mut rng);
        let what = format!("sum_to {out:?} {l:?} -> {target:?} F64");
        let got = t.sum_to(&Shape::from(target.clone())).ctx(&what)?;
        check(&got, &r::sum_to(&x, &target), 1e-12, 1e-12, &what)?;
        // <sum_to(x), y> == <x, broadcast(y)>
        let y = rand_ref(&target, &mut rng, Vals::Uni);
        let lhs = r::dot(&r::sum_to(&x, &target), &y);
        let by = tensor(dev, &y, DType::F64).broadcast_as(out.clone())?.to_vec_f64()?;
        let rhs: f64 = x.data.iter().zip(&by).map(|(a, b)| a * b).sum();
        prop_assert!((lhs - rhs).abs() <= 1e-10 * (1.0 + lhs.abs()), "adjoint identity {} vs {}", lhs, rhs);
    }
}

device_tests!(argmax_argmin_first_index_on_ties, logsumexp_is_stable);

/// Ties go to the first index, whatever the reduction order of the device.
fn argmax_argmin_first_index_on_ties<B: Backend>(dev: &B) -> ela_core::Result<()> {
    let x = Tensor::from_vec(vec![1.0f64, 3.0, 3.0, 0.0, 0.0, 3.0], [2, 3], dev)?;
    assert_eq!(x.argmax(1usize, false)?.to_vec::<u32>()?, vec![1, 2]);
    assert_eq!(x.argmin(1usize, false)?.to_vec::<u32>()?, vec![0, 0]);
    assert_eq!(x.argmax(0usize, true)?.to_vec::<u32>()?, vec![0, 0, 0]);
    assert_eq!(x.argmax(0usize, true)?.dims(), &[1, 3]);
    let same = Tensor::from_vec(vec![2.0f32; 5], 5, dev)?;
    assert_eq!(same.argmax(0usize, false)?.to_vec::<u32>()?, vec![0]);
    assert_eq!(same.argmin(-1isize, false)?.to_vec::<u32>()?, vec![0]);
    Ok(())
}

/// Large and -inf inputs neither overflow nor give NaN.
fn logsumexp_is_stable<B: Backend>(dev: &B) -> ela_core::Result<()> {
    let x = Tensor::from_vec(vec![1000.0f64, 1000.0, -1000.0, -1000.0, 1000.0, 0.0], [3, 2], dev)?;
    let got = x.logsumexp(1usize, false)?.to_vec::<f64>()?;
    let ln2 = std::f64::consts::LN_2;
    assert!((got[0] - (1000.0 + ln2)).abs() < 1e-12, "{got:?}");
    assert!((got[1] - (-1000.0 + ln2)).abs() < 1e-12, "{got:?}");
    assert!((got[2] - 1000.0).abs() < 1e-12, "{got:?}");
    let x32 = x.to_dtype(DType::F32)?;
    let got = x32.logsumexp(-1isize, true)?;
    assert_eq!(got.dims(), &[3, 1]);
    let got = got.to_vec::<f32>()?;
    assert!((got[0] - (1000.0 + ln2 as f32)).abs() < 1e-3, "{got:?}");
    assert!(got.iter().all(|v| v.is_finite()));
    // A fully masked row (-inf) gives -inf, not NaN.
    let m = Tensor::from_vec(vec![f64::NEG_INFINITY; 3], [1, 3], dev)?;
    assert_eq!(m.logsumexp(1usize, false)?.to_vec::<f64>()?, vec![f64::NEG_INFINITY]);
    Ok(())
}
