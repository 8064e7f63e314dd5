//! The rank split of ELA's entries, checked on the CPU in f64 (docs/ela.md, "Extra terms of any
//! rank, and user maps of width D0 + E"): entries `A_ij = q0_i . k0_j + P_i . W_j`, an Identity
//! part of `D0` features plus a term of rank `E` with per-row coefficients `P_i` (queries) and
//! `W_j` (keys), computed as the GPU's Identity tiles compute the signed kernels' extra terms:
//! chunk by chunk, the earlier (or, backward, later) chunks through states and chunk sums, the
//! chunk's own rows through its block of entries.
//!
//! The model here follows that algorithm on plain vectors and is compared with the quadratic
//! reference (`Form::Quadratic`, Identity on the concatenated features `[q0 | P]`, `[k0 | W]`,
//! through autograd): y, and the gradients of every input, causal and not, ragged last chunks.
//! The squared-Euclidean kernel is the case `E = 2`, `P = (a, 1)`, `W = (1, g)` with `a`, `g`
//! the rows' squared norms over the key scale: the second test checks that reading against the
//! built-in kernel's quadratic reference, gradients chained through the norms included.
//!
//! `ELA_PROPTEST_CASES` sets the case count (default 64 each).

use ela_core::{Cpu, ElaKernel, Tensor};
use ela_nn::ela::{Ela, Form};
use ela_tests::device::proptest_cases;
use proptest::prelude::*;

/// Sizes of one call: `n` sequences of `t` rows, `d0` Identity features, rank `e`, `dv` value
/// columns, chunks of `c` rows.
#[derive(Clone, Copy, Debug)]
struct Dims {
    n: usize,
    t: usize,
    d0: usize,
    e: usize,
    dv: usize,
    c: usize,
    causal: bool,
}

/// Row-major `[rows][w]` matrices of one sequence.
struct Seq<'a> {
    q0: &'a [f64],
    p: &'a [f64],
    k0: &'a [f64],
    w: &'a [f64],
    v: &'a [f64],
}

/// What the model's backward returns for one sequence.
struct SeqGrads {
    y: Vec<f64>,
    dq0: Vec<f64>,
    dp: Vec<f64>,
    dk0: Vec<f64>,
    dw: Vec<f64>,
    dv: Vec<f64>,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `acc[f][col] += x[f] y[col]`.
fn outer_add(acc: &mut [f64], x: &[f64], y: &[f64], scale: f64) {
    for (f, xf) in x.iter().enumerate() {
        for (col, yc) in y.iter().enumerate() {
            acc[f * y.len() + col] += scale * xf * yc;
        }
    }
}

/// `out[col] = sum_f x[f] m[f][col]` (`m` is `x.len() x out.len()`).
fn vec_mat(x: &[f64], m: &[f64], out: &mut [f64]) {
    let cols = out.len();
    for (col, o) in out.iter_mut().enumerate() {
        *o = x.iter().enumerate().map(|(f, xf)| xf * m[f * cols + col]).sum();
    }
}

/// `out[f] = sum_col m[f][col] x[col]` (`m` is `out.len() x x.len()`).
fn mat_vec(m: &[f64], x: &[f64], out: &mut [f64]) {
    for (f, o) in out.iter_mut().enumerate() {
        *o = dot(&m[f * x.len()..(f + 1) * x.len()], x);
    }
}

/// The sums over a set of key rows `js` that the forward carries between chunks: Identity's
/// state `S = sum k0^T v`, `z = sum k0`, and the chunk sums of the extra term, `VW_e = sum W_e v`,
/// `SW_e = sum W_e`.
struct Fwd {
    s: Vec<f64>,
    z: Vec<f64>,
    vw: Vec<f64>,
    sw: Vec<f64>,
}

impl Fwd {
    fn over(x: &Seq, d: &Dims, js: std::ops::Range<usize>) -> Fwd {
        let (d0, e, dv) = (d.d0, d.e, d.dv);
        let mut f = Fwd { s: vec![0.0; d0 * dv], z: vec![0.0; d0], vw: vec![0.0; e * dv], sw: vec![0.0; e] };
        for j in js {
            let (k0, w, v) = (&x.k0[j * d0..][..d0], &x.w[j * e..][..e], &x.v[j * dv..][..dv]);
            outer_add(&mut f.s, k0, v, 1.0);
            outer_add(&mut f.vw, w, v, 1.0);
            for (a, b) in f.z.iter_mut().zip(k0) {
                *a += b;
            }
            for (a, b) in f.sw.iter_mut().zip(w) {
                *a += b;
            }
        }
        f
    }
}

/// The sums over a set of query rows the backward carries between chunks (`G'_i = dy_i / den_i`,
/// `c_i = G'_i . y_i`): Identity's `U = sum q0^T G'`, `wq = sum c q0`, and the extra term's
/// `RPG_e = sum P_e G'`, `RPc_e = sum P_e c`.
struct Bwd {
    u: Vec<f64>,
    wq: Vec<f64>,
    rpg: Vec<f64>,
    rpc: Vec<f64>,
}

impl Bwd {
    fn over(x: &Seq, d: &Dims, gp: &[f64], cc: &[f64], is: std::ops::Range<usize>) -> Bwd {
        let (d0, e, dv) = (d.d0, d.e, d.dv);
        let mut b = Bwd { u: vec![0.0; d0 * dv], wq: vec![0.0; d0], rpg: vec![0.0; e * dv], rpc: vec![0.0; e] };
        for i in is {
            let (q0, p, g) = (&x.q0[i * d0..][..d0], &x.p[i * e..][..e], &gp[i * dv..][..dv]);
            outer_add(&mut b.u, q0, g, 1.0);
            outer_add(&mut b.rpg, p, g, 1.0);
            for (a, b) in b.wq.iter_mut().zip(q0) {
                *a += cc[i] * b;
            }
            for (a, b) in b.rpc.iter_mut().zip(p) {
                *a += cc[i] * b;
            }
        }
        b
    }
}

/// The chunked forward and backward of one sequence (`dy`: the output's gradient).
fn model(x: &Seq, dy: &[f64], d: &Dims) -> SeqGrads {
    let (t, d0, e, dv, c) = (d.t, d.d0, d.e, d.dv, d.c);
    let entry = |i: usize, j: usize| {
        dot(&x.q0[i * d0..][..d0], &x.k0[j * d0..][..d0]) + dot(&x.p[i * e..][..e], &x.w[j * e..][..e])
    };
    let chunks: Vec<std::ops::Range<usize>> = (0..t.div_ceil(c)).map(|ch| ch * c..((ch + 1) * c).min(t)).collect();
    // Keys a row of `rows` sees inside its own chunk (causal: j <= i there; not causal: none, the
    // totals hold every key) and the rows before / after the chunk the sums cover.
    let own = |rows: &std::ops::Range<usize>, i: usize| if d.causal { rows.start..i + 1 } else { 0..0 };
    let (mut y, mut den) = (vec![0.0; t * dv], vec![0.0; t]);
    for rows in &chunks {
        let f = Fwd::over(x, d, if d.causal { 0..rows.start } else { 0..t });
        for i in rows.clone() {
            let (q0, p) = (&x.q0[i * d0..][..d0], &x.p[i * e..][..e]);
            // num_i = q0_i S + sum_e P_ie VW_e + (own block); den_i = q0_i . z + P_i . SW + (own).
            let mut num = vec![0.0; dv];
            vec_mat(q0, &f.s, &mut num);
            let mut extra = vec![0.0; dv];
            vec_mat(p, &f.vw, &mut extra);
            let mut dn = dot(q0, &f.z) + dot(p, &f.sw);
            for j in own(rows, i) {
                let a = entry(i, j);
                dn += a;
                for (col, o) in extra.iter_mut().enumerate() {
                    *o += a * x.v[j * dv + col];
                }
            }
            den[i] = dn;
            for col in 0..dv {
                y[i * dv + col] = (num[col] + extra[col]) / dn;
            }
        }
    }
    // G'_i = dy_i / den_i, c_i = G'_i . y_i; D_ij = G'_i . v_j - c_i (Identity's, and the extra
    // term's entries carry the same gradient).
    let gp: Vec<f64> = (0..t * dv).map(|k| dy[k] / den[k / dv]).collect();
    let cc: Vec<f64> = (0..t).map(|i| dot(&gp[i * dv..][..dv], &y[i * dv..][..dv])).collect();
    let dmat = |i: usize, j: usize| dot(&gp[i * dv..][..dv], &x.v[j * dv..][..dv]) - cc[i];
    let mut g = SeqGrads {
        y: y.clone(),
        dq0: vec![0.0; t * d0],
        dp: vec![0.0; t * e],
        dk0: vec![0.0; t * d0],
        dw: vec![0.0; t * e],
        dv: vec![0.0; t * dv],
    };
    for rows in &chunks {
        let f = Fwd::over(x, d, if d.causal { 0..rows.start } else { 0..t });
        let b = Bwd::over(x, d, &gp, &cc, if d.causal { rows.end..t } else { 0..t });
        for i in rows.clone() {
            // dq0_i = S G'_i - c_i z + sum_own D_ij k0_j;  dP_ie = G'_i . VW_e - c_i SW_e + sum_own D_ij W_je.
            let gi = &gp[i * dv..][..dv];
            let dq0 = &mut g.dq0[i * d0..][..d0];
            mat_vec(&f.s, gi, dq0);
            for (o, z) in dq0.iter_mut().zip(&f.z) {
                *o -= cc[i] * z;
            }
            let dp = &mut g.dp[i * e..][..e];
            mat_vec(&f.vw, gi, dp);
            for (o, s) in dp.iter_mut().zip(&f.sw) {
                *o -= cc[i] * s;
            }
            for j in own(rows, i) {
                let dij = dmat(i, j);
                for (o, k) in g.dq0[i * d0..][..d0].iter_mut().zip(&x.k0[j * d0..][..d0]) {
                    *o += dij * k;
                }
                for (o, w) in g.dp[i * e..][..e].iter_mut().zip(&x.w[j * e..][..e]) {
                    *o += dij * w;
                }
            }
        }
        for j in rows.clone() {
            // dk0_j = U v_j - wq + sum_own D_ij q0_i;  dW_je = v_j . RPG_e - RPc_e + sum_own D_ij P_ie;
            // dv_j = k0_j U + W_j RPG + sum_own A_ij G'_i (the rows i >= j of the chunk).
            let vj = &x.v[j * dv..][..dv];
            let dk0 = &mut g.dk0[j * d0..][..d0];
            mat_vec(&b.u, vj, dk0);
            for (o, wq) in dk0.iter_mut().zip(&b.wq) {
                *o -= wq;
            }
            let dw = &mut g.dw[j * e..][..e];
            mat_vec(&b.rpg, vj, dw);
            for (o, r) in dw.iter_mut().zip(&b.rpc) {
                *o -= r;
            }
            let dvj = &mut g.dv[j * dv..][..dv];
            vec_mat(&x.k0[j * d0..][..d0], &b.u, dvj);
            let mut extra = vec![0.0; dv];
            vec_mat(&x.w[j * e..][..e], &b.rpg, &mut extra);
            for (o, x) in dvj.iter_mut().zip(&extra) {
                *o += x;
            }
            let sees = if d.causal { j..rows.end } else { 0..0 };
            for i in sees {
                let (dij, aij) = (dmat(i, j), entry(i, j));
                for (o, q) in g.dk0[j * d0..][..d0].iter_mut().zip(&x.q0[i * d0..][..d0]) {
                    *o += dij * q;
                }
                for (o, p) in g.dw[j * e..][..e].iter_mut().zip(&x.p[i * e..][..e]) {
                    *o += dij * p;
                }
                for (o, gi) in g.dv[j * dv..][..dv].iter_mut().zip(&gp[i * dv..][..dv]) {
                    *o += aij * gi;
                }
            }
        }
    }
    g
}

/// Uniform draws in `[lo, hi)` from a seed (positive features keep the denominators away from 0).
fn uniform(n: usize, lo: f64, hi: f64, seed: u64) -> Vec<f64> {
    let mut rng = ela_core::Rng::new(seed);
    (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect()
}

/// `[n, 1, t, w]` f64 rows.
fn tensor(x: &[f64], d: &Dims, w: usize) -> Tensor<Cpu> {
    Tensor::from_vec(x.to_vec(), [d.n, 1, d.t, w], &Cpu).unwrap()
}

/// `[q0 | P]` (or `[k0 | W]`): each row's features, concatenated.
fn concat(a: &[f64], b: &[f64], d: &Dims) -> Vec<f64> {
    let rows = d.n * d.t;
    (0..rows).flat_map(|r| a[r * d.d0..][..d.d0].iter().chain(&b[r * d.e..][..d.e]).copied()).collect()
}

/// `max |a - b| / max(max |b|, 1)`: relative to the largest entry, absolute below 1 (a gradient
/// that vanishes exactly, as dq of a single key does, leaves only rounding on both sides).
fn rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// The model over every sequence, its outputs concatenated: y, dq = [dq0 | dP], dk = [dk0 | dW], dv.
fn model_all(q0: &[f64], p: &[f64], k0: &[f64], w: &[f64], v: &[f64], dy: &[f64], d: &Dims) -> [Vec<f64>; 4] {
    let (t, d0, e, dv) = (d.t, d.d0, d.e, d.dv);
    let mut out: [Vec<f64>; 4] = Default::default();
    for s in 0..d.n {
        let x = Seq {
            q0: &q0[s * t * d0..][..t * d0],
            p: &p[s * t * e..][..t * e],
            k0: &k0[s * t * d0..][..t * d0],
            w: &w[s * t * e..][..t * e],
            v: &v[s * t * dv..][..t * dv],
        };
        let g = model(&x, &dy[s * t * dv..][..t * dv], d);
        let one = Dims { n: 1, ..*d };
        out[0].extend(g.y);
        out[1].extend(concat(&g.dq0, &g.dp, &one));
        out[2].extend(concat(&g.dk0, &g.dw, &one));
        out[3].extend(g.dv);
    }
    out
}

fn dims() -> impl Strategy<Value = Dims> {
    (
        1usize..=2,
        1usize..=70,
        1usize..=5,
        1usize..=3,
        1usize..=4,
        prop::sample::select(vec![4usize, 8, 16]),
        any::<bool>(),
    )
        .prop_map(|(n, t, d0, e, dv, c, causal)| Dims { n, t, d0, e, dv, c, causal })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: proptest_cases(64), failure_persistence: None, ..ProptestConfig::default() })]

    /// Identity on `[q0 | P]`, `[k0 | W]` equals the chunked rank split: y and all four input
    /// gradients to f64 rounding.
    #[test]
    fn the_rank_split_is_identity_on_the_concatenated_features(d in dims(), seed in any::<u64>()) {
        let (rows, (d0, e, dv)) = (d.n * d.t, (d.d0, d.e, d.dv));
        let q0 = uniform(rows * d0, 0.5, 1.5, seed);
        let p = uniform(rows * e, 0.5, 1.5, seed ^ 1);
        let k0 = uniform(rows * d0, 0.5, 1.5, seed ^ 2);
        let w = uniform(rows * e, 0.5, 1.5, seed ^ 3);
        let v = uniform(rows * dv, -1.0, 1.0, seed ^ 4);
        let dy = uniform(rows * dv, -1.0, 1.0, seed ^ 5);
        let got = model_all(&q0, &p, &k0, &w, &v, &dy, &d);
        let f = d0 + e;
        let (q, k) = (tensor(&concat(&q0, &p, &d), &d, f), tensor(&concat(&k0, &w, &d), &d, f));
        let ela = Ela::<Cpu>::builtin(ElaKernel::Identity).with_causal(d.causal);
        let r = ela.run_with_grads(Form::Quadratic, &q, &k, &tensor(&v, &d, dv), &tensor(&dy, &d, dv)).unwrap();
        let want = [r.y, r.grads.dq, r.grads.dk, r.grads.dv].map(|x| x.to_vec_f64().unwrap());
        for (name, (g, w)) in ["y", "dq", "dk", "dv"].iter().zip(got.iter().zip(&want)) {
            let err = rel(g, w);
            prop_assert!(err < 1e-10, "{name}: {err:e} for {d:?}");
        }
    }

    /// Sum-sq's kernel `|q + k|^2 = s (q . k + a_i + g_j)` (`s = 2`, `a = |q|^2 / s`, `g = |k|^2 /
    /// s`) is the split with `P = (a, 1)`, `W = (1, g)`; y does not see `s`, and the gradients of
    /// q and k add the norms' chain, `dq += dP_0 2 q / s`, `dk += dW_1 2 k / s`: against the
    /// built-in kernel's quadratic reference.
    #[test]
    fn sum_sq_is_the_split_with_its_norms(d in dims(), seed in any::<u64>()) {
        let d = Dims { e: 2, ..d };
        let (rows, d0, dv, s) = (d.n * d.t, d.d0, d.dv, 2.0);
        let q = uniform(rows * d0, 0.5, 1.5, seed);
        let k = uniform(rows * d0, 0.5, 1.5, seed ^ 2);
        let v = uniform(rows * dv, -1.0, 1.0, seed ^ 4);
        let dy = uniform(rows * dv, -1.0, 1.0, seed ^ 5);
        let norm = |x: &[f64], r: usize| dot(&x[r * d0..][..d0], &x[r * d0..][..d0]) / s;
        let p: Vec<f64> = (0..rows).flat_map(|r| [norm(&q, r), 1.0]).collect();
        let w: Vec<f64> = (0..rows).flat_map(|r| [1.0, norm(&k, r)]).collect();
        let [y, dqs, dks, dvs] = model_all(&q, &p, &k, &w, &v, &dy, &d);
        // [dq0 | dP] and [dk0 | dW] rows to dq, dk through a = |q|^2 / s, g = |k|^2 / s.
        let chain = |g: &[f64], x: &[f64], at: usize| -> Vec<f64> {
            (0..rows)
                .flat_map(|r| {
                    let row = &g[r * (d0 + 2)..][..d0 + 2];
                    (0..d0).map(move |f| row[f] + row[d0 + at] * 2.0 * x[r * d0 + f] / s)
                })
                .collect()
        };
        let got = [y, chain(&dqs, &q, 0), chain(&dks, &k, 1), dvs];
        let ela = Ela::<Cpu>::builtin(ElaKernel::SumSqEuclid).with_causal(d.causal);
        let (qt, kt) = (tensor(&q, &d, d0), tensor(&k, &d, d0));
        let r = ela.run_with_grads(Form::Quadratic, &qt, &kt, &tensor(&v, &d, dv), &tensor(&dy, &d, dv)).unwrap();
        let want = [r.y, r.grads.dq, r.grads.dk, r.grads.dv].map(|x| x.to_vec_f64().unwrap());
        for (name, (g, w)) in ["y", "dq", "dk", "dv"].iter().zip(got.iter().zip(&want)) {
            let err = rel(g, w);
            prop_assert!(err < 1e-10, "{name}: {err:e} for {d:?}");
        }
    }
}
