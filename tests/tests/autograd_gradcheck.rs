//! Gradient checks of every differentiable op of `Var<B>`, in f64, against central finite
//! differences (`ela_autograd::gradcheck`), with proptest-drawn shapes and values, on every
//! backend (`NAME::cpu`, `NAME::cuda`): the inputs are drawn on the host and uploaded, and the
//! forward, the backward and the perturbed forwards of the finite differences all run on the
//! device under test.
//!
//! Every input is drawn together with a *view mode*: it is stored either as is, transposed, with
//! two extra leading rows, or with one extra trailing column, and the function under test first
//! takes the view (`t`, `narrow`) that gives the logical shape. So each op is also checked on
//! strided and offset inputs, and elements outside the view must get a zero gradient.
//! Values are kept away from non-differentiable points: positive for log/sqrt/recip/powf, and a
//! jittered grid of distinct values (never within 0.03 of a multiple of 0.1) for
//! abs/relu/clamp/max/min/topk/max-pooling, whose kinks sit at multiples of 0.1 here.
//!
//! A few backward passes are also compared with independent references (naive matmul loops, the
//! explicit softmax Jacobian, the cross-entropy formula, RMS norm composed of primitive ops).
//! Cases per property: `ELA_PROPTEST_CASES` (default 16).
//!
//! The tolerances are the CPU's on CUDA too: everything is f64, where the GPU's other summation
//! orders (tree reductions, cuBLAS, atomics in index_add/scatter_add) move results by ~1e-16
//! relative, far below the finite differences' own error.

use std::ops::RangeInclusive;
use std::slice::from_ref;

use ela_autograd::{gradcheck, GradcheckOptions, Var};
use ela_core::{Backend, Conv2dParams, DType, Pool2dParams, Result, Tensor, UnaryOp};
use ela_tests::{device_proptest, device_tests};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

type TestResult = std::result::Result<(), TestCaseError>;

fn cfg() -> ProptestConfig {
    let cases = std::env::var("ELA_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(16);
    // No regression files: the tests folder is shared and failures print their inputs anyway.
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// A unary op under test.
type UnaryFn<B> = fn(&Var<B>) -> Result<Var<B>>;
/// A function of the inputs under test.
type VarsFn<'a, B> = dyn Fn(&[Var<B>]) -> Result<Var<B>> + 'a;

/// An f64 tensor on `dev` (the values are uploaded from the host).
fn tensor<B: Backend>(dev: &B, dims: &[usize], data: Vec<f64>) -> Tensor<B> {
    Tensor::from_vec(data, dims.to_vec(), dev).unwrap()
}

fn prod(d: &[usize]) -> usize {
    d.iter().product()
}

#[derive(Clone, Copy, Debug)]
enum Vals {
    Normal,
    Positive,
    Distinct,
}

fn values(n: usize, k: Vals) -> BoxedStrategy<Vec<f64>> {
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
fn dims(rank: RangeInclusive<usize>, max: usize) -> impl Strategy<Value = Vec<usize>> {
    rank.prop_flat_map(move |r| vec(1..=max, r))
}

/// `(out, shapes)`: `n` shapes that broadcast together to `out` (fewer leading axes, size-1 axes).
fn bcast(n: usize, max_rank: usize) -> impl Strategy<Value = (Vec<usize>, Vec<Vec<usize>>)> {
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
struct In {
    dims: Vec<usize>,
    mode: u8,
    data: Vec<f64>,
}

impl In {
    fn stored(dims: &[usize], mode: u8) -> Vec<usize> {
        let (mut s, r) = (dims.to_vec(), dims.len());
        match mode {
            1 if r >= 2 => s.swap(r - 2, r - 1),
            2 if r >= 1 => s[0] += 2,
            3 if r >= 1 => s[r - 1] += 1,
            _ => {}
        }
        s
    }
    fn tensor<B: Backend>(&self, dev: &B) -> Tensor<B> {
        tensor(dev, &Self::stored(&self.dims, self.mode), self.data.clone())
    }
    fn view<B: Backend>(&self, v: &Var<B>) -> Result<Var<B>> {
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
const ALL: &[u8] = &[0, 1, 2, 3];
/// The view modes that never leave an offset: modes 2 and 3 narrow, and even mode 3 gives a
/// contiguous view with an offset when all but the last axis have size 1 (see
/// `fused_ops_on_offset_views`).
const NO_OFFSET: &[u8] = &[0, 1];

/// Inputs of the given logical dims; with `Distinct`, values are distinct across all of them.
fn inputs(ds: Vec<Vec<usize>>, k: Vals) -> impl Strategy<Value = Vec<In>> {
    inputs_m(ds, k, ALL)
}

fn inputs_m(ds: Vec<Vec<usize>>, k: Vals, modes: &'static [u8]) -> impl Strategy<Value = Vec<In>> {
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

fn input(d: Vec<usize>, k: Vals) -> impl Strategy<Value = In> {
    input_m(d, k, ALL)
}

fn input_m(d: Vec<usize>, k: Vals, modes: &'static [u8]) -> impl Strategy<Value = In> {
    inputs_m(vec![d], k, modes).prop_map(|mut v| v.remove(0))
}

fn one(rank: RangeInclusive<usize>, max: usize, k: Vals) -> impl Strategy<Value = In> {
    dims(rank, max).prop_flat_map(move |d| input(d, k))
}

/// Gradient check of `f` on `dev` at the inputs `ins` (each through its view mode).
fn check<B: Backend>(dev: &B, name: &str, ins: &[In], f: impl Fn(&[Var<B>]) -> Result<Var<B>>) -> TestResult {
    check_opts(dev, name, ins, GradcheckOptions::default(), f)
}

/// [`check`] with explicit step and tolerances. Failures name the op, the inputs' logical shapes
/// and view modes (F64 throughout) and the worst element.
fn check_opts<B: Backend>(
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
fn u32s<B: Backend>(dev: &B, dims: &[usize], ids: Vec<u32>) -> Tensor<B> {
    Tensor::from_vec(ids, dims.to_vec(), dev).unwrap()
}

// ------------------------------------------------------------------------------ elementwise

device_proptest! {
    #![proptest_config(cfg())]

    fn unary_smooth<B: Backend>(dev: &B, x in one(0..=3, 3, Vals::Normal)) {
        let ops: [(&str, UnaryFn<B>); 8] = [
            ("neg", |v| v.neg()), ("exp", |v| v.exp()), ("tanh", |v| v.tanh()), ("sigmoid", |v| v.sigmoid()),
            ("gelu", |v| v.gelu()), ("silu", |v| v.silu()), ("square", |v| v.square()),
            ("affine", |v| v.affine(-1.5, 0.25)),
        ];
        for (name, op) in ops {
            check(dev, name, from_ref(&x), |v| op(&v[0]))?;
        }
    }

    fn unary_positive_domain<B: Backend>(dev: &B, x in one(0..=3, 3, Vals::Positive)) {
        let ops: [(&str, UnaryFn<B>); 7] = [
            ("log", |v| v.log()), ("sqrt", |v| v.sqrt()), ("recip", |v| v.recip()),
            ("powf(-1.5)", |v| v.powf(-1.5)), ("powf(0.5)", |v| v.powf(0.5)),
            ("powf(2.5)", |v| v.powf(2.5)), ("powf(3)", |v| v.powf(3.0)),
        ];
        for (name, op) in ops {
            check(dev, name, from_ref(&x), |v| op(&v[0]))?;
        }
    }

    fn unary_kinked<B: Backend>(dev: &B, x in one(0..=3, 4, Vals::Distinct)) {
        let ops: [(&str, UnaryFn<B>); 7] = [
            ("abs", |v| v.abs()), ("relu", |v| v.relu()), ("maximum_scalar", |v| v.maximum_scalar(0.1)),
            ("minimum_scalar", |v| v.minimum_scalar(-0.2)), ("clamp", |v| v.clamp(-0.3, 0.2)),
            // Piecewise constant: zero gradient away from 0.
            ("sign", |v| v.sign()), ("step", |v| v.unary(UnaryOp::Step)),
        ];
        for (name, op) in ops {
            check(dev, name, from_ref(&x), |v| op(&v[0]))?;
        }
    }

    fn binary_broadcast<B: Backend>(
        dev: &B,
        n in bcast(2, 3).prop_flat_map(|(_, s)| inputs(s, Vals::Normal)),
        p in bcast(2, 3).prop_flat_map(|(_, s)| inputs(s, Vals::Positive)),
        d in bcast(2, 3).prop_flat_map(|(_, s)| inputs(s, Vals::Distinct)),
    ) {
        check(dev, "add", &n, |v| v[0].add(&v[1]))?;
        check(dev, "sub", &n, |v| v[0].sub(&v[1]))?;
        check(dev, "mul", &n, |v| v[0].mul(&v[1]))?;
        check(dev, "div", &p, |v| v[0].div(&v[1]))?;
        check(dev, "maximum", &d, |v| v[0].maximum(&v[1]))?;
        check(dev, "minimum", &d, |v| v[0].minimum(&v[1]))?;
        // The same var on both sides: both contributions accumulate.
        check(dev, "mul(x, x)", &n[..1], |v| v[0].mul(&v[0]))?;
    }

    fn where_cond_masked_fill<B: Backend>(
        dev: &B,
        (ins, mdims, bits) in bcast(3, 3).prop_flat_map(|(_, s)| {
            let n = prod(&s[0]);
            (inputs(s[1..].to_vec(), Vals::Normal), Just(s[0].clone()), vec(0u8..2, n))
        })
    ) {
        let mask = Tensor::from_vec(bits, mdims, dev).unwrap();
        check(dev, "where_cond", &ins, |v| Var::where_cond(&mask, &v[0], &v[1]))?;
        check(dev, "masked_fill", &ins[..1], |v| v[0].masked_fill(&mask, 0.7))?;
    }

    fn to_dtype_round_trip<B: Backend>(dev: &B, x in one(0..=3, 3, Vals::Normal)) {
        // Through f32 the loss is only exact to ~1e-7 relative, so use a large step: the function
        // is quadratic, for which central differences have no truncation error.
        let opts = GradcheckOptions { eps: 1e-2, rtol: 1e-3, atol: 1e-3, seed: 0 };
        check_opts(dev, "to_dtype", &[x], opts, |v| v[0].to_dtype(DType::F32)?.mul_scalar(1.5)?.to_dtype(DType::F64)?.square())?;
    }
}

// ------------------------------------------------------------------------------ reductions

device_proptest! {
    #![proptest_config(cfg())]

    fn reductions<B: Backend>(dev: &B, x in one(1..=3, 3, Vals::Normal), ax in any::<Index>(), keep in any::<bool>()) {
        let a = ax.index(x.dims.len());
        check(dev, "sum", from_ref(&x), |v| v[0].sum(a, keep))?;
        check(dev, "sum_all", from_ref(&x), |v| v[0].sum_all())?;
        for (excl, rev) in [(false, false), (true, false), (false, true), (true, true)] {
            check(dev, &format!("cumsum(exclusive={excl}, reverse={rev})"), from_ref(&x), |v| v[0].cumsum(a, excl, rev))?;
        }
        check(dev, "mean", from_ref(&x), |v| v[0].mean(a, keep))?;
        check(dev, "logsumexp", from_ref(&x), |v| v[0].logsumexp(a, keep))?;
        check(dev, "mean_all", from_ref(&x), |v| v[0].mean_all())?;
    }

    fn max_min<B: Backend>(dev: &B, x in one(1..=3, 4, Vals::Distinct), ax in any::<Index>(), keep in any::<bool>()) {
        let a = ax.index(x.dims.len());
        check(dev, "max", from_ref(&x), |v| v[0].max(a, keep))?;
        check(dev, "min", from_ref(&x), |v| v[0].min(a, keep))?;
    }

    fn sum_to_broadcast<B: Backend>(
        dev: &B,
        (x, small) in bcast(1, 3).prop_flat_map(|(out, s)| (input(out, Vals::Normal), Just(s[0].clone()))),
    ) {
        let (big, target) = (x.dims.clone(), small.into());
        check(dev, "sum_to", from_ref(&x), |v| v[0].sum_to(&target))?;
        let y = In { dims: target.dims().to_vec(), mode: 0, data: x.data[..target.elem_count()].to_vec() };
        check(dev, "broadcast_as", &[y], |v| v[0].broadcast_as(big.clone()))?;
    }
}

// ------------------------------------------------------------------------------ matmul

device_proptest! {
    #![proptest_config(cfg())]

    fn matmul_batched_broadcast<B: Backend>(
        dev: &B,
        ins in (bcast(2, 2), 1..=3usize, 1..=3usize, 1..=3usize).prop_flat_map(|((_, b), m, k, n)| {
            let a = [b[0].clone(), vec![m, k]].concat();
            let c = [b[1].clone(), vec![k, n]].concat();
            inputs(vec![a, c], Vals::Normal)
        })
    ) {
        // View mode 1 stores an operand transposed, so transposed operands are covered too.
        check(dev, "matmul", &ins, |v| v[0].matmul(&v[1]))?;
        check(dev, "matmul(a, a^T)", &ins[..1], |v| v[0].matmul(&v[0].t()?))?;
    }

    /// dA = G B^T and dB = A^T G summed over broadcast batches, by naive loops.
    fn matmul_matches_naive_loops<B: Backend>(
        dev: &B,
        (bs, m, k, n, ba, bb, tb) in (1..=3usize, 1..=3usize, 1..=3usize, 1..=3usize, any::<bool>(), any::<bool>(), any::<bool>()),
        seed in any::<u64>(),
    ) {
        let (ba, bb) = (if ba { 1 } else { bs }, if bb { 1 } else { bs });
        let mut rng = ela_core::Rng::new(seed);
        let mut draw = |len: usize| (0..len).map(|_| rng.normal()).collect::<Vec<f64>>();
        let (av, bv, gv) = (draw(ba * m * k), draw(bb * k * n), draw(bs * m * n));
        let a = Var::param(tensor(dev, &[ba, m, k], av.clone()));
        // With `tb` the rhs is stored as [bb, n, k] and used through a transposed view.
        let b = Var::param(tensor(dev, &if tb { [bb, n, k] } else { [bb, k, n] }, bv.clone()));
        let bval = |q: usize, l: usize, j: usize| if tb { bv[(q * n + j) * k + l] } else { bv[(q * k + l) * n + j] };
        let y = a.matmul(&if tb { b.t()? } else { b.clone() })?;
        let bs = ba.max(bb);
        let gv = gv[..bs * m * n].to_vec();
        let grads = y.backward_with(tensor(dev, &[bs, m, n], gv.clone()))?;
        let (mut ry, mut da, mut db) = (vec![0.0; bs * m * n], vec![0.0; av.len()], vec![0.0; bv.len()]);
        for q in 0..bs {
            let (qa, qb) = (q % ba, q % bb);
            for i in 0..m {
                for j in 0..n {
                    let g = gv[(q * m + i) * n + j];
                    for l in 0..k {
                        let aidx = (qa * m + i) * k + l;
                        ry[(q * m + i) * n + j] += av[aidx] * bval(qb, l, j);
                        da[aidx] += g * bval(qb, l, j);
                        let bidx = if tb { (qb * n + j) * k + l } else { (qb * k + l) * n + j };
                        db[bidx] += av[aidx] * g;
                    }
                }
            }
        }
        let close = |x: &[f64], r: &[f64]| x.len() == r.len() && x.iter().zip(r).all(|(x, r)| (x - r).abs() <= 1e-12 * (1.0 + r.abs()));
        prop_assert!(close(&y.value().to_vec::<f64>()?, &ry));
        prop_assert!(close(&grads.get(&a).unwrap().to_vec::<f64>()?, &da));
        prop_assert!(close(&grads.get(&b).unwrap().to_vec::<f64>()?, &db));
    }
}

// ------------------------------------------------------------------------------ shape ops

device_proptest! {
    #![proptest_config(cfg())]

    fn reshape_flatten_permute<B: Backend>(
        dev: &B,
        x in one(1..=4, 3, Vals::Normal),
        i in any::<Index>(),
        j in any::<Index>(),
        perm in (1..=4usize).prop_flat_map(|r| Just((0..r).collect::<Vec<_>>()).prop_shuffle()),
    ) {
        let r = x.dims.len();
        let rev: Vec<usize> = x.dims.iter().rev().copied().collect();
        let (s, e) = { let (s, e) = (i.index(r), j.index(r)); (s.min(e), s.max(e)) };
        check(dev, "reshape", from_ref(&x), |v| v[0].reshape(rev.clone()))?;
        check(dev, "flatten", from_ref(&x), |v| v[0].flatten(s, e))?;
        check(dev, "flatten_all", from_ref(&x), |v| v[0].flatten_all())?;
        check(dev, "transpose", from_ref(&x), |v| v[0].transpose(i.index(r), j.index(r)))?;
        // Reshaping a transposed view needs a copy: checks the copy's gradient path.
        if r >= 2 {
            check(dev, "t.reshape", from_ref(&x), |v| v[0].t()?.reshape(prod(&x.dims)))?;
        }
        let p: Vec<usize> = perm.iter().copied().filter(|&a| a < r).collect();
        if p.len() == r {
            check(dev, "permute", from_ref(&x), |v| v[0].permute(&p)?.contiguous())?;
        }
    }

    fn narrow_split_chunk<B: Backend>(
        dev: &B,
        x in one(1..=3, 5, Vals::Normal),
        ax in any::<Index>(),
        s in any::<Index>(),
        l in any::<Index>(),
        size in 1..=3usize,
        chunks in 1..=3usize,
    ) {
        let a = ax.index(x.dims.len());
        let d = x.dims[a];
        let start = s.index(d + 1);
        let len = l.index(d - start + 1);
        check(dev, "narrow", from_ref(&x), |v| v[0].narrow(a, start, len))?;
        // Pieces reassembled in reverse order, each scaled differently.
        let rejoin = |parts: Vec<Var<B>>| -> Result<Var<B>> {
            let scaled = parts.iter().rev().enumerate().map(|(i, p)| p.mul_scalar(i as f64 + 1.0)).collect::<Result<Vec<_>>>()?;
            Var::concat(&scaled.iter().collect::<Vec<_>>(), a)
        };
        check(dev, "split", from_ref(&x), |v| rejoin(v[0].split(size, a)?))?;
        check(dev, "chunk", from_ref(&x), |v| rejoin(v[0].chunk(chunks, a)?))?;
    }

    fn unsqueeze_squeeze_contiguous<B: Backend>(dev: &B, x in one(0..=3, 3, Vals::Normal), ax in any::<Index>()) {
        let a = ax.index(x.dims.len() + 1);
        check(dev, "unsqueeze", from_ref(&x), |v| v[0].unsqueeze(a))?;
        check(dev, "unsqueeze.squeeze", from_ref(&x), |v| v[0].unsqueeze(a)?.exp()?.squeeze(a))?;
        check(dev, "contiguous", from_ref(&x), |v| v[0].contiguous()?.square())?;
    }

    fn concat_stack<B: Backend>(
        dev: &B,
        (ins, a) in (1..=3usize, 1..=3usize, any::<Index>()).prop_flat_map(|(k, r, ax)| {
            let a = ax.index(r);
            (dims(r..=r, 3), vec(1..=3usize, k)).prop_flat_map(move |(d, sizes)| {
                let ds = sizes.iter().map(|&s| { let mut d = d.clone(); d[a] = s; d }).collect();
                (inputs(ds, Vals::Normal), Just(a))
            })
        }),
        same in (1..=3usize, dims(0..=3, 3)).prop_flat_map(|(k, d)| inputs(vec![d; k], Vals::Normal)),
        sa in any::<Index>(),
    ) {
        check(dev, "concat", &ins, |v| Var::concat(&v.iter().collect::<Vec<_>>(), a))?;
        let sa = sa.index(same[0].dims.len() + 1);
        check(dev, "stack", &same, |v| Var::stack(&v.iter().collect::<Vec<_>>(), sa))?;
    }

    fn pad<B: Backend>(dev: &B, x in one(1..=3, 3, Vals::Normal), pads in vec((0..=2usize, 0..=2usize), 3)) {
        let pads = pads[..x.dims.len()].to_vec();
        check(dev, "pad", &[x], |v| v[0].pad(&pads, 0.7))?;
    }
}

// ------------------------------------------------------------------------------ indexing

device_proptest! {
    #![proptest_config(cfg())]

    fn index_select_embedding<B: Backend>(
        dev: &B,
        (x, a, ids) in (one(1..=3, 3, Vals::Normal), any::<Index>()).prop_flat_map(|(x, ax)| {
            let a = ax.index(x.dims.len());
            let d = x.dims[a] as u32;
            (Just(x), Just(a), vec(0..d, 1..=5))
        }),
        (table, eids) in (1..=4usize, 1..=3usize, 1..=3usize, 1..=3usize).prop_flat_map(|(vocab, dim, b, t)| {
            (input(vec![vocab, dim], Vals::Normal), vec(0..vocab as u32, b * t).prop_map(move |v| (v, [b, t])))
        }),
    ) {
        let n = ids.len();
        let ids = u32s(dev, &[n], ids);
        check(dev, "index_select", &[x], |v| v[0].index_select(&ids, a))?;
        let eids = u32s(dev, &eids.1, eids.0);
        check(dev, "embedding", &[table], |v| v[0].embedding(&eids))?;
    }

    fn gather_scatter_add<B: Backend>(
        dev: &B,
        (ins, a, idims, ids) in (dims(1..=3, 3), any::<Index>(), 1..=4usize).prop_flat_map(|(d, ax, m)| {
            let a = ax.index(d.len());
            let mut idims = d.clone();
            idims[a] = m;
            let n = prod(&idims);
            (inputs(vec![d.clone(), idims.clone()], Vals::Normal), Just(a), Just(idims), vec(0..d[a] as u32, n))
        })
    ) {
        let ids = u32s(dev, &idims, ids);
        check(dev, "gather", &ins[..1], |v| v[0].gather(&ids, a))?;
        check(dev, "scatter_add", &ins, |v| v[0].scatter_add(&ids, &v[1], a))?;
    }

    fn topk<B: Backend>(dev: &B, x in one(1..=3, 5, Vals::Distinct), ax in any::<Index>(), k in any::<Index>()) {
        let a = ax.index(x.dims.len());
        let k = k.index(x.dims[a] + 1);
        check(dev, "topk", &[x], |v| Ok(v[0].topk(k, a)?.0))?;
    }
}

// ------------------------------------------------------------------------------ fused ops

device_proptest! {
    #![proptest_config(cfg())]

    fn softmax_any_axis<B: Backend>(dev: &B, x in one(1..=3, 4, Vals::Normal), ax in any::<Index>()) {
        let a = ax.index(x.dims.len());
        check(dev, "softmax", from_ref(&x), |v| v[0].softmax(a))?;
        check(dev, "log_softmax", from_ref(&x), |v| v[0].log_softmax(a))?;
    }

    fn norms<B: Backend>(
        dev: &B,
        ins in dims(1..=3, 4).prop_flat_map(|d| { let n = *d.last().unwrap(); inputs_m(vec![d, vec![n], vec![n]], Vals::Normal, NO_OFFSET) }),
    ) {
        let (x, w, b) = (&ins[0], &ins[1], &ins[2]);
        check(dev, "rms_norm", from_ref(x), |v| v[0].rms_norm(None, 1e-5))?;
        check(dev, "rms_norm(w)", &[x.clone(), w.clone()], |v| v[0].rms_norm(Some(&v[1]), 1e-5))?;
        check(dev, "layer_norm", from_ref(x), |v| v[0].layer_norm(None, None, 1e-5))?;
        check(dev, "layer_norm(w)", &[x.clone(), w.clone()], |v| v[0].layer_norm(Some(&v[1]), None, 1e-5))?;
        check(dev, "layer_norm(b)", &[x.clone(), b.clone()], |v| v[0].layer_norm(None, Some(&v[1]), 1e-5))?;
        check(dev, "layer_norm(w, b)", &ins, |v| v[0].layer_norm(Some(&v[1]), Some(&v[2]), 1e-5))?;
    }

    fn cross_entropy<B: Backend>(
        dev: &B,
        (x, raw, dropped) in (1..=4usize, 1..=5usize).prop_flat_map(|(rows, classes)| {
            (input_m(vec![rows, classes], Vals::Normal, NO_OFFSET), vec(0..classes as u32, rows), vec(any::<bool>(), rows))
        }),
    ) {
        let rows = raw.len();
        let t = u32s(dev, &[rows], raw.clone());
        check(dev, "cross_entropy", from_ref(&x), |v| v[0].cross_entropy(&t, None))?;
        // A valid class as ignore_index, and an out-of-range sentinel (PyTorch's -100 habit).
        check(dev, "cross_entropy(ignore=0)", from_ref(&x), |v| v[0].cross_entropy(&t, Some(0)))?;
        let ts: Vec<u32> = raw.iter().zip(&dropped).map(|(&c, &d)| if d { u32::MAX } else { c }).collect();
        let ts = u32s(dev, &[rows], ts);
        check(dev, "cross_entropy(ignore=MAX)", &[x], |v| v[0].cross_entropy(&ts, Some(u32::MAX)))?;
    }
}

// ------------------------------------------------------------------------------ conv & pooling

fn conv_case() -> impl Strategy<Value = (Vec<In>, Conv2dParams)> {
    let geo = ((1..=3usize, 1..=3usize), (1..=2usize, 1..=2usize), (0..=2usize, 0..=2usize), (1..=2usize, 1..=2usize));
    (1..=2usize, 1..=3usize, 1..=2usize, 1..=2usize, geo, (0..=2usize, 0..=2usize)).prop_flat_map(
        |(n, groups, cpg, opg, ((kh, kw), stride, padding, dilation), (eh, ew))| {
            // The smallest input the dilated kernel fits after padding, plus a few extra pixels.
            let fit = |k: usize, d: usize, p: usize| (d * (k - 1) + 1).saturating_sub(2 * p).max(1);
            let (h, w) = (fit(kh, dilation.0, padding.0) + eh, fit(kw, dilation.1, padding.1) + ew);
            let p = Conv2dParams { stride, padding, dilation, groups };
            (inputs(vec![vec![n, groups * cpg, h, w], vec![groups * opg, cpg, kh, kw]], Vals::Normal), Just(p))
        },
    )
}

/// An input with a pooling window: `(x, kernel, stride, padding)`.
type PoolCase = (In, (usize, usize), (usize, usize), (usize, usize));

fn pool_case(k: Vals) -> impl Strategy<Value = PoolCase> {
    (
        (1..=2usize, 1..=2usize),
        (1..=3usize, 1..=3usize),
        (1..=2usize, 1..=2usize),
        (0..=2usize, 0..=2usize),
        any::<[Index; 2]>(),
    )
        .prop_flat_map(move |((n, c), (kh, kw), stride, (eh, ew), pi)| {
            let pad = (pi[0].index(kh / 2 + 1), pi[1].index(kw / 2 + 1));
            let (h, w) = ((kh - 2 * pad.0).max(1) + eh, (kw - 2 * pad.1).max(1) + ew);
            (input(vec![n, c, h, w], k), Just((kh, kw)), Just(stride), Just(pad))
        })
}

device_proptest! {
    #![proptest_config(cfg())]

    /// stride, padding, dilation and groups (cpg = 1 with groups > 1 is depthwise).
    fn conv2d<B: Backend>(dev: &B, (ins, p) in conv_case()) {
        check(dev, &format!("conv2d {p:?}"), &ins, |v| v[0].conv2d(&v[1], &p))?;
    }

    /// Depthwise (the CPU's direct depthwise path): strides 1..=3 on either axis, padding 0..=1,
    /// dilation, channel multipliers 1..=2.
    fn conv2d_depthwise<B: Backend>(
        dev: &B,
        (ins, p) in (1..=3usize, 1..=2usize, (1..=3usize, 1..=2usize), 0..=1usize, 1..=2usize).prop_flat_map(
            |(c, mult, stride, pad, dil)| {
                let p = Conv2dParams { stride, padding: (pad, pad), dilation: (dil, 1), groups: c };
                (inputs(vec![vec![2, c, 5, 5], vec![c * mult, 1, 3, 3]], Vals::Normal), Just(p))
            }
        )
    ) {
        check(dev, &format!("conv2d depthwise {p:?}"), &ins, |v| v[0].conv2d(&v[1], &p))?;
    }

    /// 1x1, stride 1, no padding (the CPU's pointwise path), with groups.
    fn conv2d_pointwise<B: Backend>(
        dev: &B,
        (ins, p) in (1..=2usize, 1..=2usize, 1..=3usize, 1..=3usize, (1..=3usize, 1..=3usize)).prop_flat_map(
            |(n, groups, cpg, opg, (h, w))| {
                let p = Conv2dParams { groups, ..Conv2dParams::default() };
                (inputs(vec![vec![n, groups * cpg, h, w], vec![groups * opg, cpg, 1, 1]], Vals::Normal), Just(p))
            }
        )
    ) {
        check(dev, &format!("conv2d pointwise {p:?}"), &ins, |v| v[0].conv2d(&v[1], &p))?;
    }

    fn pooling<B: Backend>(
        dev: &B,
        (x, kernel, stride, padding) in pool_case(Vals::Distinct),
        up in (1..=3usize, 1..=3usize),
    ) {
        let p = |count_include_pad| Pool2dParams { kernel, stride, padding, count_include_pad };
        check(dev, &format!("max_pool2d {:?}", p(false)), from_ref(&x), |v| v[0].max_pool2d(&p(false)))?;
        for inc in [false, true] {
            check(dev, &format!("avg_pool2d {:?}", p(inc)), from_ref(&x), |v| v[0].avg_pool2d(&p(inc)))?;
        }
        check(dev, "upsample_nearest2d", &[x], |v| v[0].upsample_nearest2d(up))?;
    }
}

// ------------------------------------------------------------------------------ references

device_proptest! {
    #![proptest_config(cfg())]

    /// softmax: J = diag(y) - y y^T; log_softmax: J = I - 1 y^T. dx = J^T g, built explicitly.
    fn softmax_matches_explicit_jacobian<B: Backend>(
        dev: &B,
        x in vec(-3.0f64..3.0, 1..=6),
        g in vec(-1.0f64..1.0, 6),
    ) {
        let n = x.len();
        let g = &g[..n];
        let m = x.iter().fold(f64::MIN, |a, &b| a.max(b));
        let z: f64 = x.iter().map(|v| (v - m).exp()).sum();
        let y: Vec<f64> = x.iter().map(|v| (v - m).exp() / z).collect();
        for log in [false, true] {
            let xv = Var::param(tensor(dev, &[n], x.clone()));
            let out = if log { xv.log_softmax(0)? } else { xv.softmax(0)? };
            let dx = out.backward_with(tensor(dev, &[n], g.to_vec()))?.get(&xv).unwrap().to_vec::<f64>()?;
            for j in 0..n {
                let jac = |i: usize| if log { (i == j) as u8 as f64 - y[j] } else { y[i] * ((i == j) as u8 as f64 - y[j]) };
                let want: f64 = (0..n).map(|i| jac(i) * g[i]).sum();
                prop_assert!((dx[j] - want).abs() <= 1e-12, "log={} j={}: {} vs {}", log, j, dx[j], want);
            }
        }
    }

    /// Mean cross-entropy: dlogits = (softmax(x) - onehot(t)) / counted rows, 0 on ignored rows.
    fn cross_entropy_matches_formula<B: Backend>(
        dev: &B,
        (x, t) in (1..=4usize, 2..=5usize).prop_flat_map(|(r, c)| (vec(-3.0f64..3.0, r * c), vec(0..c as u32, r))),
    ) {
        let (rows, c) = (t.len(), x.len() / t.len());
        let xv = Var::param(tensor(dev, &[rows, c], x.clone()));
        let loss = xv.cross_entropy(&u32s(dev, &[rows], t.clone()), Some(0))?;
        let dx = loss.backward()?.get(&xv).unwrap().to_vec::<f64>()?;
        let counted = t.iter().filter(|&&k| k != 0).count().max(1) as f64;
        for r in 0..rows {
            let row = &x[r * c..(r + 1) * c];
            let z: f64 = row.iter().map(|v| v.exp()).sum();
            for k in 0..c {
                let want = if t[r] == 0 { 0.0 } else { (row[k].exp() / z - (k as u32 == t[r]) as u8 as f64) / counted };
                prop_assert!((dx[r * c + k] - want).abs() <= 1e-12, "row {} class {}", r, k);
            }
        }
    }

    /// The fused SwiGLU gate: gradients against central differences, and value and gradients
    /// against the same function composed from primitives (`silu(a) * b`).
    fn swiglu_matches_composed<B: Backend>(
        dev: &B,
        ins in dims(0..=3, 4).prop_flat_map(|d| inputs_m(vec![d.clone(), d.clone(), d], Vals::Normal, &[0])),
    ) {
        check(dev, "swiglu", &ins[..2], |v| v[0].swiglu(&v[1]))?;
        let (a, b) = (Var::param(ins[0].tensor(dev)), Var::param(ins[1].tensor(dev)));
        let g = ins[2].tensor(dev);
        let fused = a.swiglu(&b)?;
        let composed = a.silu()?.mul(&b)?;
        let (gf, gc) = (fused.backward_with(g.clone())?, composed.backward_with(g)?);
        prop_assert!(fused.value().all_close(&composed.value(), 1e-12, 1e-12)?);
        for v in [&a, &b] {
            prop_assert!(gf.get(v).unwrap().all_close(gc.get(v).unwrap(), 1e-12, 1e-12)?);
        }
    }

    /// The fused conv bias + SiLU: gradients against central differences, value and gradients
    /// against `silu(x + b)` composed from primitives, for `x [N, C, ...]` of rank 2 to 4.
    fn bias_silu_matches_composed<B: Backend>(
        dev: &B,
        ins in (dims(2..=4, 4)).prop_flat_map(|d| { let c = d[1]; inputs_m(vec![d.clone(), vec![c], d], Vals::Normal, &[0]) }),
    ) {
        check(dev, "bias_silu", &ins[..2], |v| v[0].bias_silu(&v[1]))?;
        let (x, b) = (Var::param(ins[0].tensor(dev)), Var::param(ins[1].tensor(dev)));
        let g = ins[2].tensor(dev);
        let fused = x.bias_silu(&b)?;
        let mut shape = vec![1; x.rank()];
        shape[1] = b.dims()[0];
        let composed = x.add(&b.reshape(shape)?)?.silu()?;
        let (gf, gc) = (fused.backward_with(g.clone())?, composed.backward_with(g)?);
        prop_assert!(fused.value().all_close(&composed.value(), 1e-12, 1e-12)?);
        for v in [&x, &b] {
            prop_assert!(gf.get(v).unwrap().all_close(gc.get(v).unwrap(), 1e-10, 1e-12)?);
        }
    }

    /// The fused RMS-norm backward equals the backward of the same function built from primitives.
    fn rms_norm_matches_composed<B: Backend>(
        dev: &B,
        ins in dims(1..=3, 5).prop_flat_map(|d| { let n = *d.last().unwrap(); inputs_m(vec![d.clone(), vec![n], d], Vals::Normal, &[0]) }),
    ) {
        let (x, w) = (Var::param(ins[0].tensor(dev)), Var::param(ins[1].tensor(dev)));
        let g = ins[2].tensor(dev);
        let fused = x.rms_norm(Some(&w), 1e-5)?;
        let r = x.rank() - 1;
        let composed = x.div(&x.square()?.mean(r, true)?.add_scalar(1e-5)?.sqrt()?)?.mul(&w)?;
        let (gf, gc) = (fused.backward_with(g.clone())?, composed.backward_with(g)?);
        prop_assert!(fused.value().all_close(&composed.value(), 1e-12, 1e-12)?);
        for v in [&x, &w] {
            prop_assert!(gf.get(v).unwrap().all_close(gc.get(v).unwrap(), 1e-10, 1e-12)?);
        }
    }
}

// ------------------------------------------------------------------------------ empty tensors

device_proptest! {
    #![proptest_config(cfg())]

    /// A zero-size leading axis: no rows to differentiate, but the other operands must still get
    /// exact (zero or partial) gradients and nothing may fail.
    fn empty_leading_axis<B: Backend>(
        dev: &B,
        ins in (1..=3usize, 1..=3usize).prop_flat_map(|(k, n)| { inputs_m(vec![vec![0, k], vec![k], vec![k, n], vec![2, k], vec![0, k, 2, 2], vec![n, k, 1, 2]], Vals::Normal, &[0]) }),
    ) {
        let (x, b, w, y, img, ker) = (&ins[0], &ins[1], &ins[2], &ins[3], &ins[4], &ins[5]);
        let none = u32s(dev, &[0], vec![]);
        check(dev, "exp", from_ref(x), |v| v[0].exp())?;
        check(dev, "add broadcast", &[x.clone(), b.clone()], |v| v[0].add(&v[1]))?;
        check(dev, "sum over the empty axis", from_ref(x), |v| v[0].sum(0, false))?;
        check(dev, "sum_all", from_ref(x), |v| v[0].sum_all())?;
        check(dev, "softmax", from_ref(x), |v| v[0].softmax(1))?;
        check(dev, "layer_norm", &[x.clone(), b.clone()], |v| v[0].layer_norm(Some(&v[1]), None, 1e-5))?;
        check(dev, "matmul", &[x.clone(), w.clone()], |v| v[0].matmul(&v[1]))?;
        check(dev, "concat", &[x.clone(), y.clone()], |v| Var::concat(&[&v[0], &v[1]], 0))?;
        check(dev, "index_select", from_ref(w), |v| v[0].index_select(&none, 0))?;
        check(dev, "embedding", from_ref(w), |v| v[0].embedding(&none))?;
        check(dev, "cross_entropy", from_ref(x), |v| v[0].cross_entropy(&none, None))?;
        check(dev, "conv2d", &[img.clone(), ker.clone()], |v| v[0].conv2d(&v[1], &Conv2dParams::default()))?;
    }
}

// ------------------------------------------------------------------------------ regressions

device_proptest! {
    #![proptest_config(cfg())]

    /// Every op on zero-size axes in any position (the default strategies put them in front only).
    /// Regression: empty views used to keep offsets past their buffer's end, and reshaping them
    /// recursed forever.
    fn empty_inner_axes<B: Backend>(
        dev: &B,
        (x, a) in (vec(0..=2usize, 3), 0..3usize).prop_flat_map(|(d, a)| (input(d, Vals::Normal), Just(a))),
    ) {
        check(dev, "sum_all", from_ref(&x), |v| v[0].sum_all())?;
        check(dev, "reshape", from_ref(&x), |v| v[0].reshape(x.dims.iter().rev().copied().collect::<Vec<_>>()))?;
        check(dev, "cumsum", from_ref(&x), |v| v[0].cumsum(a, false, false))?;
        check(dev, "matmul", from_ref(&x), |v| v[0].matmul(&v[0].t()?))?;
        check(dev, "stack", from_ref(&x), |v| Var::stack(&[&v[0], &v[0].exp()?], a))?;
    }
}

device_tests!(fused_ops_on_offset_views);

/// Fused ops on offset views, and ops whose output is a later part of a concat/stack: the
/// concat backward hands each part `g.narrow(0, start, len)`, a contiguous view with an offset.
/// Regression: `contiguous()` used to return such views unchanged to kernels that ignore offsets.
fn fused_ops_on_offset_views<B: Backend>(dev: &B) {
    let x = In { dims: vec![2, 3], mode: 2, data: (0..12).map(|i| (i as f64 * 0.37).sin()).collect() };
    let y = In { mode: 0, data: x.data[..6].to_vec(), ..x.clone() };
    let img = In { dims: vec![1, 1, 4, 4], mode: 0, data: (0..16).map(|i| (i as f64 * 0.71).sin()).collect() };
    let ker = In { dims: vec![1, 1, 2, 2], mode: 0, data: vec![0.3, -0.2, 0.5, 0.1] };
    let (t, ids) = (u32s(dev, &[2], vec![1, 2]), u32s(dev, &[3], vec![1, 0, 1]));
    let pool = Pool2dParams { kernel: (2, 2), stride: (2, 2), padding: (0, 0), count_include_pad: true };
    // `second(a, b)` stacks b behind a, so b's backward receives an offset view.
    let second = |a: Var<B>, b: Var<B>| Var::stack(&[&a, &b], 0);
    let mut failed = Vec::new();
    let mut run = |name: &str, ins: &[In], f: &VarsFn<'_, B>| {
        if let Err(e) = check(dev, name, ins, f) {
            failed.push(e.to_string());
        }
    };
    run("rms_norm(offset view)", from_ref(&x), &|v| v[0].rms_norm(None, 1e-5));
    run("layer_norm(offset view)", from_ref(&x), &|v| v[0].layer_norm(None, None, 1e-5));
    run("cross_entropy(offset view)", from_ref(&x), &|v| v[0].cross_entropy(&t, None));
    run("stack(., softmax)", from_ref(&y), &|v| second(v[0].exp()?, v[0].softmax(1)?));
    run("stack(., rms_norm)", from_ref(&y), &|v| second(v[0].exp()?, v[0].rms_norm(None, 1e-5)?));
    run("concat(., index_select)", from_ref(&y), &|v| Var::concat(&[&v[0], &v[0].index_select(&ids, 0)?], 0));
    run("stack(., conv2d)", &[img.clone(), ker], &|v| {
        let c = |v: &[Var<B>]| v[0].conv2d(&v[1], &Conv2dParams::default());
        second(c(v)?.exp()?, c(v)?)
    });
    run("stack(., max_pool2d)", from_ref(&img), &|v| second(v[0].max_pool2d(&pool)?.exp()?, v[0].max_pool2d(&pool)?));
    run("stack(., avg_pool2d)", from_ref(&img), &|v| second(v[0].avg_pool2d(&pool)?.exp()?, v[0].avg_pool2d(&pool)?));
    run("stack(., upsample)", &[img], &|v| second(v[0].exp()?, v[0].upsample_nearest2d((1, 1))?));
    assert!(failed.is_empty(), "{} of 10 failed:\n{}", failed.len(), failed.join("\n"));
}
