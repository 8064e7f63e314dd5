//! conv2d (forward, input and weight gradients), pooling and upsampling.

use ela_core::{Conv2dParams, DType, Pool2dParams, Result};

use crate::{both, check_tol, gpu, Pair};

fn conv_cases() -> Vec<(Vec<usize>, Vec<usize>, Conv2dParams)> {
    let p = |s: (usize, usize), pd: (usize, usize), dl: (usize, usize), g: usize| Conv2dParams {
        stride: s,
        padding: pd,
        dilation: dl,
        groups: g,
    };
    vec![
        (vec![2, 3, 9, 8], vec![4, 3, 3, 3], p((1, 1), (1, 1), (1, 1), 1)),
        (vec![3, 4, 11, 7], vec![6, 2, 3, 2], p((2, 1), (1, 0), (1, 2), 2)),
        (vec![2, 6, 8, 8], vec![6, 1, 3, 3], p((1, 2), (1, 1), (2, 1), 6)), // depthwise
        (vec![2, 5, 6, 7], vec![3, 5, 1, 1], p((1, 1), (0, 0), (1, 1), 1)), // pointwise: no im2col
        (vec![1, 2, 5, 5], vec![2, 2, 5, 5], p((3, 3), (2, 2), (1, 1), 1)),
    ]
}

#[test]
fn conv2d_forward_and_both_gradients() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    for (k, &d) in [DType::F32, DType::F64, DType::F16, DType::BF16].iter().enumerate() {
        for (i, (xs, ws, p)) in conv_cases().into_iter().enumerate() {
            let seed = 100 + 10 * k as u64 + i as u64;
            // A strided input view exercises the copy in front of im2col.
            let x = Pair::randn_strided(&xs, d, seed, &dev);
            let w = Pair::randn(&ws, d, seed + 1, &dev);
            let (c, g) = both!(|x, w| x.conv2d(w, &p)?);
            let tag = format!("conv {xs:?} {ws:?} {p:?} {d:?}");
            // Sums of C*kh*kw products in different orders (cuBLAS vs the CPU GEMM).
            let (rt, at) = crate::tol(d);
            check_tol(&format!("{tag} forward"), &c, &g, rt * 10.0, at * 10.0);
            let dy = Pair::randn(c.dims(), d, seed + 2, &dev);
            let xshape = x.cpu.shape().clone();
            let wshape = w.cpu.shape().clone();
            let (c, g) = both!(|dy, w| dy.conv2d_backward_input(w, &xshape, &p)?);
            check_tol(&format!("{tag} dx"), &c, &g, rt * 10.0, at * 10.0);
            let (c, g) = both!(|dy, x| dy.conv2d_backward_weight(x, &wshape, &p)?);
            check_tol(&format!("{tag} dw"), &c, &g, rt * 10.0, at * 20.0);
        }
    }
    Ok(())
}

#[test]
fn pooling_and_upsampling_forward_backward() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let pools = [
        Pool2dParams { kernel: (2, 2), stride: (2, 2), padding: (0, 0), count_include_pad: false },
        Pool2dParams { kernel: (3, 3), stride: (1, 2), padding: (1, 1), count_include_pad: false },
        Pool2dParams { kernel: (3, 2), stride: (2, 1), padding: (1, 1), count_include_pad: true },
    ];
    for (k, &d) in [DType::F32, DType::F64, DType::F16, DType::BF16].iter().enumerate() {
        let x = Pair::randn_strided(&[2, 3, 9, 10], d, 120 + k as u64, &dev);
        let (rt, at) = crate::tol(d);
        for (i, p) in pools.iter().enumerate() {
            let tag = format!("pool {i} {d:?}");
            let ((cy, ca), (gy, ga)) = both!(|x| x.max_pool2d_fwd(p)?);
            check_tol(&format!("{tag} max"), &cy, &gy, 0.0, 0.0);
            check_tol(&format!("{tag} argmax"), &ca, &ga, 0.0, 0.0);
            let dy = Pair::randn(cy.dims(), d, 130 + i as u64, &dev);
            let xs = x.cpu.shape().clone();
            let (c, g) = (dy.cpu.max_pool2d_backward(&ca, &xs)?, dy.gpu.max_pool2d_backward(&ga, &xs)?);
            check_tol(&format!("{tag} max backward"), &c, &g, rt * 2.0, at * 2.0);
            let (c, g) = both!(|x| x.avg_pool2d(p)?);
            check_tol(&format!("{tag} avg"), &c, &g, rt * 2.0, at * 2.0);
            let (c, g) = both!(|dy| dy.avg_pool2d_backward(&xs, p)?);
            check_tol(&format!("{tag} avg backward"), &c, &g, rt * 2.0, at * 2.0);
        }
        for f in [(2, 2), (1, 3)] {
            let (c, g) = both!(|x| x.upsample_nearest2d(f)?);
            check_tol(&format!("upsample {f:?} {d:?}"), &c, &g, 0.0, 0.0);
            let dy = Pair::randn(c.dims(), d, 140, &dev);
            let (c, g) = both!(|dy| dy.upsample_nearest2d_backward(f)?);
            check_tol(&format!("upsample backward {f:?} {d:?}"), &c, &g, rt * 2.0, at * 2.0);
        }
    }
    Ok(())
}

/// Forward, dx and dW of one convolution on the GPU against the CPU backend, with a tolerance
/// factor on the dtype's default (sums of different lengths and orders).
fn check_conv(
    dev: &ela_cuda::Cuda,
    xs: &[usize],
    ws: &[usize],
    p: &Conv2dParams,
    d: DType,
    seed: u64,
    f: f64,
) -> Result<()> {
    let x = Pair::randn(xs, d, seed, dev);
    let w = Pair::randn(ws, d, seed + 1, dev);
    let (c, g) = both!(|x, w| x.conv2d(w, p)?);
    let tag = format!("conv {xs:?} {ws:?} {p:?} {d:?}");
    let (rt, at) = crate::tol(d);
    check_tol(&format!("{tag} forward"), &c, &g, rt * f, at * f);
    let dy = Pair::randn(c.dims(), d, seed + 2, dev);
    let (xshape, wshape) = (x.cpu.shape().clone(), w.cpu.shape().clone());
    let (c, g) = both!(|dy, w| dy.conv2d_backward_input(w, &xshape, p)?);
    check_tol(&format!("{tag} dx"), &c, &g, rt * f, at * f);
    let (c, g) = both!(|dy, x| dy.conv2d_backward_weight(x, &wshape, p)?);
    // A dW entry sums n*oh*ow*(C/groups) products: scale the absolute tolerance with the root of
    // that count (the size of the sum; cancellation leaves a small result with its rounding).
    let terms = dy.cpu.elem_count() / ws[0].max(1) * ws[1];
    check_tol(&format!("{tag} dw"), &c, &g, rt * f, at * f * (terms as f64).sqrt());
    Ok(())
}

#[test]
fn depthwise_direct_kernels_match_the_cpu() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let p = |k: (usize, usize), s: (usize, usize), pd: (usize, usize), dl: (usize, usize)| (k, s, pd, dl);
    // (input, kernel, stride, padding, dilation); groups = channels = outputs.
    let cases = [
        (vec![2, 16, 20, 18], p((3, 3), (2, 2), (1, 1), (1, 1))), // YOLO-LAT stage, stride 2
        (vec![1, 8, 9, 9], p((3, 3), (1, 1), (1, 1), (1, 1))),    // stride 1, same size
        (vec![3, 5, 7, 6], p((5, 5), (1, 1), (2, 2), (1, 1))),    // 5x5 (generic kernel)
        (vec![2, 4, 11, 8], p((3, 3), (2, 1), (1, 0), (2, 1))),   // mixed stride, dilation
        (vec![2, 3, 6, 9], p((1, 3), (1, 2), (0, 1), (1, 1))),    // 1x3
        (vec![2, 6, 5, 5], p((1, 1), (1, 1), (0, 0), (1, 1))),    // 1x1 depthwise
        (vec![4, 8, 64, 64], p((3, 3), (1, 1), (1, 1), (1, 1))),  // dW split over 8 blocks a tap
        (vec![1, 64, 10, 10], p((3, 3), (1, 1), (1, 1), (1, 1))), // dW one block a tap
        (vec![1, 3, 4, 4], p((3, 3), (3, 3), (2, 2), (1, 1))),    // stride > 1 with large padding
    ];
    for (k, &d) in [DType::F32, DType::F64, DType::F16, DType::BF16].iter().enumerate() {
        for (i, (xs, (kk, s, pd, dl))) in cases.iter().enumerate() {
            let c = xs[1];
            let params = Conv2dParams { stride: *s, padding: *pd, dilation: *dl, groups: c };
            check_conv(&dev, xs, &[c, 1, kk.0, kk.1], &params, d, 500 + 20 * k as u64 + i as u64, 4.0)?;
        }
    }
    // The direct kernels and the im2col + GEMM path agree (f64: to rounding).
    let x = Pair::randn(&[2, 16, 20, 18], DType::F64, 7, &dev);
    let w = Pair::randn(&[16, 1, 3, 3], DType::F64, 8, &dev);
    let params = Conv2dParams { stride: (2, 2), padding: (1, 1), dilation: (1, 1), groups: 16 };
    let direct = x.gpu.conv2d(&w.gpu, &params)?;
    dev.set_direct_conv(false);
    let gemm = x.gpu.conv2d(&w.gpu, &params);
    dev.set_direct_conv(true);
    check_tol("direct vs gemm", &gemm?.to_device(&ela_core::Cpu)?, &direct, 1e-12, 1e-13);
    Ok(())
}

#[test]
fn pointwise_convs_use_cublas_without_im2col_and_match_the_cpu() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let p1 = |g: usize| Conv2dParams { stride: (1, 1), padding: (0, 0), dilation: (1, 1), groups: g };
    // (input, weight, groups): dW batched over images (n > groups + 1), per image, and over
    // channel-major copies (n > 1, at least 4096 pixels).
    let cases = [
        (vec![4, 16, 10, 10], vec![32, 16, 1, 1], 1),
        (vec![6, 8, 4, 5], vec![6, 4, 1, 1], 2),
        (vec![3, 8, 5, 7], vec![8, 2, 1, 1], 4),
        (vec![1, 12, 6, 6], vec![5, 12, 1, 1], 1),
        (vec![32, 32, 3, 3], vec![16, 32, 1, 1], 1),
        (vec![3, 6, 64, 65], vec![4, 6, 1, 1], 1), // >= 4096 pixels: dW over channel-major copies
        (vec![2, 4, 64, 64], vec![6, 2, 1, 1], 2),
    ];
    for (k, &d) in [DType::F32, DType::F64, DType::F16, DType::BF16].iter().enumerate() {
        for (i, (xs, ws, g)) in cases.iter().enumerate() {
            check_conv(&dev, xs, ws, &p1(*g), d, 700 + 20 * k as u64 + i as u64, 10.0)?;
        }
    }
    Ok(())
}

#[test]
fn few_input_channel_direct_kernel_matches_the_cpu_and_im2col() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let p = |s: (usize, usize), pd: (usize, usize), dl: (usize, usize)| Conv2dParams {
        stride: s,
        padding: pd,
        dilation: dl,
        groups: 1,
    };
    // (input, weight, params), every one with C*kh*kw <= 27 and groups 1: the direct kernel.
    let cases = [
        (vec![2, 3, 20, 18], vec![16, 3, 3, 3], p((2, 2), (1, 1), (1, 1))), // the stem, stride 2
        (vec![2, 3, 64, 70], vec![16, 3, 3, 3], p((2, 2), (1, 1), (1, 1))), // several blocks a map
        (vec![1, 3, 17, 13], vec![20, 3, 3, 3], p((1, 1), (1, 1), (1, 1))), // 2 tiles, the last partial
        (vec![2, 2, 7, 8], vec![33, 2, 3, 2], p((1, 1), (0, 0), (1, 1))),   // 3 tiles, 3x2, no padding
        (vec![2, 1, 9, 9], vec![5, 1, 5, 5], p((2, 1), (2, 1), (1, 2))),    // 25 taps, dilation
        (vec![1, 3, 3, 3], vec![4, 3, 3, 3], p((3, 3), (2, 2), (1, 1))),    // mostly padding
        (vec![2, 27, 6, 6], vec![8, 27, 1, 1], p((2, 2), (0, 0), (1, 1))),  // 1x1 stride 2: 27 taps
        // Grids of at least 264 blocks: several pixels a thread (mostly past the map in the first).
        (vec![264, 3, 9, 7], vec![16, 3, 3, 3], p((1, 1), (1, 1), (1, 1))),
        (vec![9, 2, 160, 200], vec![5, 2, 3, 3], p((1, 1), (1, 1), (1, 1))),
    ];
    for (k, &d) in [DType::F32, DType::F64, DType::F16, DType::BF16].iter().enumerate() {
        for (i, (xs, ws, params)) in cases.iter().enumerate() {
            check_conv(&dev, xs, ws, params, d, 900 + 20 * k as u64 + i as u64, 4.0)?;
        }
        // A strided input view (copied to contiguous first).
        let x = Pair::randn_strided(&[2, 3, 11, 12], d, 990 + k as u64, &dev);
        let w = Pair::randn(&[16, 3, 3, 3], d, 995 + k as u64, &dev);
        let (c, g) = both!(|x, w| x.conv2d(w, &cases[0].2)?);
        let (rt, at) = crate::tol(d);
        check_tol(&format!("small conv strided input {d:?}"), &c, &g, rt * 4.0, at * 4.0);
    }
    // The direct kernel and im2col + GEMM agree (f64: to rounding).
    for (i, (xs, ws, params)) in cases.iter().enumerate() {
        let x = Pair::randn(xs, DType::F64, 30 + i as u64, &dev);
        let w = Pair::randn(ws, DType::F64, 40 + i as u64, &dev);
        let direct = x.gpu.conv2d(&w.gpu, params)?;
        dev.set_direct_small_conv(false);
        let gemm = x.gpu.conv2d(&w.gpu, params);
        dev.set_direct_small_conv(true);
        check_tol(
            &format!("small direct vs gemm {xs:?} {ws:?}"),
            &gemm?.to_device(&ela_core::Cpu)?,
            &direct,
            1e-12,
            1e-13,
        );
    }
    Ok(())
}
