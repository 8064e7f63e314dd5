//! Cross-crate integration and property tests of ELA-rs, and the naive reference implementations
//! ([`reference`](mod@reference)) those tests compare the engine against.
#![warn(missing_docs)]

pub mod reference;
