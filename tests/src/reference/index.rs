//! Views (permute, narrow, concat, pad, tril mask) and gather-style indexing ops.

use super::{indices, ravel, RefTensor};

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
