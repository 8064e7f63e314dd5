// One decoding step of a whole ELA language model in one launch (cuda/src/ops/lm_decode.rs):
// one block per sequence walks every layer with its activations in shared memory, f32
// throughout, reading the weights (f32, f16 or bf16) straight from global memory. A decoding step
// of a small model is a few dozen tiny products and row operations; as separate kernels each one
// waits for the previous one's launch and its results' round trip through global memory, which is
// most of the step's time (docs/model.md, "Decoding in one kernel").
//
// Compiled per model shape: LM_WT (weight dtype: 0 f32, 1 f16, 2 bf16), LM_D (width), LM_HEADS,
// LM_FF (FFN hidden width), LM_LINK (0 Hyper-Link, 1 pre-norm residual, 2 post-norm residual),
// LM_CLUSTER (blocks per sequence). The vocabulary, the layer count and the norms' eps are
// arguments.
//
// With LM_CLUSTER = C > 1 (Hopper's thread-block clusters), the C blocks of a cluster share one
// sequence: each computes 1/C of the rows of every product (and of the ELA state's columns) and
// writes its results into the shared memory of all C blocks (distributed shared memory), then
// the cluster meets at a barrier. Every block keeps the whole residual stream and repeats the
// cheap row operations (norms, residual adds, the ELA step's per-feature terms) itself. A step
// of one sequence then reads its weights through C multiprocessors instead of one, which is
// what limits a small batch: the products wait on the reading, not on arithmetic.
//
// Per layer, with x the residual stream of the sequence (docs/model.md, "Decoding in one kernel"):
//   Hyper-Link:  a = Attn(N1(x)); x += a + FFN(a)
//   pre-norm:    h = x + Attn(N1(x)); x = h + FFN(N2(h))
//   post-norm:   h = N1(x + Attn(x)); x = N2(h + FFN(h))
// with Attn the q, k, v products, the Hadamard-Exp ELA step on the layer's f32 state (the same
// update as ela_step_fast in ela/step.cu) and the o product, and FFN(u) = W_down (silu(W_gate u)
// * W_up u). Then the final norm and the logits over the head (the embedding table when tied).

#if LM_WT == 0
typedef F32 WD;
#elif LM_WT == 1
typedef F16 WD;
#else
typedef BF16 WD;
#endif
typedef WD::S WS;

#define LM_THREADS 512
// Pointers in the parameter block (LM_PTRS in lm_decode.rs): embedding, final norm gain (0: no
// final norm), head (the embedding when tied), then LM_LAYER_PTRS per layer; then the step's
// token ids for batches of up to LM_IDS sequences (larger ones pass them in a device buffer).
// Passing the ids by value spares the step a copy to the device and the wait for it.
#define LM_PTRS 387
#define LM_LAYER_PTRS 12
#define LM_IDS 128
struct LmPtrs {
    u64 p[LM_PTRS];
    u32 ids[LM_IDS];
};
// A layer's pointers, in the order of lm_decode.rs's `LayerSlot`.
enum { P_NORM1, P_NORM2, P_Q, P_K, P_V, P_O, P_GATE, P_UP, P_DOWN, P_S, P_Z, P_M };

constexpr int D = LM_D, H = LM_HEADS, HD = LM_D / LM_HEADS, FF = LM_FF, NT = LM_THREADS, NW = NT / 32;
constexpr int C = LM_CLUSTER;
static_assert(D % C == 0, "the ELA state's columns split evenly over the cluster");
// Weights per 16-byte load.
constexpr int VEC = 16 / sizeof(WS);
static_assert(D % VEC == 0 && FF % VEC == 0, "rows are read 16 bytes at a time");
// The ELA state columns of one block, and the rows of each column summed by separate thread
// groups (then added in shared memory).
constexpr int DC = D / C;
constexpr int RG = DC <= NT ? NT / DC : 1;

// This block's rank in its cluster (0 without clusters).
__device__ __forceinline__ int cta_rank() {
#if LM_CLUSTER > 1
    u32 r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return (int)r;
#else
    return 0;
#endif
}

// A barrier of every thread of the cluster, which also orders the distributed shared-memory
// stores before it (release) with the reads after it (acquire); a block barrier without clusters.
__device__ __forceinline__ void cluster_sync() {
#if LM_CLUSTER > 1
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
#else
    __syncthreads();
#endif
}

// Every block of a cluster must have started before another writes into its shared memory: the
// kernel arrives at the cluster barrier as it begins (cluster_arrive) and waits for the others
// (cluster_wait) just before its first such write, so the start-up skew overlaps the embedding
// and the first norm. Each arrive pairs with the next wait.
__device__ __forceinline__ void cluster_arrive() {
#if LM_CLUSTER > 1
    asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void cluster_wait() {
#if LM_CLUSTER > 1
    asm volatile("barrier.cluster.wait.aligned;" ::: "memory");
#endif
}

// Writes v to *p in this block's shared memory and in the same place of every other block of
// the cluster.
__device__ __forceinline__ void share(float* p, float v) {
#if LM_CLUSTER > 1
    const u32 a = (u32)__cvta_generic_to_shared(p);
#pragma unroll
    for (int r = 0; r < C; ++r) {
        u32 ra;
        asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(ra) : "r"(a), "r"(r));
        asm volatile("st.shared::cluster.f32 [%0], %1;" ::"r"(ra), "f"(v) : "memory");
    }
#else
    *p = v;
#endif
}

// The first of the `n` rows (or columns) that block `rank` of a cluster computes.
__device__ __forceinline__ int part(int n, int rank) { return (int)((i64)n * rank / C); }

__device__ __forceinline__ const WS* wptr(u64 p) { return (const WS*)p; }

// Asks for the `n` elements at `p` to be brought into this multiprocessor's L1, one request per
// 128-byte line spread over the block, without waiting for them. Each phase of the step below
// prefetches the weights (and state) of the phase after it: the lines then arrive while this
// block is busy with barriers, norms and the ELA update instead of stalling the next product.
// At most the first 64 KiB of a tensor: more would evict what the current phase still reads.
template <typename T>
__device__ __forceinline__ void prefetch_l1(const T* p, i64 n) {
    const char* c = (const char*)p;
    const i64 bytes = min(n * (i64)sizeof(T), (i64)65536);
    for (i64 i = (i64)threadIdx.x * 128; i < bytes; i += (i64)NT * 128) asm volatile("prefetch.global.L1 [%0];" ::"l"(c + i));
}

// out[o] = W_o . in for the rows o < out_rows of a row-major weight with IN columns, where
// row(o) points at row o (it may pick one of several matrices: q, k and v are one product here).
// A warp takes 32 / LPR rows at a time, LPR lanes per row, each lane 16-byte chunks of the row;
// U such row groups are loaded before any is summed, so every lane has about eight loads in flight
// (the products are bound by the latency of reading the weights, not by arithmetic). A lane meets
// the same input elements in every row, so it keeps them in registers when they are few (reading
// them from shared memory per row would conflict: the lanes of a row read 32-byte pieces 32
// bytes apart). epi(o, sum) receives each result once.
template <int IN, typename RowFn, typename Epi>
__device__ __forceinline__ void gemv(int out_rows, const float* in, RowFn row, Epi epi) {
    constexpr int CH = IN / VEC;
    constexpr int LPR = CH >= 32 ? 32 : CH >= 16 ? 16 : CH >= 8 ? 8 : CH >= 4 ? 4 : CH >= 2 ? 2 : 1;
    constexpr int NJ = (CH + LPR - 1) / LPR;
    constexpr int RPW = 32 / LPR;
    // Row groups loaded before any is summed: about eight 16-byte loads per lane, fewer in a
    // cluster, whose blocks take 1/C of the rows each (and have registers to spare for less).
    constexpr int UL = C >= 8 ? 2 : C >= 2 ? 4 : 8;
    constexpr int U = NJ >= UL ? 1 : UL / NJ;
    constexpr int SLOT = NW * RPW;
    constexpr bool KEEP = NJ * VEC <= 32;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, sub = lane % LPR, grp = lane / LPR;
    float xr[KEEP ? NJ * VEC : 1];
    if (KEEP) {
#pragma unroll
        for (int j = 0; j < NJ; ++j) {
            const int c = sub + j * LPR;
#pragma unroll
            for (int e = 0; e < VEC; ++e) xr[KEEP ? j * VEC + e : 0] = c < CH ? in[c * VEC + e] : 0.f;
        }
    }
    for (int base = 0; base < out_rows; base += SLOT * U) {
        u128x w[U][NJ];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int o = base + u * SLOT + warp * RPW + grp;
#pragma unroll
            for (int j = 0; j < NJ; ++j) {
                const int c = sub + j * LPR;
                if (o < out_rows && c < CH) w[u][j] = *(const u128x*)(row(o) + c * VEC);
            }
        }
        float acc[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int o = base + u * SLOT + warp * RPW + grp;
            acc[u] = 0.f;
#pragma unroll
            for (int j = 0; j < NJ; ++j) {
                const int c = sub + j * LPR;
                if (o < out_rows && c < CH) {
                    Pack16<WS> pk;
                    pk.raw = w[u][j];
#pragma unroll
                    for (int e = 0; e < VEC; ++e) {
                        const float xe = KEEP ? xr[KEEP ? j * VEC + e : 0] : in[c * VEC + e];
                        acc[u] = fmaf(WD::load(pk.v[e]), xe, acc[u]);
                    }
                }
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
#pragma unroll
            for (int off = LPR / 2; off > 0; off >>= 1) acc[u] += __shfl_xor_sync(0xffffffffu, acc[u], off);
            const int o = base + u * SLOT + warp * RPW + grp;
            if (sub == 0 && o < out_rows) epi(o, acc[u]);
        }
    }
}

// out = x / sqrt(mean(x^2) + eps) * w (w may be null: no gain). Ends with a barrier.
__device__ __forceinline__ void rms_norm(const float* x, u64 w, float eps, float* out, float* red) {
    float s = 0.f;
    for (int i = threadIdx.x; i < D; i += NT) s += x[i] * x[i];
    const float r = rsqrtf(block_sum<float>(s, red) / (float)D + eps);
    for (int i = threadIdx.x; i < D; i += NT) out[i] = x[i] * r * (w ? WD::load(wptr(w)[i]) : 1.f);
    __syncthreads();
}

// The Hadamard-Exp ELA step of every head of sequence `b` (ela_step_fast in ela/step.cu, for all
// heads of one sequence in one block): absorb (k, v) into the f32 state (S, z, m) with the running
// log-scales m, then y = phi^T S / (phi . z) with phi = exp(q + m - u), u the largest log-term of
// the head. `qkv` holds q, k, v (D each, head-major); `mz` the state's m and z as the step began
// (read before the cluster's last barrier, so no block sees another's update). Every block
// computes the per-feature terms of all heads; block `rank` of a cluster updates and reads the
// state columns rank * DC .. + DC, writes back z and m of those features, and shares its
// columns of the heads' outputs into every block's `y` (D, head-major, as the o product reads
// them). Ends with a cluster barrier.
__device__ void ela_heads(int b, int rank, const float* qkv, float* S, float* z, float* m, const float* mz, float* y,
                          float* sc) {
    float *rs = sc, *ps = sc + D, *ph = sc + 2 * D, *zs = sc + 3 * D, *den = sc + 4 * D, *pt = den + H;
    const float *q = qkv, *k = qkv + D, *v = qkv + 2 * D;
    const i64 off = (i64)b * D;  // this sequence's heads are rows b * H .. b * H + H of the state
    const int j_lo = rank * DC;
    for (int i = threadIdx.x; i < D; i += NT) {
        const float mo = mz[i], kf = k[i], mn = fmaxf(mo, kf);
        const float r = units_factor(mo, mn), p = __expf(kf - mn);
        const float zn = mz[D + i] * r + p;
        if (i >= j_lo && i < j_lo + DC) {
            z[off + i] = zn;
            m[off + i] = mn;
        }
        rs[i] = r;
        ps[i] = p;
        zs[i] = zn;
        ph[i] = q[i] + mn;
    }
    __syncthreads();
    // One warp per head: its largest log-term, the features phi and the denominator.
    for (int h = threadIdx.x >> 5; h < H; h += NW) {
        const int lane = threadIdx.x & 31;
        float u = neg_inf<float>();
        for (int f = lane; f < HD; f += 32) u = fmaxf(u, ph[h * HD + f]);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) u = fmaxf(u, __shfl_xor_sync(0xffffffffu, u, o));
        float dsum = 0.f;
        for (int f = lane; f < HD; f += 32) {
            const float p = __expf(ph[h * HD + f] - u);
            ph[h * HD + f] = p;
            dsum += p * zs[h * HD + f];
        }
        dsum = warp_sum(dsum);
        if (lane == 0) den[h] = dsum;
    }
    __syncthreads();
    // Column j = h * HD + c of the heads' outputs; RG thread groups take every RG-th feature row.
    float* Sb = S + (i64)b * H * HD * HD;
    for (int j0 = 0; j0 < DC; j0 += NT / RG) {
        const int jl = j0 + threadIdx.x % (NT / RG), g = threadIdx.x / (NT / RG), j = j_lo + jl;
        float acc = 0.f;
        if (jl < DC && g < RG) {
            const int h = j / HD, c = j % HD;
            const float vc = v[j];
            float* Sh = Sb + (i64)h * HD * HD;
            for (int f = g; f < HD; f += RG) {
                const int i = h * HD + f;
                const float s = Sh[f * HD + c] * rs[i] + ps[i] * vc;
                Sh[f * HD + c] = s;
                acc += ph[i] * s;
            }
        }
        if (RG > 1) {
            if (jl < DC && g < RG) pt[g * DC + jl] = acc;
            __syncthreads();
            if (g == 0 && jl < DC) {
                float t = 0.f;
#pragma unroll
                for (int e = 0; e < RG; ++e) t += pt[e * DC + jl];
                share(&y[j], t / den[j / HD]);
            }
        } else if (jl < DC) {
            share(&y[j], acc / den[j / HD]);
        }
    }
    cluster_sync();
}

// Rows lo .. hi of a row-major [rows, in] weight, prefetched into L1 (prefetch_l1).
__device__ __forceinline__ void prefetch_rows(const WS* w, int in, int lo, int hi) {
    if (lo < hi) prefetch_l1(w + (i64)lo * in, (i64)(hi - lo) * in);
}

// The rows of q, k and v (stacked: 3 D rows) that block `rank` computes.
__device__ __forceinline__ void prefetch_qkv(const u64* L, int rank) {
    const int lo = part(3 * D, rank), hi = part(3 * D, rank + 1);
#pragma unroll
    for (int t = 0; t < 3; ++t) prefetch_rows(wptr(L[P_Q + t]), D, max(lo - t * D, 0), min(hi - t * D, D));
}

// Shared memory (floats): x, xn, qkv (3 D), y, a, tmp, dn, m and z as the step began (2 D), the
// ELA scratch (4 D + H + NT), the FFN's gate and up (2 FF), 32 for reductions. lm_decode.rs's
// `smem_bytes` mirrors this.
extern "C" __global__ void __launch_bounds__(LM_THREADS, 1)
#if LM_CLUSTER > 1
    __cluster_dims__(LM_CLUSTER, 1, 1)
#endif
    lm_decode(const LmPtrs P, const u32* ids, WS* logits, int layers, int vocab, double eps, double final_eps) {
    extern __shared__ float smem[];
    float *x = smem, *xn = x + D, *qkv = xn + D, *y = qkv + 3 * D, *a = y + D, *tmp = a + D, *dn = tmp + D;
    float *mz = dn + D, *sc = mz + 2 * D;
    float *gate = sc + 4 * D + H + NT, *up = gate + FF, *red = up + FF;
    // A cluster's blocks are consecutive in x: C blocks per sequence.
    const int b = blockIdx.x / C, rank = cta_rank();
    const float ep = (float)eps;
    // This block's rows of the D-row products (o, down) and of the FFN's hidden width.
    const int d_lo = part(D, rank), d_hi = part(D, rank + 1), f_lo = part(FF, rank), f_hi = part(FF, rank + 1);
    const int fc = f_hi - f_lo;

    cluster_arrive();
    const WS* E = wptr(P.p[0]);
    // The host checks the ids (`ids` is null when they came in P); one that is not in the
    // vocabulary anyway gives NaN logits rather than a read outside the table.
    const i64 id = ids ? ids[b] : P.ids[b];
    for (int i = threadIdx.x; i < D; i += NT) x[i] = id < vocab ? WD::load(E[id * D + i]) : __int_as_float(0x7fc00000);
    prefetch_qkv(P.p + 3, rank);
    __syncthreads();

    for (int l = 0; l < layers; ++l) {
        const u64* L = P.p + 3 + l * LM_LAYER_PTRS;
        const float *Sl = (const float*)L[P_S], *zl = (const float*)L[P_Z], *ml = (const float*)L[P_M];
        // The state as the step begins, read by every block before the barrier after the q, k, v
        // product (the blocks write their parts back only after it).
        for (int i = threadIdx.x; i < D; i += NT) {
            mz[i] = ml[(i64)b * D + i];
            mz[D + i] = zl[(i64)b * D + i];
        }
        // Ahead of the ELA update and the o product: this block's state columns (the heads they
        // fall in) and its rows of o.
        {
            const int h_lo = d_lo / HD, h_hi = (d_hi - 1) / HD + 1;
            prefetch_l1(Sl + ((i64)b * H + h_lo) * HD * HD, (i64)(h_hi - h_lo) * HD * HD);
        }
        prefetch_rows(wptr(L[P_O]), D, d_lo, d_hi);
        // Attention: its input is N1(x), or x itself under the post-norm link.
        const float* ain = x;
        if (LM_LINK != 2) {
            rms_norm(x, L[P_NORM1], ep, xn, red);
            ain = xn;
        }
        const WS *wq = wptr(L[P_Q]), *wk = wptr(L[P_K]), *wv = wptr(L[P_V]);
        if (l == 0) cluster_wait();  // the other blocks have started (cluster_arrive)
        {
            const int lo = part(3 * D, rank), hi = part(3 * D, rank + 1);
            gemv<D>(
                hi - lo, ain,
                [&](int o) {
                    o += lo;
                    return o < D ? wq + (i64)o * D : o < 2 * D ? wk + (i64)(o - D) * D : wv + (i64)(o - 2 * D) * D;
                },
                [&](int o, float s) { share(&qkv[lo + o], s); });
        }
        prefetch_rows(wptr(L[P_GATE]), D, f_lo, f_hi);
        prefetch_rows(wptr(L[P_UP]), D, f_lo, f_hi);
        cluster_sync();
        ela_heads(b, rank, qkv, (float*)L[P_S], (float*)L[P_Z], (float*)L[P_M], mz, y, sc);
        const WS* wo = wptr(L[P_O]);
        gemv<D>(
            d_hi - d_lo, y, [&](int o) { return wo + (i64)(d_lo + o) * D; }, [&](int o, float s) { share(&a[d_lo + o], s); });
        prefetch_rows(wptr(L[P_DOWN]), FF, d_lo, d_hi);
        cluster_sync();

        // The FFN's input: a (Hyper-Link), N2(x + a) (pre-norm, x becomes h), N1(x + a) (post-norm).
        const float* fin = a;
        if (LM_LINK == 1) {
            for (int i = threadIdx.x; i < D; i += NT) x[i] += a[i];
            __syncthreads();
            rms_norm(x, L[P_NORM2], ep, xn, red);
            fin = xn;
        } else if (LM_LINK == 2) {
            for (int i = threadIdx.x; i < D; i += NT) tmp[i] = x[i] + a[i];
            __syncthreads();
            rms_norm(tmp, L[P_NORM1], ep, x, red);
            fin = x;
        }
        // This block's rows of gate and up as one pass, then its part of silu(gate) * up, shared.
        const WS *wg = wptr(L[P_GATE]), *wu = wptr(L[P_UP]);
        gemv<D>(
            2 * fc, fin, [&](int o) { return o < fc ? wg + (i64)(f_lo + o) * D : wu + (i64)(f_lo + o - fc) * D; },
            [&](int o, float s) { (o < fc ? gate : up)[f_lo + (o < fc ? o : o - fc)] = s; });
        if (l + 1 < layers) {
            prefetch_qkv(L + LM_LAYER_PTRS, rank);
        } else {
            prefetch_rows(wptr(P.p[2]), D, part(vocab, rank), part(vocab, rank + 1));
        }
        __syncthreads();
        for (int i = f_lo + threadIdx.x; i < f_hi; i += NT) {
            const float g = gate[i];
            share(&gate[i], g / (1.f + __expf(-g)) * up[i]);
        }
        cluster_sync();
        const WS* wd = wptr(L[P_DOWN]);
        gemv<FF>(
            d_hi - d_lo, gate, [&](int o) { return wd + (i64)(d_lo + o) * FF; }, [&](int o, float s) { share(&dn[d_lo + o], s); });
        cluster_sync();
        // The residual update, by every block for the whole stream.
        for (int i = threadIdx.x; i < D; i += NT) {
            if (LM_LINK == 0) {
                x[i] += a[i] + dn[i];
            } else if (LM_LINK == 1) {
                x[i] += dn[i];
            } else {
                tmp[i] = x[i] + dn[i];
            }
        }
        __syncthreads();
        if (LM_LINK == 2) rms_norm(tmp, L[P_NORM2], ep, x, red);
    }

    const float* hin = x;
    if (P.p[1]) {
        rms_norm(x, P.p[1], (float)final_eps, xn, red);
        hin = xn;
    }
    const WS* W = wptr(P.p[2]);
    WS* out = logits + (i64)b * vocab;
    const int v_lo = part(vocab, rank), v_hi = part(vocab, rank + 1);
    gemv<D>(v_hi - v_lo, hin, [&](int o) { return W + (i64)(v_lo + o) * D; }, [&](int o, float s) { out[v_lo + o] = WD::store(s); });
}
