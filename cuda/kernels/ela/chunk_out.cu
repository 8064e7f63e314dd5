// The per-chunk output kernel of the chunked Hadamard-Exp ELA, `ela_out` (forward: y and the row
// info a saving forward keeps; backward without a saved forward: the row info with c), and the
// exact path for its underflowed rows (`slow_row`). The algorithm is in the header of
// chunk_fwd.cu, after which this file is compiled in the same module.

// ---------------------------------------------------------------- rows of one chunk

// Identity's tiles add a_i + g_j to every visible entry of the intra-chunk block A (ea, eg: the
// chunk's a and g, in shared memory); the other maps have no extra terms.
// (PLUS_EXT_AG expands to nothing elsewhere: adding 0.f is not free, as x + 0.f is not x for
// x = -0.)
#if ELA_FMAP == 2
#define PLUS_EXT_AG(i, j) +(ea[i] + eg[j])
#define EXT_A(i) ea[i]
#else
#define PLUS_EXT_AG(i, j)
#define EXT_A(i) 0.f
#endif
#if ELA_FMAP == 2
// Sum/sub-sq's a_i = |q_i|^2 / s or g_j = |k_j|^2 / s of the row `r` whose part `p` holds, into
// e[r] (0 past the chunk's end). Every thread of the block calls it (the row sum's shuffles).
template <int W> __device__ __forceinline__ void ext_norm(float* e, const RowPart<W>& p, int r, int n, float inv_s) {
    float x = 0.f;
#pragma unroll
    for (int k = 0; k < RowPart<W>::EPT; ++k) x = fmaf(p.x[k], p.x[k], x);
    x = RowPart<W>::sum(x);
    if (RowPart<W>::head()) e[r] = r < n ? x * inv_s : 0.f;
}
#endif
// The forward sums' V1 and V2 at columns col, col + 1 (col even), from the slot's row: one load
// per column pair, shared by the thread's two rows.
__device__ __forceinline__ float4 ext_cols(const ElaExt& ext, i64 slot, int col) {
    if (!ext.sums) return float4{0.f, 0.f, 0.f, 0.f};
    const float* s = ext.sums + slot * EXT_SUM_LD;
    const float2 v1 = *(const float2*)(s + col), v2 = *(const float2*)(s + ELA_DV + col);
    return float4{v1.x, v1.y, v2.x, v2.y};
}
// ela_out's y epilogue: the extra numerator a_i V1 + V2 added to the accumulator's column pair
// (EXT_NUM_COLS loads the pair's sums once for both rows); nothing for the other maps, whose
// epilogue keeps its plain quotient.
#if ELA_FMAP == 2
#define EXT_NUM_COLS(nt) const float4 xc = ext_cols(ext, slot, ACC_COL(c0, nt, 0))
#define EXT_NUM_ADD(nt, e, i) \
    (acc[nt][e] += fmaf(EXT_A(i), xc.x, xc.z), acc[nt][(e) + 1] += fmaf(EXT_A(i), xc.y, xc.w))
#else
#define EXT_NUM_COLS(nt) (void)0
#define EXT_NUM_ADD(nt, e, i) (void)0
#endif

// The exact path for row i of the chunk (docs/ela.md "exact rows after underflow"; the CPU's
// exact_rows.rs): u = r_i, the row's true largest log-term, so its largest term is 1. Block-wide;
// `sc` is scratch for 2F + C floats.
__device__ void slow_row(int i, const ST* qg, const ST* kg, const ST* vg, i64 lq, i64 lk, i64 lv, const MT* Sg, const float* mst,
                         const float* zst, float* sc, float* red, int mode, ST* yrow, ela_f4* rrow, const ST* dyrow,
                         const ST* yinrow) {
    constexpr int F = ELA_F, DV = ELA_DV;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    float* qr = sc;
    float* sj = qr + F;
    float* wsf = sj + ELA_C;
    if (tid < F) qr[tid] = lfeat(DT::load(qg[(i64)i * lq + tid]));
    __syncthreads();
    float mx = tid < F ? qr[tid] + mst[fsk(tid)] : neg_inf<float>();
    for (int e = tid; e < (i + 1) * F; e += ELA_THREADS) mx = fmaxf(mx, qr[e % F] + lfeat(DT::load(kg[(e / F) * lk + e % F])));
    const float r = block_max<float>(mx, red);
    for (int j = warp; j <= i; j += ELA_WARPS) {
        float s = 0.f;
        for (int f = lane; f < F; f += 32) s += __expf(qr[f] + lfeat(DT::load(kg[(i64)j * lk + f])) - r);
        s = warp_sum(s);
        if (lane == 0) sj[j] = s;
    }
    if (tid < F) wsf[tid] = __expf(qr[tid] + mst[fsk(tid)] - r);
    __syncthreads();
    const float den = block_sum<float>((tid <= i ? sj[tid] : 0.f) + (tid < F ? wsf[tid] * zst[fsk(tid)] : 0.f), red);
    if (mode == 0) {
        for (int col = tid; col < DV; col += ELA_THREADS) {
            float num = 0.f;
            for (int j = 0; j <= i; ++j) num += sj[j] * DT::load(vg[(i64)j * lv + col]);
            for (int f = 0; f < F; ++f) num += wsf[f] * from_mt(Sg[(i64)f * DV + col]);
            yrow[col] = DT::store(num / den);
        }
        if (rrow && tid == 0) {
            ela_f4 o;
            o.x = r, o.y = den, o.z = 0.f, o.w = 1.f;
            *rrow = o;
        }
    } else {
        float s = 0.f;
        for (int col = tid; col < DV; col += ELA_THREADS) s += DT::load(dyrow[col]) * DT::load(yinrow[col]);
        s = block_sum<float>(s, red);
        if (tid == 0) {
            ela_f4 o;
            o.x = r, o.y = den, o.z = s / den, o.w = 1.f;
            *rrow = o;
        }
    }
    __syncthreads();
}

// Mode 0: y of the chunk's rows, and with `rows` also per row (u, den, 0, exact-path flag) for a
// backward that reuses the forward (the reverse scan, or ela_rows_dot with f32 operands, then
// fills in c). Mode 1: per row (u, den, c = (dy . y) / den, exact-path flag).
// `ext` (Identity's tiles only, chunk_ext.cu): the extra terms, added to A's visible entries and
// to each row's numerator and denominator before the division.
extern "C" __global__ void __launch_bounds__(ELA_THREADS, ELA_MINB)
    ela_out(ST* y, ela_f4* rows, const ST* q, const ST* k, const ST* v, const ST* dy, const ST* yin,
            const MT* slot_s, const float* slot_z, const float* slot_m, ElaExt ext, ElaIo io, i64 T, int nch,
            int mode, int causal) {
    constexpr int F = ELA_F, DV = ELA_DV, C = ELA_C, LDF = LDP(F), LDV = LDP(DV), LDC = LDP(C);
    constexpr int R0 = (2 * C * LDF > F * LDV) ? 2 * C * LDF : F * LDV;
    typedef WarpMap<C, C> WA;
    typedef WarpMap<C, DV> WY;
    MT* phia = (MT*)ela_smem;  // [C][LDF] exp(q - mq); with psia later the state tile [F][LDV]
    MT* psia = phia + C * LDF;  // [C][LDF] exp(k - mk)
    MT* Sst = phia;
    MT* phib = phia + R0;       // [C][LDF] exp(q + m - u)
    MT* vsm = phib + C * LDF;   // [C][LDV]
    MT* At = vsm + C * LDV;     // [C][LDC] the masked intra-chunk block A
    float* mst = (float*)(At + C * LDC);
    float* zst = mst + FVEC(F);  // mst, zst: per-feature vectors (fsk in tile.cuh)
    float* mk = zst + FVEC(F);
    float* pm = mk + C;
    float* mq = pm + C;
    float* uu = mq + C;
    float* dst = uu + C;
    float* den = dst + C;
    float* dpart = den + C;  // [WA::GROUPS][C]
    int* slw = (int*)(dpart + WA::GROUPS * C);
    float* red = (float*)(slw + C);
    check_smem(red + 32);
#if ELA_FMAP == 2
    // Identity has no units: mk and pm (key maxima and their prefix maxima) are never read, so
    // the chunk's a and g take their places.
    float* ea = mk;
    float* eg = pm;
#endif

    const int c = blockIdx.x, seq = blockIdx.y, tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const i64 t0 = (i64)c * C, rowbase = seq * T + t0;
    const int n = (int)min((i64)C, T - t0);
    const i64 slot = (i64)seq * (nch + 1) + (causal ? c : nch);
    const MT* Sg = slot_s + slot * F * DV;
    // The chunk's first row of each operand (`rowbase` indexes the row info, which is packed).
    const i64 lq = io.q[2], lk = io.k[2], lv = io.v[2], ldy = io.dy[2], ly = io.y[2];
    const ST *qg = q + io_seq(io.q, seq, io.heads) + t0 * lq, *kg = k + io_seq(io.k, seq, io.heads) + t0 * lk;
    const ST* vg = v + io_seq(io.v, seq, io.heads) + t0 * lv;
    const ST* dyg = dy + io_seq(io.dy, seq, io.heads) + t0 * ldy;  // mode 1
    const ST* yig = yin + io_seq(io.y, seq, io.heads) + t0 * ly;    // mode 1
    ST* yo = y + io_seq(io.y, seq, io.heads) + t0 * ly;             // mode 0

    // Every global load of the chunk is issued here, before any is used: q and k rows, the v tile
    // (or dy and y rows), and the log-scales and z of the state slot.
    typedef RowPart<F> RP;
    RP kp, qp;
    if (causal) kp.load(kg, lk, n);
    qp.load(qg, lq, n);
    TileRegs<ST, true, C, DV> vt;
    if (mode == 0 && causal) vt.load(vg, lv, n);
    RowPart<DV> dyp, yp;
    if (mode == 1) {
        dyp.load(dyg, ldy, n);
        yp.load(yig, ly, n);
    }
    if (tid < F) {
        mst[fsk(tid)] = slot_m[slot * F + tid];
        zst[fsk(tid)] = slot_z[slot * F + tid];
    }
#if ELA_FMAP == 2
    // Sum/sub-sq take a and g from the rows below (ext_norm); the blueprint reads them.
    const bool xt_rows = ext.sums && !ext.ag;
    if (tid < C && !xt_rows) {
        const float2 x = (ext.ag && tid < n) ? ext.ag[rowbase + tid] : float2{0.f, 0.f};
        ea[tid] = x.x, eg[tid] = x.y;
    }
#endif
    const int row = RP::row(), rc0 = RP::col0();
    if (causal) {
        // (N1) key side: mk_j = max_d k_jd, psi_a = exp(k - mk).
        log_features(kp);
        float mx = neg_inf<float>();
#pragma unroll
        for (int e = 0; e < RP::EPT; ++e) mx = fmaxf(mx, kp.x[e]);
        mx = RP::max(mx);  // every lane takes part in the shuffles
        if (row >= n) mx = neg_inf<float>();
        mx = unit_max(mx);
#pragma unroll
        for (int e0 = 0; e0 < RP::EPT; e0 += MT_VEC) {
            float pa[MT_VEC];
#pragma unroll
            for (int k = 0; k < MT_VEC; ++k) pa[k] = feat_if(row < n, kp.x[e0 + k] - mx);
            store_mt_vec(psia + row * LDF + rc0 + e0, pa);
        }
        if (ELA_UNITS && RP::head()) mk[row] = mx;
#if ELA_FMAP == 2
        if (xt_rows) ext_norm(eg, kp, row, n, ext.inv_s);
#endif
        if (mode == 0) vt.store(vsm, LDV, (const float*)0);
    }
    __syncthreads();
    if (ELA_UNITS && causal && warp == 0) {
        // Prefix maxima of mk (causal: row i's units use keys <= i only).
        for (int h = 0; h < C; h += 32) {
            float a = mk[h + lane];
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const float b = __shfl_up_sync(0xffffffffu, a, o);
                if (lane >= o) a = fmaxf(a, b);
            }
            if (h > 0) a = fmaxf(a, pm[h - 1]);
            pm[h + lane] = a;
            __syncwarp();
        }
    }
    __syncthreads();
    {
        // (U), (N1), (N2) query side: u_i, phi_a, phi_b and the state part of the denominator.
        const int i = row;
        log_features(qp);
        float a = neg_inf<float>(), b = neg_inf<float>();
#pragma unroll
        for (int e = 0; e < RP::EPT; ++e) {
            a = fmaxf(a, qp.x[e]);
            b = fmaxf(b, qp.x[e] + mst[fsk(rc0) + fsk(e)]);
        }
        const float mqv = unit_max(RP::max(a)), smax = RP::max(b);
        const float u = unit_max(causal ? fmaxf(mqv + pm[i], smax) : smax);
        float ds = 0.f;
#pragma unroll
        for (int e0 = 0; e0 < RP::EPT; e0 += MT_VEC) {
            float pb[MT_VEC], pa[MT_VEC];
#pragma unroll
            for (int k = 0; k < MT_VEC; k += 2) {
                const int e = e0 + k;
                pb[k] = feat_if(i < n, qp.x[e] + mst[fsk(rc0) + fsk(e)] - u);
                pb[k + 1] = feat_if(i < n, qp.x[e + 1] + mst[fsk(rc0) + fsk(e + 1)] - u);
                ds += pb[k] * zst[fsk(rc0) + fsk(e)] + pb[k + 1] * zst[fsk(rc0) + fsk(e + 1)];
                pa[k] = feat_if(i < n, qp.x[e] - mqv);
                pa[k + 1] = feat_if(i < n, qp.x[e + 1] - mqv);
            }
            store_mt_vec(phib + i * LDF + rc0 + e0, pb);
            if (causal) store_mt_vec(phia + i * LDF + rc0 + e0, pa);
        }
        ds = RP::sum(ds);
#if ELA_FMAP == 2
        if (xt_rows) ext_norm(ea, qp, i, n, ext.inv_s);
#endif
        if (RP::head()) {
            mq[i] = i < n ? mqv : 0.f;
            uu[i] = i < n ? u : 0.f;
            dst[i] = ds;
        }
    }
    // The state tile, in flight during the intra-chunk product (it takes phi_a's and psi_a's
    // place once that product is done).
    TileRegs<MT, false, F, DV> st;
    if (mode == 0) st.load(Sg, F);
    __syncthreads();
    if (causal) {
        // A = (phi_a psi_a^T) * E, E_ij = exp(mq_i + mk_j - u_i), entries above the diagonal set to 0.
        float acc[WA::NT][4];
        zero_acc(acc);
        const int r0 = WA::row0(), c0 = WA::col0();
        const bool skip = TRI_SKIP(r0, c0);  // (warp-uniform)
        if (!skip) mm_tile<WA::NT, false, true>(acc, phia, LDF, psia, LDF, r0, c0, F);
        float slo = 0.f, shi = 0.f;
#if ELA_HOIST
        const int ia = ACC_ROW(r0, 0), ib = ACC_ROW(r0, 2);  // this thread's two rows (ROW_VAL)
        const float rq[2] = {mq[ia], mq[ib]}, ru[2] = {uu[ia], uu[ib]};
#endif
#pragma unroll
        for (int nt = 0; nt < WA::NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; e += 2) {
                const int i = ACC_ROW(r0, e), j = ACC_COL(c0, nt, e);
                const bool ok = i < n;
                // Masked entries are dropped after the product, so a later key's inf or NaN
                // cannot reach an earlier row.
                float a0 = 0.f, a1 = 0.f;
                if (!skip) {
                    a0 = keep_if(ok && j <= i, acc[nt][e] * unit_exp(ROW_VAL(rq, mq, i, e) + mk[j] - ROW_VAL(ru, uu, i, e)) PLUS_EXT_AG(i, j));
                    a1 = keep_if(ok && j + 1 <= i,
                                 acc[nt][e + 1] * unit_exp(ROW_VAL(rq, mq, i, e) + mk[j + 1] - ROW_VAL(ru, uu, i, e)) PLUS_EXT_AG(i, j + 1));
                }
                store_mt2(At + i * LDC + j, a0, a1);
                if (e == 0) slo += a0 + a1;
                else shi += a0 + a1;
            }
        slo += __shfl_xor_sync(0xffffffffu, slo, 1);
        slo += __shfl_xor_sync(0xffffffffu, slo, 2);
        shi += __shfl_xor_sync(0xffffffffu, shi, 1);
        shi += __shfl_xor_sync(0xffffffffu, shi, 2);
        if ((lane & 3) == 0) {
            dpart[WA::group() * C + ACC_ROW(r0, 0)] = slo;
            dpart[WA::group() * C + ACC_ROW(r0, 2)] = shi;
        }
    }
    __syncthreads();
    if (tid < C) {
        float d = dst[tid];
        if (causal)
            for (int g = 0; g < WA::GROUPS; ++g) d += dpart[g * C + tid];
#if ELA_FMAP == 2
        // The extra terms of the keys before the chunk (or all): a_i cnt + G.
        if (ext.sums) d += ea[tid] * (float)(causal ? t0 : T) + ext.sums[slot * EXT_SUM_LD + EXT_SUM_SC];
#endif
        den[tid] = d;
        slw[tid] = (ELA_UNITS && causal && tid < n && d < ELA_TINY) ? 1 : 0;
    }
    if (mode == 0) st.store(Sst, LDV, (const float*)0);  // phi_a, psi_a are dead now
    __syncthreads();
    if (mode == 0) {
        // (F1), (F2): y = (A V + phi_b S) / den.
        float acc[WY::NT][4];
        zero_acc(acc);
        const int r0 = WY::row0(), c0 = WY::col0();
        if (causal) mm_tile<WY::NT, false, false, C>(acc, At, LDC, vsm, LDV, r0, c0, TRI_KEND(r0, C));
        mm_tile<WY::NT, false, false>(acc, phib, LDF, Sst, LDV, r0, c0, F);
#if ELA_MMA
        // 16-bit outputs: a thread's entries lie in two rows, so one reciprocal of each row's
        // denominator and a product per entry (within an ulp of the f32 quotient, far below y's
        // own rounding to 16 bits), not an IEEE division per entry (a reciprocal, three fused
        // multiply-adds, a range check and a branch around a slow path, each). f32 outputs keep
        // the correctly rounded quotient.
        float rd[2];
        bool ok[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int i = ACC_ROW(r0, 2 * h);
            ok[h] = i < n && !slw[i];
            rd[h] = ok[h] ? 1.f / den[i] : 0.f;
        }
#pragma unroll
        for (int nt = 0; nt < WY::NT; ++nt) {
            EXT_NUM_COLS(nt);
#pragma unroll
            for (int e = 0; e < 4; e += 2) {
                const int i = ACC_ROW(r0, e);
                if (!ok[e / 2]) continue;
                EXT_NUM_ADD(nt, e, i);
                store_st2(yo + i * ly + ACC_COL(c0, nt, e), acc[nt][e] * rd[e / 2], acc[nt][e + 1] * rd[e / 2]);
            }
        }
#else
#pragma unroll
        for (int nt = 0; nt < WY::NT; ++nt) {
            EXT_NUM_COLS(nt);
#pragma unroll
            for (int e = 0; e < 4; e += 2) {
                const int i = ACC_ROW(r0, e), col = ACC_COL(c0, nt, e);
                if (i < n && !slw[i]) {
                    EXT_NUM_ADD(nt, e, i);
                    store_st2(yo + i * ly + col, acc[nt][e] / den[i], acc[nt][e + 1] / den[i]);
                }
            }
        }
#endif
        if (rows && tid < n && !slw[tid]) {
            ela_f4 o;
            o.x = uu[tid], o.y = den[tid], o.z = 0.f, o.w = 0.f;
            rows[rowbase + tid] = o;
        }
    } else {
        float s = 0.f;
#pragma unroll
        for (int e = 0; e < RowPart<DV>::EPT; ++e) s += dyp.x[e] * yp.x[e];
        s = RowPart<DV>::sum(s);
        const int i = RowPart<DV>::row();
        if (RowPart<DV>::head() && i < n && !slw[i]) {
            ela_f4 o;
            o.x = uu[i], o.y = den[i], o.z = s / den[i], o.w = 0.f;
            rows[rowbase + i] = o;
        }
    }
    if (__syncthreads_or(tid < C && slw[tid])) {
        float* sc = (float*)phib;  // free now
        for (int i = 0; i < n; ++i) {
            if (!slw[i]) continue;
            slow_row(i, qg, kg, vg, lq, lk, lv, Sg, mst, zst, sc, red, mode, yo + i * ly,
                     rows ? rows + rowbase + i : (ela_f4*)0, dyg + i * ldy, yig + i * ly);
        }
    }
}
