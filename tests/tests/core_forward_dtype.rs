//! Dtype casts and round trips, half-precision (f16 / bf16) ops, integer data through the copy
//! ops, and the random constructors, on every backend (`NAME::cpu`, `NAME::cuda`).
//!
//! f64 -> f16/bf16 casts: CUDA rounds once (to nearest even), the CPU goes through the `half`
//! crate, which can be one unit in the last place off at a tie (cuda/README.md, "Differences from
//! the CPU backend, on purpose"). The round-trip checks below bound the error by half an ulp (plus
//! a 1e-7 absolute slack), which both satisfy, so they need no per-device case.

mod core_forward_common;

use core_forward_common::*;
use ela_core::{Backend, CmpOp, Cpu, DType, Rng, Tensor};
use ela_tests::reference::{self as r, RefTensor, TestRng};
use ela_tests::{device_proptest, device_tests};
use proptest::prelude::*;

// ====================================================================== dtype casts

device_proptest! {
    #![proptest_config(cfg())]

    fn dtype_round_trips<B: Backend>(dev: &B, s in shape(0..=4, 0..=5), seed in any::<u64>(), l in lay()) {
        let mut rng = TestRng::new(seed);
        let (x, t) = input(dev, &s, DType::F64, l, Vals::Wide, &mut rng);
        // f64 -> f32 rounds to nearest, f32 -> f64 is exact.
        let what = format!("cast F64 -> F32 of {s:?} {l:?}");
        let t32 = t.to_dtype(DType::F32).ctx(&what)?;
        prop_assert_eq!(t32.dtype(), DType::F32, "{}", what);
        check_exact(&t32, &x.map(|v| v as f32 as f64), &what)?;
        let what = format!("cast F64 -> F32 -> F64 of {s:?} {l:?}");
        check_exact(&t32.to_dtype(DType::F64).ctx(&what)?, &x.map(|v| v as f32 as f64), &what)?;
        // Half types: relative error at most half an ulp (f16: 2^-11, bf16: 2^-8).
        for (dt, rel) in [(DType::F16, 1.0 / 2048.0), (DType::BF16, 1.0 / 256.0)] {
            let what = format!("cast F64 -> {dt:?} -> F64 of {s:?} {l:?}");
            let h = t.to_dtype(dt).ctx(&what)?;
            prop_assert_eq!(h.dtype(), dt, "{}", what);
            let back = h.to_dtype(DType::F64).ctx(&what)?;
            check(&back, &x, rel, 1e-7, &what)?;
            let what = format!("cast F32 -> {dt:?} -> F32 of {s:?} {l:?}");
            let back32 = t32.to_dtype(dt).ctx(&what)?.to_dtype(DType::F32).ctx(&what)?;
            check(&back32, &x, rel * 1.01, 1e-7, &what)?;
            // Rounding is idempotent: a value already representable survives exactly.
            let once = back.to_vec_f64()?;
            let what = format!("cast F64 -> {dt:?} -> F32 of representable values {s:?}");
            let again = back.to_dtype(dt).ctx(&what)?.to_dtype(DType::F32).ctx(&what)?;
            check_exact(&again, &RefTensor::new(s.clone(), once), &what)?;
        }
        // Small integers are exact in every float type and in u32.
        let ints = x.map(|v| v.abs().floor().min(200.0));
        let ti = with_layout(dev, &ints, DType::F64, l, &mut rng);
        for dt in [DType::F32, DType::F16, DType::BF16, DType::U32, DType::U8] {
            let what = format!("cast F64 -> {dt:?} -> F64 of small integers {s:?} {l:?}");
            check_exact(&ti.to_dtype(dt).ctx(&what)?.to_dtype(DType::F64).ctx(&what)?, &ints, &what)?;
        }
    }
}

device_tests!(cast_concat_is_one_cast_per_part);

/// `Tensor::cast_concat` gives each part's `to_dtype`, bit for bit, as views lying back to back
/// in one buffer: parts of every float dtype, an odd length that leaves the next part off the
/// 16-byte grid, a strided view, an empty part, one of several 8192-element segments (CUDA's
/// blocks), more parts than one CUDA launch lists (96), and target dtypes the list kernel has
/// and has not (f64).
fn cast_concat_is_one_cast_per_part<B: Backend>(dev: &B) -> ela_core::Result<()> {
    let mut rng = Rng::new(17);
    let mut randn = |dims: &[usize], dt: DType| Tensor::<B>::randn(0.0, 3.0, dims, dt, &mut rng, dev);
    let wide = randn(&[8, 6], DType::F32)?;
    let mut parts = vec![
        randn(&[37, 24], DType::F32)?,
        randn(&[5, 3], DType::F32)?,
        randn(&[9, 17], DType::BF16)?,
        wide.t()?,
        randn(&[0, 3], DType::F32)?,
        randn(&[4], DType::F64)?,
        randn(&[20011], DType::F32)?,
        randn(&[7], DType::F16)?,
        randn(&[3, 1024], DType::F32)?,
    ];
    for i in 0..100 {
        parts.push(randn(&[1 + i % 13], DType::F32)?);
    }
    let refs: Vec<&Tensor<B>> = parts.iter().collect();
    for to in [DType::BF16, DType::F16, DType::F32, DType::F64] {
        let casts = Tensor::cast_concat(&refs, to)?;
        assert_eq!(casts.len(), parts.len());
        let mut at = 0;
        for (i, (c, p)) in casts.iter().zip(&parts).enumerate() {
            let what = format!("part {i} {:?} {:?} -> {to:?}", p.dims(), p.dtype());
            assert_eq!((c.dims(), c.dtype()), (p.dims(), to), "{what}");
            assert!(c.same_storage(&casts[0]) && c.layout().offset() == at, "{what}: not in place");
            let (got, want) = (c.to_vec_f64()?, p.to_dtype(to)?.to_vec_f64()?);
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{what}");
            at += p.elem_count();
        }
    }
    assert!(Tensor::<B>::cast_concat(&[], DType::BF16)?.is_empty());
    Ok(())
}

// ====================================================================== randomness

device_tests!(randn_is_reproducible);

/// Values are drawn on the host from the generator, so a seed gives the same values on every
/// device.
fn randn_is_reproducible<B: Backend>(dev: &B) -> ela_core::Result<()> {
    type T<B> = Tensor<B>;
    for dt in [DType::F32, DType::F64] {
        let a = T::randn(0.5, 2.0, [3, 7], dt, &mut Rng::new(42), dev)?;
        let b = T::randn(0.5, 2.0, [3, 7], dt, &mut Rng::new(42), dev)?;
        assert_eq!(a.to_vec_f64()?, b.to_vec_f64()?, "same seed, same values ({dt:?})");
        let on_cpu = T::randn(0.5, 2.0, [3, 7], dt, &mut Rng::new(42), &Cpu)?;
        assert_eq!(a.to_vec_f64()?, on_cpu.to_vec_f64()?, "same seed, same values as on the CPU ({dt:?})");
        let c = T::randn(0.5, 2.0, [3, 7], dt, &mut Rng::new(43), dev)?;
        assert_ne!(a.to_vec_f64()?, c.to_vec_f64()?, "another seed, other values");
    }
    // One generator drawing twice continues its stream rather than repeating it.
    let mut g = Rng::new(7);
    let a = T::randn(0.0, 1.0, 16, DType::F64, &mut g, dev)?.to_vec::<f64>()?;
    let b = T::randn(0.0, 1.0, 16, DType::F64, &mut g, dev)?.to_vec::<f64>()?;
    assert_ne!(a, b);
    // Mean and spread are roughly right on a large draw.
    let big = T::randn(3.0, 0.5, 20_000, DType::F64, &mut Rng::new(1), dev)?.to_vec::<f64>()?;
    let mean = big.iter().sum::<f64>() / big.len() as f64;
    let sd = (big.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / big.len() as f64).sqrt();
    assert!((mean - 3.0).abs() < 0.02 && (sd - 0.5).abs() < 0.02, "mean {mean} sd {sd}");
    let u = T::rand_uniform(-1.0, 2.0, 1000, DType::F32, &mut Rng::new(5), dev)?.to_vec::<f32>()?;
    assert!(u.iter().all(|&v| (-1.0..2.0).contains(&v)));
    assert_eq!(u, T::rand_uniform(-1.0, 2.0, 1000, DType::F32, &mut Rng::new(5), dev)?.to_vec::<f32>()?);
    Ok(())
}

// ====================================================================== half precision, integer data

/// Round reference values through `dt` (f16/bf16 storage), using the CPU engine's cast (the same
/// bits [`tensor`] then moves to the device under test).
fn round_half(x: &RefTensor, dt: DType) -> RefTensor {
    RefTensor::new(x.shape.clone(), tensor(&Cpu, x, dt).to_vec_f64().unwrap())
}

device_proptest! {
    #![proptest_config(cfg())]

    /// f16 / bf16 are storage types: ops compute in f32 and round once (on every backend), so
    /// results are within about one half-precision rounding of the f64 reference on the rounded
    /// inputs.
    fn half_precision_ops<B: Backend>(dev: &B, s in shape(1..=3, 1..=4), seed in any::<u64>(), bf in any::<bool>()) {
        let mut rng = TestRng::new(seed);
        let dt = if bf { DType::BF16 } else { DType::F16 };
        let (rt, at) = if bf { (1e-2, 1e-2) } else { (2e-3, 2e-3) };
        let xr = round_half(&rand_ref(&s, &mut rng, Vals::Uni), dt);
        let ys = broadcastable_to(&s, &mut rng);
        let yb = round_half(&rand_ref(&ys, &mut rng, Vals::Uni), dt);
        // x is a permuted (non-contiguous) view; y broadcasts against it.
        let (tx, ty) = (with_layout(dev, &xr, dt, Lay::Perm, &mut rng), tensor(dev, &yb, dt));
        let c = format!("{dt:?} {s:?} (permuted)");
        prop_assert_eq!(tx.exp().ctx(format!("exp {c}"))?.dtype(), dt, "exp {}", c);
        check(&tx.exp().ctx(format!("exp {c}"))?, &xr.map(f64::exp), rt, at, &format!("exp {c}"))?;
        check(&tx.gelu().ctx(format!("gelu {c}"))?, &xr.map(r::gelu), rt, at, &format!("gelu {c}"))?;
        check(&tx.tanh().ctx(format!("tanh {c}"))?, &xr.map(f64::tanh), rt, at, &format!("tanh {c}"))?;
        let what = format!("add {c} with {ys:?}");
        check(&tx.add(&ty).ctx(&what)?, &r::binary(&xr, &yb, |a, b| a + b).unwrap(), rt, at, &what)?;
        let what = format!("mul {c} with {ys:?}");
        check(&tx.mul(&ty).ctx(&what)?, &r::binary(&xr, &yb, |a, b| a * b).unwrap(), rt, at, &what)?;
        let last = xr.rank() - 1;
        let what = format!("sum axis -1 {c}");
        check(&tx.sum(-1isize, false).ctx(&what)?, &r::reduce(&xr, last, false, r::lane_sum), rt, 4.0 * at, &what)?;
        let what = format!("max axis 0 {c}");
        check(&tx.max(0usize, true).ctx(&what)?, &r::reduce(&xr, 0, true, r::lane_max), 0.0, 0.0, &what)?;
        let what = format!("argmax axis -1 {c}");
        check_exact(&tx.argmax(-1isize, false).ctx(&what)?, &r::reduce(&xr, last, false, r::lane_argmax), &what)?;
        let what = format!("softmax axis -1 {c}");
        check(&tx.softmax(-1isize).ctx(&what)?, &r::map_lanes(&xr, last, r::softmax_lane), rt, at, &what)?;
        let what = format!("cumsum axis 0 {c}");
        check(&tx.cumsum(0usize, false, false).ctx(&what)?, &r::cumsum(&xr, 0, false, false), rt, 4.0 * at, &what)?;
        let what = format!("rms_norm {c}");
        check(&tx.rms_norm(None, 1e-5).ctx(&what)?, &r::rms_norm(&xr, None, 1e-5), rt, 4.0 * at, &what)?;
        let what = format!("topk 1 axis -1 {c}");
        let (v, i) = tx.topk(1, -1isize).ctx(&what)?;
        let (rv, ri) = r::topk(&xr, 1, last);
        check_exact(&v, &rv, &format!("{what}: values"))?;
        check_exact(&i, &ri, &format!("{what}: indices"))?;
        if xr.rank() >= 2 {
            let w = round_half(&rand_ref(&[xr.shape[last], 3], &mut rng, Vals::Uni), dt);
            let what = format!("matmul {c} @ {:?}", w.shape);
            let got = tx.matmul(&tensor(dev, &w, dt)).ctx(&what)?;
            prop_assert_eq!(got.dtype(), dt, "{}", what);
            check(&got, &r::matmul(&xr, &w).unwrap(), rt, 8.0 * at, &what)?;
        }
    }

    /// Integer and mask tensors go through the copy/index ops unchanged.
    fn integer_data_through_copy_ops<B: Backend>(
        dev: &B,
        s in shape(1..=3, 1..=4),
        seed in any::<u64>(),
        l in lay_nb(),
    ) {
        let mut rng = TestRng::new(seed);
        let x = RefTensor::new(s.clone(), (0..r::numel(&s)).map(|_| rng.below(200) as f64).collect());
        for dt in [DType::U32, DType::U8] {
            let t = with_layout(dev, &x, dt, l, &mut rng);
            prop_assert_eq!(t.dtype(), dt);
            let c = format!("{dt:?} {s:?} {l:?}");
            check_exact(&t.contiguous().ctx(format!("contiguous {c}"))?, &x, &format!("contiguous {c}"))?;
            let (a, ai) = axis_of(s.len(), &mut rng);
            let ids: Vec<usize> = (0..3).map(|_| rng.below(s[ai])).collect();
            let what = format!("index_select axis {a} ids {ids:?} {c}");
            let got = t.index_select(&u32_tensor(dev, &ids, &[3]), a).ctx(&what)?;
            check_exact(&got, &r::index_select(&x, &ids, ai), &what)?;
            let what = format!("concat axis {a} {c}");
            check_exact(&Tensor::concat(&[&t, &t], a).ctx(&what)?, &r::concat(&[x.clone(), x.clone()], ai), &what)?;
            let pads: Vec<(usize, usize)> = s.iter().map(|_| (rng.below(2), rng.below(2))).collect();
            let what = format!("pad {pads:?} {c}");
            check_exact(&t.pad(&pads, 9.0).ctx(&what)?, &r::pad(&x, &pads, 9.0), &what)?;
            let what = format!("cmp_scalar Ge 100 {c}");
            check_exact(&t.cmp_scalar(CmpOp::Ge, 100.0).ctx(&what)?, &x.map(|v| (v >= 100.0) as u8 as f64), &what)?;
            let what = format!("where_cond(x < 50, x, 0) {c}");
            let m = t.cmp_scalar(CmpOp::Lt, 50.0).ctx(&what)?;
            let got = m.where_cond(&t, &t.zeros_like()?).ctx(&what)?;
            check_exact(&got, &x.map(|v| if v < 50.0 { v } else { 0.0 }), &what)?;
            let what = format!("topk 1 axis {a} {c}");
            let (v, _) = t.topk(1, a).ctx(&what)?;
            check_exact(&v, &r::topk(&x, 1, ai).0, &what)?;
            let what = format!("cast to F64 {c}");
            check_exact(&t.to_dtype(DType::F64).ctx(&what)?, &x, &what)?;
        }
    }
}
