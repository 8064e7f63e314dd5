//! ELA backward: the gradients of the fused chunked node (one autograd node, hand-derived reverse
//! chunk scan) equal the gradients of the quadratic reference through the tape, and central
//! finite differences, for every kernel, causal and not.
//!
//! Every test runs on every backend (`NAME::cpu`, `NAME::cuda`): the fused node (forward,
//! backward, and for the finite differences every perturbed forward) runs on the device, the
//! quadratic reference's tape in f64 on the CPU, from the same rounded inputs. The random shapes
//! take CUDA's per-token scan kernels; [`chunked_fast_path_gradients`] reaches its chunked
//! tensor-core backward.

mod ela_common;

use ela_autograd::{gradcheck, GradcheckOptions, Var};
use ela_common::{f64t, inputs, max_abs, rel_floor, up, KERNELS};
use ela_core::{Backend, Cpu, DType, ElaKernel, Rng, Tensor};
use ela_nn::ela::{Ela, Form, Grads};
use ela_tests::device::proptest_cases;
use ela_tests::device::Context;
use ela_tests::{device_proptest, device_tests};
use proptest::prelude::*;

/// The gradients of `sum(y * dy)` by `form`, or a test failure naming the call.
fn grads<B: Backend>(
    ela: &Ela<B>,
    form: Form,
    q: &Tensor<B>,
    k: &Tensor<B>,
    v: &Tensor<B>,
    dy: &Tensor<B>,
) -> Result<Grads<B>, TestCaseError> {
    let what = format!("ela backward {} {ela:?} {:?} q/k {:?} v {:?}", form.name(), q.dtype(), q.dims(), v.dims());
    Ok(ela.run_with_grads(form, q, k, v, dy).ctx(&what)?.grads)
}

/// A standard normal upstream gradient, drawn in f64 on the CPU and rounded to `dtype`.
fn upstream(b: usize, h: usize, t: usize, dv: usize, seed: u64, dtype: DType) -> Tensor<Cpu> {
    Tensor::randn(0.0, 1.0, [b, h, t, dv], DType::F64, &mut Rng::new(seed ^ 0x5eed), &Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// `(name, relative error)` of the device gradients `got` against the reference `want`, each
/// normalised by `max(max|want|, max|dy| max|v|)` (see `rel_floor`).
fn grad_errors<B: Backend>(got: &Grads<B>, want: &Grads<Cpu>, floor: f64) -> [(&'static str, f64); 3] {
    [
        ("dq", rel_floor(&got.dq, &want.dq, floor)),
        ("dk", rel_floor(&got.dk, &want.dk, floor)),
        ("dv", rel_floor(&got.dv, &want.dv, floor)),
    ]
}

device_proptest! {
    #![proptest_config(ProptestConfig::with_cases(proptest_cases(32)))]

    /// Fused backward == tape backward of the quadratic reference, f64, to 1e-9 (normwise).
    fn fused_backward_matches_the_tape<B: Backend>(
        dev: &B,
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
        let cpu = Ela::<Cpu>::builtin(kernel).with_causal(causal).with_chunk(chunk);
        let tape = grads(&cpu, Form::Quadratic, &q, &k, &v, &dy)?;
        let ela = Ela::<B>::builtin(kernel).with_causal(causal).with_chunk(chunk);
        let fused = grads(&ela, Form::Chunked, &up(dev, &q), &up(dev, &k), &up(dev, &v), &up(dev, &dy))?;
        let floor = max_abs(&dy) * max_abs(&v);
        for (name, e) in grad_errors(&fused, &tape, floor) {
            let case = format!("{kernel} causal={causal} F64 b={b} h={h} t={t} d={d} dv={dv} C={chunk}");
            prop_assert!(e <= 1e-9, "{name}: {e:e} ({case})");
        }
    }

    /// The fused node's gradients against central finite differences (f64, small shapes).
    fn fused_backward_matches_finite_differences<B: Backend>(
        dev: &B,
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
        let ela = Ela::<B>::builtin(kernel).with_causal(causal).with_chunk(chunk);
        let f = |x: &[Var<B>]| ela.chunked(&x[0], &x[1], &x[2]);
        let opts = GradcheckOptions { eps: 1e-6, rtol: 1e-6, atol: 1e-8, seed };
        let what = format!("gradcheck of ela chunked {kernel} causal={causal} F64 h={h} t={t} d={d} dv={dv} C={chunk}");
        let report = gradcheck(f, &[up(dev, &q), up(dev, &k), up(dev, &v)], opts).ctx(&what)?;
        prop_assert!(report.passed, "{what}: {report}");
    }

    /// f32 gradients of the fused node stay close to the f64 tape gradients.
    fn f32_backward_is_close_to_f64<B: Backend>(
        dev: &B,
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
        let cpu = Ela::<Cpu>::builtin(kernel).with_causal(causal).with_chunk(chunk);
        let tape = grads(&cpu, Form::Quadratic, &f64t(&q), &f64t(&k), &f64t(&v), &f64t(&dy))?;
        let ela = Ela::<B>::builtin(kernel).with_causal(causal).with_chunk(chunk);
        let fused = grads(&ela, Form::Chunked, &up(dev, &q), &up(dev, &k), &up(dev, &v), &up(dev, &dy))?;
        for (name, g) in [("dq", &fused.dq), ("dk", &fused.dk), ("dv", &fused.dv)] {
            prop_assert_eq!(g.dtype(), DType::F32, "{}", name);
        }
        let floor = max_abs(&dy) * max_abs(&v);
        for (name, e) in grad_errors(&fused, &tape, floor) {
            prop_assert!(e <= 1e-4, "{name}: {e:e} ({kernel} causal={causal} F32 t={t} d={d} dv={dv} C={chunk})");
        }
    }
}

device_tests!(one_node_and_selective_gradients, chunked_fast_path_gradients);

/// Only the inputs that require a gradient get one, and the node is a single `ela_chunked`.
fn one_node_and_selective_gradients<B: Backend>(dev: &B) {
    let (q, k, v) = inputs(ElaKernel::HadamardExp, 1, 1, 10, 4, 3, 1.0, 1, DType::F64);
    let (qv, kv, vv) = (Var::param(up(dev, &q)), Var::constant(up(dev, &k)), Var::param(up(dev, &v)));
    let y = Ela::<B>::builtin(ElaKernel::HadamardExp).with_chunk(4).chunked(&qv, &kv, &vv).unwrap();
    assert_eq!(y.op_name(), "ela_chunked");
    let g = y.sum_all().unwrap().backward().unwrap();
    assert!(g.get(&qv).is_some() && g.get(&vv).is_some());
    assert!(g.get(&kv).is_none());
}

/// Gradients through the autograd node at the shapes of CUDA's chunked tensor-core path
/// (Hadamard Exp, D = Dv in {64, 128}, T = 65 and 200: a partial last chunk), causal and not,
/// against the f64 tape on the same rounded inputs. f32 to 1e-4 as in
/// `f32_backward_is_close_to_f64`; bf16 to 2e-2: bf16 operands in the tile products and
/// bf16-rounded gradients (tests/tests/cuda_ops/ela_fast.rs bounds the same error by 1e-2 in
/// the L2 norm; this is the max norm, which one badly rounded large element can dominate).
fn chunked_fast_path_gradients<B: Backend>(dev: &B) {
    let mut failed = Vec::new();
    for d in [64usize, 128] {
        for t in [65usize, 200] {
            for (dtype, tol) in [(DType::F32, 1e-4), (DType::BF16, 2e-2)] {
                let seed = (d * 1000 + t) as u64;
                let (q, k, v) = inputs(ElaKernel::HadamardExp, 1, 2, t, d, d, 1.0, seed, dtype);
                let dy = upstream(1, 2, t, d, seed, dtype);
                let floor = max_abs(&dy) * max_abs(&v);
                for causal in [true, false] {
                    let cpu = Ela::<Cpu>::builtin(ElaKernel::HadamardExp).with_causal(causal);
                    let tape = grads(&cpu, Form::Quadratic, &f64t(&q), &f64t(&k), &f64t(&v), &f64t(&dy)).unwrap();
                    let ela = Ela::<B>::builtin(ElaKernel::HadamardExp).with_causal(causal);
                    let what =
                        format!("ela backward chunked hadamard-exp causal={causal} {dtype:?} q/k/v [1, 2, {t}, {d}]");
                    match grads(&ela, Form::Chunked, &up(dev, &q), &up(dev, &k), &up(dev, &v), &up(dev, &dy)) {
                        Err(e) => failed.push(format!("{what}: {e}")),
                        Ok(g) => {
                            for (name, e) in grad_errors(&g, &tape, floor) {
                                if e > tol {
                                    failed.push(format!("{what}: {name} {e:e} from the f64 tape (tolerance {tol:e})"));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(failed.is_empty(), "{} case(s) failed:\n{}", failed.len(), failed.join("\n"));
}
