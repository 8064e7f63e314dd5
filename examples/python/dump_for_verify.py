#!/usr/bin/env python3
"""Dump a PyTorch implementation of Hadamard-Exp ELA for `ela verify --external`.

Runs an implementation on random q, k, v, back-propagates a random dy, and saves
q, k, v, y, dy, dq, dk, dv to a safetensors file in [B, H, T, D] order; then

    ela verify --external FILE --kernel hadamard-exp --causal true

says whether the implementation is exact (max abs / max rel error against the exact f64 answer,
worst position, NaN/inf counts; exit 1 beyond the tolerance).

Implementations (--impl):
  naive   exp(q) @ exp(k)^T, masked, normalised: the first thing one writes; overflows for large
          inputs (try --scale 30)
  stable  the same with the row maximum of q_i + k_j subtracted first: exact at any scale
  fla     flash-linear-attention's chunk_linear_attn with exp feature maps (needs a GPU and
          `pip install flash-linear-attention`); its inputs are [B, T, H, D], transposed here
  yours   edit `my_ela` below

Usage: python3 examples/python/dump_for_verify.py [--impl naive|stable|fla|yours] [--out FILE]
  [--batch 2] [--heads 4] [--time 256] [--dim 64] [--dv 64] [--dtype f32|bf16|f16|f64]
  [--scale 1.0] [--causal true|false] [--device cpu|cuda] [--seed 0]
Saves with safetensors.torch when installed, else with a small writer of its own.
"""
import argparse
import json
import struct

import torch


def mask(t, causal, device):
    m = torch.ones(t, t, dtype=torch.bool, device=device)
    return torch.tril(m) if causal else m


def naive(q, k, v, causal):
    a = torch.exp(q) @ torch.exp(k).transpose(-1, -2)
    a = a.masked_fill(~mask(q.shape[-2], causal, q.device), 0.0)
    return (a @ v) / a.sum(-1, keepdim=True)


def stable(q, k, v, causal):
    s = q[..., :, None, :] + k[..., None, :, :]  # [B, H, T, T, D]: fine for small T
    s = s.masked_fill(~mask(q.shape[-2], causal, q.device)[..., None], float("-inf"))
    a = torch.exp(s - s.amax(dim=(-2, -1), keepdim=True)).sum(-1)
    return (a @ v) / a.sum(-1, keepdim=True)


def fla(q, k, v, causal):
    from fla.ops.linear_attn import chunk_linear_attn  # noqa: PLC0415

    if not causal:
        raise SystemExit("fla's chunk_linear_attn is causal only")
    bt = lambda x: x.transpose(1, 2).contiguous()  # noqa: E731  [B, H, T, D] -> [B, T, H, D]
    args = (bt(torch.exp(q)), bt(torch.exp(k)), bt(v))
    try:  # fla versions that still have the flag default it to head-first in some releases
        o, _ = chunk_linear_attn(*args, scale=1.0, normalize=True, head_first=False)
    except TypeError:  # newer releases: [B, T, H, D] only, no flag
        o, _ = chunk_linear_attn(*args, scale=1.0, normalize=True)
    return o.transpose(1, 2)


def my_ela(q, k, v, causal):
    """Put your implementation here: q, k [B, H, T, D], v [B, H, T, Dv] -> y [B, H, T, Dv]."""
    return stable(q, k, v, causal)


IMPLS = {"naive": naive, "stable": stable, "fla": fla, "yours": my_ela}
DTYPES = {"f32": torch.float32, "f64": torch.float64, "bf16": torch.bfloat16, "f16": torch.float16}
ST_NAMES = {torch.float32: "F32", torch.float64: "F64", torch.bfloat16: "BF16", torch.float16: "F16"}


def save(path, tensors):
    try:
        from safetensors.torch import save_file  # noqa: PLC0415

        save_file({n: t.contiguous() for n, t in tensors.items()}, path)
        return
    except ImportError:
        pass
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        b = t.contiguous().cpu().view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": ST_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--impl", choices=list(IMPLS), default="naive")
    ap.add_argument("--out", default="ela_dump.safetensors")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--time", type=int, default=256)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--dv", type=int, default=64)
    ap.add_argument("--dtype", choices=list(DTYPES), default="f32")
    ap.add_argument("--scale", type=float, default=1.0, help="standard deviation of q and k")
    ap.add_argument("--causal", choices=["true", "false"], default="true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    dt, dev, causal = DTYPES[a.dtype], torch.device(a.device), a.causal == "true"
    shape = (a.batch, a.heads, a.time)
    q = (a.scale * torch.randn(*shape, a.dim, device=dev)).to(dt).requires_grad_()
    k = (a.scale * torch.randn(*shape, a.dim, device=dev)).to(dt).requires_grad_()
    v = torch.randn(*shape, a.dv, device=dev).to(dt).requires_grad_()
    dy = torch.randn(*shape, a.dv, device=dev).to(dt)
    y = IMPLS[a.impl](q, k, v, causal)
    dq, dk, dv = torch.autograd.grad(y, (q, k, v), dy)
    out = {"q": q, "k": k, "v": v, "y": y, "dy": dy, "dq": dq, "dk": dk, "dv": dv}
    save(a.out, {n: t.detach().cpu() for n, t in out.items()})
    print(f"wrote {a.out}: impl {a.impl}, {a.dtype}, [B, H, T, D] = [{a.batch}, {a.heads}, {a.time}, {a.dim}], Dv {a.dv}")
    print(f"check it: ela verify --external {a.out} --kernel hadamard-exp --causal {a.causal}")


if __name__ == "__main__":
    main()
