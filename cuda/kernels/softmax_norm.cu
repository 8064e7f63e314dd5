// Last-axis softmax / log-softmax and RMS / layer norm, forward and backward, over contiguous
// [rows, n] data: one block per row (grid-stride over rows), block reductions in registers and
// shared memory. The formulas and the precision of every sum mirror core/src/cpu/nn.rs; per-row
// statistics (rstd, mean) are stored in the compute type C (f32, or f64 for f64 inputs).

// ---------------------------------------------------------------- softmax

template <typename D> __device__ void softmax_impl(typename D::S* y, const typename D::S* x, i64 rows, i64 n, int log_) {
    typedef typename D::C C;
    __shared__ C sh[32];
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const typename D::S* xr = x + r * n;
        typename D::S* yr = y + r * n;
        C m = neg_inf<C>();
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) m = x_max(m, D::load(xr[j]));
        m = block_max<C>(m, sh);
        C s = (C)0;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) s += x_exp(D::load(xr[j]) - m);
        s = block_sum<C>(s, sh);
        if (log_) {
            C ls = x_log(s);
            for (i64 j = threadIdx.x; j < n; j += blockDim.x) yr[j] = D::store(D::load(xr[j]) - m - ls);
        } else {
            C inv = (C)1 / s;
            for (i64 j = threadIdx.x; j < n; j += blockDim.x) yr[j] = D::store(x_exp(D::load(xr[j]) - m) * inv);
        }
    }
}

// log: dx = dy - exp(y) sum(dy); else dx = y (dy - sum(dy y)).
// Derivation: docs/autograd.md#fused-ops ("softmax", "log_softmax").
template <typename D>
__device__ void softmax_bwd_impl(typename D::S* dx, const typename D::S* y, const typename D::S* dy, i64 rows, i64 n,
                                 int log_) {
    typedef typename D::C C;
    __shared__ C sh[32];
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const typename D::S *yr = y + r * n, *gr = dy + r * n;
        C s = (C)0;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) s += log_ ? D::load(gr[j]) : D::load(yr[j]) * D::load(gr[j]);
        s = block_sum<C>(s, sh);
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            C yv = D::load(yr[j]), g = D::load(gr[j]);
            dx[r * n + j] = D::store(log_ ? g - x_exp(yv) * s : yv * (g - s));
        }
    }
}

#define SOFTMAX(NAME, D)                                                                                     \
    extern "C" __global__ void softmax_##NAME(D::S* y, const D::S* x, i64 rows, i64 n, int log_) {          \
        softmax_impl<D>(y, x, rows, n, log_);                                                                \
    }                                                                                                        \
    extern "C" __global__ void softmax_bwd_##NAME(D::S* dx, const D::S* y, const D::S* dy, i64 rows, i64 n, \
                                                  int log_) {                                                \
        softmax_bwd_impl<D>(dx, y, dy, rows, n, log_);                                                       \
    }
SOFTMAX(f16, F16)
SOFTMAX(bf16, BF16)
SOFTMAX(f32, F32)
SOFTMAX(f64, F64)

// ---------------------------------------------------------------- RMS norm

// y = x rstd w, rstd = 1 / sqrt(mean(x^2) + eps); `w` may be null.
template <typename D>
__device__ void rms_impl(typename D::S* y, typename D::C* rstd, const typename D::S* x, const typename D::S* w, i64 rows,
                         i64 n, double eps) {
    typedef typename D::C C;
    __shared__ double sh[32];
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const typename D::S* xr = x + r * n;
        double ss = 0.0;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            double v = (double)D::load(xr[j]);
            ss += v * v;
        }
        ss = block_sum<double>(ss, sh);
        C rs = (C)1 / x_sqrt((C)(ss / (double)(n > 0 ? n : 1)) + (C)eps);
        if (threadIdx.x == 0) rstd[r] = rs;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            C v = D::load(xr[j]) * rs;
            if (w) v = v * D::load(w[j]);
            y[r * n + j] = D::store(v);
        }
    }
}

// dx_j = r (w_j g_j) - x_j r^3 / n * sum_k (w_k g_k x_k) (+ plus_j: with `plus` non-null, another
// gradient of x added before the one rounding, e.g. a residual branch's, which saves a separate
// addition over the rows; the same in the two variants below).
// Derivation: docs/autograd.md#fused-ops ("RMS norm").
template <typename D>
__device__ void rms_bwd_impl(typename D::S* dx, const typename D::S* x, const typename D::S* w, const typename D::C* rstd,
                             const typename D::S* dy, const typename D::S* plus, i64 rows, i64 n) {
    typedef typename D::C C;
    __shared__ double sh[32];
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const typename D::S *xr = x + r * n, *gr = dy + r * n;
        double dot = 0.0;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            C wg = D::load(gr[j]);
            if (w) wg = wg * D::load(w[j]);
            dot += (double)(wg * D::load(xr[j]));
        }
        dot = block_sum<double>(dot, sh);
        C rs = rstd[r];
        C c = rs * rs * rs * (C)dot / (C)n;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            C wg = D::load(gr[j]);
            if (w) wg = wg * D::load(w[j]);
            const C p = plus ? D::load(plus[r * n + j]) : (C)0;
            dx[r * n + j] = D::store(rs * wg - D::load(xr[j]) * c + p);
        }
    }
}

// The same two functions with one warp per row, for rows of at most RMS_WARP_MAX elements (a
// transformer's hidden size): no block-wide barrier, and with `vec` (n a multiple of the 16-byte
// vector and every buffer 16-byte aligned, checked by the host) 16-byte loads and stores. Each
// lane adds its elements in f64, then the warp's butterfly adds the lanes.
#define RMS_WARP_MAX 2048
template <typename D>
__device__ __forceinline__ double rms_row_dot(const typename D::S* a, const typename D::S* b, const typename D::S* w,
                                              i64 n, int vec) {
    // sum_j a_j b_j (w_j when w), a == b for the forward's sum of squares.
    typedef typename D::S S;
    typedef typename D::C C;
    const int V = 16 / sizeof(S), lane = threadIdx.x & 31;
    double s = 0.0;
    if (vec) {
        for (i64 j = (i64)lane * V; j < n; j += 32 * V) {
            Pack16<S> ua, ub, uw;
            ua.raw = *(const u128x*)(a + j);
            ub.raw = *(const u128x*)(b + j);
            if (w) uw.raw = *(const u128x*)(w + j);
#pragma unroll
            for (int k = 0; k < V; ++k) {
                C t = D::load(ua.v[k]);
                if (w) t = t * D::load(uw.v[k]);
                s += (double)t * (double)D::load(ub.v[k]);
            }
        }
    } else {
        for (i64 j = lane; j < n; j += 32) {
            C t = D::load(a[j]);
            if (w) t = t * D::load(w[j]);
            s += (double)t * (double)D::load(b[j]);
        }
    }
    return warp_sum(s);
}
// y = x rs w for one row, by one warp (w may be null): the write of rms_warp_impl and add_rms_warp_impl.
template <typename D>
__device__ __forceinline__ void rms_warp_write(typename D::S* yr, const typename D::S* xr, const typename D::S* w,
                                               typename D::C rs, i64 n, int vec) {
    typedef typename D::S S;
    typedef typename D::C C;
    const int V = 16 / sizeof(S), lane = threadIdx.x & 31;
    if (vec) {
        for (i64 j = (i64)lane * V; j < n; j += 32 * V) {
            Pack16<S> u, uw, o;
            u.raw = *(const u128x*)(xr + j);
            if (w) uw.raw = *(const u128x*)(w + j);
#pragma unroll
            for (int k = 0; k < V; ++k) {
                C v = D::load(u.v[k]) * rs;
                if (w) v = v * D::load(uw.v[k]);
                o.v[k] = D::store(v);
            }
            *(u128x*)(yr + j) = o.raw;
        }
    } else {
        for (i64 j = lane; j < n; j += 32) {
            C v = D::load(xr[j]) * rs;
            if (w) v = v * D::load(w[j]);
            yr[j] = D::store(v);
        }
    }
}
template <typename D>
__device__ void rms_warp_impl(typename D::S* y, typename D::C* rstd, const typename D::S* x, const typename D::S* w,
                              i64 rows, i64 n, double eps, int vec) {
    typedef typename D::S S;
    typedef typename D::C C;
    const int lane = threadIdx.x & 31, per_block = blockDim.x >> 5;
    for (i64 r = (i64)blockIdx.x * per_block + (threadIdx.x >> 5); r < rows; r += (i64)gridDim.x * per_block) {
        const S* xr = x + r * n;
        S* yr = y + r * n;
        const double ss = rms_row_dot<D>(xr, xr, nullptr, n, vec);
        const C rs = (C)1 / x_sqrt((C)(ss / (double)(n > 0 ? n : 1)) + (C)eps);
        if (lane == 0) rstd[r] = rs;
        rms_warp_write<D>(yr, xr, w, rs, n, vec);
    }
}
// h = a + b and the RMS norm of h, one warp per row: a pre-norm block's residual sum and the
// norm that reads it, in one pass (a, b read, h and y written) instead of an add that writes h
// and a norm that reads it back. The same bits as the two kernels: h is rounded as
// binary_contig rounds an add, the sum of squares runs over the rounded h in rms_row_dot's
// order, and y is rms_warp_impl's expression; each lane reads back only the h it stored.
template <typename D>
__device__ void add_rms_warp_impl(typename D::S* h, typename D::S* y, typename D::C* rstd, const typename D::S* a,
                                  const typename D::S* b, const typename D::S* w, i64 rows, i64 n, double eps,
                                  int vec) {
    typedef typename D::S S;
    typedef typename D::C C;
    const int V = 16 / sizeof(S), lane = threadIdx.x & 31, per_block = blockDim.x >> 5;
    for (i64 r = (i64)blockIdx.x * per_block + (threadIdx.x >> 5); r < rows; r += (i64)gridDim.x * per_block) {
        const S *ar = a + r * n, *br = b + r * n;
        S* hr = h + r * n;
        double ss = 0.0;
        if (vec) {
            for (i64 j = (i64)lane * V; j < n; j += 32 * V) {
                Pack16<S> ua, ub, o;
                ua.raw = *(const u128x*)(ar + j);
                ub.raw = *(const u128x*)(br + j);
#pragma unroll
                for (int k = 0; k < V; ++k) {
                    o.v[k] = D::store(D::load(ua.v[k]) + D::load(ub.v[k]));
                    const C t = D::load(o.v[k]);
                    ss += (double)t * (double)t;
                }
                *(u128x*)(hr + j) = o.raw;
            }
        } else {
            for (i64 j = lane; j < n; j += 32) {
                const S hv = D::store(D::load(ar[j]) + D::load(br[j]));
                hr[j] = hv;
                const C t = D::load(hv);
                ss += (double)t * (double)t;
            }
        }
        ss = warp_sum(ss);
        const C rs = (C)1 / x_sqrt((C)(ss / (double)(n > 0 ? n : 1)) + (C)eps);
        if (lane == 0) rstd[r] = rs;
        S* yr = y + r * n;
        rms_warp_write<D>(yr, hr, w, rs, n, vec);
    }
}
// Derivation: docs/autograd.md#fused-ops ("RMS norm").
template <typename D>
__device__ void rms_bwd_warp_impl(typename D::S* dx, const typename D::S* x, const typename D::S* w,
                                  const typename D::C* rstd, const typename D::S* dy, const typename D::S* plus, i64 rows,
                                  i64 n, int vec) {
    typedef typename D::S S;
    typedef typename D::C C;
    const int V = 16 / sizeof(S), lane = threadIdx.x & 31, per_block = blockDim.x >> 5;
    for (i64 r = (i64)blockIdx.x * per_block + (threadIdx.x >> 5); r < rows; r += (i64)gridDim.x * per_block) {
        const S *xr = x + r * n, *gr = dy + r * n, *pr = plus ? plus + r * n : nullptr;
        S* dxr = dx + r * n;
        const double dot = rms_row_dot<D>(gr, xr, w, n, vec);
        const C rs = rstd[r];
        const C c = rs * rs * rs * (C)dot / (C)n;
        if (vec) {
            for (i64 j = (i64)lane * V; j < n; j += 32 * V) {
                Pack16<S> ux, ug, uw, up, o;
                ux.raw = *(const u128x*)(xr + j);
                ug.raw = *(const u128x*)(gr + j);
                if (w) uw.raw = *(const u128x*)(w + j);
                if (pr) up.raw = *(const u128x*)(pr + j);
#pragma unroll
                for (int k = 0; k < V; ++k) {
                    C wg = D::load(ug.v[k]);
                    if (w) wg = wg * D::load(uw.v[k]);
                    const C p = pr ? D::load(up.v[k]) : (C)0;
                    o.v[k] = D::store(rs * wg - D::load(ux.v[k]) * c + p);
                }
                *(u128x*)(dxr + j) = o.raw;
            }
        } else {
            for (i64 j = lane; j < n; j += 32) {
                C wg = D::load(gr[j]);
                if (w) wg = wg * D::load(w[j]);
                const C p = pr ? D::load(pr[j]) : (C)0;
                dxr[j] = D::store(rs * wg - D::load(xr[j]) * c + p);
            }
        }
    }
}

// The backward above with the weight's gradient folded in, for rows of at most RMS_DW_MAXV
// 16-byte vectors per lane (n <= 1024 for 16-bit rows, 512 for f32, 256 for f64) that are whole
// vectors: besides dx, each warp keeps the column sums of dy x rstd over its rows in registers,
// the block's warps add theirs in order through shared memory, and partial[block, j] takes the
// block's sums (colsum_finish adds the blocks, as after colsum). One pass over x and dy where the
// separate column sum (colsum, mode 0) read both again. The terms are colsum's, g x rstd rounded
// to the compute type and summed in f64; only the order of the sum differs.
#define RMS_DW_MAXV 4
// The end of both weight-gradient passes below: the warps' column sums acc[i][k] (column
// (lane + 32 i) V + k, the first nv of NV vectors) are added warp by warp, in order, into `red`,
// and the block's row of sums goes to partial[block] for colsum_finish.
template <int NV, int V>
__device__ __forceinline__ void rms_dw_block_sums(const double (&acc)[NV][V], int nv, double* red, double* partial,
                                                  i64 n) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, per_block = blockDim.x >> 5;
    for (int wv = 0; wv < per_block; ++wv) {
        if (warp == wv)
#pragma unroll
            for (int i = 0; i < NV; ++i) {
                if (i >= nv) break;
#pragma unroll
                for (int k = 0; k < V; ++k) {
                    const int j = (lane + 32 * i) * V + k;
                    red[j] = (wv == 0 ? 0.0 : red[j]) + acc[i][k];
                }
            }
        __syncthreads();
    }
    for (i64 j = threadIdx.x; j < n; j += blockDim.x) partial[(i64)blockIdx.x * n + j] = red[j];
}
template <typename D>
__device__ void rms_bwd_dw_impl(typename D::S* dx, double* partial, const typename D::S* x, const typename D::S* w,
                                const typename D::C* rstd, const typename D::S* dy, const typename D::S* plus, i64 rows,
                                i64 n) {
    typedef typename D::S S;
    typedef typename D::C C;
    constexpr int V = 16 / sizeof(S);
    __shared__ double red[RMS_DW_MAXV * 32 * 8];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, per_block = blockDim.x >> 5;
    const int nv = (int)(n / (32 * V));
    double acc[RMS_DW_MAXV][V];
#pragma unroll
    for (int i = 0; i < RMS_DW_MAXV; ++i)
#pragma unroll
        for (int k = 0; k < V; ++k) acc[i][k] = 0.0;
    for (i64 r = (i64)blockIdx.x * per_block + warp; r < rows; r += (i64)gridDim.x * per_block) {
        const S *xr = x + r * n, *gr = dy + r * n, *pr = plus ? plus + r * n : nullptr;
        S* dxr = dx + r * n;
        const double dot = rms_row_dot<D>(gr, xr, w, n, 1);
        const C rs = rstd[r];
        const C c = rs * rs * rs * (C)dot / (C)n;
#pragma unroll
        for (int i = 0; i < RMS_DW_MAXV; ++i) {
            if (i >= nv) break;
            const i64 j = (i64)(lane + 32 * i) * V;
            Pack16<S> ux, ug, uw, up, o;
            ux.raw = *(const u128x*)(xr + j);
            ug.raw = *(const u128x*)(gr + j);
            if (w) uw.raw = *(const u128x*)(w + j);
            if (pr) up.raw = *(const u128x*)(pr + j);
#pragma unroll
            for (int k = 0; k < V; ++k) {
                const C g = D::load(ug.v[k]), xv = D::load(ux.v[k]);
                acc[i][k] += (double)(g * xv * rs);
                const C wg = w ? g * D::load(uw.v[k]) : g;
                const C p = pr ? D::load(up.v[k]) : (C)0;
                o.v[k] = D::store(rs * wg - xv * c + p);
            }
            *(u128x*)(dxr + j) = o.raw;
        }
    }
    rms_dw_block_sums(acc, nv, red, partial, n);
}

// The same pass with the row held in registers: NV (= n / (32 x 16-byte vector), 1 to 4) is
// known at compile time, so each lane loads its x, dy and plus vectors once (the kernel above reads
// them twice: the dot, then dx), the weight once per warp instead of once per row, and, where the
// registers allow (NV <= 2), the next row's vectors while it reduces and stores this one: the
// warp's loads are in flight during its shuffles and stores instead of after them. Rows go to warps
// as above and every term is formed and summed in the same order as in rms_bwd_dw_impl, but ptxas may
// contract products into FMAs differently in the two kernels, so the bits may differ (after 30 bf16
// steps of the d512 LM the losses differed by 5e-3, where two settings computing the same bits
// differed by 3e-4; both kernels match the CPU backend in cuda_ops).
template <typename D, int NV>
__device__ void rms_bwd_dwr_impl(typename D::S* dx, double* partial, const typename D::S* x, const typename D::S* w,
                                 const typename D::C* rstd, const typename D::S* dy, const typename D::S* plus,
                                 i64 rows, i64 n) {
    typedef typename D::S S;
    typedef typename D::C C;
    constexpr int V = 16 / sizeof(S);
    // Registers. At NV <= 2 the next row's vectors and the weight's stay in registers too. At 3-4
    // vectors a lane the f64 column sums take 48-64 of them, so the weight and plus are read where
    // they are used (the weight from L1) and nothing is prefetched (at 128 registers, two blocks a
    // multiprocessor, nothing spills). 16-bit rows of four vectors (SMEM_SUMS) would need 64
    // registers of sums beside the row and spill: their warps keep the sums in shared memory
    // instead (dynamic, n doubles a warp, launched with 8 n bytes a warp), which frees the
    // registers to prefetch the next row's x and dy.
    constexpr bool SMEM_SUMS = NV * V > 24;
    constexpr bool HOLD_WP = NV <= 2;               // weight held, plus prefetched
    constexpr bool PREFETCH = HOLD_WP || SMEM_SUMS;  // the next row's x and dy
    __shared__ double red[SMEM_SUMS ? 1 : NV * 32 * V];
    extern __shared__ double warp_sums[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, per_block = blockDim.x >> 5;
    const i64 step = (i64)gridDim.x * per_block;
    Pack16<S> uw[NV], ux[NV], ug[NV], up[NV];
    double acc[SMEM_SUMS ? 1 : NV][V];
    // This warp's sum of column (lane + 32 i) V + k lies at sums[k][i][lane]: a warp's 32 accesses
    // for one (i, k) are 256 contiguous bytes, free of bank conflicts.
    double* sums = warp_sums + (i64)warp * NV * 32 * V;
    if (SMEM_SUMS && dynamic_smem_bytes() < (unsigned)(per_block * NV * 32 * V * sizeof(double))) __trap();
#pragma unroll
    for (int i = 0; i < NV; ++i) {
        if (HOLD_WP && w) uw[i].raw = *(const u128x*)(w + (lane + 32 * i) * V);
#pragma unroll
        for (int k = 0; k < V; ++k) {
            if (SMEM_SUMS)
                sums[(k * NV + i) * 32 + lane] = 0.0;
            else
                acc[i][k] = 0.0;
        }
    }
    auto load_row = [&](i64 r, Pack16<S>* lx, Pack16<S>* lg, Pack16<S>* lp) {
#pragma unroll
        for (int i = 0; i < NV; ++i) {
            const i64 j = r * n + (lane + 32 * i) * V;
            lx[i].raw = *(const u128x*)(x + j);
            lg[i].raw = *(const u128x*)(dy + j);
            if (HOLD_WP && plus) lp[i].raw = *(const u128x*)(plus + j);
        }
    };
    i64 r = (i64)blockIdx.x * per_block + warp;
    if (PREFETCH && r < rows) load_row(r, ux, ug, up);
    for (; r < rows; r += step) {
        Pack16<S> cx[NV], cg[NV], cp[NV];
        if (PREFETCH) {
#pragma unroll
            for (int i = 0; i < NV; ++i) {
                cx[i] = ux[i], cg[i] = ug[i];
                if (HOLD_WP) cp[i] = up[i];
            }
            if (r + step < rows) load_row(r + step, ux, ug, up);
        } else {
            load_row(r, cx, cg, cp);
        }
        const C rs = rstd[r];
        // rms_row_dot's terms and order: lane by lane, vector by vector, then the butterfly.
        double s = 0.0;
#pragma unroll
        for (int i = 0; i < NV; ++i) {
            if (!HOLD_WP && w) uw[i].raw = *(const u128x*)(w + (lane + 32 * i) * V);
#pragma unroll
            for (int k = 0; k < V; ++k) {
                C t = D::load(cg[i].v[k]);
                if (w) t = t * D::load(uw[i].v[k]);
                s += (double)t * (double)D::load(cx[i].v[k]);
            }
        }
        const double dot = warp_sum(s);
        const C c = rs * rs * rs * (C)dot / (C)n;
        S* dxr = dx + r * n;
#pragma unroll
        for (int i = 0; i < NV; ++i) {
            Pack16<S> o;
            if (!HOLD_WP && w) uw[i].raw = *(const u128x*)(w + (lane + 32 * i) * V);
            if (!HOLD_WP && plus) cp[i].raw = *(const u128x*)(plus + r * n + (lane + 32 * i) * V);
#pragma unroll
            for (int k = 0; k < V; ++k) {
                const C g = D::load(cg[i].v[k]), xv = D::load(cx[i].v[k]);
                if (SMEM_SUMS)
                    sums[(k * NV + i) * 32 + lane] += (double)(g * xv * rs);
                else
                    acc[i][k] += (double)(g * xv * rs);
                const C wg = w ? g * D::load(uw[i].v[k]) : g;
                const C p = plus ? D::load(cp[i].v[k]) : (C)0;
                o.v[k] = D::store(rs * wg - xv * c + p);
            }
            *(u128x*)(dxr + (lane + 32 * i) * V) = o.raw;
        }
    }
    if (!SMEM_SUMS) {
        rms_dw_block_sums(acc, NV, red, partial, n);
        return;
    }
    // rms_dw_block_sums's order: column by column, warp 0 first (0.0 + the first warp's sum).
    __syncthreads();
    for (int j = threadIdx.x; j < NV * 32 * V; j += blockDim.x) {
        const int at = ((j % V) * NV + (j / V) / 32) * 32 + (j / V) % 32;
        double t = 0.0;
        for (int wv = 0; wv < per_block; ++wv) t += warp_sums[(i64)wv * NV * 32 * V + at];
        partial[(i64)blockIdx.x * n + j] = t;
    }
}
#define RMS_DWR(NAME, D, NV)                                                                                  \
    extern "C" __global__ void __launch_bounds__(256, 2) rms_norm_bwd_dw##NV##_##NAME(                         \
        D::S* dx, double* partial, const D::S* x, const D::S* w, const D::C* rstd, const D::S* dy,            \
        const D::S* plus, i64 rows, i64 n) {                                                                  \
        rms_bwd_dwr_impl<D, NV>(dx, partial, x, w, rstd, dy, plus, rows, n);                                  \
    }
#define RMS_DWR_3(NAME, D) RMS_DWR(NAME, D, 1) RMS_DWR(NAME, D, 2) RMS_DWR(NAME, D, 3)
#define RMS_DWR_4(NAME, D) RMS_DWR_3(NAME, D) RMS_DWR(NAME, D, 4)
// f16 rows of four vectors are left to rms_bwd_dw_impl: their conversions push the prefetching
// kernel 32 bytes a thread into spills (ptxas, sm_90), where bf16's stays at 128 registers.
RMS_DWR_3(f16, F16)
RMS_DWR_4(bf16, BF16)
RMS_DWR_4(f32, F32)
RMS_DWR_4(f64, F64)

#define RMS(NAME, D)                                                                                              \
    extern "C" __global__ void rms_norm_##NAME(D::S* y, D::C* rstd, const D::S* x, const D::S* w, i64 rows, i64 n, \
                                               double eps) {                                                      \
        rms_impl<D>(y, rstd, x, w, rows, n, eps);                                                                 \
    }                                                                                                             \
    extern "C" __global__ void rms_norm_bwd_##NAME(D::S* dx, const D::S* x, const D::S* w, const D::C* rstd,     \
                                                   const D::S* dy, const D::S* plus, i64 rows, i64 n) {           \
        rms_bwd_impl<D>(dx, x, w, rstd, dy, plus, rows, n);                                                       \
    }                                                                                                             \
    extern "C" __global__ void rms_norm_warp_##NAME(D::S* y, D::C* rstd, const D::S* x, const D::S* w, i64 rows,  \
                                                    i64 n, double eps, int vec) {                                 \
        rms_warp_impl<D>(y, rstd, x, w, rows, n, eps, vec);                                                       \
    }                                                                                                             \
    extern "C" __global__ void add_rms_norm_warp_##NAME(D::S* h, D::S* y, D::C* rstd, const D::S* a, const D::S* b, \
                                                        const D::S* w, i64 rows, i64 n, double eps, int vec) {    \
        add_rms_warp_impl<D>(h, y, rstd, a, b, w, rows, n, eps, vec);                                            \
    }                                                                                                             \
    extern "C" __global__ void rms_norm_bwd_warp_##NAME(D::S* dx, const D::S* x, const D::S* w, const D::C* rstd, \
                                                        const D::S* dy, const D::S* plus, i64 rows, i64 n,        \
                                                        int vec) {                                                \
        rms_bwd_warp_impl<D>(dx, x, w, rstd, dy, plus, rows, n, vec);                                             \
    }                                                                                                             \
    extern "C" __global__ void rms_norm_bwd_dw_##NAME(D::S* dx, double* partial, const D::S* x, const D::S* w,     \
                                                      const D::C* rstd, const D::S* dy, const D::S* plus, i64 rows, \
                                                      i64 n) {                                                    \
        rms_bwd_dw_impl<D>(dx, partial, x, w, rstd, dy, plus, rows, n);                                           \
    }
RMS(f16, F16)
RMS(bf16, BF16)
RMS(f32, F32)
RMS(f64, F64)

// ---------------------------------------------------------------- layer norm

// y = (x - mean) rstd w + b with a two-pass variance in f64; `w`, `b` may be null.
template <typename D>
__device__ void ln_impl(typename D::S* y, typename D::C* mean, typename D::C* rstd, const typename D::S* x,
                        const typename D::S* w, const typename D::S* b, i64 rows, i64 n, double eps) {
    typedef typename D::C C;
    __shared__ double sh[32];
    double nn = (double)(n > 0 ? n : 1);
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const typename D::S* xr = x + r * n;
        double s = 0.0;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) s += (double)D::load(xr[j]);
        double mu = block_sum<double>(s, sh) / nn;
        double v = 0.0;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            double d = (double)D::load(xr[j]) - mu;
            v += d * d;
        }
        v = block_sum<double>(v, sh) / nn;
        C m = (C)mu;
        C rs = (C)1 / x_sqrt((C)v + (C)eps);
        if (threadIdx.x == 0) {
            mean[r] = m;
            rstd[r] = rs;
        }
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            // Centred against the f64 mean and rounded once (the CPU backend's order): with the
            // mean rounded first, nearly constant rows lose the digits of x - mean.
            C h = (C)((double)D::load(xr[j]) - mu) * rs;
            if (w) h = h * D::load(w[j]);
            if (b) h = h + D::load(b[j]);
            y[r * n + j] = D::store(h);
        }
    }
}

// h = (x - m) r, g' = g w: dx = r (g' - mean(g') - h mean(g' h))
// Derivation: docs/autograd.md#fused-ops ("Layer norm").
template <typename D>
__device__ void ln_bwd_impl(typename D::S* dx, const typename D::S* x, const typename D::S* w, const typename D::C* mean,
                            const typename D::C* rstd, const typename D::S* dy, i64 rows, i64 n) {
    typedef typename D::C C;
    __shared__ double sh[32];
    C nn = (C)(n > 0 ? n : 1);
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const typename D::S *xr = x + r * n, *gr = dy + r * n;
        C m = mean[r], rs = rstd[r];
        double s1 = 0.0, s2 = 0.0;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            C gw = D::load(gr[j]);
            if (w) gw = gw * D::load(w[j]);
            s1 += (double)gw;
            s2 += (double)(gw * ((D::load(xr[j]) - m) * rs));
        }
        C a = (C)block_sum<double>(s1, sh) / nn;
        C c = (C)block_sum<double>(s2, sh) / nn;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            C gw = D::load(gr[j]);
            if (w) gw = gw * D::load(w[j]);
            C h = (D::load(xr[j]) - m) * rs;
            dx[r * n + j] = D::store(rs * (gw - a - h * c));
        }
    }
}

#define LN(NAME, D)                                                                                                 \
    extern "C" __global__ void layer_norm_##NAME(D::S* y, D::C* mean, D::C* rstd, const D::S* x, const D::S* w,     \
                                                 const D::S* b, i64 rows, i64 n, double eps) {                      \
        ln_impl<D>(y, mean, rstd, x, w, b, rows, n, eps);                                                           \
    }                                                                                                               \
    extern "C" __global__ void layer_norm_bwd_##NAME(D::S* dx, const D::S* x, const D::S* w, const D::C* mean,      \
                                                     const D::C* rstd, const D::S* dy, i64 rows, i64 n) {           \
        ln_bwd_impl<D>(dx, x, w, mean, rstd, dy, rows, n);                                                          \
    }
LN(f16, F16)
LN(bf16, BF16)
LN(f32, F32)
LN(f64, F64)

// ---------------------------------------------------------------- weight / bias gradients

// Column sums over rows of a per-element product, in two steps so many blocks share the rows:
// partial[chunk, j] = sum over rows r = chunk, chunk + chunks, ... of term(r, j), in f64, then
// colsum_finish adds the chunks. mode 0: dy x rstd (RMS dweight); 1: dy (x - mean) rstd (layer
// norm dweight); 2: dy (layer norm dbias).
// Derivation: docs/autograd.md#fused-ops ("RMS norm", "Layer norm").
template <typename D>
__device__ void colsum_impl(double* partial, const typename D::S* x, const typename D::S* dy, const typename D::C* mean,
                            const typename D::C* rstd, i64 rows, i64 n, int mode) {
    typedef typename D::C C;
    i64 chunks = gridDim.y;
    for (i64 j = (i64)blockIdx.x * blockDim.x + threadIdx.x; j < n; j += (i64)gridDim.x * blockDim.x) {
        double acc = 0.0;
        for (i64 r = blockIdx.y; r < rows; r += chunks) {
            C g = D::load(dy[r * n + j]);
            C t;
            if (mode == 0) t = g * D::load(x[r * n + j]) * rstd[r];
            else if (mode == 1) t = g * (D::load(x[r * n + j]) - mean[r]) * rstd[r];
            else t = g;
            acc += (double)t;
        }
        partial[blockIdx.y * n + j] = acc;
    }
}
#define COLSUM(NAME, D)                                                                                          \
    extern "C" __global__ void colsum_##NAME(double* partial, const D::S* x, const D::S* dy, const D::C* mean,   \
                                             const D::C* rstd, i64 rows, i64 n, int mode) {                      \
        colsum_impl<D>(partial, x, dy, mean, rstd, rows, n, mode);                                               \
    }
COLSUM(f16, F16)
COLSUM(bf16, BF16)
COLSUM(f32, F32)
COLSUM(f64, F64)

// out[j] = sum_c partial[c, j], rounded to the compute type and then to the output dtype (the
// CPU backend's T::from_f64 followed by its store). A block of 256 threads owns 32 columns: its
// 8 warps sum every 8th chunk (coalesced over the columns), then warp 0 adds the 8 partials in a
// fixed order.
template <typename D> __device__ void colsum_finish_impl(typename D::S* out, const double* partial, i64 chunks, i64 n) {
    __shared__ double part[8][32];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const i64 j = (i64)blockIdx.x * 32 + lane;
    double acc = 0.0;
    if (j < n) {
        // Unrolled: eight loads in flight per thread, the additions in the same order.
#pragma unroll 8
        for (i64 c = w; c < chunks; c += 8) acc += partial[c * n + j];
    }
    part[w][lane] = acc;
    __syncthreads();
    if (w == 0 && j < n) {
        double t = 0.0;
        for (int k = 0; k < 8; ++k) t += part[k][lane];
        out[j] = D::store((typename D::C)t);
    }
}
#define COLSUM_FINISH(NAME, D)                                                                                  \
    extern "C" __global__ void colsum_finish_##NAME(D::S* out, const double* partial, i64 chunks, i64 n) {     \
        colsum_finish_impl<D>(out, partial, chunks, n);                                                         \
    }
COLSUM_FINISH(f16, F16)
COLSUM_FINISH(bf16, BF16)
COLSUM_FINISH(f32, F32)
COLSUM_FINISH(f64, F64)
