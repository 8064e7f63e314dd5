// Chunked Exact Linear Attention (Hadamard Exp) on tensor cores, the forward and the two scans
// the backward shares with it (the backward block itself is chunk_bwd.cu). The forward and the
// backward of docs/ela.md in the CPU kernels' exact numerics (log-scale units, per-row shifts, per-feature
// running maxima, the exact path for rows whose fast denominator underflows), split into kernels
// that each have plenty of parallel work:
//
//   ela_scan_m0 (mode 0), one block per (sequence, 32 value columns), walks the chunks in order
//     and writes the state before every chunk: slot c = (S^(c), z^(c), m^(c)), slot nch = the
//     final state (S in the operand type, z and m f32). Per chunk: m' = max(m, column max of the
//     keys), S <- S exp(m - m') + exp(K - m')^T V, z likewise (eq. (S')).
//   ela_out (chunk_out.cu), one block per (chunk, sequence): the chunk's rows from its state slot (eqs. (F1),
//     (F2) with (N1), (U), (N2)): A = (Phi_a Psi_a^T) * E masked, y = (A V + Phi_b S) / den.
//     In mode 1 (backward) it writes per row (u, den, c = g . y, exact-path flag) instead of y.
//   ela_scan_m1 (mode 1) walks the chunks backwards and writes U^(c+1), w^(c+1): the reverse
//     accumulators of the rows after each chunk (eq. (R)), moved between units on the way.
//   ela_bwd (chunk_bwd.cu), one block per (chunk, sequence): dq, dk, dv of the chunk
//     (eqs. (B1)-(B4) in units) from the slots, with the exact path for underflowed rows.
//
// Non-causal attention uses the final slot for every chunk (one global state and one global U).
// The chunk length C is the kernel's own (ELA_C): results agree with any CPU chunk length to
// rounding. The recurrent step for all sequences in one launch is step.cu; the joins of a scan
// split into runs are scan_runs.cu. These five files are compiled as one module after tile.cuh,
// in the order chunk_fwd.cu, chunk_out.cu, scan_runs.cu, chunk_bwd.cu, step.cu (cuda/src/kernels.rs,
// `KernelFile::ElaChunk`).

// The feature maps these kernels compute (ELA_FMAP, defined by the host per module):
//   0  Hadamard Exp: phi(q) = exp(q), psi(k) = exp(k);
//   1  elu+1 as Hadamard Exp on log-features: elu(x) + 1 = exp(lf(x)) with lf(x) = log1p(x) for
//      x > 0 and x otherwise, so sum_d (elu(q_d) + 1)(elu(k_d) + 1) = sum_d exp(lf(q_d) + lf(k_d)).
// Every kernel below applies lf to q and k as it reads them and is otherwise the Hadamard-Exp
// kernel, units, maxima and exact path included. The backward needs, beside the features, their
// derivatives: elu+1's is exp(min(x, 0)), the log of which, lderiv, is the same function of x and
// of lf(x) (lf(x) > 0 exactly when x > 0, and lf(x) = x otherwise); so where Hadamard Exp
// multiplies a gradient by a feature exp(x - shift), elu+1 multiplies it by exp(lderiv(x) - shift)
// (docs/ela.md, "elu+1 on the Hadamard-Exp kernels"). With ELA_FMAP 0 both maps are the identity
// and compile to nothing. NaN stays NaN through both.
//   2  Identity: phi(q) = q, psi(k) = k, signed, so there is no exp to keep in range and no
//      units: every maximum, shift and unit is 0 (slots' m included), a feature is the input
//      itself (feat_if of the input less a shift of 0) and an entry of E is 1 (unit_exp). A
//      denominator may be 0 or negative, so no row takes the exact path, which exists for sums of
//      exps that underflow. Where the backward multiplies by a feature of its own side (the
//      derivative of exp), Identity multiplies by 1 (docs/ela.md, "Identity on the
//      Hadamard-Exp kernels").
#ifndef ELA_FMAP
#error "the host defines ELA_FMAP"
#endif
#define ELA_UNITS (ELA_FMAP != 2)
// A feature from its argument x, the input less its shift: exp(x), or x itself for Identity; 0
// where `live` is false (rows past the chunk's end).
__device__ __forceinline__ float feat_if(bool live, float x) { return ELA_UNITS ? exp_if(live, x) : keep_if(live, x); }
// A factor exp(x) between units (E's entries): 1 for Identity, whose units are all 0.
__device__ __forceinline__ float unit_exp(float x) { return ELA_UNITS ? exp_ftz(x) : 1.f; }
// A maximum that sets units (a row's, a feature's): 0 for Identity.
__device__ __forceinline__ float unit_max(float m) { return ELA_UNITS ? m : 0.f; }
// log(1 + x) for x > 0 as lg2.approx of the rounded 1 + x: two instructions where log1pf takes
// about thirty, and these run on every q and k element a scan step or a chunk reads. The rounding
// of 1 + x and lg2.approx's error (about 2^-22 relative) make an absolute error in lf, i.e. a
// relative one in the feature exp(lf), of the order of the kernels' own exp_ftz error for
// moderate x (the measured errors: docs/ela.md).
__device__ __forceinline__ float log1p_pos(float x) {
    float y;
    asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(1.f + x));
    return y * 0.6931471805599453f;
}
__device__ __forceinline__ float lfeat(float x) { return (ELA_FMAP == 1 && x > 0.f) ? log1p_pos(x) : x; }
__device__ __forceinline__ float lderiv(float x) { return (ELA_FMAP == 1 && x > 0.f) ? 0.f : x; }
// lf on a chunk's rows as loaded (at their first use, so the loads stay in flight until then).
template <int W> __device__ __forceinline__ void log_features(RowPart<W>& p) {
#if ELA_FMAP != 0
#pragma unroll
    for (int e = 0; e < RowPart<W>::EPT; ++e) p.x[e] = lfeat(p.x[e]);
#endif
}

// ---------------------------------------------------------------- the signed kernels' extra terms

// The rank-one extra terms of the signed kernels on Identity's tiles (chunk_ext.cu has the math;
// ops/ela/signed.rs): `sums` null everywhere else. `ela_out` reads the forward chunk sums (V1 =
// sum v, V2 = sum g v, G = sum g over the keys before the chunk, or all of them), `ela_bwd` the
// backward ones (RG, RaG, Rc over the rows after it, or all) and V1 from the forward's (`pre`).
// Each row's (a_i, g_i) comes from `ag` where given (the blueprint's, whose kernels read the keys
// k' = g k and cannot form g), else from the rows the kernel holds (sum/sub-sq: |q|^2 / s,
// |k|^2 / s). Mirrored by `ExtArgs` in ops/ela/chunk.rs.
struct ElaExt {
    const float* sums;  // [sequence][nch + 1][EXT_SUM_LD], the slots' indexing
    const float* pre;   // ela_bwd: the forward's scanned sums (V1), laid out as `sums`
    const float2* ag;   // (a_i, g_i) per row, packed [sequence][T], or null
    int kind;           // 0: sum/sub-sq (a = |q|^2 / s, g = |k|^2 / s); 1: the blueprint (a = 0)
    float inv_s;        // 1 / s, the key scale's inverse
};
// A row of the chunk sums: V1 at 0, V2 (forward) or RG, RaG (backward) at DV and 2 DV, the scalar
// (G forward, Rc backward) at 3 DV, padded to 16 bytes.
#define EXT_SUM_LD (3 * ELA_DV + 4)
#define EXT_SUM_SC (3 * ELA_DV)
// What the scans give the signed kernels' chunk sums (Identity modules only; `sums` null
// elsewhere): each chunk's own sums, before ela_ext_scan turns them into prefix (or suffix) sums.
// The forward scan, walking k and v, makes V1 = sum v, V2 = sum g v and G = sum g; the reverse
// scan, walking q and dy, makes RG = sum G', RaG = sum a G' and Rc = sum c (G' = dy / den). A
// scan block holds SCAN_FB of the features, so g (or a) from its slice of the row is a part of
// the row's: V2, G and RaG, linear in it, are summed over the blocks' planes (`plane` floats
// apart) by ela_ext_scan; the first feature block's plane alone has V1, RG and Rc (the others
// hold zeros there). Mirrored by `ExtScanArgs` in ops/ela/chunk.rs.
struct ExtScan {
    float* sums;  // [feature block][sequence][nch + 1][EXT_SUM_LD]
    i64 plane;    // floats between feature blocks' planes
    float inv_s;  // 1 / s
    int norms;    // 1: a (reverse) or g (forward) from the rows' norms, |x|^2 / s; 0: none (the blueprint's a)
};

// A scan block owns SCAN_FB state rows (features) and SCAN_DVB value columns of one sequence: the
// rows of S, z and m are independent of each other (each feature has its own running maximum),
// so 128-wide heads split theirs in two, for B * H * 4 blocks; a scan block runs for the whole
// sequence. At two blocks per multiprocessor (128 registers, no spills: measured faster than four
// with spills, docs/benchmarks.md) B8 H16's 512 blocks of 128-wide heads take two waves on an
// H100. Value columns per block: 32, or 64 for 128-wide values (each column block recomputes the
// features' exp). (Twice as many value columns per block, measured: as slow at D = 128, where
// the 256 blocks take one wave, each step twice as long; slower at D = 64. docs/benchmarks.md.)
#define SCAN_DVB (ELA_DV > 64 ? 64 : 32)
#define SCAN_FB 64
// Chunks per step of the scan (below): 64-wide heads take 2 chunks a step in 2 * B * H blocks;
// 128-wide heads take 1 in 4 * B * H blocks. The blocks per multiprocessor each kernel is
// compiled for (SCAN_MINB, ELA_MINB, ELA_BWD_MINB) come from the host (cuda/src/kernels.rs,
// `ChunkMinBlocks`), which needs the scan's figure too.
#define SCAN_WIDE (ELA_F > 64 || ELA_DV > 64)
#define SCAN_P (SCAN_WIDE ? 1 : 2)
#if !defined(SCAN_MINB) || !defined(ELA_MINB) || !defined(ELA_BWD_MINB)
#error "the host defines SCAN_MINB, ELA_MINB and ELA_BWD_MINB"
#endif
#define SCAN_NDVB (ELA_DV / SCAN_DVB)
// SCAN_DOT (16-bit operands; the opt-in `scandot` until it was measured): the reverse scan computes
// each row's dy . y itself, from dy and y rows it copies with cp.async into shared memory one step
// ahead, instead of reading c = dy . y / den from a separate pass over dy and y (ela_rows_dot).
// The [1 | c den] column is that dot, and the first column block of each sequence writes
// c = dot / den into the row info for ela_bwd. Every column block reads the whole rows (the dot
// needs all DV columns): the repeats are L2 hits, and the copies, issued a step ahead, are off the
// walk's chain; what the chain gains is one short row reduction in stage (2).
#define SCAN_DOT ELA_MMA
// Threads per row of the dot (the step's P * C rows over the block) and the row stride of its dy / y
// copies, padded so that the eight 16-byte reads of a quarter-warp fall in distinct bank groups:
// a thread reads vectors part, part + TPR, ... of its row, so a quarter-warp reads 8 / TPR rows of
// TPR consecutive vectors, and the stride in vectors must be 2 (mod 4) at TPR 2, 4 (mod 8) at 4.
#define SCAN_DOT_TPR (ELA_THREADS / (SCAN_P * ELA_C))
#define SCAN_LDY (ELA_DV + (SCAN_DOT_TPR == 2 ? 16 : SCAN_DOT_TPR == 4 ? 32 : 8))

// ---------------------------------------------------------------- scan over chunks

// The f32 buffers of a scan split into runs of `len` chunks (`end_s` null: one walk per
// sequence). s, z, m: the relative slots, laid out as the slots (null for runs of one chunk,
// whose only relative slot is the empty state); end_s, end_z, end_m: each run's end state,
// [sequence][run][feature](columns); m only in mode 0 (mode 1 takes the forward's units).
struct ScanSegs {
    float *s, *z, *m, *end_s, *end_z, *end_m;
    int runs, len;
};

// Four MT values with one vector store (8 bytes for 16-bit MT, 16 for f32), to shared or global
// memory; the address must be aligned to the vector.
__device__ __forceinline__ void st_mt4(MT* p, float a, float b, float c, float d) {
#if ELA_MMA
    ela_u2 w;
    w.x = pack_bf16x2(a, b);
    w.y = pack_bf16x2(c, d);
    *(ela_u2*)p = w;
#else
    *(ela_f4*)p = ela_f4{a, b, c, d};
#endif
}

// The state product S += Psi^T [V | 1] carries z (or w, with the column c * den) as one more
// 8-column tile of the same tensor-core product: no separate reduction over the chunk's rows.
// Psi (the chunk's features, [C][F]) and [V | 1] ([C][DVB + 8]) stay row-major in shared memory,
// as they arrive: the product reads Psi^T through ldmatrix.trans. Each thread computes the
// features of the key (or query) vectors it loaded, from registers.
//
// The walk is sequential, so what bounds it is the latency of one step, not throughput: each
// step takes SCAN_P chunks, whose staging, column maxima, units and features are computed side by
// side (four barriers for all), and only the tile products and the slot stores between them run
// one after the other. The state, the units and the slots are exactly those of a chunk-by-chunk
// walk.
//
// Segments (causal calls without a carried state, when the sequences alone leave
// multiprocessors idle): blockIdx.y / (column blocks) picks a run of seg_len chunks, walked from
// an empty state. The first run (mode 0) or the last (mode 1) is exact as it stands and writes the
// slots; the others write theirs in f32 to `seg` (slots relative to their run's start) and every
// run writes its end state to `seg` too; ela_scan_join (scan_runs.cu) then adds the runs before
// each one.
//
// The body is compiled once per mode (ela_scan_m0, ela_scan_m1), not once with the mode given at
// run time: a walk step is a chain of short dependent instructions run by few warps, so the other
// mode's instructions and the branches between them cost time on every step (the per-mode kernels
// were 3-4 % faster in the chunked fwd+bwd on an H100, and less than half the machine code).
// The row info: written by the reverse scan when it computes the dots (c), else only read.
#if SCAN_DOT
#define SCAN_ROWS_T ela_f4
#else
#define SCAN_ROWS_T const ela_f4
#endif
#if ELA_FMAP == 2
// The signed kernels' chunk sums in the scan (ExtScan), step (4): a row's two weights, w1 for V1
// (forward) or RG (reverse), w2 for V2 or RaG, from the four features `o` this thread holds of
// it (F / 4 consecutive lanes hold a row): forward 1 and g = |k|^2 / s, reverse 1 / den and
// a / den = |q|^2 / (s den) (this block's features only: a part of g or a). Rows past the chunk's
// end weigh 0; so does w1 outside the first feature block, whose plane alone holds V1 and RG.
// They go to the row's first four columns of the weight tile `w` as operands of step (5)'s tile
// product, each split in two (hi = w rounded to the operand type, lo = w - hi), so the product
// keeps them to about f32's precision with bf16 operands.
template <int MODE, int F>
__device__ __forceinline__ void ext_weights(MT* w, const ExtScan& ext, const float* o, bool live, bool first, float inv) {
    float s = 0.f;
    if (ext.norms) {
#pragma unroll
        for (int j = 0; j < 4; ++j) s = fmaf(o[j], o[j], s);
#pragma unroll
        for (int off = F / 8; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    }
    if (threadIdx.x % (F / 4) == 0) {
        const float k = MODE == 0 ? 1.f : inv;
        const float w1 = live && first ? k : 0.f, w2 = live ? s * ext.inv_s * k : 0.f;
        const float h1 = from_mt(to_mt(w1)), h2 = from_mt(to_mt(w2));
        st_mt4(w, h1, w1 - h1, h2, w2 - h2);
    }
}

// Step (5): the chunks' sums of this block's value (or dy) columns, W^T V on the tensor cores, W
// the weight tile [C][LDW] (columns w1 hi, lo, w2 hi, lo, then zeros) and V the value tile: warp
// t takes 8 columns of one chunk (P * DVB / 8 such tiles over the warps); lanes 0-3 hold w1's
// sums (rows 0 and 1 of the product, added), lanes 8-11 w2's. Then, in the blocks of the first
// value columns, warp 0 adds the scalar in f32: G = sum g (forward) or Rc = sum c (reverse; c from
// the row info in `ri`, or, with the dots, dot / den). `out(p)`: chunk p's row of this block's
// plane (null past the walk's end).
template <int MODE, int LDV, int LDW, int P, typename Out>
__device__ void ext_chunk_sums(Out out, const MT* vsm, const MT* wmt, const float* ri, const int* nrows, int j0, bool first) {
    constexpr int DVB = SCAN_DVB, C = ELA_C, NT = DVB / 8;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int t = warp; t < P * NT; t += ELA_WARPS) {
        const int p = t / NT, c0 = 8 * (t % NT);
        float* o = out(p);
        if (!o) continue;  // (warp-uniform)
        float acc[1][4] = {{0.f, 0.f, 0.f, 0.f}};
        mm_tile<1, true, false>(acc, wmt + p * C * LDW, LDW, vsm + p * C * LDV, LDV, 0, c0, C);
        float x0 = acc[0][0], x1 = acc[0][1];  // row lane / 4: w1 hi, lo, w2 hi, lo for lanes 0-15
        x0 += __shfl_xor_sync(0xffffffffu, x0, 4);
        x1 += __shfl_xor_sync(0xffffffffu, x1, 4);
        const int col = j0 + ACC_COL(c0, 0, 0);
        if (lane < 4 || (lane >= 8 && lane < 12)) {
            const int at = (MODE == 0 ? 0 : ELA_DV) + (lane < 4 ? 0 : ELA_DV) + col;
            *(float2*)(o + at) = float2{x0, x1};
        }
    }
    if (j0 == 0 && warp == 0)
        for (int p = 0; p < P; ++p) {
            float* o = out(p);
            if (!o) break;
            float s = 0.f;
            for (int r = lane; r < nrows[p]; r += 32) {
                const float* x = ri + (p * C + r) * 4;
                s += MODE == 0 ? from_mt(wmt[(p * C + r) * LDW + 2]) + from_mt(wmt[(p * C + r) * LDW + 3])
                               : !first ? 0.f : SCAN_DOT ? x[2] / x[1] : x[2];
            }
            s = warp_sum(s);
            if (lane == 0) o[EXT_SUM_SC] = s;
        }
}
#endif

template <int MODE, bool EXT>
__device__ __forceinline__ void scan_walk(const ST* x, const ST* val, MT* slot_s, float* slot_z, float* slot_m,
                                          SCAN_ROWS_T* rows, const float* init_s, const float* init_z,
                                          const float* init_m, float* fin_s, float* fin_z, float* fin_m,
                                          const ScanSegs& seg, const ElaIo& io, const ExtScan& ext, i64 T, int nch,
                                          int causal
#if SCAN_DOT
                                          , const ST* yin
#endif
) {
    constexpr int mode = MODE;
    // F: this block's features (state rows), FA: all of them (the row stride of x and the slots).
    constexpr int FA = ELA_F, F = SCAN_FB, DV = ELA_DV, C = ELA_C, DVB = SCAN_DVB, P = SCAN_P;
    // The value tile holds DVB + 8 columns (the values, then the [1 | c den] column block). With
    // 16-bit operands its row stride is an odd count of 16-byte units (DVB + 24 elements: 7 or
    // 11 units) so that the eight rows an ldmatrix reads fall in distinct bank groups; LDP alone
    // (DVB + 16: 6 or 10 units) made every such read a 2-way bank conflict.
    constexpr int LDF = LDP(F), LDV = ELA_MMA ? LDP(DVB + 16) : LDP(DVB + 8);
    typedef WarpMap<F, DVB> W;
    constexpr int NX = C * F / (4 * ELA_THREADS), NVV = C * DVB / (4 * ELA_THREADS);
    static_assert(NX * 4 * ELA_THREADS == C * F && NVV * 4 * ELA_THREADS == C * DVB, "staging split");
    static_assert(ELA_THREADS % (F / 4) == 0, "a thread's x vectors share their columns");
    static_assert(FA % F == 0, "feature split");
    MT* psi = (MT*)ela_smem;              // [P][C][LDF] the chunks' features
    MT* vsm = psi + P * C * LDF;          // [P][C][LDV] values (or gradients), then the [1 | c den] column
    float* mto = (float*)(vsm + P * C * LDV);  // [P][F] the units after each chunk's update
    float* rsc = mto + P * F;             // [P][F] units change factors
    float* part = rsc + P * F;            // [P][ELA_WARPS][F] column maxima of the keys, per warp
    float* rinf = part + P * ELA_WARPS * F;  // [P][C][4] row info (mode 1)
    // Identity: [P][C][LDW] each row's weights in the signed kernels' chunk sums (ext_weights).
    constexpr int LDW = LDP(16);
    MT* wmt = (MT*)(rinf + P * 4 * C);
    // SCAN_DOT, mode 1: [P][C][2][SCAN_LDY] the step's dy and y rows, [P][C][LDF] its q rows (after
    // rinf and wmt: 16-byte aligned).
    constexpr bool DOT = SCAN_DOT && mode == 1;
    ST* ydy = (ST*)(wmt + (ELA_FMAP == 2 ? P * C * LDW : 0));
    ST* qsm = ydy + P * C * 2 * SCAN_LDY;
    check_smem(DOT ? (const void*)(qsm + P * C * LDF) : (const void*)ydy);

    constexpr int NCB = SCAN_NDVB * (FA / F);  // column blocks of one sequence
    const int seq = blockIdx.x, cb = blockIdx.y % NCB, run = blockIdx.y / NCB;
    const int j0 = (cb % SCAN_NDVB) * DVB, f0 = (cb / SCAN_NDVB) * F;
    // This block's chunks [cbeg, cend), walked forwards (mode 0) or backwards (mode 1); `local`:
    // its slots are relative to the run's start and go to seg.s in f32 (runs of one chunk have
    // only the empty state there: seg.s is null and they write none).
    const bool split = seg.end_s != nullptr;
    const int runs = split ? seg.runs : 1, cbeg = split ? run * seg.len : 0;
    const int cend = split ? min(nch, cbeg + seg.len) : nch, ncs = cend - cbeg;
    const bool local = split && (mode == 0 ? run > 0 : run < runs - 1);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int row0 = W::row0(), col0 = W::col0();
    const bool lead = j0 == 0, zw = W::group() == 0 && (lane & 3) == 0;  // zw: holds z (col 0)
    const i64 nslot = mode == 0 ? (i64)nch + 1 : (i64)nch;
    MT* ss = slot_s + seq * nslot * FA * DV + f0 * DV;
    float* sz = slot_z + seq * nslot * FA + f0;
    const float* sm = slot_m + seq * ((i64)nch + 1) * FA + f0;
    // x, val: k, v (mode 0) or q, dy (mode 1), rows lx, lv elements apart.
    const i64 lx = mode == 0 ? io.k[2] : io.q[2], lv = mode == 0 ? io.v[2] : io.dy[2];
    const ST* xs = x + (mode == 0 ? io_seq(io.k, seq, io.heads) : io_seq(io.q, seq, io.heads)) + f0;
    const ST* vs = val + (mode == 0 ? io_seq(io.v, seq, io.heads) : io_seq(io.dy, seq, io.heads));

    float acc[W::NT][4], accz[1][4];  // accz: the [1 | c den] tile (group-0 warps)
    zero_acc(acc);
    zero_acc(accz);
    float mf = ELA_UNITS ? neg_inf<float>() : 0.f;  // thread f < F: the units of acc (mode 0)
    if (mode == 0 && init_s) {
        const float* is = init_s + ((i64)seq * FA + f0) * DV;
#pragma unroll
        for (int nt = 0; nt < W::NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[nt][e] = is[ACC_ROW(row0, e) * DV + j0 + ACC_COL(col0, nt, e)];
        if (zw) {
            accz[0][0] = init_z[(i64)seq * FA + f0 + ACC_ROW(row0, 0)];
            accz[0][2] = init_z[(i64)seq * FA + f0 + ACC_ROW(row0, 2)];
        }
        if (tid < F) mf = init_m[(i64)seq * FA + f0 + tid];
    }
    // Columns DVB + 1 .. DVB + 7 of [V | 1] stay 0; so do columns 4 .. 15 of the weight tile.
    for (int e = tid; e < P * C * 8; e += ELA_THREADS) vsm[(e / 8) * LDV + DVB + e % 8] = to_mt(0.f);
#if ELA_FMAP == 2
    if (EXT)
        for (int e = tid; e < P * C * 12; e += ELA_THREADS) wmt[(e / 12) * LDW + 4 + e % 12] = to_mt(0.f);
#endif

    // The chunk handled as the `p`-th of step `it` (-1: none, past the end of the walk).
    auto chunk_of = [&](int it, int p) {
        const int k = it + p;
        return k >= ncs ? -1 : mode == 0 ? cbeg + k : cend - 1 - k;
    };
    auto rows_of = [&](int c) { return c < 0 ? 0 : (int)min((i64)C, T - (i64)c * C); };

    // Registers holding a step's inputs, loaded while the previous step's products run.
    RAW4 px[P][NX], pv[P][NVV];
    ela_f4 pr[P];
    float m_from[P], m_to[P];  // mode 1, thread f < F: the slot units around each chunk
    auto fetch = [&](int it) {
#pragma unroll
        for (int p = 0; p < P; ++p) {
            const int c = chunk_of(it, p), n = rows_of(c);
            const i64 t0 = (i64)max(c, 0) * C;
#pragma unroll
            for (int i = 0; i < NX; ++i) {
                const int e = tid + i * ELA_THREADS, r = e / (F / 4), cq = e % (F / 4);
                if (!DOT) px[p][i] = r < n ? ld_raw4(xs + (t0 + r) * lx + 4 * cq) : raw_zero();
            }
#pragma unroll
            for (int i = 0; i < NVV; ++i) {
                const int e = tid + i * ELA_THREADS, r = e / (DVB / 4), cq = e % (DVB / 4);
                if (!DOT) pv[p][i] = r < n ? ld_raw4(vs + (t0 + r) * lv + j0 + 4 * cq) : raw_zero();
            }
            if (mode == 1 && tid < C) {
#if SCAN_DOT
                // u and den only: c is what this scan writes (a first column block may be writing
                // it now).
                pr[p].x = 0.f, pr[p].y = 1.f, pr[p].z = 0.f, pr[p].w = 0.f;
                if (tid < n) {
                    const float2 h = *(const float2*)(rows + seq * T + t0 + tid);
                    pr[p].x = h.x, pr[p].y = h.y;
                }
#else
                if (tid < n) pr[p] = rows[seq * T + t0 + tid];
                else pr[p].x = 0.f, pr[p].y = 1.f, pr[p].z = 0.f, pr[p].w = 0.f;
#endif
            }
#if SCAN_DOT
            if (DOT) {
                // The chunk's dy and y rows, whole, for stage (2)'s dots (rows past its end are
                // not copied: their dots are not used).
                constexpr int EPV = 16 / (int)sizeof(ST), VPR = DV / EPV, RPP = ELA_THREADS / VPR;
                static_assert(ELA_THREADS % VPR == 0 && C % RPP == 0, "copy split");
                const ST* ys = yin + io_seq(io.y, seq, io.heads);
                const int cv = EPV * (tid % VPR);
#pragma unroll
                for (int r = tid / VPR; r < C; r += RPP) {
                    if (r >= n) break;
                    ST* dst = ydy + (p * C + r) * 2 * SCAN_LDY + cv;
                    cp_async16(dst, vs + (t0 + r) * lv + cv);
                    cp_async16(dst + SCAN_LDY, ys + (t0 + r) * io.y[2] + cv);
                }
                // ...and its q rows (this block's features), for stage (4), in place of px.
                constexpr int QPR = F / EPV, QRP = ELA_THREADS / QPR;
                static_assert(ELA_THREADS % QPR == 0 && C % QRP == 0, "copy split");
                const int cx = EPV * (tid % QPR);
#pragma unroll
                for (int r = tid / QPR; r < C; r += QRP) {
                    if (r >= n) break;
                    cp_async16(qsm + (p * C + r) * LDF + cx, xs + (t0 + r) * lx + cx);
                }
            }
#endif
            if (mode == 1 && tid < F) {
                // A missing chunk keeps the units (factor 1).
                m_from[p] = c < 0 ? 0.f : sm[(causal ? c + 1 : nch) * (i64)FA + tid];
                m_to[p] = c < 0 ? 0.f : causal ? sm[(i64)c * FA + tid] : m_from[p];
            }
        }
#if SCAN_DOT
        // One group for the step's copies: stage (2)'s wait_group 0 covers committed groups only.
        if (DOT) cp_async_commit();
#endif
    };
    // The state in f32: s[f * DV + j] for this block's features f and columns j, z[f], m[f] (m
    // may be null).
    auto store_f32 = [&](float* s, float* z, float* m) {
#pragma unroll
        for (int nt = 0; nt < W::NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[ACC_ROW(row0, e) * DV + j0 + ACC_COL(col0, nt, e)] = acc[nt][e];
        if (lead && zw) {
            z[ACC_ROW(row0, 0)] = accz[0][0];
            z[ACC_ROW(row0, 2)] = accz[0][2];
        }
        if (m && lead && tid < F) m[tid] = mf;
    };
    auto store_slot = [&](i64 slot) {
        if (local) {
            if (!seg.s) return;
            const i64 at = seq * nslot + slot;
            store_f32(seg.s + (at * FA + f0) * DV, seg.z + at * FA + f0, mode == 0 ? seg.m + at * FA + f0 : nullptr);
            return;
        }
        MT* dst = ss + slot * FA * DV;
#pragma unroll
        for (int nt = 0; nt < W::NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; e += 2)
                store_mt2(dst + ACC_ROW(row0, e) * DV + j0 + ACC_COL(col0, nt, e), acc[nt][e], acc[nt][e + 1]);
        if (lead && zw) {
            sz[slot * FA + ACC_ROW(row0, 0)] = accz[0][0];
            sz[slot * FA + ACC_ROW(row0, 2)] = accz[0][2];
        }
        if (mode == 0 && lead && tid < F) slot_m[(seq * ((i64)nch + 1) + slot) * FA + f0 + tid] = mf;
    };
    fetch(0);

    for (int it = 0; it < ncs; it += P) {
        // (1) Slot of the step's first chunk: the state before it (mode 0) or U, w of the rows
        //     after it (mode 1).
        if (causal) store_slot(chunk_of(it, 0));
        // (2) Stage each chunk's values and [1 | c den] column; the keys' column maxima (mode 0).
        if (DOT) cp_async_wait<0>();  // this thread's dy / y copies have landed
        __syncthreads();  // the previous step's products have read psi, vsm
#pragma unroll
        for (int p = 0; p < P; ++p) {
            const int n = rows_of(chunk_of(it, p));
            MT* vp = vsm + p * C * LDV;
            if (mode == 1 && tid < C) {
                float* ri = rinf + (p * C + tid) * 4;
                ri[0] = pr[p].x, ri[1] = pr[p].y;
                if (!DOT) ri[2] = pr[p].z, ri[3] = pr[p].w;  // (with DOT, ri[2] is the dot below)
            }
            if (tid < C && !DOT) vp[tid * LDV + DVB] = to_mt(tid < n ? (mode == 0 ? 1.f : pr[p].z * pr[p].y) : 0.f);
#pragma unroll
            for (int i = 0; i < NVV; ++i) {
                const int e = tid + i * ELA_THREADS, r = e / (DVB / 4), cq = e % (DVB / 4);
                MT o[4];
#if SCAN_DOT
                // (With the dots, this block's dy columns come from the copy of the whole rows.)
                if (DOT) pv[p][i] = r < n ? *(const RAW4*)(ydy + (p * C + r) * 2 * SCAN_LDY + j0 + 4 * cq) : raw_zero();
#endif
                raw_to_mt4(pv[p][i], o);
                st_mt4(vp + r * LDV + 4 * cq, from_mt(o[0]), from_mt(o[1]), from_mt(o[2]), from_mt(o[3]));
            }
            if (mode == 0 && ELA_UNITS) {
                float cm[4] = {neg_inf<float>(), neg_inf<float>(), neg_inf<float>(), neg_inf<float>()};
#pragma unroll
                for (int i = 0; i < NX; ++i) {
                    const int e = tid + i * ELA_THREADS, r = e / (F / 4);
                    float o[4];
                    unpack4(px[p][i], o);
#pragma unroll
                    for (int j = 0; j < 4; ++j)
                        if (r < n) cm[j] = fmaxf(cm[j], lfeat(o[j]));
                }
                // Column maxima of this warp's key rows (lanes l and l + F/4 share columns).
#pragma unroll
                for (int o = F / 4; o < 32; o <<= 1)
#pragma unroll
                    for (int j = 0; j < 4; ++j) cm[j] = fmaxf(cm[j], __shfl_xor_sync(0xffffffffu, cm[j], o));
                if (lane < F / 4)
#pragma unroll
                    for (int j = 0; j < 4; ++j) part[(p * ELA_WARPS + warp) * F + 4 * (tid % (F / 4)) + j] = cm[j];
            }
        }
#if SCAN_DOT
        if (DOT) {
            // Each row's dot dy . y (the column c den), SCAN_DOT_TPR threads a row, from the copies.
            constexpr int TPR = SCAN_DOT_TPR, EPV = 16 / (int)sizeof(ST), VPR = DV / EPV;
            const int rr = tid / TPR, part = tid % TPR, p = rr / C, r = rr % C;
            const ST* dr = ydy + rr * 2 * SCAN_LDY;
            float s0 = 0.f, s1 = 0.f;
            if (r < rows_of(chunk_of(it, p))) {
#pragma unroll 1
                for (int v = part; v < VPR; v += TPR) {
                    const ela_u4 a = *(const ela_u4*)(dr + EPV * v), b = *(const ela_u4*)(dr + SCAN_LDY + EPV * v);
                    float x[4], y[4];
                    unpack4(RAW4{a.x, a.y}, x);
                    unpack4(RAW4{b.x, b.y}, y);
#pragma unroll
                    for (int k = 0; k < 4; ++k) s0 = fmaf(x[k], y[k], s0);
                    unpack4(RAW4{a.z, a.w}, x);
                    unpack4(RAW4{b.z, b.w}, y);
#pragma unroll
                    for (int k = 0; k < 4; ++k) s1 = fmaf(x[k], y[k], s1);
                }
            }
            float s = s0 + s1;
#pragma unroll
            for (int o = 1; o < TPR; o <<= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            if (part == 0) {
                vsm[rr * LDV + DVB] = to_mt(s);  // (rr = p * C + r: row r of chunk p's tile)
                rinf[rr * 4 + 2] = s;
            }
        }
#endif
        __syncthreads();
        // (3) The units after each chunk and the factors that move the state to them.
#if SCAN_DOT
        if (DOT && cb == 0 && tid >= ELA_THREADS - P * C) {
            // The first column block gives ela_bwd c = dot / den (threads the units below leave idle).
            const int rr = tid - (ELA_THREADS - P * C), c = chunk_of(it, rr / C), r = rr % C;
            if (c >= 0 && r < rows_of(c)) rows[seq * T + (i64)c * C + r].z = rinf[rr * 4 + 2] / rinf[rr * 4 + 1];
        }
#endif
        if (tid < F) {
            float from = mf;
#pragma unroll
            for (int p = 0; p < P; ++p) {
                float to;
                if (mode == 0) {
                    float mx = neg_inf<float>();
#pragma unroll
                    for (int w = 0; w < ELA_WARPS; ++w) mx = fmaxf(mx, part[(p * ELA_WARPS + w) * F + tid]);
                    to = unit_max(fmaxf(from, mx));  // a missing chunk's maxima are -inf: units kept
                } else {
                    from = m_from[p];
                    to = m_to[p];
                }
                rsc[p * F + tid] = units_factor(from, to);
                mto[p * F + tid] = to;
                from = to;
            }
        }
        __syncthreads();
        // (4) Features from the registers: mode 0 psi = exp(k - m'); mode 1
        //     phi_b / den = exp(q + m^(c) - u) / den (eqs. (S'), (R); 1/den folds g = dy / den in).
        // A thread's x vectors all hold the same four features (ELA_THREADS is a multiple of F / 4),
        // so their units are one vector load per chunk (mto and rinf are 16-byte aligned in every
        // carve). Rows past the chunk's end were loaded as zeros; exp_if gives them 0 features.
        const int fx = 4 * (tid % (F / 4));
#pragma unroll
        for (int p = 0; p < P; ++p) {
            const int n = rows_of(chunk_of(it, p));
            const ela_f4 m4 = *(const ela_f4*)(mto + p * F + fx);
            const float mt[4] = {m4.x, m4.y, m4.z, m4.w};
#pragma unroll
            for (int i = 0; i < NX; ++i) {
                const int r = (tid + i * ELA_THREADS) / (F / 4);
                float o[4];
#if SCAN_DOT
                // (With the dots, q comes from its copy; rows past the chunk's end were not copied.)
                if (DOT) px[p][i] = r < n ? *(const RAW4*)(qsm + (p * C + r) * LDF + 4 * (tid % (F / 4))) : raw_zero();
#endif
                unpack4(px[p][i], o);
#pragma unroll
                for (int j = 0; j < 4; ++j) o[j] = lfeat(o[j]);
                float u = 0.f, inv = 1.f;
                if (mode == 1) {
                    const ela_f4 ri = *(const ela_f4*)(rinf + (p * C + r) * 4);
                    u = ri.x, inv = 1.f / ri.y;
                }
                float ex[4];
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    ex[j] = mode == 0 ? feat_if(r < n, o[j] - mt[j]) : feat_if(r < n, o[j] + mt[j] - u) * inv;
                st_mt4(psi + (p * C + r) * LDF + fx, ex[0], ex[1], ex[2], ex[3]);
#if ELA_FMAP == 2
                if (EXT) ext_weights<mode, F>(wmt + (p * C + r) * LDW, ext, o, r < n, f0 == 0, inv);
#endif
            }
        }
        if (!DOT && it + P < ncs) fetch(it + P);  // the registers are free now
        __syncthreads();
        // With the dots the next step's copies overwrite the q rows stage (4) has just read, so
        // they wait for every thread to be past it; they land while (5) multiplies.
        if (DOT && it + P < ncs) fetch(it + P);
        // (5) The chunks' products in order, the second chunk's slot between them.
#pragma unroll
        for (int p = 0; p < P; ++p) {
            const int c = chunk_of(it, p);
            if (c < 0) break;
            if (p > 0 && causal) store_slot(c);
#pragma unroll
            for (int nt = 0; nt < W::NT; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[nt][e] *= rsc[p * F + ACC_ROW(row0, e)];
#pragma unroll
            for (int e = 0; e < 4; ++e) accz[0][e] *= rsc[p * F + ACC_ROW(row0, e)];
            if (tid < F) mf = mto[p * F + tid];
            mm_tile<W::NT, true, false>(acc, psi + p * C * LDF, LDF, vsm + p * C * LDV, LDV, row0, col0, C);
            if (W::group() == 0)
                mm_tile<1, true, false>(accz, psi + p * C * LDF, LDF, vsm + p * C * LDV, LDV, row0, DVB, C);
        }
#if ELA_FMAP == 2
        // The chunks' own sums for the signed kernels, from the tiles the products have just
        // read (they stay until the next step's first barrier). The state does not depend on
        // them, but the next step's barriers wait for them: measured on an H100 they add 0.1-0.2 ms
        // to a bf16 D = 64 walk and 1.0-1.2 ms to an f32 D = 128 one (docs/benchmarks.md, "third
        // round").
        if (EXT) {
            int nrows[P];
#pragma unroll
            for (int p = 0; p < P; ++p) nrows[p] = rows_of(chunk_of(it, p));
            auto out = [&](int p) -> float* {
                const int c = chunk_of(it, p);
                return c < 0 ? nullptr : ext.sums + (f0 / F) * ext.plane + ((i64)seq * (nch + 1) + c) * EXT_SUM_LD;
            };
            ext_chunk_sums<mode, LDV, LDW, P>(out, vsm, wmt, rinf, nrows, j0, f0 == 0);
        }
#endif
    }

    if (split) {
        // The run's end state (mode 0: at chunk cend, relative to the run's start; mode 1: the
        // accumulators of the run's rows, in the units of slot cbeg).
        const i64 at = (i64)seq * runs + run;
        store_f32(seg.end_s + (at * FA + f0) * DV, seg.end_z + at * FA + f0, mode == 0 ? seg.end_m + at * FA + f0 : nullptr);
        return;
    }
    if (mode == 0 || !causal) store_slot(mode == 0 ? nch : 0);  // final state / global U, w
    // ...and in f32 for a carried state (prefill).
    if (mode == 0 && fin_s)
        store_f32(fin_s + ((i64)seq * FA + f0) * DV, fin_z + (i64)seq * FA + f0, fin_m + (i64)seq * FA + f0);
}

#define SCAN_PARAMS                                                                                            \
    const ST *x, const ST *val, MT *slot_s, float *slot_z, float *slot_m, SCAN_ROWS_T *rows, const float *init_s, \
        const float *init_z, const float *init_m, float *fin_s, float *fin_z, float *fin_m, ScanSegs seg, ElaIo io,  \
        ExtScan ext, i64 T, int nch
#define SCAN_ARGS x, val, slot_s, slot_z, slot_m, rows, init_s, init_z, init_m, fin_s, fin_z, fin_m, seg, io, ext, T, nch
#if SCAN_DOT
#define SCAN_YIN_PARAM , const ST* yin
#define SCAN_YIN , yin
#else
#define SCAN_YIN_PARAM
#define SCAN_YIN
#endif
extern "C" __global__ void __launch_bounds__(ELA_THREADS, SCAN_MINB) ela_scan_m0(SCAN_PARAMS, int causal SCAN_YIN_PARAM) {
    scan_walk<0, false>(SCAN_ARGS, causal SCAN_YIN);
}
extern "C" __global__ void __launch_bounds__(ELA_THREADS, SCAN_MINB) ela_scan_m1(SCAN_PARAMS, int causal SCAN_YIN_PARAM) {
    scan_walk<1, false>(SCAN_ARGS, causal SCAN_YIN);
}
#if ELA_FMAP == 2
// The same walks making the signed kernels' chunk sums as well (`ext`; Identity modules only):
// kernels of their own, so that the plain walks keep their code and registers.
extern "C" __global__ void __launch_bounds__(ELA_THREADS, SCAN_MINB) ela_scan_x0(SCAN_PARAMS, int causal SCAN_YIN_PARAM) {
    scan_walk<0, true>(SCAN_ARGS, causal SCAN_YIN);
}
extern "C" __global__ void __launch_bounds__(ELA_THREADS, SCAN_MINB) ela_scan_x1(SCAN_PARAMS, int causal SCAN_YIN_PARAM) {
    scan_walk<1, true>(SCAN_ARGS, causal SCAN_YIN);
}
#endif
#undef SCAN_PARAMS
#undef SCAN_ARGS
#undef SCAN_YIN_PARAM
#undef SCAN_YIN
