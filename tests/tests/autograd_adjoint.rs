//! The backward of every linear op is its forward's adjoint, on every backend: for `y = L(x)`
//! and any upstream `g`, `<L(x), g> = <x, L^T g>`, where `L^T g` is what the backward returns
//! (summed over the inputs for ops linear in several, such as `concat` and `scatter_add`). A
//! backward that routes one element's gradient to the wrong place, drops one or counts it twice
//! breaks the identity for almost every `g`; the forwards themselves are checked against host
//! references in the `core_forward_*` tests. Convolutions are linear in the input for a fixed
//! weight and in the weight for a fixed input, so both of their backward products are checked
//! this way too. All in f64, to 1e-12 relative.

mod autograd_common;

use autograd_common::*;
use ela_autograd::Var;
use ela_core::{Backend, Conv2dParams, DType, Pool2dParams, Rng, Tensor};
use ela_tests::device_proptest;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

/// A random f64 tensor of `dims` drawn on the host from `seed` (the same values on every device).
fn randn<B: Backend>(dev: &B, dims: &[usize], seed: u64) -> Tensor<B> {
    Tensor::randn(0.0, 1.0, dims.to_vec(), DType::F64, &mut Rng::new(seed), dev).unwrap()
}

fn dot(a: &Tensor<impl Backend>, b: &Tensor<impl Backend>) -> (f64, f64) {
    let (a, b) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
    assert_eq!(a.len(), b.len());
    a.iter().zip(&b).fold((0.0, 0.0), |(s, m), (x, y)| (s + x * y, m + (x * y).abs()))
}

/// Checks `<f(x), g> = sum_k <x_k, dx_k>` for inputs `xs` (all differentiated) and a random `g`.
fn adjoint<B: Backend>(
    dev: &B,
    name: &str,
    xs: &[Tensor<B>],
    seed: u64,
    f: impl Fn(&[Var<B>]) -> ela_core::Result<Var<B>>,
) -> Result<(), TestCaseError> {
    let vars: Vec<Var<B>> = xs.iter().map(|x| Var::param(x.clone())).collect();
    let y = f(&vars).map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
    let g = randn(dev, &y.dims(), seed ^ 0xad70);
    let (lhs, scale) = dot(&y.value(), &g);
    let grads = y.backward_with(g).map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
    let mut rhs = 0.0;
    let mut scale2 = 0.0;
    for v in &vars {
        if let Some(dx) = grads.get(v) {
            let (s, m) = dot(&v.value(), dx);
            rhs += s;
            scale2 += m;
        }
    }
    let tol = 1e-12 * (1.0 + scale.max(scale2));
    prop_assert!((lhs - rhs).abs() <= tol, "{}: <L x, g> = {:e} but <x, L^T g> = {:e}", name, lhs, rhs);
    Ok(())
}

device_proptest! {
    #![proptest_config(cfg())]

    /// Shape ops, reductions and scans along any axis.
    fn shape_and_reduction_ops_are_adjoint<B: Backend>(
        dev: &B,
        d in dims(1..=3, 4),
        (ax, ax2, s, l, k) in (any::<Index>(), any::<Index>(), any::<Index>(), any::<Index>(), 1..=3usize),
        pads in vec((0..=2usize, 0..=2usize), 3),
        seed in any::<u64>(),
    ) {
        let r = d.len();
        let (a, b) = (ax.index(r), ax2.index(r));
        let x = randn(dev, &d, seed);
        let xs = std::slice::from_ref(&x);
        let n: usize = d.iter().product();
        adjoint(dev, "reshape", xs, seed, |v| v[0].reshape([n]))?;
        adjoint(dev, "transpose", xs, seed, |v| v[0].transpose(a, b)?.contiguous())?;
        let perm: Vec<usize> = (0..r).rev().collect();
        adjoint(dev, "permute", xs, seed, |v| v[0].permute(&perm)?.contiguous())?;
        let start = s.index(d[a] + 1);
        let len = l.index(d[a] - start + 1);
        adjoint(dev, "narrow", xs, seed, |v| v[0].narrow(a, start, len)?.contiguous())?;
        adjoint(dev, "split + concat", xs, seed, |v| {
            let parts = v[0].split(k, a)?;
            Var::concat(&parts.iter().rev().collect::<Vec<_>>(), a)
        })?;
        adjoint(dev, "unsqueeze", xs, seed, |v| v[0].unsqueeze(a)?.contiguous())?;
        adjoint(dev, "pad (zeros)", xs, seed, |v| v[0].pad(&pads[..r], 0.0))?;
        let mut big = vec![2];
        big.extend(&d);
        adjoint(dev, "broadcast_as", xs, seed, |v| v[0].broadcast_as(big.clone())?.contiguous())?;
        let mut to = d.clone();
        to[a] = 1;
        adjoint(dev, "sum_to", xs, seed, |v| v[0].sum_to(&to.clone().into()))?;
        adjoint(dev, "sum", xs, seed, |v| v[0].sum(a, false))?;
        adjoint(dev, "mean", xs, seed, |v| v[0].mean(a, true))?;
        for (exclusive, reverse) in [(false, false), (true, false), (false, true), (true, true)] {
            adjoint(dev, &format!("cumsum exclusive={exclusive} reverse={reverse}"), xs, seed, |v| {
                v[0].cumsum(a, exclusive, reverse)
            })?;
        }
        let y = randn(dev, &d, seed ^ 1);
        adjoint(dev, "concat", &[x.clone(), y.clone()], seed, |v| Var::concat(&[&v[0], &v[1]], a))?;
        adjoint(dev, "stack", &[x.clone(), y], seed, |v| Var::stack(&[&v[0], &v[1]], b))?;
    }

    /// Indexing ops, with repeated ids: `index_select`, `index_add`, `embedding`, `gather`, and
    /// `scatter_add`, which is linear in its base and its source together.
    fn indexing_ops_are_adjoint<B: Backend>(
        dev: &B,
        d in dims(1..=3, 4),
        ax in any::<Index>(),
        (m, raw) in (1..=5usize, vec(any::<Index>(), 64)),
        seed in any::<u64>(),
    ) {
        let r = d.len();
        let a = ax.index(r);
        let x = randn(dev, &d, seed);
        let ids: Vec<u32> = raw[..m].iter().map(|i| i.index(d[a]) as u32).collect();
        let idt = Tensor::from_vec(ids.clone(), [m], dev).unwrap();
        adjoint(dev, "index_select", std::slice::from_ref(&x), seed, |v| v[0].index_select(&idt, a))?;
        let mut src_dims = d.clone();
        src_dims[a] = m;
        let src = randn(dev, &src_dims, seed ^ 2);
        let out: ela_core::Shape = d.clone().into();
        adjoint(dev, "index_add", std::slice::from_ref(&src), seed, |v| v[0].index_add(&idt, a, &out))?;
        // gather / scatter_add: an index per element of a tensor `m` long on axis `a`.
        let count: usize = src_dims.iter().product();
        let per: Vec<u32> = (0..count).map(|i| raw[i % raw.len()].index(d[a]) as u32).collect();
        let pt = Tensor::from_vec(per, src_dims.clone(), dev).unwrap();
        adjoint(dev, "gather", std::slice::from_ref(&x), seed, |v| v[0].gather(&pt, a))?;
        adjoint(dev, "scatter_add", &[x.clone(), src], seed, |v| v[0].scatter_add(&pt, &v[1], a))?;
        let table = randn(dev, &[d[0], 3], seed ^ 3);
        let eids = Tensor::from_vec(ids.iter().map(|&i| i % d[0] as u32).collect::<Vec<u32>>(), [m], dev).unwrap();
        adjoint(dev, "embedding", &[table], seed, |v| v[0].embedding(&eids))?;
    }

    /// Convolution in its input (weight fixed) and in its weight (input fixed), with stride,
    /// padding, dilation and groups; average pooling and nearest upsampling.
    fn convolution_and_pooling_are_adjoint<B: Backend>(
        dev: &B,
        (n, groups, cin_g, cout_g) in (1..=2usize, 1..=2usize, 1..=2usize, 1..=2usize),
        (h, w, kh, kw) in (3..=6usize, 3..=6usize, 1..=3usize, 1..=3usize),
        (stride, pad, dil) in (1..=2usize, 0..=1usize, 1..=2usize),
        seed in any::<u64>(),
    ) {
        let (cin, cout) = (groups * cin_g, groups * cout_g);
        let x = randn(dev, &[n, cin, h, w], seed);
        let wt = randn(dev, &[cout, cin_g, kh, kw], seed ^ 4);
        let p = Conv2dParams { stride: (stride, stride), padding: (pad, pad), dilation: (dil, dil), groups };
        // Skip geometries with no output.
        prop_assume!(h + 2 * pad > dil * (kh - 1) && w + 2 * pad > dil * (kw - 1));
        let wc = Var::constant(wt.clone());
        adjoint(dev, "conv2d in x", std::slice::from_ref(&x), seed, |v| v[0].conv2d(&wc, &p))?;
        let xc = Var::constant(x.clone());
        adjoint(dev, "conv2d in w", &[wt], seed, |v| xc.conv2d(&v[0], &p))?;
        let (kp, sp) = (kh.min(h), stride);
        for include in [true, false] {
            let pp = Pool2dParams { kernel: (kp, kp.min(w)), stride: (sp, sp), padding: (kp / 2, kp.min(w) / 2), count_include_pad: include };
            adjoint(dev, &format!("avg_pool2d count_include_pad={include}"), std::slice::from_ref(&x), seed, |v| {
                v[0].avg_pool2d(&pp)
            })?;
        }
        adjoint(dev, "upsample_nearest2d", std::slice::from_ref(&x), seed, |v| v[0].upsample_nearest2d((2, 3)))?;
    }
}
