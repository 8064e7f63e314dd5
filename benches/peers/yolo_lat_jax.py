#!/usr/bin/env python3
"""JAX peer of the CPU detector inference benchmark (`ela bench detect --device cpu`): YOLO-LAT
(models/src/detect/model, every neck) and our YOLOv8n, in JAX, jax.jit on the CPU, f32.

The architectures are those of benches/peers/yolo_lat_torch.py (its docstring has the layer
lists), i.e. of models/src/detect/model/{yolo_lat,attention,layers,yolov8}.rs:
  YOLO-LAT  stem Conv 3x3 s2 3->16; DSC s2 16->32, 32->64, 64->128; DSC s1 128->128 (= f);
            neck Conv 1x1 128->64, mixer, Conv 1x1 64->128, + f; head Conv 3x3 128->128, 1x1
            conv 128->5+nc with bias; output [n, 5+nc, H/16, W/16].
            mixer ela/softmax: BN(x + proj(attn(q, k, v))), q/k/v from one 1x1 conv 64->192 with
            bias, 4 heads of 16 over all h*w cells.
              ela: non-causal Hadamard-Exp, q and k scaled by 1/4, phi = psi = exp:
                   y = phi(q) (psi(k)^T v) / (phi(q) . sum_j psi(k_j)), O(t d^2); exp stabilised
                   by subtracting max_d q per query row and max_{t,d} k per (image, head), shifts
                   that cancel exactly in the ratio (as yolo_lat_torch.py does).
              softmax: jax.nn.dot_product_attention (scale 1/4), as the torch peer uses SDPA.
            conv: BN(x + DSC(DSC(DSC(x)))), DSC 64->64; none: no mixer.
  yolov8n   ultralytics yolov8.yaml at depth 0.33 / width 0.25 (C2f, SPPF k=5, PAN) with OUR head:
            per stride 8/16/32 a box branch ending in 5 channels (objectness + 4) and a class
            branch ending in nc, concatenated: [n, 5+nc, H/s, W/s]. No box decoding, no NMS.

Parameter check: the UNFOLDED architecture is built first (conv weights, biases, BN gamma/beta and
running statistics, random from --seed), its parameters counted the way the Rust model counts
them (conv weights + biases + BN gamma/beta; running mean/var are buffers, not parameters) and
compared with the Rust counts (EXPECTED, copied from yolo_lat_torch.py). A mismatch exits
non-zero. `--params-only` checks every listed model/neck at nc 1 and 80 (and --nc) and exits.

What is timed, and what this script deliberately does:
- Inference as deployed, the same as `ela bench detect`: eval mode, every Conv's BatchNorm folded
  into the convolution (w' = s w, b' = beta - s mu, s = gamma / sqrt(var + 1e-3)), so a Conv block
  is conv + bias + SiLU; the mixer's BN(x + mix(x)) is folded into one per-channel affine
  (scale, shift) applied to x + mix(x). Weights are random (latency does not depend on them).
- The jitted function takes the weights as arguments (as flax's apply does), not as constants.
- Input uniform in [0, 1) (--seed + 1), already on the device in the model's layout; the time is
  wall clock from the call to jax.block_until_ready on all outputs (every output scale).
- Layout: --layout nhwc (default) or nchw, for activations and weights (HWIO / OIHW). XLA:CPU
  runs its convolutions in NHWC: given NCHW, its optimised HLO transposes around every
  convolution (YOLOv8n: 187 transposes against none in NHWC), compiles 2x slower, and was
  never faster when measured (YOLOv8n clearly slower; YOLO-LAT within the noise). The Rust
  engine is NCHW; our NHWC input is the same tensor, transposed outside the timing.
- Threads: XLA:CPU's own intra-op thread pool over every core this process may use (its
  affinity mask, reported as `threads`); restrict with `taskset -c 0-3 python3 ...`.
- Compile time is excluded and printed separately (`compile_s`: lower + compile of one shape;
  `first_call_s`: the first call after it). Then --warmup calls, then --reps timed calls; the
  median (upper middle, as `ela bench detect` takes it), p10 and p90 are reported. Warm-up stops
  early after --budget-s / 2 seconds and timing after --budget-s seconds once --min-reps calls
  are in, so big configurations (YOLOv8n at 640, batch 32: ~280 GFLOP a call) take fewer reps.
- f32 only (XLA:CPU computes f32 matmuls and convolutions in f32).

Usage: python3 benches/peers/yolo_lat_jax.py [--models yolo-lat,yolov8n]
  [--necks ela,softmax,conv,none] [--nc 80] [--sizes 320,640] [--batches 1,32] [--dtypes f32]
  [--layout nhwc|nchw] [--reps 20] [--warmup 3] [--budget-s 10] [--min-reps 3] [--seed 0]
  [--expect-params N] [--params-only] [--self-test]
--nc defaults to 80, as `ela bench detect --classes` does. One JSON line per configuration on
stdout: model, neck, nc, size, batch, dtype, layout, params, median_ms, p10_ms, p90_ms,
images_per_s, reps, xla_gflop_per_image (XLA's cost analysis, which counts only the convolution
taps inside the map, not the padding, plus elementwise ops: 1-3% under `ela bench detect`'s
GFLOPs), compile_s, first_call_s, jax, jaxlib, xla_backend, cpu, threads, load_avg (the machine
may be shared: read the timings against it). `ela bench detect`'s models yolo-lat,
yolo-lat-softmax, yolo-lat-conv, yolo-lat-none are here yolo-lat with --necks ela,softmax,conv,none.
`--self-test` checks, at a small size, the folded network against the unfolded one in both
layouts, and the ELA and softmax mixers against float64 references, then exits.
Install once with `pip install jax` (CPU build).
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jaxlib  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

BN_EPS = 1e-3
HEADS = 4  # YOLO-LAT's attention: 4 heads of 16 over 64 channels

# Parameter counts of the Rust models (component_report / ParamStore::num_params), by
# (model, neck, nc): the yolo-lat and yolov8n rows of yolo_lat_torch.py's EXPECTED.
EXPECTED = {
    ("yolo-lat", "ela", 1): 212_966,
    ("yolo-lat", "ela", 80): 223_157,
    ("yolo-lat", "softmax", 1): 212_966,
    ("yolo-lat", "softmax", 80): 223_157,
    ("yolo-lat", "conv", 1): 211_110,
    ("yolo-lat", "conv", 80): 221_301,
    ("yolo-lat", "none", 1): 196_198,
    ("yolo-lat", "none", 80): 206_389,
    ("yolov8n", None, 1): 2_999_522,
    ("yolov8n", None, 80): 3_145_679,
}

MODELS = ("yolo-lat", "yolov8n")
NECKS = ("ela", "softmax", "conv", "none")


# ----------------------------------------------------------------------------------------------
# Unfolded parameters (numpy, PyTorch / Rust conventions: OIHW weights), built from a seed.


def conv_bn(r, cin, cout, k, groups=1):
    """Conv (no bias) + BatchNorm2d: weight [cout, cin/groups, k, k], BN affine and statistics."""
    fan_in = cin // groups * k * k
    bound = 1.0 / np.sqrt(fan_in)  # PyTorch's default conv init bound
    return {
        "w": r.uniform(-bound, bound, (cout, cin // groups, k, k)).astype(np.float32),
        "bn": bn(r, cout),
    }


def bn(r, c):
    """BatchNorm2d in eval mode; statistics random (not 0/1) so that folding is exercised."""
    return {
        "gamma": r.uniform(0.5, 1.5, c).astype(np.float32),
        "beta": r.uniform(-0.1, 0.1, c).astype(np.float32),
        "mean": r.uniform(-0.1, 0.1, c).astype(np.float32),
        "var": r.uniform(0.5, 1.5, c).astype(np.float32),
    }


def conv_bias(r, cin, cout, k=1):
    """Plain convolution with bias (qkv, proj, prediction layers)."""
    bound = 1.0 / np.sqrt(cin * k * k)
    return {
        "w": r.uniform(-bound, bound, (cout, cin, k, k)).astype(np.float32),
        "b": r.uniform(-bound, bound, cout).astype(np.float32),
    }


def dsc(r, cin, cout):
    return {"dw": conv_bn(r, cin, cin, 3, groups=cin), "pw": conv_bn(r, cin, cout, 1)}


def yolo_lat_params(r, nc, neck):
    widths = [16, 32, 64, 128, 128]
    p = {
        "stem": conv_bn(r, 3, widths[0], 3),
        "stages": [dsc(r, widths[i], widths[i + 1]) for i in range(4)],
        "reduce": conv_bn(r, 128, 64, 1),
    }
    if neck in ("ela", "softmax"):
        p["mix"] = {"qkv": conv_bias(r, 64, 192), "proj": conv_bias(r, 64, 64), "bn": bn(r, 64)}
    elif neck == "conv":
        p["mix"] = {"blocks": [dsc(r, 64, 64) for _ in range(3)], "bn": bn(r, 64)}
    elif neck != "none":
        raise ValueError(f"unknown neck {neck!r}")
    p["expand"] = conv_bn(r, 64, 128, 1)
    p["head"] = conv_bn(r, 128, 128, 3)
    p["pred"] = conv_bias(r, 128, 5 + nc)
    return p


W8 = [16, 32, 64, 128, 256]  # YOLOv8n widths after layers 0, 1, 3, 5, 7


def c2f(r, c1, c2, n):
    c = c2 // 2
    return {
        "cv1": conv_bn(r, c1, 2 * c, 1),
        "cv2": conv_bn(r, (2 + n) * c, c2, 1),
        "m": [{"cv1": conv_bn(r, c, c, 3), "cv2": conv_bn(r, c, c, 3)} for _ in range(n)],
    }


def yolov8n_params(r, nc):
    w = W8
    c2, c3 = max(16, w[2] // 4, 64), max(w[2], min(nc, 100))
    return {
        "b0": conv_bn(r, 3, w[0], 3),
        "b1": conv_bn(r, w[0], w[1], 3),
        "b2": c2f(r, w[1], w[1], 1),
        "b3": conv_bn(r, w[1], w[2], 3),
        "b4": c2f(r, w[2], w[2], 2),
        "b5": conv_bn(r, w[2], w[3], 3),
        "b6": c2f(r, w[3], w[3], 2),
        "b7": conv_bn(r, w[3], w[4], 3),
        "b8": c2f(r, w[4], w[4], 1),
        "b9": {"cv1": conv_bn(r, w[4], w[4] // 2, 1), "cv2": conv_bn(r, w[4] // 2 * 4, w[4], 1)},
        "n12": c2f(r, w[4] + w[3], w[3], 1),
        "n15": c2f(r, w[3] + w[2], w[2], 1),
        "n16": conv_bn(r, w[2], w[2], 3),
        "n18": c2f(r, w[2] + w[3], w[3], 1),
        "n19": conv_bn(r, w[3], w[3], 3),
        "n21": c2f(r, w[3] + w[4], w[4], 1),
        "head": [
            {
                "box": [conv_bn(r, ch, c2, 3), conv_bn(r, c2, c2, 3), conv_bias(r, c2, 5)],
                "cls": [conv_bn(r, ch, c3, 3), conv_bn(r, c3, c3, 3), conv_bias(r, c3, nc)],
            }
            for ch in w[2:]
        ],
    }


def build_params(model, neck, nc, seed):
    r = np.random.default_rng(seed)
    if model == "yolo-lat":
        return yolo_lat_params(r, nc, neck)
    if model == "yolov8n":
        return yolov8n_params(r, nc)
    raise ValueError(f"unknown model {model!r}")


def count_params(tree):
    """Conv weights and biases, BN gamma and beta (running mean/var are buffers), as in Rust."""
    if isinstance(tree, dict):
        return sum(v.size if k in ("w", "b", "gamma", "beta") else count_params(v) for k, v in tree.items())
    if isinstance(tree, list):
        return sum(count_params(v) for v in tree)
    return 0


def check_params(model, neck, nc, n, expect=None, fatal=True):
    """The expected count (None where there is none); exits on a mismatch when `fatal`."""
    key = (model, neck if model == "yolo-lat" else None, nc)
    want = expect if expect is not None else EXPECTED.get(key)
    if want is None:
        print(f"note: no expected parameter count for {key}; pass --expect-params", file=sys.stderr)
    elif n != want:
        msg = f"parameter count {n} != expected {want} for {key}: the architectures differ"
        if fatal:
            sys.exit(msg)
        print(msg, file=sys.stderr)
    return want


# ----------------------------------------------------------------------------------------------
# Folding and layout: the tree the jitted function takes.


def prepare(tree, layout, fold=True):
    """Fold every BN (conv_bn -> {w, b}; bare bn -> {scale, shift}) when `fold`, convert the
    weights to the layout (OIHW for nchw, HWIO for nhwc), and move everything to the device."""

    def w_layout(w):
        return w if layout == "nchw" else np.ascontiguousarray(w.transpose(2, 3, 1, 0))

    def go(t):
        if isinstance(t, list):
            return [go(v) for v in t]
        if "gamma" in t:  # a bare BN
            if not fold:
                return {k: jnp.asarray(v) for k, v in t.items()}
            s = t["gamma"] / np.sqrt(t["var"] + BN_EPS)
            return {"scale": jnp.asarray(s), "shift": jnp.asarray(t["beta"] - t["mean"] * s)}
        if "w" in t and "bn" in t:  # conv + BN
            if not fold:
                return {"w": jnp.asarray(w_layout(t["w"])), "bn": go(t["bn"])}
            b = t["bn"]
            s = b["gamma"] / np.sqrt(b["var"] + BN_EPS)
            return {"w": jnp.asarray(w_layout(t["w"] * s[:, None, None, None])),
                    "b": jnp.asarray(b["beta"] - b["mean"] * s)}
        if "w" in t:  # conv + bias
            return {"w": jnp.asarray(w_layout(t["w"])), "b": jnp.asarray(t["b"])}
        return {k: go(v) for k, v in t.items()}

    return go(tree)


# ----------------------------------------------------------------------------------------------
# Forward passes. `L` is the layout, "nhwc" or "nchw"; weights already in it.


def chan_axis(L):
    return 1 if L == "nchw" else 3


def per_channel(v, L):
    return v[:, None, None] if L == "nchw" else v


def conv(p, x, L, stride=1, groups=1):
    """Convolution with "same" padding k // 2, + bias if the (folded) layer has one."""
    k = p["w"].shape[-1] if L == "nchw" else p["w"].shape[0]
    dims = ("NCHW", "OIHW", "NCHW") if L == "nchw" else ("NHWC", "HWIO", "NHWC")
    y = lax.conv_general_dilated(x, p["w"], (stride, stride), ((k // 2, k // 2), (k // 2, k // 2)),
                                 dimension_numbers=dims, feature_group_count=groups)
    if "b" in p:
        y = y + per_channel(p["b"], L)
    return y


def affine(p, x, L):
    """A BatchNorm2d in eval mode: folded (scale, shift) or from its statistics (self-test)."""
    if "scale" in p:
        return x * per_channel(p["scale"], L) + per_channel(p["shift"], L)
    s = p["gamma"] / jnp.sqrt(p["var"] + BN_EPS)
    return (x - per_channel(p["mean"], L)) * per_channel(s, L) + per_channel(p["beta"], L)


def conv_block(p, x, L, stride=1, groups=1):
    """Conv: conv + bias + SiLU when folded, conv + BN + SiLU otherwise."""
    y = conv(p, x, L, stride, groups)
    if "bn" in p:
        y = affine(p["bn"], y, L)
    return jax.nn.silu(y)


def dsc_fwd(p, x, L, stride=1):
    c = x.shape[chan_axis(L)]
    return conv_block(p["pw"], conv_block(p["dw"], x, L, stride, groups=c), L)


def ela_noncausal(q, k, v):
    """Non-causal Hadamard-Exp ELA over [b, t, heads, d] (q, k already scaled):
    y = phi(q) (psi(k)^T v) / (phi(q) . sum_t psi(k)), with cancelling shifts."""
    phi = jnp.exp(q - jnp.max(q, axis=-1, keepdims=True))  # per query row
    psi = jnp.exp(k - jnp.max(k, axis=(1, 3), keepdims=True))  # per (image, head)
    s = jnp.einsum("bthd,bthe->bhde", psi, v)
    z = jnp.sum(psi, axis=1)  # [b, heads, d]
    num = jnp.einsum("bthd,bhde->bthe", phi, s)
    den = jnp.einsum("bthd,bhd->bth", phi, z)
    return num / den[..., None]


def attention2d(p, x, L, mixer):
    """BN(x + proj(attn(q, k, v))), q/k/v heads of 16 over the h*w cells."""
    qkv = conv(p["qkv"], x, L)
    if L == "nchw":
        n, c3, h, w = qkv.shape
        c = c3 // 3
        # channel = part * c + head * d + i, as the Rust model splits it
        qkv = qkv.reshape(n, 3, HEADS, c // HEADS, h * w).transpose(1, 0, 4, 2, 3)  # [3, n, t, H, d]
    else:
        n, h, w, c3 = qkv.shape
        c = c3 // 3
        qkv = qkv.reshape(n, h * w, 3, HEADS, c // HEADS).transpose(2, 0, 1, 3, 4)  # [3, n, t, H, d]
    q, k, v = qkv[0], qkv[1], qkv[2]
    scale = 1.0 / np.sqrt(c // HEADS)
    if mixer == "ela":
        y = ela_noncausal(q * scale, k * scale, v)
    else:
        y = jax.nn.dot_product_attention(q, k, v, scale=scale)
    if L == "nchw":
        y = y.transpose(0, 2, 3, 1).reshape(n, c, h, w)
    else:
        y = y.reshape(n, h, w, c)
    return affine(p["bn"], x + conv(p["proj"], y, L), L)


def yolo_lat_fwd(p, x, L, neck):
    f = conv_block(p["stem"], x, L, 2)
    for i, s in enumerate(p["stages"]):
        f = dsc_fwd(s, f, L, 2 if i < 3 else 1)
    r = conv_block(p["reduce"], f, L)
    if neck in ("ela", "softmax"):
        m = attention2d(p["mix"], r, L, neck)
    elif neck == "conv":
        y = r
        for b in p["mix"]["blocks"]:
            y = dsc_fwd(b, y, L)
        m = affine(p["mix"]["bn"], r + y, L)
    else:
        m = r
    n = conv_block(p["expand"], m, L) + f
    return [conv(p["pred"], conv_block(p["head"], n, L), L)]


def c2f_fwd(p, x, L, shortcut):
    ys = jnp.split(conv_block(p["cv1"], x, L), 2, axis=chan_axis(L))
    for m in p["m"]:
        y = conv_block(m["cv2"], conv_block(m["cv1"], ys[-1], L), L)
        ys.append(ys[-1] + y if shortcut else y)
    return conv_block(p["cv2"], jnp.concatenate(ys, axis=chan_axis(L)), L)


def maxpool5(x, L):
    win = (1, 1, 5, 5) if L == "nchw" else (1, 5, 5, 1)
    pad = ((0, 0), (0, 0), (2, 2), (2, 2)) if L == "nchw" else ((0, 0), (2, 2), (2, 2), (0, 0))
    return lax.reduce_window(x, -jnp.inf, lax.max, win, (1, 1, 1, 1), pad)


def up2(x, L):
    """Nearest 2x upsampling (a broadcast and a reshape)."""
    if L == "nchw":
        n, c, h, w = x.shape
        return jnp.broadcast_to(x[:, :, :, None, :, None], (n, c, h, 2, w, 2)).reshape(n, c, 2 * h, 2 * w)
    n, h, w, c = x.shape
    return jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, 2, w, 2, c)).reshape(n, 2 * h, 2 * w, c)


def yolov8n_fwd(p, x, L):
    cat = lambda *a: jnp.concatenate(a, axis=chan_axis(L))  # noqa: E731
    f = conv_block(p["b1"], conv_block(p["b0"], x, L, 2), L, 2)
    f = c2f_fwd(p["b2"], f, L, True)
    p3 = c2f_fwd(p["b4"], conv_block(p["b3"], f, L, 2), L, True)
    p4 = c2f_fwd(p["b6"], conv_block(p["b5"], p3, L, 2), L, True)
    f = c2f_fwd(p["b8"], conv_block(p["b7"], p4, L, 2), L, True)
    ys = [conv_block(p["b9"]["cv1"], f, L)]
    for _ in range(3):
        ys.append(maxpool5(ys[-1], L))
    p5 = conv_block(p["b9"]["cv2"], cat(*ys), L)
    h4 = c2f_fwd(p["n12"], cat(up2(p5, L), p4), L, False)
    n3 = c2f_fwd(p["n15"], cat(up2(h4, L), p3), L, False)
    n4 = c2f_fwd(p["n18"], cat(conv_block(p["n16"], n3, L, 2), h4), L, False)
    n5 = c2f_fwd(p["n21"], cat(conv_block(p["n19"], n4, L, 2), p5), L, False)
    outs = []
    for f, h in zip((n3, n4, n5), p["head"]):
        bx = conv(h["box"][2], conv_block(h["box"][1], conv_block(h["box"][0], f, L), L), L)
        cl = conv(h["cls"][2], conv_block(h["cls"][1], conv_block(h["cls"][0], f, L), L), L)
        outs.append(cat(bx, cl))
    return outs


def forward_fn(model, neck, L):
    if model == "yolo-lat":
        return lambda p, x: yolo_lat_fwd(p, x, L, neck)
    return lambda p, x: yolov8n_fwd(p, x, L)


def make_input(batch, size, L, seed):
    x = np.random.default_rng(seed).random((batch, 3, size, size), dtype=np.float32)  # NCHW, [0, 1)
    if L == "nhwc":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    return jax.device_put(x)


# ----------------------------------------------------------------------------------------------
# Timing.


def time_config(fn, params, x, args):
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(params, x).compile()
    compile_s = time.perf_counter() - t0
    try:  # XLA's count (convolutions, matmuls and elementwise ops): compare with ela's GFLOPs column
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        gflop = round(float(cost["flops"]) / 1e9 / x.shape[0], 4)
    except Exception:  # noqa: BLE001 (cost analysis is optional)
        gflop = None
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(params, x))
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(args.warmup):
        if i > 0 and time.perf_counter() - t0 > args.budget_s / 2:
            break
        jax.block_until_ready(compiled(params, x))
    times = []
    start = time.perf_counter()
    while len(times) < max(args.reps, 1):
        if len(times) >= args.min_reps and time.perf_counter() - start > args.budget_s:
            break
        t = time.perf_counter()
        jax.block_until_ready(compiled(params, x))
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    med = times[len(times) // 2]  # upper middle, as ela bench detect's median
    return {
        "median_ms": round(med, 4),
        "p10_ms": round(times[len(times) // 10], 4),
        "p90_ms": round(times[(9 * len(times)) // 10], 4),
        "images_per_s": round(1e3 * x.shape[0] / med, 2),
        "reps": len(times),
        "xla_gflop_per_image": gflop,
        "compile_s": round(compile_s, 2),
        "first_call_s": round(first_s, 3),
    }


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        threads = len(os.sched_getaffinity(0))
    except AttributeError:
        threads = os.cpu_count()
    return cpu, threads


def load_avg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


# ----------------------------------------------------------------------------------------------
# Self-test: folded == unfolded in both layouts; ELA and softmax against float64 references.


def self_test(args):
    worst = 0.0

    def rel(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))

    r = np.random.default_rng(args.seed)
    b, t, d = 2, 100, 16
    q, k, v = (r.normal(0, 3, (b, t, HEADS, d)).astype(np.float32) for _ in range(3))
    q64, k64, v64 = (a.astype(np.float64).transpose(0, 2, 1, 3) for a in (q, k, v))  # [b, H, t, d]
    kern = np.einsum("bhid,bhjd->bhij", np.exp(q64 / 4), np.exp(k64 / 4))
    ref = np.einsum("bhij,bhje->bhie", kern, v64) / kern.sum(-1, keepdims=True)
    e = rel(jax.jit(ela_noncausal)(jnp.asarray(q) / 4, jnp.asarray(k) / 4, jnp.asarray(v)), ref.transpose(0, 2, 1, 3))
    print(json.dumps({"self_test": "ela vs float64 quadratic", "rel_err": e}), flush=True)
    worst = max(worst, e)
    logits = np.einsum("bhid,bhjd->bhij", q64, k64) / 4
    pw = np.exp(logits - logits.max(-1, keepdims=True))
    ref = np.einsum("bhij,bhje->bhie", pw / pw.sum(-1, keepdims=True), v64)
    sm = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, scale=0.25))
    e = rel(sm(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)), ref.transpose(0, 2, 1, 3))
    print(json.dumps({"self_test": "softmax vs float64", "rel_err": e}), flush=True)
    worst = max(worst, e)

    size, batch = 64, 2
    for model, neck in configs(args):
        raw = build_params(model, neck, args.nc, args.seed)
        x = np.random.default_rng(args.seed + 1).random((batch, 3, size, size), dtype=np.float32)
        ref = jax.jit(forward_fn(model, neck, "nchw"))(prepare(raw, "nchw", fold=False), jnp.asarray(x))
        for L in ("nchw", "nhwc"):
            xi = x if L == "nchw" else x.transpose(0, 2, 3, 1)
            out = jax.jit(forward_fn(model, neck, L))(prepare(raw, L), jnp.asarray(xi))
            if L == "nhwc":
                out = [o.transpose(0, 3, 1, 2) for o in out]
            e = max(rel(o, r_) for o, r_ in zip(out, ref))
            shapes = [list(o.shape) for o in out]
            print(json.dumps({"self_test": "folded vs unfolded", "model": model, "neck": neck, "layout": L,
                              "out_shapes_nchw": shapes, "rel_err": e}), flush=True)
            worst = max(worst, e)
    if not worst < 1e-4:
        sys.exit(f"self-test failed: worst relative error {worst}")
    print(json.dumps({"self_test": "passed", "worst_rel_err": worst}))


# ----------------------------------------------------------------------------------------------


def split(s):
    return [v.strip() for v in s.split(",") if v.strip()]


def configs(args):
    out = []
    for model in split(args.models):
        if model not in MODELS:
            sys.exit(f"unknown model {model}; expected one of {', '.join(MODELS)}")
        if model == "yolo-lat":
            for neck in split(args.necks):
                if neck not in NECKS:
                    sys.exit(f"unknown neck {neck}; expected one of {', '.join(NECKS)}")
                out.append((model, neck))
        else:
            out.append((model, None))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="yolo-lat,yolov8n", help="yolo-lat, yolov8n")
    ap.add_argument("--necks", default="ela,softmax,conv,none", help="YOLO-LAT necks: ela, softmax, conv, none")
    ap.add_argument("--nc", type=int, default=80, help="classes (ela bench detect's --classes default: 80)")
    ap.add_argument("--sizes", default="320,640")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--dtypes", default="f32", help="f32 only")
    ap.add_argument("--layout", choices=["nhwc", "nchw"], default="nhwc")
    ap.add_argument("--reps", type=int, default=20, help="timed calls (fewer if --budget-s runs out)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls after the first")
    ap.add_argument("--budget-s", type=float, default=10.0, help="stop timing a configuration after this")
    ap.add_argument("--min-reps", type=int, default=3, help="timed calls taken whatever the budget")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--expect-params", type=int, default=None)
    ap.add_argument("--params-only", action="store_true",
                    help="check the parameter counts of the listed models/necks at nc 1, 80 and --nc, and exit")
    ap.add_argument("--self-test", action="store_true",
                    help="check folded vs unfolded forward (both layouts) and the mixers, and exit")
    args = ap.parse_args()
    cfgs = configs(args)

    if args.params_only:
        bad = 0
        for model, neck in cfgs:
            for nc in sorted({1, 80, args.nc}):
                n = count_params(build_params(model, neck, nc, args.seed))
                want = check_params(model, neck, nc, n, args.expect_params if nc == args.nc else None, fatal=False)
                ok = want is None or n == want
                bad += not ok
                print(json.dumps({"model": model, "neck": neck, "nc": nc, "params": n, "expected": want, "ok": ok}),
                      flush=True)
        if bad:
            sys.exit(f"{bad} parameter counts differ from the Rust models'")
        return
    if args.self_test:
        self_test(args)
        return

    dtypes = split(args.dtypes)
    if any(d != "f32" for d in dtypes):
        sys.exit("--dtypes: only f32 is measured on the CPU")
    cpu, threads = machine()
    env = {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "xla_backend": jax.default_backend(),
           "device": str(jax.devices()[0]), "cpu": cpu, "threads": threads,
           "xla_flags": os.environ.get("XLA_FLAGS", "")}
    failed = 0
    for model, neck in cfgs:
        raw = build_params(model, neck, args.nc, args.seed)
        params_n = count_params(raw)
        check_params(model, neck, args.nc, params_n, args.expect_params)
        params = prepare(raw, args.layout)
        fn = forward_fn(model, neck, args.layout)
        for size in map(int, split(args.sizes)):
            for batch in map(int, split(args.batches)):
                for dtype in dtypes:
                    row = {"model": model, "neck": neck, "nc": args.nc, "size": size, "batch": batch, "dtype": dtype,
                           "layout": args.layout, "fused_bn": True, "params": params_n}
                    try:
                        x = make_input(batch, size, args.layout, args.seed + 1)
                        row.update(time_config(fn, params, x, args))
                        del x
                    except Exception as e:  # one failing configuration must not hide the others
                        failed += 1
                        row["error"] = f"{type(e).__name__}: {e}"[:500]
                    row.update(env, load_avg=load_avg())
                    print(json.dumps(row), flush=True)
    if failed:
        sys.exit(f"{failed} configurations failed (see their rows)")


if __name__ == "__main__":
    main()
