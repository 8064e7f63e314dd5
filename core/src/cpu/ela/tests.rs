//! Unit checks of the CPU ELA kernels against a naive quadratic loop in f64 (the property tests
//! in `tests/tests/ela_*.rs` cover the public API far more widely).

use super::{backward, forward, step};
use crate::cpu::CpuStorage;
use crate::ela::{ElaDims, ElaKernel, ElaParams, ElaStateBufs};
use crate::rng::Rng;

fn kernel_value(kernel: ElaKernel, q: &[f64], k: &[f64]) -> f64 {
    let dot: f64 = q.iter().zip(k).map(|(a, b)| a * b).sum();
    let (nq, nk): (f64, f64) = (q.iter().map(|a| a * a).sum(), k.iter().map(|a| a * a).sum());
    match kernel {
        ElaKernel::HadamardExp => q.iter().zip(k).map(|(a, b)| (a + b).exp()).sum(),
        ElaKernel::SumSqEuclid => nq + 2.0 * dot + nk,
        ElaKernel::SubSqEuclid => nq - 2.0 * dot + nk,
        ElaKernel::Blueprint => (dot + 1.0) * (nq + 1.0) * (nk + 1.0),
        ElaKernel::Identity => dot,
        ElaKernel::EluPlusOne => {
            let f = |x: f64| if x > 0.0 { x + 1.0 } else { x.exp() };
            q.iter().zip(k).map(|(a, b)| f(*a) * f(*b)).sum()
        }
    }
}

/// Naive quadratic ELA of one flat [seq, t, d] problem.
fn naive(kernel: ElaKernel, causal: bool, q: &[f64], k: &[f64], v: &[f64], dims: &ElaDims) -> Vec<f64> {
    let (t, d, dv) = (dims.t, dims.d, dims.dv);
    let mut y = vec![0.0; dims.sequences() * t * dv];
    for s in 0..dims.sequences() {
        for i in 0..t {
            let (mut num, mut den) = (vec![0.0; dv], 0.0);
            for j in 0..if causal { i + 1 } else { t } {
                let a = kernel_value(kernel, &q[(s * t + i) * d..][..d], &k[(s * t + j) * d..][..d]);
                den += a;
                for e in 0..dv {
                    num[e] += a * v[(s * t + j) * dv + e];
                }
            }
            for e in 0..dv {
                y[(s * t + i) * dv + e] = num[e] / den;
            }
        }
    }
    y
}

fn data(n: usize, scale: f64, offset: f64, rng: &mut Rng) -> Vec<f64> {
    (0..n).map(|_| offset + scale * rng.normal()).collect()
}

fn f64s(s: &CpuStorage) -> Vec<f64> {
    match s {
        CpuStorage::F64(v) => v.clone(),
        _ => panic!("expected f64"),
    }
}

fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(1e-300f64, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs() / scale))
}

/// The kernels with a feature map of their own (Identity has none to test here).
const FUSED_SIGNED_AND_EXP: [ElaKernel; 5] = [
    ElaKernel::HadamardExp,
    ElaKernel::SumSqEuclid,
    ElaKernel::SubSqEuclid,
    ElaKernel::Blueprint,
    ElaKernel::EluPlusOne,
];

/// Input scale and offset per kernel: small for the blueprint (its kernel stays positive), around
/// 0 for elu+1 (both branches of its map), shifted for the squared-Euclidean kernels (bounded
/// cancellation).
fn scale_offset(kernel: ElaKernel) -> (f64, f64) {
    match kernel {
        ElaKernel::Blueprint => (0.3, 0.0),
        ElaKernel::EluPlusOne => (1.0, 0.0),
        _ => (1.0, 1.5),
    }
}

#[test]
fn chunked_forward_matches_naive_for_every_kernel() {
    let mut rng = Rng::new(1);
    for kernel in FUSED_SIGNED_AND_EXP {
        for causal in [true, false] {
            for (t, chunk) in [(1, 4), (7, 3), (10, 16), (33, 8)] {
                let dims = ElaDims { batch: 2, heads: 1, t, d: 3, dv: 2 };
                let n = dims.sequences() * t;
                let (qs, off) = scale_offset(kernel);
                let q = data(n * 3, qs, off, &mut rng);
                let k = data(n * 3, qs, if kernel == ElaKernel::SubSqEuclid { -off } else { off }, &mut rng);
                let v = data(n * 2, 1.0, 0.0, &mut rng);
                let p = ElaParams { kernel, causal, chunk };
                let (qs, ks, vs) = (CpuStorage::F64(q.clone()), CpuStorage::F64(k.clone()), CpuStorage::F64(v.clone()));
                let y = f64s(&forward(&qs, &ks, &vs, &dims, &p, None).unwrap());
                let want = naive(kernel, causal, &q, &k, &v, &dims);
                let err = max_rel(&y, &want);
                assert!(err < 1e-11, "{kernel} causal={causal} t={t} C={chunk}: rel err {err}");
            }
        }
    }
}

#[test]
fn backward_matches_finite_differences() {
    let mut rng = Rng::new(2);
    for kernel in FUSED_SIGNED_AND_EXP {
        for causal in [true, false] {
            let dims = ElaDims { batch: 1, heads: 2, t: 7, d: 2, dv: 3 };
            let n = dims.sequences() * dims.t;
            let (qs, off) = scale_offset(kernel);
            let q = data(n * 2, qs, off, &mut rng);
            let k = data(n * 2, qs, if kernel == ElaKernel::SubSqEuclid { -off } else { off }, &mut rng);
            let v = data(n * 3, 1.0, 0.0, &mut rng);
            let r = data(n * 3, 1.0, 0.0, &mut rng);
            let p = ElaParams { kernel, causal, chunk: 3 };
            let st = |x: &[f64]| CpuStorage::F64(x.to_vec());
            let loss = |q: &[f64], k: &[f64], v: &[f64]| -> f64 {
                let y = f64s(&forward(&st(q), &st(k), &st(v), &dims, &p, None).unwrap());
                y.iter().zip(&r).map(|(a, b)| a * b).sum()
            };
            let y = forward(&st(&q), &st(&k), &st(&v), &dims, &p, None).unwrap();
            let (dq, dk, dv) = backward(&st(&q), &st(&k), &st(&v), &y, &st(&r), &dims, &p).unwrap();
            let grads = [f64s(&dq), f64s(&dk), f64s(&dv)];
            let mut xs = [q, k, v];
            for (w, g) in grads.iter().enumerate() {
                for e in 0..xs[w].len() {
                    let h = 1e-6;
                    let x0 = xs[w][e];
                    xs[w][e] = x0 + h;
                    let lp = loss(&xs[0], &xs[1], &xs[2]);
                    xs[w][e] = x0 - h;
                    let lm = loss(&xs[0], &xs[1], &xs[2]);
                    xs[w][e] = x0;
                    let num = (lp - lm) / (2.0 * h);
                    assert!(
                        (num - g[e]).abs() < 1e-6 * (1.0 + num.abs()),
                        "{kernel} causal={causal} input {w} elem {e}: {} vs {num}",
                        g[e]
                    );
                }
            }
        }
    }
}

#[test]
fn steps_continue_a_prefill() {
    let mut rng = Rng::new(3);
    for kernel in [ElaKernel::HadamardExp, ElaKernel::SumSqEuclid] {
        let dims = ElaDims { batch: 1, heads: 2, t: 9, d: 3, dv: 2 };
        let n = dims.sequences() * dims.t;
        let q = data(n * 3, 1.0, 1.0, &mut rng);
        let k = data(n * 3, 1.0, 1.0, &mut rng);
        let v = data(n * 2, 1.0, 0.0, &mut rng);
        let want = naive(kernel, true, &q, &k, &v, &dims);
        let f = kernel.feature_size(3);
        let mut st = ElaStateBufs {
            s: CpuStorage::F64(vec![0.0; 2 * f * 2]),
            z: CpuStorage::F64(vec![0.0; 2 * f]),
            m: kernel.has_units().then(|| CpuStorage::F64(vec![f64::NEG_INFINITY; 2 * f])),
        };
        // Prefill 5 tokens per head (gather them), then step the rest.
        let pick = |x: &[f64], w: usize, r: std::ops::Range<usize>| -> Vec<f64> {
            (0..2).flat_map(|h| x[(h * 9 + r.start) * w..(h * 9 + r.end) * w].to_vec()).collect()
        };
        let pd = ElaDims { t: 5, ..dims };
        let p = ElaParams { kernel, causal: true, chunk: 2 };
        let y = f64s(
            &forward(
                &CpuStorage::F64(pick(&q, 3, 0..5)),
                &CpuStorage::F64(pick(&k, 3, 0..5)),
                &CpuStorage::F64(pick(&v, 2, 0..5)),
                &pd,
                &p,
                Some(&mut st),
            )
            .unwrap(),
        );
        assert!(max_rel(&y, &pick(&want, 2, 0..5)) < 1e-12);
        for t in 5..9 {
            let yt = f64s(
                &step(
                    &CpuStorage::F64(pick(&q, 3, t..t + 1)),
                    &CpuStorage::F64(pick(&k, 3, t..t + 1)),
                    &CpuStorage::F64(pick(&v, 2, t..t + 1)),
                    &dims,
                    kernel,
                    &mut st,
                )
                .unwrap(),
            );
            assert!(max_rel(&yt, &pick(&want, 2, t..t + 1)) < 1e-12, "{kernel} t={t}");
        }
    }
}

/// Inputs where the fast path's shared log-scale is ~800 above every row's true largest term, so
/// every row goes through the exact path (`slow.rs`); the naive loop has no such problem here
/// because each exp(q_c + k_c) is near 1.
#[test]
fn exact_rows_after_underflow() {
    let mut rng = Rng::new(4);
    let dims = ElaDims { batch: 1, heads: 1, t: 6, d: 2, dv: 2 };
    let mut q = vec![0.0; 12];
    let mut k = vec![0.0; 12];
    for i in 0..6 {
        q[2 * i] = 400.0 + 0.5 * rng.normal();
        q[2 * i + 1] = -400.0 + 0.5 * rng.normal();
        k[2 * i] = -400.0 + 0.5 * rng.normal();
        k[2 * i + 1] = 400.0 + 0.5 * rng.normal();
    }
    let v = data(12, 1.0, 0.0, &mut rng);
    let r = data(12, 1.0, 0.0, &mut rng);
    let p = ElaParams { kernel: ElaKernel::HadamardExp, causal: true, chunk: 4 };
    let st = |x: &[f64]| CpuStorage::F64(x.to_vec());
    let y = forward(&st(&q), &st(&k), &st(&v), &dims, &p, None).unwrap();
    let want = naive(ElaKernel::HadamardExp, true, &q, &k, &v, &dims);
    assert!(max_rel(&f64s(&y), &want) < 1e-12, "{:?} vs {want:?}", f64s(&y));
    let (dq, dk, dv) = backward(&st(&q), &st(&k), &st(&v), &y, &st(&r), &dims, &p).unwrap();
    let loss = |q: &[f64], k: &[f64], v: &[f64]| -> f64 {
        let y = f64s(&forward(&st(q), &st(k), &st(v), &dims, &p, None).unwrap());
        y.iter().zip(&r).map(|(a, b)| a * b).sum()
    };
    let mut xs = [q, k, v];
    for (w, g) in [f64s(&dq), f64s(&dk), f64s(&dv)].iter().enumerate() {
        for e in 0..12 {
            let x0 = xs[w][e];
            xs[w][e] = x0 + 1e-5;
            let lp = loss(&xs[0], &xs[1], &xs[2]);
            xs[w][e] = x0 - 1e-5;
            let lm = loss(&xs[0], &xs[1], &xs[2]);
            xs[w][e] = x0;
            let num = (lp - lm) / 2e-5;
            assert!((num - g[e]).abs() < 1e-6 * (1.0 + num.abs()), "input {w} elem {e}: {} vs {num}", g[e]);
        }
    }
}
