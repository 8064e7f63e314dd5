//! AdamW: Adam with decoupled weight decay (Loshchilov & Hutter 2019), as in PyTorch.
//!
//! For a parameter `p` with gradient `g` at its `t`-th update (t = 1, 2, ...):
//!
//! ```text
//! p <- p (1 - lr wd)                              decoupled decay: not part of the gradient
//! m <- b1 m + (1 - b1) g
//! v <- b2 v + (1 - b2) g^2
//! p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//! ```
//!
//! The decay shrinks weights at the same relative rate whatever the gradient scale, unlike L2
//! regularisation inside Adam, whose decay term is divided by `sqrt(v)` and so fades for
//! parameters with large gradients.

use ela_autograd::{no_grad, Grads, Var};
use ela_core::{AdamWStep, Backend, DType, Error, Result, Tensor};

use super::{check_hyper, check_params, grad_for, on_device, split_state, state_dtype, Optimizer};
use crate::module::StateDict;

/// Hyper-parameters of [`AdamW`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first-moment average.
    pub beta1: f64,
    /// Decay of the second-moment average.
    pub beta2: f64,
    /// Added to `sqrt(v_hat)` to bound the step.
    pub eps: f64,
    /// Decoupled weight decay coefficient (multiplied by `lr`).
    pub weight_decay: f64,
}

impl AdamWConfig {
    /// Check every field: lr, eps, weight_decay finite and >= 0, betas in [0, 1).
    pub fn validate(&self, op: &'static str) -> Result<()> {
        let beta = |b: f64| (0.0..1.0).contains(&b);
        check_hyper(op, "lr", self.lr, self.lr >= 0.0, ">= 0")?;
        check_hyper(op, "beta1", self.beta1, beta(self.beta1), "in [0, 1)")?;
        check_hyper(op, "beta2", self.beta2, beta(self.beta2), "in [0, 1)")?;
        check_hyper(op, "eps", self.eps, self.eps >= 0.0, ">= 0")?;
        check_hyper(op, "weight_decay", self.weight_decay, self.weight_decay >= 0.0, ">= 0")
    }
}

impl Default for AdamWConfig {
    /// PyTorch's defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 0.01.
    fn default() -> Self {
        AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

struct Slot<B: Backend> {
    m: Tensor<B>,
    v: Tensor<B>,
    step: u64,
}

/// One parameter of an in-place update ([`AdamW::in_place_operands`]).
#[derive(Clone, Debug)]
pub struct InPlaceOperands<B: Backend> {
    /// The parameter's value (its variable's buffer).
    pub p: Tensor<B>,
    /// Its gradient.
    pub g: Tensor<B>,
    /// First moment (the optimizer's buffer).
    pub m: Tensor<B>,
    /// Second moment (the optimizer's buffer).
    pub v: Tensor<B>,
    /// Whether it takes weight decay.
    pub weight_decay: bool,
}

/// Bytes of parameters one multi-tensor update takes at most (it holds their new values and
/// moments beside the old until it returns).
const UPDATE_GROUP_BYTES: usize = 256 << 20;

fn tensor_bytes<B: Backend>(t: &Tensor<B>) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

/// The AdamW optimizer.
pub struct AdamW<B: Backend> {
    params: Vec<(String, Var<B>)>,
    decay: Vec<bool>,
    state: Vec<Option<Slot<B>>>,
    cfg: AdamWConfig,
}

const SLOTS: [(&str, bool); 3] = [("exp_avg", true), ("exp_avg_sq", true), ("step", false)];

impl<B: Backend> AdamW<B> {
    /// An optimizer over named parameters; every parameter is decayed until
    /// [`AdamW::exclude_from_weight_decay`] says otherwise.
    pub fn new(params: Vec<(String, Var<B>)>, cfg: AdamWConfig) -> Result<Self> {
        cfg.validate("AdamW::new")?;
        check_params(&params, "AdamW::new")?;
        let n = params.len();
        Ok(AdamW { params, decay: vec![true; n], state: (0..n).map(|_| None).collect(), cfg })
    }

    /// Turn weight decay off for the parameters where `pred(name, var)` holds (commonly biases,
    /// norm gains and embeddings: `|_, v| v.rank() < 2`). Returns how many were excluded.
    pub fn exclude_from_weight_decay(&mut self, pred: impl Fn(&str, &Var<B>) -> bool) -> usize {
        let mut n = 0;
        for ((name, v), d) in self.params.iter().zip(self.decay.iter_mut()) {
            if pred(name, v) {
                *d = false;
                n += 1;
            }
        }
        n
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// The parameters, in the order given.
    pub fn params(&self) -> &[(String, Var<B>)] {
        &self.params
    }

    /// How many updates the parameter `name` has received (0 before its first).
    pub fn step_count(&self, name: &str) -> Option<u64> {
        let i = self.params.iter().position(|(n, _)| n == name)?;
        Some(self.state[i].as_ref().map_or(0, |s| s.step))
    }

    /// Every parameter with a gradient in `grads`, updated by one multi-tensor call
    /// ([`Tensor::adamw_update_many`]: a few kernel launches on a GPU instead of one per
    /// parameter) in the state dtype (f32 for half-precision parameters), then written back.
    fn update_all(&mut self, grads: &Grads<B>) -> Result<()> {
        let c = self.cfg;
        // (index, parameter in the state dtype, gradient, m, v, step count, scalars)
        let mut work = Vec::with_capacity(self.params.len());
        for (i, (name, var)) in self.params.iter().enumerate() {
            let sd = state_dtype(var.dtype());
            let Some(g) = grad_for(grads, name, var, sd, "AdamW::step")? else { continue };
            let (m, v, step) = match &self.state[i] {
                Some(s) => (s.m.clone(), s.v.clone(), s.step + 1),
                None => (g.zeros_like()?, g.zeros_like()?, 1),
            };
            let hp = AdamWStep {
                lr: c.lr,
                beta1: c.beta1,
                beta2: c.beta2,
                eps: c.eps,
                decay: if self.decay[i] { 1.0 - c.lr * c.weight_decay } else { 1.0 },
                bc1: 1.0 - c.beta1.powf(step as f64),
                bc2: 1.0 - c.beta2.powf(step as f64),
            };
            work.push((i, var.value().to_dtype(sd)?, g, m, v, step, hp));
        }
        // In groups of at most UPDATE_GROUP_BYTES of parameters: the old values and moments are
        // freed after each group, so the update never holds more than one group twice.
        let mut work = work.into_iter().peekable();
        while work.peek().is_some() {
            let mut group = Vec::new();
            let mut bytes = 0;
            while let Some(w) = work.next_if(|w| group.is_empty() || bytes + tensor_bytes(&w.1) <= UPDATE_GROUP_BYTES) {
                bytes += tensor_bytes(&w.1);
                group.push(w);
            }
            let operands: Vec<_> = group.iter().map(|(_, p, g, m, v, _, hp)| (p, g, m, v, *hp)).collect();
            let updated = Tensor::adamw_update_many(&operands)?;
            drop(operands);
            for ((i, .., step, _), (p, m, v)) in group.into_iter().zip(updated) {
                let var = &self.params[i].1;
                var.set_value(p.to_dtype(var.dtype())?)?;
                self.state[i] = Some(Slot { m, v, step });
            }
        }
        Ok(())
    }

    /// For a training step recorded once and replayed (`ela train --graph`): every parameter's
    /// value, gradient in `grads` and moments, to be updated **in place** by a device kernel
    /// that reads the step's scalars from device memory (`ela_cuda::Cuda::adamw_in_place`). The
    /// tensors share the optimizer's and the variables' buffers.
    ///
    /// Errors (naming the parameter) unless every parameter has a gradient in `grads`, state
    /// from an earlier step, the same step count as the others ([`AdamW::common_step`]) and
    /// the dtype of its state (f32 or f64: a half-precision parameter is updated through an f32
    /// copy, which cannot be written in place).
    pub fn in_place_operands(&self, grads: &Grads<B>) -> Result<Vec<InPlaceOperands<B>>> {
        const OP: &str = "AdamW::in_place_operands";
        self.common_step()?;
        let mut out = Vec::with_capacity(self.params.len());
        for (i, (name, var)) in self.params.iter().enumerate() {
            if state_dtype(var.dtype()) != var.dtype() {
                return Err(Error::invalid(
                    OP,
                    format!("{name:?} is {:?}: only parameters stored in f32 or f64 are updated in place", var.dtype()),
                ));
            }
            let Some(g) = grad_for(grads, name, var, var.dtype(), OP)? else {
                return Err(Error::invalid(
                    OP,
                    format!("{name:?} has no gradient: a recorded step must update every parameter"),
                ));
            };
            let Some(s) = &self.state[i] else {
                return Err(Error::invalid(OP, format!("{name:?} has not been updated yet: run one step first")));
            };
            out.push(InPlaceOperands {
                p: var.value(),
                // A gradient may be a strided view (of a transposed product, say): the kernel
                // reads it contiguous.
                g: g.contiguous()?,
                m: s.m.clone(),
                v: s.v.clone(),
                weight_decay: self.decay[i],
            });
        }
        Ok(out)
    }

    /// The step count every parameter shares (after at least one update each), or an error
    /// naming a parameter without state or with another count.
    pub fn common_step(&self) -> Result<u64> {
        const OP: &str = "AdamW::common_step";
        let mut common = None;
        for ((name, _), s) in self.params.iter().zip(&self.state) {
            let Some(s) = s else {
                return Err(Error::invalid(OP, format!("{name:?} has not been updated yet: run one step first")));
            };
            match common {
                None => common = Some(s.step),
                Some(c) if c != s.step => {
                    return Err(Error::invalid(
                        OP,
                        format!("{name:?} has had {} updates, other parameters {c}", s.step),
                    ))
                }
                _ => {}
            }
        }
        common.ok_or_else(|| Error::invalid(OP, "the optimizer has no parameters"))
    }

    /// The bias corrections `(1 - beta1^t, 1 - beta2^t)` of the next update (`t` =
    /// [`AdamW::common_step`] + 1), computed as [`Optimizer::step`] computes them.
    pub fn next_bias_corrections(&self) -> Result<(f64, f64)> {
        let t = (self.common_step()? + 1) as f64;
        Ok((1.0 - self.cfg.beta1.powf(t), 1.0 - self.cfg.beta2.powf(t)))
    }

    /// Record that an in-place update of every parameter has run (after a replay whose update
    /// was not skipped): every step count advances by one.
    pub fn count_in_place_step(&mut self) -> Result<()> {
        self.common_step()?;
        for s in self.state.iter_mut().flatten() {
            s.step += 1;
        }
        Ok(())
    }
}

impl<B: Backend> Optimizer<B> for AdamW<B> {
    fn step(&mut self, grads: &Grads<B>) -> Result<()> {
        no_grad(|| self.update_all(grads))
    }

    fn lr(&self) -> f64 {
        self.cfg.lr
    }

    fn set_lr(&mut self, lr: f64) -> Result<()> {
        check_hyper("AdamW::set_lr", "lr", lr, lr >= 0.0, ">= 0")?;
        self.cfg.lr = lr;
        Ok(())
    }

    fn state_dict(&self) -> Result<StateDict<B>> {
        let mut sd = StateDict::new();
        for ((name, var), s) in self.params.iter().zip(&self.state) {
            let Some(s) = s else { continue };
            sd.insert(format!("{name}.exp_avg"), s.m.clone());
            sd.insert(format!("{name}.exp_avg_sq"), s.v.clone());
            // A step count is exact in f64 up to 2^53; stored as a rank-0 tensor on the device.
            sd.insert(format!("{name}.step"), Tensor::scalar(s.step as f64, DType::F64, &var.device())?);
        }
        Ok(sd)
    }

    fn load_state_dict(&mut self, sd: &StateDict<B>) -> Result<()> {
        const OP: &str = "AdamW::load_state_dict";
        let groups = split_state(sd, &self.params, &SLOTS, OP)?;
        let mut new_state = Vec::with_capacity(groups.len());
        for (g, (name, var)) in groups.into_iter().zip(&self.params) {
            let dt = state_dtype(var.dtype());
            new_state.push(match (&g[0], &g[1], &g[2]) {
                (None, None, None) => None,
                (Some(m), Some(v), Some(step)) => {
                    let s = step.to_scalar()?;
                    if !(s >= 1.0 && s.fract() == 0.0 && s < 9.007e15) {
                        return Err(Error::invalid(OP, format!("{name:?}.step must be a positive integer, got {s}")));
                    }
                    let dev = var.device();
                    Some(Slot {
                        m: on_device(m, &dev)?.to_dtype(dt)?,
                        v: on_device(v, &dev)?.to_dtype(dt)?,
                        step: s as u64,
                    })
                }
                _ => {
                    return Err(Error::invalid(
                        OP,
                        format!("{name:?} needs all of exp_avg, exp_avg_sq and step, or none of them"),
                    ))
                }
            });
        }
        self.state = new_state;
        Ok(())
    }
}
