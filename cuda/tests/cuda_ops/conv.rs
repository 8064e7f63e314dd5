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
