//! Training the detector: `ela detect train`'s options and loop.

pub mod args;
pub mod run;

pub use args::{DetectTrainArgs, DetectorArgs};
pub use run::{open_data, plot_metrics, train, DataSpec, DetectReport, CKPT, DEFAULT_OUT};
