//! The [`Cuda`] device handle: opening a GPU (with typed errors when none is usable), the
//! per-process module cache, kernel launches, host transfers and the cuBLAS handle.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublas::{result as br, sys as bs};
use cudarc::driver::{result as dr, sys, CudaContext, CudaFunction, CudaModule, CudaStream, DeviceRepr};
use cudarc::nvrtc::Ptx;
use ela_core::{DType, Error, Result};

use crate::alloc::{Allocator, DeviceBuffer, MemoryStats};
use crate::error::{driver_error, unavailable};
use crate::kernels::{self, Image, KernelFile};
use crate::storage::CudaStorage;
use crate::strided::Desc;

/// A CUDA device. Cheap to clone: all handles to one ordinal share one context, stream, module
/// cache, cuBLAS handle and caching allocator for the whole process, so tensors created through
/// any of them can be mixed.
#[derive(Clone)]
pub struct Cuda {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) ordinal: usize,
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) name: String,
    pub(crate) cc: (i32, i32),
    /// The most dynamic shared memory one block may opt in to, bytes.
    pub(crate) smem_optin: u32,
    /// Streaming multiprocessors.
    pub(crate) sm_count: u32,
    pub(crate) arch: String,
    pub(crate) alloc: Arc<Allocator>,
    modules: Mutex<HashMap<KernelFile, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(KernelFile, String), CudaFunction>>,
    /// Resident blocks per multiprocessor by (file, kernel, threads, dynamic shared memory)
    /// ([`Cuda::resident_blocks`]): fixed per compiled kernel, asked per launch.
    occupancy: Mutex<HashMap<(KernelFile, String, u32, u32), u32>>,
    pub(crate) blas: Mutex<Blas>,
    pub(crate) tf32: AtomicBool,
    /// Direct depthwise conv kernels (true) or im2col + GEMM for every conv (benchmarks).
    pub(crate) direct_conv: AtomicBool,
    /// Direct kernel for convolutions with few input taps (C * kh * kw <= 27, groups 1).
    pub(crate) direct_small_conv: AtomicBool,
    /// Contiguous and per-channel fast paths of the elementwise maps (else always the general
    /// strided kernels; for benchmarks and tests).
    pub(crate) fast_elementwise: AtomicBool,
    /// The stream CUDA graphs are captured on (created on first capture).
    pub(crate) capture_stream: OnceLock<Arc<CudaStream>>,
    /// Per-kernel device times (`ELA_CUDA_KERNEL_STATS=1`), else `None`.
    pub(crate) stats: Option<crate::profile::KernelStats>,
    /// cuBLAS's workspace (set on the handle; kept alive with it).
    _blas_workspace: crate::alloc::DeviceBuffer,
}

thread_local! {
    /// The CUDA graph capture in progress on this thread: (device identity, capture stream). It
    /// lives here, not in graph.rs, because every launch asks it which stream to queue on.
    static CAPTURING: Cell<Option<(usize, usize)>> = const { Cell::new(None) };
}

/// Bytes of cuBLAS workspace (PyTorch's default on Hopper).
const BLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// The cuBLAS handle; used under the mutex only. It is bound to the device's stream, and to the
/// capture stream for the calls of a thread that captures a CUDA graph ([`Blas::on_stream`]).
pub(crate) struct Blas {
    pub(crate) handle: bs::cublasHandle_t,
    /// The stream the handle is bound to now.
    stream: sys::CUstream,
    /// The workspace (set again after every stream change: cublasSetStream resets it).
    workspace: (u64, usize),
}

impl Blas {
    /// Binds the handle to `stream` (no-op when it already is).
    pub(crate) fn on_stream(&mut self, stream: sys::CUstream) -> Result<()> {
        if stream == self.stream {
            return Ok(());
        }
        let err = |what: &str, st: bs::cublasStatus_t| Error::Backend {
            backend: "cuda",
            op: "matmul",
            msg: format!("cuBLAS refused {what}: {st:?}"),
        };
        // SAFETY: valid handle, stream and workspace (they live as long as the device).
        let st = unsafe { bs::cublasSetStream_v2(self.handle, stream as bs::cudaStream_t) };
        if st != bs::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Err(err("the stream", st));
        }
        self.stream = stream;
        let st = unsafe { bs::cublasSetWorkspace_v2(self.handle, self.workspace.0 as *mut c_void, self.workspace.1) };
        if st != bs::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Err(err("its workspace", st));
        }
        Ok(())
    }
}
// SAFETY: the handle is only used while holding its mutex, and cuBLAS handles may move between
// threads.
unsafe impl Send for Blas {}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cuda(cuda:{}, {}, sm_{}{})", self.inner.ordinal, self.inner.name, self.inner.cc.0, self.inner.cc.1)
    }
}

fn devices() -> &'static Mutex<HashMap<usize, Arc<Inner>>> {
    static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<Inner>>>> = OnceLock::new();
    DEVICES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Whether the CUDA driver library can be loaded, and how many GPUs it sees.
fn probe(ordinal: usize) -> Result<()> {
    // SAFETY: only tries to dlopen candidate library names.
    if !unsafe { sys::is_culib_present() } {
        return Err(unavailable(
            ordinal,
            format!(
                "the CUDA driver library was not found (tried {:?}): install the NVIDIA driver, or use \
                 the CPU backend",
                kernels::linux_candidates("cuda")
            ),
        ));
    }
    let count = CudaContext::device_count().map_err(|e| unavailable(ordinal, format!("cuInit failed: {e:?}")))?;
    if count <= 0 {
        return Err(unavailable(ordinal, "the CUDA driver sees no GPU (check nvidia-smi and CUDA_VISIBLE_DEVICES)"));
    }
    if ordinal >= count as usize {
        return Err(unavailable(ordinal, format!("only {count} CUDA device(s) are visible (ordinals 0..{count})")));
    }
    if !kernels::nvrtc_available() {
        return Err(kernels::nvrtc_missing());
    }
    // SAFETY: only tries to dlopen candidate library names.
    if !unsafe { bs::is_culib_present() } {
        return Err(unavailable(
            ordinal,
            format!(
                "the cuBLAS library was not found (tried {:?}): install the CUDA toolkit (or the \
                 nvidia-cublas package) and add its lib directory to LD_LIBRARY_PATH",
                kernels::linux_candidates("cublas")
            ),
        ));
    }
    Ok(())
}

fn open(ordinal: usize) -> Result<Inner> {
    probe(ordinal)?;
    let ctx = CudaContext::new(ordinal).map_err(|e| unavailable(ordinal, format!("creating a context: {e:?}")))?;
    let stream = ctx.new_stream().map_err(|e| unavailable(ordinal, format!("creating a stream: {e:?}")))?;
    let cc = ctx.compute_capability().map_err(|e| driver_error("open", e))?;
    let name = ctx.name().map_err(|e| driver_error("open", e))?;
    let smem_optin = ctx
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .map_err(|e| driver_error("open", e))?
        .max(0) as u32;
    let sm_count = ctx
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_err(|e| driver_error("open", e))?
        .max(1) as u32;
    let arch = kernels::pick_arch(cc.0 * 10 + cc.1)?;
    ctx.bind_to_thread().map_err(|e| driver_error("open", e))?;
    let handle =
        br::create_handle().map_err(|e| unavailable(ordinal, format!("cuBLAS could not be initialised: {e:?}")))?;
    // SAFETY: valid handle and stream; the stream outlives the handle (both live forever).
    unsafe { br::set_stream(handle, stream.cu_stream() as bs::cudaStream_t) }
        .map_err(|e| unavailable(ordinal, format!("cuBLAS could not use the stream: {e:?}")))?;
    let alloc = Arc::new(Allocator::new(ctx.clone(), stream.clone()));
    let cu_stream = stream.cu_stream();
    // cuBLAS gets a workspace of its own, from our allocator (as PyTorch gives its handles one),
    // instead of the library's default pool, so that its memory is counted like every other
    // buffer. (No speed difference was measured on an H200: the GEMM table and the LM step.)
    let blas_workspace = alloc.alloc(BLAS_WORKSPACE_BYTES)?;
    // SAFETY: valid handle; the buffer lives in `Inner` as long as the handle.
    let status = unsafe {
        bs::cublasSetWorkspace_v2(handle, blas_workspace.ptr() as *mut std::ffi::c_void, BLAS_WORKSPACE_BYTES)
    };
    if status != bs::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        return Err(unavailable(ordinal, format!("cuBLAS refused its workspace: {status:?}")));
    }
    Ok(Inner {
        ordinal,
        ctx,
        stream,
        name,
        cc,
        smem_optin,
        sm_count,
        arch,
        alloc,
        modules: Mutex::new(HashMap::new()),
        functions: Mutex::new(HashMap::new()),
        occupancy: Mutex::new(HashMap::new()),
        blas: Mutex::new(Blas { handle, stream: cu_stream, workspace: (blas_workspace.ptr(), BLAS_WORKSPACE_BYTES) }),
        tf32: AtomicBool::new(false),
        direct_conv: AtomicBool::new(true),
        direct_small_conv: AtomicBool::new(true),
        fast_elementwise: AtomicBool::new(true),
        capture_stream: OnceLock::new(),
        stats: crate::profile::KernelStats::from_env(),
        _blas_workspace: blas_workspace,
    })
}

/// The first CUDA device when one is usable, else the reason it is not (so callers can fall back
/// to the CPU and say why).
pub fn cuda_if_available() -> std::result::Result<Cuda, Error> {
    Cuda::new(0)
}

/// Shorthand: `Some(device 0)` or `None`, dropping the reason.
pub fn cuda_or_none() -> Option<Cuda> {
    Cuda::new(0).ok()
}

impl Cuda {
    /// Opens CUDA device `ordinal` (or returns the process-wide handle already open for it).
    /// A missing driver, NVRTC or cuBLAS library, no GPU, or a bad ordinal give
    /// [`Error::DeviceUnavailable`] with the reason; nothing panics.
    pub fn new(ordinal: usize) -> Result<Cuda> {
        let mut map = devices().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(inner) = map.get(&ordinal) {
            return Ok(Cuda { inner: inner.clone() });
        }
        // cudarc panics when a symbol is missing from an (unexpectedly old) library; keep that
        // from crossing our API as a panic.
        let inner = std::panic::catch_unwind(|| open(ordinal)).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(unavailable(ordinal, format!("initialisation failed inside cudarc: {msg}")))
        })?;
        let inner = Arc::new(inner);
        map.insert(ordinal, inner.clone());
        Ok(Cuda { inner })
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.inner.ordinal
    }
    /// The GPU's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> &str {
        &self.inner.name
    }
    /// Compute capability (major, minor).
    pub fn compute_capability(&self) -> (i32, i32) {
        self.inner.cc
    }
    /// The most dynamic shared memory a kernel block can opt in to on this GPU, bytes (227 KiB on
    /// Hopper): kernels whose tiles need more take another path.
    pub fn max_shared_memory_per_block(&self) -> u32 {
        self.inner.smem_optin
    }
    /// Streaming multiprocessors (132 on an H100 SXM or H200).
    pub fn sm_count(&self) -> u32 {
        self.inner.sm_count
    }
    /// The NVRTC target the kernels are compiled for (`sm_XY`, or `compute_XY` when NVRTC is older
    /// than the GPU).
    pub fn kernel_arch(&self) -> &str {
        &self.inner.arch
    }

    /// Lets f32 matrix products (matmul, conv2d) use TF32 tensor cores (10-bit mantissa inputs,
    /// f32 accumulation). Off by default: results then match f64 references to f32 rounding. The
    /// switch belongs to the device, so it affects every handle of this ordinal in the process
    /// (like PyTorch's `allow_tf32`). See README.md for the error measured with it on.
    pub fn set_allow_tf32(&self, allow: bool) {
        self.inner.tf32.store(allow, Ordering::Relaxed);
    }
    /// Whether TF32 is allowed for f32 matrix products.
    pub fn allow_tf32(&self) -> bool {
        self.inner.tf32.load(Ordering::Relaxed)
    }

    /// Whether convolutions use the direct kernels (the default: depthwise, and few input
    /// channels) rather than im2col + one GEMM per group. For benchmarks and tests that compare
    /// the two paths.
    #[doc(hidden)]
    pub fn set_direct_conv(&self, on: bool) {
        self.inner.direct_conv.store(on, Ordering::Relaxed);
        self.inner.direct_small_conv.store(on, Ordering::Relaxed);
    }
    pub(crate) fn direct_conv(&self) -> bool {
        self.inner.direct_conv.load(Ordering::Relaxed)
    }
    /// Only the direct kernel for convolutions with few input taps (`C * kh * kw <= 27`, groups
    /// 1: a stem conv) on or off; the depthwise switch is left as it is. For benchmarks.
    #[doc(hidden)]
    pub fn set_direct_small_conv(&self, on: bool) {
        self.inner.direct_small_conv.store(on, Ordering::Relaxed);
    }
    pub(crate) fn direct_small_conv(&self) -> bool {
        self.inner.direct_small_conv.load(Ordering::Relaxed)
    }
    /// Whether contiguous unary/binary maps and binary maps with a per-channel (or scalar)
    /// broadcast operand take the 32-bit, vectorised fast kernels (the default) rather than the
    /// general strided ones. For benchmarks and tests that compare the two paths.
    #[doc(hidden)]
    pub fn set_fast_elementwise(&self, on: bool) {
        self.inner.fast_elementwise.store(on, Ordering::Relaxed);
    }
    pub(crate) fn fast_elementwise(&self) -> bool {
        self.inner.fast_elementwise.load(Ordering::Relaxed)
    }

    /// Bytes new tensors can still get: the driver's free memory plus the buffers our caching
    /// allocator holds for reuse (freed tensors that were not returned to the driver).
    pub fn free_memory(&self) -> Result<u64> {
        self.bind("free_memory")?;
        let (free, _total) = self.inner.ctx.mem_get_info().map_err(|e| driver_error("free_memory", e))?;
        Ok(free as u64 + self.memory_stats().cached_bytes as u64)
    }

    /// Device memory used by tensors, cached for reuse, and the peak, in bytes.
    pub fn memory_stats(&self) -> MemoryStats {
        self.inner.alloc.stats()
    }
    /// Restarts peak tracking from the current use.
    pub fn reset_peak_memory(&self) {
        self.inner.alloc.reset_peak()
    }
    /// Returns every cached (unused) block to the driver.
    pub fn empty_cache(&self) -> Result<()> {
        self.inner.alloc.empty_cache()
    }
    /// Waits until all queued work on this device has finished; reports asynchronous kernel
    /// failures.
    /// Inside [`Cuda::capture`] it is an error (nothing captured runs before a replay).
    pub fn synchronize(&self) -> Result<()> {
        self.no_capture("synchronize")?;
        self.inner.stream.synchronize().map_err(|e| driver_error("synchronize", e))
    }

    // ------------------------------------------------------------ internals

    /// The capture stream when the calling thread is capturing a CUDA graph on this device
    /// (graph.rs sets it around `Cuda::capture`).
    pub(crate) fn capturing_stream(&self) -> Option<sys::CUstream> {
        CAPTURING.with(|c| match c.get() {
            Some((id, s)) if id == Arc::as_ptr(&self.inner) as usize => Some(s as sys::CUstream),
            _ => None,
        })
    }

    /// Sends the calling thread's work for this device to `stream` (a capture in progress), or
    /// back to the device's stream (`None`).
    pub(crate) fn set_capture_stream(&self, stream: Option<sys::CUstream>) {
        CAPTURING.with(|c| c.set(stream.map(|s| (Arc::as_ptr(&self.inner) as usize, s as usize))));
    }

    pub(crate) fn bind(&self, op: &'static str) -> Result<()> {
        self.inner.ctx.bind_to_thread().map_err(|e| driver_error(op, e))
    }

    /// The stream work is queued on: the device's stream, or the capture stream for the thread
    /// that is capturing a CUDA graph of this device.
    pub(crate) fn cu_stream(&self) -> sys::CUstream {
        match self.capturing_stream() {
            Some(s) => s,
            None => self.inner.stream.cu_stream(),
        }
    }

    /// An uninitialised buffer of `len` elements of `dtype`.
    pub(crate) fn alloc(&self, dtype: DType, len: usize) -> Result<CudaStorage> {
        let buf = self.inner.alloc.alloc(len * dtype.size_in_bytes())?;
        Ok(CudaStorage::new(buf, dtype, len))
    }

    /// A zero-filled buffer.
    pub(crate) fn zeros(&self, dtype: DType, len: usize) -> Result<CudaStorage> {
        let s = self.alloc(dtype, len)?;
        self.memset_zero(s.ptr(), len * dtype.size_in_bytes())?;
        Ok(s)
    }

    pub(crate) fn memset_zero(&self, ptr: u64, bytes: usize) -> Result<()> {
        self.memset_byte(ptr, 0, bytes)
    }

    /// Sets `bytes` bytes at `ptr` to `value` (stream-ordered).
    pub(crate) fn memset_byte(&self, ptr: u64, value: u8, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.bind("memset")?;
        unsafe { dr::memset_d8_async(ptr, value, bytes, self.cu_stream()) }.map_err(|e| driver_error("memset", e))
    }

    /// Uploads a host slice into a fresh buffer (waits for the copy: the slice may be freed next).
    pub(crate) fn upload<T>(&self, data: &[T], dtype: DType) -> Result<CudaStorage> {
        self.no_capture("from_cpu")?;
        let s = self.alloc(dtype, data.len())?;
        if !data.is_empty() {
            self.bind("from_cpu")?;
            unsafe { dr::memcpy_htod_async(s.ptr(), data, self.cu_stream()) }
                .map_err(|e| driver_error("from_cpu", e))?;
            self.synchronize()?;
        }
        Ok(s)
    }

    /// Downloads `out.len()` elements starting at byte address `ptr`.
    pub(crate) fn download<T>(&self, ptr: u64, out: &mut [T]) -> Result<()> {
        self.no_capture("to_cpu")?;
        if out.is_empty() {
            return Ok(());
        }
        self.bind("to_cpu")?;
        unsafe { dr::memcpy_dtoh_async(out, ptr, self.cu_stream()) }.map_err(|e| driver_error("to_cpu", e))?;
        self.synchronize()
    }

    pub(crate) fn copy_d2d(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.bind("copy")?;
        unsafe { dr::memcpy_dtod_async(dst, src, bytes, self.cu_stream()) }.map_err(|e| driver_error("copy", e))
    }

    /// A scratch device buffer (not a tensor), e.g. for partial sums.
    pub(crate) fn scratch(&self, bytes: usize) -> Result<DeviceBuffer> {
        self.inner.alloc.alloc(bytes)
    }

    /// The kernel `name` of `file`, compiling and loading the file on first use.
    pub(crate) fn function(&self, file: KernelFile, name: &str) -> Result<CudaFunction> {
        let key = (file, name.to_string());
        if let Some(f) = self.inner.functions.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(f.clone());
        }
        let module = {
            let mut mods = self.inner.modules.lock().unwrap_or_else(|p| p.into_inner());
            match mods.get(&file) {
                Some(m) => m.clone(),
                None => {
                    let ptx = match kernels::compile(file, &self.inner.arch)? {
                        Image::Cubin(b) => Ptx::from_binary(b),
                        Image::Ptx(s) => Ptx::from_src(s),
                    };
                    let m = self.inner.ctx.load_module(ptx).map_err(|e| Error::Backend {
                        backend: "cuda",
                        op: "load_module",
                        msg: format!(
                            "loading {} ({}) failed: {e:?}; a driver older than NVRTC cannot load its \
                             output, so update the driver or use an older CUDA toolkit",
                            file.name(),
                            self.inner.arch
                        ),
                    })?;
                    mods.insert(file, m.clone());
                    m
                }
            }
        };
        let f = module.load_function(name).map_err(|e| Error::Backend {
            backend: "cuda",
            op: "load_function",
            msg: format!("kernel {name} not found in {}: {e:?}", file.name()),
        })?;
        self.inner.functions.lock().unwrap_or_else(|p| p.into_inner()).insert(key, f.clone());
        Ok(f)
    }

    /// How many blocks of `block` threads and `smem` bytes of dynamic shared memory of the kernel
    /// `name` one multiprocessor holds at once (the driver's occupancy calculator: registers,
    /// shared memory and the block limit), asked once per kernel and size.
    pub(crate) fn resident_blocks(&self, file: KernelFile, name: &str, block: u32, smem: u32) -> Result<u32> {
        let key = (file, name.to_string(), block, smem);
        if let Some(&n) = self.inner.occupancy.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(n);
        }
        let f = self.function(file, name)?;
        self.bind("occupancy")?;
        opt_in_smem(&f, name, smem)?;
        let n = f.occupancy_max_active_blocks_per_multiprocessor(block, smem as usize, None).map_err(|e| {
            Error::Backend {
                backend: "cuda",
                op: "occupancy",
                msg: format!("{name} with {block} threads and {smem} bytes of shared memory: {e:?}"),
            }
        })?;
        self.inner.occupancy.lock().unwrap_or_else(|p| p.into_inner()).insert(key, n);
        Ok(n)
    }

    /// Launches `name` from `file` with the given grid/block and arguments, on the device stream.
    pub(crate) fn launch(&self, file: KernelFile, name: &str, cfg: Cfg, args: &[Arg]) -> Result<()> {
        self.launch_smem(file, name, cfg, 0, args)
    }

    /// [`Cuda::launch`] with `smem` bytes of dynamic shared memory per block.
    pub(crate) fn launch_smem(&self, file: KernelFile, name: &str, cfg: Cfg, smem: u32, args: &[Arg]) -> Result<()> {
        if cfg.grid == 0 {
            return Ok(());
        }
        let f = self.function(file, name)?;
        self.bind("launch")?;
        opt_in_smem(&f, name, smem)?;
        let ptrs: Vec<*mut c_void> = args.iter().map(Arg::as_ptr).collect();
        self.launch_ptrs(&f, name, cfg, smem, ptrs)
    }

    /// [`Cuda::launch`] of a kernel whose first parameter is `list`, a C struct by value too large
    /// for [`Arg::by_value`] (the multi-tensor kernels' pointer lists, a few KiB: the driver
    /// copies the parameters when the launch is queued, so `list` may be dropped after this).
    pub(crate) fn launch_list<T: DeviceRepr>(
        &self,
        file: KernelFile,
        name: &str,
        cfg: Cfg,
        list: &T,
        rest: &[Arg],
    ) -> Result<()> {
        self.launch_list_smem(file, name, cfg, 0, list, rest)
    }

    /// [`Cuda::launch_list`] with `smem` bytes of dynamic shared memory per block.
    pub(crate) fn launch_list_smem<T: DeviceRepr>(
        &self,
        file: KernelFile,
        name: &str,
        cfg: Cfg,
        smem: u32,
        list: &T,
        rest: &[Arg],
    ) -> Result<()> {
        const { assert!(std::mem::size_of::<T>() <= 4096, "kernel parameters are limited to 4 KiB") };
        if cfg.grid == 0 {
            return Ok(());
        }
        let f = self.function(file, name)?;
        self.bind("launch")?;
        opt_in_smem(&f, name, smem)?;
        let ptrs: Vec<*mut c_void> =
            std::iter::once(list as *const T as *mut c_void).chain(rest.iter().map(Arg::as_ptr)).collect();
        self.launch_ptrs(&f, name, cfg, smem, ptrs)
    }

    /// Queues `f` with the parameter addresses `ptrs` (recorded in the kernel statistics when on).
    fn launch_ptrs(&self, f: &CudaFunction, name: &str, cfg: Cfg, smem: u32, mut ptrs: Vec<*mut c_void>) -> Result<()> {
        let mut launch = || {
            // SAFETY: the argument list matches the kernel's signature (each call site mirrors the
            // extern "C" declaration in the .cu file) and every pointer argument is a live buffer.
            unsafe {
                dr::launch_kernel(
                    f.cu_function(),
                    (cfg.grid, cfg.grid_y, 1),
                    (cfg.block, 1, 1),
                    smem,
                    self.cu_stream(),
                    &mut ptrs,
                )
            }
            .map_err(|e| Error::Backend {
                backend: "cuda",
                op: "launch",
                msg: format!("launching {name}: {e:?}"),
            })
        };
        match &self.inner.stats {
            Some(stats) if !self.capturing() => stats.record(&self.inner.stream, name, launch),
            _ => launch(),
        }
    }

    /// Runs a cuBLAS call (or any queued work) under the label `name` in the kernel statistics.
    pub(crate) fn profiled(&self, label: impl FnOnce() -> String, f: impl FnOnce() -> Result<()>) -> Result<()> {
        match &self.inner.stats {
            Some(stats) if !self.capturing() => stats.record(&self.inner.stream, &label(), f),
            _ => f(),
        }
    }

    /// With `ELA_CUDA_KERNEL_STATS=1` set when the device was opened: the `top` kernels by total
    /// device time so far, the summed kernel time against the stream's elapsed time, and the host
    /// time spent issuing launches (waits for the queued work). `None` when not enabled.
    pub fn kernel_stats_report(&self, top: usize) -> Result<Option<String>> {
        self.no_capture("kernel_stats_report")?;
        self.inner.stats.as_ref().map(|s| s.report(&self.inner.stream, top)).transpose()
    }
}

/// Lets `f` run with `smem` bytes of dynamic shared memory per block: blocks get more than 48 KiB
/// only after opting in, per function. (The L1/shared carve-out is left to the driver: forcing
/// the largest one was measured to slow the 128-wide ELA kernels by 5-10 % on an H200.)
fn opt_in_smem(f: &CudaFunction, name: &str, smem: u32) -> Result<()> {
    if smem <= 48 * 1024 {
        return Ok(());
    }
    f.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32).map_err(
        |e| Error::Backend {
            backend: "cuda",
            op: "launch",
            msg: format!("{name} needs {smem} bytes of shared memory per block, more than this GPU allows: {e:?}"),
        },
    )
}

/// Grid and block sizes of a launch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cfg {
    pub grid: u32,
    pub grid_y: u32,
    pub block: u32,
}

impl Cfg {
    /// Elementwise launch over `n` elements (grid-stride loops cover the rest).
    pub(crate) fn elems(n: usize) -> Cfg {
        Cfg { grid: n.div_ceil(256).min(1 << 20) as u32, grid_y: 1, block: 256 }
    }
    /// One block per row of `n` elements: a power of two of threads in 32..=1024.
    pub(crate) fn rows(rows: usize, n: usize) -> Cfg {
        let block = n.next_power_of_two().clamp(32, 1024) as u32;
        Cfg { grid: rows.min(1 << 20) as u32, grid_y: 1, block }
    }
    /// The same launch with at most `max` threads per block.
    pub(crate) fn with_max_block(self, max: u32) -> Cfg {
        Cfg { block: self.block.min(max), ..self }
    }
}

/// One kernel argument; the variants match the C parameter types.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg {
    /// A device pointer (`T*`).
    Ptr(u64),
    /// `i64` (sizes).
    I64(i64),
    /// `int`.
    I32(i32),
    /// `u32`.
    U32(u32),
    /// `double`.
    F64(f64),
    /// `Desc` by value.
    Desc(Desc),
    /// Any other C struct by value (an op's geometry): see [`Arg::by_value`].
    Struct(StructArg),
}

/// Bytes a by-value struct argument may have (the largest now, conv_pool.cu's `ConvGeo`, has 112).
const STRUCT_ARG_WORDS: usize = 16;

/// The bytes of a `#[repr(C)]` struct passed to a kernel by value, in 8-byte-aligned words. The
/// launcher passes their address and the driver copies as many bytes as the kernel's parameter
/// has, so the launcher needs to know nothing of the op family the struct belongs to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StructArg([u64; STRUCT_ARG_WORDS]);

impl Arg {
    fn as_ptr(&self) -> *mut c_void {
        match self {
            Arg::Ptr(v) => v as *const u64 as *mut c_void,
            Arg::I64(v) => v as *const i64 as *mut c_void,
            Arg::I32(v) => v as *const i32 as *mut c_void,
            Arg::U32(v) => v as *const u32 as *mut c_void,
            Arg::F64(v) => v as *const f64 as *mut c_void,
            Arg::Desc(v) => v as *const Desc as *mut c_void,
            Arg::Struct(v) => v.0.as_ptr() as *mut c_void,
        }
    }
    /// `v`, a plain-old-data struct with the C layout of the kernel's parameter, by value.
    pub(crate) fn by_value<T: DeviceRepr + Copy>(v: T) -> Arg {
        const {
            assert!(
                std::mem::size_of::<T>() <= STRUCT_ARG_WORDS * 8 && std::mem::align_of::<T>() <= 8,
                "a by-value kernel argument must fit STRUCT_ARG_WORDS aligned words"
            )
        };
        let mut words = [0u64; STRUCT_ARG_WORDS];
        // SAFETY: `T` is plain old data (`DeviceRepr`), at most as large as `words` (asserted
        // above), and the two do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                &v as *const T as *const u8,
                words.as_mut_ptr() as *mut u8,
                std::mem::size_of::<T>(),
            )
        };
        Arg::Struct(StructArg(words))
    }
    /// `usize` as the kernels' `i64`.
    pub(crate) fn n(v: usize) -> Arg {
        Arg::I64(v as i64)
    }
}
