//! Forward correctness of the reductions (sum, mean, max, min, argmax, argmin, logsumexp,
//! cumsum, sum_all / mean_all, sum_to) against `ela_tests::reference`.

mod core_forward_common;

use core_forward_common::*;
use ela_core::{Cpu, DType, Shape, Tensor};
use ela_tests::reference::{self as r, RefTensor, TestRng};
use proptest::prelude::*;

// ====================================================================== reductions

type RedFn = fn(&T, isize, bool) -> ela_core::Result<T>;
/// (name, op, lane reference, errors on an empty axis)
type RedCase = (&'static str, RedFn, fn(&[f64]) -> f64, bool);

fn reduce_cases() -> Vec<RedCase> {
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

fn run_reduce(s: &[usize], seed: u64, l: Lay, dt: DType, ints: bool) -> TestResult {
    let mut rng = TestRng::new(seed);
    let (rt, at) = tol(dt);
    let vals = if ints { Vals::Ints } else { Vals::Uni };
    let (x, t) = input(s, dt, l, vals, &mut rng);
    for (name, op, f, empty_err) in reduce_cases() {
        let (a, ai) = axis_of(s.len(), &mut rng);
        let keep = rng.below(2) == 0;
        let what = format!("{name} axis {a} keepdim {keep} of {s:?} {dt:?} {l:?}");
        let got = op(&t, a, keep);
        if s[ai] == 0 && empty_err {
            prop_assert!(got.is_err(), "{}: reducing an empty axis must be an error", what);
            continue;
        }
        let got = got?;
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

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn reductions_f64(s in shape(1..=4, 0..=5), seed in any::<u64>(), l in lay(), ints in any::<bool>()) {
        run_reduce(&s, seed, l, DType::F64, ints)?;
    }

    #[test]
    fn reductions_f32(s in shape(1..=4, 0..=5), seed in any::<u64>(), l in lay(), ints in any::<bool>()) {
        run_reduce(&s, seed, l, DType::F32, ints)?;
    }

    #[test]
    fn sum_all_mean_all(s in shape(0..=4, 0..=5), seed in any::<u64>(), l in lay()) {
        let mut rng = TestRng::new(seed);
        let (x, t) = input(&s, DType::F64, l, Vals::Uni, &mut rng);
        let total: f64 = x.data.iter().sum();
        let sa = t.sum_all()?;
        prop_assert_eq!(sa.rank(), 0);
        check(&sa, &RefTensor::full(&[], total), 1e-12, 1e-12, "sum_all")?;
        let ma = t.mean_all()?;
        prop_assert_eq!(ma.rank(), 0);
        check(&ma, &RefTensor::full(&[], total / x.numel() as f64), 1e-12, 1e-12, "mean_all")?;
    }

    #[test]
    fn cumsum_all_modes(s in shape(1..=4, 0..=5), seed in any::<u64>(), l in lay(), f32_ in any::<bool>()) {
        let mut rng = TestRng::new(seed);
        let dt = if f32_ { DType::F32 } else { DType::F64 };
        let (rt, at) = tol(dt);
        let (x, t) = input(&s, dt, l, Vals::Uni, &mut rng);
        for (exclusive, reverse) in [(false, false), (true, false), (false, true), (true, true)] {
            let (a, ai) = axis_of(s.len(), &mut rng);
            let got = t.cumsum(a, exclusive, reverse)?;
            check(&got, &r::cumsum(&x, ai, exclusive, reverse), rt, at,
                  &format!("cumsum axis {a} exclusive {exclusive} reverse {reverse}"))?;
        }
    }

    #[test]
    fn sum_to_is_the_adjoint_of_broadcast(out in shape(0..=4, 0..=5), seed in any::<u64>(), l in lay()) {
        let mut rng = TestRng::new(seed);
        let target = broadcastable_to(&out, &mut rng);
        let (x, t) = input(&out, DType::F64, l, Vals::Uni, &mut rng);
        let got = t.sum_to(&Shape::from(target.clone()))?;
        check(&got, &r::sum_to(&x, &target), 1e-12, 1e-12, &format!("sum_to {out:?} -> {target:?}"))?;
        // <sum_to(x), y> == <x, broadcast(y)>
        let y = rand_ref(&target, &mut rng, Vals::Uni);
        let lhs = r::dot(&r::sum_to(&x, &target), &y);
        let by = tensor(&y, DType::F64).broadcast_as(out.clone())?.to_vec_f64()?;
        let rhs: f64 = x.data.iter().zip(&by).map(|(a, b)| a * b).sum();
        prop_assert!((lhs - rhs).abs() <= 1e-10 * (1.0 + lhs.abs()), "adjoint identity {} vs {}", lhs, rhs);
    }
}

#[test]
fn argmax_argmin_first_index_on_ties() -> ela_core::Result<()> {
    let x = Tensor::from_vec(vec![1.0f64, 3.0, 3.0, 0.0, 0.0, 3.0], [2, 3], &Cpu)?;
    assert_eq!(x.argmax(1usize, false)?.to_vec::<u32>()?, vec![1, 2]);
    assert_eq!(x.argmin(1usize, false)?.to_vec::<u32>()?, vec![0, 0]);
    assert_eq!(x.argmax(0usize, true)?.to_vec::<u32>()?, vec![0, 0, 0]);
    assert_eq!(x.argmax(0usize, true)?.dims(), &[1, 3]);
    let same = Tensor::from_vec(vec![2.0f32; 5], 5, &Cpu)?;
    assert_eq!(same.argmax(0usize, false)?.to_vec::<u32>()?, vec![0]);
    assert_eq!(same.argmin(-1isize, false)?.to_vec::<u32>()?, vec![0]);
    Ok(())
}

#[test]
fn logsumexp_is_stable() -> ela_core::Result<()> {
    let x = Tensor::from_vec(vec![1000.0f64, 1000.0, -1000.0, -1000.0, 1000.0, 0.0], [3, 2], &Cpu)?;
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
    let m = Tensor::from_vec(vec![f64::NEG_INFINITY; 3], [1, 3], &Cpu)?;
    assert_eq!(m.logsumexp(1usize, false)?.to_vec::<f64>()?, vec![f64::NEG_INFINITY]);
    Ok(())
}
