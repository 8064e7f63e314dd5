//! `impl Backend for Cuda`: a thin map from the trait onto the op modules in `ops/`.

use ela_core::{
    AdamWOperands, AdamWStep, Backend, BinaryOp, CmpOp, Conv2dParams, CpuStorage, DType, Layout, Pool2dParams,
    ReduceOp, Result, Shape, UnaryOp,
};

use ela_core::ela::{ElaArg, ElaDims, ElaGrads, ElaKernel, ElaParams, ElaRows, ElaSaved, ElaStateBufs};

use crate::device::Cuda;
use crate::storage::CudaStorage;

type S = CudaStorage;

impl Cuda {
    fn upload_host(&self, data: &CpuStorage) -> Result<S> {
        match data {
            CpuStorage::U8(v) => self.upload(v, DType::U8),
            CpuStorage::U32(v) => self.upload(v, DType::U32),
            CpuStorage::F16(v) => self.upload(v, DType::F16),
            CpuStorage::BF16(v) => self.upload(v, DType::BF16),
            CpuStorage::F32(v) => self.upload(v, DType::F32),
            CpuStorage::F64(v) => self.upload(v, DType::F64),
        }
    }

    fn to_cpu_impl(&self, s: &S, l: &Layout) -> Result<CpuStorage> {
        let c = self.contig(s, l)?;
        let n = l.elem_count();
        fn get<T: Default + Clone>(dev: &Cuda, ptr: u64, n: usize) -> Result<Vec<T>> {
            let mut v = vec![T::default(); n];
            dev.download(ptr, &mut v)?;
            Ok(v)
        }
        Ok(match s.dtype() {
            DType::U8 => CpuStorage::U8(get(self, c.ptr(), n)?),
            DType::U32 => CpuStorage::U32(get(self, c.ptr(), n)?),
            DType::F16 => CpuStorage::F16(get(self, c.ptr(), n)?),
            DType::BF16 => CpuStorage::BF16(get(self, c.ptr(), n)?),
            DType::F32 => CpuStorage::F32(get(self, c.ptr(), n)?),
            DType::F64 => CpuStorage::F64(get(self, c.ptr(), n)?),
        })
    }
}

impl Backend for Cuda {
    type Storage = CudaStorage;

    fn device_name(&self) -> String {
        format!("cuda:{}", self.ordinal())
    }
    fn same_device(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.inner, &other.inner)
    }
    fn available_memory(&self) -> Option<u64> {
        self.free_memory().ok()
    }
    fn is_capturing(&self) -> bool {
        Cuda::is_capturing(self)
    }
    fn peak_memory(&self) -> Option<u64> {
        Some(self.memory_stats().peak_bytes as u64)
    }
    fn storage_dtype(s: &S) -> DType {
        s.dtype()
    }
    fn storage_len(s: &S) -> usize {
        s.len()
    }
    fn full(&self, len: usize, value: f64, dtype: DType) -> Result<S> {
        self.full_impl(len, value, dtype)
    }
    fn from_cpu(&self, data: &CpuStorage) -> Result<S> {
        self.upload_host(data)
    }
    fn to_cpu(&self, s: &S, l: &Layout) -> Result<CpuStorage> {
        self.to_cpu_impl(s, l)
    }
    fn copy_into(&self, dst: &mut S, dl: &Layout, src: &S, sl: &Layout) -> Result<()> {
        crate::ops::check_same("copy_into", dst, src)?;
        self.copy_strided(dst, dl, src, sl)
    }
    fn copy_contiguous(&self, s: &S, l: &Layout) -> Result<S> {
        self.copy_contiguous_impl(s, l)
    }
    fn cast(&self, s: &S, l: &Layout, dtype: DType) -> Result<S> {
        self.cast_impl(s, l, dtype)
    }
    fn cast_concat(&self, parts: &[(&S, &Layout)], dtype: DType) -> Result<S> {
        self.cast_concat_impl(parts, dtype)
    }
    fn unary(&self, op: UnaryOp, s: &S, l: &Layout) -> Result<S> {
        self.unary_impl(op, s, l)
    }
    fn binary(&self, op: BinaryOp, a: &S, la: &Layout, b: &S, lb: &Layout) -> Result<S> {
        self.binary_impl(op, a, la, b, lb)
    }
    fn cmp(&self, op: CmpOp, a: &S, la: &Layout, b: &S, lb: &Layout) -> Result<S> {
        self.cmp_impl(op, a, la, b, lb)
    }
    fn where_cond(&self, c: &S, lc: &Layout, t: &S, lt: &Layout, f: &S, lf: &Layout) -> Result<S> {
        self.where_impl(c, lc, t, lt, f, lf)
    }
    fn reduce(&self, op: ReduceOp, s: &S, l: &Layout, axis: usize) -> Result<S> {
        self.reduce_impl(op, s, l, axis)
    }
    fn cumsum(&self, s: &S, l: &Layout, axis: usize, exclusive: bool, reverse: bool) -> Result<S> {
        self.cumsum_impl(s, l, axis, exclusive, reverse)
    }
    fn matmul(&self, a: &S, la: &Layout, b: &S, lb: &Layout) -> Result<S> {
        self.matmul_impl(a, la, b, lb, a.dtype())
    }
    fn matmul_f32(&self, a: &S, la: &Layout, b: &S, lb: &Layout) -> Result<S> {
        self.matmul_impl(a, la, b, lb, DType::F32)
    }
    fn softmax_last(&self, s: &S, l: &Layout, log: bool) -> Result<S> {
        self.softmax_impl(s, l, log)
    }
    fn softmax_last_backward(&self, y: &S, dy: &S, shape: &Shape, log: bool) -> Result<S> {
        self.softmax_bwd_impl(y, dy, shape, log)
    }
    fn rms_norm(&self, x: &S, w: Option<&S>, rows: usize, n: usize, eps: f64) -> Result<(S, S)> {
        self.rms_norm_impl(x, w, rows, n, eps)
    }
    fn add_rms_norm(&self, a: &S, b: &S, w: Option<&S>, rows: usize, n: usize, eps: f64) -> Result<(S, S, S)> {
        self.add_rms_norm_impl(a, b, w, rows, n, eps)
    }
    fn swiglu(&self, a: &S, b: &S, n: usize) -> Result<S> {
        self.swiglu_impl(a, b, n)
    }
    fn swiglu_backward(&self, a: &S, b: &S, g: &S, n: usize) -> Result<(S, S)> {
        self.swiglu_backward_impl(a, b, g, n)
    }
    fn swiglu_packed(&self, x: &S, rows: usize, h: usize) -> Result<S> {
        self.swiglu_packed_impl(x, rows, h)
    }
    fn swiglu_packed_backward(&self, x: &S, g: &S, rows: usize, h: usize) -> Result<S> {
        self.swiglu_packed_backward_impl(x, g, rows, h)
    }
    fn bias_silu(&self, x: &S, bias: &S, outer: usize, chans: usize, inner: usize) -> Result<S> {
        self.bias_silu_impl(x, bias, outer, chans, inner)
    }
    fn rms_norm_backward(
        &self,
        x: &S,
        w: Option<&S>,
        rstd: &S,
        dy: &S,
        plus: Option<&S>,
        rows: usize,
        n: usize,
    ) -> Result<(S, Option<S>)> {
        self.rms_norm_bwd_impl(x, w, rstd, dy, plus, rows, n)
    }
    fn layer_norm(&self, x: &S, w: Option<&S>, b: Option<&S>, rows: usize, n: usize, eps: f64) -> Result<(S, S, S)> {
        self.layer_norm_impl(x, w, b, rows, n, eps)
    }
    fn layer_norm_backward(
        &self,
        x: &S,
        w: Option<&S>,
        mean: &S,
        rstd: &S,
        dy: &S,
        rows: usize,
        n: usize,
    ) -> Result<(S, Option<S>, Option<S>)> {
        self.layer_norm_bwd_impl(x, w, mean, rstd, dy, rows, n)
    }
    fn cross_entropy(&self, logits: &S, t: &S, rows: usize, classes: usize, ignore: Option<u32>) -> Result<(S, S)> {
        self.cross_entropy_impl(logits, t, rows, classes, ignore)
    }
    fn cross_entropy_backward(
        &self,
        logits: &S,
        t: &S,
        lse: &S,
        dloss: &S,
        rows: usize,
        classes: usize,
        ignore: Option<u32>,
    ) -> Result<S> {
        self.cross_entropy_bwd_impl(logits, t, lse, dloss, rows, classes, ignore)
    }
    fn topk_last(&self, s: &S, l: &Layout, k: usize) -> Result<(S, S)> {
        self.topk_impl(s, l, k)
    }
    fn index_select(&self, s: &S, l: &Layout, axis: usize, ids: &S, li: &Layout) -> Result<S> {
        self.index_select_impl(s, l, axis, ids, li)
    }
    fn index_add(&self, s: &S, ss: &Shape, axis: usize, ids: &S, li: &Layout, out: &Shape) -> Result<S> {
        self.index_add_impl(s, ss, axis, ids, li, out)
    }
    fn gather(&self, s: &S, l: &Layout, axis: usize, ids: &S, li: &Layout) -> Result<S> {
        self.gather_impl(s, l, axis, ids, li)
    }
    fn scatter_add(&self, b: &S, lb: &Layout, axis: usize, ids: &S, li: &Layout, s: &S, ls: &Layout) -> Result<S> {
        self.scatter_add_impl(b, lb, axis, ids, li, s, ls)
    }
    fn concat(&self, parts: &[(&S, &Layout)], axis: usize) -> Result<S> {
        self.concat_impl(parts, axis)
    }
    fn pad(&self, s: &S, l: &Layout, pads: &[(usize, usize)], value: f64) -> Result<S> {
        self.pad_impl(s, l, pads, value)
    }
    fn conv2d(&self, x: &S, lx: &Layout, w: &S, lw: &Layout, p: &Conv2dParams) -> Result<S> {
        self.conv2d_impl(x, lx, w, lw, p)
    }
    fn conv2d_backward_input(
        &self,
        dy: &S,
        _dys: &Shape,
        w: &S,
        lw: &Layout,
        xs: &Shape,
        p: &Conv2dParams,
    ) -> Result<S> {
        self.conv2d_bwd_input_impl(dy, w, lw, xs, p)
    }
    fn conv2d_backward_weight(
        &self,
        x: &S,
        lx: &Layout,
        dy: &S,
        _dys: &Shape,
        ws: &Shape,
        p: &Conv2dParams,
    ) -> Result<S> {
        self.conv2d_bwd_weight_impl(x, lx, dy, ws, p)
    }
    fn max_pool2d(&self, x: &S, l: &Layout, p: &Pool2dParams) -> Result<(S, S)> {
        self.max_pool_impl(x, l, p)
    }
    fn max_pool2d_backward(&self, dy: &S, am: &S, dys: &Shape, xs: &Shape) -> Result<S> {
        self.max_pool_bwd_impl(dy, am, dys, xs)
    }
    fn avg_pool2d(&self, x: &S, l: &Layout, p: &Pool2dParams) -> Result<S> {
        self.avg_pool_impl(x, l, p)
    }
    fn avg_pool2d_backward(&self, dy: &S, _dys: &Shape, xs: &Shape, p: &Pool2dParams) -> Result<S> {
        self.avg_pool_bwd_impl(dy, xs, p)
    }
    fn upsample_nearest2d(&self, x: &S, l: &Layout, f: (usize, usize)) -> Result<S> {
        self.upsample_impl(x, l, f)
    }
    fn upsample_nearest2d_backward(&self, dy: &S, dys: &Shape, f: (usize, usize)) -> Result<S> {
        self.upsample_bwd_impl(dy, dys, f)
    }
    fn adamw_update(&self, p: &S, g: &S, m: &S, v: &S, n: usize, step: &AdamWStep) -> Result<(S, S, S)> {
        self.adamw_update_impl(p, g, m, v, n, step)
    }
    fn adamw_update_many(&self, items: &[AdamWOperands<'_, S>]) -> Result<Vec<ela_core::AdamWUpdated<S>>> {
        self.adamw_update_many_impl(items)
    }
    fn sum_squares_many(&self, xs: &[(&S, usize)]) -> Result<S> {
        self.sum_squares_many_impl(xs)
    }
    fn ela_forward(
        &self,
        q: &S,
        k: &S,
        v: &S,
        dims: &ElaDims,
        p: &ElaParams,
        state: Option<&mut ElaStateBufs<S>>,
    ) -> Result<S> {
        self.ela_forward_impl(q, k, v, dims, p, state)
    }
    fn ela_forward_saving(
        &self,
        q: &S,
        k: &S,
        v: &S,
        dims: &ElaDims,
        p: &ElaParams,
    ) -> Result<(S, Option<ElaSaved<S>>)> {
        self.ela_forward_saving_impl([q, k, v], dims, p)
    }
    fn ela_backward(
        &self,
        q: &S,
        k: &S,
        v: &S,
        y: &S,
        dy: &S,
        dims: &ElaDims,
        p: &ElaParams,
        saved: Option<&ElaSaved<S>>,
    ) -> Result<(S, S, S)> {
        self.ela_backward_impl(q, k, v, y, dy, dims, p, saved)
    }
    fn ela_rows_supported(&self, dtype: DType, dims: &ElaDims, p: &ElaParams) -> bool {
        self.ela_rows_supported_impl(dtype, dims, p)
    }
    fn ela_forward_rows(
        &self,
        q: ElaArg<'_, S>,
        k: ElaArg<'_, S>,
        v: ElaArg<'_, S>,
        y_rows: ElaRows,
        dims: &ElaDims,
        p: &ElaParams,
        save: bool,
    ) -> Result<(S, Option<ElaSaved<S>>)> {
        self.ela_forward_rows_impl([&q, &k, &v], y_rows, dims, p, save)
    }
    fn ela_backward_rows(
        &self,
        q: ElaArg<'_, S>,
        k: ElaArg<'_, S>,
        v: ElaArg<'_, S>,
        y: ElaArg<'_, S>,
        dy: ElaArg<'_, S>,
        dims: &ElaDims,
        p: &ElaParams,
        saved: Option<&ElaSaved<S>>,
        shared: Option<usize>,
    ) -> Result<ElaGrads<S>> {
        self.ela_backward_rows_impl([&q, &k, &v, &y, &dy], dims, p, saved, shared)
    }
    fn ela_step(
        &self,
        q: &S,
        k: &S,
        v: &S,
        dims: &ElaDims,
        kernel: ElaKernel,
        state: &mut ElaStateBufs<S>,
    ) -> Result<S> {
        self.ela_step_impl(q, k, v, dims, kernel, state)
    }
}
