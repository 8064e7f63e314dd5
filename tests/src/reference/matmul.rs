//! Batched matrix product with broadcast batch axes.

use super::{broadcast_shape, broadcast_to, RefTensor};

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
