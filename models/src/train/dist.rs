//! The data-parallel parts of the training loop (used by [`super::run`] when it runs as one
//! rank of a group): each rank's share of a batch, sharing rank 0's resumed run (settings,
//! weights, optimizer state) with the other ranks, and the quantities the ranks must agree on
//! (the loss reported, the experts' load that drives loss-free balancing).

use std::collections::BTreeMap;

use ela_core::{Backend, CommOp, Communicator, CpuStorage, DType, Error, Result, Tensor};
use ela_nn::checkpoint::Metadata;
use ela_nn::module::StateDict;
use ela_nn::moe::RoutingStats;

use crate::data::Batch;

/// Refuses a world size that does not divide the global batch.
pub(crate) fn check_world(batch: usize, world: usize) -> Result<()> {
    if !batch.is_multiple_of(world) {
        return Err(Error::invalid(
            "train",
            format!(
                "--batch {batch} is the global batch, split evenly over the {world} ranks: it must be a multiple of \
                 the world size (e.g. --batch {})",
                batch.div_ceil(world) * world
            ),
        ));
    }
    Ok(())
}

/// Rank `rank`'s rows `[rank * B / W, (rank + 1) * B / W)` of the global batch `b`: W ranks see
/// exactly the rows one process would.
pub(crate) fn shard(b: Batch, rank: usize, world: usize) -> Batch {
    let per = b.batch / world;
    let rows = rank * per * b.seq..(rank + 1) * per * b.seq;
    Batch { inputs: b.inputs[rows.clone()].to_vec(), targets: b.targets[rows].to_vec(), batch: per, seq: b.seq }
}

/// Rank 0's `bytes` on every rank (the other ranks' argument is ignored).
fn broadcast_bytes<B: Backend>(comm: &dyn Communicator<B>, dev: &B, bytes: &[u8]) -> Result<Vec<u8>> {
    let len = Tensor::from_vec(vec![bytes.len() as f64], [1], dev)?;
    let len = comm.broadcast(&len, 0)?.to_scalar()? as usize;
    if len == 0 {
        return Ok(vec![]);
    }
    let mine = if comm.rank() == 0 { bytes.to_vec() } else { vec![0u8; len] };
    let t = Tensor::from_cpu_storage(&CpuStorage::U8(mine), [len], dev)?;
    comm.broadcast(&t, 0)?.to_vec::<u8>()
}

fn put(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn take(bytes: &[u8], at: &mut usize) -> Result<String> {
    let bad = || Error::Distributed { op: "train", msg: "rank 0 sent a damaged run description".into() };
    let n = u32::from_le_bytes(bytes.get(*at..*at + 4).ok_or_else(bad)?.try_into().map_err(|_| bad())?) as usize;
    let s = bytes.get(*at + 4..*at + 4 + n).ok_or_else(bad)?;
    *at += 4 + n;
    String::from_utf8(s.to_vec()).map_err(|_| bad())
}

/// Rank 0's resumed-run metadata (or its absence) on every rank.
pub(crate) fn share_metadata<B: Backend>(
    comm: &dyn Communicator<B>,
    dev: &B,
    meta: Option<&Metadata>,
) -> Result<Option<Metadata>> {
    let mut bytes = vec![];
    if let Some(m) = meta {
        bytes.push(1);
        for (k, v) in m {
            put(&mut bytes, k);
            put(&mut bytes, v);
        }
    }
    let got = broadcast_bytes(comm, dev, &bytes)?;
    if got.is_empty() {
        return Ok(None);
    }
    let (mut at, mut m) = (1, BTreeMap::new());
    while at < got.len() {
        let k = take(&got, &mut at)?;
        m.insert(k, take(&got, &mut at)?);
    }
    Ok(Some(m))
}

const DTYPES: [DType; 6] = [DType::U8, DType::U32, DType::F16, DType::BF16, DType::F32, DType::F64];

/// Rank 0's state dict on every rank: the names, dtypes and shapes first, then each tensor.
pub(crate) fn share_state<B: Backend>(comm: &dyn Communicator<B>, dev: &B, sd: &StateDict<B>) -> Result<StateDict<B>> {
    let mut manifest = vec![];
    for (name, t) in sd {
        put(&mut manifest, name);
        let code = DTYPES.iter().position(|d| *d == t.dtype()).unwrap_or(DTYPES.len() - 1);
        let dims: Vec<String> = t.dims().iter().map(|d| d.to_string()).collect();
        put(&mut manifest, &format!("{code} {}", dims.join(",")));
    }
    let manifest = broadcast_bytes(comm, dev, &manifest)?;
    let mut out = StateDict::new();
    let mut at = 0;
    while at < manifest.len() {
        let name = take(&manifest, &mut at)?;
        let desc = take(&manifest, &mut at)?;
        let (code, dims) = desc.split_once(' ').unwrap_or((&desc, ""));
        let dtype = DTYPES[code.parse::<usize>().unwrap_or(DTYPES.len() - 1).min(DTYPES.len() - 1)];
        let dims: Vec<usize> = dims.split(',').filter(|d| !d.is_empty()).filter_map(|d| d.parse().ok()).collect();
        let mine = match sd.get(&name) {
            Some(t) if comm.rank() == 0 => t.clone(),
            _ => Tensor::zeros(dims, dtype, dev)?,
        };
        out.insert(name, comm.broadcast(&mine, 0)?);
    }
    Ok(out)
}

/// The mean over ranks of a one-element tensor (each rank's mean over an equal share of the
/// batch, so this is the mean over the global batch).
pub(crate) fn global_mean<B: Backend>(comm: &dyn Communicator<B>, x: &Tensor<B>) -> Result<f64> {
    comm.all_reduce(&x.to_dtype(DType::F64)?.reshape([1])?, CommOp::Avg)?.to_scalar()
}

/// Replaces each layer's routing statistics by those of the global batch: summed expert counts
/// (so every rank applies the same loss-free balancing update as one process would) and the
/// mean entropy. Per-token choices stay local (only `ela claims moe` reads them, on one process).
pub(crate) fn global_routing<B: Backend>(
    comm: &dyn Communicator<B>,
    dev: &B,
    stats: &mut [RoutingStats],
) -> Result<()> {
    if stats.is_empty() {
        return Ok(());
    }
    let world = comm.world_size() as f64;
    let mut flat: Vec<f64> = vec![];
    for s in stats.iter() {
        flat.extend(s.counts.iter().map(|&c| c as f64));
        flat.push(s.entropy);
    }
    let n = flat.len();
    let sum = comm.all_reduce(&Tensor::from_vec(flat, [n], dev)?, CommOp::Sum)?.to_vec::<f64>()?;
    let mut at = 0;
    for s in stats.iter_mut() {
        let e = s.counts.len();
        s.counts = sum[at..at + e].iter().map(|&c| c.round() as usize).collect();
        let total: usize = s.counts.iter().sum();
        s.load = s.counts.iter().map(|&c| c as f64 / total.max(1) as f64).collect();
        s.entropy = sum[at + e] / world;
        at += e + 1;
    }
    Ok(())
}
