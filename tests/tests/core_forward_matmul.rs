//! Forward correctness of `matmul` (broadcast batch axes, transposed and strided operands, empty
//! dims, sizes past any small-size fast path) against `ela_tests::reference::matmul`.

mod core_forward_common;

use core_forward_common::*;
use ela_core::DType;
use ela_tests::reference::{self as r, RefTensor, TestRng};
use proptest::prelude::*;

// ====================================================================== matmul

/// `[batch.., rows, cols]`, built either directly or as the `.t()` of a `[.., cols, rows]`
/// buffer (a transposed, non-contiguous operand).
fn matrix_operand(
    batch: &[usize],
    rows: usize,
    cols: usize,
    transposed: bool,
    l: Lay,
    dt: DType,
    rng: &mut TestRng,
) -> std::result::Result<(RefTensor, T), TestCaseError> {
    let mut s = batch.to_vec();
    if transposed {
        s.extend([cols, rows]);
        let (x, t) = input(&s, dt, l, Vals::Uni, rng);
        let rk = s.len();
        Ok((r::transpose(&x, rk - 2, rk - 1), t.t()?))
    } else {
        s.extend([rows, cols]);
        Ok(input(&s, dt, l, Vals::Uni, rng))
    }
}

fn run_matmul(
    batch: &[usize],
    (m, k, n): (usize, usize, usize),
    seed: u64,
    (ta, tb): (bool, bool),
    (la, lb): (Lay, Lay),
    dt: DType,
) -> TestResult {
    let mut rng = TestRng::new(seed);
    let (ba, bb) = (broadcastable_to(batch, &mut rng), broadcastable_to(batch, &mut rng));
    let (xa, a) = matrix_operand(&ba, m, k, ta, la, dt, &mut rng)?;
    let (xb, b) = matrix_operand(&bb, k, n, tb, lb, dt, &mut rng)?;
    let want = r::matmul(&xa, &xb).unwrap();
    let (rt, at) = if dt == DType::F64 { (1e-12, 1e-12) } else { (1e-5, 2e-5) };
    check(
        &a.matmul(&b)?,
        &want,
        rt,
        at,
        &format!("matmul {:?} @ {:?} (t {ta} {tb}, {la:?} {lb:?})", a.dims(), b.dims()),
    )
}

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn matmul_f64(batch in shape(0..=2, 0..=3), m in 0usize..=5, k in 0usize..=5, n in 0usize..=5,
                  seed in any::<u64>(), ta in any::<bool>(), tb in any::<bool>(), la in lay(), lb in lay()) {
        run_matmul(&batch, (m, k, n), seed, (ta, tb), (la, lb), DType::F64)?;
    }

    #[test]
    fn matmul_f32(batch in shape(0..=2, 0..=3), m in 0usize..=5, k in 0usize..=5, n in 0usize..=5,
                  seed in any::<u64>(), ta in any::<bool>(), tb in any::<bool>(), la in lay(), lb in lay()) {
        run_matmul(&batch, (m, k, n), seed, (ta, tb), (la, lb), DType::F32)?;
    }
}

#[test]
fn matmul_larger_and_transposed_batch_axes() -> ela_core::Result<()> {
    // Sizes past any small-size fast path, with a batch axis transposed into the middle.
    let mut rng = TestRng::new(11);
    let a = rand_ref(&[3, 37, 2, 45], &mut rng, Vals::Uni); // [b, m, 2, k] -> transpose(1, 2) -> [b, 2, m, k]
    let b = rand_ref(&[45, 29], &mut rng, Vals::Uni);
    let ta = tensor(&a, DType::F64).transpose(1, 2)?;
    let want = r::matmul(&r::transpose(&a, 1, 2), &b).unwrap();
    let got = ta.matmul(&tensor(&b, DType::F64))?;
    must(check(&got, &want, 1e-12, 1e-11, "matmul [3,2,37,45] @ [45,29]"));
    // A rhs that is a transposed weight (x @ W^T).
    let w = rand_ref(&[29, 45], &mut rng, Vals::Uni);
    let got = ta.matmul(&tensor(&w, DType::F64).t()?)?;
    let want = r::matmul(&r::transpose(&a, 1, 2), &r::transpose(&w, 0, 1)).unwrap();
    must(check(&got, &want, 1e-12, 1e-11, "x @ W^T"));
    let got32 = ta.to_dtype(DType::F32)?.matmul(&tensor(&w, DType::F32).t()?)?;
    let want32 =
        r::matmul(&round_ref(&r::transpose(&a, 1, 2), DType::F32), &round_ref(&r::transpose(&w, 0, 1), DType::F32))
            .unwrap();
    must(check(&got32, &want32, 1e-5, 1e-4, "f32 x @ W^T"));
    Ok(())
}
