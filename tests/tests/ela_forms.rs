//! ELA forward: the chunked and recurrent forms equal the quadratic reference for every kernel,
//! causal and not, on random shapes (T in 1..=300 including T < C and T not divisible by C,
//! D in 1..=64, Dv independent of D), in f64 to 1e-10 and in f32 to 1e-5 (normwise relative).
//! Plus the edge cases: empty and one-token sequences, D = 1, all-equal keys.

mod ela_common;

use ela_common::{cases, f64t, inputs, rel, KERNELS};
use ela_core::{Cpu, DType, ElaKernel, Tensor};
use ela_nn::ela::{Ela, Form};
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

/// Max relative difference of the chunked (and, when causal, recurrent) forms from the f64
/// quadratic reference.
fn errors(c: &Case, dtype: DType) -> (f64, Option<f64>) {
    let (q, k, v) = inputs(c.kernel, c.b, c.h, c.t, c.d, c.dv, c.scale, c.seed, dtype);
    let ela = Ela::<Cpu>::builtin(c.kernel).with_causal(c.causal).with_chunk(c.chunk);
    let reference = ela.run(Form::Quadratic, &f64t(&q), &f64t(&k), &f64t(&v), None).unwrap().y;
    let chunked = ela.run(Form::Chunked, &q, &k, &v, None).unwrap().y;
    assert_eq!(chunked.dtype(), dtype);
    let rec = c.causal.then(|| rel(&ela.run(Form::Recurrent, &q, &k, &v, None).unwrap().y, &reference));
    (rel(&chunked, &reference), rec)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(64)))]

    #[test]
    fn forms_agree_in_f64(c in case()) {
        let (chunked, rec) = errors(&c, DType::F64);
        prop_assert!(chunked <= 1e-10, "chunked vs quadratic: {chunked:e} for {c:?}");
        if let Some(r) = rec {
            prop_assert!(r <= 1e-10, "recurrent vs quadratic: {r:e} for {c:?}");
        }
    }

    #[test]
    fn forms_agree_in_f32(c in case()) {
        let (chunked, rec) = errors(&c, DType::F32);
        prop_assert!(chunked <= 1e-5, "chunked f32 vs quadratic f64: {chunked:e} for {c:?}");
        if let Some(r) = rec {
            prop_assert!(r <= 1e-5, "recurrent f32 vs quadratic f64: {r:e} for {c:?}");
        }
    }
}

#[test]
fn empty_sequences_give_empty_outputs() {
    for kernel in KERNELS {
        for causal in [true, false] {
            let (q, k, v) = inputs(kernel, 2, 3, 0, 4, 5, 1.0, 1, DType::F64);
            let ela = Ela::<Cpu>::builtin(kernel).with_causal(causal);
            let forms: &[Form] = if causal { &Form::ALL } else { &[Form::Quadratic, Form::Chunked] };
            for &form in forms {
                let dy = Tensor::zeros([2, 3, 0, 5], DType::F64, &Cpu).unwrap();
                let out = ela.run(form, &q, &k, &v, Some(&dy)).unwrap();
                assert_eq!(out.y.dims(), &[2, 3, 0, 5], "{kernel} {form:?}");
                if let Some(g) = out.grads {
                    assert_eq!(g.dq.dims(), &[2, 3, 0, 4]);
                    assert_eq!(g.dv.dims(), &[2, 3, 0, 5]);
                }
            }
        }
    }
}

/// One token attends only to itself: y = v exactly up to rounding, for every kernel and D = 1.
#[test]
fn single_token_and_unit_dim_return_the_value() {
    for kernel in KERNELS {
        for d in [1, 3] {
            let (q, k, v) = inputs(kernel, 1, 2, 1, d, 3, 1.0, 7, DType::F64);
            for causal in [true, false] {
                let ela = Ela::<Cpu>::builtin(kernel).with_causal(causal);
                let forms: &[Form] = if causal { &Form::ALL } else { &[Form::Quadratic, Form::Chunked] };
                for &form in forms {
                    let y = ela.run(form, &q, &k, &v, None).unwrap().y;
                    assert!(rel(&y, &v) <= 1e-14, "{kernel} d={d} {form:?}: {}", rel(&y, &v));
                }
            }
        }
    }
}

/// With every key equal, every kernel weighs the visible values equally: the causal output is the
/// running mean of v, the non-causal one the global mean.
#[test]
fn all_equal_keys_average_the_values() {
    let (t, dv) = (37, 2);
    for kernel in KERNELS {
        let (q, k, v) = inputs(kernel, 1, 1, t, 3, dv, 1.0, 11, DType::F64);
        let k0 = k.narrow(2, 0, 1).unwrap().broadcast_as(k.shape().clone()).unwrap().contiguous().unwrap();
        let vv = v.to_vec::<f64>().unwrap();
        for causal in [true, false] {
            let mut want = vec![0.0; t * dv];
            for i in 0..t {
                let upto = if causal { i + 1 } else { t };
                for e in 0..dv {
                    want[i * dv + e] = (0..upto).map(|j| vv[j * dv + e]).sum::<f64>() / upto as f64;
                }
            }
            let want = Tensor::from_vec(want, [1, 1, t, dv], &Cpu).unwrap();
            let ela = Ela::<Cpu>::builtin(kernel).with_causal(causal).with_chunk(8);
            for form in [Form::Quadratic, Form::Chunked] {
                let y = ela.run(form, &q, &k0, &v, None).unwrap().y;
                assert!(rel(&y, &want) <= 1e-12, "{kernel} causal={causal} {form:?}: {}", rel(&y, &want));
            }
        }
    }
}

/// The chunk length changes rounding only.
#[test]
fn chunk_length_does_not_change_the_result() {
    let (q, k, v) = inputs(ElaKernel::HadamardExp, 1, 2, 130, 16, 8, 1.0, 3, DType::F64);
    let base =
        Ela::<Cpu>::builtin(ElaKernel::HadamardExp).with_chunk(1).run(Form::Chunked, &q, &k, &v, None).unwrap().y;
    for chunk in [2, 7, 64, 129, 130, 500] {
        let ela = Ela::<Cpu>::builtin(ElaKernel::HadamardExp).with_chunk(chunk);
        let y = ela.run(Form::Chunked, &q, &k, &v, None).unwrap().y;
        assert!(rel(&y, &base) <= 1e-12, "chunk {chunk}: {}", rel(&y, &base));
    }
}

/// Degenerate sizes: no batch entries, or values of dimension 0.
#[test]
fn zero_batch_and_zero_value_dim() {
    for (b, dv) in [(0, 3), (1, 0)] {
        let (q, k, v) = inputs(ElaKernel::HadamardExp, b, 2, 9, 4, dv, 1.0, 2, DType::F64);
        let ela = Ela::<Cpu>::builtin(ElaKernel::HadamardExp).with_chunk(4);
        for form in Form::ALL {
            let dy = Tensor::zeros([b, 2, 9, dv], DType::F64, &Cpu).unwrap();
            let out = ela.run(form, &q, &k, &v, Some(&dy)).unwrap();
            assert_eq!(out.y.dims(), &[b, 2, 9, dv], "{form:?}");
        }
    }
}
