#!/usr/bin/env python3
"""Peer for the CPU convolution benchmark (core/benches/conv.rs): the same layer shapes in JAX
(jit, CPU, f32, compile excluded, block_until_ready). Layout: NCHW input / OIHW weight / NCHW
output like ELA-rs (`--layout nchw`, default), or XLA:CPU's native NHWC / HWIO / NHWC
(`--layout nhwc`), which spares XLA the transposes it may insert around an NCHW convolution.

- fwd: jax.jit(lax.conv_general_dilated(x, w, stride, padding, feature_group_count=groups))
- fwd+bwd: jax.jit(jax.value_and_grad(lambda x, w: sum(conv(x, w) * dy), argnums=(0, 1))),
  i.e. the forward, the input gradient and the weight gradient (plus one elementwise product
  and sum, negligible here), what ELA-rs's fwd+bwd column times.

Usage: python3 benches/peers/conv_jax.py [--only LABEL,LABEL] [--reps N] [--layout nchw|nhwc]
Prints one line per shape: `label<TAB>fwd_ms<TAB>fwdbwd_ms` (median of the timed runs after a
compile + warm-up call; at least --reps runs and about 1 s per measurement, at most 100 runs).
Install once with `pip install jax` (CPU build).
"""
import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

# (label, n, c, hw, o, k, stride, groups); padding k // 2. Same list as core/benches/conv.rs.
LAYERS = [
    ("conv3x3 s2 3->16 @256", 8, 3, 256, 16, 3, 2, 1),
    ("dw3x3 s2 16 @128", 8, 16, 128, 16, 3, 2, 16),
    ("pw 16->32 @64", 8, 16, 64, 32, 1, 1, 1),
    ("dw3x3 s2 32 @64", 8, 32, 64, 32, 3, 2, 32),
    ("pw 32->64 @32", 8, 32, 32, 64, 1, 1, 1),
    ("dw3x3 s2 64 @32", 8, 64, 32, 64, 3, 2, 64),
    ("pw 64->128 @16", 8, 64, 16, 128, 1, 1, 1),
    ("dw3x3 s1 128 @16", 8, 128, 16, 128, 3, 1, 128),
    ("pw 128->128 @16", 8, 128, 16, 128, 1, 1, 1),
    ("conv3x3 s2 32->64 @160", 8, 32, 160, 64, 3, 2, 1),
    ("b1 conv3x3 s2 3->16 @256", 1, 3, 256, 16, 3, 2, 1),
    ("b1 conv3x3 s2 32->64 @160", 1, 32, 160, 64, 3, 2, 1),
    ("b1 dw3x3 s2 16 @128", 1, 16, 128, 16, 3, 2, 16),
    ("b1 pw 16->32 @64", 1, 16, 64, 32, 1, 1, 1),
]


def median_ms(f, args, reps, budget=1.0):
    jax.block_until_ready(f(*args))  # compile + warm up
    times = []
    start = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - start < budget and len(times) < 100):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="", help="comma-separated labels (default: all)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--layout", choices=["nchw", "nhwc"], default="nchw")
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else None
    budget = 0.1 if args.reps < 5 else 1.0
    key = jax.random.PRNGKey(0)
    for i, (label, n, c, hw, o, k, s, g) in enumerate(LAYERS):
        if only is not None and label not in only:
            continue
        kx, kw, kd = jax.random.split(jax.random.fold_in(key, i), 3)
        if args.layout == "nchw":
            x_shape, w_shape, dims = (n, c, hw, hw), (o, c // g, k, k), ("NCHW", "OIHW", "NCHW")
        else:
            x_shape, w_shape, dims = (n, hw, hw, c), (k, k, c // g, o), ("NHWC", "HWIO", "NHWC")
        x = jax.random.uniform(kx, x_shape, jnp.float32, -1.0, 1.0)
        w = jax.random.uniform(kw, w_shape, jnp.float32, -1.0, 1.0)
        p = k // 2

        def conv(x, w, s=s, p=p, g=g, dims=dims):
            return lax.conv_general_dilated(
                x,
                w,
                window_strides=(s, s),
                padding=((p, p), (p, p)),
                dimension_numbers=dims,
                feature_group_count=g,
            )

        y = conv(x, w)
        dy = jax.random.uniform(kd, y.shape, jnp.float32, -1.0, 1.0)
        fwd = jax.jit(conv)
        fwdbwd = jax.jit(jax.value_and_grad(lambda x, w, dy=dy, conv=conv: jnp.sum(conv(x, w) * dy), argnums=(0, 1)))
        f = median_ms(fwd, (x, w), args.reps, budget)
        fb = median_ms(fwdbwd, (x, w), args.reps, budget)
        print(f"{label}\t{f:.4f}\t{fb:.4f}", flush=True)


if __name__ == "__main__":
    main()
