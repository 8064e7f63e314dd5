//! The caching device allocator.
//!
//! `cuMemAlloc`/`cuMemFree` are slow (they may synchronise the device) and a training step
//! allocates the same sizes every iteration. So freed buffers are not returned to the driver:
//! they go to a free list keyed by *size class* and the next request of that class reuses them.
//! In steady state a training step therefore makes no driver allocation at all, which
//! [`MemoryStats::device_allocs`] lets a test check.
//!
//! Size classes: requests are rounded up to a multiple of 512 bytes below 4 KiB, and above that
//! to one of four steps per power of two (`5/8, 6/8, 7/8, 8/8` of the next power), which wastes
//! at most 25% and keeps the number of classes small.
//!
//! Reuse is safe without events because all work of a device runs on one stream: a buffer that
//! is dropped (returned to the cache) and handed out again is only touched by kernels enqueued
//! after every earlier use. Memory goes back to the driver only on [`Allocator::empty_cache`] or
//! when an allocation fails, after a stream synchronisation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{result as dr, sys, CudaContext, CudaStream};
use ela_core::{Error, Result};

/// Device memory use of one CUDA device handle, in bytes (size-class rounded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes held by live buffers (tensors and temporaries).
    pub current_bytes: usize,
    /// Highest `current_bytes` seen since the device was opened or [`reset_peak`](crate::Cuda::reset_peak_memory).
    pub peak_bytes: usize,
    /// Bytes kept in the cache's free lists, ready for reuse.
    pub cached_bytes: usize,
    /// Number of `cuMemAlloc` calls made so far (grows only when the cache cannot serve a request).
    pub device_allocs: u64,
    /// Number of `cuMemFree` calls made so far.
    pub device_frees: u64,
    /// Requests served from the cache.
    pub cache_hits: u64,
}

struct State {
    free: HashMap<usize, Vec<sys::CUdeviceptr>>,
    stats: MemoryStats,
}

/// A size-class caching allocator over one CUDA context.
pub(crate) struct Allocator {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Allocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Allocator({:?})", self.stats())
    }
}

/// The size class (bytes actually reserved) of a request of `bytes > 0`.
pub(crate) fn size_class(bytes: usize) -> usize {
    if bytes <= 4096 {
        return bytes.div_ceil(512) * 512;
    }
    let p = bytes.next_power_of_two();
    let step = p / 8;
    bytes.div_ceil(step) * step
}

fn driver_err(op: &'static str, e: dr::DriverError) -> Error {
    crate::device::driver_error(op, e)
}

impl Allocator {
    pub(crate) fn new(ctx: Arc<CudaContext>, stream: Arc<CudaStream>) -> Self {
        Allocator { ctx, stream, state: Mutex::new(State { free: HashMap::new(), stats: MemoryStats::default() }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked mid-update of plain counters and
        // lists; the data is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A buffer of at least `bytes` bytes (uninitialised).
    pub(crate) fn alloc(self: &Arc<Self>, bytes: usize) -> Result<DeviceBuffer> {
        if bytes == 0 {
            return Ok(DeviceBuffer { ptr: 0, bytes: 0, alloc: self.clone() });
        }
        let class = size_class(bytes);
        {
            let mut st = self.lock();
            if let Some(ptr) = st.free.get_mut(&class).and_then(|v| v.pop()) {
                st.stats.cached_bytes -= class;
                st.stats.cache_hits += 1;
                st.stats.current_bytes += class;
                st.stats.peak_bytes = st.stats.peak_bytes.max(st.stats.current_bytes);
                return Ok(DeviceBuffer { ptr, bytes: class, alloc: self.clone() });
            }
        }
        self.ctx.bind_to_thread().map_err(|e| driver_err("alloc", e))?;
        let ptr = match unsafe { dr::malloc_sync(class) } {
            Ok(p) => p,
            Err(dr::DriverError(sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY)) => {
                // Give the cached blocks back to the driver and try once more.
                self.empty_cache()?;
                unsafe { dr::malloc_sync(class) }.map_err(|e| {
                    let s = self.stats();
                    Error::Backend {
                        backend: "cuda",
                        op: "alloc",
                        msg: format!(
                            "out of device memory allocating {bytes} bytes ({e:?}); {} bytes are held by \
                             live tensors on this device: free tensors or use smaller batches",
                            s.current_bytes
                        ),
                    }
                })?
            }
            Err(e) => return Err(driver_err("alloc", e)),
        };
        let mut st = self.lock();
        st.stats.device_allocs += 1;
        st.stats.current_bytes += class;
        st.stats.peak_bytes = st.stats.peak_bytes.max(st.stats.current_bytes);
        Ok(DeviceBuffer { ptr, bytes: class, alloc: self.clone() })
    }

    fn release(&self, ptr: sys::CUdeviceptr, class: usize) {
        let mut st = self.lock();
        st.stats.current_bytes -= class;
        st.stats.cached_bytes += class;
        st.free.entry(class).or_default().push(ptr);
    }

    /// Returns every cached block to the driver (after the stream has finished using them).
    pub(crate) fn empty_cache(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| driver_err("empty_cache", e))?;
        let blocks: Vec<(usize, Vec<sys::CUdeviceptr>)> = self.lock().free.drain().collect();
        self.ctx.bind_to_thread().map_err(|e| driver_err("empty_cache", e))?;
        let mut first_err = None;
        for (class, ptrs) in blocks {
            for p in ptrs {
                let r = unsafe { dr::free_sync(p) };
                let mut st = self.lock();
                st.stats.cached_bytes -= class;
                st.stats.device_frees += 1;
                if let Err(e) = r {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(driver_err("empty_cache", e)),
            None => Ok(()),
        }
    }

    pub(crate) fn stats(&self) -> MemoryStats {
        self.lock().stats
    }

    pub(crate) fn reset_peak(&self) {
        let mut st = self.lock();
        st.stats.peak_bytes = st.stats.current_bytes;
    }
}

/// An owned device allocation; dropping it returns the block to the cache.
pub(crate) struct DeviceBuffer {
    ptr: sys::CUdeviceptr,
    bytes: usize,
    alloc: Arc<Allocator>,
}

impl DeviceBuffer {
    /// The device address (0 for an empty buffer).
    pub(crate) fn ptr(&self) -> u64 {
        self.ptr
    }
    /// Bytes reserved (the size class).
    pub(crate) fn reserved(&self) -> usize {
        self.bytes
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.alloc.release(self.ptr, self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_cover_and_bound_waste() {
        for bytes in (1..20_000).chain([1 << 20, (1 << 20) + 1, 3 << 20, 1 << 30]) {
            let c = size_class(bytes);
            assert!(c >= bytes, "{bytes} -> {c}");
            assert_eq!(c % 512, 0, "{bytes} -> {c}: classes keep 512-byte alignment");
            if bytes > 4096 {
                assert!((c - bytes) * 4 <= bytes, "{bytes} -> {c} wastes more than 25%");
            }
        }
        assert_eq!(size_class(5000), size_class(5100), "nearby sizes share a class");
    }
}
