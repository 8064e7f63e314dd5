//! Reading strided views on the host.

use crate::layout::Layout;
use rayon::prelude::*;

use super::PAR_THRESHOLD;

/// The elements of `layout` in logical row-major order, as a new vector.
pub(crate) fn gather<T: Copy + Send + Sync>(v: &[T], layout: &Layout) -> Vec<T> {
    if let Some(r) = layout.contiguous_range() {
        return v[r].to_vec();
    }
    let rows = layout.rows();
    let n = rows.inner_len;
    let mut out = Vec::with_capacity(layout.elem_count());
    if layout.elem_count() >= PAR_THRESHOLD {
        let chunks: Vec<Vec<T>> = (0..rows.rows)
            .into_par_iter()
            .map(|r| {
                let o = rows.row_offset(r);
                (0..n).map(|j| v[o + j * rows.inner_stride]).collect()
            })
            .collect();
        for c in chunks {
            out.extend_from_slice(&c);
        }
    } else {
        for r in 0..rows.rows {
            let o = rows.row_offset(r);
            if rows.inner_stride == 1 {
                out.extend_from_slice(&v[o..o + n]);
            } else {
                out.extend((0..n).map(|j| v[o + j * rows.inner_stride]));
            }
        }
    }
    out
}

/// A view's elements as a borrowed slice when contiguous, else a gathered copy.
pub(crate) fn contiguous_cow<'a, T: Copy + Send + Sync>(v: &'a [T], layout: &Layout) -> std::borrow::Cow<'a, [T]>
where
    [T]: ToOwned<Owned = Vec<T>>,
{
    match layout.contiguous_range() {
        Some(r) => std::borrow::Cow::Borrowed(&v[r]),
        None => std::borrow::Cow::Owned(gather(v, layout)),
    }
}
