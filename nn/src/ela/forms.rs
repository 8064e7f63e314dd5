//! The three forms behind one interface, for verification and benchmarks: [`Ela`] bundles a
//! kernel with the causal flag and chunk length and runs any [`Form`] on given tensors
//! ([`Ela::run`]), or a differentiable one with the input gradients ([`Ela::run_with_grads`]).

use std::sync::Arc;

use ela_autograd::{no_grad, Var};
use ela_core::ela::DEFAULT_CHUNK;
use ela_core::{Backend, DType, ElaKernel, Error, Result, Tensor};

use super::chunked::chunked;
use super::kernel::{builtin, builtin_by_name, Kernel};
use super::recurrent::{prefill, recurrent, ElaState};
use super::reference::{quadratic, quadratic_parts};

/// The three ways to compute ELA; they agree up to rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Form {
    /// Materialised `T x T` kernel matrix from autograd ops (the oracle; O(T^2)).
    Quadratic,
    /// The fused chunked op, one autograd node with a hand-derived backward (training, prefill).
    Chunked,
    /// Token-by-token steps of the recurrent state (decoding; causal only, no gradient).
    Recurrent,
}

impl Form {
    /// All forms.
    pub const ALL: [Form; 3] = [Form::Quadratic, Form::Chunked, Form::Recurrent];
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Form::Quadratic => "quadratic",
            Form::Chunked => "chunked",
            Form::Recurrent => "recurrent",
        }
    }
}

/// Gradients of `sum(y * dy)` with respect to `q`, `k`, `v`.
#[derive(Clone, Debug)]
pub struct Grads<B: Backend> {
    /// `dq` `[batch, heads, t, d]`.
    pub dq: Tensor<B>,
    /// `dk` `[batch, heads, t, d]`.
    pub dk: Tensor<B>,
    /// `dv` `[batch, heads, t, dv]`.
    pub dv: Tensor<B>,
}

/// What [`Ela::run_with_grads`] returns.
#[derive(Clone, Debug)]
pub struct FormOutput<B: Backend> {
    /// The output `y` `[batch, heads, t, dv]`.
    pub y: Tensor<B>,
    /// The gradients of `sum(y * dy)` with respect to the inputs.
    pub grads: Grads<B>,
}

/// A kernel with the causal flag and chunk length: the entry point to every ELA form. The backend
/// `B` is inferred from the tensors the forms are run on.
///
/// ```
/// use ela_core::{Cpu, DType, Rng, Tensor};
/// use ela_nn::ela::{Ela, Form};
/// let mut rng = Rng::new(0);
/// let x = |rng: &mut Rng| Tensor::<Cpu>::randn(0.0, 1.0, [1, 2, 10, 4], DType::F64, rng, &Cpu);
/// let (q, k, v, dy) = (x(&mut rng)?, x(&mut rng)?, x(&mut rng)?, x(&mut rng)?);
/// let ela = Ela::from_name("hadamard-exp")?.with_chunk(4);
/// let quad = ela.run_with_grads(Form::Quadratic, &q, &k, &v, &dy)?;
/// let fast = ela.run_with_grads(Form::Chunked, &q, &k, &v, &dy)?;
/// assert!(fast.y.all_close(&quad.y, 1e-10, 1e-12)?);
/// assert!(fast.grads.dk.all_close(&quad.grads.dk, 1e-9, 1e-12)?);
/// let y = ela.run(Form::Recurrent, &q, &k, &v)?;
/// assert!(y.all_close(&quad.y, 1e-10, 1e-12)?);
/// # Ok::<(), ela_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Ela<B: Backend> {
    kernel: Arc<dyn Kernel<B>>,
    /// Causal (`j <= i`) or full attention.
    pub causal: bool,
    /// Chunk length of the chunked form.
    pub chunk: usize,
}

impl<B: Backend> std::fmt::Debug for Ela<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ela(kernel {}, causal {}, chunk {})", self.kernel.name(), self.causal, self.chunk)
    }
}

impl<B: Backend> Ela<B> {
    /// Causal ELA with `kernel` and the default chunk length (64).
    pub fn new(kernel: Arc<dyn Kernel<B>>) -> Self {
        Ela { kernel, causal: true, chunk: DEFAULT_CHUNK }
    }
    /// A built-in kernel.
    pub fn builtin(kernel: ElaKernel) -> Self {
        Self::new(builtin(kernel))
    }
    /// A built-in kernel by name (`hadamard-exp`, `sum-sq-euclid`, `sub-sq-euclid`, `blueprint`, `identity`,
    /// `elu-plus-one`).
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(Self::new(builtin_by_name(name)?))
    }
    /// The same with another causal flag.
    pub fn with_causal(self, causal: bool) -> Self {
        Ela { causal, ..self }
    }
    /// The same with another chunk length.
    pub fn with_chunk(self, chunk: usize) -> Self {
        Ela { chunk, ..self }
    }
    /// The kernel.
    pub fn kernel(&self) -> &Arc<dyn Kernel<B>> {
        &self.kernel
    }

    /// The quadratic reference (autograd ops; gradient from the tape).
    pub fn quadratic(&self, q: &Var<B>, k: &Var<B>, v: &Var<B>) -> Result<Var<B>> {
        quadratic(q, k, v, self.kernel.as_ref(), self.causal)
    }
    /// Un-normalised `(num [.., t, dv], den [.., t, 1])` of the quadratic reference.
    pub fn quadratic_parts(&self, q: &Var<B>, k: &Var<B>, v: &Var<B>) -> Result<(Var<B>, Var<B>)> {
        quadratic_parts(q, k, v, self.kernel.as_ref(), self.causal)
    }
    /// The fused chunked form, one autograd node.
    pub fn chunked(&self, q: &Var<B>, k: &Var<B>, v: &Var<B>) -> Result<Var<B>> {
        chunked(q, k, v, &self.kernel, self.causal, self.chunk)
    }
    /// The recurrent form stepped over the whole sequence from an empty state (causal only).
    pub fn recurrent(&self, q: &Tensor<B>, k: &Tensor<B>, v: &Tensor<B>) -> Result<Tensor<B>> {
        self.require_causal("Ela::recurrent")?;
        recurrent(q, k, v, &self.kernel)
    }
    /// Chunked prefill of a prompt: its outputs and the state to decode from (causal only).
    pub fn prefill(&self, q: &Tensor<B>, k: &Tensor<B>, v: &Tensor<B>) -> Result<(Tensor<B>, ElaState<B>)> {
        self.require_causal("Ela::prefill")?;
        prefill(q, k, v, &self.kernel, self.chunk)
    }
    /// An empty recurrent state.
    pub fn state(
        &self,
        batch: usize,
        heads: usize,
        d: usize,
        dv: usize,
        dtype: DType,
        device: &B,
    ) -> Result<ElaState<B>> {
        self.require_causal("Ela::state")?;
        Ok(ElaState::new(&self.kernel, batch, heads, d, dv, dtype, device)?.with_chunk(self.chunk))
    }

    fn require_causal(&self, op: &'static str) -> Result<()> {
        if !self.causal {
            return Err(Error::invalid(
                op,
                "the recurrent form is causal by nature; non-causal ELA has one global state (use the chunked form)",
            ));
        }
        Ok(())
    }

    /// `y` of `form` on `q`, `k` `[batch, heads, t, d]` and `v` `[batch, heads, t, dv]`, without
    /// recording a graph.
    pub fn run(&self, form: Form, q: &Tensor<B>, k: &Tensor<B>, v: &Tensor<B>) -> Result<Tensor<B>> {
        no_grad(|| match form {
            Form::Recurrent => self.recurrent(q, k, v),
            _ => {
                let c = |x: &Tensor<B>| Var::constant(x.clone());
                Ok(self.differentiable(form, &c(q), &c(k), &c(v))?.value())
            }
        })
    }

    /// [`Ela::run`] of the quadratic or chunked form, and the gradients of `sum(y * dy)` with
    /// respect to `q`, `k`, `v` (`dy` has `v`'s shape). The recurrent form is the decoding path
    /// and has no gradient: asking for one is an error.
    pub fn run_with_grads(
        &self,
        form: Form,
        q: &Tensor<B>,
        k: &Tensor<B>,
        v: &Tensor<B>,
        dy: &Tensor<B>,
    ) -> Result<FormOutput<B>> {
        if form == Form::Recurrent {
            return Err(Error::invalid(
                "Ela::run_with_grads",
                "the recurrent form (decoding) has no gradient: use Form::Chunked or Form::Quadratic",
            ));
        }
        let (qv, kv, vv) = (Var::param(q.clone()), Var::param(k.clone()), Var::param(v.clone()));
        let y = self.differentiable(form, &qv, &kv, &vv)?;
        let mut g = y.backward_with(dy.to_dtype(q.dtype())?)?;
        let mut take = |x: &Var<B>| g.remove(x).map_or_else(|| x.value().zeros_like(), Ok);
        let grads = Grads { dq: take(&qv)?, dk: take(&kv)?, dv: take(&vv)? };
        Ok(FormOutput { y: y.value(), grads })
    }

    /// The quadratic or the chunked form on vars.
    fn differentiable(&self, form: Form, q: &Var<B>, k: &Var<B>, v: &Var<B>) -> Result<Var<B>> {
        match form {
            Form::Quadratic => self.quadratic(q, k, v),
            _ => self.chunked(q, k, v),
        }
    }
}

/// `max |a - b| / max(max |b|, tiny)`: the normwise relative difference the ELA checks report.
pub fn max_rel_diff<B: Backend>(a: &Tensor<B>, b: &Tensor<B>) -> Result<f64> {
    if a.shape() != b.shape() {
        return Err(Error::ShapeMismatch {
            op: "max_rel_diff",
            lhs: a.shape().clone(),
            rhs: b.shape().clone(),
            hint: "compare outputs of the same shape".into(),
        });
    }
    let (x, y) = (a.to_vec_f64()?, b.to_vec_f64()?);
    let scale = y.iter().fold(f64::MIN_POSITIVE, |m, v| m.max(v.abs()));
    Ok(x.iter().zip(&y).fold(0.0, |m, (p, q)| {
        let d = (p - q).abs() / scale;
        if d.is_nan() {
            f64::INFINITY
        } else {
            m.max(d)
        }
    }))
}
