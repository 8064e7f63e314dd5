//! Stochastic gradient descent with momentum, as in PyTorch.
//!
//! ```text
//! g <- g + wd p                         (L2 weight decay, coupled: part of the gradient)
//! b <- g                      on the first update of p
//! b <- mu b + (1 - dampening) g         afterwards
//! d <- g + mu b  (nesterov)  or  b      (classical momentum); d = g when mu = 0
//! p <- p - lr d
//! ```

use ela_autograd::{no_grad, Grads, Var};
use ela_core::{Backend, Error, Result, Tensor};

use super::{check_hyper, check_params, grad_for, on_device, split_state, state_dtype, Optimizer};
use crate::module::StateDict;

/// Hyper-parameters of [`Sgd`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f64,
    /// Momentum factor `mu` (0 disables the buffer).
    pub momentum: f64,
    /// Fraction of the gradient *not* added to the buffer after the first step.
    pub dampening: f64,
    /// Nesterov momentum (needs `momentum > 0` and `dampening == 0`).
    pub nesterov: bool,
    /// L2 penalty coefficient added to the gradient.
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    /// lr 0.01, no momentum, no decay.
    fn default() -> Self {
        SgdConfig { lr: 0.01, momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: 0.0 }
    }
}

/// SGD with optional (Nesterov) momentum and L2 weight decay.
pub struct Sgd<B: Backend> {
    params: Vec<(String, Var<B>)>,
    buffers: Vec<Option<Tensor<B>>>,
    cfg: SgdConfig,
}

const SLOTS: [(&str, bool); 1] = [("momentum_buffer", true)];

impl<B: Backend> Sgd<B> {
    /// An optimizer over named parameters.
    pub fn new(params: Vec<(String, Var<B>)>, cfg: SgdConfig) -> Result<Self> {
        const OP: &str = "Sgd::new";
        check_hyper(OP, "lr", cfg.lr, cfg.lr >= 0.0, ">= 0")?;
        check_hyper(OP, "momentum", cfg.momentum, cfg.momentum >= 0.0, ">= 0")?;
        check_hyper(OP, "dampening", cfg.dampening, (0.0..=1.0).contains(&cfg.dampening), "in [0, 1]")?;
        check_hyper(OP, "weight_decay", cfg.weight_decay, cfg.weight_decay >= 0.0, ">= 0")?;
        if cfg.nesterov && (cfg.momentum <= 0.0 || cfg.dampening != 0.0) {
            return Err(Error::invalid(OP, format!("nesterov needs momentum > 0 and dampening 0; got {cfg:?}")));
        }
        check_params(&params, OP)?;
        let n = params.len();
        Ok(Sgd { params, buffers: vec![None; n], cfg })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &SgdConfig {
        &self.cfg
    }

    fn update_one(&mut self, i: usize, grads: &Grads<B>) -> Result<()> {
        let (name, var) = &self.params[i];
        let sd = state_dtype(var.dtype());
        let Some(mut g) = grad_for(grads, name, var, sd, "Sgd::step")? else { return Ok(()) };
        let c = self.cfg;
        let p = var.value().to_dtype(sd)?;
        if c.weight_decay != 0.0 {
            g = g.add(&p.mul_scalar(c.weight_decay)?)?;
        }
        let d = if c.momentum != 0.0 {
            let b = match self.buffers[i].take() {
                None => g.clone(),
                Some(b) => b.mul_scalar(c.momentum)?.add(&g.mul_scalar(1.0 - c.dampening)?)?,
            };
            let d = if c.nesterov { g.add(&b.mul_scalar(c.momentum)?)? } else { b.clone() };
            self.buffers[i] = Some(b);
            d
        } else {
            g
        };
        var.set_value(p.sub(&d.mul_scalar(c.lr)?)?.to_dtype(var.dtype())?)
    }
}

impl<B: Backend> Optimizer<B> for Sgd<B> {
    fn step(&mut self, grads: &Grads<B>) -> Result<()> {
        no_grad(|| (0..self.params.len()).try_for_each(|i| self.update_one(i, grads)))
    }

    fn lr(&self) -> f64 {
        self.cfg.lr
    }

    fn set_lr(&mut self, lr: f64) -> Result<()> {
        check_hyper("Sgd::set_lr", "lr", lr, lr >= 0.0, ">= 0")?;
        self.cfg.lr = lr;
        Ok(())
    }

    fn state_dict(&self) -> Result<StateDict<B>> {
        Ok(self
            .params
            .iter()
            .zip(&self.buffers)
            .filter_map(|((name, _), b)| b.as_ref().map(|b| (format!("{name}.momentum_buffer"), b.clone())))
            .collect())
    }

    fn load_state_dict(&mut self, sd: &StateDict<B>) -> Result<()> {
        let groups = split_state(sd, &self.params, &SLOTS, "Sgd::load_state_dict")?;
        let mut bufs = Vec::with_capacity(groups.len());
        for (g, (_, var)) in groups.into_iter().zip(&self.params) {
            bufs.push(match &g[0] {
                Some(b) => Some(on_device(b, &var.device())?.to_dtype(state_dtype(var.dtype()))?),
                None => None,
            });
        }
        self.buffers = bufs;
        Ok(())
    }
}
