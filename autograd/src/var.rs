//! [`Var`]: a tensor that knows how it was computed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use ela_core::{Backend, Error, Result, Tensor};

use crate::accumulate::WindowOf;
use crate::grad_mode::is_grad_enabled;

/// The backward closure of a node: given the gradient of the node's output and which inputs need
/// a gradient, returns one optional gradient per input (same shape as that input).
pub type BackwardFn<B> = Box<dyn Fn(&Tensor<B>, &[bool]) -> Result<Vec<Option<Tensor<B>>>> + Send + Sync>;

/// A backward that can also fold in a gradient already summed for one of its inputs
/// ([`Var::record_folding`]): called with `Some(pending)`, it returns that input's gradient with
/// `pending` added; with `None`, it is a plain [`BackwardFn`].
pub type FoldingBackwardFn<B> =
    Arc<dyn Fn(&Tensor<B>, &[bool], Option<Tensor<B>>) -> Result<Vec<Option<Tensor<B>>>> + Send + Sync>;

pub(crate) struct Node<B: Backend> {
    pub(crate) op: &'static str,
    pub(crate) inputs: Vec<Var<B>>,
    pub(crate) backward: BackwardFn<B>,
    /// Set by [`Var::record_folding`]: the input whose pending gradient the backward pass hands
    /// to this formula (graph.rs), and the formula.
    pub(crate) fold: Option<(usize, FoldingBackwardFn<B>)>,
    /// Set by `narrow`: the output is this window of its one input, so the backward pass places
    /// the output's gradient there instead of calling `backward` (which zero-pads it; see
    /// `accumulate.rs`).
    pub(crate) window: Option<WindowOf>,
}

pub(crate) struct VarInner<B: Backend> {
    pub(crate) id: usize,
    value: RwLock<Tensor<B>>,
    pub(crate) node: Option<Node<B>>,
    pub(crate) requires_grad: bool,
}

/// A tensor in the autograd graph. Cloning is cheap and clones refer to the same variable.
///
/// Leaves are created with [`Var::param`] (trainable: gradients are collected for them) or
/// [`Var::constant`]. Results of ops on vars are interior nodes that remember their inputs while
/// gradients are enabled and some input requires a gradient.
pub struct Var<B: Backend>(pub(crate) Arc<VarInner<B>>);

impl<B: Backend> Clone for Var<B> {
    fn clone(&self) -> Self {
        Var(self.0.clone())
    }
}

impl<B: Backend> std::fmt::Debug for Var<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = self.0.node.as_ref().map_or("leaf", |n| n.op);
        write!(f, "Var#{}({:?}, {op}, requires_grad={})", self.0.id, self.value(), self.0.requires_grad)
    }
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

impl<B: Backend> Var<B> {
    fn new(value: Tensor<B>, node: Option<Node<B>>, requires_grad: bool) -> Self {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Var(Arc::new(VarInner { id, value: RwLock::new(value), node, requires_grad }))
    }

    /// A trainable leaf: [`Var::backward`] returns a gradient for it.
    pub fn param(value: Tensor<B>) -> Self {
        Self::new(value, None, true)
    }

    /// A leaf that needs no gradient (inputs, targets, masks).
    pub fn constant(value: Tensor<B>) -> Self {
        Self::new(value, None, false)
    }

    /// A constant leaf holding the same value (cuts the graph here).
    pub fn detach(&self) -> Self {
        Self::constant(self.value())
    }

    /// The current value (a cheap clone of the tensor handle).
    pub fn value(&self) -> Tensor<B> {
        self.0.value.read().expect("var lock poisoned").clone()
    }

    /// Whether the value has `shape`, compared in place (no copy of the value's layout: the
    /// backward pass asks this once per edge).
    pub(crate) fn has_shape(&self, shape: &ela_core::Shape) -> bool {
        self.0.value.read().expect("var lock poisoned").shape() == shape
    }

    /// Replace the value of a leaf (optimizer updates, checkpoint loading). The shape and dtype
    /// must stay the same, and interior nodes cannot be set.
    pub fn set_value(&self, value: Tensor<B>) -> Result<()> {
        if self.0.node.is_some() {
            return Err(Error::invalid("set_value", "only leaf vars (params/constants) can be assigned"));
        }
        let mut v = self.0.value.write().expect("var lock poisoned");
        // Dtype first and as its own error: a dtype change with equal shapes is no shape mismatch.
        if v.dtype() != value.dtype() {
            return Err(Error::DTypeMismatch { op: "set_value", lhs: v.dtype(), rhs: value.dtype() });
        }
        if v.shape() != value.shape() {
            return Err(Error::ShapeMismatch {
                op: "set_value",
                lhs: v.shape().clone(),
                rhs: value.shape().clone(),
                hint: "a var keeps its shape".into(),
            });
        }
        *v = value;
        Ok(())
    }

    /// Unique id of this var (gradients are keyed by it).
    pub fn id(&self) -> usize {
        self.0.id
    }

    /// Whether gradients flow to this var.
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad
    }

    /// True for vars created by [`Var::param`] / [`Var::constant`].
    pub fn is_leaf(&self) -> bool {
        self.0.node.is_none()
    }

    /// The name of the op that produced this var ("leaf" for leaves).
    pub fn op_name(&self) -> &'static str {
        self.0.node.as_ref().map_or("leaf", |n| n.op)
    }

    /// Shape of the value.
    pub fn shape(&self) -> ela_core::Shape {
        self.value().shape().clone()
    }

    /// Dimensions of the value.
    pub fn dims(&self) -> Vec<usize> {
        self.value().dims().to_vec()
    }

    /// Rank of the value.
    pub fn rank(&self) -> usize {
        self.value().rank()
    }

    /// Dtype of the value.
    pub fn dtype(&self) -> ela_core::DType {
        self.value().dtype()
    }

    /// The device of the value.
    pub fn device(&self) -> B {
        self.value().device().clone()
    }

    /// Record the result of an op. When gradients are disabled or no input requires one, the
    /// result is a constant and `backward` is dropped unused.
    pub fn record(
        op: &'static str,
        value: Tensor<B>,
        inputs: &[&Var<B>],
        backward: impl Fn(&Tensor<B>, &[bool]) -> Result<Vec<Option<Tensor<B>>>> + Send + Sync + 'static,
    ) -> Result<Self> {
        let needs = is_grad_enabled() && inputs.iter().any(|v| v.requires_grad());
        if !needs {
            return Ok(Self::constant(value));
        }
        let node = Node {
            op,
            inputs: inputs.iter().map(|v| (*v).clone()).collect(),
            backward: Box::new(backward),
            window: None,
            fold: None,
        };
        Ok(Self::new(value, Some(node), true))
    }

    /// [`Var::record`] for an op whose backward can add another gradient of input `fold` to the
    /// one it computes for it at little cost (inside the same kernel pass): when the backward
    /// pass reaches this node, the gradient summed so far for that input (if any) is taken out
    /// of its sum and handed to `backward` as `Some(pending)`, and the gradient `backward`
    /// returns for that input must include it (returning `None` for that input puts `pending`
    /// back: it is never lost). The sum is the same; what it saves is one
    /// addition over the whole tensor (RMS norm's `x`, whose other gradient is the residual
    /// branch's: docs/autograd.md, "Folding a pending gradient").
    pub fn record_folding(
        op: &'static str,
        value: Tensor<B>,
        inputs: &[&Var<B>],
        fold: usize,
        backward: impl Fn(&Tensor<B>, &[bool], Option<Tensor<B>>) -> Result<Vec<Option<Tensor<B>>>> + Send + Sync + 'static,
    ) -> Result<Self> {
        if fold >= inputs.len() {
            return Err(Error::invalid(
                "record_folding",
                format!("fold names input {fold}, but the op `{op}` has {} inputs", inputs.len()),
            ));
        }
        let f: FoldingBackwardFn<B> = Arc::new(backward);
        let plain = f.clone();
        let mut v = Self::record(op, value, inputs, move |g, needs| plain(g, needs, None))?;
        if let Some(inner) = Arc::get_mut(&mut v.0) {
            if let Some(node) = inner.node.as_mut() {
                node.fold = Some((fold, f));
            }
        }
        Ok(v)
    }

    /// [`Var::record`] for an op whose output is the window `at` of its one input (`narrow`):
    /// `backward` (the zero-padding adjoint) stays the node's formula, but the backward pass
    /// places the window's gradient directly.
    pub(crate) fn record_window(
        op: &'static str,
        value: Tensor<B>,
        input: &Var<B>,
        at: WindowOf,
        backward: impl Fn(&Tensor<B>, &[bool]) -> Result<Vec<Option<Tensor<B>>>> + Send + Sync + 'static,
    ) -> Result<Self> {
        let mut v = Self::record(op, value, &[input], backward)?;
        if let Some(inner) = Arc::get_mut(&mut v.0) {
            if let Some(node) = inner.node.as_mut() {
                node.window = Some(at);
            }
        }
        Ok(v)
    }
}

impl<B: Backend> Drop for VarInner<B> {
    /// Tear long chains down iteratively: a recursive drop of a deep graph (thousands of ops)
    /// would overflow the stack.
    fn drop(&mut self) {
        let mut stack: Vec<Var<B>> = self.node.take().map(|n| n.inputs).unwrap_or_default();
        while let Some(v) = stack.pop() {
            if let Ok(mut inner) = Arc::try_unwrap(v.0) {
                if let Some(n) = inner.node.take() {
                    stack.extend(n.inputs);
                }
            }
        }
    }
}
