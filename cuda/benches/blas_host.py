"""Host time per cuBLAS call for the LM training step's projection shapes, through the APIs a
Rust binding could use: cublasGemmStridedBatchedEx (what `Tensor::matmul` calls), cublasGemmEx,
cublasLtMatmul with the algorithms of one heuristic query (cached), and torch's `F.linear`.
A diagnostic for docs/benchmarks.md ("GPU GEMM"), not a peer of ours; it needs PyTorch only for
buffers and timing. `BLAS_SYS=1` loads /usr/local/cuda-13's libcublas instead of the venv's.

    python3 cuda/benches/blas_host.py
"""
import ctypes
import glob
import os
import site
import time

import torch

BF, F32, COMPUTE_32F = 14, 0, 68  # CUDA_R_16BF, CUDA_R_32F, CUBLAS_COMPUTE_32F
OP_N, OP_T, GEMM_DEFAULT = 0, 1, -1


def libraries():
    if os.environ.get("BLAS_SYS"):
        lt = ctypes.CDLL("/usr/local/cuda-13/lib64/libcublasLt.so.13", mode=ctypes.RTLD_GLOBAL)
        return ctypes.CDLL("/usr/local/cuda-13/lib64/libcublas.so.13"), lt
    found = []
    for p in site.getsitepackages():
        found += glob.glob(p + "/nvidia/cu*/lib/libcublas*.so*")
    lt = ctypes.CDLL(next(f for f in found if "Lt" in f), mode=ctypes.RTLD_GLOBAL)
    return ctypes.CDLL(next(f for f in found if "Lt" not in f)), lt


def lt_desc(lt, opa, opb):
    """A cublasLt matmul descriptor: f32 compute and scale, the two operands' transposes."""
    desc = ctypes.c_void_p()
    assert lt.cublasLtMatmulDescCreate(ctypes.byref(desc), COMPUTE_32F, F32) == 0
    for attr, op in [(3, opa), (4, opb)]:  # CUBLASLT_MATMUL_DESC_TRANSA / TRANSB
        v = ctypes.c_int(op)
        assert lt.cublasLtMatmulDescSetAttribute(desc, attr, ctypes.byref(v), 4) == 0
    return desc


def lt_layouts(lt, specs):
    """Column-major cublasLt layouts, one per (dtype, rows, cols), leading dimension = rows."""
    out = []
    for ty, r, c in specs:
        lay = ctypes.c_void_p()
        assert lt.cublasLtMatrixLayoutCreate(ctypes.byref(lay), ty, ctypes.c_uint64(r), ctypes.c_uint64(c),
                                             ctypes.c_int64(r)) == 0
        out.append(lay)
    return out


def host_us(fn, n=50):
    """Host time per call, 50 calls queued without waiting (after 5 warm-ups)."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    dt = (time.perf_counter() - t) / n * 1e6
    torch.cuda.synchronize()
    return dt


def main():
    cub, lt = libraries()
    print("cublasLt version", lt.cublasLtGetVersion())
    stream = torch.cuda.Stream()
    handle = ctypes.c_void_p()
    assert cub.cublasCreate_v2(ctypes.byref(handle)) == 0
    ws = torch.empty(32 << 20, dtype=torch.uint8, device="cuda")
    assert cub.cublasSetStream_v2(handle, ctypes.c_void_p(stream.cuda_stream)) == 0
    assert cub.cublasSetWorkspace_v2(handle, ctypes.c_void_p(ws.data_ptr()), ctypes.c_size_t(32 << 20)) == 0
    lt_handle = ctypes.c_void_p()
    assert lt.cublasLtCreate(ctypes.byref(lt_handle)) == 0
    one, zero = ctypes.c_float(1.0), ctypes.c_float(0.0)
    ptr = lambda t: ctypes.c_void_p(t.data_ptr())
    for m, n, k in [(16384, 512, 512), (16384, 2048, 512), (16384, 512, 2048), (2048, 512, 512), (4, 512, 512)]:
        # Y[m, n] = X[m, k] @ W[n, k]^T, row-major; column-major: Y^T = op_T(W) X^T.
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        y = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        strided = lambda: cub.cublasGemmStridedBatchedEx(
            handle, OP_T, OP_N, n, m, k, ctypes.byref(one), ptr(w), BF, k, ctypes.c_longlong(0), ptr(x), BF, k,
            ctypes.c_longlong(0), ctypes.byref(zero), ptr(y), BF, n, ctypes.c_longlong(m * n), 1, COMPUTE_32F, GEMM_DEFAULT)
        gemm_ex = lambda: cub.cublasGemmEx(
            handle, OP_T, OP_N, n, m, k, ctypes.byref(one), ptr(w), BF, k, ptr(x), BF, k, ctypes.byref(zero), ptr(y), BF,
            n, COMPUTE_32F, GEMM_DEFAULT)
        assert strided() == 0 and gemm_ex() == 0
        ref = x.float() @ w.float().T
        torch.cuda.synchronize()
        err = ((y.float() - ref).norm() / ref.norm()).item()
        with torch.cuda.stream(stream):
            linear = host_us(lambda: torch.nn.functional.linear(x, w))
        # cublasLt: one heuristic query, then its first algorithm on every call.
        desc = lt_desc(lt, OP_T, OP_N)
        la, lb, lc = lt_layouts(lt, [(BF, k, n), (BF, k, m), (BF, n, m)])
        pref = ctypes.c_void_p()
        assert lt.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)) == 0
        wsz = ctypes.c_uint64(32 << 20)
        assert lt.cublasLtMatmulPreferenceSetAttribute(pref, 1, ctypes.byref(wsz), 8) == 0
        res = (ctypes.c_byte * 96)()  # one cublasLtMatmulHeuristicResult_t
        count = ctypes.c_int()
        assert lt.cublasLtMatmulAlgoGetHeuristic(lt_handle, desc, la, lb, lc, lc, pref, 1, res, ctypes.byref(count)) == 0
        lt_call = lambda: lt.cublasLtMatmul(
            lt_handle, desc, ctypes.byref(one), ptr(w), la, ptr(x), lb, ctypes.byref(zero), ptr(y), lc, ptr(y), lc,
            ctypes.c_void_p(ctypes.addressof(res)), ptr(ws), ctypes.c_size_t(32 << 20), ctypes.c_void_p(stream.cuda_stream))
        assert lt_call() == 0
        print(f"m{m} n{n} k{k} bf16: host us per call: GemmStridedBatchedEx {host_us(strided):.1f}, "
              f"GemmEx {host_us(gemm_ex):.1f}, cublasLtMatmul {host_us(lt_call):.1f}, torch linear {linear:.1f} "
              f"(rel err {err:.1e})")


if __name__ == "__main__":
    main()
