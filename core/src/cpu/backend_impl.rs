//! `impl Backend for Cpu`: a thin map from the trait onto the kernel modules.

use super::{conv, elementwise as ew, index, matmul, nn, reduce, Cpu, CpuStorage};
use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::Result;
use crate::layout::Layout;
use crate::op::{BinaryOp, CmpOp, Conv2dParams, Pool2dParams, ReduceOp, UnaryOp};
use crate::shape::Shape;

type S = CpuStorage;

impl Backend for Cpu {
    type Storage = CpuStorage;

    fn device_name(&self) -> String {
        "cpu".into()
    }
    fn same_device(&self, _: &Self) -> bool {
        true
    }
    fn storage_dtype(s: &S) -> DType {
        s.dtype()
    }
    fn storage_len(s: &S) -> usize {
        s.len()
    }
    fn full(&self, len: usize, value: f64, dtype: DType) -> Result<S> {
        ew::full(len, value, dtype)
    }
    fn from_cpu(&self, data: &CpuStorage) -> Result<S> {
        Ok(data.clone())
    }
    fn to_cpu(&self, s: &S, l: &Layout) -> Result<CpuStorage> {
        ew::copy_contiguous(s, l)
    }
    fn copy_contiguous(&self, s: &S, l: &Layout) -> Result<S> {
        ew::copy_contiguous(s, l)
    }
    fn copy_into(&self, dst: &mut S, dl: &Layout, src: &S, sl: &Layout) -> Result<()> {
        ew::copy_into(dst, dl, src, sl)
    }
    fn cast(&self, s: &S, l: &Layout, dtype: DType) -> Result<S> {
        ew::cast(s, l, dtype)
    }
    fn unary(&self, op: UnaryOp, s: &S, l: &Layout) -> Result<S> {
        ew::unary(op, s, l)
    }
    fn binary(&self, op: BinaryOp, a: &S, la: &Layout, b: &S, lb: &Layout) -> Result<S> {
        ew::binary(op, a, la, b, lb)
    }
    fn cmp(&self, op: CmpOp, a: &S, la: &Layout, b: &S, lb: &Layout) -> Result<S> {
        ew::cmp(op, a, la, b, lb)
    }
    fn where_cond(&self, c: &S, lc: &Layout, t: &S, lt: &Layout, f: &S, lf: &Layout) -> Result<S> {
        ew::where_cond(c, lc, t, lt, f, lf)
    }
    fn reduce(&self, op: ReduceOp, s: &S, l: &Layout, axis: usize) -> Result<S> {
        reduce::reduce(op, s, l, axis)
    }
    fn cumsum(&self, s: &S, l: &Layout, axis: usize, exclusive: bool, reverse: bool) -> Result<S> {
        reduce::cumsum(s, l, axis, exclusive, reverse)
    }
    fn matmul(&self, a: &S, la: &Layout, b: &S, lb: &Layout) -> Result<S> {
        matmul::matmul(a, la, b, lb)
    }
    fn softmax_last(&self, s: &S, l: &Layout, log: bool) -> Result<S> {
        nn::softmax_last(s, l, log)
    }
    fn softmax_last_backward(&self, y: &S, dy: &S, shape: &Shape, log: bool) -> Result<S> {
        let n = shape.dims().last().copied().unwrap_or(1);
        nn::softmax_last_backward(y, dy, shape.elem_count(), n, log)
    }
    fn rms_norm(&self, x: &S, w: Option<&S>, rows: usize, n: usize, eps: f64) -> Result<(S, S)> {
        nn::rms_norm(x, w, rows, n, eps)
    }
    fn swiglu(&self, a: &S, b: &S, n: usize) -> Result<S> {
        nn::swiglu(a, b, n)
    }
    fn swiglu_backward(&self, a: &S, b: &S, g: &S, n: usize) -> Result<(S, S)> {
        nn::swiglu_backward(a, b, g, n)
    }
    fn swiglu_packed(&self, x: &S, rows: usize, h: usize) -> Result<S> {
        nn::swiglu_packed(x, rows, h)
    }
    fn swiglu_packed_backward(&self, x: &S, g: &S, rows: usize, h: usize) -> Result<S> {
        nn::swiglu_packed_backward(x, g, rows, h)
    }
    fn bias_silu(&self, x: &S, bias: &S, outer: usize, chans: usize, inner: usize) -> Result<S> {
        nn::bias_silu(x, bias, outer, chans, inner)
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
        nn::rms_norm_backward(x, w, rstd, dy, plus, rows, n)
    }
    fn layer_norm(&self, x: &S, w: Option<&S>, b: Option<&S>, rows: usize, n: usize, eps: f64) -> Result<(S, S, S)> {
        nn::layer_norm(x, w, b, rows, n, eps)
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
        nn::layer_norm_backward(x, w, mean, rstd, dy, rows, n)
    }
    fn cross_entropy(&self, logits: &S, t: &S, rows: usize, classes: usize, ignore: Option<u32>) -> Result<(S, S)> {
        nn::cross_entropy(logits, t, rows, classes, ignore)
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
        nn::cross_entropy_backward(logits, t, lse, dloss, rows, classes, ignore)
    }
    fn topk_last(&self, s: &S, l: &Layout, k: usize) -> Result<(S, S)> {
        nn::topk_last(s, l, k)
    }
    fn index_select(&self, s: &S, l: &Layout, axis: usize, ids: &S, li: &Layout) -> Result<S> {
        index::index_select(s, l, axis, ids, li)
    }
    fn index_add(&self, s: &S, ss: &Shape, axis: usize, ids: &S, li: &Layout, out: &Shape) -> Result<S> {
        index::index_add(s, ss, axis, ids, li, out)
    }
    fn gather(&self, s: &S, l: &Layout, axis: usize, ids: &S, li: &Layout) -> Result<S> {
        index::gather(s, l, axis, ids, li)
    }
    fn scatter_add(&self, b: &S, lb: &Layout, axis: usize, ids: &S, li: &Layout, s: &S, ls: &Layout) -> Result<S> {
        index::scatter_add(b, lb, axis, ids, li, s, ls)
    }
    fn concat(&self, parts: &[(&S, &Layout)], axis: usize) -> Result<S> {
        index::concat(parts, axis)
    }
    fn pad(&self, s: &S, l: &Layout, pads: &[(usize, usize)], value: f64) -> Result<S> {
        index::pad(s, l, pads, value)
    }
    fn conv2d(&self, x: &S, lx: &Layout, w: &S, lw: &Layout, p: &Conv2dParams) -> Result<S> {
        conv::conv2d(x, lx, w, lw, p)
    }
    fn conv2d_backward_input(
        &self,
        dy: &S,
        dys: &Shape,
        w: &S,
        lw: &Layout,
        xs: &Shape,
        p: &Conv2dParams,
    ) -> Result<S> {
        conv::conv2d_backward_input(dy, dys, w, lw, xs, p)
    }
    fn conv2d_backward_weight(
        &self,
        x: &S,
        lx: &Layout,
        dy: &S,
        dys: &Shape,
        ws: &Shape,
        p: &Conv2dParams,
    ) -> Result<S> {
        conv::conv2d_backward_weight(x, lx, dy, dys, ws, p)
    }
    fn max_pool2d(&self, x: &S, l: &Layout, p: &Pool2dParams) -> Result<(S, S)> {
        conv::max_pool2d(x, l, p)
    }
    fn max_pool2d_backward(&self, dy: &S, am: &S, dys: &Shape, xs: &Shape) -> Result<S> {
        conv::max_pool2d_backward(dy, am, dys, xs)
    }
    fn avg_pool2d(&self, x: &S, l: &Layout, p: &Pool2dParams) -> Result<S> {
        conv::avg_pool2d(x, l, p)
    }
    fn avg_pool2d_backward(&self, dy: &S, dys: &Shape, xs: &Shape, p: &Pool2dParams) -> Result<S> {
        conv::avg_pool2d_backward(dy, dys, xs, p)
    }
    fn upsample_nearest2d(&self, x: &S, l: &Layout, f: (usize, usize)) -> Result<S> {
        conv::upsample_nearest2d(x, l, f)
    }
    fn upsample_nearest2d_backward(&self, dy: &S, dys: &Shape, f: (usize, usize)) -> Result<S> {
        conv::upsample_nearest2d_backward(dy, dys, f)
    }
    fn adamw_update(&self, p: &S, g: &S, m: &S, v: &S, n: usize, step: &crate::op::AdamWStep) -> Result<(S, S, S)> {
        super::optim::adamw_update(p, g, m, v, n, step)
    }
    fn sum_squares_many(&self, xs: &[(&S, usize)]) -> Result<S> {
        super::optim::sum_squares_many(xs)
    }
    fn ela_forward(
        &self,
        q: &S,
        k: &S,
        v: &S,
        dims: &crate::ela::ElaDims,
        p: &crate::ela::ElaParams,
        state: Option<&mut crate::ela::ElaStateBufs<S>>,
    ) -> Result<S> {
        super::ela::forward(q, k, v, dims, p, state)
    }
    fn ela_backward(
        &self,
        q: &S,
        k: &S,
        v: &S,
        y: &S,
        dy: &S,
        dims: &crate::ela::ElaDims,
        p: &crate::ela::ElaParams,
        _saved: Option<&crate::ela::ElaSaved<S>>,
    ) -> Result<(S, S, S)> {
        // The CPU forward saves nothing: its backward recomputes the chunk states.
        super::ela::backward(q, k, v, y, dy, dims, p)
    }
    fn ela_step(
        &self,
        q: &S,
        k: &S,
        v: &S,
        dims: &crate::ela::ElaDims,
        kernel: crate::ela::ElaKernel,
        state: &mut crate::ela::ElaStateBufs<S>,
    ) -> Result<S> {
        super::ela::step(q, k, v, dims, kernel, state)
    }
}
