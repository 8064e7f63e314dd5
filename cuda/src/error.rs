//! The typed errors the CUDA backend builds from driver failures, shared by the device handle, the
//! allocator, graphs, timers and the profiler. It depends on no other module of the crate, so
//! every module can use it without importing back from `device.rs`.

use cudarc::driver::result as dr;
use ela_core::Error;

/// Converts a driver error into a typed backend error naming the op.
pub(crate) fn driver_error(op: &'static str, e: dr::DriverError) -> Error {
    Error::Backend { backend: "cuda", op, msg: format!("CUDA driver error: {e:?}") }
}

/// The error for a GPU that cannot be used, saying why (`ordinal` names it).
pub(crate) fn unavailable(ordinal: usize, reason: impl Into<String>) -> Error {
    Error::DeviceUnavailable { device: format!("cuda:{ordinal}"), reason: reason.into() }
}
