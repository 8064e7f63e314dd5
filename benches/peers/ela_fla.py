#!/usr/bin/env python3
"""GPU peers of the ELA benchmarks (cuda/benches/ela_gpu.rs, ela_decode.rs), same card, same run.

1. fla-core 0.6 `chunk_linear_attn(exp(q), exp(k), v, scale=1, normalize=True)`: the same
   function as Hadamard-Exp ELA (phi = exp(q), psi = exp(k), y = phi^T S / phi . z), without any
   overflow protection (exp of the raw inputs). Layout [B, T, H, D] (fla's own). The timed region
   includes the two exp passes (they are part of computing ELA that way) and, for fwd+bwd, the
   backward through them.
2. PyTorch SDPA (FlashAttention backend, bf16, causal), layout [B, H, T, D].
3. Decoding: softmax attention of one query per head over a KV cache of L tokens (SDPA, bf16),
   B = 8, H = 16, D = 128, L = 1k..64k: device time per call and the cache's bytes.

Inputs match the Rust benchmark: uniform with variance 1 (q shifted by +0.5, k by -0.5), B = 8,
H = 16. Times are CUDA-event medians after warm-up. Accuracy of fla is reported once per dtype
and D: T = 1024, sequence 0, against a quadratic f64 reference.

fla's Triton kernels autotune on first use (tens of configurations per kernel, compiled one by
one); `--warm D DTYPE` runs only that warm-up for one (D, dtype) at T = 1024 (the autotune keys
do not include T) and writes a marker file, so several warm-ups can run in parallel processes
sharing Triton's on-disk cache (compiled kernels and autotune results) before the timed run,
which then measures only the combinations whose warm-up finished.

Usage (GPU machine, fla-core installed):
    python3 benches/peers/ela_fla.py --warm 64 bfloat16      # optional, in parallel, first
    python3 benches/peers/ela_fla.py [--section fla|sdpa|decode]... [--feature exp|elu|identity]
`--feature elu` times fla on elu(q) + 1, elu(k) + 1: the peer of the elu+1 kernel; `--feature
identity` on q, k themselves (fla's own normalised linear attention: the peer of the Identity
kernel), with q, k uniform in [0, 0.5) as ela_gpu draws them for the signed kernels (signed
inputs would make the denominators cancel and the error column meaningless).
Prints markdown tables.
"""
import argparse
import math
import os

import torch
import torch.nn.functional as F

B, H = 8, 16
TS = [1024, 2048, 4096, 8192, 16384, 32768]
S3 = math.sqrt(3.0)


def uniform(shape, shift, dtype, gen):
    return ((torch.rand(shape, generator=gen, device="cuda") * 2 - 1) * S3 + shift).to(dtype)


def qk_input(shape, shift, dtype, gen):
    """q (shift 0.5) or k (-0.5): `uniform`, or for the identity feature uniform in [0, 0.5)."""
    if FEATURE == "identity":
        return (torch.rand(shape, generator=gen, device="cuda") * 0.5).to(dtype)
    return uniform(shape, shift, dtype, gen)


def time_ms(fn, warm=2, reps=5):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


# The feature map applied to q and k before fla's kernel (`--feature`): exp gives Hadamard-Exp
# ELA, elu+1 the kernel of the same name (phi = psi = elu(x) + 1).
FEATURES = {"exp": torch.exp, "elu": lambda x: F.elu(x) + 1.0, "identity": lambda x: x}
FEATURE = "exp"
# What bench_fla sweeps (`--t`, `--d`, `--dtype` narrow it).
DS = (64, 128)
DTYPES = (torch.bfloat16, torch.float32)


def quadratic_f64(q, k, v):
    """Causal ELA of one sequence [T, D] in f64: a_ij = phi(q_i) . phi(k_j)."""
    q, k, v = q.double(), k.double(), v.double()
    phi = FEATURES[FEATURE]
    a = phi(q) @ phi(k).T
    a = torch.tril(a)
    return (a @ v) / a.sum(-1, keepdim=True)


def fla_ela(q, k, v):
    from fla.ops.linear_attn import chunk_linear_attn

    phi = FEATURES[FEATURE]
    return chunk_linear_attn(phi(q), phi(k), v, scale=1.0, normalize=True)[0]


def marker(d, dtype):
    return f"/tmp/fla_ready_{FEATURE}_{d}_{str(dtype).replace('torch.', '')}"


def warm(d, dtype):
    """Autotune fla's kernels for one (D, dtype): forward and backward at T = 1024."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k = (qk_input((B, 1024, H, d), s, dtype, gen).requires_grad_() for s in (0.5, -0.5))
    v = uniform((B, 1024, H, d), 0.0, dtype, gen).requires_grad_()
    fla_ela(q, k, v).backward(uniform((B, 1024, H, d), 0.0, dtype, gen))
    torch.cuda.synchronize()
    open(marker(d, dtype), "w").close()


def fla_error(ela, d, dtype, gen):
    """fla's relative error at T = 1024, sequence 0, head 0, against the quadratic f64 reference
    (the same for every T of the table: computed once per D and dtype, whichever T are timed)."""
    t = 1024
    with torch.no_grad():
        q = qk_input((B, t, H, d), 0.5, dtype, gen)
        k = qk_input((B, t, H, d), -0.5, dtype, gen)
        v = uniform((B, t, H, d), 0.0, dtype, gen)
        y = ela(q, k, v)[0, :, 0].double()
        ref = quadratic_f64(q[0, :, 0], k[0, :, 0], v[0, :, 0])
        err = ((y - ref).norm() / ref.norm()).item()
    del q, k, v
    return f"{err:.1e}"


def bench_fla():
    ela = fla_ela

    f = {"exp": "exp", "elu": "elu(.) + 1", "identity": "."}[FEATURE]
    print(f"\n### fla-core chunk_linear_attn({f.replace('.', 'q')}, {f.replace('.', 'k')}, v, scale=1, normalize=True)\n")
    print("| D | dtype | T | forward ms | fwd+bwd ms | y err (T=1024, seq 0, vs f64) |")
    print("|---|---|---|---|---|---|")
    gen = torch.Generator(device="cuda").manual_seed(0)
    for d in DS:
        for dtype in DTYPES:
            if os.environ.get("FLA_NEED_WARM") == "1" and not os.path.exists(marker(d, dtype)):
                print(f"| {d} | {dtype} | - | not measured: the autotune warm-up did not finish in time | | |")
                continue
            try:
                err = fla_error(ela, d, dtype, gen)
            except Exception as e:  # report it in the column and time anyway
                err = f"failed: {type(e).__name__}"
            for t in TS:
                try:
                    q = qk_input((B, t, H, d), 0.5, dtype, gen).requires_grad_()
                    k = qk_input((B, t, H, d), -0.5, dtype, gen).requires_grad_()
                    v = uniform((B, t, H, d), 0.0, dtype, gen).requires_grad_()
                    dy = uniform((B, t, H, d), 0.0, dtype, gen)
                    reps = 10 if t <= 4096 else 5
                    with torch.no_grad():
                        fwd = time_ms(lambda: ela(q, k, v), reps=reps)

                    def both():
                        q.grad = k.grad = v.grad = None
                        ela(q, k, v).backward(dy)

                    fb = time_ms(both, reps=reps)
                    name = str(dtype).replace("torch.", "")
                    print(f"| {d} | {name} | {t} | {fwd:.3f} | {fb:.3f} | {err} |", flush=True)
                    del q, k, v, dy
                except Exception as e:  # report and go on (e.g. out of memory)
                    print(f"| {d} | {dtype} | {t} | failed: {type(e).__name__}: {str(e)[:120]} | | |", flush=True)
                torch.cuda.empty_cache()


def bench_sdpa():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    print("\n### PyTorch SDPA (FlashAttention backend), causal, bf16\n")
    print("| D | T | forward ms | fwd+bwd ms |")
    print("|---|---|---|---|")
    gen = torch.Generator(device="cuda").manual_seed(1)
    for d in (64, 128):
        for t in TS:
            q, k, v = (uniform((B, H, t, d), s, torch.bfloat16, gen).requires_grad_() for s in (0.5, -0.5, 0.0))
            dy = uniform((B, H, t, d), 0.0, torch.bfloat16, gen)
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                reps = 10 if t <= 4096 else 3
                with torch.no_grad():
                    fwd = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), reps=reps)

                def both():
                    q.grad = k.grad = v.grad = None
                    F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(dy)

                fb = time_ms(both, warm=1, reps=reps)
            print(f"| {d} | {t} | {fwd:.3f} | {fb:.3f} |", flush=True)
            del q, k, v, dy
            torch.cuda.empty_cache()


def bench_decode():
    print("\n### Softmax attention decoding step over a KV cache (SDPA, bf16, B=8, H=16, D=128)\n")
    print("| context L | one step (us, device) | KV cache bytes |")
    print("|---|---|---|")
    gen = torch.Generator(device="cuda").manual_seed(2)
    d = 128
    for L in (1024, 4096, 16384, 65536):
        q = uniform((B, H, 1, d), 0.5, torch.bfloat16, gen)
        k = uniform((B, H, L, d), -0.5, torch.bfloat16, gen)
        v = uniform((B, H, L, d), 0.0, torch.bfloat16, gen)
        with torch.no_grad():
            ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v), warm=10, reps=200)
        kv = 2 * B * H * L * d * 2
        print(f"| {L} | {ms * 1e3:.1f} | {kv} |", flush=True)
        del k, v
        torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--section", action="append", choices=["fla", "sdpa", "decode"])
    ap.add_argument("--warm", nargs=2, metavar=("D", "DTYPE"))
    ap.add_argument("--feature", choices=sorted(FEATURES), default="exp")
    ap.add_argument("--t", type=int, action="append", help="sequence lengths (default 1k..32k)")
    ap.add_argument("--d", type=int, action="append", help="head sizes (default 64 and 128)")
    ap.add_argument("--dtype", action="append", choices=["bfloat16", "float32"])
    args = ap.parse_args()
    global FEATURE, TS, DS, DTYPES
    FEATURE = args.feature
    TS = args.t or TS
    DS = args.d or DS
    DTYPES = tuple(getattr(torch, x) for x in args.dtype) if args.dtype else DTYPES
    if args.warm:
        warm(int(args.warm[0]), getattr(torch, args.warm[1]))
        return
    sections = args.section or ["fla", "sdpa", "decode"]
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    if "fla" in sections:
        import fla

        print(f"fla-core {getattr(fla, '__version__', '?')}")
        bench_fla()
    if "sdpa" in sections:
        bench_sdpa()
    if "decode" in sections:
        bench_decode()


if __name__ == "__main__":
    main()
