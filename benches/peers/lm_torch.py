#!/usr/bin/env python3
"""Peer of the LM training-step benchmark: the ELA LM of `ela train --link residual --lobe off
--experts 0` written in PyTorch, trained on the same card with the same settings, in three
variants: f32 eager (`ela train`'s default precision), bf16 autocast eager, and bf16 autocast
under torch.compile (the peers of `ela train --precision bf16`: f32 master weights and optimizer,
bf16 products; autocast keeps softmax-like ops, reductions and the loss in f32), the last also
with AdamW's fused kernel (bf16-compile-fused) and with Inductor's CUDA graphs on top
(bf16-compile-graphs, mode="reduce-overhead").

Architecture (models/src/lm, nn/src): byte embedding (vocab 256, tied output head), `layers`
pre-norm blocks h = x + Attn(RMSNorm(x)), x' = h + SwiGLU(RMSNorm(h)); attention: q, k, v, o
linear maps d -> d without bias, `heads` heads, causal Hadamard-Exp ELA; SwiGLU:
w_down(silu(w_gate x) * w_up x); final RMSNorm (eps 1e-6), logits = h E^T, mean cross-entropy;
AdamW (beta 0.9/0.95, eps 1e-8, weight decay 0.1), gradient clipping at 1.0.

ELA in eager PyTorch, chunked (C = 64) as in docs/ela.md ("Chunked form"), with the overflow protection
of docs/ela.md reduced to what eager tensors allow cheaply: phi = exp(q - max_d q) (per-row shift,
cancels), psi = exp(k - max k) with one max per (batch, head) (cancels). Memory O(T C + T/C D^2).

Usage: python3 benches/peers/lm_torch.py [--dim 512 --layers 8 --heads 8 --ffn 2048 --seq 2048
--batch 8 --steps 12] [--variants f32,bf16,bf16-compile,bf16-compile-fused,bf16-compile-graphs] (TF32 off, as our stack's default).
Prints, per variant, tokens/s over the steps after the warm-up steps (device-synchronized wall
time; torch.compile compiles during the warm-up), the median and range of the per-step times
(CUDA events at the step boundaries), the last loss and the peak memory. Every variant
starts from the same initialisation, and step i of every variant trains on the same batch (the
compiled variants warm up three or four steps longer, so their timed steps start that many
batches later).
"""
import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def ela_chunked(q, k, v, chunk=64):
    b, h, t, d = q.shape
    dv = v.shape[-1]
    pad = (-t) % chunk
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    n = (t + pad) // chunk
    phi = torch.exp(q - q.amax(-1, keepdim=True))
    psi = torch.exp(k - k.amax((-2, -1), keepdim=True).detach())
    if pad:
        psi = psi * (torch.arange(t + pad, device=q.device) < t).to(psi.dtype)[:, None]
    phi = phi.view(b, h, n, chunk, d)
    psi = psi.view(b, h, n, chunk, d)
    vc = v.view(b, h, n, chunk, dv)
    mask = torch.tril(torch.ones(chunk, chunk, device=q.device, dtype=q.dtype))
    a = torch.einsum("bhncd,bhnsd->bhncs", phi, psi) * mask
    num = torch.einsum("bhncs,bhnsv->bhncv", a, vc)
    den = a.sum(-1)
    kv = torch.einsum("bhncd,bhncv->bhndv", psi, vc)
    ks = psi.sum(3)
    s = torch.cumsum(kv, 2) - kv
    z = torch.cumsum(ks, 2) - ks
    num = num + torch.einsum("bhncd,bhndv->bhncv", phi, s)
    den = den + torch.einsum("bhncd,bhnd->bhnc", phi, z)
    return (num / den[..., None]).reshape(b, h, t + pad, dv)[:, :, :t]


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.w = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.w


class Block(nn.Module):
    def __init__(self, d, heads, ffn):
        super().__init__()
        self.heads = heads
        self.n1, self.n2 = RMSNorm(d), RMSNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.gate, self.up = nn.Linear(d, ffn, bias=False), nn.Linear(d, ffn, bias=False)
        self.down = nn.Linear(ffn, d, bias=False)

    def attn(self, x):
        b, t, d = x.shape
        sp = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        y = ela_chunked(sp(self.q(x)), sp(self.k(x)), sp(self.v(x)))
        return self.o(y.transpose(1, 2).reshape(b, t, d))

    def forward(self, x):
        h = x + self.attn(self.n1(x))
        g = self.n2(h)
        return h + self.down(F.silu(self.gate(g)) * self.up(g))


class Lm(nn.Module):
    def __init__(self, d, layers, heads, ffn):
        super().__init__()
        self.emb = nn.Embedding(256, d)
        nn.init.normal_(self.emb.weight, std=0.02)
        self.blocks = nn.ModuleList(Block(d, heads, ffn) for _ in range(layers))
        self.norm = RMSNorm(d)

    def forward(self, ids):
        h = self.emb(ids)
        for blk in self.blocks:
            h = blk(h)
        return self.norm(h) @ self.emb.weight.T


VARIANTS = {
    # name: (autocast to bf16, torch.compile mode or None, fused AdamW, warm-up steps)
    "f32": (False, None, False, 2),
    "bf16": (True, None, False, 2),
    # The first call compiles (tens of seconds) and a second shape-stable call may recompile;
    # a few more steps let the allocator and the compiled graphs settle before the timing.
    "bf16-compile": (True, "default", False, 5),
    # What a practitioner tuning for speed adds: AdamW's single fused CUDA kernel for every
    # parameter (instead of the multi-tensor "foreach" launches), ...
    "bf16-compile-fused": (True, "default", True, 5),
    # ... and Inductor's CUDA graphs for the forward and the backward ("reduce-overhead"), which
    # remove the host's launch cost; a new step is marked before each forward.
    "bf16-compile-graphs": (True, "reduce-overhead", True, 6),
}
LABELS = {
    "f32": "eager f32",
    "bf16": "eager bf16 autocast",
    "bf16-compile": "torch.compile bf16 autocast",
    "bf16-compile-fused": "torch.compile bf16 autocast, fused AdamW",
    "bf16-compile-graphs": "torch.compile(mode=reduce-overhead) bf16 autocast, fused AdamW",
}


def run_variant(name, args, data):
    autocast, mode, fused, warmup = VARIANTS[name]
    torch.manual_seed(0)
    model = Lm(args.dim, args.layers, args.heads, args.ffn).cuda()
    forward = torch.compile(model, mode=mode) if mode else model
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1,
                            fused=fused)
    params = sum(p.numel() for p in model.parameters())

    def step(i):
        ids, tgt = data[i, :, :-1], data[i, :, 1:]
        if mode == "reduce-overhead":
            # The graphs' outputs of the previous step may be overwritten from here on.
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            logits = forward(ids)
        # The loss in f32 (autocast would run cross_entropy in f32 anyway).
        loss = F.cross_entropy(logits.float().reshape(-1, 256), tgt.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    torch.cuda.reset_peak_memory_stats()
    for i in range(warmup):
        step(i)
    torch.cuda.synchronize()
    # An event at every step boundary (queued, no synchronization) gives per-step times on the
    # device's clock: their median is robust to a slow step (a late recompilation, a hiccup of
    # the host) that the mean over the run includes.
    marks = [torch.cuda.Event(enable_timing=True) for _ in range(args.steps + 1)]
    t0 = time.perf_counter()
    marks[0].record()
    for i in range(args.steps):
        loss = step(warmup + i)
        marks[i + 1].record()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    per_step = sorted(a.elapsed_time(b) for a, b in zip(marks, marks[1:]))
    mid = len(per_step) // 2
    median_ms = per_step[mid] if len(per_step) % 2 else (per_step[mid - 1] + per_step[mid]) / 2
    tok = args.steps * args.batch * args.seq
    label = LABELS[name]
    print(f"pytorch {label}: {args.steps} steps of {args.batch}x{args.seq} tokens in {dt:.2f} s: "
          f"{tok / dt:.0f} tokens/s ({1e3 * dt / args.steps:.0f} ms/step; per-step median {median_ms:.1f} ms, "
          f"range {per_step[0]:.1f}-{per_step[-1]:.1f}), last loss {loss.item():.3f}, "
          f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB; {params} parameters", flush=True)
    if args.profile:
        profile_steps(step, warmup)
    del model, forward, opt
    torch.cuda.empty_cache()


def profile_steps(step, first):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        for i in range(2):
            step(first + i)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70))
    # Matrix products by operand shapes (to compare with ELA_CUDA_KERNEL_STATS=1 of `ela train`).
    mm = [e for e in prof.key_averages(group_by_input_shape=True) if e.key in ("aten::mm", "aten::bmm", "aten::addmm", "aten::matmul")]
    mm.sort(key=lambda e: -e.device_time_total)
    for e in mm[:25]:
        print(f"{e.key} {e.input_shapes} calls {e.count} total {e.device_time_total / 1e3:.2f} ms")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=2048)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--variants", default="f32,bf16,bf16-compile",
                    help="comma-separated, from: " + ", ".join(VARIANTS))
    ap.add_argument("--profile", action="store_true", help="also print the top CUDA kernels of 2 steps per variant")
    args = ap.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        ap.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    warmup = max(VARIANTS[v][3] for v in variants)
    torch.manual_seed(0)
    data = torch.randint(0, 256, (args.steps + warmup + 2, args.batch, args.seq + 1), device="cuda")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    for v in variants:
        run_variant(v, args, data)


if __name__ == "__main__":
    main()
