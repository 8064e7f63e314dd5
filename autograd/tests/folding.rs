//! `Var::record_folding`: the backward pass hands an op the gradient already summed for one of
//! its inputs, and the op's gradient for that input includes it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ela_autograd::Var;
use ela_core::{Cpu, Tensor};

/// `y = 3 x`, recorded with folding on its one input; counts the calls that got a pending
/// gradient.
fn triple(x: &Var<Cpu>, folded: Arc<AtomicUsize>) -> Var<Cpu> {
    let y = x.value().mul_scalar(3.0).unwrap();
    Var::record_folding("triple", y, &[x], 0, move |g, _, pending| {
        let mut dx = g.mul_scalar(3.0)?;
        if let Some(p) = pending {
            folded.fetch_add(1, Ordering::Relaxed);
            dx = dx.add(&p)?;
        }
        Ok(vec![Some(dx)])
    })
    .unwrap()
}

fn vec_of(t: &Tensor<Cpu>) -> Vec<f64> {
    t.to_vec_f64().unwrap()
}

#[test]
fn the_pending_gradient_is_handed_over_once_and_kept_in_the_sum() {
    let x = Var::param(Tensor::from_vec(vec![1.0f64, -2.0], [2], &Cpu).unwrap());
    let folded = Arc::new(AtomicUsize::new(0));
    // loss = sum(x * 5 + triple(x)): d/dx = 5 + 3. The product is recorded after `triple`, so the
    // backward pass reaches it first and x's gradient from it is pending when `triple` runs.
    let t = triple(&x, folded.clone());
    let loss = x.mul_scalar(5.0).unwrap().add(&t).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    assert_eq!(vec_of(g.get(&x).unwrap()), vec![8.0, 8.0]);
    assert_eq!(folded.load(Ordering::Relaxed), 1, "the product's gradient was folded in");

    // Nothing pending (x's only use): the formula runs with None.
    let folded = Arc::new(AtomicUsize::new(0));
    let g = triple(&x, folded.clone()).sum_all().unwrap().backward().unwrap();
    assert_eq!(vec_of(g.get(&x).unwrap()), vec![3.0, 3.0]);
    assert_eq!(folded.load(Ordering::Relaxed), 0);

    // Three uses, two of them folding: every contribution counted once (3 + 3 + 5).
    let folded = Arc::new(AtomicUsize::new(0));
    let a = triple(&x, folded.clone());
    let b = triple(&x, folded.clone());
    let loss = a.add(&b).unwrap().add(&x.mul_scalar(5.0).unwrap()).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    assert_eq!(vec_of(g.get(&x).unwrap()), vec![11.0, 11.0]);
    assert!(folded.load(Ordering::Relaxed) >= 1);
}

#[test]
fn a_fold_index_past_the_inputs_is_refused() {
    let x = Var::param(Tensor::from_vec(vec![1.0f64], [1], &Cpu).unwrap());
    let e = Var::record_folding("bad", x.value(), &[&x], 1, |g, _, _| Ok(vec![Some(g.clone())])).unwrap_err();
    assert!(e.to_string().contains("fold names input 1"), "{e}");
}

#[test]
fn a_pending_gradient_is_kept_when_the_formula_returns_none_for_its_input() {
    let x = Var::param(Tensor::from_vec(vec![2.0f64], [1], &Cpu).unwrap());
    // `stop(x) = x` whose formula (wrongly for a folding op, but it must not lose the sum)
    // returns no gradient at all.
    let stop = Var::record_folding("stop", x.value(), &[&x], 0, |_, _, _| Ok(vec![None])).unwrap();
    let loss = x.mul_scalar(4.0).unwrap().add(&stop).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    assert_eq!(vec_of(g.get(&x).unwrap()), vec![4.0]);
}
