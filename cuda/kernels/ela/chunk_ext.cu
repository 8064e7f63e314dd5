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
// all). `ela_ext_sums` takes each chunk's sums (and, forward, each row's a and g), `ela_ext_scan`
// turns them into exclusive prefix (or suffix) sums with the total in slot nch: the slots'
// indexing, so the chunk kernels read the sums of chunk c where they read its state.

// Rows per segment: the chunk kernels' chunks.
#define EXT_SEG ELA_C
#define EXT_THREADS 256
#define EXT_WARPS (EXT_THREADS / 32)
// Per row of the segment: a_i, g_i.
struct ExtRow {
    float a[EXT_SEG], g[EXT_SEG];
};

// Each row's a and g (0 past n), rows spread over the block as the chunk kernels read them
// (RowPart, tile.cuh: TPR threads a row, 16-byte loads); `kr` keeps this thread's part of its
// key row. Returns the row's g to every thread of the row.
__device__ float ext_rows_of(ExtRow& er, RowPart<ELA_D>& kr, const ST* __restrict__ qg, const ST* __restrict__ kg,
                             i64 lq, i64 lk, int n, int kind, float inv_s) {
    typedef RowPart<ELA_D> RP;
    kr.load(kg, lk, n);
    float qq = 0.f, kk = 0.f;
#pragma unroll
    for (int e = 0; e < RP::EPT; ++e) kk += kr.x[e] * kr.x[e];
    if (kind == 0) {
        RP qr;
        qr.load(qg, lq, n);
#pragma unroll
        for (int e = 0; e < RP::EPT; ++e) qq += qr.x[e] * qr.x[e];
    }
    const float a = RP::sum(qq), g = RP::sum(kk);
    const int r = RP::row();
    const float gr = r >= n ? 0.f : kind == 0 ? g * inv_s : g + 1.f;
    if (RP::head()) {
        er.a[r] = (kind == 0 && r < n) ? a * inv_s : 0.f;
        er.g[r] = gr;
    }
    return gr;
}

// Chunk sums into sums[seq][seg] (EXT_SUM_LD floats). Forward (dy null): V1 = sum v, V2 = sum g v,
// G = sum g, each row's (a, g) into `ag` and, for the blueprint, its keys k' = g k into `kp`
// (packed [sequence][T][D], what the chunk kernels read as k). Backward: V1, RG = sum G', RaG = sum a G',
// Rc = sum c, with a from `ag`, den from the row info and c from there too, or, with `yin`, from
// dy . y / den (so that the sums need nothing the reverse scan writes, and can run beside it).
// Each thread sums four columns over a group of rows; the groups' partial sums meet in shared
// memory.
extern "C" __global__ void __launch_bounds__(EXT_THREADS) ela_ext_sums(float* __restrict__ sums, float2* __restrict__ ag,
                                        ST* __restrict__ kp, const ST* __restrict__ q, const ST* __restrict__ k, const ST* __restrict__ v,
                                        const ST* __restrict__ dy, const ST* __restrict__ yin, const ela_f4* rows, ElaIo io, i64 T,
                                        int nseg, int kind, int scale) {
    const float inv_s = 1.f / (float)scale;  // exact: scale is 2, -2 or 1
    // NQ column quads, each summed by RG row groups.
    constexpr int NQ = ELA_DV / 4, RG = EXT_THREADS / NQ;
    static_assert(EXT_THREADS % NQ == 0, "column split");
    __shared__ ExtRow er;
    __shared__ float part[3][RG][ELA_DV];
    __shared__ float csum[EXT_WARPS];
    const int seg = blockIdx.x, seq = blockIdx.y, tid = threadIdx.x, col = 4 * (tid % NQ), rg = tid / NQ;
    const i64 t0 = (i64)seg * EXT_SEG;
    const int n = (int)min((i64)EXT_SEG, T - t0);
    const ST* vg = v + io_seq(io.v, seq, io.heads) + t0 * io.v[2];
    const ela_f4* rw = rows + seq * T + t0;
    float2* agr = ag + seq * T + t0;
    if (!dy) {
        const ST* qg = q + io_seq(io.q, seq, io.heads) + t0 * io.q[2];
        const ST* kg = k + io_seq(io.k, seq, io.heads) + t0 * io.k[2];
        RowPart<ELA_D> kr;
        const float g = ext_rows_of(er, kr, qg, kg, io.q[2], io.k[2], n, kind, inv_s);
        if (kind == 1 && RowPart<ELA_D>::row() < n) {
            // k' = g k, from the key row this thread holds.
            ST* kpr = kp + ((i64)seq * T + t0 + RowPart<ELA_D>::row()) * ELA_D + RowPart<ELA_D>::col0();
#pragma unroll
            for (int e = 0; e < RowPart<ELA_D>::EPT; e += 2) store_st2(kpr + e, g * kr.x[e], g * kr.x[e + 1]);
        }
        __syncthreads();
        if (tid < n) agr[tid] = float2{er.a[tid], er.g[tid]};
    } else {
        // (er.g holds each row's 1 / den here: one division a row, not one an element. Only den
        // is read from the row info: with `yin` the reverse scan may be writing c beside it.)
        if (tid < EXT_SEG) er.a[tid] = tid < n ? agr[tid].x : 0.f, er.g[tid] = tid < n ? 1.f / ((const float*)(rw + tid))[1] : 0.f;
        __syncthreads();
        // Rc, this segment's sum of c: c = dy . y / den from the rows themselves (yin; rows
        // read as in ext_rows_of), else from the row info, where ela_rows_dot put it.
        float cs = 0.f;
        if (yin) {
            const ST* dyg = dy + io_seq(io.dy, seq, io.heads) + t0 * io.dy[2];
            const ST* yg = yin + io_seq(io.y, seq, io.heads) + t0 * io.y[2];
            typedef RowPart<ELA_DV> RP;
            RP dr, yr;
            dr.load(dyg, io.dy[2], n);
            yr.load(yg, io.y[2], n);
            float x = 0.f;
#pragma unroll
            for (int e = 0; e < RP::EPT; ++e) x += dr.x[e] * yr.x[e];
            x = RP::sum(x);
            if (RP::head() && RP::row() < n) cs = x * er.g[RP::row()];
            cs = warp_sum(cs);
        } else if (tid < 32) {
            for (int r = tid; r < n; r += 32) cs += rw[r].z;
            cs = warp_sum(cs);
        }
        if ((tid & 31) == 0) csum[tid >> 5] = cs;
    }
    // Thread t sums columns 4 (t % NQ) .. + 3 over the rows t / NQ, t / NQ + RG, ...
    float s1[4] = {0.f, 0.f, 0.f, 0.f}, s2[4] = {0.f, 0.f, 0.f, 0.f}, s3[4] = {0.f, 0.f, 0.f, 0.f};
    if (!dy) {
#pragma unroll 4
        for (int r = rg; r < n; r += RG) {
            float x[4];
            unpack4(ld_raw4(vg + r * io.v[2] + col), x);
            const float g = er.g[r];
#pragma unroll
            for (int e = 0; e < 4; ++e) s1[e] += x[e], s2[e] += g * x[e];
        }
    } else {
        const ST* dyg = dy + io_seq(io.dy, seq, io.heads) + t0 * io.dy[2];
#pragma unroll 4
        for (int r = rg; r < n; r += RG) {
            float x[4], d4[4];
            unpack4(ld_raw4(vg + r * io.v[2] + col), x);
            unpack4(ld_raw4(dyg + r * io.dy[2] + col), d4);
            const float ig = er.g[r], a = er.a[r];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float gp = d4[e] * ig;
                s1[e] += x[e], s2[e] += gp, s3[e] += a * gp;
            }
        }
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) part[0][rg][col + e] = s1[e], part[1][rg][col + e] = s2[e], part[2][rg][col + e] = s3[e];
    __syncthreads();
    float* out = sums + ((i64)seq * (nseg + 1) + seg) * EXT_SUM_LD;
    for (int c = tid; c < ELA_DV; c += EXT_THREADS) {
        float a = 0.f, b = 0.f, d = 0.f;
        for (int g = 0; g < RG; ++g) a += part[0][g][c], b += part[1][g][c], d += part[2][g][c];
        out[c] = a;
        out[ELA_DV + c] = b;
        if (dy) out[2 * ELA_DV + c] = d;
    }
    if (tid < 32) {
        float s = 0.f;
        if (dy) {
            // (csum was written before the barrier above.)
            s = tid < EXT_WARPS ? csum[tid] : 0.f;
        } else {
            for (int r = tid; r < n; r += 32) s += er.g[r];
        }
        s = warp_sum(s);
        if (tid == 0) out[EXT_SUM_SC] = s;
    }
}

// Segment sums to exclusive prefix sums, each sequence's total in slot nseg; a thread per column.
// Forward sums (bwd 0): V1, V2 and G, all prefix sums. Backward: V1 a prefix sum, RG, RaG and Rc
// suffix sums (what the rows after a segment add). The walk loads EXT_SCAN_BATCH segments before
// it adds them: the loads are independent, so they overlap, where one load a step made the walk
// a chain of nseg memory latencies.
#define EXT_SCAN_BATCH 8
extern "C" __global__ void ela_ext_scan(float* sums, int nseg, int bwd) {
    const int col = threadIdx.x;
    if (col > (bwd ? EXT_SUM_SC : 2 * ELA_DV)) return;
    const int p = (bwd || col < 2 * ELA_DV) ? col : EXT_SUM_SC;  // the column's place in the row
    float* base = sums + (i64)blockIdx.x * (nseg + 1) * EXT_SUM_LD + p;
    const bool rev = bwd && p >= ELA_DV;
    float acc = 0.f;
    for (int s0 = 0; s0 < nseg; s0 += EXT_SCAN_BATCH) {
        float x[EXT_SCAN_BATCH];
#pragma unroll
        for (int u = 0; u < EXT_SCAN_BATCH; ++u) {
            const int s = s0 + u;
            x[u] = s < nseg ? base[(i64)(rev ? nseg - 1 - s : s) * EXT_SUM_LD] : 0.f;
        }
#pragma unroll
        for (int u = 0; u < EXT_SCAN_BATCH; ++u) {
            const int s = s0 + u;
            if (s < nseg) base[(i64)(rev ? nseg - 1 - s : s) * EXT_SUM_LD] = acc;
            acc += x[u];
        }
    }
    base[(i64)nseg * EXT_SUM_LD] = acc;
}
