//! Hand-derived backward of the causal chunked ELA forward (`chunk_fwd.rs`) for one sequence
//! (docs/ela.md, "Backward"). The non-causal backward (`noncausal.rs`) shares the per-row and
//! state terms defined here.
//!
//! With `g_i = dy_i / den_i` and `c_i = g_i . y_i` (per row, in the row's units):
//!
//! ```text
//! (B1) da_ij   = g_i . v_j - c_i                      (j <= i)
//! (B2) dphi_i  = sum_j da_ij psi_j  = S_i g_i - c_i z_i
//! (B3) dpsi_j  = sum_{i>=j} da_ij phi_i = U_j v_j - w_j,   U_j = sum_{i>=j} phi_i g_i^T,  w_j = sum_{i>=j} c_i phi_i
//! (B4) dv_j    = sum_{i>=j} a_ij g_i = U_j^T psi_j
//! (B5) dq = phi_vjp(q, dphi), dk = psi_vjp(k, dpsi)    (units, V1: dq = phi * dphi, dk = psi * dpsi)
//! ```
//!
//! Causal: a forward pass recomputes and stores the state before every chunk and the absorbed key
//! features (memory O(T/C F Dv + T F); it costs one `F x C x Dv` product per chunk, a quarter of
//! the forward), then a reverse pass over chunks carries `(U, w)` from later chunks (the "dS, dz"
//! of the scan, eq. (R)) and adds the intra-chunk terms. The forward saves only its output `y`.

use super::chunk::{absorb_into, chunking, prep, Chunk, Seq, State};
use super::exact_rows;
use super::features::{phi_vjp_row, psi_vjp_row};
use super::float::ElaFloat;
use super::linalg::{dot, mm, mm_lower_left, mm_lower_out, mm_lower_t_left};

/// Scratch buffers of the backward pass (sizes for chunks of `c` rows).
pub(super) struct Grad<T> {
    pub(super) g: Vec<T>,
    pub(super) cc: Vec<T>,
    da: Vec<T>,
    tmp: Vec<T>,
    pub(super) dphi: Vec<T>,
    pub(super) dpsi: Vec<T>,
}

impl<T: ElaFloat> Grad<T> {
    fn new(c: usize, f: usize, dv: usize) -> Self {
        let z = |n: usize| vec![T::ZERO; n];
        Grad { g: z(c * dv), cc: z(c), da: z(c * c), tmp: z(c * f), dphi: z(c * f), dpsi: z(c * f) }
    }

    /// The scratch for chunks of `c` rows and the accumulators `(U, w)` of (R), zero.
    pub(super) fn with_accumulators(c: usize, f: usize, dv: usize) -> (Self, Vec<T>, Vec<T>) {
        (Self::new(c, f, dv), vec![T::ZERO; f * dv], vec![T::ZERO; f])
    }

    /// `g_i = dy_i / den_i`, `c_i = g_i . y_i` for the chunk's rows; zero for the rows in `skip`
    /// (they go through the exact path).
    pub(super) fn rows(&mut self, y: &[T], dy: &[T], den: &[T], skip: &[usize], dv: usize) {
        for (i, &den) in den.iter().enumerate() {
            let g = &mut self.g[i * dv..(i + 1) * dv];
            if skip.contains(&i) {
                g.fill(T::ZERO);
                self.cc[i] = T::ZERO;
            } else {
                for (o, &x) in g.iter_mut().zip(&dy[i * dv..(i + 1) * dv]) {
                    *o = x / den;
                }
                self.cc[i] = dot(g, &y[i * dv..(i + 1) * dv]);
            }
        }
    }
}

/// `out (+)= feat * x` elementwise (units) or `out (+)= x` (the feature gradient itself).
fn put<T: ElaFloat>(out: &mut [T], feat: Option<&[T]>, x: &[T], add: bool) {
    for (k, (o, &xv)) in out.iter_mut().zip(x).enumerate() {
        let v = feat.map_or(xv, |f| f[k] * xv);
        *o = if add { *o + v } else { v };
    }
}

/// Gradients of one sequence: `[y, dy]` the forward output and its upstream gradient, `[dq, dk,
/// dvo]` (`t x d`, `t x d`, `t x dv`) overwritten.
pub(crate) fn backward_seq<T: ElaFloat>(seq: &Seq<T>, chunk: usize, [y, dy]: [&[T]; 2], out: [&mut [T]; 3]) {
    let Some((c, mut ch)) = chunking(seq, chunk) else { return };
    let [dq, dk, dvo] = out;
    let (d, f, dv, units) = (seq.d, seq.f(), seq.dv, seq.exp());
    let nch = seq.t.div_ceil(c);
    let (mut gr, mut acc_u, mut acc_w) = Grad::with_accumulators(c, f, dv);
    let per = f * dv + f + if units { f } else { 0 };

    // Pass 1: the state before every chunk, and the key features as absorbed (in the units of
    // the state after their chunk), which pass 2 needs again for (B3)/(B4).
    let mut saved = Vec::with_capacity((nch + 1) * per);
    let mut cur = vec![T::ZERO; per];
    cur[f * dv + f..].fill(T::neg_infinity());
    let mut psi_saved = vec![T::ZERO; seq.t * f];
    for ci in 0..nch {
        saved.extend_from_slice(&cur);
        let (s, rest) = cur.split_at_mut(f * dv);
        let (z, m) = rest.split_at_mut(f);
        let (t0, n) = (ci * c, c.min(seq.t - ci * c));
        absorb_into(seq, t0, n, &mut State { s, z, m }, &mut ch.m_next, &mut psi_saved[t0 * f..(t0 + n) * f]);
    }
    saved.extend_from_slice(&cur);

    // Pass 2: chunks in reverse, carrying (U, w) of all later rows in the units of the state
    // after the current chunk.
    for ci in (0..nch).rev() {
        let (t0, n) = (ci * c, c.min(seq.t - ci * c));
        let (cur, next) = saved[ci * per..].split_at_mut(per);
        let m_next = &next[f * dv + f..per];
        let (s, rest) = cur.split_at_mut(f * dv);
        let (z, m) = rest.split_at_mut(f);
        let st = State { s, z, m };
        let empty = ci == 0;
        prep(seq, t0, n, &st, empty, &mut ch);
        gr.rows(&y[t0 * dv..], &dy[t0 * dv..], &ch.den[..n], &ch.slow, dv);
        let dqc = &mut dq[t0 * d..(t0 + n) * d];
        let dkc = &mut dk[t0 * d..(t0 + n) * d];
        let dvc = &mut dvo[t0 * dv..(t0 + n) * dv];

        // (B3)/(B4) from the rows of later chunks.
        later_rows(seq, t0, n, &psi_saved[t0 * f..(t0 + n) * f], &mut gr, &acc_u, &acc_w, dkc, dvc);
        // (B1): D = (G V^T - c 1^T) * E, masked to j <= i.
        mm_lower_out(n, dv, &gr.g, (dv, 1), &seq.v[t0 * dv..], (1, dv), &mut gr.da, n);
        for i in 0..n {
            let (row, cc) = (&mut gr.da[i * n..(i + 1) * n], gr.cc[i]);
            row[i + 1..].fill(T::ZERO);
            if units {
                for (x, &e) in row[..=i].iter_mut().zip(&ch.e[i * n..=i * n + i]) {
                    *x = (*x - cc) * e;
                }
            } else {
                row[..=i].iter_mut().for_each(|x| *x = *x - cc);
            }
        }
        // (B2) intra: dphi_a = D psi_a.
        mm_lower_left(n, f, &gr.da, n, &ch.psi_a, (f, 1), T::ZERO, &mut gr.tmp, f);
        if units {
            put(dqc, Some(&ch.phi_a[..n * f]), &gr.tmp[..n * f], false);
        } else {
            gr.dphi[..n * f].copy_from_slice(&gr.tmp[..n * f]);
        }
        // (B3) intra: dpsi_a = D^T phi_a.
        mm_lower_t_left(n, f, &gr.da, n, &ch.phi_a, (f, 1), T::ZERO, &mut gr.tmp, f);
        if units {
            put(dkc, Some(&ch.psi_a[..n * f]), &gr.tmp[..n * f], true);
        } else {
            put(&mut gr.dpsi[..n * f], None, &gr.tmp[..n * f], true);
        }
        // (B4) intra: dv += A^T G.
        mm_lower_t_left(n, dv, &ch.a, n, &gr.g, (dv, 1), T::ONE, dvc, dv);
        if !empty {
            // (B2) inter: S g_i - c_i z against the state before the chunk.
            state_terms(seq, &st, &ch, &mut gr, dqc, true);
            if units {
                // Move (U, w) from the units after this chunk to those before it (docs: "the backward in units").
                for col in 0..f {
                    let r = T::exp1(st.m[col] - m_next[col]);
                    acc_w[col] = acc_w[col] * r;
                    acc_u[col * dv..(col + 1) * dv].iter_mut().for_each(|x| *x = *x * r);
                }
            }
            accumulate(f, dv, n, &ch, &gr, &mut acc_u, &mut acc_w);
        }
        for &i in &ch.slow {
            let (yi, dyi) = (&y[(t0 + i) * dv..][..dv], &dy[(t0 + i) * dv..][..dv]);
            let acc = (&mut acc_u[..], &mut acc_w[..]);
            exact_rows::backward_row(seq, t0, t0 + i, &st, empty, yi, dyi, &mut dqc[i * d..(i + 1) * d], dkc, dvc, acc);
        }
        if !units {
            for i in 0..n {
                let (q, k) = (seq.q_row(t0 + i), seq.k_row(t0 + i));
                phi_vjp_row(seq.kernel, q, &gr.dphi[i * f..(i + 1) * f], &mut dqc[i * d..(i + 1) * d]);
                psi_vjp_row(seq.kernel, k, &gr.dpsi[i * f..(i + 1) * f], &mut dkc[i * d..(i + 1) * d]);
            }
        }
    }
}

/// (B2) against a state: `dphi_i (+)= S g_i - c_i z` for the chunk's rows, into `dq` (units,
/// times `phi_b`) or `gr.dphi`.
pub(super) fn state_terms<T: ElaFloat>(
    seq: &Seq<T>,
    st: &State<T>,
    ch: &Chunk<T>,
    gr: &mut Grad<T>,
    dq: &mut [T],
    add: bool,
) {
    let (f, dv, n) = (seq.f(), seq.dv, ch.n);
    mm(n, f, dv, &gr.g, (dv, 1), st.s, (1, dv), T::ZERO, &mut gr.tmp, f);
    for (row, &cc) in gr.tmp[..n * f].chunks_mut(f).zip(&gr.cc[..n]) {
        row.iter_mut().zip(st.z.iter()).for_each(|(x, &z)| *x = *x - cc * z);
    }
    if seq.exp() {
        put(&mut dq[..n * f], Some(&ch.phi_b[..n * f]), &gr.tmp[..n * f], add);
    } else {
        put(&mut gr.dphi[..n * f], None, &gr.tmp[..n * f], add);
    }
}

/// (B3)/(B4) from rows after the chunk: `dv_j = psi_u_j^T U`, `dpsi_j = U v_j - w`, into `dk`
/// (units, times `psi_u`) or `gr.dpsi`; `dvc` is overwritten.
#[allow(clippy::too_many_arguments)]
pub(super) fn later_rows<T: ElaFloat>(
    seq: &Seq<T>,
    t0: usize,
    n: usize,
    psi_u: &[T],
    gr: &mut Grad<T>,
    acc_u: &[T],
    acc_w: &[T],
    dk: &mut [T],
    dvc: &mut [T],
) {
    let (f, dv) = (seq.f(), seq.dv);
    mm(n, dv, f, psi_u, (f, 1), acc_u, (dv, 1), T::ZERO, dvc, dv);
    mm(n, f, dv, &seq.v[t0 * dv..], (dv, 1), acc_u, (1, dv), T::ZERO, &mut gr.tmp, f);
    for row in gr.tmp[..n * f].chunks_mut(f) {
        row.iter_mut().zip(acc_w).for_each(|(x, &w)| *x = *x - w);
    }
    if seq.exp() {
        put(&mut dk[..n * f], Some(&psi_u[..n * f]), &gr.tmp[..n * f], false);
    } else {
        gr.dpsi[..n * f].copy_from_slice(&gr.tmp[..n * f]);
    }
}

/// (R): `U += phi^T G`, `w += phi^T c` for the chunk's rows (`phi` = the features that met the state).
pub(super) fn accumulate<T: ElaFloat>(
    f: usize,
    dv: usize,
    n: usize,
    ch: &Chunk<T>,
    gr: &Grad<T>,
    acc_u: &mut [T],
    acc_w: &mut [T],
) {
    let phi = ch.phi_state();
    mm(f, dv, n, phi, (1, f), &gr.g, (dv, 1), T::ONE, acc_u, dv);
    for i in 0..n {
        for (col, w) in acc_w.iter_mut().enumerate() {
            *w = *w + phi[i * f + col] * gr.cc[i];
        }
    }
}
