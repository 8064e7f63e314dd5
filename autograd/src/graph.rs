//! The backward pass: reverse topological traversal with gradient accumulation.

use std::collections::{HashMap, HashSet};

use ela_core::{Backend, Error, Result, Tensor};

use crate::accumulate::Accumulator;
use crate::grad_mode::no_grad;
use crate::var::Var;

/// What [`Var::backward_with_hook`] calls with a leaf and its final gradient.
pub type GradHook<'a, B> = dyn FnMut(&Var<B>, &Tensor<B>) -> Result<()> + 'a;

/// Gradients of the leaves that require them, keyed by var.
pub struct Grads<B: Backend> {
    map: HashMap<usize, Tensor<B>>,
}

impl<B: Backend> Grads<B> {
    /// The gradient of `var`, if it received one.
    pub fn get(&self, var: &Var<B>) -> Option<&Tensor<B>> {
        self.map.get(&var.id())
    }
    /// Take the gradient of `var` out.
    pub fn remove(&mut self, var: &Var<B>) -> Option<Tensor<B>> {
        self.map.remove(&var.id())
    }
    /// Insert or replace a gradient (e.g. after clipping).
    pub fn insert(&mut self, var: &Var<B>, grad: Tensor<B>) {
        self.map.insert(var.id(), grad);
    }
    /// Number of gradients held.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// True when no gradient is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    /// Empty gradient set.
    pub fn empty() -> Self {
        Grads { map: HashMap::new() }
    }
}

impl<B: Backend> Var<B> {
    /// Interior nodes reachable from `self` that require grad, inputs before outputs.
    fn topo_order(&self) -> Vec<Var<B>> {
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        // Iterative post-order DFS: (var, children_pushed).
        let mut stack = vec![(self.clone(), false)];
        while let Some((v, expanded)) = stack.pop() {
            if expanded {
                order.push(v);
                continue;
            }
            if !v.requires_grad() || !seen.insert(v.id()) {
                continue;
            }
            stack.push((v.clone(), true));
            if let Some(n) = &v.0.node {
                for i in &n.inputs {
                    if i.requires_grad() && !seen.contains(&i.id()) {
                        stack.push((i.clone(), false));
                    }
                }
            }
        }
        order
    }

    /// Backpropagate from a one-element var (a loss): returns the gradient of every leaf that
    /// requires one. Intermediate gradients are freed as soon as they are used.
    pub fn backward(&self) -> Result<Grads<B>> {
        let v = self.value();
        if v.elem_count() != 1 {
            return Err(Error::invalid(
                "backward",
                format!(
                    "backward() needs a one-element output (a loss), got shape {}; use backward_with(grad)",
                    v.shape()
                ),
            ));
        }
        let seed = v.ones_like()?;
        self.backward_with(seed)
    }

    /// Backpropagate with an explicit output gradient of the output's shape.
    pub fn backward_with(&self, grad: Tensor<B>) -> Result<Grads<B>> {
        self.backward_inner(grad, &mut |_, _| Ok(()))
    }

    /// [`Var::backward`] that calls `on_final(leaf, grad)` as soon as a leaf's gradient is final
    /// (every op that uses the leaf has contributed), while the rest of the graph is still being
    /// differentiated. Data-parallel training starts reducing a gradient bucket there, so the
    /// communication overlaps the remaining backward work. Leaves that receive no gradient are
    /// not reported. The returned [`Grads`] are the same as [`Var::backward`]'s.
    pub fn backward_with_hook(&self, on_final: &mut GradHook<'_, B>) -> Result<Grads<B>> {
        let v = self.value();
        if v.elem_count() != 1 {
            return Err(Error::invalid(
                "backward_with_hook",
                format!("backward_with_hook() needs a one-element output (a loss), got shape {}", v.shape()),
            ));
        }
        self.backward_inner(v.ones_like()?, on_final)
    }

    fn backward_inner(&self, grad: Tensor<B>, on_final: &mut GradHook<'_, B>) -> Result<Grads<B>> {
        let v = self.value();
        if grad.shape() != v.shape() {
            return Err(Error::ShapeMismatch {
                op: "backward_with",
                lhs: v.shape().clone(),
                rhs: grad.shape().clone(),
                hint: "the seed gradient must have the output's shape".into(),
            });
        }
        let mut grads: HashMap<usize, Accumulator<B>> = HashMap::new();
        if !self.requires_grad() {
            return Ok(Grads { map: HashMap::new() });
        }
        grads.insert(self.id(), Accumulator::whole(v.shape().clone(), grad));
        let order = self.topo_order();
        // How many recorded ops still have to pass a gradient to each leaf: when it reaches zero
        // the leaf's gradient is final. Counting is one pass over the edges, cheap next to the
        // backward formulas themselves.
        let mut pending_uses: HashMap<usize, usize> = HashMap::new();
        for var in &order {
            if let Some(n) = &var.0.node {
                for i in n.inputs.iter().filter(|i| i.is_leaf() && i.requires_grad()) {
                    *pending_uses.entry(i.id()).or_default() += 1;
                }
            }
        }
        // Leaves whose gradient is final, summed up.
        let mut done: HashMap<usize, Tensor<B>> = HashMap::new();
        // Backward formulas are plain tensor ops: never record them.
        no_grad(|| {
            for var in order.into_iter().rev() {
                let Some(node) = &var.0.node else { continue };
                // Every op using `var` came later in the order, so its gradient is complete.
                let g = match grads.remove(&var.id()) {
                    Some(acc) => acc.finish()?,
                    None => None,
                };
                if let Some(g) = g {
                    if let (Some(at), [input]) = (node.window, node.inputs.as_slice()) {
                        // A narrow: its gradient is a window of its input's (accumulate.rs).
                        if input.requires_grad() {
                            acc_for(&mut grads, input).add_window(at, g);
                        }
                    } else {
                        let needs: Vec<bool> = node.inputs.iter().map(|i| i.requires_grad()).collect();
                        let in_grads = match &node.fold {
                            // A formula that adds the input's pending gradient itself (Var::record_folding).
                            Some((i, f)) if needs[*i] => {
                                let pending = grads.get_mut(&node.inputs[*i].id()).and_then(Accumulator::take_whole);
                                // Kept (a cheap handle) in case the formula returns no gradient
                                // for that input after all: the pending sum must not be lost.
                                let kept = pending.clone();
                                let out = f(&g, &needs, pending)?;
                                if let (Some(p), None | Some(None)) = (kept, out.get(*i)) {
                                    acc_for(&mut grads, &node.inputs[*i]).add_whole(p)?;
                                }
                                out
                            }
                            _ => (node.backward)(&g, &needs)?,
                        };
                        for ((input, gi), need) in node.inputs.iter().zip(in_grads).zip(&needs) {
                            let (Some(gi), true) = (gi, *need) else { continue };
                            // A backward written outside this crate (`Var::record`, a user ELA
                            // kernel's VJPs) may return a wrong shape; adding it up would fail
                            // later with a less helpful message, or broadcast silently.
                            if !input.has_shape(gi.shape()) {
                                return Err(Error::ShapeMismatch {
                                    op: node.op,
                                    lhs: input.shape(),
                                    rhs: gi.shape().clone(),
                                    hint: format!(
                                        "the backward of `{}` returned a gradient of the wrong shape for one of \
                                         its inputs (it must match that input's shape)",
                                        node.op
                                    ),
                                });
                            }
                            acc_for(&mut grads, input).add_whole(gi)?;
                        }
                    }
                }
                // Each use counts once, whether or not a gradient flowed through it.
                for input in node.inputs.iter().filter(|i| i.is_leaf() && i.requires_grad()) {
                    let left = pending_uses.get_mut(&input.id()).expect("counted above");
                    *left -= 1;
                    if *left == 0 {
                        if let Some(g) = grads.remove(&input.id()).map(Accumulator::finish).transpose()?.flatten() {
                            on_final(input, &g)?;
                            done.insert(input.id(), g);
                        }
                    }
                }
            }
            Ok(())
        })?;
        // What is left: the output itself when it is a leaf (its seed).
        for (id, acc) in grads {
            if let Some(g) = acc.finish()? {
                done.insert(id, g);
            }
        }
        Ok(Grads { map: done })
    }
}

/// The accumulator of `input`'s gradient, made on its first contribution.
fn acc_for<'a, B: Backend>(grads: &'a mut HashMap<usize, Accumulator<B>>, input: &Var<B>) -> &'a mut Accumulator<B> {
    grads.entry(input.id()).or_insert_with(|| Accumulator::empty(input.shape()))
}
