"""PyTorch peer of conv_graph.rs: the same depthwise layers and YOLO-LAT backbone (stem conv +
4 depthwise-separable stages, BN as a per-channel affine, SiLU: 36 ops), f32 with TF32 off,
eager (cuDNN; default settings and with cudnn.benchmark) and replayed as a torch CUDA graph.
Same timing as conv_graph.rs: CUDA events around `iters` back-to-back runs, median of 7
repetitions after warm-up, per run.

Run on the GPU machine: python3 cuda/benches/conv_graph_torch.py; with `--compile`, only the
backbone through torch.compile (a separate run: compiling takes tens of seconds).
"""
import statistics

import torch
import torch.nn.functional as F

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
dev = "cuda"

DW = [(16, 160, 2), (32, 80, 2), (64, 40, 2), (128, 20, 1)]
PW = [(16, 32, 80), (32, 64, 40), (64, 128, 20), (128, 128, 20)]


def us(fn, iters):
    for _ in range(2):
        for _ in range(iters):
            fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(7):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(iters):
            fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) * 1e3 / iters)
    return statistics.median(ts)


def layer(shape, stride, pad, groups):
    o = shape[0]
    fan = shape[1] * shape[2] * shape[3]
    w = (torch.rand(shape, device=dev) * 2 - 1) / fan**0.5
    sc = torch.rand(1, o, 1, 1, device=dev) + 0.5
    sh = (torch.rand(1, o, 1, 1, device=dev) - 0.5) * 0.2
    return lambda x: F.silu(F.conv2d(x, w, stride=stride, padding=pad, groups=groups) * sc + sh)


def specs():
    out = [((16, 3, 3, 3), 2, 1, 1)]
    for i, (c, _, s) in enumerate(DW):
        out.append(((c, 1, 3, 3), s, 1, c))
        out.append(((PW[i][1], c, 1, 1), 1, 0, 1))
    return out


def backbone():
    layers = [layer(*sp) for sp in specs()]

    def run(x):
        for l in layers:
            x = l(x)
        return x

    return run


def main():
    print("device:", torch.cuda.get_device_name(), "torch", torch.__version__, "cudnn", torch.backends.cudnn.version())
    print("\n### torch: depthwise 3x3 forward (f32), us per call\n")
    print("| batch | C | in | stride | cuDNN fwd | cuDNN dx+dW |")
    print("|---|---|---|---|---|---|")
    for n in (1, 32):
        for c, hw, s in DW:
            x = torch.rand(n, c, hw, hw, device=dev) * 2 - 1
            w = (torch.rand(c, 1, 3, 3, device=dev) * 2 - 1) * 0.3
            y = F.conv2d(x, w, stride=s, padding=1, groups=c)
            dy = torch.rand_like(y)
            f = us(lambda: F.conv2d(x, w, stride=s, padding=1, groups=c), 50)

            def bwd():
                torch.ops.aten.convolution_backward(dy, x, w, None, [s, s], [1, 1], [1, 1], False, [0, 0], c,
                                                    [True, True, False])

            b = us(bwd, 20)
            print(f"| {n} | {c} | {hw} | {s} | {f:.1f} | {b:.1f} |")

    print("\n### torch: YOLO-LAT backbone 320x320 (f32), us per run\n")
    print("| batch | eager | eager + cudnn.benchmark | CUDA graph replay |")
    print("|---|---|---|---|")
    run = backbone()
    for n in (1, 32):
        iters = 50 if n == 1 else 10
        x = torch.rand(n, 3, 320, 320, device=dev) * 2 - 1
        with torch.no_grad():
            torch.backends.cudnn.benchmark = False
            e = us(lambda: run(x), iters)
            torch.backends.cudnn.benchmark = True
            eb = us(lambda: run(x), iters)
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    run(x)
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                out = run(x)
            r = us(g.replay, iters)
            torch.backends.cudnn.benchmark = False
        print(f"| {n} | {e:.1f} | {eb:.1f} | {r:.1f} |")

    print("\n### torch: YOLO-LAT backbone, eager, per op (f32), us per call\n")
    print("| batch | layer | conv | x scale | + shift | SiLU |")
    print("|---|---|---|---|---|---|")
    with torch.no_grad():
        for n in (1, 32):
            iters = 50 if n == 1 else 20
            h = torch.rand(n, 3, 320, 320, device=dev) * 2 - 1
            tot = [0.0] * 4
            for i, (shape, st, pd, gr) in enumerate(specs()):
                w = torch.rand(shape, device=dev) - 0.5
                sc = torch.rand(1, shape[0], 1, 1, device=dev)
                c = F.conv2d(h, w, stride=st, padding=pd, groups=gr)
                m = c * sc
                a = m + sc
                t = [us(lambda: F.conv2d(h, w, stride=st, padding=pd, groups=gr), iters), us(lambda: c * sc, iters),
                     us(lambda: m + sc, iters), us(lambda: F.silu(a), iters)]
                tot = [x + y for x, y in zip(tot, t)]
                print(f"| {n} | {i} {list(shape)} g{gr} | " + " | ".join(f"{v:.1f}" for v in t) + " |")
                h = F.silu(a)
            print(f"| {n} | sum | " + " | ".join(f"{v:.1f}" for v in tot) + " |")


def compiled():
    """The backbone through torch.compile (inductor, default mode: fuses the scale, shift and SiLU
    after each cuDNN conv into one Triton kernel), one compile per batch size."""
    import time

    print("\n### torch: YOLO-LAT backbone 320x320, torch.compile (f32), us per run\n")
    print("| batch | compile s | torch.compile | max rel vs eager |")
    print("|---|---|---|---|")
    run = backbone()
    for n in (1, 32):
        iters = 50 if n == 1 else 10
        x = torch.rand(n, 3, 320, 320, device=dev) * 2 - 1
        with torch.no_grad():
            f = torch.compile(run, dynamic=False)
            t0 = time.time()
            y = f(x)
            torch.cuda.synchronize()
            ct = time.time() - t0
            ref = run(x)
            err = ((y - ref).abs().max() / ref.abs().max()).item()
            c = us(lambda: f(x), iters)
        print(f"| {n} | {ct:.1f} | {c:.1f} | {err:.1e} |")


if __name__ == "__main__":
    import sys

    if "--compile" in sys.argv:
        compiled()
    else:
        main()
