//! Training the language model: options, the loop, checkpoints and reports.

pub mod args;
pub mod run;

pub use args::{ModelArgs, TrainArgs};
pub use run::{plot_metrics, train, unigram_loss, validate, TrainReport};
