// Chunked ELA backward (one block per (chunk, sequence)) and `ela_rows_dot`, the per-row part of
// a backward that reuses a saved forward; see the header of chunk_fwd.cu. For the chunk of rows I with state S^(c), z^(c) (units m^(c)) before it and the
// reverse accumulators U^(c+1), w^(c+1) (units m^(c+1)) of the rows after it (docs/ela.md,
// "the backward in units"), g_i = dy_i / den_i, c_i = g_i . y_i:
//
//   D     = (G V^T - c 1^T) * E * M                       (B1, intra; E_ij = exp(mq_i + mk_j - u_i))
//   A     = (Phi_a Psi_a^T) * E * M
//   dv    = A^T G + Psi_u U                                (B4; psi_u = exp(k - m^(c+1)))
//   dk    = psi_a * (D^T Phi_a) + psi_u * (V U^T - 1 w^T)  (B3, B5)
//   dq    = phi_a * (D Psi_a) + phi_b * (G S^T - c z^T)    (B2, B5; phi_b = exp(q + m^(c) - u))
//
// Rows on the exact path (flag from ela_out) take no part in D and A; their terms are added
// afterwards with u = r_i, as the CPU's exact_rows::backward_row does.
//
// elu+1 (ELA_FMAP 1, log-features: chunk_fwd.cu) is the same with one change: where dq and dk
// multiply by a feature of their own side (phi_a, phi_b in dq; psi_a, psi_u in dk), they take
// its derivative in the same units instead: min(phi_a, exp(-mq)), exp(lderiv(q) + m^(c) - u),
// min(psi_a, exp(-mk)), min(psi_u, exp(-m^(c+1))) (docs/ela.md, "elu+1 on the Hadamard-Exp
// kernels").
//
// Identity (ELA_FMAP 2) with `ext` (the signed kernels, chunk_ext.cu): A's visible entries take
// a_i + g_j, D's row and column sums (plus the chunk sums' parts) give da and dg, which the dq and
// dk epilogues turn into the extra terms' gradients; dv's adds RaG + g_j RG.

// dq's epilogue needs q at its entries (phi_b = exp(q + m - u)). Loaded in the epilogue, each
// load sat inside its entry's row test and a warp waited for one load after another (their
// latency was the largest stall of this kernel); ELA_QLOAD loads them all before dq's products,
// which hide the latency. Measured on an H100 (docs/benchmarks.md, "q before the dq products"):
// fwd+bwd -3.3 % at 128-wide bf16 heads, -2.2 % / -0.9 % with f32 operands; at 64-wide 16-bit
// heads, held to 80 registers for three blocks a multiprocessor, the eight more live registers
// spill and it was no faster, so they keep the loads in the epilogue (as do the 256-wide heads,
// not measured).
#define ELA_QLOAD (!ELA_MMA || ELA_D == 128)
// Where ELA_QLOAD is off and A^T's tile can hold them (F <= C: the 16-bit 64-wide heads),
// ELA_QSTAGE copies the chunk's q rows with cp.async (no registers) into A^T's tile once the dv
// products have read it (rows LDF apart: the epilogue's eight rows a warp reads then fall in
// distinct banks), in flight during the dk pass; the dq epilogue reads them from shared memory.
// Measured on an H100 (docs/benchmarks.md, "q in shared memory, predicated stores"): fwd+bwd
// -2.8 % at bf16 D64 T16k, -3.9 % at the d512 LM's shape.
#define ELA_QSTAGE (!ELA_QLOAD && ELA_F <= ELA_C && ELA_UNITS)
// ELA_PSTORE computes the epilogues' entries of rows past the chunk's end too (shared-memory
// reads inside the tiles; q's global loads stay guarded) and stores with store_st2_if, so the
// dv, dk and dq epilogues need no branch region per entry pair. Measured (same section): fwd+bwd
// -1.7 % / -1.3 % at 128-wide bf16 / f32 heads, -0.4 % at 64-wide f32 ones; at 16-bit 64-wide
// heads, held to 80 registers, it spilled more and was 2.9 % slower, so they keep the branches
// (the same heads as ELA_QLOAD's).
#define ELA_PSTORE ELA_QLOAD

#if ELA_FMAP == 2
// The parts of the extra terms' da_i and dg_j that the chunk sums give (sr: the backward sums'
// slot, v1: the forward's; the keys before the chunk and the rows after it, or all of them, cnt
// keys):
//   da_i += G_i . V1 - c_i cnt        dg_j += v_j . RG - Rc
// A warp per row, its lanes over the columns, added to the block's sums of its intra-chunk part
// (the order is free). The chunk sums' columns are the same for every row, so each lane loads
// its own once, before the rows. (With `da` false, the blueprint's, whose a is 0, eda is left
// alone: its dk epilogue sums there.)
__device__ void ext_row_dots(float* eda, float* edg, const MT* G, int ldg, const MT* vs, int ldv, const float* cc,
                             const float* sr, const float* v1, int n, float cnt, bool da) {
    constexpr int NC = (ELA_DV + 31) / 32;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float w1[NC], rg[NC];
#pragma unroll
    for (int h = 0; h < NC; ++h) {
        const int col = lane + 32 * h;
        w1[h] = da && col < ELA_DV ? v1[col] : 0.f;
        rg[h] = col < ELA_DV ? sr[ELA_DV + col] : 0.f;
    }
    const float rc = sr[EXT_SUM_SC];
#pragma unroll 2
    for (int r = warp; r < n; r += ELA_WARPS) {
        float a = 0.f, b = 0.f;
#pragma unroll
        for (int h = 0; h < NC; ++h) {
            const int col = lane + 32 * h;
            if (col < ELA_DV) {
                a = fmaf(from_mt(G[r * ldg + col]), w1[h], a);
                b = fmaf(from_mt(vs[r * ldv + col]), rg[h], b);
            }
        }
        a = warp_sum(a), b = warp_sum(b);
        if (lane == 0) {
            if (da) atomicAdd(eda + r, a - cc[r] * cnt);
            atomicAdd(edg + r, b - rc);
        }
    }
}

// The blueprint's dk from dk' (ela_bwd's dk epilogue, in acc; psi_a holds the keys k' = g k):
// with k_j = k'_j / g_j,
//   dk_j = g_j dk'_j + 2 k_j (k_j . dk'_j + dg_j) = g_j dk'_j + (2 / g_j) ((k'_j . dk'_j) / g_j + dg_j) k'_j.
// The row dots k'_j . dk'_j add over the thread's columns, its quad, then the warps that share
// the row (shared atomics into ed, which holds 0: the blueprint's a is 0, so nothing summed da
// there); after the barrier each entry takes its row's dot. Every thread of the block calls it.
template <int NT>
__device__ void bp_dk_epilogue(float (&acc)[NT][4], const MT* psia, const float* eg, float* ed, const float* edg,
                               ST* dkg, i64 gsk, int r0, int c0, int n) {
    float dot[2] = {0.f, 0.f};
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; e += 2) {
            const int j = ACC_ROW(r0, e), d = ACC_COL(c0, nt, e);
            if (j < n) dot[e >> 1] += from_mt(psia[j * LDP(ELA_F) + d]) * acc[nt][e] + from_mt(psia[j * LDP(ELA_F) + d + 1]) * acc[nt][e + 1];
        }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        dot[h] += __shfl_xor_sync(0xffffffffu, dot[h], 1);
        dot[h] += __shfl_xor_sync(0xffffffffu, dot[h], 2);
    }
    if ((threadIdx.x & 3) == 0) {
        atomicAdd(ed + ACC_ROW(r0, 0), dot[0]);
        atomicAdd(ed + ACC_ROW(r0, 2), dot[1]);
    }
    __syncthreads();
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; e += 2) {
            const int j = ACC_ROW(r0, e), d = ACC_COL(c0, nt, e);
            if (!ELA_PSTORE && j >= n) continue;
            const float g = j < n ? eg[j] : 1.f, s = 2.f / g * (ed[j] / g + edg[j]);
            const float v0 = g * acc[nt][e] + s * from_mt(psia[j * LDP(ELA_F) + d]);
            const float v1 = g * acc[nt][e + 1] + s * from_mt(psia[j * LDP(ELA_F) + d + 1]);
            if (ELA_PSTORE) store_st2_if(j < n, dkg + j * gsk + d, v0, v1);
            else store_st2(dkg + j * gsk + d, v0, v1);
        }
}
#endif

extern "C" __global__ void __launch_bounds__(ELA_THREADS, ELA_BWD_MINB)
    ela_bwd(ST* dq, ST* dk, ST* dv, const ST* q, const ST* k, const ST* v, const ST* dy, const ela_f4* rows,
            const MT* slot_s, const float* slot_z, const float* slot_m, const MT* slot_u, const float* slot_w, ElaExt ext, ElaIo io,
            i64 T, int nch, int causal, int grads_like_inputs) {
    constexpr int F = ELA_F, DV = ELA_DV, C = ELA_C, LDF = LDP(F), LDV = LDP(DV), LDC = LDP(C);
    typedef WarpMap<C, C> WA;
    typedef WarpMap<C, DV> WV;
    typedef WarpMap<C, F> WF;
    MT* phia = (MT*)ela_smem;  // [C][LDF] exp(q - mq)
    MT* psia = phia + C * LDF;  // [C][LDF] exp(k - mk)
    MT* psiu = psia + C * LDF;  // [C][LDF] exp(k - m^(c+1))
    MT* G = psiu + C * LDF;     // [C][LDV] dy / den (0 on exact-path rows)
    MT* vsm = G + C * LDV;      // [C][LDV]
    MT* At = vsm + C * LDV;     // [C][LDC]
    MT* Dm = At + C * LDC;      // [C][LDC]
    MT* US = Dm + C * LDC;      // [F][LDV]: U, then S
    float* mcur = (float*)(US + F * LDV);
    float* mnx = mcur + F;
    float* zst = mnx + FVEC(F);  // mnx: a per-feature vector read by row quarters (fsk)
    float* wst = zst + F;
    float* mq = wst + F;
    float* mk = mq + C;
    float* uu = mk + C;
    float* gmul = uu + C;
    float* cc = gmul + C;
    // (No more per-row arrays: at 64-wide heads the carve must stay under a third of the
    // multiprocessor's shared memory, so that three blocks are resident; the exact path reads its
    // rows' den and c from global memory.)
    int* slw = (int*)(cc + C);
    check_smem(slw + C);
#if ELA_FMAP == 2
    // Identity has no units and no exact path: mq, mk, uu and mcur are never read (unit_exp is 1),
    // so the extra terms (chunk_ext.cu) take their places: the chunk's a and g, and the sums da, dg
    // of each row's and each key's entries of D' (the gradient of A + a_i + g_j).
    static_assert(C <= F, "dg fits in mcur");
    float* ea = mq;
    float* eg = mk;
    float* eda = uu;
    float* edg = mcur;
    const bool xt = ext.sums != 0, xt_qk = xt && ext.kind == 0;  // extra terms; their dq, dk
    const bool xt_bp = xt && ext.kind == 1;  // the blueprint: dk from dk' (bp_dk_epilogue)
#endif

    const int c = blockIdx.x, seq = blockIdx.y, tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const i64 t0 = (i64)c * C, rowbase = seq * T + t0;
    const int n = (int)min((i64)C, T - t0);
    const i64 slot = (i64)seq * (nch + 1) + (causal ? c : nch), slot1 = causal ? slot + 1 : slot;
    const i64 uslot = (i64)seq * nch + (causal ? c : 0);
    const MT* Sg = slot_s + slot * F * DV;
    // The chunk's first input rows (strided: tile.cuh, ElaIo). dq, dk, dv lie like q, k, v
    // (`grads_like_inputs`: in one buffer shaped like theirs) or packed, [sequence][t][width];
    // the row info is packed (`rowbase`).
    const i64 lq = io.q[2], lk = io.k[2], lv = io.v[2], ldy = io.dy[2];
    const ST *qg = q + io_seq(io.q, seq, io.heads) + t0 * lq, *kg = k + io_seq(io.k, seq, io.heads) + t0 * lk;
    const ST *vg = v + io_seq(io.v, seq, io.heads) + t0 * lv, *dyg = dy + io_seq(io.dy, seq, io.heads) + t0 * ldy;
    const bool like = grads_like_inputs != 0;
    const i64 gsq = like ? lq : F, gsk = like ? lk : F, gsv = like ? lv : DV;  // output row strides
    ST* dqg = dq + (like ? io_seq(io.q, seq, io.heads) + t0 * lq : rowbase * F);
    ST* dkg = dk + (like ? io_seq(io.k, seq, io.heads) + t0 * lk : rowbase * F);
    ST* dvg = dv + (like ? io_seq(io.v, seq, io.heads) + t0 * lv : rowbase * DV);

    // Every global load of the chunk is issued here, before any is used.
    typedef RowPart<F> RP;
    RP kp, qp;
    // (Identity with extra terms reads q from phi_a for dq, causal or not.)
#if ELA_FMAP == 2
    const bool qrows = causal || ext.sums;
#else
    const bool qrows = causal;
#endif
    kp.load(kg, lk, n);
    if (qrows) qp.load(qg, lq, n);
    TileRegs<ST, true, C, DV> vt, gt;
    vt.load(vg, lv, n);
    gt.load(dyg, ldy, n);
    TileRegs<MT, false, F, DV> ut;
    ut.load(slot_u + uslot * F * DV, F);
    ela_f4 r;
    r.x = 0.f, r.y = 1.f, r.z = 0.f, r.w = 0.f;
    if (tid < n) r = rows[rowbase + tid];
    if (tid < F) {
        if (ELA_UNITS) mcur[tid] = slot_m[slot * F + tid];
        mnx[fsk(tid)] = slot_m[slot1 * F + tid];
        zst[tid] = slot_z[slot * F + tid];
        wst[tid] = slot_w[uslot * F + tid];
    }
    if (tid < C) {
        const bool slow = tid < n && r.w != 0.f, on = tid < n && !slow;
        if (ELA_UNITS) uu[tid] = r.x;
        gmul[tid] = on ? 1.f / r.y : 0.f;
        cc[tid] = on ? r.z : 0.f;
        slw[tid] = slow ? 1 : 0;
    }
#if ELA_FMAP == 2
    // Sum/sub-sq take a and g from the rows below (ext_norm); the blueprint reads them.
    const bool xt_rows = xt && !ext.ag;
    if (tid < C) {
        if (!xt_rows) {
            const float2 x = (ext.ag && tid < n) ? ext.ag[rowbase + tid] : float2{0.f, 0.f};
            ea[tid] = x.x, eg[tid] = x.y;
        }
        eda[tid] = 0.f, edg[tid] = 0.f;
    }
#endif
    ut.store(US, LDV, (const float*)0);
    vt.store(vsm, LDV, (const float*)0);
    __syncthreads();
    gt.store(G, LDV, gmul);  // g = dy / den, 0 on exact-path rows
    {
        const int j = RP::row(), c0 = RP::col0();
        log_features(kp);
        float mx = neg_inf<float>();
#pragma unroll
        for (int e = 0; e < RP::EPT; ++e) mx = fmaxf(mx, kp.x[e]);
        mx = unit_max(RP::max(mx));
#pragma unroll
        for (int e0 = 0; e0 < RP::EPT; e0 += MT_VEC) {
            float pa[MT_VEC], pu[MT_VEC];
#pragma unroll
            for (int k = 0; k < MT_VEC; ++k) {
                pa[k] = feat_if(j < n, kp.x[e0 + k] - mx);
                pu[k] = feat_if(j < n, kp.x[e0 + k] - mnx[fsk(c0) + fsk(e0 + k)]);
            }
            store_mt_vec(psia + j * LDF + c0 + e0, pa);
            store_mt_vec(psiu + j * LDF + c0 + e0, pu);
        }
        if (ELA_UNITS && RP::head()) mk[j] = j < n ? mx : neg_inf<float>();
#if ELA_FMAP == 2
        if (xt_rows) ext_norm(eg, kp, j, n, ext.inv_s);
#endif
        if (qrows) {
            log_features(qp);
            float mxq = neg_inf<float>();
#pragma unroll
            for (int e = 0; e < RP::EPT; ++e) mxq = fmaxf(mxq, qp.x[e]);
            mxq = unit_max(RP::max(mxq));
#pragma unroll
            for (int e0 = 0; e0 < RP::EPT; e0 += MT_VEC) {
                float pa[MT_VEC];
#pragma unroll
                for (int k = 0; k < MT_VEC; ++k) pa[k] = feat_if(j < n, qp.x[e0 + k] - mxq);
                store_mt_vec(phia + j * LDF + c0 + e0, pa);
            }
            if (ELA_UNITS && RP::head()) mq[j] = mxq;
#if ELA_FMAP == 2
            if (xt_rows) ext_norm(ea, qp, j, n, ext.inv_s);
#endif
        }
    }
    __syncthreads();
#if ELA_FMAP == 2
    if (xt)
        ext_row_dots(eda, edg, G, LDV, vsm, LDV, cc, ext.sums + slot * EXT_SUM_LD, ext.pre + slot * EXT_SUM_LD, n,
                     (float)(causal ? t0 : T), xt_qk);
#endif
    if (causal) {
        float aA[WA::NT][4], aD[WA::NT][4];
        zero_acc(aA);
        zero_acc(aD);
        const int r0 = WA::row0(), c0 = WA::col0();
        const bool skip = TRI_SKIP(r0, c0);  // (warp-uniform)
        if (!skip) {
            mm_tile<WA::NT, false, true>(aA, phia, LDF, psia, LDF, r0, c0, F);
            mm_tile<WA::NT, false, true>(aD, G, LDV, vsm, LDV, r0, c0, DV);
        }
#if ELA_HOIST
        const int ia = ACC_ROW(r0, 0), ib = ACC_ROW(r0, 2);  // this thread's two rows (ROW_VAL)
        const float rg[2] = {gmul[ia], gmul[ib]}, rq[2] = {mq[ia], mq[ib]}, ru[2] = {uu[ia], uu[ib]};
        const float rc[2] = {cc[ia], cc[ib]};
#endif
#if ELA_FMAP == 2
        float rsum[2] = {0.f, 0.f}, csum[WA::NT][2];  // this thread's entries of D' by row, by key
#endif
#pragma unroll
        for (int nt = 0; nt < WA::NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; e += 2) {
                const int i = ACC_ROW(r0, e), j = ACC_COL(c0, nt, e);
                const bool on = ROW_VAL(rg, gmul, i, e) != 0.f;  // 1 / den on the fast path, else 0
                float e0 = 0.f, e1 = 0.f;
                if (!skip) {
                    e0 = keep_if(on && j <= i, unit_exp(ROW_VAL(rq, mq, i, e) + mk[j] - ROW_VAL(ru, uu, i, e)));
                    e1 = keep_if(on && j + 1 <= i, unit_exp(ROW_VAL(rq, mq, i, e) + mk[j + 1] - ROW_VAL(ru, uu, i, e)));
                }
                store_mt2(At + i * LDC + j, e0 == 0.f ? 0.f : aA[nt][e] * e0 PLUS_EXT_AG(i, j),
                          e1 == 0.f ? 0.f : aA[nt][e + 1] * e1 PLUS_EXT_AG(i, j + 1));
                const float d0 = e0 == 0.f ? 0.f : (aD[nt][e] - ROW_VAL(rc, cc, i, e)) * e0;
                const float d1 = e1 == 0.f ? 0.f : (aD[nt][e + 1] - ROW_VAL(rc, cc, i, e)) * e1;
                store_mt2(Dm + i * LDC + j, d0, d1);
#if ELA_FMAP == 2
                rsum[e >> 1] += d0 + d1;
                csum[nt][0] = (e == 0 ? 0.f : csum[nt][0]) + d0;
                csum[nt][1] = (e == 0 ? 0.f : csum[nt][1]) + d1;
#endif
            }
#if ELA_FMAP == 2
        // da_i, dg_j: D' is D (the entries a_i + g_j add to A carry the same gradient), so its
        // row sums go to da and its column sums to dg: over the quad that shares a row, over
        // the eight quads that share a column, then across warps in shared memory.
        if (xt && !skip) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                rsum[h] += __shfl_xor_sync(0xffffffffu, rsum[h], 1);
                rsum[h] += __shfl_xor_sync(0xffffffffu, rsum[h], 2);
            }
#pragma unroll
            for (int nt = 0; nt < WA::NT; ++nt)
#pragma unroll
                for (int h = 0; h < 2; ++h)
#pragma unroll
                    for (int o = 4; o < 32; o <<= 1) csum[nt][h] += __shfl_xor_sync(0xffffffffu, csum[nt][h], o);
            if (xt_qk && (lane & 3) == 0) {
                atomicAdd(eda + ACC_ROW(r0, 0), rsum[0]);
                atomicAdd(eda + ACC_ROW(r0, 2), rsum[1]);
            }
            if (lane < 4)
#pragma unroll
                for (int nt = 0; nt < WA::NT; ++nt) {
                    atomicAdd(edg + ACC_COL(c0, nt, 0), csum[nt][0]);
                    atomicAdd(edg + ACC_COL(c0, nt, 1), csum[nt][1]);
                }
        }
#endif
    }
    __syncthreads();
    // The state tile for dq, in flight during the dv and dk products (it replaces U after dk).
    TileRegs<MT, false, F, DV> stt;
    stt.load(Sg, F);
    {
        // dv = A^T G + psi_u U
        float acc[WV::NT][4];
        zero_acc(acc);
        const int r0 = WV::row0(), c0 = WV::col0();
        if (causal) {
            const int k0 = r0;  // A^T's rows j see queries i >= j only
            mm_tile<WV::NT, true, false, C>(acc, At + k0 * LDC, LDC, G + k0 * LDV, LDV, r0, c0, C - k0);
        }
        mm_tile<WV::NT, false, false>(acc, psiu, LDF, US, LDV, r0, c0, F);
#if ELA_QSTAGE
        __syncthreads();  // every warp is done with At
        {
            constexpr int EPV = 16 / (int)sizeof(ST), NV = C * F / EPV;
            ST* qs = (ST*)At;
            for (int e = tid; e < NV; e += ELA_THREADS) {
                const int x = e * EPV, r = x / F, col = x % F;
                if (r < n) cp_async16(qs + r * LDF + col, qg + (i64)r * lq + col);
            }
            cp_async_commit();
        }
#endif
#if ELA_FMAP == 2
        if (xt) {
            // The extra terms of the rows after the chunk (or all): RaG + g_j RG.
            const float* sr = ext.sums + slot * EXT_SUM_LD;
#pragma unroll
            for (int nt = 0; nt < WV::NT; ++nt) {
                const int col = ACC_COL(c0, nt, 0);
                const float2 rg = *(const float2*)(sr + DV + col), rag = *(const float2*)(sr + 2 * DV + col);
#pragma unroll
                for (int e = 0; e < 4; e += 2) {
                    const float g = eg[ACC_ROW(r0, e)];
                    acc[nt][e] += rag.x + g * rg.x;
                    acc[nt][e + 1] += rag.y + g * rg.y;
                }
            }
        }
#endif
#pragma unroll
        for (int nt = 0; nt < WV::NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; e += 2) {
                const int j = ACC_ROW(r0, e), col = ACC_COL(c0, nt, e);
                if (ELA_PSTORE) store_st2_if(j < n, dvg + j * gsv + col, acc[nt][e], acc[nt][e + 1]);
                else if (j < n) store_st2(dvg + j * gsv + col, acc[nt][e], acc[nt][e + 1]);
            }
    }
    {
        // dk = psi_a * (D^T phi_a) + psi_u * (V U^T - w)
        float a1[WF::NT][4], a2[WF::NT][4];
        zero_acc(a1);
        zero_acc(a2);
        const int r0 = WF::row0(), c0 = WF::col0();
        if (causal) {
            const int k0 = r0;  // D^T's rows j see queries i >= j only
            mm_tile<WF::NT, true, false, C>(a1, Dm + k0 * LDC, LDC, phia + k0 * LDF, LDF, r0, c0, C - k0);
        }
        mm_tile<WF::NT, false, true>(a2, vsm, LDV, US, LDV, r0, c0, DV);
#pragma unroll
        for (int nt = 0; nt < WF::NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; e += 2) {
                const int j = ACC_ROW(r0, e), d = ACC_COL(c0, nt, e);
                if (!ELA_PSTORE && j >= n) continue;
#if ELA_FMAP == 0
                const float v0 = from_mt(psia[j * LDF + d]) * a1[nt][e] + from_mt(psiu[j * LDF + d]) * (a2[nt][e] - wst[d]);
                const float v1 = from_mt(psia[j * LDF + d + 1]) * a1[nt][e + 1] +
                                 from_mt(psiu[j * LDF + d + 1]) * (a2[nt][e + 1] - wst[d + 1]);
#elif ELA_FMAP == 2
                // Identity: the features' derivative is 1. Sum/sub-sq: dk_j += dg_j 2 k_j / s (psi_a
                // holds k itself).
                const float xk = xt_qk ? 2.f * ext.inv_s * edg[j] : 0.f;
                const float v0 = a1[nt][e] + (a2[nt][e] - wst[d]) + xk * from_mt(psia[j * LDF + d]);
                const float v1 = a1[nt][e + 1] + (a2[nt][e + 1] - wst[d + 1]) + xk * from_mt(psia[j * LDF + d + 1]);
#else
                // The features' derivatives in the same units: exp(min(lf, 0) - shift) =
                // min(exp(lf - shift), exp(-shift)), the shifts mk_j and m^(c+1)_d.
                const float la = exp_ftz(-mk[j]), lu0 = exp_ftz(-mnx[fsk(d)]), lu1 = exp_ftz(-mnx[fsk(d + 1)]);
                const float v0 = fminf(from_mt(psia[j * LDF + d]), la) * a1[nt][e] +
                                 fminf(from_mt(psiu[j * LDF + d]), lu0) * (a2[nt][e] - wst[d]);
                const float v1 = fminf(from_mt(psia[j * LDF + d + 1]), la) * a1[nt][e + 1] +
                                 fminf(from_mt(psiu[j * LDF + d + 1]), lu1) * (a2[nt][e + 1] - wst[d + 1]);
#endif
#if ELA_FMAP == 2
                if (xt_bp) {
                    // The blueprint: these are dk'; dk follows the row dots (below).
                    a1[nt][e] = v0, a1[nt][e + 1] = v1;
                    continue;
                }
#endif
                if (ELA_PSTORE) store_st2_if(j < n, dkg + j * gsk + d, v0, v1);
                else store_st2(dkg + j * gsk + d, v0, v1);
            }
#if ELA_FMAP == 2
        if (xt_bp) bp_dk_epilogue<WF::NT>(a1, psia, eg, eda, edg, dkg, gsk, r0, c0, n);
#endif
    }
#if ELA_QSTAGE
    cp_async_wait<0>();  // this thread's q copies have landed (the barrier shows them to all)
#endif
    __syncthreads();
    stt.store(US, LDV, (const float*)0);
    __syncthreads();
    {
        // dq = phi_a * (D psi_a) + phi_b * (G S^T - c z)
        float a1[WF::NT][4], a2[WF::NT][4];
        zero_acc(a1);
        zero_acc(a2);
        const int r0 = WF::row0(), c0 = WF::col0();
#if ELA_QLOAD
        st2_raw qw[WF::NT][2];  // q at this thread's entries (two rows, NT column pairs)
#pragma unroll
        for (int nt = 0; nt < WF::NT; ++nt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int i = ACC_ROW(r0, 2 * h), d = ACC_COL(c0, nt, 0);
                qw[nt][h] = i < n ? load_st2_raw(qg + (i64)i * lq + d) : st2_raw{};
            }
#endif
        if (causal) mm_tile<WF::NT, false, false, C>(a1, Dm, LDC, psia, LDF, r0, c0, TRI_KEND(r0, C));
        mm_tile<WF::NT, false, true>(a2, G, LDV, US, LDV, r0, c0, DV);
#if ELA_HOIST
        const int ia = ACC_ROW(r0, 0), ib = ACC_ROW(r0, 2);  // (ROW_VAL)
        const float rg[2] = {gmul[ia], gmul[ib]}, ru[2] = {uu[ia], uu[ib]}, rc[2] = {cc[ia], cc[ib]};
#endif
#pragma unroll
        for (int nt = 0; nt < WF::NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; e += 2) {
                const int i = ACC_ROW(r0, e), d = ACC_COL(c0, nt, e);
                if (!ELA_PSTORE && i >= n) continue;
                const bool on = ROW_VAL(rg, gmul, i, e) != 0.f;  // 1 / den on the fast path, else 0
                float q0, q1;
#if ELA_QLOAD
                unpack_st2(qw[nt][e >> 1], q0, q1);
#elif ELA_QSTAGE
                load_st2((const ST*)At + i * LDF + d, q0, q1);
#else
                load_st2(qg + (i64)i * lq + d, q0, q1);  // (ELA_PSTORE is off here: i < n)
#endif
                q0 = lderiv(q0), q1 = lderiv(q1);  // (ELA_FMAP 0: q itself)
                // (Identity: the derivative of phi_b is 1, q unused.)
                const float pb0 = keep_if(on, unit_exp(q0 + mcur[d] - ROW_VAL(ru, uu, i, e)));
                const float pb1 = keep_if(on, unit_exp(q1 + mcur[d + 1] - ROW_VAL(ru, uu, i, e)));
                float v0 = pb0 * (a2[nt][e] - ROW_VAL(rc, cc, i, e) * zst[d]),
                      v1 = pb1 * (a2[nt][e + 1] - ROW_VAL(rc, cc, i, e) * zst[d + 1]);
#if ELA_FMAP == 2
                if (xt_qk) {
                    // Sum/sub-sq: dq_i += da_i 2 q_i / s (phi_a holds q itself).
                    const float xq = 2.f * ext.inv_s * eda[i];
                    v0 += xq * from_mt(phia[i * LDF + d]);
                    v1 += xq * from_mt(phia[i * LDF + d + 1]);
                }
#endif
                if (causal) {
#if ELA_FMAP == 0
                    v0 += from_mt(phia[i * LDF + d]) * a1[nt][e];
                    v1 += from_mt(phia[i * LDF + d + 1]) * a1[nt][e + 1];
#elif ELA_FMAP == 2
                    v0 += a1[nt][e];
                    v1 += a1[nt][e + 1];
#else
                    // phi_a's derivative: min(exp(lf - mq_i), exp(-mq_i)) (as dk's above).
                    const float la = exp_ftz(-mq[i]);
                    v0 += fminf(from_mt(phia[i * LDF + d]), la) * a1[nt][e];
                    v1 += fminf(from_mt(phia[i * LDF + d + 1]), la) * a1[nt][e + 1];
#endif
                }
                if (ELA_PSTORE) store_st2_if(i < n, dqg + i * gsq + d, v0, v1);
                else store_st2(dqg + i * gsq + d, v0, v1);
            }
    }
    if (ELA_UNITS && __syncthreads_or(tid < C && slw[tid])) {
        // Exact-path rows (exact_rows::backward_row): weights exp(q_i + k_j - r_i) over the chunk's keys
        // j <= i and exp(q_i + m - r_i) against the state. Their dk, dv terms are summed in f32
        // over all such rows and added to the fast-path values once (one extra rounding in
        // bf16/f16, not one per row); dq_i, 0 on the fast path, is written directly.
        static_assert(C * (F + DV) + DV + 2 * F + 2 * C <= (3 * C * LDF + 2 * C * LDV + 2 * C * LDC + F * LDV) *
                                                             (int)sizeof(MT) / 4,
                      "exact-path scratch fits in the tiles");
        float* adk = (float*)ela_smem;  // every tile is free now
        float* adv = adk + C * F;
        float* gv = adv + C * DV;
        float* qr = gv + DV;
        float* da = qr + F;
        float* sj = da + C;
        float* ws = sj + C;
        int last = 0;
        for (int i = 0; i < n; ++i)
            if (slw[i]) last = i;
        for (int e = tid; e < (last + 1) * F; e += ELA_THREADS) adk[e] = 0.f;
        for (int e = tid; e < (last + 1) * DV; e += ELA_THREADS) adv[e] = 0.f;
        for (int i = 0; i <= last; ++i) {
            if (!slw[i]) continue;
            const ela_f4 ri = rows[rowbase + i];
            const float r = uu[i], dn = ri.y, ci = ri.z;
            if (tid < DV) gv[tid] = DT::load(dyg[(i64)i * ldy + tid]) / dn;
            if (tid < F) qr[tid] = lfeat(DT::load(qg[(i64)i * lq + tid]));
            __syncthreads();
            for (int j = warp; j <= i; j += ELA_WARPS) {
                float a = 0.f, s = 0.f;
                for (int col = lane; col < DV; col += 32) a += gv[col] * DT::load(vg[(i64)j * lv + col]);
                for (int f = lane; f < F; f += 32) s += __expf(qr[f] + lfeat(DT::load(kg[(i64)j * lk + f])) - r);
                a = warp_sum(a);
                s = warp_sum(s);
                if (lane == 0) {
                    da[j] = a - ci;
                    sj[j] = s;
                }
            }
            // dq's and dk's weights take the derivative of their own side's feature (lderiv).
            if (tid < F) ws[tid] = __expf(lderiv(qr[tid]) + mcur[tid] - r);
            __syncthreads();
            for (int e = tid; e < (i + 1) * F; e += ELA_THREADS)
                adk[e] += __expf(qr[e % F] + lderiv(DT::load(kg[(e / F) * lk + e % F])) - r) * da[e / F];
            for (int e = tid; e < (i + 1) * DV; e += ELA_THREADS) adv[e] += sj[e / DV] * gv[e % DV];
            if (tid < F) {
                float s = 0.f, sg = 0.f;
                for (int j = 0; j <= i; ++j) s += __expf(lderiv(qr[tid]) + lfeat(DT::load(kg[(i64)j * lk + tid])) - r) * da[j];
                for (int col = 0; col < DV; ++col) sg += from_mt(Sg[(i64)tid * DV + col]) * gv[col];
                dqg[i * gsq + tid] = DT::store(s + ws[tid] * (sg - ci * zst[tid]));
            }
            __syncthreads();
        }
        for (int e = tid; e < (last + 1) * F; e += ELA_THREADS) {
            ST* p = dkg + (e / F) * gsk + e % F;
            *p = DT::store(DT::load(*p) + adk[e]);
        }
        for (int e = tid; e < (last + 1) * DV; e += ELA_THREADS) {
            ST* p = dvg + (e / DV) * gsv + e % DV;
            *p = DT::store(DT::load(*p) + adv[e]);
        }
    }
}

// c_i = (dy_i . y_i) / den_i into the row info a saving forward wrote (ela_out mode 0 with
// `rows`): what ela_out mode 1 adds when the backward recomputes the forward. f32 operands only
// (with 16-bit ones the reverse scan computes it, SCAN_DOT in chunk_fwd.cu). One block per
// (chunk, sequence); a row is read by TPR threads with 16-byte loads (RowPart's split).
extern "C" __global__ void ela_rows_dot(ela_f4* rows, const ST* dy, const ST* y, ElaIo io, i64 T) {
    typedef RowPart<ELA_DV> RP;
    const int seq = blockIdx.y;
    const i64 t0 = (i64)blockIdx.x * ELA_C, r0 = seq * T + t0;
    const int n = (int)min((i64)ELA_C, T - t0);
    RP a, b;
    a.load(dy + io_seq(io.dy, seq, io.heads) + t0 * io.dy[2], io.dy[2], n);
    b.load(y + io_seq(io.y, seq, io.heads) + t0 * io.y[2], io.y[2], n);
    float s = 0.f;
#pragma unroll
    for (int e = 0; e < RP::EPT; ++e) s += a.x[e] * b.x[e];
    s = RP::sum(s);
    const int i = RP::row();
    if (RP::head() && i < n) rows[r0 + i].z = s / rows[r0 + i].y;
}
