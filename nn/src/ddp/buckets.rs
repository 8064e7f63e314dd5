//! [`BucketPlan`]: which parameters' gradients travel together in one all-reduce.

use ela_autograd::Var;
use ela_core::{Backend, DType};

/// Parameters (indices into the list given to [`BucketPlan::new`]) grouped into buckets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketPlan {
    /// The buckets, in the order they are reduced; each holds parameter indices.
    pub buckets: Vec<Vec<usize>>,
}

impl BucketPlan {
    /// Buckets of about `bucket_bytes` each, filled in reverse parameter order (the order in
    /// which a backward pass usually finishes gradients: last layer first). A bucket holds one
    /// dtype only (it is one flat buffer) and closes once it reaches `bucket_bytes`; so a
    /// parameter larger than that sits alone, and `bucket_bytes == 0` gives one per parameter.
    pub fn new<B: Backend>(params: &[Var<B>], bucket_bytes: usize) -> BucketPlan {
        let metas: Vec<(DType, usize)> =
            params.iter().map(|p| (p.dtype(), p.value().elem_count() * p.dtype().size_in_bytes())).collect();
        Self::from_sizes(&metas, bucket_bytes)
    }

    /// [`BucketPlan::new`] from each parameter's dtype and size in bytes.
    pub fn from_sizes(params: &[(DType, usize)], bucket_bytes: usize) -> BucketPlan {
        let mut buckets: Vec<Vec<usize>> = Vec::new();
        let mut open: Option<(DType, usize)> = None; // dtype and bytes of the last bucket
        for i in (0..params.len()).rev() {
            let (dtype, bytes) = params[i];
            match &mut open {
                Some((d, filled)) if *d == dtype && *filled < bucket_bytes.max(1) => {
                    *filled += bytes;
                    buckets.last_mut().expect("open bucket").push(i);
                }
                _ => {
                    buckets.push(vec![i]);
                    open = Some((dtype, bytes));
                }
            }
        }
        BucketPlan { buckets }
    }

    /// Number of buckets.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True when there is no parameter.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}
