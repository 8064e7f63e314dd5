//! Data-parallel training across processes and machines: the environment a rank is started with
//! ([`DistEnv`], torchrun's variables), the TCP rendezvous that connects the ranks and hands out
//! NCCL's unique id ([`rendezvous()`]), the CPU transport over those connections ([`TcpComm`]),
//! the launcher behind `ela launch` ([`launch()`]), and [`train_from_env`], which picks the
//! transport for `--device` (NCCL for `cuda`, TCP for `cpu`) and runs the training loop as one
//! rank. See docs/distributed.md.

mod env;
mod launch;
pub mod rendezvous;
mod tcp_comm;

pub use env::{DistEnv, DEFAULT_COLLECTIVE_TIMEOUT, DEFAULT_RENDEZVOUS_TIMEOUT};
pub use launch::{launch, LaunchPlan};
pub use rendezvous::{rendezvous, Rendezvous};
pub use tcp_comm::TcpComm;

use ela_core::{Cpu, Error, Result};
use ela_cuda::{Cuda, NcclComm, NCCL_ID_BYTES};

use crate::device::Device;
use crate::train::{train_data_parallel, TrainArgs, TrainReport};

/// Runs `ela train` as rank `env.rank` of a job: rendezvous, the communicator for the device
/// (`--device cuda` runs on GPU `LOCAL_RANK` through NCCL; `--device cpu` through [`TcpComm`]),
/// then the data-parallel loop. Returns rank 0's report (`None` on the other ranks).
pub fn train_from_env(args: &TrainArgs, env: &DistEnv) -> Result<Option<TrainReport>> {
    let device: Device = args.device.parse()?;
    match device {
        Device::Cpu => {
            let comm = TcpComm::new(rendezvous(env, || Ok(vec![]))?, env.collective_timeout)?;
            train_data_parallel(args, &Cpu, &comm)
        }
        Device::Cuda(n) => {
            if args.device != "cuda" {
                return Err(Error::invalid(
                    "train",
                    format!(
                        "--device cuda:{n} under a launcher: each rank uses GPU LOCAL_RANK, so pass --device cuda (choose \
                         the GPUs with CUDA_VISIBLE_DEVICES)"
                    ),
                ));
            }
            let local = env.local_rank.ok_or_else(|| {
                Error::invalid(
                    "train",
                    "LOCAL_RANK is not set: a GPU rank needs it to pick its GPU (ela launch and torchrun set it)",
                )
            })?;
            let gpu = Cuda::new(local)?;
            let rdzv = rendezvous(env, || NcclComm::unique_id().map(|id| id.to_vec()))?;
            let id: [u8; NCCL_ID_BYTES] = rdzv.payload.as_slice().try_into().map_err(|_| Error::Distributed {
                op: "rendezvous",
                msg: format!("rank 0 sent {} bytes, not an NCCL unique id of {NCCL_ID_BYTES}", rdzv.payload.len()),
            })?;
            let comm = NcclComm::new(&gpu, env.rank, env.world_size, &id, env.collective_timeout)?;
            // The TCP links are not needed once NCCL is up.
            drop(rdzv);
            train_data_parallel(args, &gpu, &comm)
        }
    }
}
