//! Host buffers and the dtype dispatch used by every CPU kernel.

use crate::dtype::{DType, WithDType};
use crate::error::{Error, Result};
use crate::layout::Layout;
use half::{bf16, f16};
use std::borrow::Cow;

use super::alloc::collect;
use super::elementwise::map1;
use super::strided::gather;

/// A host buffer: one `Vec` per dtype.
#[derive(Clone, Debug, PartialEq)]
pub enum CpuStorage {
    /// u8 (masks)
    U8(Vec<u8>),
    /// u32 (indices)
    U32(Vec<u32>),
    /// f16 (storage)
    F16(Vec<f16>),
    /// bf16 (storage)
    BF16(Vec<bf16>),
    /// f32
    F32(Vec<f32>),
    /// f64
    F64(Vec<f64>),
}

/// Types that can be wrapped into / borrowed out of a [`CpuStorage`].
pub trait CpuElement: WithDType {
    /// Wrap a vector.
    fn wrap(v: Vec<Self>) -> CpuStorage;
    /// Borrow the vector when the dtype matches.
    fn unwrap_ref(s: &CpuStorage) -> Option<&[Self]>;
}

macro_rules! cpu_element {
    ($t:ty, $v:ident) => {
        impl CpuElement for $t {
            fn wrap(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$v(v)
            }
            fn unwrap_ref(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$v(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}
cpu_element!(u8, U8);
cpu_element!(u32, U32);
cpu_element!(f16, F16);
cpu_element!(bf16, BF16);
cpu_element!(f32, F32);
cpu_element!(f64, F64);

impl CpuStorage {
    /// The dtype of the buffer.
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::U8(_) => DType::U8,
            CpuStorage::U32(_) => DType::U32,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            CpuStorage::U8(v) => v.len(),
            CpuStorage::U32(v) => v.len(),
            CpuStorage::F16(v) => v.len(),
            CpuStorage::BF16(v) => v.len(),
            CpuStorage::F32(v) => v.len(),
            CpuStorage::F64(v) => v.len(),
        }
    }

    /// True when the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements of `layout`, in logical order, converted to f64.
    pub fn to_f64_vec(&self, layout: &Layout) -> Result<Vec<f64>> {
        fn conv<T: WithDType>(v: &[T], l: &Layout) -> Result<Vec<f64>> {
            map1(v, l, |x| x.as_f64())
        }
        match self {
            CpuStorage::U8(v) => conv(v, layout),
            CpuStorage::U32(v) => conv(v, layout),
            CpuStorage::F16(v) => conv(v, layout),
            CpuStorage::BF16(v) => conv(v, layout),
            CpuStorage::F32(v) => conv(v, layout),
            CpuStorage::F64(v) => conv(v, layout),
        }
    }

    /// A buffer of `dtype` from f64 values (rounding to the target type).
    pub fn from_f64_vec(v: &[f64], dtype: DType) -> Result<CpuStorage> {
        fn conv<T: CpuElement>(v: &[f64]) -> Result<CpuStorage> {
            Ok(T::wrap(collect(v.len(), v.iter().map(|&x| T::from_f64(x)))?))
        }
        match dtype {
            DType::U8 => conv::<u8>(v),
            DType::U32 => conv::<u32>(v),
            DType::F16 => conv::<f16>(v),
            DType::BF16 => conv::<bf16>(v),
            DType::F32 => conv::<f32>(v),
            DType::F64 => conv::<f64>(v),
        }
    }

    /// The `U32` elements of a view, or an error naming `op`.
    pub(crate) fn u32_view(&self, layout: &Layout, op: &'static str) -> Result<Vec<u32>> {
        match self {
            CpuStorage::U32(v) => gather(v, layout),
            s => Err(Error::UnsupportedDType { op, dtype: s.dtype(), expected: "u32 indices" }),
        }
    }
}

/// Widen a half-precision view to a contiguous f32 vector.
pub(crate) fn widen<T: WithDType>(v: &[T], layout: &Layout) -> Result<Vec<f32>> {
    map1(v, layout, |x| x.as_f64() as f32)
}

/// A float view as a contiguous vector of `T` (f32 or f64, matching the storage; f16/bf16 widen
/// to f32). Used by kernels that take several float inputs of one dtype.
pub(crate) enum FloatVec {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// A float view as a contiguous slice, borrowed or owned: see [`CpuStorage::float_cow`].
pub(crate) enum FloatCow<'a> {
    F32(Cow<'a, [f32]>),
    F64(Cow<'a, [f64]>),
}

impl CpuStorage {
    /// Contiguous compute copy of a float view (f16/bf16 widened to f32).
    pub(crate) fn float_vec(&self, layout: &Layout, op: &'static str) -> Result<FloatVec> {
        Ok(match self {
            CpuStorage::F32(v) => FloatVec::F32(gather(v, layout)?),
            CpuStorage::F64(v) => FloatVec::F64(gather(v, layout)?),
            CpuStorage::F16(v) => FloatVec::F32(widen(v, layout)?),
            CpuStorage::BF16(v) => FloatVec::F32(widen(v, layout)?),
            s => return Err(Error::UnsupportedDType { op, dtype: s.dtype(), expected: "a float dtype" }),
        })
    }

    /// Like [`CpuStorage::float_vec`], but borrows the buffer when the view already is a
    /// contiguous f32/f64 range (the common case of a fresh activation or weight), so kernels that
    /// only read their inputs skip a copy of them.
    pub(crate) fn float_cow(&self, layout: &Layout, op: &'static str) -> Result<FloatCow<'_>> {
        Ok(match (self, layout.contiguous_range()) {
            (CpuStorage::F32(v), Some(r)) => FloatCow::F32(Cow::Borrowed(&v[r])),
            (CpuStorage::F64(v), Some(r)) => FloatCow::F64(Cow::Borrowed(&v[r])),
            _ => match self.float_vec(layout, op)? {
                FloatVec::F32(v) => FloatCow::F32(Cow::Owned(v)),
                FloatVec::F64(v) => FloatCow::F64(Cow::Owned(v)),
            },
        })
    }

    /// Store a computed f32 result in `dtype` (f32, f16 or bf16).
    pub(crate) fn store_f32(v: Vec<f32>, dtype: DType) -> Result<CpuStorage> {
        Ok(match dtype {
            DType::F16 => CpuStorage::F16(collect(v.len(), v.into_iter().map(f16::from_f32))?),
            DType::BF16 => CpuStorage::BF16(collect(v.len(), v.into_iter().map(bf16::from_f32))?),
            _ => CpuStorage::F32(v),
        })
    }
}
