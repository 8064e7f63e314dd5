//! Indexing kernels: index_select / index_add, gather / scatter_add, concat, pad.
//!
//! Every kernel views its tensors as `[outer, len, inner]` around the indexed axis (see
//! `split_axis` in reduce.rs). Indices are validated by the tensor layer before a kernel runs.

use crate::cpu::alloc::{filled, reserve};
use crate::cpu::reduce::split_axis;
use crate::cpu::storage::{widen, CpuElement, CpuStorage};
use crate::cpu::strided::{build, gather as gather_view, Plan};

use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::shape::Shape;
use half::{bf16, f16};

macro_rules! each_dtype {
    ($s:expr, |$v:ident| $body:expr) => {
        match $s {
            CpuStorage::U8($v) => $body,
            CpuStorage::U32($v) => $body,
            CpuStorage::F16($v) => $body,
            CpuStorage::BF16($v) => $body,
            CpuStorage::F32($v) => $body,
            CpuStorage::F64($v) => $body,
        }
    };
}

/// `out[o, i, :] = src[o, ids[i], :]`.
pub fn index_select(
    s: &CpuStorage,
    layout: &Layout,
    axis: usize,
    ids: &CpuStorage,
    ids_layout: &Layout,
) -> Result<CpuStorage> {
    let ids = ids.u32_view(ids_layout, "index_select")?;
    let (outer, len, inner) = split_axis(layout.dims(), axis);
    fn go<T: CpuElement>(
        v: &[T],
        l: &Layout,
        ids: &[u32],
        outer: usize,
        len: usize,
        inner: usize,
    ) -> Result<CpuStorage> {
        let x = gather_view(v, l)?;
        let mut out = reserve(outer * ids.len() * inner)?;
        for o in 0..outer {
            for &i in ids {
                let start = (o * len + i as usize) * inner;
                out.extend_from_slice(&x[start..start + inner]);
            }
        }
        Ok(T::wrap(out))
    }
    each_dtype!(s, |v| go(v, layout, &ids, outer, len, inner))
}

/// A half-precision view widened to contiguous f32 (any other storage: empty, never reached).
fn widen_view(s: &CpuStorage, layout: &Layout) -> Result<Vec<f32>> {
    match s {
        CpuStorage::F16(v) => widen(v, layout),
        CpuStorage::BF16(v) => widen(v, layout),
        _ => Ok(Vec::new()),
    }
}

/// A whole contiguous half-precision buffer widened to f32.
fn widen_all(s: &CpuStorage) -> Result<Vec<f32>> {
    widen_view(s, &Layout::contiguous(s.len()))
}

/// Adds values at positions through a float accumulation, shared by index_add and scatter_add.
fn add_into<T: CpuElement>(dst: &mut [T], at: usize, v: T) {
    dst[at] = T::from_f64(dst[at].as_f64() + v.as_f64());
}

/// `out = zeros(out_shape); out[o, ids[i], :] += src[o, i, :]`.
pub fn index_add(
    src: &CpuStorage,
    src_shape: &Shape,
    axis: usize,
    ids: &CpuStorage,
    ids_layout: &Layout,
    out_shape: &Shape,
) -> Result<CpuStorage> {
    let ids = ids.u32_view(ids_layout, "index_add")?;
    let (outer, n, inner) = split_axis(src_shape.dims(), axis);
    let len = out_shape.dims()[axis];
    fn go_f<T: CpuElement + num_traits::Float>(
        x: &[T],
        ids: &[u32],
        outer: usize,
        n: usize,
        inner: usize,
        len: usize,
    ) -> Result<CpuStorage> {
        let mut out = filled(outer * len * inner, T::zero())?;
        for o in 0..outer {
            for (i, &t) in ids.iter().enumerate().take(n) {
                // Out of range only through `index_add_prechecked`: skipped, as on the GPU.
                if t as usize >= len {
                    continue;
                }
                let (src, dst) = ((o * n + i) * inner, (o * len + t as usize) * inner);
                for j in 0..inner {
                    out[dst + j] = out[dst + j] + x[src + j];
                }
            }
        }
        Ok(T::wrap(out))
    }
    Ok(match src {
        CpuStorage::F32(x) => go_f(x, &ids, outer, n, inner, len)?,
        CpuStorage::F64(x) => go_f(x, &ids, outer, n, inner, len)?,
        // Half precision accumulates in f32 and rounds once, as the CUDA kernel does (through an
        // f32 buffer): rounding after every add would lose the small contributions of a row
        // that receives many (an MoE token's k experts).
        s @ (CpuStorage::F16(_) | CpuStorage::BF16(_)) => {
            let x = widen_all(s)?;
            match go_f(&x, &ids, outer, n, inner, len)? {
                CpuStorage::F32(v) => CpuStorage::store_f32(v, s.dtype())?,
                other => other,
            }
        }
        s => return Err(Error::UnsupportedDType { op: "index_add", dtype: s.dtype(), expected: "a float dtype" }),
    })
}

/// `out[o, i, j] = src[o, ids[o, i, j], j]` (numpy take_along_axis).
pub fn gather(
    s: &CpuStorage,
    layout: &Layout,
    axis: usize,
    ids: &CpuStorage,
    ids_layout: &Layout,
) -> Result<CpuStorage> {
    let ids = ids.u32_view(ids_layout, "gather")?;
    let (_, len, _) = split_axis(layout.dims(), axis);
    let (outer, m, inner) = split_axis(ids_layout.dims(), axis);
    fn go<T: CpuElement>(
        v: &[T],
        l: &Layout,
        ids: &[u32],
        outer: usize,
        m: usize,
        inner: usize,
        len: usize,
    ) -> Result<CpuStorage> {
        let x = gather_view(v, l)?;
        let mut out = reserve(ids.len())?;
        for o in 0..outer {
            for i in 0..m {
                for j in 0..inner {
                    let t = ids[(o * m + i) * inner + j] as usize;
                    out.push(x[(o * len + t) * inner + j]);
                }
            }
        }
        Ok(T::wrap(out))
    }
    each_dtype!(s, |v| go(v, layout, &ids, outer, m, inner, len))
}

/// `out = base; out[o, ids[o, i, j], j] += src[o, i, j]`.
#[allow(clippy::too_many_arguments)]
pub fn scatter_add(
    base: &CpuStorage,
    base_layout: &Layout,
    axis: usize,
    ids: &CpuStorage,
    ids_layout: &Layout,
    src: &CpuStorage,
    src_layout: &Layout,
) -> Result<CpuStorage> {
    let ids = ids.u32_view(ids_layout, "scatter_add")?;
    let (_, len, _) = split_axis(base_layout.dims(), axis);
    let (outer, m, inner) = split_axis(ids_layout.dims(), axis);
    fn go<T: CpuElement>(
        b: &[T],
        bl: &Layout,
        s: &[T],
        sl: &Layout,
        ids: &[u32],
        d: (usize, usize, usize, usize),
    ) -> Result<CpuStorage> {
        let (outer, m, inner, len) = d;
        let mut out = gather_view(b, bl)?;
        let x = gather_view(s, sl)?;
        for o in 0..outer {
            for i in 0..m {
                for j in 0..inner {
                    let k = (o * m + i) * inner + j;
                    add_into(&mut out, (o * len + ids[k] as usize) * inner + j, x[k]);
                }
            }
        }
        Ok(T::wrap(out))
    }
    let d = (outer, m, inner, len);
    Ok(match (base, src) {
        (CpuStorage::F32(b), CpuStorage::F32(s)) => go(b, base_layout, s, src_layout, &ids, d)?,
        (CpuStorage::F64(b), CpuStorage::F64(s)) => go(b, base_layout, s, src_layout, &ids, d)?,
        // Half precision: f32 accumulation, one rounding (see index_add).
        (b @ (CpuStorage::F16(_) | CpuStorage::BF16(_)), s) if s.dtype() == b.dtype() => {
            let (bw, sw) = (widen_view(b, base_layout)?, widen_view(s, src_layout)?);
            let contiguous = |l: &Layout| Layout::contiguous(l.shape().clone());
            match go(&bw, &contiguous(base_layout), &sw, &contiguous(src_layout), &ids, d)? {
                CpuStorage::F32(v) => CpuStorage::store_f32(v, b.dtype())?,
                other => other,
            }
        }
        (CpuStorage::U32(b), CpuStorage::U32(s)) => go(b, base_layout, s, src_layout, &ids, d)?,
        (b, s) if b.dtype() != s.dtype() => {
            return Err(Error::DTypeMismatch { op: "scatter_add", lhs: b.dtype(), rhs: s.dtype() })
        }
        (b, _) => {
            return Err(Error::UnsupportedDType {
                op: "scatter_add",
                dtype: b.dtype(),
                expected: "f16, bf16, f32, f64 or u32",
            })
        }
    })
}

/// Concatenate same-dtype views along `axis`. The output is written once, in order, from the
/// parts where they lie: contiguous parts are copied a block at a time, strided ones (a
/// transposed gradient placed into a fused projection's, say) run by run through their strides,
/// unless their blocks are too short for that to pay (then they are gathered first).
pub fn concat(parts: &[(&CpuStorage, &Layout)], axis: usize) -> Result<CpuStorage> {
    let first = parts.first().ok_or_else(|| Error::invalid("concat", "needs at least one tensor"))?;
    fn go<T: CpuElement>(parts: &[(&CpuStorage, &Layout)], axis: usize) -> Result<CpuStorage> {
        /// Blocks shorter than this are gathered first: reading them through their strides
        /// would spend more on finding each block (a few divisions) than on copying it.
        const MIN_STRIDED_BLOCK: usize = 32;
        let dims0 = parts[0].1.dims();
        let outer: usize = dims0[..axis].iter().product();
        let inner: usize = dims0[axis + 1..].iter().product();
        // Short strided parts, gathered first (below, they are read from here).
        let gathered: Vec<Vec<T>> = parts
            .iter()
            .map(|(s, l)| {
                let short = l.dims()[axis] * inner < MIN_STRIDED_BLOCK && l.contiguous_range().is_none();
                match (short, T::unwrap_ref(s)) {
                    (true, Some(v)) => gather_view(v, l),
                    _ => Ok(Vec::new()),
                }
            })
            .collect::<Result<_>>()?;
        // Each part as (elements, the plan to read a strided one through, elements per block).
        let srcs: Vec<(&[T], Option<Plan<1>>, usize)> = parts
            .iter()
            .zip(&gathered)
            .map(|((s, l), g)| {
                let v = T::unwrap_ref(s).ok_or(Error::DTypeMismatch { op: "concat", lhs: T::DTYPE, rhs: s.dtype() })?;
                let blk = l.dims()[axis] * inner;
                Ok(match l.contiguous_range() {
                    Some(r) => (&v[r], None, blk),
                    None if blk < MIN_STRIDED_BLOCK => (g.as_slice(), None, blk),
                    None => (v, Some(Plan::new([*l])), blk),
                })
            })
            .collect::<Result<_>>()?;
        // Where each part's block starts within an output row.
        let starts: Vec<usize> = srcs.iter().scan(0, |at, s| Some(std::mem::replace(at, *at + s.2))).collect();
        let row: usize = srcs.iter().map(|s| s.2).sum();
        let total = outer * row;
        let out = build(total, |start, dst| {
            // Output index `i` lies in block `(o, p)`: row `o`, part `p`.
            let mut i = start;
            let end = start + dst.len();
            while i < end {
                let (o, at) = (i / row, i % row);
                // The last part starting at or before `at` (parts of no elements are skipped).
                let p = starts.partition_point(|&s| s <= at) - 1;
                let (v, blk, r) = (srcs[p].0, srcs[p].2, at - starts[p]);
                let count = (blk - r).min(end - i);
                let d = &mut dst[i - start..i - start + count];
                let from = o * blk + r;
                match &srcs[p].1 {
                    None => {
                        for (d, &x) in d.iter_mut().zip(&v[from..from + count]) {
                            d.write(x);
                        }
                    }
                    Some(plan) => {
                        let s = plan.inner[0];
                        plan.for_runs(from, from + count, |[off], pos, n| {
                            let d = &mut d[pos - from..pos - from + n];
                            if s == 1 {
                                for (d, &x) in d.iter_mut().zip(&v[off..off + n]) {
                                    d.write(x);
                                }
                            } else {
                                for (j, d) in d.iter_mut().enumerate() {
                                    d.write(v[off + j * s]);
                                }
                            }
                        });
                    }
                }
                i += count;
            }
        })?;
        Ok(T::wrap(out))
    }
    match first.0 {
        CpuStorage::U8(_) => go::<u8>(parts, axis),
        CpuStorage::U32(_) => go::<u32>(parts, axis),
        CpuStorage::F16(_) => go::<f16>(parts, axis),
        CpuStorage::BF16(_) => go::<bf16>(parts, axis),
        CpuStorage::F32(_) => go::<f32>(parts, axis),
        CpuStorage::F64(_) => go::<f64>(parts, axis),
    }
}

/// Constant padding of every axis by `pads[i] = (before, after)`.
pub fn pad(s: &CpuStorage, layout: &Layout, pads: &[(usize, usize)], value: f64) -> Result<CpuStorage> {
    let in_dims = layout.dims().to_vec();
    let out_dims: Vec<usize> = in_dims.iter().zip(pads).map(|(&d, &(a, b))| d + a + b).collect();
    fn go<T: CpuElement>(
        v: &[T],
        l: &Layout,
        in_dims: &[usize],
        out_dims: &[usize],
        pads: &[(usize, usize)],
        value: f64,
    ) -> Result<CpuStorage> {
        let x = gather_view(v, l)?;
        let out_shape = Shape::from(out_dims.to_vec());
        let mut out = filled(out_shape.elem_count(), T::from_f64(value))?;
        let ostr = out_shape.contiguous_strides();
        let rank = in_dims.len();
        if rank == 0 {
            if !x.is_empty() {
                out[0] = x[0];
            }
            return Ok(T::wrap(out));
        }
        let n = in_dims[rank - 1];
        if n == 0 || x.is_empty() {
            return Ok(T::wrap(out));
        }
        for (r, row) in x.chunks(n).enumerate() {
            let mut rem = r;
            let mut off = pads[rank - 1].0;
            for k in (0..rank - 1).rev() {
                let i = rem % in_dims[k];
                rem /= in_dims[k];
                off += (i + pads[k].0) * ostr[k];
            }
            out[off..off + n].copy_from_slice(row);
        }
        Ok(T::wrap(out))
    }
    each_dtype!(s, |v| go(v, layout, &in_dims, &out_dims, pads, value))
}
