#!/usr/bin/env python3
"""A rounding model of the GPU's chunked feature-map ELA (cuda/kernels/ela/la_chunk.cu) in numpy.

It answers one question before any GPU run: how much do the signed kernels (sum/sub squared
Euclidean, blueprint, Identity) lose when their operands are bf16 instead of f32? It follows the
algorithm's roundings, not its code:

  forward   [N | den] = LA(Phi, Psi, [v | 1]),  y = N / den (y rounded to the input dtype)
  backward  G = [dy / den | -(dy . y) / den]
            dPhi = LA(G, V', Psi),  dPsi = LA~(V', G, Phi),  dV' = LA~(Psi, Phi, G)
            dq, dk = the feature maps' vector-Jacobian products of dPhi, dPsi

  LA(A, B, X)_c = A_c S_c + mask(A_c B_c^T) X_c over chunks of C rows, S_c = sum_{c'<c} B^T X

Operands A, B, X are rounded to the operand type, products accumulate in f32, the masked block
A_c B_c^T is rounded to the operand type before it multiplies X_c, and the state slot S_c is
rounded to it once a chunk. Modes:

  f32    f32 operands (the default path: 3xTF32 is accurate to f32 rounding)
  bf16   bf16 operands (what ELA_CUDA_SIGNED_BF16=1 runs)
  split  bf16 operands with each state slot kept as two bf16 halves (hi + lo) and the squared
         norms of the Euclidean kernels' features as two columns each: a design that was
         considered, whose gain this model measures

Errors are normwise, |a - r| / |r| against the same algorithm in f64 on the same bf16 inputs
(as cuda/benches/ela_gpu.rs reports them). Run: python3 benches/numerics/la_bf16_model.py
(needs numpy; a few seconds).
"""
import numpy as np


def bf16(x):
    """Round to bf16 (nearest even), returned as f64."""
    b = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    b = ((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return b.view(np.float32).astype(np.float64)


def f32(x):
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def features(kind, q, k, split):
    """phi(q), psi(k) (docs/ela.md, "Kernels"); `split`: squared norms as hi + lo bf16 columns."""
    nq, nk = (q * q).sum(1, keepdims=True), (k * k).sum(1, keepdims=True)
    one = np.ones_like(nq)
    if kind in ("sum", "sub"):
        s = 2.0 if kind == "sum" else -2.0
        if split:
            qh, kh = bf16(nq), bf16(nk)
            return (np.hstack([q, qh, bf16(nq - qh), one, one]), np.hstack([s * k, one, one, kh, bf16(nk - kh)]))
        return np.hstack([q, nq, one]), np.hstack([s * k, one, nk])
    if kind == "blueprint":
        return (nq + 1) * np.hstack([q, one]), (nk + 1) * np.hstack([k, one])
    return q, k  # identity


def vjp(kind, x, g, key):
    """dx from the gradient g of phi(x) (key False) or psi(x) (key True); (V1)-(V5) of docs/ela.md."""
    d = x.shape[1]
    if kind in ("sum", "sub"):
        # With split columns both halves of a norm carry the same gradient: take one.
        norm_col = d if not key else (d + 1 if g.shape[1] == d + 2 else d + 2)
        lin = 1.0 if not key else (2.0 if kind == "sum" else -2.0)
        return lin * g[:, :d] + 2 * x * g[:, norm_col : norm_col + 1]
    if kind == "blueprint":
        n = (x * x).sum(1, keepdims=True) + 1
        return n * g[:, :d] + 2 * x * ((g[:, :d] * x).sum(1, keepdims=True) + g[:, d : d + 1])
    return g


def la(a, b, x, reverse, mode, c):
    """LA(A, B, X) (reverse: the anti-causal LA~) with the roundings of `mode`; None: exact."""
    if mode is None:
        p = a @ b.T
        return (np.triu(p) if reverse else np.tril(p)) @ x
    rnd = f32 if mode == "f32" else bf16
    a, b, x = rnd(a), rnd(b), rnd(x)
    s, out = np.zeros((a.shape[1], x.shape[1])), np.zeros((a.shape[0], x.shape[1]))
    starts = list(range(0, a.shape[0], c))
    for c0 in starts[::-1] if reverse else starts:
        ac, bc, xc = a[c0 : c0 + c], b[c0 : c0 + c], x[c0 : c0 + c]
        if mode == "split":
            hi = rnd(s)
            inter = f32(ac @ hi) + f32(ac @ rnd(s - hi))
        else:
            inter = ac @ rnd(s)
        p = ac @ bc.T
        out[c0 : c0 + c] = f32(inter + rnd(f32(np.triu(p) if reverse else np.tril(p))) @ xc)
        s = f32(s + bc.T @ xc)
    return out


def ela(kind, q, k, v, dy, mode, c=64):
    """(y, dq, dk, dv) of causal ELA with the roundings of `mode` (None: exact)."""
    phi, psi = features(kind, q, k, mode == "split")
    vaug = np.hstack([v, np.ones((v.shape[0], 1))])
    o = la(phi, psi, vaug, False, mode, c)
    den = o[:, -1:]
    y = o[:, :-1] / den
    if mode is not None:
        y, den = bf16(y), f32(den)  # y in the input dtype (the backward reads it), den in f32
    g = np.hstack([dy / den, -(dy * y).sum(1, keepdims=True) / den])
    dphi = la(g, vaug, psi, False, mode, c)
    dpsi = la(vaug, g, phi, True, mode, c)
    dv = la(psi, phi, g, True, mode, c)[:, :-1]
    grads = (vjp(kind, q, dphi, False), vjp(kind, k, dpsi, True), dv)
    # dq, dk, dv are written in the input dtype, as y is.
    return (y, *(grads if mode is None else map(bf16, grads)))


def rel(a, r):
    return np.sqrt(((a - r) ** 2).sum() / (r**2).sum())


def main():
    rng = np.random.default_rng(0)
    # The GPU test's inputs (tests/tests/cuda_ops/ela_gemm.rs: N(0.2, 0.3); Identity N(1, 0.1))
    # and ela_gpu's (uniform in [0, 0.5)); v and dy standard normal; all rounded to bf16.
    cases = [
        (kind, t, d, dv, dist)
        for kind in ("sum", "sub", "blueprint", "identity")
        for (t, d, dv, dist) in ((200, 64, 5, "test"), (130, 16, 128, "test"), (2048, 64, 64, "bench"))
    ]
    print("| kernel | T | D | Dv | inputs | mode | y | dq | dk | dv |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind, t, d, dv, dist in cases:
        if dist == "bench":
            q, k = rng.uniform(0, 0.5, (t, d)), rng.uniform(0, 0.5, (t, d))
        elif kind == "identity":
            q, k = rng.normal(1.0, 0.1, (t, d)), rng.normal(1.0, 0.1, (t, d))
        else:
            q, k = rng.normal(0.2, 0.3, (t, d)), rng.normal(0.2, 0.3, (t, d))
        q, k, v, dy = bf16(q), bf16(k), bf16(rng.standard_normal((t, dv))), bf16(rng.standard_normal((t, dv)))
        ref = ela(kind, q, k, v, dy, None)
        for mode in ("f32", "bf16", "split"):
            errs = " | ".join(f"{rel(a, r):.1e}" for a, r in zip(ela(kind, q, k, v, dy, mode), ref))
            print(f"| {kind} | {t} | {d} | {dv} | {dist} | {mode} | {errs} |")


if __name__ == "__main__":
    main()
