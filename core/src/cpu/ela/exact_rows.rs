//! The exact path for rows whose fast-path denominator underflowed (Hadamard Exp, causal).
//!
//! The fast path stores row `i`'s terms divided by `exp(u_i)`, where `u_i` is an upper bound of
//! the row's log-terms that a matrix product can share (docs/ela.md#numerics). When the bound is
//! far above the row's true largest log-term `r_i = max_{j<=i, c} (q_ic + k_jc)`, every stored term
//! can underflow and `den_i` collapses towards 0. Such rows (`den_i < TINY`) are recomputed here
//! with the exact `r_i`, so their largest term is exactly 1 and `den_i >= 1`. Inputs of the row
//! only: causality is preserved. Cost O(n D Dv) per such row, which is O(C D Dv) at most.

use super::chunk::{state_log_max, Seq, State};
use super::float::ElaFloat;
use super::linalg::dot;

/// The exact log-scale of row `ti`: the largest `q_ic + k_jc` over the chunk keys `t0..=ti` and
/// the largest `q_ic + m_c` over the state.
fn row_scale<T: ElaFloat>(seq: &Seq<T>, t0: usize, ti: usize, m: &[T], empty: bool) -> T {
    let q = seq.q_row(ti);
    let mut r = if empty { T::neg_infinity() } else { state_log_max(q, m) };
    for j in t0..=ti {
        r = r.max(state_log_max(q, seq.k_row(j)));
    }
    r
}

/// `w_c = exp(q_c + x_c - r)` into `w`.
fn weights<T: ElaFloat>(q: &[T], x: &[T], r: T, w: &mut [T]) {
    for ((o, &a), &b) in w.iter_mut().zip(q).zip(x) {
        *o = a + b - r;
    }
    T::exp_slice(w);
}

/// Numerator and denominator of row `ti` in its exact units; `y` receives the numerator.
fn num_den<T: ElaFloat>(seq: &Seq<T>, t0: usize, ti: usize, st: &State<T>, empty: bool, r: T, y: &mut [T]) -> T {
    let (q, dv) = (seq.q_row(ti), seq.dv);
    let mut w = vec![T::ZERO; seq.d];
    let mut den = T::ZERO;
    y.fill(T::ZERO);
    for j in t0..=ti {
        weights(q, seq.k_row(j), r, &mut w);
        let s = w.iter().fold(T::ZERO, |a, &b| a + b);
        den = den + s;
        for (o, &x) in y.iter_mut().zip(seq.v_row(j)) {
            *o = *o + s * x;
        }
    }
    if !empty {
        weights(q, st.m, r, &mut w);
        den = den + dot(&w, st.z);
        for (c, &wc) in w.iter().enumerate() {
            for (o, &x) in y.iter_mut().zip(&st.s[c * dv..(c + 1) * dv]) {
                *o = *o + wc * x;
            }
        }
    }
    den
}

/// `y_ti` computed exactly (forward).
pub(crate) fn forward_row<T: ElaFloat>(seq: &Seq<T>, t0: usize, ti: usize, st: &State<T>, empty: bool, y: &mut [T]) {
    let r = row_scale(seq, t0, ti, st.m, empty);
    let den = num_den(seq, t0, ti, st, empty, r, y);
    for o in y.iter_mut() {
        *o = *o / den;
    }
}

/// Gradients of row `ti` through the exact path, added into `dq` (the row), `dk`, `dv` (the
/// chunk's rows, starting at `t0`) and the reverse accumulators `(U, w)` in the units of the
/// state `st` (docs/ela.md, eqs. (B1)-(B5) with `u_i = r_i`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_row<T: ElaFloat>(
    seq: &Seq<T>,
    t0: usize,
    ti: usize,
    st: &State<T>,
    empty: bool,
    y: &[T],
    dy: &[T],
    dq: &mut [T],
    dk: &mut [T],
    dvs: &mut [T],
    acc: (&mut [T], &mut [T]),
) {
    let (d, dv) = (seq.d, seq.dv);
    let q = seq.q_row(ti);
    let r = row_scale(seq, t0, ti, st.m, empty);
    let mut num = vec![T::ZERO; dv];
    let den = num_den(seq, t0, ti, st, empty, r, &mut num);
    let g: Vec<T> = dy.iter().map(|&x| x / den).collect();
    let cc = dot(&g, y);
    let mut w = vec![T::ZERO; d];
    for j in t0..=ti {
        weights(q, seq.k_row(j), r, &mut w);
        let da = dot(&g, seq.v_row(j)) - cc;
        let dkj = &mut dk[(j - t0) * d..(j - t0 + 1) * d];
        let mut s = T::ZERO;
        for c in 0..d {
            dq[c] = dq[c] + w[c] * da;
            dkj[c] = dkj[c] + w[c] * da;
            s = s + w[c];
        }
        for (o, &gx) in dvs[(j - t0) * dv..(j - t0 + 1) * dv].iter_mut().zip(&g) {
            *o = *o + s * gx;
        }
    }
    if !empty {
        let (acc_u, acc_w) = acc;
        weights(q, st.m, r, &mut w);
        for c in 0..d {
            let sc = &st.s[c * dv..(c + 1) * dv];
            dq[c] = dq[c] + w[c] * (dot(sc, &g) - cc * st.z[c]);
            for (o, &gx) in acc_u[c * dv..(c + 1) * dv].iter_mut().zip(&g) {
                *o = *o + w[c] * gx;
            }
            acc_w[c] = acc_w[c] + w[c] * cc;
        }
    }
}
