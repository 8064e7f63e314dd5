//! Backward passes against closed forms computed on the host, on every backend: each elementwise
//! op's gradient is `g * f'(x)` with `f'` written out by hand (not through the library), the
//! binary ops route `g` by their own rules (the winner of a maximum, ties to the left operand;
//! the chosen side of `where_cond`), and the reductions that pick elements (max, min, top-k)
//! give `g` to the picked element and nothing to the rest; a cumulative sum's gradient is the
//! reversed cumulative sum of `g`, and `mean_all`'s is `g / n`. Finite differences check the
//! same ops in `autograd_gradcheck.rs`; these tests are the independent reference beside them.
//! All in f64, to 1e-12 relative.

mod autograd_common;

use autograd_common::*;
use ela_autograd::Var;
use ela_core::{Backend, Tensor};
use ela_tests::device_proptest;
use proptest::collection::vec;
use proptest::prelude::*;

/// `dx` of `sum(f(x) * g)` from the library.
fn grad_of<B: Backend>(
    dev: &B,
    x: &[f64],
    g: &[f64],
    f: impl Fn(&Var<B>) -> ela_core::Result<Var<B>>,
) -> ela_core::Result<Vec<f64>> {
    let xv = Var::param(tensor(dev, &[x.len()], x.to_vec()));
    let grads = f(&xv)?.backward_with(tensor(dev, &[g.len()], g.to_vec()))?;
    grads.get(&xv).map_or_else(|| Ok(vec![0.0; x.len()]), |t| t.to_vec::<f64>())
}

fn close(got: &[f64], want: &[f64]) -> bool {
    got.len() == want.len() && got.iter().zip(want).all(|(a, b)| (a - b).abs() <= 1e-12 * (1.0 + b.abs()))
}

/// GELU's tanh approximation, differentiated by hand: with `u = c (x + a x^3)`,
/// `d/dx [x/2 (1 + tanh u)] = (1 + tanh u)/2 + x/2 (1 - tanh^2 u) c (1 + 3 a x^2)`.
fn gelu_prime(x: f64) -> f64 {
    let (c, a) = ((2.0 / std::f64::consts::PI).sqrt(), 0.044715);
    let t = (c * (x + a * x * x * x)).tanh();
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * a * x * x)
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

type UnaryCase<B> = (&'static str, fn(&Var<B>) -> ela_core::Result<Var<B>>, fn(f64) -> f64);

device_proptest! {
    #![proptest_config(cfg())]

    /// Unary maps on positive inputs (so that log, sqrt, recip and powf are defined), away from
    /// the kinks of abs, relu and the clamps (their one-sided rules are the next test's).
    fn unary_gradients_match_hand_derivatives<B: Backend>(
        dev: &B,
        x in vec(0.1f64..3.0, 1..=7),
        g in vec(-1.0f64..1.0, 7),
    ) {
        let g = &g[..x.len()];
        let cases: [UnaryCase<B>; 14] = [
            ("neg", |v| v.neg(), |_| -1.0),
            ("exp", |v| v.exp(), f64::exp),
            ("log", |v| v.log(), |x| 1.0 / x),
            ("sqrt", |v| v.sqrt(), |x| 0.5 / x.sqrt()),
            ("recip", |v| v.recip(), |x| -1.0 / (x * x)),
            ("square", |v| v.square(), |x| 2.0 * x),
            ("abs", |v| v.abs(), |x| x.signum()),
            ("relu", |v| v.relu(), |x| (x > 0.0) as u8 as f64),
            ("gelu", |v| v.gelu(), gelu_prime),
            ("silu", |v| v.silu(), |x| sigmoid(x) * (1.0 + x * (1.0 - sigmoid(x)))),
            ("sigmoid", |v| v.sigmoid(), |x| sigmoid(x) * (1.0 - sigmoid(x))),
            ("tanh", |v| v.tanh(), |x| 1.0 - x.tanh() * x.tanh()),
            ("powf(2.5)", |v| v.powf(2.5), |x| 2.5 * x.powf(1.5)),
            ("affine(-3, 1)", |v| v.affine(-3.0, 1.0), |_| -3.0),
        ];
        for (name, f, d) in cases {
            let got = grad_of(dev, &x, g, f)?;
            let want: Vec<f64> = x.iter().zip(g).map(|(&x, &g)| g * d(x)).collect();
            prop_assert!(close(&got, &want), "{}: {:?} vs {:?} at {:?}", name, got, want, x);
        }
    }

    /// One-sided rules at ties and kinks: `max(x, c)` and `min(x, c)` pass `g` where `x` is kept
    /// (ties included), `clamp` where `x` lies inside `[lo, hi]` (bounds included), `sign` and
    /// the step pass nothing.
    fn scalar_extrema_route_by_their_tie_rule<B: Backend>(
        dev: &B,
        x in vec(prop_oneof![Just(-1.0f64), Just(0.0), Just(1.0), -2.0f64..2.0], 1..=8),
        g in vec(-1.0f64..1.0, 8),
    ) {
        let g = &g[..x.len()];
        let pass = |keep: &dyn Fn(f64) -> bool| -> Vec<f64> {
            x.iter().zip(g).map(|(&x, &g)| if keep(x) { g } else { 0.0 }).collect()
        };
        prop_assert!(close(&grad_of(dev, &x, g, |v| v.maximum_scalar(0.0))?, &pass(&|x| x >= 0.0)));
        prop_assert!(close(&grad_of(dev, &x, g, |v| v.minimum_scalar(0.0))?, &pass(&|x| x <= 0.0)));
        prop_assert!(close(&grad_of(dev, &x, g, |v| v.clamp(-1.0, 1.0))?, &pass(&|x| (-1.0..=1.0).contains(&x))));
        prop_assert!(close(&grad_of(dev, &x, g, |v| v.sign())?, &pass(&|_| false)));
    }

    /// Binary ops: `d(a - b) = (g, -g)`; `maximum` / `minimum` give `g` to the winner, ties to
    /// `a`; `where_cond` gives `g` to the side the mask chose; `masked_fill` stops `g` where it
    /// fills. `b` repeats `a` at some positions to make ties.
    fn binary_gradients_route_by_their_rules<B: Backend>(
        dev: &B,
        (a, b, mask, g) in (1..=7usize).prop_flat_map(|n| (
            vec(-2.0f64..2.0, n),
            vec(prop_oneof![Just(None), (-2.0f64..2.0).prop_map(Some)], n),
            vec(any::<bool>(), n),
            vec(-1.0f64..1.0, n),
        )),
    ) {
        let n = a.len();
        let b: Vec<f64> = b.iter().zip(&a).map(|(b, &a)| b.unwrap_or(a)).collect();
        let (av, bv) = (Var::param(tensor(dev, &[n], a.clone())), Var::param(tensor(dev, &[n], b.clone())));
        let gt = tensor(dev, &[n], g.clone());
        let grads = |y: Var<B>| -> ela_core::Result<(Vec<f64>, Vec<f64>)> {
            let gs = y.backward_with(gt.clone())?;
            let get = |v: &Var<B>| gs.get(v).map_or_else(|| Ok(vec![0.0; n]), |t| t.to_vec::<f64>());
            Ok((get(&av)?, get(&bv)?))
        };
        let split = |to_a: &dyn Fn(usize) -> bool| -> (Vec<f64>, Vec<f64>) {
            let ga = (0..n).map(|i| if to_a(i) { g[i] } else { 0.0 }).collect();
            let gb = (0..n).map(|i| if to_a(i) { 0.0 } else { g[i] }).collect();
            (ga, gb)
        };
        let (ga, gb) = grads(av.sub(&bv)?)?;
        let neg: Vec<f64> = g.iter().map(|x| -x).collect();
        prop_assert!(close(&ga, &g) && close(&gb, &neg), "sub");
        for (name, y, want) in [
            ("maximum", av.maximum(&bv)?, split(&|i| a[i] >= b[i])),
            ("minimum", av.minimum(&bv)?, split(&|i| a[i] <= b[i])),
        ] {
            let (ga, gb) = grads(y)?;
            prop_assert!(close(&ga, &want.0) && close(&gb, &want.1), "{}: {:?} {:?} vs {:?}", name, ga, gb, want);
        }
        let m = Tensor::from_vec(mask.iter().map(|&x| x as u8).collect::<Vec<u8>>(), [n], dev)?;
        let (ga, gb) = grads(Var::where_cond(&m, &av, &bv)?)?;
        let want = split(&|i| mask[i]);
        prop_assert!(close(&ga, &want.0) && close(&gb, &want.1), "where_cond");
        let got = grad_of(dev, &a, &g, |v| v.masked_fill(&m, 7.0))?;
        prop_assert!(close(&got, &split(&|i| !mask[i]).0), "masked_fill");
    }

    /// Reductions that pick: `max` / `min` along the last axis give each row's `g` to its first
    /// extremum; `topk` gives each kept value's `g` to where it came from. Also `cumsum`, whose
    /// gradient is the reversed cumulative sum, and `mean_all`, `g / n` everywhere.
    fn reductions_that_pick_route_to_the_picked_element<B: Backend>(
        dev: &B,
        (rows, cols, x, g) in (1..=3usize, 1..=5usize).prop_flat_map(|(r, c)| (
            Just(r),
            Just(c),
            vec(prop_oneof![Just(0.5f64), -2.0f64..2.0], r * c),
            vec(-1.0f64..1.0, r * c),
        )),
    ) {
        let xv = Var::param(tensor(dev, &[rows, cols], x.clone()));
        let dx = |y: Var<B>, up: Vec<f64>| -> ela_core::Result<Vec<f64>> {
            let d = y.dims().to_vec();
            y.backward_with(tensor(dev, &d, up))?.get(&xv).unwrap().to_vec::<f64>()
        };
        for max in [true, false] {
            let y = if max { xv.max(1usize, false)? } else { xv.min(1usize, false)? };
            let got = dx(y, g[..rows].to_vec())?;
            let mut want = vec![0.0; rows * cols];
            for r in 0..rows {
                let row = &x[r * cols..(r + 1) * cols];
                let better = |a: f64, b: f64| if max { a > b } else { a < b };
                let first = (0..cols).fold(0, |best, j| if better(row[j], row[best]) { j } else { best });
                want[r * cols + first] = g[r];
            }
            prop_assert!(close(&got, &want), "max={}: {:?} vs {:?} for {:?}", max, got, want, x);
        }
        // Top-k on distinct values (ties have no single answer): nudge repeats apart.
        let distinct: Vec<f64> = x.iter().enumerate().map(|(i, v)| v + i as f64 * 1e-3).collect();
        let xd = Var::param(tensor(dev, &[rows, cols], distinct.clone()));
        let k = cols.div_ceil(2);
        let (top, _) = xd.topk(k, 1usize)?;
        let up: Vec<f64> = (0..rows * k).map(|i| g[i % g.len()]).collect();
        let got = top.backward_with(tensor(dev, &[rows, k], up.clone()))?.get(&xd).unwrap().to_vec::<f64>()?;
        let mut want = vec![0.0; rows * cols];
        for r in 0..rows {
            let mut order: Vec<usize> = (0..cols).collect();
            order.sort_by(|&i, &j| distinct[r * cols + j].total_cmp(&distinct[r * cols + i]));
            for (slot, &j) in order[..k].iter().enumerate() {
                want[r * cols + j] = up[r * k + slot];
            }
        }
        prop_assert!(close(&got, &want), "topk: {:?} vs {:?}", got, want);
        // dx_j = sum_{i >= j} g_i along each row.
        let got = dx(xv.cumsum(1usize, false, false)?, g.clone())?;
        let want: Vec<f64> = (0..rows * cols).map(|i| {
            let (r, j) = (i / cols, i % cols);
            (j..cols).map(|t| g[r * cols + t]).sum()
        }).collect();
        prop_assert!(close(&got, &want), "cumsum: {:?} vs {:?}", got, want);
        let got = dx(xv.mean_all()?, vec![g[0]])?;
        prop_assert!(close(&got, &vec![g[0] / (rows * cols) as f64; rows * cols]), "mean_all");
    }
}
