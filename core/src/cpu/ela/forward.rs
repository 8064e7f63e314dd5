//! Chunked ELA forward for one sequence (docs/ela.md, "chunked forward").
//!
//! Causal: for each chunk of `C` rows, `y_c = (A V_c + phi_c S) / den` with the masked block `A`
//! from `chunk::prep` and the state `(S, z)` of all earlier chunks; then the chunk's keys are
//! absorbed into the state. Work O(T C F + T F Dv), memory O(C^2 + C F + F Dv): no `T x T` buffer.
//! Non-causal: one state over all keys, then `y = phi S / (phi . z)` for every row.

use super::chunk::{absorb, dot, mm, mm_lower_left, prep, query_features_units, state_log_max, Chunk, Seq, State};
use super::exp::ElaFloat;
use super::features::phi_row;
use super::slow;

/// `y` (`t x dv`) of one sequence. Causal runs continue from `st` and leave the final state in it
/// (prefill); non-causal runs expect a fresh `st` and use it as scratch.
pub(crate) fn forward_seq<T: ElaFloat>(seq: &Seq<T>, causal: bool, chunk: usize, st: &mut State<T>, y: &mut [T]) {
    if seq.t == 0 {
        return;
    }
    let (f, dv) = (seq.f(), seq.dv);
    let c = chunk.min(seq.t);
    let mut ch = Chunk::new(c, f, seq.exp());
    if causal {
        for t0 in (0..seq.t).step_by(c) {
            let n = c.min(seq.t - t0);
            let empty = st.is_empty();
            prep(seq, t0, n, st, empty, &mut ch);
            let yc = &mut y[t0 * dv..(t0 + n) * dv];
            // (F1) num_c = A V_c + phi_state S ; (F2) y_i = num_i / den_i
            mm_lower_left(n, dv, &ch.a, n, &seq.v[t0 * dv..], (dv, 1), T::ZERO, yc, dv);
            if !empty {
                mm(n, dv, f, ch.phi_state(), (f, 1), st.s, (dv, 1), T::ONE, yc, dv);
            }
            for (row, &den) in yc.chunks_mut(dv.max(1)).zip(&ch.den[..n]) {
                row.iter_mut().for_each(|x| *x = *x / den);
            }
            for &i in &ch.slow {
                slow::forward_row(seq, t0, t0 + i, st, empty, &mut yc[i * dv..(i + 1) * dv]);
            }
            absorb(seq, t0, n, st, &mut ch);
        }
    } else {
        global_state(seq, c, st, &mut ch);
        for t0 in (0..seq.t).step_by(c) {
            let n = c.min(seq.t - t0);
            let phi = noncausal_query_features(seq, t0, n, st, &mut ch);
            let yc = &mut y[t0 * dv..(t0 + n) * dv];
            mm(n, dv, f, phi, (f, 1), st.s, (dv, 1), T::ZERO, yc, dv);
            for (i, row) in yc.chunks_mut(dv.max(1)).enumerate() {
                let den = ch.den[i];
                row.iter_mut().for_each(|x| *x = *x / den);
            }
        }
    }
}

/// Non-causal: absorb every key into the fresh state `st`. With units the log-scales are set to
/// the global per-feature maxima first, so no rescaling happens along the way.
pub(crate) fn global_state<T: ElaFloat>(seq: &Seq<T>, c: usize, st: &mut State<T>, ch: &mut Chunk<T>) {
    if seq.exp() {
        for (col, m) in st.m.iter_mut().enumerate() {
            *m = (0..seq.t).fold(T::neg_infinity(), |a, j| a.max(seq.k[j * seq.d + col]));
        }
    }
    for t0 in (0..seq.t).step_by(c) {
        absorb(seq, t0, c.min(seq.t - t0), st, ch);
    }
}

/// Non-causal query features of rows `t0 .. t0+n` against the full state, and their
/// denominators in `ch.den`: with units `phi_i = exp(q_i + m - u_i)`, `u_i = max_c (q_ic + m_c)`
/// (so `den_i >= 1`); without, `phi(q_i)`. Returns the features (`n x F`).
pub(crate) fn noncausal_query_features<'c, T: ElaFloat>(
    seq: &Seq<T>,
    t0: usize,
    n: usize,
    st: &State<T>,
    ch: &'c mut Chunk<T>,
) -> &'c [T] {
    let f = seq.f();
    if seq.exp() {
        for i in 0..n {
            ch.u[i] = state_log_max(seq.q_row(t0 + i), st.m);
        }
        query_features_units(seq, t0, st.m, &ch.u[..n], &mut ch.phi_b);
    } else {
        for i in 0..n {
            phi_row(seq.kernel, seq.q_row(t0 + i), &mut ch.phi_a[i * f..(i + 1) * f]);
        }
    }
    ch.n = n;
    for i in 0..n {
        ch.den[i] = dot(&ch.phi_state()[i * f..(i + 1) * f], st.z);
    }
    ch.phi_state()
}
