//! Device-side timing for benchmarks: CUDA events recorded on the device's stream, so the time
//! is the GPU's (launch gaps included, host work before the first launch excluded).

use cudarc::driver::{sys, CudaEvent};
use ela_core::Result;

use crate::device::Cuda;
use crate::error::driver_error;

/// A pair of timing events on one device's stream.
pub struct GpuTimer {
    dev: Cuda,
    start: CudaEvent,
    stop: CudaEvent,
}

impl GpuTimer {
    /// Two events of `dev` that record timestamps.
    pub fn new(dev: &Cuda) -> Result<GpuTimer> {
        let ev = || dev.inner.ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT));
        Ok(GpuTimer {
            dev: dev.clone(),
            start: ev().map_err(|e| driver_error("timer", e))?,
            stop: ev().map_err(|e| driver_error("timer", e))?,
        })
    }

    /// Device milliseconds taken by the work that `f` queues (waits for it to finish; errors of
    /// that work are reported).
    pub fn time<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
        self.dev.no_capture("GpuTimer::time")?;
        self.start.record(&self.dev.inner.stream).map_err(|e| driver_error("timer", e))?;
        let out = f()?;
        self.stop.record(&self.dev.inner.stream).map_err(|e| driver_error("timer", e))?;
        self.dev.synchronize()?;
        let ms = self.start.elapsed_ms(&self.stop).map_err(|e| driver_error("timer", e))?;
        Ok((out, ms as f64))
    }
}
