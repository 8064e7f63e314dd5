#!/usr/bin/env python3
"""PyTorch peer of the detector inference benchmark: YOLO-LAT (models/src/detect/model) and the
YOLOv8n architecture, written without ultralytics, timed on one CUDA device.

YOLO-LAT (models/src/detect/model/yolo_lat.rs), every Conv = conv (no bias) + BatchNorm2d
(eps 1e-3, momentum 0.03) + SiLU, "same" padding:
  backbone  Conv 3x3 s2 3->16; DSC s2 16->32, 32->64, 64->128; DSC s1 128->128   (DSC = depthwise
            3x3 Conv groups=c, then pointwise 1x1 Conv)                          -> f, stride 16
  neck      Conv 1x1 128->64; mixer; Conv 1x1 64->128; + f
            mixer ela/softmax: BN(x + proj(attn(q, k, v))), q/k/v from one 1x1 conv 64->192 with
            bias, 4 heads of 16 over all cells; ela: non-causal Hadamard-Exp ELA of q/4, k/4:
            y_i = sum_j <exp(q_i/4), exp(k_j/4)> v_j / sum_j <exp(q_i/4), exp(k_j/4)>, computed as
            phi(q) (psi(k)^T v) / phi(q).(sum_j psi(k_j)) in O(t d^2); softmax: SDPA (scale 1/4).
            conv: BN(x + DSC(DSC(DSC(x)))) with DSC 64->64; none: no mixer.
  head      Conv 3x3 128->128; conv 1x1 128->5+nc with bias           -> [n, 5+nc, H/16, W/16]
  212,966 parameters at nc=1 (the script checks its count against the Rust model's).

YOLOv8n (models/src/detect/model/yolov8.rs): ultralytics yolov8.yaml at depth 0.33 / width 0.25,
C2f, SPPF(k=5), PAN, decoupled heads at strides 8/16/32 whose box branch ends in 5 channels
(objectness + 4 box numbers, like YOLO-LAT); `yolov8n-dfl` is the ultralytics head instead (64
box channels + the 16-weight DFL conv; 3,157,200 parameters at nc=80), for the parameter
cross-check and its timing; neither includes box decoding or NMS.

Timing: inference (eval mode, BatchNorm folded into the convs unless --no-fuse), input uniform in
[0, 1), for every combination of --batches, --sizes, --dtypes (f32: TF32 off unless --tf32;
bf16: torch.autocast) and --modes (eager; compile-max-autotune = torch.compile
mode="max-autotune-no-cudagraphs"; compile-reduce-overhead = mode="reduce-overhead", which
replays CUDA graphs). Each call is timed alone by CUDA events recorded around it (the span
includes launch gaps: latency as a caller sees it on the device), after --warmup calls; the median
of --reps calls is reported. One JSON line per configuration on stdout.

Usage: python3 benches/peers/yolo_lat_torch.py [--model yolo-lat|yolov8n|yolov8n-dfl]
  [--neck ela|softmax|conv|none] [--nc 1] [--batches 1,32] [--sizes 320,640] [--dtypes f32,bf16]
  [--modes eager,compile-max-autotune,compile-reduce-overhead] [--reps 50] [--warmup 10]
  [--expect-params N] [--channels-last]
max-autotune compiles every shape separately (minutes each): narrow the grid to fit a time limit.
"""
import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

BN_EPS, BN_MOMENTUM = 1e-3, 0.03

# Parameter counts of the Rust models (component_report / ParamStore::num_params), by
# (model, neck, nc); checked whenever the configuration is listed.
EXPECTED = {
    ("yolo-lat", "ela", 1): 212_966,
    ("yolo-lat", "ela", 80): 223_157,
    ("yolo-lat", "softmax", 1): 212_966,
    ("yolo-lat", "softmax", 80): 223_157,
    ("yolo-lat", "conv", 1): 211_110,
    ("yolo-lat", "conv", 80): 221_301,
    ("yolo-lat", "none", 1): 196_198,
    ("yolo-lat", "none", 80): 206_389,
    ("yolov8n", None, 1): 2_999_522,
    ("yolov8n", None, 80): 3_145_679,
    ("yolov8n-dfl", None, 1): 3_011_043,
    ("yolov8n-dfl", None, 80): 3_157_200,  # ultralytics' own YOLOv8n summary
}


class Conv(nn.Module):
    """conv (no bias) + BN + SiLU; `fuse()` folds the BN into the conv (eval only)."""

    def __init__(self, cin, cout, k=1, s=1, g=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = act

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.silu(x) if self.act else x

    @torch.no_grad()
    def fuse(self):
        if self.bn is None:
            return
        bn = self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(self.conv.in_channels, self.conv.out_channels, self.conv.kernel_size,
                          self.conv.stride, self.conv.padding, groups=self.conv.groups, bias=True)
        fused = fused.to(self.conv.weight.device)
        fused.weight.copy_(self.conv.weight * scale[:, None, None, None])
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
        self.conv, self.bn = fused, None


class Dsc(nn.Module):
    def __init__(self, cin, cout, s=1):
        super().__init__()
        self.dw = Conv(cin, cin, 3, s, g=cin)
        self.pw = Conv(cin, cout, 1)

    def forward(self, x):
        return self.pw(self.dw(x))


def ela_noncausal_hadamard(q, k, v):
    """Non-causal Hadamard-Exp ELA over [b, h, t, d]: exact, in f32, with cancelling shifts
    (per query row for phi, one per (batch, head) for psi) so that nothing overflows."""
    dtype = v.dtype
    q, k, v = q.float(), k.float(), v.float()
    phi = torch.exp(q - q.amax(-1, keepdim=True))
    psi = torch.exp(k - k.amax((-2, -1), keepdim=True))
    s = psi.transpose(-2, -1) @ v  # [b, h, d, dv]
    z = psi.sum(-2)  # [b, h, d]
    num = phi @ s
    den = (phi * z[..., None, :]).sum(-1, keepdim=True)
    return (num / den).to(dtype)


class Attention2d(nn.Module):
    def __init__(self, c=64, heads=4, mixer="ela"):
        super().__init__()
        self.heads, self.mixer = heads, mixer
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)
        self.bn = nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, x):
        n, c, h, w = x.shape
        dh = c // self.heads
        qkv = self.qkv(x).view(n, 3, self.heads, dh, h * w).transpose(-2, -1)  # [n, 3, heads, t, dh]
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        if self.mixer == "ela":
            s = 1.0 / math.sqrt(dh)
            y = ela_noncausal_hadamard(q * s, k * s, v)
        else:
            y = F.scaled_dot_product_attention(q, k, v)
        y = y.transpose(-2, -1).reshape(n, c, h, w)
        return self.bn(x + self.proj(y))


class ConvMix(nn.Module):
    def __init__(self, c=64, blocks=3):
        super().__init__()
        self.m = nn.Sequential(*(Dsc(c, c) for _ in range(blocks)))
        self.bn = nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, x):
        return self.bn(x + self.m(x))


class YoloLat(nn.Module):
    def __init__(self, nc=1, neck="ela"):
        super().__init__()
        self.stem = Conv(3, 16, 3, 2)
        self.stages = nn.Sequential(Dsc(16, 32, 2), Dsc(32, 64, 2), Dsc(64, 128, 2), Dsc(128, 128, 1))
        self.reduce = Conv(128, 64, 1)
        if neck in ("ela", "softmax"):
            self.mix = Attention2d(64, 4, neck)
        elif neck == "conv":
            self.mix = ConvMix(64)
        else:
            self.mix = nn.Identity()
        self.expand = Conv(64, 128, 1)
        self.head = Conv(128, 128, 3)
        self.pred = nn.Conv2d(128, 5 + nc, 1)

    def forward(self, x):
        f = self.stages(self.stem(x))
        n = self.expand(self.mix(self.reduce(f))) + f
        return [self.pred(self.head(n))]


class C2f(nn.Module):
    def __init__(self, c1, c2, n=1, shortcut=False):
        super().__init__()
        self.c = c2 // 2
        self.cv1 = Conv(c1, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(nn.Sequential(Conv(self.c, self.c, 3), Conv(self.c, self.c, 3)) for _ in range(n))
        self.shortcut = shortcut

    def forward(self, x):
        ys = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            y = m(ys[-1])
            ys.append(ys[-1] + y if self.shortcut else y)
        return self.cv2(torch.cat(ys, 1))


class Sppf(nn.Module):
    def __init__(self, c1, c2, k=5):
        super().__init__()
        self.cv1 = Conv(c1, c1 // 2, 1)
        self.cv2 = Conv(c1 // 2 * 4, c2, 1)
        self.k = k

    def forward(self, x):
        ys = [self.cv1(x)]
        for _ in range(3):
            ys.append(F.max_pool2d(ys[-1], self.k, 1, self.k // 2))
        return self.cv2(torch.cat(ys, 1))


class YoloV8n(nn.Module):
    """YOLOv8n; `dfl=True` builds ultralytics' head (64 box channels + DFL conv), else ours."""

    def __init__(self, nc=1, dfl=False):
        super().__init__()
        w = [16, 32, 64, 128, 256]
        self.b0, self.b1, self.b2 = Conv(3, w[0], 3, 2), Conv(w[0], w[1], 3, 2), C2f(w[1], w[1], 1, True)
        self.b3, self.b4 = Conv(w[1], w[2], 3, 2), C2f(w[2], w[2], 2, True)
        self.b5, self.b6 = Conv(w[2], w[3], 3, 2), C2f(w[3], w[3], 2, True)
        self.b7, self.b8, self.b9 = Conv(w[3], w[4], 3, 2), C2f(w[4], w[4], 1, True), Sppf(w[4], w[4])
        self.n12, self.n15 = C2f(w[4] + w[3], w[3]), C2f(w[3] + w[2], w[2])
        self.n16, self.n18 = Conv(w[2], w[2], 3, 2), C2f(w[2] + w[3], w[3])
        self.n19, self.n21 = Conv(w[3], w[3], 3, 2), C2f(w[3] + w[4], w[4])
        c2, c3 = max(16, w[2] // 4, 64), max(w[2], min(nc, 100))
        box_out = 64 if dfl else 5
        self.cv2 = nn.ModuleList(nn.Sequential(Conv(ch, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, box_out, 1)) for ch in w[2:])
        self.cv3 = nn.ModuleList(nn.Sequential(Conv(ch, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for ch in w[2:])
        self.dfl = nn.Conv2d(16, 1, 1, bias=False).requires_grad_(False) if dfl else None

    def forward(self, x):
        p3 = self.b4(self.b3(self.b2(self.b1(self.b0(x)))))
        p4 = self.b6(self.b5(p3))
        p5 = self.b9(self.b8(self.b7(p4)))
        up = lambda t: F.interpolate(t, scale_factor=2.0, mode="nearest")  # noqa: E731
        h4 = self.n12(torch.cat([up(p5), p4], 1))
        n3 = self.n15(torch.cat([up(h4), p3], 1))
        n4 = self.n18(torch.cat([self.n16(n3), h4], 1))
        n5 = self.n21(torch.cat([self.n19(n4), p5], 1))
        return [torch.cat([bx(f), cl(f)], 1) for f, bx, cl in zip((n3, n4, n5), self.cv2, self.cv3)]


def build(args):
    if args.model == "yolo-lat":
        return YoloLat(args.nc, args.neck)
    return YoloV8n(args.nc, dfl=args.model == "yolov8n-dfl")


def check_params(model, args):
    n = sum(p.numel() for p in model.parameters())
    key = (args.model, args.neck if args.model == "yolo-lat" else None, args.nc)
    want = args.expect_params if args.expect_params is not None else EXPECTED.get(key)
    if want is None:
        print(f"note: no expected parameter count for {key}; pass --expect-params", file=sys.stderr)
    elif n != want:
        sys.exit(f"parameter count {n} != expected {want} for {key}: the architectures differ")
    return n


MODES = {"eager": None, "compile-max-autotune": "max-autotune-no-cudagraphs", "compile-reduce-overhead": "reduce-overhead"}


def time_config(model, args, batch, size, dtype, mode):
    dev = torch.device("cuda")
    x = torch.rand(batch, 3, size, size, device=dev)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    fn = model if MODES[mode] is None else torch.compile(model, mode=MODES[mode], dynamic=False)
    graphs = mode == "compile-reduce-overhead"

    def call():
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            return fn(x)

    t0 = time.perf_counter()
    call()  # compiles, for the compiled modes
    torch.cuda.synchronize()
    first_s = time.perf_counter() - t0
    for _ in range(args.warmup):
        call()
    torch.cuda.synchronize()
    times = []
    for _ in range(args.reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    med = statistics.median(times)
    return {
        "median_ms": round(med, 4),
        "p10_ms": round(times[len(times) // 10], 4),
        "p90_ms": round(times[(9 * len(times)) // 10], 4),
        "images_per_s": round(1e3 * batch / med, 1),
        "first_call_s": round(first_s, 2),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["yolo-lat", "yolov8n", "yolov8n-dfl"], default="yolo-lat")
    ap.add_argument("--neck", choices=["ela", "softmax", "conv", "none"], default="ela")
    ap.add_argument("--nc", type=int, default=1)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--sizes", default="320,640")
    ap.add_argument("--dtypes", default="f32,bf16")
    ap.add_argument("--modes", default="eager,compile-max-autotune,compile-reduce-overhead")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--expect-params", type=int, default=None)
    ap.add_argument("--no-fuse", action="store_true", help="keep BatchNorm separate from the convs")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 in f32 matmuls/convs")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--params-only", action="store_true", help="check the parameter count (CPU is enough) and exit")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = build(args)
    params = check_params(model, args)
    base = {"model": args.model, "neck": args.neck if args.model == "yolo-lat" else None, "nc": args.nc, "params": params}
    if args.params_only:
        print(json.dumps(base))
        return
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cudnn.benchmark = True
    model = model.cuda().eval()
    if not args.no_fuse:
        for m in model.modules():
            if isinstance(m, Conv):
                m.fuse()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    base.update(device=torch.cuda.get_device_name(), torch=torch.__version__, fused_bn=not args.no_fuse,
                tf32=args.tf32, channels_last=args.channels_last)
    split = lambda s: [v for v in s.split(",") if v]  # noqa: E731
    for mode in split(args.modes):
        if mode not in MODES:
            sys.exit(f"unknown mode {mode}; expected one of {', '.join(MODES)}")
        for dtype in split(args.dtypes):
            for size in map(int, split(args.sizes)):
                for batch in map(int, split(args.batches)):
                    row = dict(base, mode=mode, dtype=dtype, size=size, batch=batch)
                    try:
                        row.update(time_config(model, args, batch, size, dtype, mode))
                    except Exception as e:  # one failing configuration must not hide the others
                        row["error"] = f"{type(e).__name__}: {e}"[:500]
                    print(json.dumps(row), flush=True)
                    torch._dynamo.reset()


if __name__ == "__main__":
    main()
