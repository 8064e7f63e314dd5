//! Command-line interface: argument definitions and dispatch. Each subcommand lives in its own
//! file and returns `ela_core::Result`, so errors reach `main` as one typed value.

pub mod bench;
pub mod claims;
pub mod detect;
pub mod generate;
pub mod info;
pub mod launch;
pub mod logits;
pub mod train;
pub mod verify;

use clap::{Parser, Subcommand};
use ela_core::Result;

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
    /// Under `ela launch` (or torchrun's environment) it trains data-parallel, one rank per
    /// process (docs/distributed.md).
    Train(crate::train::TrainArgs),
    /// Run a command as several data-parallel ranks: `ela launch --nproc 8 -- train --device cuda`;
    /// across machines with --nnodes, --node-rank, --master-addr and --master-port.
    Launch(launch::LaunchArgs),
    /// The YOLO-LAT detector: `ela detect train`, `ela detect predict`, `ela detect eval`.
    Detect(detect::DetectArgs),
    /// Sample text from a trained checkpoint.
    Generate(generate::GenerateArgs),
    /// Run a trained checkpoint over a text and save its logits (to compare with another framework).
    Logits(logits::LogitsArgs),
    /// Parameter counts per component for a model configuration.
    Info(info::InfoArgs),
    /// Train a small MLP on a generated spiral data set (a tour of the engine).
    Demo(crate::demo::DemoArgs),
    /// Check that the chunked and recurrent ELA forms equal the f64 quadratic reference (outputs
    /// and gradients) on random inputs; exits 1 if any error exceeds the dtype's tolerance.
    Verify(verify::VerifyArgs),
    /// Benchmarks: `ela bench ela` (ELA vs quadratic, softmax, JAX over T) and `ela bench decode`.
    Bench(bench::BenchArgs),
    /// The paper's claims re-measured: `ela claims mqar|decode|link|lobe|moe|lm|dilution`, and
    /// `ela claims report` (writes docs/claims.md).
    Claims(claims::ClaimsArgs),
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(args) => train::run(&args),
        Command::Launch(args) => launch::run(&args),
        Command::Detect(args) => detect::run(&args),
        Command::Generate(args) => generate::run(&args),
        Command::Logits(args) => logits::run(&args),
        Command::Info(args) => info::run(&args),
        Command::Demo(args) => crate::demo::run(&args),
        Command::Verify(args) => verify::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Claims(args) => claims::run(&args),
    }
}

/// Where a command runs (the library's [`crate::device::Device`]).
pub type DeviceChoice = crate::device::Device;

/// Parse `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<DeviceChoice> {
    s.parse()
}

/// Run a generic body on the backend a `--device` string names: `on_device!(dev_str, |dev| f(dev))`.
/// `dev` is `&Cpu` or `&Cuda`; a bad name or a missing driver or GPU is a one-line error.
/// [`crate::with_device!`] with the string parsed first.
#[macro_export]
macro_rules! on_device {
    ($device:expr, |$dev:ident| $body:expr) => {{
        let device: $crate::device::Device = $crate::cli::parse_device($device)?;
        $crate::with_device!(device, |$dev| $body)
    }};
}
