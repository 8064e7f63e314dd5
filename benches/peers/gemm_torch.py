#!/usr/bin/env python3
"""Peer of cuda/benches/gemm_gpu.rs: torch.matmul of square matrices in f32 with TF32 off and
on, and bf16, on the same card; TFLOP/s from the median CUDA-event time after warm-up (same
repetitions and input distribution: uniform in [-1, 1)).

Usage: python3 benches/peers/gemm_torch.py. Prints a markdown table.
"""
import torch


def time_ms(fn, warm, reps):
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


def main():
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| n | mode | ms | TFLOP/s |")
    print("|---|---|---|---|")
    for n in (1024, 2048, 4096, 8192):
        for mode, dtype, tf32 in (("f32", torch.float32, False), ("f32+tf32", torch.float32, True),
                                  ("bf16", torch.bfloat16, False)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a = (torch.rand(n, n, device="cuda") * 2 - 1).to(dtype)
            b = (torch.rand(n, n, device="cuda") * 2 - 1).to(dtype)
            ms = time_ms(lambda: a @ b, 3, 10 if n >= 8192 else 20)
            print(f"| {n} | {mode} | {ms:.3f} | {2 * n ** 3 / (ms * 1e-3) / 1e12:.1f} |", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = False


if __name__ == "__main__":
    main()
