//! ELA forward: the chunked and recurrent forms equal the quadratic reference for every kernel,
//! causal and not, on random shapes (T in 1..=300 including T < C and T not divisible by C,
//! D in 1..=64, Dv independent of D), in f64 to 1e-10 and in f32 to 1e-5 (normwise relative).
//! Plus the edge cases: empty and one-token sequences, D = 1, all-equal keys; and the shapes of
//! CUDA's tensor-core chunked path (Hadamard Exp, D = Dv in {64, 128}, f32 and bf16).
//!
//! Every test runs on every backend (`NAME::cpu`, `NAME::cuda`): the forms under test run on the
//! device, the f64 quadratic reference on the CPU (from the same rounded inputs). On CUDA the
//! random shapes take the per-token scan kernel (any kernel, dtype and head size); only
//! [`chunked_fast_path_shapes`] reaches the chunked tensor-core path.

mod ela_common;

use ela_common::{f64t, inputs, rel, up, KERNELS};
use ela_core::{Backend, Cpu, DType, ElaKernel, Tensor};
use ela_nn::ela::{Ela, Form};
use ela_tests::device::proptest_cases;
use ela_tests::device::Context;
use ela_tests::{device_proptest, device_tests};
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct Case {
    kernel: ElaKernel,
    causal: bool,
    b: usize,
    h: usize,
    t: usize,
    d: usize,
    dv: usize,
    chunk: usize,
    scale: f64,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::sample::select(KERNELS.to_vec()),
        any::<bool>(),
        1usize..=2,
        1usize..=2,
        prop_oneof![1usize..=8, 1usize..=300],
        prop_oneof![1usize..=4, 1usize..=64],
        1usize..=24,
        prop_oneof![1usize..=8, 9usize..=80, Just(64)],
        0.2f64..2.0,
        any::<u64>(),
    )
        .prop_map(|(kernel, causal, b, h, t, d, dv, chunk, scale, seed)| Case {
            kernel,
            causal,
            b,
            h,
            t,
            d,
            dv,
            chunk,
            scale,
            seed,
        })
}

/// Max relative difference of the chunked (and, when causal, recurrent) forms on `dev` from the
/// f64 quadratic reference on the CPU.
fn errors<B: Backend>(dev: &B, c: &Case, dtype: DType) -> Result<(f64, Option<f64>), TestCaseError> {
    let (q, k, v) = inputs(c.kernel, c.b, c.h, c.t, c.d, c.dv, c.scale, c.seed, dtype);
    let what = |form: &str| {
        let (kernel, causal) = (c.kernel, c.causal);
        format!("ela {form} {kernel} causal={causal} {dtype:?} q/k {:?} v {:?} C={}", q.dims(), v.dims(), c.chunk)
    };
    let cpu = Ela::<Cpu>::builtin(c.kernel).with_causal(c.causal).with_chunk(c.chunk);
    let reference = cpu.run(Form::Quadratic, &f64t(&q), &f64t(&k), &f64t(&v)).ctx(what("quadratic (reference)"))?;
    let ela = Ela::<B>::builtin(c.kernel).with_causal(c.causal).with_chunk(c.chunk);
    let (qd, kd, vd) = (up(dev, &q), up(dev, &k), up(dev, &v));
    let chunked = ela.run(Form::Chunked, &qd, &kd, &vd).ctx(what("chunked"))?;
    prop_assert_eq!(chunked.dtype(), dtype, "{}", what("chunked"));
    let rec = match c.causal {
        true => Some(rel(&ela.run(Form::Recurrent, &qd, &kd, &vd).ctx(what("recurrent"))?, &reference)),
        false => None,
    };
    Ok((rel(&chunked, &reference), rec))
}

device_proptest! {
    #![proptest_config(ProptestConfig::with_cases(proptest_cases(64)))]

    fn forms_agree_in_f64<B: Backend>(dev: &B, c in case()) {
        let (chunked, rec) = errors(dev, &c, DType::F64)?;
        prop_assert!(chunked <= 1e-10, "chunked f64 vs quadratic: {chunked:e} for {c:?}");
        if let Some(r) = rec {
            prop_assert!(r <= 1e-10, "recurrent f64 vs quadratic: {r:e} for {c:?}");
        }
    }

    fn forms_agree_in_f32<B: Backend>(dev: &B, c in case()) {
        let (chunked, rec) = errors(dev, &c, DType::F32)?;
        prop_assert!(chunked <= 1e-5, "chunked f32 vs quadratic f64: {chunked:e} for {c:?}");
        if let Some(r) = rec {
            prop_assert!(r <= 1e-5, "recurrent f32 vs quadratic f64: {r:e} for {c:?}");
        }
    }
}

device_tests!(
    chunked_fast_path_shapes,
    empty_sequences_give_empty_outputs,
    single_token_and_unit_dim_return_the_value,
    all_equal_keys_average_the_values,
    chunk_length_does_not_change_the_result,
    zero_batch_and_zero_value_dim
);

/// The shapes of CUDA's chunked tensor-core path (Hadamard Exp, f32/bf16, D = Dv in {64, 128}):
/// T below, at and just past one 64-row chunk (and a 32-row chunk for f32 with 128-wide heads),
/// and several chunks with a partial last one; causal and not. f32 to 1e-5 of the f64 reference,
/// bf16 to 1e-2 (bf16 operands in the tile products, f32 state; the reference is computed from
/// the bf16-rounded inputs). On the CPU the same cases check its chunked and recurrent forms.
fn chunked_fast_path_shapes<B: Backend>(dev: &B) {
    let mut failed = Vec::new();
    for (seed, d) in [64usize, 128].into_iter().enumerate() {
        for t in [1usize, 63, 64, 65, 200, 300] {
            for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 1e-2)] {
                let (q, k, v) =
                    inputs(ElaKernel::HadamardExp, 1, 2, t, d, d, 1.0, seed as u64 * 1000 + t as u64, dtype);
                let (qd, kd, vd) = (up(dev, &q), up(dev, &k), up(dev, &v));
                for causal in [true, false] {
                    let cpu = Ela::<Cpu>::builtin(ElaKernel::HadamardExp).with_causal(causal);
                    let reference = cpu.run(Form::Quadratic, &f64t(&q), &f64t(&k), &f64t(&v)).unwrap();
                    let ela = Ela::<B>::builtin(ElaKernel::HadamardExp).with_causal(causal);
                    let forms: &[Form] = if causal { &[Form::Chunked, Form::Recurrent] } else { &[Form::Chunked] };
                    for &form in forms {
                        let what = format!(
                            "ela {} hadamard-exp causal={causal} {dtype:?} q/k/v [1, 2, {t}, {d}]",
                            form.name()
                        );
                        match ela.run(form, &qd, &kd, &vd) {
                            Err(e) => failed.push(format!("{what}: {e}")),
                            Ok(y) if y.dtype() != dtype => failed.push(format!("{what}: output dtype {:?}", y.dtype())),
                            Ok(y) => {
                                let e = rel(&y, &reference);
                                if e > tol {
                                    failed.push(format!("{what}: {e:e} from the f64 reference (tolerance {tol:e})"));
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

/// Empty sequences give empty outputs and gradients in every form.
fn empty_sequences_give_empty_outputs<B: Backend>(dev: &B) {
    for kernel in KERNELS {
        for causal in [true, false] {
            let (q, k, v) = inputs(kernel, 2, 3, 0, 4, 5, 1.0, 1, DType::F64);
            let (q, k, v) = (up(dev, &q), up(dev, &k), up(dev, &v));
            let ela = Ela::<B>::builtin(kernel).with_causal(causal);
            let forms: &[Form] = if causal { &Form::ALL } else { &[Form::Quadratic, Form::Chunked] };
            for &form in forms {
                let y = ela.run(form, &q, &k, &v).unwrap_or_else(|e| panic!("{kernel} {form:?} T=0: {e}"));
                assert_eq!(y.dims(), &[2, 3, 0, 5], "{kernel} {form:?}");
                if form != Form::Recurrent {
                    let dy = Tensor::zeros([2, 3, 0, 5], DType::F64, dev).unwrap();
                    let out =
                        ela.run_with_grads(form, &q, &k, &v, &dy).unwrap_or_else(|e| panic!("{kernel} {form:?}: {e}"));
                    assert_eq!(out.y.dims(), &[2, 3, 0, 5], "{kernel} {form:?}");
                    assert_eq!(out.grads.dq.dims(), &[2, 3, 0, 4]);
                    assert_eq!(out.grads.dv.dims(), &[2, 3, 0, 5]);
                }
            }
        }
    }
}

/// One token attends only to itself: y = v exactly up to rounding, for every kernel and D = 1.
fn single_token_and_unit_dim_return_the_value<B: Backend>(dev: &B) {
    for kernel in KERNELS {
        for d in [1, 3] {
            let (q, k, v) = inputs(kernel, 1, 2, 1, d, 3, 1.0, 7, DType::F64);
            let (q, k, v) = (up(dev, &q), up(dev, &k), up(dev, &v));
            for causal in [true, false] {
                let ela = Ela::<B>::builtin(kernel).with_causal(causal);
                let forms: &[Form] = if causal { &Form::ALL } else { &[Form::Quadratic, Form::Chunked] };
                for &form in forms {
                    let y = ela.run(form, &q, &k, &v).unwrap_or_else(|e| panic!("{kernel} d={d} {form:?}: {e}"));
                    assert!(rel(&y, &v) <= 1e-14, "{kernel} d={d} {form:?}: {}", rel(&y, &v));
                }
            }
        }
    }
}

/// With every key equal, every kernel weighs the visible values equally: the causal output is
/// the running mean of v, the non-causal one the global mean.
fn all_equal_keys_average_the_values<B: Backend>(dev: &B) {
    let (t, dv) = (37, 2);
    for kernel in KERNELS {
        let (q, k, v) = inputs(kernel, 1, 1, t, 3, dv, 1.0, 11, DType::F64);
        let k0 = k.narrow(2, 0, 1).unwrap().broadcast_as(k.shape().clone()).unwrap().contiguous().unwrap();
        let vv = v.to_vec::<f64>().unwrap();
        let (q, k0, v) = (up(dev, &q), up(dev, &k0), up(dev, &v));
        for causal in [true, false] {
            let mut want = vec![0.0; t * dv];
            for i in 0..t {
                let upto = if causal { i + 1 } else { t };
                for e in 0..dv {
                    want[i * dv + e] = (0..upto).map(|j| vv[j * dv + e]).sum::<f64>() / upto as f64;
                }
            }
            let want = Tensor::from_vec(want, [1, 1, t, dv], &Cpu).unwrap();
            let ela = Ela::<B>::builtin(kernel).with_causal(causal).with_chunk(8);
            for form in [Form::Quadratic, Form::Chunked] {
                let y = ela.run(form, &q, &k0, &v).unwrap_or_else(|e| panic!("{kernel} causal={causal} {form:?}: {e}"));
                assert!(rel(&y, &want) <= 1e-12, "{kernel} causal={causal} {form:?}: {}", rel(&y, &want));
            }
        }
    }
}

/// The chunk length changes rounding only.
fn chunk_length_does_not_change_the_result<B: Backend>(dev: &B) {
    let (q, k, v) = inputs(ElaKernel::HadamardExp, 1, 2, 130, 16, 8, 1.0, 3, DType::F64);
    let (q, k, v) = (up(dev, &q), up(dev, &k), up(dev, &v));
    let base = Ela::<B>::builtin(ElaKernel::HadamardExp).with_chunk(1).run(Form::Chunked, &q, &k, &v).unwrap();
    for chunk in [2, 7, 64, 129, 130, 500] {
        let ela = Ela::<B>::builtin(ElaKernel::HadamardExp).with_chunk(chunk);
        let y = ela.run(Form::Chunked, &q, &k, &v).unwrap_or_else(|e| panic!("chunk {chunk}: {e}"));
        assert!(rel(&y, &base) <= 1e-12, "chunk {chunk}: {}", rel(&y, &base));
    }
}

/// Degenerate sizes: no batch entries, or values of dimension 0.
fn zero_batch_and_zero_value_dim<B: Backend>(dev: &B) {
    for (b, dv) in [(0, 3), (1, 0)] {
        let (q, k, v) = inputs(ElaKernel::HadamardExp, b, 2, 9, 4, dv, 1.0, 2, DType::F64);
        let (q, k, v) = (up(dev, &q), up(dev, &k), up(dev, &v));
        let ela = Ela::<B>::builtin(ElaKernel::HadamardExp).with_chunk(4);
        for form in Form::ALL {
            let y = ela.run(form, &q, &k, &v).unwrap_or_else(|e| panic!("{form:?} b={b} dv={dv}: {e}"));
            assert_eq!(y.dims(), &[b, 2, 9, dv], "{form:?}");
            if form != Form::Recurrent {
                let dy = Tensor::zeros([b, 2, 9, dv], DType::F64, dev).unwrap();
                let out =
                    ela.run_with_grads(form, &q, &k, &v, &dy).unwrap_or_else(|e| panic!("{form:?} b={b} dv={dv}: {e}"));
                assert_eq!(out.grads.dv.dims(), &[b, 2, 9, dv], "{form:?}");
            }
        }
    }
}
