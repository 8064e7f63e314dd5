#!/usr/bin/env python3
"""Peer of core/benches/gemm.rs on the CPU: NumPy's matmul, which calls the BLAS NumPy was built
with (OpenBLAS in the stock wheels; the library and its kernel are printed). Same shapes, same
row-major f32/f64 operands with values in [-1, 1), same method: one warm-up call, then ROUNDS
rounds of at least BUDGET seconds each, best single call kept; GFLOP/s = 2mnk / best time.

Threads: set OPENBLAS_NUM_THREADS (benches/cpu_gemm.sh sets it to the core count, as many as
our rayon pool). Each product is checked against an f64 product of the same operands on a
sample of rows, so a misconfigured BLAS cannot look fast.

Usage: python3 benches/peers/gemm_numpy.py [--shapes MxKxN,...] [--quick]
Prints one `| label | GFLOP/s |` line per shape, labelled as the Rust bench labels its rows.
"""
import argparse
import ctypes
import os
import time

import numpy as np

DEFAULT_SHAPES = [
    (128, 128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (1024, 1024, 1024),
    (2048, 2048, 2048),
    (4096, 256, 1024),
    (4096, 1024, 256),
    (2048, 512, 2048),
]


def best_call(fn, budget):
    """Shortest single call within `budget` seconds of repeated calls."""
    best = float("inf")
    start = time.perf_counter()
    while True:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        if time.perf_counter() - start >= budget:
            return best


def bench(m, k, n, dtype, rounds, budget):
    rng = np.random.default_rng(m * 1_000_003 + k * 1009 + n)
    a = rng.uniform(-1, 1, (m, k)).astype(dtype)
    b = rng.uniform(-1, 1, (k, n)).astype(dtype)
    c = np.empty((m, n), dtype)
    np.matmul(a, b, out=c)  # warm-up: thread pool, pages of c
    best = min(best_call(lambda: np.matmul(a, b, out=c), budget) for _ in range(rounds))
    rows = rng.choice(m, size=min(m, 16), replace=False)
    ref = a[rows].astype(np.float64) @ b.astype(np.float64)
    err = np.abs(c[rows] - ref).max() / (np.abs(ref).max() + 1e-30)
    limit = 1e-4 if dtype == np.float32 else 1e-12
    assert err < limit, f"{m}x{k} @ {k}x{n} {dtype.__name__}: relative error {err:.2e}"
    return 2.0 * m * n * k / best / 1e9


def openblas_core():
    """The kernel family a DYNAMIC_ARCH OpenBLAS picked at run time (its build line names only the
    baseline), read from the library NumPy has loaded; None for other BLAS libraries."""
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "openblas" in line and line.rstrip().endswith(".so")}
    for path in paths:
        lib = ctypes.CDLL(path)
        for sym in ("openblas_get_corename", "scipy_openblas_get_corename64_", "scipy_openblas_get_corename"):
            fn = getattr(lib, sym, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                return fn().decode()
    return None


def blas_name():
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        name = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # older NumPy: no dict mode
        name = "unknown"
    core = openblas_core()
    return f"{name}, kernels for {core}" if core else name


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="", help="MxKxN,... (m x k @ k x n), replaces the defaults")
    ap.add_argument("--quick", action="store_true", help="1 round of 0.1 s instead of 5 of 0.3 s")
    args = ap.parse_args()
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",") if s.strip()]
    shapes = shapes or DEFAULT_SHAPES
    rounds, budget = (1, 0.1) if args.quick else (5, 0.3)
    print(f"numpy {np.__version__}, BLAS: {blas_name()}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    for m, k, n in shapes:
        print(f"| f32 {m}x{k} @ {k}x{n} | {bench(m, k, n, np.float32, rounds, budget):.1f} |", flush=True)
    # The Rust bench always adds this row (unless its arguments filter it out).
    print(f"| f64 1024x1024 @ 1024x1024 | {bench(1024, 1024, 1024, np.float64, rounds, budget):.1f} |")


if __name__ == "__main__":
    main()
