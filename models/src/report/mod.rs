//! What a training run reports: a progress line, a JSONL metrics log, and an SVG loss plot. All
//! written here with the standard library only.

pub mod metrics;
pub mod plot;
pub mod progress;
pub mod run_dir;
pub mod run_lock;
