// Elementwise kernels: fill, strided copy, cast, unary maps, binary maps, comparisons, where.
// Every input is read through a `Desc` (shape, strides, offset), so transposed, narrowed and
// broadcast (stride 0) views need no copy; outputs are contiguous unless a kernel says otherwise.
// The scalar definitions mirror core/src/cpu/elementwise.rs (`unary_scalar`, `binary_scalar`).

// ---------------------------------------------------------------- fill / copy / cast

template <typename D> __device__ void fill_impl(typename D::S* out, i64 n, double v) {
    typename D::S x = D::from_f64(v);
    FOR_EACH(i, n) out[i] = x;
}
#define FILL(NAME, D) \
    extern "C" __global__ void fill_##NAME(D::S* out, i64 n, double v) { fill_impl<D>(out, n, v); }
FILL(u8, U8)
FILL(u32, U32)
FILL(f16, F16)
FILL(bf16, BF16)
FILL(f32, F32)
FILL(f64, F64)

// dst[view] = src[view]: copies by element width, so one kernel serves every dtype of that size.
#define COPY(W, T)                                                                               \
    extern "C" __global__ void copy_w##W(T* dst, Desc dd, const T* src, Desc sd, i64 n) {        \
        FOR_EACH(i, n) dst[desc_offset(dd, i)] = src[desc_offset(sd, i)];                        \
    }
COPY(1, u8)
COPY(2, u16)
COPY(4, u32)
COPY(8, u64)
COPY(16, u128x)

// Contiguous copy converted from dtype A to dtype B through f64 (exact for every source here;
// the f64 -> target rounding is correct, see from_f64).
#define CAST(AN, A, BN, B)                                                                        \
    extern "C" __global__ void cast_##AN##_##BN(B::S* out, const A::S* src, Desc sd, i64 n) {     \
        FOR_EACH(i, n) out[i] = B::from_f64(A::to_f64(src[desc_offset(sd, i)]));                  \
    }
#define CAST_FROM(AN, A) \
    CAST(AN, A, u8, U8) CAST(AN, A, u32, U32) CAST(AN, A, f16, F16) CAST(AN, A, bf16, BF16) CAST(AN, A, f32, F32) CAST(AN, A, f64, F64)
CAST_FROM(u8, U8)
CAST_FROM(u32, U32)
CAST_FROM(f16, F16)
CAST_FROM(bf16, BF16)
CAST_FROM(f32, F32)
CAST_FROM(f64, F64)

// ---------------------------------------------------------------- unary

// Op codes: the order of `UnaryOp` in core/src/op.rs (mapped in src/ops/elementwise.rs).
template <typename C> __device__ __forceinline__ C unary_scalar(int op, C x, C p1, C p2) {
    const C one = (C)1, zero = (C)0;
    switch (op) {
        case 0: return -x;
        case 1: return x_exp(x);
        case 2: return x_log(x);
        case 3: return x_sqrt(x);
        case 4: return one / x;
        case 5: return x_abs(x);
        case 6: return x * x;
        case 7: return x > zero ? x : zero;
        case 8: {  // GELU, tanh approximation
            const C k = (C)0.7978845608028654, c = (C)0.044715, h = (C)0.5;
            return h * x * (one + x_tanh(k * (x + c * x * x * x)));
        }
        case 9: {  // d GELU / dx (GeluGrad); derivation: docs/autograd.md#elementwise ("GELU (tanh form)")
            const C k = (C)0.7978845608028654, c = (C)0.044715, c3 = (C)(3.0 * 0.044715), h = (C)0.5;
            C t = x_tanh(k * (x + c * x * x * x));
            C du = k * (one + c3 * x * x);
            return h * (one + t) + h * x * (one - t * t) * du;
        }
        case 10: return x / (one + x_exp(-x));
        case 11: {  // d SiLU / dx (SiluGrad); derivation: docs/autograd.md#elementwise ("SiLU")
            C s = one / (one + x_exp(-x));
            return s * (one + x * (one - s));
        }
        case 12: {  // two branches so neither exp overflows
            if (x >= zero) return one / (one + x_exp(-x));
            C e = x_exp(x);
            return e / (one + e);
        }
        case 13: return x_tanh(x);
        case 14: return x > zero ? one : (x < zero ? -one : zero);
        case 15: return x > zero ? one : zero;
        case 16: return x_pow(x, p1);
        case 17: return x * p1 + p2;
        case 18: return x_max(x, p1);
        case 19: return x_min(x, p1);
    }
    return x;
}

template <typename D>
__device__ void unary_impl(typename D::S* out, const typename D::S* x, Desc xd, i64 n, int op, double p1, double p2) {
    typedef typename D::C C;
    C a = (C)p1, b = (C)p2;
    FOR_EACH(i, n) out[i] = D::store(unary_scalar<C>(op, D::load(x[desc_offset(xd, i)]), a, b));
}
#define UNARY(NAME, D)                                                                              \
    extern "C" __global__ void unary_##NAME(D::S* out, const D::S* x, Desc xd, i64 n, int op, double p1, \
                                            double p2) {                                            \
        unary_impl<D>(out, x, xd, n, op, p1, p2);                                                   \
    }
UNARY(f16, F16)
UNARY(bf16, BF16)
UNARY(f32, F32)
UNARY(f64, F64)

// ---------------------------------------------------------------- binary

template <typename C> __device__ __forceinline__ C binary_scalar(int op, C a, C b) {
    switch (op) {
        case 0: return a + b;
        case 1: return a - b;
        case 2: return a * b;
        case 3: return a / b;
        case 4: return (x_isnan(a) || a >= b) ? a : b;  // NaN propagates, as numpy's maximum
        case 5: return (x_isnan(a) || a <= b) ? a : b;
    }
    return a;
}

template <typename D>
__device__ void binary_impl(typename D::S* out, const typename D::S* a, Desc ad, const typename D::S* b, Desc bd,
                            i64 n, int op) {
    typedef typename D::C C;
    FOR_EACH(i, n) {
        C x = D::load(a[desc_offset(ad, i)]);
        C y = D::load(b[desc_offset(bd, i)]);
        out[i] = D::store(binary_scalar<C>(op, x, y));
    }
}
#define BINARY(NAME, D)                                                                                    \
    extern "C" __global__ void binary_##NAME(D::S* out, const D::S* a, Desc ad, const D::S* b, Desc bd, i64 n, \
                                             int op) {                                                     \
        binary_impl<D>(out, a, ad, b, bd, n, op);                                                          \
    }
BINARY(f16, F16)
BINARY(bf16, BF16)
BINARY(f32, F32)
BINARY(f64, F64)

// ---------------------------------------------------------------- fast paths (n < 2^31)

// Contiguous unary and binary maps, and binary maps of a contiguous operand with a "per-channel"
// one: after coalescing, the small operand steps along a single axis (c = (i / inner) % C, at
// `bs` elements a step; C = 1 for a scalar), as x * w[1, C, 1, 1] + b[1, C, 1, 1] does. Indices
// are 32-bit (the host checks n < 2^31), the general kernels above divide 64-bit per axis.
// `vec` (set by the host when every pointer the kernel streams through is 16-byte aligned)
// moves 16 bytes per load and store; the elements past the last whole vector, and every element
// when `vec` is 0, take the scalar loop. Same scalar functions as the general kernels, so the
// results are bit-identical to theirs.

template <typename D>
__device__ void unary_contig_impl(typename D::S* out, const typename D::S* x, u32 n, int op, double p1, double p2,
                                  int vec) {
    typedef typename D::C C;
    typedef typename D::S S;
    const int V = 16 / sizeof(S);
    const C a = (C)p1, b = (C)p2;
    const u32 t0 = blockIdx.x * blockDim.x + threadIdx.x, nt = gridDim.x * blockDim.x;
    u32 done = 0;
    if (vec) {
        const u32 nv = n / V;
        for (u32 j = t0; j < nv; j += nt) {
            Pack16<S> u, r;
            u.raw = ((const u128x*)x)[j];
#pragma unroll
            for (int k = 0; k < V; ++k) r.v[k] = D::store(unary_scalar<C>(op, D::load(u.v[k]), a, b));
            ((u128x*)out)[j] = r.raw;
        }
        done = nv * V;
    }
    for (u32 i = done + t0; i < n; i += nt) out[i] = D::store(unary_scalar<C>(op, D::load(x[i]), a, b));
}

template <typename D>
__device__ void binary_contig_impl(typename D::S* out, const typename D::S* a, const typename D::S* b, u32 n, int op,
                                   int vec) {
    typedef typename D::C C;
    typedef typename D::S S;
    const int V = 16 / sizeof(S);
    const u32 t0 = blockIdx.x * blockDim.x + threadIdx.x, nt = gridDim.x * blockDim.x;
    u32 done = 0;
    if (vec) {
        const u32 nv = n / V;
        for (u32 j = t0; j < nv; j += nt) {
            Pack16<S> u, w, r;
            u.raw = ((const u128x*)a)[j];
            w.raw = ((const u128x*)b)[j];
#pragma unroll
            for (int k = 0; k < V; ++k) r.v[k] = D::store(binary_scalar<C>(op, D::load(u.v[k]), D::load(w.v[k])));
            ((u128x*)out)[j] = r.raw;
        }
        done = nv * V;
    }
    for (u32 i = done + t0; i < n; i += nt) out[i] = D::store(binary_scalar<C>(op, D::load(a[i]), D::load(b[i])));
}

// out[i] = op(a[i], s[c * bs]) (or op(s[c * bs], a[i]) with `swap`), c = (i / inner) % C.
template <typename D>
__device__ void binary_chan_impl(typename D::S* out, const typename D::S* a, const typename D::S* s, u32 n, u32 inner,
                                 u32 chans, u32 bs, int op, int swap, int vec) {
    typedef typename D::C C;
    typedef typename D::S S;
    const int V = 16 / sizeof(S);
    const u32 t0 = blockIdx.x * blockDim.x + threadIdx.x, nt = gridDim.x * blockDim.x;
    u32 done = 0;
    if (vec) {
        const u32 nv = n / V;
        for (u32 j = t0; j < nv; j += nt) {
            // Channel of the vector's first element, then stepped element by element (a vector
            // may straddle channels when inner is not a multiple of V).
            const u32 i = j * V, q = i / inner;
            u32 r = i - q * inner, c = q % chans;
            Pack16<S> u, o;
            u.raw = ((const u128x*)a)[j];
            C y = D::load(s[c * bs]);
#pragma unroll
            for (int k = 0; k < V; ++k) {
                const C x = D::load(u.v[k]);
                o.v[k] = D::store(swap ? binary_scalar<C>(op, y, x) : binary_scalar<C>(op, x, y));
                if (++r == inner) {
                    r = 0;
                    if (++c == chans) c = 0;
                    y = D::load(s[c * bs]);
                }
            }
            ((u128x*)out)[j] = o.raw;
        }
        done = nv * V;
    }
    for (u32 i = done + t0; i < n; i += nt) {
        const C x = D::load(a[i]), y = D::load(s[((i / inner) % chans) * bs]);
        out[i] = D::store(swap ? binary_scalar<C>(op, y, x) : binary_scalar<C>(op, x, y));
    }
}

// Contiguous casts between f32, f16 and bf16 (mixed precision casts every weight each step):
// eight elements a step, moved as whole 16-byte vectors on both sides (one of a 16-bit type, two
// of f32) when `vec`, the rest one by one. Through f32, which holds every value of all three
// exactly, so the bits are those of the general `cast_*` kernels (whose f64 round trip adds
// nothing for these types) at a fraction of their cost (no strided index, no f64).
template <typename D> __device__ __forceinline__ void load8(const typename D::S* p, u32 j, float* f) {
    constexpr int W = 8 * (int)sizeof(typename D::S) / 16, E = 8 / W;  // 16-byte words, elements per word
#pragma unroll
    for (int w = 0; w < W; ++w) {
        Pack16<typename D::S> u;
        u.raw = ((const u128x*)p)[(size_t)j * W + w];
#pragma unroll
        for (int k = 0; k < E; ++k) f[w * E + k] = D::load(u.v[k]);
    }
}
template <typename D> __device__ __forceinline__ void store8(typename D::S* p, u32 j, const float* f) {
    constexpr int W = 8 * (int)sizeof(typename D::S) / 16, E = 8 / W;
#pragma unroll
    for (int w = 0; w < W; ++w) {
        Pack16<typename D::S> u;
#pragma unroll
        for (int k = 0; k < E; ++k) u.v[k] = D::store(f[w * E + k]);
        ((u128x*)p)[(size_t)j * W + w] = u.raw;
    }
}
template <typename A, typename B>
__device__ void cast_contig_impl(typename B::S* out, const typename A::S* x, u32 n, int vec) {
    const u32 t0 = blockIdx.x * blockDim.x + threadIdx.x, nt = gridDim.x * blockDim.x;
    u32 done = 0;
    if (vec) {
        const u32 nv = n / 8;
        for (u32 j = t0; j < nv; j += nt) {
            float f[8];
            load8<A>(x, j, f);
            store8<B>(out, j, f);
        }
        done = nv * 8;
    }
    for (u32 i = done + t0; i < n; i += nt) out[i] = B::store(A::load(x[i]));
}
#define CAST_CONTIG(AN, A, BN, B)                                                                  \
    extern "C" __global__ void cast_contig_##AN##_##BN(B::S* out, const A::S* x, u32 n, int vec) { \
        cast_contig_impl<A, B>(out, x, n, vec);                                                    \
    }
CAST_CONTIG(f32, F32, bf16, BF16)
CAST_CONTIG(f32, F32, f16, F16)
CAST_CONTIG(bf16, BF16, f32, F32)
CAST_CONTIG(f16, F16, f32, F32)
CAST_CONTIG(bf16, BF16, f16, F16)
CAST_CONTIG(f16, F16, bf16, BF16)

// Many contiguous casts in one launch (`Backend::cast_concat`: mixed precision's weight copies of
// a step, written back to back into one buffer). Entry j casts n[j] elements from src[j] to
// dst[j] and owns blocks first_block[j] .. first_block[j + 1], CAST_LIST_SEG elements each (a
// multiple of 8, so a segment of an entry whose pointers are 16-byte aligned, vec[j], is whole
// 8-element vectors but for the entry's tail). The element conversion is cast_contig's, so the
// bits are those of one cast per entry. Mirror of `CastList` in src/ops/multi_tensor.rs.
#define CAST_LIST_MAX 96
#define CAST_LIST_SEG 8192
struct CastList {
    u64 dst[CAST_LIST_MAX], src[CAST_LIST_MAX];
    i64 n[CAST_LIST_MAX];
    i32 vec[CAST_LIST_MAX];
    i32 first_block[CAST_LIST_MAX + 1];
    i32 count;
    i32 pad_[2];
};
static_assert(sizeof(CastList) == 3088, "CastList must match its Rust mirror in src/ops/multi_tensor.rs");
template <typename A, typename B> __device__ void cast_list_impl(const CastList& l) {
    const ListSeg sg = list_segment(l.first_block, l.n, l.count, blockIdx.x, CAST_LIST_SEG);
    typename B::S* out = (typename B::S*)l.dst[sg.j];
    const typename A::S* x = (const typename A::S*)l.src[sg.j];
    i64 done = sg.start;
    if (l.vec[sg.j]) {
        const i64 v1 = sg.end / 8;
        for (i64 v = sg.start / 8 + threadIdx.x; v < v1; v += blockDim.x) {
            float f[8];
            load8<A>(x, (u32)v, f);
            store8<B>(out, (u32)v, f);
        }
        done = max(done, v1 * 8);
    }
    for (i64 i = done + threadIdx.x; i < sg.end; i += blockDim.x) out[i] = B::store(A::load(x[i]));
}
#define CAST_LIST(AN, A, BN, B) \
    extern "C" __global__ void cast_list_##AN##_##BN(CastList l) { cast_list_impl<A, B>(l); }
#define CAST_LIST_FROM(AN, A) CAST_LIST(AN, A, f32, F32) CAST_LIST(AN, A, f16, F16) CAST_LIST(AN, A, bf16, BF16)
CAST_LIST_FROM(f32, F32)
CAST_LIST_FROM(f16, F16)
CAST_LIST_FROM(bf16, BF16)

#define FAST(NAME, D)                                                                                              \
    extern "C" __global__ void unary_contig_##NAME(D::S* out, const D::S* x, u32 n, int op, double p1, double p2,   \
                                                   int vec) {                                                      \
        unary_contig_impl<D>(out, x, n, op, p1, p2, vec);                                                          \
    }                                                                                                              \
    extern "C" __global__ void binary_contig_##NAME(D::S* out, const D::S* a, const D::S* b, u32 n, int op,        \
                                                    int vec) {                                                     \
        binary_contig_impl<D>(out, a, b, n, op, vec);                                                              \
    }                                                                                                              \
    extern "C" __global__ void binary_chan_##NAME(D::S* out, const D::S* a, const D::S* s, u32 n, u32 inner,       \
                                                  u32 chans, u32 bs, int op, int swap, int vec) {                  \
        binary_chan_impl<D>(out, a, s, n, inner, chans, bs, op, swap, vec);                                        \
    }
FAST(f16, F16)
FAST(bf16, BF16)
FAST(f32, F32)
FAST(f64, F64)

// ---------------------------------------------------------------- comparisons and where

template <typename D>
__device__ void cmp_impl(u8* out, const typename D::S* a, Desc ad, const typename D::S* b, Desc bd, i64 n, int op) {
    FOR_EACH(i, n) {
        typename D::C x = D::load(a[desc_offset(ad, i)]);
        typename D::C y = D::load(b[desc_offset(bd, i)]);
        bool r;
        switch (op) {
            case 0: r = x == y; break;
            case 1: r = x != y; break;
            case 2: r = x < y; break;
            case 3: r = x <= y; break;
            case 4: r = x > y; break;
            default: r = x >= y; break;
        }
        out[i] = r ? 1 : 0;
    }
}
#define CMP(NAME, D)                                                                                     \
    extern "C" __global__ void cmp_##NAME(u8* out, const D::S* a, Desc ad, const D::S* b, Desc bd, i64 n, int op) { \
        cmp_impl<D>(out, a, ad, b, bd, n, op);                                                           \
    }
CMP(u8, U8)
CMP(u32, U32)
CMP(f16, F16)
CMP(bf16, BF16)
CMP(f32, F32)
CMP(f64, F64)

// Values are copied, never computed, so one kernel per element width serves every dtype.
#define WHERE(W, T)                                                                                       \
    extern "C" __global__ void where_w##W(T* out, const u8* c, Desc cd, const T* t, Desc td, const T* f, \
                                          Desc fd, i64 n) {                                              \
        FOR_EACH(i, n) out[i] = c[desc_offset(cd, i)] != 0 ? t[desc_offset(td, i)] : f[desc_offset(fd, i)]; \
    }
WHERE(1, u8)
WHERE(2, u16)
WHERE(4, u32)
WHERE(8, u64)

// ---------------------------------------------------------------- fused AdamW update

// One AdamW update per element (core's AdamWStep: m' = b1 m + (1 - b1) g,
// v' = b2 v + (1 - b2) g^2, p' = p decay - step * m' / (sqrt(v') * inv_sqrt_bc2 + eps)), in the
// same operation order as the CPU backend and in the buffers' own precision, every product and
// sum rounded on its own (mul_rn, ...; sqrt and the division are correctly rounded by default):
// the CPU's bits exactly, and the same bits in every kernel below whatever the compiler would
// otherwise fuse.
template <typename T>
__device__ __forceinline__ void adamw_elem(T* po, T* mo, T* vo, const T* p, const T* m, const T* v, i64 i, const T gi,
                                           T b1, T b2, T decay, T step, T inv_sqrt_bc2, T eps) {
    const T mi = add_rn(mul_rn(b1, m[i]), mul_rn(sub_rn((T)1, b1), gi));
    const T vi = add_rn(mul_rn(b2, v[i]), mul_rn(sub_rn((T)1, b2), mul_rn(gi, gi)));
    po[i] = sub_rn(mul_rn(p[i], decay), mul_rn(step, mi / add_rn(mul_rn(sqrt(vi), inv_sqrt_bc2), eps)));
    mo[i] = mi;
    vo[i] = vi;
}
template <typename T>
__device__ void adamw_impl(T* po, T* mo, T* vo, const T* p, const T* g, const T* m, const T* v, i64 n, T b1, T b2,
                           T decay, T step, T inv_sqrt_bc2, T eps) {
    FOR_EACH(i, n) adamw_elem<T>(po, mo, vo, p, m, v, i, g[i], b1, b2, decay, step, inv_sqrt_bc2, eps);
}
extern "C" __global__ void adamw_f32(float* po, float* mo, float* vo, const float* p, const float* g, const float* m,
                                     const float* v, i64 n, double b1, double b2, double decay, double step,
                                     double inv_sqrt_bc2, double eps) {
    adamw_impl<float>(po, mo, vo, p, g, m, v, n, (float)b1, (float)b2, (float)decay, (float)step, (float)inv_sqrt_bc2,
                      (float)eps);
}
extern "C" __global__ void adamw_f64(double* po, double* mo, double* vo, const double* p, const double* g,
                                     const double* m, const double* v, i64 n, double b1, double b2, double decay,
                                     double step, double inv_sqrt_bc2, double eps) {
    adamw_impl<double>(po, mo, vo, p, g, m, v, n, b1, b2, decay, step, inv_sqrt_bc2, eps);
}

// Multi-tensor AdamW: up to ADAMW_LIST_MAX parameters per launch, their pointers and scalars in
// the kernel's parameter (no upload, nothing to free; a launch may be recorded into a graph).
// Parameter j owns blocks first_block[j] .. first_block[j + 1], each ADAMW_LIST_SEG elements;
// every element goes through adamw_elem with the scalars cast exactly as adamw_f32/_f64 cast
// theirs, so the update has the bits of one launch per parameter. Mirror of `AdamWList` in
// src/ops/multi_tensor.rs (same field order and sizes).
#define ADAMW_LIST_MAX 32
#define ADAMW_LIST_SEG 4096
struct AdamWList {
    u64 po[ADAMW_LIST_MAX], mo[ADAMW_LIST_MAX], vo[ADAMW_LIST_MAX];
    u64 p[ADAMW_LIST_MAX], g[ADAMW_LIST_MAX], m[ADAMW_LIST_MAX], v[ADAMW_LIST_MAX];
    i64 n[ADAMW_LIST_MAX];
    double decay[ADAMW_LIST_MAX], step[ADAMW_LIST_MAX], inv_sqrt_bc2[ADAMW_LIST_MAX];
    double b1, b2, eps;
    i32 first_block[ADAMW_LIST_MAX + 1];
    i32 count;
    i32 pad_[2];
};
static_assert(sizeof(AdamWList) == 2984, "AdamWList must match its Rust mirror in src/ops/multi_tensor.rs");
template <typename T> __device__ void adamw_list_impl(const AdamWList& l) {
    const ListSeg sg = list_segment(l.first_block, l.n, l.count, blockIdx.x, ADAMW_LIST_SEG);
    const int j = sg.j;
    T* po = (T*)l.po[j];
    T* mo = (T*)l.mo[j];
    T* vo = (T*)l.vo[j];
    const T *p = (const T*)l.p[j], *g = (const T*)l.g[j], *m = (const T*)l.m[j], *v = (const T*)l.v[j];
    const T b1 = (T)l.b1, b2 = (T)l.b2, decay = (T)l.decay[j], step = (T)l.step[j];
    const T inv_sqrt_bc2 = (T)l.inv_sqrt_bc2[j], eps = (T)l.eps;
    for (i64 i = sg.start + threadIdx.x; i < sg.end; i += blockDim.x)
        adamw_elem<T>(po, mo, vo, p, m, v, i, g[i], b1, b2, decay, step, inv_sqrt_bc2, eps);
}
extern "C" __global__ void adamw_list_f32(AdamWList l) { adamw_list_impl<float>(l); }
extern "C" __global__ void adamw_list_f64(AdamWList l) { adamw_list_impl<double>(l); }

// The update of a recorded training step (`ela train --graph`, `Cuda::adamw_in_place`). The list
// is the same with po = p, mo = m, vo = v (in place: each element is read before it is written,
// by the same thread), decay[j] = 1 for a parameter with weight decay and 0 without. What
// changes from step to step is read from device memory, where the host writes it before each
// replay: hyper = [lr, bc1, bc2, weight_decay, max_norm]; sumsq[0] is the gradients' sum of
// squares, computed earlier in the same replay. The gradient is clipped by the global norm here
// (PyTorch's rule, as clip_grad_norm applies it); with clipping on, a non-finite norm leaves
// every parameter untouched (the host reads the norm after the replay and reports it). The
// scalars are rounded exactly as the host's f64 arithmetic rounds them in the eager step (the
// _rn intrinsics keep NVRTC from fusing a multiply with an add), so given the same gradients a
// replayed update has the bits of an eager one.
template <typename T> __device__ void adamw_list_dev_impl(const AdamWList& l, const double* hyper, const double* sumsq) {
    const double lr = hyper[0], bc1 = hyper[1], bc2 = hyper[2], wd = hyper[3], max_norm = hyper[4];
    const double norm = sqrt(sumsq[0]);
    if (max_norm > 0.0 && !(norm <= 1.7976931348623157e308)) return;
    const bool clip = max_norm > 0.0 && norm > max_norm;
    const T scale = (T)(clip ? __ddiv_rn(max_norm, __dadd_rn(norm, 1e-6)) : 1.0);
    const ListSeg sg = list_segment(l.first_block, l.n, l.count, blockIdx.x, ADAMW_LIST_SEG);
    const int j = sg.j;
    T* p = (T*)l.p[j];
    T* m = (T*)l.m[j];
    T* v = (T*)l.v[j];
    const T* g = (const T*)l.g[j];
    const T b1 = (T)l.b1, b2 = (T)l.b2, eps = (T)l.eps;
    const T decay = (T)(l.decay[j] != 0.0 ? __dsub_rn(1.0, __dmul_rn(lr, wd)) : 1.0);
    const T step = (T)__ddiv_rn(lr, bc1), inv_sqrt_bc2 = (T)__ddiv_rn(1.0, sqrt(bc2));
    for (i64 i = sg.start + threadIdx.x; i < sg.end; i += blockDim.x) {
        const T gi = clip ? mul_rn(g[i], scale) : g[i];
        adamw_elem<T>(p, m, v, p, m, v, i, gi, b1, b2, decay, step, inv_sqrt_bc2, eps);
    }
}
extern "C" __global__ void adamw_list_dev_f32(AdamWList l, const double* hyper, const double* sumsq) {
    adamw_list_dev_impl<float>(l, hyper, sumsq);
}
extern "C" __global__ void adamw_list_dev_f64(AdamWList l, const double* hyper, const double* sumsq) {
    adamw_list_dev_impl<double>(l, hyper, sumsq);
}

// ---------------------------------------------------------------- SwiGLU

// y = silu(a) b, and its backward da = g b silu'(a), db = g silu(a) with silu(a) = a s,
// silu'(a) = s (1 + a (1 - s)), s = 1 / (1 + exp(-a)): the CPU backend's formulas
// (core/src/cpu/nn.rs), in the compute type, rounded once.
// Derivation of the backward: docs/autograd.md#swiglu.
// With `vec` (every buffer 16-byte aligned, set by the host) each thread moves 16-byte vectors;
// the elements past the last whole vector take the scalar loop. The same element functions
// either way, so the results do not depend on the path.
template <typename D> __device__ __forceinline__ typename D::S swiglu_elem(typename D::S a, typename D::S b) {
    typedef typename D::C C;
    const C x = D::load(a);
    return D::store(x / ((C)1 + x_exp(-x)) * D::load(b));
}
// Derivation: docs/autograd.md#swiglu.
template <typename D>
__device__ __forceinline__ void swiglu_bwd_elem(typename D::S& da, typename D::S& db, typename D::S a, typename D::S b,
                                                typename D::S g) {
    typedef typename D::C C;
    const C x = D::load(a), v = D::load(b), gi = D::load(g);
    const C s = (C)1 / ((C)1 + x_exp(-x));
    da = D::store(gi * v * (s * ((C)1 + x * ((C)1 - s))));
    db = D::store(gi * (x * s));
}
template <typename D>
__device__ void swiglu_impl(typename D::S* out, const typename D::S* a, const typename D::S* b, i64 n, int vec) {
    typedef typename D::S S;
    const int V = 16 / sizeof(S);
    i64 done = 0;
    if (vec) {
        const i64 nv = n / V;
        FOR_EACH(j, nv) {
            Pack16<S> ua, ub, r;
            ua.raw = ((const u128x*)a)[j];
            ub.raw = ((const u128x*)b)[j];
#pragma unroll
            for (int k = 0; k < V; ++k) r.v[k] = swiglu_elem<D>(ua.v[k], ub.v[k]);
            ((u128x*)out)[j] = r.raw;
        }
        done = nv * V;
    }
    FOR_EACH(i, n - done) out[done + i] = swiglu_elem<D>(a[done + i], b[done + i]);
}
template <typename D>
__device__ void swiglu_bwd_impl(typename D::S* da, typename D::S* db, const typename D::S* a, const typename D::S* b,
                                const typename D::S* g, i64 n, int vec) {
    typedef typename D::S S;
    const int V = 16 / sizeof(S);
    i64 done = 0;
    if (vec) {
        const i64 nv = n / V;
        FOR_EACH(j, nv) {
            Pack16<S> ua, ub, ug, ra, rb;
            ua.raw = ((const u128x*)a)[j];
            ub.raw = ((const u128x*)b)[j];
            ug.raw = ((const u128x*)g)[j];
#pragma unroll
            for (int k = 0; k < V; ++k) swiglu_bwd_elem<D>(ra.v[k], rb.v[k], ua.v[k], ub.v[k], ug.v[k]);
            ((u128x*)da)[j] = ra.raw;
            ((u128x*)db)[j] = rb.raw;
        }
        done = nv * V;
    }
    FOR_EACH(i, n - done) swiglu_bwd_elem<D>(da[done + i], db[done + i], a[done + i], b[done + i], g[done + i]);
}
// The packed form: the gate and up projections side by side in each row of x [rows, 2h] (one
// GEMM made both), y [rows, h]; the backward writes [d gate | d up] into one dx [rows, 2h], the
// layout the GEMM's backward reads. Same element functions, so the same bits as the two-buffer
// kernels above. With `vec` (h a multiple of the vector width, x, y (dx, g) 16-byte aligned) a
// thread moves one vector of y and the two of x it needs.
template <typename D>
__device__ void swiglu_packed_impl(typename D::S* y, const typename D::S* x, i64 rows, i64 h, int vec) {
    typedef typename D::S S;
    const int V = 16 / sizeof(S);
    if (vec) {
        const i64 hv = h / V;
        FOR_EACH(j, rows * hv) {
            const i64 r = j / hv, c = j - r * hv;
            const u128x* xr = (const u128x*)(x + 2 * h * r);
            Pack16<S> ua, ub, o;
            ua.raw = xr[c];
            ub.raw = xr[hv + c];
#pragma unroll
            for (int k = 0; k < V; ++k) o.v[k] = swiglu_elem<D>(ua.v[k], ub.v[k]);
            ((u128x*)y)[j] = o.raw;
        }
        return;
    }
    FOR_EACH(i, rows * h) {
        const i64 r = i / h, c = i - r * h;
        y[i] = swiglu_elem<D>(x[2 * h * r + c], x[2 * h * r + h + c]);
    }
}
template <typename D>
__device__ void swiglu_packed_bwd_impl(typename D::S* dx, const typename D::S* x, const typename D::S* g, i64 rows, i64 h,
                                       int vec) {
    typedef typename D::S S;
    const int V = 16 / sizeof(S);
    if (vec) {
        const i64 hv = h / V;
        FOR_EACH(j, rows * hv) {
            const i64 r = j / hv, c = j - r * hv;
            const u128x* xr = (const u128x*)(x + 2 * h * r);
            u128x* dr = (u128x*)(dx + 2 * h * r);
            Pack16<S> ua, ub, ug, ra, rb;
            ua.raw = xr[c];
            ub.raw = xr[hv + c];
            ug.raw = ((const u128x*)g)[j];
#pragma unroll
            for (int k = 0; k < V; ++k) swiglu_bwd_elem<D>(ra.v[k], rb.v[k], ua.v[k], ub.v[k], ug.v[k]);
            dr[c] = ra.raw;
            dr[hv + c] = rb.raw;
        }
        return;
    }
    FOR_EACH(i, rows * h) {
        const i64 r = i / h, c = i - r * h, at = 2 * h * r + c;
        swiglu_bwd_elem<D>(dx[at], dx[at + h], x[at], x[at + h], g[i]);
    }
}
#define SWIGLU(NAME, D)                                                                                    \
    extern "C" __global__ void swiglu_##NAME(D::S* out, const D::S* a, const D::S* b, i64 n, int vec) {     \
        swiglu_impl<D>(out, a, b, n, vec);                                                                 \
    }                                                                                                      \
    extern "C" __global__ void swiglu_bwd_##NAME(D::S* da, D::S* db, const D::S* a, const D::S* b,          \
                                                 const D::S* g, i64 n, int vec) {                          \
        swiglu_bwd_impl<D>(da, db, a, b, g, n, vec);                                                       \
    }                                                                                                      \
    extern "C" __global__ void swiglu_packed_##NAME(D::S* y, const D::S* x, i64 rows, i64 h, int vec) {     \
        swiglu_packed_impl<D>(y, x, rows, h, vec);                                                         \
    }                                                                                                      \
    extern "C" __global__ void swiglu_packed_bwd_##NAME(D::S* dx, const D::S* x, const D::S* g, i64 rows,   \
                                                        i64 h, int vec) {                                  \
        swiglu_packed_bwd_impl<D>(dx, x, g, rows, h, vec);                                                 \
    }
SWIGLU(f16, F16)
SWIGLU(bf16, BF16)
SWIGLU(f32, F32)
SWIGLU(f64, F64)

// ---------------------------------------------------------------- bias + SiLU

// out[i] = silu(x[i] + bias[c]), c = (i / inner) % chans: a convolution's bias and activation in
// one pass (the CPU backend's formula, core/src/cpu/nn.rs, in the compute type, rounded once).
// With `vec`, inner is a multiple of the vector width and the buffers are 16-byte aligned, so a
// 16-byte vector lies in one channel and needs one bias value. There is no backward kernel: the
// backward is composed from tensor ops in `Var::bias_silu` (docs/autograd.md#bias-silu).
template <typename D>
__device__ void bias_silu_impl(typename D::S* out, const typename D::S* x, const typename D::S* bias, u32 n, u32 inner,
                               u32 chans, int vec) {
    typedef typename D::C C;
    typedef typename D::S S;
    const int V = 16 / sizeof(S);
    const u32 t0 = blockIdx.x * blockDim.x + threadIdx.x, nt = gridDim.x * blockDim.x;
    u32 done = 0;
    if (vec) {
        const u32 nv = n / V;
        for (u32 j = t0; j < nv; j += nt) {
            const C b = D::load(bias[((j * V) / inner) % chans]);
            Pack16<S> u, o;
            u.raw = ((const u128x*)x)[j];
#pragma unroll
            for (int k = 0; k < V; ++k) {
                const C z = D::load(u.v[k]) + b;
                o.v[k] = D::store(z / ((C)1 + x_exp(-z)));
            }
            ((u128x*)out)[j] = o.raw;
        }
        done = nv * V;
    }
    for (u32 i = done + t0; i < n; i += nt) {
        const C z = D::load(x[i]) + D::load(bias[(i / inner) % chans]);
        out[i] = D::store(z / ((C)1 + x_exp(-z)));
    }
}
#define BIAS_SILU(NAME, D)                                                                                 \
    extern "C" __global__ void bias_silu_##NAME(D::S* out, const D::S* x, const D::S* bias, u32 n, u32 inner, \
                                                u32 chans, int vec) {                                      \
        bias_silu_impl<D>(out, x, bias, n, inner, chans, vec);                                             \
    }
BIAS_SILU(f16, F16)
BIAS_SILU(bf16, BF16)
BIAS_SILU(f32, F32)
BIAS_SILU(f64, F64)
