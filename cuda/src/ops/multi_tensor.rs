//! Multi-tensor kernels: the AdamW update, the global gradient norm's sum of squares and the
//! casts of mixed precision's weight copies over many parameters in a few launches
//! (`adamw_list_*` and `cast_list_*` in `kernels/elementwise.cu`, `sumsq_list` and
//! `sum_parts_f64` in `kernels/reduce.cu`).
//!
//! A training step updates every parameter once and sums the squares of every gradient once. One
//! launch per tensor (plus the casts and additions around it) is a few hundred launches a step
//! for a small transformer, each a few microseconds of host time and most of them too small to
//! fill the GPU. Here each launch takes a list of up to a few dozen tensors in its parameter
//! block (a C struct by value: no upload, no synchronisation, and the launch can be recorded into
//! a CUDA graph); each block of the grid works on one fixed-size segment of one tensor.

use cudarc::driver::DeviceRepr;
use ela_core::{AdamWOperands, AdamWUpdated, DType, Error, Layout, Result, Shape, Tensor};

use crate::device::{Arg, Cfg, Cuda};
use crate::kernels::KernelFile::{Elementwise as EW, Reduce as RED};
use crate::ops::dt;
use crate::ops::elementwise::aligned16;
use crate::storage::CudaStorage;

/// Parameters per AdamW launch (`ADAMW_LIST_MAX` in elementwise.cu).
const ADAMW_LIST_MAX: usize = 32;
/// Elements per block of the AdamW launch (`ADAMW_LIST_SEG`).
const ADAMW_LIST_SEG: usize = 4096;
/// Buffers per sum-of-squares launch (`SUMSQ_LIST_MAX` in reduce.cu).
const SUMSQ_LIST_MAX: usize = 96;
/// Elements per block of the sum of squares (`SUMSQ_LIST_SEG`).
const SUMSQ_LIST_SEG: usize = 16384;
/// Casts per launch (`CAST_LIST_MAX` in elementwise.cu).
const CAST_LIST_MAX: usize = 96;
/// Elements per block of the casts (`CAST_LIST_SEG`; a multiple of the kernel's 8-element vector).
const CAST_LIST_SEG: usize = 8192;
/// Threads per block of the lists (the sum's order depends on it: it is fixed).
const LIST_THREADS: u32 = 256;
/// Threads of the block that adds the partial sums.
const PARTS_THREADS: u32 = 1024;

/// Mirror of `AdamWList` in elementwise.cu (same field order and sizes).
#[repr(C)]
#[derive(Clone, Copy)]
struct AdamWList {
    po: [u64; ADAMW_LIST_MAX],
    mo: [u64; ADAMW_LIST_MAX],
    vo: [u64; ADAMW_LIST_MAX],
    p: [u64; ADAMW_LIST_MAX],
    g: [u64; ADAMW_LIST_MAX],
    m: [u64; ADAMW_LIST_MAX],
    v: [u64; ADAMW_LIST_MAX],
    n: [i64; ADAMW_LIST_MAX],
    decay: [f64; ADAMW_LIST_MAX],
    step: [f64; ADAMW_LIST_MAX],
    inv_sqrt_bc2: [f64; ADAMW_LIST_MAX],
    b1: f64,
    b2: f64,
    eps: f64,
    first_block: [i32; ADAMW_LIST_MAX + 1],
    count: i32,
    pad: [i32; 2],
}
// SAFETY: plain old data with the C layout of the kernel's parameter.
unsafe impl DeviceRepr for AdamWList {}

/// Mirror of `SumSqList` in reduce.cu (same field order and sizes).
#[repr(C)]
#[derive(Clone, Copy)]
struct SumSqList {
    x: [u64; SUMSQ_LIST_MAX],
    n: [i64; SUMSQ_LIST_MAX],
    dtype: [i32; SUMSQ_LIST_MAX],
    first_block: [i32; SUMSQ_LIST_MAX + 1],
    count: i32,
    pad: [i32; 2],
}
// SAFETY: plain old data with the C layout of the kernel's parameter.
unsafe impl DeviceRepr for SumSqList {}

/// Mirror of `CastList` in elementwise.cu (same field order and sizes).
#[repr(C)]
#[derive(Clone, Copy)]
struct CastList {
    dst: [u64; CAST_LIST_MAX],
    src: [u64; CAST_LIST_MAX],
    n: [i64; CAST_LIST_MAX],
    vec: [i32; CAST_LIST_MAX],
    first_block: [i32; CAST_LIST_MAX + 1],
    count: i32,
    pad: [i32; 2],
}
// SAFETY: plain old data with the C layout of the kernel's parameter.
unsafe impl DeviceRepr for CastList {}

/// The blocks a buffer of `n` elements takes in segments of `seg`, as the kernels' `i32` block
/// index (an error past it: more than 2^31 segments).
fn blocks_of(op: &'static str, n: usize, seg: usize) -> Result<i32> {
    i32::try_from(n.div_ceil(seg))
        .map_err(|_| Error::invalid(op, format!("a buffer of {n} elements is too large for one launch")))
}

/// The launches of a multi-tensor op: the entries with elements (`blocks[i] > 0`), in order, cut
/// wherever `key` changes (what travels once per launch: a dtype, betas) and into groups of at
/// most `max` entries and `i32::MAX` blocks. Each launch is its key and its entries' indices.
fn launch_plan<K: PartialEq + Copy>(blocks: &[i32], max: usize, key: impl Fn(usize) -> K) -> Vec<(K, Vec<usize>)> {
    let mut plan: Vec<(K, Vec<usize>)> = Vec::new();
    let mut total = 0i64;
    for (i, &b) in blocks.iter().enumerate().filter(|&(_, &b)| b > 0) {
        let k = key(i);
        match plan.last_mut() {
            Some((lk, idx)) if *lk == k && idx.len() < max && total + b as i64 <= i32::MAX as i64 => idx.push(i),
            _ => {
                plan.push((k, vec![i]));
                total = 0;
            }
        }
        total += b as i64;
    }
    plan
}

/// One entry of an [`AdamWList`]: where it writes `p', m', v'` and reads `p, g, m, v`, its length,
/// and its per-entry scalars `(decay, step, inv_sqrt_bc2)` (the in-place kernel reads only
/// `decay`, as a flag).
struct AdamWEntry {
    out: [u64; 3],
    input: [u64; 4],
    n: usize,
    scalars: (f64, f64, f64),
}

/// The list of one launch (`entries` with their block counts) and its total block count.
fn adamw_list(
    (b1, b2, eps): (f64, f64, f64),
    entries: impl ExactSizeIterator<Item = (AdamWEntry, i32)>,
) -> (AdamWList, i32) {
    let mut l = AdamWList {
        po: [0; ADAMW_LIST_MAX],
        mo: [0; ADAMW_LIST_MAX],
        vo: [0; ADAMW_LIST_MAX],
        p: [0; ADAMW_LIST_MAX],
        g: [0; ADAMW_LIST_MAX],
        m: [0; ADAMW_LIST_MAX],
        v: [0; ADAMW_LIST_MAX],
        n: [0; ADAMW_LIST_MAX],
        decay: [0.0; ADAMW_LIST_MAX],
        step: [0.0; ADAMW_LIST_MAX],
        inv_sqrt_bc2: [0.0; ADAMW_LIST_MAX],
        b1,
        b2,
        eps,
        first_block: [0; ADAMW_LIST_MAX + 1],
        count: entries.len() as i32,
        pad: [0; 2],
    };
    let mut total = 0i32;
    for (j, (e, blocks)) in entries.enumerate() {
        [l.po[j], l.mo[j], l.vo[j]] = e.out;
        [l.p[j], l.g[j], l.m[j], l.v[j]] = e.input;
        l.n[j] = e.n as i64;
        (l.decay[j], l.step[j], l.inv_sqrt_bc2[j]) = e.scalars;
        l.first_block[j] = total;
        total += blocks;
    }
    l.first_block[l.count as usize] = total;
    (l, total)
}

/// One parameter of [`Cuda::adamw_in_place`]: its value, gradient and moments (f32 or f64 alike,
/// one shape, contiguous) and whether it takes weight decay.
#[derive(Clone, Copy, Debug)]
pub struct AdamWInPlace<'a> {
    /// The parameter, overwritten.
    pub p: &'a Tensor<Cuda>,
    /// Its gradient (before clipping).
    pub g: &'a Tensor<Cuda>,
    /// First moment, overwritten.
    pub m: &'a Tensor<Cuda>,
    /// Second moment, overwritten.
    pub v: &'a Tensor<Cuda>,
    /// Whether `p` decays by `lr * weight_decay` per step.
    pub weight_decay: bool,
}

impl Cuda {
    /// `Backend::adamw_update_many`: one launch per group of up to [`ADAMW_LIST_MAX`] parameters
    /// of one dtype (in the order given), the bits of [`Cuda::adamw_update_impl`].
    pub(crate) fn adamw_update_many_impl(
        &self,
        items: &[AdamWOperands<'_, CudaStorage>],
    ) -> Result<Vec<AdamWUpdated<CudaStorage>>> {
        const OP: &str = "adamw_update_many";
        let mut outs = Vec::with_capacity(items.len());
        let mut blocks = Vec::with_capacity(items.len());
        for (i, it) in items.iter().enumerate() {
            let d = it.p.dtype();
            if !matches!(d, DType::F32 | DType::F64) {
                return Err(Error::UnsupportedDType { op: OP, dtype: d, expected: "f32 or f64" });
            }
            for (what, x) in [("gradient", it.g), ("first moment", it.m), ("second moment", it.v), ("parameter", it.p)]
            {
                if x.dtype() != d || x.len() < it.n {
                    return Err(Error::invalid(
                        OP,
                        format!("entry {i}: the {what} buffer is {:?} x {}, need {d:?} x {}", x.dtype(), x.len(), it.n),
                    ));
                }
            }
            outs.push((self.alloc(d, it.n)?, self.alloc(d, it.n)?, self.alloc(d, it.n)?));
            blocks.push(blocks_of(OP, it.n, ADAMW_LIST_SEG)?);
        }
        // Betas and eps travel once per launch, with the dtype.
        let key = |i: usize| {
            let s = &items[i].step;
            (items[i].p.dtype(), s.beta1.to_bits(), s.beta2.to_bits(), s.eps.to_bits())
        };
        for ((d, ..), idx) in launch_plan(&blocks, ADAMW_LIST_MAX, key) {
            let s0 = &items[idx[0]].step;
            let entries = idx.iter().map(|&i| {
                let (it, (po, mo, vo)) = (&items[i], &outs[i]);
                let s = &it.step;
                let e = AdamWEntry {
                    out: [po.ptr(), mo.ptr(), vo.ptr()],
                    input: [it.p.ptr(), it.g.ptr(), it.m.ptr(), it.v.ptr()],
                    n: it.n,
                    // The scalars as adamw_update_impl passes them (the kernel casts them the same way).
                    scalars: (s.decay, s.lr / s.bc1, 1.0 / s.bc2.sqrt()),
                };
                (e, blocks[i])
            });
            let (l, total) = adamw_list((s0.beta1, s0.beta2, s0.eps), entries);
            let name = if d == DType::F64 { "adamw_list_f64" } else { "adamw_list_f32" };
            let cfg = Cfg { grid: total as u32, grid_y: 1, block: LIST_THREADS };
            self.launch_list(EW, name, cfg, &l, &[])?;
        }
        Ok(outs)
    }

    /// The AdamW update of a recorded training step, **in place**: every `p`, `m`, `v` of `items`
    /// is overwritten (and every tensor that shares their buffers sees the new values, as with
    /// [`Cuda::copy_into`]). The step's scalars are read from device memory when the kernels
    /// run, so a CUDA graph recorded once serves every step: `hyper` (f64, 5 elements) holds
    /// `[lr, 1 - beta1^t, 1 - beta2^t, weight_decay, max_norm]`, written by the host before each
    /// replay ([`Cuda::write_from_host`]), and `sumsq` (f64, 1 element) the gradients' sum of
    /// squares ([`Tensor::sum_squares_many`], computed earlier in the same recorded work). The
    /// gradients are clipped to `max_norm` by their global norm (PyTorch's rule; `max_norm` 0:
    /// no clipping); with clipping on, a non-finite norm leaves every parameter untouched.
    /// `beta1`, `beta2` and `eps` are fixed when the work is recorded. The result has the bits
    /// of `clip_grad_norm` followed by `adamw_update` per parameter (`kernels/elementwise.cu`,
    /// `adamw_list_dev_impl`).
    ///
    /// Errors: an entry whose tensors are not f32 or f64 alike, of one shape, contiguous (a
    /// view into a larger buffer is fine), or on another device; `hyper` or `sumsq` of the wrong
    /// size or dtype.
    pub fn adamw_in_place(
        &self,
        items: &[AdamWInPlace<'_>],
        (beta1, beta2, eps): (f64, f64, f64),
        hyper: &Tensor<Cuda>,
        sumsq: &Tensor<Cuda>,
    ) -> Result<()> {
        const OP: &str = "adamw_in_place";
        for (what, t, n) in [("hyper", hyper, 5), ("sumsq", sumsq, 1)] {
            if t.dtype() != DType::F64 || t.elem_count() != n || !t.is_exact_buffer() {
                return Err(Error::invalid(
                    OP,
                    format!("{what} must be a whole f64 buffer of {n} elements, got {:?} {}", t.dtype(), t.shape()),
                ));
            }
        }
        let mut blocks = Vec::with_capacity(items.len());
        for (i, it) in items.iter().enumerate() {
            let d = it.p.dtype();
            if !matches!(d, DType::F32 | DType::F64) {
                return Err(Error::UnsupportedDType { op: OP, dtype: d, expected: "f32 or f64 parameters" });
            }
            for (what, t) in [("parameter", it.p), ("gradient", it.g), ("first moment", it.m), ("second moment", it.v)]
            {
                let strided = t.layout().contiguous_range().is_none();
                if t.dtype() != d || t.shape() != it.p.shape() || strided {
                    return Err(Error::invalid(
                        OP,
                        format!(
                            "entry {i}: the {what} is {:?} {}{}, need a contiguous {d:?} tensor of shape {}",
                            t.dtype(),
                            t.shape(),
                            if strided { " (strided)" } else { "" },
                            it.p.shape()
                        ),
                    ));
                }
                if !ela_core::Backend::same_device(self, t.device()) {
                    return Err(Error::invalid(OP, format!("entry {i}: the {what} is on another device")));
                }
            }
            blocks.push(blocks_of(OP, it.p.elem_count(), ADAMW_LIST_SEG)?);
        }
        // The first element's address (a contiguous view may start inside its buffer).
        let ptr = |t: &Tensor<Cuda>| t.storage().ptr_at(t.layout().offset());
        for (d, idx) in launch_plan(&blocks, ADAMW_LIST_MAX, |i| items[i].p.dtype()) {
            let entries = idx.iter().map(|&i| {
                let it = &items[i];
                let e = AdamWEntry {
                    out: [ptr(it.p), ptr(it.m), ptr(it.v)],
                    input: [ptr(it.p), ptr(it.g), ptr(it.m), ptr(it.v)],
                    n: it.p.elem_count(),
                    scalars: (if it.weight_decay { 1.0 } else { 0.0 }, 0.0, 0.0),
                };
                (e, blocks[i])
            });
            let (l, total) = adamw_list((beta1, beta2, eps), entries);
            let name = if d == DType::F64 { "adamw_list_dev_f64" } else { "adamw_list_dev_f32" };
            let cfg = Cfg { grid: total as u32, grid_y: 1, block: LIST_THREADS };
            let args = [Arg::Ptr(hyper.storage().ptr()), Arg::Ptr(sumsq.storage().ptr())];
            self.launch_list(EW, name, cfg, &l, &args)?;
        }
        Ok(())
    }

    /// `Backend::sum_squares_many`: one `sumsq_list` launch per group of up to
    /// [`SUMSQ_LIST_MAX`] buffers into one array of per-block sums, then one block adds them.
    pub(crate) fn sum_squares_many_impl(&self, xs: &[(&CudaStorage, usize)]) -> Result<CudaStorage> {
        const OP: &str = "sum_squares_many";
        let mut blocks = Vec::with_capacity(xs.len());
        for (i, &(x, n)) in xs.iter().enumerate() {
            if !x.dtype().is_float() {
                return Err(Error::UnsupportedDType { op: OP, dtype: x.dtype(), expected: "a float dtype" });
            }
            if x.len() < n {
                return Err(Error::invalid(OP, format!("buffer {i} holds {} elements, need {n}", x.len())));
            }
            blocks.push(blocks_of(OP, n, SUMSQ_LIST_SEG)?);
        }
        let out = self.alloc(DType::F64, 1)?;
        let total: usize = blocks.iter().map(|&b| b as usize).sum();
        if total == 0 {
            self.memset_zero(out.ptr(), 8)?;
            return Ok(out);
        }
        let parts = self.alloc(DType::F64, total)?;
        let mut offset = 0usize;
        for ((), group) in launch_plan(&blocks, SUMSQ_LIST_MAX, |_| ()) {
            let mut l = SumSqList {
                x: [0; SUMSQ_LIST_MAX],
                n: [0; SUMSQ_LIST_MAX],
                dtype: [0; SUMSQ_LIST_MAX],
                first_block: [0; SUMSQ_LIST_MAX + 1],
                count: group.len() as i32,
                pad: [0; 2],
            };
            let mut sum = 0i32;
            for (j, &i) in group.iter().enumerate() {
                let (x, n) = xs[i];
                l.x[j] = x.ptr();
                l.n[j] = n as i64;
                l.dtype[j] = match x.dtype() {
                    DType::F32 => 0,
                    DType::F64 => 1,
                    DType::BF16 => 2,
                    _ => 3,
                };
                l.first_block[j] = sum;
                sum += blocks[i];
            }
            l.first_block[group.len()] = sum;
            let cfg = Cfg { grid: sum as u32, grid_y: 1, block: LIST_THREADS };
            self.launch_list(RED, "sumsq_list", cfg, &l, &[Arg::Ptr(parts.ptr() + 8 * offset as u64)])?;
            offset += sum as usize;
        }
        let cfg = Cfg { grid: 1, grid_y: 1, block: PARTS_THREADS };
        self.launch(RED, "sum_parts_f64", cfg, &[Arg::Ptr(out.ptr()), Arg::Ptr(parts.ptr()), Arg::n(total)])?;
        Ok(out)
    }
}

impl Cuda {
    /// `Backend::cast_concat`: the parts go back to back into one buffer of `dtype`, one
    /// `cast_list` launch per run of up to [`CAST_LIST_MAX`] parts of one source dtype. A part
    /// the list kernel cannot read (a strided view, or a dtype other than f32, f16 and bf16) is
    /// cast on its own first and copied in with the others: the bits are [`Cuda::cast_impl`]'s
    /// either way.
    pub(crate) fn cast_concat_impl(&self, parts: &[(&CudaStorage, &Layout)], dtype: DType) -> Result<CudaStorage> {
        const OP: &str = "cast_concat";
        let listed = |d: DType| matches!(d, DType::F32 | DType::F16 | DType::BF16);
        let total: usize = parts.iter().map(|(_, l)| l.elem_count()).sum();
        let out = self.alloc(dtype, total)?;
        if !listed(dtype) {
            // Other target dtypes: part by part, through the general cast and copy.
            let mut at = 0;
            for &(s, l) in parts {
                let n = l.elem_count();
                let c = self.cast_impl(s, l, dtype)?;
                let dst = Layout::from_parts(Shape::from(vec![n]), vec![1], at);
                self.copy_strided(&out, &dst, &c, &Layout::contiguous(Shape::from(vec![n])))?;
                at += n;
            }
            return Ok(out);
        }
        // Each part as (source pointer, dtype, elements, destination pointer); `temps` keeps the
        // separately cast parts alive until the launches are queued.
        let mut temps = Vec::new();
        let mut entries = Vec::with_capacity(parts.len());
        let mut at = 0usize;
        for &(s, l) in parts {
            let n = l.elem_count();
            let src = match l.contiguous_range() {
                Some(r) if listed(s.dtype()) => (s.ptr_at(r.start), s.dtype()),
                _ => {
                    let c = self.cast_impl(s, l, dtype)?;
                    let p = (c.ptr(), dtype);
                    temps.push(c);
                    p
                }
            };
            entries.push((src, n, out.ptr_at(at)));
            at += n;
        }
        let blocks: Vec<i32> =
            entries.iter().map(|&(_, n, _)| blocks_of(OP, n, CAST_LIST_SEG)).collect::<Result<_>>()?;
        for (from, group) in launch_plan(&blocks, CAST_LIST_MAX, |i| entries[i].0 .1) {
            let mut l = CastList {
                dst: [0; CAST_LIST_MAX],
                src: [0; CAST_LIST_MAX],
                n: [0; CAST_LIST_MAX],
                vec: [0; CAST_LIST_MAX],
                first_block: [0; CAST_LIST_MAX + 1],
                count: group.len() as i32,
                pad: [0; 2],
            };
            let mut sum = 0i32;
            for (j, &i) in group.iter().enumerate() {
                let ((src, _), n, dst) = entries[i];
                (l.dst[j], l.src[j], l.n[j]) = (dst, src, n as i64);
                // The kernel indexes 8-element vectors with 32 bits.
                l.vec[j] = (aligned16(&[src, dst]) && n / 8 <= u32::MAX as usize) as i32;
                l.first_block[j] = sum;
                sum += blocks[i];
            }
            l.first_block[group.len()] = sum;
            let cfg = Cfg { grid: sum as u32, grid_y: 1, block: LIST_THREADS };
            self.launch_list(EW, &format!("cast_list_{}_{}", dt(from), dt(dtype)), cfg, &l, &[])?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_fit_the_kernel_parameter_block() {
        // The C structs: 11 x 32 u64/f64 + 3 f64 + 33 + 1 + 2 i32 = 2984 bytes; 2 x 96 u64 +
        // 96 + 97 + 1 + 2 i32 = 2320 bytes; 3 x 96 u64/i64 + 96 + 97 + 1 + 2 i32 = 3088 bytes
        // (the parameter block holds 4 KiB).
        assert_eq!(std::mem::size_of::<AdamWList>(), 11 * 32 * 8 + 3 * 8 + 36 * 4);
        assert_eq!(std::mem::size_of::<SumSqList>(), 2 * 96 * 8 + 196 * 4);
        assert_eq!(std::mem::size_of::<CastList>(), 3 * 96 * 8 + 196 * 4);
    }

    #[test]
    fn launch_plans_cap_entries_and_blocks_and_split_at_key_changes() {
        let idx = |plan: Vec<((), Vec<usize>)>| plan.into_iter().map(|(_, i)| i).collect::<Vec<_>>();
        assert_eq!(idx(launch_plan(&[1, 2, 3], 2, |_| ())), vec![vec![0, 1], vec![2]]);
        assert!(launch_plan(&[], 4, |_| ()).is_empty());
        assert_eq!(idx(launch_plan(&[i32::MAX, 1, 1], 8, |_| ())), vec![vec![0], vec![1, 2]]);
        assert_eq!(idx(launch_plan(&[5; 7], 3, |_| ())), vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]]);
        // Empty entries take no launch; a new key starts a new launch.
        assert_eq!(idx(launch_plan(&[0, 4, 0, 4], 8, |_| ())), vec![vec![1, 3]]);
        let keyed = launch_plan(&[1, 1, 1, 1], 8, |i| i / 2 == 1);
        assert_eq!(keyed, vec![(false, vec![0, 1]), (true, vec![2, 3])]);
    }
}
