//! Summing up the gradient of one var while the backward pass runs.
//!
//! Most ops hand their inputs whole-shape gradients, which are added as they arrive. A
//! [`Var::narrow`](crate::Var::narrow) (and `split`/`chunk`, which are narrows) is different: its
//! gradient is a *window* of its input's gradient, and the adjoint written out, zero padding to
//! the full shape, would cost one full-size buffer and one full-size add per window. A tensor
//! split in three (a fused q/k/v projection, the halves of a rotation, a detector's box and class
//! columns) would get three zero-filled copies and two adds where one buffer suffices. So windows
//! are kept apart here until the var's gradient is read, then placed side by side with one
//! concatenation (zeros only for the parts no window covers). Windows that overlap, or lie along
//! different axes, fall back to padding and adding. docs/autograd.md, "Shape ops", has the math.

use ela_core::{Backend, Result, Shape, Tensor};

/// Where a `narrow` node's output sits in its input: `axis` and the first index along it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WindowOf {
    pub(crate) axis: usize,
    pub(crate) start: usize,
}

/// The gradient of one var so far (see the module docs).
pub(crate) struct Accumulator<B: Backend> {
    /// The var's shape: what the windows are placed into.
    shape: Shape,
    /// The sum of the whole-shape contributions.
    whole: Option<Tensor<B>>,
    /// Gradients of narrowed views, with where they sit.
    windows: Vec<(WindowOf, Tensor<B>)>,
}

impl<B: Backend> Accumulator<B> {
    /// An accumulator holding a first whole-shape gradient.
    pub(crate) fn whole(shape: Shape, grad: Tensor<B>) -> Self {
        Accumulator { shape, whole: Some(grad), windows: Vec::new() }
    }

    /// An empty accumulator for a var of `shape`.
    pub(crate) fn empty(shape: Shape) -> Self {
        Accumulator { shape, whole: None, windows: Vec::new() }
    }

    /// Add a whole-shape contribution.
    pub(crate) fn add_whole(&mut self, grad: Tensor<B>) -> Result<()> {
        self.whole = Some(match self.whole.take() {
            Some(prev) => prev.add(&grad)?,
            None => grad,
        });
        Ok(())
    }

    /// Takes the sum of the whole-shape contributions out (for a backward formula that adds it
    /// itself: `Var::record_folding`); windows stay.
    pub(crate) fn take_whole(&mut self) -> Option<Tensor<B>> {
        self.whole.take()
    }

    /// Add the gradient of the window `at` (the gradient of a narrow of this var).
    pub(crate) fn add_window(&mut self, at: WindowOf, grad: Tensor<B>) {
        self.windows.push((at, grad));
    }

    /// The summed gradient; `None` if nothing was contributed.
    pub(crate) fn finish(self) -> Result<Option<Tensor<B>>> {
        let Accumulator { shape, whole, windows } = self;
        if windows.is_empty() {
            return Ok(whole);
        }
        let placed = place_windows(&shape, windows)?;
        Ok(Some(match whole {
            Some(w) => w.add(&placed)?,
            None => placed,
        }))
    }
}

/// One tensor of `shape` holding every window's gradient where it sits (zeros elsewhere).
fn place_windows<B: Backend>(shape: &Shape, mut windows: Vec<(WindowOf, Tensor<B>)>) -> Result<Tensor<B>> {
    let (dtype, device) = (windows[0].1.dtype(), windows[0].1.device().clone());
    // Empty windows hold nothing (and would be empty parts of the concatenation).
    windows.retain(|(_, g)| g.elem_count() > 0);
    let Some(axis) = windows.first().map(|(at, _)| at.axis) else {
        return Tensor::zeros(shape.clone(), dtype, &device);
    };
    windows.sort_by_key(|(at, _)| at.start);
    let len = |g: &Tensor<B>| g.dims()[axis];
    let side_by_side = windows.iter().all(|(at, _)| at.axis == axis)
        && windows.windows(2).all(|p| p[0].0.start + len(&p[0].1) <= p[1].0.start);
    if !side_by_side {
        return pad_and_add(shape, windows);
    }
    let size = shape.dims()[axis];
    let mut parts = Vec::with_capacity(2 * windows.len() + 1);
    let mut at = 0;
    for (w, g) in windows {
        if w.start > at {
            parts.push(Tensor::zeros(shape.with_dim(axis, w.start - at), dtype, &device)?);
        }
        at = w.start + len(&g);
        parts.push(g);
    }
    if at < size {
        parts.push(Tensor::zeros(shape.with_dim(axis, size - at), dtype, &device)?);
    }
    if parts.len() == 1 {
        return Ok(parts.pop().expect("one part"));
    }
    let refs: Vec<&Tensor<B>> = parts.iter().collect();
    Tensor::concat(&refs, axis)
}

/// The adjoint of each narrow written out: every window zero-padded to `shape`, summed.
fn pad_and_add<B: Backend>(shape: &Shape, windows: Vec<(WindowOf, Tensor<B>)>) -> Result<Tensor<B>> {
    let mut sum: Option<Tensor<B>> = None;
    for (at, g) in windows {
        let padded = pad_window(&g, at, shape.dims()[at.axis])?;
        sum = Some(match sum {
            Some(s) => s.add(&padded)?,
            None => padded,
        });
    }
    Ok(sum.expect("at least one window"))
}

/// The adjoint of one narrow: the window's gradient `g` zero-padded back to `size` along its axis.
pub(crate) fn pad_window<B: Backend>(g: &Tensor<B>, at: WindowOf, size: usize) -> Result<Tensor<B>> {
    let mut pads = vec![(0, 0); g.rank()];
    pads[at.axis] = (at.start, size - at.start - g.dims()[at.axis]);
    g.pad(&pads, 0.0)
}
