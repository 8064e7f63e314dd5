//! Backward passes against independent references, on every backend: the explicit softmax
//! Jacobian (along the last and the first axis), the cross-entropy formula (ignoring a class, a
//! sentinel, or nothing), fused ops (SwiGLU, conv bias + SiLU, RMS norm, layer norm) against the
//! same functions composed from primitives, and tensors with zero-size axes. Helpers and
//! case counts (`ELA_PROPTEST_CASES`) as in `autograd_gradcheck.rs`.

mod autograd_common;

use std::slice::from_ref;

use autograd_common::*;
use ela_autograd::Var;
use ela_core::{Backend, Conv2dParams, Pool2dParams};
use ela_tests::{device_proptest, device_tests};
use proptest::collection::vec;
use proptest::prelude::*;

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

    /// The packed SwiGLU gate of `x [.., 2h] = [gate | up]`: gradients against central
    /// differences, and value and gradient equal to [`Var::swiglu`] on the two halves (narrowed
    /// views: the same element formulas, so the same bits), for contiguous and strided inputs.
    fn swiglu_packed_matches_its_halves<B: Backend>(
        dev: &B,
        ins in dims(1..=3, 4).prop_flat_map(|mut d| {
            let h = *d.last().unwrap();
            let mut gd = d.clone();
            *d.last_mut().unwrap() = 2 * h;
            *gd.last_mut().unwrap() = h;
            inputs_m(vec![d, gd], Vals::Normal, &[0, 3])
        }),
    ) {
        check(dev, "swiglu_packed", &ins[..1], |v| v[0].swiglu_packed())?;
        let p = Var::param(ins[0].tensor(dev));
        let x = ins[0].view(&p)?;
        let (last, h) = (x.rank() - 1, ins[1].dims[ins[1].dims.len() - 1]);
        let g = ins[1].view(&Var::constant(ins[1].tensor(dev)))?.value();
        let packed = x.swiglu_packed()?;
        let halves = x.narrow(last, 0, h)?.swiglu(&x.narrow(last, h, h)?)?;
        let (gp, gh) = (packed.backward_with(g.clone())?, halves.backward_with(g)?);
        prop_assert_eq!(packed.value().to_vec::<f64>()?, halves.value().to_vec::<f64>()?);
        prop_assert_eq!(gp.get(&p).unwrap().to_vec::<f64>()?, gh.get(&p).unwrap().to_vec::<f64>()?);
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
        let (gf, gc) = (fused.backward_with(g.clone())?, composed.backward_with(g.clone())?);
        prop_assert!(fused.value().all_close(&composed.value(), 1e-12, 1e-12)?);
        for v in [&x, &w] {
            prop_assert!(gf.get(v).unwrap().all_close(gc.get(v).unwrap(), 1e-10, 1e-12)?);
        }
        // A pre-norm residual, `x + rms_norm(x)`: the skip's gradient of x is folded into the
        // norm's backward kernel.
        let (fused, composed) = (x.add(&fused)?, x.add(&composed)?);
        let (gf, gc) = (fused.backward_with(g.clone())?, composed.backward_with(g)?);
        for v in [&x, &w] {
            prop_assert!(gf.get(v).unwrap().all_close(gc.get(v).unwrap(), 1e-10, 1e-12)?);
        }
    }
}

device_proptest! {
    #![proptest_config(cfg())]

    /// The fused layer-norm backward equals the backward of the same function built from
    /// primitives, `(x - mean) / sqrt(var + eps) * w + b` (biased variance), with and without
    /// the weight and the bias.
    fn layer_norm_matches_composed<B: Backend>(
        dev: &B,
        ins in dims(1..=3, 5).prop_flat_map(|d| {
            let n = *d.last().unwrap();
            inputs_m(vec![d.clone(), vec![n], vec![n], d], Vals::Normal, &[0])
        }),
    ) {
        let (x, w, b) = (Var::param(ins[0].tensor(dev)), Var::param(ins[1].tensor(dev)), Var::param(ins[2].tensor(dev)));
        let g = ins[3].tensor(dev);
        let r = x.rank() - 1;
        let centred = x.sub(&x.mean(r, true)?)?;
        let normed = centred.div(&centred.square()?.mean(r, true)?.add_scalar(1e-5)?.sqrt()?)?;
        for (with_w, with_b) in [(true, true), (true, false), (false, true), (false, false)] {
            let (wo, bo) = (with_w.then_some(&w), with_b.then_some(&b));
            let fused = x.layer_norm(wo, bo, 1e-5)?;
            let mut composed = normed.clone();
            if with_w {
                composed = composed.mul(&w)?;
            }
            if with_b {
                composed = composed.add(&b)?;
            }
            let (gf, gc) = (fused.backward_with(g.clone())?, composed.backward_with(g.clone())?);
            prop_assert!(fused.value().all_close(&composed.value(), 1e-10, 1e-12)?, "w={} b={}", with_w, with_b);
            let used: Vec<&Var<B>> = [Some(&x), wo, bo].into_iter().flatten().collect();
            for v in used {
                prop_assert!(gf.get(v).unwrap().all_close(gc.get(v).unwrap(), 1e-9, 1e-12)?, "w={} b={}", with_w, with_b);
            }
        }
    }

    /// The mean cross-entropy formula of `cross_entropy_matches_formula` without an ignored
    /// class and with an out-of-range sentinel (u32::MAX, never a class): every row counts, and
    /// the sentinel's rows get no gradient.
    fn cross_entropy_without_and_with_a_sentinel<B: Backend>(
        dev: &B,
        (x, t, dropped) in (1..=4usize, 2..=5usize).prop_flat_map(|(r, c)| {
            (vec(-3.0f64..3.0, r * c), vec(0..c as u32, r), vec(any::<bool>(), r))
        }),
    ) {
        let (rows, c) = (t.len(), x.len() / t.len());
        let with_sentinel: Vec<u32> = t.iter().zip(&dropped).map(|(&k, &d)| if d { u32::MAX } else { k }).collect();
        for (targets, ignore) in [(t.clone(), None), (with_sentinel, Some(u32::MAX))] {
            let xv = Var::param(tensor(dev, &[rows, c], x.clone()));
            let loss = xv.cross_entropy(&u32s(dev, &[rows], targets.clone()), ignore)?;
            let dx = loss.backward()?.get(&xv).unwrap().to_vec::<f64>()?;
            let counted = targets.iter().filter(|&&k| Some(k) != ignore).count().max(1) as f64;
            for r in 0..rows {
                let row = &x[r * c..(r + 1) * c];
                let z: f64 = row.iter().map(|v| v.exp()).sum();
                for k in 0..c {
                    let want = if Some(targets[r]) == ignore {
                        0.0
                    } else {
                        (row[k].exp() / z - (k as u32 == targets[r]) as u8 as f64) / counted
                    };
                    prop_assert!((dx[r * c + k] - want).abs() <= 1e-12, "ignore {:?} row {} class {}", ignore, r, k);
                }
            }
        }
    }

    /// The softmax Jacobian along axis 0 of a matrix (the path that moves the axis last and back):
    /// column `j` of `x [n, m]` gets `J_j^T g_j` with `J_j = diag(y_j) - y_j y_j^T`.
    fn softmax_along_the_first_axis_matches_explicit_jacobian<B: Backend>(
        dev: &B,
        (n, m, x, g) in (1..=4usize, 1..=3usize).prop_flat_map(|(n, m)| {
            (Just(n), Just(m), vec(-3.0f64..3.0, n * m), vec(-1.0f64..1.0, n * m))
        }),
    ) {
        let xv = Var::param(tensor(dev, &[n, m], x.clone()));
        let dx = xv.softmax(0)?.backward_with(tensor(dev, &[n, m], g.clone()))?.get(&xv).unwrap().to_vec::<f64>()?;
        for col in 0..m {
            let xs: Vec<f64> = (0..n).map(|i| x[i * m + col]).collect();
            let mx = xs.iter().fold(f64::MIN, |a, &b| a.max(b));
            let z: f64 = xs.iter().map(|v| (v - mx).exp()).sum();
            let y: Vec<f64> = xs.iter().map(|v| (v - mx).exp() / z).collect();
            for j in 0..n {
                let want: f64 = (0..n).map(|i| y[i] * ((i == j) as u8 as f64 - y[j]) * g[i * m + col]).sum();
                prop_assert!((dx[j * m + col] - want).abs() <= 1e-12, "column {} row {}: {} vs {}", col, j, dx[j * m + col], want);
            }
        }
    }
}

// ------------------------------------------------------------------------------ empty tensors

device_proptest! {
    #![proptest_config(cfg())]

    /// A zero-size leading axis: no rows to differentiate, but the other operands must still get
    /// exact (zero or partial) gradients (checked against finite differences) and nothing may fail.
    fn empty_leading_axis<B: Backend>(
        dev: &B,
        ins in (1..=3usize, 1..=3usize).prop_flat_map(|(k, n)| { inputs_m(vec![vec![0, k], vec![k], vec![k, n], vec![2, k], vec![0, k, 2, 2], vec![n, k, 1, 2]], Vals::Normal, &[0]) }),
    ) {
        let (x, b, w, y, img, ker) = (&ins[0], &ins[1], &ins[2], &ins[3], &ins[4], &ins[5]);
        let none = u32s(dev, &[0], vec![]);
        // Ops of the empty operand alone have nothing to compare numerically: they must run
        // forward and backward and give an empty gradient of the operand's shape.
        let empty_grad = |name: &str, f: &dyn Fn(&Var<B>) -> ela_core::Result<Var<B>>| -> ela_core::Result<()> {
            let xv = Var::param(x.tensor(dev));
            let grads = f(&xv)?.sum_all()?.backward()?;
            let g = grads.get(&xv).unwrap_or_else(|| panic!("{name}: no gradient for the empty operand"));
            assert_eq!(g.dims(), xv.dims(), "{name}: gradient shape");
            Ok(())
        };
        empty_grad("exp", &|v| v.exp())?;
        empty_grad("sum over the empty axis", &|v| v.sum(0, false))?;
        empty_grad("sum_all", &|v| v.sum_all())?;
        empty_grad("softmax", &|v| v.softmax(1))?;
        empty_grad("cross_entropy", &|v| v.cross_entropy(&none, None))?;
        check(dev, "add broadcast", &[x.clone(), b.clone()], |v| v[0].add(&v[1]))?;
        check(dev, "layer_norm", &[x.clone(), b.clone()], |v| v[0].layer_norm(Some(&v[1]), None, 1e-5))?;
        check(dev, "matmul", &[x.clone(), w.clone()], |v| v[0].matmul(&v[1]))?;
        check(dev, "concat", &[x.clone(), y.clone()], |v| Var::concat(&[&v[0], &v[1]], 0))?;
        check(dev, "index_select", from_ref(w), |v| v[0].index_select(&none, 0))?;
        check(dev, "embedding", from_ref(w), |v| v[0].embedding(&none))?;
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

/// GELU's and SiLU's derivative ops have no backward of their own (no second derivatives): a
/// graph through them is an error naming the op, not a wrong gradient.
#[test]
fn second_derivatives_of_gelu_and_silu_are_refused() {
    let dev = ela_core::Cpu;
    for op in [ela_core::UnaryOp::GeluGrad, ela_core::UnaryOp::SiluGrad] {
        let x = Var::param(tensor(&dev, &[3], vec![-1.0, 0.5, 2.0]));
        let Err(e) = x.unary(op).unwrap().sum_all().unwrap().backward() else {
            panic!("{}: backward succeeded", op.name())
        };
        let e = e.to_string();
        assert!(e.contains(op.name()) && e.contains("second derivatives"), "{e}");
    }
}
