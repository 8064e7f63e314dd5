//! ELA backward: the gradients of the fused chunked node (one autograd node, hand-derived reverse
//! chunk scan) equal the gradients of the quadratic reference through the tape, and central
//! finite differences, for every kernel, causal and not.

mod ela_common;

use ela_autograd::{gradcheck, GradcheckOptions, Var};
use ela_common::{cases, f64t, inputs, max_abs, rel_floor, KERNELS};
use ela_core::{Cpu, DType, ElaKernel, Rng, Tensor};
use ela_nn::ela::{Ela, Form, Grads};
use proptest::prelude::*;

fn grads(
    ela: &Ela<Cpu>,
    form: Form,
    q: &Tensor<Cpu>,
    k: &Tensor<Cpu>,
    v: &Tensor<Cpu>,
    dy: &Tensor<Cpu>,
) -> Grads<Cpu> {
    ela.run(form, q, k, v, Some(dy)).unwrap().grads.unwrap()
}

fn upstream(b: usize, h: usize, t: usize, dv: usize, seed: u64, dtype: DType) -> Tensor<Cpu> {
    Tensor::randn(0.0, 1.0, [b, h, t, dv], DType::F64, &mut Rng::new(seed ^ 0x5eed), &Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(32)))]

    /// Fused backward == tape backward of the quadratic reference, f64, to 1e-9 (normwise).
    #[test]
    fn fused_backward_matches_the_tape(
        kernel in prop::sample::select(KERNELS.to_vec()),
        causal in any::<bool>(),
        (b, h) in (1usize..=2, 1usize..=2),
        t in prop_oneof![1usize..=6, 1usize..=150],
        d in prop_oneof![1usize..=3, 1usize..=32],
        dv in 1usize..=12,
        chunk in prop_oneof![1usize..=5, 6usize..=70],
        seed in any::<u64>(),
    ) {
        let (q, k, v) = inputs(kernel, b, h, t, d, dv, 1.0, seed, DType::F64);
        let dy = upstream(b, h, t, dv, seed, DType::F64);
        let ela = Ela::<Cpu>::builtin(kernel).with_causal(causal).with_chunk(chunk);
        let fused = grads(&ela, Form::Chunked, &q, &k, &v, &dy);
        let tape = grads(&ela, Form::Quadratic, &q, &k, &v, &dy);
        let floor = max_abs(&dy) * max_abs(&v);
        for (name, a, r) in [("dq", &fused.dq, &tape.dq), ("dk", &fused.dk, &tape.dk), ("dv", &fused.dv, &tape.dv)] {
            let e = rel_floor(a, r, floor);
            prop_assert!(e <= 1e-9, "{name}: {e:e} ({kernel} causal={causal} b={b} h={h} t={t} d={d} dv={dv} C={chunk})");
        }
    }

    /// The fused node's gradients against central finite differences (f64, small shapes).
    #[test]
    fn fused_backward_matches_finite_differences(
        kernel in prop::sample::select(KERNELS.to_vec()),
        causal in any::<bool>(),
        h in 1usize..=2,
        t in 1usize..=9,
        d in 1usize..=3,
        dv in 1usize..=3,
        chunk in 1usize..=4,
        seed in any::<u64>(),
    ) {
        let (q, k, v) = inputs(kernel, 1, h, t, d, dv, 1.0, seed, DType::F64);
        let ela = Ela::<Cpu>::builtin(kernel).with_causal(causal).with_chunk(chunk);
        let f = |x: &[Var<Cpu>]| ela.chunked(&x[0], &x[1], &x[2]);
        let opts = GradcheckOptions { eps: 1e-6, rtol: 1e-6, atol: 1e-8, seed };
        let report = gradcheck(f, &[q, k, v], opts).unwrap();
        prop_assert!(report.passed, "{report} ({kernel} causal={causal} t={t} d={d} dv={dv} C={chunk})");
    }

    /// f32 gradients of the fused node stay close to the f64 tape gradients.
    #[test]
    fn f32_backward_is_close_to_f64(
        kernel in prop::sample::select(KERNELS.to_vec()),
        causal in any::<bool>(),
        t in 1usize..=200,
        d in 1usize..=32,
        dv in 1usize..=16,
        chunk in prop_oneof![1usize..=8, Just(64)],
        seed in any::<u64>(),
    ) {
        let (q, k, v) = inputs(kernel, 1, 2, t, d, dv, 1.0, seed, DType::F32);
        let dy = upstream(1, 2, t, dv, seed, DType::F32);
        let ela = Ela::<Cpu>::builtin(kernel).with_causal(causal).with_chunk(chunk);
        let fused = grads(&ela, Form::Chunked, &q, &k, &v, &dy);
        let tape = grads(&ela, Form::Quadratic, &f64t(&q), &f64t(&k), &f64t(&v), &f64t(&dy));
        let floor = max_abs(&dy) * max_abs(&v);
        for (name, a, r) in [("dq", &fused.dq, &tape.dq), ("dk", &fused.dk, &tape.dk), ("dv", &fused.dv, &tape.dv)] {
            prop_assert_eq!(a.dtype(), DType::F32);
            let e = rel_floor(a, r, floor);
            prop_assert!(e <= 1e-4, "{name}: {e:e} ({kernel} causal={causal} t={t} d={d} dv={dv} C={chunk})");
        }
    }
}

/// Only the inputs that require a gradient get one, and the node is a single `ela_chunked`.
#[test]
fn one_node_and_selective_gradients() {
    let (q, k, v) = inputs(ElaKernel::HadamardExp, 1, 1, 10, 4, 3, 1.0, 1, DType::F64);
    let (qv, kv, vv) = (Var::param(q), Var::constant(k), Var::param(v));
    let y = Ela::<Cpu>::builtin(ElaKernel::HadamardExp).with_chunk(4).chunked(&qv, &kv, &vv).unwrap();
    assert_eq!(y.op_name(), "ela_chunked");
    let g = y.sum_all().unwrap().backward().unwrap();
    assert!(g.get(&qv).is_some() && g.get(&vv).is_some());
    assert!(g.get(&kv).is_none());
}
