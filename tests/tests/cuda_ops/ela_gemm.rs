//! The chunked paths of the feature-map kernels: the tensor-core form
//! (`cuda/src/ops/ela/feature_chunk.rs`) and, for head sizes whose tiles do not fit in shared
//! memory (here `d = dv = 256`), the cuBLAS form (`gemm_chunk.rs`). Many chunks with a ragged last
//! one, head sizes where `F = D + 1, D + 2` is not a multiple of 16, `Dv != D`, causal and
//! non-causal, f32, bf16 and f16, and a carried state crossing chunk boundaries.
//!
//! elu+1 without a carried state may take the Hadamard-Exp kernels at their head sizes
//! (log-features, tests/cuda_ops/ela_fast.rs; `ela_cuda::with_elu_tiles`): its cases here run
//! both ways, on the tiles where they apply and on this path everywhere.
//!
//! The reference is the CPU backend's fused ELA in f64 on the same (rounded) inputs, itself
//! checked against quadratic attention in f64 (tests/ela_forms.rs). The signed kernels cancel
//! heavily, so the GPU is judged like the CPU: its normwise error against f64 may not exceed the
//! CPU's own error in the input dtype by more than a small factor.

use ela_core::ela::ElaParams;
use ela_core::{Cpu, DType, ElaKernel, FusedElaState, Result, Rng, Tensor};
use ela_cuda::Cuda;
use proptest::prelude::*;

use crate::{cases, check_tol, gpu, rel_err, Pair};

/// Every kernel this path takes.
const KERNELS: [ElaKernel; 5] =
    [ElaKernel::SumSqEuclid, ElaKernel::SubSqEuclid, ElaKernel::Blueprint, ElaKernel::Identity, ElaKernel::EluPlusOne];

/// q, k, v of `dtype` (values rounded to it), small enough that the signed kernels' denominators
/// stay away from zero; Identity gets positive features.
fn inputs(kernel: ElaKernel, shape: [usize; 4], dv: usize, dtype: DType, seed: u64, dev: &Cuda) -> [Pair; 3] {
    let mut rng = Rng::new(seed);
    let (scale, shift) = if kernel == ElaKernel::Identity { (0.1, 1.0) } else { (0.3, 0.2) };
    let mut mk = |shape: Vec<usize>, s: f64, o: f64| {
        Pair::new(Tensor::randn(o, s, shape, DType::F64, &mut rng, &Cpu).unwrap().to_dtype(dtype).unwrap(), dev)
    };
    let [b, h, t, d] = shape;
    [mk(vec![b, h, t, d], scale, shift), mk(vec![b, h, t, d], scale, shift), mk(vec![b, h, t, dv], 1.0, 0.0)]
}

/// Whether the GPU's result `g` is as accurate as the CPU's `c`, both against the f64 result `r`:
/// a normwise relative error at most 4x the CPU's plus a floor (f32 agrees to rounding; 16-bit
/// outputs are dominated by their own rounding), or an absolute RMS error under a floor. The
/// second test is for gradients that are zero in exact arithmetic (T = 1: `dq = dk = 0`), where
/// a relative error measures only rounding noise against a ~1e-17 reference; inputs and `dy`
/// are O(1) here, so an absolute floor is meaningful.
fn within(g: &[f64], c: &[f64], r: &[f64], dtype: DType) -> bool {
    let (floor, abs_floor) = if dtype == DType::F32 { (1e-6, 1e-5) } else { (1e-2, 1e-2) };
    let rms = (g.iter().zip(r).map(|(a, b)| (a - b) * (a - b)).sum::<f64>() / r.len().max(1) as f64).sqrt();
    rel_err(g, r) <= 4.0 * rel_err(c, r) + floor || rms <= abs_floor
}

/// Forward and backward of one case on both devices and in f64; panics (through `prop_assert`)
/// on a mismatch.
fn check_case(
    kernel: ElaKernel,
    shape: [usize; 4],
    dv: usize,
    causal: bool,
    dtype: DType,
    seed: u64,
    dev: &Cuda,
) -> Result<Vec<String>> {
    let [q, k, v] = inputs(kernel, shape, dv, dtype, seed, dev);
    let [b, h, t, _] = shape;
    let dy = Pair::randn(&[b, h, t, dv], dtype, seed + 1, dev);
    let p = ElaParams { kernel, causal, chunk: 16 };
    let f64_ = |x: &Tensor<Cpu>| x.to_dtype(DType::F64);
    let (q64, k64, v64, dy64) = (f64_(&q.cpu)?, f64_(&k.cpu)?, f64_(&v.cpu)?, f64_(&dy.cpu)?);
    let y64 = q64.ela(&k64, &v64, &p)?;
    let r = Tensor::ela_backward(&q64, &k64, &v64, &y64, &dy64, &p)?;
    let (cy, gy) = (q.cpu.ela(&k.cpu, &v.cpu, &p)?, q.gpu.ela(&k.gpu, &v.gpu, &p)?);
    let c = Tensor::ela_backward(&q.cpu, &k.cpu, &v.cpu, &cy, &dy.cpu, &p)?;
    let g = Tensor::ela_backward(&q.gpu, &k.gpu, &v.gpu, &gy, &dy.gpu, &p)?;
    // What training runs: the saving forward and the backward that reuses what it kept.
    let (sy, saved) = q.gpu.ela_saving(&k.gpu, &v.gpu, &p)?;
    let s = Tensor::ela_backward_saved(&q.gpu, &k.gpu, &v.gpu, &sy, &dy.gpu, &p, saved.as_ref())?;
    let mut failures = Vec::new();
    for (name, a, b) in [("y", &gy, &sy), ("dq", &g.0, &s.0), ("dk", &g.1, &s.1), ("dv", &g.2, &s.2)] {
        let (a, b) = (a.to_vec_f64()?, b.to_vec_f64()?);
        if a != b {
            failures.push(format!("{name} {kernel} causal={causal} {shape:?}x{dv} {dtype:?}: saved path differs"));
        }
    }
    for (name, r, c, g) in
        [("y", &y64, &cy, &gy), ("dq", &r.0, &c.0, &g.0), ("dk", &r.1, &c.1, &g.1), ("dv", &r.2, &c.2, &g.2)]
    {
        let (r, c, g) = (r.to_vec_f64()?, c.to_vec_f64()?, g.to_vec_f64()?);
        if !within(&g, &c, &r, dtype) {
            let (ce, ge) = (rel_err(&c, &r), rel_err(&g, &r));
            failures
                .push(format!("{name} {kernel} causal={causal} {shape:?}x{dv} {dtype:?}: GPU {ge:e} vs CPU {ce:e}"));
        }
    }
    Ok(failures)
}

#[test]
fn feature_kernels_match_f64_over_many_chunks() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    // T = 200: three full chunks of 64 (six of 32) and a ragged one; d = 64 gives F = 65, 66;
    // dv = 5 and 128; d = 160 has tiles wider than 144 (32-row chunks, also with elu+1's bf16
    // operands); d = dv = 256 takes the cuBLAS form with f32 operands, 32-row tiles with bf16;
    // d = dv = 64 has whole 16-byte rows, which elu+1 with bf16 inputs reads where they lie (as
    // d = 16 with dv = 128 and d = dv = 256 do); the others take operand rows.
    let shapes = [
        ([2, 2, 200, 64], 5),
        ([1, 2, 200, 64], 64),
        ([1, 3, 130, 16], 128),
        ([1, 1, 1, 8], 8),
        ([1, 2, 100, 160], 5),
        ([1, 1, 150, 256], 256),
    ];
    for (ki, kernel) in KERNELS.into_iter().enumerate() {
        for (si, (shape, dv)) in shapes.into_iter().enumerate() {
            for causal in [true, false] {
                let dtypes: &[DType] =
                    if si == 0 { &[DType::F32, DType::BF16, DType::F16] } else { &[DType::F32, DType::BF16] };
                for &dtype in dtypes {
                    let case = || check_case(kernel, shape, dv, causal, dtype, 700 + ki as u64, &dev);
                    // The feature-map path, whatever the tiles' defaults (their own tests: ela_fast.rs).
                    let la = || ela_cuda::with_identity_tiles(false, || ela_cuda::with_signed_tiles(false, case));
                    let failures = ela_cuda::with_elu_tiles(false, la)?;
                    assert!(failures.is_empty(), "{}", failures.join("\n"));
                    if kernel == ElaKernel::EluPlusOne {
                        let tiles = ela_cuda::with_elu_tiles(true, case)?;
                        assert!(tiles.is_empty(), "elu+1 on the tiles: {}", tiles.join("\n"));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The opt-in bf16 operands of the signed kernels with bf16 inputs (`ela_cuda::with_signed_bf16`,
/// an approximate fast path: bf16 products, state slots rounded to bf16 once a chunk) are judged
/// like the default f32 operands, against the CPU's own bf16 error; the saving forward must keep
/// bf16 slots (the switch took effect) where the default keeps f32 ones.
#[test]
fn signed_kernels_on_bf16_operands_match_f64() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let shapes = [([2, 2, 200, 64], 5), ([1, 2, 200, 64], 64), ([1, 3, 130, 16], 128), ([1, 2, 100, 160], 5)];
    for (ki, kernel) in KERNELS[..4].iter().copied().enumerate() {
        for (shape, dv) in shapes {
            for causal in [true, false] {
                let case = || check_case(kernel, shape, dv, causal, DType::BF16, 720 + ki as u64, &dev);
                let failures = ela_cuda::with_signed_bf16(true, case)?;
                assert!(failures.is_empty(), "bf16 operands: {}", failures.join("\n"));
            }
            let [q, k, v] = inputs(kernel, shape, dv, DType::BF16, 730, &dev);
            // The feature-map path's slots (Identity at 64 x 64 would take the Hadamard-Exp
            // kernels with the opt-in, whose saved buffers are laid out otherwise).
            let slots = |on| {
                ela_cuda::with_identity_tiles(false, || {
                    ela_cuda::with_signed_bf16(on, || -> Result<DType> {
                        let (_, saved) = q.gpu.ela_saving(&k.gpu, &v.gpu, &ElaParams::causal(kernel))?;
                        Ok(saved.expect("the chunked path keeps its state").buffers[3].dtype())
                    })
                })
            };
            assert_eq!((slots(true)?, slots(false)?), (DType::BF16, DType::F32), "{kernel} {shape:?}x{dv}");
        }
    }
    Ok(())
}

#[test]
fn feature_kernels_match_f64_on_random_shapes() {
    let Some(dev) = gpu() else { return };
    let cfg = ProptestConfig { cases: cases(12), ..ProptestConfig::default() };
    let shape = (1usize..3, 1usize..3, 1usize..300, prop::sample::select(vec![1usize, 4, 31, 64, 128]));
    proptest!(cfg, |(ki in 0usize..5, (b, h, t, d) in shape, dv in 1usize..130, causal: bool, bf16: bool, seed in 0u64..1000)| {
        let dtype = if bf16 { DType::BF16 } else { DType::F32 };
        let case = || check_case(KERNELS[ki], [b, h, t, d], dv, causal, dtype, seed, &dev).unwrap();
        let failures = ela_cuda::with_elu_tiles(false, case);
        prop_assert!(failures.is_empty(), "{}", failures.join("\n"));
        if KERNELS[ki] == ElaKernel::EluPlusOne {
            let tiles = ela_cuda::with_elu_tiles(true, case);
            prop_assert!(tiles.is_empty(), "elu+1 on the tiles: {}", tiles.join("\n"));
        }
    });
}

/// A prefill that ends inside a chunk, steps, then a second prefill that starts from the carried
/// state and spans several chunks: the outputs and the state agree with the CPU's.
#[test]
fn carried_state_crosses_chunk_boundaries() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let (b, h, d, dv, t) = (2, 2, 16, 24, 260);
    for kernel in KERNELS {
        let [q, k, v] = inputs(kernel, [b, h, t, d], dv, DType::F32, 41, &dev);
        let mut cs = FusedElaState::new(kernel, b, h, d, dv, DType::F32, &Cpu)?;
        let mut gs = FusedElaState::new(kernel, b, h, d, dv, DType::F32, &dev)?;
        let tag = format!("{kernel}");
        let mut pos = 0;
        for (len, steps) in [(100usize, 3usize), (150, 0), (7, 0)] {
            let (cy, gy) = (
                cs.prefill(&q.cpu.narrow(2, pos, len)?, &k.cpu.narrow(2, pos, len)?, &v.cpu.narrow(2, pos, len)?)?,
                gs.prefill(&q.gpu.narrow(2, pos, len)?, &k.gpu.narrow(2, pos, len)?, &v.gpu.narrow(2, pos, len)?)?,
            );
            check_tol(&format!("prefill at {pos} {tag}"), &cy, &gy, 2e-4, 2e-5);
            pos += len;
            for _ in 0..steps {
                let cy = cs.step(&q.cpu.narrow(2, pos, 1)?, &k.cpu.narrow(2, pos, 1)?, &v.cpu.narrow(2, pos, 1)?)?;
                let gy = gs.step(&q.gpu.narrow(2, pos, 1)?, &k.gpu.narrow(2, pos, 1)?, &v.gpu.narrow(2, pos, 1)?)?;
                check_tol(&format!("step at {pos} {tag}"), &cy, &gy, 2e-4, 2e-5);
                pos += 1;
            }
        }
        assert_eq!(pos, t);
        let (cb, gb) = (cs.buffers()?, gs.buffers()?);
        check_tol(&format!("state S {tag}"), &cb.0, &gb.0, 2e-4, 1e-3);
        check_tol(&format!("state z {tag}"), &cb.1, &gb.1, 2e-4, 1e-3);
        // The whole sequence in one call ends where prefill + steps ended.
        let full = q.gpu.ela(&k.gpu, &v.gpu, &ElaParams::causal(kernel))?.narrow(2, t - 1, 1)?.contiguous()?;
        let cpu = q.cpu.ela(&k.cpu, &v.cpu, &ElaParams::causal(kernel))?.narrow(2, t - 1, 1)?.contiguous()?;
        check_tol(&format!("one call {tag}"), &cpu, &full, 2e-4, 2e-5);
    }
    Ok(())
}

/// The feature-map path's two scans (`la_scan`: half of X's columns a block; `la_scan_narrow`:
/// 16, f32 operands) sum every state entry in the same order, so forcing either gives the same
/// bits: forward, the saving forward and its backward, causal and not, with a carried state
/// (prefill) too. bf16 inputs of elu+1 have only the half scan: forcing the narrow one keeps
/// the choice, and the same bits.
#[test]
fn both_scans_give_the_same_bits() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let cases = [
        (ElaKernel::SumSqEuclid, [2, 3, 200, 64], 64, DType::F32),
        (ElaKernel::Identity, [1, 2, 130, 48], 128, DType::F32),
        (ElaKernel::Blueprint, [2, 1, 97, 32], 40, DType::BF16),
        (ElaKernel::EluPlusOne, [1, 2, 150, 64], 64, DType::BF16),
    ];
    for (ci, (kernel, shape, dv, dtype)) in cases.into_iter().enumerate() {
        let [q, k, v] = inputs(kernel, shape, dv, dtype, 900 + ci as u64, &dev);
        let [b, h, t, d] = shape;
        let dy = Pair::randn(&[b, h, t, dv], dtype, 950 + ci as u64, &dev);
        // (elu+1 and sum-sq on this path, whatever the defaults for calls without a carried state.)
        let run = |scan: &'static str| -> Result<Vec<Vec<f64>>> {
            ela_cuda::with_signed_tiles(false, || {
                ela_cuda::with_elu_tiles(false, || {
                    ela_cuda::with_la_scan(Some(scan), || {
                        let mut out = Vec::new();
                        for causal in [true, false] {
                            let p = ElaParams { kernel, causal, chunk: 16 };
                            let (y, saved) = q.gpu.ela_saving(&k.gpu, &v.gpu, &p)?;
                            let (dq, dk, dv) =
                                Tensor::ela_backward_saved(&q.gpu, &k.gpu, &v.gpu, &y, &dy.gpu, &p, saved.as_ref())?;
                            for x in [&y, &dq, &dk, &dv] {
                                out.push(x.to_vec_f64()?);
                            }
                        }
                        let mut st = FusedElaState::new(kernel, b, h, d, dv, dtype, &dev)?;
                        out.push(st.prefill(&q.gpu, &k.gpu, &v.gpu)?.to_vec_f64()?);
                        let (s, z, _) = st.buffers()?;
                        out.push(s.to_vec_f64()?);
                        out.push(z.to_vec_f64()?);
                        Ok(out)
                    })
                })
            })
        };
        let (half, narrow) = (run("half")?, run("narrow")?);
        for (i, (a, b)) in half.iter().zip(&narrow).enumerate() {
            let same = a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{kernel} {shape:?}x{dv} {dtype:?}: output {i} differs between the scans");
        }
    }
    Ok(())
}

/// elu+1 with bf16 inputs (rows of whole 16-byte vectors) reads q, k, v where they lie and maps
/// them as its tiles load: the outputs, gradients (saving and recomputing backward) and a carried
/// state are the same bits as with the operand rows of the row kernels
/// (`ela_cuda::with_la_rows`). Ragged last chunks, `Dv != D`, both directions. That the two modes
/// differ at all is checked too: only the row mode's saving forward keeps operand rows.
#[test]
fn operands_read_where_they_lie_give_the_same_bits() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let kernel = ElaKernel::EluPlusOne;
    for (ci, (shape, dv)) in
        [([1, 2, 200, 64], 64), ([1, 3, 130, 16], 128), ([2, 1, 97, 32], 40)].into_iter().enumerate()
    {
        let [q, k, v] = inputs(kernel, shape, dv, DType::BF16, 960 + ci as u64, &dev);
        let [b, h, t, d] = shape;
        let dy = Pair::randn(&[b, h, t, dv], DType::BF16, 980 + ci as u64, &dev);
        // The outputs, and the elements of operand rows the saving forwards kept.
        let run = || -> Result<(Vec<Vec<f64>>, usize)> {
            let (mut out, mut kept) = (Vec::new(), 0);
            for causal in [true, false] {
                let p = ElaParams { kernel, causal, chunk: 16 };
                let (y, saved) = q.gpu.ela_saving(&k.gpu, &v.gpu, &p)?;
                kept += saved.as_ref().map_or(0, |s| s.buffers[..3].iter().map(|b| b.len()).sum());
                let (dq, dk, dv) = Tensor::ela_backward_saved(&q.gpu, &k.gpu, &v.gpu, &y, &dy.gpu, &p, saved.as_ref())?;
                let (rq, rk, rv) = Tensor::ela_backward(&q.gpu, &k.gpu, &v.gpu, &y, &dy.gpu, &p)?;
                for x in [&y, &dq, &dk, &dv, &rq, &rk, &rv] {
                    out.push(x.to_vec_f64()?);
                }
            }
            let mut st = FusedElaState::new(kernel, b, h, d, dv, DType::BF16, &dev)?;
            out.push(st.prefill(&q.gpu, &k.gpu, &v.gpu)?.to_vec_f64()?);
            let (s, z, _) = st.buffers()?;
            out.push(s.to_vec_f64()?);
            out.push(z.to_vec_f64()?);
            Ok((out, kept))
        };
        // (On the feature-map path, whatever the default for calls without a carried state.)
        let ((raw, raw_kept), (rows, rows_kept)) =
            ela_cuda::with_elu_tiles(false, || -> Result<_> { Ok((run()?, ela_cuda::with_la_rows(run)?)) })?;
        assert!(raw_kept == 0 && rows_kept > 0, "{shape:?}x{dv}: operand rows kept {raw_kept} / {rows_kept}");
        for (i, (a, b)) in raw.iter().zip(&rows).enumerate() {
            let same = a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{shape:?}x{dv}: output {i} differs between raw inputs and operand rows");
        }
    }
    Ok(())
}
