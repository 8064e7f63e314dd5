//! Helpers shared by the autograd property tests (`autograd_gradcheck.rs`,
//! `autograd_references.rs`): the proptest configuration, input strategies with view modes
//! (inputs stored as is, transposed, or with extra rows or columns, then viewed back), and the
//! finite-difference check; `autograd_gradcheck.rs` says what the modes and value kinds are for.
#![allow(dead_code)]

use std::ops::RangeInclusive;

use ela_autograd::{gradcheck, GradcheckOptions, Var};
use ela_core::{Backend, Result, Tensor};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

pub type TestResult = std::result::Result<(), TestCaseError>;

pub fn cfg() -> ProptestConfig {
    let cases = ela_tests::device::proptest_cases(16);
    // No regression files: the tests folder is shared and failures print their inputs anyway.
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// A unary op under test.
pub type UnaryFn<B> = fn(&Var<B>) -> Result<Var<B>>;
/// A function of the inputs under test.
pub type VarsFn<'a, B> = dyn Fn(&[Var<B>]) -> Result<Var<B>> + 'a;

/// An f64 tensor on `dev` (the values are uploaded from the host).
pub fn tensor<B: Backend>(dev: &B, dims: &[usize], data: Vec<f64>) -> Tensor<B> {
    Tensor::from_vec(data, dims.to_vec(), dev).unwrap()
}

pub fn prod(d: &[usize]) -> usize {
    d.iter().product()
}

#[derive(Clone, Copy, Debug)]
pub enum Vals {
    Normal,
    Positive,
    Distinct,
}

pub fn values(n: usize, k: Vals) -> BoxedStrategy<Vec<f64>> {
    match k {
        Vals::Normal => vec(-2.0f64..2.0, n).boxed(),
        Vals::Positive => vec(0.3f64..3.0, n).boxed(),
        // A shuffled grid of half-integer multiples of 0.1, jittered by < 0.02: all distinct by
        // > 0.06 and at least 0.03 from every multiple of 0.1 (0 included).
        Vals::Distinct => (Just((0..n).collect::<Vec<_>>()).prop_shuffle(), vec(-0.02f64..0.02, n))
            .prop_map(move |(p, j)| {
                p.iter().zip(j).map(|(&k, j)| (k as f64 - (n / 2) as f64 + 0.5) * 0.1 + j).collect()
            })
            .boxed(),
    }
}

/// Dims of rank in `rank`, extents in `1..=max` (zero-size axes: `empty_*` tests).
pub fn dims(rank: RangeInclusive<usize>, max: usize) -> impl Strategy<Value = Vec<usize>> {
    rank.prop_flat_map(move |r| vec(1..=max, r))
}

/// `(out, shapes)`: `n` shapes that broadcast together to `out` (fewer leading axes, size-1 axes).
pub fn bcast(n: usize, max_rank: usize) -> impl Strategy<Value = (Vec<usize>, Vec<Vec<usize>>)> {
    dims(0..=max_rank, 3).prop_flat_map(move |out| {
        let r = out.len();
        vec((0..=r, vec(any::<bool>(), r)), n).prop_map(move |spec| {
            let shapes = spec.iter().map(|(k, ones)| (r - k..r).map(|i| if ones[i] { 1 } else { out[i] }).collect());
            (out.clone(), shapes.collect())
        })
    })
}

/// One input: logical dims, view mode and the stored values (see the module docs).
#[derive(Clone, Debug)]
pub struct In {
    pub dims: Vec<usize>,
    pub mode: u8,
    pub data: Vec<f64>,
}

impl In {
    pub fn stored(dims: &[usize], mode: u8) -> Vec<usize> {
        let (mut s, r) = (dims.to_vec(), dims.len());
        match mode {
            1 if r >= 2 => s.swap(r - 2, r - 1),
            2 if r >= 1 => s[0] += 2,
            3 if r >= 1 => s[r - 1] += 1,
            _ => {}
        }
        s
    }
    pub fn tensor<B: Backend>(&self, dev: &B) -> Tensor<B> {
        tensor(dev, &Self::stored(&self.dims, self.mode), self.data.clone())
    }
    pub fn view<B: Backend>(&self, v: &Var<B>) -> Result<Var<B>> {
        let r = self.dims.len();
        match self.mode {
            1 if r >= 2 => v.t(),
            2 if r >= 1 => v.narrow(0, 1, self.dims[0]),
            3 if r >= 1 => v.narrow(r - 1, 1, self.dims[r - 1]),
            _ => Ok(v.clone()),
        }
    }
}

/// Every view mode.
pub const ALL: &[u8] = &[0, 1, 2, 3];

/// Inputs of the given logical dims; with `Distinct`, values are distinct across all of them.
pub fn inputs(ds: Vec<Vec<usize>>, k: Vals) -> impl Strategy<Value = Vec<In>> {
    inputs_m(ds, k, ALL)
}

pub fn inputs_m(ds: Vec<Vec<usize>>, k: Vals, modes: &'static [u8]) -> impl Strategy<Value = Vec<In>> {
    vec(proptest::sample::select(modes), ds.len()).prop_flat_map(move |modes| {
        let stored: Vec<Vec<usize>> = ds.iter().zip(&modes).map(|(d, &m)| In::stored(d, m)).collect();
        let total = stored.iter().map(|s| prod(s)).sum();
        let ds = ds.clone();
        values(total, k).prop_map(move |vals| {
            let mut at = 0;
            let mk = |((d, &mode), s): ((&Vec<usize>, &u8), &Vec<usize>)| {
                at += prod(s);
                In { dims: d.clone(), mode, data: vals[at - prod(s)..at].to_vec() }
            };
            ds.iter().zip(&modes).zip(&stored).map(mk).collect()
        })
    })
}

pub fn input(d: Vec<usize>, k: Vals) -> impl Strategy<Value = In> {
    input_m(d, k, ALL)
}

pub fn input_m(d: Vec<usize>, k: Vals, modes: &'static [u8]) -> impl Strategy<Value = In> {
    inputs_m(vec![d], k, modes).prop_map(|mut v| v.remove(0))
}

pub fn one(rank: RangeInclusive<usize>, max: usize, k: Vals) -> impl Strategy<Value = In> {
    dims(rank, max).prop_flat_map(move |d| input(d, k))
}

/// Gradient check of `f` on `dev` at the inputs `ins` (each through its view mode).
pub fn check<B: Backend>(dev: &B, name: &str, ins: &[In], f: impl Fn(&[Var<B>]) -> Result<Var<B>>) -> TestResult {
    check_opts(dev, name, ins, GradcheckOptions::default(), f)
}

/// [`check`] with explicit step and tolerances. Failures name the op, the inputs' logical shapes
/// and view modes (F64 throughout) and the worst element.
pub fn check_opts<B: Backend>(
    dev: &B,
    name: &str,
    ins: &[In],
    opts: GradcheckOptions,
    f: impl Fn(&[Var<B>]) -> Result<Var<B>>,
) -> TestResult {
    let shapes: Vec<String> = ins.iter().map(|i| format!("{:?} mode {}", i.dims, i.mode)).collect();
    let name = format!("{name} F64 [{}]", shapes.join(", "));
    let xs: Vec<Tensor<B>> = ins.iter().map(|i| i.tensor(dev)).collect();
    let g = |vs: &[Var<B>]| {
        let views = ins.iter().zip(vs).map(|(i, v)| i.view(v)).collect::<Result<Vec<_>>>()?;
        f(&views)
    };
    let r = gradcheck(g, &xs, opts).map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
    prop_assert_eq!(r.checked, xs.iter().map(|x| x.elem_count()).sum::<usize>(), "{}: elements compared", name);
    prop_assert!(r.passed, "{}: {}", name, r);
    Ok(())
}

/// A `U32` index tensor on `dev`.
pub fn u32s<B: Backend>(dev: &B, dims: &[usize], ids: Vec<u32>) -> Tensor<B> {
    Tensor::from_vec(ids, dims.to_vec(), dev).unwrap()
}
