#!/usr/bin/env python3
"""Peer for the CPU ELA benchmark: chunked causal Hadamard-Exp ELA written in JAX (jit, CPU, f32).

It computes the same function as ELA-rs's chunked form (docs/ela.md, "Chunked form"):
    phi(q) = exp(q - max_d q)      (per-query shift, cancels in the ratio)
    psi(k) = exp(k - max k)        (one global shift per batch and head, cancels)
    y_i = phi_i^T S_i / (phi_i . z_i),  S_i = sum_{j<=i} psi_j v_j^T,  z_i = sum_{j<=i} psi_j
with chunks of C: a masked quadratic product inside each chunk and exclusive prefix sums of the
per-chunk states across chunks.

Usage: python3 benches/peers/ela_jax.py [--times 256,1024,4096,16384] [--chunk 64] [--reps 5]
Prints one JSON object per line: {"t": T, "fwd_ms": .., "fwdbwd_ms": ..} (median of reps).
Install once with `pip install jax` (CPU build).
"""
import argparse
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402


def ela_chunked(q, k, v, chunk):
    b, h, t, d = q.shape
    dv = v.shape[-1]
    phi = jnp.exp(q - jnp.max(q, axis=-1, keepdims=True))
    psi = jnp.exp(k - jnp.max(k, axis=(-2, -1), keepdims=True))
    n = t // chunk
    phi = phi.reshape(b, h, n, chunk, d)
    psi = psi.reshape(b, h, n, chunk, d)
    vc = v.reshape(b, h, n, chunk, dv)
    mask = jnp.tril(jnp.ones((chunk, chunk), dtype=q.dtype))
    a = jnp.einsum("bhncd,bhnsd->bhncs", phi, psi) * mask
    num = jnp.einsum("bhncs,bhnsv->bhncv", a, vc)
    den = a.sum(-1)
    kv = jnp.einsum("bhncd,bhncv->bhndv", psi, vc)
    ks = psi.sum(3)
    s = jnp.cumsum(kv, axis=2) - kv
    z = jnp.cumsum(ks, axis=2) - ks
    num = num + jnp.einsum("bhncd,bhndv->bhncv", phi, s)
    den = den + jnp.einsum("bhncd,bhnd->bhnc", phi, z)
    return (num / den[..., None]).reshape(b, h, t, dv)


def median_ms(f, args, reps):
    jax.block_until_ready(f(*args))  # compile + warm up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--times", default="256,1024,4096,16384")
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--dim", type=int, default=64)
    args = ap.parse_args()
    key = jax.random.PRNGKey(0)
    for t in [int(x) for x in args.times.split(",")]:
        kq, kk, kv, kr = jax.random.split(jax.random.fold_in(key, t), 4)
        shape = (args.batch, args.heads, t, args.dim)
        q = jax.random.normal(kq, shape, jnp.float32)
        k = jax.random.normal(kk, shape, jnp.float32)
        v = jax.random.normal(kv, shape, jnp.float32)
        r = jax.random.normal(kr, shape, jnp.float32)
        fwd = jax.jit(lambda q, k, v: ela_chunked(q, k, v, args.chunk))
        loss = lambda q, k, v: jnp.sum(ela_chunked(q, k, v, args.chunk) * r)  # noqa: E731
        fwdbwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        out = {
            "t": t,
            "fwd_ms": median_ms(fwd, (q, k, v), args.reps),
            "fwdbwd_ms": median_ms(fwdbwd, (q, k, v), args.reps),
        }
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
