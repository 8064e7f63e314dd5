//! Cross-crate integration and property tests of ELA-rs, the naive reference implementations
//! ([`reference`](mod@reference)) those tests compare the engine against, and the machinery that
//! runs each test on every backend ([`device`]).
#![warn(missing_docs)]

pub mod device;
pub mod reference;
