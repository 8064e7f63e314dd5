//! Indexing: index_select / index_add, gather / scatter_add, concat and pad (kernels in
//! `kernels/index.cu`; concat and pad reuse the strided copy of `kernels/elementwise.cu`).

use ela_core::{DType, Error, Layout, Result, Shape};

use super::reduce::split_axis;
use super::{check_same, width};
use crate::device::{Arg, Cfg, Cuda};
use crate::kernels::KernelFile::Index as IX;
use crate::storage::CudaStorage;

fn check_ids(op: &'static str, ids: &CudaStorage) -> Result<()> {
    if ids.dtype() == DType::U32 {
        Ok(())
    } else {
        Err(Error::UnsupportedDType { op, dtype: ids.dtype(), expected: "u32 indices" })
    }
}

/// The dtype the atomics of index_add/scatter_add run in for a storage dtype.
fn accum_dtype(op: &'static str, d: DType) -> Result<DType> {
    match d {
        DType::F32 | DType::F64 | DType::U32 => Ok(d),
        DType::F16 | DType::BF16 => Ok(DType::F32),
        DType::U8 => Err(Error::UnsupportedDType { op, dtype: d, expected: "f16, bf16, f32, f64 or u32" }),
    }
}

impl Cuda {
    /// `out[o, i, :] = src[o, ids[i], :]` along `axis`.
    pub(crate) fn index_select_impl(
        &self,
        src: &CudaStorage,
        l: &Layout,
        axis: usize,
        ids: &CudaStorage,
        il: &Layout,
    ) -> Result<CudaStorage> {
        check_ids("index_select", ids)?;
        let (outer, len, inner) = split_axis(l.dims(), axis);
        let m = il.elem_count();
        let out = self.alloc(src.dtype(), outer * m * inner)?;
        if out.is_empty() {
            return Ok(out);
        }
        let (x, i) = (self.contig(src, l)?, self.contig(ids, il)?);
        let args = [
            Arg::Ptr(out.ptr()),
            Arg::Ptr(x.ptr()),
            Arg::Ptr(i.ptr()),
            Arg::n(outer),
            Arg::n(len),
            Arg::n(inner),
            Arg::n(m),
        ];
        self.launch(IX, &format!("index_select_{}", width(src.dtype())), Cfg::elems(out.len()), &args)?;
        Ok(out)
    }

    /// `zeros(out_shape)` with each slice `i` of contiguous `src` added at `ids[i]` along `axis`.
    pub(crate) fn index_add_impl(
        &self,
        src: &CudaStorage,
        src_shape: &Shape,
        axis: usize,
        ids: &CudaStorage,
        il: &Layout,
        out_shape: &Shape,
    ) -> Result<CudaStorage> {
        const OP: &str = "index_add";
        check_ids(OP, ids)?;
        let acc = accum_dtype(OP, src.dtype())?;
        if acc == DType::U32 {
            return Err(Error::UnsupportedDType { op: OP, dtype: src.dtype(), expected: "a float dtype" });
        }
        let (outer, n, inner) = split_axis(src_shape.dims(), axis);
        let len = out_shape.dims()[axis];
        let out = self.zeros(acc, out_shape.elem_count())?;
        let s = if acc == src.dtype() {
            None
        } else {
            Some(self.cast_impl(src, &Layout::contiguous(src_shape.clone()), acc)?)
        };
        let sp = s.as_ref().map_or(src.ptr(), |s| s.ptr());
        let i = self.contig(ids, il)?;
        let args = [
            Arg::Ptr(out.ptr()),
            Arg::Ptr(sp),
            Arg::Ptr(i.ptr()),
            Arg::n(outer),
            Arg::n(n),
            Arg::n(inner),
            Arg::n(len),
        ];
        self.launch(IX, &format!("index_add_{}", super::dt(acc)), Cfg::elems(outer * n * inner), &args)?;
        if acc == src.dtype() {
            Ok(out)
        } else {
            self.cast_impl(&out, &Layout::contiguous(out_shape.clone()), src.dtype())
        }
    }

    /// numpy `take_along_axis`: `out[o, i, j] = src[o, ids[o, i, j], j]`.
    pub(crate) fn gather_impl(
        &self,
        src: &CudaStorage,
        l: &Layout,
        axis: usize,
        ids: &CudaStorage,
        il: &Layout,
    ) -> Result<CudaStorage> {
        check_ids("gather", ids)?;
        let (_, len, _) = split_axis(l.dims(), axis);
        let (outer, m, inner) = split_axis(il.dims(), axis);
        let out = self.alloc(src.dtype(), il.elem_count())?;
        if out.is_empty() {
            return Ok(out);
        }
        let (x, i) = (self.contig(src, l)?, self.contig(ids, il)?);
        let args = [
            Arg::Ptr(out.ptr()),
            Arg::Ptr(x.ptr()),
            Arg::Ptr(i.ptr()),
            Arg::n(outer),
            Arg::n(len),
            Arg::n(inner),
            Arg::n(m),
        ];
        self.launch(IX, &format!("gather_{}", width(src.dtype())), Cfg::elems(out.len()), &args)?;
        Ok(out)
    }

    /// `base` (copied) plus each `src` element added at the position `ids` names along `axis`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn scatter_add_impl(
        &self,
        base: &CudaStorage,
        bl: &Layout,
        axis: usize,
        ids: &CudaStorage,
        il: &Layout,
        src: &CudaStorage,
        sl: &Layout,
    ) -> Result<CudaStorage> {
        const OP: &str = "scatter_add";
        check_ids(OP, ids)?;
        check_same(OP, base, src)?;
        let acc = accum_dtype(OP, base.dtype())?;
        let (_, len, _) = split_axis(bl.dims(), axis);
        let (outer, m, inner) = split_axis(il.dims(), axis);
        let out = self.cast_impl(base, bl, acc)?;
        let s = self.cast_impl(src, sl, acc)?;
        let i = self.contig(ids, il)?;
        let args = [
            Arg::Ptr(out.ptr()),
            Arg::Ptr(s.ptr()),
            Arg::Ptr(i.ptr()),
            Arg::n(outer),
            Arg::n(m),
            Arg::n(inner),
            Arg::n(len),
        ];
        self.launch(IX, &format!("scatter_add_{}", super::dt(acc)), Cfg::elems(outer * m * inner), &args)?;
        if acc == base.dtype() {
            Ok(out)
        } else {
            self.cast_impl(&out, &Layout::contiguous(bl.shape().clone()), base.dtype())
        }
    }

    /// Concatenation of same-dtype views along `axis`: one strided copy per part into its slab.
    pub(crate) fn concat_impl(&self, parts: &[(&CudaStorage, &Layout)], axis: usize) -> Result<CudaStorage> {
        let (first, l0) = parts.first().ok_or_else(|| Error::invalid("concat", "needs at least one tensor"))?;
        for (s, _) in parts {
            check_same("concat", first, s)?;
        }
        let total: usize = parts.iter().map(|(_, l)| l.dims()[axis]).sum();
        let out_shape = l0.shape().with_dim(axis, total);
        let ostrides = out_shape.contiguous_strides();
        let out = self.alloc(first.dtype(), out_shape.elem_count())?;
        let mut at = 0;
        for (s, l) in parts {
            let dst = Layout::from_parts(l.shape().clone(), ostrides.clone(), at * ostrides[axis]);
            self.copy_strided(&out, &dst, s, l)?;
            at += l.dims()[axis];
        }
        Ok(out)
    }

    /// Constant padding by `pads[i] = (before, after)` on every axis.
    pub(crate) fn pad_impl(
        &self,
        src: &CudaStorage,
        l: &Layout,
        pads: &[(usize, usize)],
        value: f64,
    ) -> Result<CudaStorage> {
        let out_dims: Vec<usize> = l.dims().iter().zip(pads).map(|(&d, &(a, b))| d + a + b).collect();
        let out_shape = Shape::from(out_dims);
        let out = self.full_impl(out_shape.elem_count(), value, src.dtype())?;
        let ostrides = out_shape.contiguous_strides();
        let offset: usize = pads.iter().zip(&ostrides).map(|(&(a, _), s)| a * s).sum();
        let dst = Layout::from_parts(l.shape().clone(), ostrides, offset);
        self.copy_strided(&out, &dst, src, l)?;
        Ok(out)
    }
}
