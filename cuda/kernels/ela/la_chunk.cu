// Chunked unnormalised linear attention, the primitive every feature-map kernel (sum/sub squared
// Euclidean, blueprint, Identity, elu+1) is built from (cuda/src/ops/ela/feature_chunk.rs has the
// algorithm and the ways it is used; docs/ela.md, "The chunked form of the feature-map kernels",
// the derivation):
//
//   LA(A, B, X)_i = sum_{j <= i} (A_i . B_j) X_j     (anti-causal: j >= i; global: every j)
//
// Operands are materialised rows in the tile operand type MT (bf16 or f32, below), [seq][Tp][width]
// with Tp = nch * C rows (whole chunks) and widths that are multiples of 16; the padding (rows
// t >= T, columns past the data) is zero, so it adds nothing to any product and no kernel here
// checks row counts. (elu+1 with bf16 inputs reads q, k, v where they lie instead and maps them
// as they load, padding included: LA_RAW, below.) Compiled once per (LA_IO, ELA_DT, F = ELA_D,
// E = ELA_DV, LA_RAW) after tile.cuh and features.cuh: A and B of a call are F or E wide, X the
// other width.
//
//   la_scan, one block per (sequence, half the columns of X; la_scan_narrow: 16 columns, f32
//     operands only), walks the chunks in order (reverse: from the last) with the running sum
//     S = sum B_c^T X_c [F x E] in registers (the next two chunks' copies in flight while one is
//     multiplied), and writes the state before each chunk:
//     slot c = the sum over the chunks before c (reverse: after c), slot nch = the total (plus an
//     optional carried initial state; `fin` gets the total in f32).
//   la_out_fe / la_out_ef, one block per (chunk, sequence): O_c = A_c S_c + mask(A_c B_c^T) X_c,
//     with A, B of width F and X of width E (fe), or A, B of width E and X of width F, reading
//     the [F x E] slots transposed (ef: the backward's state products need S^T). The global form
//     is O_c = A_c S_total. The epilogue writes y = N / den, or the backward's
//     G = [dy / den | -(dy . y) / den], or the first dv columns (dv), or the feature maps' VJP of O
//     (dq, dk), all in the input dtype but G.
//   la_grad: G from the denominators a saving forward kept.
//
// Numerics: products with f32 accumulation, on bf16 tensor cores (MT = bf16: elu+1 with bf16
// inputs, whose features are positive, so no sum cancels) or 3xTF32 (MT = f32: every other
// call; tile.cuh), accurate to f32 rounding. The slots are stored in MT, so a bf16-operand call rounds
// the state to bf16 once per chunk, as the Hadamard-Exp kernels do.

// The dtype of the inputs and outputs (q, k, v, y, dy: LA_IO, 0 f32, 1 f16, 2 bf16), which may
// differ from the operands' (ELA_DT): 16-bit inputs other than elu+1's bf16 use f32 operands.
#if LA_IO == 0
typedef F32 IOT;
#elif LA_IO == 1
typedef F16 IOT;
#else
typedef BF16 IOT;
#endif
typedef IOT::S IOS;

#define LA_F ELA_D
#define LA_E ELA_DV
#define LA_C ELA_C
// Columns of X per scan block (la_scan below): half of them, so two blocks share a sequence (each
// re-reads the chunk's B): 2 * B * H blocks keep an H100/H200 busy at B * H = 128 without reading
// B more often. With f32 operands also 16 (la_scan_narrow), more blocks with a shorter step each,
// for calls with few sequences; the host picks the one that takes fewer waves of resident
// blocks (every block walks the whole sequence, so a second wave doubles the time).
#define LA_EB_HALF (LA_E / 2)
#define LA_EB_NARROW 16

// Epilogues of la_out (`mode`).
#define LA_OUT_Y 1
#define LA_OUT_G 2
#define LA_OUT_TAKE 3
#define LA_OUT_VJP 4

// An R x N output cut into 16 x 8*NT tiles, dealt round-robin to the 8 warps: warp w takes tiles
// w, w + 8, ...; `has(s)` is warp-uniform, so the tensor-core products stay converged.
template <int R, int N, int NT> struct Deal {
    static constexpr int RT = R / 16, TILES = RT * (N / (8 * NT));
    static constexpr int PER = (TILES + ELA_WARPS - 1) / ELA_WARPS;
    static_assert(R % 16 == 0 && N % (8 * NT) == 0, "tile shape");
    static __device__ __forceinline__ int idx(int s) { return (threadIdx.x >> 5) + ELA_WARPS * s; }
    static __device__ __forceinline__ bool has(int s) { return idx(s) < TILES; }
    static __device__ __forceinline__ int row0(int s) { return (idx(s) % RT) * 16; }
    static __device__ __forceinline__ int col0(int s) { return (idx(s) / RT) * 8 * NT; }
};
// Tiles 16 wide when that still gives every warp one, else 8 wide.
template <int R, int N> struct Nt {
    static constexpr int V = (N % 16 == 0 && (R / 16) * (N / 16) >= ELA_WARPS) ? 2 : 1;
};

// ---------------------------------------------------------------- scan over chunks

// A ROWS x COLS block of MT, global (rows `sld` apart) to shared (rows `dld` apart), asynchronously.
template <int ROWS, int COLS> __device__ __forceinline__ void la_stage_async(MT* dst, int dld, const MT* src, i64 sld) {
    constexpr int EPV = 16 / (int)sizeof(MT), NV = ROWS * COLS / EPV;
    static_assert(COLS % EPV == 0, "whole vectors per row");
    for (int e = threadIdx.x; e < NV; e += ELA_THREADS) {
        const int x = e * EPV, r = x / COLS, c = x % COLS;
        cp_async16(dst + r * dld + c, src + r * sld + c);
    }
}

// Operands read where the inputs lie (elu+1 with bf16 inputs, whose operand type is the inputs'
// own, rows of whole 16-byte vectors): instead of materialised rows, a tile is copied from the raw
// input rows ([seq][T][width]) and mapped in shared memory, so those calls need no row kernels
// for Phi, Psi and [v | 1] (gemm_chunk.cu) and no buffers for them. `maps` holds 2 bits per
// operand of a call (A: bits 0-1, B: 2-3, X: 4-5), each one of:
#define LA_MAP_ROWS 0  // materialised operand rows [seq][Tp][width] (zero rows past T)
#define LA_MAP_FEAT 1  // elu+1 of raw rows [seq][T][width] (the feature width is the input's)
#define LA_MAP_AUG 2   // [v | 1 | 0..] of raw value rows [seq][T][vw]
// The host sets LA_RAW per module (kernels.rs, `la_raw_code`): 1 compiles that staging in (and
// bounds la_scan to two blocks a multiprocessor, below), 0 leaves the kernels reading operand
// rows only (`maps` must be 0 then). Every module with bf16 operands needs it; modules with f32
// operands never read raw rows, but the machine code compiled with it was faster for some of
// them and slower for others (measured per module, docs/benchmarks.md, "Operands read where
// they lie, the default"), so each takes the faster.
#if !defined(LA_RAW)
#error "la_chunk.cu needs LA_RAW"
#endif
__device__ __forceinline__ int la_map(int maps, int op) { return (maps >> (2 * op)) & 3; }

// Rows [c C, c C + C) of an operand with map `map` (columns j0 .. j0 + COLS of width `width`) into
// shared memory, asynchronously: materialised rows as la_stage_async; raw rows only where they
// exist (t < T, and for [v | 1] columns < vw: vw is a multiple of 8), the rest is written by
// la_fix once the copies have landed.
template <int ROWS, int COLS>
__device__ __forceinline__ void la_stage_op(MT* dst, int dld, const MT* src, int map, i64 seq, int c, int nch,
                                            int width, int j0, int vw, i64 T) {
    if (map == LA_MAP_ROWS) {
        la_stage_async<ROWS, COLS>(dst, dld, src + (seq * nch + c) * (i64)ROWS * width + j0, width);
        return;
    }
    constexpr int EPV = 16 / (int)sizeof(MT), NV = ROWS * COLS / EPV;
    const int rw = map == LA_MAP_FEAT ? width : vw;  // the raw rows' width
    const i64 t0 = (i64)c * ROWS;
    const MT* base = src + (seq * T + t0) * rw;
    for (int e = threadIdx.x; e < NV; e += ELA_THREADS) {
        const int x = e * EPV, r = x / COLS, cc = x % COLS;
        if (t0 + r < T && (map == LA_MAP_FEAT || j0 + cc < vw)) cp_async16(dst + r * dld + cc, base + r * rw + j0 + cc);
    }
}

// After la_stage_op's copies have landed (and a barrier): elu+1 of the raw entries (0 on rows past
// T), or [v | 1 | 0..] (0 on rows past T), in 16-byte vectors (the copied values of [v | 1] stay
// as they are). Same bits as the row kernels' operands. (A first version mapped one entry at a
// time: the forward was 21 % faster than with the row kernels, but the backward's four passes
// lost more than that; docs/benchmarks.md, "Operands read where they lie".)
template <int ROWS, int COLS>
__device__ __forceinline__ void la_fix(MT* dst, int dld, int map, int c, int j0, int vw, i64 T) {
    if (map == LA_MAP_ROWS) return;
    static_assert(COLS % MT_VEC == 0, "whole vectors per row");
    constexpr int NV = ROWS * COLS / MT_VEC;
    const i64 t0 = (i64)c * ROWS;
    for (int e = threadIdx.x; e < NV; e += ELA_THREADS) {
        const int x = e * MT_VEC, r = x / COLS, cc = x % COLS, col = j0 + cc;
        const bool live = t0 + r < T;
        if (map == LA_MAP_AUG && live && col < vw) continue;  // copied values (vw: whole vectors)
        MT* p = dst + r * dld + cc;
        float f[MT_VEC];
        if (map == LA_MAP_FEAT && live) {
            __align__(16) MT v[MT_VEC];
            *(ela_u4*)v = *(const ela_u4*)p;
#pragma unroll
            for (int k = 0; k < MT_VEC; ++k) f[k] = nc_feature_at<float>(K_ELU, false, from_mt(v[k]), 0, 0, 0.f, 0.f, 0.f);
        } else {
#pragma unroll
            for (int k = 0; k < MT_VEC; ++k) f[k] = map == LA_MAP_AUG && live && col + k == vw ? 1.f : 0.f;
        }
        store_mt_vec(p, f);
    }
}

// Stages of the scan's copy pipeline: the chunk being multiplied and the next two in flight.
#define LA_STAGES 3

template <int EB>
__device__ __forceinline__ void la_scan_impl(const MT* B, const MT* X, MT* slots, const float* init, float* fin,
                                             int nch, int reverse, int maps, int vw, i64 T) {
    constexpr int F = LA_F, E = LA_E, C = LA_C, LDF = LDP(F), LDX = LDP(EB), NS = LA_STAGES;
    typedef Deal<F, EB, 1> W;
    MT* bs = (MT*)ela_smem;      // [NS][C][LDF] B of a chunk per stage
    MT* xs = bs + NS * C * LDF;  // [NS][C][LDX] this block's columns of X
    check_smem(xs + NS * C * LDX);

    const int seq = blockIdx.x, j0 = blockIdx.y * EB;
    const i64 Tp = (i64)nch * C;
    const MT* bq = B + seq * Tp * F;
    const MT* xq = X + seq * Tp * E + j0;
    MT* sl = slots + (i64)seq * (nch + 1) * F * E + j0;

    float acc[W::PER][1][4];
#pragma unroll
    for (int s = 0; s < W::PER; ++s)
#pragma unroll
        for (int e = 0; e < 4; ++e)
            acc[s][0][e] = (init && W::has(s))
                               ? init[((i64)seq * F + ACC_ROW(W::row0(s), e)) * E + j0 + ACC_COL(W::col0(s), 0, e)]
                               : 0.f;
    auto chunk = [&](int it) { return reverse ? nch - 1 - it : it; };
    auto store_slot = [&](i64 c) {
        MT* dst = sl + c * F * E;
#pragma unroll
        for (int s = 0; s < W::PER; ++s)
            if (W::has(s))
#pragma unroll
                for (int e = 0; e < 4; e += 2)
                    store_mt2(dst + ACC_ROW(W::row0(s), e) * E + ACC_COL(W::col0(s), 0, e), acc[s][0][e],
                              acc[s][0][e + 1]);
    };
    // The copies of step `it` into stage it % NS, one group (empty past the end, so that every
    // thread's group count stays in step with the loop).
    auto issue = [&](int it) {
        if (it < nch) {
            const int st = it % NS;
            if (LA_RAW) {
                la_stage_op<C, F>(bs + st * C * LDF, LDF, B, la_map(maps, 1), seq, chunk(it), nch, F, 0, vw, T);
                la_stage_op<C, EB>(xs + st * C * LDX, LDX, X, la_map(maps, 2), seq, chunk(it), nch, E, j0, vw, T);
            } else {
                la_stage_async<C, F>(bs + st * C * LDF, LDF, bq + (i64)chunk(it) * C * F, F);
                la_stage_async<C, EB>(xs + st * C * LDX, LDX, xq + (i64)chunk(it) * C * E, E);
            }
        }
        cp_async_commit();
    };
    issue(0);
    issue(1);
    for (int it = 0; it < nch; ++it) {
        cp_async_wait<1>();  // this thread's copies of step it have landed (it + 1 may be in flight)
        __syncthreads();  // ...everyone's; and every warp is done with step it - 1's stage
        issue(it + 2);    // into the stage step it - 1 used
        store_slot(chunk(it));
        // S += B_c^T X_c: B read transposed from its row-major tile.
        const int st = it % NS;
        if (LA_RAW && maps != 0) {
            la_fix<C, F>(bs + st * C * LDF, LDF, la_map(maps, 1), chunk(it), 0, vw, T);
            la_fix<C, EB>(xs + st * C * LDX, LDX, la_map(maps, 2), chunk(it), j0, vw, T);
            __syncthreads();
        }
#pragma unroll
        for (int s = 0; s < W::PER; ++s)
            if (W::has(s))
                mm_tile<1, true, false>(acc[s], bs + st * C * LDF, LDF, xs + st * C * LDX, LDX, W::row0(s),
                                        W::col0(s), C);
    }
    cp_async_wait<0>();
    store_slot(nch);
    if (fin) {
#pragma unroll
        for (int s = 0; s < W::PER; ++s)
            if (W::has(s))
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    fin[((i64)seq * F + ACC_ROW(W::row0(s), e)) * E + j0 + ACC_COL(W::col0(s), 0, e)] = acc[s][0][e];
    }
}

// (With LA_RAW the 128-wide bf16 scan took 176 registers without a bound, one block a
// multiprocessor, where its shared memory allows two.)
#if LA_RAW
#define LA_SCAN_BOUNDS __launch_bounds__(ELA_THREADS, 2)
#else
#define LA_SCAN_BOUNDS __launch_bounds__(ELA_THREADS)
#endif
extern "C" __global__ void LA_SCAN_BOUNDS la_scan(const MT* B, const MT* X, MT* slots, const float* init, float* fin,
                                                  int nch, int reverse, int maps, int vw, i64 T_raw) {
    la_scan_impl<LA_EB_HALF>(B, X, slots, init, fin, nch, reverse, maps, vw, T_raw);
}
#if !ELA_MMA
extern "C" __global__ void __launch_bounds__(ELA_THREADS)
    la_scan_narrow(const MT* B, const MT* X, MT* slots, const float* init, float* fin, int nch,
                   int reverse, int maps, int vw, i64 T_raw) {
    la_scan_impl<LA_EB_NARROW>(B, X, slots, init, fin, nch, reverse, maps, vw, T_raw);
}
#endif

// ---------------------------------------------------------------- rows of one chunk

// One row of the backward's G by one warp, lanes over the columns (M per lane): `load` takes the
// row's y and dy into registers (null yr: a padding row), `store` writes
// [dy * inv | -(dy . y) * inv | 0..], `width` wide, with inv = 1 / den.
template <int M> struct GradRow {
    float y[M], dy[M];
    __device__ __forceinline__ void load(const IOS* yr, const IOS* dyr, int dv, int lane) {
#pragma unroll
        for (int j = 0; j < M; ++j) {
            const int c = lane + 32 * j;
            const bool ok = yr && c < dv;
            y[j] = ok ? IOT::load(yr[c]) : 0.f;
            dy[j] = ok ? IOT::load(dyr[c]) : 0.f;
        }
    }
    __device__ __forceinline__ void store(MT* gr, float inv, bool live, int dv, int width, int lane) const {
        float part = 0.f;
#pragma unroll
        for (int j = 0; j < M; ++j) part += dy[j] * inv * y[j];
        const float cc = warp_sum(part);
#pragma unroll
        for (int j = 0; j < M; ++j) {
            const int c = lane + 32 * j;
            if (c < width) gr[c] = to_mt(!live ? 0.f : c < dv ? dy[j] * inv : c == dv ? -cc : 0.f);
        }
    }
};

// O_c for chunk blockIdx.x of sequence blockIdx.y (see the file header). KI: the width of A and
// B, NO: the width of X and O; STT: the slots hold the state transposed ([NO][KI]).
// dir: 0 causal (slot c, keeps j <= i), 1 anti-causal (slot c of a reverse scan, keeps j >= i),
// 2 global (slot nch, no intra-chunk block: the total already holds it).
// Epilogue `mode` (rows t < T of the chunk; `dv` the value width):
//   LA_OUT_Y:    out (IOS) [seq][T][dv] = O[:, :dv] / O[:, dv], and den (if not null; f32
//                [seq][T]) = O[:, dv] (kept for the backward);
//   LA_OUT_G:    out (MT) [seq][Tp][NO] = [dy / den | -(dy . y) / den | 0], den = O[:, dv], from
//                aux0 = y, aux1 = dy (IOS, [seq][T][dv]); padding rows 0;
//   LA_OUT_TAKE: out (IOS) [seq][T][dv] = O[:, :dv];
//   LA_OUT_VJP:  O is the gradient of the features phi (key = 0) or psi (key = 1) of kernel `kern`;
//                out (IOS) [seq][T][dv] = dx, their vector-Jacobian product at x = aux0 (IOS
//                [seq][T][dv]; here dv is the input width d).
template <int KI, int NO, bool STT>
__device__ __forceinline__ void la_out_impl(const MT* A, const MT* B, const MT* X, const MT* slots, void* out,
                                            const IOS* aux0, const IOS* aux1, float* den, i64 T, int nch, int dir,
                                            int mode, int dv, int kern, int key, int maps, int vw) {
    constexpr int C = LA_C, LDK = LDP(KI), LDN = LDP(NO), LDC = LDP(C), LDO = NO + 4;
    constexpr int SR = STT ? NO : KI, SC = STT ? KI : NO, LDS = LDP(SC);  // the slot as stored
    MT* as = (MT*)ela_smem;  // [C][LDK]
    MT* bs = as + C * LDK;   // [C][LDK]
    MT* xs = bs + C * LDK;   // [C][LDN]
    MT* ss = xs + C * LDN;   // [SR][LDS]
    MT* ms = ss + SR * LDS;  // [C][LDC] the masked block A_c B_c^T
    float* os = (float*)ela_smem;  // [C][LDO] O, once the tiles are dead
    check_smem(ms + C * LDC);
    check_smem(os + C * LDO);

    const int c = blockIdx.x, seq = blockIdx.y, tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const i64 Tp = (i64)nch * C, row0g = seq * Tp + (i64)c * C;
    const i64 slot = (i64)seq * (nch + 1) + (dir == 2 ? nch : c);
    if (LA_RAW) {
        la_stage_op<C, KI>(as, LDK, A, la_map(maps, 0), seq, c, nch, KI, 0, vw, T);
        if (dir != 2) {
            la_stage_op<C, KI>(bs, LDK, B, la_map(maps, 1), seq, c, nch, KI, 0, vw, T);
            la_stage_op<C, NO>(xs, LDN, X, la_map(maps, 2), seq, c, nch, NO, 0, vw, T);
        }
    } else {
        la_stage_async<C, KI>(as, LDK, A + row0g * KI, KI);
        if (dir != 2) {
            la_stage_async<C, KI>(bs, LDK, B + row0g * KI, KI);
            la_stage_async<C, NO>(xs, LDN, X + row0g * NO, NO);
        }
    }
    la_stage_async<SR, SC>(ss, LDS, slots + slot * SR * SC, SC);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    if (LA_RAW && maps != 0) {
        la_fix<C, KI>(as, LDK, la_map(maps, 0), c, 0, vw, T);
        if (dir != 2) {
            la_fix<C, KI>(bs, LDK, la_map(maps, 1), c, 0, vw, T);
            la_fix<C, NO>(xs, LDN, la_map(maps, 2), c, 0, vw, T);
        }
        __syncthreads();
    }
    if (dir != 2) {
        constexpr int NTM = Nt<C, C>::V;
        typedef Deal<C, C, NTM> WM;
#pragma unroll
        for (int s = 0; s < WM::PER; ++s) {
            if (!WM::has(s)) continue;
            float acc[NTM][4];
            zero_acc(acc);
            const int r0 = WM::row0(s), c0 = WM::col0(s);
            mm_tile<NTM, false, true>(acc, as, LDK, bs, LDK, r0, c0, KI);
#pragma unroll
            for (int nt = 0; nt < NTM; ++nt)
#pragma unroll
                for (int e = 0; e < 4; e += 2) {
                    const int i = ACC_ROW(r0, e), j = ACC_COL(c0, nt, e);
                    const bool k0 = dir == 0 ? j <= i : j >= i, k1 = dir == 0 ? j + 1 <= i : j + 1 >= i;
                    store_mt2(ms + i * LDC + j, k0 ? acc[nt][e] : 0.f, k1 ? acc[nt][e + 1] : 0.f);
                }
        }
    }
    __syncthreads();
    constexpr int NTO = Nt<C, NO>::V;
    typedef Deal<C, NO, NTO> WO;
    float acc[WO::PER][NTO][4];
#pragma unroll
    for (int s = 0; s < WO::PER; ++s) {
        zero_acc(acc[s]);
        if (!WO::has(s)) continue;
        if (dir != 2) mm_tile<NTO, false, false>(acc[s], ms, LDC, xs, LDN, WO::row0(s), WO::col0(s), C);
        mm_tile<NTO, false, STT>(acc[s], as, LDK, ss, LDS, WO::row0(s), WO::col0(s), KI);
    }
    __syncthreads();  // every tile is read: os takes their place
#pragma unroll
    for (int s = 0; s < WO::PER; ++s)
        if (WO::has(s))
#pragma unroll
            for (int nt = 0; nt < NTO; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    os[ACC_ROW(WO::row0(s), e) * LDO + ACC_COL(WO::col0(s), nt, e)] = acc[s][nt][e];
    __syncthreads();

    const int n = (int)min((i64)C, T - (i64)c * C);  // rows of the chunk inside the sequence
    const i64 row0t = seq * T + (i64)c * C;           // the chunk's first row in [seq][T] buffers
    if (mode == LA_OUT_Y || mode == LA_OUT_TAKE) {
        IOS* o = (IOS*)out + row0t * dv;
        for (int r = warp; r < n; r += ELA_WARPS) {
            const float inv = mode == LA_OUT_Y ? 1.f / os[r * LDO + dv] : 1.f;
            for (int j = lane; j < dv; j += 32) o[(i64)r * dv + j] = IOT::store(os[r * LDO + j] * inv);
        }
        if (mode == LA_OUT_Y && den && tid < n) den[row0t + tid] = os[tid * LDO + dv];
    } else if (mode == LA_OUT_VJP) {
        constexpr int M = (NO + 31) / 32;  // d <= F = NO
        IOS* o = (IOS*)out + row0t * dv;
        for (int r = warp; r < n; r += ELA_WARPS) {
            const float* gf = os + r * LDO;
            const IOS* xr = aux0 + (row0t + r) * dv;
            float xv[M], a = 0.f, sg = 0.f;
#pragma unroll
            for (int j = 0; j < M; ++j) {
                const int e = lane + 32 * j;
                xv[j] = e < dv ? IOT::load(xr[e]) : 0.f;
                a += xv[j] * xv[j];
                sg += e < dv ? xv[j] * gf[e] : 0.f;
            }
            float gd, gd1, n2 = 0.f, two_s = 0.f;
            nc_extra_grads<float>(kern, gf, dv, gd, gd1);
            if (kern == K_BLUE) {
                n2 = warp_sum(a);
                two_s = 2.f * (warp_sum(sg) + gd);
            }
#pragma unroll
            for (int j = 0; j < M; ++j) {
                const int e = lane + 32 * j;
                if (e < dv)
                    o[(i64)r * dv + e] =
                        IOT::store(nc_feature_vjp_at<float>(kern, key != 0, xv[j], gf[e], gd, gd1, n2, two_s));
            }
        }
    } else {
        MT* g = (MT*)out + row0g * NO;
        for (int r = warp; r < C; r += ELA_WARPS) {
            const i64 src = row0t + r;
            GradRow<(NO + 31) / 32> in;
            in.load(r < n ? aux0 + src * dv : 0, aux1 + src * dv, dv, lane);
            in.store(g + (i64)r * NO, r < n ? 1.f / os[r * LDO + dv] : 0.f, r < n, dv, NO, lane);
        }
    }
}

// LA with A, B of width F and X, O of width E (the forward; the backward's dV').
extern "C" __global__ void __launch_bounds__(ELA_THREADS)
    la_out_fe(const MT* A, const MT* B, const MT* X, const MT* slots, void* out, const IOS* aux0, const IOS* aux1,
              float* den, i64 T, int nch, int dir, int mode, int dv, int kern, int key, int maps, int vw) {
    la_out_impl<LA_F, LA_E, false>(A, B, X, slots, out, aux0, aux1, den, T, nch, dir, mode, dv, kern, key, maps, vw);
}

// LA with A, B of width E and X, O of width F, the [F x E] slots read transposed (the backward's
// dPhi and dPsi, turned into dq and dk by the LA_OUT_VJP epilogue).
extern "C" __global__ void __launch_bounds__(ELA_THREADS)
    la_out_ef(const MT* A, const MT* B, const MT* X, const MT* slots, void* out, const IOS* aux0, const IOS* aux1,
              float* den, i64 T, int nch, int dir, int mode, int dv, int kern, int key, int maps, int vw) {
    la_out_impl<LA_E, LA_F, true>(A, B, X, slots, out, aux0, aux1, den, T, nch, dir, mode, dv, kern, key, maps, vw);
}

// G = [dy / den | -(dy . y) / den | 0] ([seq][Tp][E] operands, padding rows 0) from the
// denominators a saving forward kept (f32 [seq][T]): the LA_OUT_G epilogue without the output
// pass. One warp per row.
extern "C" __global__ void __launch_bounds__(ELA_THREADS)
    la_grad(const IOS* y, const IOS* dy, const float* den, MT* G, i64 T, int nch, int dv) {
    // Grid (row groups, sequence): RB rows per warp, every load issued first.
    constexpr int E = LA_E, RB = 4;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const i64 n = blockIdx.y, Tp = (i64)nch * LA_C, t0 = ((i64)blockIdx.x * ELA_WARPS + warp) * RB;
    GradRow<(E + 31) / 32> in[RB];
    float inv[RB];
#pragma unroll
    for (int i = 0; i < RB; ++i) {
        const i64 t = t0 + i, src = n * T + t;
        in[i].load(t < T ? y + src * dv : 0, dy + src * dv, dv, lane);
        inv[i] = t < T ? 1.f / den[src] : 0.f;
    }
#pragma unroll
    for (int i = 0; i < RB; ++i)
        if (t0 + i < Tp) in[i].store(G + (n * Tp + t0 + i) * E, inv[i], t0 + i < T, dv, E, lane);
}
