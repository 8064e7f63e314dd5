//! Forward correctness of conv2d, pooling and nearest upsampling and of their backward kernels,
//! against the direct-loop references in `ela_tests::reference` plus adjoint identities, on every
//! backend (`NAME::cpu`, `NAME::cuda`). CUDA's conv2d is im2col + cuBLAS (TF32 off), another
//! summation order than the direct loops but over at most 18 (forward, input gradient) or 72
//! (weight gradient) products here, well inside the CPU's tolerances.

mod core_forward_common;

use core_forward_common::*;
use ela_core::{Backend, Conv2dParams, DType, Pool2dParams, Shape};
use ela_tests::device_proptest;
use ela_tests::reference::{self as r, ConvGeo, PoolGeo, RefTensor, TestRng};
use proptest::prelude::*;

// ====================================================================== conv2d

#[derive(Debug, Clone)]
struct ConvCase {
    n: usize,
    groups: usize,
    cg: usize,
    og: usize,
    hw: (usize, usize),
    k: (usize, usize),
    stride: (usize, usize),
    pad: (usize, usize),
    dil: (usize, usize),
}

fn conv_case() -> impl Strategy<Value = ConvCase> {
    (
        0usize..=2,
        1usize..=3,
        1usize..=2,
        1usize..=2,
        (1usize..=6, 1usize..=6),
        (1usize..=3, 1usize..=3),
        (1usize..=2, 1usize..=3),
        (0usize..=2, 0usize..=1),
        (1usize..=2, 1usize..=2),
    )
        .prop_map(|(n, groups, cg, og, hw, k, stride, pad, dil)| ConvCase {
            n,
            groups,
            cg,
            og,
            hw,
            k,
            stride,
            pad,
            dil,
        })
}

impl ConvCase {
    fn params(&self) -> Conv2dParams {
        Conv2dParams { stride: self.stride, padding: self.pad, dilation: self.dil, groups: self.groups }
    }
    fn geo(&self) -> ConvGeo {
        ConvGeo { stride: self.stride, padding: self.pad, dilation: self.dil, groups: self.groups }
    }
    fn x_shape(&self) -> Vec<usize> {
        vec![self.n, self.groups * self.cg, self.hw.0, self.hw.1]
    }
    fn w_shape(&self) -> Vec<usize> {
        vec![self.groups * self.og, self.cg, self.k.0, self.k.1]
    }
    fn out_hw(&self) -> Option<(usize, usize)> {
        Some((
            r::conv_out_len(self.hw.0, self.k.0, self.stride.0, self.pad.0, self.dil.0)?,
            r::conv_out_len(self.hw.1, self.k.1, self.stride.1, self.pad.1, self.dil.1)?,
        ))
    }
}

fn run_conv<B: Backend>(dev: &B, c: &ConvCase, seed: u64, lx: Lay, lw: Lay, dt: DType) -> TestResult {
    let mut rng = TestRng::new(seed);
    let (x, xt) = input(dev, &c.x_shape(), dt, lx, Vals::Uni, &mut rng);
    let (w, wt) = input(dev, &c.w_shape(), dt, lw, Vals::Uni, &mut rng);
    let p = c.params();
    let Some((oh, ow)) = c.out_hw() else {
        prop_assert!(xt.conv2d(&wt, &p).is_err(), "kernel does not fit: conv2d must be an error ({:?})", c);
        return Ok(());
    };
    let (rt, at) = if dt == DType::F64 { (1e-12, 1e-11) } else { (1e-5, 1e-4) };
    let what = format!("conv2d x {:?} {lx:?} w {:?} {lw:?} {dt:?} {c:?}", c.x_shape(), c.w_shape());
    let y = xt.conv2d(&wt, &p).ctx(&what)?;
    check(&y, &r::conv2d(&x, &w, c.geo()), rt, at, &what)?;
    // Backward passes against the reference adjoint loops...
    let dy_shape = [c.n, c.groups * c.og, oh, ow];
    let (dy, dyt) = input(dev, &dy_shape, dt, lx, Vals::Uni, &mut rng);
    let what = format!("conv2d_backward_input dy {dy_shape:?} {lx:?} w {:?} {lw:?} {dt:?} {c:?}", c.w_shape());
    let dx = dyt.conv2d_backward_input(&wt, &Shape::from(c.x_shape()), &p).ctx(&what)?;
    check(&dx, &r::conv2d_backward_input(&dy, &w, &c.x_shape(), c.geo()), rt, at, &what)?;
    let what = format!("conv2d_backward_weight dy {dy_shape:?} {lx:?} x {:?} {lx:?} {dt:?} {c:?}", c.x_shape());
    let dw = dyt.conv2d_backward_weight(&xt, &Shape::from(c.w_shape()), &p).ctx(&what)?;
    check(&dw, &r::conv2d_backward_weight(&dy, &x, &c.w_shape(), c.geo()), rt, at, &what)?;
    // ...and the adjoint identities <dy, conv(x, w)> == <dx, x> == <dw, w>.
    if dt == DType::F64 {
        let yv = r::conv2d(&x, &w, c.geo());
        let lhs = r::dot(&dy, &yv);
        let rx = r::dot(&RefTensor::new(c.x_shape(), dx.to_vec_f64()?), &x);
        let rw = r::dot(&RefTensor::new(c.w_shape(), dw.to_vec_f64()?), &w);
        prop_assert!((lhs - rx).abs() <= 1e-10 * (1.0 + lhs.abs()), "<dy, conv x> {} vs <dx, x> {}", lhs, rx);
        prop_assert!((lhs - rw).abs() <= 1e-10 * (1.0 + lhs.abs()), "<dy, conv x> {} vs <dw, w> {}", lhs, rw);
    }
    Ok(())
}

device_proptest! {
    #![proptest_config(cfg())]

    fn conv2d_f64<B: Backend>(dev: &B, c in conv_case(), seed in any::<u64>(), lx in lay(), lw in lay_nb()) {
        run_conv(dev, &c, seed, lx, lw, DType::F64)?;
    }

    fn conv2d_f32<B: Backend>(dev: &B, c in conv_case(), seed in any::<u64>(), lx in lay_nb(), lw in lay()) {
        run_conv(dev, &c, seed, lx, lw, DType::F32)?;
    }

    /// Depthwise (groups == in_channels) with channel multipliers 1..=5: the CPU's direct
    /// depthwise path up to its largest multiplier (4), im2col past it. Odd and even kernels,
    /// strides 1..=3, padding, dilation, odd sizes, batches, strided input views.
    fn conv2d_depthwise<B: Backend>(
        dev: &B,
        c in depthwise_case(),
        seed in any::<u64>(),
        lx in lay(),
        lw in lay_nb(),
        f32_ in any::<bool>(),
    ) {
        run_conv(dev, &c, seed, lx, lw, if f32_ { DType::F32 } else { DType::F64 })?;
    }

    /// 1x1 kernel, stride 1, no padding (the CPU's pointwise path; dilation is moot), with groups,
    /// empty and size-1 dimensions and strided views.
    fn conv2d_pointwise<B: Backend>(
        dev: &B,
        c in pointwise_case(),
        seed in any::<u64>(),
        lx in lay(),
        lw in lay_nb(),
        f32_ in any::<bool>(),
    ) {
        run_conv(dev, &c, seed, lx, lw, if f32_ { DType::F32 } else { DType::F64 })?;
    }
}

fn depthwise_case() -> impl Strategy<Value = ConvCase> {
    (
        0usize..=3,
        1usize..=5,
        prop_oneof![3 => Just(1usize), 2 => 2usize..=4, 1 => Just(5usize)],
        (1usize..=9, 1usize..=9),
        prop_oneof![3 => Just((3usize, 3usize)), 1 => (1usize..=4, 1usize..=4)],
        (1usize..=3, 1usize..=3),
        (0usize..=2, 0usize..=2),
        prop_oneof![3 => Just((1usize, 1usize)), 1 => (1usize..=2, 1usize..=3)],
    )
        .prop_map(|(n, ch, mult, hw, k, stride, pad, dil)| ConvCase {
            n,
            groups: ch,
            cg: 1,
            og: mult,
            hw,
            k,
            stride,
            pad,
            dil,
        })
}

fn pointwise_case() -> impl Strategy<Value = ConvCase> {
    (0usize..=3, 1usize..=3, 1usize..=5, 1usize..=5, (0usize..=7, 0usize..=7), (1usize..=2, 1usize..=2)).prop_map(
        |(n, groups, cg, og, hw, dil)| ConvCase { n, groups, cg, og, hw, k: (1, 1), stride: (1, 1), pad: (0, 0), dil },
    )
}

/// f16 and bf16 convolutions are the f32 kernels on the widened values, rounded once: exactly
/// the f32 result of the same values, converted (CPU; depthwise, pointwise and im2col shapes).
#[test]
fn conv2d_half_is_rounded_f32() {
    use ela_core::{Cpu, Tensor};
    let mut rng = TestRng::new(7);
    let dw = Conv2dParams { stride: (2, 2), padding: (1, 1), dilation: (1, 1), groups: 4 };
    let dense = Conv2dParams { stride: (2, 1), padding: (1, 0), dilation: (1, 1), groups: 1 };
    let cases = [
        ([2, 4, 7, 6], [4, 1, 3, 3], dw),
        ([2, 4, 5, 5], [6, 4, 1, 1], Conv2dParams::default()),
        ([1, 4, 6, 5], [3, 4, 3, 2], dense),
    ];
    for dt in [DType::F16, DType::BF16] {
        for (xs, ws, p) in &cases {
            let xr = rand_ref(xs, &mut rng, Vals::Uni);
            let wr = rand_ref(ws, &mut rng, Vals::Uni);
            let x = Tensor::from_vec(xr.data.clone(), xs.to_vec(), &Cpu).unwrap().to_dtype(dt).unwrap();
            let w = Tensor::from_vec(wr.data.clone(), ws.to_vec(), &Cpu).unwrap().to_dtype(dt).unwrap();
            let (x32, w32) = (x.to_dtype(DType::F32).unwrap(), w.to_dtype(DType::F32).unwrap());
            let y = x.conv2d(&w, p).unwrap();
            let want = x32.conv2d(&w32, p).unwrap().to_dtype(dt).unwrap();
            assert_eq!(y.to_vec_f64().unwrap(), want.to_vec_f64().unwrap(), "conv2d {dt:?} {xs:?} {ws:?} {p:?}");
            let dy = y.ones_like().unwrap();
            let dx = dy.conv2d_backward_input(&w, x.shape(), p).unwrap();
            let want = dy.to_dtype(DType::F32).unwrap().conv2d_backward_input(&w32, x.shape(), p).unwrap();
            assert_eq!(dx.to_vec_f64().unwrap(), want.to_dtype(dt).unwrap().to_vec_f64().unwrap(), "dx {dt:?} {p:?}");
            let dwt = dy.conv2d_backward_weight(&x, w.shape(), p).unwrap();
            let want = dy.to_dtype(DType::F32).unwrap().conv2d_backward_weight(&x32, w.shape(), p).unwrap();
            assert_eq!(dwt.to_vec_f64().unwrap(), want.to_dtype(dt).unwrap().to_vec_f64().unwrap(), "dW {dt:?} {p:?}");
        }
    }
}

// ====================================================================== pooling and upsampling

#[derive(Debug, Clone)]
struct PoolCase {
    shape: Vec<usize>,
    kernel: (usize, usize),
    stride: (usize, usize),
    pad: (usize, usize),
}

fn pool_case() -> impl Strategy<Value = PoolCase> {
    (
        0usize..=2,
        1usize..=3,
        1usize..=6,
        1usize..=6,
        (1usize..=3, 1usize..=3),
        (1usize..=3, 1usize..=3),
        (0usize..=1, 0usize..=1),
    )
        .prop_map(|(n, c, h, w, kernel, stride, pad)| PoolCase {
            shape: vec![n, c, h, w],
            kernel,
            stride,
            // padding at most half the kernel
            pad: (pad.0.min(kernel.0 / 2), pad.1.min(kernel.1 / 2)),
        })
}

impl PoolCase {
    fn params(&self, count_include_pad: bool) -> Pool2dParams {
        Pool2dParams { kernel: self.kernel, stride: self.stride, padding: self.pad, count_include_pad }
    }
    fn geo(&self, count_include_pad: bool) -> PoolGeo {
        PoolGeo { kernel: self.kernel, stride: self.stride, padding: self.pad, count_include_pad }
    }
    fn out_hw(&self) -> Option<(usize, usize)> {
        Some((
            r::pool_out_len(self.shape[2], self.kernel.0, self.stride.0, self.pad.0)?,
            r::pool_out_len(self.shape[3], self.kernel.1, self.stride.1, self.pad.1)?,
        ))
    }
}

device_proptest! {
    #![proptest_config(cfg())]

    fn pooling<B: Backend>(
        dev: &B,
        c in pool_case(),
        seed in any::<u64>(),
        l in lay(),
        ints in any::<bool>(),
        f32_ in any::<bool>(),
    ) {
        let mut rng = TestRng::new(seed);
        let dt = if f32_ { DType::F32 } else { DType::F64 };
        let (rt, at) = tol(dt);
        let (x, xt) = input(dev, &c.shape, dt, l, if ints { Vals::Ints } else { Vals::Uni }, &mut rng);
        let Some((oh, ow)) = c.out_hw() else {
            prop_assert!(xt.max_pool2d(&c.params(false)).is_err(), "window too big: max_pool2d must fail ({:?})", c);
            prop_assert!(xt.avg_pool2d(&c.params(true)).is_err(), "window too big: avg_pool2d must fail ({:?})", c);
            return Ok(());
        };
        let os = [c.shape[0], c.shape[1], oh, ow];
        let (dy, dyt) = input(dev, &os, dt, l, Vals::Uni, &mut rng);
        let case = format!("{dt:?} {l:?} {c:?}");
        // max pooling: values, winner indices (first maximum on ties), routed gradient
        let what = format!("max_pool2d {case}");
        let (y, am) = xt.max_pool2d_fwd(&c.params(false)).ctx(&what)?;
        let (ry, ram) = r::max_pool2d(&x, c.geo(false));
        check_exact(&y, &ry, &what)?;
        check_exact(&am, &ram, &format!("max_pool2d argmax {case}"))?;
        let what = format!("max_pool2d (count_include_pad, ignored) {case}");
        check_exact(&xt.max_pool2d(&c.params(true)).ctx(&what)?, &ry, &what)?;
        let what = format!("max_pool2d_backward {case}");
        let dx = dyt.max_pool2d_backward(&am, &Shape::from(c.shape.clone())).ctx(&what)?;
        check(&dx, &r::max_pool2d_backward(&dy, &x, c.geo(false)), rt, at, &what)?;
        // average pooling both ways, and its backward (the adjoint)
        for cip in [false, true] {
            let what = format!("avg_pool2d cip={cip} {case}");
            let y = xt.avg_pool2d(&c.params(cip)).ctx(&what)?;
            check(&y, &r::avg_pool2d(&x, c.geo(cip)), rt, at, &what)?;
            let what = format!("avg_pool2d_backward cip={cip} {case}");
            let dx = dyt.avg_pool2d_backward(&Shape::from(c.shape.clone()), &c.params(cip)).ctx(&what)?;
            let rdx = r::avg_pool2d_backward(&dy, &c.shape, c.geo(cip));
            check(&dx, &rdx, rt, at, &what)?;
            let lhs = r::dot(&dy, &r::avg_pool2d(&x, c.geo(cip)));
            let rhs = r::dot(&rdx, &x);
            prop_assert!((lhs - rhs).abs() <= 1e-9 * (1.0 + lhs.abs()), "reference adjoint {} vs {}", lhs, rhs);
        }
    }

    fn upsample_nearest<B: Backend>(
        dev: &B,
        s in (0usize..=2, 0usize..=3, 0usize..=4, 0usize..=4),
        f in (1usize..=3, 1usize..=3),
        seed in any::<u64>(),
        l in lay(),
        f32_ in any::<bool>(),
    ) {
        let mut rng = TestRng::new(seed);
        let dt = if f32_ { DType::F32 } else { DType::F64 };
        let (rt, at) = tol(dt);
        let shape = [s.0, s.1, s.2, s.3];
        let (x, xt) = input(dev, &shape, dt, l, Vals::Uni, &mut rng);
        let what = format!("upsample_nearest2d {f:?} of {shape:?} {dt:?} {l:?}");
        let y = xt.upsample_nearest2d(f).ctx(&what)?;
        check_exact(&y, &r::upsample_nearest2d(&x, f), &what)?;
        let (dy, dyt) = input(dev, y.dims(), dt, l, Vals::Uni, &mut rng);
        let what = format!("upsample_nearest2d_backward {f:?} of {:?} {dt:?} {l:?}", y.dims());
        let dx = dyt.upsample_nearest2d_backward(f).ctx(&what)?;
        let rdx = r::upsample_nearest2d_backward(&dy, f);
        check(&dx, &rdx, rt, at, &what)?;
        let lhs = r::dot(&dy, &r::upsample_nearest2d(&x, f));
        prop_assert!((lhs - r::dot(&rdx, &x)).abs() <= 1e-9 * (1.0 + lhs.abs()));
    }
}
