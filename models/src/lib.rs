//! # ela-models
//!
//! Models built on ELA-rs and the `ela` command-line tool that trains, samples, verifies and
//! benchmarks them.
#![warn(missing_docs)]

pub mod budget;
pub mod cli;
pub mod console;
pub mod data;
pub mod demo;
pub mod detect;
pub mod external;
pub mod lm;
pub mod report;
pub mod train;
