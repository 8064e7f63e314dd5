//! `ela launch`: start one process per GPU (or CPU rank) on this machine with torchrun's
//! environment, watch them, and stop them all as soon as one fails.

use std::process::{Child, Command};
use std::time::Duration;

use ela_core::{Error, Result};

/// Where the ranks of this machine sit in the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchPlan {
    /// Processes on this machine.
    pub nproc: usize,
    /// Machines in the job.
    pub nnodes: usize,
    /// This machine's index in `0..nnodes`.
    pub node_rank: usize,
    /// The host of global rank 0 (node 0).
    pub master_addr: String,
    /// Its rendezvous port.
    pub master_port: u16,
}

impl LaunchPlan {
    /// Checks the numbers.
    pub fn validate(&self) -> Result<()> {
        if self.nproc == 0 || self.nnodes == 0 {
            return Err(Error::invalid("launch", "--nproc and --nnodes must be at least 1"));
        }
        if self.node_rank >= self.nnodes {
            return Err(Error::invalid(
                "launch",
                format!(
                    "--node-rank {} is not a node of --nnodes {} (0..{})",
                    self.node_rank, self.nnodes, self.nnodes
                ),
            ));
        }
        Ok(())
    }

    /// The environment of local process `local` (torchrun's variables, and NCCL_NVLS_ENABLE=0
    /// unless the user set it: NVLink SHARP multicast needs a fabric-manager setup many
    /// machines lack, where it fails at communicator creation).
    pub fn env_of(&self, local: usize, nvls_set: bool) -> Vec<(String, String)> {
        let world = self.nnodes * self.nproc;
        let mut env = vec![
            ("RANK", (self.node_rank * self.nproc + local).to_string()),
            ("LOCAL_RANK", local.to_string()),
            ("WORLD_SIZE", world.to_string()),
            ("LOCAL_WORLD_SIZE", self.nproc.to_string()),
            ("GROUP_RANK", self.node_rank.to_string()),
            ("MASTER_ADDR", self.master_addr.clone()),
            ("MASTER_PORT", self.master_port.to_string()),
        ];
        if !nvls_set {
            env.push(("NCCL_NVLS_ENABLE", "0".to_string()));
        }
        env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

/// How often the launcher looks at its children.
const POLL: Duration = Duration::from_millis(50);
/// How long the launcher lets the other ranks settle after the first failure before it reports.
const SETTLE: Duration = Duration::from_millis(300);

/// Runs `program args` as `plan.nproc` processes and waits: `Ok` when all exit successfully;
/// when one fails, the others are killed and the error names it.
pub fn launch(plan: &LaunchPlan, program: &std::path::Path, args: &[String]) -> Result<()> {
    plan.validate()?;
    if args.is_empty() {
        return Err(Error::invalid(
            "launch",
            "nothing to run: give the command after `--`, e.g. `ela launch --nproc 2 -- train`",
        ));
    }
    let nvls_set = std::env::var_os("NCCL_NVLS_ENABLE").is_some();
    let mut children: Vec<(usize, Child)> = Vec::new();
    for local in 0..plan.nproc {
        let mut cmd = Command::new(program);
        cmd.args(args).envs(plan.env_of(local, nvls_set));
        match cmd.spawn() {
            Ok(c) => children.push((local, c)),
            Err(e) => {
                stop_all(&mut children);
                return Err(Error::Distributed {
                    op: "launch",
                    msg: format!("starting local rank {local} ({}) failed: {e}", program.display()),
                });
            }
        }
    }
    let global = |local: usize| plan.node_rank * plan.nproc + local;
    loop {
        let mut running = 0;
        let mut failed = false;
        for (local, c) in children.iter_mut() {
            match c.try_wait() {
                Ok(Some(st)) => failed |= !st.success(),
                Ok(None) => running += 1,
                Err(e) => {
                    return Err(Error::Distributed {
                        op: "launch",
                        msg: format!("watching rank {}: {e}", global(*local)),
                    })
                }
            }
        }
        if failed {
            // A rank that dies usually takes its peers down a moment later (their collectives
            // fail): wait briefly so the report lists every rank that failed on its own, not only
            // the first one seen.
            std::thread::sleep(SETTLE);
            let failures: Vec<String> = children
                .iter_mut()
                .filter_map(|(local, c)| match c.try_wait() {
                    Ok(Some(st)) if !st.success() => {
                        Some(format!("rank {} (local rank {local}): {st}", global(*local)))
                    }
                    _ => None,
                })
                .collect();
            let others = stop_all(&mut children);
            return Err(Error::Distributed {
                op: "launch",
                msg: format!(
                    "failed: {}; stopped the {others} other rank(s) still running on this node (each rank's own error \
                     is printed above)",
                    failures.join("; ")
                ),
            });
        }
        if running == 0 {
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
}

/// Kills the children still running and reaps all; returns how many were killed.
fn stop_all(children: &mut [(usize, Child)]) -> usize {
    let mut killed = 0;
    for (_, c) in children.iter_mut() {
        if let Ok(None) = c.try_wait() {
            if c.kill().is_ok() {
                killed += 1;
            }
        }
    }
    for (_, c) in children.iter_mut() {
        let _ = c.wait();
    }
    killed
}
