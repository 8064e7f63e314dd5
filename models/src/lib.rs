//! # ela-models
//!
//! Models built on ELA-rs and the `ela` command-line tool that trains, samples, verifies and
//! benchmarks them.
#![warn(missing_docs)]

// The engine's crates, so that a program can depend on ela-models alone (and so that the
// exported macros reach the backends from any crate).
pub use ela_autograd;
pub use ela_core;
pub use ela_cuda;
pub use ela_nn;

pub mod budget;
pub mod claims;
pub mod cli;
pub mod console;
pub mod data;
pub mod demo;
pub mod detect;
pub mod device;
pub mod dist;
pub mod external;
pub mod lm;
pub mod report;
pub mod train;
