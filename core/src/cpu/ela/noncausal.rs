//! Non-causal ELA for one sequence, forward and backward (docs/ela.md, "Chunked form", last
//! paragraph, and "Backward"): every row sees every key, so there is one global state `(S, z)`
//! for all rows (S) and one global `(U, w)` for the backward (R), with no scan; rows are still
//! processed in chunks of `C` to bound the scratch. With units (Hadamard Exp) the state's
//! log-scales are the global per-feature key maxima, so no row ever needs the exact path.

use super::chunk::{
    absorb, chunking, key_features_state, query_features_units, spans, state_log_max, Chunk, Seq, State,
};
use super::chunk_bwd::{accumulate, later_rows, state_terms, Grad};
use super::features::{phi_row, phi_vjp_row, psi_vjp_row};
use super::float::ElaFloat;
use super::linalg::{dot, mm};

/// `y` (`t x dv`) of one sequence: `y = phi S / (phi . z)` for every row (F1, F2 without the
/// intra-chunk block). `st` is a fresh state, used as scratch.
pub(crate) fn forward_seq<T: ElaFloat>(seq: &Seq<T>, chunk: usize, st: &mut State<T>, y: &mut [T]) {
    let Some((c, mut ch)) = chunking(seq, chunk) else { return };
    let (f, dv) = (seq.f(), seq.dv);
    global_state(seq, c, st, &mut ch);
    for (t0, n) in spans(seq.t, c) {
        let phi = noncausal_query_features(seq, t0, n, st, &mut ch);
        let yc = &mut y[t0 * dv..(t0 + n) * dv];
        mm(n, dv, f, phi, (f, 1), st.s, (dv, 1), T::ZERO, yc, dv);
        for (i, row) in yc.chunks_mut(dv.max(1)).enumerate() {
            let den = ch.den[i];
            row.iter_mut().for_each(|x| *x = *x / den);
        }
    }
}

/// Gradients of one sequence (B1-B5 with the global state and the global `(U, w)`), arguments as
/// `chunk_bwd::backward_seq`.
pub(crate) fn backward_seq<T: ElaFloat>(seq: &Seq<T>, chunk: usize, [y, dy]: [&[T]; 2], out: [&mut [T]; 3]) {
    let Some((c, mut ch)) = chunking(seq, chunk) else { return };
    let [dq, dk, dvo] = out;
    let (d, f, dv, units) = (seq.d, seq.f(), seq.dv, seq.exp());
    let (mut gr, mut acc_u, mut acc_w) = Grad::with_accumulators(c, f, dv);
    // One global state: (S, z) and, with units, the log-scales m.
    let mut buf = vec![T::ZERO; f * dv + f + if units { f } else { 0 }];
    let (s, rest) = buf.split_at_mut(f * dv);
    let (z, m) = rest.split_at_mut(f);
    m.fill(T::neg_infinity());
    let mut st = State { s, z, m };
    global_state(seq, c, &mut st, &mut ch);
    for (t0, n) in spans(seq.t, c) {
        noncausal_query_features(seq, t0, n, &st, &mut ch);
        gr.rows(&y[t0 * dv..], &dy[t0 * dv..], &ch.den[..n], &[], dv);
        state_terms(seq, &st, &ch, &mut gr, &mut dq[t0 * d..(t0 + n) * d], false);
        if !units {
            for i in 0..n {
                let dqi = &mut dq[(t0 + i) * d..(t0 + i + 1) * d];
                phi_vjp_row(seq.kernel, seq.q_row(t0 + i), &gr.dphi[i * f..(i + 1) * f], dqi);
            }
        }
        accumulate(f, dv, n, &ch, &gr, &mut acc_u, &mut acc_w);
    }
    for (t0, n) in spans(seq.t, c) {
        key_features_state(seq, t0, n, st.m, &mut ch.psi_u);
        later_rows(seq, t0, n, &ch.psi_u, &mut gr, &acc_u, &acc_w, &mut dk[t0 * d..(t0 + n) * d], &mut dvo[t0 * dv..]);
        if !units {
            for j in 0..n {
                psi_vjp_row(seq.kernel, seq.k_row(t0 + j), &gr.dpsi[j * f..(j + 1) * f], &mut dk[(t0 + j) * d..][..d]);
            }
        }
    }
}

/// Non-causal: absorb every key into the fresh state `st`. With units the log-scales are set to
/// the global per-feature maxima first, so no rescaling happens along the way.
fn global_state<T: ElaFloat>(seq: &Seq<T>, c: usize, st: &mut State<T>, ch: &mut Chunk<T>) {
    if seq.exp() {
        for (col, m) in st.m.iter_mut().enumerate() {
            *m = (0..seq.t).fold(T::neg_infinity(), |a, j| a.max(seq.k[j * seq.d + col]));
        }
    }
    for (t0, n) in spans(seq.t, c) {
        absorb(seq, t0, n, st, ch);
    }
}

/// Non-causal query features of rows `t0 .. t0+n` against the full state, and their
/// denominators in `ch.den`: with units `phi_i = exp(q_i + m - u_i)`, `u_i = max_c (q_ic + m_c)`
/// (so `den_i >= 1`); without, `phi(q_i)`. Returns the features (`n x F`).
fn noncausal_query_features<'c, T: ElaFloat>(
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
