//! # ela-cuda
//!
//! The CUDA backend of ELA-rs: [`Cuda`] implements [`ela_core::Backend`] with kernels written in
//! CUDA C (`cuda/kernels/*.cu`, one file per op family) that NVRTC compiles at run time for the
//! GPU in the machine, cuBLAS for matrix products, and a caching allocator so that a training
//! step makes no `cuMemAlloc`/`cuMemFree` call once it has run once.
//!
//! Nothing CUDA is needed to *build* this crate: cudarc opens `libcuda`, `libnvrtc` and
//! `libcublas` when a device is first opened. Without them, or without a GPU, [`Cuda::new`] and
//! [`cuda_if_available`] return [`ela_core::Error::DeviceUnavailable`] saying why, so a program
//! can fall back to the CPU:
//!
//! ```no_run
//! use ela_core::{Cpu, Tensor};
//! match ela_cuda::cuda_if_available() {
//!     Ok(gpu) => {
//!         let a = Tensor::from_vec(vec![1f32, 2., 3., 4.], [2, 2], &gpu)?;
//!         let b = a.matmul(&a.t()?)?;                 // cuBLAS, transposed operand read in place
//!         println!("{:?}", b.to_vec::<f32>()?);       // [5, 11, 11, 25]
//!     }
//!     Err(why) => {
//!         eprintln!("running on the CPU: {why}");
//!         let a = Tensor::from_vec(vec![1f32, 2., 3., 4.], [2, 2], &Cpu)?;
//!         println!("{:?}", a.matmul(&a.t()?)?.to_vec::<f32>()?);
//!     }
//! }
//! # Ok::<(), ela_core::Error>(())
//! ```
//!
//! Layout of the crate: `error.rs` (typed errors from driver failures), `device.rs` (opening a
//! GPU, module cache, launches, transfers),
//! `alloc.rs` (caching allocator, [`MemoryStats`]), `graph.rs` (CUDA graph capture and replay,
//! [`CudaGraphExec`], in-place writes), `kernels.rs` (sources and NVRTC),
//! `strided.rs` (strided views as kernel arguments), `nccl/` (NCCL collectives for data-parallel
//! training, [`NcclComm`], with its watchdog), `ops/` (one file per op family, next to its
//! `.cu` file, fused ELA included), `backend_impl.rs` (the trait impl). See `cuda/README.md`.
#![warn(missing_docs)]

mod alloc;
mod backend_impl;
mod device;
mod error;
mod graph;
pub mod kernels;
mod nccl;
mod ops;
mod profile;
mod storage;
mod strided;
pub mod testing;
mod timing;
#[cfg(test)]
mod wgmma;

pub use alloc::MemoryStats;
pub use device::{cuda_if_available, cuda_or_none, Cuda};
pub use graph::CudaGraphExec;
pub use nccl::{NcclComm, DEFAULT_NCCL_TIMEOUT, NCCL_ID_BYTES};
#[doc(hidden)]
pub use ops::ela::{
    with_elu_tiles, with_identity_tiles, with_la_rows, with_la_scan, with_scan_runs, with_signed_bf16,
    with_signed_tiles, ELU_TILES_DEFAULT, IDENTITY_TILES_DEFAULT, SIGNED_TILES_DEFAULT,
};
pub use ops::lm_decode::{DecodeLayer, DecodeLink, DecodeModel, LmDecodePlan, LM_DECODE_MAX_LAYERS};
pub use ops::multi_tensor::AdamWInPlace;
pub use ops::nn::with_fused_add_rms;
pub use storage::CudaStorage;
pub use timing::GpuTimer;
