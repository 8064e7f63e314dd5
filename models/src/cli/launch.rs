//! `ela launch`: run an `ela` command as several ranks (torchrun's conventions).

use ela_core::{Error, Result};

use crate::dist::{launch, LaunchPlan};

/// Options of `ela launch`.
#[derive(clap::Args, Debug, Clone)]
pub struct LaunchArgs {
    /// Processes to start on this machine (one per GPU).
    #[arg(long, default_value_t = 1)]
    pub nproc: usize,
    /// Machines in the job (run `ela launch` once on each).
    #[arg(long, default_value_t = 1)]
    pub nnodes: usize,
    /// This machine's index, 0 on the machine that hosts rank 0.
    #[arg(long, default_value_t = 0)]
    pub node_rank: usize,
    /// Address of the machine with node rank 0, reachable from every machine.
    #[arg(long, default_value = "127.0.0.1")]
    pub master_addr: String,
    /// TCP port of the rendezvous on that machine.
    #[arg(long, default_value_t = 29500)]
    pub master_port: u16,
    /// The `ela` command each rank runs, after `--`, e.g. `-- train --device cuda --batch 64`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Run `ela launch`: start the ranks of this machine and wait for them.
pub fn run(args: &LaunchArgs) -> Result<()> {
    let plan = LaunchPlan {
        nproc: args.nproc,
        nnodes: args.nnodes,
        node_rank: args.node_rank,
        master_addr: args.master_addr.clone(),
        master_port: args.master_port,
    };
    let exe = std::env::current_exe()
        .map_err(|e| Error::invalid("launch", format!("cannot find the ela executable to start ranks with: {e}")))?;
    launch(&plan, &exe, &args.command)
}
