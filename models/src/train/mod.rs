//! Training the language model: options, the loop, checkpoints and reports.

pub mod args;
mod dist;
mod graph_step;
pub mod run;

pub use args::{ModelArgs, TrainArgs};
pub use run::{plot_metrics, train, train_data_parallel, unigram_loss, validate, TrainReport};
