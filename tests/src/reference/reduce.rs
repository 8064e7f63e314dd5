//! Reductions along one axis (lanes), their per-lane kernels, cumulative sums and `sum_to`.

use super::{indices, maximum, minimum, RefTensor};

/// The lanes of `x` along `axis`: for every index of the other axes (row-major), the values along
/// `axis`. Returns (output shape with the axis removed, lanes).
pub fn lanes(x: &RefTensor, axis: usize) -> (Vec<usize>, Vec<Vec<f64>>) {
    let mut out_shape = x.shape.clone();
    let len = out_shape.remove(axis);
    let lanes = indices(&out_shape)
        .into_iter()
        .map(|o| {
            (0..len)
                .map(|i| {
                    let mut idx = o.clone();
                    idx.insert(axis, i);
                    x.get(&idx)
                })
                .collect()
        })
        .collect();
    (out_shape, lanes)
}

/// Reduce every lane along `axis` with `f`; `keepdim` keeps the axis with size 1.
pub fn reduce(x: &RefTensor, axis: usize, keepdim: bool, f: impl Fn(&[f64]) -> f64) -> RefTensor {
    let (mut shape, lanes) = lanes(x, axis);
    if keepdim {
        shape.insert(axis, 1);
    }
    RefTensor::new(shape, lanes.iter().map(|l| f(l)).collect())
}

/// Sum of a lane.
pub fn lane_sum(l: &[f64]) -> f64 {
    l.iter().sum()
}

/// Mean of a lane (NaN when empty, as in numpy).
pub fn lane_mean(l: &[f64]) -> f64 {
    l.iter().sum::<f64>() / l.len() as f64
}

/// Largest element (NaN propagates).
pub fn lane_max(l: &[f64]) -> f64 {
    l.iter().copied().fold(f64::NEG_INFINITY, maximum)
}

/// Smallest element (NaN propagates).
pub fn lane_min(l: &[f64]) -> f64 {
    l.iter().copied().fold(f64::INFINITY, minimum)
}

/// Index of the first maximum.
pub fn lane_argmax(l: &[f64]) -> f64 {
    let mut best = 0;
    for i in 1..l.len() {
        if l[i] > l[best] {
            best = i;
        }
    }
    best as f64
}

/// Index of the first minimum.
pub fn lane_argmin(l: &[f64]) -> f64 {
    let mut best = 0;
    for i in 1..l.len() {
        if l[i] < l[best] {
            best = i;
        }
    }
    best as f64
}

/// log(sum(exp(l))), shifted by the maximum (the textbook stable form); -inf when empty.
pub fn lane_logsumexp(l: &[f64]) -> f64 {
    let m = lane_max(l);
    if !m.is_finite() {
        return m;
    }
    m + l.iter().map(|&v| (v - m).exp()).sum::<f64>().ln()
}

/// Cumulative sum along `axis`.
pub fn cumsum(x: &RefTensor, axis: usize, exclusive: bool, reverse: bool) -> RefTensor {
    let len = x.shape[axis];
    RefTensor::from_fn(&x.shape, |idx| {
        let i = idx[axis];
        let mut acc = 0.0;
        for j in 0..len {
            let included = match (exclusive, reverse) {
                (false, false) => j <= i,
                (true, false) => j < i,
                (false, true) => j >= i,
                (true, true) => j > i,
            };
            if included {
                let mut k = idx.to_vec();
                k[axis] = j;
                acc += x.get(&k);
            }
        }
        acc
    })
}

/// Sum of `x` down to `shape` (the adjoint of broadcasting `shape` up to `x.shape`).
pub fn sum_to(x: &RefTensor, shape: &[usize]) -> RefTensor {
    let lead = x.rank() - shape.len();
    let mut out = RefTensor::zeros(shape);
    for idx in indices(&x.shape) {
        let o: Vec<usize> = shape.iter().enumerate().map(|(i, &d)| if d == 1 { 0 } else { idx[lead + i] }).collect();
        *out.at_mut(&o) += x.get(&idx);
    }
    out
}
