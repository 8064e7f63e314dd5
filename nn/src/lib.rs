//! # ela-nn
//!
//! Neural-network building blocks on top of [`ela_autograd`]: Exact Linear Attention and its
//! kernels ([`ela`]), attention with softmax or ELA mixers ([`attention`]) and the softmax
//! decoding cache ([`kv_cache`]), modules and a parameter registry ([`module`], [`layers`]), optimizers
//! ([`optim`]), checkpoints ([`checkpoint`]), mixed precision ([`precision`]) and data-parallel
//! gradient synchronisation ([`ddp`]). Every module is generic over the backend.
#![warn(missing_docs)]

// The crate README's example runs as a doctest, so the front page cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub mod attention;
pub mod checkpoint;
pub mod ddp;
pub mod ela;
pub mod kv_cache;
pub mod layers;
pub mod module;
pub mod moe;
pub mod optim;
pub mod precision;
