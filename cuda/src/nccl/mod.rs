//! [`NcclComm`]: NCCL collectives on CUDA tensors, the GPU transport of data-parallel training.
//!
//! Each communicator owns a CUDA stream of its own. A collective is ordered after the work
//! already queued on the device's compute stream by an event (the comm stream waits on it), runs
//! on the comm stream, and records a second event that the compute stream waits on when the
//! result is claimed ([`PendingTensor::wait`]). Between the two, compute queued later (the rest
//! of the backward pass) overlaps the communication. The input and output buffers are kept alive
//! until the compute stream has been ordered after the collective, so the caching allocator
//! cannot hand them out while NCCL still reads or writes them.
//!
//! libnccl is opened at run time (like libcuda): without it, [`NcclComm::unique_id`] and
//! [`NcclComm::new`] return [`Error::DeviceUnavailable`] saying so, never panic. A peer that
//! dies or hangs would leave NCCL's kernels spinning forever; a watchdog thread
//! (`watchdog.rs`) aborts the communicator (`ncclCommAbort`) when a collective is not finished
//! after the timeout or NCCL reports an asynchronous error, and then ends the process with a
//! message, as PyTorch's NCCL watchdog does.

mod watchdog;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::{CudaEvent, CudaStream};
use cudarc::nccl::result::{self as nr, NcclError};
use cudarc::nccl::sys as ns;
use ela_core::comm::host::{check_call, Collective};
use ela_core::{Backend, CommOp, Communicator, DType, Error, PendingTensor, Result, Tensor};

use crate::device::Cuda;
use crate::error::driver_error;
use crate::storage::CudaStorage;

/// The bytes of an NCCL unique id: rank 0 creates it ([`NcclComm::unique_id`]) and sends it to
/// every other rank (ela-models does that over its TCP rendezvous).
pub const NCCL_ID_BYTES: usize = 128;

/// How long a collective may take before the watchdog aborts the communicator, by default
/// (PyTorch's default NCCL timeout); `ELA_NCCL_TIMEOUT_S` overrides it in ela-models.
pub const DEFAULT_NCCL_TIMEOUT: Duration = Duration::from_secs(600);

/// One rank of an NCCL communicator on one GPU. Cheap to share by reference; collectives may be
/// called from one thread at a time (as on any CUDA stream, their order is the call order).
pub struct NcclComm {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    comm: ns::ncclComm_t,
    rank: usize,
    world: usize,
    dev: Cuda,
    /// The stream NCCL runs on (not the device's compute stream).
    stream: Arc<CudaStream>,
    /// Set once the watchdog (or [`NcclComm::abort`]) aborted the communicator: every later
    /// collective fails, and it is not destroyed a second time.
    aborted: AtomicBool,
    /// Why it was aborted.
    reason: std::sync::Mutex<Option<String>>,
    watch: watchdog::Watch,
}

// SAFETY: an ncclComm_t may be used from any thread (NCCL's own requirement is that calls on one
// communicator are not concurrent, which &self methods serialise through the single thread that
// drives training; ncclCommAbort is documented as callable from another thread).
unsafe impl Send for Inner {}
unsafe impl Sync for Inner {}

fn nccl_err(op: &'static str, e: NcclError) -> Error {
    Error::Distributed { op, msg: format!("NCCL returned {:?}; set NCCL_DEBUG=WARN for NCCL's own report", e.0) }
}

/// Whether libnccl can be opened, else the typed error saying how to get it.
fn check_library(op: &'static str) -> Result<()> {
    // SAFETY: only tries to dlopen candidate library names.
    if unsafe { ns::is_culib_present() } {
        return Ok(());
    }
    Err(Error::DeviceUnavailable {
        device: format!("nccl ({op})"),
        reason: format!(
            "the NCCL library was not found (tried {:?}); NCCL's own file name is libnccl.so.2, which is not among \
             those names, so link it as libnccl.so in a folder on LD_LIBRARY_PATH (`. benches/nccl_lib.sh` does \
             that), or install NCCL first (`pip install nvidia-nccl-cu12`, or the libnccl2 package); or train on one \
             GPU",
            crate::kernels::linux_candidates("nccl")
        ),
    })
}

/// Runs `f`, turning a panic inside cudarc (a symbol missing from an unexpectedly old library)
/// into a typed error.
fn no_panic<T>(op: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
        Err(Error::Distributed { op, msg: format!("inside cudarc's NCCL bindings: {}", msg.unwrap_or_default()) })
    })
}

fn nccl_dtype(op: &'static str, dtype: DType) -> Result<ns::ncclDataType_t> {
    use ns::ncclDataType_t as T;
    Ok(match dtype {
        DType::U8 => T::ncclUint8,
        DType::U32 => T::ncclUint32,
        DType::F16 => T::ncclFloat16,
        DType::BF16 => T::ncclBfloat16,
        DType::F32 => T::ncclFloat32,
        DType::F64 => T::ncclFloat64,
        #[allow(unreachable_patterns)] // DType is non_exhaustive
        other => return Err(Error::UnsupportedDType { op, dtype: other, expected: "u8, u32, f16, bf16, f32 or f64" }),
    })
}

fn nccl_op(op: CommOp) -> ns::ncclRedOp_t {
    match op {
        CommOp::Sum => ns::ncclRedOp_t::ncclSum,
        CommOp::Avg => ns::ncclRedOp_t::ncclAvg,
    }
}

impl NcclComm {
    /// NCCL's version as a number (e.g. 22703 for 2.27.3), or the error saying why NCCL cannot
    /// be used here.
    pub fn version() -> Result<i32> {
        check_library("nccl_version")?;
        no_panic("nccl_version", || nr::get_nccl_version().map_err(|e| nccl_err("nccl_version", e)))
    }

    /// A fresh unique id for a new communicator (rank 0 makes it; every rank passes the same
    /// one to [`NcclComm::new`]).
    pub fn unique_id() -> Result<[u8; NCCL_ID_BYTES]> {
        check_library("nccl_unique_id")?;
        let id = no_panic("nccl_unique_id", || nr::get_uniqueid().map_err(|e| nccl_err("nccl_unique_id", e)))?;
        Ok(id.internal.map(|c| c as u8))
    }

    /// Joins the communicator `id` as `rank` of `world`, on `dev` (one GPU per rank). Blocks until
    /// every rank has joined; if that takes longer than `timeout` (a peer died after the
    /// rendezvous) the process ends with a message. A collective not finished after `timeout`
    /// makes the watchdog abort the communicator and end the process.
    pub fn new(dev: &Cuda, rank: usize, world: usize, id: &[u8; NCCL_ID_BYTES], timeout: Duration) -> Result<NcclComm> {
        const OP: &str = "nccl_init";
        if world == 0 || rank >= world {
            return Err(Error::invalid(OP, format!("rank {rank} is not in a group of {world} ranks (0..{world})")));
        }
        check_library(OP)?;
        dev.bind(OP)?;
        let stream = dev.inner.ctx.new_stream().map_err(|e| driver_error(OP, e))?;
        let uid = ns::ncclUniqueId { internal: id.map(|b| b as ::core::ffi::c_char) };
        let guard = watchdog::deadline(format!("rank {rank} of {world}: ncclCommInitRank"), timeout);
        let comm = no_panic(OP, || {
            let mut comm: ns::ncclComm_t = std::ptr::null_mut();
            // SAFETY: `comm` is a valid out pointer; the device's context is current on this thread,
            // which is how NCCL picks the GPU.
            unsafe { nr::comm_init_rank(&mut comm, world as i32, uid, rank as i32) }.map_err(|e| nccl_err(OP, e))?;
            Ok(comm)
        })?;
        drop(guard);
        let inner = Arc::new(Inner {
            comm,
            rank,
            world,
            dev: dev.clone(),
            stream,
            aborted: AtomicBool::new(false),
            reason: std::sync::Mutex::new(None),
            watch: watchdog::Watch::new(timeout),
        });
        watchdog::spawn(Arc::downgrade(&inner));
        Ok(NcclComm { inner })
    }

    /// The device this rank runs on.
    pub fn device(&self) -> &Cuda {
        &self.inner.dev
    }

    /// Aborts the communicator (`ncclCommAbort`): NCCL's queued and running collectives stop, and
    /// every later call fails with `reason`. For shutting down after another rank failed.
    pub fn abort(&self, reason: &str) {
        self.inner.abort(reason)
    }

    fn check_alive(&self, op: &'static str) -> Result<()> {
        if !self.inner.aborted.load(Ordering::SeqCst) {
            return Ok(());
        }
        let why = self.inner.reason.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default();
        Err(Error::Distributed { op, msg: format!("the NCCL communicator was aborted: {why}") })
    }

    /// Queues one collective reading `x` and writing a new buffer of `out_len` elements shaped
    /// `out_dims`, ordered after the compute stream's work; `call(send, recv, stream)` is the NCCL
    /// call.
    fn enqueue(
        &self,
        coll: Collective,
        x: &Tensor<Cuda>,
        out_dims: Vec<usize>,
        call: impl FnOnce(
            *const std::ffi::c_void,
            *mut std::ffi::c_void,
            ns::cudaStream_t,
        ) -> std::result::Result<nr::NcclStatus, NcclError>,
    ) -> Result<PendingTensor<Cuda>> {
        let op = coll.name();
        self.check_alive(op)?;
        check_call(coll, x.dims(), self.inner.world)?;
        let dev = &self.inner.dev;
        if !dev.same_device(x.device()) {
            return Err(Error::DeviceMismatch { op, lhs: dev.device_name(), rhs: x.device().device_name() });
        }
        dev.no_capture(op)?;
        let out_len: usize = out_dims.iter().product();
        if x.elem_count() == 0 {
            // Nothing to exchange (every rank has the same shape, so every rank skips).
            return Ok(PendingTensor::ready(Tensor::zeros(out_dims, x.dtype(), dev)?));
        }
        // NCCL reads one dense buffer.
        let x = if x.is_exact_buffer() {
            x.clone()
        } else {
            Tensor::from_storage(dev.copy_contiguous(x.storage(), x.layout())?, x.shape().clone(), dev)
        };
        let out: CudaStorage = dev.alloc(x.dtype(), out_len)?;
        dev.bind(op)?;
        let compute = dev.inner.stream.clone();
        let ready = compute.record_event(None).map_err(|e| driver_error(op, e))?;
        self.inner.stream.wait(&ready).map_err(|e| driver_error(op, e))?;
        let send = x.storage().ptr() as *const std::ffi::c_void;
        let recv = out.ptr() as *mut std::ffi::c_void;
        no_panic(op, || {
            call(send, recv, self.inner.stream.cu_stream() as ns::cudaStream_t).map_err(|e| nccl_err(op, e))
        })?;
        let done = Arc::new(self.inner.stream.record_event(None).map_err(|e| driver_error(op, e))?);
        self.inner.watch.started(op, done.clone());
        let flight = InFlight { done, compute, input: Some(x), out: Some(out) };
        let dev = dev.clone();
        Ok(PendingTensor::new(move || {
            let mut flight = flight;
            flight.order_compute(op)?;
            let out = flight.out.take().expect("output buffer");
            Ok(Tensor::from_storage(out, out_dims, &dev))
        }))
    }
}

/// The buffers of a queued collective. Dropping it (claimed or not) first makes the compute
/// stream wait for the collective, so the allocator reuses neither buffer too early.
struct InFlight {
    done: Arc<CudaEvent>,
    compute: Arc<CudaStream>,
    input: Option<Tensor<Cuda>>,
    out: Option<CudaStorage>,
}

impl InFlight {
    fn order_compute(&mut self, op: &'static str) -> Result<()> {
        self.compute.wait(&self.done).map_err(|e| driver_error(op, e))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let _ = self.compute.wait(&self.done);
        self.input.take();
        self.out.take();
    }
}

impl Inner {
    pub(crate) fn abort(&self, reason: &str) {
        if self.aborted.swap(true, Ordering::SeqCst) {
            return;
        }
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_string());
        // SAFETY: a live communicator; abort may run while another thread is blocked on it.
        let _ = no_panic("nccl_abort", || {
            unsafe { nr::comm_abort(self.comm) }.map_err(|e| nccl_err("nccl_abort", e))?;
            Ok(())
        });
    }

    /// NCCL's asynchronous error of this communicator (a peer's connection lost, ...), if any.
    pub(crate) fn async_error(&self) -> Option<String> {
        if self.aborted.load(Ordering::SeqCst) {
            return None;
        }
        let mut state = ns::ncclResult_t::ncclSuccess;
        // SAFETY: a live communicator and a valid out pointer.
        let r = unsafe { ns::ncclCommGetAsyncError(self.comm, &mut state) };
        match (r, state) {
            (ns::ncclResult_t::ncclSuccess, ns::ncclResult_t::ncclSuccess) => None,
            #[allow(unreachable_patterns)]
            (ns::ncclResult_t::ncclSuccess, ns::ncclResult_t::ncclInProgress) => None,
            (ns::ncclResult_t::ncclSuccess, s) => {
                Some(format!("NCCL reported {s:?} (a peer died or its network failed)"))
            }
            (r, _) => Some(format!("ncclCommGetAsyncError failed: {r:?}")),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.aborted.load(Ordering::SeqCst) {
            let _ = self.stream.synchronize();
            // SAFETY: a live communicator that nothing uses any more.
            let _ = no_panic("nccl_destroy", || {
                unsafe { nr::comm_destroy(self.comm) }.map_err(|e| nccl_err("nccl_destroy", e))?;
                Ok(())
            });
        }
    }
}

impl Communicator<Cuda> for NcclComm {
    fn rank(&self) -> usize {
        self.inner.rank
    }
    fn world_size(&self) -> usize {
        self.inner.world
    }
    fn all_reduce_start(&self, x: &Tensor<Cuda>, op: CommOp) -> Result<PendingTensor<Cuda>> {
        let coll = Collective::AllReduce(op);
        let (n, dt) = (x.elem_count(), nccl_dtype(coll.name(), x.dtype())?);
        let comm = self.inner.comm;
        // SAFETY (all four): `send` and `recv` hold `n` (resp. the documented counts) elements of
        // `dt`, alive until the compute stream has waited for the collective (InFlight).
        self.enqueue(coll, x, x.dims().to_vec(), |s, r, st| unsafe {
            nr::all_reduce(s, r, n, dt, nccl_op(op), comm, st)
        })
    }
    fn broadcast(&self, x: &Tensor<Cuda>, root: usize) -> Result<Tensor<Cuda>> {
        let coll = Collective::Broadcast(root);
        let (n, dt) = (x.elem_count(), nccl_dtype(coll.name(), x.dtype())?);
        let comm = self.inner.comm;
        self.enqueue(coll, x, x.dims().to_vec(), |s, r, st| unsafe {
            nr::broadcast(s, r, n, dt, root as i32, comm, st)
        })?
        .wait()
    }
    fn all_gather(&self, x: &Tensor<Cuda>) -> Result<Tensor<Cuda>> {
        let coll = Collective::AllGather;
        let (n, dt) = (x.elem_count(), nccl_dtype(coll.name(), x.dtype())?);
        let mut dims = x.dims().to_vec();
        if let Some(d) = dims.first_mut() {
            *d *= self.inner.world;
        }
        let comm = self.inner.comm;
        self.enqueue(coll, x, dims, |s, r, st| unsafe { nr::all_gather(s, r, n, dt, comm, st) })?.wait()
    }
    fn reduce_scatter(&self, x: &Tensor<Cuda>, op: CommOp) -> Result<Tensor<Cuda>> {
        let coll = Collective::ReduceScatter(op);
        let dt = nccl_dtype(coll.name(), x.dtype())?;
        let mut dims = x.dims().to_vec();
        if let Some(d) = dims.first_mut() {
            *d /= self.inner.world;
        }
        let n: usize = dims.iter().product();
        let comm = self.inner.comm;
        self.enqueue(coll, x, dims, |s, r, st| unsafe { nr::reduce_scatter(s, r, n, dt, nccl_op(op), comm, st) })?
            .wait()
    }
}

impl std::fmt::Debug for NcclComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NcclComm(rank {} of {}, {:?})", self.inner.rank, self.inner.world, self.inner.dev)
    }
}
