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
// The blueprint's forward chunk sums into sums[seq][seg] (EXT_SUM_LD floats): V1 = sum v, V2 =
// sum g v, G = sum g, with each row's (0, g) into `ag` and its keys k' = g k into `kp` (packed
// [sequence][T][D], what the chunk kernels read as k). Each thread sums four columns over a group
// of rows; the groups' partial sums meet in shared memory.
extern "C" __global__ void __launch_bounds__(EXT_THREADS) ela_bp_sums(float* __restrict__ sums, float2* __restrict__ ag,
                                        ST* __restrict__ kp, const ST* __restrict__ k, const ST* __restrict__ v,
                                        ElaIo io, i64 T, int nseg) {
    // NQ column quads, each summed by RG row groups.
    constexpr int NQ = ELA_DV / 4, RG = EXT_THREADS / NQ;
    static_assert(EXT_THREADS % NQ == 0, "column split");
    typedef RowPart<ELA_D> RP;
    __shared__ float gs[EXT_SEG];
    __shared__ float part[2][RG][ELA_DV];
    const int seg = blockIdx.x, seq = blockIdx.y, tid = threadIdx.x, col = 4 * (tid % NQ), rg = tid / NQ;
    const i64 t0 = (i64)seg * EXT_SEG;
    const int n = (int)min((i64)EXT_SEG, T - t0);
    const ST* vg = v + io_seq(io.v, seq, io.heads) + t0 * io.v[2];
    {
        // Each row's g from the key row (read as the chunk kernels read rows), then k' = g k.
        RP kr;
        kr.load(k + io_seq(io.k, seq, io.heads) + t0 * io.k[2], io.k[2], n);
        float kk = 0.f;
#pragma unroll
        for (int e = 0; e < RP::EPT; ++e) kk += kr.x[e] * kr.x[e];
        const int r = RP::row();
        const float g = RP::sum(kk) + 1.f;  // (every lane takes part in the shuffles)
        if (RP::head()) gs[r] = r < n ? g : 0.f;
        if (r < n) {
            ST* kpr = kp + ((i64)seq * T + t0 + r) * ELA_D + RP::col0();
#pragma unroll
            for (int e = 0; e < RP::EPT; e += 2) store_st2(kpr + e, g * kr.x[e], g * kr.x[e + 1]);
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
