//! Naive, obviously-correct reference implementations of the ela-core ops.
//!
//! Everything here works on [`RefTensor`], a row-major `Vec<f64>` with an explicit shape, and is
//! written as plain loops over multi-indices: no strides tricks, no blocking, no parallelism.
//! Speed is irrelevant; the point is that each function can be checked by reading it. The
//! property tests in `tests/core_forward.rs` compare every `Tensor<Cpu>` op against these.

/// A dense row-major f64 tensor with an explicit shape (rank 0 = one element).
#[derive(Clone, Debug, PartialEq)]
pub struct RefTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Elements in row-major order; `data.len() == shape.iter().product()`.
    pub data: Vec<f64>,
}

/// Number of elements of a shape (1 for rank 0).
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Row-major flat position of a multi-index.
pub fn ravel(shape: &[usize], idx: &[usize]) -> usize {
    assert_eq!(shape.len(), idx.len(), "index rank");
    let mut flat = 0;
    for (d, (&n, &i)) in shape.iter().zip(idx).enumerate() {
        assert!(i < n, "index {i} out of range for axis {d} of size {n}");
        flat = flat * n + i;
    }
    flat
}

/// Multi-index of a row-major flat position.
pub fn unravel(shape: &[usize], mut flat: usize) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = flat % shape[d];
        flat /= shape[d];
    }
    idx
}

/// Every multi-index of `shape` in row-major order.
pub fn indices(shape: &[usize]) -> Vec<Vec<usize>> {
    (0..numel(shape)).map(|i| unravel(shape, i)).collect()
}

/// Resolves a numpy-style axis (negative counts from the back) against `rank`.
pub fn norm_axis(axis: isize, rank: usize) -> Option<usize> {
    let a = if axis < 0 { axis + rank as isize } else { axis };
    (a >= 0 && (a as usize) < rank).then_some(a as usize)
}

impl RefTensor {
    /// A tensor from its parts (panics when the lengths disagree: reference misuse).
    pub fn new(shape: Vec<usize>, data: Vec<f64>) -> Self {
        assert_eq!(numel(&shape), data.len(), "RefTensor::new: shape {shape:?} vs {} values", data.len());
        RefTensor { shape, data }
    }

    /// A tensor of `value`.
    pub fn full(shape: &[usize], value: f64) -> Self {
        RefTensor { shape: shape.to_vec(), data: vec![value; numel(shape)] }
    }

    /// Zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Self::full(shape, 0.0)
    }

    /// `out[idx] = f(idx)` for every multi-index.
    pub fn from_fn(shape: &[usize], mut f: impl FnMut(&[usize]) -> f64) -> Self {
        let data = indices(shape).iter().map(|i| f(i)).collect();
        RefTensor { shape: shape.to_vec(), data }
    }

    /// Rank.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Element at a multi-index.
    pub fn get(&self, idx: &[usize]) -> f64 {
        self.data[ravel(&self.shape, idx)]
    }

    /// Mutable element at a multi-index.
    pub fn at_mut(&mut self, idx: &[usize]) -> &mut f64 {
        let i = ravel(&self.shape, idx);
        &mut self.data[i]
    }

    /// Elementwise map.
    pub fn map(&self, f: impl Fn(f64) -> f64) -> Self {
        RefTensor { shape: self.shape.clone(), data: self.data.iter().map(|&v| f(v)).collect() }
    }

    /// The same data under another shape of the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Self {
        RefTensor::new(shape.to_vec(), self.data.clone())
    }
}

// ------------------------------------------------------------------ scalar functions

/// sqrt(2/pi).
const GELU_K: f64 = 0.797_884_560_802_865_4;

/// GELU, tanh approximation.
pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + (GELU_K * (x + 0.044715 * x * x * x)).tanh())
}

/// Logistic sigmoid.
pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// x * sigmoid(x).
pub fn silu(x: f64) -> f64 {
    x * sigmoid(x)
}

/// max(x, 0).
pub fn relu(x: f64) -> f64 {
    if x > 0.0 {
        x
    } else {
        0.0
    }
}

/// Sign in {-1, 0, 1}.
pub fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Central finite difference of `f` at `x` with step `h`.
pub fn central_diff(f: impl Fn(f64) -> f64, x: f64, h: f64) -> f64 {
    (f(x + h) - f(x - h)) / (2.0 * h)
}

// ------------------------------------------------------------------ broadcasting

/// The numpy broadcast of two shapes, or `None`.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() < r { 1 } else { a[i + a.len() - r] };
        let db = if i + b.len() < r { 1 } else { b[i + b.len() - r] };
        out[i] = if da == db {
            da
        } else if da == 1 {
            db
        } else if db == 1 {
            da
        } else {
            return None;
        };
    }
    Some(out)
}

/// `x` broadcast to `shape` (materialised); `None` when not broadcastable.
pub fn broadcast_to(x: &RefTensor, shape: &[usize]) -> Option<RefTensor> {
    if x.rank() > shape.len() {
        return None;
    }
    let lead = shape.len() - x.rank();
    for (i, &d) in x.shape.iter().enumerate() {
        if d != shape[lead + i] && d != 1 {
            return None;
        }
    }
    Some(RefTensor::from_fn(shape, |idx| {
        let src: Vec<usize> =
            x.shape.iter().enumerate().map(|(i, &d)| if d == 1 { 0 } else { idx[lead + i] }).collect();
        x.get(&src)
    }))
}

/// `f(a, b)` with numpy broadcasting.
pub fn binary(a: &RefTensor, b: &RefTensor, f: impl Fn(f64, f64) -> f64) -> Option<RefTensor> {
    let s = broadcast_shape(&a.shape, &b.shape)?;
    let (a, b) = (broadcast_to(a, &s)?, broadcast_to(b, &s)?);
    Some(RefTensor::new(s, a.data.iter().zip(&b.data).map(|(&x, &y)| f(x, y)).collect()))
}

/// numpy maximum: NaN in either operand propagates.
pub fn maximum(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a >= b {
        a
    } else {
        b
    }
}

/// numpy minimum: NaN in either operand propagates.
pub fn minimum(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a <= b {
        a
    } else {
        b
    }
}

/// `cond != 0 ? t : f` with broadcasting of all three.
pub fn where_cond(cond: &RefTensor, t: &RefTensor, f: &RefTensor) -> Option<RefTensor> {
    let s = broadcast_shape(&broadcast_shape(&cond.shape, &t.shape)?, &f.shape)?;
    let (c, t, f) = (broadcast_to(cond, &s)?, broadcast_to(t, &s)?, broadcast_to(f, &s)?);
    Some(RefTensor::new(s, (0..c.numel()).map(|i| if c.data[i] != 0.0 { t.data[i] } else { f.data[i] }).collect()))
}

// ------------------------------------------------------------------ reductions

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

// ------------------------------------------------------------------ views

/// Output axis `i` is input axis `perm[i]`.
pub fn permute(x: &RefTensor, perm: &[usize]) -> RefTensor {
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    RefTensor::from_fn(&shape, |idx| {
        let mut src = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            src[p] = idx[i];
        }
        x.get(&src)
    })
}

/// Swap two axes.
pub fn transpose(x: &RefTensor, a: usize, b: usize) -> RefTensor {
    let mut perm: Vec<usize> = (0..x.rank()).collect();
    perm.swap(a, b);
    permute(x, &perm)
}

/// Entries `start..start+len` along `axis`.
pub fn narrow(x: &RefTensor, axis: usize, start: usize, len: usize) -> RefTensor {
    let mut shape = x.shape.clone();
    shape[axis] = len;
    RefTensor::from_fn(&shape, |idx| {
        let mut src = idx.to_vec();
        src[axis] += start;
        x.get(&src)
    })
}

/// Concatenate along `axis`.
pub fn concat(parts: &[RefTensor], axis: usize) -> RefTensor {
    let mut shape = parts[0].shape.clone();
    shape[axis] = parts.iter().map(|p| p.shape[axis]).sum();
    RefTensor::from_fn(&shape, |idx| {
        let mut i = idx[axis];
        for p in parts {
            if i < p.shape[axis] {
                let mut src = idx.to_vec();
                src[axis] = i;
                return p.get(&src);
            }
            i -= p.shape[axis];
        }
        unreachable!("index past the concatenation")
    })
}

/// Constant padding, `pads[i] = (before, after)`.
pub fn pad(x: &RefTensor, pads: &[(usize, usize)], value: f64) -> RefTensor {
    let shape: Vec<usize> = x.shape.iter().zip(pads).map(|(&d, &(a, b))| d + a + b).collect();
    RefTensor::from_fn(&shape, |idx| {
        let mut src = Vec::with_capacity(idx.len());
        for (i, (&o, &(before, _))) in idx.iter().zip(pads).enumerate() {
            if o < before || o - before >= x.shape[i] {
                return value;
            }
            src.push(o - before);
        }
        x.get(&src)
    })
}

/// `[rows, cols]` mask: 1 where `col <= row + diagonal`.
pub fn tril_mask(rows: usize, cols: usize, diagonal: isize) -> RefTensor {
    RefTensor::from_fn(&[rows, cols], |i| if i[1] as isize <= i[0] as isize + diagonal { 1.0 } else { 0.0 })
}

// ------------------------------------------------------------------ indexing

/// Entries `ids` along `axis`.
pub fn index_select(x: &RefTensor, ids: &[usize], axis: usize) -> RefTensor {
    let mut shape = x.shape.clone();
    shape[axis] = ids.len();
    RefTensor::from_fn(&shape, |idx| {
        let mut src = idx.to_vec();
        src[axis] = ids[idx[axis]];
        x.get(&src)
    })
}

/// Rows of `table [vocab, dim]` for ids of shape `ids_shape`: output `ids_shape + [dim]`.
pub fn embedding(table: &RefTensor, ids: &[usize], ids_shape: &[usize]) -> RefTensor {
    let mut shape = ids_shape.to_vec();
    shape.push(table.shape[1]);
    RefTensor::from_fn(&shape, |idx| {
        let r = ravel(ids_shape, &idx[..idx.len() - 1]);
        table.get(&[ids[r], idx[idx.len() - 1]])
    })
}

/// Zeros of `out_shape` with slice `i` of `src` added at `ids[i]` along `axis`.
pub fn index_add(src: &RefTensor, ids: &[usize], axis: usize, out_shape: &[usize]) -> RefTensor {
    let mut out = RefTensor::zeros(out_shape);
    for idx in indices(&src.shape) {
        let mut dst = idx.clone();
        dst[axis] = ids[idx[axis]];
        *out.at_mut(&dst) += src.get(&idx);
    }
    out
}

/// numpy take_along_axis: `out[idx] = x[idx with axis replaced by ids[idx]]`.
pub fn gather(x: &RefTensor, ids: &RefTensor, axis: usize) -> RefTensor {
    RefTensor::from_fn(&ids.shape, |idx| {
        let mut src = idx.to_vec();
        src[axis] = ids.get(idx) as usize;
        x.get(&src)
    })
}

/// `base` plus `src[idx]` added at `idx with axis replaced by ids[idx]`.
pub fn scatter_add(base: &RefTensor, ids: &RefTensor, src: &RefTensor, axis: usize) -> RefTensor {
    let mut out = base.clone();
    for idx in indices(&ids.shape) {
        let mut dst = idx.clone();
        dst[axis] = ids.get(&idx) as usize;
        *out.at_mut(&dst) += src.get(&idx);
    }
    out
}

// ------------------------------------------------------------------ matmul

/// `[.., m, k] @ [.., k, n]` with numpy-broadcast batch dims (ranks >= 2).
pub fn matmul(a: &RefTensor, b: &RefTensor) -> Option<RefTensor> {
    let (ra, rb) = (a.rank(), b.rank());
    let (m, k, k2, n) = (a.shape[ra - 2], a.shape[ra - 1], b.shape[rb - 2], b.shape[rb - 1]);
    if k != k2 {
        return None;
    }
    let batch = broadcast_shape(&a.shape[..ra - 2], &b.shape[..rb - 2])?;
    let mut sa = batch.clone();
    sa.extend([m, k]);
    let mut sb = batch.clone();
    sb.extend([k, n]);
    let (a, b) = (broadcast_to(a, &sa)?, broadcast_to(b, &sb)?);
    let mut so = batch.clone();
    so.extend([m, n]);
    Some(RefTensor::from_fn(&so, |idx| {
        let r = idx.len();
        let mut acc = 0.0;
        for p in 0..k {
            let mut ia = idx.to_vec();
            ia[r - 1] = p;
            let mut ib = idx.to_vec();
            ib[r - 2] = p;
            acc += a.get(&ia) * b.get(&ib);
        }
        acc
    }))
}

// ------------------------------------------------------------------ fused nn ops

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

// ------------------------------------------------------------------ convolution and pooling

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

/// `<a, b>` = sum of elementwise products (for adjoint identities).
pub fn dot(a: &RefTensor, b: &RefTensor) -> f64 {
    assert_eq!(a.shape, b.shape);
    a.data.iter().zip(&b.data).map(|(x, y)| x * y).sum()
}

// ------------------------------------------------------------------ deterministic test data

/// SplitMix64: a tiny deterministic generator for test data (independent of ela-core's `Rng`).
#[derive(Clone, Debug)]
pub struct TestRng(u64);

impl TestRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        TestRng(seed)
    }
    /// Next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }
    /// Uniform integer in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// A random permutation of `0..n`.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            p.swap(i, self.below(i + 1));
        }
        p
    }
}
