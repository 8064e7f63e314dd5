// Non-causal Exact Linear Attention in the parallel form, any built-in kernel, small heads
// (F x Dv <= NC_ACC * 256). Compiled in one module after recurrent.cu (kernel codes, feature_size).
//
// Without a causal mask every query reads the same state, so the sequential scan of recurrent.cu is not
// needed: the state is one reduction over all tokens and every output row is independent.
//
//   forward    S = sum_j psi_j v_j^T, z = sum_j psi_j          (ela_nc_outer, one block per sequence)
//              y_i = phi_i^T S / (phi_i . z)                   (ela_nc_query, one warp per token)
//   backward   g_i = dy_i / den_i, c_i = g_i . y_i
//              dphi_i = S g_i - c_i z -> dq                    (ela_nc_query_bwd; saves phi_i, g_i, c_i)
//              U = sum_i phi_i g_i^T, w = sum_i c_i phi_i      (ela_nc_outer on the saved rows)
//              dv_j = U^T psi_j, dpsi_j = U v_j - w -> dk      (ela_nc_key_bwd)
//
// The derivation is docs/ela.md, "Backward", (B1)-(B5), with every prefix sum replaced by the
// full sum.
// Hadamard Exp keeps its log-scales as in recurrent.cu, with m[f] = max_j k_jf over the whole sequence:
// psi = exp(k - m) <= 1, phi = exp(q + m - u) with u = max_f (q_f + m_f), so phi . z >= 1.
// Every sum runs in a fixed order (no atomics): results are deterministic.

// Accumulators per thread in ela_nc_outer: a block of 256 threads holds F x Dv <= 4096 entries.
#define NC_ACC 16
#define NC_WARPS 8

// warp_sum is common.cuh's.
template <typename C> __device__ __forceinline__ C warp_max(C v) {
    for (int o = 16; o > 0; o >>= 1) v = x_max(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Feature c of the row x (m: the log-scales, Hadamard Exp only).
template <typename C>
__device__ __forceinline__ C nc_feature(int kern, bool key, const C* x, int d, int c, C n2, const C* m, C u) {
    return nc_feature_at<C>(kern, key, c < d ? x[c] : (C)0, d, c, n2, kern == K_EXP ? m[c] : (C)0, u);
}

// dx = (d feature / d x)^T gf for one row, lanes of one warp over e < d (features_vjp of recurrent.cu).
template <typename D>
__device__ void nc_feature_vjp(int kern, bool key, const typename D::C* x, int d, const typename D::C* gf, typename D::C n2,
                               typename D::S* dx, int lane) {
    typedef typename D::C C;
    C gd, gd1, two_s = (C)0;
    nc_extra_grads<C>(kern, gf, d, gd, gd1);
    if (kern == K_BLUE) {
        C sg = (C)0;
        for (int e = lane; e < d; e += 32) sg += x[e] * gf[e];
        two_s = (C)2 * (warp_sum<C>(sg) + gd);
    }
    for (int e = lane; e < d; e += 32) dx[e] = D::store(nc_feature_vjp_at<C>(kern, key, x[e], gf[e], gd, gd1, n2, two_s));
}

// A = sum_r a_r b_r^T [F x Dv] and z = sum_r s_r a_r [F] over the T rows of each sequence.
// KEYS: a_r = psi(k_r) (Hadamard Exp: m = the column maxima of k, computed here and stored),
// b_r = v_r, s_r = 1. Otherwise a_r, b_r, s_r are rows of the buffers P [T x F], G [T x Dv],
// cs [T] (the backward's phi, g, c). Rows are staged in shared memory tc at a time.
template <typename D, bool KEYS>
__device__ void nc_outer_impl(typename D::C* A, typename D::C* z, typename D::C* m, const typename D::S* k,
                              const typename D::S* v, const typename D::C* P, const typename D::C* G,
                              const typename D::C* cs, i64 nseq, i64 T, int d, int dv, int kern, int tc) {
    typedef typename D::C C;
    extern __shared__ __align__(16) unsigned char ela_smem[];
    const int F = feature_size(kern, d), tid = threadIdx.x, nt_ = blockDim.x;
    C* ms = (C*)ela_smem;      // [F] log-scales (Hadamard Exp keys)
    C* red = ms + F;           // [blockDim] partial maxima
    C* ab = red + nt_;         // [tc x F] staged a rows
    C* bb = ab + tc * F;       // [tc x Dv] staged b rows
    C* sb = bb + tc * dv;      // [tc] staged s
    C* kb = sb + tc;           // [tc x d] staged key rows (KEYS)
    C* n2 = kb + tc * d;       // [tc] |k_r|^2 (KEYS)
    const bool units = KEYS && kern == K_EXP;
    for (i64 b = blockIdx.x; b < nseq; b += gridDim.x) {
        C acc[NC_ACC];
#pragma unroll
        for (int i = 0; i < NC_ACC; ++i) acc[i] = (C)0;
        C zacc = (C)0;
        if (units) {
            // Column maxima: lane group l of nl scans rows l, l + nl, ...; then one thread per column.
            int nl = nt_ / d, c = tid % d, l = tid / d;
            C a = neg_inf<C>();
            if (l < nl)
                for (i64 t = l; t < T; t += nl) a = x_max(a, D::load(k[(b * T + t) * d + c]));
            red[tid] = a;
            __syncthreads();
            if (tid < d) {
                C mx = red[tid];
                for (int j = 1; j < nl; ++j) mx = x_max(mx, red[j * d + tid]);
                ms[tid] = mx;
                m[b * F + tid] = mx;
            }
        }
        for (i64 t0 = 0; t0 < T; t0 += tc) {
            int nr = (int)(T - t0 < tc ? T - t0 : tc);
            __syncthreads();
            if (KEYS) {
                for (int e = tid; e < nr * d; e += nt_) kb[e] = D::load(k[(b * T + t0) * d + e]);
                for (int e = tid; e < nr * dv; e += nt_) bb[e] = D::load(v[(b * T + t0) * dv + e]);
                __syncthreads();
                if (kern != K_EXP && kern != K_ID && tid < nr) {
                    C s = (C)0;
                    for (int e = 0; e < d; ++e) s += kb[tid * d + e] * kb[tid * d + e];
                    n2[tid] = s;
                }
                __syncthreads();
                for (int e = tid; e < nr * F; e += nt_) {
                    int r = e / F;
                    ab[e] = nc_feature<C>(kern, true, kb + r * d, d, e % F, n2[r], ms, (C)0);
                }
            } else {
                for (int e = tid; e < nr * F; e += nt_) ab[e] = P[(b * T + t0) * F + e];
                for (int e = tid; e < nr * dv; e += nt_) bb[e] = G[(b * T + t0) * dv + e];
                for (int e = tid; e < nr; e += nt_) sb[e] = cs[b * T + t0 + e];
            }
            __syncthreads();
#pragma unroll
            for (int i = 0; i < NC_ACC; ++i) {
                int e = tid + i * nt_;
                if (e < F * dv) {
                    int c = e / dv, j = e % dv;
                    for (int r = 0; r < nr; ++r) acc[i] += ab[r * F + c] * bb[r * dv + j];
                }
            }
            if (tid < F)
                for (int r = 0; r < nr; ++r) zacc += (KEYS ? ab[r * F + tid] : sb[r] * ab[r * F + tid]);
        }
#pragma unroll
        for (int i = 0; i < NC_ACC; ++i) {
            int e = tid + i * nt_;
            if (e < F * dv) A[b * F * dv + e] = acc[i];
        }
        if (tid < F) z[b * F + tid] = zacc;
        __syncthreads();
    }
}

// Shared memory of the row kernels: the sequence's S (or U) [F x Dv], z (or w) [F], m [F], then
// per warp: a feature row [F], an input row [d], a value-sized row [Dv], a feature-sized row [F].
template <typename C> struct NcRows {
    C *S, *z, *m, *f, *x, *g, *t;
};
template <typename C> __device__ __forceinline__ NcRows<C> nc_rows(int F, int d, int dv) {
    extern __shared__ __align__(16) unsigned char ela_smem[];
    NcRows<C> s;
    s.S = (C*)ela_smem;
    s.z = s.S + F * dv;
    s.m = s.z + F;
    int w = threadIdx.x / 32, per = 2 * F + d + dv;
    s.f = s.m + F + w * per;
    s.x = s.f + F;
    s.g = s.x + d;
    s.t = s.g + dv;
    return s;
}

// Loads the sequence's state (S, z, m) of `b` into shared memory.
template <typename C>
__device__ void nc_load_state(NcRows<C> s, const C* S, const C* z, const C* m, i64 b, int F, int dv, bool units) {
    __syncthreads();
    for (int e = threadIdx.x; e < F * dv; e += blockDim.x) s.S[e] = S[b * F * dv + e];
    for (int e = threadIdx.x; e < F; e += blockDim.x) {
        s.z[e] = z[b * F + e];
        s.m[e] = units ? m[b * F + e] : (C)0;
    }
    __syncthreads();
}

// Query features of row `row` into s.f (one warp); returns |q|^2 (for the feature VJPs).
template <typename D>
__device__ typename D::C nc_query_features(NcRows<typename D::C> s, const typename D::S* q, i64 row, int kern, int d,
                                           int F, int lane) {
    typedef typename D::C C;
    for (int e = lane; e < d; e += 32) s.x[e] = D::load(q[row * d + e]);
    __syncwarp();
    C n2 = (C)0, u = (C)0;
    if (kern == K_EXP) {
        C a = neg_inf<C>();
        for (int c = lane; c < F; c += 32) a = x_max(a, s.x[c] + s.m[c]);
        u = warp_max<C>(a);
    } else if (kern != K_ID) {
        C a = (C)0;
        for (int e = lane; e < d; e += 32) a += s.x[e] * s.x[e];
        n2 = warp_sum<C>(a);
    }
    for (int c = lane; c < F; c += 32) s.f[c] = nc_feature<C>(kern, false, s.x, d, c, n2, s.m, u);
    __syncwarp();
    return n2;
}

// Runs body(row) for every token row, one warp per row: blocks take groups of `tpb` tokens of one
// sequence, and load that sequence's (S, z, m) into shared memory when it changes (a block-wide
// step: every thread of the block reaches it, also warps that get no row of a short group).
template <typename C, typename Body>
__device__ void nc_for_rows(NcRows<C> s, const C* S, const C* z, const C* m, bool units, i64 nseq, i64 T, int F,
                            int dv, int tpb, Body body) {
    const int warp = threadIdx.x / 32;
    const i64 groups = (T + tpb - 1) / tpb;
    i64 loaded = -1;
    for (i64 blk = blockIdx.x; blk < nseq * groups; blk += gridDim.x) {
        i64 b = blk / groups, i0 = (blk % groups) * tpb;
        if (b != loaded) {
            nc_load_state<C>(s, S, z, m, b, F, dv, units);
            loaded = b;
        }
        for (i64 i = i0 + warp; i < T && i < i0 + tpb; i += NC_WARPS) body(b * T + i);
    }
}

template <typename D>
__device__ void nc_query_impl(typename D::S* y, const typename D::S* q, const typename D::C* S, const typename D::C* z,
                              const typename D::C* m, i64 nseq, i64 T, int d, int dv, int kern, int tpb) {
    typedef typename D::C C;
    const int F = feature_size(kern, d);
    NcRows<C> s = nc_rows<C>(F, d, dv);
    const int lane = threadIdx.x % 32;
    nc_for_rows<C>(s, S, z, m, kern == K_EXP, nseq, T, F, dv, tpb, [&](i64 row) {
        nc_query_features<D>(s, q, row, kern, d, F, lane);
        C den = (C)0;
        for (int c = lane; c < F; c += 32) den += s.f[c] * s.z[c];
        den = warp_sum<C>(den);
        for (int j = lane; j < dv; j += 32) {
            C acc = (C)0;
            for (int c = 0; c < F; ++c) acc += s.f[c] * s.S[c * dv + j];
            y[row * dv + j] = D::store(acc / den);
        }
        __syncwarp();
    });
}

template <typename D>
__device__ void nc_query_bwd_impl(typename D::S* dq, typename D::C* P, typename D::C* G, typename D::C* cs,
                                  const typename D::S* q, const typename D::S* y, const typename D::S* dy,
                                  const typename D::C* S, const typename D::C* z, const typename D::C* m, i64 nseq,
                                  i64 T, int d, int dv, int kern, int tpb) {
    typedef typename D::C C;
    const int F = feature_size(kern, d);
    NcRows<C> s = nc_rows<C>(F, d, dv);
    const int lane = threadIdx.x % 32;
    nc_for_rows<C>(s, S, z, m, kern == K_EXP, nseq, T, F, dv, tpb, [&](i64 row) {
        C n2 = nc_query_features<D>(s, q, row, kern, d, F, lane);
        C den = (C)0;
        for (int c = lane; c < F; c += 32) den += s.f[c] * s.z[c];
        den = warp_sum<C>(den);
        C cc = (C)0;
        for (int j = lane; j < dv; j += 32) {
            C g = D::load(dy[row * dv + j]) / den;
            s.g[j] = g;
            G[row * dv + j] = g;
            cc += g * D::load(y[row * dv + j]);
        }
        cc = warp_sum<C>(cc);
        __syncwarp();
        for (int c = lane; c < F; c += 32) {
            C acc = (C)0;
            for (int j = 0; j < dv; ++j) acc += s.S[c * dv + j] * s.g[j];
            s.t[c] = acc - cc * s.z[c];
            P[row * F + c] = s.f[c];
        }
        if (lane == 0) cs[row] = cc;
        __syncwarp();
        if (kern == K_EXP) {
            for (int c = lane; c < F; c += 32) dq[row * d + c] = D::store(s.f[c] * s.t[c]);
        } else {
            nc_feature_vjp<D>(kern, false, s.x, d, s.t, n2, dq + row * d, lane);
        }
        __syncwarp();
    });
}

template <typename D>
__device__ void nc_key_bwd_impl(typename D::S* dk, typename D::S* dvo, const typename D::S* k, const typename D::S* v,
                                const typename D::C* U, const typename D::C* w, const typename D::C* m, i64 nseq, i64 T,
                                int d, int dv, int kern, int tpb) {
    typedef typename D::C C;
    const int F = feature_size(kern, d);
    NcRows<C> s = nc_rows<C>(F, d, dv);  // s.S = U, s.z = w
    const int lane = threadIdx.x % 32;
    nc_for_rows<C>(s, U, w, m, kern == K_EXP, nseq, T, F, dv, tpb, [&](i64 row) {
        for (int e = lane; e < d; e += 32) s.x[e] = D::load(k[row * d + e]);
        for (int j = lane; j < dv; j += 32) s.g[j] = D::load(v[row * dv + j]);
        __syncwarp();
        C n2 = (C)0;
        if (kern != K_EXP && kern != K_ID) {
            C a = (C)0;
            for (int e = lane; e < d; e += 32) a += s.x[e] * s.x[e];
            n2 = warp_sum<C>(a);
        }
        for (int c = lane; c < F; c += 32) s.f[c] = nc_feature<C>(kern, true, s.x, d, c, n2, s.m, (C)0);
        __syncwarp();
        for (int j = lane; j < dv; j += 32) {
            C acc = (C)0;
            for (int c = 0; c < F; ++c) acc += s.S[c * dv + j] * s.f[c];
            dvo[row * dv + j] = D::store(acc);
        }
        for (int c = lane; c < F; c += 32) {
            C acc = (C)0;
            for (int j = 0; j < dv; ++j) acc += s.S[c * dv + j] * s.g[j];
            s.t[c] = acc - s.z[c];
        }
        __syncwarp();
        if (kern == K_EXP) {
            for (int c = lane; c < F; c += 32) dk[row * d + c] = D::store(s.f[c] * s.t[c]);
        } else {
            nc_feature_vjp<D>(kern, true, s.x, d, s.t, n2, dk + row * d, lane);
        }
        __syncwarp();
    });
}

#define ELA_NC(NAME, D)                                                                                           \
    extern "C" __global__ void ela_nc_state_##NAME(D::C* S, D::C* z, D::C* m, const D::S* k, const D::S* v,     \
                                                   i64 nseq, i64 T, int d, int dv, int kern, int tc) {           \
        nc_outer_impl<D, true>(S, z, m, k, v, (const D::C*)0, (const D::C*)0, (const D::C*)0, nseq, T, d, dv,   \
                               kern, tc);                                                                        \
    }                                                                                                            \
    extern "C" __global__ void ela_nc_outer_##NAME(D::C* U, D::C* w, const D::C* P, const D::C* G,              \
                                                   const D::C* cs, i64 nseq, i64 T, int d, int dv, int kern,     \
                                                   int tc) {                                                     \
        nc_outer_impl<D, false>(U, w, (D::C*)0, (const D::S*)0, (const D::S*)0, P, G, cs, nseq, T, d, dv, kern, \
                                tc);                                                                             \
    }                                                                                                            \
    extern "C" __global__ void ela_nc_query_##NAME(D::S* y, const D::S* q, const D::C* S, const D::C* z,        \
                                                   const D::C* m, i64 nseq, i64 T, int d, int dv, int kern,      \
                                                   int tpb) {                                                    \
        nc_query_impl<D>(y, q, S, z, m, nseq, T, d, dv, kern, tpb);                                              \
    }                                                                                                            \
    extern "C" __global__ void ela_nc_query_bwd_##NAME(D::S* dq, D::C* P, D::C* G, D::C* cs, const D::S* q,     \
                                                       const D::S* y, const D::S* dy, const D::C* S,             \
                                                       const D::C* z, const D::C* m, i64 nseq, i64 T, int d,     \
                                                       int dv, int kern, int tpb) {                              \
        nc_query_bwd_impl<D>(dq, P, G, cs, q, y, dy, S, z, m, nseq, T, d, dv, kern, tpb);                        \
    }                                                                                                            \
    extern "C" __global__ void ela_nc_key_bwd_##NAME(D::S* dk, D::S* dvo, const D::S* k, const D::S* v,         \
                                                     const D::C* U, const D::C* w, const D::C* m, i64 nseq,      \
                                                     i64 T, int d, int dv, int kern, int tpb) {                  \
        nc_key_bwd_impl<D>(dk, dvo, k, v, U, w, m, nseq, T, d, dv, kern, tpb);                                   \
    }
ELA_NC(f16, F16)
ELA_NC(bf16, BF16)
ELA_NC(f32, F32)
ELA_NC(f64, F64)
