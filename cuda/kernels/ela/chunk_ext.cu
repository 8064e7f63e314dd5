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
// so y_i = (N_i + a_i V1_i + V2_i) / (n_i + a_i cnt_i + G_i), where N, n are Identity's numerator
// and denominator over the visible keys j (j <= i, or all), V1_i = sum_j v_j, V2_i = sum_j g_j v_j,
// G_i = sum_j g_j and cnt_i the count of visible keys. The tiles add the extra terms per row before
// the division (`ela_out`'s `ext`): the row's den' is the kernel's denominator over s, which is the
// quantity the Identity backward divides by, so `ela_bwd` gives the Identity part of every gradient
// unchanged (for the blueprint, the gradient of k'). `ela_ext_grads` adds the rest:
//
//   da_i = G'_i . V1_i - c_i cnt_i          (G'_i = dy_i / den'_i, c_i = G'_i . y_i)
//   dg_j = v_j . RG_j - Rc_j                (RG_j = sum_{i sees j} G'_i, Rc_j = sum c_i)
//   dv_j += RaG_j + g_j RG_j                (RaG_j = sum a_i G'_i)
//   kind 0: dq_i += da_i 2 q_i / s, dk_j += dg_j 2 k_j / s
//   kind 1: dk_j = g_j dk'_j + 2 k_j (k_j . dk'_j + dg_j)
//
// The sums run over segments of EXT_SEG rows: `ela_ext_sums` takes each segment's sums,
// `ela_ext_scan` turns them into exclusive prefix (or suffix) sums with the total in slot nseg,
// and `ela_ext_rows` / `ela_ext_grads` walk each segment's rows from its offset. Blocks of
// EXT_THREADS threads: every global row is read and written by all of them at once (coalesced,
// independent loads), staged in shared memory, where one thread per column walks the segment's
// rows (the running sums) and a warp per column block reduces the row dots. (The first version
// walked the global rows themselves, a load and a dependent store a row: 3.7 ms for the
// gradients' pass at B8 H16 T16k D64 f32 on an H100, where the whole Identity fwd+bwd takes 9.8.)

#define EXT_SEG 64
#define EXT_THREADS 256
#define EXT_WARPS (EXT_THREADS / 32)
// The sums' row: V1 at 0, then V2 (forward) or RG, RaG (backward) at DV and 2 DV, the scalar
// column (G forward, Rc backward) at 3 DV.
#define SUM_LD (3 * ELA_DV + 4)
#define SUM_SC (3 * ELA_DV)
// Row stride (floats) of a staged [EXT_SEG][DV] tile.
#define EXT_LDS (ELA_DV + 1)

// Per row of the segment: a_i, g_i (and, for the blueprint's backward, x_i = k_i . dk'_i).
struct ExtRow {
    float a[EXT_SEG], g[EXT_SEG], x[EXT_SEG];
};

// a and g of the segment's rows (and with `dkp`, x = k . dk'): warp w takes rows w, w + 8, ...,
// all its loads issued before the reductions. `qg` null: a is not needed (left 0), q not read.
__device__ void ext_rows_of(ExtRow& er, const ST* __restrict__ qg, const ST* __restrict__ kg,
                            const ST* __restrict__ dkp, i64 lq, i64 lk, int n, int kind, float inv_s) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float qq[EXT_SEG / EXT_WARPS], kk[EXT_SEG / EXT_WARPS], kd[EXT_SEG / EXT_WARPS];
#pragma unroll
    for (int u = 0; u < EXT_SEG / EXT_WARPS; ++u) {
        const int r = warp + u * EXT_WARPS;
        qq[u] = kk[u] = kd[u] = 0.f;
        if (r >= n) continue;
        for (int f = lane; f < ELA_D; f += 32) {
            const float kv = DT::load(kg[r * lk + f]);
            kk[u] += kv * kv;
            if (kind == 0 && qg) {
                const float qv = DT::load(qg[r * lq + f]);
                qq[u] += qv * qv;
            }
            if (dkp) kd[u] += kv * DT::load(dkp[r * ELA_D + f]);
        }
    }
#pragma unroll
    for (int u = 0; u < EXT_SEG / EXT_WARPS; ++u) {
        const int r = warp + u * EXT_WARPS;
        const float a = warp_sum(qq[u]), g = warp_sum(kk[u]), x = warp_sum(kd[u]);
        if (lane == 0 && r < EXT_SEG) {
            er.a[r] = (kind == 0 && r < n) ? a * inv_s : 0.f;
            er.g[r] = r >= n ? 0.f : kind == 0 ? g * inv_s : g + 1.f;
            er.x[r] = x;
        }
    }
}

// Stages n rows of `src` (row stride ld) into tile[r][c] (EXT_LDS), zeros past n; each value
// divided by its row's den' when `den` is given (G' = dy / den').
__device__ __forceinline__ void ext_stage(float* tile, const ST* __restrict__ src, i64 ld, int n,
                                          const ela_f4* __restrict__ den) {
    for (int e = threadIdx.x; e < EXT_SEG * ELA_DV; e += EXT_THREADS) {
        const int r = e / ELA_DV, c = e % ELA_DV;
        float x = r < n ? DT::load(src[r * ld + c]) : 0.f;
        if (den && r < n) x /= den[r].y;
        tile[r * EXT_LDS + c] = x;
    }
}

// The blueprint's key features k' = (|k|^2 + 1) k, packed [sequence][T][D]: a warp per row.
extern "C" __global__ void ela_ext_keys(ST* __restrict__ kp, const ST* __restrict__ k, ElaIo io, i64 T) {
    const int seq = blockIdx.y, lane = threadIdx.x & 31;
    const i64 t = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (t >= T) return;
    const ST* kr = k + io_seq(io.k, seq, io.heads) + t * io.k[2];
    float kk = 0.f;
    for (int f = lane; f < ELA_D; f += 32) {
        const float x = DT::load(kr[f]);
        kk += x * x;
    }
    const float g = warp_sum(kk) + 1.f;
    ST* out = kp + ((i64)seq * T + t) * ELA_D;
    for (int f = lane; f < ELA_D; f += 32) out[f] = DT::store(g * DT::load(kr[f]));
}

// Segment sums into sums[seq][seg] (SUM_LD floats). Forward (dy null): V1 = sum v, V2 = sum g v,
// G = sum g. Backward: V1, RG = sum G', RaG = sum a G', Rc = sum c, with G' and c from the row
// info. Thread t sums column t % DV over the rows t / DV, t / DV + EXT_THREADS / DV, ...; the
// row groups' partial sums meet in shared memory.
extern "C" __global__ void __launch_bounds__(EXT_THREADS) ela_ext_sums(float* __restrict__ sums, const ST* __restrict__ q,
                                        const ST* __restrict__ k, const ST* __restrict__ v, const ST* __restrict__ dy,
                                        const ela_f4* __restrict__ rows, ElaIo io, i64 T, int nseg, int kind, int scale) {
    const float inv_s = 1.f / (float)scale;  // exact: scale is 2, -2 or 1
    constexpr int RG = EXT_THREADS / ELA_DV > 0 ? EXT_THREADS / ELA_DV : 1;
    __shared__ ExtRow er;
    __shared__ float part[3][RG][ELA_DV];
    const int seg = blockIdx.x, seq = blockIdx.y, tid = threadIdx.x, col = tid % ELA_DV, rg = tid / ELA_DV;
    const i64 t0 = (i64)seg * EXT_SEG;
    const int n = (int)min((i64)EXT_SEG, T - t0);
    const ST* qg = q + io_seq(io.q, seq, io.heads) + t0 * io.q[2];
    const ST* kg = k + io_seq(io.k, seq, io.heads) + t0 * io.k[2];
    const ST* vg = v + io_seq(io.v, seq, io.heads) + t0 * io.v[2];
    const ela_f4* rw = rows + seq * T + t0;
    ext_rows_of(er, dy ? qg : (const ST*)0, kg, (const ST*)0, io.q[2], io.k[2], n, kind, inv_s);
    __syncthreads();
    float s1 = 0.f, s2 = 0.f, s3 = 0.f;
    for (int c = col; c < ELA_DV; c += EXT_THREADS) {  // one pass unless DV > EXT_THREADS
        if (!dy) {
#pragma unroll 4
            for (int r = rg; r < n; r += RG) {
                const float x = DT::load(vg[r * io.v[2] + c]);
                s1 += x, s2 += er.g[r] * x;
            }
        } else {
            const ST* dyg = dy + io_seq(io.dy, seq, io.heads) + t0 * io.dy[2];
#pragma unroll 4
            for (int r = rg; r < n; r += RG) {
                const float gp = DT::load(dyg[r * io.dy[2] + c]) / rw[r].y;
                s1 += DT::load(vg[r * io.v[2] + c]), s2 += gp, s3 += er.a[r] * gp;
            }
        }
    }
    if (rg < RG) part[0][rg][col] = s1, part[1][rg][col] = s2, part[2][rg][col] = s3;
    __syncthreads();
    float* out = sums + ((i64)seq * (nseg + 1) + seg) * SUM_LD;
    for (int c = tid; c < ELA_DV; c += EXT_THREADS) {
        float a = 0.f, b = 0.f, d = 0.f;
        for (int g = 0; g < RG; ++g) a += part[0][g][c], b += part[1][g][c], d += part[2][g][c];
        out[c] = a;
        out[ELA_DV + c] = b;
        if (dy) out[2 * ELA_DV + c] = d;
    }
    if (tid < 32) {
        float s = 0.f;
        for (int r = tid; r < n; r += 32) s += dy ? rw[r].z : er.g[r];
        s = warp_sum(s);
        if (tid == 0) out[SUM_SC] = s;
    }
}

// Segment sums to exclusive prefix sums, each sequence's total in slot nseg; a thread per column.
// Forward sums (bwd 0): V1, V2 and G, all prefix sums. Backward: V1 a prefix sum, RG, RaG and Rc
// suffix sums (what the rows after a segment add).
extern "C" __global__ void ela_ext_scan(float* sums, int nseg, int bwd) {
    const int col = threadIdx.x;
    if (col > (bwd ? SUM_SC : 2 * ELA_DV)) return;
    const int p = (bwd || col < 2 * ELA_DV) ? col : SUM_SC;  // the column's place in the row
    float* base = sums + (i64)blockIdx.x * (nseg + 1) * SUM_LD + p;
    float acc = 0.f;
    if (!bwd || p < ELA_DV) {
        for (int s = 0; s < nseg; ++s) {
            const float x = base[(i64)s * SUM_LD];
            base[(i64)s * SUM_LD] = acc;
            acc += x;
        }
    } else {
        for (int s = nseg - 1; s >= 0; --s) {
            const float x = base[(i64)s * SUM_LD];
            base[(i64)s * SUM_LD] = acc;
            acc += x;
        }
    }
    base[(i64)nseg * SUM_LD] = acc;
}

// The extra terms of every row (ela_out's `ext`, packed [sequence][T][EXT_LD]): numerator
// a_i V1_i + V2_i, denominator a_i cnt_i + G_i, from the scanned forward sums. Dynamic shared
// memory: the staged v tile, EXT_SEG * EXT_LDS floats.
extern "C" __global__ void __launch_bounds__(EXT_THREADS) ela_ext_rows(float* __restrict__ ext, const float* __restrict__ sums,
                                        const ST* __restrict__ q, const ST* __restrict__ k, const ST* __restrict__ v,
                                        ElaIo io, i64 T, int nseg, int kind, int scale, int causal) {
    const float inv_s = 1.f / (float)scale;  // exact: scale is 2, -2 or 1
    __shared__ ExtRow er;
    __shared__ float dext[EXT_SEG];
    float* vt = (float*)ela_smem;  // [EXT_SEG][EXT_LDS] v, then the extra numerators
    const int seg = blockIdx.x, seq = blockIdx.y, tid = threadIdx.x;
    const i64 t0 = (i64)seg * EXT_SEG;
    const int n = (int)min((i64)EXT_SEG, T - t0);
    const ST* qg = q + io_seq(io.q, seq, io.heads) + t0 * io.q[2];
    const ST* kg = k + io_seq(io.k, seq, io.heads) + t0 * io.k[2];
    const ST* vg = v + io_seq(io.v, seq, io.heads) + t0 * io.v[2];
    if (causal) ext_stage(vt, vg, io.v[2], n, (const ela_f4*)0);
    ext_rows_of(er, qg, kg, (const ST*)0, io.q[2], io.k[2], n, kind, inv_s);
    __syncthreads();
    const float* off = sums + ((i64)seq * (nseg + 1) + (causal ? seg : nseg)) * SUM_LD;
    for (int c = tid; c < ELA_DV; c += EXT_THREADS) {
        float v1 = off[c], v2 = off[ELA_DV + c];
        for (int r = 0; r < n; ++r) {
            if (causal) {
                const float x = vt[r * EXT_LDS + c];
                v1 += x, v2 += er.g[r] * x;
            }
            vt[r * EXT_LDS + c] = er.a[r] * v1 + v2;
        }
    }
    if (tid == EXT_THREADS - 1) {  // the last warp has no column when DV < EXT_THREADS
        float g = off[SUM_SC];
        for (int r = 0; r < n; ++r) {
            if (causal) g += er.g[r];
            dext[r] = er.a[r] * (causal ? (float)(t0 + r + 1) : (float)T) + g;
        }
    }
    __syncthreads();
    float* eg = ext + ((i64)seq * T + t0) * EXT_LD;
    for (int e = tid; e < n * EXT_LD; e += EXT_THREADS) {
        const int r = e / EXT_LD, c = e % EXT_LD;
        if (c <= ELA_DV) eg[e] = c < ELA_DV ? vt[r * EXT_LDS + c] : dext[r];
    }
}

// Adds the extra terms' gradients to what ela_bwd wrote (dq, dk, dv packed [sequence][T][width]),
// from the scanned backward sums and the row info (den', c) of the call. Dynamic shared memory:
// the staged v and G' tiles, 2 * EXT_SEG * EXT_LDS floats.
// (dk carries no __restrict__: the blueprint's x reads the dk' it holds before the block adds to it.)
extern "C" __global__ void __launch_bounds__(EXT_THREADS) ela_ext_grads(ST* __restrict__ dq, ST* dk,
                                         ST* __restrict__ dv, const float* __restrict__ sums, const ST* __restrict__ q,
                                         const ST* __restrict__ k, const ST* __restrict__ v, const ST* __restrict__ dy,
                                         const ela_f4* __restrict__ rows, ElaIo io, i64 T, int nseg, int kind, int scale,
                                         int causal) {
    const float inv_s = 1.f / (float)scale;  // exact: scale is 2, -2 or 1
    constexpr int NWC = (ELA_DV + 31) / 32;  // warps with columns
    __shared__ ExtRow er;
    __shared__ float pa[NWC][EXT_SEG], pg[NWC][EXT_SEG], da[EXT_SEG], dg[EXT_SEG];
    float* vt = (float*)ela_smem;          // [EXT_SEG][EXT_LDS] v
    float* gt = vt + EXT_SEG * EXT_LDS;    // [EXT_SEG][EXT_LDS] G', then the extra dv
    const int seg = blockIdx.x, seq = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const i64 t0 = (i64)seg * EXT_SEG;
    const int n = (int)min((i64)EXT_SEG, T - t0);
    const ST* qg = q + io_seq(io.q, seq, io.heads) + t0 * io.q[2];
    const ST* kg = k + io_seq(io.k, seq, io.heads) + t0 * io.k[2];
    const ST* vg = v + io_seq(io.v, seq, io.heads) + t0 * io.v[2];
    const ST* dyg = dy + io_seq(io.dy, seq, io.heads) + t0 * io.dy[2];
    const ela_f4* rw = rows + seq * T + t0;
    ST* dqg = dq + ((i64)seq * T + t0) * ELA_D;
    ST* dkg = dk + ((i64)seq * T + t0) * ELA_D;
    ST* dvg = dv + ((i64)seq * T + t0) * ELA_DV;
    ext_stage(vt, vg, io.v[2], n, (const ela_f4*)0);
    ext_stage(gt, dyg, io.dy[2], n, rw);
    ext_rows_of(er, qg, kg, kind == 1 ? dkg : (const ST*)0, io.q[2], io.k[2], n, kind, inv_s);
    __syncthreads();
    const float* off = sums + ((i64)seq * (nseg + 1) + (causal ? seg : nseg)) * SUM_LD;
    for (int c = tid; c < NWC * 32; c += EXT_THREADS) {
        // Column c: down the segment V1 and the row parts of G' . V1; up it RG, RaG, the extra
        // dv (over G', consumed) and the row parts of v . RG. Every lane of a column warp takes part
        // in the reductions (lanes past DV with zeros).
        const bool live = c < ELA_DV;
        float v1 = live ? off[c] : 0.f;
        for (int r = 0; r < EXT_SEG; ++r) {
            if (causal && live) v1 += vt[r * EXT_LDS + c];
            const float p = warp_sum(live ? gt[r * EXT_LDS + c] * v1 : 0.f);
            if (lane == 0) pa[c >> 5][r] = p;
        }
        float rg = live ? off[ELA_DV + c] : 0.f, rag = live ? off[2 * ELA_DV + c] : 0.f;
        for (int r = EXT_SEG - 1; r >= 0; --r) {
            if (causal && live) {
                const float gp = gt[r * EXT_LDS + c];
                rg += gp, rag += er.a[r] * gp;
            }
            if (live) gt[r * EXT_LDS + c] = rag + er.g[r] * rg;
            const float p = warp_sum(live ? vt[r * EXT_LDS + c] * rg : 0.f);
            if (lane == 0) pg[c >> 5][r] = p;
        }
    }
    if (warp == EXT_WARPS - 1 && lane == 0) {
        // Rc, up the segment, into dg as its negative part.
        float s = off[SUM_SC];
        for (int r = EXT_SEG - 1; r >= 0; --r) {
            if (causal && r < n) s += rw[r].z;
            dg[r] = -s;
        }
    }
    __syncthreads();
    if (tid < EXT_SEG) {
        const int r = tid;
        float a = 0.f, g = 0.f;
        for (int w = 0; w < NWC; ++w) a += pa[w][r], g += pg[w][r];
        const float cnt = causal ? (float)(t0 + r + 1) : (float)T;
        da[r] = r < n ? a - rw[r].z * cnt : 0.f;
        dg[r] += g;
    }
    __syncthreads();
    for (int e = tid; e < n * ELA_DV; e += EXT_THREADS) {
        const int r = e / ELA_DV, c = e % ELA_DV;
        dvg[e] = DT::store(DT::load(dvg[e]) + gt[r * EXT_LDS + c]);
    }
    for (int e = tid; e < n * ELA_D; e += EXT_THREADS) {
        const int r = e / ELA_D, f = e % ELA_D;
        const float kv = DT::load(kg[r * io.k[2] + f]);
        if (kind == 0) {
            dqg[e] = DT::store(DT::load(dqg[e]) + 2.f * inv_s * da[r] * DT::load(qg[r * io.q[2] + f]));
            dkg[e] = DT::store(DT::load(dkg[e]) + 2.f * inv_s * dg[r] * kv);
        } else {
            dkg[e] = DT::store(er.g[r] * DT::load(dkg[e]) + 2.f * kv * (er.x[r] + dg[r]));
        }
    }
}
