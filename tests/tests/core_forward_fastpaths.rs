//! The CPU's fast elementwise and reduction paths at sizes the other `core_forward_*` suites never
//! reach (their dims stop at 5): tensors of tens of thousands of elements with odd dims, so the
//! kernels run in parallel chunks that split rows; per-channel and other broadcast operands that
//! the joint iteration plan coalesces; strided views with offsets (NaN in the gaps); f16 / bf16;
//! reductions over every axis including rows longer than one summation block. Checked against
//! the naive f64 references in `ela_tests::reference`, on every backend.

mod core_forward_common;

use core_forward_common::*;
use ela_core::{Backend, DType, Tensor};
use ela_tests::device_proptest;
use ela_tests::reference::{self as r, RefTensor, TestRng};
use proptest::prelude::*;

fn few() -> ProptestConfig {
    let cases = ela_tests::device::proptest_cases(12);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// An NCHW shape of 10^4 .. 10^5 elements with odd dims.
fn nchw() -> impl Strategy<Value = Vec<usize>> {
    (1..=3usize, 1..=9usize, 17..=61usize, 17..=61usize).prop_map(|(n, c, h, w)| vec![n, c, h, w])
}

fn dtype() -> impl Strategy<Value = DType> {
    prop_oneof![Just(DType::F32), Just(DType::F64), Just(DType::F16), Just(DType::BF16)]
}

/// (rtol, atol) of one rounding to `dt` (the f16/bf16 kernels compute in f32 and round once).
fn tol_of(dt: DType) -> (f64, f64) {
    match dt {
        DType::F16 => (2e-3, 2e-3),
        DType::BF16 => (1.6e-2, 1.6e-2),
        d => tol(d),
    }
}

/// A random input of `shape` laid out as `lay`, with its reference holding exactly the values
/// stored in `dt` (read back, so half-precision rounding is included).
fn stored<B: Backend>(
    dev: &B,
    shape: &[usize],
    dt: DType,
    lay: Lay,
    v: Vals,
    rng: &mut TestRng,
) -> (RefTensor, Tensor<B>) {
    let (_, t) = input(dev, shape, dt, lay, v, rng);
    let x = RefTensor::new(shape.to_vec(), t.to_vec_f64().unwrap());
    (x, t)
}

/// Broadcast partners of an NCHW shape: per channel, per sample, per pixel, a row, a scalar.
fn partner(out: &[usize], k: usize) -> Vec<usize> {
    let (n, c, h, w) = (out[0], out[1], out[2], out[3]);
    match k % 7 {
        0 => vec![1, c, 1, 1],
        1 => vec![c, 1, 1],
        2 => vec![n, 1, 1, 1],
        3 => vec![1, 1, h, w],
        4 => vec![w],
        5 => vec![],
        _ => vec![n, c, h, 1],
    }
}

type BinFn<B> = fn(&Tensor<B>, &Tensor<B>) -> ela_core::Result<Tensor<B>>;
/// A case: name, the op under test, its f64 reference, the values to draw.
type BinCase<B> = (&'static str, BinFn<B>, fn(f64, f64) -> f64, Vals);
type UnaryFn<B> = fn(&Tensor<B>) -> ela_core::Result<Tensor<B>>;
type UnaryCase<B> = (&'static str, UnaryFn<B>, fn(f64) -> f64, Vals);

fn bin_cases<B: Backend>() -> Vec<BinCase<B>> {
    vec![
        ("add", |a, b| a.add(b), |a, b| a + b, Vals::Uni),
        ("sub", |a, b| a.sub(b), |a, b| a - b, Vals::Uni),
        ("mul", |a, b| a.mul(b), |a, b| a * b, Vals::Uni),
        ("div", |a, b| a.div(b), |a, b| a / b, Vals::NonZero),
        ("maximum", |a, b| a.maximum(b), r::maximum, Vals::Ints),
        ("maximum_uni", |a, b| a.maximum(b), r::maximum, Vals::Uni),
        ("minimum", |a, b| a.minimum(b), r::minimum, Vals::Ints),
    ]
}

fn unary_cases<B: Backend>() -> Vec<UnaryCase<B>> {
    vec![
        ("silu", |t| t.silu(), r::silu, Vals::Uni),
        ("sigmoid", |t| t.sigmoid(), r::sigmoid, Vals::Wide),
        ("exp", |t| t.exp(), f64::exp, Vals::Uni),
        ("square", |t| t.square(), |x| x * x, Vals::Uni),
        ("sqrt", |t| t.sqrt(), f64::sqrt, Vals::Pos),
        ("recip", |t| t.recip(), |x| 1.0 / x, Vals::NonZero),
        ("affine", |t| t.affine(-1.5, 0.25), |x| x * -1.5 + 0.25, Vals::Uni),
        ("relu", |t| t.relu(), r::relu, Vals::Uni),
    ]
}

device_proptest! {
    #![proptest_config(few())]

    /// Broadcast binary ops (both operand orders) on large odd NCHW shapes.
    fn binary_coalesced<B: Backend>(
        dev: &B,
        out in nchw(),
        seed in any::<u64>(),
        la in lay_nb(),
        lb in lay(),
        dt in dtype(),
    ) {
        let mut rng = TestRng::new(seed);
        let (rt, at) = tol_of(dt);
        for (i, (name, op, f, vals)) in bin_cases::<B>().into_iter().enumerate() {
            // Same shape (flat) for one op, broadcast partners for the others.
            let sb = if i == 0 { out.clone() } else { partner(&out, rng.below(7)) };
            // Both operands are denominators once (swapped), so div draws both away from 0.
            let (xa, ta) = stored(dev, &out, dt, la, vals, &mut rng);
            let (xb, tb) = stored(dev, &sb, dt, lb, vals, &mut rng);
            let tb = tb.broadcast_as(out.clone())?;
            let xb = r::broadcast_to(&xb, &out).unwrap();
            let what = format!("{name} {out:?} {la:?} with {sb:?} {lb:?} {dt:?}");
            check(&op(&ta, &tb).ctx(&what)?, &r::binary(&xa, &xb, f).unwrap(), rt, at, &what)?;
            let what = format!("{name} swapped {sb:?} {lb:?} with {out:?} {la:?} {dt:?}");
            check(&op(&tb, &ta).ctx(&what)?, &r::binary(&xb, &xa, f).unwrap(), rt, at, &what)?;
        }
    }

    /// Unary maps over large strided / broadcast views.
    fn unary_large<B: Backend>(dev: &B, s in nchw(), seed in any::<u64>(), l in lay(), dt in dtype()) {
        let mut rng = TestRng::new(seed);
        let (rt, at) = tol_of(dt);
        for (name, op, f, vals) in unary_cases::<B>() {
            let (x, t) = stored(dev, &s, dt, l, vals, &mut rng);
            let what = format!("{name} {s:?} {l:?} {dt:?}");
            check(&op(&t).ctx(&what)?, &x.map(f), rt, at, &what)?;
        }
    }

    /// Sum / max / min / mean over each axis of large views, and long rows (> one block).
    fn reductions_large<B: Backend>(
        dev: &B,
        s in nchw(),
        long in 30_000..=70_000usize,
        seed in any::<u64>(),
        l in lay(),
        dt in dtype(),
    ) {
        let mut rng = TestRng::new(seed);
        let (rt, at) = tol_of(dt);
        let (x, t) = stored(dev, &s, dt, l, Vals::Uni, &mut rng);
        for axis in 0..4 {
            let keep = axis % 2 == 0;
            let what = format!("sum axis {axis} of {s:?} {l:?} {dt:?}");
            // Sums of up to ~60 values of magnitude 3: scale the absolute tolerance.
            let sat = at * s[axis] as f64;
            check(&t.sum(axis as isize, keep).ctx(&what)?, &r::reduce(&x, axis, keep, r::lane_sum), rt, sat, &what)?;
            let what = format!("mean axis {axis} of {s:?} {l:?} {dt:?}");
            check(&t.mean(axis as isize, keep).ctx(&what)?, &r::reduce(&x, axis, keep, r::lane_mean), rt, at, &what)?;
            let what = format!("max axis {axis} of {s:?} {l:?} {dt:?}");
            check(&t.max(axis as isize, keep).ctx(&what)?, &r::reduce(&x, axis, keep, r::lane_max), 0.0, 0.0, &what)?;
            let what = format!("min axis {axis} of {s:?} {l:?} {dt:?}");
            check(&t.min(axis as isize, keep).ctx(&what)?, &r::reduce(&x, axis, keep, r::lane_min), 0.0, 0.0, &what)?;
        }
        // Rows longer than one summation block, few rows (blocked and in parallel).
        let shape = [1 + rng.below(3), long];
        // Not broadcast: repeated values would not cancel and overflow f16.
        let ly = if l == Lay::Bcast { Lay::Narrow } else { l };
        let (y, ty) = stored(dev, &shape, dt, ly, Vals::Uni, &mut rng);
        let what = format!("sum of long rows {shape:?} {ly:?} {dt:?}");
        // The reference adds sequentially, the kernel in lanes and blocks: over up to 2 * 10^5
        // values that is ~1e-11 relative apart in f64 (broadcast inputs do not cancel).
        let sat = at * 200.0;
        let rt = rt.max(1e-9);
        check(&ty.sum(1isize, false).ctx(&what)?, &r::reduce(&y, 1, false, r::lane_sum), rt, sat, &what)?;
        let what = format!("sum_all of {shape:?} {ly:?} {dt:?}");
        let total: f64 = y.data.iter().sum();
        check(&ty.sum_all().ctx(&what)?, &RefTensor::full(&[], total), rt, sat * 2.0, &what)?;
        let what = format!("max of long rows {shape:?} {ly:?} {dt:?}");
        check(&ty.max(1isize, false).ctx(&what)?, &r::reduce(&y, 1, false, r::lane_max), 0.0, 0.0, &what)?;
        // sum_to of a per-channel gradient (the BatchNorm backward).
        let what = format!("sum_to [1,C,1,1] of {s:?} {l:?} {dt:?}");
        let target = vec![1, s[1], 1, 1];
        let sat = at * (s[0] * s[2] * s[3]) as f64 / 8.0;
        check(&t.sum_to(&target.clone().into()).ctx(&what)?, &r::sum_to(&x, &target), rt, sat, &what)?;
    }
}
