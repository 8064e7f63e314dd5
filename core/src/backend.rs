//! The `Backend` trait: the primitive kernels every device implements.
//!
//! A backend value is a *device handle* (the CPU backend is a unit struct; a CUDA backend holds
//! its context). Its `Storage` is an owned, dtype-tagged buffer. Every kernel reads its inputs
//! through a [`Layout`] (so transposed, narrowed and broadcast views need no copy) and returns a
//! fresh, contiguous output buffer. Shape checking happens in [`Tensor`](crate::Tensor) before a
//! kernel is called; kernels may assume consistent arguments and only report device failures.
//!
//! Conventions shared by all methods:
//! - "last axis" kernels (softmax, norms, cross-entropy, topk) operate along the innermost axis;
//!   the tensor layer moves other axes there first;
//! - index tensors are `U32`, masks are `U8`;
//! - f16/bf16 inputs are computed in f32 and rounded once on store.

use crate::cpu::CpuStorage;
use crate::dtype::DType;
use crate::error::Result;
use crate::layout::Layout;
use crate::op::{BinaryOp, CmpOp, Conv2dParams, Pool2dParams, ReduceOp, UnaryOp};
use crate::shape::Shape;

/// A device that can hold tensors and run the primitive op set.
pub trait Backend: Clone + Send + Sync + std::fmt::Debug + 'static {
    /// An owned buffer of elements of one dtype on this device.
    type Storage: Send + Sync + std::fmt::Debug + 'static;

    /// Human-readable device name, e.g. `cpu` or `cuda:0`.
    fn device_name(&self) -> String;
    /// Whether two handles denote the same device (operands must live on one device).
    fn same_device(&self, other: &Self) -> bool;
    /// Bytes this device can still hand out for new buffers, where the device itself keeps that
    /// count (a GPU: its free memory plus what the allocator holds cached for reuse). `None`
    /// (the default, and the CPU's answer) means "host memory": callers measure that themselves,
    /// as ela-models' up-front memory checks do.
    fn available_memory(&self) -> Option<u64> {
        None
    }
    /// The most bytes this device's tensors have held at once since it was opened, where the
    /// device keeps that count (a GPU's allocator does; `None` for host memory).
    fn peak_memory(&self) -> Option<u64> {
        None
    }
    /// True while the calling thread records this device's work into a graph instead of running
    /// it (a CUDA graph capture). Nothing recorded has run yet, so no value can be read back to
    /// the host: the tensor layer then skips its host-side checks of index values (the index
    /// kernels skip an out-of-range index rather than read out of bounds), and whoever feeds the
    /// captured graph checks its indices when writing them. `false` by default (the CPU).
    fn is_capturing(&self) -> bool {
        false
    }

    /// The dtype of a buffer.
    fn storage_dtype(storage: &Self::Storage) -> DType;
    /// Number of elements in a buffer.
    fn storage_len(storage: &Self::Storage) -> usize;

    // ---- creation and transfer ----
    /// A buffer of `len` copies of `value` (converted to `dtype`).
    fn full(&self, len: usize, value: f64, dtype: DType) -> Result<Self::Storage>;
    /// Upload host data.
    #[allow(clippy::wrong_self_convention)] // a device method: `self` is where the data goes
    fn from_cpu(&self, data: &CpuStorage) -> Result<Self::Storage>;
    /// Download the elements of `layout` (in logical row-major order) to the host.
    fn to_cpu(&self, src: &Self::Storage, layout: &Layout) -> Result<CpuStorage>;
    /// A contiguous copy of the view.
    fn copy_contiguous(&self, src: &Self::Storage, layout: &Layout) -> Result<Self::Storage>;
    /// Write the view `src_layout` of `src` into the view `dst_layout` of `dst`, in place (same
    /// shape and dtype, checked by the caller). The one op that mutates a buffer: the caller owns
    /// `dst` exclusively ([`crate::Tensor::write_slice`]), so no other tensor sees the change.
    fn copy_into(
        &self,
        dst: &mut Self::Storage,
        dst_layout: &Layout,
        src: &Self::Storage,
        src_layout: &Layout,
    ) -> Result<()>;
    /// A contiguous copy converted to `dtype`.
    fn cast(&self, src: &Self::Storage, layout: &Layout, dtype: DType) -> Result<Self::Storage>;
    /// The views `parts`, each converted to `dtype` as [`Backend::cast`] converts it (the same
    /// bits) and flattened, back to back in one new buffer: part `i` starts at the sum of the
    /// earlier parts' element counts. Mixed-precision training casts every weight at every step;
    /// this is that as one call ([`crate::Tensor::cast_concat`]). The default casts part by part
    /// and concatenates; a backend that can do it in one pass (CUDA: one launch for a few dozen
    /// contiguous parts) overrides it.
    fn cast_concat(&self, parts: &[(&Self::Storage, &Layout)], dtype: DType) -> Result<Self::Storage> {
        let casts: Vec<Self::Storage> = parts.iter().map(|&(s, l)| self.cast(s, l, dtype)).collect::<Result<_>>()?;
        let flat: Vec<Layout> =
            parts.iter().map(|(_, l)| Layout::contiguous(Shape::from(vec![l.elem_count()]))).collect();
        let views: Vec<(&Self::Storage, &Layout)> = casts.iter().zip(&flat).collect();
        self.concat(&views, 0)
    }

    // ---- elementwise ----
    /// `op(x)` for every element (float dtypes).
    fn unary(&self, op: UnaryOp, src: &Self::Storage, layout: &Layout) -> Result<Self::Storage>;
    /// `op(a, b)` elementwise; both layouts have the same shape (broadcast already applied).
    fn binary(
        &self,
        op: BinaryOp,
        lhs: &Self::Storage,
        lhs_layout: &Layout,
        rhs: &Self::Storage,
        rhs_layout: &Layout,
    ) -> Result<Self::Storage>;
    /// Elementwise comparison producing a `U8` mask; same-shape layouts.
    fn cmp(
        &self,
        op: CmpOp,
        lhs: &Self::Storage,
        lhs_layout: &Layout,
        rhs: &Self::Storage,
        rhs_layout: &Layout,
    ) -> Result<Self::Storage>;
    /// `cond ? on_true : on_false` elementwise; `cond` is `U8`; same-shape layouts.
    #[allow(clippy::too_many_arguments)]
    fn where_cond(
        &self,
        cond: &Self::Storage,
        cond_layout: &Layout,
        on_true: &Self::Storage,
        true_layout: &Layout,
        on_false: &Self::Storage,
        false_layout: &Layout,
    ) -> Result<Self::Storage>;

    // ---- reductions and scans ----
    /// Reduce along `axis`; the output has the input's shape without `axis`, contiguous.
    /// ArgMax/ArgMin produce `U32`.
    fn reduce(&self, op: ReduceOp, src: &Self::Storage, layout: &Layout, axis: usize) -> Result<Self::Storage>;
    /// Cumulative sum along `axis` (inclusive or exclusive, forward or reverse); same shape.
    fn cumsum(
        &self,
        src: &Self::Storage,
        layout: &Layout,
        axis: usize,
        exclusive: bool,
        reverse: bool,
    ) -> Result<Self::Storage>;

    // ---- matrix products ----
    /// Batched `lhs @ rhs`: layouts `[batch.., m, k]` and `[batch.., k, n]` with identical batch
    /// dims (broadcast batch dims have stride 0). Output contiguous `[batch.., m, n]`. Any
    /// strides are accepted for the matrix dims, so transposed operands need no copy.
    fn matmul(
        &self,
        lhs: &Self::Storage,
        lhs_layout: &Layout,
        rhs: &Self::Storage,
        rhs_layout: &Layout,
    ) -> Result<Self::Storage>;
    /// [`Backend::matmul`] of f16/bf16 operands (one dtype) whose result stays f32: the products
    /// accumulate in f32 (as in `matmul`) and are not rounded to the inputs' dtype. Mixed
    /// precision takes weight gradients this way (`Var::linear_mixed`). The default casts the
    /// operands to f32 (exact: every f16/bf16 value is an f32) and multiplies there.
    fn matmul_f32(
        &self,
        lhs: &Self::Storage,
        lhs_layout: &Layout,
        rhs: &Self::Storage,
        rhs_layout: &Layout,
    ) -> Result<Self::Storage> {
        let a = self.cast(lhs, lhs_layout, DType::F32)?;
        let b = self.cast(rhs, rhs_layout, DType::F32)?;
        let (la, lb) = (Layout::contiguous(lhs_layout.shape().clone()), Layout::contiguous(rhs_layout.shape().clone()));
        self.matmul(&a, &la, &b, &lb)
    }

    // ---- fused last-axis kernels ----
    /// softmax (or log_softmax when `log`) along the last axis.
    fn softmax_last(&self, src: &Self::Storage, layout: &Layout, log: bool) -> Result<Self::Storage>;
    /// Backward of [`Backend::softmax_last`] from its output `y` and upstream `dy` (contiguous,
    /// same shape): `dx = y * (dy - sum(dy*y))`, or for log: `dx = dy - exp(y) * sum(dy)`.
    fn softmax_last_backward(
        &self,
        y: &Self::Storage,
        dy: &Self::Storage,
        shape: &Shape,
        log: bool,
    ) -> Result<Self::Storage>;
    /// RMS norm over the last axis: `y = x * rstd * w`, `rstd = 1/sqrt(mean(x^2) + eps)`.
    /// Input contiguous `[rows, n]`; `weight` is `[n]` or absent. Returns `(y, rstd[rows] as f32)`.
    fn rms_norm(
        &self,
        x: &Self::Storage,
        weight: Option<&Self::Storage>,
        rows: usize,
        n: usize,
        eps: f64,
    ) -> Result<(Self::Storage, Self::Storage)>;
    /// `h = a + b` of two contiguous `[rows, n]` buffers of one float dtype and the RMS norm of
    /// `h` ([`Backend::rms_norm`]): `(h, y, rstd)`, a pre-norm block's residual sum and the norm
    /// that reads it. The result is bit for bit [`Backend::binary`]'s add followed by
    /// `rms_norm`, which is what this default does; a device may do both in one pass over the
    /// rows (reading `a` and `b`, writing `h` and `y`) instead of writing `h` and reading it back.
    fn add_rms_norm(
        &self,
        a: &Self::Storage,
        b: &Self::Storage,
        weight: Option<&Self::Storage>,
        rows: usize,
        n: usize,
        eps: f64,
    ) -> Result<(Self::Storage, Self::Storage, Self::Storage)> {
        let l = Layout::contiguous(rows * n);
        let h = self.binary(BinaryOp::Add, a, &l, b, &l)?;
        let (y, rstd) = self.rms_norm(&h, weight, rows, n, eps)?;
        Ok((h, y, rstd))
    }
    /// Backward of [`Backend::rms_norm`]: `(dx, dweight)` (dweight absent without weight). With
    /// `plus` (contiguous `[rows, n]` in `x`'s dtype: another gradient of `x`, e.g. from a
    /// residual branch), `dx` comes back with it added before its one rounding, which saves a
    /// separate addition over the rows.
    #[allow(clippy::too_many_arguments)]
    fn rms_norm_backward(
        &self,
        x: &Self::Storage,
        weight: Option<&Self::Storage>,
        rstd: &Self::Storage,
        dy: &Self::Storage,
        plus: Option<&Self::Storage>,
        rows: usize,
        n: usize,
    ) -> Result<(Self::Storage, Option<Self::Storage>)>;
    /// The SwiGLU gate `silu(a) * b` of two contiguous buffers of `n` elements of one float dtype
    /// (computed in f32, or f64 for f64, and rounded once).
    fn swiglu(&self, a: &Self::Storage, b: &Self::Storage, n: usize) -> Result<Self::Storage>;
    /// Backward of [`Backend::swiglu`] given the upstream gradient `g`:
    /// `(da, db) = (g * b * silu'(a), g * silu(a))`.
    fn swiglu_backward(
        &self,
        a: &Self::Storage,
        b: &Self::Storage,
        g: &Self::Storage,
        n: usize,
    ) -> Result<(Self::Storage, Self::Storage)>;
    /// The SwiGLU gate of a contiguous `[rows, 2h]` buffer holding the gate and up projections
    /// side by side in each row (`[gate | up]`, as one product with the two weights stacked makes
    /// them): `y[r, j] = silu(x[r, j]) * x[r, h + j]`, `[rows, h]`, with the element formulas of
    /// [`Backend::swiglu`] (so the same bits as it on the two halves).
    fn swiglu_packed(&self, x: &Self::Storage, rows: usize, h: usize) -> Result<Self::Storage>;
    /// Backward of [`Backend::swiglu_packed`] for the upstream gradient `g [rows, h]`: `dx [rows,
    /// 2h]` with `[d gate | d up]` in each row, the layout the stacked product's backward reads.
    fn swiglu_packed_backward(
        &self,
        x: &Self::Storage,
        g: &Self::Storage,
        rows: usize,
        h: usize,
    ) -> Result<Self::Storage>;
    /// `silu(x + bias[c])` of a contiguous `[outer, chans, inner]` buffer and a `[chans]` bias of
    /// the same float dtype (computed in f32, or f64 for f64, rounded once): a convolution's bias
    /// and activation in one pass over memory instead of two.
    fn bias_silu(
        &self,
        x: &Self::Storage,
        bias: &Self::Storage,
        outer: usize,
        chans: usize,
        inner: usize,
    ) -> Result<Self::Storage>;
    /// Layer norm over the last axis: `y = (x - mean) * rstd * w + b`. Contiguous `[rows, n]`.
    /// Returns `(y, mean[rows], rstd[rows])`, statistics in f32.
    #[allow(clippy::too_many_arguments)]
    fn layer_norm(
        &self,
        x: &Self::Storage,
        weight: Option<&Self::Storage>,
        bias: Option<&Self::Storage>,
        rows: usize,
        n: usize,
        eps: f64,
    ) -> Result<(Self::Storage, Self::Storage, Self::Storage)>;
    /// Backward of [`Backend::layer_norm`]: `(dx, dweight, dbias)`.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn layer_norm_backward(
        &self,
        x: &Self::Storage,
        weight: Option<&Self::Storage>,
        mean: &Self::Storage,
        rstd: &Self::Storage,
        dy: &Self::Storage,
        rows: usize,
        n: usize,
    ) -> Result<(Self::Storage, Option<Self::Storage>, Option<Self::Storage>)>;
    /// Cross-entropy of contiguous logits `[rows, classes]` against `U32` targets `[rows]`:
    /// returns `(loss[rows], lse[rows])` where `loss = lse - logit[target]`, and 0 for rows whose
    /// target equals `ignore_index`. Both outputs have the logits' dtype (f16/bf16: f32).
    fn cross_entropy(
        &self,
        logits: &Self::Storage,
        targets: &Self::Storage,
        rows: usize,
        classes: usize,
        ignore_index: Option<u32>,
    ) -> Result<(Self::Storage, Self::Storage)>;
    /// Backward of [`Backend::cross_entropy`]: `dlogits = dloss * (softmax(logits) - onehot)`,
    /// zero rows for ignored targets. `dloss` is `[rows]`.
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy_backward(
        &self,
        logits: &Self::Storage,
        targets: &Self::Storage,
        lse: &Self::Storage,
        dloss: &Self::Storage,
        rows: usize,
        classes: usize,
        ignore_index: Option<u32>,
    ) -> Result<Self::Storage>;
    /// The `k` largest elements of each last-axis row, sorted descending (ties: lower index
    /// first), and their `U32` indices. Outputs `[rows.., k]`.
    fn topk_last(&self, src: &Self::Storage, layout: &Layout, k: usize) -> Result<(Self::Storage, Self::Storage)>;

    // ---- indexing ----
    /// Select along `axis` the entries listed in the `U32` vector `ids`: output shape is the
    /// input's with `axis` replaced by `ids.len()`. Indices are checked by the caller.
    fn index_select(
        &self,
        src: &Self::Storage,
        layout: &Layout,
        axis: usize,
        ids: &Self::Storage,
        ids_layout: &Layout,
    ) -> Result<Self::Storage>;
    /// Adjoint of `index_select`: a zero tensor of `out_shape` into which each slice `i` of
    /// contiguous `src` is added at `ids[i]` along `axis`.
    fn index_add(
        &self,
        src: &Self::Storage,
        src_shape: &Shape,
        axis: usize,
        ids: &Self::Storage,
        ids_layout: &Layout,
        out_shape: &Shape,
    ) -> Result<Self::Storage>;
    /// numpy `take_along_axis`: `out[.., i, ..] = src[.., ids[.., i, ..], ..]` along `axis`;
    /// `ids` has the output's shape.
    fn gather(
        &self,
        src: &Self::Storage,
        layout: &Layout,
        axis: usize,
        ids: &Self::Storage,
        ids_layout: &Layout,
    ) -> Result<Self::Storage>;
    /// Adjoint of `gather`: `base` (copied) plus each `src` element added at the position `ids`
    /// names along `axis`. `ids` and `src` have the same shape.
    #[allow(clippy::too_many_arguments)]
    fn scatter_add(
        &self,
        base: &Self::Storage,
        base_layout: &Layout,
        axis: usize,
        ids: &Self::Storage,
        ids_layout: &Layout,
        src: &Self::Storage,
        src_layout: &Layout,
    ) -> Result<Self::Storage>;
    /// Concatenate views along `axis` (all other dims equal).
    fn concat(&self, parts: &[(&Self::Storage, &Layout)], axis: usize) -> Result<Self::Storage>;
    /// Constant padding: `pads[i] = (before, after)` for every axis.
    fn pad(&self, src: &Self::Storage, layout: &Layout, pads: &[(usize, usize)], value: f64) -> Result<Self::Storage>;

    // ---- convolution and pooling (NCHW) ----
    /// 2-D convolution, `x: [n, c, h, w]`, `w: [o, c/groups, kh, kw]` -> `[n, o, oh, ow]`.
    fn conv2d(
        &self,
        x: &Self::Storage,
        x_layout: &Layout,
        w: &Self::Storage,
        w_layout: &Layout,
        p: &Conv2dParams,
    ) -> Result<Self::Storage>;
    /// Gradient of conv2d w.r.t. its input, `dy` contiguous.
    fn conv2d_backward_input(
        &self,
        dy: &Self::Storage,
        dy_shape: &Shape,
        w: &Self::Storage,
        w_layout: &Layout,
        x_shape: &Shape,
        p: &Conv2dParams,
    ) -> Result<Self::Storage>;
    /// Gradient of conv2d w.r.t. its weight, `dy` contiguous.
    fn conv2d_backward_weight(
        &self,
        x: &Self::Storage,
        x_layout: &Layout,
        dy: &Self::Storage,
        dy_shape: &Shape,
        w_shape: &Shape,
        p: &Conv2dParams,
    ) -> Result<Self::Storage>;
    /// Max pooling; returns `(y, argmax)` where argmax holds the flat `h*w` index of the winner.
    fn max_pool2d(
        &self,
        x: &Self::Storage,
        layout: &Layout,
        p: &Pool2dParams,
    ) -> Result<(Self::Storage, Self::Storage)>;
    /// Backward of max pooling: routes `dy` to the recorded winners.
    fn max_pool2d_backward(
        &self,
        dy: &Self::Storage,
        argmax: &Self::Storage,
        dy_shape: &Shape,
        x_shape: &Shape,
    ) -> Result<Self::Storage>;
    /// Average pooling.
    fn avg_pool2d(&self, x: &Self::Storage, layout: &Layout, p: &Pool2dParams) -> Result<Self::Storage>;
    /// Backward of average pooling, `dy` contiguous.
    fn avg_pool2d_backward(
        &self,
        dy: &Self::Storage,
        dy_shape: &Shape,
        x_shape: &Shape,
        p: &Pool2dParams,
    ) -> Result<Self::Storage>;
    /// Nearest-neighbour upsampling by integer factors `(fh, fw)`.
    fn upsample_nearest2d(&self, x: &Self::Storage, layout: &Layout, factor: (usize, usize)) -> Result<Self::Storage>;
    /// Backward of nearest upsampling (sums each `fh x fw` block), `dy` contiguous.
    fn upsample_nearest2d_backward(
        &self,
        dy: &Self::Storage,
        dy_shape: &Shape,
        factor: (usize, usize),
    ) -> Result<Self::Storage>;
    // ---- optimizers ----
    /// One fused AdamW update ([`crate::AdamWStep`] has the formula) of `n` elements: `p`, `g`,
    /// `m`, `v` contiguous, one dtype, f32 or f64. Returns `(p', m', v')`. One pass over memory
    /// instead of a dozen elementwise ops per parameter.
    fn adamw_update(
        &self,
        p: &Self::Storage,
        g: &Self::Storage,
        m: &Self::Storage,
        v: &Self::Storage,
        n: usize,
        step: &crate::op::AdamWStep,
    ) -> Result<(Self::Storage, Self::Storage, Self::Storage)>;
    /// [`Backend::adamw_update`] of several parameters at once: `(p', m', v')` per entry, in
    /// order. The result is the same, bit for bit, as updating them one at a time; a backend
    /// that can do better than one launch per parameter (CUDA: a few launches for all of them)
    /// overrides this loop.
    fn adamw_update_many(
        &self,
        items: &[crate::op::AdamWOperands<'_, Self::Storage>],
    ) -> Result<Vec<crate::op::AdamWUpdated<Self::Storage>>> {
        items.iter().map(|it| self.adamw_update(it.p, it.g, it.m, it.v, it.n, &it.step)).collect()
    }
    /// The sum of the squares of every element of several contiguous float buffers (`(buffer,
    /// elements)` pairs, any float dtypes), squared and added in f64: one f64 element. The global
    /// gradient norm's sum, in a fixed order (the same bits from run to run).
    fn sum_squares_many(&self, xs: &[(&Self::Storage, usize)]) -> Result<Self::Storage>;
    // ---- exact linear attention (ELA): see crate::ela and docs/ela.md ----
    /// Fused chunked ELA. `q`, `k`: contiguous `[batch, heads, t, d]`, `v`: `[batch, heads, t, dv]`,
    /// one float dtype; returns `y` `[batch, heads, t, dv]` in that dtype. With `state` (causal
    /// only) the scan starts from that recurrent state and leaves the final one in it (prefill).
    fn ela_forward(
        &self,
        q: &Self::Storage,
        k: &Self::Storage,
        v: &Self::Storage,
        dims: &crate::ela::ElaDims,
        params: &crate::ela::ElaParams,
        state: Option<&mut crate::ela::ElaStateBufs<Self::Storage>>,
    ) -> Result<Self::Storage>;
    /// [`Backend::ela_forward`] from an empty state, also returning what the backend can reuse in
    /// [`Backend::ela_backward`] (`None`: nothing; the default). For training.
    fn ela_forward_saving(
        &self,
        q: &Self::Storage,
        k: &Self::Storage,
        v: &Self::Storage,
        dims: &crate::ela::ElaDims,
        params: &crate::ela::ElaParams,
    ) -> Result<crate::ela::ElaSavingOutput<Self::Storage>> {
        Ok((self.ela_forward(q, k, v, dims, params, None)?, None))
    }
    /// Backward of [`Backend::ela_forward`] (from an empty state) given its output `y` and the
    /// upstream gradient `dy` (contiguous, `v`'s shape): returns `(dq, dk, dv)`. `saved` is what
    /// [`Backend::ela_forward_saving`] returned for the same call (checked by the caller to match
    /// `dims` and `params`); a backend may ignore it and recompute.
    #[allow(clippy::too_many_arguments)]
    fn ela_backward(
        &self,
        q: &Self::Storage,
        k: &Self::Storage,
        v: &Self::Storage,
        y: &Self::Storage,
        dy: &Self::Storage,
        dims: &crate::ela::ElaDims,
        params: &crate::ela::ElaParams,
        saved: Option<&crate::ela::ElaSaved<Self::Storage>>,
    ) -> Result<(Self::Storage, Self::Storage, Self::Storage)>;
    /// Whether [`Backend::ela_forward_rows`] and [`Backend::ela_backward_rows`] take a call of
    /// this dtype, these sizes and options: operands in any [`ElaRows`](crate::ela::ElaRows)
    /// layout, read where they lie (16-byte aligned rows). The default, no: the tensor layer then
    /// copies strided operands into contiguous buffers and calls the contiguous entry points.
    fn ela_rows_supported(&self, dtype: DType, dims: &crate::ela::ElaDims, params: &crate::ela::ElaParams) -> bool {
        let _ = (dtype, dims, params);
        false
    }
    /// [`Backend::ela_forward_saving`] (with `save`; else the plain forward from an empty state)
    /// on operands given by their rows, making `y` with the rows `y_rows`
    /// ([`ElaRows::contiguous`](crate::ela::ElaRows::contiguous) or
    /// [`ElaRows::token_major`](crate::ela::ElaRows::token_major), offset 0). Only called where
    /// [`Backend::ela_rows_supported`] said yes.
    #[allow(clippy::too_many_arguments)]
    fn ela_forward_rows(
        &self,
        q: crate::ela::ElaArg<'_, Self::Storage>,
        k: crate::ela::ElaArg<'_, Self::Storage>,
        v: crate::ela::ElaArg<'_, Self::Storage>,
        y_rows: crate::ela::ElaRows,
        dims: &crate::ela::ElaDims,
        params: &crate::ela::ElaParams,
        save: bool,
    ) -> Result<crate::ela::ElaSavingOutput<Self::Storage>> {
        let _ = (q, k, v, y_rows, dims, params, save);
        Err(crate::Error::invalid(
            "ela_forward_rows",
            "this backend reads only contiguous ELA operands (ela_rows_supported is false)",
        ))
    }
    /// [`Backend::ela_backward`] on operands given by their rows (`y`, `dy`: `v`'s sizes). With
    /// `shared = None`, `dq`, `dk`, `dv` come back contiguous ([`ElaGrads::Separate`]); with
    /// `Some(len)` (the caller checked that `q`, `k`, `v` are disjoint views of one buffer of
    /// `len` elements) they come back in one new buffer of `len` elements, each where its input
    /// lies ([`ElaGrads::Shared`]; elements no input covers are left unwritten). Only called
    /// where [`Backend::ela_rows_supported`] said yes.
    ///
    /// [`ElaGrads::Separate`]: crate::ela::ElaGrads::Separate
    /// [`ElaGrads::Shared`]: crate::ela::ElaGrads::Shared
    #[allow(clippy::too_many_arguments)]
    fn ela_backward_rows(
        &self,
        q: crate::ela::ElaArg<'_, Self::Storage>,
        k: crate::ela::ElaArg<'_, Self::Storage>,
        v: crate::ela::ElaArg<'_, Self::Storage>,
        y: crate::ela::ElaArg<'_, Self::Storage>,
        dy: crate::ela::ElaArg<'_, Self::Storage>,
        dims: &crate::ela::ElaDims,
        params: &crate::ela::ElaParams,
        saved: Option<&crate::ela::ElaSaved<Self::Storage>>,
        shared: Option<usize>,
    ) -> Result<crate::ela::ElaGrads<Self::Storage>> {
        let _ = (q, k, v, y, dy, dims, params, saved, shared);
        Err(crate::Error::invalid(
            "ela_backward_rows",
            "this backend reads only contiguous ELA operands (ela_rows_supported is false)",
        ))
    }
    /// One recurrent ELA step for all `batch x heads` sequences: `q`, `k` `[batch, heads, d]`,
    /// `v` `[batch, heads, dv]` (`dims.t` is ignored); updates `state` in place and returns `y`
    /// `[batch, heads, dv]` in the inputs' dtype.
    fn ela_step(
        &self,
        q: &Self::Storage,
        k: &Self::Storage,
        v: &Self::Storage,
        dims: &crate::ela::ElaDims,
        kernel: crate::ela::ElaKernel,
        state: &mut crate::ela::ElaStateBufs<Self::Storage>,
    ) -> Result<Self::Storage>;
}
