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
//!
//! **CUDA graphs** (`Cuda::capture`, `graph.rs`). A captured graph replays its kernels on fixed
//! addresses, so every block its work touches must stay out of everybody else's hands while the
//! graph exists. While a thread captures, the allocator gives that thread's requests blocks from
//! the capture's own pool first, then from the shared cache, then from `cuMemAlloc` (legal: the
//! capture runs in relaxed mode; a warm-up run of the same work beforehand fills the cache so
//! that none is needed), and tags each with the capture's [`GraphPool`]. Rules:
//! 1. a tagged block, when its buffer is dropped (during or after the capture), goes to its
//!    graph's pool, not to the shared cache, as long as the graph exists;
//! 2. any block dropped by the capturing thread during the capture (also one allocated before
//!    it: captured kernels may read it) goes to the capture's pool as well;
//! 3. the pool's blocks are reused only by the same capture; they return to the shared cache when
//!    the graph (its last handle) is dropped — later work is queued on the same stream as any
//!    replay, so reuse after that is ordered as usual;
//! 4. no `cuMemFree` while a capture is in progress (`empty_cache` refuses; the out-of-memory
//!    retry is skipped for the capturing thread).
//!
//! Buffers allocated before the capture and read by it (weights, the static input) are not
//! tracked: the caller keeps those tensors alive while replaying (as with PyTorch's graphs).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::thread::ThreadId;

use cudarc::driver::{result as dr, sys, CudaContext, CudaStream};
use ela_core::{Error, Result};

use crate::error::driver_error;

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
    /// Bytes of free blocks reserved by live CUDA graphs (their private pools), not reusable by
    /// other work until the graph is dropped.
    pub graph_pool_bytes: usize,
}

struct State {
    free: HashMap<usize, Vec<sys::CUdeviceptr>>,
    stats: MemoryStats,
    /// The capture in progress on this device: the capturing thread and its pool.
    capture: Option<(ThreadId, Arc<GraphPool>)>,
}

/// A size-class caching allocator over one CUDA context.
pub(crate) struct Allocator {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    state: Mutex<State>,
}

/// The private pool of one captured graph: free blocks that its replays still use (module docs,
/// rules 1-3). Dropping it (with the graph) returns them to the shared cache.
pub(crate) struct GraphPool {
    alloc: Arc<Allocator>,
    free: Mutex<Vec<(sys::CUdeviceptr, usize)>>,
}

impl GraphPool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(sys::CUdeviceptr, usize)>> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn take(&self, class: usize) -> Option<sys::CUdeviceptr> {
        let mut free = self.lock();
        let i = free.iter().position(|&(_, c)| c == class)?;
        Some(free.swap_remove(i).0)
    }
}

impl Drop for GraphPool {
    fn drop(&mut self) {
        let blocks = std::mem::take(&mut *self.lock());
        let mut st = self.alloc.lock();
        for (ptr, class) in blocks {
            st.stats.graph_pool_bytes -= class;
            st.stats.cached_bytes += class;
            st.free.entry(class).or_default().push(ptr);
        }
    }
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

impl Allocator {
    pub(crate) fn new(ctx: Arc<CudaContext>, stream: Arc<CudaStream>) -> Self {
        Allocator {
            ctx,
            stream,
            state: Mutex::new(State { free: HashMap::new(), stats: MemoryStats::default(), capture: None }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked mid-update of plain counters and
        // lists; the data is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A buffer of at least `bytes` bytes (uninitialised).
    pub(crate) fn alloc(self: &Arc<Self>, bytes: usize) -> Result<DeviceBuffer> {
        if bytes == 0 {
            return Ok(DeviceBuffer { ptr: 0, bytes: 0, alloc: self.clone(), pool: None });
        }
        let class = size_class(bytes);
        let pool = {
            let mut st = self.lock();
            let pool = st.capture.as_ref().filter(|(t, _)| *t == std::thread::current().id()).map(|(_, p)| p.clone());
            if let Some(ptr) = pool.as_ref().and_then(|p| p.take(class)) {
                st.stats.graph_pool_bytes -= class;
                st.stats.cache_hits += 1;
                st.stats.current_bytes += class;
                st.stats.peak_bytes = st.stats.peak_bytes.max(st.stats.current_bytes);
                return Ok(DeviceBuffer {
                    ptr,
                    bytes: class,
                    alloc: self.clone(),
                    pool: pool.map(|p| Arc::downgrade(&p)),
                });
            }
            if let Some(ptr) = st.free.get_mut(&class).and_then(|v| v.pop()) {
                st.stats.cached_bytes -= class;
                st.stats.cache_hits += 1;
                st.stats.current_bytes += class;
                st.stats.peak_bytes = st.stats.peak_bytes.max(st.stats.current_bytes);
                return Ok(DeviceBuffer {
                    ptr,
                    bytes: class,
                    alloc: self.clone(),
                    pool: pool.map(|p| Arc::downgrade(&p)),
                });
            }
            pool.map(|p| Arc::downgrade(&p))
        };
        self.ctx.bind_to_thread().map_err(|e| driver_error("alloc", e))?;
        let ptr = match unsafe { dr::malloc_sync(class) } {
            Ok(p) => p,
            Err(e @ dr::DriverError(sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY)) if self.lock().capture.is_some() => {
                // No cuMemFree while a graph is being captured (rule 4).
                return Err(Error::Backend {
                    backend: "cuda",
                    op: "alloc",
                    msg: format!(
                        "out of device memory allocating {bytes} bytes while a CUDA graph is being captured \
                         ({e:?}); the cache cannot be emptied during a capture: free memory before capturing"
                    ),
                });
            }
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
            Err(e) => return Err(driver_error("alloc", e)),
        };
        let mut st = self.lock();
        st.stats.device_allocs += 1;
        st.stats.current_bytes += class;
        st.stats.peak_bytes = st.stats.peak_bytes.max(st.stats.current_bytes);
        Ok(DeviceBuffer { ptr, bytes: class, alloc: self.clone(), pool })
    }

    fn release(&self, ptr: sys::CUdeviceptr, class: usize, pool: Option<&Weak<GraphPool>>) {
        // Rule 1: a block of a live graph goes back to that graph's pool; rule 2: so does any
        // block the capturing thread drops during its capture.
        let pool = pool.and_then(Weak::upgrade);
        let mut st = self.lock();
        st.stats.current_bytes -= class;
        let pool = pool
            .or_else(|| st.capture.as_ref().filter(|(t, _)| *t == std::thread::current().id()).map(|(_, p)| p.clone()));
        match &pool {
            Some(p) => {
                st.stats.graph_pool_bytes += class;
                p.lock().push((ptr, class));
            }
            None => {
                st.stats.cached_bytes += class;
                st.free.entry(class).or_default().push(ptr);
            }
        }
        // `pool` may be the last handle (its graph dropped meanwhile): its Drop takes the lock.
        drop(st);
        drop(pool);
    }

    /// Starts routing the calling thread's allocations through a new graph pool (module docs).
    /// Errors when a capture is already in progress on this device.
    pub(crate) fn begin_capture(self: &Arc<Self>) -> Result<Arc<GraphPool>> {
        let mut st = self.lock();
        if st.capture.is_some() {
            return Err(Error::Backend {
                backend: "cuda",
                op: "capture",
                msg: "another CUDA graph capture is in progress on this device (one at a time)".into(),
            });
        }
        let pool = Arc::new(GraphPool { alloc: self.clone(), free: Mutex::new(Vec::new()) });
        st.capture = Some((std::thread::current().id(), pool.clone()));
        Ok(pool)
    }

    /// Ends the capture started by [`Allocator::begin_capture`].
    pub(crate) fn end_capture(&self) {
        let cap = self.lock().capture.take();
        drop(cap);
    }

    /// Returns every cached block to the driver (after the stream has finished using them).
    /// Refused while a CUDA graph is being captured.
    pub(crate) fn empty_cache(&self) -> Result<()> {
        if self.lock().capture.is_some() {
            return Err(Error::Backend {
                backend: "cuda",
                op: "empty_cache",
                msg: "cannot free device memory while a CUDA graph is being captured".into(),
            });
        }
        self.stream.synchronize().map_err(|e| driver_error("empty_cache", e))?;
        let blocks: Vec<(usize, Vec<sys::CUdeviceptr>)> = self.lock().free.drain().collect();
        self.ctx.bind_to_thread().map_err(|e| driver_error("empty_cache", e))?;
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
            Some(e) => Err(driver_error("empty_cache", e)),
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

/// An owned device allocation; dropping it returns the block to the cache (or to the pool of the
/// CUDA graph that uses it).
pub(crate) struct DeviceBuffer {
    ptr: sys::CUdeviceptr,
    bytes: usize,
    alloc: Arc<Allocator>,
    /// The graph pool of a block allocated during a capture.
    pool: Option<Weak<GraphPool>>,
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
            self.alloc.release(self.ptr, self.bytes, self.pool.as_ref());
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
