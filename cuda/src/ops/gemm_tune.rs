//! cuBLAS algorithms chosen by timing, opt-in (`ELA_CUDA_GEMM_TUNE=1` or [`with_gemm_tune`]).
//!
//! `cublasGemmStridedBatchedEx` runs the algorithm cuBLAS's heuristics pick for a problem. With
//! tuning on, the first product of each distinct problem with 16-bit inputs (dtypes, transposes,
//! sizes, leading dimensions, batch strides, and whether `beta` is 0) times that default and up
//! to [`CANDIDATES`] algorithms that `cublasLtMatmulAlgoGetHeuristic` offers for it, each on a
//! scratch output, and every later call of that problem runs the fastest. A problem first met
//! while a CUDA graph is being captured is not timed (timing waits for the GPU) and takes the
//! default. f32 and f64 products are never tuned.
//!
//! Bits: each algorithm computes the same products with f32 accumulation, but different ones
//! add them in different orders (tile shapes, split-K), so which one wins the timing decides the
//! last bits of the result, and a close race can go the other way in another process. With
//! tuning on, results are reproducible within a process, not between processes; it is off by
//! default for that reason.

use std::collections::HashMap;
use std::ffi::c_void;

use cudarc::cublas::sys as bs;
use cudarc::cublaslt::sys as lt;
use cudarc::driver::sys as ds;
use ela_core::{DType, Error, Result};

use crate::device::Cuda;
use crate::error::driver_error;

/// Heuristic candidates timed beside the default.
pub(crate) const CANDIDATES: usize = 8;
/// Timed runs of each candidate (after one warm-up run).
const RUNS: usize = 5;

/// One GEMM problem in cuBLAS's column-major terms: `C (rows x cols) = op(A) op(B)` with
/// `op(A)` rows x inner, for `batch` entries (see `Cuda::gemm`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct Problem {
    pub in_dtype: DType,
    pub out_dtype: DType,
    pub trans_a: bool,
    pub trans_b: bool,
    pub rows: usize,
    pub cols: usize,
    pub inner: usize,
    pub batch: usize,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
    pub beta_zero: bool,
}

/// Device pointers of one call of a [`Problem`], alpha and beta as f32 host scalars.
pub(crate) struct Call {
    pub a: u64,
    pub b: u64,
    pub c: u64,
    pub alpha: f32,
    pub beta: f32,
}

thread_local! {
    /// Set by [`with_gemm_tune`] on this thread (`None`: `ELA_CUDA_GEMM_TUNE`).
    static TUNE: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with this thread's 16-bit GEMMs tuned (`on`) or on cuBLAS's default algorithm,
/// whatever `ELA_CUDA_GEMM_TUNE` says. For tests and benchmarks.
#[doc(hidden)]
pub fn with_gemm_tune<R>(on: bool, f: impl FnOnce() -> R) -> R {
    super::ela::with_override(&TUNE, Some(on), f)
}

/// Whether products with 16-bit inputs are tuned on this thread.
pub(crate) fn tuning(in_dtype: DType) -> bool {
    static ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let env = || *ENV.get_or_init(|| std::env::var("ELA_CUDA_GEMM_TUNE").as_deref() == Ok("1"));
    in_dtype.size_in_bytes() == 2 && TUNE.with(|c| c.get()).unwrap_or_else(env)
}

/// The cublasLt handle and the choice made for every problem met so far (`None`: the default
/// algorithm was fastest, or the problem was met during a capture).
pub(crate) struct Tuner {
    handle: lt::cublasLtHandle_t,
    plans: HashMap<Problem, Option<Plan>>,
}

// SAFETY: the handle and the descriptors are only used under the device's tuner mutex.
unsafe impl Send for Tuner {}

/// A cublasLt matmul of one problem: its descriptors and the chosen algorithm.
struct Plan {
    desc: lt::cublasLtMatmulDesc_t,
    layouts: [lt::cublasLtMatrixLayout_t; 3],
    algo: lt::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: created by `Plan::new`, destroyed once.
        unsafe {
            lt::cublasLtMatmulDescDestroy(self.desc);
            for l in self.layouts {
                lt::cublasLtMatrixLayoutDestroy(l);
            }
        }
    }
}

impl Drop for Tuner {
    fn drop(&mut self) {
        self.plans.clear();
        // SAFETY: created by `Tuner::new`; the plans that used it are gone.
        unsafe { lt::cublasLtDestroy(self.handle) };
    }
}

fn lt_error(what: &str, st: lt::cublasStatus_t) -> Error {
    Error::Backend { backend: "cuda", op: "matmul", msg: format!("cublasLt {what} failed: {st:?}") }
}

fn check(what: &str, st: lt::cublasStatus_t) -> Result<()> {
    if st == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(lt_error(what, st))
    }
}

fn lt_type(d: DType) -> lt::cudaDataType {
    match d {
        DType::F16 => lt::cudaDataType::CUDA_R_16F,
        DType::BF16 => lt::cudaDataType::CUDA_R_16BF,
        DType::F64 => lt::cudaDataType::CUDA_R_64F,
        _ => lt::cudaDataType::CUDA_R_32F,
    }
}

impl Tuner {
    fn new() -> Result<Tuner> {
        // SAFETY: only tries to dlopen candidate library names.
        if !unsafe { lt::is_culib_present() } {
            return Err(Error::Backend {
                backend: "cuda",
                op: "matmul",
                msg: "ELA_CUDA_GEMM_TUNE needs the cublasLt library, which was not found: install it \
                      beside cuBLAS, or turn tuning off"
                    .into(),
            });
        }
        let mut handle = std::ptr::null_mut();
        // SAFETY: writes a new handle.
        check("cublasLtCreate", unsafe { lt::cublasLtCreate(&mut handle) })?;
        Ok(Tuner { handle, plans: HashMap::new() })
    }
}

impl Plan {
    /// The descriptors of `p` (no algorithm chosen yet).
    fn new(p: &Problem) -> Result<Plan> {
        // cublasOperation_t as the attribute's int (cuBLAS's enum; cublasLt has no type of its own).
        let op = |t: bool| {
            if t {
                bs::cublasOperation_t::CUBLAS_OP_T as i32
            } else {
                bs::cublasOperation_t::CUBLAS_OP_N as i32
            }
        };
        let mut desc = std::ptr::null_mut();
        // SAFETY: writes a new descriptor; the attributes are plain values of the documented types.
        unsafe {
            check(
                "cublasLtMatmulDescCreate",
                lt::cublasLtMatmulDescCreate(
                    &mut desc,
                    lt::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    lt::cudaDataType::CUDA_R_32F,
                ),
            )?;
        }
        let mut plan =
            Plan { desc, layouts: [std::ptr::null_mut(); 3], algo: lt::cublasLtMatmulAlgo_t { data: [0; 8] } };
        for (attr, t) in [
            (lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA, p.trans_a),
            (lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB, p.trans_b),
        ] {
            let v = op(t);
            // SAFETY: the attribute is a cublasOperation_t (an int).
            check("cublasLtMatmulDescSetAttribute", unsafe {
                lt::cublasLtMatmulDescSetAttribute(
                    plan.desc,
                    attr,
                    &v as *const _ as *const c_void,
                    std::mem::size_of_val(&v),
                )
            })?;
        }
        // Stored shapes: A is rows x inner (inner x rows when transposed), B inner x cols.
        let a = if p.trans_a { (p.inner, p.rows) } else { (p.rows, p.inner) };
        let b = if p.trans_b { (p.cols, p.inner) } else { (p.inner, p.cols) };
        let specs = [
            (p.in_dtype, a, p.lda, p.stride_a),
            (p.in_dtype, b, p.ldb, p.stride_b),
            (p.out_dtype, (p.rows, p.cols), p.ldc, p.stride_c),
        ];
        for (slot, (d, (r, c), ld, stride)) in specs.into_iter().enumerate() {
            let mut l = std::ptr::null_mut();
            // SAFETY: writes a new layout; the batch attributes are an i32 and an i64.
            unsafe {
                check(
                    "cublasLtMatrixLayoutCreate",
                    lt::cublasLtMatrixLayoutCreate(&mut l, lt_type(d), r as u64, c as u64, ld as i64),
                )?;
                plan.layouts[slot] = l;
                if p.batch > 1 {
                    let (count, offset) = (p.batch as i32, stride as i64);
                    let attrs: [(_, *const c_void, usize); 2] = [
                        (
                            lt::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                            &count as *const i32 as _,
                            4,
                        ),
                        (
                            lt::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                            &offset as *const i64 as _,
                            8,
                        ),
                    ];
                    for (attr, value, bytes) in attrs {
                        check(
                            "cublasLtMatrixLayoutSetAttribute",
                            lt::cublasLtMatrixLayoutSetAttribute(l, attr, value, bytes),
                        )?;
                    }
                }
            }
        }
        Ok(plan)
    }

    /// Up to [`CANDIDATES`] algorithms cuBLAS offers for this plan within `workspace` bytes.
    fn candidates(&self, handle: lt::cublasLtHandle_t, workspace: usize) -> Result<Vec<lt::cublasLtMatmulAlgo_t>> {
        let mut pref = std::ptr::null_mut();
        // SAFETY: a preference object created, given the workspace bound, used and destroyed here;
        // the results array holds CANDIDATES entries.
        unsafe {
            check("cublasLtMatmulPreferenceCreate", lt::cublasLtMatmulPreferenceCreate(&mut pref))?;
            let bytes = workspace as u64;
            let st = lt::cublasLtMatmulPreferenceSetAttribute(
                pref,
                lt::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &bytes as *const _ as *const c_void,
                8,
            );
            let mut results: [lt::cublasLtMatmulHeuristicResult_t; CANDIDATES] = std::mem::zeroed();
            let mut count = 0;
            let st2 = if st == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                lt::cublasLtMatmulAlgoGetHeuristic(
                    handle,
                    self.desc,
                    self.layouts[0],
                    self.layouts[1],
                    self.layouts[2],
                    self.layouts[2],
                    pref,
                    CANDIDATES as i32,
                    results.as_mut_ptr(),
                    &mut count,
                )
            } else {
                st
            };
            lt::cublasLtMatmulPreferenceDestroy(pref);
            check("cublasLtMatmulAlgoGetHeuristic", st2)?;
            Ok(results[..count.max(0) as usize]
                .iter()
                .filter(|r| r.state == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS && r.workspaceSize <= workspace)
                .map(|r| r.algo)
                .collect())
        }
    }

    /// Queues the product with `algo` on `stream`, writing `c`.
    fn run(
        &self,
        handle: lt::cublasLtHandle_t,
        algo: &lt::cublasLtMatmulAlgo_t,
        call: &Call,
        c: u64,
        workspace: (u64, usize),
        stream: ds::CUstream,
    ) -> Result<()> {
        // SAFETY: the pointers are live device buffers of the problem's extents (checked by
        // `Cuda::gemm`'s callers); alpha and beta are f32 host scalars (the scale type).
        check("cublasLtMatmul", unsafe {
            lt::cublasLtMatmul(
                handle,
                self.desc,
                &call.alpha as *const f32 as *const c_void,
                call.a as *const c_void,
                self.layouts[0],
                call.b as *const c_void,
                self.layouts[1],
                &call.beta as *const f32 as *const c_void,
                c as *const c_void,
                self.layouts[2],
                c as *mut c_void,
                self.layouts[2],
                algo,
                workspace.0 as *mut c_void,
                workspace.1,
                stream as lt::cudaStream_t,
            )
        })
    }
}

/// Bytes a problem's output spans (the scratch output of the timing runs).
fn output_bytes(p: &Problem) -> usize {
    let last = (p.batch - 1) * p.stride_c + (p.cols - 1) * p.ldc + p.rows;
    last * p.out_dtype.size_in_bytes()
}

impl Cuda {
    /// Runs `call` of problem `p` with the tuned algorithm if one beat the default (choosing on
    /// first sight of `p`, timing `default` against the candidates), returning `false` when the
    /// caller should run the default itself. `default(c)` queues cuBLAS's default algorithm
    /// writing the output at `c`; `workspace` is cuBLAS's, free while the caller holds the handle.
    pub(crate) fn gemm_tuned(
        &self,
        p: Problem,
        call: &Call,
        workspace: (u64, usize),
        default: &dyn Fn(u64) -> Result<()>,
    ) -> Result<bool> {
        let mut guard = self.inner.gemm_tuner.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            *guard = Some(Tuner::new()?);
        }
        let tuner = guard.as_mut().expect("created above");
        if !tuner.plans.contains_key(&p) {
            if self.capturing_stream().is_some() {
                return Ok(false);
            }
            let plan = self.choose(tuner.handle, &p, call, workspace, default)?;
            tuner.plans.insert(p, plan);
        }
        match &tuner.plans[&p] {
            Some(plan) => plan.run(tuner.handle, &plan.algo, call, call.c, workspace, self.cu_stream()).map(|_| true),
            None => Ok(false),
        }
    }

    /// Times the default and the heuristic candidates of `p` on a scratch output; the plan of the
    /// fastest candidate, or `None` when the default is at least as fast.
    fn choose(
        &self,
        handle: lt::cublasLtHandle_t,
        p: &Problem,
        call: &Call,
        workspace: (u64, usize),
        default: &dyn Fn(u64) -> Result<()>,
    ) -> Result<Option<Plan>> {
        // A problem cublasLt cannot describe or offers nothing for keeps the default.
        let Ok(mut plan) = Plan::new(p) else { return Ok(None) };
        let algos = plan.candidates(handle, workspace.1).unwrap_or_default();
        if algos.is_empty() {
            return Ok(None);
        }
        let scratch = self.scratch(output_bytes(p))?;
        let stream = self.cu_stream();
        let ev = || {
            self.inner.ctx.new_event(Some(ds::CUevent_flags::CU_EVENT_DEFAULT)).map_err(|e| driver_error("matmul", e))
        };
        let (start, stop) = (ev()?, ev()?);
        let time = |run: &dyn Fn() -> Result<()>| -> Result<f32> {
            run()?;
            start.record(&self.inner.stream).map_err(|e| driver_error("matmul", e))?;
            for _ in 0..RUNS {
                run()?;
            }
            stop.record(&self.inner.stream).map_err(|e| driver_error("matmul", e))?;
            stop.synchronize().map_err(|e| driver_error("matmul", e))?;
            start.elapsed_ms(&stop).map_err(|e| driver_error("matmul", e))
        };
        let mut best = time(&|| default(scratch.ptr()))?;
        let mut chosen = None;
        for algo in algos {
            // A candidate the library rejects at run time is skipped, not an error.
            let Ok(t) = time(&|| plan.run(handle, &algo, call, scratch.ptr(), workspace, stream)) else { continue };
            if t < best {
                best = t;
                chosen = Some(algo);
            }
        }
        Ok(chosen.map(|algo| {
            plan.algo = algo;
            plan
        }))
    }
}
