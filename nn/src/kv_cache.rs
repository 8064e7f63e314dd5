//! The key-value cache of softmax attention, written in place, and the prefill that reads a long
//! prompt without materialising its `t x t` score matrix.
//!
//! Decoding with softmax attention keeps every past key and value. A cache that grew by
//! concatenation would copy all of it on every token (O(t) bytes moved per token on top of the
//! O(t) attention read); here the buffers `[batch, heads, capacity, d_h]` are allocated once and
//! each token's key and value are written into the next free position
//! ([`Tensor::write_slice`]). Attention reads the filled prefix through a `narrow` view, which the
//! GEMMs consume without a copy (its batch axes still collapse to one stride). When the buffers
//! are full they are reallocated at twice the capacity, like a `Vec`; [`KvCache::reserve`]
//! avoids that in a loop whose length is known.

use ela_core::{Backend, CmpOp, DType, Error, Result, Tensor};

/// Keys and values of every decoded position, in preallocated buffers.
pub struct KvCache<B: Backend> {
    /// Keys (after RoPE) `[batch, heads, capacity, d_h]`; positions `len..` are unused.
    k: Tensor<B>,
    /// Values, same shape.
    v: Tensor<B>,
    len: usize,
}

impl<B: Backend> KvCache<B> {
    /// A cache holding the prompt's keys and values `[batch, heads, t, d_h]`, with room for at
    /// least `capacity` positions in all.
    pub fn from_prompt(k: &Tensor<B>, v: &Tensor<B>, capacity: usize) -> Result<Self> {
        if k.rank() != 4 || k.dims() != v.dims() {
            return Err(Error::ShapeMismatch {
                op: "KvCache",
                lhs: k.shape().clone(),
                rhs: v.shape().clone(),
                hint: "keys and values must both be [batch, heads, time, head_dim]".into(),
            });
        }
        let t = k.dims()[2];
        let mut cache = KvCache { k: Self::buffer(k, capacity.max(t))?, v: Self::buffer(v, capacity.max(t))?, len: 0 };
        cache.write(k, v)?;
        Ok(cache)
    }

    fn buffer(like: &Tensor<B>, capacity: usize) -> Result<Tensor<B>> {
        let d = like.dims();
        Tensor::zeros([d[0], d[1], capacity, d[3]], like.dtype(), like.device())
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the buffers can hold before they are reallocated.
    pub fn capacity(&self) -> usize {
        self.k.dims()[2]
    }

    /// Bytes allocated for keys and values (the whole capacity: what the device holds).
    pub fn bytes(&self) -> usize {
        (self.k.elem_count() + self.v.elem_count()) * self.k.dtype().size_in_bytes()
    }

    /// Make room for `additional` more positions without reallocating while they are appended.
    pub fn reserve(&mut self, additional: usize) -> Result<()> {
        let need = self.len.checked_add(additional).ok_or_else(|| {
            Error::invalid("KvCache::reserve", format!("{} + {additional} positions overflow usize", self.len))
        })?;
        if need <= self.capacity() {
            return Ok(());
        }
        let (k, v) = (self.keys()?, self.values()?);
        let (mut nk, mut nv) = (Self::buffer(&self.k, need)?, Self::buffer(&self.v, need)?);
        nk.write_slice(2usize, 0, &k)?;
        nv.write_slice(2usize, 0, &v)?;
        drop((k, v));
        (self.k, self.v) = (nk, nv);
        Ok(())
    }

    /// Append keys and values `[batch, heads, n, d_h]` (usually `n = 1`), doubling the buffers
    /// when they are full.
    pub fn write(&mut self, k: &Tensor<B>, v: &Tensor<B>) -> Result<()> {
        let n = k.dims().get(2).copied().unwrap_or(0);
        if self.len + n > self.capacity() {
            self.reserve((self.len + n).max(2 * self.capacity()) - self.len)?;
        }
        self.k.write_slice(2usize, self.len, k)?;
        self.v.write_slice(2usize, self.len, v)?;
        self.len += n;
        Ok(())
    }

    /// The held keys `[batch, heads, len, d_h]`: a view, to be dropped before the next write.
    pub fn keys(&self) -> Result<Tensor<B>> {
        self.k.narrow(2usize, 0, self.len)
    }

    /// The held values, a view like [`KvCache::keys`].
    pub fn values(&self) -> Result<Tensor<B>> {
        self.v.narrow(2usize, 0, self.len)
    }
}

/// Elements of score matrix one prefill block may hold (`2^26` f32 = 256 MiB).
pub const PREFILL_SCORES: usize = 1 << 26;

/// Causal `softmax(q k^T / sqrt(d_h)) v` over `[batch, heads, t, d_h]` tensors computed a block
/// of queries at a time: block `[s, e)` attends to keys `[0, e)` only, so the scores held at once
/// are `block x e`, never `t x t`. The result equals [`crate::attention::softmax_attention`]'s
/// (each row's softmax sees the same keys and masked positions), without a tape: for prefill.
pub fn blocked_causal_attention<B: Backend>(q: &Tensor<B>, k: &Tensor<B>, v: &Tensor<B>) -> Result<Tensor<B>> {
    let d = q.dims();
    let rows_times_t = d.iter().take(3).product::<usize>();
    blocked_causal_attention_by(q, k, v, (PREFILL_SCORES / rows_times_t.max(1)).max(16))
}

/// [`blocked_causal_attention`] with `block` queries per block (at least 1).
pub fn blocked_causal_attention_by<B: Backend>(
    q: &Tensor<B>,
    k: &Tensor<B>,
    v: &Tensor<B>,
    block: usize,
) -> Result<Tensor<B>> {
    let d = q.dims();
    if d.len() != 4 || k.dims() != d || v.rank() != 4 || v.dims()[..3] != d[..3] {
        return Err(Error::ShapeMismatch {
            op: "blocked_causal_attention",
            lhs: q.shape().clone(),
            rhs: if k.dims() != d { k.shape().clone() } else { v.shape().clone() },
            hint: "q, k, v must be [batch, heads, time, head_dim] with the same batch, heads and time".into(),
        });
    }
    let (t, block) = (d[2], block.max(1));
    if t == 0 {
        // No positions: an empty output of the values' shape (there is no block to concatenate).
        return Tensor::zeros(v.dims(), v.dtype(), v.device());
    }
    let scale = 1.0 / (d[3] as f64).sqrt();
    let mut outs = Vec::with_capacity(t.div_ceil(block));
    for s in (0..t).step_by(block) {
        let e = (s + block).min(t);
        let (qb, kb, vb) = (q.narrow(2usize, s, e - s)?, k.narrow(2usize, 0, e)?, v.narrow(2usize, 0, e)?);
        let scores = qb.matmul(&kb.t()?)?.mul_scalar(scale)?;
        // Query row i is position s + i and may not see keys j > s + i. The mask is built on the
        // device from two position vectors, so no block x e mask crosses the bus.
        let key_pos = Tensor::arange(0, e, DType::F64, q.device())?.reshape([1, e])?;
        let query_pos = Tensor::arange(s, e, DType::F64, q.device())?.reshape([e - s, 1])?;
        let scores = scores.masked_fill(&key_pos.cmp(CmpOp::Gt, &query_pos)?, f64::NEG_INFINITY)?;
        outs.push(scores.softmax(-1isize)?.matmul(&vb)?);
    }
    let parts: Vec<&Tensor<B>> = outs.iter().collect();
    Tensor::concat(&parts, 2usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::softmax_attention;
    use ela_autograd::Var;
    use ela_core::{Cpu, Rng};

    fn randn(shape: [usize; 4], rng: &mut Rng) -> Tensor<Cpu> {
        Tensor::randn(0.0, 1.0, shape, DType::F64, rng, &Cpu).unwrap()
    }

    #[test]
    fn blocked_prefill_equals_full_causal_attention() {
        let mut rng = Rng::new(3);
        let (q, k, v) =
            (randn([2, 3, 11, 4], &mut rng), randn([2, 3, 11, 4], &mut rng), randn([2, 3, 11, 5], &mut rng));
        let full =
            softmax_attention(&Var::constant(q.clone()), &Var::constant(k.clone()), &Var::constant(v.clone()), true)
                .unwrap()
                .value()
                .to_vec_f64()
                .unwrap();
        // Blocks that divide t, that do not, of one query, and one block of all of them.
        for block in [1, 3, 4, 11, 64] {
            let got = blocked_causal_attention_by(&q, &k, &v, block).unwrap().to_vec_f64().unwrap();
            let err = got.iter().zip(&full).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(err < 1e-12, "block {block}: max abs error {err:e}");
        }
        let err = blocked_causal_attention(&q, &k, &v.narrow(1usize, 0, 2).unwrap()).unwrap_err().to_string();
        assert!(err.contains("blocked_causal_attention"), "{err}");
    }

    #[test]
    fn cache_grows_in_place_and_keeps_every_position() {
        let mut rng = Rng::new(5);
        let (k, v) = (randn([1, 2, 3, 4], &mut rng), randn([1, 2, 3, 4], &mut rng));
        let mut cache = KvCache::from_prompt(&k, &v, 3).unwrap();
        let (mut ks, mut vs) = (vec![k], vec![v]);
        for step in 0..6 {
            let (k1, v1) = (randn([1, 2, 1, 4], &mut rng), randn([1, 2, 1, 4], &mut rng));
            cache.write(&k1, &v1).unwrap();
            ks.push(k1);
            vs.push(v1);
            let want = Tensor::concat(&ks.iter().collect::<Vec<_>>(), 2usize).unwrap();
            assert_eq!(cache.keys().unwrap().to_vec_f64().unwrap(), want.to_vec_f64().unwrap(), "step {step}");
            let want = Tensor::concat(&vs.iter().collect::<Vec<_>>(), 2usize).unwrap();
            assert_eq!(cache.values().unwrap().to_vec_f64().unwrap(), want.to_vec_f64().unwrap(), "step {step}");
        }
        // 3 -> 6 -> 12 positions: doubling, like a Vec.
        assert_eq!((cache.len(), cache.capacity()), (9, 12));
        cache.reserve(100).unwrap();
        assert_eq!(cache.capacity(), 109);
        assert_eq!(cache.bytes(), 2 * 2 * 109 * 4 * 8);
        // A view still alive would make the next write change it: the write is refused instead.
        let held = cache.keys().unwrap();
        let err = cache.write(&randn([1, 2, 1, 4], &mut rng), &randn([1, 2, 1, 4], &mut rng)).unwrap_err();
        assert!(err.to_string().contains("shared"), "{err}");
        drop(held);
    }
}
