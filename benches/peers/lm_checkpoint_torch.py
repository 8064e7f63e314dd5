#!/usr/bin/env python3
"""Load an `ela train` checkpoint into a PyTorch implementation of the same LM and check that it
computes the same logits as ours.

    ela train ... --out runs/x                                   # any LM configuration
    ela logits --checkpoint runs/x --text "some text" --out /tmp/ours.safetensors
    python3 benches/peers/lm_checkpoint_torch.py --checkpoint runs/x --ours /tmp/ours.safetensors \
        [--device cpu|cuda] [--dtype f32|f64] [--tol 1e-5]

The checkpoint is a plain safetensors file: the model's tensors under `model.` (PyTorch's
`[out, in]` weight layout, so no transposes), the optimizer's under `optim.` (ignored here), and
the model configuration as string metadata (`model.dim`, `model.link`, ...). This script reads the
file with the standard library only (the format is an 8-byte header length, a JSON header and raw
little-endian tensors), builds the model from the metadata, runs it on the `ids` saved by
`ela logits`, and compares with the saved `logits`: it prints the max absolute and the max
relative error (relative to the largest |logit|, per position) and exits 1 above `--tol`.

Every switch of the Rust model is implemented (models/src/lm, nn/src; docs/model.md):
- embedding (tied head by default), pre-norm residual or Hyper-Link blocks, final RMSNorm;
- attention: softmax (scaled by 1/sqrt(head dim), causal) or causal ELA with any built-in
  kernel, computed in its quadratic form (exact; the Rust side runs the chunked form);
- rotary embedding (half-split rotation, base 10000) when `model.rope_max_len` is set;
- the Memory Lobe (single-head Hadamard-Exp ELA over the block's update, causal or bidirectional);
- the MoE: router without bias, softmax or sigmoid scores, top-k on scores + the loss-free
  selection bias, gates = the scores of the chosen experts, and the routing-score bias (the
  router's row e) added inside (`(h + b_e) g`) or outside (`h g + b_e`) the gate.
"""
import argparse
import json
import math
import struct
import sys

import torch
import torch.nn.functional as F

DTYPES = {"F32": torch.float32, "F64": torch.float64, "F16": torch.float16, "BF16": torch.bfloat16,
          "U32": torch.int64, "U8": torch.uint8}
RAW = {"F32": ("<f4", 4), "F64": ("<f8", 8), "U32": ("<u4", 4), "U8": ("<u1", 1), "F16": ("<f2", 2)}


def read_safetensors(path):
    """(tensors, metadata) of a safetensors file, with the standard library and torch only."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        buf = bytearray(data[base + a:base + b])
        dt = info["dtype"]
        if dt == "BF16":
            t = torch.frombuffer(buf, dtype=torch.bfloat16) if buf else torch.empty(0, dtype=torch.bfloat16)
        else:
            np_like = {"F32": torch.float32, "F64": torch.float64, "U8": torch.uint8, "F16": torch.float16}
            if dt == "U32":
                t = torch.frombuffer(buf, dtype=torch.int32).to(torch.int64) & 0xFFFFFFFF if buf else torch.empty(0, dtype=torch.int64)
            else:
                t = torch.frombuffer(buf, dtype=np_like[dt]) if buf else torch.empty(0, dtype=np_like[dt])
        out[name] = t.reshape(info["shape"]).clone()
    return out, meta


def rms_norm(x, w, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def features(kernel, q, k):
    """phi(q), psi(k) of docs/ela.md's kernel table; Hadamard-Exp with per-row / per-head shifts
    that cancel in the normalised attention (so exp never overflows)."""
    if kernel == "hadamard-exp":
        phi = torch.exp(q - q.amax(-1, keepdim=True))
        psi = torch.exp(k - k.amax((-2, -1), keepdim=True))
        return phi, psi
    ones_q = torch.ones_like(q[..., :1])
    ones_k = torch.ones_like(k[..., :1])
    qq = q.pow(2).sum(-1, keepdim=True)
    kk = k.pow(2).sum(-1, keepdim=True)
    if kernel == "sum-sq-euclid":
        return torch.cat([q, qq, ones_q], -1), torch.cat([2 * k, ones_k, kk], -1)
    if kernel == "sub-sq-euclid":
        return torch.cat([q, qq, ones_q], -1), torch.cat([-2 * k, ones_k, kk], -1)
    if kernel == "blueprint":
        return (qq + 1) * torch.cat([q, ones_q], -1), (kk + 1) * torch.cat([k, ones_k], -1)
    if kernel == "identity":
        return q, k
    raise SystemExit(f"unknown ELA kernel {kernel!r}")


def ela_quadratic(kernel, q, k, v, causal):
    """y_i = sum_j k(q_i, k_j) v_j / sum_j k(q_i, k_j) over j <= i (all j when not causal)."""
    phi, psi = features(kernel, q, k)
    a = phi @ psi.transpose(-2, -1)
    if causal:
        t = q.shape[-2]
        a = a * torch.tril(torch.ones(t, t, dtype=a.dtype, device=a.device))
    return (a @ v) / a.sum(-1, keepdim=True)


def softmax_attention(q, k, v):
    t, dh = q.shape[-2], q.shape[-1]
    s = (q @ k.transpose(-2, -1)) / math.sqrt(dh)
    mask = torch.tril(torch.ones(t, t, dtype=torch.bool, device=q.device))
    return torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v


def rope(x, base=10000.0):
    t, d = x.shape[-2], x.shape[-1]
    half = d // 2
    theta = base ** (-2.0 * torch.arange(half, dtype=torch.float64) / d)
    ang = torch.arange(t, dtype=torch.float64)[:, None] * theta[None, :]
    cos, sin = torch.cos(ang).to(x), torch.sin(ang).to(x)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


class TorchLm:
    """The ELA LM of models/src/lm as plain functions over the checkpoint's tensors."""

    def __init__(self, w, meta):
        self.w, self.m = w, meta
        self.dim = int(meta["model.dim"])
        self.layers = int(meta["model.layers"])
        self.heads = int(meta["model.heads"])
        self.attention = meta["model.attention"]
        self.link = meta["model.link"]
        self.lobe = meta["model.lobe"]
        self.moe = meta.get("model.moe", "off") == "on"
        self.final_norm = meta["model.final_norm"] == "true"
        self.tied = meta["model.tied_embeddings"] == "true"
        self.rope = meta.get("model.rope_max_len", "none") != "none"
        if self.moe:
            self.top_k = int(meta["model.moe.top_k"])
            self.bias = meta["model.moe.bias"]
            self.score = meta["model.moe.score"]

    def lin(self, x, name):
        return x @ self.w[name + ".weight"].T

    def attn(self, x, p, heads, mixer, causal, rotate):
        b, t, d = x.shape
        hd = d // heads

        def split(name):
            return self.lin(x, f"{p}.{name}").reshape(b, t, heads, hd).transpose(1, 2)

        q, k, v = split("q"), split("k"), split("v")
        if rotate:
            q, k = rope(q), rope(k)
        if mixer == "softmax":
            y = softmax_attention(q, k, v)
        else:
            y = ela_quadratic(mixer, q, k, v, causal)
        return self.lin(y.transpose(1, 2).reshape(b, t, d), f"{p}.o")

    def swiglu(self, x, p):
        return self.lin(F.silu(self.lin(x, f"{p}.w_gate")) * self.lin(x, f"{p}.w_up"), f"{p}.w_down")

    def moe_ffn(self, x, p):
        shape = x.shape
        xf = x.reshape(-1, self.dim)
        logits = self.lin(xf, f"{p}.router")
        scores = torch.softmax(logits, 1) if self.score == "softmax" else torch.sigmoid(logits)
        sel = scores + self.w[f"{p}.selection_bias"][None, :]
        idx = sel.topk(self.top_k, 1).indices
        gates = scores.gather(1, idx)
        y = torch.zeros_like(xf)
        router_w = self.w[f"{p}.router.weight"]
        for slot in range(self.top_k):
            for e in range(router_w.shape[0]):
                rows = (idx[:, slot] == e).nonzero().flatten()
                if rows.numel() == 0:
                    continue
                h = self.swiglu(xf[rows], f"{p}.experts.{e}")
                g = gates[rows, slot][:, None]
                b_e = router_w[e][None, :]
                if self.bias == "none":
                    c = h * g
                elif self.bias == "inner":
                    c = (h + b_e) * g
                else:
                    c = h * g + b_e
                y.index_add_(0, rows, c)
        return y.reshape(shape)

    def ffn(self, x, p):
        return self.moe_ffn(x, f"{p}.moe") if self.moe else self.swiglu(x, f"{p}.ffn")

    def block(self, x, i):
        p = f"layers.{i}"
        mixer = "softmax" if self.attention == "softmax" else self.attention.split(":", 1)[1]
        a = self.attn(rms_norm(x, self.w[f"{p}.norm1.weight"]), f"{p}.attn", self.heads, mixer, True, self.rope)

        def lobe(f):
            if self.lobe == "off":
                return 0
            return self.attn(f, f"{p}.lobe", 1, "hadamard-exp", self.lobe == "causal", False)

        if self.link == "hyper":
            f = a + self.ffn(a, p)
            return x + f + lobe(f)
        h = x + a
        f = self.ffn(rms_norm(h, self.w[f"{p}.norm2.weight"]), p)
        return h + f + lobe(f)

    def forward(self, ids):
        h = self.w["embed.weight"][ids]
        for i in range(self.layers):
            h = self.block(h, i)
        if self.final_norm:
            h = rms_norm(h, self.w["final_norm.weight"])
        head = self.w["embed.weight"] if self.tied else self.w["head.weight"]
        return h @ head.T


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="run folder or checkpoint.safetensors")
    ap.add_argument("--ours", required=True, help="the file written by `ela logits`")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="f32", choices=["f32", "f64"])
    ap.add_argument("--tol", type=float, default=1e-5, help="max relative error allowed")
    args = ap.parse_args()
    path = args.checkpoint
    if not path.endswith(".safetensors"):
        path = path.rstrip("/") + "/checkpoint.safetensors"
    tensors, meta = read_safetensors(path)
    dtype = torch.float32 if args.dtype == "f32" else torch.float64
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    w = {k[len("model."):]: v.to(args.device, dtype) for k, v in tensors.items() if k.startswith("model.")}
    ours, _ = read_safetensors(args.ours)
    ids = ours["ids"].to(args.device)
    ref = ours["logits"].to(args.device, torch.float64)
    with torch.no_grad():
        got = TorchLm(w, meta).forward(ids).to(torch.float64)
    diff = (got - ref).abs()
    scale = ref.abs().amax(-1, keepdim=True).clamp_min(1e-30)
    rel = (diff / scale).max().item()
    pos = int((diff / scale).amax(-1).argmax())
    same_argmax = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
    result = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "dtype": args.dtype,
        "config": {k: v for k, v in meta.items() if k.startswith("model.")},
        "positions": int(ids.shape[1]),
        "max_abs": diff.max().item(),
        "max_rel": rel,
        "worst_position": pos,
        "same_argmax": same_argmax,
        "tol": args.tol,
        "pass": rel <= args.tol,
    }
    print(json.dumps(result))
    sys.exit(0 if result["pass"] else 1)


if __name__ == "__main__":
    main()
