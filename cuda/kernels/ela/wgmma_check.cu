// Checks of the warpgroup products of ela/wgmma.cuh (cuda/src/wgmma.rs runs them against the
// CPU): one warpgroup computes out = A B for A [64][K] and B [K][N] given row-major in global
// memory as bf16 bits, staged into shared memory in the layout named by TA (A M-major, else
// K-major) and TB (B N-major, else K-major), so that every descriptor form the chunk kernels
// would use is exercised: K-major panels at one and two panels of K, MN-major tiles with one and
// two 64-wide panels of N (the leading offset), and B read from inside a tile (SPLIT).

template <int N, int K, int TA, int TB, int SPLIT>
__device__ __forceinline__ void wgmma_check(float* out, const u16* a, const u16* b) {
    extern __shared__ unsigned char wg_raw[];
    // Atoms must start 1024-byte aligned (the swizzle acts on absolute addresses); the launch
    // gives 1024 bytes of slack for it.
    unsigned char* sa = wg_raw + ((1024 - ((unsigned)__cvta_generic_to_shared(wg_raw) & 1023)) & 1023);
    unsigned char* sb = sa + 64 * K * 2;
    // (A 64-wide MN-major panel holds fewer columns with the rest unused: a B of N = 32 columns
    // stored N-major takes a whole 64-column panel, as it would inside a wider tile.)
    const int tid = threadIdx.x;
    for (int e = tid; e < 64 * K; e += 128) {
        const int m = e / K, k = e % K;
        *(u16*)(sa + (TA ? sw128_tile(k, m, K) : sw128_tile(m, k, 64))) = a[e];
    }
    for (int e = tid; e < K * N; e += 128) {
        const int k = e / N, n = e % N;
        *(u16*)(sb + (TB ? sw128_tile(k, n, K) : sw128_tile(n, k, N))) = b[e];
    }
    wg_smem_fence();
    __syncthreads();
    const int warp = tid >> 5, lane = tid & 31, r = 16 * warp + (lane >> 2);
    // SPLIT: the N columns as SPLIT products of N / SPLIT columns each, whose B starts inside the
    // tile (K-major: N / SPLIT rows on, whole atoms; N-major: N / SPLIT elements into each
    // swizzled row, or the next panel), as warpgroups sharing one tile's columns would read it.
    constexpr int NS = N / SPLIT;
#pragma unroll
    for (int h = 0; h < SPLIT; ++h) {
        float d[NS / 2];
#pragma unroll
        for (int i = 0; i < NS / 2; ++i) d[i] = 0.f;
        const int c0 = h * NS;
        wg_product<NS, K, TA, TB>(d, sa, sb + (TB ? (c0 >> 6) * K * 128 + (c0 & 63) * 2 : c0 * 128), N);
#pragma unroll
        for (int i = 0; i < NS / 8; ++i) {
            const int c = c0 + 8 * i + 2 * (lane & 3);
            out[r * N + c] = d[4 * i];
            out[r * N + c + 1] = d[4 * i + 1];
            out[(r + 8) * N + c] = d[4 * i + 2];
            out[(r + 8) * N + c + 1] = d[4 * i + 3];
        }
    }
}

#define WGMMA_CHECK(N, K, TA, TB, S)                                                             \
    extern "C" __global__ void __launch_bounds__(128) wgmma_check_n##N##_k##K##_a##TA##_b##TB##_s##S( \
        float* out, const u16* a, const u16* b) {                                                \
        wgmma_check<N, K, TA, TB, S>(out, a, b);                                                 \
    }
#define WGMMA_CHECK_T(N, K, S) \
    WGMMA_CHECK(N, K, 0, 0, S) WGMMA_CHECK(N, K, 0, 1, S) WGMMA_CHECK(N, K, 1, 0, S) WGMMA_CHECK(N, K, 1, 1, S)
WGMMA_CHECK_T(32, 64, 1)
WGMMA_CHECK_T(64, 64, 1)
WGMMA_CHECK_T(128, 64, 1)
WGMMA_CHECK_T(32, 128, 1)
WGMMA_CHECK_T(64, 128, 1)
WGMMA_CHECK_T(128, 128, 1)
WGMMA_CHECK_T(64, 64, 2)
WGMMA_CHECK_T(128, 128, 2)
