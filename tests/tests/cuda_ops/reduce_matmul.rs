//! Reductions, cumsum, top-k and matrix products against the CPU backend and f64 references.

use ela_core::{Cpu, DType, ReduceOp, Result, Tensor};
use proptest::prelude::*;

use crate::{both, cases, check, check_tol, gpu, rel_err, Pair, ALL, FLOATS};

const REDUCE: [ReduceOp; 6] =
    [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min, ReduceOp::ArgMax, ReduceOp::ArgMin, ReduceOp::LogSumExp];

#[test]
fn reductions_along_every_axis_match() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    // Short axes (a thread per output) and a long one (a block per output); strided views.
    for (k, &d) in FLOATS.iter().enumerate() {
        for shape in [[3usize, 5, 4], [2, 300, 3], [4, 2, 129]] {
            let x = Pair::randn_strided(&shape, d, 10 + k as u64, &dev);
            for axis in 0..3 {
                for op in REDUCE {
                    let (c, g) = both!(|x| x.reduce(op, axis, false)?);
                    // Sums of many terms: the CPU adds in order, the GPU in a tree (both in f64).
                    let (rt, at) = crate::tol(d);
                    check_tol(&format!("{op:?} axis {axis} of {shape:?} {d:?}"), &c, &g, rt * 4.0, at * 4.0);
                }
            }
        }
    }
    // Ties pick the first index; NaN wins max/argmax; empty sums are 0 and empty lse -inf.
    let v = [1.0f32, 3.0, 3.0, f32::NAN, 0.0, -1.0, -1.0, 2.0];
    let x = Pair::new(Tensor::from_slice(&v, [2, 4], &Cpu)?, &dev);
    for op in REDUCE {
        let (c, g) = both!(|x| x.reduce(op, 1usize, false)?);
        check_tol(&format!("{op:?} ties/NaN"), &c, &g, 0.0, 0.0);
    }
    let long: Vec<f32> = (0..1000).map(|i| if i == 700 || i == 900 { 5.0 } else { (i % 7) as f32 }).collect();
    let x = Pair::new(Tensor::from_vec(long, [1, 1000], &Cpu)?, &dev);
    let (c, g) = both!(|x| x.argmax(1usize, false)?);
    check_tol("argmax first of tied maxima (block)", &c, &g, 0.0, 0.0);
    let e = Pair::randn(&[3, 0], DType::F32, 1, &dev);
    for op in [ReduceOp::Sum, ReduceOp::LogSumExp] {
        let (c, g) = both!(|e| e.reduce(op, 1usize, false)?);
        check(&format!("{op:?} of empty axis"), &c, &g);
    }
    assert!(e.gpu.max(1usize, false).is_err(), "max over an empty axis is an error");
    Ok(())
}

#[test]
fn whole_tensor_reductions_split_over_blocks_match() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    // Few outputs over long axes take the split path (partials per segment, then a finish):
    // 1 and 3 outputs, axis lengths around segment boundaries, an inner stride.
    for (k, &d) in FLOATS.iter().enumerate() {
        for (shape, axis) in [([1usize, 300_001, 1], 1), ([3, 20_000, 1], 1), ([1, 9000, 2], 1), ([70_000, 1, 1], 0)] {
            let x = Pair::randn(&shape, d, 40 + k as u64, &dev);
            for op in REDUCE {
                let (c, g) = both!(|x| x.reduce(op, axis, false)?);
                let (rt, at) = crate::tol(d);
                check_tol(&format!("split {op:?} axis {axis} of {shape:?} {d:?}"), &c, &g, rt * 4.0, at * 4.0);
            }
        }
    }
    // Exact picks across segments: tied maxima in different segments take the first; a NaN in a
    // late segment wins max/argmax and poisons sum and logsumexp; all -inf gives -inf.
    let n = 200_000;
    let mut v: Vec<f32> = (0..n).map(|i| (i % 13) as f32 * 0.25).collect();
    v[150_000] = 9.0;
    v[60_000] = 9.0;
    v[10] = -7.0;
    v[190_000] = -7.0;
    let x = Pair::new(Tensor::from_vec(v.clone(), [n], &Cpu)?, &dev);
    for op in REDUCE {
        let (c, g) = both!(|x| x.reduce(op, 0usize, false)?);
        check_tol(&format!("split {op:?} ties"), &c, &g, 1e-6, 0.0);
    }
    let mut w = v;
    w[170_001] = f32::NAN;
    let x = Pair::new(Tensor::from_vec(w, [n], &Cpu)?, &dev);
    for op in REDUCE {
        let (c, g) = both!(|x| x.reduce(op, 0usize, false)?);
        check_tol(&format!("split {op:?} NaN"), &c, &g, 0.0, 0.0);
    }
    let x = Pair::new(Tensor::from_vec(vec![f32::NEG_INFINITY; n], [n], &Cpu)?, &dev);
    let (c, g) = both!(|x| x.reduce(ReduceOp::LogSumExp, 0usize, false)?);
    check_tol("split logsumexp of -inf", &c, &g, 0.0, 0.0);
    Ok(())
}

#[test]
fn cumsum_forward_reverse_exclusive() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    for (k, &d) in FLOATS.iter().enumerate() {
        let x = Pair::randn_strided(&[3, 17, 6], d, 20 + k as u64, &dev);
        for axis in 0..3 {
            for (ex, rev) in [(false, false), (true, false), (false, true), (true, true)] {
                let (c, g) = both!(|x| x.cumsum(axis, ex, rev)?);
                check(&format!("cumsum axis {axis} ex {ex} rev {rev} {d:?}"), &c, &g);
            }
        }
    }
    Ok(())
}

#[test]
fn topk_orders_nan_ties_and_integers_like_the_cpu() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    for (k, &d) in ALL.iter().enumerate() {
        // Few distinct values: many ties, broken by the lower index.
        let x = Pair::uniform(&[6, 40], 0.0, 6.0, DType::F64, 30 + k as u64, &dev);
        let x = Pair::new(x.cpu.to_dtype(d)?, &dev);
        for kk in [1, 5, 40] {
            let ((cv, ci), (gv, gi)) = both!(|x| x.topk(kk, 1usize)?);
            check_tol(&format!("topk values k={kk} {d:?}"), &cv, &gv, 0.0, 0.0);
            check_tol(&format!("topk indices k={kk} {d:?}"), &ci, &gi, 0.0, 0.0);
        }
        // Along a non-last axis (a strided view reaches the kernel).
        let ((cv, ci), (gv, gi)) = both!(|x| x.topk(3, 0usize)?);
        check_tol("topk axis 0", &cv, &gv, 0.0, 0.0);
        check_tol("topk axis 0 idx", &ci, &gi, 0.0, 0.0);
    }
    let v = [0.5f32, f32::NAN, 2.0, f32::NAN, 2.0, -1.0];
    let x = Pair::new(Tensor::from_slice(&v, [1, 6], &Cpu)?, &dev);
    let ((cv, ci), (gv, gi)) = both!(|x| x.topk(6, 1usize)?);
    check_tol("topk NaN values", &cv, &gv, 0.0, 0.0);
    check_tol("topk NaN indices", &ci, &gi, 0.0, 0.0);
    Ok(())
}

/// f64 reference product of two CPU tensors of any dtype.
fn reference(a: &Tensor<Cpu>, b: &Tensor<Cpu>) -> Vec<f64> {
    a.to_dtype(DType::F64).unwrap().matmul(&b.to_dtype(DType::F64).unwrap()).unwrap().to_vec_f64().unwrap()
}

fn matmul_case() -> impl Strategy<Value = (Vec<usize>, Vec<usize>, usize, usize, usize, bool, bool)> {
    (prop::collection::vec(1usize..4, 0..3), 0u8..3, 1usize..40, 1usize..40, 1usize..40, any::<bool>(), any::<bool>())
        .prop_map(|(batch, bcast, m, k, n, ta, tb)| {
            // Broadcast the batch of one operand (stride 0) in a third of the cases.
            let mut bb = batch.clone();
            if bcast == 1 && !bb.is_empty() {
                bb[0] = 1;
            }
            (batch, bb, m, k, n, ta, tb)
        })
}

#[test]
fn matmul_matches_f64_with_transposes_and_broadcast_batches() {
    let Some(dev) = gpu() else { return };
    let cfg = ProptestConfig { cases: cases(16), ..ProptestConfig::default() };
    proptest!(cfg, |((ba, bb, m, k, n, ta, tb) in matmul_case(), seed in 0u64..1000)| {
        for (j, &d) in FLOATS.iter().enumerate() {
            // Operands built transposed (then viewed back) when ta/tb: cuBLAS reads them in place.
            let mk = |batch: &[usize], r: usize, c: usize, t: bool, s: u64| {
                let mut shape = batch.to_vec();
                if t { shape.extend([c, r]) } else { shape.extend([r, c]) }
                let p = Pair::randn(&shape, d, s, &dev);
                if t {
                    let rk = shape.len();
                    Pair { cpu: p.cpu.transpose(rk - 2, rk - 1).unwrap(), gpu: p.gpu.transpose(rk - 2, rk - 1).unwrap() }
                } else { p }
            };
            let a = mk(&ba, m, k, ta, seed + j as u64);
            let b = mk(&bb, k, n, tb, seed + 100 + j as u64);
            let g = a.gpu.matmul(&b.gpu).unwrap();
            let want = reference(&a.cpu, &b.cpu);
            let err = rel_err(&g.to_vec_f64().unwrap(), &want);
            // f32/f64 accumulate exactly to rounding; f16/bf16 round the output once.
            let bound = match d { DType::F64 => 1e-13, DType::F32 => 1e-6, DType::F16 => 2e-3, _ => 1e-2 };
            prop_assert!(err < bound, "{d:?} {ba:?}x{bb:?} m{m} k{k} n{n} ta{ta} tb{tb}: rel err {err:e}");
        }
    });
}

#[test]
fn matmul_edge_shapes() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    // k = 0 gives zeros; a column-sliced operand (row stride > cols) and a broadcast-row operand
    // (stride 0 rows: copied first). TF32 is measured in tests/cuda_tf32.rs: the switch is
    // per device, so flipping it here would change concurrently running tests.
    let a = Pair::randn(&[4, 0], DType::F32, 1, &dev);
    let b = Pair::randn(&[0, 3], DType::F32, 2, &dev);
    let (c, g) = both!(|a, b| a.matmul(b)?);
    check("k = 0", &c, &g);
    let a = Pair::randn(&[5, 9], DType::F32, 3, &dev);
    let b = Pair::randn(&[4, 6], DType::F32, 4, &dev);
    let (c, g) = both!(|a, b| a.narrow(1, 2, 4)?.matmul(b)?);
    check_tol("narrowed lhs", &c, &g, 1e-5, 1e-5);
    let r = Pair::randn(&[1, 4], DType::F32, 5, &dev);
    let (c, g) = both!(|r, b| r.broadcast_as([7, 4])?.matmul(b)?);
    check_tol("broadcast rows", &c, &g, 1e-5, 1e-5);
    Ok(())
}

/// `matmul_f32` (f16/bf16 operands, the f32 accumulator kept: mixed precision's weight
/// gradients, `x^T dy` with a transposed view) matches the f64 product of the same values to f32
/// rounding, well inside the 16-bit rounding `matmul` has; other dtypes are a typed error.
#[test]
fn matmul_f32_keeps_the_accumulator() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    for (i, d) in [DType::BF16, DType::F16].into_iter().enumerate() {
        for (m, k, n) in [(64, 4096, 96), (1, 300, 7), (33, 5, 1)] {
            let x = Pair::randn(&[k, m], d, 40 + i as u64, &dev);
            let g = Pair::randn(&[k, n], d, 50 + i as u64, &dev);
            let out = x.gpu.t()?.matmul_f32(&g.gpu)?;
            assert_eq!(out.dtype(), DType::F32);
            let want = reference(&x.cpu.t()?, &g.cpu);
            let err = rel_err(&out.to_vec_f64()?, &want);
            assert!(err < 5e-6, "{d:?} m{m} k{k} n{n}: {err:e}");
            let cpu = x.cpu.t()?.matmul_f32(&g.cpu)?;
            assert!(rel_err(&cpu.to_vec_f64()?, &want) < 5e-6, "{d:?}: the CPU default");
        }
    }
    let a = Pair::randn(&[3, 4], DType::F32, 1, &dev);
    let e = a.gpu.matmul_f32(&a.gpu.t()?).unwrap_err().to_string();
    assert!(e.contains("matmul_f32") && e.contains("f16 or bf16"), "{e}");
    Ok(())
}
