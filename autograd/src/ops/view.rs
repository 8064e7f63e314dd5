//! Shape ops. Each backward is the inverse view (reshape back, transpose back, inverse
//! permutation), or its adjoint: `narrow` <-> zero `pad`, `broadcast` <-> `sum_to`,
//! `concat` <-> `narrow` per part. Derivations: docs/autograd.md#shape-ops.

use ela_core::{Backend, Dim, Result, Shape, Tensor};

use crate::accumulate::{pad_window, WindowOf};
use crate::var::Var;

impl<B: Backend> Var<B> {
    /// Reshape (see [`Tensor::reshape`]).
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Self> {
        let x = self.value();
        let y = x.reshape(shape)?;
        Var::record("reshape", y, &[self], move |g, _| Ok(vec![Some(g.reshape(x.shape().clone())?)]))
    }

    /// Merge all axes into one.
    pub fn flatten_all(&self) -> Result<Self> {
        let n = self.value().elem_count();
        self.reshape(n)
    }

    /// Merge axes `start..=end`.
    pub fn flatten<D: Dim>(&self, start: D, end: D) -> Result<Self> {
        let x = self.value();
        let y = x.flatten(start, end)?;
        Var::record("flatten", y, &[self], move |g, _| Ok(vec![Some(g.reshape(x.shape().clone())?)]))
    }

    /// Swap two axes (a view).
    pub fn transpose<D: Dim>(&self, a: D, b: D) -> Result<Self> {
        let x = self.value();
        let (a, b) = (a.to_index(x.shape(), "transpose")?, b.to_index(x.shape(), "transpose")?);
        Var::record("transpose", x.transpose(a, b)?, &[self], move |g, _| Ok(vec![Some(g.transpose(a, b)?)]))
    }

    /// Swap the last two axes.
    pub fn t(&self) -> Result<Self> {
        self.transpose(-2isize, -1isize)
    }

    /// Reorder axes.
    pub fn permute(&self, perm: &[usize]) -> Result<Self> {
        let y = self.value().permute(perm)?;
        let mut inv = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inv[p] = i;
        }
        Var::record("permute", y, &[self], move |g, _| Ok(vec![Some(g.permute(&inv)?)]))
    }

    /// Elements `start..start+len` along `axis`; the gradient is zero-padded back.
    pub fn narrow<D: Dim>(&self, axis: D, start: usize, len: usize) -> Result<Self> {
        let x = self.value();
        let a = axis.to_index(x.shape(), "narrow")?;
        let y = x.narrow(a, start, len)?;
        let (at, size) = (WindowOf { axis: a, start }, x.dims()[a]);
        Var::record_window("narrow", y, self, at, move |g, _| Ok(vec![Some(pad_window(g, at, size)?)]))
    }

    /// Pieces of `size` along `axis`.
    pub fn split<D: Dim>(&self, size: usize, axis: D) -> Result<Vec<Self>> {
        let x = self.value();
        let a = axis.to_index(x.shape(), "split")?;
        let pieces = x.split(size, a)?;
        let mut start = 0;
        pieces
            .iter()
            .map(|p| {
                let len = p.dims()[a];
                let v = self.narrow(a, start, len);
                start += len;
                v
            })
            .collect()
    }

    /// `chunks` nearly equal pieces along `axis`.
    pub fn chunk<D: Dim>(&self, chunks: usize, axis: D) -> Result<Vec<Self>> {
        let x = self.value();
        let a = axis.to_index(x.shape(), "chunk")?;
        let pieces = x.chunk(chunks, a)?;
        let size = pieces.first().map_or(1, |p| p.dims()[a].max(1));
        self.split(size, a)
    }

    /// Broadcast to `shape`; the gradient is summed back.
    pub fn broadcast_as(&self, shape: impl Into<Shape>) -> Result<Self> {
        let x = self.value();
        let y = x.broadcast_as(shape)?;
        Var::record("broadcast_as", y, &[self], move |g, _| Ok(vec![Some(g.sum_to(x.shape())?)]))
    }

    /// Insert a size-1 axis.
    pub fn unsqueeze<D: Dim>(&self, axis: D) -> Result<Self> {
        let x = self.value();
        let a = axis.to_index_plus_one(x.shape(), "unsqueeze")?;
        let y = x.unsqueeze(a)?;
        // Removing the axis again is a view whatever `g`'s strides; a reshape would copy a
        // strided `g` (a transposed gradient) into a contiguous one.
        Var::record("unsqueeze", y, &[self], move |g, _| Ok(vec![Some(g.squeeze(a)?)]))
    }

    /// Remove a size-1 axis.
    pub fn squeeze<D: Dim>(&self, axis: D) -> Result<Self> {
        let x = self.value();
        let a = axis.to_index(x.shape(), "squeeze")?;
        let y = x.squeeze(a)?;
        // A view, as in `unsqueeze`.
        Var::record("squeeze", y, &[self], move |g, _| Ok(vec![Some(g.unsqueeze(a)?)]))
    }

    /// A contiguous copy (identity for gradients).
    pub fn contiguous(&self) -> Result<Self> {
        let y = self.value().contiguous()?;
        Var::record("contiguous", y, &[self], move |g, _| Ok(vec![Some(g.clone())]))
    }

    /// Concatenate along `axis`; each part's gradient is its slice of the output gradient.
    pub fn concat<D: Dim>(parts: &[&Self], axis: D) -> Result<Self> {
        let vals: Vec<Tensor<B>> = parts.iter().map(|p| p.value()).collect();
        let refs: Vec<&Tensor<B>> = vals.iter().collect();
        let first = refs.first().ok_or_else(|| ela_core::Error::invalid("concat", "needs at least one tensor"))?;
        let a = axis.to_index(first.shape(), "concat")?;
        let y = Tensor::concat(&refs, a)?;
        let sizes: Vec<usize> = vals.iter().map(|v| v.dims()[a]).collect();
        Var::record("concat", y, parts, move |g, needs| {
            let mut start = 0;
            let mut out = Vec::with_capacity(sizes.len());
            for (&len, &need) in sizes.iter().zip(needs) {
                out.push(need.then(|| g.narrow(a, start, len)?.contiguous()).transpose()?);
                start += len;
            }
            Ok(out)
        })
    }

    /// Stack along a new axis.
    pub fn stack<D: Dim>(parts: &[&Self], axis: D) -> Result<Self> {
        let first = parts.first().ok_or_else(|| ela_core::Error::invalid("stack", "needs at least one tensor"))?;
        let a = axis.to_index_plus_one(first.value().shape(), "stack")?;
        let ups: Vec<Self> = parts.iter().map(|p| p.unsqueeze(a)).collect::<Result<_>>()?;
        let refs: Vec<&Self> = ups.iter().collect();
        Self::concat(&refs, a)
    }

    /// Constant padding; the gradient is the un-padded window.
    pub fn pad(&self, pads: &[(usize, usize)], value: f64) -> Result<Self> {
        let x = self.value();
        let y = x.pad(pads, value)?;
        let pads = pads.to_vec();
        Var::record("pad", y, &[self], move |g, _| {
            let mut v = g.clone();
            for (a, (&(before, _), &d)) in pads.iter().zip(x.dims()).enumerate() {
                v = v.narrow(a, before, d)?;
            }
            Ok(vec![Some(v.contiguous()?)])
        })
    }
}
