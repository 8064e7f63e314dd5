// Reductions along one axis, cumulative sums and top-k. Inputs are contiguous and seen as
// [outer, len, inner] around the reduced axis (the Rust side copies strided views first), as in
// core/src/cpu/reduce.rs. Sums accumulate in f64 like the CPU backend.

// Op codes: 0 sum, 1 max, 2 min, 3 argmax, 4 argmin, 5 logsumexp.

// (value, index) of a running max/min: NaN wins (first NaN by index), then the better value, then
// the lower index. The combine is associative and commutative, so any reduction order gives the
// sequential CPU answer.
template <typename C> struct Arg {
    C v;
    u32 i;
};
template <typename C> __device__ __forceinline__ Arg<C> arg_pick(Arg<C> a, Arg<C> b, bool is_max) {
    bool an = x_isnan(a.v), bn = x_isnan(b.v);
    if (an || bn) {
        if (an && bn) return a.i <= b.i ? a : b;
        return an ? a : b;
    }
    if (a.v == b.v) return a.i <= b.i ? a : b;
    bool a_better = is_max ? (a.v > b.v) : (a.v < b.v);
    return a_better ? a : b;
}

// One output of a reduction computed by the `nt` threads t = 0..nt of a group (a single thread
// or a whole block). Returns the value (sum, max, min, lse) or the index (argmax, argmin).
template <typename D> struct Red {
    typedef typename D::C C;
    double sum;
    Arg<C> arg;
};

template <typename D>
__device__ __forceinline__ Red<D> reduce_partial(const typename D::S* x, i64 base, i64 len, i64 inner, int op,
                                                 i64 t0, i64 nt, typename D::C shift) {
    typedef typename D::C C;
    Red<D> r;
    r.sum = 0.0;
    r.arg.v = (op == 1 || op == 3) ? neg_inf<C>() : -neg_inf<C>();
    r.arg.i = 0xffffffffu;
    for (i64 i = t0; i < len; i += nt) {
        C v = D::load(x[base + i * inner]);
        if (op == 0) {
            r.sum += (double)v;
        } else if (op == 5) {
            r.sum += (double)x_exp(v - shift);
        } else {
            Arg<C> c;
            c.v = v;
            c.i = (u32)i;
            r.arg = r.arg.i == 0xffffffffu ? c : arg_pick(r.arg, c, op == 1 || op == 3);
        }
    }
    return r;
}

// The logsumexp shift: max ignoring NaN (Rust's f32::max), -inf for an empty axis.
template <typename D>
__device__ __forceinline__ typename D::C lse_max(const typename D::S* x, i64 base, i64 len, i64 inner, i64 t0, i64 nt) {
    typename D::C m = neg_inf<typename D::C>();
    for (i64 i = t0; i < len; i += nt) m = x_max(m, D::load(x[base + i * inner]));
    return m;
}

template <typename D> __device__ __forceinline__ bool finite_c(typename D::C m) {
    return m == m && x_abs(m) != -neg_inf<typename D::C>();
}

// One thread per output: for short reduced axes.
template <typename D>
__device__ void reduce_thread_impl(typename D::S* out, u32* idx, const typename D::S* x, i64 outer, i64 len,
                                   i64 inner, int op) {
    typedef typename D::C C;
    FOR_EACH(o, outer * inner) {
        i64 base = (o / inner) * len * inner + (o % inner);
        if (op == 3 || op == 4) {
            Red<D> r = reduce_partial<D>(x, base, len, inner, op, 0, 1, (C)0);
            idx[o] = r.arg.i == 0xffffffffu ? 0 : r.arg.i;
        } else if (op == 0) {
            out[o] = D::store((C)reduce_partial<D>(x, base, len, inner, op, 0, 1, (C)0).sum);
        } else if (op == 5) {
            C m = lse_max<D>(x, base, len, inner, 0, 1);
            if (!finite_c<D>(m)) {
                out[o] = D::store(m);
            } else {
                double s = reduce_partial<D>(x, base, len, inner, op, 0, 1, m).sum;
                out[o] = D::store(m + (C)log(s));
            }
        } else {
            out[o] = D::store(reduce_partial<D>(x, base, len, inner, op, 0, 1, (C)0).arg.v);
        }
    }
}

// The block-wide pick of one running (value, index) per thread; every thread gets the result.
template <typename C> __device__ Arg<C> block_arg(Arg<C> a, Arg<C>* sh_a, bool is_max) {
    __syncthreads();
    sh_a[threadIdx.x] = a;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) {
            Arg<C> l = sh_a[threadIdx.x], r = sh_a[threadIdx.x + w];
            if (l.i == 0xffffffffu) l = r;
            else if (r.i != 0xffffffffu) l = arg_pick(l, r, is_max);
            sh_a[threadIdx.x] = l;
        }
        __syncthreads();
    }
    return sh_a[0];
}

// One block per output: for long reduced axes.
template <typename D>
__device__ void reduce_block_impl(typename D::S* out, u32* idx, const typename D::S* x, i64 outer, i64 len,
                                  i64 inner, int op) {
    typedef typename D::C C;
    __shared__ double sh_d[32];
    __shared__ C sh_c[32];
    __shared__ Arg<C> sh_a[ROW_THREADS_MAX];
    for (i64 o = blockIdx.x; o < outer * inner; o += gridDim.x) {
        i64 base = (o / inner) * len * inner + (o % inner);
        C m = (C)0;
        if (op == 5) m = block_max<C>(lse_max<D>(x, base, len, inner, threadIdx.x, blockDim.x), sh_c);
        Red<D> r = reduce_partial<D>(x, base, len, inner, op, threadIdx.x, blockDim.x, m);
        if (op == 0 || op == 5) {
            double s = block_sum<double>(r.sum, sh_d);
            if (threadIdx.x == 0) {
                if (op == 0) out[o] = D::store((C)s);
                else out[o] = D::store(finite_c<D>(m) ? m + (C)log(s) : m);
            }
        } else {
            Arg<C> a = block_arg<C>(r.arg, sh_a, op == 1 || op == 3);
            if (threadIdx.x == 0) {
                if (op == 3 || op == 4) idx[o] = a.i == 0xffffffffu ? 0 : a.i;
                else out[o] = D::store(a.v);
            }
        }
    }
}

// Split reduction, for few outputs over a long axis (a whole-tensor sum, a gradient norm): with
// one block per output a single multiprocessor would read everything. Block (p, o) of the grid
// (P, outputs) reduces segment p (`seg` elements) of output o's axis into a partial, and
// reduce_split_finish combines each output's P partials in one block. Sums stay in f64 and
// max/min/arg picks are exact and order-free, so the result is the one-block reduction's.
// Logsumexp is three launches: the split shift (max ignoring NaN; `phase` 0, into `shift`), the
// split sum of exp(v - shift) (phase 1), then the finish.
template <typename D>
__device__ void reduce_split_impl(double* psum, double* pval, u32* pidx, const double* shift,
                                  const typename D::S* x, i64 len, i64 inner, i64 seg, int op, int phase) {
    typedef typename D::C C;
    __shared__ double sh_d[32];
    __shared__ C sh_c[32];
    __shared__ Arg<C> sh_a[ROW_THREADS_MAX];
    const i64 p = blockIdx.x, o = blockIdx.y, k = o * gridDim.x + p, s0 = p * seg;
    const i64 n = min(seg, len - s0);
    const i64 base = (o / inner) * len * inner + (o % inner) + s0 * inner;
    if (op == 5 && phase == 0) {
        C m = block_max<C>(lse_max<D>(x, base, n, inner, threadIdx.x, blockDim.x), sh_c);
        if (threadIdx.x == 0) pval[k] = (double)m;
        return;
    }
    Red<D> r = reduce_partial<D>(x, base, n, inner, op, threadIdx.x, blockDim.x, op == 5 ? (C)shift[o] : (C)0);
    if (op == 0 || op == 5) {
        double s = block_sum<double>(r.sum, sh_d);
        if (threadIdx.x == 0) psum[k] = s;
    } else {
        Arg<C> a = block_arg<C>(r.arg, sh_a, op == 1 || op == 3);
        if (threadIdx.x == 0) {
            pval[k] = (double)a.v;
            pidx[k] = a.i == 0xffffffffu ? a.i : a.i + (u32)s0;
        }
    }
}

// One block per output over its `parts` partials (see reduce_split_impl). Phase 0 of logsumexp
// writes the shift; phase 1 finishes from `shift` and the partial sums.
template <typename D>
__device__ void reduce_split_finish_impl(typename D::S* out, u32* idx, double* shift, const double* psum,
                                         const double* pval, const u32* pidx, int parts, int op, int phase) {
    typedef typename D::C C;
    __shared__ double sh_d[32];
    __shared__ C sh_c[32];
    __shared__ Arg<C> sh_a[ROW_THREADS_MAX];
    const i64 o = blockIdx.x, k0 = o * parts;
    if (op == 5 && phase == 0) {
        C m = neg_inf<C>();
        for (int p = threadIdx.x; p < parts; p += blockDim.x) m = x_max(m, (C)pval[k0 + p]);
        m = block_max<C>(m, sh_c);
        if (threadIdx.x == 0) shift[o] = (double)m;
    } else if (op == 0 || op == 5) {
        double s = 0.0;
        for (int p = threadIdx.x; p < parts; p += blockDim.x) s += psum[k0 + p];
        s = block_sum<double>(s, sh_d);
        if (threadIdx.x == 0) {
            if (op == 0) {
                out[o] = D::store((C)s);
            } else {
                C m = (C)shift[o];
                out[o] = D::store(finite_c<D>(m) ? m + (C)log(s) : m);
            }
        }
    } else {
        Arg<C> a;
        a.v = (C)0;
        a.i = 0xffffffffu;
        for (int p = threadIdx.x; p < parts; p += blockDim.x) {
            Arg<C> c;
            c.v = (C)pval[k0 + p];
            c.i = pidx[k0 + p];
            if (a.i == 0xffffffffu) a = c;
            else if (c.i != 0xffffffffu) a = arg_pick(a, c, op == 1 || op == 3);
        }
        a = block_arg<C>(a, sh_a, op == 1 || op == 3);
        if (threadIdx.x == 0) {
            if (op == 3 || op == 4) idx[o] = a.i == 0xffffffffu ? 0 : a.i;
            else out[o] = D::store(a.v);
        }
    }
}

#define REDUCE(NAME, D)                                                                                  \
    extern "C" __global__ void reduce_thread_##NAME(D::S* out, u32* idx, const D::S* x, i64 outer, i64 len, \
                                                    i64 inner, int op) {                                 \
        reduce_thread_impl<D>(out, idx, x, outer, len, inner, op);                                       \
    }                                                                                                    \
    extern "C" __global__ void reduce_block_##NAME(D::S* out, u32* idx, const D::S* x, i64 outer, i64 len, \
                                                   i64 inner, int op) {                                  \
        reduce_block_impl<D>(out, idx, x, outer, len, inner, op);                                        \
    }                                                                                                    \
    extern "C" __global__ void reduce_split_##NAME(double* psum, double* pval, u32* pidx, const double* shift, \
                                                   const D::S* x, i64 len, i64 inner, i64 seg, int op, int phase) { \
        reduce_split_impl<D>(psum, pval, pidx, shift, x, len, inner, seg, op, phase);                    \
    }                                                                                                    \
    extern "C" __global__ void reduce_split_finish_##NAME(D::S* out, u32* idx, double* shift, const double* psum, \
                                                          const double* pval, const u32* pidx, int parts, int op, \
                                                          int phase) {                                   \
        reduce_split_finish_impl<D>(out, idx, shift, psum, pval, pidx, parts, op, phase);                \
    }
REDUCE(f16, F16)
REDUCE(bf16, BF16)
REDUCE(f32, F32)
REDUCE(f64, F64)

// ---------------------------------------------------------------- cumsum

// One thread per (outer, inner) line, accumulating in the compute type like the CPU backend.
template <typename D>
__device__ void cumsum_impl(typename D::S* out, const typename D::S* x, i64 outer, i64 len, i64 inner, int exclusive,
                            int reverse) {
    typedef typename D::C C;
    FOR_EACH(o, outer * inner) {
        i64 base = (o / inner) * len * inner + (o % inner);
        C acc = (C)0;
        for (i64 s = 0; s < len; ++s) {
            i64 i = reverse ? len - 1 - s : s;
            C v = D::load(x[base + i * inner]);
            if (exclusive) {
                out[base + i * inner] = D::store(acc);
                acc = acc + v;
            } else {
                acc = acc + v;
                out[base + i * inner] = D::store(acc);
            }
        }
    }
}
#define CUMSUM(NAME, D)                                                                                 \
    extern "C" __global__ void cumsum_##NAME(D::S* out, const D::S* x, i64 outer, i64 len, i64 inner, \
                                             int exclusive, int reverse) {                              \
        cumsum_impl<D>(out, x, outer, len, inner, exclusive, reverse);                                  \
    }
CUMSUM(f16, F16)
CUMSUM(bf16, BF16)
CUMSUM(f32, F32)
CUMSUM(f64, F64)

// ---------------------------------------------------------------- top-k

// Total order of top-k: NaN first (lower index first among NaNs), then larger values, then the
// lower index. Returns true when (a, ia) comes before (b, ib).
__device__ __forceinline__ bool topk_before(double a, u32 ia, double b, u32 ib) {
    bool an = a != a, bn = b != b;
    if (an || bn) return (an && bn) ? ia < ib : an;
    if (a != b) return a > b;
    return ia < ib;
}

// One block per row of a contiguous [rows, n] input. Pass p selects the first element (in the
// order above) that comes after the one pass p-1 selected: O(k n / threads) per row.
template <typename D>
__device__ void topk_impl(typename D::S* vals, u32* idxs, const typename D::S* x, i64 rows, i64 n, i64 k) {
    __shared__ double sv[ROW_THREADS_MAX];
    __shared__ u32 si[ROW_THREADS_MAX];
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const typename D::S* row = x + r * n;
        double pv = 0.0;
        u32 pi = 0xffffffffu;  // none selected yet
        for (i64 p = 0; p < k; ++p) {
            double bv = 0.0;
            u32 bi = 0xffffffffu;
            for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
                double v = D::to_f64(row[j]);
                if (pi != 0xffffffffu && !topk_before(pv, pi, v, (u32)j)) continue;
                if (bi == 0xffffffffu || topk_before(v, (u32)j, bv, bi)) {
                    bv = v;
                    bi = (u32)j;
                }
            }
            __syncthreads();
            sv[threadIdx.x] = bv;
            si[threadIdx.x] = bi;
            __syncthreads();
            for (int w = blockDim.x / 2; w > 0; w >>= 1) {
                if (threadIdx.x < w) {
                    u32 oi = si[threadIdx.x + w];
                    if (oi != 0xffffffffu &&
                        (si[threadIdx.x] == 0xffffffffu || topk_before(sv[threadIdx.x + w], oi, sv[threadIdx.x], si[threadIdx.x]))) {
                        sv[threadIdx.x] = sv[threadIdx.x + w];
                        si[threadIdx.x] = oi;
                    }
                }
                __syncthreads();
            }
            pv = sv[0];
            pi = si[0];
            if (pi == 0xffffffffu) break;  // k > n: cannot happen through the tensor API
            if (threadIdx.x == 0) {
                vals[r * k + p] = row[pi];
                idxs[r * k + p] = pi;
            }
        }
    }
}
#define TOPK(NAME, D)                                                                                         \
    extern "C" __global__ void topk_##NAME(D::S* vals, u32* idxs, const D::S* x, i64 rows, i64 n, i64 k) { \
        topk_impl<D>(vals, idxs, x, rows, n, k);                                                           \
    }
TOPK(u8, U8)
TOPK(u32, U32)
TOPK(f16, F16)
TOPK(bf16, BF16)
TOPK(f32, F32)
TOPK(f64, F64)

// ---------------------------------------------------------------- multi-tensor sum of squares

// The sum of a global gradient norm: sum over up to SUMSQ_LIST_MAX buffers of sum(x^2), squared
// and added in f64. The pointers travel in the kernel's parameter (no upload). Buffer j owns
// blocks first_block[j] .. first_block[j + 1], each reducing SUMSQ_LIST_SEG elements into its own
// slot of `parts`; sum_parts_f64 then adds the slots in one block. Segments, block size and the
// order of every addition are fixed, so the result has the same bits on every run and GPU.
// Mirror of `SumSqList` in src/ops/multi_tensor.rs (same field order and sizes).
#define SUMSQ_LIST_MAX 96
#define SUMSQ_LIST_SEG 16384
struct SumSqList {
    u64 x[SUMSQ_LIST_MAX];
    i64 n[SUMSQ_LIST_MAX];
    i32 dtype[SUMSQ_LIST_MAX];  // 0 f32, 1 f64, 2 bf16, 3 f16
    i32 first_block[SUMSQ_LIST_MAX + 1];
    i32 count;
    i32 pad_[2];
};
static_assert(sizeof(SumSqList) == 2320, "SumSqList must match its Rust mirror in src/ops/multi_tensor.rs");
template <typename D> __device__ __forceinline__ double sumsq_range(u64 ptr, i64 start, i64 end) {
    const typename D::S* x = (const typename D::S*)ptr;
    double s = 0.0;
    for (i64 i = start + threadIdx.x; i < end; i += blockDim.x) {
        const double v = (double)D::load(x[i]);
        s += v * v;
    }
    return s;
}
extern "C" __global__ void sumsq_list(SumSqList l, double* parts) {
    __shared__ double sh[32];
    const ListSeg sg = list_segment(l.first_block, l.n, l.count, blockIdx.x, SUMSQ_LIST_SEG);
    const u64 x = l.x[sg.j];
    double s;
    switch (l.dtype[sg.j]) {
        case 0: s = sumsq_range<F32>(x, sg.start, sg.end); break;
        case 1: s = sumsq_range<F64>(x, sg.start, sg.end); break;
        case 2: s = sumsq_range<BF16>(x, sg.start, sg.end); break;
        default: s = sumsq_range<F16>(x, sg.start, sg.end); break;
    }
    s = block_sum(s, sh);
    if (threadIdx.x == 0) parts[blockIdx.x] = s;
}
// out[0] = parts[0] + ... + parts[n - 1], by one block (the order fixed by its size).
extern "C" __global__ void sum_parts_f64(double* out, const double* parts, i64 n) {
    __shared__ double sh[32];
    double s = 0.0;
    for (i64 i = threadIdx.x; i < n; i += blockDim.x) s += parts[i];
    s = block_sum(s, sh);
    if (threadIdx.x == 0) out[0] = s;
}
