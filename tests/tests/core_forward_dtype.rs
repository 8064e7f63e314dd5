//! Dtype casts and round trips, half-precision (f16 / bf16) ops, integer data through the copy
//! ops, and the random constructors.

mod core_forward_common;

use core_forward_common::*;
use ela_core::{CmpOp, Cpu, DType, Rng};
use ela_tests::reference::{self as r, RefTensor, TestRng};
use proptest::prelude::*;

// ====================================================================== dtype casts

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn dtype_round_trips(s in shape(0..=4, 0..=5), seed in any::<u64>(), l in lay()) {
        let mut rng = TestRng::new(seed);
        let (x, t) = input(&s, DType::F64, l, Vals::Wide, &mut rng);
        // f64 -> f32 rounds to nearest, f32 -> f64 is exact.
        let t32 = t.to_dtype(DType::F32)?;
        prop_assert_eq!(t32.dtype(), DType::F32);
        check_exact(&t32, &x.map(|v| v as f32 as f64), "f64 -> f32")?;
        check_exact(&t32.to_dtype(DType::F64)?, &x.map(|v| v as f32 as f64), "f64 -> f32 -> f64")?;
        // Half types: relative error at most half an ulp (f16: 2^-11, bf16: 2^-8).
        for (dt, rel) in [(DType::F16, 1.0 / 2048.0), (DType::BF16, 1.0 / 256.0)] {
            let h = t.to_dtype(dt)?;
            prop_assert_eq!(h.dtype(), dt);
            let back = h.to_dtype(DType::F64)?;
            check(&back, &x, rel, 1e-7, &format!("f64 -> {dt:?} -> f64"))?;
            let back32 = t32.to_dtype(dt)?.to_dtype(DType::F32)?;
            check(&back32, &x, rel * 1.01, 1e-7, &format!("f32 -> {dt:?} -> f32"))?;
            // Rounding is idempotent: a value already representable survives exactly.
            let once = back.to_vec_f64()?;
            check_exact(&back.to_dtype(dt)?.to_dtype(DType::F32)?, &RefTensor::new(s.clone(), once), &format!("{dt:?} idempotent"))?;
        }
        // Small integers are exact in every float type and in u32.
        let ints = x.map(|v| v.abs().floor().min(200.0));
        let ti = with_layout(&ints, DType::F64, l, &mut rng);
        for dt in [DType::F32, DType::F16, DType::BF16, DType::U32, DType::U8] {
            check_exact(&ti.to_dtype(dt)?.to_dtype(DType::F64)?, &ints, &format!("integers via {dt:?}"))?;
        }
    }
}

// ====================================================================== randomness

#[test]
fn randn_is_reproducible() -> ela_core::Result<()> {
    for dt in [DType::F32, DType::F64] {
        let a = T::randn(0.5, 2.0, [3, 7], dt, &mut Rng::new(42), &Cpu)?;
        let b = T::randn(0.5, 2.0, [3, 7], dt, &mut Rng::new(42), &Cpu)?;
        assert_eq!(a.to_vec_f64()?, b.to_vec_f64()?, "same seed, same values ({dt:?})");
        let c = T::randn(0.5, 2.0, [3, 7], dt, &mut Rng::new(43), &Cpu)?;
        assert_ne!(a.to_vec_f64()?, c.to_vec_f64()?, "another seed, other values");
    }
    // One generator drawing twice continues its stream rather than repeating it.
    let mut g = Rng::new(7);
    let a = T::randn(0.0, 1.0, 16, DType::F64, &mut g, &Cpu)?.to_vec::<f64>()?;
    let b = T::randn(0.0, 1.0, 16, DType::F64, &mut g, &Cpu)?.to_vec::<f64>()?;
    assert_ne!(a, b);
    // Mean and spread are roughly right on a large draw.
    let big = T::randn(3.0, 0.5, 20_000, DType::F64, &mut Rng::new(1), &Cpu)?.to_vec::<f64>()?;
    let mean = big.iter().sum::<f64>() / big.len() as f64;
    let sd = (big.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / big.len() as f64).sqrt();
    assert!((mean - 3.0).abs() < 0.02 && (sd - 0.5).abs() < 0.02, "mean {mean} sd {sd}");
    let u = T::rand_uniform(-1.0, 2.0, 1000, DType::F32, &mut Rng::new(5), &Cpu)?.to_vec::<f32>()?;
    assert!(u.iter().all(|&v| (-1.0..2.0).contains(&v)));
    assert_eq!(u, T::rand_uniform(-1.0, 2.0, 1000, DType::F32, &mut Rng::new(5), &Cpu)?.to_vec::<f32>()?);
    Ok(())
}

// ====================================================================== half precision, integer data

/// Round reference values through `dt` (f16/bf16 storage), using the engine's own cast.
fn round_half(x: &RefTensor, dt: DType) -> RefTensor {
    RefTensor::new(x.shape.clone(), tensor(x, dt).to_vec_f64().unwrap())
}

proptest! {
    #![proptest_config(cfg())]

    /// f16 / bf16 are storage types: ops compute in f32 and round once, so results are within
    /// about one half-precision rounding of the f64 reference on the rounded inputs.
    #[test]
    fn half_precision_ops(s in shape(1..=3, 1..=4), seed in any::<u64>(), bf in any::<bool>()) {
        let mut rng = TestRng::new(seed);
        let dt = if bf { DType::BF16 } else { DType::F16 };
        let (rt, at) = if bf { (1e-2, 1e-2) } else { (2e-3, 2e-3) };
        let xr = round_half(&rand_ref(&s, &mut rng, Vals::Uni), dt);
        let yb = round_half(&rand_ref(&broadcastable_to(&s, &mut rng), &mut rng, Vals::Uni), dt);
        // x is a permuted (non-contiguous) view; y broadcasts against it.
        let (tx, ty) = (with_layout(&xr, dt, Lay::Perm, &mut rng), tensor(&yb, dt));
        prop_assert_eq!(tx.exp()?.dtype(), dt);
        check(&tx.exp()?, &xr.map(f64::exp), rt, at, "exp")?;
        check(&tx.gelu()?, &xr.map(r::gelu), rt, at, "gelu")?;
        check(&tx.tanh()?, &xr.map(f64::tanh), rt, at, "tanh")?;
        check(&tx.add(&ty)?, &r::binary(&xr, &yb, |a, b| a + b).unwrap(), rt, at, "add")?;
        check(&tx.mul(&ty)?, &r::binary(&xr, &yb, |a, b| a * b).unwrap(), rt, at, "mul")?;
        let last = xr.rank() - 1;
        check(&tx.sum(-1isize, false)?, &r::reduce(&xr, last, false, r::lane_sum), rt, 4.0 * at, "sum")?;
        check(&tx.max(0usize, true)?, &r::reduce(&xr, 0, true, r::lane_max), 0.0, 0.0, "max")?;
        check_exact(&tx.argmax(-1isize, false)?, &r::reduce(&xr, last, false, r::lane_argmax), "argmax")?;
        check(&tx.softmax(-1isize)?, &r::map_lanes(&xr, last, r::softmax_lane), rt, at, "softmax")?;
        check(&tx.cumsum(0usize, false, false)?, &r::cumsum(&xr, 0, false, false), rt, 4.0 * at, "cumsum")?;
        check(&tx.rms_norm(None, 1e-5)?, &r::rms_norm(&xr, None, 1e-5), rt, 4.0 * at, "rms_norm")?;
        let (v, i) = tx.topk(1, -1isize)?;
        let (rv, ri) = r::topk(&xr, 1, last);
        check_exact(&v, &rv, "topk values")?;
        check_exact(&i, &ri, "topk indices")?;
        if xr.rank() >= 2 {
            let w = round_half(&rand_ref(&[xr.shape[last], 3], &mut rng, Vals::Uni), dt);
            let got = tx.matmul(&tensor(&w, dt))?;
            prop_assert_eq!(got.dtype(), dt);
            check(&got, &r::matmul(&xr, &w).unwrap(), rt, 8.0 * at, "matmul")?;
        }
    }

    /// Integer and mask tensors go through the copy/index ops unchanged.
    #[test]
    fn integer_data_through_copy_ops(s in shape(1..=3, 1..=4), seed in any::<u64>(), l in lay_nb()) {
        let mut rng = TestRng::new(seed);
        let x = RefTensor::new(s.clone(), (0..r::numel(&s)).map(|_| rng.below(200) as f64).collect());
        for dt in [DType::U32, DType::U8] {
            let t = with_layout(&x, dt, l, &mut rng);
            prop_assert_eq!(t.dtype(), dt);
            check_exact(&t.contiguous()?, &x, "contiguous")?;
            let (a, ai) = axis_of(s.len(), &mut rng);
            let ids: Vec<usize> = (0..3).map(|_| rng.below(s[ai])).collect();
            check_exact(&t.index_select(&u32_tensor(&ids, &[3]), a)?, &r::index_select(&x, &ids, ai), "index_select")?;
            check_exact(&T::concat(&[&t, &t], a)?, &r::concat(&[x.clone(), x.clone()], ai), "concat")?;
            let pads: Vec<(usize, usize)> = s.iter().map(|_| (rng.below(2), rng.below(2))).collect();
            check_exact(&t.pad(&pads, 9.0)?, &r::pad(&x, &pads, 9.0), "pad")?;
            check_exact(&t.cmp_scalar(CmpOp::Ge, 100.0)?, &x.map(|v| (v >= 100.0) as u8 as f64), "cmp_scalar")?;
            let m = t.cmp_scalar(CmpOp::Lt, 50.0)?;
            check_exact(&m.where_cond(&t, &t.zeros_like()?)?, &x.map(|v| if v < 50.0 { v } else { 0.0 }), "where_cond")?;
            let (v, _) = t.topk(1, a)?;
            check_exact(&v, &r::topk(&x, 1, ai).0, "topk")?;
            check_exact(&t.to_dtype(DType::F64)?, &x, "to f64")?;
        }
    }
}
