//! Input builders, strategies and comparisons shared by the `core_forward_*.rs` property tests,
//! which check every tensor op, on every backend (`ela_tests::device`), against the naive f64
//! references in `ela_tests::reference`.
//!
//! Shapes (ranks 0..=4, dims 0..=5 with size-1 and empty dims), values and memory layouts are
//! drawn by proptest. Inputs are built contiguous, permuted (transposed strides), narrowed
//! (offset + gaps, with NaN in the skipped cells so a kernel that reads outside its view is
//! caught) or broadcast (stride 0) before the op runs. The values (rounded to the dtype under
//! test) and the buffer that holds them are made on the CPU; the buffer is moved to the device
//! and the view is taken there, so the device's kernels see the strided layout. f64 results must
//! match to ~1e-12, f32 to ~1e-5. `ELA_PROPTEST_CASES` sets the case count (default 128).
//!
//! Each test binary uses only part of these helpers, hence `allow(dead_code)`.
#![allow(dead_code)]

use ela_core::{Backend, Cpu, DType, Tensor};
pub use ela_tests::device::Context;
use ela_tests::reference::{self as r, RefTensor, TestRng};
use proptest::prelude::*;

pub type TestResult = std::result::Result<(), TestCaseError>;

pub fn cfg() -> ProptestConfig {
    let cases = ela_tests::device::proptest_cases(128);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

// ====================================================================== building inputs

/// How an input tensor is laid out in memory before the op sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Lay {
    /// A fresh row-major buffer.
    Contig,
    /// Stored with permuted axes, then permuted back (non-unit strides).
    Perm,
    /// Stored with extra NaN cells around one axis, then narrowed (offset and gaps).
    Narrow,
    /// Both of the above.
    PermNarrow,
    /// A smaller tensor broadcast up (stride-0 axes); the values repeat accordingly.
    Bcast,
}

pub fn lay() -> impl Strategy<Value = Lay> {
    prop_oneof![Just(Lay::Contig), Just(Lay::Perm), Just(Lay::Narrow), Just(Lay::PermNarrow), Just(Lay::Bcast)]
}

/// Same as [`lay`] without broadcasting (for ops whose reference needs distinct values).
pub fn lay_nb() -> impl Strategy<Value = Lay> {
    prop_oneof![Just(Lay::Contig), Just(Lay::Perm), Just(Lay::Narrow), Just(Lay::PermNarrow)]
}

pub fn shape(
    ranks: std::ops::RangeInclusive<usize>,
    dims: std::ops::RangeInclusive<usize>,
) -> BoxedStrategy<Vec<usize>> {
    prop::collection::vec(dims, ranks).boxed()
}

/// Value distributions.
#[derive(Clone, Copy, Debug)]
pub enum Vals {
    /// Uniform in [-3, 3).
    Uni,
    /// Integers in -2..=2 (ties everywhere).
    Ints,
    /// Uniform in [0.1, 3) (log, sqrt, recip, powf).
    Pos,
    /// Uniform in [-3, 3), bounded away from 0 by 0.25 (denominators).
    NonZero,
    /// Uniform in [-30, 30) (softmax stability).
    Wide,
}

pub fn draw(rng: &mut TestRng, v: Vals) -> f64 {
    match v {
        Vals::Uni => rng.range(-3.0, 3.0),
        Vals::Ints => rng.below(5) as f64 - 2.0,
        Vals::Pos => rng.range(0.1, 3.0),
        Vals::NonZero => {
            let m = rng.range(0.25, 3.0);
            if rng.below(2) == 0 {
                m
            } else {
                -m
            }
        }
        Vals::Wide => rng.range(-30.0, 30.0),
    }
}

pub fn rand_ref(shape: &[usize], rng: &mut TestRng, v: Vals) -> RefTensor {
    let n = r::numel(shape);
    RefTensor::new(shape.to_vec(), (0..n).map(|_| draw(rng, v)).collect())
}

/// Round reference values the way a cast to `dt` does (so the reference sees the same inputs).
pub fn round_ref(x: &RefTensor, dt: DType) -> RefTensor {
    match dt {
        DType::F32 => x.map(|v| v as f32 as f64),
        _ => x.clone(),
    }
}

/// A contiguous tensor on `dev` holding `x` in `dt` (converted on the CPU, so every device gets
/// the same bits as the reference's rounded values).
pub fn tensor<B: Backend>(dev: &B, x: &RefTensor, dt: DType) -> Tensor<B> {
    let host = Tensor::from_vec(x.data.clone(), x.shape.clone(), &Cpu).unwrap().to_dtype(dt).unwrap();
    ela_tests::device::upload(&host, dev)
}

/// A `U32` index tensor on `dev`.
pub fn u32_tensor<B: Backend>(dev: &B, ids: &[usize], shape: &[usize]) -> Tensor<B> {
    Tensor::from_vec(ids.iter().map(|&i| i as u32).collect::<Vec<u32>>(), shape.to_vec(), dev).unwrap()
}

/// A tensor on `dev` whose logical values are `x` but whose storage is laid out as `lay` says.
/// Bcast cannot reproduce arbitrary values, so it is handled by [`input`].
pub fn with_layout<B: Backend>(dev: &B, x: &RefTensor, dt: DType, lay: Lay, rng: &mut TestRng) -> Tensor<B> {
    let rank = x.rank();
    let (perm, narrow) = match lay {
        Lay::Contig | Lay::Bcast => return tensor(dev, x, dt),
        Lay::Perm => (rng.permutation(rank), false),
        Lay::Narrow => ((0..rank).collect(), true),
        Lay::PermNarrow => (rng.permutation(rank), true),
    };
    if rank == 0 {
        return tensor(dev, x, dt);
    }
    // Storage axis i holds logical axis perm[i].
    let stored = r::permute(x, &perm);
    let t = if narrow {
        let axis = rng.below(rank);
        let (before, after) = (1 + rng.below(2), rng.below(3));
        let mut pads = vec![(0, 0); rank];
        pads[axis] = (before, after);
        let padded = r::pad(&stored, &pads, f64::NAN);
        tensor(dev, &padded, dt).narrow(axis, before, stored.shape[axis]).unwrap()
    } else {
        tensor(dev, &stored, dt)
    };
    let mut inv = vec![0; rank];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    let t = t.permute(&inv).unwrap();
    assert_eq!(t.dims(), &x.shape[..]);
    t
}

/// A random input of `shape` on `dev` laid out as `lay`, with its reference (rounded to `dt`).
pub fn input<B: Backend>(
    dev: &B,
    shape: &[usize],
    dt: DType,
    lay: Lay,
    v: Vals,
    rng: &mut TestRng,
) -> (RefTensor, Tensor<B>) {
    if lay == Lay::Bcast {
        let lead = rng.below(shape.len() + 1);
        let base_shape: Vec<usize> = shape[lead..].iter().map(|&d| if rng.below(2) == 0 { 1 } else { d }).collect();
        let base = round_ref(&rand_ref(&base_shape, rng, v), dt);
        let t = tensor(dev, &base, dt).broadcast_as(shape.to_vec()).unwrap();
        return (r::broadcast_to(&base, shape).unwrap(), t);
    }
    let x = round_ref(&rand_ref(shape, rng, v), dt);
    let t = with_layout(dev, &x, dt, lay, rng);
    (x, t)
}

/// A random shape that broadcasts to `out`: some leading axes dropped, some axes set to 1.
pub fn broadcastable_to(out: &[usize], rng: &mut TestRng) -> Vec<usize> {
    let lead = if rng.below(3) == 0 { rng.below(out.len() + 1) } else { 0 };
    out[lead..].iter().map(|&d| if rng.below(3) == 0 { 1 } else { d }).collect()
}

// ====================================================================== comparing

pub fn close(a: f64, b: f64, rtol: f64, atol: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= atol + rtol * b.abs()
}

/// Shape and values of `got` (on any device; read back to the host) against the reference.
/// `what` names the op, dtype, shapes and layouts for the failure message.
pub fn check<B: Backend>(got: &Tensor<B>, want: &RefTensor, rtol: f64, atol: f64, what: &str) -> TestResult {
    prop_assert_eq!(got.dims(), &want.shape[..], "{}: shape", what);
    let g = got.to_vec_f64().ctx(format!("{what}: reading the result back"))?;
    for (i, (&a, &b)) in g.iter().zip(&want.data).enumerate() {
        prop_assert!(
            close(a, b, rtol, atol),
            "{}: element {} (index {:?} of shape {:?}): got {} want {} (diff {:e})",
            what,
            i,
            r::unravel(&want.shape, i),
            want.shape,
            a,
            b,
            (a - b).abs()
        );
    }
    Ok(())
}

/// Asserts a check passed (for plain `#[test]`s).
pub fn must(r: TestResult) {
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// Exact comparison (indices, masks, copies).
pub fn check_exact<B: Backend>(got: &Tensor<B>, want: &RefTensor, what: &str) -> TestResult {
    check(got, want, 0.0, 0.0, what)
}

/// (rtol, atol) for a dtype.
pub fn tol(dt: DType) -> (f64, f64) {
    match dt {
        DType::F64 => (1e-12, 1e-12),
        _ => (2e-5, 2e-5),
    }
}

pub fn axis_of(rank: usize, rng: &mut TestRng) -> (isize, usize) {
    let a = rng.below(rank);
    if rng.below(2) == 0 {
        (a as isize, a)
    } else {
        (a as isize - rank as isize, a)
    }
}
