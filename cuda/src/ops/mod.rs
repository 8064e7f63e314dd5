//! The op families of the backend, one file each, mirroring the kernel files in `cuda/kernels/`
//! and the CPU backend's modules in `core/src/cpu/`.

pub(crate) mod conv;
pub(crate) mod ela;
pub(crate) mod elementwise;
pub(crate) mod index;
pub mod lm_decode;
pub(crate) mod matmul;
pub mod multi_tensor;
pub(crate) mod nn;
pub(crate) mod optim;
pub(crate) mod reduce;

use ela_core::{DType, Error, Result};

use crate::storage::CudaStorage;

/// Runs `f` with the thread-local `cell` set to `value`, restoring what it held when `f` returns
/// or unwinds: the per-thread overrides tests and benchmarks use (`ela::with_scan_runs`,
/// `ela::with_la_scan`, `nn::with_fused_add_rms`).
pub(crate) fn with_override<T: Copy + 'static, R>(
    cell: &'static std::thread::LocalKey<std::cell::Cell<T>>,
    value: T,
    f: impl FnOnce() -> R,
) -> R {
    struct Restore<T: Copy + 'static>(&'static std::thread::LocalKey<std::cell::Cell<T>>, T);
    impl<T: Copy + 'static> Drop for Restore<T> {
        fn drop(&mut self) {
            self.0.with(|c| c.set(self.1));
        }
    }
    let _restore = Restore(cell, cell.with(|c| c.replace(value)));
    f()
}

/// The kernel-name suffix of a dtype.
pub(crate) fn dt(d: DType) -> &'static str {
    match d {
        DType::U8 => "u8",
        DType::U32 => "u32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F32 => "f32",
        DType::F64 => "f64",
    }
}

/// The kernel-name suffix of kernels that only move elements of a dtype's width.
pub(crate) fn width(d: DType) -> &'static str {
    match d.size_in_bytes() {
        1 => "w1",
        2 => "w2",
        4 => "w4",
        _ => "w8",
    }
}

/// Errors unless `d` is a float dtype.
pub(crate) fn check_float(op: &'static str, d: DType) -> Result<()> {
    if d.is_float() {
        Ok(())
    } else {
        Err(Error::UnsupportedDType { op, dtype: d, expected: "a float dtype (f16, bf16, f32, f64)" })
    }
}

/// Errors unless both buffers have one dtype.
pub(crate) fn check_same(op: &'static str, a: &CudaStorage, b: &CudaStorage) -> Result<()> {
    if a.dtype() == b.dtype() {
        Ok(())
    } else {
        Err(Error::DTypeMismatch { op, lhs: a.dtype(), rhs: b.dtype() })
    }
}

/// The dtype of per-row statistics (rstd, mean, lse, losses): f64 for f64 data, else f32.
pub(crate) fn stat_dtype(d: DType) -> DType {
    if d == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}
