//! Graph semantics of `ela_autograd`: gradient accumulation, constants and detached vars,
//! `no_grad`, seeds of `backward`/`backward_with`, `set_value`, very deep graphs, and that
//! `gradcheck` itself catches a wrong backward.

use std::sync::{Arc, Mutex};

use ela_autograd::{gradcheck, is_grad_enabled, no_grad, GradcheckOptions, NoGradGuard, Var};
use ela_core::{Cpu, DType, Error, Result, Tensor};

type V = Var<Cpu>;

fn t(data: &[f64], dims: &[usize]) -> Tensor<Cpu> {
    Tensor::from_vec(data.to_vec(), dims.to_vec(), &Cpu).unwrap()
}

fn vals(x: &Tensor<Cpu>) -> Vec<f64> {
    x.to_vec::<f64>().unwrap()
}

fn assert_close(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-12 * (1.0 + w.abs()), "element {i}: got {g}, want {w}");
    }
}

const X: [f64; 4] = [0.5, -1.25, 2.0, 0.1];

// ------------------------------------------------------------------------------ accumulation

#[test]
fn var_used_twice_in_one_op_gets_both_contributions() -> Result<()> {
    let x = V::param(t(&X, &[4]));
    let g = x.mul(&x)?.sum_all()?.backward()?;
    assert_close(&vals(g.get(&x).unwrap()), &X.map(|v| 2.0 * v));
    Ok(())
}

#[test]
fn var_used_in_two_branches_sums_them() -> Result<()> {
    let x = V::param(t(&X, &[4]));
    // y = sum(exp(x) + 3 x): dy/dx = exp(x) + 3.
    let g = x.exp()?.add(&x.mul_scalar(3.0)?)?.sum_all()?.backward()?;
    assert_close(&vals(g.get(&x).unwrap()), &X.map(|v| v.exp() + 3.0));
    Ok(())
}

#[test]
fn diamond_graph_processes_the_shared_node_once_with_the_summed_gradient() -> Result<()> {
    // a = 2x feeds two branches, b = exp(a) and c = a^2, which meet again in y = sum(b * c).
    // dy/da = exp(a) a^2 + exp(a) 2a; dy/dx = 2 dy/da. A shared node processed before both of
    // its consumers, or twice, would give a different result.
    let x = V::param(t(&X, &[4]));
    let a = x.mul_scalar(2.0)?;
    let y = a.exp()?.mul(&a.square()?)?.sum_all()?;
    let g = y.backward()?;
    let want = X.map(|v| {
        let a: f64 = 2.0 * v;
        2.0 * (a.exp() * a * a + a.exp() * 2.0 * a)
    });
    assert_close(&vals(g.get(&x).unwrap()), &want);
    // Only leaves are returned: the intermediate gradients were freed on the way.
    assert_eq!(g.len(), 1);
    Ok(())
}

// ---------------------------------------------------------------------- windows (narrow)

/// `x [rows, cols]` of distinct values, and the weights `w` of a loss `sum(w * piece)` per piece,
/// so every gradient element is known exactly.
fn grid(rows: usize, cols: usize, seed: f64) -> Tensor<Cpu> {
    let data: Vec<f64> = (0..rows * cols).map(|i| seed + 0.25 * i as f64).collect();
    t(&data, &[rows, cols])
}

/// The gradient `narrow` pieces of `x` should get, computed by the zero-padding adjoint
/// written out element by element: `pieces` are `(axis, start, len, weights)`.
fn window_grad_reference(dims: [usize; 2], pieces: &[(usize, usize, usize, &Tensor<Cpu>)]) -> Vec<f64> {
    let mut want = vec![0.0; dims[0] * dims[1]];
    for &(axis, start, len, w) in pieces {
        let (wv, wcols) = (vals(w), if axis == 0 { dims[1] } else { len });
        for r in 0..dims[0] {
            for c in 0..dims[1] {
                let i = if axis == 0 { r } else { c };
                if (start..start + len).contains(&i) {
                    let (wr, wc) = if axis == 0 { (r - start, c) } else { (r, c - start) };
                    want[r * dims[1] + c] += wv[wr * wcols + wc];
                }
            }
        }
    }
    want
}

/// A narrow: `(axis, start, len)`.
type Window = (usize, usize, usize);

#[test]
fn narrowed_windows_get_their_gradients_placed_side_by_side_with_gaps_and_overlaps() -> Result<()> {
    // Each case: the windows `(axis, start, len)` a [4, 6] parameter is narrowed into, each
    // weighted by its own values in the loss; plus, optionally, the whole parameter. Covers
    // a full split (the fused q/k/v case), gaps (zeros), unsorted order, a window used twice,
    // overlapping windows and mixed axes (the padding fallback), an empty window, a single
    // window covering everything, and a whole-shape contribution beside the windows.
    let cases: &[(&[Window], bool)] = &[
        (&[(1, 0, 2), (1, 2, 2), (1, 4, 2)], false),
        (&[(1, 4, 2), (1, 0, 1)], false),
        (&[(0, 3, 1), (0, 0, 2)], true),
        (&[(1, 1, 3), (1, 1, 3)], false),
        (&[(1, 0, 4), (1, 2, 4)], false),
        (&[(0, 1, 2), (1, 2, 3)], true),
        (&[(1, 3, 0), (1, 0, 6)], false),
        (&[(0, 0, 4)], false),
        (&[(1, 2, 0)], false),
    ];
    for (case, &(windows, whole)) in cases.iter().enumerate() {
        let x = V::param(grid(4, 6, 1.0));
        let mut loss = V::constant(t(&[0.0], &[]));
        let mut pieces = Vec::new();
        let weights: Vec<Tensor<Cpu>> = windows
            .iter()
            .enumerate()
            .map(|(i, &(axis, _, len))| {
                let dims = if axis == 0 { [len, 6] } else { [4, len] };
                grid(dims[0], dims[1], 0.5 + i as f64)
            })
            .collect();
        for (&(axis, start, len), w) in windows.iter().zip(&weights) {
            let piece = x.narrow(axis, start, len)?;
            loss = loss.add(&piece.mul(&V::constant(w.clone()))?.sum_all()?)?;
            pieces.push((axis, start, len, w));
        }
        if whole {
            loss = loss.add(&x.sum_all()?)?;
        }
        let g = loss.backward()?;
        let mut want = window_grad_reference([4, 6], &pieces);
        if whole {
            want.iter_mut().for_each(|w| *w += 1.0);
        }
        let got = g.get(&x).unwrap_or_else(|| panic!("case {case}: no gradient"));
        assert_eq!(got.dims(), [4, 6], "case {case}");
        assert_close(&vals(got), &want);
    }
    Ok(())
}

#[test]
fn windows_of_an_interior_var_flow_on_and_hooks_see_the_placed_gradient() -> Result<()> {
    // x -> a = 3x (interior) -> three column windows, only two used; the hook must see the
    // leaf's final gradient with the unused window's zeros in place.
    let x = V::param(grid(2, 6, 0.0));
    let a = x.mul_scalar(3.0)?;
    let parts = a.split(2, 1usize)?;
    let loss = parts[0].square()?.sum_all()?.add(&parts[2].sum_all()?)?;
    let mut seen = Vec::new();
    let g = loss.backward_with_hook(&mut |v, g| {
        seen.push((v.id(), vals(g)));
        Ok(())
    })?;
    let xv = vals(&x.value());
    let want: Vec<f64> = (0..12)
        .map(|i| match i % 6 {
            0 | 1 => 3.0 * 2.0 * (3.0 * xv[i]),
            4 | 5 => 3.0,
            _ => 0.0,
        })
        .collect();
    assert_close(&vals(g.get(&x).unwrap()), &want);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, x.id());
    assert_close(&seen[0].1, &want);
    Ok(())
}

#[test]
fn windows_pass_gradcheck_through_split_and_chunk() -> Result<()> {
    let x = Tensor::randn(0.0, 1.0, [3, 7], DType::F64, &mut ela_core::Rng::new(7), &Cpu)?;
    let f = |v: &[V]| -> Result<V> {
        let s = v[0].split(3, 1usize)?;
        let c = v[0].chunk(2, 0usize)?;
        s[0].tanh()?.sum_all()?.add(&s[2].square()?.sum_all()?)?.add(&c[1].exp()?.sum_all()?)
    };
    let r = gradcheck(f, &[x], GradcheckOptions::default())?;
    assert!(r.passed, "{r}");
    Ok(())
}

#[test]
fn backward_can_run_twice_on_the_same_graph() -> Result<()> {
    let x = V::param(t(&X, &[2, 2]));
    let y = x.matmul(&x)?.sum_all()?;
    let (g1, g2) = (y.backward()?, y.backward()?);
    assert_eq!(vals(g1.get(&x).unwrap()), vals(g2.get(&x).unwrap()));
    Ok(())
}

// ------------------------------------------------------------------------------ constants

#[test]
fn constants_and_detached_vars_get_no_gradient() -> Result<()> {
    let x = V::param(t(&X, &[4]));
    let c = V::constant(t(&[1.0, 2.0, 3.0, 4.0], &[4]));
    let d = x.detach();
    assert!(d.is_leaf() && !d.requires_grad() && !c.requires_grad());
    // y = sum(x * c * detach(x)): the detached factor is a constant, so dy/dx = c * x, not 2 c x.
    let g = x.mul(&c)?.mul(&d)?.sum_all()?.backward()?;
    assert!(g.get(&c).is_none() && g.get(&d).is_none());
    assert_eq!(g.len(), 1);
    assert_close(&vals(g.get(&x).unwrap()), &[0.5, -2.5, 6.0, 0.4]);
    Ok(())
}

#[test]
fn ops_on_constants_only_record_nothing() -> Result<()> {
    let c = V::constant(t(&X, &[4]));
    let y = c.exp()?.sum_all()?;
    assert!(y.is_leaf() && !y.requires_grad());
    assert_eq!(y.op_name(), "leaf");
    assert!(y.backward()?.is_empty());
    Ok(())
}

#[test]
fn backward_tells_each_op_which_inputs_need_a_gradient() -> Result<()> {
    let (p, c) = (V::param(t(&X, &[4])), V::constant(t(&X, &[4])));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let y = Var::record("probe", p.value().add(&c.value())?, &[&p, &c], move |g, needs| {
        s.lock().unwrap().push(needs.to_vec());
        Ok(vec![Some(g.clone()), None])
    })?;
    assert_eq!(y.op_name(), "probe");
    y.sum_all()?.backward()?;
    assert_eq!(*seen.lock().unwrap(), vec![vec![true, false]]);
    // With only constant inputs the closure is dropped unused and the result is a constant.
    let s = seen.clone();
    let z = Var::record("probe", c.value(), &[&c], move |g, needs| {
        s.lock().unwrap().push(needs.to_vec());
        Ok(vec![Some(g.clone())])
    })?;
    assert!(z.is_leaf() && !z.requires_grad());
    Ok(())
}

// ------------------------------------------------------------------------------ no_grad

#[test]
fn no_grad_records_nothing_and_restores_the_mode() -> Result<()> {
    let x = V::param(t(&X, &[4]));
    assert!(is_grad_enabled());
    let y = no_grad(|| x.mul(&x))?;
    assert!(y.is_leaf() && !y.requires_grad());
    assert!(is_grad_enabled());
    {
        let _outer = NoGradGuard::new();
        {
            let _inner = NoGradGuard::new();
            assert!(!is_grad_enabled());
        }
        // Dropping the inner guard restores the mode it found: still disabled.
        assert!(!is_grad_enabled());
        assert!(x.exp()?.is_leaf());
        // The mode is per thread: another thread still records.
        let xs = x.clone();
        let other = std::thread::spawn(move || xs.exp().map(|y| (is_grad_enabled(), y.is_leaf()))).join().unwrap()?;
        assert_eq!(other, (true, false));
    }
    assert!(is_grad_enabled());
    assert!(!x.exp()?.is_leaf());
    Ok(())
}

// ------------------------------------------------------------------------------ seeds

#[test]
fn backward_on_a_non_scalar_is_a_typed_error_naming_the_shape() -> Result<()> {
    let x = V::param(t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]));
    let y = x.mul_scalar(2.0)?;
    match y.backward() {
        Err(e @ Error::InvalidArgument { op: "backward", .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("[2, 3]") && msg.contains("backward_with"), "{msg}");
        }
        other => panic!("expected InvalidArgument, got {:?}", other.map(|g| g.len())),
    }
    let g = y.backward_with(t(&[1.0; 6], &[2, 3]))?;
    assert_eq!(vals(g.get(&x).unwrap()), vec![2.0; 6]);
    assert!(matches!(y.backward_with(t(&[1.0; 6], &[3, 2])), Err(Error::ShapeMismatch { op: "backward_with", .. })));
    // Any one-element output is a valid loss, whatever its rank.
    let g = x.sum_all()?.reshape([1, 1])?.backward()?;
    assert_eq!(vals(g.get(&x).unwrap()), vec![1.0; 6]);
    Ok(())
}

// ------------------------------------------------------------------------------ set_value

#[test]
fn set_value_keeps_shape_and_dtype_and_only_applies_to_leaves() -> Result<()> {
    let x = V::param(t(&X, &[4]));
    // A graph captures the values it was built from.
    let y = x.square()?.sum_all()?;
    x.set_value(t(&[1.0, 1.0, 1.0, 1.0], &[4]))?;
    assert_eq!(vals(&x.value()), vec![1.0; 4]);
    assert_close(&vals(y.backward()?.get(&x).unwrap()), &X.map(|v| 2.0 * v));
    // A graph built afterwards sees the new value.
    assert_eq!(vals(x.square()?.sum_all()?.backward()?.get(&x).unwrap()), vec![2.0; 4]);

    let shape = x.set_value(t(&[1.0, 2.0], &[2])).unwrap_err();
    assert!(matches!(shape, Error::ShapeMismatch { op: "set_value", .. }), "{shape}");
    let dtype = x.set_value(t(&X, &[4]).to_dtype(DType::F32)?).unwrap_err();
    assert!(matches!(dtype, Error::DTypeMismatch { op: "set_value", .. }), "{dtype}");
    assert!(!dtype.to_string().contains("shape mismatch"), "{dtype}");
    assert_eq!(vals(&x.value()), vec![1.0; 4], "a rejected set_value must not change the value");
    let interior = y.set_value(Tensor::scalar(0.0, DType::F64, &Cpu)?).unwrap_err();
    assert!(matches!(interior, Error::InvalidArgument { op: "set_value", .. }));
    Ok(())
}

// ------------------------------------------------------------------------------ deep graphs

#[test]
fn a_chain_of_100k_ops_backpropagates_and_drops_without_stack_overflow() -> Result<()> {
    const N: usize = 100_000;
    let x = V::param(t(&[0.5, -2.0], &[2]));
    let mut y = x.clone();
    for i in 0..N {
        // Alternate ops so the chain is not one repeated node kind; each multiplies by 1 + 1e-5.
        y = if i % 2 == 0 { y.add_scalar(0.25)? } else { y.mul_scalar(1.0 + 1e-5)? };
    }
    let g = y.sum_all()?.backward()?;
    let want = (1.0f64 + 1e-5).powi((N / 2) as i32);
    for v in vals(g.get(&x).unwrap()) {
        assert!((v - want).abs() < 1e-9 * want, "{v} vs {want}");
    }
    drop(g);
    // Dropping the last handle frees 100k nodes iteratively (a recursive drop would overflow).
    drop(y);
    // And a deep graph that never ran backward.
    let mut z = x.clone();
    for _ in 0..N {
        z = z.neg()?;
    }
    drop(z);
    Ok(())
}

// ------------------------------------------------------------------------------ gradcheck

/// `x^2` whose backward is `2 x * factor`.
fn planted_square(x: &V, factor: f64) -> Result<V> {
    let xv = x.value();
    Var::record("planted_square", xv.square()?, &[x], move |g, _| Ok(vec![Some(g.mul(&xv.mul_scalar(2.0 * factor)?)?)]))
}

#[test]
fn gradcheck_detects_a_planted_wrong_gradient() -> Result<()> {
    let (a, b) = (t(&X, &[4]), t(&[0.3, 0.7, -0.4, 1.1], &[4]));
    let opts = GradcheckOptions::default();
    let ok = gradcheck(|v: &[V]| planted_square(&v[0], 1.0)?.mul(&v[1]), &[a.clone(), b.clone()], opts)?;
    assert!(ok.passed, "{ok}");
    assert_eq!(ok.checked, 8);
    // Off by 1% on the second input only: the report must fail and point there.
    let bad = gradcheck(|v: &[V]| v[0].mul(&planted_square(&v[1], 1.01)?), &[a, b], opts)?;
    assert!(!bad.passed, "{bad}");
    let (input, _, analytic, numeric) = bad.worst.unwrap();
    assert_eq!(input, 1);
    assert!((analytic / numeric - 1.01).abs() < 1e-6, "{bad}");
    assert!(bad.max_rel_err > 5e-3 && bad.to_string().contains("FAILED"));
    Ok(())
}

#[test]
fn gradcheck_rejects_non_f64_inputs() {
    let x = t(&X, &[4]).to_dtype(DType::F32).unwrap();
    let r = gradcheck(|v: &[V]| v[0].exp(), &[x], GradcheckOptions::default());
    assert!(matches!(r, Err(Error::UnsupportedDType { op: "gradcheck", dtype: DType::F32, .. })));
}

#[test]
fn vars_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<V>();
}

/// A custom op whose backward returns a gradient of the wrong shape is an error naming the op,
/// in release builds too (not a silent broadcast or a failure in a later op).
#[test]
fn a_backward_of_the_wrong_shape_is_an_error_naming_the_op() {
    let x = V::param(t(&X, &[4]));
    let y = V::record("shrinking", x.value().exp().unwrap(), &[&x], |g, _| Ok(vec![Some(g.narrow(0, 0, 2)?)])).unwrap();
    let Err(e) = y.sum_all().unwrap().backward() else { panic!("a wrong-shaped gradient was accepted") };
    let e = e.to_string();
    assert!(e.contains("shrinking") && e.contains("wrong shape"), "{e}");
}
