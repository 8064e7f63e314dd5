//! Mixed precision: the dtype a model computes in, and the cast of master weights into it.
//!
//! Under [`Precision::Bf16`] a model keeps its parameters (the *master weights*) in f32, and so
//! its gradients and optimizer state; what runs in bf16 are the activations and the copies of
//! the weights that meet them. The layers do that cast themselves, at the point of use, with
//! [`weight_for`]: a layer given half-precision activations casts its weight (one autograd node,
//! whose backward casts the gradient back to f32) before the product. Which op runs in which
//! dtype, and why, is the policy of docs/nn.md, "Mixed precision".

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;

use ela_autograd::{is_grad_enabled, Var};
use ela_core::{Backend, DType, Error, Result};

/// The dtype a model computes in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// Everything in the parameters' own dtype (f32 in `ela train`): nothing is cast.
    #[default]
    F32,
    /// Mixed precision: bf16 activations and bf16 copies of the weights for the products, f32
    /// master weights, gradients and optimizer state, f32 accumulation inside every kernel and an
    /// f32 loss.
    Bf16,
}

impl Precision {
    /// The dtype activations are cast to at the model's input, or `None` to keep the parameters'
    /// dtype.
    pub fn compute_dtype(self) -> Option<DType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(DType::BF16),
        }
    }

    /// The name on the command line and in saved run settings: `f32` or `bf16`.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(Error::invalid("precision", format!("unknown precision {s:?}; expected f32 or bf16"))),
        }
    }
}

/// True for the two storage-only float dtypes (f16, bf16), which compute in f32 inside kernels.
pub fn is_half(d: DType) -> bool {
    matches!(d, DType::F16 | DType::BF16)
}

/// The weight `w` as the operand of a product with activations of dtype `x`: when `x` is half
/// precision and `w` is not, `w` cast to `x` (a differentiable cast: the gradient comes back in
/// `w`'s dtype, so master weights receive f32 gradients); otherwise `w` itself, so a genuine
/// mismatch (f64 activations against f32 weights, say) is still reported by the op.
///
/// Inside [`with_cast_cache`], with gradients off, a parameter's cast is made once and reused.
pub fn weight_for<B: Backend>(w: &Var<B>, x: DType) -> Result<Var<B>> {
    if !is_cast_for(w, x) {
        return Ok(w.clone());
    }
    if !is_grad_enabled() {
        if let Some(c) = weight_cast(w, x) {
            return Ok(Var::constant(c));
        }
    }
    if !w.is_leaf() || is_grad_enabled() {
        return w.to_dtype(x);
    }
    CAST_CACHE.with(|c| {
        let mut cache = c.borrow_mut();
        let Some(map) = cache.as_mut() else { return w.to_dtype(x) };
        let key = (w.id(), x);
        if let Some(hit) = map.get(&key).and_then(|v| v.downcast_ref::<Var<B>>()) {
            return Ok(hit.clone());
        }
        let cast = w.to_dtype(x)?;
        map.insert(key, Box::new(cast.clone()));
        Ok(cast)
    })
}

/// Whether a float weight `w` meets activations of dtype `x` through a cast (mixed precision:
/// half-precision `x`, a wider `w`).
fn is_cast_for<B: Backend>(w: &Var<B>, x: DType) -> bool {
    is_half(x) && w.dtype() != x && w.dtype().is_float()
}

/// `x [rows, in] @ w^T` for a weight `w [out, in]`, in `x`'s dtype: with half-precision `x` and
/// a wider `w` (mixed precision), while gradients are recorded one node does the cast and the
/// product (`Var::linear_mixed`: `w`'s gradient is one product with an f32 result, not a 16-bit
/// one cast back), and without gradients the product takes [`weight_for`]'s (possibly cached)
/// cast. Inside [`with_weight_casts`] the product takes the cast made there (with or without
/// gradients). Otherwise the plain product.
pub fn times_weight_t<B: Backend>(x: &Var<B>, w: &Var<B>) -> Result<Var<B>> {
    if let Some(c) = weight_cast(w, x.dtype()) {
        return x.linear_mixed_cast(w, &c);
    }
    if is_grad_enabled() && is_cast_for(w, x.dtype()) {
        return x.linear_mixed(w);
    }
    x.matmul(&weight_for(w, x.dtype())?.t()?)
}

/// Casts by (parameter id, dtype); each value is a `Var<B>` of the backend that made it.
type Casts = HashMap<(usize, DType), Box<dyn Any>>;

thread_local! {
    /// The casts made inside [`with_cast_cache`] on this thread; `None` outside it.
    static CAST_CACHE: RefCell<Option<Casts>> = const { RefCell::new(None) };
}

/// Runs `f` with the casts of [`weight_for`] kept: while gradients are off, each parameter is
/// cast to a compute dtype once and the copy is reused by every later use in `f` (this thread
/// only), instead of being cast again at every use. Decoding token by token from a
/// mixed-precision model (`ela_models::lm::generate_eager`) would otherwise cast every weight
/// for every token. The copies (a compute-dtype copy of every weight used: half the f32 weights'
/// memory for bf16) are freed when `f` returns.
///
/// The parameters must not change inside `f`: a value given with `Var::set_value` or updated in
/// place there is not seen by the cached copy. Nested calls share the outer cache.
pub fn with_cast_cache<R>(f: impl FnOnce() -> R) -> R {
    let outer = CAST_CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let was_on = c.is_some();
        if !was_on {
            *c = Some(HashMap::new());
        }
        was_on
    });
    // Clears the cache when `f` returns or unwinds (only the outermost call owns it).
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            if !self.0 {
                CAST_CACHE.with(|c| c.borrow_mut().take());
            }
        }
    }
    let _reset = Reset(outer);
    f()
}

/// The casts of `w_1, w_2, ..` to `x` made by [`with_weight_casts`], in order, for
/// `Var::linear_stacked_cast` (casts made back to back in one call are the stacked weight
/// without a copy); `None` when any weight has none.
pub fn stacked_weight_casts<B: Backend>(ws: &[&Var<B>], x: DType) -> Option<Vec<ela_core::Tensor<B>>> {
    ws.iter().map(|w| weight_cast(w, x)).collect()
}

thread_local! {
    /// The casts made by [`with_weight_casts`] on this thread, by (parameter id, dtype); each
    /// value a `Tensor<B>`. `None` outside it.
    static WEIGHT_CASTS: RefCell<Option<Casts>> = const { RefCell::new(None) };
}

/// The cast of parameter `w` to `x` made by [`with_weight_casts`], if any.
fn weight_cast<B: Backend>(w: &Var<B>, x: DType) -> Option<ela_core::Tensor<B>> {
    WEIGHT_CASTS.with(|c| {
        let cache = c.borrow();
        cache.as_ref()?.get(&(w.id(), x))?.downcast_ref::<ela_core::Tensor<B>>().cloned()
    })
}

/// Runs `f` with every weight of `weights` that activations of dtype `x` would meet through a
/// cast (a wider float weight, half-precision `x`) cast ahead of time, in one
/// [`ela_core::Tensor::cast_concat`] (one launch on CUDA, where a training step would otherwise
/// cast each weight where it is used: a launch and a round trip through memory apiece). The
/// products of [`times_weight_t`] and [`crate::layers::Linear`] take these casts, with or without
/// gradients; weights the list gives next to each other (in a module's parameter order, e.g.
/// a transformer's q, k and v) come out adjacent, so a stacked product of them reads them in
/// place instead of copying them together. Values and gradients are those without the
/// precast: the same bits.
///
/// The weights must not change inside `f` (the casts are made once, before it). Nested calls
/// keep the outer call's casts and add the ones it lacks, for the inner call's duration. The
/// casts are one buffer, freed when `f` has returned and the last recorded node that reads one
/// of them is gone (after the backward), where per-use casts are freed one by one as the backward
/// passes their layers: a little more peak memory (measured 0.12 GiB for the 268M-parameter LM
/// of docs/benchmarks.md) for one launch instead of one per weight.
pub fn with_weight_casts<B: Backend, R>(weights: &[&Var<B>], x: DType, f: impl FnOnce() -> Result<R>) -> Result<R> {
    // Each weight once, and only those the outer call did not cast.
    let mut seen = std::collections::HashSet::new();
    let new: Vec<&Var<B>> = weights
        .iter()
        .copied()
        .filter(|w| is_cast_for(w, x) && weight_cast(w, x).is_none() && seen.insert(w.id()))
        .collect();
    let values: Vec<_> = new.iter().map(|w| w.value()).collect();
    let casts = ela_core::Tensor::cast_concat(&values.iter().collect::<Vec<_>>(), x)?;
    let keys: Vec<(usize, DType)> = new.iter().map(|w| (w.id(), x)).collect();
    let outer = WEIGHT_CASTS.with(|c| {
        let mut c = c.borrow_mut();
        let was_on = c.is_some();
        let map = c.get_or_insert_with(HashMap::new);
        for (k, t) in keys.iter().zip(casts) {
            map.insert(*k, Box::new(t));
        }
        was_on
    });
    // Removes this call's casts when `f` returns or unwinds (the outermost call, the map).
    struct Reset(bool, Vec<(usize, DType)>);
    impl Drop for Reset {
        fn drop(&mut self) {
            WEIGHT_CASTS.with(|c| {
                let mut c = c.borrow_mut();
                match (self.0, c.as_mut()) {
                    (true, Some(map)) => {
                        for k in &self.1 {
                            map.remove(k);
                        }
                    }
                    _ => *c = None,
                }
            });
        }
    }
    let _reset = Reset(outer, keys);
    f()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ela_core::{Cpu, Tensor};

    #[test]
    fn names_round_trip_and_bad_names_are_errors() {
        for p in [Precision::F32, Precision::Bf16] {
            assert_eq!(p.as_str().parse::<Precision>().unwrap(), p);
        }
        let e = "f16".parse::<Precision>().unwrap_err().to_string();
        assert!(e.contains("f32 or bf16"), "{e}");
    }

    #[test]
    fn weights_are_cast_for_half_activations_only() {
        let w = Var::param(Tensor::<Cpu>::ones([2, 3], DType::F32, &Cpu).unwrap());
        let c = weight_for(&w, DType::BF16).unwrap();
        assert_eq!((c.dtype(), c.op_name()), (DType::BF16, "to_dtype"));
        // Same dtype, or a wider activation: the weight itself, so the op reports a mismatch.
        for x in [DType::F32, DType::F64] {
            let same = weight_for(&w, x).unwrap();
            assert_eq!((same.id(), same.dtype()), (w.id(), DType::F32));
        }
        // The gradient of the cast copy arrives in the master dtype.
        let g = c.sum_all().unwrap().backward().unwrap();
        assert_eq!(g.get(&w).unwrap().dtype(), DType::F32);
    }

    /// While recording, a bf16 product with an f32 master weight is one node whose weight
    /// gradient is not rounded to bf16: it matches the f64 product of the same (rounded) values
    /// to f32 rounding, where the cast-then-matmul pair is off by bf16 rounding. The input
    /// gradient and the output are the same bits either way.
    #[test]
    fn mixed_products_give_f32_weight_gradients() {
        let mut rng = ela_core::Rng::new(5);
        let x = Tensor::<Cpu>::randn(0.0, 1.0, [37, 24], DType::F64, &mut rng, &Cpu).unwrap();
        let x = Var::param(x.to_dtype(DType::BF16).unwrap());
        let w = Var::param(Tensor::<Cpu>::randn(0.0, 0.5, [9, 24], DType::F32, &mut rng, &Cpu).unwrap());
        let r = Tensor::<Cpu>::randn(0.0, 1.0, [37, 9], DType::F64, &mut rng, &Cpu).unwrap();
        let r = Var::constant(r.to_dtype(DType::BF16).unwrap());
        let y = times_weight_t(&x, &w).unwrap();
        assert_eq!(y.op_name(), "linear_mixed");
        let g = y.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
        let y2 = x.matmul(&w.to_dtype(DType::BF16).unwrap().t().unwrap()).unwrap();
        let g2 = y2.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
        let bits = |t: &Tensor<Cpu>| t.to_vec_f64().unwrap();
        assert_eq!(bits(&y.value()), bits(&y2.value()));
        assert_eq!(bits(g.get(&x).unwrap()), bits(g2.get(&x).unwrap()));
        let (dw, dw2) = (g.get(&w).unwrap(), g2.get(&w).unwrap());
        assert_eq!((dw.dtype(), dw2.dtype()), (DType::F32, DType::F32));
        // dL/dw = r^T x, in f64 from the bf16 values.
        let f = |t: &Tensor<Cpu>| t.to_dtype(DType::F64).unwrap();
        let want = bits(&f(&r.value()).t().unwrap().matmul(&f(&x.value())).unwrap());
        let err = |got: &[f64]| {
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            got.iter().zip(&want).fold(0f64, |m, (a, b)| m.max((a - b).abs())) / scale
        };
        let (e, e2) = (err(&bits(dw)), err(&bits(dw2)));
        assert!(e < 1e-6, "f32 weight gradient: {e:e}");
        assert!(e2 > 1e-4, "the bf16-rounded gradient it replaces: {e2:e}");
        // Without gradients the product takes the plain (cached) cast.
        let z = ela_autograd::no_grad(|| times_weight_t(&x, &w)).unwrap();
        assert_eq!(bits(&z.value()), bits(&y.value()));
    }

    /// Stacked weights in one mixed-precision node: the same output bits and f32 weight
    /// gradients as a `linear_mixed` node per weight, and bad operands are typed errors.
    #[test]
    fn stacked_mixed_products_match_one_product_per_weight() {
        let mut rng = ela_core::Rng::new(6);
        let mut randn = |d: [usize; 2], dt: DType| {
            Tensor::<Cpu>::randn(0.0, 1.0, d, DType::F64, &mut rng, &Cpu).unwrap().to_dtype(dt).unwrap()
        };
        let x = Var::param(randn([37, 24], DType::BF16));
        let (w1, w2) = (Var::param(randn([9, 24], DType::F32)), Var::param(randn([5, 24], DType::F32)));
        let r = Var::constant(randn([37, 14], DType::BF16));
        let y = x.linear_stacked(&[&w1, &w2]).unwrap();
        assert_eq!((y.op_name(), y.dims()), ("linear_stacked", vec![37, 14]));
        let g = y.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
        let (y1, y2) = (x.linear_mixed(&w1).unwrap(), x.linear_mixed(&w2).unwrap());
        let apart = Var::concat(&[&y1, &y2], 1usize).unwrap();
        let g2 = apart.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
        let bits = |t: &Tensor<Cpu>| t.to_vec_f64().unwrap();
        assert_eq!(bits(&y.value()), bits(&apart.value()));
        for w in [&w1, &w2] {
            let (a, b) = (g.get(w).unwrap(), g2.get(w).unwrap());
            assert_eq!((a.dtype(), b.dtype()), (DType::F32, DType::F32));
            assert!(a.all_close(b, 1e-6, 1e-6).unwrap(), "weight gradient");
        }
        // x's gradient: one product over 14 outputs instead of two summed, in bf16.
        assert!(g.get(&x).unwrap().all_close(g2.get(&x).unwrap(), 2e-2, 2e-2).unwrap());
        for (ws, what) in [
            (vec![], "no weight"),
            (vec![w1.clone(), Var::param(randn([3, 23], DType::F32))], "in dims differ"),
            (vec![w1.clone(), Var::param(randn([3, 24], DType::F64))], "dtypes differ"),
            (vec![Var::param(randn([1, 24], DType::F32).reshape([24]).unwrap()), w1.clone()], "a weight of rank 1"),
        ] {
            let refs: Vec<&Var<Cpu>> = ws.iter().collect();
            let e = x.linear_stacked(&refs).unwrap_err();
            assert!(matches!(e, ela_core::Error::InvalidArgument { op: "linear_stacked", .. }), "{what}: {e:?}");
        }
    }

    /// Inside `with_weight_casts` the products read the casts made up front, in one buffer: the
    /// same output and gradient bits as the per-use casts, the stacked weight read in place, the
    /// casts gone when the scope ends (an inner scope keeps the outer one's), and casts of the
    /// wrong shape or dtype are typed errors.
    #[test]
    fn precast_weights_give_the_bits_of_per_use_casts() {
        let mut rng = ela_core::Rng::new(8);
        let mut randn = |d: [usize; 2], dt: DType| {
            Tensor::<Cpu>::randn(0.0, 1.0, d, DType::F64, &mut rng, &Cpu).unwrap().to_dtype(dt).unwrap()
        };
        let x = Var::param(randn([37, 24], DType::BF16));
        let ws: Vec<Var<Cpu>> = [9, 5, 7].iter().map(|&o| Var::param(randn([o, 24], DType::F32))).collect();
        let r = Var::constant(randn([37, 21], DType::BF16));
        // Through the layers, as a model runs them: two fused, one alone.
        let layers: Vec<crate::layers::Linear<Cpu>> =
            ws.iter().map(|w| crate::layers::Linear::from_vars("l", w.clone(), None).unwrap()).collect();
        let run = || {
            let fused = crate::layers::Linear::fused_forward(&[&layers[0], &layers[1]], &x)?;
            assert_eq!(fused.op_name() == "linear_stacked_cast", weight_cast(&ws[0], DType::BF16).is_some());
            let y = Var::concat(&[&fused, &layers[2].forward(&x)?], 1usize)?;
            let g = y.mul(&r)?.sum_all()?.backward()?;
            let mut out = vec![y.value(), g.get(&x).unwrap().clone()];
            out.extend(ws.iter().map(|w| g.get(w).unwrap().clone()));
            Ok(out)
        };
        let want = run().unwrap();
        let refs: Vec<&Var<Cpu>> = ws.iter().collect();
        let got = with_weight_casts(&refs, DType::BF16, || {
            let casts = stacked_weight_casts(&[&ws[0], &ws[1]], DType::BF16).unwrap();
            let stacked = Tensor::concat(&casts.iter().collect::<Vec<_>>(), 0usize)?;
            assert!(stacked.same_storage(&casts[0]), "adjacent casts are the stacked weight in place");
            assert_eq!(times_weight_t(&x, &ws[2])?.op_name(), "linear_mixed_cast");
            // An inner scope adds nothing it already has, and leaves the outer casts in place.
            with_weight_casts(&refs[2..], DType::BF16, || Ok(()))?;
            assert!(weight_cast(&ws[2], DType::BF16).is_some());
            let out = run()?;
            assert_eq!(x.linear_stacked_cast(&[&ws[0]], &[&casts[0]])?.op_name(), "linear_stacked_cast");
            Ok(out)
        })
        .unwrap();
        assert!(weight_cast(&ws[0], DType::BF16).is_none(), "the casts end with the scope");
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert_eq!((a.dtype(), a.to_vec_f64().unwrap()), (b.dtype(), b.to_vec_f64().unwrap()), "output {i}");
        }
        let f32_cast = ws[0].value();
        let e = x.linear_mixed_cast(&ws[0], &f32_cast).unwrap_err();
        assert!(matches!(e, ela_core::Error::InvalidArgument { op: "linear_mixed_cast", .. }), "{e:?}");
        let wrong = randn([5, 24], DType::BF16);
        let e = x.linear_stacked_cast(&[&ws[0], &ws[1]], &[&wrong, &wrong]).unwrap_err();
        assert!(e.to_string().contains("one cast per weight"), "{e}");
        let e = x.linear_stacked_cast(&[&ws[0], &ws[1]], &[&wrong]).unwrap_err();
        assert!(matches!(e, ela_core::Error::InvalidArgument { op: "linear_stacked_cast", .. }), "{e:?}");
    }

    #[test]
    fn the_cast_cache_reuses_a_parameters_copy_only_inside_its_scope_and_without_gradients() {
        let w = Var::param(Tensor::<Cpu>::from_vec(vec![1.5f32, -2.25, 3.0], [3], &Cpu).unwrap());
        let (a, b, with_grad) = with_cast_cache(|| {
            let a = ela_autograd::no_grad(|| weight_for(&w, DType::BF16)).unwrap();
            let b = ela_autograd::no_grad(|| weight_for(&w, DType::BF16)).unwrap();
            // Recording: a fresh differentiable cast, never the cached constant.
            let g = weight_for(&w, DType::BF16).unwrap();
            (a, b, g)
        });
        assert_eq!(a.id(), b.id(), "the second use reuses the first cast");
        assert_eq!(a.value().to_vec_f64().unwrap(), vec![1.5, -2.25, 3.0]);
        assert_ne!(with_grad.id(), a.id());
        assert_eq!(with_grad.op_name(), "to_dtype");
        // Outside the scope the cache is gone: every use casts again.
        let c = ela_autograd::no_grad(|| weight_for(&w, DType::BF16)).unwrap();
        let d = ela_autograd::no_grad(|| weight_for(&w, DType::BF16)).unwrap();
        assert_ne!(c.id(), a.id());
        assert_ne!(c.id(), d.id());
        // f16 is cached apart from bf16.
        with_cast_cache(|| {
            let h = ela_autograd::no_grad(|| weight_for(&w, DType::F16)).unwrap();
            let bf = ela_autograd::no_grad(|| weight_for(&w, DType::BF16)).unwrap();
            assert_eq!((h.dtype(), bf.dtype()), (DType::F16, DType::BF16));
        });
    }
}
