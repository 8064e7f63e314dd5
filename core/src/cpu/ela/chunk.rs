//! Shared pieces of the chunked kernels (`chunk_fwd.rs`, `chunk_bwd.rs`, `noncausal.rs`,
//! `step.rs`): one sequence's inputs, the state `(S, z, m)`, the per-chunk preparation (feature
//! maps, the masked intra-chunk block `A`, the denominators) and the state update. Forward and
//! backward call the same `prep`, so the backward recomputes exactly (bit for bit) the quantities
//! the forward used.
//!
//! Notation (docs/ela.md): a chunk holds rows `t0 .. t0+n`; `i`, `j` index rows inside it.

use super::features::{phi_row, psi_row};
use super::float::{ElaFloat, EXP_LANES};
use super::linalg::{dot, gt_max, max_of, max_of_sum, mm, mm_lower_out, sum};
use crate::ela::ElaKernel;

/// One (batch, head) sequence, contiguous row-major: `q`, `k`: `t x d`, `v`: `t x dv`.
pub(crate) struct Seq<'a, T> {
    pub q: &'a [T],
    pub k: &'a [T],
    pub v: &'a [T],
    pub t: usize,
    pub d: usize,
    pub dv: usize,
    pub kernel: ElaKernel,
}

impl<'a, T: ElaFloat> Seq<'a, T> {
    pub fn q_row(&self, i: usize) -> &'a [T] {
        &self.q[i * self.d..(i + 1) * self.d]
    }
    pub fn k_row(&self, j: usize) -> &'a [T] {
        &self.k[j * self.d..(j + 1) * self.d]
    }
    pub fn v_row(&self, j: usize) -> &'a [T] {
        &self.v[j * self.dv..(j + 1) * self.dv]
    }
    /// Feature size `F`.
    pub fn f(&self) -> usize {
        self.kernel.feature_size(self.d)
    }
    /// Hadamard Exp: features carry log-scales (units).
    pub fn exp(&self) -> bool {
        self.kernel == ElaKernel::HadamardExp
    }
}

/// The state `(S [F x Dv], z [F], m [F])` of one sequence. With units (Hadamard Exp) the true
/// state is `exp(m[f]) * (S[f,:], z[f])`; `m = -inf` before the first key. Without units `m` is
/// empty.
pub(crate) struct State<'s, T> {
    pub s: &'s mut [T],
    pub z: &'s mut [T],
    pub m: &'s mut [T],
}

impl<T: ElaFloat> State<'_, T> {
    /// True while no key has been absorbed (the inter-chunk terms are zero and can be skipped).
    pub fn is_empty(&self) -> bool {
        if self.m.is_empty() {
            self.z.iter().all(|&x| x == T::ZERO) && self.s.iter().all(|&x| x == T::ZERO)
        } else {
            self.m.iter().all(|&x| x == T::neg_infinity())
        }
    }
}

/// The chunk length of a pass over `seq` in chunks of at most `chunk` rows, and that pass's chunk
/// buffers; `None` for an empty sequence (nothing to do).
pub(crate) fn chunking<T: ElaFloat>(seq: &Seq<T>, chunk: usize) -> Option<(usize, Chunk<T>)> {
    let c = chunk.min(seq.t);
    (c > 0).then(|| (c, Chunk::new(c, seq.f(), seq.exp())))
}

/// `(t0, n)`: the first row and the length of each chunk of `c` rows of a sequence of `t`.
pub(crate) fn spans(t: usize, c: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t).step_by(c.max(1)).map(move |t0| (t0, c.min(t - t0)))
}

/// Buffers of one chunk, reused across chunks. Sizes are for the full chunk length `C`; a chunk
/// of `n <= C` rows uses the leading `n x F` / `n x n` parts.
pub(crate) struct Chunk<T> {
    /// Rows in the current chunk.
    pub n: usize,
    /// Intra-chunk query features: `exp(q_i - mq_i)` (units) or `phi(q_i)`.
    pub phi_a: Vec<T>,
    /// Intra-chunk key features: `exp(k_j - mk_j)` (units) or `psi(k_j)`.
    pub psi_a: Vec<T>,
    /// Units only: query features against the state, `exp(q_i + m - u_i)`.
    pub phi_b: Vec<T>,
    /// Key features as absorbed into the state: `exp(k_j - m')` (units, `m'` the state's
    /// log-scales after this chunk) or `psi(k_j)`.
    pub psi_u: Vec<T>,
    /// The masked intra-chunk block: `A_ij = a(q_i, k_j) exp(-u_i)` for `j <= i`, 0 above.
    pub a: Vec<T>,
    /// Units only: `E_ij = exp(mq_i + mk_j - u_i)` for `j <= i`, 0 above; `A = (phi_a psi_a^T) * E`.
    pub e: Vec<T>,
    /// Units only: per-query maxima `mq_i`.
    pub mq: Vec<T>,
    /// Units only: per-key maxima `mk_j`.
    pub mk: Vec<T>,
    /// Units only: the row's log-scale `u_i` (its terms are stored divided by `exp(u_i)`).
    pub u: Vec<T>,
    /// Denominators `den_i`, in the row's units.
    pub den: Vec<T>,
    /// Units only: the state's log-scales after this chunk (`m'`).
    pub m_next: Vec<T>,
    /// Rows whose denominator fell below `TINY`: recomputed exactly by `exact_rows.rs`.
    pub slow: Vec<usize>,
    units: bool,
}

impl<T: ElaFloat> Chunk<T> {
    /// Buffers for chunks of up to `c` rows and `f` features.
    pub fn new(c: usize, f: usize, units: bool) -> Self {
        let z = |len: usize| vec![T::ZERO; len];
        Chunk {
            n: 0,
            phi_a: z(c * f),
            psi_a: z(c * f),
            phi_b: if units { z(c * f) } else { Vec::new() },
            psi_u: z(c * f),
            a: z(c * c),
            e: if units { z(c * c) } else { Vec::new() },
            mq: z(c),
            mk: z(c),
            u: z(c),
            den: z(c),
            m_next: if units { z(f) } else { Vec::new() },
            slow: Vec::new(),
            units,
        }
    }

    /// The query features that multiply the state: `phi_b` with units, `phi_a` without.
    pub fn phi_state(&self) -> &[T] {
        if self.units {
            &self.phi_b
        } else {
            &self.phi_a
        }
    }
}

/// `out[i, c] = exp(q_ic + m_c - u_i)` for rows `t0 .. t0+n`: query features in row units `u`
/// against a state with log-scales `m` (eq. (N2) in docs/ela.md).
pub(crate) fn query_features_units<T: ElaFloat>(seq: &Seq<T>, t0: usize, m: &[T], u: &[T], out: &mut [T]) {
    let f = seq.f();
    for (i, &ui) in u.iter().enumerate() {
        let q = seq.q_row(t0 + i);
        for ((o, &x), &mc) in out[i * f..(i + 1) * f].iter_mut().zip(q).zip(m) {
            *o = x + mc - ui;
        }
    }
    T::exp_slice(&mut out[..u.len() * f]);
}

/// `max_c (q_ic + m_c)`: the log of the largest term a query can get from a state with
/// log-scales `m` (`-inf` for an empty state).
pub(crate) fn state_log_max<T: ElaFloat>(q: &[T], m: &[T]) -> T {
    max_of_sum(q, m)
}

/// `out[j, :] = exp(k_j - m)` (units) or `psi(k_j)`, for keys `t0 .. t0+n`: the key features as
/// they enter a state with log-scales `m`.
pub(crate) fn key_features_state<T: ElaFloat>(seq: &Seq<T>, t0: usize, n: usize, m: &[T], out: &mut [T]) {
    let f = seq.f();
    for j in 0..n {
        let k = seq.k_row(t0 + j);
        let o = &mut out[j * f..(j + 1) * f];
        if seq.exp() {
            for ((o, &x), &mc) in o.iter_mut().zip(k).zip(m) {
                *o = x - mc;
            }
        } else {
            psi_row(seq.kernel, k, o);
        }
    }
    if seq.exp() {
        T::exp_slice(&mut out[..n * f]);
    }
}

/// Fill `ch` for the causal chunk of rows `t0 .. t0+n` against the state `st` (docs/ela.md,
/// "chunked forward"): the feature maps, the masked block `A`, the denominators
/// `den_i = sum_{j<=i} A_ij + phi_state_i . z` and the rows that need the exact path.
pub(crate) fn prep<T: ElaFloat>(seq: &Seq<T>, t0: usize, n: usize, st: &State<T>, empty: bool, ch: &mut Chunk<T>) {
    let f = seq.f();
    ch.n = n;
    ch.slow.clear();
    if seq.exp() {
        // (N1): phi_a = exp(q - mq), psi_a = exp(k - mk), each <= 1 with a 1 in every row.
        for i in 0..n {
            let (q, k) = (seq.q_row(t0 + i), seq.k_row(t0 + i));
            let (mq, mk) = (max_of(q), max_of(k));
            ch.mq[i] = mq;
            ch.mk[i] = mk;
            for (o, &x) in ch.phi_a[i * f..(i + 1) * f].iter_mut().zip(q) {
                *o = x - mq;
            }
            for (o, &x) in ch.psi_a[i * f..(i + 1) * f].iter_mut().zip(k) {
                *o = x - mk;
            }
        }
        T::exp_slice(&mut ch.phi_a[..n * f]);
        T::exp_slice(&mut ch.psi_a[..n * f]);
        // (U) Row units u_i = max(mq_i + max_{j<=i} mk_j, max_c (q_ic + m_c)): an upper bound of every
        // log-term of row i, computed from rows <= i only (so causality holds bit for bit).
        let mut p = T::neg_infinity();
        for i in 0..n {
            p = p.max(ch.mk[i]);
            let intra = ch.mq[i] + p;
            ch.u[i] = if empty { intra } else { intra.max(state_log_max(seq.q_row(t0 + i), st.m)) };
        }
        if !empty {
            query_features_units(seq, t0, st.m, &ch.u[..n], &mut ch.phi_b);
        }
    } else {
        for i in 0..n {
            phi_row(seq.kernel, seq.q_row(t0 + i), &mut ch.phi_a[i * f..(i + 1) * f]);
            psi_row(seq.kernel, seq.k_row(t0 + i), &mut ch.psi_a[i * f..(i + 1) * f]);
        }
    }
    // B = phi_a psi_a^T (n x n, lower blocks only); psi_a^T is read through strides, no copy.
    mm_lower_out(n, f, &ch.phi_a, (f, 1), &ch.psi_a, (1, f), &mut ch.a, n);
    for i in 0..n {
        let row = &mut ch.a[i * n..(i + 1) * n];
        // Entries above the diagonal are set, not multiplied, so non-finite future inputs cannot
        // leak into earlier rows through 0 * inf.
        row[i + 1..].fill(T::ZERO);
        if seq.exp() {
            // E_ij = exp(mq_i + mk_j - u_i) <= 1 for j <= i (mk_j <= max_{j'<=i} mk_j'). Formed as
            // (mq_i - u_i) + mk_j: the rounding of u_i is then one shift shared by every term of
            // the row, which cancels in num / den. That sum can still round above 0 by an ulp of
            // the inputs: above ~1e9 in f32 the ulp exceeds 88, exp would overflow and 0 * inf
            // would turn rows into NaN. The true value is <= 0, so it is clamped there (a change
            // within the rounding; NaN stays NaN). A row whose terms all underflow this way takes
            // the exact path below.
            let e = &mut ch.e[i * n..(i + 1) * n];
            let base = ch.mq[i] - ch.u[i];
            for (x, &mk) in e[..=i].iter_mut().zip(&ch.mk[..=i]) {
                let v = base + mk;
                *x = if v > T::ZERO { T::ZERO } else { v };
            }
            // The exponentials run over whole 16-lane vectors: the few entries past the diagonal
            // that round the row up are exponentiated too (from 0) and zeroed after. A row cut at
            // the diagonal would leave up to 15 values to the scalar tail, about a third of the
            // exponentials' time; the values kept are the same bits either way.
            let len = (i + 1).next_multiple_of(EXP_LANES).min(n);
            e[i + 1..len].fill(T::ZERO);
            T::exp_slice(&mut e[..len]);
            e[i + 1..].fill(T::ZERO);
            for (x, &w) in row[..=i].iter_mut().zip(&e[..=i]) {
                *x = *x * w;
            }
        }
        let mut den = sum(&row[..=i]);
        if !empty {
            den = den + dot(&ch.phi_state()[i * f..(i + 1) * f], st.z);
        }
        ch.den[i] = den;
        if seq.exp() && den < T::TINY {
            ch.slow.push(i);
        }
    }
}

/// Absorb keys/values `t0 .. t0+n` into the state (eqs. (S), (S') in docs/ela.md). With units the
/// state's log-scales grow to `m' = max(m, max_j k_j)` first, rescaling `(S, z)` by
/// `exp(m - m')` (online-softmax style), so every entry stays <= its largest term.
pub(crate) fn absorb<T: ElaFloat>(seq: &Seq<T>, t0: usize, n: usize, st: &mut State<T>, ch: &mut Chunk<T>) {
    absorb_into(seq, t0, n, st, &mut ch.m_next, &mut ch.psi_u);
}

/// [`absorb`] with explicit scratch: `m_next` (`F`, units only) and `psi` (`n x F`), which is left
/// holding the key features as absorbed.
pub(crate) fn absorb_into<T: ElaFloat>(
    seq: &Seq<T>,
    t0: usize,
    n: usize,
    st: &mut State<T>,
    m_next: &mut [T],
    psi: &mut [T],
) {
    let (f, dv) = (seq.f(), seq.dv);
    if seq.exp() {
        m_next.copy_from_slice(st.m);
        for j in 0..n {
            for (mc, &x) in m_next.iter_mut().zip(seq.k_row(t0 + j)) {
                *mc = gt_max(*mc, x);
            }
        }
        rescale(st, m_next);
        key_features_state(seq, t0, n, m_next, psi);
    } else {
        key_features_state(seq, t0, n, &[], psi);
    }
    // S += psi^T V_c (F x n times n x Dv), z += column sums of psi.
    mm(f, dv, n, psi, (1, f), &seq.v[t0 * dv..], (dv, 1), T::ONE, st.s, dv);
    for j in 0..n {
        for (zc, &p) in st.z.iter_mut().zip(&psi[j * f..(j + 1) * f]) {
            *zc = *zc + p;
        }
    }
}

/// Move a state with units to the log-scales `m_new >= m`: multiply row `c` of `(S, z)` by
/// `exp(m_c - m_new_c)`. Rows that were empty (`m_c = -inf`) hold zeros and stay zero.
pub(crate) fn rescale<T: ElaFloat>(st: &mut State<T>, m_new: &[T]) {
    let dv = if st.z.is_empty() { 0 } else { st.s.len() / st.z.len() };
    for (c, &new) in m_new.iter().enumerate() {
        let old = st.m[c];
        if old != new {
            let r = if old == T::neg_infinity() { T::ZERO } else { T::exp1(old - new) };
            st.z[c] = st.z[c] * r;
            for x in &mut st.s[c * dv..(c + 1) * dv] {
                *x = *x * r;
            }
            st.m[c] = new;
        }
    }
}
