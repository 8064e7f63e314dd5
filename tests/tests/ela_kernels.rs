//! ELA kernels: the checker confirms the built-ins decompose exactly and reports the blueprint
//! kernel's non-negativity violation (q.k < -1); a user-defined kernel runs through every form
//! (chunked via the Identity fused path and its own VJPs), its gradients pass central finite
//! differences on every backend, and the checker catches user kernels whose decomposition or VJP
//! is wrong.

mod ela_common;

use std::sync::Arc;

use ela_autograd::{gradcheck, GradcheckOptions, Var};
use ela_common::{max_abs, rel, rel_floor, up};
use ela_core::{Backend, Cpu, DType, ElaKernel, Result, Rng, Tensor};
use ela_nn::ela::{builtin, check_kernel, CheckOptions, Ela, Form, Kernel};
use ela_tests::device_tests;

/// `(q.k)^2 = (q (x) q) . (k (x) k)`: F = D^2, non-negative. The features are outer products;
/// `phi_ab = q_a q_b` gives `dq_a = sum_b (G_ab + G_ba) q_b`.
#[derive(Clone, Copy)]
struct SquaredDot {
    /// Deliberate bugs for the checker tests.
    bad_vjp: bool,
    bad_scale: f64,
    nan_vjp: bool,
    short_vjp: bool,
}

impl SquaredDot {
    fn outer<B: Backend>(x: &Tensor<B>, scale: f64) -> Result<Tensor<B>> {
        let d = *x.dims().last().unwrap();
        let mut shape = x.dims().to_vec();
        *shape.last_mut().unwrap() = d * d;
        x.unsqueeze(-1isize)?.mul(&x.unsqueeze(-2isize)?)?.mul_scalar(scale)?.reshape(shape)
    }
    fn vjp<B: Backend>(x: &Tensor<B>, g: &Tensor<B>, symmetric: bool) -> Result<Tensor<B>> {
        let d = *x.dims().last().unwrap();
        let mut shape = x.dims().to_vec();
        shape.push(d);
        let g = g.reshape(shape)?;
        let gs = if symmetric { g.add(&g.t()?)? } else { g };
        gs.matmul(&x.unsqueeze(-1isize)?)?.squeeze(-1isize)
    }
}

impl<B: Backend> Kernel<B> for SquaredDot {
    fn name(&self) -> String {
        "squared-dot".into()
    }
    fn feature_size(&self, d: usize) -> usize {
        d * d
    }
    fn phi(&self, q: &Tensor<B>) -> Result<Tensor<B>> {
        Self::outer(q, self.bad_scale)
    }
    fn psi(&self, k: &Tensor<B>) -> Result<Tensor<B>> {
        Self::outer(k, 1.0)
    }
    fn phi_vjp(&self, q: &Tensor<B>, d_phi: &Tensor<B>) -> Result<Tensor<B>> {
        Self::vjp(q, &d_phi.mul_scalar(self.bad_scale)?, true)
    }
    fn psi_vjp(&self, k: &Tensor<B>, d_psi: &Tensor<B>) -> Result<Tensor<B>> {
        let g = Self::vjp(k, d_psi, !self.bad_vjp)?;
        match (self.nan_vjp, self.short_vjp) {
            (true, _) => g.mul_scalar(f64::NAN),
            (_, true) => g.narrow(-1isize, 0, 1),
            _ => Ok(g),
        }
    }
    fn kernel_matrix(&self, q: &Var<B>, k: &Var<B>) -> Result<Var<B>> {
        q.matmul(&k.t()?)?.square()
    }
}

const GOOD: SquaredDot = SquaredDot { bad_vjp: false, bad_scale: 1.0, nan_vjp: false, short_vjp: false };

#[test]
fn builtin_kernels_decompose_exactly() {
    let opts = CheckOptions { dim: 6, samples: 24, ..CheckOptions::default() };
    for kernel in ElaKernel::ALL {
        let rep = check_kernel(builtin::<Cpu>(kernel).as_ref(), &Cpu, &opts).unwrap();
        assert!(rep.exact(1e-12, 1e-6), "{rep}");
        assert_eq!(rep.pairs, 3 * 24 * 24);
        let signed = matches!(
            kernel,
            ElaKernel::SumSqEuclid | ElaKernel::SubSqEuclid | ElaKernel::Blueprint | ElaKernel::Identity
        );
        assert_eq!(rep.signed_phi || rep.signed_psi, signed, "{rep}");
        match kernel {
            ElaKernel::HadamardExp | ElaKernel::SumSqEuclid | ElaKernel::SubSqEuclid | ElaKernel::EluPlusOne => {
                assert!(rep.non_negative(), "{rep}")
            }
            _ => assert!(!rep.non_negative(), "{rep}"),
        }
    }
}

/// The blueprint `(q.k + 1)(|q|^2 + 1)(|k|^2 + 1)` is negative exactly where `q.k < -1`.
#[test]
fn blueprint_violates_non_negativity_when_q_dot_k_below_minus_one() {
    let rep = check_kernel(builtin::<Cpu>(ElaKernel::Blueprint).as_ref(), &Cpu, &CheckOptions::default()).unwrap();
    assert!(rep.negative_pairs > 0);
    let worst = rep.worst_negative.clone().unwrap();
    assert!(worst.q_dot_k < -1.0 && worst.value < 0.0, "{worst:?}");
    assert!(rep.to_string().contains("NON-NEGATIVITY VIOLATED"), "{rep}");
    // Direct probe on both sides of q.k = -1.
    let kern = builtin::<Cpu>(ElaKernel::Blueprint);
    for (qk, negative) in [(-1.5, true), (-0.5, false)] {
        let q = Var::constant(Tensor::from_vec(vec![1.0f64, 0.0], [1, 2], &Cpu).unwrap());
        let k = Var::constant(Tensor::from_vec(vec![qk, 0.0f64], [1, 2], &Cpu).unwrap());
        let value = kern.kernel_matrix(&q, &k).unwrap().value().to_scalar().unwrap();
        assert_eq!(value < 0.0, negative, "q.k = {qk}: k = {value}");
    }
}

/// elu+1 (the earlier linear-attention baseline): exact decomposition, strictly positive features
/// on both branches of the map (inputs at scale 2 are half negative), VJPs equal to finite
/// differences, and the map itself against hand-computed values on both sides of 0.
#[test]
fn elu_plus_one_is_exact_positive_and_differentiable() {
    let opts = CheckOptions { dim: 5, samples: 32, scales: vec![0.5, 2.0, 6.0], ..CheckOptions::default() };
    let rep = check_kernel(builtin::<Cpu>(ElaKernel::EluPlusOne).as_ref(), &Cpu, &opts).unwrap();
    assert!(rep.exact(1e-12, 1e-6), "{rep}");
    assert!(rep.non_negative() && !rep.signed_phi && !rep.signed_psi && rep.min_value > 0.0, "{rep}");
    let kern = builtin::<Cpu>(ElaKernel::EluPlusOne);
    let x = Tensor::from_vec(vec![-2.0f64, 0.0, 0.5, 3.0], [1, 4], &Cpu).unwrap();
    let phi = kern.phi(&x).unwrap().to_vec_f64().unwrap();
    let want = [(-2.0f64).exp(), 1.0, 1.5, 4.0];
    assert_eq!(phi.len(), want.len());
    for (a, b) in phi.iter().zip(want) {
        assert!((a - b).abs() < 1e-15, "{phi:?} vs {want:?}");
    }
    // dx = g * exp(min(x, 0)): the slope is e^x left of 0 and 1 from 0 on.
    let g = Tensor::from_vec(vec![1.0f64, 2.0, 3.0, 4.0], [1, 4], &Cpu).unwrap();
    let dx = kern.phi_vjp(&x, &g).unwrap().to_vec_f64().unwrap();
    let want = [(-2.0f64).exp(), 2.0, 3.0, 4.0];
    assert_eq!(dx.len(), want.len());
    for (a, b) in dx.iter().zip(want) {
        assert!((a - b).abs() < 1e-15, "{dx:?} vs {want:?}");
    }
}

#[test]
fn checker_catches_wrong_user_kernels() {
    let opts = CheckOptions { dim: 3, samples: 16, ..CheckOptions::default() };
    let good = check_kernel::<Cpu>(&GOOD, &Cpu, &opts).unwrap();
    assert!(good.exact(1e-12, 1e-6) && good.non_negative(), "{good}");
    let bad_vjp = check_kernel::<Cpu>(&SquaredDot { bad_vjp: true, ..GOOD }, &Cpu, &opts).unwrap();
    assert!(good.max_decomposition_error < 1e-12 && bad_vjp.psi_vjp_error > 1e-2, "{bad_vjp}");
    assert!(!bad_vjp.exact(1e-12, 1e-6));
    let bad_features = check_kernel::<Cpu>(&SquaredDot { bad_scale: 1.01, ..GOOD }, &Cpu, &opts).unwrap();
    assert!(bad_features.max_decomposition_error > 1e-3, "{bad_features}");
    // A VJP that returns NaN is the worst error, not a pass.
    let nan_vjp = check_kernel::<Cpu>(&SquaredDot { nan_vjp: true, ..GOOD }, &Cpu, &opts).unwrap();
    assert!(nan_vjp.psi_vjp_error == f64::INFINITY && !nan_vjp.exact(1e-12, 1e-6), "{nan_vjp}");
    // A VJP of the wrong shape is reported, not indexed past.
    let e = check_kernel::<Cpu>(&SquaredDot { short_vjp: true, ..GOOD }, &Cpu, &opts).unwrap_err().to_string();
    assert!(e.contains("check_kernel") && e.contains("VJP"), "{e}");
}

fn user_inputs(b: usize, h: usize, t: usize, d: usize, dv: usize, seed: u64) -> [Tensor<Cpu>; 4] {
    let mut rng = Rng::new(seed);
    let mut x =
        |w: usize, lo: f64, hi: f64| Tensor::rand_uniform(lo, hi, [b, h, t, w], DType::F64, &mut rng, &Cpu).unwrap();
    // Positive q and k keep every q.k (so the denominator) away from 0.
    [x(d, 0.2, 1.0), x(d, 0.2, 1.0), x(dv, -1.0, 1.0), x(dv, -1.0, 1.0)]
}

/// A user kernel runs through every form: chunked (Identity fused path + the kernel's VJPs, still
/// one autograd node), recurrent, prefill + steps; all agree with the quadratic reference.
#[test]
fn user_kernel_runs_through_every_form() {
    for causal in [true, false] {
        for (t, d, chunk) in [(1, 1, 4), (45, 3, 8), (130, 4, 64)] {
            let [q, k, v, dy] = user_inputs(2, 2, t, d, 3, t as u64);
            let ela = Ela::<Cpu>::new(Arc::new(GOOD)).with_causal(causal).with_chunk(chunk);
            let reference = ela.run_with_grads(Form::Quadratic, &q, &k, &v, &dy).unwrap();
            let fast = ela.run_with_grads(Form::Chunked, &q, &k, &v, &dy).unwrap();
            assert!(rel(&fast.y, &reference.y) <= 1e-10, "t={t} causal={causal}: {}", rel(&fast.y, &reference.y));
            let (g, r) = (fast.grads, reference.grads);
            let floor = max_abs(&dy) * max_abs(&v);
            for (a, b) in [(&g.dq, &r.dq), (&g.dk, &r.dk), (&g.dv, &r.dv)] {
                assert!(rel_floor(a, b, floor) <= 1e-9, "t={t} causal={causal}: {}", rel_floor(a, b, floor));
            }
            if causal {
                let rec = ela.run(Form::Recurrent, &q, &k, &v).unwrap();
                assert!(rel(&rec, &reference.y) <= 1e-10);
                let p = t / 2;
                let (_, mut st) = ela
                    .prefill(&q.narrow(2, 0, p).unwrap(), &k.narrow(2, 0, p).unwrap(), &v.narrow(2, 0, p).unwrap())
                    .unwrap();
                assert_eq!(st.bytes(), 2 * 2 * (d * d * 3 + d * d) * 8);
                for i in p..t {
                    let at = |x: &Tensor<Cpu>| x.narrow(2, i, 1).unwrap();
                    let yi = st.step(&at(&q), &at(&k), &at(&v)).unwrap();
                    assert!(rel(&yi, &at(&reference.y)) <= 1e-10);
                }
            }
            let node = ela.chunked(&Var::param(q.clone()), &Var::param(k.clone()), &Var::param(v.clone())).unwrap();
            assert_eq!(node.op_name(), "ela_chunked");
        }
    }
}

device_tests!(user_kernel_passes_finite_differences);

/// The user-kernel node (the Identity fused path on `phi(q)`, `psi(k)`, then the kernel's own
/// VJPs) against central finite differences in f64, causal and not, at chunk lengths that split
/// the sequence unevenly. On CUDA, `ela_backward` runs with the Identity kernel and F = D^2.
fn user_kernel_passes_finite_differences<B: Backend>(dev: &B) -> Result<()> {
    for causal in [true, false] {
        for (t, d, chunk, seed) in [(1, 1, 1, 1u64), (5, 2, 2, 2), (9, 3, 4, 3), (7, 3, 3, 4)] {
            let [q, k, v, _] = user_inputs(1, 2, t, d, 2, seed);
            let ela = Ela::<B>::new(Arc::new(GOOD)).with_causal(causal).with_chunk(chunk);
            let f = |x: &[Var<B>]| ela.chunked(&x[0], &x[1], &x[2]);
            let opts = GradcheckOptions { eps: 1e-6, rtol: 1e-6, atol: 1e-8, seed };
            let report = gradcheck(f, &[up(dev, &q), up(dev, &k), up(dev, &v)], opts)?;
            assert!(report.passed, "user kernel causal={causal} t={t} d={d} C={chunk}: {report}");
        }
    }
    Ok(())
}
