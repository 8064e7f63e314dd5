// Rank-one extra features on the Identity tiles: the squared-Euclidean kernels and the blueprint
// as Identity (ELA_FMAP 2) plus per-row terms that prefix sums give (docs/ela.md, "The signed
// kernels on the Identity tiles"). Compiled in the chunk module after chunk_bwd.cu, for
// ops/ela/signed.rs. With s the key scale (+2 sum-sq, -2 sub-sq, 1 the blueprint):
//
//   sum/sub-sq  k(q, k) = s (q . k) + |q|^2 + |k|^2 = s (q . k + a_i + g_j)
//               a_i = |q_i|^2 / s, g_j = |k_j|^2 / s (kind 0)
//   blueprint   y_i = sum_j (q_i . k'_j + g_j) v_j / sum_j (q_i . k'_j + g_j)
//               k'_j = g_j k_j, g_j = |k_j|^2 + 1, a_i = 0 (kind 1: the query factor
//               |q_i|^2 + 1 multiplies numerator and denominator alike and cancels)
//
// The scale cancels in y, so y is Identity's attention with the entries A_ij = q_i . k_j + a_i +
// g_j. Within a chunk, `ela_out` and `ela_bwd` add a_i + g_j to the visible entries of their
// block A (ElaExt, chunk_out.cu); what the keys before the chunk add, a_i V1 + V2 to the numerator
// and a_i cnt + G to the denominator (V1 = sum_j v_j, V2 = sum_j g_j v_j, G = sum_j g_j, cnt the
// count of those keys), comes from the chunk sums made here. The row info then holds the
// kernel's denominator over s, the quantity the Identity backward divides by. The backward, with
// G'_i = dy_i / den'_i and c_i = G'_i . y_i, takes the gradient D' of those entries, Identity's D,
// and adds
//
//   da_i = sum_j D'_ij                 (row sums; the keys before the chunk: G'_i . V1 - c_i cnt)
//   dg_j = sum_i D'_ij                 (column sums; the rows after it: v_j . RG - Rc)
//   dv_j += RaG + g_j RG               (the rows after it; within the chunk A'^T G' has them)
//   kind 0: dq_i += da_i 2 q_i / s, dk_j += dg_j 2 k_j / s
//   kind 1: dk_j = g_j dk'_j + 2 k_j (k_j . dk'_j + dg_j)   (ela_bwd's dk epilogue, bp_dk_epilogue)
//
// with RG = sum_i G'_i, RaG = sum_i a_i G'_i, Rc = sum_i c_i over the rows after the chunk (or
// all). Each chunk's own sums come from the chunk scans, which read those rows anyway (ExtScan,
// chunk_fwd.cu: V1, V2, G from the forward scan over k and v, RG, RaG, Rc from the reverse scan
// over q and dy); the backward takes V1 from the forward's sums. The blueprint's forward scan
// reads the keys k' = g k, which need whole rows, so `ela_bp_sums` makes them first, with each
// row's g and the chunk's sums. `ela_ext_scan` turns the chunk sums into exclusive prefix (or
// suffix) sums with the total in slot nch: the slots' indexing, so the chunk kernels read the
// sums of chunk c where they read its state.

// Rows per segment: the chunk kernels' chunks.
#define EXT_SEG ELA_C
#define EXT_THREADS 256
#define EXT_WARPS (EXT_THREADS / 32)
// The blueprint's forward chunk sums into sums[seq][seg] (EXT_SUM_LD floats): V1 = sum v, V2 =
// sum g v, G = sum g, with each row's (0, g) into `ag` and its keys k' = g k into `kp` (packed
// [sequence][T][D], what the chunk kernels read as k). A memory-bound pass, so its rows are read
// and written with a warp's lanes along them, four consecutive elements a lane, so each access
// instruction of a warp covers whole rows (RowPart's split, a thread's elements contiguous, has
// each instruction stride across rows). Each thread then sums four value columns over a group of
// rows; the groups' partial sums meet in shared memory.
extern "C" __global__ void __launch_bounds__(EXT_THREADS) ela_bp_sums(float* __restrict__ sums, float2* __restrict__ ag,
                                        ST* __restrict__ kp, const ST* __restrict__ k, const ST* __restrict__ v,
                                        ElaIo io, i64 T, int nseg) {
    // NQ column quads, each summed by RG row groups.
    constexpr int NQ = ELA_DV / 4, RG = EXT_THREADS / NQ;
    static_assert(EXT_THREADS % NQ == 0, "column split");
    // Key rows: L lanes a row, RPW rows a warp, PER quads a lane, U rows a thread.
    constexpr int L = ELA_D / 4 < 32 ? ELA_D / 4 : 32, RPW = 32 / L, PER = ELA_D / 4 / L;
    constexpr int GROUP = EXT_WARPS * RPW, U = EXT_SEG / GROUP;
    static_assert(U * GROUP == EXT_SEG && PER * L * 4 == ELA_D, "row split");
    __shared__ float gs[EXT_SEG];
    __shared__ float part[2][RG][ELA_DV];
    const int seg = blockIdx.x, seq = blockIdx.y, tid = threadIdx.x, col = 4 * (tid % NQ), rg = tid / NQ;
    const i64 t0 = (i64)seg * EXT_SEG;
    const int n = (int)min((i64)EXT_SEG, T - t0);
    const ST* vg = v + io_seq(io.v, seq, io.heads) + t0 * io.v[2];
    const ST* kg = k + io_seq(io.k, seq, io.heads) + t0 * io.k[2];
    ST* kpg = kp + ((i64)seq * T + t0) * ELA_D;
    const int lr = (tid >> 5) * RPW + (tid & 31) / L, lp = (tid & 31) % L;  // first row, lane in it
    float x[U][PER][4];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
        for (int h = 0; h < PER; ++h) {
            const int r = lr + u * GROUP;
            if (r < n) unpack4(ld_raw4(kg + r * io.k[2] + 4 * (lp + h * L)), x[u][h]);
            else x[u][h][0] = x[u][h][1] = x[u][h][2] = x[u][h][3] = 0.f;
        }
#pragma unroll
    for (int u = 0; u < U; ++u) {
        const int r = lr + u * GROUP;
        float kk = 0.f;
#pragma unroll
        for (int h = 0; h < PER; ++h)
#pragma unroll
            for (int e = 0; e < 4; ++e) kk = fmaf(x[u][h][e], x[u][h][e], kk);
#pragma unroll
        for (int o = L / 2; o > 0; o >>= 1) kk += __shfl_xor_sync(0xffffffffu, kk, o);
        const float g = kk + 1.f;
        if (lp == 0) gs[r] = r < n ? g : 0.f;
        if (r < n)
#pragma unroll
            for (int h = 0; h < PER; ++h) {
                ST* o = kpg + r * ELA_D + 4 * (lp + h * L);
                store_st2(o, g * x[u][h][0], g * x[u][h][1]);
                store_st2(o + 2, g * x[u][h][2], g * x[u][h][3]);
            }
    }
    __syncthreads();
    if (tid < n) ag[seq * T + t0 + tid] = float2{0.f, gs[tid]};
    // Thread t sums columns 4 (t % NQ) .. + 3 over the rows t / NQ, t / NQ + RG, ...
    float s1[4] = {0.f, 0.f, 0.f, 0.f}, s2[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll 4
    for (int r = rg; r < n; r += RG) {
        float x[4];
        unpack4(ld_raw4(vg + r * io.v[2] + col), x);
        const float g = gs[r];
#pragma unroll
        for (int e = 0; e < 4; ++e) s1[e] += x[e], s2[e] += g * x[e];
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) part[0][rg][col + e] = s1[e], part[1][rg][col + e] = s2[e];
    __syncthreads();
    float* out = sums + ((i64)seq * (nseg + 1) + seg) * EXT_SUM_LD;
    for (int c = tid; c < ELA_DV; c += EXT_THREADS) {
        float a = 0.f, b = 0.f;
        for (int g = 0; g < RG; ++g) a += part[0][g][c], b += part[1][g][c];
        out[c] = a;
        out[ELA_DV + c] = b;
    }
    if (tid < 32) {
        float s = 0.f;
        for (int r = tid; r < n; r += 32) s += gs[r];
        s = warp_sum(s);
        if (tid == 0) out[EXT_SUM_SC] = s;
    }
}

// Chunk sums to exclusive prefix sums, each sequence's total in slot nseg; a thread per column,
// adding the `parts` feature blocks' planes (`plane` floats apart; ExtScan) into the first.
// Forward (bwd 0): V1, V2 and G, prefix sums. Backward: RG, RaG and Rc, suffix sums (what the
// rows after a segment add). The walk loads EXT_SCAN_BATCH segments before it adds them: the
// loads are independent, so they overlap, where one load a step made the walk a chain of nseg
// memory latencies.
#define EXT_SCAN_BATCH 8
extern "C" __global__ void ela_ext_scan(float* sums, int nseg, int bwd, i64 plane, int parts) {
    const int col = threadIdx.x;
    if (col > 2 * ELA_DV) return;
    // The column's place in the row: [V1 | V2] or [RG | RaG], then the scalar.
    const int p = col == 2 * ELA_DV ? EXT_SUM_SC : bwd ? ELA_DV + col : col;
    float* base = sums + (i64)blockIdx.x * (nseg + 1) * EXT_SUM_LD + p;
    float acc = 0.f;
    for (int s0 = 0; s0 < nseg; s0 += EXT_SCAN_BATCH) {
        float x[EXT_SCAN_BATCH] = {};
#pragma unroll 1
        for (int f = 0; f < parts; ++f)
#pragma unroll
            for (int u = 0; u < EXT_SCAN_BATCH; ++u) {
                const int s = s0 + u;
                if (s < nseg) x[u] += base[(i64)(bwd ? nseg - 1 - s : s) * EXT_SUM_LD + f * plane];
            }
#pragma unroll
        for (int u = 0; u < EXT_SCAN_BATCH; ++u) {
            const int s = s0 + u;
            if (s < nseg) base[(i64)(bwd ? nseg - 1 - s : s) * EXT_SUM_LD] = acc;
            acc += x[u];
        }
    }
    base[(i64)nseg * EXT_SUM_LD] = acc;
}
