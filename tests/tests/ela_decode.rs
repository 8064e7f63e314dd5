//! ELA decoding and causality: prefill then step-by-step decoding reproduces the full causal
//! output; changing q/k/v after position i leaves the outputs up to i bit-identical; the state's
//! size does not grow with context; bad calls are typed errors.
//!
//! Every test runs on every backend (`NAME::cpu`, `NAME::cuda`): inputs are drawn on the CPU and
//! uploaded, the states and forms under test run on the device, and the references (the full
//! causal output) are computed on the CPU in f64.

mod ela_common;

use ela_common::{inputs, rel, up, KERNELS};
use ela_core::{Backend, Cpu, DType, ElaKernel, ElaParams, Error, FusedElaState, Rng, Tensor};
use ela_nn::ela::{self as ela, Ela, Form};
use ela_tests::device::proptest_cases;
use ela_tests::device::Context;
use ela_tests::{device_proptest, device_tests};
use proptest::prelude::*;

/// A copy of `x` with every position after `i` along time replaced by fresh values.
fn perturb_after(x: &Tensor<Cpu>, i: usize, seed: u64) -> Tensor<Cpu> {
    let t = x.dims()[2];
    if i + 1 >= t {
        return x.clone();
    }
    let head = x.narrow(2, 0, i + 1).unwrap();
    let mut shape = x.dims().to_vec();
    shape[2] = t - i - 1;
    let tail = Tensor::rand_uniform(0.5, 1.5, shape, DType::F64, &mut Rng::new(seed), &Cpu)
        .unwrap()
        .to_dtype(x.dtype())
        .unwrap();
    Tensor::concat(&[&head, &tail], 2).unwrap()
}

fn bits<B: Backend>(x: &Tensor<B>) -> Vec<u64> {
    x.to_vec_f64().unwrap().iter().map(|v| v.to_bits()).collect()
}

device_proptest! {
    #![proptest_config(ProptestConfig::with_cases(proptest_cases(48)))]

    /// Outputs at positions <= i do not change in a single bit when q, k, v change after i
    /// (chunked form; i is often inside a chunk, where the intra-chunk block is shared).
    fn causality_is_bit_exact<B: Backend>(
        dev: &B,
        kernel in prop::sample::select(KERNELS.to_vec()),
        f32_inputs in any::<bool>(),
        t in 2usize..=150,
        d in 1usize..=24,
        dv in 1usize..=8,
        chunk in prop_oneof![1usize..=8, Just(64)],
        cut in 0.0f64..1.0,
        seed in any::<u64>(),
    ) {
        let dtype = if f32_inputs { DType::F32 } else { DType::F64 };
        let (q, k, v) = inputs(kernel, 1, 2, t, d, dv, 1.0, seed, dtype);
        let i = ((t - 1) as f64 * cut) as usize;
        let what = format!("ela chunked {kernel} {dtype:?} q/k [1, 2, {t}, {d}] v [.., {dv}] C={chunk} cut after {i}");
        let ela = Ela::<B>::builtin(kernel).with_chunk(chunk);
        let y = ela.run(Form::Chunked, &up(dev, &q), &up(dev, &k), &up(dev, &v)).ctx(&what)?;
        let (q2, k2) = (perturb_after(&q, i, seed ^ 1), perturb_after(&k, i, seed ^ 2));
        let v2 = perturb_after(&v, i, seed ^ 3);
        let y2 = ela.run(Form::Chunked, &up(dev, &q2), &up(dev, &k2), &up(dev, &v2)).ctx(&what)?;
        let (a, b) = (y.narrow(2, 0, i + 1)?, y2.narrow(2, 0, i + 1)?);
        prop_assert_eq!(bits(&a), bits(&b), "{}: outputs up to the cut changed", what);
        if i + 1 < t {
            let later = |y: &Tensor<B>| y.narrow(2, i + 1, t - i - 1).map(|x| bits(&x));
            prop_assert_ne!(later(&y)?, later(&y2)?, "{}: later outputs did not change", what);
        }
    }

    /// Prefill the first p tokens (chunked), then decode the rest one token at a time: the
    /// outputs equal the full causal chunked output computed on the CPU (f64, 1e-10).
    fn prefill_then_steps_reproduce_the_full_output<B: Backend>(
        dev: &B,
        kernel in prop::sample::select(KERNELS.to_vec()),
        (b, h) in (1usize..=2, 1usize..=3),
        t in 1usize..=120,
        d in 1usize..=16,
        dv in 1usize..=8,
        chunk in prop_oneof![1usize..=8, Just(64)],
        split in 0.0f64..=1.0,
        seed in any::<u64>(),
    ) {
        let (q, k, v) = inputs(kernel, b, h, t, d, dv, 1.0, seed, DType::F64);
        let full = Ela::<Cpu>::builtin(kernel).with_chunk(chunk).run(Form::Chunked, &q, &k, &v)?;
        let (q, k, v) = (up(dev, &q), up(dev, &k), up(dev, &v));
        let ela = Ela::<B>::builtin(kernel).with_chunk(chunk);
        let p = (t as f64 * split) as usize;
        let what = format!("ela {kernel} F64 q/k [{b}, {h}, {t}, {d}] v [{b}, {h}, {t}, {dv}] C={chunk}, prefill {p}");
        let (y0, mut st) = ela.prefill(&q.narrow(2, 0, p)?, &k.narrow(2, 0, p)?, &v.narrow(2, 0, p)?).ctx(&what)?;
        prop_assert!(p == 0 || rel(&y0, &full.narrow(2, 0, p)?) <= 1e-10, "{}: prefill outputs", what);
        let bytes = st.bytes();
        for i in p..t {
            // Decode with rank-3 [batch, heads, d] inputs.
            let at = |x: &Tensor<B>| x.narrow(2, i, 1).unwrap().squeeze(2).unwrap();
            let yi = st.step(&at(&q), &at(&k), &at(&v)).ctx(format!("{what}: step {i}"))?;
            let e = rel(&yi, &full.narrow(2, i, 1)?.squeeze(2)?);
            prop_assert!(e <= 1e-10, "{what}: step {i}: {e:e}");
        }
        prop_assert_eq!(st.bytes(), bytes, "{}", what);
        prop_assert_eq!(st.tokens(), t, "{}", what);
    }
}

device_tests!(prefill_continues_an_existing_state, state_size_is_constant_and_documented, bad_calls_are_typed_errors);

/// Two prefills in a row continue the same state.
fn prefill_continues_an_existing_state<B: Backend>(dev: &B) {
    let (q, k, v) = inputs(ElaKernel::HadamardExp, 2, 2, 70, 8, 4, 1.5, 5, DType::F64);
    let full = q.ela(&k, &v, &ElaParams::causal(ElaKernel::HadamardExp)).unwrap();
    let (q, k, v) = (up(dev, &q), up(dev, &k), up(dev, &v));
    let mut st = FusedElaState::new(ElaKernel::HadamardExp, 2, 2, 8, 4, DType::F64, dev).unwrap().with_chunk(16);
    let part = |x: &Tensor<B>, a, n| x.narrow(2, a, n).unwrap();
    st.prefill(&part(&q, 0, 33), &part(&k, 0, 33), &part(&v, 0, 33)).unwrap();
    // Another chunk length for the second prompt: the state, not the chunking, carries over.
    let mut st = st.with_chunk(5);
    let y = st.prefill(&part(&q, 33, 37), &part(&k, 33, 37), &part(&v, 33, 37)).unwrap();
    let e = rel(&y, &full.narrow(2, 33, 37).unwrap());
    assert!(e <= 1e-12, "second prefill of hadamard-exp F64 [2, 2, 37, 8]: {e:e}");
}

/// O(F Dv) per head: the state has the same size after 1 and after 1000 tokens, and the size is
/// batch * heads * (F Dv + F [+ F log-scales]) * 4 bytes for f32, which is what its buffers hold.
fn state_size_is_constant_and_documented<B: Backend>(dev: &B) {
    let (b, h, d, dv) = (2, 3, 16, 8);
    for kernel in KERNELS {
        let f = kernel.feature_size(d);
        let units = if kernel == ElaKernel::HadamardExp { f } else { 0 };
        let want = b * h * (f * dv + f + units) * 4;
        let (q, k, v) = inputs(kernel, b, h, 1000, d, dv, 1.0, 9, DType::F32);
        let (q, k, v) = (up(dev, &q), up(dev, &k), up(dev, &v));
        let ela = Ela::<B>::builtin(kernel);
        let (_, mut st) =
            ela.prefill(&q.narrow(2, 0, 1).unwrap(), &k.narrow(2, 0, 1).unwrap(), &v.narrow(2, 0, 1).unwrap()).unwrap();
        assert_eq!(st.bytes(), want, "{kernel}");
        let (s, z, m) = st.inner().buffers().unwrap();
        let held = [Some(&s), Some(&z), m.as_ref()].iter().flatten().map(|x| x.elem_count() * 4).sum::<usize>();
        assert_eq!(held, want, "{kernel}: bytes in the state's buffers");
        let (_, st2) = ela.prefill(&q, &k, &v).unwrap();
        assert_eq!(st2.bytes(), want);
        assert_eq!(st.inner().state_dtype(), DType::F32);
        st.step(&q.narrow(2, 1, 1).unwrap(), &k.narrow(2, 1, 1).unwrap(), &v.narrow(2, 1, 1).unwrap()).unwrap();
        assert_eq!(st.bytes(), want);
    }
}

/// Wrong ranks, shapes, dtypes, chunk lengths and state mismatches are typed errors.
fn bad_calls_are_typed_errors<B: Backend>(dev: &B) {
    let (q, k, v) = inputs(ElaKernel::HadamardExp, 1, 2, 5, 4, 3, 1.0, 1, DType::F64);
    let (q, k, v) = (up(dev, &q), up(dev, &k), up(dev, &v));
    let p = ElaParams::causal(ElaKernel::HadamardExp);
    let msg = is_err(q.reshape([2, 5, 4]).unwrap().ela(&k, &v, &p), "rank 3");
    assert!(msg.contains("ela") && msg.contains("rank"), "{msg}");
    let msg = is_err(q.ela(&k.narrow(3, 0, 3).unwrap(), &v, &p), "q/k mismatch");
    assert!(msg.contains("same shape"), "{msg}");
    let msg = is_err(q.ela(&k, &v.narrow(2, 0, 4).unwrap(), &p), "v time mismatch");
    assert!(msg.contains("dv may differ"), "{msg}");
    assert!(is_err(q.ela(&k, &v, &p.with_chunk(0)), "chunk 0").contains("chunk"));
    assert!(matches!(q.ela(&k.to_dtype(DType::F32).unwrap(), &v, &p), Err(Error::DTypeMismatch { .. })));
    let ints = Tensor::zeros([1, 2, 5, 4], DType::U32, dev).unwrap();
    assert!(matches!(ints.ela(&ints, &ints, &p), Err(Error::UnsupportedDType { .. })));
    // Recurrent forms are causal only; states check what they are fed.
    let nc = Ela::<B>::builtin(ElaKernel::HadamardExp).with_causal(false);
    assert!(is_err(nc.prefill(&q, &k, &v), "non-causal prefill").contains("causal"));
    assert!(nc.run(Form::Recurrent, &q, &k, &v).is_err());
    let mut st = ela::ElaState::new(&ela::builtin(ElaKernel::HadamardExp), 1, 2, 4, 3, DType::F64, dev).unwrap();
    let at = |x: &Tensor<B>| x.narrow(2, 0, 1).unwrap();
    assert!(
        is_err(st.step(&at(&q), &at(&k), &at(&v.narrow(3, 0, 2).unwrap())), "dv mismatch").contains("state was made")
    );
    assert!(matches!(
        st.step(
            &at(&q).to_dtype(DType::F32).unwrap(),
            &at(&k).to_dtype(DType::F32).unwrap(),
            &at(&v).to_dtype(DType::F32).unwrap()
        ),
        Err(Error::DTypeMismatch { .. })
    ));
    assert!(st.step(&q, &k, &v).is_err(), "a step takes one token");
    assert_eq!(st.tokens(), 0, "failed steps leave the state untouched");
}

fn is_err<T: std::fmt::Debug>(r: ela_core::Result<T>, what: &str) -> String {
    let e: Error = r.expect_err(what);
    e.to_string()
}
