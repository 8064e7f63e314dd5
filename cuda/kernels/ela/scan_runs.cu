// The second half of a chunked scan split into runs (cuda/README.md, "Scans in runs"): the runs
// of ela_scan (chunk_fwd.cu, which defines ScanSegs) were walked side by side from empty states;
// ela_scan_join joins each run's relative slots with the exact state before the run, and
// ela_scan_fold, at one chunk a run, walks the chunks' own states (a two-level scan). Compiled
// in the chunk module after chunk_fwd.cu (cuda/src/kernels.rs, `KernelFile::ElaChunk`).

// Joins the runs of a split ela_scan. Within a run every relative slot needs the same exact state
// before the run, so the slots are independent: a thread owns four consecutive value columns of one
// feature in JOIN_SLOTS consecutive slots and loads them first, as 16-byte vectors (all loads in
// flight at once; few, wide threads: the kernel is bound by the latency of its loads and the number
// of its blocks, not by bandwidth). Mode 0, with c = (S, z, m) the state before the run and r the
// relative slot: m = max(c.m, r.m), S = c.S e^(c.m - m) + r.S e^(r.m - m), z alike; slot nch (the
// final state) is every run folded. Mode 1: the accumulators of the later runs, already in the
// forward's units, moved to the slot's units (those of m^(c+1)) and added.
// The carry (the runs folded so far) only grows: mode 0 visits its slots upwards and folds in run
// after run from run 0; mode 1 visits them downwards and folds in run after run from the last. Each
// fold is one short step, so the code stays small although the slots are unrolled.
// Grid: x = groups of JOIN_SLOTS slots to join (mode 0: slots len .. nch; mode 1: 0 .. (runs - 1)
// len - 1), y = sequence x groups of JOIN_FPB features; 256 threads.
#define JOIN_SLOTS 8
#define JOIN_FPB (4 * 256 / ELA_DV)
template <int MODE>
__device__ __forceinline__ void scan_join(MT* __restrict__ slot_s, float* __restrict__ slot_z, float* __restrict__ slot_m,
                                          const ScanSegs& seg, int nch) {
    constexpr int FA = ELA_F, DV = ELA_DV, FPB = JOIN_FPB, NS = JOIN_SLOTS;
    static_assert(FA % FPB == 0, "whole feature groups");
    const int j = 4 * (threadIdx.x % (DV / 4)), seq = blockIdx.y / (FA / FPB);
    const int f = (blockIdx.y % (FA / FPB)) * FPB + threadIdx.x / (DV / 4);
    const i64 nslot = MODE == 0 ? (i64)nch + 1 : (i64)nch;
    const int first = MODE == 0 ? seg.len : 0, stop = MODE == 0 ? nch + 1 : (seg.runs - 1) * seg.len;
    const int c0 = first + blockIdx.x * NS;
    const float* __restrict__ es = seg.end_s + (i64)seq * seg.runs * FA * DV + (i64)f * DV + j;
    const float* __restrict__ ez = seg.end_z + (i64)seq * seg.runs * FA + f;
    const float* __restrict__ em = seg.end_m + (i64)seq * seg.runs * FA + f;  // mode 0 only
    const float* __restrict__ sm = slot_m + seq * ((i64)nch + 1) * FA + f;    // mode 1: the forward's units
    const i64 es_run = (i64)FA * DV;  // end_s stride between runs (end_z, end_m: FA)
    auto idx = [&](int c) { return (seq * nslot + c) * FA + f; };
    // The relative slots (mode 0's final slot has none: it is the fold of every run).
    ela_f4 rs[NS];
    float rz[NS], rm[NS];
#pragma unroll
    for (int k = 0; k < NS; ++k) {
        const int c = c0 + k;
        rs[k] = ela_f4{0.f, 0.f, 0.f, 0.f}, rz[k] = 0.f, rm[k] = neg_inf<float>();
        if (c < stop && c < nch) {
            rs[k] = *(const ela_f4*)(seg.s + idx(c) * DV + j), rz[k] = seg.z[idx(c)];
            if (MODE == 0) rm[k] = seg.m[idx(c)];
        }
    }
    // The carry: mode 0 the state before run cg (runs 0 .. cg - 1 folded, from the empty state);
    // mode 1 the accumulators after run cg (runs cg + 1 .. last), in the units of slot (cg + 1) len.
    int cg = MODE == 0 ? 0 : seg.runs - 1;
    ela_f4 cs = {0.f, 0.f, 0.f, 0.f};
    float cz = 0.f, cm = MODE == 0 ? neg_inf<float>() : sm[(i64)cg * seg.len * FA];
    // x a + y b, entry by entry.
    auto axpby = [](ela_f4 x, float a, ela_f4 y, float b) {
        return ela_f4{x.x * a + y.x * b, x.y * a + y.y * b, x.z * a + y.z * b, x.w * a + y.w * b};
    };
    auto advance_to = [&](int g) {
        // Rolled: usually no or one fold per slot; unrolled copies would only grow the code.
#pragma unroll 1
        for (; MODE == 0 ? cg < g : cg > g; cg += MODE == 0 ? 1 : -1) {
            const ela_f4 e = *(const ela_f4*)(es + cg * es_run);
            if (MODE == 0) {
                const float m = fmaxf(cm, em[cg * FA]), a = units_factor(cm, m), b = units_factor(em[cg * FA], m);
                cs = axpby(cs, a, e, b), cz = cz * a + ez[cg * FA] * b, cm = m;
            } else {
                const float um = sm[(i64)cg * seg.len * FA], a = units_factor(cm, um);
                cs = axpby(cs, a, e, 1.f), cz = ez[cg * FA] + cz * a, cm = um;
            }
        }
    };
#pragma unroll
    for (int i = 0; i < NS; ++i) {
        const int k = MODE == 0 ? i : NS - 1 - i, c = c0 + k;
        if (c >= stop) continue;
        // Slot c's run (mode 0's final slot: after every run).
        advance_to(c == nch ? seg.runs : c / seg.len);
        ela_f4 s;
        float z, m;
        if (MODE == 0) {
            m = fmaxf(cm, rm[k]);
            const float a = units_factor(cm, m), b = units_factor(rm[k], m);
            s = axpby(cs, a, rs[k], b), z = cz * a + rz[k] * b;
        } else {
            const float a = units_factor(cm, sm[(i64)(c + 1) * FA]);
            s = axpby(cs, a, rs[k], 1.f), z = rz[k] + cz * a;
        }
        st_mt4(slot_s + idx(c) * DV + j, s.x, s.y, s.z, s.w);
        if (j == 0) {
            slot_z[idx(c)] = z;
            if (MODE == 0) slot_m[idx(c)] = m;
        }
    }
}

extern "C" __global__ void __launch_bounds__(256)
    ela_scan_join(MT* __restrict__ slot_s, float* __restrict__ slot_z, float* __restrict__ slot_m, ScanSegs seg,
                  int nch, int mode) {
    if (mode == 0) scan_join<0>(slot_s, slot_z, slot_m, seg, nch);
    else scan_join<1>(slot_s, slot_z, slot_m, seg, nch);
}

// Folds a scan split into runs of one chunk (seg.len = 1, seg.runs = nch: every run is one
// chunk's own state, made in parallel by the scan kernel) into the slots: the second half of a
// two-level scan, whose first half has no chain of dependent steps at all. A thread owns four
// value columns of one feature of one sequence and walks its chunks in order, carrying the state
// in f32 with the join's formulas (each slot is the carry, as the relative slot of a one-chunk
// run is empty). Its chain per chunk is a few multiply-adds; the loads do not depend on it, so
// the next FOLD_AHEAD chunks' end states are in flight while the current ones are folded.
// Mode 0 writes slots 1 .. nch (the scan kernel wrote slot 0), mode 1 slots nch - 2 .. 0 (the scan
// kernel wrote slot nch - 1). Grid: x = n F Dv / (4 * 256) blocks of 256 threads.
#define FOLD_AHEAD 8
template <int MODE>
__device__ __forceinline__ void scan_fold(MT* __restrict__ slot_s, float* __restrict__ slot_z, float* __restrict__ slot_m,
                                          const ScanSegs& seg, int nch, i64 nseq) {
    constexpr int FA = ELA_F, DV = ELA_DV, NA = FOLD_AHEAD;
    const i64 g = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= nseq * FA * (DV / 4)) return;
    const int j = 4 * (int)(g % (DV / 4)), f = (int)((g / (DV / 4)) % FA);
    const i64 seq = g / ((i64)FA * (DV / 4));
    const i64 nslot = MODE == 0 ? (i64)nch + 1 : (i64)nch;
    const float* __restrict__ es = seg.end_s + seq * nch * FA * DV + (i64)f * DV + j;
    const float* __restrict__ ez = seg.end_z + seq * nch * FA + f;
    const float* __restrict__ em = seg.end_m + seq * nch * FA + f;          // mode 0 only
    const float* __restrict__ sm = slot_m + seq * ((i64)nch + 1) * FA + f;  // mode 1: the forward's units
    // Step k of the walk folds run r(k) and writes slot c(k): mode 0 r = k, c = k + 1 (k < nch);
    // mode 1 r = nch - 1 - k, c = r - 1 (k < nch - 1).
    const int steps = MODE == 0 ? nch : nch - 1;
    auto run_of = [&](int k) { return MODE == 0 ? k : nch - 1 - k; };
    // The carry: mode 0 the state after runs 0 .. r (from the empty state); mode 1 the
    // accumulators of runs r .. nch - 1 in the units of slot r (the forward's m^(r)).
    ela_f4 cs = {0.f, 0.f, 0.f, 0.f};
    float cz = 0.f, cm = MODE == 0 ? neg_inf<float>() : sm[(i64)(nch - 1) * FA];
    ela_f4 e[NA];
    float ze[NA], me[NA];  // me: mode 0 the run's units, mode 1 the units of slot r
    auto load = [&](int k0) {
#pragma unroll
        for (int i = 0; i < NA; ++i) {
            const int k = k0 + i, r = run_of(k);
            if (k < steps) {
                e[i] = *(const ela_f4*)(es + (i64)r * FA * DV), ze[i] = ez[(i64)r * FA];
                me[i] = MODE == 0 ? em[(i64)r * FA] : sm[(i64)r * FA];
            }
        }
    };
    load(0);
    for (int k0 = 0; k0 < steps; k0 += NA) {
        ela_f4 ce[NA];
        float cze[NA], cme[NA];
#pragma unroll
        for (int i = 0; i < NA; ++i) ce[i] = e[i], cze[i] = ze[i], cme[i] = me[i];
        if (k0 + NA < steps) load(k0 + NA);  // the next chunks' loads fly while these fold
#pragma unroll
        for (int i = 0; i < NA; ++i) {
            const int k = k0 + i;
            if (k >= steps) break;
            const int c = MODE == 0 ? k + 1 : run_of(k) - 1;
            if (MODE == 0) {
                const float m = fmaxf(cm, cme[i]), a = units_factor(cm, m), b = units_factor(cme[i], m);
                cs = ela_f4{cs.x * a + ce[i].x * b, cs.y * a + ce[i].y * b, cs.z * a + ce[i].z * b, cs.w * a + ce[i].w * b};
                cz = cz * a + cze[i] * b, cm = m;
            } else {
                const float a = units_factor(cm, cme[i]);
                cs = ela_f4{cs.x * a + ce[i].x, cs.y * a + ce[i].y, cs.z * a + ce[i].z, cs.w * a + ce[i].w};
                cz = cze[i] + cz * a, cm = cme[i];
            }
            // Mode 1: slot c = r - 1 holds the rows after chunk c, in the units of slot c + 1 = r:
            // the carry's own.
            const i64 at = (seq * nslot + c) * FA + f;
            st_mt4(slot_s + at * DV + j, cs.x, cs.y, cs.z, cs.w);
            if (j == 0) {
                slot_z[at] = cz;
                if (MODE == 0) slot_m[at] = cm;
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(256)
    ela_scan_fold(MT* __restrict__ slot_s, float* __restrict__ slot_z, float* __restrict__ slot_m, ScanSegs seg,
                  int nch, int mode, i64 nseq) {
    if (mode == 0) scan_fold<0>(slot_s, slot_z, slot_m, seg, nch, nseq);
    else scan_fold<1>(slot_s, slot_z, slot_m, seg, nch, nseq);
}
