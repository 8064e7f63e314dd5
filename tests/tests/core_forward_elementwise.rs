//! Forward correctness of the elementwise ops (unary maps, derivative ops, broadcasting binary
//! ops, comparisons, `where_cond` / `masked_fill`) against `ela_tests::reference`, on every
//! backend (`NAME::cpu`, `NAME::cuda`); inputs and tolerances come from `core_forward_common`.

mod core_forward_common;

use core_forward_common::*;
use ela_core::{Backend, CmpOp, DType, Tensor, UnaryOp};
use ela_tests::reference::{self as r, RefTensor, TestRng};
use ela_tests::{device_proptest, device_tests};
use proptest::prelude::*;

// ====================================================================== unary

type UnaryFn<B> = fn(&Tensor<B>) -> ela_core::Result<Tensor<B>>;
/// (name, op, reference, input values)
type UnaryCase<B> = (&'static str, UnaryFn<B>, fn(f64) -> f64, Vals);

fn unary_cases<B: Backend>() -> Vec<UnaryCase<B>> {
    vec![
        ("neg", |t| t.neg(), |x| -x, Vals::Uni),
        ("exp", |t| t.exp(), f64::exp, Vals::Uni),
        ("log", |t| t.log(), f64::ln, Vals::Pos),
        ("sqrt", |t| t.sqrt(), f64::sqrt, Vals::Pos),
        ("recip", |t| t.recip(), |x| 1.0 / x, Vals::Pos),
        ("recip_neg", |t| t.recip(), |x| 1.0 / x, Vals::NonZero),
        ("abs", |t| t.abs(), f64::abs, Vals::Uni),
        ("square", |t| t.square(), |x| x * x, Vals::Uni),
        ("relu", |t| t.relu(), r::relu, Vals::Uni),
        ("relu_ints", |t| t.relu(), r::relu, Vals::Ints),
        ("gelu", |t| t.gelu(), r::gelu, Vals::Uni),
        ("silu", |t| t.silu(), r::silu, Vals::Uni),
        ("sigmoid", |t| t.sigmoid(), r::sigmoid, Vals::Uni),
        ("sigmoid_wide", |t| t.sigmoid(), r::sigmoid, Vals::Wide),
        ("tanh", |t| t.tanh(), f64::tanh, Vals::Uni),
        ("sign", |t| t.sign(), r::sign, Vals::Ints),
        ("sign_uni", |t| t.sign(), r::sign, Vals::Uni),
        ("powf2", |t| t.powf(2.0), |x| x.powf(2.0), Vals::Uni),
        ("powf3_neg", |t| t.powf(3.0), |x| x * x * x, Vals::Uni),
        ("powf0.5", |t| t.powf(0.5), f64::sqrt, Vals::Pos),
        ("powf-1.5", |t| t.powf(-1.5), |x| x.powf(-1.5), Vals::Pos),
        ("affine", |t| t.affine(-1.5, 0.25), |x| x * -1.5 + 0.25, Vals::Uni),
        ("add_scalar", |t| t.add_scalar(2.5), |x| x + 2.5, Vals::Uni),
        ("sub_scalar", |t| t.sub_scalar(2.5), |x| x - 2.5, Vals::Uni),
        ("mul_scalar", |t| t.mul_scalar(-3.0), |x| x * -3.0, Vals::Uni),
        ("div_scalar", |t| t.div_scalar(4.0), |x| x / 4.0, Vals::Uni),
        ("clamp", |t| t.clamp(-1.0, 0.5), |x| x.clamp(-1.0, 0.5), Vals::Uni),
        ("clamp_ints", |t| t.clamp(-1.0, 1.0), |x| x.clamp(-1.0, 1.0), Vals::Ints),
        ("maximum_scalar", |t| t.maximum_scalar(0.3), |x| x.max(0.3), Vals::Uni),
        ("minimum_scalar", |t| t.minimum_scalar(-0.3), |x| x.min(-0.3), Vals::Uni),
        ("unary_neg", |t| t.unary(UnaryOp::Neg), |x| -x, Vals::Uni),
        ("unary_step", |t| t.unary(UnaryOp::Step), |x| if x > 0.0 { 1.0 } else { 0.0 }, Vals::Ints),
        ("unary_max", |t| t.unary(UnaryOp::MaxScalar(1.0)), |x| x.max(1.0), Vals::Ints),
        ("unary_min", |t| t.unary(UnaryOp::MinScalar(1.0)), |x| x.min(1.0), Vals::Ints),
    ]
}

fn run_unary<B: Backend>(dev: &B, shape: &[usize], seed: u64, lay: Lay, dt: DType) -> TestResult {
    let mut rng = TestRng::new(seed);
    let (rt, at) = tol(dt);
    for (name, op, f, vals) in unary_cases::<B>() {
        let (x, t) = input(dev, shape, dt, lay, vals, &mut rng);
        let what = format!("{name} {dt:?} {shape:?} {lay:?}");
        let y = op(&t).ctx(&what)?;
        prop_assert_eq!(y.dtype(), dt, "{}", what);
        check(&y, &x.map(f), rt, at, &what)?;
    }
    Ok(())
}

device_proptest! {
    #![proptest_config(cfg())]

    fn unary_f64<B: Backend>(dev: &B, s in shape(0..=4, 0..=5), seed in any::<u64>(), l in lay()) {
        run_unary(dev, &s, seed, l, DType::F64)?;
    }

    fn unary_f32<B: Backend>(dev: &B, s in shape(0..=4, 0..=5), seed in any::<u64>(), l in lay()) {
        run_unary(dev, &s, seed, l, DType::F32)?;
    }

    /// GeluGrad / SiluGrad / Step against central differences of the reference functions.
    fn derivative_ops_match_finite_differences<B: Backend>(
        dev: &B,
        s in shape(1..=3, 0..=5),
        seed in any::<u64>(),
        l in lay_nb(),
    ) {
        let mut rng = TestRng::new(seed);
        let (x, t) = input(dev, &s, DType::F64, l, Vals::Uni, &mut rng);
        let h = 1e-5;
        let g = t.unary(UnaryOp::GeluGrad).ctx(format!("gelu_grad F64 {s:?}"))?;
        check(&g, &x.map(|v| r::central_diff(r::gelu, v, h)), 1e-8, 1e-8, &format!("gelu_grad F64 {s:?}"))?;
        let g = t.unary(UnaryOp::SiluGrad).ctx(format!("silu_grad F64 {s:?}"))?;
        check(&g, &x.map(|v| r::central_diff(r::silu, v, h)), 1e-8, 1e-8, &format!("silu_grad F64 {s:?}"))?;
        // relu is piecewise linear: away from the kink its slope is exactly 0 or 1.
        let step = t.unary(UnaryOp::Step).ctx(format!("step F64 {s:?}"))?.to_vec_f64()?;
        for (&v, &st) in x.data.iter().zip(&step) {
            if v.abs() > 1e-3 {
                prop_assert!((st - r::central_diff(r::relu, v, h)).abs() < 1e-9, "step({}) = {}", v, st);
            }
        }
        let sg = t.sign().ctx(format!("sign F64 {s:?}"))?.to_vec_f64()?;
        for (&v, &sv) in x.data.iter().zip(&sg) {
            if v.abs() > 1e-3 {
                prop_assert!((sv - r::central_diff(f64::abs, v, h)).abs() < 1e-9, "sign({}) = {}", v, sv);
            }
        }
    }
}

device_tests!(unary_special_values);

/// Signed zeros, infinities, NaN and the tails of sigmoid.
fn unary_special_values<B: Backend>(dev: &B) -> ela_core::Result<()> {
    let x = Tensor::from_vec(vec![0.0f64, -0.0, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, -800.0, 800.0], 7, dev)?;
    let sig = x.sigmoid()?.to_vec::<f64>()?;
    assert_eq!(&sig[..4], &[0.5, 0.5, 1.0, 0.0]);
    assert!(sig[4].is_nan());
    assert_eq!(sig[5], 0.0, "sigmoid(-800) must not overflow to NaN");
    assert_eq!(sig[6], 1.0);
    let sg = x.sign()?.to_vec::<f64>()?;
    assert_eq!(&sg[..4], &[0.0, 0.0, 1.0, -1.0]);
    assert_eq!(&sg[5..], &[-1.0, 1.0]);
    let relu = x.relu()?.to_vec::<f64>()?;
    assert_eq!(&relu[..4], &[0.0, 0.0, f64::INFINITY, 0.0]);
    let e = x.exp()?.to_vec::<f64>()?;
    assert_eq!(&e[..4], &[1.0, 1.0, f64::INFINITY, 0.0]);
    // f32 sigmoid in the tails stays finite too.
    let x32 = x.to_dtype(DType::F32)?;
    let s32 = x32.sigmoid()?.to_vec::<f32>()?;
    assert_eq!((s32[5], s32[6]), (0.0, 1.0));
    Ok(())
}

// ====================================================================== binary, cmp, where

type BinFn<B> = fn(&Tensor<B>, &Tensor<B>) -> ela_core::Result<Tensor<B>>;
/// (name, op, reference, rhs values)
type BinCase<B> = (&'static str, BinFn<B>, fn(f64, f64) -> f64, Vals);

fn binary_cases<B: Backend>() -> Vec<BinCase<B>> {
    vec![
        ("add", |a, b| a.add(b), |x, y| x + y, Vals::Uni),
        ("sub", |a, b| a.sub(b), |x, y| x - y, Vals::Uni),
        ("mul", |a, b| a.mul(b), |x, y| x * y, Vals::Uni),
        ("div", |a, b| a.div(b), |x, y| x / y, Vals::NonZero),
        ("maximum", |a, b| a.maximum(b), r::maximum, Vals::Ints),
        ("minimum", |a, b| a.minimum(b), r::minimum, Vals::Ints),
        ("maximum_uni", |a, b| a.maximum(b), r::maximum, Vals::Uni),
        ("minimum_uni", |a, b| a.minimum(b), r::minimum, Vals::Uni),
    ]
}

fn run_binary<B: Backend>(dev: &B, out: &[usize], seed: u64, la: Lay, lb: Lay, dt: DType) -> TestResult {
    let mut rng = TestRng::new(seed);
    let (rt, at) = tol(dt);
    for (name, op, f, vals) in binary_cases::<B>() {
        let (sa, sb) = (broadcastable_to(out, &mut rng), broadcastable_to(out, &mut rng));
        let (xa, ta) = input(dev, &sa, dt, la, Vals::Uni, &mut rng);
        let (xb, tb) = input(dev, &sb, dt, lb, vals, &mut rng);
        let want = r::binary(&xa, &xb, f).unwrap();
        let what = format!("{name} {sa:?} {la:?} with {sb:?} {lb:?} {dt:?}");
        check(&op(&ta, &tb).ctx(&what)?, &want, rt, at, &what)?;
        // Swapped operands exercise the other broadcast direction.
        let want = r::binary(&xb, &xa, f).unwrap();
        let what = format!("{name} swapped {sb:?} {lb:?} with {sa:?} {la:?} {dt:?}");
        check(&op(&tb, &ta).ctx(&what)?, &want, rt, at, &what)?;
    }
    Ok(())
}

fn cmp_ref(op: CmpOp) -> fn(f64, f64) -> f64 {
    match op {
        CmpOp::Eq => |a, b| (a == b) as u8 as f64,
        CmpOp::Ne => |a, b| (a != b) as u8 as f64,
        CmpOp::Lt => |a, b| (a < b) as u8 as f64,
        CmpOp::Le => |a, b| (a <= b) as u8 as f64,
        CmpOp::Gt => |a, b| (a > b) as u8 as f64,
        CmpOp::Ge => |a, b| (a >= b) as u8 as f64,
    }
}

const CMP_OPS: [CmpOp; 6] = [CmpOp::Eq, CmpOp::Ne, CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge];

fn mask_ref(shape: &[usize], rng: &mut TestRng) -> RefTensor {
    RefTensor::new(shape.to_vec(), (0..r::numel(shape)).map(|_| rng.below(2) as f64).collect())
}

fn mask_tensor<B: Backend>(dev: &B, m: &RefTensor) -> Tensor<B> {
    Tensor::from_vec(m.data.iter().map(|&v| v as u8).collect::<Vec<u8>>(), m.shape.clone(), dev).unwrap()
}

device_proptest! {
    #![proptest_config(cfg())]

    fn binary_broadcast_f64<B: Backend>(
        dev: &B,
        out in shape(0..=4, 0..=5),
        seed in any::<u64>(),
        la in lay_nb(),
        lb in lay(),
    ) {
        run_binary(dev, &out, seed, la, lb, DType::F64)?;
    }

    fn binary_broadcast_f32<B: Backend>(
        dev: &B,
        out in shape(0..=4, 0..=5),
        seed in any::<u64>(),
        la in lay(),
        lb in lay_nb(),
    ) {
        run_binary(dev, &out, seed, la, lb, DType::F32)?;
    }

    fn cmp_and_cmp_scalar<B: Backend>(
        dev: &B,
        out in shape(0..=4, 0..=4),
        seed in any::<u64>(),
        la in lay(),
        lb in lay(),
        f32_ in any::<bool>(),
    ) {
        let mut rng = TestRng::new(seed);
        let dt = if f32_ { DType::F32 } else { DType::F64 };
        let (sa, sb) = (broadcastable_to(&out, &mut rng), broadcastable_to(&out, &mut rng));
        let (xa, ta) = input(dev, &sa, dt, la, Vals::Ints, &mut rng);
        let (xb, tb) = input(dev, &sb, dt, lb, Vals::Ints, &mut rng);
        for op in CMP_OPS {
            let what = format!("cmp {op:?} {sa:?} {la:?} with {sb:?} {lb:?} {dt:?}");
            let m = ta.cmp(op, &tb).ctx(&what)?;
            prop_assert_eq!(m.dtype(), DType::U8, "{}", what);
            check_exact(&m, &r::binary(&xa, &xb, cmp_ref(op)).unwrap(), &what)?;
            let c = (rng.below(5) as f64) - 2.0;
            let what = format!("cmp_scalar {op:?} {c} {sa:?} {la:?} {dt:?}");
            let m = ta.cmp_scalar(op, c).ctx(&what)?;
            prop_assert_eq!(m.dtype(), DType::U8, "{}", what);
            let f = cmp_ref(op);
            check_exact(&m, &xa.map(|v| f(v, c)), &what)?;
        }
    }

    fn where_cond_and_masked_fill<B: Backend>(
        dev: &B,
        out in shape(0..=4, 0..=4),
        seed in any::<u64>(),
        lt in lay(),
        lf in lay(),
    ) {
        let mut rng = TestRng::new(seed);
        let sc = broadcastable_to(&out, &mut rng);
        let (st, sf) = (broadcastable_to(&out, &mut rng), broadcastable_to(&out, &mut rng));
        let c = mask_ref(&sc, &mut rng);
        // The mask itself is sometimes a transposed view.
        let ct = if sc.len() >= 2 && rng.below(2) == 0 {
            let ctr = r::transpose(&c, 0, sc.len() - 1);
            mask_tensor(dev, &ctr).transpose(0, sc.len() - 1)?
        } else {
            mask_tensor(dev, &c)
        };
        let (xt, tt) = input(dev, &st, DType::F64, lt, Vals::Uni, &mut rng);
        let (xf, tf) = input(dev, &sf, DType::F64, lf, Vals::Uni, &mut rng);
        let shapes = format!("mask {sc:?}, {st:?} {lt:?}, {sf:?} {lf:?} F64");
        let want = r::where_cond(&c, &xt, &xf).unwrap();
        let what = format!("where_cond {shapes}");
        check_exact(&ct.where_cond(&tt, &tf).ctx(&what)?, &want, &what)?;
        // masked_fill: value where the mask is set, else self (broadcast of both).
        let fill = -7.5;
        let want = r::where_cond(&c, &RefTensor::full(&[], fill), &xt).unwrap();
        let what = format!("masked_fill {shapes}");
        check_exact(&tt.masked_fill(&ct, fill).ctx(&what)?, &want, &what)?;
        // A mask computed by cmp drives where_cond: relu written by hand.
        let what = format!("where(x>0, x, 0) {st:?} {lt:?} F64");
        let pos = tt.cmp_scalar(CmpOp::Gt, 0.0).ctx(&what)?;
        check_exact(&pos.where_cond(&tt, &tt.zeros_like()?).ctx(&what)?, &xt.map(r::relu), &what)?;
    }
}

device_tests!(maximum_minimum_propagate_nan);

/// NaN wins in maximum/minimum, whichever side it is on.
fn maximum_minimum_propagate_nan<B: Backend>(dev: &B) -> ela_core::Result<()> {
    let a = Tensor::from_vec(vec![f64::NAN, 1.0, 2.0], 3, dev)?;
    let b = Tensor::from_vec(vec![0.0f64, f64::NAN, 1.0], 3, dev)?;
    let mx = a.maximum(&b)?.to_vec::<f64>()?;
    let mn = a.minimum(&b)?.to_vec::<f64>()?;
    assert!(mx[0].is_nan() && mx[1].is_nan() && mx[2] == 2.0, "{mx:?}");
    assert!(mn[0].is_nan() && mn[1].is_nan() && mn[2] == 1.0, "{mn:?}");
    Ok(())
}
