//! The CPU backend: host buffers, kernels parallelised with rayon, and the GEMM written here.
//!
//! Each op family has its own file; `backend_impl.rs` maps the [`Backend`](crate::Backend)
//! trait onto them. Kernels are written once over [`Float`](crate::dtype::Float) (f32, f64);
//! f16/bf16 inputs are widened to f32, computed, and rounded once on store.

pub(crate) mod alloc;
mod backend_impl;
pub mod conv;
pub mod ela;
pub mod elementwise;
pub mod gemm;
pub mod index;
pub mod malloc_tuning;
pub mod matmul;
pub mod nn;
pub mod optim;
pub mod reduce;
mod rms_norm;
pub mod storage;
pub(crate) mod strided;
pub mod threads;
mod widest_isa;

pub use storage::CpuStorage;

/// The CPU device. All CPU tensors share it; it carries no state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cpu;

/// Below this many elements an elementwise kernel runs on one thread: splitting costs more than
/// it saves.
pub(crate) const PAR_THRESHOLD: usize = 1 << 15;
