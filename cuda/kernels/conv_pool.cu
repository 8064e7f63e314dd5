// Convolution helpers (im2col / col2im around cuBLAS GEMMs, direct depthwise kernels, a direct
// kernel for few input channels), pooling and nearest upsampling over
// contiguous NCHW data, mirroring core/src/cpu/conv/. Backward kernels gather (each input cell
// sums the outputs that read it) so they are deterministic, except max-pool backward, which
// scatters into an f32/f64 buffer with atomics because overlapping windows may pick one cell twice.

// Mirror of `ConvGeo` in src/ops/conv.rs.
struct ConvGeo {
    i64 n, c, h, w, kh, kw, oh, ow, sh, sw, ph, pw, dh, dw;
};

// col[img, (ci*kh + ky)*kw + kx, oy*ow + ox] = x[img, ci, iy, ix] (0 in the padding), for the
// g.n images starting at x; copies by element width. One thread per (image, channel, output
// pixel) writes that pixel's kh x kw taps: the index arithmetic (64-bit divisions, slow on a GPU)
// is paid once per kh*kw elements, and for each tap neighbouring threads write neighbouring
// pixels, so the stores stay coalesced.
#define IM2COL(W, T)                                                                                 \
    extern "C" __global__ void im2col_w##W(T* col, const T* x, ConvGeo g) {                        \
        i64 npix = g.oh * g.ow, taps = g.kh * g.kw;                                                 \
        FOR_EACH(k, g.n * g.c * npix) {                                                             \
            i64 p = k % npix, plane = k / npix; /* plane = img * c + ci */                          \
            i64 oy = p / g.ow, ox = p - oy * g.ow;                                                  \
            const T* xc = x + plane * g.h * g.w;                                                    \
            T* out = col + plane * taps * npix + p;                                                 \
            for (i64 ky = 0; ky < g.kh; ++ky) {                                                     \
                i64 iy = oy * g.sh + ky * g.dh - g.ph;                                              \
                bool row_in = iy >= 0 && iy < g.h;                                                  \
                for (i64 kx = 0; kx < g.kw; ++kx) {                                                 \
                    i64 ix = ox * g.sw + kx * g.dw - g.pw;                                          \
                    out[(ky * g.kw + kx) * npix] = (row_in && ix >= 0 && ix < g.w) ? xc[iy * g.w + ix] : (T)0; \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
    }
IM2COL(2, u16)
IM2COL(4, u32)
IM2COL(8, u64)

// dx[img, ci, iy, ix] = sum of dcol entries whose tap reads (iy, ix); dcol is in the compute type.
// col2im, the adjoint of im2col. Derivation: docs/autograd.md#convolution-and-pooling ("conv2d").
template <typename D> __device__ void col2im_impl(typename D::S* dx, const typename D::C* dcol, ConvGeo g) {
    typedef typename D::C C;
    i64 npix = g.oh * g.ow, krows = g.c * g.kh * g.kw;
    FOR_EACH(k, g.n * g.c * g.h * g.w) {
        i64 ix = k % g.w, iy = (k / g.w) % g.h, ci = (k / (g.w * g.h)) % g.c, img = k / (g.w * g.h * g.c);
        C acc = (C)0;
        for (i64 ky = 0; ky < g.kh; ++ky) {
            i64 ty = iy + g.ph - ky * g.dh;
            if (ty < 0 || ty % g.sh != 0) continue;
            i64 oy = ty / g.sh;
            if (oy >= g.oh) continue;
            for (i64 kx = 0; kx < g.kw; ++kx) {
                i64 tx = ix + g.pw - kx * g.dw;
                if (tx < 0 || tx % g.sw != 0) continue;
                i64 ox = tx / g.sw;
                if (ox >= g.ow) continue;
                acc += dcol[(img * krows + (ci * g.kh + ky) * g.kw + kx) * npix + oy * g.ow + ox];
            }
        }
        dx[k] = D::store(acc);
    }
}
#define COL2IM(NAME, D) \
    extern "C" __global__ void col2im_##NAME(D::S* dx, const D::C* dcol, ConvGeo g) { col2im_impl<D>(dx, dcol, g); }
COL2IM(f16, F16)
COL2IM(bf16, BF16)
COL2IM(f32, F32)
COL2IM(f64, F64)

// ---------------------------------------------------------------- depthwise convolution

// groups == C == O, weight [C, 1, kh, kw]: every (image, channel) plane is independent, so these
// kernels convolve directly (no im2col, no GEMM). grid.y walks the planes (looping past 65535),
// grid.x the pixels of a plane with 32-bit in-plane indices (the host checks that h*w and oh*ow
// fit). K > 0 fixes a K x K kernel at compile time (unrolled taps), K = 0 reads kh, kw from g.
// Products accumulate in D::C in row-major tap order and round once on store.

template <typename D, int K>
__device__ void dw_fwd_impl(typename D::S* y, const typename D::S* x, const typename D::S* wt, ConvGeo g) {
    typedef typename D::C C;
    const int kh = K > 0 ? K : (int)g.kh, kw = K > 0 ? K : (int)g.kw;
    const int h = (int)g.h, w = (int)g.w, ow = (int)g.ow, npix = (int)(g.oh * g.ow);
    const int sh = (int)g.sh, sw = (int)g.sw, ph = (int)g.ph, pw = (int)g.pw, dh = (int)g.dh, dw = (int)g.dw;
    for (i64 plane = blockIdx.y; plane < g.n * g.c; plane += gridDim.y) {
        const typename D::S* xp = x + plane * g.h * g.w;
        const typename D::S* wp = wt + (plane % g.c) * kh * kw;
        for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < npix; p += gridDim.x * blockDim.x) {
            int oy = p / ow, ox = p - oy * ow;
            int iy0 = oy * sh - ph, ix0 = ox * sw - pw;
            C acc = (C)0;
#pragma unroll
            for (int ky = 0; ky < (K > 0 ? K : kh); ++ky) {
                int iy = iy0 + ky * dh;
                if (iy < 0 || iy >= h) continue;
#pragma unroll
                for (int kx = 0; kx < (K > 0 ? K : kw); ++kx) {
                    int ix = ix0 + kx * dw;
                    if (ix < 0 || ix >= w) continue;
                    acc += D::load(xp[iy * w + ix]) * D::load(wp[ky * kw + kx]);
                }
            }
            y[plane * npix + p] = D::store(acc);
        }
    }
}

// dx[img, c, iy, ix] = sum over the taps that read (iy, ix) of dy * w (a gather: deterministic).
// Derivation: docs/autograd.md#convolution-and-pooling ("conv2d").
template <typename D, int K>
__device__ void dw_bwd_input_impl(typename D::S* dx, const typename D::S* dy, const typename D::S* wt, ConvGeo g) {
    typedef typename D::C C;
    const int kh = K > 0 ? K : (int)g.kh, kw = K > 0 ? K : (int)g.kw;
    const int w = (int)g.w, oh = (int)g.oh, ow = (int)g.ow, hw = (int)(g.h * g.w);
    const int sh = (int)g.sh, sw = (int)g.sw, ph = (int)g.ph, pw = (int)g.pw, dh = (int)g.dh, dw = (int)g.dw;
    for (i64 plane = blockIdx.y; plane < g.n * g.c; plane += gridDim.y) {
        const typename D::S* dyp = dy + plane * g.oh * g.ow;
        const typename D::S* wp = wt + (plane % g.c) * kh * kw;
        for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < hw; p += gridDim.x * blockDim.x) {
            int iy = p / w, ix = p - iy * w;
            C acc = (C)0;
#pragma unroll
            for (int ky = 0; ky < (K > 0 ? K : kh); ++ky) {
                int ty = iy + ph - ky * dh;
                if (ty < 0 || ty % sh != 0) continue;
                int oy = ty / sh;
                if (oy >= oh) continue;
#pragma unroll
                for (int kx = 0; kx < (K > 0 ? K : kw); ++kx) {
                    int tx = ix + pw - kx * dw;
                    if (tx < 0 || tx % sw != 0) continue;
                    int ox = tx / sw;
                    if (ox >= ow) continue;
                    acc += D::load(dyp[oy * ow + ox]) * D::load(wp[ky * kw + kx]);
                }
            }
            dx[plane * hw + p] = D::store(acc);
        }
    }
}

// dW[c, t] = sum over (img, oy, ox) of dy[img, c, oy, ox] * x[img, c, iy(oy, t), ix(ox, t)].
// Derivation: docs/autograd.md#convolution-and-pooling ("conv2d").
// Block (blockIdx.x = c * taps + t, blockIdx.y = split) sums its `per_split` slice of the flattened
// (img, output pixel) range with a fixed partition and a fixed tree order (deterministic, no
// atomics). With one split it stores dW itself; else its partial goes to partial[ct * splits +
// split] and dw_wgrad_sum adds the splits in order. Blocks of 256 threads.
template <typename D>
__device__ void dw_bwd_weight_impl(typename D::S* dwt, typename D::C* partial, const typename D::S* x,
                                   const typename D::S* dy, ConvGeo g, i64 per_split) {
    typedef typename D::C C;
    __shared__ C red[32];
    const int kw = (int)g.kw, taps = (int)(g.kh * g.kw);
    const int ct = blockIdx.x, c = ct / taps, t = ct - c * taps, ky = t / kw, kx = t - ky * kw;
    const int h = (int)g.h, w = (int)g.w, ow = (int)g.ow, npix = (int)(g.oh * g.ow);
    const int dyo = ky * (int)g.dh - (int)g.ph, dxo = kx * (int)g.dw - (int)g.pw;
    const i64 total = g.n * npix, r0 = (i64)blockIdx.y * per_split;
    const i64 r1 = r0 + per_split < total ? r0 + per_split : total;
    C acc = (C)0;
    if (r0 + threadIdx.x < r1) {
        i64 r = r0 + threadIdx.x;
        i64 img = r / npix;
        int p = (int)(r - img * npix);
        for (; r < r1; r += blockDim.x) {
            int oy = p / ow, ox = p - oy * ow;
            int iy = oy * (int)g.sh + dyo, ix = ox * (int)g.sw + dxo;
            if (iy >= 0 && iy < h && ix >= 0 && ix < w) {
                i64 plane = img * g.c + c;
                acc += D::load(dy[plane * npix + p]) * D::load(x[plane * g.h * g.w + iy * w + ix]);
            }
            p += blockDim.x;
            while (p >= npix) {
                p -= npix;
                ++img;
            }
        }
    }
    acc = block_sum<C>(acc, red);
    if (threadIdx.x == 0) {
        if (gridDim.y == 1) dwt[ct] = D::store(acc);
        else partial[(i64)ct * gridDim.y + blockIdx.y] = acc;
    }
}

// 3x3 weight gradient: block (blockIdx.x = channel, blockIdx.y = split); each thread reads dy
// and the 3x3 input window of its output pixels once and accumulates all 9 taps in registers
// (9x fewer loads and index computations than a block per tap). Partials as dw_bwd_weight_impl.
// Derivation: docs/autograd.md#convolution-and-pooling ("conv2d").
template <typename D>
__device__ void dw_bwd_weight3_impl(typename D::S* dwt, typename D::C* partial, const typename D::S* x,
                                    const typename D::S* dy, ConvGeo g, i64 per_split) {
    typedef typename D::C C;
    __shared__ C red[32];
    const int c = blockIdx.x;
    const int h = (int)g.h, w = (int)g.w, ow = (int)g.ow, npix = (int)(g.oh * g.ow);
    const int sh = (int)g.sh, sw = (int)g.sw, ph = (int)g.ph, pw = (int)g.pw, dh = (int)g.dh, dw = (int)g.dw;
    const i64 total = g.n * npix, r0 = (i64)blockIdx.y * per_split;
    const i64 r1 = r0 + per_split < total ? r0 + per_split : total;
    C acc[9];
#pragma unroll
    for (int t = 0; t < 9; ++t) acc[t] = (C)0;
    if (r0 + threadIdx.x < r1) {
        i64 r = r0 + threadIdx.x;
        i64 img = r / npix;
        int p = (int)(r - img * npix);
        for (; r < r1; r += blockDim.x) {
            int oy = p / ow, ox = p - oy * ow;
            i64 plane = img * g.c + c;
            C gy = D::load(dy[plane * npix + p]);
            const typename D::S* xp = x + plane * g.h * g.w;
            int iy0 = oy * sh - ph, ix0 = ox * sw - pw;
#pragma unroll
            for (int ky = 0; ky < 3; ++ky) {
                int iy = iy0 + ky * dh;
                bool ok = iy >= 0 && iy < h;
#pragma unroll
                for (int kx = 0; kx < 3; ++kx) {
                    int ix = ix0 + kx * dw;
                    if (ok && ix >= 0 && ix < w) acc[ky * 3 + kx] += gy * D::load(xp[iy * w + ix]);
                }
            }
            p += blockDim.x;
            while (p >= npix) {
                p -= npix;
                ++img;
            }
        }
    }
#pragma unroll
    for (int t = 0; t < 9; ++t) {
        C s = block_sum<C>(acc[t], red);
        if (threadIdx.x == 0) {
            i64 ct = (i64)c * 9 + t;
            if (gridDim.y == 1) dwt[ct] = D::store(s);
            else partial[ct * gridDim.y + blockIdx.y] = s;
        }
    }
}

// dW[ct] = the `splits` partials of ct added in order.
template <typename D>
__device__ void dw_wgrad_sum_impl(typename D::S* dwt, const typename D::C* partial, i64 cts, i64 splits) {
    typedef typename D::C C;
    FOR_EACH(ct, cts) {
        C acc = (C)0;
        for (i64 s = 0; s < splits; ++s) acc += partial[ct * splits + s];
        dwt[ct] = D::store(acc);
    }
}

// acc[i] (+)= sum over b < nb of ws[b * len + i], b in order: folds the per-image weight gradients
// of the 1x1 convolution (one strided-batched GEMM over the images) without atomics.
template <typename D> __device__ void batch_sum_impl(typename D::C* acc, const typename D::C* ws, i64 nb, i64 len, int add) {
    typedef typename D::C C;
    FOR_EACH(i, len) {
        C s = add ? acc[i] : (C)0;
        for (i64 b = 0; b < nb; ++b) s += ws[b * len + i];
        acc[i] = s;
    }
}

#define DEPTHWISE(NAME, D)                                                                                        \
    extern "C" __global__ void dw_fwd_##NAME(D::S* y, const D::S* x, const D::S* w, ConvGeo g) {                  \
        dw_fwd_impl<D, 0>(y, x, w, g);                                                                            \
    }                                                                                                             \
    extern "C" __global__ void dw_fwd3_##NAME(D::S* y, const D::S* x, const D::S* w, ConvGeo g) {                 \
        dw_fwd_impl<D, 3>(y, x, w, g);                                                                            \
    }                                                                                                             \
    extern "C" __global__ void dw_bwd_input_##NAME(D::S* dx, const D::S* dy, const D::S* w, ConvGeo g) {          \
        dw_bwd_input_impl<D, 0>(dx, dy, w, g);                                                                    \
    }                                                                                                             \
    extern "C" __global__ void dw_bwd_input3_##NAME(D::S* dx, const D::S* dy, const D::S* w, ConvGeo g) {         \
        dw_bwd_input_impl<D, 3>(dx, dy, w, g);                                                                    \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(256) dw_bwd_weight_##NAME(D::S* dw, D::C* partial, const D::S* x, \
                                                                          const D::S* dy, ConvGeo g, i64 per) {    \
        dw_bwd_weight_impl<D>(dw, partial, x, dy, g, per);                                                        \
    }                                                                                                             \
    extern "C" __global__ void dw_wgrad_sum_##NAME(D::S* dw, const D::C* partial, i64 cts, i64 splits) {          \
        dw_wgrad_sum_impl<D>(dw, partial, cts, splits);                                                           \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(256) dw_bwd_weight3_##NAME(D::S* dw, D::C* partial, const D::S* x, \
                                                                           const D::S* dy, ConvGeo g, i64 per) {   \
        dw_bwd_weight3_impl<D>(dw, partial, x, dy, g, per);                                                       \
    }                                                                                                                  \
    extern "C" __global__ void batch_sum_##NAME(D::C* acc, const D::C* ws, i64 nb, i64 len, int add) {            \
        batch_sum_impl<D>(acc, ws, nb, len, add);                                                                 \
    }
DEPTHWISE(f16, F16)
DEPTHWISE(bf16, BF16)
DEPTHWISE(f32, F32)
DEPTHWISE(f64, F64)

// ---------------------------------------------------------------- direct convolution, few input taps

// groups == 1 with C * kh * kw <= SMALL_TAPS (a detector's stem: 3 -> 16 channels, 3x3, stride
// 2), no im2col and no GEMM: each thread computes P output pixels of one image (grid.x: blocks of
// P * blockDim pixels, pixel k * blockDim + threadIdx.x of the block's range; grid.y: images,
// looping past 65535) for every output channel, in tiles of SMALL_OT channels whose weights sit in
// shared memory as [tap][channel]. Taps run outermost: each tap's P input values are loaded once
// and, with the tap's SMALL_OT weights (broadcast shared-memory reads, shared by the P pixels),
// feed P x SMALL_OT accumulators. Products accumulate in tap order (ci, ky, kx) in D::C and round
// once. 32-bit in-image indices: the host checks that c*h*w and o*oh*ow fit.
#define SMALL_TAPS 27
#define SMALL_OT 16
template <typename D, int P>
__device__ void conv_small_fwd_impl(typename D::S* y, const typename D::S* x, const typename D::S* wt, ConvGeo g,
                                    int o) {
    typedef typename D::C C;
    typedef typename D::S S;
    __shared__ __align__(16) C ws[SMALL_TAPS][SMALL_OT];
    __shared__ int toff[SMALL_TAPS], tdy[SMALL_TAPS], tdx[SMALL_TAPS];
    const int kh = (int)g.kh, kw = (int)g.kw, khw = kh * kw, taps = (int)g.c * khw;
    const int h = (int)g.h, w = (int)g.w, ow = (int)g.ow, npix = (int)(g.oh * g.ow);
    if ((int)threadIdx.x < taps) {
        const int t = threadIdx.x, ci = t / khw, r = t - ci * khw, ky = r / kw, kx = r - ky * kw;
        toff[t] = ci * h * w;
        tdy[t] = ky * (int)g.dh;
        tdx[t] = kx * (int)g.dw;
    }
    // Top-left input corner of each pixel's window; pixels past the map get a corner no tap
    // reaches (every load skipped) and store nothing.
    int pix[P], iy0[P], ix0[P];
#pragma unroll
    for (int k = 0; k < P; ++k) {
        pix[k] = (blockIdx.x * P + k) * blockDim.x + threadIdx.x;
        const int oy = pix[k] / ow, ox = pix[k] - oy * ow;
        const bool live = pix[k] < npix;
        iy0[k] = live ? oy * (int)g.sh - (int)g.ph : -(1 << 30);
        ix0[k] = ox * (int)g.sw - (int)g.pw;
    }
    for (i64 img = blockIdx.y; img < g.n; img += gridDim.y) {
        const S* xp = x + img * g.c * g.h * g.w;
        for (int o0 = 0; o0 < o; o0 += SMALL_OT) {
            __syncthreads();  // the tap table is written; the previous tile's weights are read
            for (int k = threadIdx.x; k < SMALL_TAPS * SMALL_OT; k += blockDim.x) {
                const int t = k / SMALL_OT, oc = k - t * SMALL_OT;
                ws[t][oc] = (t < taps && o0 + oc < o) ? D::load(wt[(i64)(o0 + oc) * taps + t]) : (C)0;
            }
            __syncthreads();
            C acc[P][SMALL_OT];
#pragma unroll
            for (int k = 0; k < P; ++k)
#pragma unroll
                for (int oc = 0; oc < SMALL_OT; ++oc) acc[k][oc] = (C)0;
#pragma unroll 3
            for (int t = 0; t < taps; ++t) {
                const int off = toff[t], dy = tdy[t], dx = tdx[t];
                C v[P];
#pragma unroll
                for (int k = 0; k < P; ++k) {
                    const int iy = iy0[k] + dy, ix = ix0[k] + dx;
                    v[k] = (iy >= 0 && iy < h && ix >= 0 && ix < w) ? D::load(xp[off + iy * w + ix]) : (C)0;
                }
#pragma unroll
                for (int oc = 0; oc < SMALL_OT; ++oc) {
                    const C wv = ws[t][oc];
#pragma unroll
                    for (int k = 0; k < P; ++k) acc[k][oc] += v[k] * wv;
                }
            }
#pragma unroll
            for (int k = 0; k < P; ++k) {
                if (pix[k] < npix) {
                    S* yp = y + (img * o + o0) * (i64)npix + pix[k];
#pragma unroll
                    for (int oc = 0; oc < SMALL_OT; ++oc)
                        if (o0 + oc < o) yp[(i64)oc * npix] = D::store(acc[k][oc]);
                }
            }
        }
    }
}
// conv_small_fwd: a pixel per thread (small grids); conv_small_fwd_multi: 4 pixels per thread
// (2 for f64), reading each weight from shared memory once for all of them (large grids).
#define CONV_SMALL(NAME, D)                                                                                   \
    extern "C" __global__ void __launch_bounds__(256)                                                         \
        conv_small_fwd_##NAME(D::S* y, const D::S* x, const D::S* w, ConvGeo g, int o) {                      \
        conv_small_fwd_impl<D, 1>(y, x, w, g, o);                                                             \
    }                                                                                                         \
    extern "C" __global__ void __launch_bounds__(256)                                                         \
        conv_small_fwd_multi_##NAME(D::S* y, const D::S* x, const D::S* w, ConvGeo g, int o) {                \
        conv_small_fwd_impl<D, sizeof(D::C) == 8 ? 2 : 4>(y, x, w, g, o);                                     \
    }
CONV_SMALL(f16, F16)
CONV_SMALL(bf16, BF16)
CONV_SMALL(f32, F32)
CONV_SMALL(f64, F64)

// ---------------------------------------------------------------- pooling

// Mirror of `PoolGeo` in src/ops/conv.rs.
struct PoolGeo {
    i64 planes, h, w, oh, ow, kh, kw, sh, sw, ph, pw, include_pad;
};

// Input rows [y0, y1) and columns [x0, x1) covered by window (oy, ox), clipped to the input.
__device__ __forceinline__ void pool_window(const PoolGeo& g, i64 oy, i64 ox, i64& y0, i64& y1, i64& x0, i64& x1) {
    i64 ys = oy * g.sh - g.ph, xs = ox * g.sw - g.pw;
    y0 = ys > 0 ? ys : 0;
    x0 = xs > 0 ? xs : 0;
    y1 = ys + g.kh < g.h ? ys + g.kh : g.h;
    x1 = xs + g.kw < g.w ? xs + g.kw : g.w;
    if (y1 < y0) y1 = y0;
    if (x1 < x0) x1 = x0;
}

template <typename D> __device__ __forceinline__ typename D::C pool_div(const PoolGeo& g, i64 cells) {
    if (g.include_pad) return (typename D::C)(g.kh * g.kw);
    return (typename D::C)(cells > 0 ? cells : 1);
}

// The winner is the first maximum in row-major window order; a NaN wins (the last one seen).
template <typename D> __device__ void max_pool_impl(typename D::S* y, u32* am, const typename D::S* x, PoolGeo g) {
    typedef typename D::C C;
    FOR_EACH(k, g.planes * g.oh * g.ow) {
        i64 ox = k % g.ow, oy = (k / g.ow) % g.oh, pl = k / (g.ow * g.oh);
        i64 y0, y1, x0, x1;
        pool_window(g, oy, ox, y0, y1, x0, x1);
        C best = neg_inf<C>();
        u32 bi = 0xffffffffu;
        for (i64 iy = y0; iy < y1; ++iy)
            for (i64 ix = x0; ix < x1; ++ix) {
                C v = D::load(x[(pl * g.h + iy) * g.w + ix]);
                if (bi == 0xffffffffu || v > best || x_isnan(v)) {
                    best = v;
                    bi = (u32)(iy * g.w + ix);
                }
            }
        y[k] = D::store(best);
        am[k] = bi;
    }
}

// dx (compute type, pre-zeroed) [plane, h*w] += dy at each output's winner.
// Derivation: docs/autograd.md#convolution-and-pooling ("max_pool2d").
template <typename D> __device__ void max_pool_bwd_impl(typename D::C* dx, const typename D::S* dy, const u32* am, i64 planes, i64 opix, i64 ipix) {
    FOR_EACH(k, planes * opix) {
        u32 a = am[k];
        if ((i64)a < ipix) atomicAdd(&dx[(k / opix) * ipix + a], D::load(dy[k]));
    }
}

template <typename D> __device__ void avg_pool_impl(typename D::S* y, const typename D::S* x, PoolGeo g) {
    typedef typename D::C C;
    FOR_EACH(k, g.planes * g.oh * g.ow) {
        i64 ox = k % g.ow, oy = (k / g.ow) % g.oh, pl = k / (g.ow * g.oh);
        i64 y0, y1, x0, x1;
        pool_window(g, oy, ox, y0, y1, x0, x1);
        C s = (C)0;
        for (i64 iy = y0; iy < y1; ++iy)
            for (i64 ix = x0; ix < x1; ++ix) s += D::load(x[(pl * g.h + iy) * g.w + ix]);
        y[k] = D::store(s / pool_div<D>(g, (y1 - y0) * (x1 - x0)));
    }
}

// dx[pl, iy, ix] = sum over the windows that cover (iy, ix) of dy / divisor (pool_div, the
// forward's). Derivation: docs/autograd.md#convolution-and-pooling ("avg_pool2d").
template <typename D> __device__ void avg_pool_bwd_impl(typename D::S* dx, const typename D::S* dy, PoolGeo g) {
    typedef typename D::C C;
    FOR_EACH(k, g.planes * g.h * g.w) {
        i64 ix = k % g.w, iy = (k / g.w) % g.h, pl = k / (g.w * g.h);
        // oy covers iy when oy*sh - ph <= iy < oy*sh - ph + kh.
        i64 tlo = iy + g.ph - g.kh + 1, thi = iy + g.ph;
        i64 oy0 = tlo <= 0 ? 0 : (tlo + g.sh - 1) / g.sh, oy1 = thi / g.sh;
        i64 slo = ix + g.pw - g.kw + 1, shi = ix + g.pw;
        i64 ox0 = slo <= 0 ? 0 : (slo + g.sw - 1) / g.sw, ox1 = shi / g.sw;
        if (oy1 >= g.oh) oy1 = g.oh - 1;
        if (ox1 >= g.ow) ox1 = g.ow - 1;
        C acc = (C)0;
        for (i64 oy = oy0; oy <= oy1; ++oy)
            for (i64 ox = ox0; ox <= ox1; ++ox) {
                i64 y0, y1, x0, x1;
                pool_window(g, oy, ox, y0, y1, x0, x1);
                acc += D::load(dy[(pl * g.oh + oy) * g.ow + ox]) / pool_div<D>(g, (y1 - y0) * (x1 - x0));
            }
        dx[k] = D::store(acc);
    }
}

// Nearest upsampling: y[pl, oy, ox] = x[pl, oy / fh, ox / fw]; backward sums each fh x fw block.
// Derivation of the backward: docs/autograd.md#convolution-and-pooling ("upsample_nearest2d").
template <typename D>
__device__ void upsample_impl(typename D::S* y, const typename D::S* x, i64 planes, i64 h, i64 w, i64 fh, i64 fw) {
    i64 oh = h * fh, ow = w * fw;
    FOR_EACH(k, planes * oh * ow) {
        i64 ox = k % ow, oy = (k / ow) % oh, pl = k / (ow * oh);
        y[k] = x[(pl * h + oy / fh) * w + ox / fw];
    }
}
template <typename D>
__device__ void upsample_bwd_impl(typename D::S* dx, const typename D::S* dy, i64 planes, i64 h, i64 w, i64 fh, i64 fw) {
    typedef typename D::C C;
    i64 oh = h * fh, ow = w * fw;
    FOR_EACH(k, planes * h * w) {
        i64 ix = k % w, iy = (k / w) % h, pl = k / (w * h);
        C acc = (C)0;
        for (i64 a = 0; a < fh; ++a)
            for (i64 b = 0; b < fw; ++b) acc += D::load(dy[(pl * oh + iy * fh + a) * ow + ix * fw + b]);
        dx[k] = D::store(acc);
    }
}

#define POOL(NAME, D)                                                                                              \
    extern "C" __global__ void max_pool_##NAME(D::S* y, u32* am, const D::S* x, PoolGeo g) {                     \
        max_pool_impl<D>(y, am, x, g);                                                                             \
    }                                                                                                              \
    extern "C" __global__ void max_pool_bwd_##NAME(D::C* dx, const D::S* dy, const u32* am, i64 planes, i64 opix, \
                                                   i64 ipix) {                                                     \
        max_pool_bwd_impl<D>(dx, dy, am, planes, opix, ipix);                                                      \
    }                                                                                                              \
    extern "C" __global__ void avg_pool_##NAME(D::S* y, const D::S* x, PoolGeo g) { avg_pool_impl<D>(y, x, g); }  \
    extern "C" __global__ void avg_pool_bwd_##NAME(D::S* dx, const D::S* dy, PoolGeo g) {                        \
        avg_pool_bwd_impl<D>(dx, dy, g);                                                                           \
    }                                                                                                              \
    extern "C" __global__ void upsample_##NAME(D::S* y, const D::S* x, i64 planes, i64 h, i64 w, i64 fh, i64 fw) { \
        upsample_impl<D>(y, x, planes, h, w, fh, fw);                                                              \
    }                                                                                                              \
    extern "C" __global__ void upsample_bwd_##NAME(D::S* dx, const D::S* dy, i64 planes, i64 h, i64 w, i64 fh,    \
                                                   i64 fw) {                                                       \
        upsample_bwd_impl<D>(dx, dy, planes, h, w, fh, fw);                                                        \
    }
POOL(f16, F16)
POOL(bf16, BF16)
POOL(f32, F32)
POOL(f64, F64)
