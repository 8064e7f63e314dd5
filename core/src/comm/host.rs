//! The collectives on host buffers: argument checks every transport shares, and the arithmetic
//! the host transports ([`super::LocalComm`], ela-models' TCP communicator) apply once they hold
//! every rank's input. Values travel as f64 (exact for every dtype the engine has) and are
//! combined in rank order, so the result does not depend on which rank arrived first.

use crate::backend::Backend;
use crate::cpu::CpuStorage;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::tensor::Tensor;

use super::{CommOp, Communicator, PendingTensor};

/// Which collective a rank called (every rank of one call must name the same one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Collective {
    /// [`super::Communicator::all_reduce_start`].
    AllReduce(CommOp),
    /// [`super::Communicator::broadcast`] from this root.
    Broadcast(usize),
    /// [`super::Communicator::all_gather`].
    AllGather,
    /// [`super::Communicator::reduce_scatter`].
    ReduceScatter(CommOp),
}

impl Collective {
    /// The op name errors use.
    pub fn name(&self) -> &'static str {
        match self {
            Collective::AllReduce(_) => "all_reduce",
            Collective::Broadcast(_) => "broadcast",
            Collective::AllGather => "all_gather",
            Collective::ReduceScatter(_) => "reduce_scatter",
        }
    }
}

/// One rank's tensor on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Dimensions.
    pub dims: Vec<usize>,
    /// The dtype the tensor has on its device.
    pub dtype: DType,
    /// The elements in row-major order, as f64.
    pub data: Vec<f64>,
}

impl HostTensor {
    /// A copy of `x` on the host.
    pub fn from_tensor<B: Backend>(x: &Tensor<B>) -> Result<Self> {
        Ok(HostTensor { dims: x.dims().to_vec(), dtype: x.dtype(), data: x.to_vec_f64()? })
    }
    /// This tensor on `device`, in its dtype.
    pub fn to_tensor<B: Backend>(&self, device: &B) -> Result<Tensor<B>> {
        Tensor::from_cpu_storage(&CpuStorage::from_f64_vec(&self.data, self.dtype)?, self.dims.clone(), device)
    }
}

/// Checks the arguments one rank can check alone (before any exchange, so that a bad call fails
/// on the rank that made it with a message naming the values): the root of a broadcast, and the
/// leading axis of all-gather and reduce-scatter.
pub fn check_call(coll: Collective, dims: &[usize], world: usize) -> Result<()> {
    let op = coll.name();
    match coll {
        Collective::Broadcast(root) if root >= world => {
            Err(Error::invalid(op, format!("root {root} is not a rank of this group of {world} (ranks 0..{world})")))
        }
        Collective::AllGather | Collective::ReduceScatter(_) if dims.is_empty() => Err(Error::RankMismatch {
            op,
            expected: "at least 1 (the ranks' parts are stacked along axis 0)",
            shape: Shape::from(dims.to_vec()),
        }),
        Collective::ReduceScatter(_) if !dims[0].is_multiple_of(world) => Err(Error::invalid(
            op,
            format!(
                "axis 0 of shape {:?} has {} rows, not a multiple of the world size {world}: each rank keeps \
                 an equal block of rows (pad the tensor)",
                dims, dims[0]
            ),
        )),
        _ => Ok(()),
    }
}

/// Every rank's result of `coll`, given every rank's input in rank order. Errors (the same one
/// for every rank) when the ranks called different collectives or passed different shapes or
/// dtypes.
pub fn combine(calls: &[(Collective, HostTensor)]) -> Result<Vec<HostTensor>> {
    let world = calls.len();
    let (coll, first) = match calls.first() {
        Some((c, t)) => (*c, t),
        None => return Ok(vec![]),
    };
    let op = coll.name();
    for (r, (c, t)) in calls.iter().enumerate() {
        if *c != coll {
            return Err(Error::invalid(
                op,
                format!("rank 0 called {coll:?} but rank {r} called {c:?}: every rank must call the same collectives in the same order"),
            ));
        }
        if t.dims != first.dims || t.dtype != first.dtype {
            return Err(Error::invalid(
                op,
                format!(
                    "rank 0 passed a {:?} {:?} tensor but rank {r} a {:?} {:?} one: every rank must pass the same \
                     shape and dtype",
                    first.dtype, first.dims, t.dtype, t.dims
                ),
            ));
        }
        check_call(coll, &t.dims, world)?;
    }
    let reduce = |cop: CommOp| -> Vec<f64> {
        let mut acc = first.data.clone();
        for (_, t) in &calls[1..] {
            for (a, b) in acc.iter_mut().zip(&t.data) {
                *a += b;
            }
        }
        if cop == CommOp::Avg {
            acc.iter_mut().for_each(|a| *a /= world as f64);
        }
        acc
    };
    let same = |t: HostTensor| vec![t; world];
    Ok(match coll {
        Collective::AllReduce(cop) => same(HostTensor { data: reduce(cop), ..first.clone() }),
        Collective::Broadcast(root) => same(calls[root].1.clone()),
        Collective::AllGather => {
            let mut dims = first.dims.clone();
            dims[0] *= world;
            let data = calls.iter().flat_map(|(_, t)| t.data.iter().copied()).collect();
            same(HostTensor { dims, dtype: first.dtype, data })
        }
        Collective::ReduceScatter(cop) => {
            let all = reduce(cop);
            let mut dims = first.dims.clone();
            dims[0] /= world;
            let n = all.len() / world;
            (0..world)
                .map(|r| HostTensor { dims: dims.clone(), dtype: first.dtype, data: all[r * n..(r + 1) * n].to_vec() })
                .collect()
        }
    })
}

/// A transport that completes every collective on the host before returning: the ranks swap
/// [`HostTensor`]s ([`LocalComm`](super::LocalComm) through shared memory, ela-models' TCP
/// communicator through sockets), and the [`Communicator`] methods follow from that one exchange.
pub trait HostExchange: Send + Sync {
    /// This rank.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn world_size(&self) -> usize;
    /// Run `coll` with this rank's contribution `mine` and return this rank's result.
    fn exchange(&self, coll: Collective, mine: HostTensor) -> Result<HostTensor>;
}

fn run<B: Backend>(t: &(impl HostExchange + ?Sized), coll: Collective, x: &Tensor<B>) -> Result<Tensor<B>> {
    t.exchange(coll, HostTensor::from_tensor(x)?)?.to_tensor(x.device())
}

impl<B: Backend, T: HostExchange> Communicator<B> for T {
    fn rank(&self) -> usize {
        HostExchange::rank(self)
    }
    fn world_size(&self) -> usize {
        HostExchange::world_size(self)
    }
    fn all_reduce_start(&self, x: &Tensor<B>, op: CommOp) -> Result<PendingTensor<B>> {
        // The exchange has completed when it returns: there is nothing to overlap.
        Ok(PendingTensor::ready(run(self, Collective::AllReduce(op), x)?))
    }
    fn broadcast(&self, x: &Tensor<B>, root: usize) -> Result<Tensor<B>> {
        run(self, Collective::Broadcast(root), x)
    }
    fn all_gather(&self, x: &Tensor<B>) -> Result<Tensor<B>> {
        run(self, Collective::AllGather, x)
    }
    fn reduce_scatter(&self, x: &Tensor<B>, op: CommOp) -> Result<Tensor<B>> {
        run(self, Collective::ReduceScatter(op), x)
    }
}
