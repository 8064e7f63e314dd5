//! Fused nn ops: per-lane softmax / log_softmax, rms_norm, layer_norm, cross-entropy, topk.

use super::{indices, lane_logsumexp, lane_max, RefTensor};

/// Applies `f` to every lane along `axis`, writing the lane's results back in place.
pub fn map_lanes(x: &RefTensor, axis: usize, f: impl Fn(&[f64]) -> Vec<f64>) -> RefTensor {
    let mut out = x.clone();
    let mut others = x.shape.clone();
    let len = others.remove(axis);
    for o in indices(&others) {
        let at = |i: usize| {
            let mut idx = o.clone();
            idx.insert(axis, i);
            idx
        };
        let lane: Vec<f64> = (0..len).map(|i| x.get(&at(i))).collect();
        for (i, v) in f(&lane).into_iter().enumerate() {
            *out.at_mut(&at(i)) = v;
        }
    }
    out
}

/// softmax of one lane, written as exp(x_i) / sum exp(x_j) after the max shift.
pub fn softmax_lane(l: &[f64]) -> Vec<f64> {
    let m = lane_max(l);
    let e: Vec<f64> = l.iter().map(|&v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|&v| v / s).collect()
}

/// log_softmax of one lane: x_i - logsumexp(x).
pub fn log_softmax_lane(l: &[f64]) -> Vec<f64> {
    let lse = lane_logsumexp(l);
    l.iter().map(|&v| v - lse).collect()
}

/// RMS norm over the last axis: `x / sqrt(mean(x^2) + eps) * w`.
pub fn rms_norm(x: &RefTensor, w: Option<&[f64]>, eps: f64) -> RefTensor {
    let last = x.rank() - 1;
    map_lanes(x, last, |l| {
        let ms = l.iter().map(|v| v * v).sum::<f64>() / l.len() as f64;
        let r = 1.0 / (ms + eps).sqrt();
        l.iter().enumerate().map(|(j, &v)| v * r * w.map_or(1.0, |w| w[j])).collect()
    })
}

/// Layer norm over the last axis: `(x - mean) / sqrt(var + eps) * w + b` (biased variance).
pub fn layer_norm(x: &RefTensor, w: Option<&[f64]>, b: Option<&[f64]>, eps: f64) -> RefTensor {
    let last = x.rank() - 1;
    map_lanes(x, last, |l| {
        let n = l.len() as f64;
        let mean = l.iter().sum::<f64>() / n;
        let var = l.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        let r = 1.0 / (var + eps).sqrt();
        l.iter().enumerate().map(|(j, &v)| (v - mean) * r * w.map_or(1.0, |w| w[j]) + b.map_or(0.0, |b| b[j])).collect()
    })
}

/// Cross-entropy of `logits [rows, classes]`: per-row losses (0 for ignored rows), per-row
/// logsumexp, and the mean over the non-ignored rows (0 when every row is ignored).
pub fn cross_entropy(logits: &RefTensor, targets: &[usize], ignore: Option<usize>) -> (Vec<f64>, Vec<f64>, f64) {
    let (rows, classes) = (logits.shape[0], logits.shape[1]);
    let mut losses = vec![0.0; rows];
    let mut lses = vec![0.0; rows];
    let mut counted = 0;
    for r in 0..rows {
        let row: Vec<f64> = (0..classes).map(|c| logits.get(&[r, c])).collect();
        lses[r] = lane_logsumexp(&row);
        if Some(targets[r]) != ignore {
            losses[r] = -log_softmax_lane(&row)[targets[r]];
            counted += 1;
        }
    }
    let mean = if counted == 0 { 0.0 } else { losses.iter().sum::<f64>() / counted as f64 };
    (losses, lses, mean)
}

/// The `k` largest entries of each lane along `axis`, descending, ties to the lower index.
pub fn topk(x: &RefTensor, k: usize, axis: usize) -> (RefTensor, RefTensor) {
    let mut shape = x.shape.clone();
    shape[axis] = k;
    let mut vals = RefTensor::zeros(&shape);
    let mut idxs = RefTensor::zeros(&shape);
    let mut others = x.shape.clone();
    let len = others.remove(axis);
    for o in indices(&others) {
        let at = |i: usize| {
            let mut idx = o.clone();
            idx.insert(axis, i);
            idx
        };
        // Selection by repeated scan: take the largest not-yet-taken, lowest index on ties.
        let mut taken = vec![false; len];
        for slot in 0..k {
            let mut best: Option<usize> = None;
            for (i, &t) in taken.iter().enumerate() {
                if !t && best.is_none_or(|b| x.get(&at(i)) > x.get(&at(b))) {
                    best = Some(i);
                }
            }
            let b = best.expect("k <= len");
            taken[b] = true;
            *vals.at_mut(&at(slot)) = x.get(&at(b));
            *idxs.at_mut(&at(slot)) = b as f64;
        }
    }
    (vals, idxs)
}
