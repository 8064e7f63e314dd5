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
//! Comparisons with independent references (the explicit softmax Jacobian, the cross-entropy
//! formula, fused ops against their composed graphs) and the empty-tensor cases are in
//! `autograd_references.rs`; the helpers both use are in `autograd_common/`.
//! Cases per property: `ELA_PROPTEST_CASES` (default 16).
//!
//! The tolerances are the CPU's on CUDA too: everything is f64, where the GPU's other summation
//! orders (tree reductions, cuBLAS, atomics in index_add/scatter_add) move results by ~1e-16
//! relative, far below the finite differences' own error.

mod autograd_common;

use std::slice::from_ref;

use autograd_common::*;
use ela_autograd::{GradcheckOptions, Var};
use ela_core::{Backend, Conv2dParams, DType, Pool2dParams, Result, Tensor, UnaryOp};
use ela_tests::device_proptest;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

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

    fn to_dtype_bf16<B: Backend>(dev: &B, x in one(0..=3, 3, Vals::Normal)) {
        // The mixed-precision cast. Inputs on a grid of 1/16 in [-2, 2] and a step of 1/16 keep
        // x and x +- eps exact in bf16 (at most 6 significant bits), so the forward is exactly
        // x^2 and the central difference exact; the backward casts the gradient 2 x r to bf16 on
        // its way back (the f64 <- bf16 cast), a relative error of at most 2^-9.
        let x = In { data: x.data.iter().map(|v| (v * 16.0).round() / 16.0).collect(), ..x };
        let opts = GradcheckOptions { eps: 1.0 / 16.0, rtol: 4e-3, atol: 1e-12, seed: 0 };
        check_opts(dev, "to_dtype(bf16)", &[x], opts, |v| v[0].to_dtype(DType::BF16)?.to_dtype(DType::F64)?.square())?;
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

// ------------------------------------------------------------------------------ stacked linear maps

device_proptest! {
    #![proptest_config(cfg())]

    /// `x @ [w_1; w_2; ..]^T` as one node: gradients against central differences (strided
    /// operands included), and value and gradients equal to the product with the weights
    /// concatenated first (`Var::concat`, then `matmul`).
    fn linear_stacked_is_the_product_with_concatenated_weights<B: Backend>(
        dev: &B,
        ins in (1..=4usize, 1..=3usize, vec(1..=3usize, 1..=3)).prop_flat_map(|(rows, k, outs)| {
            let mut ds = vec![vec![rows, k]];
            ds.extend(outs.iter().map(|&o| vec![o, k]));
            inputs_m(ds, Vals::Normal, &[0, 1])
        }),
    ) {
        check(dev, "linear_stacked", &ins, |v| {
            let ws: Vec<&Var<B>> = v[1..].iter().collect();
            v[0].linear_stacked(&ws)
        })?;
        let vars: Vec<Var<B>> = ins.iter().map(|i| Var::param(i.tensor(dev))).collect();
        let views: Vec<Var<B>> = ins.iter().zip(&vars).map(|(i, v)| i.view(v)).collect::<Result<_>>()?;
        let ws: Vec<&Var<B>> = views[1..].iter().collect();
        let y = views[0].linear_stacked(&ws)?;
        let y2 = views[0].matmul(&Var::concat(&ws, 0usize)?.t()?)?;
        let close = |a: &Tensor<B>, b: &Tensor<B>| a.all_close(b, 1e-12, 1e-12);
        prop_assert!(close(&y.value(), &y2.value())?);
        let g = y.value().ones_like()?;
        let (gs, gs2) = (y.backward_with(g.clone())?, y2.backward_with(g)?);
        for v in &vars {
            prop_assert!(close(gs.get(v).unwrap(), gs2.get(v).unwrap())?);
        }
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
        // Windows that may overlap, leave gaps or lie along another axis, beside a whole-shape
        // use: the backward places side-by-side windows with one concat and falls back to
        // padding otherwise (autograd/src/accumulate.rs); every case sums the same adjoints.
        let b = (a + 1) % x.dims.len();
        let (db, sb) = (x.dims[b], s.index(x.dims[b]));
        check(dev, "windows", from_ref(&x), |v| {
            let w1 = v[0].narrow(a, start, len)?.square()?.sum_all()?;
            let w2 = v[0].narrow(b, sb, db - sb)?.tanh()?.sum_all()?;
            let w3 = v[0].narrow(a, 0, d - start)?.mul_scalar(3.0)?.sum_all()?;
            w1.add(&w2)?.add(&w3)?.add(&v[0].exp()?.sum_all()?)
        })?;
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

    fn index_select_add_embedding<B: Backend>(
        dev: &B,
        (x, a, ids, y) in (one(1..=3, 3, Vals::Normal), any::<Index>()).prop_flat_map(|(x, ax)| {
            let a = ax.index(x.dims.len());
            let d = x.dims[a] as u32;
            (Just(x), Just(a), vec(0..d, 1..=5))
        }).prop_flat_map(|(x, a, ids)| {
            // index_add's input: x's shape with `ids.len()` rows along the axis (repeats included).
            let mut ydims = x.dims.clone();
            ydims[a] = ids.len();
            (Just(x), Just(a), Just(ids), input(ydims, Vals::Normal))
        }),
        (table, eids) in (1..=4usize, 1..=3usize, 1..=3usize, 1..=3usize).prop_flat_map(|(vocab, dim, b, t)| {
            (input(vec![vocab, dim], Vals::Normal), vec(0..vocab as u32, b * t).prop_map(move |v| (v, [b, t])))
        }),
    ) {
        let n = ids.len();
        let ids = u32s(dev, &[n], ids);
        let out: ela_core::Shape = x.dims.clone().into();
        check(dev, "index_select", &[x], |v| v[0].index_select(&ids, a))?;
        check(dev, "index_add", &[y], |v| v[0].index_add(&ids, a, &out))?;
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
        ins in dims(1..=3, 4).prop_flat_map(|d| { let n = *d.last().unwrap(); inputs(vec![d, vec![n], vec![n]], Vals::Normal) }),
    ) {
        let (x, w, b) = (&ins[0], &ins[1], &ins[2]);
        check(dev, "rms_norm", from_ref(x), |v| v[0].rms_norm(None, 1e-5))?;
        check(dev, "rms_norm(w)", &[x.clone(), w.clone()], |v| v[0].rms_norm(Some(&v[1]), 1e-5))?;
        // x's other gradients folded into the norm's backward (`Var::record_folding`): a residual
        // sum (contiguous pending gradient), a product with x, and a broadcast one (the pending
        // gradient of a keepdim sum is a broadcast view, which the kernel does not take).
        let last = x.dims.len() - 1;
        check(dev, "x + rms_norm(x, w)", &[x.clone(), w.clone()], |v| v[0].add(&v[0].rms_norm(Some(&v[1]), 1e-5)?))?;
        check(dev, "rms_norm(x) * x", from_ref(x), |v| v[0].rms_norm(None, 1e-5)?.mul(&v[0]))?;
        check(dev, "rms_norm(x, w) + sum(x)", &[x.clone(), w.clone()], |v| {
            v[0].rms_norm(Some(&v[1]), 1e-5)?.add(&v[0].sum(last, true)?)
        })?;
        check(dev, "layer_norm", from_ref(x), |v| v[0].layer_norm(None, None, 1e-5))?;
        check(dev, "layer_norm(w)", &[x.clone(), w.clone()], |v| v[0].layer_norm(Some(&v[1]), None, 1e-5))?;
        check(dev, "layer_norm(b)", &[x.clone(), b.clone()], |v| v[0].layer_norm(None, Some(&v[1]), 1e-5))?;
        check(dev, "layer_norm(w, b)", &ins, |v| v[0].layer_norm(Some(&v[1]), Some(&v[2]), 1e-5))?;
    }

    fn add_rms_norm<B: Backend>(
        dev: &B,
        ins in dims(1..=3, 4).prop_flat_map(|d| { let n = *d.last().unwrap(); inputs(vec![d.clone(), d, vec![n]], Vals::Normal) }),
    ) {
        // The residual sum h and its norm y from one pass: both outputs carry gradient (h on to
        // the next sum, y into the layer), and the gradient of h meets the norm's in x's fold.
        check(dev, "add_rms_norm: h * h + y", &ins, |v| {
            let (h, y) = v[0].add_rms_norm(&v[1], Some(&v[2]), 1e-5)?;
            h.mul(&h)?.add(&y)
        })?;
        check(dev, "add_rms_norm: y only", &ins[..2], |v| Ok(v[0].add_rms_norm(&v[1], None, 1e-5)?.1))?;
    }

    fn cross_entropy<B: Backend>(
        dev: &B,
        (x, raw, dropped) in (1..=4usize, 1..=5usize).prop_flat_map(|(rows, classes)| {
            (input(vec![rows, classes], Vals::Normal), vec(0..classes as u32, rows), vec(any::<bool>(), rows))
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
