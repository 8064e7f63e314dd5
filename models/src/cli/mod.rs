//! Command-line interface: argument definitions and dispatch. Each subcommand lives in its own
//! file and returns `ela_core::Result`, so errors reach `main` as one typed value.

use clap::{Parser, Subcommand};

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
    /// Train a small MLP on an embedded 2-D spiral data set with the engine's autograd and GEMM.
    Demo(crate::demo::DemoArgs),
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> ela_core::Result<()> {
    match cli.command {
        Command::Demo(args) => crate::demo::run(&args),
    }
}
