//! ELA numerics: Hadamard Exp never overflows in f32 (inputs of magnitude 80 match the f64
//! reference to 1e-4 and stay finite), rows whose shared log-scale underflows are recomputed
//! exactly, shifting all queries or all keys by a constant changes nothing (the shifts cancel),
//! f16/bf16 inputs run with f32 state, and inputs of any magnitude the dtype holds (up to 1e37
//! in f32, 1e300 in f64) give finite outputs and gradients equal to the dominant key's value.
//!
//! Every test runs on every backend (`NAME::cpu`, `NAME::cuda`): the forms under test run on the
//! device, the f64 quadratic reference (output and tape gradients) on the CPU, from the same
//! rounded inputs.

mod ela_common;

use ela_common::{f64t, finite, inputs, max_abs, rel, rel_floor, up};
use ela_core::{Backend, Cpu, DType, ElaKernel, Rng, Tensor};
use ela_nn::ela::{Ela, Form};
use ela_tests::device_tests;

fn uniform(shape: [usize; 4], lo: f64, hi: f64, seed: u64, dtype: DType) -> Tensor<Cpu> {
    Tensor::rand_uniform(lo, hi, shape, DType::F64, &mut Rng::new(seed), &Cpu).unwrap().to_dtype(dtype).unwrap()
}

/// Compare the f32 chunked (and recurrent) forms of Hadamard Exp ELA on `dev` with the f64
/// quadratic reference on the CPU; returns the forward error and the largest gradient error
/// (gradients normalised by `max|dy| max|v|`). `what` names the case in failure messages.
fn f32_vs_f64<B: Backend>(
    dev: &B,
    (causal, chunk): (bool, usize),
    q: &Tensor<Cpu>,
    k: &Tensor<Cpu>,
    v: &Tensor<Cpu>,
    what: &str,
) -> (f64, f64) {
    let what =
        format!("{what} hadamard-exp causal={causal} C={chunk} {:?} q/k {:?} v {:?}", q.dtype(), q.dims(), v.dims());
    let dy = uniform([q.dims()[0], q.dims()[1], q.dims()[2], v.dims()[3]], -1.0, 1.0, 77, DType::F32);
    let cpu = Ela::<Cpu>::builtin(ElaKernel::HadamardExp).with_causal(causal).with_chunk(chunk);
    let reference = cpu.run_with_grads(Form::Quadratic, &f64t(q), &f64t(k), &f64t(v), &f64t(&dy)).unwrap();
    assert!(finite(&reference.y), "{what}: the f64 reference itself must be finite here");
    let ela = Ela::<B>::builtin(ElaKernel::HadamardExp).with_causal(causal).with_chunk(chunk);
    let (qd, kd, vd) = (up(dev, q), up(dev, k), up(dev, v));
    let fast =
        ela.run_with_grads(Form::Chunked, &qd, &kd, &vd, &up(dev, &dy)).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(finite(&fast.y), "{what}: chunked output has non-finite values");
    let mut err = rel(&fast.y, &reference.y);
    if causal {
        let rec = ela.run(Form::Recurrent, &qd, &kd, &vd).unwrap_or_else(|e| panic!("{what}: recurrent: {e}"));
        assert!(finite(&rec), "{what}: recurrent output has non-finite values");
        err = err.max(rel(&rec, &reference.y));
    }
    let (g, r) = (fast.grads, reference.grads);
    let floor = max_abs(&dy) * max_abs(v);
    let mut gerr = 0f64;
    for (name, a, b) in [("dq", &g.dq, &r.dq), ("dk", &g.dk, &r.dk), ("dv", &g.dv, &r.dv)] {
        assert!(finite(a), "{what}: non-finite gradient {name}");
        gerr = gerr.max(rel_floor(a, b, floor));
    }
    (err, gerr)
}

device_tests!(
    magnitude_80_in_f32_matches_f64,
    crossed_maxima_take_the_exact_path,
    crossed_maxima_in_f64_take_the_exact_path,
    very_negative_inputs_are_shift_invariant,
    half_precision_inputs_use_f32_state,
    extreme_magnitudes_stay_finite_and_exact
);

/// Inputs uniform in [-80, 80]: exp(q + k) reaches e^160, far beyond f32 (max ~e^88.7).
fn magnitude_80_in_f32_matches_f64<B: Backend>(dev: &B) {
    for d in [1, 2, 8, 64] {
        for causal in [true, false] {
            for chunk in [16, 64] {
                let t = 200;
                let q = uniform([1, 2, t, d], -80.0, 80.0, d as u64, DType::F32);
                let k = uniform([1, 2, t, d], -80.0, 80.0, 100 + d as u64, DType::F32);
                let v = uniform([1, 2, t, 8], -1.0, 1.0, 200 + d as u64, DType::F32);
                let (e, g) = f32_vs_f64(dev, (causal, chunk), &q, &k, &v, "magnitude 80");
                assert!(e <= 1e-4, "d={d} causal={causal} C={chunk}: forward {e:e}");
                assert!(g <= 1e-3, "d={d} causal={causal} C={chunk}: gradients {g:e}");
            }
        }
    }
}

/// The worst case for shared shifts: each query's large coordinates meet each key's small ones,
/// so `max_d q + max_d k` exceeds every true log-term `q_d + k_d` by ~160 and the fast path's
/// terms underflow f32. Those rows take the exact path (`den < TINY`) and still match.
fn crossed_maxima_take_the_exact_path<B: Backend>(dev: &B) {
    let (t, d, dv) = (50, 2, 3);
    let mut rng = Rng::new(5);
    let (mut q, mut k) = (vec![0.0; t * d], vec![0.0; t * d]);
    for i in 0..t {
        q[i * d] = 80.0 + rng.normal();
        q[i * d + 1] = -80.0 + rng.normal();
        k[i * d] = -80.0 + rng.normal();
        k[i * d + 1] = 80.0 + rng.normal();
    }
    let to = |x: Vec<f64>, w: usize| Tensor::from_vec(x, [1, 1, t, w], &Cpu).unwrap().to_dtype(DType::F32).unwrap();
    let (q, k) = (to(q, d), to(k, d));
    let v = uniform([1, 1, t, dv], -1.0, 1.0, 3, DType::F32);
    for chunk in [1, 8, 64] {
        let (e, g) = f32_vs_f64(dev, (true, chunk), &q, &k, &v, "crossed maxima");
        assert!(e <= 1e-4 && g <= 1e-3, "C={chunk}: forward {e:e}, gradients {g:e}");
    }
}

/// The exact path in f64: inputs at +-400 put the shared log-scale 800 above every row's largest
/// term, so every fast-path term underflows even in f64 and every row is recomputed exactly
/// (`exact_rows.rs`). Outputs and gradients equal the quadratic reference (whose terms are each
/// near 1 here) and its tape.
fn crossed_maxima_in_f64_take_the_exact_path<B: Backend>(dev: &B) {
    let (t, d, dv) = (6, 2, 2);
    let mut rng = Rng::new(4);
    let (mut q, mut k) = (vec![0.0; t * d], vec![0.0; t * d]);
    for i in 0..t {
        q[i * d] = 400.0 + 0.5 * rng.normal();
        q[i * d + 1] = -400.0 + 0.5 * rng.normal();
        k[i * d] = -400.0 + 0.5 * rng.normal();
        k[i * d + 1] = 400.0 + 0.5 * rng.normal();
    }
    let to = |x: Vec<f64>, w: usize| Tensor::from_vec(x, [1, 1, t, w], &Cpu).unwrap();
    let (q, k) = (to(q, d), to(k, d));
    let (v, dy) = (uniform([1, 1, t, dv], -1.0, 1.0, 6, DType::F64), uniform([1, 1, t, dv], -1.0, 1.0, 7, DType::F64));
    let ela = Ela::builtin(ElaKernel::HadamardExp).with_chunk(4);
    let want = ela.run_with_grads(Form::Quadratic, &q, &k, &v, &dy).unwrap();
    let got = Ela::builtin(ElaKernel::HadamardExp)
        .with_chunk(4)
        .run_with_grads(Form::Chunked, &up(dev, &q), &up(dev, &k), &up(dev, &v), &up(dev, &dy))
        .unwrap();
    assert!(rel(&got.y, &want.y) <= 1e-12, "y: {:e}", rel(&got.y, &want.y));
    let (g, w) = (&got.grads, &want.grads);
    for (name, a, b) in [("dq", &g.dq, &w.dq), ("dk", &g.dk, &w.dk), ("dv", &g.dv, &w.dv)] {
        assert!(rel(a, b) <= 1e-9, "{name}: {:e}", rel(a, b));
    }
}

/// Adding a constant to every query, or to every key, leaves Hadamard Exp ELA unchanged (the
/// factor cancels in the ratio), including by -1000 where exp underflows in any dtype: outputs
/// and gradients stay finite and equal to the unshifted ones. In f32 the log-terms of inputs
/// near +-1000 carry an absolute rounding of ~1000 eps = 1.2e-4 (one ulp of the input), so
/// agreement there is to that level: backward stability, not a shift artefact.
fn very_negative_inputs_are_shift_invariant<B: Backend>(dev: &B) {
    for dtype in [DType::F64, DType::F32] {
        let tol = if dtype == DType::F64 { 1e-10 } else { 1000.0 * f32::EPSILON as f64 };
        for causal in [true, false] {
            let (q, k, v) = inputs(ElaKernel::HadamardExp, 1, 2, 90, 6, 4, 1.0, 21, dtype);
            let (q, k, v) = (up(dev, &q), up(dev, &k), up(dev, &v));
            let dy = up(dev, &uniform([1, 2, 90, 4], -1.0, 1.0, 8, dtype));
            let ela = Ela::<B>::builtin(ElaKernel::HadamardExp).with_causal(causal).with_chunk(32);
            for (sq, sk) in [(-1000.0, 0.0), (0.0, -1000.0), (-1000.0, -1000.0), (300.0, -700.0)] {
                let what = format!("hadamard-exp {dtype:?} causal={causal} q/k [1, 2, 90, 6] shift ({sq}, {sk})");
                let (q2, k2) = (q.add_scalar(sq).unwrap(), k.add_scalar(sk).unwrap());
                let out =
                    ela.run_with_grads(Form::Chunked, &q2, &k2, &v, &dy).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(finite(&out.y), "{what}: non-finite outputs");
                // f32 rounds q + shift: compare with the unshifted run on the rounded inputs.
                let (q3, k3) = (q2.add_scalar(-sq).unwrap(), k2.add_scalar(-sk).unwrap());
                let want =
                    ela.run_with_grads(Form::Chunked, &q3, &k3, &v, &dy).unwrap_or_else(|e| panic!("{what}: {e}"));
                let e = rel(&out.y, &want.y);
                assert!(e <= tol, "{what}: {e:e}");
                let (g, w) = (out.grads, want.grads);
                let floor = max_abs(&dy) * max_abs(&v);
                for (name, a, b) in [("dq", &g.dq, &w.dq), ("dk", &g.dk, &w.dk), ("dv", &g.dv, &w.dv)] {
                    let e = rel_floor(a, b, floor);
                    assert!(e <= 10.0 * tol, "{what}: gradient {name} {e:e}");
                }
                if causal {
                    let rec = ela.run(Form::Recurrent, &q2, &k2, &v).unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert!(rel(&rec, &want.y) <= tol, "{what}: recurrent");
                }
            }
        }
    }
}

/// f16 and bf16 inputs: computed in f32 with an f32 state, rounded once on output; within
/// 1e-2 of the f64 reference on the rounded inputs.
fn half_precision_inputs_use_f32_state<B: Backend>(dev: &B) {
    for dtype in [DType::F16, DType::BF16] {
        let (q, k, v) = inputs(ElaKernel::HadamardExp, 1, 2, 70, 8, 4, 1.0, 4, DType::F32);
        // Rounded on the CPU, so the reference sees exactly the device's inputs.
        let (qh, kh, vh) = (q.to_dtype(dtype).unwrap(), k.to_dtype(dtype).unwrap(), v.to_dtype(dtype).unwrap());
        let want = Ela::<Cpu>::builtin(ElaKernel::HadamardExp)
            .run(Form::Quadratic, &f64t(&qh), &f64t(&kh), &f64t(&vh))
            .unwrap();
        let (qh, kh, vh) = (up(dev, &qh), up(dev, &kh), up(dev, &vh));
        let ela = Ela::<B>::builtin(ElaKernel::HadamardExp).with_chunk(16);
        let what = format!("hadamard-exp chunked {dtype:?} q/k [1, 2, 70, 8] v [1, 2, 70, 4]");
        let y = ela.run(Form::Chunked, &qh, &kh, &vh).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(y.dtype(), dtype);
        assert!(rel(&y, &want) <= 1e-2, "{what}: {}", rel(&y, &want));
        let (_, st) = ela.prefill(&qh, &kh, &vh).unwrap_or_else(|e| panic!("{what}: prefill: {e}"));
        assert_eq!(st.inner().state_dtype(), DType::F32);
        let dy = y.ones_like().unwrap();
        let g =
            ela.run_with_grads(Form::Chunked, &qh, &kh, &vh, &dy).unwrap_or_else(|e| panic!("{what}: backward: {e}"));
        let g = g.grads;
        assert_eq!(g.dq.dtype(), dtype);
        assert!(finite(&g.dq) && finite(&g.dk) && finite(&g.dv), "{what}: non-finite gradients");
    }
}

/// Inputs of standard deviation up to 1e37 (f32) and 1e300 (f64), where even the f64 reference
/// overflows: every form (chunked causal and non-causal, recurrent) gives finite outputs and
/// gradients. At these magnitudes attention is a hard maximum: row `i`'s weights are dominated by
/// the key holding its largest log-term `max_{j, d} (q_id + k_jd)`, by a margin of ~1e8 or more
/// against every other key, so `y_i` equals that key's value to rounding (rows whose two best
/// keys are within 1e3 of each other in log-terms are not compared; most rows are).
/// Regression: the chunked causal form's exponent `(mq_i - u_i) + mk_j` can round above 0 by an
/// ulp of the inputs (> 88 above ~1e9 in f32): exp overflowed and rows were NaN (now clamped).
fn extreme_magnitudes_stay_finite_and_exact<B: Backend>(dev: &B) {
    let (t, d, dv) = (70, 8, 4);
    for (dtype, scales) in [(DType::F32, &[1e9, 1e20, 1e37][..]), (DType::F64, &[1e100, 1e300][..])] {
        for &scale in scales {
            let mk = |seed: u64, w: usize, sd: f64| {
                Tensor::randn(0.0, sd, [1, 2, t, w], DType::F64, &mut Rng::new(seed), &Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            };
            let (q, k, v, dy) = (mk(1, d, scale), mk(2, d, scale), mk(3, dv, 1.0), mk(4, dv, 1.0));
            let (qv, kv, vv) = (q.to_vec_f64().unwrap(), k.to_vec_f64().unwrap(), v.to_vec_f64().unwrap());
            let (qd, kd, vd, dyd) = (up(dev, &q), up(dev, &k), up(dev, &v), up(dev, &dy));
            for causal in [true, false] {
                let what = format!("hadamard-exp {dtype:?} scale {scale:e} causal={causal}");
                let ela = Ela::<B>::builtin(ElaKernel::HadamardExp).with_causal(causal).with_chunk(16);
                let out =
                    ela.run_with_grads(Form::Chunked, &qd, &kd, &vd, &dyd).unwrap_or_else(|e| panic!("{what}: {e}"));
                let g = out.grads;
                assert!(finite(&out.y), "{what}: non-finite outputs");
                assert!(finite(&g.dq) && finite(&g.dk) && finite(&g.dv), "{what}: non-finite gradients");
                // The hard-maximum reference, in f64 from the same rounded inputs.
                let y = out.y.to_vec_f64().unwrap();
                let mut compared = 0;
                for s in 0..2 {
                    for i in 0..t {
                        let row = |x: &[f64], r: usize, w: usize| x[(s * t + r) * w..][..w].to_vec();
                        let qi = row(&qv, i, d);
                        let best =
                            |j: usize| row(&kv, j, d).iter().zip(&qi).map(|(a, b)| a + b).fold(f64::MIN, f64::max);
                        let mut scores: Vec<(f64, usize)> =
                            (0..if causal { i + 1 } else { t }).map(|j| (best(j), j)).collect();
                        scores.sort_by(|a, b| b.0.total_cmp(&a.0));
                        if scores.len() > 1 && scores[0].0 - scores[1].0 < 1e3 {
                            continue;
                        }
                        compared += 1;
                        let (want, got) = (row(&vv, scores[0].1, dv), row(&y, i, dv));
                        for (a, b) in got.iter().zip(&want) {
                            assert!(
                                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                                "{what}: row {s}/{i}: {got:?} vs {want:?}"
                            );
                        }
                    }
                }
                assert!(compared >= t, "{what}: only {compared} rows had a clear maximum");
                if causal {
                    let rec = ela.run(Form::Recurrent, &qd, &kd, &vd).unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert!(finite(&rec), "{what}: recurrent non-finite");
                    assert!(rel(&rec, &out.y) <= 1e-5, "{what}: recurrent vs chunked {:e}", rel(&rec, &out.y));
                }
            }
        }
    }
}
