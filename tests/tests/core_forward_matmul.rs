//! Forward correctness of `matmul` (broadcast batch axes, transposed and strided operands, empty
//! dims, sizes past any small-size fast path) against `ela_tests::reference::matmul`, on every
//! backend (`NAME::cpu`, `NAME::cuda`; CUDA uses cuBLAS with TF32 off, so f32 products are exact
//! to f32 rounding like the CPU's and share its tolerances).

mod core_forward_common;

use core_forward_common::*;
use ela_core::{Backend, DType, Tensor};
use ela_tests::reference::{self as r, RefTensor, TestRng};
use ela_tests::{device_proptest, device_tests};
use proptest::prelude::*;

// ====================================================================== matmul

/// `[batch.., rows, cols]`, built either directly or as the `.t()` of a `[.., cols, rows]`
/// buffer (a transposed, non-contiguous operand).
fn matrix_operand<B: Backend>(
    dev: &B,
    batch: &[usize],
    (rows, cols): (usize, usize),
    transposed: bool,
    l: Lay,
    dt: DType,
    rng: &mut TestRng,
) -> std::result::Result<(RefTensor, Tensor<B>), TestCaseError> {
    let mut s = batch.to_vec();
    if transposed {
        s.extend([cols, rows]);
        let (x, t) = input(dev, &s, dt, l, Vals::Uni, rng);
        let rk = s.len();
        Ok((r::transpose(&x, rk - 2, rk - 1), t.t()?))
    } else {
        s.extend([rows, cols]);
        Ok(input(dev, &s, dt, l, Vals::Uni, rng))
    }
}

fn run_matmul<B: Backend>(
    dev: &B,
    batch: &[usize],
    (m, k, n): (usize, usize, usize),
    seed: u64,
    (ta, tb): (bool, bool),
    (la, lb): (Lay, Lay),
    dt: DType,
) -> TestResult {
    let mut rng = TestRng::new(seed);
    let (ba, bb) = (broadcastable_to(batch, &mut rng), broadcastable_to(batch, &mut rng));
    let (xa, a) = matrix_operand(dev, &ba, (m, k), ta, la, dt, &mut rng)?;
    let (xb, b) = matrix_operand(dev, &bb, (k, n), tb, lb, dt, &mut rng)?;
    let want = r::matmul(&xa, &xb).unwrap();
    let (rt, at) = if dt == DType::F64 { (1e-12, 1e-12) } else { (1e-5, 2e-5) };
    let what = format!("matmul {:?} @ {:?} {dt:?} (t {ta} {tb}, {la:?} {lb:?})", a.dims(), b.dims());
    check(&a.matmul(&b).ctx(&what)?, &want, rt, at, &what)
}

device_proptest! {
    #![proptest_config(cfg())]

    fn matmul_f64<B: Backend>(
        dev: &B,
        batch in shape(0..=2, 0..=3),
        m in 0usize..=5,
        k in 0usize..=5,
        n in 0usize..=5,
        seed in any::<u64>(),
        ta in any::<bool>(),
        tb in any::<bool>(),
        la in lay(),
        lb in lay(),
    ) {
        run_matmul(dev, &batch, (m, k, n), seed, (ta, tb), (la, lb), DType::F64)?;
    }

    fn matmul_f32<B: Backend>(
        dev: &B,
        batch in shape(0..=2, 0..=3),
        m in 0usize..=5,
        k in 0usize..=5,
        n in 0usize..=5,
        seed in any::<u64>(),
        ta in any::<bool>(),
        tb in any::<bool>(),
        la in lay(),
        lb in lay(),
    ) {
        run_matmul(dev, &batch, (m, k, n), seed, (ta, tb), (la, lb), DType::F32)?;
    }
}

device_tests!(matmul_larger_and_transposed_batch_axes);

/// Sizes past any small-size fast path, a batch axis transposed into the middle, `x @ W^T`.
fn matmul_larger_and_transposed_batch_axes<B: Backend>(dev: &B) -> ela_core::Result<()> {
    // Sizes past any small-size fast path, with a batch axis transposed into the middle.
    let mut rng = TestRng::new(11);
    let a = rand_ref(&[3, 37, 2, 45], &mut rng, Vals::Uni); // [b, m, 2, k] -> transpose(1, 2) -> [b, 2, m, k]
    let b = rand_ref(&[45, 29], &mut rng, Vals::Uni);
    let ta = tensor(dev, &a, DType::F64).transpose(1, 2)?;
    let want = r::matmul(&r::transpose(&a, 1, 2), &b).unwrap();
    let got = ta.matmul(&tensor(dev, &b, DType::F64))?;
    must(check(&got, &want, 1e-12, 1e-11, "matmul [3,2,37,45] @ [45,29]"));
    // A rhs that is a transposed weight (x @ W^T).
    let w = rand_ref(&[29, 45], &mut rng, Vals::Uni);
    let got = ta.matmul(&tensor(dev, &w, DType::F64).t()?)?;
    let want = r::matmul(&r::transpose(&a, 1, 2), &r::transpose(&w, 0, 1)).unwrap();
    must(check(&got, &want, 1e-12, 1e-11, "x @ W^T"));
    let got32 = ta.to_dtype(DType::F32)?.matmul(&tensor(dev, &w, DType::F32).t()?)?;
    let want32 =
        r::matmul(&round_ref(&r::transpose(&a, 1, 2), DType::F32), &round_ref(&r::transpose(&w, 0, 1), DType::F32))
            .unwrap();
    must(check(&got32, &want32, 1e-5, 1e-4, "f32 x @ W^T"));
    Ok(())
}
