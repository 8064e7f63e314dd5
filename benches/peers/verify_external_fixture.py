#!/usr/bin/env python3
"""Writes the fixtures of models/tests/cli_verify_external.rs: small safetensors files in the format
`ela verify --external` reads (q, k, v, y and optionally dy, dq, dk, dv), produced by independent
implementations in JAX (jax.grad for the gradients), some exact and some deliberately not.

    python3 benches/peers/verify_external_fixture.py models/tests/fixtures/verify_external

Cases (B=1, H=2, T=24, D=8, Dv=4 unless said otherwise):
  exact_f64_bhtd        quadratic Hadamard-Exp ELA in f64, causal, with dy and dq, dk, dv
  exact_f32_bthd        the same in f32, stored [B, T, H, D] (fla's order), non-causal
  stable_f32_large      f32 with inputs of std 30 computed with a max shift (exact; e^(q+k) alone
                        would overflow f32)
  naive_f32_large       the same inputs computed as exp(q) . exp(k) without a shift: inf/NaN
  softmax_f64           softmax attention's output offered as ELA: not exact
  elu1_f64              linear attention with elu+1 features offered as ELA: not exact
  exact_y_only_f32      y only (no dy): gradients are not checked
Needs numpy and jax (CPU is enough); no torch. The Rust tests never run this script.
"""
import json
import os
import struct
import sys

import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

jax.config.update("jax_enable_x64", True)

DT = {np.dtype("float32"): "F32", np.dtype("float64"): "F64"}


def save(path, tensors):
    """Minimal safetensors writer: 8-byte little-endian header length, JSON header, raw data."""
    header, blobs, off = {}, [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        b = arr.tobytes()
        header[name] = {"dtype": DT[arr.dtype], "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def mask(t, causal):
    return jnp.tril(jnp.ones((t, t), bool)) if causal else jnp.ones((t, t), bool)


def ela_stable(q, k, v, causal):
    """Hadamard-Exp ELA, quadratic: a_ij = sum_d exp(q_id + k_jd), shifted by the row maximum."""
    s = q[..., :, None, :] + k[..., None, :, :]  # [B, H, T, T, D]
    s = jnp.where(mask(q.shape[-2], causal)[..., None], s, -jnp.inf)
    m = jnp.max(s, axis=(-2, -1), keepdims=True)
    a = jnp.sum(jnp.exp(s - m), axis=-1)
    return (a @ v) / jnp.sum(a, axis=-1, keepdims=True)


def ela_naive(q, k, v, causal):
    """exp(q) . exp(k) without any shift: what a first implementation writes."""
    a = jnp.exp(q) @ jnp.swapaxes(jnp.exp(k), -1, -2)
    a = jnp.where(mask(q.shape[-2], causal), a, 0.0)
    return (a @ v) / jnp.sum(a, axis=-1, keepdims=True)


def softmax_attn(q, k, v, causal):
    s = q @ jnp.swapaxes(k, -1, -2)
    s = jnp.where(mask(q.shape[-2], causal), s, -jnp.inf)
    return jax.nn.softmax(s, axis=-1) @ v


def elu1(q, k, v, causal):
    f = lambda x: jax.nn.elu(x) + 1.0  # noqa: E731
    a = jnp.where(mask(q.shape[-2], causal), f(q) @ jnp.swapaxes(f(k), -1, -2), 0.0)
    return (a @ v) / jnp.sum(a, axis=-1, keepdims=True)


def case(out, name, fn, dtype, causal, scale=1.0, layout="bhtd", grads=True, seed=0):
    rng = np.random.default_rng(seed)
    b, h, t, d, dv = 1, 2, 24, 8, 4
    q = (scale * rng.standard_normal((b, h, t, d))).astype(dtype)
    k = (scale * rng.standard_normal((b, h, t, d))).astype(dtype)
    v = rng.standard_normal((b, h, t, dv)).astype(dtype)
    dy = rng.standard_normal((b, h, t, dv)).astype(dtype)
    f = lambda q, k, v: fn(q, k, v, causal)  # noqa: E731
    y, vjp = jax.vjp(f, jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))
    tensors = {"q": q, "k": k, "v": v, "y": np.asarray(y).astype(dtype)}
    if grads:
        dq, dk, dvv = vjp(jnp.asarray(dy))
        tensors.update(dy=dy, dq=np.asarray(dq).astype(dtype), dk=np.asarray(dk).astype(dtype), dv=np.asarray(dvv).astype(dtype))
    if layout == "bthd":
        tensors = {n: np.swapaxes(a, 1, 2) for n, a in tensors.items()}
    save(os.path.join(out, name + ".safetensors"), tensors)
    print(name, {n: (a.dtype.name, a.shape) for n, a in tensors.items()})


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "models/tests/fixtures/verify_external"
    os.makedirs(out, exist_ok=True)
    case(out, "exact_f64_bhtd", ela_stable, np.float64, causal=True, seed=1)
    case(out, "exact_f32_bthd", ela_stable, np.float32, causal=False, layout="bthd", seed=2)
    case(out, "stable_f32_large", ela_stable, np.float32, causal=True, scale=30.0, seed=3)
    case(out, "naive_f32_large", ela_naive, np.float32, causal=True, scale=30.0, seed=3)
    case(out, "softmax_f64", softmax_attn, np.float64, causal=True, seed=4)
    case(out, "elu1_f64", elu1, np.float64, causal=True, seed=5)
    case(out, "exact_y_only_f32", ela_stable, np.float32, causal=True, grads=False, seed=6)


if __name__ == "__main__":
    main()
