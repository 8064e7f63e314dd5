//! The chunked tensor-core ELA kernels (Hadamard Exp, head sizes 64/128, f32/f16/bf16, and 256
//! for 16-bit inputs; other head sizes padded to those for f32/bf16): forward
//! against the f64 quadratic reference (`ela_nn::ela::Form::Quadratic`, the one reference of
//! every ELA test), gradients against the CPU's f64 fused
//! backward (itself checked against the quadratic tape to 1e-9), and both against the CPU
//! backend in the same dtype; the numerics cases of docs/ela.md (inputs of magnitude 80, crossed
//! maxima that take the exact path); prefill with a carried state and the one-launch recurrent
//! step against the CPU state, buffer by buffer. The same kernels compute elu+1 on log-features
//! (`ChunkMap::EluPlusOne`): the same checks for it, and its exact path. Outputs land in
//! NaN-filled memory, so an element a kernel does not write shows up.

use ela_autograd::Var;
use ela_core::ela::ElaParams;
use ela_core::{Cpu, DType, ElaKernel, FusedElaState, Result, Rng, Tensor};
use ela_cuda::Cuda;
use ela_nn::ela::{Ela, Form};

use crate::{gpu, rel_err, Pair};

const EXP: ElaKernel = ElaKernel::HadamardExp;
const ELU: ElaKernel = ElaKernel::EluPlusOne;

/// Normwise bound against f64 of the chunked path: f32 to its rounding, 16-bit inputs to 1e-2
/// (bf16 operands in the tile products; S, z, den and the log-scales f32).
fn bound(d: DType) -> f64 {
    if d == DType::F32 {
        1e-5
    } else {
        1e-2
    }
}

/// Fills the caching allocator's free list with NaN blocks of `elems` elements of `dtype`, so
/// the op's next allocations of that size reuse them.
fn poison(dev: &Cuda, elems: usize, dtype: DType, count: usize) {
    let blocks: Vec<_> = (0..count).map(|_| Tensor::full(f64::NAN, [elems], dtype, dev).unwrap()).collect();
    drop(blocks);
}

fn finite(t: &Tensor<Cuda>) -> bool {
    t.to_vec_f64().unwrap().iter().all(|x| x.is_finite())
}

/// Forward and backward of one case on the GPU, with the errors against f64 and against the
/// CPU backend in the same dtype: `[y, dq, dk, dv]` each `(vs f64, vs CPU)`.
fn run_case(dev: &Cuda, q: &Pair, k: &Pair, v: &Pair, dy: &Pair, causal: bool) -> Result<[(f64, f64); 4]> {
    run_kernel_case(dev, EXP, q, k, v, dy, causal)
}

/// [`run_case`] for `kernel` (Hadamard Exp or elu+1, which must take the chunked kernels).
fn run_kernel_case(
    dev: &Cuda,
    kernel: ElaKernel,
    q: &Pair,
    k: &Pair,
    v: &Pair,
    dy: &Pair,
    causal: bool,
) -> Result<[(f64, f64); 4]> {
    let (dims, dv) = (q.cpu.dims().to_vec(), v.cpu.dims()[3]);
    let (seqs, t, d) = (dims[0] * dims[1], dims[2], dims[3]);
    let dtype = q.cpu.dtype();
    let p = ElaParams { kernel, causal, chunk: 64 };
    poison(dev, seqs * t * dv, dtype, 4);
    let gy = q.gpu.ela(&k.gpu, &v.gpu, &p)?;
    assert!(finite(&gy), "every output written and finite ({dtype:?}, causal {causal})");
    poison(dev, seqs * t * d, dtype, 4);
    let g = Tensor::ela_backward(&q.gpu, &k.gpu, &v.gpu, &gy, &dy.gpu, &p)?;
    for x in [&g.0, &g.1, &g.2] {
        assert!(finite(x), "every gradient written and finite ({dtype:?}, causal {causal})");
    }
    // The training path: the forward keeps its slots and row scales, the backward reuses them.
    // Same forward bits; the gradients differ from the recomputing backward only by the order of
    // the sum in c = dy . y / den (and, for 16-bit outputs, the roundings that order can flip).
    poison(dev, seqs * t * 4, DType::F32, 2);
    let (sy, saved) = q.gpu.ela_saving(&k.gpu, &v.gpu, &p)?;
    // Non-causal calls at padded sizes may take the parallel form, which saves nothing.
    let native = [64, 128, 256].contains(&d) && [64, 128, 256].contains(&dv);
    assert!(saved.is_some() || (!causal && !native), "the chunked path keeps its forward state");
    assert_eq!(sy.to_vec_f64()?, gy.to_vec_f64()?, "saving forward == forward");
    let gs = Tensor::ela_backward_saved(&q.gpu, &k.gpu, &v.gpu, &sy, &dy.gpu, &p, saved.as_ref())?;
    let same = if dtype == DType::F32 { 1e-6 } else { bound(dtype) / 4.0 };
    for (name, a, b) in [("dq", &gs.0, &g.0), ("dk", &gs.1, &g.1), ("dv", &gs.2, &g.2)] {
        let e = rel_err(&a.to_vec_f64()?, &b.to_vec_f64()?);
        assert!(e <= same, "{name} with the saved forward vs recomputed ({dtype:?}, causal {causal}): {e:e}");
    }
    // References: f64 on the same (rounded) inputs; the CPU backend in the same dtype.
    let up = |x: &Pair| x.cpu.to_dtype(DType::F64).unwrap();
    let (q64, k64, v64, dy64) = (up(q), up(k), up(v), up(dy));
    let want = Ela::builtin(kernel).with_causal(causal).run(Form::Quadratic, &q64, &k64, &v64)?.to_vec_f64()?;
    let y64 = q64.ela(&k64, &v64, &p)?;
    let r64 = Tensor::ela_backward(&q64, &k64, &v64, &y64, &dy64, &p)?;
    let cy = q.cpu.ela(&k.cpu, &v.cpu, &p)?;
    let rc = Tensor::ela_backward(&q.cpu, &k.cpu, &v.cpu, &cy, &dy.cpu, &p)?;
    let e = |a: &Tensor<Cuda>, b: &Tensor<Cpu>| rel_err(&a.to_vec_f64().unwrap(), &b.to_vec_f64().unwrap());
    Ok([
        (rel_err(&gy.to_vec_f64()?, &want), e(&gy, &cy)),
        (e(&g.0, &r64.0), e(&g.0, &rc.0)),
        (e(&g.1, &r64.1), e(&g.1, &rc.1)),
        (e(&g.2, &r64.2), e(&g.2, &rc.2)),
    ])
}

fn show_list(errs: &[f64]) -> String {
    errs.iter().map(|e| format!("{e:.2e}")).collect::<Vec<_>>().join(", ")
}

fn show(errs: &[(f64, f64)]) -> String {
    errs.iter().map(|(a, b)| format!("({a:.2e}, {b:.2e})")).collect::<Vec<_>>().join(" ")
}

fn qkv(shape: [usize; 4], dv: usize, dtype: DType, seed: u64, dev: &Cuda) -> (Pair, Pair, Pair, Pair) {
    let [b, h, t, d] = shape;
    let mut rng = Rng::new(seed);
    let mut mk = |w: usize, scale: f64, shift: f64| {
        let x = Tensor::randn(shift, scale, vec![b, h, t, w], DType::F64, &mut rng, &Cpu).unwrap();
        Pair::new(x.to_dtype(dtype).unwrap(), dev)
    };
    (mk(d, 1.0, 0.5), mk(d, 1.0, -0.5), mk(dv, 1.0, 0.0), mk(dv, 1.0, 0.0))
}

#[test]
fn chunked_ela_matches_f64_and_the_cpu() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let variants = [
        (DType::F32, 64, 64),
        (DType::BF16, 64, 64),
        (DType::F16, 64, 64),
        (DType::F32, 128, 128),
        (DType::BF16, 128, 128),
        (DType::BF16, 64, 128),
        // Other head sizes up to 128 run the same kernels padded to 64 or 128 (`padded.rs`).
        (DType::F32, 32, 32),
        (DType::BF16, 32, 32),
        (DType::F32, 96, 48),
        (DType::BF16, 8, 5),
        (DType::F32, 100, 128),
        // 256-wide heads (16-bit only, 32-row chunks), natively and padded.
        (DType::BF16, 256, 256),
        (DType::F16, 256, 256),
        (DType::BF16, 64, 256),
        (DType::BF16, 200, 256),
    ];
    for (vi, &(dtype, d, dv)) in variants.iter().enumerate() {
        check_shape(&dev, EXP, dtype, d, dv, 300 + vi as u64)?;
    }
    Ok(())
}

/// One head shape of `kernel` on the chunked path: T = 150 (two full 64-row chunks and a partial
/// one; f32 with 128-wide heads: 32-row chunks) causal and not, and T = 37, forward and gradients
/// against f64 and the CPU ([`run_kernel_case`]).
fn check_shape(dev: &Cuda, kernel: ElaKernel, dtype: DType, d: usize, dv: usize, seed: u64) -> Result<()> {
    for (t, causal) in [(150, true), (150, false), (37, true)] {
        let (q, k, v, dy) = qkv([2, 2, t, d], dv, dtype, seed, dev);
        let errs = run_kernel_case(dev, kernel, &q, &k, &v, &dy, causal)?;
        let tag = format!("{kernel} {dtype:?} d={d} dv={dv} T={t} causal={causal}");
        println!("{tag}: [y, dq, dk, dv] (vs f64, vs cpu) = {}", show(&errs));
        for (name, (e64, ecpu)) in ["y", "dq", "dk", "dv"].iter().zip(errs) {
            // Gradients: f32 to 5e-5 (the 1/den^2 terms cancel); 16-bit inputs to the bound.
            let tol = if *name == "y" || dtype != DType::F32 { bound(dtype) } else { 5e-5 };
            assert!(e64 <= tol, "{name} {tag}: {e64:e} vs f64 > {tol:e}");
            assert!(ecpu <= 2.0 * tol, "{name} {tag}: {ecpu:e} vs the CPU");
        }
    }
    Ok(())
}

#[test]
fn long_sequences_match_the_cpu() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    // 33 chunks (an odd count: the scan's last two-chunk step has one) and 66, against the CPU's
    // f64 fused kernels on the same rounded inputs; the backward with and without the saved forward.
    for (dtype, t) in [(DType::BF16, 2100), (DType::F32, 2100), (DType::BF16, 4196)] {
        let (q, k, v, dy) = qkv([1, 2, t, 64], 64, dtype, 77, &dev);
        let p = ElaParams { kernel: EXP, causal: true, chunk: 64 };
        poison(&dev, 2 * t * 64, dtype, 4);
        let (y, saved) = q.gpu.ela_saving(&k.gpu, &v.gpu, &p)?;
        let g = Tensor::ela_backward_saved(&q.gpu, &k.gpu, &v.gpu, &y, &dy.gpu, &p, saved.as_ref())?;
        let g2 = Tensor::ela_backward(&q.gpu, &k.gpu, &v.gpu, &y, &dy.gpu, &p)?;
        let up = |x: &Pair| x.cpu.to_dtype(DType::F64).unwrap();
        let (q64, k64, v64, dy64) = (up(&q), up(&k), up(&v), up(&dy));
        let y64 = q64.ela(&k64, &v64, &p)?;
        let r64 = Tensor::ela_backward(&q64, &k64, &v64, &y64, &dy64, &p)?;
        let e = |a: &Tensor<Cuda>, b: &Tensor<Cpu>| rel_err(&a.to_vec_f64().unwrap(), &b.to_vec_f64().unwrap());
        let errs = [e(&y, &y64), e(&g.0, &r64.0), e(&g.1, &r64.1), e(&g.2, &r64.2), e(&g2.0, &r64.0), e(&g2.2, &r64.2)];
        println!("long {dtype:?} T={t}: y, dq, dk, dv, dq / dv recomputed = {}", show_list(&errs));
        let tol = if dtype == DType::F32 { 5e-5 } else { bound(dtype) };
        assert!(errs.iter().all(|x| x.is_finite() && *x <= tol), "{dtype:?} T={t}: {errs:?} > {tol:e}");
    }
    Ok(())
}

#[test]
fn saved_forward_state_of_another_call_is_an_error() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let (q, k, v, dy) = qkv([1, 2, 100, 64], 64, DType::BF16, 7, &dev);
    let p = ElaParams { kernel: EXP, causal: true, chunk: 64 };
    let (y, saved) = q.gpu.ela_saving(&k.gpu, &v.gpu, &p)?;
    let other = ElaParams { causal: false, ..p };
    let err = Tensor::ela_backward_saved(&q.gpu, &k.gpu, &v.gpu, &y, &dy.gpu, &other, saved.as_ref()).unwrap_err();
    assert!(err.to_string().contains("ela_saving"), "{err}");
    let cut = |x: &Tensor<Cuda>| x.narrow(2, 0, 50).unwrap().contiguous().unwrap();
    let err = Tensor::ela_backward_saved(
        &cut(&q.gpu),
        &cut(&k.gpu),
        &cut(&v.gpu),
        &cut(&y),
        &cut(&dy.gpu),
        &p,
        saved.as_ref(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("saved forward state"), "{err}");
    Ok(())
}

#[test]
fn chunked_ela_magnitude_80_and_the_exact_path() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let (t, d, dv) = (160, 64, 64);
    for dtype in [DType::F32, DType::BF16] {
        // Uniform in [-80, 80]: q_d + k_d reaches 160, far past exp's f32 range.
        let u = |seed| Pair::uniform(&[1, 2, t, d], -80.0, 80.0, dtype, seed, &dev);
        let (q, k) = (u(1), u(2));
        let (v, dy) = (Pair::randn(&[1, 2, t, dv], dtype, 3, &dev), Pair::randn(&[1, 2, t, dv], dtype, 4, &dev));
        let errs = run_case(&dev, &q, &k, &v, &dy, true)?;
        println!("magnitude 80 {dtype:?}: {}", show(&errs));
        if dtype == DType::F32 {
            assert!(errs[0].0 <= 1e-4, "forward {:e}", errs[0].0);
            assert!(errs[1..].iter().all(|e| e.0 <= 1e-3), "gradients {errs:?}");
        } else {
            assert!(errs.iter().all(|e| e.0 <= 3e-2), "bf16 {errs:?}");
        }
    }
    // Crossed maxima (q = (80.., -80..), k = (-80.., 80..)): u_i - r_i = 160 underflows every fast
    // term, so every row takes the exact path, in the forward and in the backward.
    let (q, k) = crossed_qk(&dev, t, d, 80.0, -80.0, 9);
    let (v, dy) = (Pair::randn(&[1, 2, t, dv], DType::F32, 5, &dev), Pair::randn(&[1, 2, t, dv], DType::F32, 6, &dev));
    let errs = run_case(&dev, &q, &k, &v, &dy, true)?;
    println!("crossed maxima f32: {}", show(&errs));
    assert!(errs[0].0 <= 1e-4 && errs[1..].iter().all(|e| e.0 <= 1e-3), "exact path {errs:?}");
    Ok(())
}

/// f32 q, k `[1, 2, t, d]` with crossed maxima: q's first half of the features around `hi` and
/// the rest around `lo`, k the other way round (each plus N(0, 1)), so a row's largest q and the
/// keys' largest features sit in different coordinates and `u_i` lies far above the true largest
/// log-term (docs/ela.md, "Exact rows after underflow").
fn crossed_qk(dev: &Cuda, t: usize, d: usize, hi: f64, lo: f64, seed: u64) -> (Pair, Pair) {
    let mut rng = Rng::new(seed);
    let (mut qv, mut kv) = (vec![0.0; 2 * t * d], vec![0.0; 2 * t * d]);
    for r in 0..2 * t {
        for e in 0..d {
            let (sq, sk) = if e < d / 2 { (hi, lo) } else { (lo, hi) };
            qv[r * d + e] = sq + rng.normal();
            kv[r * d + e] = sk + rng.normal();
        }
    }
    let to =
        |x: Vec<f64>| Pair::new(Tensor::from_vec(x, [1, 2, t, d], &Cpu).unwrap().to_dtype(DType::F32).unwrap(), dev);
    (to(qv), to(kv))
}

#[test]
fn chunked_prefill_and_batched_steps_match_the_cpu_state() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    // 32 and 96: the padded state (`padded.rs`) must carry over exactly like a native one.
    for (dtype, d) in [
        (DType::F32, 64),
        (DType::BF16, 128),
        (DType::F32, 128),
        (DType::F32, 32),
        (DType::BF16, 96),
        (DType::BF16, 256),
    ] {
        let (b, h, t) = (2, 3, 100);
        let mut rng = Rng::new(40 + d as u64);
        let mut mk = |w: usize, scale: f64, shift: f64| {
            let x = Tensor::randn(shift, scale, vec![b, h, t + 4, w], DType::F64, &mut rng, &Cpu).unwrap();
            Pair::new(x.to_dtype(dtype).unwrap(), &dev)
        };
        let (q, k, v) = (mk(d, 1.5, 2.0), mk(d, 1.5, -1.0), mk(d, 1.0, 0.0));
        let mut cs = FusedElaState::new(EXP, b, h, d, d, dtype, &Cpu)?;
        let mut gs = FusedElaState::new(EXP, b, h, d, d, dtype, &dev)?;
        let tol = bound(dtype);
        let tag = format!("{dtype:?} d={d}");
        // Two prefills (the second continues from the carried state), then batched steps.
        for (a, len) in [(0, 70), (70, 30)] {
            let cy = cs.prefill(&q.cpu.narrow(2, a, len)?, &k.cpu.narrow(2, a, len)?, &v.cpu.narrow(2, a, len)?)?;
            let gy = gs.prefill(&q.gpu.narrow(2, a, len)?, &k.gpu.narrow(2, a, len)?, &v.gpu.narrow(2, a, len)?)?;
            let e = rel_err(&gy.to_vec_f64()?, &cy.to_vec_f64()?);
            assert!(e <= 2.0 * tol, "prefill at {a} {tag}: {e:e}");
        }
        for i in t..t + 4 {
            let cy = cs.step(&q.cpu.narrow(2, i, 1)?, &k.cpu.narrow(2, i, 1)?, &v.cpu.narrow(2, i, 1)?)?;
            let gy = gs.step(&q.gpu.narrow(2, i, 1)?, &k.gpu.narrow(2, i, 1)?, &v.gpu.narrow(2, i, 1)?)?;
            let e = rel_err(&gy.to_vec_f64()?, &cy.to_vec_f64()?);
            assert!(e <= 2.0 * tol, "step {i} {tag}: {e:e}");
        }
        let (cb, gb) = (cs.buffers()?, gs.buffers()?);
        let e = |a: &Tensor<Cpu>, b: &Tensor<Cuda>| rel_err(&b.to_vec_f64().unwrap(), &a.to_vec_f64().unwrap());
        assert!(e(&cb.0, &gb.0) <= 2.0 * tol, "state S {tag}: {:e}", e(&cb.0, &gb.0));
        assert!(e(&cb.1, &gb.1) <= 2.0 * tol, "state z {tag}: {:e}", e(&cb.1, &gb.1));
        // The log-scales are running maxima of the keys: exactly equal.
        let (cm, gm) = (cb.2.unwrap().to_vec_f64()?, gb.2.unwrap().to_vec_f64()?);
        assert_eq!(cm, gm, "state m {tag}");
        assert_eq!(gs.tokens(), t + 4);
    }
    Ok(())
}

/// q, k, v as the attention layer makes them, transposed views of one `[batch, t, 3, heads, d]`
/// product, are read where they lie (`Backend::ela_rows_supported`), and `y` comes back in
/// `[batch, t, heads, dv]` order: the same bits as the call on contiguous copies, forward and
/// both backwards (with the saved forward and recomputing it; `dy` a transposed view as well),
/// and within the bound of the f64 reference. A view whose rows do not start on 16-byte
/// boundaries is copied first, with the same result.
#[test]
fn strided_operands_are_read_in_place() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    // (elu+1 on the tiles, whatever the default.)
    ela_cuda::with_elu_tiles(true, || strided_cases(&dev))
}

/// The body of [`strided_operands_are_read_in_place`].
fn strided_cases(dev: &Cuda) -> Result<()> {
    let bits = |t: &Tensor<Cuda>| t.to_vec_f64().unwrap();
    for (i, &(kernel, dtype, d, causal)) in [
        (EXP, DType::BF16, 64, true),
        (EXP, DType::F32, 64, true),
        (EXP, DType::F16, 64, false),
        (EXP, DType::BF16, 128, true),
        (ELU, DType::BF16, 64, true),
        (ELU, DType::F32, 128, false),
    ]
    .iter()
    .enumerate()
    {
        let (b, t, h) = (2, 150, 3);
        let mut rng = Rng::new(900 + i as u64);
        let mut up = |shape: Vec<usize>| {
            let x = Tensor::randn(0.0, 1.0, shape, DType::F64, &mut rng, &Cpu).unwrap();
            x.to_dtype(dtype).unwrap().to_device(dev).unwrap()
        };
        let qkv = up(vec![b, t, 3, h, d]);
        let dy_tm = up(vec![b, t, h, d]);
        let head = |j: usize| qkv.narrow(2, j, 1)?.squeeze(2)?.transpose(1usize, 2usize);
        let (q, k, v, dy) = (head(0)?, head(1)?, head(2)?, dy_tm.transpose(1usize, 2usize)?);
        assert!(!q.layout().is_contiguous() && !dy.layout().is_contiguous());
        let p = ElaParams { kernel, causal, chunk: 64 };
        let (y, saved) = q.ela_saving(&k, &v, &p)?;
        assert!(y.transpose(1usize, 2usize)?.layout().is_contiguous(), "y in [batch, t, heads, dv] order ({dtype:?})");
        let c = |x: &Tensor<Cuda>| x.contiguous().unwrap();
        let (qc, kc, vc, dyc) = (c(&q), c(&k), c(&v), c(&dy));
        let (yc, saved_c) = qc.ela_saving(&kc, &vc, &p)?;
        assert!(yc.layout().is_contiguous());
        assert_eq!(bits(&y), bits(&yc), "strided forward == contiguous forward ({dtype:?} d={d} causal {causal})");
        assert_eq!(bits(&q.ela(&k, &v, &p)?), bits(&yc), "the plain forward reads in place too");
        let g = Tensor::ela_backward_saved(&q, &k, &v, &y, &dy, &p, saved.as_ref())?;
        let gc = Tensor::ela_backward_saved(&qc, &kc, &vc, &yc, &dyc, &p, saved_c.as_ref())?;
        let r = Tensor::ela_backward(&q, &k, &v, &y, &dy, &p)?;
        let rc = Tensor::ela_backward(&qc, &kc, &vc, &yc, &dyc, &p)?;
        for (name, a, b) in [("dq", &g.0, &gc.0), ("dk", &g.1, &gc.1), ("dv", &g.2, &gc.2)] {
            assert_eq!(bits(a), bits(b), "{name}, saved forward ({dtype:?} d={d} causal {causal})");
        }
        // The heads of one fused product get their gradients in one buffer laid out like it.
        assert!(g.0.layout() == q.layout() && g.1.layout() == k.layout() && g.2.layout() == v.layout());
        assert!(g.0.same_storage(&g.1) && g.0.same_storage(&g.2));
        for (name, a, b) in [("dq", &r.0, &rc.0), ("dk", &r.1, &rc.1), ("dv", &r.2, &rc.2)] {
            assert_eq!(bits(a), bits(b), "{name}, recomputed forward ({dtype:?} d={d} causal {causal})");
        }
        let f64_of = |x: &Tensor<Cuda>| x.to_device(&Cpu).unwrap().to_dtype(DType::F64).unwrap();
        let want =
            Ela::builtin(kernel).with_causal(causal).run(Form::Quadratic, &f64_of(&q), &f64_of(&k), &f64_of(&v))?;
        let e = rel_err(&bits(&y), &want.to_vec_f64()?);
        assert!(e <= bound(dtype), "{kernel} {dtype:?} d={d} causal {causal}: y {e:e} vs f64");
    }
    // Through the autograd, as the attention layer runs it: the fused product's gradient is the
    // one buffer the ELA backward wrote (its concatenation of the three heads is a view).
    for dtype in [DType::BF16, DType::F32] {
        let (b, t, h, d) = (2, 130, 2, 64);
        let x = Pair::randn(&[b, t, 3, h, d], dtype, 11, dev).gpu;
        let r = Pair::randn(&[b, h, t, d], dtype, 12, dev).gpu;
        let grad_of = |qkv: &Var<Cuda>| -> Result<Tensor<Cuda>> {
            let head = |j: usize| qkv.narrow(2usize, j, 1)?.squeeze(2usize)?.transpose(1usize, 2usize);
            let y = head(0)?.ela(&head(1)?, &head(2)?, &ElaParams::causal(EXP))?;
            let g = y.mul(&Var::constant(r.clone()))?.sum_all()?.backward()?;
            Ok(g.get(qkv).expect("qkv gradient").clone())
        };
        let fused = Var::param(x.clone());
        let gf = grad_of(&fused)?;
        // The same heads, each copied out of the product first (the contiguous path).
        let split = Var::param(x.clone());
        let copies = |qkv: &Var<Cuda>| -> Result<Tensor<Cuda>> {
            let head = |j: usize| qkv.narrow(2usize, j, 1)?.squeeze(2usize)?.transpose(1usize, 2usize)?.contiguous();
            let y = head(0)?.ela(&head(1)?, &head(2)?, &ElaParams::causal(EXP))?;
            let g = y.mul(&Var::constant(r.clone()))?.sum_all()?.backward()?;
            Ok(g.get(qkv).expect("qkv gradient").clone())
        };
        let gs = copies(&split)?;
        assert_eq!(bits(&gf), bits(&gs), "{dtype:?}: the fused product's gradient");
        assert!(gf.layout().is_contiguous());
    }
    // Rows one element off a 16-byte boundary: copied, then the same call.
    let x = Pair::randn(&[2, 3, 100, 65], DType::BF16, 7, dev).gpu;
    let q = x.narrow(3, 1, 64)?;
    let p = ElaParams::causal(EXP);
    assert_eq!(bits(&q.ela(&q, &q, &p)?), bits(&q.contiguous()?.ela(&q.contiguous()?, &q.contiguous()?, &p)?));
    Ok(())
}

#[test]
fn scans_split_into_runs_agree_with_one_walk() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    // Few sequences (2) over many chunks: the default splits each walk into runs joined after
    // (`ela_scan_join`); forced counts cover two runs, an uneven split (the last run shorter), one
    // chunk per run (1000: the two-level scan, per-chunk states folded by `ela_scan_fold`), and
    // 32-row chunks (f32 128-wide, 256-wide heads).
    let cases = [
        (DType::F32, 64, 64, 1000),
        (DType::BF16, 64, 64, 1000),
        (DType::F16, 64, 64, 700),
        (DType::BF16, 128, 128, 700),
        (DType::F32, 128, 128, 500),
        (DType::BF16, 64, 128, 600),
        (DType::BF16, 256, 256, 300),
    ];
    for (ci, &(dtype, d, dv, t)) in cases.iter().enumerate() {
        split_scan_case(&dev, EXP, dtype, d, dv, t, 900 + ci as u64)?;
    }
    // elu+1 on the same kernels (log-features): the joins carry its units like Hadamard Exp's.
    ela_cuda::with_elu_tiles(true, || -> Result<()> {
        split_scan_case(&dev, ELU, DType::BF16, 64, 64, 1000, 990)?;
        split_scan_case(&dev, ELU, DType::F32, 128, 128, 500, 991)
    })?;
    Ok(())
}

/// One case of [`scans_split_into_runs_agree_with_one_walk`].
fn split_scan_case(
    dev: &Cuda,
    kernel: ElaKernel,
    dtype: DType,
    d: usize,
    dv: usize,
    t: usize,
    seed: u64,
) -> Result<()> {
    let p = ElaParams { kernel, causal: true, chunk: 64 };
    let (q, k, v, dy) = qkv([1, 2, t, d], dv, dtype, seed, dev);
    let run = |runs: usize| -> Result<[Vec<f64>; 4]> {
        ela_cuda::with_scan_runs(runs, || {
            poison(dev, 2 * t * dv.max(d), dtype, 4);
            let (y, saved) = q.gpu.ela_saving(&k.gpu, &v.gpu, &p)?;
            let g = Tensor::ela_backward_saved(&q.gpu, &k.gpu, &v.gpu, &y, &dy.gpu, &p, saved.as_ref())?;
            Ok([y.to_vec_f64()?, g.0.to_vec_f64()?, g.1.to_vec_f64()?, g.2.to_vec_f64()?])
        })
    };
    let one = run(1)?;
    let up = |x: &Pair| x.cpu.to_dtype(DType::F64).unwrap();
    let y64 = Ela::builtin(kernel).run(Form::Quadratic, &up(&q), &up(&k), &up(&v))?.to_vec_f64()?;
    // Same math, sums in another order: f32 to its rounding; 16-bit outputs to a few of their
    // roundings (a state entry's f32 sum may round to the neighbouring bf16 value).
    let same = if dtype == DType::F32 { 2e-6 } else { 4e-3 };
    for runs in [0, 2, 3, 1000] {
        let split = run(runs)?;
        let errs: Vec<f64> = split.iter().zip(&one).map(|(a, b)| rel_err(a, b)).collect();
        let e64 = rel_err(&split[0], &y64);
        println!(
            "{kernel} {dtype:?} d={d} dv={dv} T={t} runs={runs}: y, dq, dk, dv vs one walk {}; y vs f64 {e64:.2e}",
            show_list(&errs)
        );
        assert!(e64 <= bound(dtype), "{kernel} {dtype:?} d={d} T={t} runs={runs}: y {e64:e} vs f64");
        for (name, e) in ["y", "dq", "dk", "dv"].iter().zip(&errs) {
            assert!(
                e.is_finite() && *e <= same,
                "{name} {kernel} {dtype:?} d={d} dv={dv} T={t} runs={runs}: {e:e} vs one walk"
            );
        }
    }
    Ok(())
}

/// elu+1 on the Hadamard-Exp kernels (log-features, `ChunkMap::EluPlusOne`;
/// `with_elu_tiles(true)` whatever the default): the tile path takes it (it reads rows where they
/// lie, which only that path does; `with_elu_tiles(false)` sends it to the feature-map path), and
/// forward and gradients agree with f64 and the CPU to the bounds of Hadamard Exp's, at every
/// compiled head size, causal and not, with a ragged last chunk.
#[test]
fn elu_plus_one_on_the_tiles_matches_f64_and_the_cpu() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    ela_cuda::with_elu_tiles(true, || elu_tile_cases(&dev))
}

/// The body of [`elu_plus_one_on_the_tiles_matches_f64_and_the_cpu`].
fn elu_tile_cases(dev: &Cuda) -> Result<()> {
    use ela_core::Backend;
    let variants = [
        (DType::F32, 64, 64),
        (DType::BF16, 64, 64),
        (DType::F32, 128, 128),
        (DType::BF16, 128, 128),
        (DType::BF16, 64, 128),
        (DType::F32, 128, 64),
        (DType::BF16, 256, 256),
    ];
    for (vi, &(dtype, d, dv)) in variants.iter().enumerate() {
        let dims = ela_core::ela::ElaDims { batch: 2, heads: 2, t: 150, d, dv };
        let p = ElaParams::causal(ELU);
        assert!(dev.ela_rows_supported(dtype, &dims, &p), "elu+1 {dtype:?} {d}x{dv} takes the tiles");
        let on_la = ela_cuda::with_elu_tiles(false, || dev.ela_rows_supported(dtype, &dims, &p));
        assert!(!on_la, "with_elu_tiles(false): the feature-map path");
        // (qkv: q around 0.5 and k around -0.5 with unit spread: both branches of elu+1.)
        check_shape(dev, ELU, dtype, d, dv, 500 + vi as u64)?;
    }
    Ok(())
}

/// elu+1 on the tiles with inputs of magnitude 80 (features up to 81 and down to e^-80), and with
/// features so far apart that every fast term underflows: q = (N(0, 1).., -200..), k = (-200..,
/// N(0, 1)..) make every a_ij about e^-200, so every row takes the exact path, forward and
/// backward, where the feature derivatives (exp(min(x, 0))) meet the exact path's weights.
#[test]
fn elu_plus_one_on_the_tiles_magnitude_80_and_the_exact_path() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    ela_cuda::with_elu_tiles(true, || elu_tile_extremes(&dev))
}

/// The body of [`elu_plus_one_on_the_tiles_magnitude_80_and_the_exact_path`].
fn elu_tile_extremes(dev: &Cuda) -> Result<()> {
    let (t, d, dv) = (160, 64, 64);
    for dtype in [DType::F32, DType::BF16] {
        let u = |seed| Pair::uniform(&[1, 2, t, d], -80.0, 80.0, dtype, seed, dev);
        let (q, k) = (u(11), u(12));
        let (v, dy) = (Pair::randn(&[1, 2, t, dv], dtype, 13, dev), Pair::randn(&[1, 2, t, dv], dtype, 14, dev));
        let errs = run_kernel_case(dev, ELU, &q, &k, &v, &dy, true)?;
        println!("elu+1 magnitude 80 {dtype:?}: {}", show(&errs));
        let tol = if dtype == DType::F32 { 1e-4 } else { 3e-2 };
        assert!(errs.iter().all(|e| e.0 <= tol), "elu+1 magnitude 80 {dtype:?}: {errs:?} > {tol:e}");
    }
    let (q, k) = crossed_qk(dev, t, d, 0.0, -200.0, 19);
    let (v, dy) = (Pair::randn(&[1, 2, t, dv], DType::F32, 15, dev), Pair::randn(&[1, 2, t, dv], DType::F32, 16, dev));
    let errs = run_kernel_case(dev, ELU, &q, &k, &v, &dy, true)?;
    println!("elu+1 exact path f32: {}", show(&errs));
    assert!(errs[0].0 <= 1e-4 && errs[1..].iter().all(|e| e.0 <= 1e-3), "elu+1 exact path {errs:?}");
    Ok(())
}

/// Identity on the Hadamard-Exp kernels without exps or units (`ChunkMap::Identity`;
/// `with_identity_tiles(true)` whatever the default): f32 inputs take them, bf16 inputs only with
/// the signed kernels' bf16-operand opt-in; forward and gradients agree with f64 and the CPU to
/// Hadamard Exp's bounds, or at worst twice the feature-map path's own error
/// (`with_identity_tiles(false)`, the path they replace: Identity's gradients are worse
/// conditioned than Hadamard Exp's), at every compiled head size, causal and not, with a ragged
/// last chunk. q and k are drawn from [-0.3, 1) (signed features; the denominators stay away from
/// 0, where Identity's outputs have no accuracy to check).
#[test]
fn identity_on_the_tiles_matches_f64_the_cpu_and_the_feature_map_path() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    ela_cuda::with_identity_tiles(true, || identity_tile_cases(&dev))
}

/// The tiles' errors `[y, dq, dk, dv]` (against f64, against the CPU) within Hadamard Exp's
/// bounds, or twice the feature-map path's own error against f64 (`la`) where that is larger.
fn assert_tiles_within(tag: &str, dtype: DType, errs: [(f64, f64); 4], la: [(f64, f64); 4]) {
    println!("{tag}: [y, dq, dk, dv] (vs f64, vs cpu) tiles {}, feature-map path {}", show(&errs), show(&la));
    for ((name, (e64, ecpu)), (la64, _)) in ["y", "dq", "dk", "dv"].iter().zip(errs).zip(la) {
        let tol = if *name == "y" || dtype != DType::F32 { bound(dtype) } else { 5e-5 };
        let tol = tol.max(2.0 * la64);
        assert!(e64 <= tol, "{name} {tag}: {e64:e} vs f64 > {tol:e}");
        assert!(ecpu <= 2.0 * tol, "{name} {tag}: {ecpu:e} vs the CPU");
    }
}

/// Input dtype, `d`, `dv` of every Identity module the tiles compile: f32 (f32 operands) at 64 and
/// 128, bf16 (bf16 operands, the signed kernels' opt-in) at 64, 128 and 256.
const TILE_VARIANTS: [(DType, usize, usize); 7] = [
    (DType::F32, 64, 64),
    (DType::F32, 128, 128),
    (DType::F32, 64, 128),
    (DType::F32, 128, 64),
    (DType::BF16, 64, 64),
    (DType::BF16, 128, 128),
    (DType::BF16, 256, 256),
];

/// The body of [`identity_on_the_tiles_matches_f64_the_cpu_and_the_feature_map_path`].
fn identity_tile_cases(dev: &Cuda) -> Result<()> {
    use ela_core::Backend;
    const ID: ElaKernel = ElaKernel::Identity;
    for (vi, &(dtype, d, dv)) in TILE_VARIANTS.iter().enumerate() {
        let signed = dtype == DType::BF16;
        let dims = ela_core::ela::ElaDims { batch: 2, heads: 2, t: 150, d, dv };
        let p = ElaParams::causal(ID);
        let tiles = ela_cuda::with_signed_bf16(signed, || dev.ela_rows_supported(dtype, &dims, &p));
        assert!(tiles, "identity {dtype:?} {d}x{dv} takes the tiles");
        for (t, causal) in [(150, true), (150, false), (37, true)] {
            let seed = 700 + 10 * vi as u64 + t as u64;
            let u = |s: u64, w: usize, lo: f64| Pair::uniform(&[2, 2, t, w], lo, 1.0, dtype, seed + s, dev);
            let (q, k, v, dy) = (u(0, d, -0.3), u(1, d, -0.3), u(2, dv, -1.0), u(3, dv, -1.0));
            let case = || ela_cuda::with_signed_bf16(signed, || run_kernel_case(dev, ID, &q, &k, &v, &dy, causal));
            let errs = case()?;
            // (Non-causal calls off the tiles may take the parallel form, which saves no state:
            // run_kernel_case would refuse it, so the comparison is causal only.)
            let la = if causal { ela_cuda::with_identity_tiles(false, case)? } else { [(0.0, 0.0); 4] };
            assert_tiles_within(&format!("identity {dtype:?} d={d} dv={dv} T={t} causal={causal}"), dtype, errs, la);
        }
    }
    Ok(())
}

/// Sum-sq (and, in the two tests below, sub-sq and the blueprint) on the Identity tiles with rank-one extra terms
/// (`ops/ela/signed.rs`, `chunk_ext.cu`; `with_signed_tiles(true)` whatever the default): the
/// forward and the gradients agree with f64 and the CPU to the bounds of the Identity tiles' test,
/// or at worst twice the feature-map path's own error (`with_signed_tiles(false)`), at every
/// compiled head size, causal and not, with a ragged last chunk and a last segment of the extra
/// terms' sums that is short (T = 150 = 2 x 64 + 22). Inputs keep each kernel's denominators away
/// from cancellation, as the property tests do (docs/ela.md, "Signed kernels"): sum-sq `q, k` in
/// [0.5, 1.5), sub-sq `k` in [-1.5, -0.5), the blueprint `|q|, |k| < 0.9`. (Non-causal calls are
/// held to the feature-map path's error on the causal call of the same size.)
#[test]
fn signed_tiles_sum_sq_matches_f64_the_cpu_and_the_feature_map_path() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    ela_cuda::with_signed_tiles(true, || signed_tile_cases(&dev, 0))
}

/// Sub-sq: as [`signed_tiles_sum_sq_matches_f64_the_cpu_and_the_feature_map_path`].
#[test]
fn signed_tiles_sub_sq_matches_f64_the_cpu_and_the_feature_map_path() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    ela_cuda::with_signed_tiles(true, || signed_tile_cases(&dev, 1))
}

/// The blueprint: as [`signed_tiles_sum_sq_matches_f64_the_cpu_and_the_feature_map_path`].
#[test]
fn signed_tiles_blueprint_matches_f64_the_cpu_and_the_feature_map_path() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    ela_cuda::with_signed_tiles(true, || signed_tile_cases(&dev, 2))
}

/// The body of the three tests above: kernel `ki` of sum-sq, sub-sq, the blueprint.
fn signed_tile_cases(dev: &Cuda, ki: usize) -> Result<()> {
    use ela_core::Backend;
    let kernel = [ElaKernel::SumSqEuclid, ElaKernel::SubSqEuclid, ElaKernel::Blueprint][ki];
    for (vi, &(dtype, d, dv)) in TILE_VARIANTS.iter().enumerate() {
        let signed = dtype == DType::BF16;
        let dims = ela_core::ela::ElaDims { batch: 2, heads: 2, t: 150, d, dv };
        let p = ElaParams::causal(kernel);
        // Not the strided-rows path (that is the tiles alone): what the tests below call.
        let rows = ela_cuda::with_signed_bf16(signed, || dev.ela_rows_supported(dtype, &dims, &p));
        assert!(!rows, "{kernel:?} takes the packed entry points only");
        // Per-element ranges: the blueprint's keep |x| < 0.9 at every head size.
        let b = 0.9 / (d as f64).sqrt();
        let (qr, kr) = match kernel {
            ElaKernel::SumSqEuclid => ((0.5, 1.5), (0.5, 1.5)),
            ElaKernel::SubSqEuclid => ((0.5, 1.5), (-1.5, -0.5)),
            _ => ((-b, b), (-b, b)),
        };
        let mut la_ref = [(0.0, 0.0); 4];
        for (t, causal) in [(150, true), (150, false), (37, true)] {
            let seed = 900 + 100 * ki as u64 + 10 * vi as u64 + t as u64;
            let u = |s: u64, w: usize, (lo, hi): (f64, f64)| Pair::uniform(&[2, 2, t, w], lo, hi, dtype, seed + s, dev);
            let (q, k, v, dy) = (u(0, d, qr), u(1, d, kr), u(2, dv, (-1.0, 1.0)), u(3, dv, (-1.0, 1.0)));
            let case = || ela_cuda::with_signed_bf16(signed, || run_kernel_case(dev, kernel, &q, &k, &v, &dy, causal));
            let errs = case()?;
            // Non-causal calls off the tiles may take the parallel form, which saves no state
            // (run_kernel_case would refuse it): they are held to the causal call's reference.
            let la = if causal { ela_cuda::with_signed_tiles(false, case)? } else { la_ref };
            la_ref = la;
            assert_tiles_within(&format!("{kernel:?} {dtype:?} d={d} dv={dv} T={t} causal={causal}"), dtype, errs, la);
        }
    }
    Ok(())
}
