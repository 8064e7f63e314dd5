// Hopper warpgroup tile products (wgmma, sm_90a): the building block meant to replace the
// per-warp mma.sync products of tile.cuh, whose ldmatrix operand loads are most of the chunk
// kernels' shared-memory traffic (a product's operands are re-read by every warp that shares a
// row or column of the output; a warpgroup's wgmma reads each operand tile once for 128 threads).
// Not used by the ELA kernels yet: ela/wgmma_check.cu tests it against the CPU
// (cuda/src/wgmma.rs), and cuda/README.md ("Warpgroup products") says what is settled.
//
// Operands live in shared memory in the 128-byte-swizzled layout wgmma reads. The unit is an
// atom of 8 rows of 128 bytes (64 16-bit elements) = 1024 bytes, aligned to 1024 bytes; the
// 16-byte chunk c of row r of an atom lies at chunk c ^ (r % 8). A tile is stored in panels of
// 64 contiguous elements per row:
//   K-major (the product's reduction index runs along the row): rows are M (for A) or N (for
//     B), panel p holds k in [64 p, 64 p + 64); panels `rows * 128` bytes apart.
//   MN-major (the other index runs along the row): rows are k, panel p holds m (or n) in
//     [64 p, 64 p + 64); panels `K * 128` bytes apart.
// So a row-major [R][64] tile of 16-bit values, R a multiple of 8, is one panel either way.

#pragma once

// Byte offset of element `col` (< 64) of row `row` in a 128-byte-swizzled panel.
__device__ __forceinline__ unsigned sw128(int row, int col) {
    return (unsigned)(row * 128 + ((((col >> 3) ^ row) & 7) << 4) + (col & 7) * 2);
}

// Byte offset of (row, col) of a tile stored in panels of 64 columns, `rows` rows a panel.
__device__ __forceinline__ unsigned sw128_tile(int row, int col, int rows) {
    return (unsigned)((col >> 6) * rows * 128) + sw128(row, col & 63);
}

// A shared-memory matrix descriptor (PTX ISA, "Matrix Descriptor Format"): start address, leading
// and stride byte offsets (each >> 4, 14 bits), swizzle mode 1 = 128 bytes in bits 62-63. The
// base-offset bits stay 0: every atom starts 1024-byte aligned.
__device__ __forceinline__ unsigned long long wg_desc(const void* smem, unsigned lbo, unsigned sbo) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(smem);
    return (unsigned long long)((a & 0x3FFFF) >> 4) | ((unsigned long long)((lbo >> 4) & 0x3FFF) << 16) |
           ((unsigned long long)((sbo >> 4) & 0x3FFF) << 32) | (1ull << 62);
}

// Descriptors of the k-th 16-wide slice of the reduction index:
// K-major: within a panel the slice starts 32 k bytes into each (swizzled) row, which the
//   hardware's swizzle of the absolute address resolves; 8-row groups are 1024 bytes apart (the
//   stride offset), the leading offset is unused for swizzled K-major operands.
// MN-major: the slice is rows [16 k, 16 k + 16): two atoms 1024 bytes apart (the stride offset);
//   the leading offset is the panel stride, from one 64-wide MN block to the next.
__device__ __forceinline__ unsigned long long wg_desc_kmajor(const unsigned char* tile, int rows, int k) {
    const int k0 = 16 * k;
    return wg_desc(tile + (k0 >> 6) * rows * 128 + (k0 & 63) * 2, 16, 1024);
}
__device__ __forceinline__ unsigned long long wg_desc_mnmajor(const unsigned char* tile, int kdim, int k) {
    return wg_desc(tile + 16 * k * 128, kdim * 128, 1024);
}

// Ordering around the asynchronous products: shared-memory stores by ordinary instructions are
// made visible to the tensor cores' (async) proxy by each writing thread before the barrier that
// precedes the products; wg_fence before the first product of a group (the accumulator
// registers were written by ordinary instructions); commit and wait for all of them before the
// accumulators are read.
__device__ __forceinline__ void wg_smem_fence() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }

// d (64 x N f32, N / 2 registers a thread) += A (64 x 16) B (16 x N), bf16 operands from shared
// memory by descriptor; TA / TB: A M-major / B N-major (else K-major). Thread t of the warpgroup
// holds rows 16 (t / 32) + (t % 32) / 4 (+ 8 for entries 4 i + 2, 4 i + 3) and columns
// 8 i + 2 (t % 4) (+ 1), as one warp's mma.sync m16n8 accumulators (ACC_ROW / ACC_COL of tile.cuh
// with the warp's 16 rows).
template <int N, int TA, int TB> struct Wgmma;

// (scale-d, the predicate that adds the product to d rather than replacing d, is always set: a
// fresh sum starts from zeroed registers.) WG_F8(i): the accumulators i .. i + 7 as in-out operands.
#define WG_F(i) "+f"(d[i])
#define WG_F8(i) WG_F(i), WG_F(i + 1), WG_F(i + 2), WG_F(i + 3), WG_F(i + 4), WG_F(i + 5), WG_F(i + 6), WG_F(i + 7)
template <int TA, int TB> struct Wgmma<32, TA, TB> {
    static __device__ __forceinline__ void mma(float (&d)[16], unsigned long long da, unsigned long long db) {
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
            "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
            "%16, %17, p, 1, 1, %19, %20;\n}\n"
            : WG_F8(0), WG_F8(8)
            : "l"(da), "l"(db), "r"(1), "n"(TA), "n"(TB));
    }
};
template <int TA, int TB> struct Wgmma<64, TA, TB> {
    static __device__ __forceinline__ void mma(float (&d)[32], unsigned long long da, unsigned long long db) {
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
            "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
            "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
            "%32, %33, p, 1, 1, %35, %36;\n}\n"
            : WG_F8(0), WG_F8(8), WG_F8(16), WG_F8(24)
            : "l"(da), "l"(db), "r"(1), "n"(TA), "n"(TB));
    }
};
template <int TA, int TB> struct Wgmma<128, TA, TB> {
    static __device__ __forceinline__ void mma(float (&d)[64], unsigned long long da, unsigned long long db) {
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
            "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
            "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
            "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
            "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
            "%64, %65, p, 1, 1, %67, %68;\n}\n"
            : WG_F8(0), WG_F8(8), WG_F8(16), WG_F8(24), WG_F8(32), WG_F8(40), WG_F8(48), WG_F8(56)
            : "l"(da), "l"(db), "r"(1), "n"(TA), "n"(TB));
    }
};
#undef WG_F8
#undef WG_F

// d += A B over the whole reduction index K (a multiple of 16) for one warpgroup: A 64 x K, B K x N,
// each a tile as above (`TA`: A stored M-major; `TB`: B stored N-major). B may be the columns of
// a wider tile of `bn` columns (its panel stride), starting at `b` (K-major: whole atoms of rows
// on; N-major: a multiple of 8 elements into each row). Issues K / 16 products and waits for them.
template <int N, int K, int TA, int TB>
__device__ __forceinline__ void wg_product(float (&d)[N / 2], const unsigned char* a, const unsigned char* b,
                                           int bn = N) {
    wg_fence();
#pragma unroll
    for (int k = 0; k < K / 16; ++k) {
        const unsigned long long da = TA ? wg_desc_mnmajor(a, K, k) : wg_desc_kmajor(a, 64, k);
        const unsigned long long db = TB ? wg_desc_mnmajor(b, K, k) : wg_desc_kmajor(b, bn, k);
        Wgmma<N, TA, TB>::mma(d, da, db);
    }
    wg_commit();
    wg_wait_all();
}
