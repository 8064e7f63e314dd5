//! # ela-cuda
//!
//! The CUDA backend of ELA-rs. It is being built (see the CUDA issue); this crate currently only
//! reserves its place in the workspace so the dependency graph of DESIGN.md holds.
