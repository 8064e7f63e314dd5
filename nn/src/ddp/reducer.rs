//! [`GradReducer`]: averaging gradients across ranks, bucket by bucket, while the backward pass
//! is still running.

use std::collections::HashMap;

use ela_autograd::{Grads, Var};
use ela_core::{Backend, CommOp, Communicator, Error, PendingTensor, Result, Tensor};

use super::{BucketPlan, DdpConfig};

/// Averages the gradients of a fixed list of parameters across the ranks of a communicator.
///
/// Per step: pass [`GradReducer::on_grad`] to [`Var::backward_with_hook`], then call
/// [`GradReducer::finish`] on the returned gradients. Each bucket is one flat buffer (its
/// gradients, then one presence flag per parameter) reduced with [`CommOp::Avg`].
pub struct GradReducer<'c, B: Backend> {
    comm: &'c dyn Communicator<B>,
    plan: BucketPlan,
    params: Vec<Var<B>>,
    /// Var id -> (bucket, position in the bucket).
    slot: HashMap<usize, (usize, usize)>,
    /// This step's final local gradients, by bucket and position.
    ready: Vec<Vec<Option<Tensor<B>>>>,
    /// Gradients each bucket still waits for in this step.
    missing: Vec<usize>,
    /// The reductions started in this step, by bucket (buckets `0..pending.len()`).
    pending: Vec<PendingTensor<B>>,
}

impl<'c, B: Backend> GradReducer<'c, B> {
    /// A reducer of `params` (every rank must pass the same parameters in the same order).
    pub fn new(comm: &'c dyn Communicator<B>, params: Vec<Var<B>>, cfg: DdpConfig) -> Self {
        let plan = BucketPlan::new(&params, cfg.bucket_bytes);
        let mut slot = HashMap::new();
        for (b, bucket) in plan.buckets.iter().enumerate() {
            for (pos, &i) in bucket.iter().enumerate() {
                slot.insert(params[i].id(), (b, pos));
            }
        }
        let ready = plan.buckets.iter().map(|b| vec![None; b.len()]).collect();
        let missing = plan.buckets.iter().map(Vec::len).collect();
        GradReducer { comm, plan, params, slot, ready, missing, pending: Vec::new() }
    }

    /// The buckets.
    pub fn plan(&self) -> &BucketPlan {
        &self.plan
    }

    /// How many buckets have started reducing in this step so far (for tests and logs: with the
    /// hook, most of them start before the backward pass returns).
    pub fn started(&self) -> usize {
        self.pending.len()
    }

    /// Records that `var`'s gradient is final and starts every bucket that is complete and whose
    /// predecessors have started. Gradients of vars that are not among the parameters are ignored.
    pub fn on_grad(&mut self, var: &Var<B>, grad: &Tensor<B>) -> Result<()> {
        let Some(&(b, pos)) = self.slot.get(&var.id()) else { return Ok(()) };
        if self.ready[b][pos].replace(grad.clone()).is_none() {
            self.missing[b] -= 1;
        }
        self.start_ready(false)
    }

    /// Starts buckets in index order while they are complete (all of them when `all`).
    fn start_ready(&mut self, all: bool) -> Result<()> {
        while self.pending.len() < self.plan.len() {
            let b = self.pending.len();
            if !all && self.missing[b] > 0 {
                break;
            }
            let flat = self.flatten(b)?;
            self.pending.push(self.comm.all_reduce_start(&flat, CommOp::Avg)?);
        }
        Ok(())
    }

    /// Bucket `b` as one flat buffer: each gradient (zeros where this rank has none), then one
    /// presence flag (1 or 0) per parameter.
    fn flatten(&self, b: usize) -> Result<Tensor<B>> {
        let bucket = &self.plan.buckets[b];
        let dtype = self.params[bucket[0]].dtype();
        let dev = self.params[bucket[0]].device();
        let mut parts = Vec::with_capacity(bucket.len() + 1);
        let mut flags = Vec::with_capacity(bucket.len());
        for (pos, &i) in bucket.iter().enumerate() {
            let n = self.params[i].value().elem_count();
            parts.push(match &self.ready[b][pos] {
                Some(g) => g.to_dtype(dtype)?.reshape([n])?,
                None => Tensor::zeros([n], dtype, &dev)?,
            });
            flags.push(if self.ready[b][pos].is_some() { 1.0 } else { 0.0 });
        }
        // All present (the usual case): a fill on the device, because an upload would make the
        // host wait for the queued backward work and so end the overlap.
        parts.push(if flags.iter().all(|&f| f == 1.0) {
            Tensor::ones([bucket.len()], dtype, &dev)?
        } else {
            Tensor::from_cpu_storage(&ela_core::CpuStorage::from_f64_vec(&flags, dtype)?, [bucket.len()], &dev)?
        });
        Tensor::concat(&parts.iter().collect::<Vec<_>>(), 0)
    }

    /// Starts the buckets not started yet, waits for all, and replaces `grads`' entries of the
    /// parameters by their average over ranks (removing those no rank has a gradient for). Then
    /// the reducer is ready for the next step.
    pub fn finish(&mut self, grads: &mut Grads<B>) -> Result<()> {
        // A gradient the hook did not report (a backward without the hook) is taken from `grads`.
        for p in &self.params {
            let (b, pos) = self.slot[&p.id()];
            if self.ready[b][pos].is_none() && b >= self.pending.len() {
                if let Some(g) = grads.get(p) {
                    self.ready[b][pos] = Some(g.clone());
                    self.missing[b] -= 1;
                }
            }
        }
        self.start_ready(true)?;
        let pending = std::mem::take(&mut self.pending);
        for (b, done) in pending.into_iter().enumerate() {
            let flat = done.wait()?;
            let bucket = &self.plan.buckets[b];
            let total: usize = bucket.iter().map(|&i| self.params[i].value().elem_count()).sum();
            if flat.elem_count() != total + bucket.len() {
                return Err(Error::invalid(
                    "GradReducer::finish",
                    format!(
                        "bucket {b} came back with {} elements, expected {}",
                        flat.elem_count(),
                        total + bucket.len()
                    ),
                ));
            }
            // Presence flags are read (a host copy) only where this rank lacks a gradient: one
            // that is present here is present in the average.
            let locally_missing = self.ready[b].iter().any(Option::is_none);
            let flags = if locally_missing { flat.narrow(0, total, bucket.len())?.to_vec_f64()? } else { vec![] };
            let mut off = 0;
            for (pos, &i) in bucket.iter().enumerate() {
                let p = &self.params[i];
                let n = p.value().elem_count();
                let present = self.ready[b][pos].is_some() || flags[pos] > 0.0;
                if present {
                    grads.insert(p, flat.narrow(0, off, n)?.reshape(p.shape())?);
                } else {
                    grads.remove(p);
                }
                off += n;
            }
        }
        for (b, bucket) in self.plan.buckets.iter().enumerate() {
            self.ready[b].iter_mut().for_each(|g| *g = None);
            self.missing[b] = bucket.len();
        }
        Ok(())
    }
}
