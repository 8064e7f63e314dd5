//! Causal chunked ELA forward for one sequence (docs/ela.md, "Chunked form"; its backward is
//! `chunk_bwd.rs`, the non-causal form `noncausal.rs`).
//!
//! For each chunk of `C` rows, `y_c = (A V_c + phi_c S) / den` with the masked block `A` from
//! `chunk::prep` and the state `(S, z)` of all earlier chunks (F1, F2); then the chunk's keys are
//! absorbed into the state (S, S'). Work O(T C F + T F Dv), memory O(C^2 + C F + F Dv): no
//! `T x T` buffer.

use super::chunk::{absorb, chunking, prep, spans, Seq, State};
use super::exact_rows;
use super::float::ElaFloat;
use super::linalg::{mm, mm_lower_left};

/// `y` (`t x dv`) of one sequence, continuing from `st` and leaving the final state in it
/// (prefill).
pub(crate) fn forward_seq<T: ElaFloat>(seq: &Seq<T>, chunk: usize, st: &mut State<T>, y: &mut [T]) {
    let Some((c, mut ch)) = chunking(seq, chunk) else { return };
    let (f, dv) = (seq.f(), seq.dv);
    for (t0, n) in spans(seq.t, c) {
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
            exact_rows::forward_row(seq, t0, t0 + i, st, empty, &mut yc[i * dv..(i + 1) * dv]);
        }
        absorb(seq, t0, n, st, &mut ch);
    }
}
