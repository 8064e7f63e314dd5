//! CUDA graphs: record a fixed sequence of launches once ([`Cuda::capture`]) and
//! replay it with one driver call ([`CudaGraphExec::replay`]); plus in-place writes into an
//! existing tensor's buffer ([`Cuda::copy_into`], [`Cuda::write_from_host`]) so that new input
//! can be fed to a captured graph.
//!
//! Tiny models are launch-bound: a YOLO-LAT forward at batch 1 is ~100 kernels of a few
//! microseconds each, and issuing them one by one costs more host time than the GPU spends. A
//! replay issues all of them at once. Users: decoding (`ela_models::lm::GraphDecoder`), detector
//! inference, and whole training steps (`ela train --graph`, whose update writes the weights in
//! place: [`Cuda::adamw_in_place`]).
//!
//! How it works. The capturing thread's work goes to a second stream of the device in capture
//! mode (`cuStreamBeginCapture`, relaxed mode), so other threads keep using the device's stream
//! eagerly meanwhile; cuBLAS is switched to the capture stream for that thread's calls. Nothing
//! captured executes during the capture: the tensors the closure returns hold their values only
//! after the first replay. Replays run on the device's own stream, ordered with all other work
//! (copies into the input before, reads of the output after). Memory: see `alloc.rs` (rules
//! 1-4): blocks used by the capture stay reserved for the graph until it is dropped.
//!
//! Inside the closure every op that makes the host wait for the GPU (synchronize, `to_cpu` /
//! `to_vec` / `to_scalar`, uploads from the host, ops that read a result back such as
//! cross-entropy's target check, `empty_cache`, [`crate::GpuTimer`]) returns an error naming
//! the op, and the capture ends with that error (no hang, and the device stays usable).

use std::sync::Arc;

use cudarc::driver::{result as dr, sys, CudaStream};
use ela_core::cpu::storage::CpuElement;
use ela_core::{Error, Result, Tensor};

use crate::alloc::GraphPool;
use crate::device::Cuda;
use crate::error::driver_error;

/// A captured, instantiated CUDA graph of one device. Replay it with [`CudaGraphExec::replay`];
/// dropping it frees the graph and returns the memory reserved for it to the device's cache.
///
/// It replays on fixed device addresses: the tensors returned by the capture closure are its
/// outputs (overwritten by every replay), and every tensor the captured work reads that existed
/// before the capture (weights, the static input) must be kept alive while the graph is used.
pub struct CudaGraphExec {
    dev: Cuda,
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
    nodes: usize,
    /// Reserved blocks (alloc.rs, rules 1-3); dropped after the graph.
    _pool: Arc<GraphPool>,
}

// SAFETY: the graph handles are used by one thread at a time (`CudaGraphExec` is not `Sync`, and
// every use binds the device's context first); the driver allows using them from any thread.
unsafe impl Send for CudaGraphExec {}

impl std::fmt::Debug for CudaGraphExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaGraphExec({:?}, {} nodes)", self.dev, self.nodes)
    }
}

impl CudaGraphExec {
    /// Queues one run of the captured work on the device's stream (asynchronous, like any op:
    /// read the outputs with `to_vec` etc., which wait for it).
    pub fn replay(&self) -> Result<()> {
        self.dev.no_capture("CudaGraphExec::replay")?;
        self.dev.bind("replay")?;
        // SAFETY: a live executable graph of this device's context, launched on its stream.
        unsafe { dr::graph::launch(self.exec, self.dev.inner.stream.cu_stream()) }
            .map_err(|e| driver_error("replay", e))
    }

    /// The number of nodes (kernels, GEMMs, copies, memsets) in the graph.
    pub fn num_nodes(&self) -> usize {
        self.nodes
    }

    /// The device the graph runs on.
    pub fn device(&self) -> &Cuda {
        &self.dev
    }
}

impl Drop for CudaGraphExec {
    fn drop(&mut self) {
        // An executable graph still running is freed by the driver when it completes.
        let _ = self.dev.bind("drop graph");
        // SAFETY: handles created by `Cuda::capture`, destroyed once.
        unsafe {
            let _ = dr::graph::exec_destroy(self.exec);
            let _ = dr::graph::destroy(self.graph);
        }
    }
}

/// Ends the capture of the current thread's state even when the closure panics.
struct CaptureGuard<'a> {
    dev: &'a Cuda,
    stream: sys::CUstream,
    active: bool,
}

impl CaptureGuard<'_> {
    /// Ends the driver's capture and the allocator's; the captured graph, or `None` when the
    /// driver invalidated the capture (its error).
    fn finish(&mut self) -> std::result::Result<sys::CUgraph, dr::DriverError> {
        self.active = false;
        self.dev.set_capture_stream(None);
        let _ = self.dev.bind("capture");
        // SAFETY: the stream is in capture mode, started by this thread.
        let g = unsafe { dr::stream::end_capture(self.stream) };
        self.dev.inner.alloc.end_capture();
        g
    }
}

impl Drop for CaptureGuard<'_> {
    fn drop(&mut self) {
        if self.active {
            if let Ok(g) = self.finish() {
                if !g.is_null() {
                    // SAFETY: a graph returned by end_capture, destroyed once.
                    let _ = unsafe { dr::graph::destroy(g) };
                }
            }
        }
    }
}

fn capture_error(msg: String) -> Error {
    Error::Backend { backend: "cuda", op: "capture", msg }
}

impl Cuda {
    /// True while the calling thread is inside [`Cuda::capture`] on this device.
    pub fn is_capturing(&self) -> bool {
        self.capturing_stream().is_some()
    }

    pub(crate) fn capturing(&self) -> bool {
        self.is_capturing()
    }

    /// Errors when the calling thread is capturing a graph: `op` would make the host wait for the
    /// GPU, which a graph cannot record.
    pub(crate) fn no_capture(&self, op: &'static str) -> Result<()> {
        if self.capturing() {
            return Err(Error::Backend {
                backend: "cuda",
                op,
                msg: format!(
                    "`{op}` makes the host wait for the GPU (a synchronisation or a copy between host and \
                     device), which cannot be recorded in a CUDA graph: nothing captured has run yet. Move \
                     it out of the Cuda::capture closure (read outputs after a replay)"
                ),
            });
        }
        Ok(())
    }

    fn capture_stream(&self) -> Result<&Arc<CudaStream>> {
        if let Some(s) = self.inner.capture_stream.get() {
            return Ok(s);
        }
        let s = self.inner.ctx.new_stream().map_err(|e| driver_error("capture", e))?;
        Ok(self.inner.capture_stream.get_or_init(|| s))
    }

    /// Records the device work that `f` queues as a CUDA graph instead of running it, and
    /// returns the instantiated graph with `f`'s result (typically the output tensors, which
    /// hold their values after each [`CudaGraphExec::replay`]).
    ///
    /// Use: run the computation once eagerly on a fixed input tensor (warm-up: compiles the
    /// kernels, loads cuBLAS's, and fills the allocator's cache so the capture makes no
    /// `cuMemAlloc`); capture the same computation; then per request write new data into the
    /// input tensor ([`Cuda::copy_into`] / [`Cuda::write_from_host`]), `replay()`, and read the
    /// output. Shapes, dtypes and the sequence of ops are frozen at capture time.
    ///
    /// Errors: an op inside `f` that needs the host to wait for the GPU (module docs) fails
    /// with an error naming it, and `capture` returns `f`'s error; a nested capture or a
    /// second concurrent capture on the same device is refused. A panic in `f` ends the capture
    /// before it propagates.
    pub fn capture<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<(CudaGraphExec, T)> {
        if self.capturing() {
            return Err(capture_error("Cuda::capture called inside a capture of the same device".into()));
        }
        let stream = self.capture_stream()?.cu_stream();
        let pool = self.inner.alloc.begin_capture()?;
        self.bind("capture")?;
        // Relaxed: cuMemAlloc (a cache miss) and module loads stay legal in the capturing thread;
        // the operations that do conflict with a capture are refused by `no_capture` first.
        let mode = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED;
        // SAFETY: a live stream of this context, not capturing.
        if let Err(e) = unsafe { dr::stream::begin_capture(stream, mode) } {
            self.inner.alloc.end_capture();
            return Err(driver_error("capture", e));
        }
        self.set_capture_stream(Some(stream));
        let mut guard = CaptureGuard { dev: self, stream, active: true };
        let out = f();
        let graph = guard.finish();
        drop(guard);
        let out = match out {
            Ok(v) => v,
            Err(e) => {
                if let Ok(g) = graph {
                    if !g.is_null() {
                        // SAFETY: a graph returned by end_capture, destroyed once.
                        let _ = unsafe { dr::graph::destroy(g) };
                    }
                }
                return Err(e);
            }
        };
        let graph = match graph {
            Ok(g) if !g.is_null() => g,
            Ok(_) => return Err(capture_error("the driver returned no graph".into())),
            Err(e) => {
                return Err(capture_error(format!(
                    "the driver invalidated the capture ({e:?}): the closure did something a CUDA graph cannot \
                     record (e.g. a synchronisation through another API)"
                )))
            }
        };
        let mut n = 0usize;
        // SAFETY: a valid graph; a null node array asks for the count only.
        let _ = unsafe { sys::cuGraphGetNodes(graph, std::ptr::null_mut(), &mut n) };
        // SAFETY: a valid graph, instantiated once.
        let exec = match unsafe { dr::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0)) } {
            Ok(x) => x,
            Err(e) => {
                // SAFETY: as above.
                let _ = unsafe { dr::graph::destroy(graph) };
                return Err(driver_error("capture", e));
            }
        };
        let g = CudaGraphExec { dev: self.clone(), graph, exec, nodes: n, _pool: pool };
        // Moves the graph's setup to now rather than the first replay.
        // SAFETY: live executable graph and stream.
        unsafe { dr::graph::upload(g.exec, self.inner.stream.cu_stream()) }.map_err(|e| driver_error("capture", e))?;
        Ok((g, out))
    }

    /// Copies `src` into the elements of `dst` **in place** (same shape and dtype; `dst` must be a
    /// contiguous view, `src` any view). Queued on the stream like any op (no wait), and
    /// allowed inside a capture. Every tensor that shares `dst`'s buffer sees the new values:
    /// this is how new input reaches a captured graph.
    pub fn copy_into(&self, dst: &Tensor<Cuda>, src: &Tensor<Cuda>) -> Result<()> {
        const OP: &str = "copy_into";
        if dst.shape() != src.shape() {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: dst.shape().clone(),
                rhs: src.shape().clone(),
                hint: "copy_into needs equal shapes".into(),
            });
        }
        if dst.dtype() != src.dtype() {
            return Err(Error::DTypeMismatch { op: OP, lhs: dst.dtype(), rhs: src.dtype() });
        }
        let range = dst_range(dst, OP)?;
        let es = dst.dtype().size_in_bytes();
        match src.layout().contiguous_range() {
            Some(r) => self.copy_d2d(dst.storage().ptr_at(range.start), src.storage().ptr_at(r.start), r.len() * es),
            None => self.copy_strided(dst.storage(), dst.layout(), src.storage(), src.layout()),
        }
    }

    /// Uploads `data` (row-major, `dst`'s element count and dtype) into `dst`'s elements **in
    /// place** (`dst` contiguous); returns when the copy is done, so `data` may be reused.
    /// Not allowed inside a capture (it waits for the GPU).
    pub fn write_from_host<T: CpuElement>(&self, dst: &Tensor<Cuda>, data: &[T]) -> Result<()> {
        const OP: &str = "write_from_host";
        self.no_capture(OP)?;
        if T::DTYPE != dst.dtype() {
            return Err(Error::DTypeMismatch { op: OP, lhs: dst.dtype(), rhs: T::DTYPE });
        }
        if data.len() != dst.elem_count() {
            return Err(Error::ElementCount { op: OP, shape: dst.shape().clone(), got: data.len(), from: None });
        }
        let range = dst_range(dst, OP)?;
        if data.is_empty() {
            return Ok(());
        }
        self.bind(OP)?;
        // SAFETY: the destination range lies inside dst's live buffer; `data` outlives the copy
        // (synchronised below).
        unsafe { dr::memcpy_htod_async(dst.storage().ptr_at(range.start), data, self.cu_stream()) }
            .map_err(|e| driver_error(OP, e))?;
        self.synchronize()
    }
}

/// The element range of a contiguous destination view.
fn dst_range(dst: &Tensor<Cuda>, op: &'static str) -> Result<std::ops::Range<usize>> {
    dst.layout()
        .contiguous_range()
        .ok_or_else(|| Error::invalid(op, format!("the destination must be a contiguous view (shape {})", dst.shape())))
}
