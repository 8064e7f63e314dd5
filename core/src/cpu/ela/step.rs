//! One recurrent ELA step for one sequence (docs/ela.md, "recurrent form"): absorb `(k_t, v_t)`
//! into `(S, z)` (S, S'), then read `y_t = phi(q_t)^T S / (phi(q_t) . z)` (L). O(F Dv) work and memory,
//! independent of how many tokens came before.

use super::chunk::{rescale, state_log_max, State};
use super::features::{phi_row, psi_row};
use super::float::ElaFloat;
use super::linalg::dot;
use crate::ela::ElaKernel;

/// `y` (`dv`) for query `q`, key `k`, value `v`; updates `st`.
pub(crate) fn step_seq<T: ElaFloat>(kernel: ElaKernel, q: &[T], k: &[T], v: &[T], st: &mut State<T>, y: &mut [T]) {
    let (d, dv) = (q.len(), v.len());
    let f = kernel.feature_size(d);
    let (mut phi, mut psi) = (vec![T::ZERO; f], vec![T::ZERO; f]);
    if kernel.has_units() {
        // Running per-feature maxima m' = max(m, k): rescale like online softmax, then
        // psi = exp(k - m') <= 1 and phi = exp(q + m' - u), u = max_c (q_c + m'_c), so the
        // query's largest term is exactly 1 and den >= 1.
        let m_new: Vec<T> = st.m.iter().zip(k).map(|(&m, &x)| m.max(x)).collect();
        rescale(st, &m_new);
        for ((p, &x), &m) in psi.iter_mut().zip(k).zip(st.m.iter()) {
            *p = x - m;
        }
        T::exp_slice(&mut psi);
        let u = state_log_max(q, st.m);
        for ((p, &x), &m) in phi.iter_mut().zip(q).zip(st.m.iter()) {
            *p = x + m - u;
        }
        T::exp_slice(&mut phi);
    } else {
        psi_row(kernel, k, &mut psi);
        phi_row(kernel, q, &mut phi);
    }
    for (c, &p) in psi.iter().enumerate() {
        st.z[c] = st.z[c] + p;
        for (s, &x) in st.s[c * dv..(c + 1) * dv].iter_mut().zip(v) {
            *s = *s + p * x;
        }
    }
    let den = dot(&phi, st.z);
    y.fill(T::ZERO);
    for (c, &p) in phi.iter().enumerate() {
        for (o, &s) in y.iter_mut().zip(&st.s[c * dv..(c + 1) * dv]) {
            *o = *o + p * s;
        }
    }
    for o in y.iter_mut() {
        *o = *o / den;
    }
}
