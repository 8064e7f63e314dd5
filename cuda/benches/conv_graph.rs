//! Convolutions of the YOLO-LAT backbone and CUDA graph replay, f32 (TF32 off).
//!
//! 1. Depthwise 3x3 layers at the YOLO-LAT shapes (320x320 input), batch 1 and 32: the direct
//!    kernels against the old im2col + per-group GEMM path (`set_direct_conv(false)`), forward,
//!    and input + weight gradients.
//! 2. The pointwise (1x1) layers: forward and both gradients through cuBLAS without im2col.
//! 3. A 30-op chain (10 x depthwise conv, scale, SiLU) and the YOLO-LAT backbone (stem conv +
//!    4 depthwise-separable stages with BN as a per-channel affine and SiLU: 36 ops), eager
//!    against `Cuda::capture` + `replay()`; the replayed output is checked against eager.
//!
//! 4. Before / after: the backbone (eager and replayed) and its per-op table again with the
//!    elementwise fast paths and the few-input-channel conv kernel switched off
//!    (`set_fast_elementwise(false)`, `set_direct_small_conv(false)`: the kernels of `4a76fe3`).
//!
//! Times: device time between CUDA events around `iters` back-to-back runs (launch gaps
//! included: that is what eager inference pays), median of 7 repetitions after warm-up, divided
//! by `iters`. Run on the GPU machine: `conv_graph`. Peer: `conv_graph_torch.py`.

mod common;

use common::{device, rand_tensor, time_ms};
use ela_core::{Conv2dParams, DType, Result, Tensor};
use ela_cuda::{Cuda, GpuTimer};

fn p(s: usize, pd: usize, g: usize) -> Conv2dParams {
    Conv2dParams { stride: (s, s), padding: (pd, pd), dilation: (1, 1), groups: g }
}

/// Microseconds per call of `f`, timed over `iters` calls.
fn us(timer: &GpuTimer, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let ms = time_ms(timer, 2, 7, || {
        for _ in 0..iters {
            f()?;
        }
        Ok(())
    })?;
    Ok(ms * 1e3 / iters as f64)
}

/// The depthwise layers: (channels, input size, stride).
const DW: [(usize, usize, usize); 4] = [(16, 160, 2), (32, 80, 2), (64, 40, 2), (128, 20, 1)];
/// The pointwise layers: (in, out, size).
const PW: [(usize, usize, usize); 4] = [(16, 32, 80), (32, 64, 40), (64, 128, 20), (128, 128, 20)];

struct Affine {
    w: Tensor<Cuda>,
    scale: Tensor<Cuda>,
    shift: Tensor<Cuda>,
    p: Conv2dParams,
}

impl Affine {
    fn new(dev: &Cuda, shape: [usize; 4], p: Conv2dParams, seed: u64) -> Result<Affine> {
        let o = shape[0];
        let fan = (shape[1] * shape[2] * shape[3]) as f32;
        let b = 1.0 / fan.sqrt();
        Ok(Affine {
            w: rand_tensor(dev, &shape, -b, b, seed, DType::F32)?,
            scale: rand_tensor(dev, &[1, o, 1, 1], 0.5, 1.5, seed + 1, DType::F32)?,
            shift: rand_tensor(dev, &[1, o, 1, 1], -0.1, 0.1, seed + 2, DType::F32)?,
            p,
        })
    }
    /// conv, BN as an affine, SiLU: 4 ops.
    fn forward(&self, x: &Tensor<Cuda>) -> Result<Tensor<Cuda>> {
        x.conv2d(&self.w, &self.p)?.mul(&self.scale)?.add(&self.shift)?.silu()
    }
}

/// The YOLO-LAT backbone: stem 3x3 s2 3->16, then depthwise-separable stages.
fn backbone(dev: &Cuda) -> Result<Vec<Affine>> {
    let mut layers = vec![Affine::new(dev, [16, 3, 3, 3], p(2, 1, 1), 1)?];
    for (i, &(c, _, s)) in DW.iter().enumerate() {
        let o = PW[i].1;
        layers.push(Affine::new(dev, [c, 1, 3, 3], p(s, 1, c), 10 + 10 * i as u64)?);
        layers.push(Affine::new(dev, [o, c, 1, 1], p(1, 0, 1), 15 + 10 * i as u64)?);
    }
    Ok(layers)
}

fn run(layers: &[Affine], x: &Tensor<Cuda>) -> Result<Tensor<Cuda>> {
    let mut h = x.clone();
    for l in layers {
        h = l.forward(&h)?;
    }
    Ok(h)
}

fn max_rel(a: &Tensor<Cuda>, b: &Tensor<Cuda>) -> Result<f64> {
    let (a, b) = (a.to_vec_f64()?, b.to_vec_f64()?);
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
    Ok(a.iter().zip(&b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale)
}

fn main() -> Result<()> {
    let dev = device();
    let timer = GpuTimer::new(&dev)?;
    println!("device: {}", dev.name());

    // `conv_graph backbone`: only the graph and backbone sections (3 and 4).
    if !std::env::args().any(|a| a == "backbone") {
        layer_tables(&dev, &timer)?;
    }
    graphs_and_backbone(&dev, &timer)
}

fn layer_tables(dev: &Cuda, timer: &GpuTimer) -> Result<()> {
    println!("\n### Depthwise 3x3 (f32), us per call\n");
    println!("| batch | C | in | stride | fwd direct | fwd im2col+GEMM | dx+dW direct | dx+dW im2col+GEMM |");
    println!("|---|---|---|---|---|---|---|---|");
    for n in [1usize, 32] {
        for &(c, hw, s) in &DW {
            let x = rand_tensor(dev, &[n, c, hw, hw], -1.0, 1.0, 3, DType::F32)?;
            let w = rand_tensor(dev, &[c, 1, 3, 3], -0.3, 0.3, 4, DType::F32)?;
            let pp = p(s, 1, c);
            let y = x.conv2d(&w, &pp)?;
            let dy = rand_tensor(dev, y.dims(), -1.0, 1.0, 5, DType::F32)?;
            let mut row = Vec::new();
            for direct in [true, false] {
                dev.set_direct_conv(direct);
                let iters = if direct { 50 } else { 10 };
                row.push(us(timer, iters, || x.conv2d(&w, &pp).map(|_| ()))?);
            }
            for direct in [true, false] {
                dev.set_direct_conv(direct);
                let iters = if direct { 20 } else { 5 };
                row.push(us(timer, iters, || {
                    dy.conv2d_backward_input(&w, x.shape(), &pp)?;
                    dy.conv2d_backward_weight(&x, w.shape(), &pp).map(|_| ())
                })?);
            }
            dev.set_direct_conv(true);
            println!("| {n} | {c} | {hw} | {s} | {:.1} | {:.1} | {:.1} | {:.1} |", row[0], row[1], row[2], row[3]);
        }
    }

    println!("\n### Pointwise 1x1 (f32, cuBLAS, no im2col), us per call\n");
    println!("| batch | C -> O | size | fwd | dx | dW |");
    println!("|---|---|---|---|---|---|");
    for n in [1usize, 32] {
        for &(c, o, hw) in &PW {
            let x = rand_tensor(dev, &[n, c, hw, hw], -1.0, 1.0, 6, DType::F32)?;
            let w = rand_tensor(dev, &[o, c, 1, 1], -0.3, 0.3, 7, DType::F32)?;
            let pp = p(1, 0, 1);
            let dy = rand_tensor(dev, &[n, o, hw, hw], -1.0, 1.0, 8, DType::F32)?;
            let f = us(timer, 50, || x.conv2d(&w, &pp).map(|_| ()))?;
            let dx = us(timer, 50, || dy.conv2d_backward_input(&w, x.shape(), &pp).map(|_| ()))?;
            let dw = us(timer, 50, || dy.conv2d_backward_weight(&x, w.shape(), &pp).map(|_| ()))?;
            println!("| {n} | {c} -> {o} | {hw} | {f:.1} | {dx:.1} | {dw:.1} |");
        }
    }

    Ok(())
}

fn graphs_and_backbone(dev: &Cuda, timer: &GpuTimer) -> Result<()> {
    println!("\n### Eager vs CUDA graph replay (f32), us per run\n");
    println!("| workload | batch | ops | graph nodes | eager | replay | speed-up | replay vs eager (max rel) |");
    println!("|---|---|---|---|---|---|---|---|");
    // 30-op chain: 10 x (depthwise 3x3 conv, scale, SiLU) on a 64 x 40 x 40 map.
    {
        let x = rand_tensor(dev, &[1, 64, 40, 40], -1.0, 1.0, 9, DType::F32)?;
        let w = rand_tensor(dev, &[64, 1, 3, 3], -0.3, 0.3, 10, DType::F32)?;
        let sc = rand_tensor(dev, &[1, 64, 1, 1], 0.5, 1.5, 11, DType::F32)?;
        let chain = |x: &Tensor<Cuda>| -> Result<Tensor<Cuda>> {
            let mut h = x.clone();
            for _ in 0..10 {
                h = h.conv2d(&w, &p(1, 1, 64))?.mul(&sc)?.silu()?;
            }
            Ok(h)
        };
        let eager_out = chain(&x)?;
        let (g, out) = dev.capture(|| chain(&x))?;
        g.replay()?;
        let err = max_rel(&out, &eager_out)?;
        let e = us(timer, 50, || chain(&x).map(|_| ()))?;
        let r = us(timer, 50, || g.replay())?;
        println!("| 30-op chain | 1 | 30 | {} | {e:.1} | {r:.1} | {:.2}x | {err:.1e} |", g.num_nodes(), e / r);
    }
    let layers = backbone(dev)?;
    let mut before_rows = Vec::new();
    for n in [1usize, 32] {
        let x = rand_tensor(dev, &[n, 3, 320, 320], -1.0, 1.0, 12, DType::F32)?;
        let eager_out = run(&layers, &x)?;
        let (g, out) = dev.capture(|| run(&layers, &x))?;
        g.replay()?;
        let err = max_rel(&out, &eager_out)?;
        let iters = if n == 1 { 50 } else { 10 };
        let e = us(timer, iters, || run(&layers, &x).map(|_| ()))?;
        let r = us(timer, iters, || g.replay())?;
        dev.set_direct_conv(false);
        let old = us(timer, iters, || run(&layers, &x).map(|_| ()))?;
        dev.set_direct_conv(true);
        println!(
            "| YOLO-LAT backbone 320x320 | {n} | 36 | {} | {e:.1} (every conv im2col: {old:.1}) | {r:.1} | {:.2}x | {err:.1e} |",
            g.num_nodes(),
            e / r
        );
        // The kernels before the elementwise fast paths and the few-channel conv: general strided
        // elementwise kernels, the stem through im2col + GEMM (depthwise direct as before).
        set_before(dev, true);
        let before_out = run(&layers, &x)?;
        let (gb, _) = dev.capture(|| run(&layers, &x))?;
        let be = us(timer, iters, || run(&layers, &x).map(|_| ()))?;
        let br = us(timer, iters, || gb.replay())?;
        set_before(dev, false);
        let berr = max_rel(&before_out, &eager_out)?;
        before_rows.push(format!("| {n} | {be:.1} | {br:.1} | {e:.1} | {r:.1} | {:.2}x | {berr:.1e} |", be / e));
    }
    println!("\n### YOLO-LAT backbone before / after the elementwise fast paths and the stem kernel, us per run\n");
    println!("| batch | before eager | before replay | eager | replay | eager speed-up | before vs now (max rel) |");
    println!("|---|---|---|---|---|---|---|");
    for r in before_rows {
        println!("{r}");
    }
    // Where the eager backbone's time goes: each op alone (device time per call), with this
    // change's kernels and before them.
    for before in [false, true] {
        per_op(dev, timer, &layers, before)?;
    }
    let ms = dev.memory_stats();
    println!("\nallocator: {ms:?}");
    Ok(())
}

/// The kernels before the elementwise fast paths and the few-channel direct conv (`true`), or
/// back to the defaults.
fn set_before(dev: &Cuda, before: bool) {
    dev.set_fast_elementwise(!before);
    dev.set_direct_small_conv(!before);
}

fn per_op(dev: &Cuda, timer: &GpuTimer, layers: &[Affine], before: bool) -> Result<()> {
    let what = if before { "before: general elementwise kernels, stem on im2col" } else { "now" };
    println!("\n### YOLO-LAT backbone, eager, per op (f32, {what}), us per call\n");
    println!("| batch | layer | conv | x scale | + shift | SiLU |");
    println!("|---|---|---|---|---|---|");
    set_before(dev, before);
    for n in [1usize, 32] {
        let mut h = rand_tensor(dev, &[n, 3, 320, 320], -1.0, 1.0, 12, DType::F32)?;
        let (mut tot, iters) = ([0f64; 4], if n == 1 { 50 } else { 20 });
        for (i, l) in layers.iter().enumerate() {
            let c = h.conv2d(&l.w, &l.p)?;
            let m = c.mul(&l.scale)?;
            let a = m.add(&l.shift)?;
            let t = [
                us(timer, iters, || h.conv2d(&l.w, &l.p).map(|_| ()))?,
                us(timer, iters, || c.mul(&l.scale).map(|_| ()))?,
                us(timer, iters, || m.add(&l.shift).map(|_| ()))?,
                us(timer, iters, || a.silu().map(|_| ()))?,
            ];
            for k in 0..4 {
                tot[k] += t[k];
            }
            let what = format!("{} {:?} g{}", i, l.w.dims(), l.p.groups);
            println!("| {n} | {what} | {:.1} | {:.1} | {:.1} | {:.1} |", t[0], t[1], t[2], t[3]);
            h = a.silu()?;
        }
        println!("| {n} | sum | {:.1} | {:.1} | {:.1} | {:.1} |", tot[0], tot[1], tot[2], tot[3]);
    }
    set_before(dev, false);
    Ok(())
}
