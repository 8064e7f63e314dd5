#!/usr/bin/env python3
"""The outside reference for `ela claims decode` / `ela bench decode`: the same softmax LM decoding
in PyTorch with `scaled_dot_product_attention` over a preallocated KV cache.

    python3 benches/peers/decode_torch.py [--contexts 1024,4096] [--batch 1] [--steps 32] \
        [--dim 128 --layers 4 --heads 4 --ffn-hidden 256] [--modes eager,graph,compile] [--json out.json]

The model is the one the Rust benchmark builds (models/src/cli/bench/decode.rs): byte vocabulary
(256), tied embeddings, Hyper-Link blocks (`x + a + ffn(a)` with `a = attn(norm1(x))`), dense
SwiGLU FFN, final RMSNorm, no RoPE, f32 (or `--dtype bf16`), random weights (latency does not
depend on them).

Two ways a practitioner decodes with a KV cache:
- `eager`: the cache is a preallocated `[batch, heads, N + steps + 1, d_h]` buffer written in
  place (`index_copy_`), attention reads the filled prefix `[:, :, :pos + 1]` with SDPA.
- `graph`: the whole step captured in one CUDA graph (what `torch.compile(mode="reduce-overhead")`
  does for a static cache): positions are device tensors, attention reads the whole buffer with a
  mask over the unfilled positions (static shapes), so its cost follows the capacity.
- `compile`: the same masked step compiled by `torch.compile` (Inductor fuses the norms, SwiGLU
  and residual adds into Triton kernels; `dynamic=True`, so one compilation serves every context
  and batch) and then captured in one CUDA graph: `reduce-overhead` done by hand, so that the
  capture and the replays are the same as `graph`'s. Compilation happens in the untimed warm-up.
Prefill runs SDPA with `is_causal=True` (flash / memory-efficient kernels; no N x N matrix).
Each timed step includes copying the logits to the host, as the Rust benchmark does. Timings are
medians of `--steps` steps after one warm-up, by wall clock after a device synchronisation.
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F


def rms_norm(x, w, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


class DecodeLm:
    def __init__(self, dim, layers, heads, ffn, dev, dtype, seed=0):
        g = torch.Generator(device="cpu").manual_seed(seed)
        self.dtype = dtype

        def p(*shape, std):
            return (torch.randn(*shape, generator=g) * std).to(dev, dtype)

        self.dim, self.layers, self.heads, self.dh = dim, layers, heads, dim // heads
        self.embed = p(256, dim, std=0.02)
        s = 1.0 / math.sqrt(dim)
        self.w = [{
            "norm1": torch.ones(dim, device=dev, dtype=dtype),
            "qkv": p(3 * dim, dim, std=s), "o": p(dim, dim, std=s),
            "gate": p(ffn, dim, std=s), "up": p(ffn, dim, std=s), "down": p(dim, ffn, std=1.0 / math.sqrt(ffn)),
        } for _ in range(layers)]
        self.final = torch.ones(dim, device=dev, dtype=dtype)

    def ffn(self, x, w):
        return F.silu(x @ w["gate"].T) * (x @ w["up"].T) @ w["down"].T

    def qkv(self, x, w):
        b, t, _ = x.shape
        q, k, v = (x @ w["qkv"].T).split(self.dim, -1)
        return [z.reshape(b, t, self.heads, self.dh).transpose(1, 2) for z in (q, k, v)]

    def merge(self, y, w):
        b, _, t, _ = y.shape
        return y.transpose(1, 2).reshape(b, t, self.dim) @ w["o"].T

    def logits(self, h):
        return rms_norm(h, self.final) @ self.embed.T

    def prefill(self, ids, kc, vc):
        h = self.embed[ids]
        t = ids.shape[1]
        for i, w in enumerate(self.w):
            q, k, v = self.qkv(rms_norm(h, w["norm1"]), w)
            kc[i][:, :, :t].copy_(k)
            vc[i][:, :, :t].copy_(v)
            a = self.merge(F.scaled_dot_product_attention(q, k, v, is_causal=True), w)
            h = h + a + self.ffn(a, w)
        return self.logits(h[:, -1])

    def compiled_step(self):
        if not hasattr(self, "_compiled"):
            self._compiled = torch.compile(self.step, dynamic=True)
        return self._compiled

    def step(self, tok, pos, kc, vc, mask=None):
        """One token per row; `pos` a 1-element long tensor on the device. With `mask` (static
        shapes, for graph capture) attention reads the whole buffer; without, the prefix."""
        h = self.embed[tok][:, None]
        for i, w in enumerate(self.w):
            q, k, v = self.qkv(rms_norm(h, w["norm1"]), w)
            kc[i].index_copy_(2, pos, k)
            vc[i].index_copy_(2, pos, v)
            if mask is None:
                n = int(pos.item()) + 1
                y = F.scaled_dot_product_attention(q, kc[i][:, :, :n], vc[i][:, :, :n])
            else:
                y = F.scaled_dot_product_attention(q, kc[i], vc[i], attn_mask=mask)
            a = self.merge(y, w)
            h = h + a + self.ffn(a, w)
        return self.logits(h[:, 0])


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def measure(lm, n, batch, steps, mode, dev):
    cap = n + steps + 1
    shape = (batch, lm.heads, cap, lm.dh)
    kc = [torch.zeros(shape, device=dev, dtype=lm.dtype) for _ in range(lm.layers)]
    vc = [torch.zeros(shape, device=dev, dtype=lm.dtype) for _ in range(lm.layers)]
    ids = torch.randint(0, 256, (batch, n), device=dev)
    sync(dev)
    t0 = time.perf_counter()
    lm.prefill(ids, kc, vc).cpu()
    prefill_s = time.perf_counter() - t0
    tok = torch.randint(0, 256, (batch,), device=dev)
    pos = torch.tensor([n], device=dev)
    times = []
    if mode == "eager":
        for i in range(steps + 1):
            sync(dev)
            t0 = time.perf_counter()
            lm.step(tok, pos, kc, vc).cpu()
            if i > 0:
                times.append((time.perf_counter() - t0) * 1e3)
            pos += 1
    else:
        step = lm.compiled_step() if mode == "compile" else lm.step
        # Static shapes: an additive mask over the buffer, -inf past the current position.
        slots = torch.arange(cap, device=dev)
        mask = torch.zeros(1, 1, 1, cap, device=dev, dtype=lm.dtype)
        mask.copy_(torch.where(slots <= pos, 0.0, float("-inf"))[None, None, None])
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            step(tok, pos, kc, vc, mask)  # warm-up on a side stream before capture
        torch.cuda.current_stream().wait_stream(s)
        # The warm-up wrote position n; capture re-writes it, and the timed replays advance.
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = step(tok, pos, kc, vc, mask)
        for i in range(steps + 1):
            mask.copy_(torch.where(slots <= pos, 0.0, float("-inf"))[None, None, None])
            sync(dev)
            t0 = time.perf_counter()
            graph.replay()
            out.cpu()
            if i > 0:
                times.append((time.perf_counter() - t0) * 1e3)
            pos += 1
    return statistics.median(times), prefill_s


def self_check(lm, modes, dev):
    """Decoding must equal re-running the prompt: the step's logits after a 16-token prefill
    against the prefill of all 17 tokens, in every mode (a broken cache cannot look fast)."""
    ids = torch.randint(0, 256, (2, 17), device=dev)
    shape = (2, lm.heads, 20, lm.dh)
    z = lambda: [torch.zeros(shape, device=dev, dtype=lm.dtype) for _ in range(lm.layers)]
    want = lm.prefill(ids, z(), z())
    tol = 1e-4 if lm.dtype == torch.float32 else 3e-2
    for m in modes:
        kc, vc = z(), z()
        lm.prefill(ids[:, :16], kc, vc)
        pos = torch.tensor([16], device=dev)
        mask = None
        if m in ("graph", "compile"):
            mask = torch.where(torch.arange(20, device=dev) <= 16, 0.0, float("-inf"))[None, None, None].to(lm.dtype)
        step = lm.compiled_step() if m == "compile" else lm.step
        got = step(ids[:, 16], pos, kc, vc, mask)
        err = ((got - want).abs().max() / want.abs().max()).item()
        if err > tol:
            raise SystemExit(f"decode_torch: {m} decoding differs from the prefill by {err:.2e} (relative)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contexts", default="1024,2048,4096,8192")
    ap.add_argument("--batch", default="1", help="batch sizes, comma-separated")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ffn-hidden", type=int, default=256)
    ap.add_argument("--modes", default="eager,graph")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"],
                    help="bf16 lets SDPA pick its flash kernels (ours decodes in f32)")
    ap.add_argument("--json", help="also write the rows as JSON here")
    a = ap.parse_args()
    dev = torch.device(a.device)
    modes = [m for m in a.modes.split(",") if m and (m == "eager" or dev.type == "cuda")]
    torch.backends.cuda.matmul.allow_tf32 = False
    dtype = torch.float32 if a.dtype == "f32" else torch.bfloat16
    lm = DecodeLm(a.dim, a.layers, a.heads, a.ffn_hidden, dev, dtype)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"decode_torch: PyTorch {torch.__version__} on {name}; LM dim {a.dim} layers {a.layers} heads {a.heads} "
          f"ffn {a.ffn_hidden} {a.dtype}, batch {a.batch}, {a.steps} timed steps", flush=True)
    batches = [int(x) for x in a.batch.split(",")]
    with torch.no_grad():
        self_check(lm, modes, dev)
        rows = []
        print("| batch | context | " + " | ".join(f"{m} ms/token" for m in modes) + " | prefill s |")
        print("|---:|---:|" + "---:|" * (len(modes) + 1))
        for b in batches:
            for m in modes:
                measure(lm, 64, b, 2, m, dev)  # one-off costs (cuBLAS handles, kernel selection, compilation)
            for n in [int(x) for x in a.contexts.split(",")]:
                row = {"context": n, "batch": b}
                for m in modes:
                    row[f"{m}_ms"], row["prefill_s"] = measure(lm, n, b, a.steps, m, dev)
                rows.append(row)
                print(f"| {b} | {n} | " + " | ".join(f"{row[f'{m}_ms']:.3f}" for m in modes)
                      + f" | {row['prefill_s']:.3f} |", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "dtype": a.dtype, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
