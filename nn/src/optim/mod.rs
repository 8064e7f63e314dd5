//! Optimizers ([`Sgd`], [`AdamW`]), gradient clipping by global norm and the warmup + cosine
//! learning-rate schedule.
//!
//! An optimizer owns the named parameters it updates (`(name, var)` pairs, e.g. from
//! [`ParamStore::named_params`](crate::module::ParamStore::named_params) or
//! [`Module::named_params`](crate::module::Module::named_params)) and its per-parameter state.
//! [`Optimizer::step`] takes the [`Grads`] of a backward pass; parameters without a gradient in it
//! are left unchanged and their state does not advance (PyTorch's behaviour, which matters for
//! mixture-of-experts experts that receive no token in a batch). Updates run under `no_grad` and
//! write with [`Var::set_value`](ela_autograd::Var::set_value).
//!
//! The state is exported as a [`StateDict`] keyed `<param name>.<slot>` so it can be saved next
//! to the model (see [`crate::checkpoint`]) and a resumed run continues exactly.
//!
//! ```
//! use ela_autograd::Var;
//! use ela_core::{Cpu, DType, Tensor};
//! use ela_nn::optim::{AdamW, AdamWConfig, Optimizer};
//! let w = Var::param(Tensor::from_vec(vec![1.0f64, -2.0], [2], &Cpu)?);
//! let mut opt = AdamW::new(vec![("w".to_string(), w.clone())], AdamWConfig { lr: 0.1, ..Default::default() })?;
//! for _ in 0..3 {
//!     let loss = w.square()?.sum_all()?;
//!     opt.step(&loss.backward()?)?;
//! }
//! assert!(w.value().to_vec::<f64>()?[0] < 1.0);
//! # Ok::<(), ela_core::Error>(())
//! ```

mod adamw;
mod clip;
mod schedule;
mod sgd;

pub use adamw::{AdamW, AdamWConfig, InPlaceOperands};
pub use clip::{clip_grad_norm, global_grad_norm, grad_sum_squares};
pub use schedule::WarmupCosine;
pub use sgd::{Sgd, SgdConfig};

use ela_autograd::{Grads, Var};
use ela_core::{Backend, DType, Error, Result, Tensor};

use crate::module::StateDict;

/// Something that updates parameters from gradients.
pub trait Optimizer<B: Backend> {
    /// Apply one update from `grads` to every parameter that has a gradient in it.
    fn step(&mut self, grads: &Grads<B>) -> Result<()>;
    /// The current learning rate.
    fn lr(&self) -> f64;
    /// Set the learning rate (e.g. from a schedule, before each step). A NaN, infinite or
    /// negative rate is an error and leaves the rate unchanged: it would write NaN (or a
    /// divergent step) into every weight without any other sign.
    fn set_lr(&mut self, lr: f64) -> Result<()>;
    /// The per-parameter state, keyed `<param name>.<slot>`.
    fn state_dict(&self) -> Result<StateDict<B>>;
    /// Restore state exported by [`Optimizer::state_dict`] (same parameter names and shapes).
    /// Parameters absent from `sd` start fresh; keys naming no parameter or slot are an error.
    fn load_state_dict(&mut self, sd: &StateDict<B>) -> Result<()>;
}

/// The dtype optimizer state and update arithmetic use for a parameter: f32 for the
/// half-precision storage types (their 8-11 bit mantissas cannot hold small updates), else the
/// parameter's own dtype.
pub(crate) fn state_dtype(param: DType) -> DType {
    match param {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    }
}

/// `value` of the hyper-parameter `name` must be finite and inside `range` (written as text for
/// the message, e.g. ">= 0" or "in [0, 1)"): the one check every optimizer setting goes through,
/// so NaN (which compares false both ways) and infinities cannot slip past a `>=`.
pub(crate) fn check_hyper(op: &'static str, name: &str, value: f64, ok: bool, range: &str) -> Result<()> {
    if value.is_finite() && ok {
        Ok(())
    } else {
        Err(Error::invalid(op, format!("{name} must be finite and {range}, got {value}")))
    }
}

/// Check that the optimizer's parameters are float leaves with unique names.
pub(crate) fn check_params<B: Backend>(params: &[(String, Var<B>)], op: &'static str) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for (name, v) in params {
        if !seen.insert(name.as_str()) {
            return Err(Error::invalid(op, format!("parameter name {name:?} appears twice")));
        }
        if !v.is_leaf() || !v.requires_grad() {
            return Err(Error::invalid(op, format!("{name:?} is not a trainable leaf (create it with Var::param)")));
        }
        if !v.dtype().is_float() {
            return Err(Error::UnsupportedDType { op, dtype: v.dtype(), expected: "float parameters" });
        }
    }
    Ok(())
}

/// The gradient of `var` converted to `dtype`, checked against the parameter's shape.
pub(crate) fn grad_for<B: Backend>(
    grads: &Grads<B>,
    name: &str,
    var: &Var<B>,
    dtype: DType,
    op: &'static str,
) -> Result<Option<Tensor<B>>> {
    let Some(g) = grads.get(var) else { return Ok(None) };
    if g.shape() != &var.shape() {
        return Err(Error::ShapeMismatch {
            op,
            lhs: var.shape(),
            rhs: g.shape().clone(),
            hint: format!("the gradient of {name:?} must have the parameter's shape"),
        });
    }
    Ok(Some(g.to_dtype(dtype)?))
}

/// Validate that every key of an optimizer state dict is `<known param>.<known slot>` and that
/// each slot tensor has the expected shape; returns the entries grouped by parameter index.
pub(crate) fn split_state<B: Backend>(
    sd: &StateDict<B>,
    params: &[(String, Var<B>)],
    slots: &[(&str, bool)],
    op: &'static str,
) -> Result<Vec<Vec<Option<Tensor<B>>>>> {
    let index: std::collections::HashMap<&str, usize> =
        params.iter().enumerate().map(|(i, (n, _))| (n.as_str(), i)).collect();
    let mut out = vec![vec![None; slots.len()]; params.len()];
    let mut problems = Vec::new();
    for (key, t) in sd {
        let hit = slots.iter().enumerate().find_map(|(si, (slot, _))| {
            let p = key.strip_suffix(slot)?.strip_suffix('.')?;
            index.get(p).map(|&pi| (pi, si))
        });
        let Some((pi, si)) = hit else {
            problems.push(format!("unexpected key {key:?}"));
            continue;
        };
        // Slots marked `true` are parameter-shaped; the others are scalars.
        let want = if slots[si].1 { params[pi].1.shape() } else { ela_core::Shape::scalar() };
        if t.shape() != &want {
            problems.push(format!("{key:?} has shape {}, expected {want}", t.shape()));
            continue;
        }
        out[pi][si] = Some(t.clone());
    }
    if !problems.is_empty() {
        return Err(Error::invalid(op, problems.join("; ")));
    }
    Ok(out)
}

/// `t` on `device` (no copy when it is already there).
pub(crate) fn on_device<B: Backend>(t: &Tensor<B>, device: &B) -> Result<Tensor<B>> {
    if t.device().same_device(device) {
        Ok(t.clone())
    } else {
        t.to_device(device)
    }
}
