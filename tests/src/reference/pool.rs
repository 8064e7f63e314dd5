//! 2-D max / average pooling, nearest upsampling, and their backward kernels.

use super::{indices, RefTensor};

/// Geometry of a pooling window (mirrors `ela_core::Pool2dParams`).
#[derive(Clone, Copy, Debug)]
pub struct PoolGeo {
    /// Window (height, width).
    pub kernel: (usize, usize),
    /// Step.
    pub stride: (usize, usize),
    /// Implicit padding on both sides.
    pub padding: (usize, usize),
    /// Average divides by the full window (true) or the valid cells (false).
    pub count_include_pad: bool,
}

/// Output extent of pooling along one axis, `None` when the window does not fit.
pub fn pool_out_len(n: usize, k: usize, stride: usize, pad: usize) -> Option<usize> {
    if n + 2 * pad < k {
        None
    } else {
        Some((n + 2 * pad - k) / stride + 1)
    }
}

/// The valid input cells `(iy, ix)` of window `(oy, ox)`, in row-major order.
fn pool_cells(p: PoolGeo, h: usize, w: usize, oy: usize, ox: usize) -> Vec<(usize, usize)> {
    let mut cells = vec![];
    for ky in 0..p.kernel.0 {
        for kx in 0..p.kernel.1 {
            let iy = (oy * p.stride.0 + ky) as isize - p.padding.0 as isize;
            let ix = (ox * p.stride.1 + kx) as isize - p.padding.1 as isize;
            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                cells.push((iy as usize, ix as usize));
            }
        }
    }
    cells
}

fn pool_out_shape(x_shape: &[usize], p: PoolGeo) -> [usize; 4] {
    let oh = pool_out_len(x_shape[2], p.kernel.0, p.stride.0, p.padding.0).unwrap();
    let ow = pool_out_len(x_shape[3], p.kernel.1, p.stride.1, p.padding.1).unwrap();
    [x_shape[0], x_shape[1], oh, ow]
}

/// Max pooling: `(y, argmax)`, argmax the flat `iy * w + ix` of the first maximum in row-major
/// window order (padding never wins).
pub fn max_pool2d(x: &RefTensor, p: PoolGeo) -> (RefTensor, RefTensor) {
    let (h, w) = (x.shape[2], x.shape[3]);
    let os = pool_out_shape(&x.shape, p);
    let mut y = RefTensor::zeros(&os);
    let mut am = RefTensor::zeros(&os);
    for idx in indices(&os) {
        let cells = pool_cells(p, h, w, idx[2], idx[3]);
        let mut best = cells[0];
        for &c in &cells[1..] {
            if x.get(&[idx[0], idx[1], c.0, c.1]) > x.get(&[idx[0], idx[1], best.0, best.1]) {
                best = c;
            }
        }
        *y.at_mut(&idx) = x.get(&[idx[0], idx[1], best.0, best.1]);
        *am.at_mut(&idx) = (best.0 * w + best.1) as f64;
    }
    (y, am)
}

/// Gradient of max pooling: each `dy` goes to its window's first maximum.
pub fn max_pool2d_backward(dy: &RefTensor, x: &RefTensor, p: PoolGeo) -> RefTensor {
    let (_, am) = max_pool2d(x, p);
    let w = x.shape[3];
    let mut dx = RefTensor::zeros(&x.shape);
    for idx in indices(&dy.shape) {
        let a = am.get(&idx) as usize;
        *dx.at_mut(&[idx[0], idx[1], a / w, a % w]) += dy.get(&idx);
    }
    dx
}

fn avg_divisor(p: PoolGeo, cells: usize) -> f64 {
    if p.count_include_pad {
        (p.kernel.0 * p.kernel.1) as f64
    } else {
        cells as f64
    }
}

/// Average pooling.
pub fn avg_pool2d(x: &RefTensor, p: PoolGeo) -> RefTensor {
    let (h, w) = (x.shape[2], x.shape[3]);
    let os = pool_out_shape(&x.shape, p);
    RefTensor::from_fn(&os, |idx| {
        let cells = pool_cells(p, h, w, idx[2], idx[3]);
        let s: f64 = cells.iter().map(|&(iy, ix)| x.get(&[idx[0], idx[1], iy, ix])).sum();
        s / avg_divisor(p, cells.len())
    })
}

/// Gradient of average pooling.
pub fn avg_pool2d_backward(dy: &RefTensor, x_shape: &[usize], p: PoolGeo) -> RefTensor {
    let (h, w) = (x_shape[2], x_shape[3]);
    let mut dx = RefTensor::zeros(x_shape);
    for idx in indices(&dy.shape) {
        let cells = pool_cells(p, h, w, idx[2], idx[3]);
        let g = dy.get(&idx) / avg_divisor(p, cells.len());
        for (iy, ix) in cells {
            *dx.at_mut(&[idx[0], idx[1], iy, ix]) += g;
        }
    }
    dx
}

/// Nearest upsampling by integer factors.
pub fn upsample_nearest2d(x: &RefTensor, f: (usize, usize)) -> RefTensor {
    let s = &x.shape;
    RefTensor::from_fn(&[s[0], s[1], s[2] * f.0, s[3] * f.1], |i| x.get(&[i[0], i[1], i[2] / f.0, i[3] / f.1]))
}

/// Gradient of nearest upsampling: each input cell sums its `fh x fw` block.
pub fn upsample_nearest2d_backward(dy: &RefTensor, f: (usize, usize)) -> RefTensor {
    let s = &dy.shape;
    let mut dx = RefTensor::zeros(&[s[0], s[1], s[2] / f.0, s[3] / f.1]);
    for i in indices(s) {
        *dx.at_mut(&[i[0], i[1], i[2] / f.0, i[3] / f.1]) += dy.get(&i);
    }
    dx
}
