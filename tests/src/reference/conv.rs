//! 2-D convolution (cross-correlation) and its two backward kernels, as direct 7-loop nests.

use super::RefTensor;

/// Geometry of a 2-D convolution (mirrors `ela_core::Conv2dParams`).
#[derive(Clone, Copy, Debug)]
pub struct ConvGeo {
    /// (vertical, horizontal) step.
    pub stride: (usize, usize),
    /// Zero padding on both sides.
    pub padding: (usize, usize),
    /// Tap spacing.
    pub dilation: (usize, usize),
    /// Channel groups.
    pub groups: usize,
}

/// Output extent along one spatial axis, `None` when the kernel does not fit.
pub fn conv_out_len(n: usize, k: usize, stride: usize, pad: usize, dil: usize) -> Option<usize> {
    let span = dil * (k - 1) + 1;
    if n + 2 * pad < span {
        None
    } else {
        Some((n + 2 * pad - span) / stride + 1)
    }
}

/// The input position read by output `o` at tap `t`, or `None` inside the padding.
fn conv_src(o: usize, t: usize, stride: usize, pad: usize, dil: usize, n: usize) -> Option<usize> {
    let i = (o * stride + t * dil) as isize - pad as isize;
    (i >= 0 && (i as usize) < n).then_some(i as usize)
}

/// Direct 7-loop convolution (cross-correlation): `x [n, c, h, w]`, `w [o, c/g, kh, kw]`.
pub fn conv2d(x: &RefTensor, w: &RefTensor, p: ConvGeo) -> RefTensor {
    let (nb, c, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (o, cg, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
    assert_eq!(cg * p.groups, c);
    let og = o / p.groups;
    let oh = conv_out_len(h, kh, p.stride.0, p.padding.0, p.dilation.0).unwrap();
    let ow = conv_out_len(wd, kw, p.stride.1, p.padding.1, p.dilation.1).unwrap();
    let mut y = RefTensor::zeros(&[nb, o, oh, ow]);
    for b in 0..nb {
        for oc in 0..o {
            let g = oc / og;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0.0;
                    for ci in 0..cg {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let (Some(iy), Some(ix)) = (
                                    conv_src(oy, ky, p.stride.0, p.padding.0, p.dilation.0, h),
                                    conv_src(ox, kx, p.stride.1, p.padding.1, p.dilation.1, wd),
                                ) else {
                                    continue;
                                };
                                acc += x.get(&[b, g * cg + ci, iy, ix]) * w.get(&[oc, ci, ky, kx]);
                            }
                        }
                    }
                    *y.at_mut(&[b, oc, oy, ox]) = acc;
                }
            }
        }
    }
    y
}

/// Gradient of [`conv2d`] w.r.t. `x`: the same 7 loops, scattering `dy * w` into `dx`.
pub fn conv2d_backward_input(dy: &RefTensor, w: &RefTensor, x_shape: &[usize], p: ConvGeo) -> RefTensor {
    let (nb, h, wd) = (x_shape[0], x_shape[2], x_shape[3]);
    let (o, cg, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
    let og = o / p.groups;
    let (oh, ow) = (dy.shape[2], dy.shape[3]);
    let mut dx = RefTensor::zeros(x_shape);
    for b in 0..nb {
        for oc in 0..o {
            let g = oc / og;
            for oy in 0..oh {
                for ox in 0..ow {
                    let gy = dy.get(&[b, oc, oy, ox]);
                    for ci in 0..cg {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let (Some(iy), Some(ix)) = (
                                    conv_src(oy, ky, p.stride.0, p.padding.0, p.dilation.0, h),
                                    conv_src(ox, kx, p.stride.1, p.padding.1, p.dilation.1, wd),
                                ) else {
                                    continue;
                                };
                                *dx.at_mut(&[b, g * cg + ci, iy, ix]) += gy * w.get(&[oc, ci, ky, kx]);
                            }
                        }
                    }
                }
            }
        }
    }
    dx
}

/// Gradient of [`conv2d`] w.r.t. `w`: the same 7 loops, accumulating `dy * x` into `dw`.
pub fn conv2d_backward_weight(dy: &RefTensor, x: &RefTensor, w_shape: &[usize], p: ConvGeo) -> RefTensor {
    let (nb, h, wd) = (x.shape[0], x.shape[2], x.shape[3]);
    let (o, cg, kh, kw) = (w_shape[0], w_shape[1], w_shape[2], w_shape[3]);
    let og = o / p.groups;
    let (oh, ow) = (dy.shape[2], dy.shape[3]);
    let mut dw = RefTensor::zeros(w_shape);
    for b in 0..nb {
        for oc in 0..o {
            let g = oc / og;
            for oy in 0..oh {
                for ox in 0..ow {
                    let gy = dy.get(&[b, oc, oy, ox]);
                    for ci in 0..cg {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let (Some(iy), Some(ix)) = (
                                    conv_src(oy, ky, p.stride.0, p.padding.0, p.dilation.0, h),
                                    conv_src(ox, kx, p.stride.1, p.padding.1, p.dilation.1, wd),
                                ) else {
                                    continue;
                                };
                                *dw.at_mut(&[oc, ci, ky, kx]) += gy * x.get(&[b, g * cg + ci, iy, ix]);
                            }
                        }
                    }
                }
            }
        }
    }
    dw
}
