// Building blocks of the chunked ELA kernels (chunk_fwd.cu, chunk_bwd.cu, step.cu), compiled once per
// variant: the Rust side prepends ELA_DT (0 f32, 1 f16, 2 bf16), ELA_D (= the feature size F of
// Hadamard Exp) and ELA_DV. See the header of chunk_fwd.cu for the algorithm.
//
// Every small matrix product of a chunk runs through `mm_tile`: one warp computes a 16 x 8*NT tile
// of C = A B from operands in shared memory. Half-precision inputs use the tensor cores
// (mma.sync m16n8k16, bf16 operands, f32 accumulation); f32 inputs use them too, as 3xTF32
// (mma.sync m16n8k8, three products of split operands), with the same accumulator layout, so
// every epilogue is shared and the f32 path stays accurate to f32 rounding (FFMA before sm_80,
// or with ELA_F32_FFMA defined).
// Both paths leave, in lane (g = lane / 4, t = lane % 4), acc[nt][e] = C(row0 + g + 8 (e >> 1),
// col0 + 8 nt + 2 t + (e & 1)).
//
// Operand precision (bf16 path): feature values exp(x - max) are in [0, 1], S/U/G/V are rounded
// to bf16 (8-bit mantissa, f32 range: nothing overflows); all sums, the state (S, z), the
// denominators and the log-scales stay f32. f16 inputs use the same bf16 products: S and the
// gradients G can exceed the f16 range.

#if !defined(ELA_DT) || !defined(ELA_D) || !defined(ELA_DV)
#error "ela/tile.cuh needs ELA_DT, ELA_D and ELA_DV"
#endif

#define ELA_THREADS 256
#define ELA_WARPS 8
#define ELA_F ELA_D
// Chunk length: 64 rows, or 32 where 64-row tiles would not fit in shared memory: f32 operands
// wider than 64, and anything wider than 144 (256-wide heads; 144 is the widest padded tile of
// a 128-wide head with its denominator column). The Rust side (ops/ela/mod.rs,
// `tile_chunk_rows`) mirrors this rule.
#if (ELA_DT == 0 && (ELA_D > 64 || ELA_DV > 64)) || ELA_D > 144 || ELA_DV > 144
#define ELA_C 32
#else
#define ELA_C 64
#endif

#if ELA_DT == 0
#define ELA_MMA 0
typedef float MT;  // operand type of the tile products in shared memory
typedef F32 DT;
#define ELA_PAD 4  // row padding (elements): conflict-free fragment loads
#elif ELA_DT == 1
#define ELA_MMA 1
typedef u16 MT;
typedef F16 DT;
#define ELA_PAD 8
#else
#define ELA_MMA 1
typedef u16 MT;
typedef BF16 DT;
#define ELA_PAD 8
#endif
typedef DT::S ST;  // storage type of q, k, v, y and the gradients
#define LDP(n) ((n) + ELA_PAD)

// Every kernel carves its dynamic shared memory from this array.
extern __shared__ __align__(16) unsigned char ela_smem[];

// Traps (a launch failure the host reports) when a kernel's carve ends past the dynamic shared
// memory it was launched with: the byte counts on the Rust side (ops/ela/chunk.rs) mirror the
// carves, and this keeps a mismatch from silently corrupting memory.
__device__ __forceinline__ void check_smem(const void* end) {
    if ((unsigned)((const unsigned char*)end - ela_smem) > dynamic_smem_bytes()) __trap();
}

// Minimum denominator of the fast path (docs/ela.md, "exact rows after underflow").
#define ELA_TINY 1e-20f

// f32 -> bf16 pairs with the hardware conversion (round to nearest even, as f32_to_bf16).
__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
    u32 w;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(w) : "f"(hi), "f"(lo));
    return w;
}
__device__ __forceinline__ MT to_mt(float x) {
#if ELA_MMA
    return (MT)(pack_bf16x2(x, 0.f) & 0xffffu);
#else
    return x;
#endif
}
__device__ __forceinline__ float from_mt(MT x) {
#if ELA_MMA
    return bf16_to_f32(x);
#else
    return x;
#endif
}
// Two adjacent elements (row-major pair) of a tile.
__device__ __forceinline__ void store_mt2(MT* p, float a, float b) {
#if ELA_MMA
    *(u32*)p = pack_bf16x2(a, b);
#else
    p[0] = a;
    p[1] = b;
#endif
}
__device__ __forceinline__ void store_st2(ST* p, float a, float b) {
#if ELA_DT == 2
    *(u32*)p = pack_bf16x2(a, b);
#else
    p[0] = DT::store(a);
    p[1] = DT::store(b);
#endif
}
// store_st2 where `live`, with the conversion outside the test so that only the store is
// conditional: one predicated store, where a test around store_st2 compiles to a branch around
// the conversion and the store (BSSY/BSYNC and a branch per entry pair of an epilogue).
__device__ __forceinline__ void store_st2_if(bool live, ST* p, float a, float b) {
#if ELA_DT == 0
    const float2 w = make_float2(a, b);
    if (live) *(float2*)p = w;
#else
    const u32 w = ELA_DT == 2 ? pack_bf16x2(a, b) : (u32)DT::store(a) | ((u32)DT::store(b) << 16);
    if (live) *(u32*)p = w;
#endif
}
// Two adjacent storage elements with one load (4 bytes for 16-bit inputs, 8 for f32; p aligned to
// the pair: an even column of a row that starts on 16 bytes): `load_st2_raw` gives them as
// stored (`st2_raw`), `unpack_st2` converts them to f32, so a load can be issued early and
// converted where it is used; `load_st2` does both.
#if ELA_DT == 0
typedef float2 st2_raw;
#else
typedef u32 st2_raw;
#endif
__device__ __forceinline__ st2_raw load_st2_raw(const ST* p) { return *(const st2_raw*)p; }
__device__ __forceinline__ void unpack_st2(st2_raw w, float& a, float& b) {
#if ELA_DT == 0
    a = w.x, b = w.y;
#else
    a = DT::load((u16)(w & 0xffffu)), b = DT::load((u16)(w >> 16));
#endif
}
__device__ __forceinline__ void load_st2(const ST* p, float& a, float& b) { unpack_st2(load_st2_raw(p), a, b); }

// Four consecutive storage elements as one vector load (8 or 16 bytes; callers keep the
// alignment: row lengths are multiples of 4 elements and buffers come from cudaMalloc).
struct __align__(16) ela_f4 {
    float x, y, z, w;
};
struct __align__(8) ela_u2 {
    u32 x, y;
};
#if ELA_DT == 0
typedef ela_f4 RAW4;
__device__ __forceinline__ void unpack4(RAW4 r, float* o) {
    o[0] = r.x;
    o[1] = r.y;
    o[2] = r.z;
    o[3] = r.w;
}
__device__ __forceinline__ RAW4 raw_zero() {
    RAW4 r;
    r.x = r.y = r.z = r.w = 0.f;
    return r;
}
#else
typedef ela_u2 RAW4;
__device__ __forceinline__ void unpack4(RAW4 r, float* o) {
    o[0] = DT::load((u16)(r.x & 0xffffu));
    o[1] = DT::load((u16)(r.x >> 16));
    o[2] = DT::load((u16)(r.y & 0xffffu));
    o[3] = DT::load((u16)(r.y >> 16));
}
__device__ __forceinline__ RAW4 raw_zero() {
    RAW4 r;
    r.x = r.y = 0u;
    return r;
}
#endif
__device__ __forceinline__ RAW4 ld_raw4(const ST* p) { return *(const RAW4*)p; }
// Four raw storage elements as tile operands: the bits themselves for bf16 and f32 inputs.
__device__ __forceinline__ void raw_to_mt4(RAW4 r, MT* o) {
#if ELA_DT == 0
    o[0] = r.x;
    o[1] = r.y;
    o[2] = r.z;
    o[3] = r.w;
#elif ELA_DT == 2
    o[0] = (u16)(r.x & 0xffffu);
    o[1] = (u16)(r.x >> 16);
    o[2] = (u16)(r.y & 0xffffu);
    o[3] = (u16)(r.y >> 16);
#else
    float f[4];
    unpack4(r, f);
    for (int j = 0; j < 4; ++j) o[j] = to_mt(f[j]);
#endif
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// How 8 warps cover an R x N output: R/16 row strips times 8/(R/16) column groups of N/groups.
template <int R, int N> struct WarpMap {
    static constexpr int STRIPS = R / 16;
    static constexpr int GROUPS = ELA_WARPS / STRIPS;
    static constexpr int COLS = N / GROUPS;
    static constexpr int NT = COLS / 8;
    static_assert(STRIPS >= 1 && STRIPS <= ELA_WARPS && NT >= 1 && COLS % 8 == 0, "tile shape");
    static __device__ __forceinline__ int row0() { return ((threadIdx.x >> 5) % STRIPS) * 16; }
    static __device__ __forceinline__ int col0() { return ((threadIdx.x >> 5) / STRIPS) * COLS; }
    static __device__ __forceinline__ int group() { return (threadIdx.x >> 5) / STRIPS; }
};

template <int NT> __device__ __forceinline__ void zero_acc(float (&acc)[NT][4]) {
#pragma unroll
    for (int i = 0; i < NT; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
}

// Shared-memory address of a generic pointer into shared memory, by the compiler's own
// conversion: it knows what the conversion does, so it does the address arithmetic of a tile walk
// in 32-bit shared-memory offsets from one converted base. An inline `cvta.to.shared.u64` made it
// form every generic address in 64 bits and convert each: the conversion's lines were 3-5 % of
// the chunk kernels' executed instructions, and this form makes their code 5-15 % smaller
// (measured on an H100: docs/benchmarks.md, "Addresses and the causal half").
__device__ __forceinline__ u32 smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }

#if ELA_MMA
__device__ __forceinline__ void mma_bf16(float (&d)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// ldmatrix: four 8 x 8 tiles of 16-bit elements; lane l gives the address of row l % 8 of tile
// l / 8 (16 bytes, 16-byte aligned) and receives in r[i] its pair of tile i, as the mma operand
// layout wants it (TRANS: of the transposed tile).
template <bool TRANS> __device__ __forceinline__ void ldsm_x4(u32 (&r)[4], const MT* p) {
    if (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(smem_addr(p)));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(smem_addr(p)));
}
template <bool TRANS> __device__ __forceinline__ void ldsm_x2(u32 (&r)[2], const MT* p) {
    if (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                     : "=r"(r[0]), "=r"(r[1])
                     : "r"(smem_addr(p)));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                     : "=r"(r[0]), "=r"(r[1])
                     : "r"(smem_addr(p)));
}

// One 16-deep step (at k0) of mm_tile's tensor-core loop with ldmatrix fragments: one x4 per A
// fragment, one x4 per two B tiles (x2 for an odd last one) instead of a 32- or two 16-bit
// shared loads per register. Row strides and bases must be 16-byte aligned (mm_tile checks).
template <int NT, bool AT, bool BT>
__device__ __forceinline__ void mm_step_ldsm(float (&acc)[NT][4], const MT* A, int lda, const MT* B, int ldb,
                                             int row0, int col0, int k0) {
    const int lane = threadIdx.x & 31, li = lane & 7, m1 = (lane >> 3) & 1, m2 = lane >> 4;
    u32 a[4];
    // Tiles in a0..a3 order: (rows +0, k +0), (rows +8, k +0), (rows +0, k +8), (rows +8, k +8).
    if (AT) ldsm_x4<true>(a, A + (k0 + li + 8 * m2) * lda + row0 + 8 * m1);
    else ldsm_x4<false>(a, A + (row0 + li + 8 * m1) * lda + k0 + 8 * m2);
#pragma unroll
    for (int nt = 0; nt + 1 < NT; nt += 2) {
        // Tiles: (nt, k +0), (nt, k +8), (nt + 1, k +0), (nt + 1, k +8).
        u32 b[4];
        const int c = col0 + 8 * nt + 8 * m2;
        if (BT) ldsm_x4<false>(b, B + (c + li) * ldb + k0 + 8 * m1);
        else ldsm_x4<true>(b, B + (k0 + li + 8 * m1) * ldb + c);
        mma_bf16(acc[nt], a[0], a[1], a[2], a[3], b[0], b[1]);
        mma_bf16(acc[nt + 1], a[0], a[1], a[2], a[3], b[2], b[3]);
    }
    if (NT % 2) {
        u32 b[2];
        const int c = col0 + 8 * (NT - 1);
        if (BT) ldsm_x2<false>(b, B + (c + li) * ldb + k0 + 8 * m1);
        else ldsm_x2<true>(b, B + (k0 + li + 8 * m1) * ldb + c);
        mma_bf16(acc[NT - 1], a[0], a[1], a[2], a[3], b[0], b[1]);
    }
}

// mm_tile's tensor-core loop. KMAX > 0: K is at most KMAX (a constant) and varies by warp
// (TRI_KEND), so the loop is unrolled KMAX / 16 times with warp-uniform tests, as a constant K's
// would be.
template <int NT, bool AT, bool BT, int KMAX>
__device__ __forceinline__ void mm_tile_ldsm(float (&acc)[NT][4], const MT* A, int lda, const MT* B, int ldb,
                                             int row0, int col0, int K) {
    if (KMAX > 0) {
#pragma unroll
        for (int k0 = 0; k0 < KMAX; k0 += 16)
            if (k0 < K) mm_step_ldsm<NT, AT, BT>(acc, A, lda, B, ldb, row0, col0, k0);
    } else {
        for (int k0 = 0; k0 < K; k0 += 16) mm_step_ldsm<NT, AT, BT>(acc, A, lda, B, ldb, row0, col0, k0);
    }
}
#endif

#if !ELA_MMA && __CUDA_ARCH__ >= 800
// x ~ hi + lo, both tf32 values (round to nearest, ties away): |x - hi - lo| <= 2^-22 |x|.
__device__ __forceinline__ void split_tf32(float x, u32& hi, u32& lo) {
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(hi) : "f"(x));
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(lo) : "f"(x - __uint_as_float(hi)));
}
// d += a b for a 16 x 8 tile with k = 8: a(g, t), a(g + 8, t), a(g, t + 4), a(g + 8, t + 4) and
// b(t, g), b(t + 4, g) in lane (g, t); d in the layout of mma_bf16.
__device__ __forceinline__ void mma_tf32(float (&d)[4], const u32 (&a)[4], const u32 (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

// acc += A B for this warp's 16 x 8*NT tile at (row0, col0), inner length K (a multiple of 16):
// A(r, k) = AT ? A[k*lda + r] : A[r*lda + k],  B(k, c) = BT ? B[c*ldb + k] : B[k*ldb + c].
// KMAX > 0: K <= KMAX, a per-warp length (the 16-bit loop stays unrolled; mm_tile_ldsm).
template <int NT, bool AT, bool BT, int KMAX = 0>
__device__ __forceinline__ void mm_tile(float (&acc)[NT][4], const MT* A, int lda, const MT* B, int ldb, int row0,
                                        int col0, int K) {
#if ELA_MMA
    // ldmatrix needs 16-byte aligned rows and bases (a warp-uniform test). Every carve keeps them
    // aligned (16-bit operand widths are multiples of 16, padded by 8), so a misaligned call is a
    // bug in a carve: it traps (a launch failure the host reports). A fallback through 16-bit
    // shared loads would never run, yet sit inside the scans' walk loops (about 500 instructions
    // a call site), taking instruction-cache room from the code that runs.
    if ((((smem_addr(A) | smem_addr(B)) & 15) | (((lda | ldb) * 2) & 15) | ((row0 | col0) & 7)) == 0) {
        mm_tile_ldsm<NT, AT, BT, KMAX>(acc, A, lda, B, ldb, row0, col0, K);
        return;
    }
    __trap();
#else
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#if __CUDA_ARCH__ >= 800 && !defined(ELA_F32_FFMA)
    // 3xTF32 (docs/ela.md, "f32 tile products on tensor cores"): each operand x splits into
    // hi = tf32(x) and lo = tf32(x - hi), and a block of 8 products is lo_a hi_b + hi_a lo_b +
    // hi_a hi_b (the dropped lo_a lo_b and the rounding of lo: ~2^-22 relative per product).
    // The tensor cores truncate where they add to the accumulator, so each block is summed
    // from zero, small terms first (one truncation at full scale per block), and added to acc
    // in f32 with rounding to nearest: accumulating into acc itself biased a scan's running
    // state by a truncation per product, an error that grew with the sequence length.
    for (int k0 = 0; k0 < K; k0 += 8) {
        u32 ah[4], al[4];
        split_tf32(AT ? A[(k0 + t) * lda + row0 + g] : A[(row0 + g) * lda + k0 + t], ah[0], al[0]);
        split_tf32(AT ? A[(k0 + t) * lda + row0 + g + 8] : A[(row0 + g + 8) * lda + k0 + t], ah[1], al[1]);
        split_tf32(AT ? A[(k0 + t + 4) * lda + row0 + g] : A[(row0 + g) * lda + k0 + t + 4], ah[2], al[2]);
        split_tf32(AT ? A[(k0 + t + 4) * lda + row0 + g + 8] : A[(row0 + g + 8) * lda + k0 + t + 4], ah[3],
                   al[3]);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            const int c = col0 + 8 * nt + g;
            u32 bh[2], bl[2];
            split_tf32(BT ? B[c * ldb + k0 + t] : B[(k0 + t) * ldb + c], bh[0], bl[0]);
            split_tf32(BT ? B[c * ldb + k0 + t + 4] : B[(k0 + t + 4) * ldb + c], bh[1], bl[1]);
            float blk[4] = {0.f, 0.f, 0.f, 0.f};
            mma_tf32(blk, al, bh);
            mma_tf32(blk, ah, bl);
            mma_tf32(blk, ah, bh);
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[nt][e] += blk[e];
        }
    }
#else
#pragma unroll 4
    for (int k = 0; k < K; ++k) {
        const float alo = AT ? A[k * lda + row0 + g] : A[(row0 + g) * lda + k];
        const float ahi = AT ? A[k * lda + row0 + g + 8] : A[(row0 + g + 8) * lda + k];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            const int c = col0 + 8 * nt + 2 * t;
            const float b0 = BT ? B[c * ldb + k] : B[k * ldb + c];
            const float b1 = BT ? B[(c + 1) * ldb + k] : B[k * ldb + c + 1];
            acc[nt][0] = fmaf(alo, b0, acc[nt][0]);
            acc[nt][1] = fmaf(alo, b1, acc[nt][1]);
            acc[nt][2] = fmaf(ahi, b0, acc[nt][2]);
            acc[nt][3] = fmaf(ahi, b1, acc[nt][3]);
        }
    }
#endif
#endif
}

// x where `live`, else 0, by a bit mask: x is computed either way (a dead entry's value may be
// anything, inf or NaN included, and none of it survives). A test (`live ? x : 0`) compiles to a
// branch per entry around its exp, which keeps neighbouring entries' loads and exps from
// overlapping in the per-row loops of the chunk kernels.
__device__ __forceinline__ float keep_if(bool live, float x) { return __int_as_float(__float_as_int(x) & -(int)live); }

// e^x as __expf computes it (the special function unit's 2^y of y = x log2 e), but with results
// below 2^-126 flushed to zero (ex2.approx.ftz): __expf keeps such subnormal results, which costs
// a range test and two scaling multiplies around every exp (five instructions where two do), and
// the exps are the largest instruction group of the chunk kernels (15 % of the output pass's, by
// Nsight Compute's per-line counts; cuda/README.md, "Exps without subnormals"). Every exp here is
// of a log-term at most its row's or feature's shift, so the largest term of a sum is near 1 (or
// the row takes the exact path when the sum is below ELA_TINY = 1e-20), and a term below 2^-126
// is under 1e-18 of that sum: flushing it changes nothing f32 can hold. Normal results are the
// same bits as __expf's.
__device__ __forceinline__ float exp_ftz(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x * 1.4426950408889634f));
    return y;
}
__device__ __forceinline__ float exp_if(bool live, float x) { return keep_if(live, exp_ftz(x)); }

// The causal intra-chunk blocks A and D are zero above the diagonal (entries j > i). A warp whose
// 16-row strip r0 and columns from c0 lie wholly above it skips their product and exps
// (TRI_SKIP), and products that read A or D leave out the zero part of the inner index: for row
// strip r0 of A B, keys k < r0 + 16 (TRI_KEND); for strip r0 of A^T B, queries k >= r0 (the
// caller offsets both operands by r0 rows). mm_tile's KMAX (the chunk length) keeps such loops
// unrolled. Exact: only terms that are exactly 0 are left out.
#define TRI_SKIP(r0, c0) ((c0) >= (r0) + 16)
#define TRI_KEND(r0, k) ((r0) + 16 < (k) ? (r0) + 16 : (k))

// Row and column of accumulator element (nt, e) of this lane.
#define ACC_ROW(row0, e) ((row0) + ((threadIdx.x & 31) >> 2) + 8 * ((e) >> 1))
#define ACC_COL(col0, nt, e) ((col0) + 8 * (nt) + 2 * (threadIdx.x & 3) + ((e) & 1))

struct __align__(16) ela_u4 {
    u32 x, y, z, w;
};

// One 16-byte vector global -> shared without passing through registers (cp.async, sm_80 on;
// older GPUs copy synchronously), and the group bookkeeping of those copies.
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(dst)), "l"(src));
#else
    *(ela_u4*)dst = *(const ela_u4*)src;
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
// Waits until at most N of this thread's newest copy groups are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// Tile entries per 16-byte vector: 8 16-bit operands or 4 f32.
#define MT_VEC (16 / (int)sizeof(MT))
// MT_VEC consecutive entries of a tile row with one 16-byte store (p 16-byte aligned). The
// per-row loops (RowPart: 4 threads a row, each a contiguous quarter) stored pairs, 4 bytes at a
// time, and the 32 lanes of such a store hit only 8 of the 32 banks (the row stride, 144 bytes
// for 64-wide 16-bit tiles, is 4 banks mod 32; the quarters are 8 banks apart): 4-way conflicts.
// A 16-byte store is served 8 lanes at a time, and those 8 (two rows of 4 quarters) land in
// distinct 16-byte bank groups: no conflict, and a quarter of the store instructions.
__device__ __forceinline__ void store_mt_vec(MT* p, const float (&v)[MT_VEC]) {
#if ELA_MMA
    ela_u4 w;
    w.x = pack_bf16x2(v[0], v[1]);
    w.y = pack_bf16x2(v[2], v[3]);
    w.z = pack_bf16x2(v[4], v[5]);
    w.w = pack_bf16x2(v[6], v[7]);
    *(ela_u4*)p = w;
#else
    ela_f4 w;
    w.x = v[0], w.y = v[1], w.z = v[2], w.w = v[3];
    *(ela_f4*)p = w;
#endif
}

// A ROWS x COLS row-major tile of E elements in global memory (E = ST for inputs, converted as
// the dtype says; E = MT for state slots), read by all threads as 16-byte vectors into registers
// first (`load`: every load in flight at once), then written to a shared tile of MT with row
// stride ld (`store`), optionally multiplied by a per-row factor. Rows >= valid read as 0.
template <typename E, bool INPUT, int ROWS, int COLS> struct TileRegs {
    static constexpr int EPV = 16 / (int)sizeof(E);
    static constexpr int PER = ROWS * COLS / EPV / ELA_THREADS;
    static_assert(PER >= 1 && PER * EPV * ELA_THREADS == ROWS * COLS && COLS % EPV == 0, "tile split");
    ela_u4 v[PER];
    // Rows `ld` elements apart (a multiple of 16 bytes; COLS for a packed tile).
    __device__ __forceinline__ void load(const E* src, i64 ld, int valid) {
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            const int e = (threadIdx.x + i * ELA_THREADS) * EPV, r = e / COLS;
            if (r < valid) v[i] = *(const ela_u4*)(src + r * ld + e % COLS);
            else v[i].x = v[i].y = v[i].z = v[i].w = 0u;
        }
    }
    __device__ __forceinline__ void load(const E* src, int valid) { load(src, COLS, valid); }
    __device__ __forceinline__ void store(MT* dst, int ld, const float* mul) const {
        // The same bits in the operand type (state slots; bf16 or f32 inputs) copy as they are.
        if (!mul && (!INPUT || ELA_DT != 1) && sizeof(E) == sizeof(MT)) {
#pragma unroll
            for (int i = 0; i < PER; ++i) {
                const int e = (threadIdx.x + i * ELA_THREADS) * EPV;
                *(ela_u4*)(dst + (e / COLS) * ld + e % COLS) = v[i];
            }
            return;
        }
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            const int e = (threadIdx.x + i * ELA_THREADS) * EPV, r = e / COLS, c = e % COLS;
            float x[EPV];
            const u32 w[4] = {v[i].x, v[i].y, v[i].z, v[i].w};
#pragma unroll
            for (int k = 0; k < EPV; ++k) {
                if (sizeof(E) == 4) x[k] = __uint_as_float(w[k]);
                else {
                    const u16 h = (u16)((w[k / 2] >> (16 * (k & 1))) & 0xffffu);
                    x[k] = INPUT ? DT::load(h) : from_mt(h);
                }
            }
            const float m = mul ? mul[r] : 1.f;
#pragma unroll
            for (int k = 0; k < EPV; k += 2) store_mt2(dst + r * ld + c + k, x[k] * m, x[k + 1] * m);
        }
    }
};

// Where the rows of the inputs q, k, v, dy and of y lie (`IoRows` in cuda/src/ops/ela/chunk.rs):
// row t of sequence seq = b * heads + h of operand X starts at element
// b * X[0] + h * X[1] + t * X[2] of its buffer, and its own elements are contiguous. So the
// chunked kernels read q, k, v straight out of a fused q/k/v product laid out
// [batch, t, 3, heads, d], and write y as [batch, t, heads, dv], where the attention layer
// would otherwise copy each into [batch, heads, t, d] order and back. Every stride is a multiple
// of 16 bytes (16-byte vector loads; the host checks it).
struct ElaIo {
    i64 q[3], k[3], v[3], dy[3], y[3];
    int heads;
};
// The element offset of sequence `seq`'s first row in an operand with strides `r`.
__device__ __forceinline__ i64 io_seq(const i64 (&r)[3], int seq, int heads) {
    return (i64)(seq / heads) * r[0] + (i64)(seq % heads) * r[1];
}

// Where entry f of a per-feature vector in shared memory (a state's units or z) lies. RowPart
// (below) gives each of a row's threads a contiguous quarter of the features, so a warp's 16-byte
// loads of such a vector read four addresses a quarter apart: 0, 64, 128, 192 bytes at 64-wide
// heads (two of them on the same banks: 2-way conflicts), 0, 128, 256, 384 at 128-wide (4-way).
// With ELA_SKEW every 32 entries are followed by 4 unused ones (16 bytes), so the quarters start
// in distinct bank groups; FVEC(n) floats hold such a vector of n. A quarter starting at q with
// q % 32 == 0 or q % 32 + its length <= 32 has entry e at fsk(q) + fsk(e), so vector loads stay
// vector loads (fsk(e) is a constant in unrolled loops).
// A per-row value of a tile epilogue for accumulator entry e of row i: `arr[i]` from shared
// memory, or with ELA_HOIST `reg[e / 2]`, the copy the thread loaded once for its two rows before
// the epilogue's loops (the epilogues' stores into shared tiles could alias the shared value for
// all the compiler knows, so it loads it again for every tile otherwise).
// Both are on for 16-bit operands, where they were measured faster (cuda/README.md, "Skewed
// vectors and hoisted row values": 4 % off the 128-wide bf16 fwd+bwd, 1-2 % at 64-wide); with
// f32 operands (32-row chunks at 128-wide heads, another thread split) the skew was measured
// slower and the hoist no faster, so f32 keeps the plain layout. The host mirrors ELA_SKEW in
// the shared-memory sizes (`fvec` in ops/ela/chunk.rs).
#define ELA_SKEW ELA_MMA
#define ELA_HOIST ELA_MMA
#if ELA_HOIST
#define ROW_VAL(reg, arr, i, e) reg[(e) >> 1]
#else
#define ROW_VAL(reg, arr, i, e) arr[i]
#endif

#if ELA_SKEW
__device__ __forceinline__ int fsk(int f) { return f + ((f >> 5) << 2); }
#define FVEC(n) ((n) + (n) / 8)
#else
__device__ __forceinline__ int fsk(int f) { return f; }
#define FVEC(n) (n)
#endif

// The rows of a chunk, TPR = ELA_THREADS / ELA_C consecutive threads per row: thread tid holds row
// tid / TPR, elements [(tid % TPR) * EPT, + EPT) of a W-wide row, as floats (rows >= n read 0).
// All of a thread's loads are 16-byte vectors issued before any use; row reductions are TPR-lane
// shuffles.
template <int W> struct RowPart {
    static constexpr int TPR = ELA_THREADS / ELA_C, EPT = W / TPR;
    static constexpr int NV = EPT * (int)sizeof(ST) / 16, PV = 16 / (int)sizeof(ST);
    static_assert(NV >= 1 && NV * 16 == EPT * (int)sizeof(ST), "row split");
    float x[EPT];
    static __device__ __forceinline__ int row() { return threadIdx.x / TPR; }
    static __device__ __forceinline__ int col0() { return (threadIdx.x % TPR) * EPT; }
    static __device__ __forceinline__ bool head() { return threadIdx.x % TPR == 0; }
    // Rows `ld` elements apart (a multiple of 16 bytes).
    __device__ __forceinline__ void load(const ST* base, i64 ld, int n) {
        ela_u4 raw[NV];
        const bool ok = row() < n;
        const ela_u4* p = (const ela_u4*)(base + (i64)row() * ld + col0());
#pragma unroll
        for (int i = 0; i < NV; ++i) {
            if (ok) raw[i] = p[i];
            else raw[i].x = raw[i].y = raw[i].z = raw[i].w = 0u;
        }
#pragma unroll
        for (int i = 0; i < NV; ++i) {
            const u32 w[4] = {raw[i].x, raw[i].y, raw[i].z, raw[i].w};
#pragma unroll
            for (int k = 0; k < PV; ++k) {
                if (sizeof(ST) == 4) x[i * PV + k] = __uint_as_float(w[k]);
                else x[i * PV + k] = DT::load((u16)((w[k / 2] >> (16 * (k & 1))) & 0xffffu));
            }
        }
    }
    static __device__ __forceinline__ float max(float v) {
#pragma unroll
        for (int o = 1; o < TPR; o <<= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
        return v;
    }
    static __device__ __forceinline__ float sum(float v) {
#pragma unroll
        for (int o = 1; o < TPR; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        return v;
    }
};
