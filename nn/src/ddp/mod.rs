//! Data-parallel training: every rank holds a full replica of the model, computes gradients on
//! its own share of the batch, and the gradients are averaged across ranks before the optimizer
//! step, so that every replica takes the same step as one process with the whole batch would.
//!
//! - [`BucketPlan`] groups the parameters into buckets of about [`DdpConfig::bucket_bytes`]
//!   (PyTorch DDP's 25 MiB by default), in reverse registration order: the last layers'
//!   gradients are final first in the backward pass.
//! - [`GradReducer`] receives each gradient the moment it is final
//!   ([`ela_autograd::Var::backward_with_hook`]) and starts the all-reduce of a bucket as soon
//!   as all of its gradients are in, so that (on a GPU, where collectives run on their own
//!   stream) the communication of the last layers overlaps the backward pass of the first.
//!   Buckets are always started in index order, the same on every rank, which is what keeps the
//!   ranks' collectives matched even when a bucket is complete earlier on one rank than another.
//! - [`broadcast_params`] copies rank 0's parameters to every rank before training starts.
//!
//! A parameter that gets no gradient on some rank (an expert no token of that rank's share was
//! routed to) counts as zero there; one that gets no gradient on any rank gets none after the
//! reduction either, exactly as in a single-process run of the whole batch (the optimizer then
//! skips it). Each bucket carries one presence flag per parameter for this.

mod buckets;
mod reducer;

pub use buckets::BucketPlan;
pub use reducer::GradReducer;

use ela_autograd::Var;
use ela_core::{Backend, Communicator, Result};

/// PyTorch DDP's default bucket size (`bucket_cap_mb=25`), in bytes.
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// Settings of gradient synchronisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DdpConfig {
    /// A bucket is closed once its gradients reach this many bytes (a parameter larger than that
    /// gets a bucket of its own). Smaller buckets start communicating earlier, larger ones make
    /// fewer, more efficient collectives.
    pub bucket_bytes: usize,
}

impl Default for DdpConfig {
    fn default() -> Self {
        DdpConfig { bucket_bytes: DEFAULT_BUCKET_BYTES }
    }
}

/// Sets every parameter to rank 0's value (all ranks must call it with the same parameters in
/// the same order). Parameters initialised from the same seed are already equal; this makes it
/// true whatever happened before (a checkpoint only rank 0 read, a different default device).
pub fn broadcast_params<B: Backend>(comm: &dyn Communicator<B>, params: &[Var<B>]) -> Result<()> {
    if comm.world_size() == 1 {
        return Ok(());
    }
    for p in params {
        p.set_value(comm.broadcast(&p.value(), 0)?)?;
    }
    Ok(())
}
