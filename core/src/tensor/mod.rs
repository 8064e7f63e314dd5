//! [`Tensor`]: an n-dimensional array on some [`Backend`].
//!
//! A tensor is a shared, immutable storage buffer plus a [`Layout`] (shape, strides, offset); the
//! one in-place op, `write_slice`, refuses a buffer that another tensor shares.
//! Cloning is cheap (the buffer is reference-counted) and view operations return new layouts over
//! the same buffer. Every op checks its arguments and returns a typed [`Error`] naming the op and
//! the shapes involved; kernels run only on valid input.
//!
//! The op families live in sibling files: `view.rs` (reshape, transpose, narrow, ...),
//! `elementwise.rs`, `reduce.rs`, `matmul.rs`, `nn.rs` (softmax, norms, cross-entropy, topk),
//! `index.rs` (gather, scatter, concat, pad, ...), `conv.rs`, and `write.rs` (the one in-place op).

mod conv;
mod ela;
pub use ela::FusedElaState;
mod elementwise;
mod index;
mod matmul;
mod nn;
mod optim;
pub use optim::AdamWArgs;
mod reduce;
mod view;
mod write;

use std::sync::Arc;

use crate::backend::Backend;
use crate::cpu::storage::CpuElement;
use crate::cpu::CpuStorage;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::rng::Rng;
use crate::shape::Shape;

/// An n-dimensional array of one dtype on one device.
pub struct Tensor<B: Backend> {
    storage: Arc<B::Storage>,
    layout: Layout,
    dtype: DType,
    device: B,
}

impl<B: Backend> Clone for Tensor<B> {
    fn clone(&self) -> Self {
        Tensor {
            storage: self.storage.clone(),
            layout: self.layout.clone(),
            dtype: self.dtype,
            device: self.device.clone(),
        }
    }
}

impl<B: Backend> std::fmt::Debug for Tensor<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor[{}; {:?}; {}]", self.layout.shape(), self.dtype, self.device.device_name())
    }
}

/// `n` values of `draw` in a host vector reserved fallibly: the size comes from the caller, and an
/// infallible `Vec` would abort the process when it cannot be had.
fn host_samples(n: usize, op: &'static str, mut draw: impl FnMut() -> f64) -> Result<Vec<f64>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Error::OutOfMemory {
        op,
        what: format!("{n} host samples"),
        needed: (n as u64).saturating_mul(8),
        available: None,
        source: "",
    })?;
    v.extend((0..n).map(|_| draw()));
    Ok(v)
}

impl<B: Backend> Tensor<B> {
    // ------------------------------------------------------------ construction

    /// Wrap a fresh contiguous buffer of `shape` (used by op implementations and backends).
    pub fn from_storage(storage: B::Storage, shape: impl Into<Shape>, device: &B) -> Self {
        let shape = shape.into();
        let dtype = B::storage_dtype(&storage);
        debug_assert_eq!(B::storage_len(&storage), shape.elem_count());
        Tensor { storage: Arc::new(storage), layout: Layout::contiguous(shape), dtype, device: device.clone() }
    }

    /// A new view of this tensor's buffer under another layout.
    pub(crate) fn with_layout(&self, layout: Layout) -> Self {
        Tensor { storage: self.storage.clone(), layout, dtype: self.dtype, device: self.device.clone() }
    }

    /// A tensor from a vector in row-major order.
    pub fn from_vec<T: CpuElement>(data: Vec<T>, shape: impl Into<Shape>, device: &B) -> Result<Self> {
        let shape = shape.into();
        shape.check_size("from_vec")?;
        if data.len() != shape.elem_count() {
            return Err(Error::ElementCount { op: "from_vec", shape, got: data.len(), from: None });
        }
        let s = device.from_cpu(&T::wrap(data))?;
        Ok(Self::from_storage(s, shape, device))
    }

    /// A tensor copied from a slice in row-major order.
    pub fn from_slice<T: CpuElement>(data: &[T], shape: impl Into<Shape>, device: &B) -> Result<Self> {
        Self::from_vec(data.to_vec(), shape, device)
    }

    /// A tensor from host storage.
    pub fn from_cpu_storage(data: &CpuStorage, shape: impl Into<Shape>, device: &B) -> Result<Self> {
        let shape = shape.into();
        shape.check_size("from_cpu_storage")?;
        if data.len() != shape.elem_count() {
            return Err(Error::ElementCount { op: "from_cpu_storage", shape, got: data.len(), from: None });
        }
        Ok(Self::from_storage(device.from_cpu(data)?, shape, device))
    }

    /// A rank-0 tensor.
    pub fn scalar(value: f64, dtype: DType, device: &B) -> Result<Self> {
        Self::full(value, (), dtype, device)
    }

    /// A tensor filled with `value`.
    pub fn full(value: f64, shape: impl Into<Shape>, dtype: DType, device: &B) -> Result<Self> {
        let shape = shape.into();
        let n = shape.check_size("full")?;
        Ok(Self::from_storage(device.full(n, value, dtype)?, shape, device))
    }

    /// A tensor of zeros.
    pub fn zeros(shape: impl Into<Shape>, dtype: DType, device: &B) -> Result<Self> {
        Self::full(0.0, shape, dtype, device)
    }

    /// A tensor of ones.
    pub fn ones(shape: impl Into<Shape>, dtype: DType, device: &B) -> Result<Self> {
        Self::full(1.0, shape, dtype, device)
    }

    /// Zeros with this tensor's shape, dtype and device.
    pub fn zeros_like(&self) -> Result<Self> {
        Self::zeros(self.shape().clone(), self.dtype, &self.device)
    }

    /// Ones with this tensor's shape, dtype and device.
    pub fn ones_like(&self) -> Result<Self> {
        Self::ones(self.shape().clone(), self.dtype, &self.device)
    }

    /// `[start, start+1, .., end-1]` in `dtype`.
    pub fn arange(start: usize, end: usize, dtype: DType, device: &B) -> Result<Self> {
        let n = end.saturating_sub(start);
        let mut next = start;
        let v = host_samples(n, "arange", || {
            next += 1;
            (next - 1) as f64
        })?;
        Self::from_cpu_storage(&CpuStorage::from_f64_vec(&v, dtype)?, n, device)
    }

    /// Normal samples with the given mean and standard deviation, drawn on the host from `rng`
    /// (so a seed gives the same values on every device).
    pub fn randn(
        mean: f64,
        std: f64,
        shape: impl Into<Shape>,
        dtype: DType,
        rng: &mut Rng,
        device: &B,
    ) -> Result<Self> {
        let shape = shape.into();
        let n = shape.check_size("randn")?;
        let v = host_samples(n, "randn", || mean + std * rng.normal())?;
        Self::from_cpu_storage(&CpuStorage::from_f64_vec(&v, dtype)?, shape, device)
    }

    /// Uniform samples in `[lo, hi)`, drawn on the host from `rng`.
    pub fn rand_uniform(
        lo: f64,
        hi: f64,
        shape: impl Into<Shape>,
        dtype: DType,
        rng: &mut Rng,
        device: &B,
    ) -> Result<Self> {
        let shape = shape.into();
        let n = shape.check_size("rand_uniform")?;
        let v = host_samples(n, "rand_uniform", || lo + (hi - lo) * rng.uniform())?;
        Self::from_cpu_storage(&CpuStorage::from_f64_vec(&v, dtype)?, shape, device)
    }

    // ------------------------------------------------------------ accessors

    /// The shape.
    pub fn shape(&self) -> &Shape {
        self.layout.shape()
    }
    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        self.layout.dims()
    }
    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.layout.dims().len()
    }
    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.layout.elem_count()
    }
    /// The dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// The device handle.
    pub fn device(&self) -> &B {
        &self.device
    }
    /// The strided layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    /// The underlying buffer (may be shared with other views).
    pub fn storage(&self) -> &B::Storage {
        &self.storage
    }
    /// True when two tensors share one buffer.
    pub fn same_storage(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }
    /// Extent of one axis.
    pub fn dim<D: crate::shape::Dim>(&self, axis: D) -> Result<usize> {
        self.shape().dim(axis, "dim")
    }

    // ------------------------------------------------------------ reading back

    /// The elements in row-major order, as host storage.
    pub fn to_cpu_storage(&self) -> Result<CpuStorage> {
        self.device.to_cpu(&self.storage, &self.layout)
    }

    /// The elements in row-major order; `T` must match the dtype.
    pub fn to_vec<T: CpuElement>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype {
            return Err(Error::DTypeMismatch { op: "to_vec", lhs: self.dtype, rhs: T::DTYPE });
        }
        let s = self.to_cpu_storage()?;
        Ok(T::unwrap_ref(&s).expect("dtype checked above").to_vec())
    }

    /// The elements in row-major order converted to f64 (any dtype).
    pub fn to_vec_f64(&self) -> Result<Vec<f64>> {
        let s = self.to_cpu_storage()?;
        s.to_f64_vec(&Layout::contiguous(self.shape().clone()))
    }

    /// The single element of a one-element tensor, as f64.
    pub fn to_scalar(&self) -> Result<f64> {
        if self.elem_count() != 1 {
            return Err(Error::invalid(
                "to_scalar",
                format!("tensor of shape {} has {} elements, not 1", self.shape(), self.elem_count()),
            ));
        }
        Ok(self.to_vec_f64()?[0])
    }

    // ------------------------------------------------------------ conversion

    /// A contiguous copy converted to `dtype` (returns `self` when it already matches).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        if dtype == self.dtype {
            return Ok(self.clone());
        }
        let s = self.device.cast(&self.storage, &self.layout, dtype)?;
        Ok(Self::from_storage(s, self.shape().clone(), &self.device))
    }

    /// Every tensor of `parts` converted to `dtype` (each as [`Tensor::to_dtype`] converts it:
    /// the same bits), made as one buffer that holds them back to back, in order: the `i`-th
    /// result is a contiguous view of that buffer with `parts[i]`'s shape, starting where the
    /// previous one ends. Mixed-precision training casts all its weights at every step with
    /// this (one launch on CUDA instead of one per weight), and weights used as one stacked
    /// product (`[w_q; w_k; w_v]`) come out adjacent, so [`Tensor::concat`] of their casts is a
    /// view rather than a copy. The buffer lives while any of the views does. An empty list
    /// gives an empty list.
    pub fn cast_concat(parts: &[&Self], dtype: DType) -> Result<Vec<Self>> {
        const OP: &str = "cast_concat";
        let Some(first) = parts.first() else { return Ok(Vec::new()) };
        let mut total = 0usize;
        for p in parts {
            first.check_same_device(p, OP)?;
            total = total
                .checked_add(p.elem_count())
                .ok_or_else(|| Error::TooLarge { op: OP, shape: Shape::from(vec![usize::MAX]) })?;
        }
        let whole = Shape::from(vec![total]);
        whole.check_size(OP)?;
        let views: Vec<_> = parts.iter().map(|p| (p.storage(), p.layout())).collect();
        let s = first.device.cast_concat(&views, dtype)?;
        let buffer = Self::from_storage(s, whole, &first.device);
        let mut at = 0;
        Ok(parts
            .iter()
            .map(|p| {
                let l = Layout::contiguous(p.shape().clone());
                let view = buffer.with_layout(Layout::from_parts(p.shape().clone(), l.strides().to_vec(), at));
                at += p.elem_count();
                view
            })
            .collect())
    }

    /// A copy on another device (possibly of another backend type).
    pub fn to_device<B2: Backend>(&self, device: &B2) -> Result<Tensor<B2>> {
        let host = self.to_cpu_storage()?;
        Tensor::from_cpu_storage(&host, self.shape().clone(), device)
    }

    /// The same values in a buffer that holds exactly them, row-major from element 0 (returns
    /// `self` when that is already the case). After this call kernels may read `storage()`
    /// without a layout; a contiguous view that starts at an offset or covers only part of its
    /// buffer (a `narrow` of the leading axis, a piece of a `split`) is copied.
    pub fn contiguous(&self) -> Result<Self> {
        if self.is_exact_buffer() {
            return Ok(self.clone());
        }
        let s = self.device.copy_contiguous(&self.storage, &self.layout)?;
        Ok(Self::from_storage(s, self.shape().clone(), &self.device))
    }

    /// True when the storage holds exactly this tensor's elements in row-major order.
    pub fn is_exact_buffer(&self) -> bool {
        self.layout.is_contiguous() && self.layout.offset() == 0 && B::storage_len(&self.storage) == self.elem_count()
    }

    // ------------------------------------------------------------ argument checks

    pub(crate) fn check_same_device(&self, other: &Self, op: &'static str) -> Result<()> {
        if !self.device.same_device(&other.device) {
            return Err(Error::DeviceMismatch { op, lhs: self.device.device_name(), rhs: other.device.device_name() });
        }
        Ok(())
    }

    pub(crate) fn check_same_dtype(&self, other: &Self, op: &'static str) -> Result<()> {
        if self.dtype != other.dtype {
            return Err(Error::DTypeMismatch { op, lhs: self.dtype, rhs: other.dtype });
        }
        Ok(())
    }

    pub(crate) fn check_float(&self, op: &'static str) -> Result<()> {
        if !self.dtype.is_float() {
            return Err(Error::UnsupportedDType {
                op,
                dtype: self.dtype,
                expected: "a float dtype (f16, bf16, f32, f64)",
            });
        }
        Ok(())
    }

    pub(crate) fn check_dtype(&self, dtype: DType, op: &'static str, expected: &'static str) -> Result<()> {
        if self.dtype != dtype {
            return Err(Error::UnsupportedDType { op, dtype: self.dtype, expected });
        }
        Ok(())
    }

    /// Compare values with another tensor within `atol + rtol * |other|`, as f64 (for tests).
    pub fn all_close(&self, other: &Self, rtol: f64, atol: f64) -> Result<bool> {
        if self.shape() != other.shape() {
            return Err(Error::ShapeMismatch {
                op: "all_close",
                lhs: self.shape().clone(),
                rhs: other.shape().clone(),
                hint: "shapes must be equal".into(),
            });
        }
        let (a, b) = (self.to_vec_f64()?, other.to_vec_f64()?);
        Ok(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= atol + rtol * y.abs() || (x.is_nan() && y.is_nan())))
    }
}
