// Indexing kernels over contiguous data seen as [outer, len, inner] around the indexed axis (as
// in core/src/cpu/index.rs): index_select / gather copy by element width; index_add /
// scatter_add accumulate with atomics in f32, f64 or u32 (f16/bf16 go through an f32 buffer on
// the Rust side, so every add is an f32 add). Indices are validated by the tensor layer; an
// out-of-range index is skipped here rather than written out of bounds.

// out[o, i, j] = x[o, ids[i], j] for i < m.
#define INDEX_SELECT(W, T)                                                                                     \
    extern "C" __global__ void index_select_w##W(T* out, const T* x, const u32* ids, i64 outer, i64 len,     \
                                                 i64 inner, i64 m) {                                           \
        FOR_EACH(k, outer * m * inner) {                                                                       \
            i64 j = k % inner, i = (k / inner) % m, o = k / (inner * m);                                       \
            u32 t = ids[i];                                                                                    \
            if ((i64)t < len) out[k] = x[(o * len + t) * inner + j];                                          \
        }                                                                                                      \
    }
INDEX_SELECT(1, u8)
INDEX_SELECT(2, u16)
INDEX_SELECT(4, u32)
INDEX_SELECT(8, u64)

// out[o, i, j] = x[o, ids[o, i, j], j] (numpy take_along_axis); ids has the output's shape.
#define GATHER(W, T)                                                                                              \
    extern "C" __global__ void gather_w##W(T* out, const T* x, const u32* ids, i64 outer, i64 len, i64 inner,  \
                                           i64 m) {                                                               \
        FOR_EACH(k, outer * m * inner) {                                                                          \
            i64 j = k % inner, o = k / (inner * m);                                                               \
            u32 t = ids[k];                                                                                       \
            if ((i64)t < len) out[k] = x[(o * len + t) * inner + j];                                             \
        }                                                                                                         \
    }
GATHER(1, u8)
GATHER(2, u16)
GATHER(4, u32)
GATHER(8, u64)

// out[o, ids[i], j] += src[o, i, j] for i < n (out pre-zeroed, len = out's axis size).
#define INDEX_ADD(NAME, T)                                                                                          \
    extern "C" __global__ void index_add_##NAME(T* out, const T* src, const u32* ids, i64 outer, i64 n, i64 inner, \
                                                i64 len) {                                                          \
        FOR_EACH(k, outer * n * inner) {                                                                            \
            i64 j = k % inner, i = (k / inner) % n, o = k / (inner * n);                                            \
            u32 t = ids[i];                                                                                         \
            if ((i64)t < len) atomicAdd(&out[(o * len + t) * inner + j], src[k]);                                  \
        }                                                                                                           \
    }
INDEX_ADD(f32, float)
INDEX_ADD(f64, double)

// out[o, ids[o, i, j], j] += src[o, i, j] (out pre-filled with the base).
#define SCATTER_ADD(NAME, T)                                                                                         \
    extern "C" __global__ void scatter_add_##NAME(T* out, const T* src, const u32* ids, i64 outer, i64 m, i64 inner, \
                                                  i64 len) {                                                         \
        FOR_EACH(k, outer * m * inner) {                                                                             \
            i64 j = k % inner, o = k / (inner * m);                                                                  \
            u32 t = ids[k];                                                                                          \
            if ((i64)t < len) atomicAdd(&out[(o * len + t) * inner + j], src[k]);                                   \
        }                                                                                                            \
    }
SCATTER_ADD(f32, float)
SCATTER_ADD(f64, double)
SCATTER_ADD(u32, u32)
