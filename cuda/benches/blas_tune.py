"""Does timing cuBLAS's candidate algorithms beat its default pick on the LM step's GEMMs?

For every product of one layer of the d512 and d1024 LMs (tokens m = 16384: the forward
`Y = X W^T`, the input gradient `dX = dY W`, the weight gradient `dW = dY^T X` with an f32
output, as the CUDA backend issues them), device time by CUDA events of:
  - `cublasGemmEx` with `CUBLAS_GEMM_DEFAULT` (what `Tensor::matmul` gets: its strided-batched
    call with one batch entry dispatches the same kernels),
  - each of up to 16 `cublasLtMatmulAlgoGetHeuristic` candidates (32 MiB workspace), and the
    fastest of them,
  - `torch.matmul` on the same operands (bf16 output), for reference.
A diagnostic for docs/benchmarks.md ("GPU GEMM"), deciding whether an autotuner is worth
writing; it needs PyTorch only for buffers and timing.

    python3 cuda/benches/blas_tune.py [--reps 30]
"""
import argparse
import ctypes

import torch

from blas_host import BF, COMPUTE_32F, F32, GEMM_DEFAULT, OP_N, OP_T, libraries, lt_desc, lt_layouts

RESULT_BYTES = 96  # sizeof(cublasLtMatmulHeuristicResult_t)
WS = 32 << 20


def timed(fn, reps):
    """Mean device ms of one call over `reps` calls (after 3 warm-ups), by CUDA events."""
    for _ in range(3):
        fn()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / reps


def products(d, f):
    """(name, column-major opA, opB, M, N, K, output dtype) of one layer, m = 16384 tokens."""
    m = 16384
    out = []
    for tag, n, k in [("qkv", 3 * d, d), ("o", d, d), ("gate_up", 2 * f, d), ("down", d, f)]:
        # Y[m,n] = X[m,k] W[n,k]^T  ->  Y^T (n x m) = op_T(W as k x n) X^T (k x m)
        out.append((f"{tag} fwd", OP_T, OP_N, n, m, k, BF))
        # dX[m,k] = dY[m,n] W[n,k]  ->  dX^T (k x m) = W^T (k x n) dY^T (n x m)
        out.append((f"{tag} dX", OP_N, OP_N, k, m, n, BF))
        # dW[n,k] = dY^T X  ->  dW^T (k x n) = X^T (k x m) op_T(dY^T as n x m)
        out.append((f"{tag} dW f32", OP_N, OP_T, k, n, m, F32))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    cub, lt = libraries()
    print(torch.cuda.get_device_name(), "cublasLt", lt.cublasLtGetVersion())
    stream = torch.cuda.current_stream().cuda_stream
    handle, lt_handle = ctypes.c_void_p(), ctypes.c_void_p()
    assert cub.cublasCreate_v2(ctypes.byref(handle)) == 0 and lt.cublasLtCreate(ctypes.byref(lt_handle)) == 0
    ws = torch.empty(WS, dtype=torch.uint8, device="cuda")
    assert cub.cublasSetStream_v2(handle, ctypes.c_void_p(stream)) == 0
    assert cub.cublasSetWorkspace_v2(handle, ctypes.c_void_p(ws.data_ptr()), ctypes.c_size_t(WS)) == 0
    one, zero = ctypes.c_float(1.0), ctypes.c_float(0.0)
    ptr = lambda t: ctypes.c_void_p(t.data_ptr())
    print("| model | product | M x N x K (column-major) | GemmEx default ms | best Lt candidate ms | "
          "candidates | default / best | torch.matmul ms |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    total = {}
    for model, d, f in [("d512", 512, 2048), ("d1024", 1024, 4096)]:
        for name, opa, opb, M, N, K, cty in products(d, f):
            # A column-major r x c matrix is a row-major torch tensor [c, r] with ld = r.
            a_shape = (K, M) if opa == OP_N else (M, K)
            b_shape = (N, K) if opb == OP_N else (K, N)
            A = torch.randn(a_shape, device="cuda", dtype=torch.bfloat16)
            B = torch.randn(b_shape, device="cuda", dtype=torch.bfloat16)
            C = torch.empty((N, M), device="cuda", dtype=torch.float32 if cty == F32 else torch.bfloat16)
            lda, ldb = a_shape[1], b_shape[1]
            ex = lambda: cub.cublasGemmEx(handle, opa, opb, M, N, K, ctypes.byref(one), ptr(A), BF, lda, ptr(B), BF,
                                          ldb, ctypes.byref(zero), ptr(C), cty, M, COMPUTE_32F, GEMM_DEFAULT)
            assert ex() == 0
            t_ex = timed(ex, args.reps)
            desc = lt_desc(lt, opa, opb)
            la, lb, lc = lt_layouts(lt, [(BF, *a_shape[::-1]), (BF, *b_shape[::-1]), (cty, M, N)])
            pref = ctypes.c_void_p()
            assert lt.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)) == 0
            wsz = ctypes.c_uint64(WS)
            assert lt.cublasLtMatmulPreferenceSetAttribute(pref, 1, ctypes.byref(wsz), 8) == 0
            res = (ctypes.c_byte * (RESULT_BYTES * 16))()
            count = ctypes.c_int()
            assert lt.cublasLtMatmulAlgoGetHeuristic(lt_handle, desc, la, lb, lc, lc, pref, 16, res,
                                                     ctypes.byref(count)) == 0
            best = float("inf")
            for i in range(count.value):
                algo = ctypes.c_void_p(ctypes.addressof(res) + i * RESULT_BYTES)
                call = lambda: lt.cublasLtMatmul(lt_handle, desc, ctypes.byref(one), ptr(A), la, ptr(B), lb,
                                                 ctypes.byref(zero), ptr(C), lc, ptr(C), lc, algo, ptr(ws),
                                                 ctypes.c_size_t(WS), ctypes.c_void_p(stream))
                if call() == 0:
                    best = min(best, timed(call, args.reps))
            # The torch tensor of C is C^T = op(B)^T op(A)^T; the tensor of A is A^T.
            At = A if opa == OP_N else A.t()
            Bt = B if opb == OP_N else B.t()
            t_torch = timed(lambda: torch.matmul(Bt, At), args.reps)
            total.setdefault(model, [0.0, 0.0])
            total[model][0] += t_ex
            total[model][1] += best
            print(f"| {model} | {name} | {M} x {N} x {K} | {t_ex:.4f} | {best:.4f} | {count.value} | "
                  f"{t_ex / best:.3f} | {t_torch:.4f} |")
    for model, (a, b) in total.items():
        print(f"{model}: one layer's products {a:.3f} ms by default, {b:.3f} ms with the best candidate each "
              f"({a / b:.3f}x)")


if __name__ == "__main__":
    main()
