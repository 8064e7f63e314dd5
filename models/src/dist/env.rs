//! The environment a distributed rank is started with: torchrun's variables, so that `ela
//! launch`, torchrun itself or a scheduler (Slurm's `srun`, see docs/distributed.md) can start
//! the processes.

use std::time::Duration;

use ela_core::{Error, Result};

/// How long the rendezvous waits for all ranks to join, by default (`ELA_RENDEZVOUS_TIMEOUT_S`).
pub const DEFAULT_RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a rank waits in one collective of the CPU (TCP) transport before it gives up on its
/// peers, by default (`ELA_DIST_TIMEOUT_S`; NCCL's watchdog uses the same setting). Generous:
/// rank 0 validates and writes checkpoints while the others wait in the next collective.
pub const DEFAULT_COLLECTIVE_TIMEOUT: Duration = Duration::from_secs(600);

/// One rank's place in a distributed job, read from the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistEnv {
    /// `RANK`: this process's rank in `0..world_size`.
    pub rank: usize,
    /// `WORLD_SIZE`: the number of processes.
    pub world_size: usize,
    /// `LOCAL_RANK`: this process's index on its machine (its GPU), when set.
    pub local_rank: Option<usize>,
    /// `MASTER_ADDR`: the host rank 0 runs on.
    pub master_addr: String,
    /// `MASTER_PORT`: the TCP port rank 0 listens on for the rendezvous.
    pub master_port: u16,
    /// `ELA_RENDEZVOUS_TIMEOUT_S`: how long to wait for all ranks to join.
    pub rendezvous_timeout: Duration,
    /// `ELA_DIST_TIMEOUT_S`: how long one collective may wait for the other ranks.
    pub collective_timeout: Duration,
}

impl DistEnv {
    /// The job this process belongs to, from its environment: `None` when `WORLD_SIZE` is unset
    /// or 1 (a plain single-process run).
    pub fn from_env() -> Result<Option<DistEnv>> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`DistEnv::from_env`] reading the variables through `get`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<DistEnv>> {
        let num = |key: &str| -> Result<Option<usize>> {
            match get(key) {
                None => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| {
                    Error::invalid("distributed environment", format!("{key}={v:?} is not a non-negative integer"))
                }),
            }
        };
        let Some(world_size) = num("WORLD_SIZE")? else { return Ok(None) };
        if world_size == 0 {
            return Err(Error::invalid("distributed environment", "WORLD_SIZE=0: a job needs at least one rank"));
        }
        if world_size == 1 {
            return Ok(None);
        }
        let need = |key: &str| -> Result<String> {
            get(key).ok_or_else(|| {
                Error::invalid(
                    "distributed environment",
                    format!(
                        "WORLD_SIZE={world_size} is set but {key} is not: start the ranks with `ela launch` or \
                         torchrun, or set RANK, MASTER_ADDR and MASTER_PORT yourself (docs/distributed.md)"
                    ),
                )
            })
        };
        let rank: usize = need("RANK")?.trim().parse().map_err(|_| {
            Error::invalid("distributed environment", format!("RANK={:?} is not a number", get("RANK")))
        })?;
        if rank >= world_size {
            return Err(Error::invalid(
                "distributed environment",
                format!("RANK={rank} is not a rank of WORLD_SIZE={world_size} (ranks 0..{world_size})"),
            ));
        }
        let master_port = need("MASTER_PORT")?.trim().parse().map_err(|_| {
            Error::invalid("distributed environment", format!("MASTER_PORT={:?} is not a TCP port", get("MASTER_PORT")))
        })?;
        let secs = |key: &str, default: Duration| -> Result<Duration> {
            match get(key) {
                None => Ok(default),
                Some(v) => match v.trim().parse::<f64>() {
                    Ok(s) if s > 0.0 && s.is_finite() => Ok(Duration::from_secs_f64(s)),
                    _ => Err(Error::invalid(
                        "distributed environment",
                        format!("{key}={v:?} must be a positive number of seconds"),
                    )),
                },
            }
        };
        Ok(Some(DistEnv {
            rank,
            world_size,
            local_rank: num("LOCAL_RANK")?,
            master_addr: need("MASTER_ADDR")?,
            master_port,
            rendezvous_timeout: secs("ELA_RENDEZVOUS_TIMEOUT_S", DEFAULT_RENDEZVOUS_TIMEOUT)?,
            collective_timeout: secs("ELA_DIST_TIMEOUT_S", DEFAULT_COLLECTIVE_TIMEOUT)?,
        }))
    }
}
