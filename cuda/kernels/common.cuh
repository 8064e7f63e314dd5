// Shared prelude of every ELA kernel file. The Rust side prepends it to each .cu source before
// handing the text to NVRTC, so the kernels need no include path and no CUDA header at all: half
// and bfloat16 values travel as raw 16-bit integers and are converted with the PTX `cvt`
// instruction (f16) or bit arithmetic (bf16). Every float kernel computes in `D::C` (f32 for
// f16/bf16/f32, f64 for f64) and rounds once when it stores, as the CPU backend does.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;
typedef int i32;

// ---------------------------------------------------------------- strided views

#define MAX_RANK 6

// Mirror of `Desc` in src/strided.rs (same field order and sizes): a logical shape with per-axis
// strides and a start offset, all in elements. Axes of size 1 are removed on the Rust side.
struct Desc {
    i64 dims[MAX_RANK];
    i64 strides[MAX_RANK];
    i64 offset;
    i32 rank;
    i32 pad_;
};

// Storage offset of the i-th element (row-major logical order) of a view.
__device__ __forceinline__ i64 desc_offset(const Desc& d, i64 i) {
    if (d.rank == 1) return d.offset + i * d.strides[0];  // the common, coalesced case
    i64 off = d.offset;
#pragma unroll
    for (int k = MAX_RANK - 1; k >= 0; --k) {
        if (k < d.rank) {
            i64 dk = d.dims[k];
            off += (i % dk) * d.strides[k];
            i /= dk;
        }
    }
    return off;
}

// Grid-stride loop over n elements.
#define FOR_EACH(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

// 16 bytes moved by one load or store instruction, and the elements of a dtype it holds.
struct __align__(16) u128x {
    u64 lo, hi;
};
template <typename S> union __align__(16) Pack16 {
    u128x raw;
    S v[16 / sizeof(S)];
};

// ---------------------------------------------------------------- half conversions

__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float(((u32)h) << 16); }
// Round to nearest even; NaN stays a quiet NaN (as the `half` crate does).
__device__ __forceinline__ u16 f32_to_bf16(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (u16)(u >> 16);
}
// f64 -> f32 rounded to odd: rounding that value again to f16/bf16 (>= 2 fewer bits) gives the
// correctly rounded f64 -> f16/bf16 result, with no double-rounding error.
__device__ __forceinline__ float f64_to_f32_odd(double d) {
    float f = __double2float_rz(d);
    if ((double)f != d && f == f) f = __uint_as_float(__float_as_uint(f) | 1u);
    return f;
}

// ---------------------------------------------------------------- dtype tags

// S: storage type, C: compute type. load/store convert one element; from_f64/to_f64 are exact or
// correctly rounded, and integer conversions saturate like Rust's `as` (NaN -> 0).
struct F32 {
    typedef float S;
    typedef float C;
    static __device__ __forceinline__ C load(S v) { return v; }
    static __device__ __forceinline__ S store(C v) { return v; }
    static __device__ __forceinline__ double to_f64(S v) { return (double)v; }
    static __device__ __forceinline__ S from_f64(double v) { return (float)v; }
};
struct F64 {
    typedef double S;
    typedef double C;
    static __device__ __forceinline__ C load(S v) { return v; }
    static __device__ __forceinline__ S store(C v) { return v; }
    static __device__ __forceinline__ double to_f64(S v) { return v; }
    static __device__ __forceinline__ S from_f64(double v) { return v; }
};
struct F16 {
    typedef u16 S;
    typedef float C;
    static __device__ __forceinline__ C load(S v) { return f16_to_f32(v); }
    static __device__ __forceinline__ S store(C v) { return f32_to_f16(v); }
    static __device__ __forceinline__ double to_f64(S v) { return (double)f16_to_f32(v); }
    static __device__ __forceinline__ S from_f64(double v) { return f32_to_f16(f64_to_f32_odd(v)); }
};
struct BF16 {
    typedef u16 S;
    typedef float C;
    static __device__ __forceinline__ C load(S v) { return bf16_to_f32(v); }
    static __device__ __forceinline__ S store(C v) { return f32_to_bf16(v); }
    static __device__ __forceinline__ double to_f64(S v) { return (double)bf16_to_f32(v); }
    static __device__ __forceinline__ S from_f64(double v) { return f32_to_bf16(f64_to_f32_odd(v)); }
};
struct U8 {
    typedef u8 S;
    typedef double C;
    static __device__ __forceinline__ C load(S v) { return (double)v; }
    static __device__ __forceinline__ double to_f64(S v) { return (double)v; }
    static __device__ __forceinline__ S from_f64(double v) {
        if (!(v > 0.0)) return 0;  // also NaN
        if (v >= 255.0) return 255;
        return (u8)v;
    }
};
struct U32 {
    typedef u32 S;
    typedef double C;
    static __device__ __forceinline__ C load(S v) { return (double)v; }
    static __device__ __forceinline__ double to_f64(S v) { return (double)v; }
    static __device__ __forceinline__ S from_f64(double v) {
        if (!(v > 0.0)) return 0;
        if (v >= 4294967295.0) return 4294967295u;
        return (u32)v;
    }
};

// ---------------------------------------------------------------- math overloads

// Explicit overloads so templates pick the f32 or f64 routine without relying on headers.
__device__ __forceinline__ float x_exp(float x) { return expf(x); }
__device__ __forceinline__ double x_exp(double x) { return exp(x); }
__device__ __forceinline__ float x_log(float x) { return logf(x); }
__device__ __forceinline__ double x_log(double x) { return log(x); }
__device__ __forceinline__ float x_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double x_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float x_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double x_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float x_pow(float x, float p) { return powf(x, p); }
__device__ __forceinline__ double x_pow(double x, double p) { return pow(x, p); }
__device__ __forceinline__ float x_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double x_abs(double x) { return fabs(x); }
// fmax/fmin ignore a NaN operand, like Rust's f32::max/min.
__device__ __forceinline__ float x_max(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double x_max(double a, double b) { return fmax(a, b); }
__device__ __forceinline__ float x_min(float a, float b) { return fminf(a, b); }
__device__ __forceinline__ double x_min(double a, double b) { return fmin(a, b); }
__device__ __forceinline__ bool x_isnan(float x) { return x != x; }
__device__ __forceinline__ bool x_isnan(double x) { return x != x; }
// Products and sums rounded on their own, never fused into an FMA by the compiler: for formulas
// that must round exactly as the CPU backend's Rust code (which never fuses) does.
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
template <typename C> __device__ __forceinline__ C neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return __int_as_float(0xff800000); }
template <> __device__ __forceinline__ double neg_inf<double>() { return __longlong_as_double(0xfff0000000000000ull); }

// Units change factor exp(min - max) <= 1 between log-scales a and b (docs/ela.md (S')): the
// state moves from m to m' >= m as S * exp(m - m'), the reverse accumulator U from m^(c+1) to
// m^(c) <= m^(c+1) as U * exp(m^(c) - m^(c+1)). An empty side (-inf) gives 0, equal scales 1.
// (The chunked ELA kernels and the whole-model decoding step of lm_decode.cu use it.)
__device__ __forceinline__ float units_factor(float a, float b) {
    if (a == b) return 1.f;
    float lo = fminf(a, b), hi = fmaxf(a, b);
    if (lo == neg_inf<float>()) return 0.f;
    return __expf(lo - hi);
}

// ---------------------------------------------------------------- block reductions

// Sum over the warp of one value per lane; every lane gets the result (the same butterfly order
// on every lane and run).
template <typename A> __device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over the block of one value per thread; every thread gets the result. `sh` must hold
// blockDim.x / 32 entries; blockDim.x is a multiple of 32 and at most 1024.
template <typename A> __device__ __forceinline__ A block_sum(A v, A* sh) {
    v = warp_sum(v);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();  // sh may still be read by a previous reduction
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    A t = 0;
    for (int w = 0; w < nw; ++w) t += sh[w];
    return t;
}

// Maximum over the block, NaN ignored unless every value is NaN (fmax semantics).
template <typename A> __device__ __forceinline__ A block_max(A v, A* sh) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = x_max(v, __shfl_xor_sync(0xffffffffu, v, o));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    A t = sh[0];
    for (int w = 1; w < nw; ++w) t = x_max(t, sh[w]);
    return t;
}

// ---------------------------------------------------------------- multi-tensor launches

// The entry of a multi-tensor launch's list that owns block b: entry j owns blocks
// first_block[j] .. first_block[j + 1] (at least one), so it is the last j with first_block[j] <= b.
__device__ __forceinline__ int list_owner(const i32* first_block, int count, int b) {
    int lo = 0, hi = count - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        if (first_block[mid] <= b) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}
// The entry and element range `[start, end)` of block b when each block takes `seg` elements of
// one entry and entry j has n[j] elements.
struct ListSeg {
    int j;
    i64 start, end;
};
__device__ __forceinline__ ListSeg list_segment(const i32* first_block, const i64* n, int count, int b, i64 seg) {
    ListSeg s;
    s.j = list_owner(first_block, count, b);
    s.start = (i64)(b - first_block[s.j]) * seg;
    s.end = min(s.start + seg, n[s.j]);
    return s;
}

// Threads per block for a row kernel over n elements: a power of two in 32..=1024.
#define ROW_THREADS_MAX 1024

// Bytes of dynamic shared memory this block was launched with: kernels that carve it check their
// carve against it and trap on a mismatch rather than corrupt memory.
__device__ __forceinline__ unsigned dynamic_smem_bytes() {
    unsigned dyn;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dyn));
    return dyn;
}
