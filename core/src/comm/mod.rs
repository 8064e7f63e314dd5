//! Collective communication between the ranks of a data-parallel job: the [`Communicator`] trait
//! every transport implements, the pending result of an asynchronous collective
//! ([`PendingTensor`]), and two host implementations: the shapes and arithmetic of the
//! collectives on host buffers ([`host`]), and an in-process group of threads ([`LocalComm`])
//! that the training-loop tests run against.
//!
//! The GPU transport is NCCL (`ela_cuda::NcclComm`); ela-models adds a TCP one for CPU processes
//! started by `ela launch`. All of them follow PyTorch's `torch.distributed` conventions:
//!
//! - every rank calls the same collectives in the same order with tensors of the same shape and
//!   dtype (a transport that can check this, the host ones, returns a typed error otherwise; NCCL
//!   cannot, which is why callers issue collectives in a fixed order);
//! - [`Communicator::all_gather`] concatenates along axis 0 (`[n, ..] -> [world * n, ..]`) and
//!   [`Communicator::reduce_scatter`] is its reduction counterpart (`[world * n, ..] -> [n, ..]`,
//!   rank `r` keeping rows `r * n .. (r + 1) * n` of the reduction);
//! - results are new tensors: inputs are never written.

pub mod host;
mod local;

pub use local::LocalComm;

use crate::backend::Backend;
use crate::error::Result;
use crate::tensor::Tensor;

/// How an all-reduce or reduce-scatter combines the ranks' values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CommOp {
    /// The elementwise sum over ranks.
    Sum,
    /// The elementwise mean over ranks (the sum divided by the world size): how data-parallel
    /// training combines gradients.
    Avg,
}

impl std::fmt::Display for CommOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CommOp::Sum => "sum",
            CommOp::Avg => "avg",
        })
    }
}

/// The result of a collective that may still be running (on a GPU: queued on the
/// communicator's own stream). [`PendingTensor::wait`] returns the tensor, ordered so that work
/// queued afterwards on the device sees the finished result; it does not necessarily block the
/// host (NCCL's makes the compute stream wait on an event).
#[must_use = "a collective's result must be waited for before its tensor is used"]
pub struct PendingTensor<B: Backend> {
    finish: Box<dyn FnOnce() -> Result<Tensor<B>> + Send>,
}

impl<B: Backend> PendingTensor<B> {
    /// A result that is already complete (host transports, which finish before returning).
    pub fn ready(t: Tensor<B>) -> Self {
        PendingTensor { finish: Box::new(move || Ok(t)) }
    }
    /// A result completed by `finish` (which keeps alive whatever the collective reads or writes).
    pub fn new(finish: impl FnOnce() -> Result<Tensor<B>> + Send + 'static) -> Self {
        PendingTensor { finish: Box::new(finish) }
    }
    /// The result, ordered after the collective.
    pub fn wait(self) -> Result<Tensor<B>> {
        (self.finish)()
    }
}

impl<B: Backend> std::fmt::Debug for PendingTensor<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingTensor")
    }
}

/// One rank's handle on a group of `world_size` ranks that exchange tensors of backend `B`.
///
/// Implementations: [`LocalComm`] (threads of one process, any backend, through host memory),
/// ela-models' TCP communicator (CPU processes) and `ela_cuda::NcclComm` (NCCL on GPUs).
pub trait Communicator<B: Backend>: Send + Sync {
    /// This rank, in `0..world_size()`.
    fn rank(&self) -> usize;
    /// The number of ranks in the group.
    fn world_size(&self) -> usize;
    /// Starts an all-reduce of `x` (every rank gets the combination of all ranks' `x`). On a GPU
    /// it runs on the communicator's stream, overlapping compute queued after this call, until
    /// [`PendingTensor::wait`].
    fn all_reduce_start(&self, x: &Tensor<B>, op: CommOp) -> Result<PendingTensor<B>>;
    /// Rank `root`'s `x` on every rank (the other ranks' `x` give only the shape and dtype).
    fn broadcast(&self, x: &Tensor<B>, root: usize) -> Result<Tensor<B>>;
    /// Every rank's `x` (`[n, ..]`) concatenated in rank order along axis 0: `[world * n, ..]`.
    fn all_gather(&self, x: &Tensor<B>) -> Result<Tensor<B>>;
    /// The combination over ranks of `x` (`[world * n, ..]`), of which this rank keeps rows
    /// `rank * n .. (rank + 1) * n`: `[n, ..]`.
    fn reduce_scatter(&self, x: &Tensor<B>, op: CommOp) -> Result<Tensor<B>>;

    /// [`Communicator::all_reduce_start`] and wait.
    fn all_reduce(&self, x: &Tensor<B>, op: CommOp) -> Result<Tensor<B>> {
        self.all_reduce_start(x, op)?.wait()
    }
}
