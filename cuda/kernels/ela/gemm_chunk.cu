// The chunked path of the feature-map kernels (sum/sub squared Euclidean, blueprint, Identity,
// elu+1) on cuBLAS: the small kernels around the GEMMs of cuda/src/ops/ela/gemm_chunk.rs, which
// has the algorithm. Features, values and gradients live in f32 buffers of Tp = whole chunks of
// rows per sequence, each row `ld` floats (a multiple of 4, so cuBLAS can use its aligned
// kernels); rows t >= T and the columns past the data are zero, so they add nothing to any
// product.
//
//   ela_gc_feat_*   phi(q) or psi(k) of every row (features() of recurrent.cu), zero padding;
//   ela_gc_aug_*    [v | 1] of every row;
//   ela_gc_mask     keeps the causal (j <= i) or anti-causal (j >= i) part of each C x C block;
//   ela_gc_scan     exclusive prefix (or suffix) sums of the per-chunk states, plus the total;
//   ela_gc_state    packs the carried (S, z) into [S | z] and back;
//   ela_gc_out_*    y = N / den from the product with [v | 1];
//   ela_gc_grad_*   [dy / den | -(dy . y) / den] per row, the "values" of the backward products;
//   ela_gc_take_*   the first w columns of an f32 buffer, in the input dtype (dv);
//   ela_gc_vjp_*    dq or dk from the feature gradients (features_vjp() of recurrent.cu).
//
// The same file builds the operand rows of the fused chunked path (la_chunk.cu), at the end:
//   ela_la_feat_*   phi(q) or psi(k) in bf16 or f32 operand rows;
//   ela_la_aug_*    [v | 1] likewise.

// One block per row (grid-stride over rows); blockDim a multiple of 32 (block_sum).
template <typename D>
__device__ void gc_feat(const typename D::S* x, float* out, i64 nseq, i64 T, i64 Tp, int d, int ld, int kern, int key) {
    extern __shared__ __align__(16) unsigned char ela_smem[];
    float* xs = (float*)ela_smem;  // [d] the row, then [32] for reductions
    float* red = xs + d;
    const int F = feature_size(kern, d);
    for (i64 r = blockIdx.x; r < nseq * Tp; r += gridDim.x) {
        const i64 n = r / Tp, t = r % Tp;
        float* o = out + r * ld;
        for (int c = F + threadIdx.x; c < ld; c += blockDim.x) o[c] = 0.f;
        if (t >= T) {
            for (int c = threadIdx.x; c < F; c += blockDim.x) o[c] = 0.f;
            continue;
        }
        const typename D::S* xr = x + (n * T + t) * d;
        __syncthreads();  // xs may still be read for the previous row
        for (int e = threadIdx.x; e < d; e += blockDim.x) xs[e] = D::load(xr[e]);
        __syncthreads();
        features<float>(kern, key != 0, xs, d, o, red);
    }
}

template <typename D>
__device__ void gc_aug(const typename D::S* v, float* out, i64 nseq, i64 T, i64 Tp, int dv, int ld) {
    const i64 total = nseq * Tp * ld;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total; e += (i64)gridDim.x * blockDim.x) {
        const i64 r = e / ld, c = e % ld, n = r / Tp, t = r % Tp;
        float x = 0.f;
        if (t < T && c <= dv) x = c < dv ? D::load(v[(n * T + t) * dv + c]) : 1.f;
        out[e] = x;
    }
}

// a: nmat blocks of C x C, row-major (row i = query, column j = key). mode 0 keeps j <= i
// (causal), mode 1 keeps j >= i (anti-causal: the backward's sums over later rows).
extern "C" __global__ void ela_gc_mask(float* a, i64 nmat, int C, int mode) {
    const i64 total = nmat * C * C;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total; e += (i64)gridDim.x * blockDim.x) {
        const int i = (int)((e / C) % C), j = (int)(e % C);
        if (mode == 0 ? j > i : j < i) a[e] = 0.f;
    }
}

// h: [nseq][nch][E], chunk c holding the chunk's own sum K_c^T V_c. Replaced in place by the
// state each chunk starts from: init + the chunks before it (reverse = 0), or the chunks after it
// (reverse = 1, no init). fin (optional): [nseq][E], init + every chunk. One thread per (sequence,
// element), walking the chunks; neighbouring threads read neighbouring elements.
extern "C" __global__ void ela_gc_scan(float* h, const float* init, float* fin, i64 nseq, int nch, i64 E, int reverse) {
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < nseq * E; e += (i64)gridDim.x * blockDim.x) {
        const i64 n = e / E, x = e % E;
        float acc = init ? init[e] : 0.f;
        for (int s = 0; s < nch; ++s) {
            const int c = reverse ? nch - 1 - s : s;
            float* p = h + (n * nch + c) * E + x;
            const float own = *p;
            *p = acc;
            acc += own;
        }
        if (fin) fin[e] = acc;
    }
}

// aug: [nseq][Fp][ld]. mode 0: aug[n][f][0..dv) = S[n][f][..], aug[n][f][dv] = z[n][f], zero
// past F and dv; mode 1: the reverse.
extern "C" __global__ void ela_gc_state(float* S, float* z, float* aug, i64 nseq, int F, int Fp, int dv, int ld,
                                        int mode) {
    const i64 total = nseq * Fp * ld;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total; e += (i64)gridDim.x * blockDim.x) {
        const i64 c = e % ld, f = (e / ld) % Fp, n = e / (ld * Fp), row = n * F + f;
        const bool data = f < F && c <= dv;
        if (mode == 0) aug[e] = data ? (c < dv ? S[row * dv + c] : z[row]) : 0.f;
        else if (data) *(c < dv ? S + row * dv + c : z + row) = aug[e];
    }
}

// o: [nseq][Tp][ld], row = [N | den | 0..]; y: [nseq][T][dv].
template <typename D>
__device__ void gc_out(const float* o, typename D::S* y, i64 nseq, i64 T, i64 Tp, int dv, int ld) {
    const i64 total = nseq * T * dv;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total; e += (i64)gridDim.x * blockDim.x) {
        const i64 r = e / dv, c = e % dv, n = r / T, t = r % T;
        const float* orow = o + (n * Tp + t) * ld;
        y[e] = D::store(orow[c] / orow[dv]);
    }
}

// One block per row: g = dy / den, cc = g . y; out row = [g | -cc | 0..] (`ld` wide, zero for
// padding rows). den: row r's denominator at den[r * lds].
template <typename D>
__device__ void gc_grad(const typename D::S* y, const typename D::S* dy, const float* den, int lds, float* out,
                        i64 nseq, i64 T, i64 Tp, int dv, int ld) {
    __shared__ float red[32];
    for (i64 r = blockIdx.x; r < nseq * Tp; r += gridDim.x) {
        const i64 n = r / Tp, t = r % Tp;
        float* o = out + r * ld;
        for (int c = dv + 1 + threadIdx.x; c < ld; c += blockDim.x) o[c] = 0.f;
        if (t >= T) {
            for (int c = threadIdx.x; c <= dv; c += blockDim.x) o[c] = 0.f;
            continue;
        }
        const i64 src = (n * T + t) * dv;
        const float inv = 1.f / den[r * lds];
        float part = 0.f;
        for (int c = threadIdx.x; c < dv; c += blockDim.x) {
            const float g = D::load(dy[src + c]) * inv;
            o[c] = g;
            part += g * D::load(y[src + c]);
        }
        const float cc = block_sum<float>(part, red);
        if (threadIdx.x == 0) o[dv] = -cc;
    }
}

// dst[n][t][0..w) = src[n][t][0..w) for t < T, src rows `ws` wide and Tp per sequence.
template <typename D>
__device__ void gc_take(const float* src, typename D::S* dst, i64 nseq, i64 T, i64 Tp, int ws, int w) {
    const i64 total = nseq * T * w;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total; e += (i64)gridDim.x * blockDim.x) {
        const i64 r = e / w, c = e % w, n = r / T, t = r % T;
        dst[e] = D::store(src[(n * Tp + t) * ws + c]);
    }
}

// One block per row t < T: dx = (d feature / d x)^T gf (gf rows `ld` apart).
template <typename D>
__device__ void gc_vjp(const typename D::S* x, const float* gf, typename D::S* dx, i64 nseq, i64 T, i64 Tp, int d,
                       int ld, int kern, int key) {
    extern __shared__ __align__(16) unsigned char ela_smem[];
    float* xs = (float*)ela_smem;  // [d], then [32] for reductions
    float* red = xs + d;
    for (i64 r = blockIdx.x; r < nseq * T; r += gridDim.x) {
        const i64 n = r / T, t = r % T;
        __syncthreads();
        for (int e = threadIdx.x; e < d; e += blockDim.x) xs[e] = D::load(x[r * d + e]);
        __syncthreads();
        features_vjp<D>(kern, key != 0, xs, d, gf + (n * Tp + t) * ld, dx + r * d, red);
    }
}

#define ELA_GC(NAME, D)                                                                                          \
    extern "C" __global__ void ela_gc_feat_##NAME(const D::S* x, float* out, i64 nseq, i64 T, i64 Tp, int d,     \
                                                  int ld, int kern, int key) {                                   \
        gc_feat<D>(x, out, nseq, T, Tp, d, ld, kern, key);                                                       \
    }                                                                                                            \
    extern "C" __global__ void ela_gc_aug_##NAME(const D::S* v, float* out, i64 nseq, i64 T, i64 Tp, int dv,     \
                                                 int ld) {                                                       \
        gc_aug<D>(v, out, nseq, T, Tp, dv, ld);                                                                  \
    }                                                                                                            \
    extern "C" __global__ void ela_gc_out_##NAME(const float* o, D::S* y, i64 nseq, i64 T, i64 Tp, int dv,       \
                                                 int ld) {                                                       \
        gc_out<D>(o, y, nseq, T, Tp, dv, ld);                                                                    \
    }                                                                                                            \
    extern "C" __global__ void ela_gc_grad_##NAME(const D::S* y, const D::S* dy, const float* den, int lds,      \
                                                  float* out, i64 nseq, i64 T, i64 Tp, int dv, int ld) {         \
        gc_grad<D>(y, dy, den, lds, out, nseq, T, Tp, dv, ld);                                                   \
    }                                                                                                            \
    extern "C" __global__ void ela_gc_take_##NAME(const float* src, D::S* dst, i64 nseq, i64 T, i64 Tp, int ws,  \
                                                  int w) {                                                       \
        gc_take<D>(src, dst, nseq, T, Tp, ws, w);                                                                \
    }                                                                                                            \
    extern "C" __global__ void ela_gc_vjp_##NAME(const D::S* x, const float* gf, D::S* dx, i64 nseq, i64 T,      \
                                                 i64 Tp, int d, int ld, int kern, int key) {                     \
        gc_vjp<D>(x, gf, dx, nseq, T, Tp, d, ld, kern, key);                                                     \
    }
ELA_GC(f16, F16)
ELA_GC(bf16, BF16)
ELA_GC(f32, F32)

// ---------------------------------------------------------------- the tensor-core chunked path
// Operand rows for the kernels of la_chunk.cu (cuda/src/ops/ela/feature_chunk.rs): features and
// [v | 1] in O = bf16 or f32, [nseq][Tp][ld] with zero padding. Grid (row groups, sequence): one warp takes LA_RB
// consecutive rows of sequence blockIdx.y, lanes over the columns (nc_feature_at /
// features.cuh), every load of its rows issued before any is used. These
// kernels are memory-bound: what they must avoid is latency chains (one row per warp) and 64-bit
// index divisions (a 64-bit `/` is a long software routine; measured 0.5-1 ms a call at B8 H16
// T16k D64 on an H200 before the grid took the sequence as its y index).
// ME: elements per lane of an input row (d <= 32 ME); an operand row (ld <= 32 (ME + 1)) gets one
// more; instantiated for ME = 2, 4, 8 (d up to 64, 128, 256), so small heads keep few registers.

#define LA_RB 4

// phi(x) (key = 0) or psi(x) (key = 1) of rows t < Tp of sequence n; x rows are d wide.
template <typename D, typename O, int ME>
__device__ void la_feat(const typename D::S* x, typename O::S* out, i64 T, i64 Tp, int d, int ld, int kern, int key) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int F = feature_size(kern, d);
    const i64 n = blockIdx.y, t0 = ((i64)blockIdx.x * NC_WARPS + warp) * LA_RB;
    float xv[LA_RB][ME];
#pragma unroll
    for (int i = 0; i < LA_RB; ++i) {
        const i64 t = t0 + i;
        const typename D::S* xr = x + (n * T + t) * d;
#pragma unroll
        for (int j = 0; j < ME; ++j) {
            const int e = lane + 32 * j;
            xv[i][j] = (t < T && e < d) ? D::load(xr[e]) : 0.f;
        }
    }
#pragma unroll
    for (int i = 0; i < LA_RB; ++i) {
        const i64 t = t0 + i;
        if (t >= Tp) break;  // warp-uniform
        float a = 0.f;
#pragma unroll
        for (int j = 0; j < ME; ++j) a += xv[i][j] * xv[i][j];
        const float n2 = warp_sum<float>(a);
        typename O::S* o = out + (n * Tp + t) * ld;
#pragma unroll
        for (int j = 0; j <= ME; ++j) {
            const int c = lane + 32 * j;
            const float xc = j < ME ? xv[i][j] : 0.f;
            if (c < ld) o[c] = O::store(t < T && c < F ? nc_feature_at<float>(kern, key != 0, xc, d, c, n2, 0.f, 0.f) : 0.f);
        }
    }
}

// [v | 1 | 0..] of rows t < Tp of sequence n (zero rows past T).
template <typename D, typename O, int ME>
__device__ void la_aug(const typename D::S* v, typename O::S* out, i64 T, i64 Tp, int dv, int ld) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const i64 n = blockIdx.y, t0 = ((i64)blockIdx.x * NC_WARPS + warp) * LA_RB;
    float val[LA_RB][ME + 1];
#pragma unroll
    for (int i = 0; i < LA_RB; ++i) {
        const i64 t = t0 + i;
        const typename D::S* vr = v + (n * T + t) * dv;
#pragma unroll
        for (int j = 0; j <= ME; ++j) {
            const int c = lane + 32 * j;
            val[i][j] = t >= T || c > dv ? 0.f : c < dv ? D::load(vr[c]) : 1.f;
        }
    }
#pragma unroll
    for (int i = 0; i < LA_RB; ++i) {
        const i64 t = t0 + i;
        if (t >= Tp) break;
        typename O::S* o = out + (n * Tp + t) * ld;
#pragma unroll
        for (int j = 0; j <= ME; ++j)
            if (lane + 32 * j < ld) o[lane + 32 * j] = O::store(val[i][j]);
    }
}

#define ELA_LA_ROWS(NAME, D, O, ME)                                                                              \
    extern "C" __global__ void ela_la_feat_##NAME##_e##ME(const D::S* x, O::S* out, i64 T, i64 Tp, int d,       \
                                                          int ld, int kern, int key) {                           \
        la_feat<D, O, ME>(x, out, T, Tp, d, ld, kern, key);                                                      \
    }                                                                                                            \
    extern "C" __global__ void ela_la_aug_##NAME##_e##ME(const D::S* v, O::S* out, i64 T, i64 Tp, int dv,        \
                                                         int ld) {                                               \
        la_aug<D, O, ME>(v, out, T, Tp, dv, ld);                                                                 \
    }
// Inputs to operands: 16-bit inputs to bf16 (tensor cores) or f32, f32 to f32.
#define ELA_LA_ALL(ME)                  \
    ELA_LA_ROWS(f16_bf16, F16, BF16, ME) \
    ELA_LA_ROWS(bf16_bf16, BF16, BF16, ME) \
    ELA_LA_ROWS(f16_f32, F16, F32, ME)   \
    ELA_LA_ROWS(bf16_f32, BF16, F32, ME) \
    ELA_LA_ROWS(f32_f32, F32, F32, ME)
ELA_LA_ALL(2)
ELA_LA_ALL(4)
ELA_LA_ALL(8)
