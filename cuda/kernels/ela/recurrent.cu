// Exact Linear Attention, fused, for any built-in kernel: the feature maps of every kernel and
// their VJPs (also used by noncausal.cu), and the per-token scan: forward (causal with an
// optional carried state, or non-causal), backward, and (through the forward with T = 1) the
// recurrent step. One block per (batch, head)
// sequence scans time in the *recurrent* form (docs/ela.md): per token, absorb (k, v) into the
// state (S [F x Dv], z [F]) and read y = phi(q)^T S / (phi(q) . z), eq. (L). Work O(T F Dv) per sequence,
// state O(F Dv), no T x T buffer. The CPU backend's chunked form computes the same quantities; the
// results agree to rounding (tests/tests/cuda_ops/ela.rs).
//
// Hadamard Exp carries log-scales as on the CPU: the state holds exp(-m[f]) * (S, z) with m the
// running per-feature maximum of the keys (rescaled like online softmax when it grows), keys enter
// as psi = exp(k - m) <= 1, and a query as phi = exp(q + m - u), u = max_f (q_f + m_f). The
// feature f* attaining u has phi = 1 and z[f*] >= 1 (the key that set m[f*] contributed exp(0)),
// so every denominator is >= 1: no underflow path is needed in this form.
//
// Backward (docs/ela.md, "Backward"; g = dy / den, c = g . y per row, all in the row's units):
//   dphi_i = S_i g_i - c_i z_i            (B2; forward scan; S_i includes key i)
//   U_j = sum_{i>=j} phi_i g_i^T, w_j = sum_{i>=j} c_i phi_i   (B3, R; reverse scan, rescaled
//         between the log-scale frames of consecutive keys)
//   dv_j = U_j^T psi_j (B4), dpsi_j = U_j v_j - w_j (B3); dq = phi * dphi, dk = psi * dpsi
//   (B5 with V1, Hadamard Exp) or the feature maps' vector-Jacobian products (other kernels).

// Kernel codes K_EXP, K_SUM, K_SUB, K_BLUE, K_ID, K_ELU: defined before this file by cuda/src/kernels.rs
// (`ela_kernel_defines`) from `ElaKernel::code` in core/src/ela.rs, so they cannot drift.

__device__ __forceinline__ int feature_size(int kern, int d) {
    return (kern == K_SUM || kern == K_SUB) ? d + 2 : (kern == K_BLUE ? d + 1 : d);
}

template <typename D> __device__ __forceinline__ void load_row(typename D::C* dst, const typename D::S* src, int n) {
    for (int e = threadIdx.x; e < n; e += blockDim.x) dst[e] = D::load(src[e]);
}

// out[F] = phi(x) (query) or psi(x) (key) for the signed kernels, elu+1 and Identity.
template <typename C> __device__ void features(int kern, bool key, const C* x, int d, C* out, C* red) {
    C n2 = (C)0;
    if (kern != K_ID && kern != K_ELU) {
        C s = (C)0;
        for (int e = threadIdx.x; e < d; e += blockDim.x) s += x[e] * x[e];
        n2 = block_sum<C>(s, red);
    }
    int F = feature_size(kern, d);
    for (int c = threadIdx.x; c < F; c += blockDim.x) {
        C v;
        if (kern == K_SUM || kern == K_SUB) {
            C two = (kern == K_SUM || !key) ? (C)2 : (C)-2;
            if (c < d) v = key ? two * x[c] : x[c];
            else if (c == d) v = key ? (C)1 : n2;
            else v = key ? n2 : (C)1;
        } else if (kern == K_BLUE) {
            C n = n2 + (C)1;
            v = c < d ? n * x[c] : n;
        } else if (kern == K_ELU) {
            v = x[c] > (C)0 ? x[c] + (C)1 : x_exp(x[c]);
        } else {
            v = x[c];
        }
        out[c] = v;
    }
}

// dx[d] = (d feature / d x)^T gf for every kernel but Hadamard Exp, stored to global memory:
// (V2)-(V4) for Sum/Sub, (V5) for the blueprint, (V6) for elu+1, the identity for Identity
// (Hadamard Exp, (V1), is `phi * dphi` in the scan).
template <typename D>
__device__ void features_vjp(int kern, bool key, const typename D::C* x, int d, const typename D::C* gf,
                             typename D::S* dx, typename D::C* red) {
    typedef typename D::C C;
    if (kern == K_BLUE) {
        C s2 = (C)0, sg = (C)0;
        for (int e = threadIdx.x; e < d; e += blockDim.x) {
            s2 += x[e] * x[e];
            sg += x[e] * gf[e];
        }
        C n = block_sum<C>(s2, red) + (C)1;
        C two_s = (C)2 * (block_sum<C>(sg, red) + gf[d]);
        for (int e = threadIdx.x; e < d; e += blockDim.x) dx[e] = D::store(n * gf[e] + two_s * x[e]);
        return;
    }
    for (int e = threadIdx.x; e < d; e += blockDim.x) {
        C r;
        if (kern == K_SUM || kern == K_SUB) {
            if (key) r = (kern == K_SUM ? (C)2 : (C)-2) * gf[e] + (C)2 * gf[d + 1] * x[e];
            else r = gf[e] + (C)2 * gf[d] * x[e];
        } else if (kern == K_ELU) {
            r = x[e] > (C)0 ? gf[e] : gf[e] * x_exp(x[e]);
        } else {
            r = gf[e];
        }
        dx[e] = D::store(r);
    }
}

// Shared-memory vectors of one block (dynamic shared memory, carved in this order).
template <typename C> struct Vecs {
    C *q, *k, *v, *y, *g, *phi, *psi, *r, *t, *red;
};
template <typename C> __device__ __forceinline__ Vecs<C> carve(int d, int dv, int F) {
    extern __shared__ __align__(16) unsigned char ela_smem[];
    Vecs<C> s;
    s.q = (C*)ela_smem;
    s.k = s.q + d;
    s.v = s.k + d;
    s.y = s.v + dv;
    s.g = s.y + dv;
    s.phi = s.g + dv;
    s.psi = s.phi + F;
    s.r = s.psi + F;
    s.t = s.r + F;
    s.red = s.t + F;
    return s;
}

// Absorb key row k, value row v into (S, z, m): psi in s.psi; rescale factors in s.r.
template <typename D>
__device__ void absorb(const typename D::S* k, const typename D::S* v, typename D::C* S, typename D::C* z,
                       typename D::C* m, int kern, int d, int dv, int F, Vecs<typename D::C> s) {
    typedef typename D::C C;
    __syncthreads();
    load_row<D>(s.k, k, d);
    load_row<D>(s.v, v, dv);
    __syncthreads();
    if (kern == K_EXP) {
        for (int c = threadIdx.x; c < F; c += blockDim.x) {
            C mo = m[c], mn = x_max(mo, s.k[c]);
            s.r[c] = mo == mn ? (C)1 : (mo == neg_inf<C>() ? (C)0 : x_exp(mo - mn));
            m[c] = mn;
            s.psi[c] = x_exp(s.k[c] - mn);
        }
    } else {
        features<C>(kern, true, s.k, d, s.psi, s.red);
        for (int c = threadIdx.x; c < F; c += blockDim.x) s.r[c] = (C)1;
    }
    __syncthreads();
    for (i64 e = threadIdx.x; e < (i64)F * dv; e += blockDim.x) {
        int c = (int)(e / dv), j = (int)(e % dv);
        S[e] = S[e] * s.r[c] + s.psi[c] * s.v[j];
    }
    for (int c = threadIdx.x; c < F; c += blockDim.x) z[c] = z[c] * s.r[c] + s.psi[c];
    __syncthreads();
}

// Query features of row q against log-scales m (units) into s.phi; returns den = phi . z.
template <typename D>
__device__ typename D::C query(const typename D::S* q, const typename D::C* z, const typename D::C* m, int kern, int d,
                               int F, Vecs<typename D::C> s) {
    typedef typename D::C C;
    __syncthreads();
    load_row<D>(s.q, q, d);
    __syncthreads();
    if (kern == K_EXP) {
        C u = neg_inf<C>();
        for (int c = threadIdx.x; c < F; c += blockDim.x) u = x_max(u, s.q[c] + m[c]);
        u = block_max<C>(u, s.red);
        for (int c = threadIdx.x; c < F; c += blockDim.x) s.phi[c] = x_exp(s.q[c] + m[c] - u);
    } else {
        features<C>(kern, false, s.q, d, s.phi, s.red);
    }
    __syncthreads();
    C den = (C)0;
    for (int c = threadIdx.x; c < F; c += blockDim.x) den += s.phi[c] * z[c];
    return block_sum<C>(den, s.red);
}

// Non-causal with units: m = the per-feature maximum over all keys (no rescaling afterwards).
template <typename D>
__device__ void global_max(const typename D::S* k, typename D::C* m, i64 T, int d) {
    typedef typename D::C C;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        C a = neg_inf<C>();
        for (i64 t = 0; t < T; ++t) a = x_max(a, D::load(k[t * d + c]));
        m[c] = a;
    }
    __syncthreads();
}

template <typename D>
__device__ void ela_fwd_impl(typename D::S* y, const typename D::S* q, const typename D::S* k, const typename D::S* v,
                             typename D::C* S, typename D::C* z, typename D::C* m, i64 nseq, i64 T, int d, int dv,
                             int kern, int causal) {
    typedef typename D::C C;
    int F = feature_size(kern, d);
    Vecs<C> s = carve<C>(d, dv, F);
    for (i64 b = blockIdx.x; b < nseq; b += gridDim.x) {
        const typename D::S *qb = q + b * T * d, *kb = k + b * T * d, *vb = v + b * T * dv;
        C *Sb = S + b * F * dv, *zb = z + b * F, *mb = kern == K_EXP ? m + b * F : (C*)0;
        if (!causal) {
            if (kern == K_EXP) global_max<D>(kb, mb, T, d);
            for (i64 t = 0; t < T; ++t) absorb<D>(kb + t * d, vb + t * dv, Sb, zb, mb, kern, d, dv, F, s);
        }
        for (i64 t = 0; t < T; ++t) {
            if (causal) absorb<D>(kb + t * d, vb + t * dv, Sb, zb, mb, kern, d, dv, F, s);
            C den = query<D>(qb + t * d, zb, mb, kern, d, F, s);
            for (int j = threadIdx.x; j < dv; j += blockDim.x) {
                C acc = (C)0;
                for (int c = 0; c < F; ++c) acc += s.phi[c] * Sb[(i64)c * dv + j];
                y[(b * T + t) * dv + j] = D::store(acc / den);
            }
        }
    }
}

// Scratch per sequence: S, z, m (forward state from empty), U [F x Dv], w [F], mh [T x F]
// (the log-scales after each key, units only) and dn [T] (denominators), all zero / -inf.
template <typename D>
__device__ void ela_bwd_impl(typename D::S* dq, typename D::S* dk, typename D::S* dvo, const typename D::S* q,
                             const typename D::S* k, const typename D::S* v, const typename D::S* y,
                             const typename D::S* dy, typename D::C* S, typename D::C* z, typename D::C* m,
                             typename D::C* U, typename D::C* w, typename D::C* mh, typename D::C* dn, i64 nseq, i64 T,
                             int d, int dv, int kern, int causal) {
    typedef typename D::C C;
    int F = feature_size(kern, d);
    bool units = kern == K_EXP;
    Vecs<C> s = carve<C>(d, dv, F);
    for (i64 b = blockIdx.x; b < nseq; b += gridDim.x) {
        i64 rq = b * T * d, rv = b * T * dv;
        C *Sb = S + b * F * dv, *zb = z + b * F, *mb = units ? m + b * F : (C*)0;
        C *Ub = U + b * F * dv, *wb = w + b * F, *mhb = units ? mh + b * T * F : (C*)0, *dnb = dn + b * T;
        if (!causal) {
            if (units) global_max<D>(k + rq, mb, T, d);
            for (i64 t = 0; t < T; ++t) absorb<D>(k + rq + t * d, v + rv + t * dv, Sb, zb, mb, kern, d, dv, F, s);
        }
        // Pass A (time forward): dq, and (non-causal) U, w.
        for (i64 i = 0; i < T; ++i) {
            if (causal) absorb<D>(k + rq + i * d, v + rv + i * dv, Sb, zb, mb, kern, d, dv, F, s);
            C den = query<D>(q + rq + i * d, zb, mb, kern, d, F, s);
            load_row<D>(s.y, y + rv + i * dv, dv);
            load_row<D>(s.g, dy + rv + i * dv, dv);
            __syncthreads();
            C cc = (C)0;
            for (int j = threadIdx.x; j < dv; j += blockDim.x) {
                s.g[j] = s.g[j] / den;
                cc += s.g[j] * s.y[j];
            }
            cc = block_sum<C>(cc, s.red);
            for (int c = threadIdx.x; c < F; c += blockDim.x) {
                C acc = (C)0;
                for (int j = 0; j < dv; ++j) acc += Sb[(i64)c * dv + j] * s.g[j];
                s.t[c] = acc - cc * zb[c];
            }
            __syncthreads();
            if (units) {
                for (int c = threadIdx.x; c < F; c += blockDim.x) dq[rq + i * d + c] = D::store(s.phi[c] * s.t[c]);
            } else {
                features_vjp<D>(kern, false, s.q, d, s.t, dq + rq + i * d, s.red);
            }
            if (causal) {
                if (units)
                    for (int c = threadIdx.x; c < F; c += blockDim.x) mhb[i * F + c] = mb[c];
                if (threadIdx.x == 0) dnb[i] = den;
            } else {
                for (i64 e = threadIdx.x; e < (i64)F * dv; e += blockDim.x) Ub[e] += s.phi[e / dv] * s.g[e % dv];
                for (int c = threadIdx.x; c < F; c += blockDim.x) wb[c] += cc * s.phi[c];
            }
            __syncthreads();
        }
        // Pass B (time reversed): dk, dv; causal runs also build U, w here.
        for (i64 j = T - 1; j >= 0; --j) {
            const C* mf = causal ? mhb + j * F : mb;  // the log-scale frame of key j
            if (causal) {
                if (units && j < T - 1) {
                    const C* mn = mhb + (j + 1) * F;
                    for (i64 e = threadIdx.x; e < (i64)F * dv; e += blockDim.x) {
                        int c = (int)(e / dv);
                        if (mf[c] != mn[c]) Ub[e] *= x_exp(mf[c] - mn[c]);
                    }
                    for (int c = threadIdx.x; c < F; c += blockDim.x)
                        if (mf[c] != mn[c]) wb[c] *= x_exp(mf[c] - mn[c]);
                }
                C den = dnb[j];
                query<D>(q + rq + j * d, zb, mf, kern, d, F, s);  // phi only; this den is unused
                load_row<D>(s.y, y + rv + j * dv, dv);
                load_row<D>(s.g, dy + rv + j * dv, dv);
                __syncthreads();
                C cc = (C)0;
                for (int jj = threadIdx.x; jj < dv; jj += blockDim.x) {
                    s.g[jj] = s.g[jj] / den;
                    cc += s.g[jj] * s.y[jj];
                }
                cc = block_sum<C>(cc, s.red);
                for (i64 e = threadIdx.x; e < (i64)F * dv; e += blockDim.x) Ub[e] += s.phi[e / dv] * s.g[e % dv];
                for (int c = threadIdx.x; c < F; c += blockDim.x) wb[c] += cc * s.phi[c];
            }
            __syncthreads();
            load_row<D>(s.k, k + rq + j * d, d);
            load_row<D>(s.v, v + rv + j * dv, dv);
            __syncthreads();
            if (units) {
                for (int c = threadIdx.x; c < F; c += blockDim.x) s.psi[c] = x_exp(s.k[c] - mf[c]);
            } else {
                features<C>(kern, true, s.k, d, s.psi, s.red);
            }
            __syncthreads();
            for (int jj = threadIdx.x; jj < dv; jj += blockDim.x) {
                C acc = (C)0;
                for (int c = 0; c < F; ++c) acc += Ub[(i64)c * dv + jj] * s.psi[c];
                dvo[rv + j * dv + jj] = D::store(acc);
            }
            for (int c = threadIdx.x; c < F; c += blockDim.x) {
                C acc = (C)0;
                for (int jj = 0; jj < dv; ++jj) acc += Ub[(i64)c * dv + jj] * s.v[jj];
                s.t[c] = acc - wb[c];
            }
            __syncthreads();
            if (units) {
                for (int c = threadIdx.x; c < F; c += blockDim.x) dk[rq + j * d + c] = D::store(s.psi[c] * s.t[c]);
            } else {
                features_vjp<D>(kern, true, s.k, d, s.t, dk + rq + j * d, s.red);
            }
            __syncthreads();
        }
    }
}

#define ELA(NAME, D)                                                                                             \
    extern "C" __global__ void ela_fwd_##NAME(D::S* y, const D::S* q, const D::S* k, const D::S* v, D::C* S,    \
                                              D::C* z, D::C* m, i64 nseq, i64 T, int d, int dv, int kern,        \
                                              int causal) {                                                      \
        ela_fwd_impl<D>(y, q, k, v, S, z, m, nseq, T, d, dv, kern, causal);                                      \
    }                                                                                                            \
    extern "C" __global__ void ela_bwd_##NAME(D::S* dq, D::S* dk, D::S* dvo, const D::S* q, const D::S* k,      \
                                              const D::S* v, const D::S* y, const D::S* dy, D::C* S, D::C* z,    \
                                              D::C* m, D::C* U, D::C* w, D::C* mh, D::C* dn, i64 nseq, i64 T,    \
                                              int d, int dv, int kern, int causal) {                             \
        ela_bwd_impl<D>(dq, dk, dvo, q, k, v, y, dy, S, z, m, U, w, mh, dn, nseq, T, d, dv, kern, causal);      \
    }
ELA(f16, F16)
ELA(bf16, BF16)
ELA(f32, F32)
ELA(f64, F64)
