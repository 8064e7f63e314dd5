// Fused cross-entropy over contiguous logits [rows, classes] and u32 targets [rows]: one block per
// row. Forward: lse = max + log(sum exp(x - max)) (the sum in f64, as on the CPU), loss = lse -
// x[target], 0 for ignored rows. Backward: dx = dloss (softmax(x) - onehot(target)). Losses and
// lse are stored in the compute type C (f32, or f64 for f64 logits).

// `bad` (one u32, preset to 0xffffffff by the host) receives the lowest row whose target is
// out of range and not ignored; its loss is NaN. The host turns that into a typed error.
template <typename D>
__device__ void ce_impl(typename D::C* loss, typename D::C* lse, u32* bad, const typename D::S* x, const u32* t,
                        i64 rows, i64 classes, int has_ignore, u32 ignore) {
    typedef typename D::C C;
    __shared__ C sh_c[32];
    __shared__ double sh_d[32];
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const typename D::S* xr = x + r * classes;
        C m = neg_inf<C>();
        for (i64 j = threadIdx.x; j < classes; j += blockDim.x) m = x_max(m, D::load(xr[j]));
        m = block_max<C>(m, sh_c);
        double s = 0.0;
        for (i64 j = threadIdx.x; j < classes; j += blockDim.x) s += (double)x_exp(D::load(xr[j]) - m);
        s = block_sum<double>(s, sh_d);
        if (threadIdx.x == 0) {
            C l = m + (C)log(s);
            u32 tr = t[r];
            lse[r] = l;
            if (has_ignore && tr == ignore) {
                loss[r] = (C)0;
            } else if ((i64)tr >= classes) {
                loss[r] = -neg_inf<C>() * (C)0;  // NaN
                atomicMin(bad, (u32)r);
            } else {
                loss[r] = l - D::load(xr[tr]);
            }
        }
    }
}

// dx[r, j] = dloss[r] (exp(x[r, j] - lse[r]) - [j = t[r]]), 0 for an ignored row.
// Derivation: docs/autograd.md#fused-ops ("Cross-entropy").
template <typename D>
__device__ void ce_bwd_impl(typename D::S* dx, const typename D::S* x, const u32* t, const typename D::C* lse,
                            const typename D::C* dloss, i64 rows, i64 classes, int has_ignore, u32 ignore) {
    typedef typename D::C C;
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        u32 tr = t[r];
        bool skip = has_ignore && tr == ignore;
        C l = lse[r], g = dloss[r];
        for (i64 j = threadIdx.x; j < classes; j += blockDim.x) {
            C d = (C)0;
            if (!skip) {
                d = x_exp(D::load(x[r * classes + j]) - l) * g;
                if (j == (i64)tr) d = d - g;
            }
            dx[r * classes + j] = D::store(d);
        }
    }
}

#define CE(NAME, D)                                                                                          \
    extern "C" __global__ void ce_fwd_##NAME(D::C* loss, D::C* lse, u32* bad, const D::S* x, const u32* t,  \
                                             i64 rows, i64 classes, int has_ignore, u32 ignore) {            \
        ce_impl<D>(loss, lse, bad, x, t, rows, classes, has_ignore, ignore);                                 \
    }                                                                                                        \
    extern "C" __global__ void ce_bwd_##NAME(D::S* dx, const D::S* x, const u32* t, const D::C* lse,        \
                                             const D::C* dloss, i64 rows, i64 classes, int has_ignore,       \
                                             u32 ignore) {                                                   \
        ce_bwd_impl<D>(dx, x, t, lse, dloss, rows, classes, has_ignore, ignore);                             \
    }
CE(f16, F16)
CE(bf16, BF16)
CE(f32, F32)
CE(f64, F64)
