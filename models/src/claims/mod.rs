//! `ela claims`: the paper's claims re-measured, one experiment per subcommand, each writing
//! `runs/claims/<name>/results.json` and SVG plots; `ela claims report` assembles docs/claims.md.
//!
//! | experiment | claim |
//! |---|---|
//! | [`decode`] | 3: faster decoding, smaller state than a KV cache |
//! | [`mqar`] | 2, 4: recall without dilution; comparable to softmax |
//! | [`link`] | 5: Hyper-Link vs residuals, gradient norms per layer |
//! | [`lobe`] | 6: the Memory Lobe vs none vs a wider FFN |
//! | [`moe`] | 7: routing-score bias, balance and semantic alignment (NMI) |
//! | [`lm`] | 4: the LM with each mixer, loss and throughput |
//! | [`dilution`] | 2: attention entropy, gradient spikes, the default run's spike |
//!
//! [`all`] runs every experiment and the report in one command.
//!
//! [`common`] holds the budget, seeds, results file, LM training and statistics; [`corpus`] the
//! text `lm` and `moe` train on (`--corpus`); [`report`] the document.

pub mod all;
pub mod common;
pub mod corpus;
pub mod decode;
pub mod dilution;
pub mod link;
pub mod lm;
pub mod lobe;
pub mod metrics;
pub mod moe;
pub mod mqar;
pub mod report;
