// One decoding step of a whole ELA language model in one launch (cuda/src/ops/lm_decode.rs):
// one block per sequence walks every layer with its activations in shared memory, f32
// throughout, reading the weights (f32, f16 or bf16) straight from global memory. A decoding step
// of a small model is a few dozen tiny products and row operations; as separate kernels each one
// waits for the previous one's launch and its results' round trip through global memory, which is
// most of the step's time (docs/model.md, "Decoding in one kernel").
//
// Compiled per model shape: LM_WT (weight dtype: 0 f32, 1 f16, 2 bf16), LM_D (width), LM_HEADS,
// LM_FF (FFN hidden width), LM_LINK (0 Hyper-Link, 1 pre-norm residual, 2 post-norm residual).
// The vocabulary, the layer count and the norms' eps are arguments.
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
// final norm), head (the embedding when tied), then LM_LAYER_PTRS per layer.
#define LM_PTRS 495
#define LM_LAYER_PTRS 12
struct LmPtrs {
    u64 p[LM_PTRS];
};
// A layer's pointers, in the order of lm_decode.rs's `LayerSlot`.
enum { P_NORM1, P_NORM2, P_Q, P_K, P_V, P_O, P_GATE, P_UP, P_DOWN, P_S, P_Z, P_M };

constexpr int D = LM_D, H = LM_HEADS, HD = LM_D / LM_HEADS, FF = LM_FF, NT = LM_THREADS, NW = NT / 32;
// Weights per 16-byte load.
constexpr int VEC = 16 / sizeof(WS);
static_assert(D % VEC == 0 && FF % VEC == 0, "rows are read 16 bytes at a time");
// Rows of ELA state columns summed by separate thread groups (then added in shared memory).
constexpr int RG = D <= NT ? NT / D : 1;

__device__ __forceinline__ const WS* wptr(u64 p) { return (const WS*)p; }

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
    constexpr int U = NJ >= 8 ? 1 : 8 / NJ;
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
// the head. `qkv` holds q, k, v (D each, head-major); `y` gets the heads' outputs (D, head-major,
// as the o product reads them). Ends with a barrier.
__device__ void ela_heads(int b, const float* qkv, float* S, float* z, float* m, float* y, float* sc) {
    float *rs = sc, *ps = sc + D, *ph = sc + 2 * D, *zs = sc + 3 * D, *den = sc + 4 * D, *part = den + H;
    const float *q = qkv, *k = qkv + D, *v = qkv + 2 * D;
    const i64 off = (i64)b * D;  // this sequence's heads are rows b * H .. b * H + H of the state
    for (int i = threadIdx.x; i < D; i += NT) {
        const float mo = m[off + i], kf = k[i], mn = fmaxf(mo, kf);
        const float r = units_factor(mo, mn), p = __expf(kf - mn);
        const float zn = z[off + i] * r + p;
        z[off + i] = zn;
        m[off + i] = mn;
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
    for (int j0 = 0; j0 < D; j0 += NT / RG) {
        const int j = j0 + threadIdx.x % (NT / RG), g = threadIdx.x / (NT / RG);
        float acc = 0.f;
        if (j < D && g < RG) {
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
            if (j < D && g < RG) part[g * D + j] = acc;
            __syncthreads();
            if (g == 0 && j < D) {
                float t = 0.f;
#pragma unroll
                for (int e = 0; e < RG; ++e) t += part[e * D + j];
                y[j] = t / den[j / HD];
            }
        } else if (j < D) {
            y[j] = acc / den[j / HD];
        }
    }
    __syncthreads();
}

// Shared memory (floats): x, xn, qkv (3 D), y, a, tmp, the ELA scratch (4 D + H + RG D), the
// FFN's gate and up (2 FF), 32 for reductions. lm_decode.rs's `smem_bytes` mirrors this.
extern "C" __global__ void __launch_bounds__(LM_THREADS, 1)
    lm_decode(const LmPtrs P, const u32* ids, WS* logits, int layers, int vocab, double eps, double final_eps) {
    extern __shared__ float smem[];
    float *x = smem, *xn = x + D, *qkv = xn + D, *y = qkv + 3 * D, *a = y + D, *tmp = a + D, *sc = tmp + D;
    float *gate = sc + 4 * D + H + RG * D, *up = gate + FF, *red = up + FF;
    const int b = blockIdx.x;
    const float ep = (float)eps;

    const WS* E = wptr(P.p[0]);
    // The host checks the ids; one that is not in the vocabulary anyway gives NaN logits rather
    // than a read outside the table.
    const i64 id = ids[b];
    for (int i = threadIdx.x; i < D; i += NT) x[i] = id < vocab ? WD::load(E[id * D + i]) : __int_as_float(0x7fc00000);
    __syncthreads();

    for (int l = 0; l < layers; ++l) {
        const u64* L = P.p + 3 + l * LM_LAYER_PTRS;
        // Attention: its input is N1(x), or x itself under the post-norm link.
        const float* ain = x;
        if (LM_LINK != 2) {
            rms_norm(x, L[P_NORM1], ep, xn, red);
            ain = xn;
        }
        const WS *wq = wptr(L[P_Q]), *wk = wptr(L[P_K]), *wv = wptr(L[P_V]);
        gemv<D>(
            3 * D, ain, [&](int o) { return o < D ? wq + (i64)o * D : o < 2 * D ? wk + (i64)(o - D) * D : wv + (i64)(o - 2 * D) * D; },
            [&](int o, float s) { qkv[o] = s; });
        __syncthreads();
        ela_heads(b, qkv, (float*)L[P_S], (float*)L[P_Z], (float*)L[P_M], y, sc);
        const WS* wo = wptr(L[P_O]);
        gemv<D>(D, y, [&](int o) { return wo + (i64)o * D; }, [&](int o, float s) { a[o] = s; });
        __syncthreads();

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
        const WS *wg = wptr(L[P_GATE]), *wu = wptr(L[P_UP]);
        gemv<D>(
            2 * FF, fin, [&](int o) { return o < FF ? wg + (i64)o * D : wu + (i64)(o - FF) * D; },
            [&](int o, float s) { (o < FF ? gate : up)[o < FF ? o : o - FF] = s; });
        __syncthreads();
        for (int i = threadIdx.x; i < FF; i += NT) {
            const float g = gate[i];
            gate[i] = g / (1.f + __expf(-g)) * up[i];
        }
        __syncthreads();
        const WS* wd = wptr(L[P_DOWN]);
        if (LM_LINK == 0) {
            gemv<FF>(D, gate, [&](int o) { return wd + (i64)o * FF; }, [&](int o, float s) { x[o] += a[o] + s; });
        } else if (LM_LINK == 1) {
            gemv<FF>(D, gate, [&](int o) { return wd + (i64)o * FF; }, [&](int o, float s) { x[o] += s; });
        } else {
            gemv<FF>(D, gate, [&](int o) { return wd + (i64)o * FF; }, [&](int o, float s) { tmp[o] = x[o] + s; });
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
    gemv<D>(vocab, hin, [&](int o) { return W + (i64)o * D; }, [&](int o, float s) { out[o] = WD::store(s); });
}
