//! Indexing ops. `index_select` <-> `index_add` and `gather` <-> `scatter_add` are adjoint
//! pairs, so each one's backward is the other. `topk` routes gradients to the selected
//! positions. Indices are constants. Derivations: docs/autograd.md#indexing.

use ela_core::{Backend, Dim, Result, Tensor};

use crate::var::Var;

impl<B: Backend> Var<B> {
    /// Entries `ids` (`U32` vector) along `axis`.
    pub fn index_select<D: Dim>(&self, ids: &Tensor<B>, axis: D) -> Result<Self> {
        let x = self.value();
        let a = axis.to_index(x.shape(), "index_select")?;
        let y = x.index_select(ids, a)?;
        let ids = ids.clone();
        // The forward checked `ids`; checking again would wait for the device mid-backward.
        Var::record("index_select", y, &[self], move |g, _| {
            Ok(vec![Some(g.index_add_prechecked(&ids, a, x.shape())?)])
        })
    }

    /// Zeros of `out_shape` with slice `i` of `self` added at `ids[i]` along `axis` (see
    /// [`Tensor::index_add`]); the gradient is the matching `index_select` of the output's.
    pub fn index_add<D: Dim>(&self, ids: &Tensor<B>, axis: D, out_shape: &ela_core::Shape) -> Result<Self> {
        let x = self.value();
        let a = axis.to_index(x.shape(), "index_add")?;
        let y = x.index_add(ids, a, out_shape)?;
        let ids = ids.clone();
        Var::record("index_add", y, &[self], move |g, _| Ok(vec![Some(g.index_select(&ids, a)?)]))
    }

    /// Embedding lookup: rows of `self [vocab, dim]` for `ids` of any shape.
    pub fn embedding(&self, ids: &Tensor<B>) -> Result<Self> {
        let mut out = ids.dims().to_vec();
        out.push(*self.value().dims().last().unwrap_or(&0));
        self.index_select(&ids.flatten_all()?, 0usize)?.reshape(out)
    }

    /// numpy `take_along_axis` (see [`Tensor::gather`]).
    pub fn gather<D: Dim>(&self, ids: &Tensor<B>, axis: D) -> Result<Self> {
        let x = self.value();
        let a = axis.to_index(x.shape(), "gather")?;
        let y = x.gather(ids, a)?;
        let ids = ids.clone();
        Var::record("gather", y, &[self], move |g, _| {
            Ok(vec![Some(x.zeros_like()?.scatter_add(&ids, &g.contiguous()?, a)?)])
        })
    }

    /// `self` plus `src` scattered at `ids` along `axis` (see [`Tensor::scatter_add`]).
    pub fn scatter_add<D: Dim>(&self, ids: &Tensor<B>, src: &Self, axis: D) -> Result<Self> {
        let x = self.value();
        let a = axis.to_index(x.shape(), "scatter_add")?;
        let y = x.scatter_add(ids, &src.value(), a)?;
        let ids = ids.clone();
        Var::record("scatter_add", y, &[self, src], move |g, needs| {
            Ok(vec![Some(g.clone()), needs[1].then(|| g.gather(&ids, a)).transpose()?])
        })
    }

    /// The `k` largest values along `axis` and their (constant) `U32` indices.
    pub fn topk<D: Dim>(&self, k: usize, axis: D) -> Result<(Self, Tensor<B>)> {
        let x = self.value();
        let a = axis.to_index(x.shape(), "topk")?;
        let (v, idx) = x.topk(k, a)?;
        let ids = idx.contiguous()?;
        let ids2 = ids.clone();
        let var = Var::record("topk", v, &[self], move |g, _| {
            Ok(vec![Some(x.zeros_like()?.scatter_add(&ids2, &g.contiguous()?, a)?)])
        })?;
        Ok((var, ids))
    }
}
