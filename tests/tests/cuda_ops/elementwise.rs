//! Transfers, copies, casts, unary/binary maps, comparisons and `where` against the CPU backend.

use ela_core::{BinaryOp, CmpOp, Cpu, CpuStorage, DType, Result, Rng, Tensor, UnaryOp};
use proptest::prelude::*;

use crate::{both, cases, check, gpu, Pair, ALL, FLOATS};

#[test]
fn transfers_fill_and_strided_copies_are_exact() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    for (k, &d) in ALL.iter().enumerate() {
        let p = Pair::uniform(&[3, 4, 5], 0.0, 200.0, d, k as u64, &dev);
        assert_eq!(p.gpu.to_cpu_storage()?, p.cpu.to_cpu_storage()?, "{d:?} roundtrip");
        let (c, g) = both!(|p| Tensor::full(7.0, [2, 3], d, p.device())?);
        check("full", &c, &g);
        // Permuted + narrowed views read back in logical order, and copied to contiguous.
        let (c, g) = both!(|p| p.permute(&[2, 0, 1])?.narrow(1, 1, 2)?);
        assert_eq!(g.to_cpu_storage()?, c.to_cpu_storage()?, "{d:?} strided to_cpu");
        let (c, g) = (c.contiguous()?, g.contiguous()?);
        assert!(g.layout().is_contiguous());
        check("contiguous", &c, &g);
    }
    // Rank 8 with every axis strided: more axes than one kernel descriptor holds.
    let dims = [2, 3, 2, 2, 3, 2, 2, 2];
    let p = Pair::randn(&dims, DType::F32, 9, &dev);
    let perm = [7, 0, 6, 1, 5, 2, 4, 3];
    let (c, g) = both!(|p| p.permute(&perm)?.contiguous()?);
    check("rank-8 permute", &c, &g);
    // Empty tensors.
    let (c, g) = both!(|p| p.narrow(0, 0, 0)?.contiguous()?);
    check("empty", &c, &g);
    Ok(())
}

#[test]
fn copies_with_contiguous_rows_move_wide_vectors_exactly() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    // A head permutation [B, T, H, D] -> [B, H, T, D] (rows of D contiguous: grouped into 16-byte
    // moves), rows narrowed to odd offsets and lengths (smaller groups or none), every width.
    for (k, &d) in ALL.iter().enumerate() {
        let p = Pair::uniform(&[2, 5, 3, 16], 0.0, 200.0, d, 40 + k as u64, &dev);
        let (c, g) = both!(|p| p.permute(&[0, 2, 1, 3])?.contiguous()?);
        check(&format!("head permute {d:?}"), &c, &g);
        for (start, len) in [(1, 12), (2, 14), (4, 8), (3, 13), (0, 16)] {
            let (c, g) = both!(|p| p.narrow(3, start, len)?.permute(&[0, 2, 1, 3])?.contiguous()?);
            check(&format!("narrowed rows {start}+{len} {d:?}"), &c, &g);
            // Into a strided destination: a transposed copy back (the rows stay contiguous).
            let (c, g) = both!(|p| p.narrow(3, start, len)?.t()?.contiguous()?.t()?.contiguous()?);
            check(&format!("round trip {start}+{len} {d:?}"), &c, &g);
        }
    }
    Ok(())
}

#[test]
fn casts_between_every_pair_of_dtypes_match_the_cpu() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    // Rounding boundaries, ties, subnormals, out-of-range and special values.
    let vals = vec![
        0.0,
        -0.0,
        1.0,
        -1.5,
        2.5,
        255.5,
        256.0,
        -300.0,
        1e10,
        4294967296.0,
        65504.0,
        65520.0,
        1e-8,
        6e-8,
        1.0 + 2f64.powi(-11),
        1.0 + 3.0 * 2f64.powi(-11),
        3.4e38,
        1e39,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        0.1,
        1.0 / 3.0,
        12345.678,
    ];
    for &from in &ALL {
        let src = Tensor::from_cpu_storage(&CpuStorage::from_f64_vec(&vals, from)?, vals.len(), &Cpu)?;
        let p = Pair::new(src, &dev);
        for &to in &ALL {
            let (c, g) = both!(|p| p.to_dtype(to)?);
            // Conversions are exact or rounded to nearest on both devices: no tolerance.
            crate::check_tol(&format!("cast {from:?} -> {to:?}"), &c, &g, 0.0, 0.0);
        }
        // Casts read strided views too.
        let (c, g) = both!(|p| p.narrow(0, 1, 20)?.reshape([4, 5])?.t()?.to_dtype(DType::F32)?);
        check("strided cast", &c, &g);
    }
    Ok(())
}

#[test]
fn f64_to_half_casts_round_once() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    // Just above a tie of the target format, by less than f32 can represent: rounding through f32
    // first (double rounding) would land on the tie and round to even (down); rounding once goes up.
    let x =
        Tensor::from_vec(vec![1.0 + 2f64.powi(-11) + 2f64.powi(-30), 1.0 + 2f64.powi(-8) + 2f64.powi(-30)], 2, &dev)?;
    let h = x.to_dtype(DType::F16)?.to_vec_f64()?;
    let b = x.to_dtype(DType::BF16)?.to_vec_f64()?;
    assert_eq!(h[0], 1.0 + 2f64.powi(-10), "f64 -> f16 is correctly rounded");
    assert_eq!(b[1], 1.0 + 2f64.powi(-7), "f64 -> bf16 is correctly rounded");
    Ok(())
}

fn unary_ops() -> Vec<UnaryOp> {
    use UnaryOp::*;
    vec![
        Neg,
        Exp,
        Log,
        Sqrt,
        Recip,
        Abs,
        Square,
        Relu,
        Gelu,
        GeluGrad,
        Silu,
        SiluGrad,
        Sigmoid,
        Tanh,
        Sign,
        Step,
        Powf(1.7),
        Affine { mul: -0.5, add: 3.0 },
        MaxScalar(0.25),
        MinScalar(-0.3),
    ]
}

#[test]
fn every_unary_op_matches_on_strided_inputs() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    for (k, &d) in FLOATS.iter().enumerate() {
        let x = Pair::randn_strided(&[5, 37], d, 100 + k as u64, &dev);
        // Positive inputs for log, sqrt and the fractional power.
        let pos = Pair::new(x.cpu.abs()?.add_scalar(0.1)?, &dev);
        for op in unary_ops() {
            let input = if matches!(op, UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Powf(_)) { &pos } else { &x };
            let (c, g) = (input.cpu.unary(op)?, input.gpu.unary(op)?);
            check(&format!("{op:?} {d:?}"), &c, &g);
        }
        // Large magnitudes: sigmoid must not overflow on either side.
        let big = Pair::uniform(&[64], -100.0, 100.0, d, 7, &dev);
        let (c, g) = both!(|big| big.sigmoid()?);
        check("sigmoid large", &c, &g);
    }
    let u = Pair::ids(&[4], 5, 1, &dev);
    assert!(matches!(u.gpu.exp(), Err(ela_core::Error::UnsupportedDType { .. })), "unary on u32 is a typed error");
    Ok(())
}

const BINARY: [BinaryOp; 6] =
    [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Maximum, BinaryOp::Minimum];

fn broadcast_shapes() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    prop::collection::vec((1usize..5, 0u8..3), 1..5).prop_map(|axes| {
        // Each axis: both sides full, lhs broadcast (1), or rhs broadcast (1).
        let a = axes.iter().map(|&(n, k)| if k == 1 { 1 } else { n }).collect();
        let b = axes.iter().map(|&(n, k)| if k == 2 { 1 } else { n }).collect();
        (a, b)
    })
}

#[test]
fn binary_ops_with_broadcasting_match() {
    let Some(dev) = gpu() else { return };
    let cfg = ProptestConfig { cases: cases(12), ..ProptestConfig::default() };
    proptest!(cfg, |((sa, sb) in broadcast_shapes(), seed in 0u64..1000)| {
        for (k, &d) in FLOATS.iter().enumerate() {
            let a = Pair::randn(&sa, d, seed + k as u64, &dev);
            let b = Pair::randn(&sb, d, seed + 50 + k as u64, &dev);
            for op in BINARY {
                let (c, g) = both!(|a, b| a.binary(op, b).unwrap());
                check(&format!("{op:?} {d:?} {sa:?} {sb:?}"), &c, &g);
            }
        }
    });
}

#[test]
fn binary_on_transposed_views_and_nan_propagation() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let a = Pair::randn_strided(&[3, 7, 9], DType::F32, 3, &dev);
    let b = Pair::randn(&[3, 7, 9], DType::F32, 4, &dev);
    for op in BINARY {
        let (c, g) = both!(|a, b| a.binary(op, b)?);
        check(&format!("{op:?} strided"), &c, &g);
    }
    let v = [f32::NAN, 1.0, f32::NAN, -2.0];
    let w = [0.0, f32::NAN, f32::NAN, 5.0];
    let a = Pair::new(Tensor::from_slice(&v, 4, &Cpu)?, &dev);
    let b = Pair::new(Tensor::from_slice(&w, 4, &Cpu)?, &dev);
    for op in [BinaryOp::Maximum, BinaryOp::Minimum] {
        let (c, g) = both!(|a, b| a.binary(op, b)?);
        check(&format!("{op:?} NaN"), &c, &g);
    }
    Ok(())
}

#[test]
fn comparisons_and_where_match_exactly() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    for (k, &d) in ALL.iter().enumerate() {
        // Few distinct values so equality cases occur; a broadcast rhs.
        let a = Pair::uniform(&[4, 6], 0.0, 3.0, DType::F64, k as u64, &dev);
        let a = Pair::new(a.cpu.floor_like()?.to_dtype(d)?, &dev);
        let b = Pair::new(Tensor::from_vec(vec![0.0f64, 1.0, 2.0, 1.0, 0.0, 2.0], 6, &Cpu)?.to_dtype(d)?, &dev);
        for op in [CmpOp::Eq, CmpOp::Ne, CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge] {
            let (c, g) = both!(|a, b| a.cmp(op, b)?);
            crate::check_tol(&format!("{op:?} {d:?}"), &c, &g, 0.0, 0.0);
            let mask = Pair { cpu: c, gpu: g };
            let t = Pair::uniform(&[4, 6], 0.0, 9.0, d, 11, &dev);
            let f = Pair::uniform(&[6], 0.0, 9.0, d, 12, &dev);
            let (c, g) = both!(|mask, t, f| mask.where_cond(&t.t()?.contiguous()?.t()?, f)?);
            crate::check_tol(&format!("where {d:?}"), &c, &g, 0.0, 0.0);
        }
    }
    Ok(())
}

/// Rounds values down to integers on the host (test helper; the tensor API has no floor).
trait FloorLike: Sized {
    fn floor_like(&self) -> Result<Self>;
}
impl FloorLike for Tensor<Cpu> {
    fn floor_like(&self) -> Result<Self> {
        let v: Vec<f64> = self.to_vec_f64()?.into_iter().map(f64::floor).collect();
        Tensor::from_vec(v, self.shape().clone(), &Cpu)
    }
}

/// `f` on the GPU with the elementwise fast paths and with the general kernels only, within
/// `rtol` (0 for binary maps: one operation, one rounding, bit-identical; unary maps share the
/// scalar code too, but the compiler may contract a longer formula differently in each kernel).
fn fast_vs_general(
    dev: &ela_cuda::Cuda,
    name: &str,
    rtol: f64,
    f: impl Fn() -> Result<Tensor<ela_cuda::Cuda>>,
) -> Result<()> {
    let fast = f()?;
    dev.set_fast_elementwise(false);
    let general = f();
    dev.set_fast_elementwise(true);
    crate::check_tol(&format!("{name}: fast vs general"), &general?.to_device(&Cpu)?, &fast, rtol, 0.0);
    Ok(())
}

#[test]
fn contiguous_fast_paths_match_at_every_alignment() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    // Lengths around the vector width (2, 4 or 8 elements of 16 bytes) and a few blocks' worth,
    // read at element offsets 0..4 of a larger buffer: aligned views take 16-byte vectors
    // plus a scalar tail, misaligned ones the scalar loop.
    for (k, &d) in FLOATS.iter().enumerate() {
        for n in [1usize, 8, 37, 2051] {
            let a = Pair::randn(&[n + 8], d, 200 + k as u64, &dev);
            let b = Pair::randn(&[n + 8], d, 300 + k as u64, &dev);
            for (oa, ob) in [(0, 0), (1, 1), (0, 3), (4, 4)] {
                let tag = format!("{d:?} n={n} offsets {oa},{ob}");
                let (va, vb) = (
                    Pair { cpu: a.cpu.narrow(0, oa, n)?, gpu: a.gpu.narrow(0, oa, n)? },
                    Pair { cpu: b.cpu.narrow(0, ob, n)?, gpu: b.gpu.narrow(0, ob, n)? },
                );
                for op in BINARY {
                    let (c, g) = both!(|va, vb| va.binary(op, vb)?);
                    check(&format!("{op:?} {tag}"), &c, &g);
                    fast_vs_general(&dev, &format!("{op:?} {tag}"), 0.0, || va.gpu.binary(op, &vb.gpu))?;
                }
                // Every unary op on the first view (positive inputs where the op needs them).
                let pos = Pair { cpu: va.cpu.abs()?.add_scalar(0.1)?, gpu: va.gpu.abs()?.add_scalar(0.1)? };
                for op in unary_ops() {
                    let x = if matches!(op, UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Powf(_)) { &pos } else { &va };
                    let (c, g) = (x.cpu.unary(op)?, x.gpu.unary(op)?);
                    check(&format!("{op:?} {tag}"), &c, &g);
                    if oa != 0 || n == 2051 {
                        let rtol = crate::tol(d).0 / 10.0;
                        fast_vs_general(&dev, &format!("{op:?} {tag}"), rtol, || va.gpu.unary(op))?;
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn per_channel_broadcasts_match_on_either_side_and_any_alignment() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    // (full shape, small shape): per-channel over NCHW with inner sizes that are and are not
    // multiples of the vector width (vectors then straddle channels), a bias over the last axis
    // (a new channel every element), a scalar, and a leading-axis vector (inner = rest).
    let cases: [(&[usize], &[usize]); 6] = [
        (&[2, 5, 7, 9], &[1, 5, 1, 1]),
        (&[3, 4, 8, 8], &[1, 4, 1, 1]),
        (&[6, 5], &[5]),
        (&[2, 3, 4, 5], &[1, 1, 1, 1]),
        (&[7, 3, 11], &[7, 1, 1]),
        (&[4, 16, 33, 33], &[1, 16, 1, 1]),
    ];
    for (k, &d) in FLOATS.iter().enumerate() {
        for (i, &(full, small)) in cases.iter().enumerate() {
            let seed = 400 + 10 * k as u64 + i as u64;
            // The full operand contiguous at offset 0 and at an odd offset (the tail of a
            // narrowed buffer), the small one contiguous or with stride 2 over its channels.
            let mut big = full.to_vec();
            big[0] += 1;
            let xb = Pair::randn(&big, d, seed, &dev);
            let per_img: usize = full[1..].iter().product();
            let mut wide = small.to_vec();
            wide.push(2);
            let wb = Pair::uniform(&wide, 0.5, 1.5, d, seed + 1, &dev);
            let w_views = [
                Pair {
                    cpu: wb.cpu.narrow(small.len(), 0, 1)?.contiguous()?,
                    gpu: wb.gpu.narrow(small.len(), 0, 1)?.contiguous()?,
                },
                Pair { cpu: wb.cpu.narrow(small.len(), 1, 1)?, gpu: wb.gpu.narrow(small.len(), 1, 1)? },
            ];
            for start in [0, 1] {
                let x = Pair { cpu: xb.cpu.narrow(0, start, full[0])?, gpu: xb.gpu.narrow(0, start, full[0])? };
                assert!(x.gpu.layout().is_contiguous() && x.gpu.layout().offset() == start * per_img);
                for (j, w) in w_views.iter().enumerate() {
                    let w = Pair { cpu: w.cpu.reshape(small.to_vec())?, gpu: w.gpu.reshape(small.to_vec())? };
                    for op in BINARY {
                        let tag = format!("{op:?} {d:?} {full:?} by {small:?}, x at {start}, w view {j}");
                        let (c, g) = both!(|x, w| x.binary(op, w)?);
                        check(&tag, &c, &g);
                        fast_vs_general(&dev, &tag, 0.0, || x.gpu.binary(op, &w.gpu))?;
                        let (c, g) = both!(|x, w| w.binary(op, x)?);
                        check(&format!("{tag} swapped"), &c, &g);
                        fast_vs_general(&dev, &format!("{tag} swapped"), 0.0, || w.gpu.binary(op, &x.gpu))?;
                    }
                }
            }
        }
    }
    // BN in inference as the detector writes it: (x - mean) * (rstd * w) + b, then SiLU.
    let x = Pair::randn(&[2, 16, 10, 10], DType::F32, 9, &dev);
    let m = Pair::randn(&[1, 16, 1, 1], DType::F32, 10, &dev);
    let s = Pair::uniform(&[1, 16, 1, 1], 0.5, 1.5, DType::F32, 11, &dev);
    let (c, g) = both!(|x, m, s| x.sub(m)?.mul(s)?.add(m)?.silu()?);
    check("bn affine + silu", &c, &g);
    Ok(())
}

/// Contiguous casts among f32, f16 and bf16 take 16-byte vectors (`cast_contig_*`): the same
/// bits as the general cast kernel and as the CPU, at every alignment and length, for values
/// that round to even, overflow f16, are subnormal, infinite or NaN.
#[test]
fn contiguous_casts_between_float_widths_are_exact() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let mut vals: Vec<f32> = vec![0.0, -0.0, 1.0, -1.5, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1e5, -7e4, 65504.0];
    // Halfway between neighbouring bf16 / f16 values (ties to even), and subnormals of each.
    vals.extend([1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8), 1.0 + 2f32.powi(-11), 3e-39, 1e-41, 6e-8, 3e-5]);
    let mut rng = Rng::new(77);
    while vals.len() < 2100 {
        vals.push((rng.uniform() as f32 - 0.5) * 2f32.powi((rng.below(60) as i32) - 30));
    }
    let same =
        |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x.is_nan() && y.is_nan()) || x.to_bits() == y.to_bits());
    let widths = [DType::F32, DType::F16, DType::BF16];
    for from in widths {
        let src = Tensor::from_vec(vals.clone(), [vals.len()], &Cpu)?.to_dtype(from)?;
        let gsrc = src.to_device(&dev)?;
        for to in widths.into_iter().filter(|&t| t != from) {
            for n in [1usize, 8, 37, 2051] {
                for off in [0usize, 1, 3, 8] {
                    let (c, g) = (src.narrow(0, off, n)?.to_dtype(to)?, gsrc.narrow(0, off, n)?.to_dtype(to)?);
                    let tag = format!("{from:?} -> {to:?} n={n} offset {off}");
                    assert!(same(&g.to_vec_f64()?, &c.to_vec_f64()?), "{tag}: GPU vs CPU");
                    dev.set_fast_elementwise(false);
                    let general = gsrc.narrow(0, off, n)?.to_dtype(to);
                    dev.set_fast_elementwise(true);
                    assert!(same(&g.to_vec_f64()?, &general?.to_vec_f64()?), "{tag}: fast vs general kernel");
                }
            }
        }
    }
    Ok(())
}
