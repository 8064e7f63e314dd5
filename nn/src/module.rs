//! The parameter registry ([`ParamStore`]), the [`Module`] trait and state dicts.
//!
//! # Naming
//! Every parameter has a hierarchical, dot-separated name built from the scopes it was created
//! in: `store.sub("layers").sub(0).sub("attn").sub("q")` then `param("weight", ..)` registers
//! `layers.0.attn.q.weight`. Names are the keys of state dicts and checkpoints, so they are the
//! contract between a model's code and its saved files.
//!
//! # Deterministic init
//! A parameter's initial values are drawn from an [`Rng`] seeded with the store's seed *and the
//! parameter's full name* (FNV-1a of the name mixed into the seed). Two consequences: the same
//! seed gives the same model on every run, platform and device; and adding, removing or
//! reordering one layer does not change the initial values of any other layer.
//!
//! # Parameters and buffers
//! Trainable parameters ([`ParamStore::param`]) are [`Var::param`] leaves: gradients flow to them
//! and optimizers update them. Buffers ([`ParamStore::buffer`], e.g. batch-norm running
//! statistics) are [`Var::constant`] leaves: saved and loaded with the state dict, never trained.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use ela_autograd::{no_grad, Var};
use ela_core::{Backend, DType, Error, Result, Rng, Shape, Tensor};

/// Tensors by full parameter name, in sorted order (what checkpoints store).
pub type StateDict<B> = BTreeMap<String, Tensor<B>>;

/// How a new parameter is filled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// Every element equal to the value.
    Const(f64),
    /// Uniform in `[lo, hi)`.
    Uniform {
        /// Lower bound.
        lo: f64,
        /// Upper bound.
        hi: f64,
    },
    /// Normal with the given mean and standard deviation.
    Normal {
        /// Mean.
        mean: f64,
        /// Standard deviation.
        std: f64,
    },
}

impl Init {
    /// Uniform in `[-bound, bound)`.
    pub fn uniform_symmetric(bound: f64) -> Self {
        Init::Uniform { lo: -bound, hi: bound }
    }

    fn tensor<B: Backend>(&self, shape: Shape, dtype: DType, rng: &mut Rng, device: &B) -> Result<Tensor<B>> {
        match *self {
            Init::Zeros => Tensor::zeros(shape, dtype, device),
            Init::Ones => Tensor::ones(shape, dtype, device),
            Init::Const(v) => Tensor::full(v, shape, dtype, device),
            Init::Uniform { lo, hi } => Tensor::rand_uniform(lo, hi, shape, dtype, rng, device),
            Init::Normal { mean, std } => Tensor::randn(mean, std, shape, dtype, rng, device),
        }
    }
}

/// 64-bit FNV-1a, used to derive a per-name init seed.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

struct Entry<B: Backend> {
    name: String,
    var: Var<B>,
    trainable: bool,
}

struct Registry<B: Backend> {
    entries: Vec<Entry<B>>,
    index: HashMap<String, usize>,
}

/// A registry of named parameters and buffers shared by all its scopes.
///
/// Cloning a store (or calling [`ParamStore::sub`]) gives another handle on the same registry;
/// only the name prefix and default dtype differ between handles.
pub struct ParamStore<B: Backend> {
    registry: Arc<Mutex<Registry<B>>>,
    prefix: String,
    device: B,
    dtype: DType,
    seed: u64,
}

impl<B: Backend> Clone for ParamStore<B> {
    fn clone(&self) -> Self {
        ParamStore {
            registry: self.registry.clone(),
            prefix: self.prefix.clone(),
            device: self.device.clone(),
            dtype: self.dtype,
            seed: self.seed,
        }
    }
}

impl<B: Backend> std::fmt::Debug for ParamStore<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.lock().entries.len();
        write!(f, "ParamStore(prefix={:?}, {n} entries, {:?}, {})", self.prefix, self.dtype, self.device.device_name())
    }
}

fn check_name(name: &str, op: &'static str) -> Result<()> {
    let bad = name.is_empty() || name.split('.').any(|s| s.is_empty()) || name.chars().any(|c| c.is_control());
    if bad {
        return Err(Error::invalid(
            op,
            format!(
                "invalid parameter name {name:?}: names are dot-separated non-empty segments without control \
                 characters (scope with .sub(\"layer\") instead of empty or dotted pieces)"
            ),
        ));
    }
    Ok(())
}

impl<B: Backend> ParamStore<B> {
    /// An empty registry whose parameters live on `device`, default to `dtype` and are
    /// initialised from `seed`.
    pub fn new(device: &B, dtype: DType, seed: u64) -> Self {
        ParamStore {
            registry: Arc::new(Mutex::new(Registry { entries: Vec::new(), index: HashMap::new() })),
            prefix: String::new(),
            device: device.clone(),
            dtype,
            seed,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry<B>> {
        self.registry.lock().expect("param store lock poisoned")
    }

    /// A handle whose names are prefixed by `name.` (nested scopes compose: `sub("a").sub(0)`
    /// registers under `a.0.`).
    pub fn sub(&self, name: impl std::fmt::Display) -> Self {
        let mut s = self.clone();
        s.prefix = self.path(name);
        s
    }

    /// A handle on the same registry and scope whose new parameters default to `dtype`.
    pub fn with_dtype(&self, dtype: DType) -> Self {
        let mut s = self.clone();
        s.dtype = dtype;
        s
    }

    /// The full name `name` would get in this scope.
    pub fn path(&self, name: impl std::fmt::Display) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// This scope's prefix ("" at the root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The device new parameters are created on.
    pub fn device(&self) -> &B {
        &self.device
    }

    /// The default dtype of new parameters.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The init seed of the registry.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The generator used to initialise the parameter of full name `full_name`.
    pub fn rng_for(&self, full_name: &str) -> Rng {
        Rng::new(self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ fnv1a(full_name))
    }

    fn register(&self, name: &str, value: Tensor<B>, trainable: bool, op: &'static str) -> Result<Var<B>> {
        let full = self.path(name);
        check_name(&full, op)?;
        let mut reg = self.lock();
        if reg.index.contains_key(&full) {
            return Err(Error::invalid(
                op,
                format!("a parameter or buffer named {full:?} is already registered; give each one a unique scope"),
            ));
        }
        let var = if trainable { Var::param(value) } else { Var::constant(value) };
        let i = reg.entries.len();
        reg.entries.push(Entry { name: full.clone(), var: var.clone(), trainable });
        reg.index.insert(full, i);
        Ok(var)
    }

    /// Create and register a trainable parameter `prefix.name` of `shape` in the store's dtype.
    pub fn param(&self, name: &str, shape: impl Into<Shape>, init: Init) -> Result<Var<B>> {
        let full = self.path(name);
        check_name(&full, "ParamStore::param")?;
        let value = init.tensor(shape.into(), self.dtype, &mut self.rng_for(&full), &self.device)?;
        self.register(name, value, true, "ParamStore::param")
    }

    /// Register an existing tensor as a trainable parameter `prefix.name`.
    pub fn param_from_tensor(&self, name: &str, value: Tensor<B>) -> Result<Var<B>> {
        self.register(name, value.contiguous()?, true, "ParamStore::param_from_tensor")
    }

    /// Register a non-trainable buffer `prefix.name` (saved in state dicts, never optimized).
    pub fn buffer(&self, name: &str, value: Tensor<B>) -> Result<Var<B>> {
        self.register(name, value.contiguous()?, false, "ParamStore::buffer")
    }

    /// The parameter or buffer with this full name.
    pub fn get(&self, full_name: &str) -> Option<Var<B>> {
        let reg = self.lock();
        reg.index.get(full_name).map(|&i| reg.entries[i].var.clone())
    }

    /// Trainable parameters with their full names, in registration order (deterministic for
    /// deterministic model code). Includes every scope of the registry, not only this one.
    pub fn named_params(&self) -> Vec<(String, Var<B>)> {
        self.lock().entries.iter().filter(|e| e.trainable).map(|e| (e.name.clone(), e.var.clone())).collect()
    }

    /// Trainable parameters in registration order.
    pub fn params(&self) -> Vec<Var<B>> {
        self.named_params().into_iter().map(|(_, v)| v).collect()
    }

    /// Buffers with their full names, in registration order.
    pub fn named_buffers(&self) -> Vec<(String, Var<B>)> {
        self.lock().entries.iter().filter(|e| !e.trainable).map(|e| (e.name.clone(), e.var.clone())).collect()
    }

    /// Total number of trainable scalars.
    pub fn num_params(&self) -> usize {
        self.lock().entries.iter().filter(|e| e.trainable).map(|e| e.var.value().elem_count()).sum()
    }

    /// Number of trainable scalars whose name is `prefix` or lies under `prefix.` (so "layers.1"
    /// does not count "layers.10").
    pub fn num_params_under(&self, prefix: &str) -> usize {
        let p = format!("{prefix}.");
        let reg = self.lock();
        let under = |n: &str| prefix.is_empty() || n == prefix || n.starts_with(&p);
        reg.entries.iter().filter(|e| e.trainable && under(&e.name)).map(|e| e.var.value().elem_count()).sum()
    }

    /// Trainable scalar counts grouped by the first `depth` name segments (e.g. depth 2 gives
    /// `layers.0`, `layers.1`, `embed.weight`, ...).
    pub fn param_counts_by_prefix(&self, depth: usize) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for e in self.lock().entries.iter().filter(|e| e.trainable) {
            let key = e.name.split('.').take(depth.max(1)).collect::<Vec<_>>().join(".");
            *out.entry(key).or_insert(0) += e.var.value().elem_count();
        }
        out
    }

    /// Every parameter and buffer's current value by full name.
    pub fn state_dict(&self) -> StateDict<B> {
        self.lock().entries.iter().map(|e| (e.name.clone(), e.var.value())).collect()
    }

    /// Assign values from `sd` (e.g. a loaded checkpoint) to the registered parameters and buffers.
    ///
    /// Every entry is validated before anything is assigned, so a failed load leaves the model
    /// untouched. Errors list every problem: names missing from `sd`, names in `sd` that the model
    /// does not have (only when `strict`), and shape or dtype mismatches. Values are copied to the
    /// store's device.
    pub fn load_state_dict(&self, sd: &StateDict<B>, strict: bool) -> Result<()> {
        let entries: Vec<(String, Var<B>)> =
            self.lock().entries.iter().map(|e| (e.name.clone(), e.var.clone())).collect();
        let mut problems = Vec::new();
        let mut assign = Vec::new();
        for (name, var) in &entries {
            let cur = var.value();
            match sd.get(name) {
                None => problems.push(format!("missing {name:?} (shape {}, {:?})", cur.shape(), cur.dtype())),
                Some(t) if t.shape() != cur.shape() => problems.push(format!(
                    "shape mismatch for {name:?}: the model has {}, the state dict {}",
                    cur.shape(),
                    t.shape()
                )),
                Some(t) if t.dtype() != cur.dtype() => problems.push(format!(
                    "dtype mismatch for {name:?}: the model has {:?}, the state dict {:?} (convert with to_dtype)",
                    cur.dtype(),
                    t.dtype()
                )),
                Some(t) => assign.push((var.clone(), t.clone())),
            }
        }
        if strict {
            let known: std::collections::HashSet<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
            for name in sd.keys().filter(|k| !known.contains(k.as_str())) {
                problems.push(format!("unexpected {name:?} (not a parameter or buffer of the model)"));
            }
        }
        if !problems.is_empty() {
            const SHOW: usize = 20;
            let more = problems.len().saturating_sub(SHOW);
            let mut msg = format!("{} problem(s): {}", problems.len(), problems[..problems.len().min(SHOW)].join("; "));
            if more > 0 {
                msg.push_str(&format!("; ... and {more} more"));
            }
            return Err(Error::invalid("load_state_dict", msg));
        }
        no_grad(|| {
            for (var, t) in assign {
                let t = if t.device().same_device(&self.device) { t } else { t.to_device(&self.device)? };
                var.set_value(t.contiguous()?)?;
            }
            Ok(())
        })
    }
}

/// Something with trainable parameters.
///
/// `forward` is not part of the trait because its signature varies (token ids for an embedding,
/// a training flag for batch norm, ...); modules with one `Var -> Var` forward also implement
/// [`Forward`].
pub trait Module<B: Backend> {
    /// Every trainable parameter with its full hierarchical name, in a stable order.
    fn named_params(&self) -> Vec<(String, Var<B>)>;

    /// Every trainable parameter, in the order of [`Module::named_params`].
    fn params(&self) -> Vec<Var<B>> {
        self.named_params().into_iter().map(|(_, v)| v).collect()
    }

    /// Number of trainable scalars.
    fn num_params(&self) -> usize {
        self.named_params().iter().map(|(_, v)| v.value().elem_count()).sum()
    }
}

/// A module mapping one tensor to one tensor.
pub trait Forward<B: Backend> {
    /// Apply the module.
    fn forward(&self, x: &Var<B>) -> Result<Var<B>>;
}
