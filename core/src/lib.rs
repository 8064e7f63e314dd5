//! # ela-core
//!
//! The tensor engine under ELA-rs: [`Shape`] and strided [`Layout`] (views without copies),
//! [`DType`], typed [`Error`]s, the [`Backend`] trait (the primitive op set every device
//! implements) and the [`Cpu`] backend, with a GEMM written here.
//!
//! ```
//! use ela_core::{Cpu, Tensor};
//! let a = Tensor::from_vec(vec![1f32, 2., 3., 4., 5., 6.], [2, 3], &Cpu)?;
//! let b = a.transpose(0, 1)?;            // a view: no copy
//! let c = a.matmul(&b)?;                 // [2, 2]
//! assert_eq!(c.to_vec::<f32>()?, vec![14., 32., 32., 77.]);
//! # Ok::<(), ela_core::Error>(())
//! ```
#![warn(missing_docs)]

// The crate README's example runs as a doctest, so the front page cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub mod backend;
pub mod comm;
pub mod cpu;
pub mod dtype;
pub mod ela;
pub mod error;
pub mod layout;
pub mod op;
pub mod rng;
pub mod shape;
pub mod tensor;

pub use backend::Backend;
pub use comm::{CommOp, Communicator, LocalComm, PendingTensor};
pub use cpu::{Cpu, CpuStorage};
pub use dtype::{DType, Float, WithDType};
pub use ela::{ElaKernel, ElaParams, ElaSaved, FusedElaState};
pub use error::{Error, Result};
pub use layout::Layout;
pub use op::{AdamWOperands, AdamWStep, AdamWUpdated, BinaryOp, CmpOp, Conv2dParams, Pool2dParams, ReduceOp, UnaryOp};
pub use rng::Rng;
pub use shape::{Dim, Shape, MAX_ELEMENTS};
pub use tensor::{AdamWArgs, Tensor};
