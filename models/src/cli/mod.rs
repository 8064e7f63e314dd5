//! Command-line interface: argument definitions and dispatch. Each subcommand lives in its own
//! file and returns `ela_core::Result`, so errors reach `main` as one typed value.

pub mod generate;
pub mod info;
pub mod train;

use clap::{Parser, Subcommand};
use ela_core::{Error, Result};

/// ELA-rs: exact linear attention, from tensors to models.
#[derive(Parser, Debug)]
#[command(name = "ela", version, about, propagate_version = true)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `ela`.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train the ELA language model (embedded corpus by default), with checkpoints and plots.
    Train(crate::train::TrainArgs),
    /// Sample text from a trained checkpoint.
    Generate(generate::GenerateArgs),
    /// Parameter counts per component for a model configuration.
    Info(info::InfoArgs),
    /// Train a small MLP on a generated spiral data set (a tour of the engine).
    Demo(crate::demo::DemoArgs),
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(args) => train::run(&args),
        Command::Generate(args) => generate::run(&args),
        Command::Info(args) => info::run(&args),
        Command::Demo(args) => crate::demo::run(&args),
    }
}

/// Run `f` on the GPU named by `device` (`cuda` or `cuda:N`).
pub fn with_gpu<R>(device: &str, f: impl FnOnce(&ela_core::Cpu) -> Result<R>) -> Result<R> {
    let _ = f;
    match device {
        d if d == "cuda" || d.starts_with("cuda:") => Err(Error::DeviceUnavailable {
            device: d.to_string(),
            reason: "this build of `ela` has no CUDA backend yet; use --device cpu".into(),
        }),
        d => Err(Error::invalid("device", format!("unknown device {d:?}; expected cpu or cuda"))),
    }
}
