//! Layers: forward against naive f64 loops, gradients against central finite differences
//! (through the modules' registered parameters and through `gradcheck` on `from_vars` builds).

use ela_autograd::{gradcheck, no_grad, GradcheckOptions, Var};
use ela_core::{Conv2dParams, Cpu, DType, Result, Rng, Tensor};
use ela_nn::layers::{
    BatchNorm2d, BatchNormConfig, Conv2d, Conv2dConfig, Embedding, LayerNorm, Linear, LinearConfig, LinearInit,
    RmsNorm, SwiGlu,
};
use ela_nn::module::{Module, ParamStore};

fn store(seed: u64) -> ParamStore<Cpu> {
    ParamStore::new(&Cpu, DType::F64, seed)
}

fn randn(shape: &[usize], seed: u64) -> Tensor<Cpu> {
    Tensor::randn(0.0, 1.0, shape.to_vec(), DType::F64, &mut Rng::new(seed), &Cpu).unwrap()
}

fn v64(t: &Var<Cpu>) -> Vec<f64> {
    t.value().to_vec::<f64>().unwrap()
}

fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what}[{i}]: {x} vs {y}");
    }
}

/// Check d(sum(f() * r))/d(param) for every element of every parameter against central
/// differences, perturbing the registered vars in place with `set_value`.
fn check_param_grads(params: &[(String, Var<Cpu>)], f: &dyn Fn() -> Result<Var<Cpu>>) {
    let y = f().unwrap();
    let r = Tensor::rand_uniform(-1.0, 1.0, y.shape(), DType::F64, &mut Rng::new(99), &Cpu).unwrap();
    let grads = y.backward_with(r.clone()).unwrap();
    let rv = r.to_vec::<f64>().unwrap();
    let loss = || -> f64 { no_grad(|| v64(&f().unwrap())).iter().zip(&rv).map(|(a, b)| a * b).sum() };
    let eps = 1e-6;
    for (name, p) in params {
        let base = v64(p);
        let analytic = grads.get(p).map(|g| g.to_vec_f64().unwrap()).unwrap_or_else(|| vec![0.0; base.len()]);
        for e in 0..base.len() {
            let set = |d: f64| {
                let mut x = base.clone();
                x[e] += d;
                p.set_value(Tensor::from_vec(x, p.shape(), &Cpu).unwrap()).unwrap();
            };
            set(eps);
            let lp = loss();
            set(-eps);
            let lm = loss();
            set(0.0);
            let numeric = (lp - lm) / (2.0 * eps);
            let a = analytic[e];
            assert!((a - numeric).abs() <= 1e-6 + 1e-5 * a.abs().max(numeric.abs()), "{name}[{e}]: {a} vs {numeric}");
        }
    }
}

#[test]
fn linear_matches_loops_and_gradchecks() {
    let vs = store(1);
    let lin = Linear::new(&vs.sub("l"), 4, 5, LinearConfig::default()).unwrap();
    let x = Var::param(randn(&[2, 3, 4], 2));
    let y = lin.forward(&x).unwrap();
    assert_eq!(y.dims(), [2, 3, 5]);
    let (w, b, xv) = (v64(lin.weight()), v64(lin.bias().unwrap()), v64(&x));
    let mut want = Vec::new();
    for r in 0..6 {
        for o in 0..5 {
            want.push(b[o] + (0..4).map(|k| xv[r * 4 + k] * w[o * 4 + k]).sum::<f64>());
        }
    }
    assert_close(&v64(&y), &want, 1e-12, "linear");
    check_param_grads(&lin.named_params(), &|| lin.forward(&x));
    // gradcheck w.r.t. input, weight and bias together, rank-1 input included.
    let f = |v: &[Var<Cpu>]| Linear::from_vars("l", v[1].clone(), Some(v[2].clone()))?.forward(&v[0]);
    for xs in [[2, 3, 4].as_slice(), &[4]] {
        let r = gradcheck(f, &[randn(xs, 3), randn(&[5, 4], 4), randn(&[5], 5)], GradcheckOptions::default()).unwrap();
        assert!(r.passed, "{r}");
    }
    let bad = lin.forward(&Var::constant(randn(&[2, 3], 6))).unwrap_err().to_string();
    assert!(bad.contains("in_features = 4"), "{bad}");
    let nb = Linear::new(&vs.sub("nb"), 4, 2, LinearConfig::no_bias(LinearInit::Uniform)).unwrap();
    assert!(nb.bias().is_none() && nb.named_params().len() == 1);
}

#[test]
fn fused_linears_match_each_layer_and_gradcheck() {
    // Three layers of one input, with and without biases: the fused product equals the three
    // outputs side by side, and its gradients (input, every weight and bias) pass central
    // differences, so the windows of the product route each layer's gradient home.
    for bias in [true, false] {
        let vs = store(7);
        let cfg = if bias { LinearConfig::default() } else { LinearConfig::no_bias(LinearInit::Uniform) };
        let layers: Vec<Linear<Cpu>> = [3, 5, 2]
            .iter()
            .enumerate()
            .map(|(i, &o)| Linear::new(&vs.sub(format!("l{i}")), 4, o, cfg).unwrap())
            .collect();
        let refs: Vec<&Linear<Cpu>> = layers.iter().collect();
        let x = Var::param(randn(&[2, 3, 4], 8));
        let y = Linear::fused_forward(&refs, &x).unwrap();
        assert_eq!(y.dims(), [2, 3, 10]);
        let parts: Vec<Var<Cpu>> = layers.iter().map(|l| l.forward(&x).unwrap()).collect();
        let want = Var::concat(&parts.iter().collect::<Vec<_>>(), 2).unwrap();
        assert_close(&v64(&y), &v64(&want), 1e-12, "fused linear");
        let params: Vec<(String, Var<Cpu>)> = layers.iter().flat_map(|l| l.named_params()).collect();
        check_param_grads(&params, &|| Linear::fused_forward(&refs, &x));
        check_param_grads(&[("x".into(), x.clone())], &|| Linear::fused_forward(&refs, &x));
    }
    // Mismatched inputs and a partial set of biases are errors that say what to do.
    let vs = store(9);
    let a = Linear::new(&vs.sub("a"), 4, 3, LinearConfig::default()).unwrap();
    let b = Linear::new(&vs.sub("b"), 5, 3, LinearConfig::default()).unwrap();
    let c = Linear::new(&vs.sub("c"), 4, 3, LinearConfig::no_bias(LinearInit::Uniform)).unwrap();
    let x = Var::constant(randn(&[2, 4], 10));
    let e = Linear::fused_forward(&[&a, &b], &x).unwrap_err().to_string();
    assert!(e.contains("same input features"), "{e}");
    let e = Linear::fused_forward(&[&a, &c], &x).unwrap_err().to_string();
    assert!(e.contains("1 of 2 layers have a bias"), "{e}");
    let e = Linear::<Cpu>::fused_forward(&[], &x).unwrap_err().to_string();
    assert!(e.contains("at least one layer"), "{e}");
}

#[test]
fn embedding_rows_and_grads() {
    let vs = store(2);
    let emb = Embedding::new(&vs.sub("tok"), 6, 3, 1.0).unwrap();
    let ids = Tensor::from_vec(vec![4u32, 0, 4, 5], [2, 2], &Cpu).unwrap();
    let y = emb.forward(&ids).unwrap();
    assert_eq!(y.dims(), [2, 2, 3]);
    let (w, yv) = (v64(emb.weight()), v64(&y));
    for (i, &id) in [4usize, 0, 4, 5].iter().enumerate() {
        assert_eq!(&yv[i * 3..i * 3 + 3], &w[id * 3..id * 3 + 3]);
    }
    // Repeated id 4 must accumulate both gradient contributions.
    check_param_grads(&emb.named_params(), &|| emb.forward(&ids));
    let oob = Tensor::from_vec(vec![6u32], [1], &Cpu).unwrap();
    let e = emb.forward(&oob).unwrap_err().to_string();
    assert!(e.contains("index 6") && e.contains("size 6"), "{e}");
}

#[test]
fn rms_norm_matches_formula_and_gradchecks() {
    let vs = store(3);
    let norm = RmsNorm::new(&vs.sub("n"), 5, 1e-5).unwrap();
    // Non-trivial gain so its gradient is exercised away from 1.
    norm.weight().set_value(randn(&[5], 7)).unwrap();
    let x = Var::param(randn(&[3, 5], 8));
    let (xv, w) = (v64(&x), v64(norm.weight()));
    let mut want = Vec::new();
    for r in 0..3 {
        let row = &xv[r * 5..r * 5 + 5];
        let rstd = 1.0 / (row.iter().map(|a| a * a).sum::<f64>() / 5.0 + 1e-5).sqrt();
        want.extend(row.iter().zip(&w).map(|(a, g)| a * rstd * g));
    }
    assert_close(&v64(&norm.forward(&x).unwrap()), &want, 1e-12, "rmsnorm");
    check_param_grads(&norm.named_params(), &|| norm.forward(&x));
    let f = |v: &[Var<Cpu>]| RmsNorm::from_var("n", v[1].clone(), 1e-5)?.forward(&v[0]);
    let r = gradcheck(f, &[randn(&[2, 3, 5], 9), randn(&[5], 10)], GradcheckOptions::default()).unwrap();
    assert!(r.passed, "{r}");
}

#[test]
fn layer_norm_matches_formula_and_gradchecks() {
    let vs = store(4);
    let norm = LayerNorm::new(&vs.sub("ln"), 4, 1e-5, true).unwrap();
    norm.named_params()[0].1.set_value(randn(&[4], 11)).unwrap();
    norm.named_params()[1].1.set_value(randn(&[4], 12)).unwrap();
    let x = Var::param(randn(&[3, 4], 13));
    let (xv, w, b) = (v64(&x), v64(&norm.named_params()[0].1), v64(&norm.named_params()[1].1));
    let mut want = Vec::new();
    for r in 0..3 {
        let row = &xv[r * 4..r * 4 + 4];
        let mean = row.iter().sum::<f64>() / 4.0;
        let var = row.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / 4.0;
        want.extend((0..4).map(|i| (row[i] - mean) / (var + 1e-5).sqrt() * w[i] + b[i]));
    }
    assert_close(&v64(&norm.forward(&x).unwrap()), &want, 1e-12, "layernorm");
    check_param_grads(&norm.named_params(), &|| norm.forward(&x));
    let f = |v: &[Var<Cpu>]| LayerNorm::from_vars("ln", 4, Some(v[1].clone()), None, 1e-5)?.forward(&v[0]);
    let r = gradcheck(f, &[randn(&[3, 4], 14), randn(&[4], 15)], GradcheckOptions::default()).unwrap();
    assert!(r.passed, "{r}");
}

fn silu(a: f64) -> f64 {
    a / (1.0 + (-a).exp())
}

#[test]
fn swiglu_matches_composition_and_gradchecks() {
    let vs = store(5);
    let mlp = SwiGlu::new(&vs.sub("mlp"), 3, 4, LinearInit::Normal { std: 0.5 }).unwrap();
    let names: Vec<String> = mlp.named_params().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["mlp.w_gate.weight", "mlp.w_up.weight", "mlp.w_down.weight"]);
    let x = Var::param(randn(&[2, 3], 16));
    let (xv, g, u, d) = (v64(&x), v64(mlp.w_gate().weight()), v64(mlp.w_up().weight()), v64(mlp.w_down().weight()));
    let mut want = Vec::new();
    for r in 0..2 {
        let row = &xv[r * 3..r * 3 + 3];
        let h: Vec<f64> = (0..4)
            .map(|j| {
                let gate: f64 = (0..3).map(|k| row[k] * g[j * 3 + k]).sum();
                let up: f64 = (0..3).map(|k| row[k] * u[j * 3 + k]).sum();
                silu(gate) * up
            })
            .collect();
        want.extend((0..3).map(|o| (0..4).map(|j| h[j] * d[o * 4 + j]).sum::<f64>()));
    }
    assert_close(&v64(&mlp.forward(&x).unwrap()), &want, 1e-12, "swiglu");
    check_param_grads(&mlp.named_params(), &|| mlp.forward(&x));
    let f = |v: &[Var<Cpu>]| mlp.forward(&v[0]);
    let r = gradcheck(f, &[randn(&[2, 2, 3], 17)], GradcheckOptions::default()).unwrap();
    assert!(r.passed, "{r}");
}

/// Inputs with at least `2 hidden` rows take the stacked gate/up product and the packed gate:
/// the same values and gradients as the two products (up to the order of sums in `x`'s
/// gradient), and gradients against central differences; fewer rows take the two products.
#[test]
fn swiglu_fuses_gate_and_up_for_tall_inputs() {
    let vs = store(7);
    let mlp = SwiGlu::new(&vs.sub("mlp"), 3, 2, LinearInit::Normal { std: 0.5 }).unwrap();
    let x = Var::param(randn(&[5, 3], 19));
    assert!(mlp.fuses_gate_up(&x), "5 rows >= 2 x 2 hidden");
    assert!(!mlp.fuses_gate_up(&Var::param(randn(&[1, 3, 3], 20))), "3 rows < 4");
    let apart = || -> Result<Var<Cpu>> {
        let h = mlp.w_gate().forward(&x)?.swiglu(&mlp.w_up().forward(&x)?)?;
        mlp.w_down().forward(&h)
    };
    let (fused, two) = (mlp.forward(&x).unwrap(), apart().unwrap());
    assert_close(&v64(&fused), &v64(&two), 1e-14, "fused forward");
    let g = randn(&[5, 3], 21);
    let (gf, ga) = (fused.backward_with(g.clone()).unwrap(), two.backward_with(g).unwrap());
    for (name, p) in mlp.named_params().iter().chain([("x".to_string(), x.clone())].iter()) {
        let (a, b) = (gf.get(p).unwrap().to_vec::<f64>().unwrap(), ga.get(p).unwrap().to_vec::<f64>().unwrap());
        assert_close(&a, &b, 1e-13, &format!("fused gradient of {name}"));
    }
    check_param_grads(&mlp.named_params(), &|| mlp.forward(&x));
    let f = |v: &[Var<Cpu>]| mlp.forward(&v[0]);
    let r = gradcheck(f, &[randn(&[2, 3, 3], 22)], GradcheckOptions::default()).unwrap();
    assert!(r.passed, "{r}");
}

#[test]
fn conv2d_matches_naive_loops_and_gradchecks() {
    let vs = store(6);
    let p = Conv2dParams { stride: (2, 1), padding: (1, 1), dilation: (1, 2), groups: 2 };
    let conv = Conv2d::new(&vs.sub("c"), 4, 6, (3, 2), Conv2dConfig { params: p, bias: true }).unwrap();
    assert_eq!(conv.weight().dims(), [6, 2, 3, 2]);
    let x = Var::param(randn(&[2, 4, 5, 6], 18));
    let y = conv.forward(&x).unwrap();
    let (n, c, h, w, o, (kh, kw)) = (2usize, 4usize, 5usize, 6usize, 6usize, (3usize, 2usize));
    let (oh, ow) = p.output_hw((h, w), (kh, kw)).unwrap();
    assert_eq!(y.dims(), [n, o, oh, ow]);
    let (xv, wv, bv) = (v64(&x), v64(conv.weight()), v64(conv.bias().unwrap()));
    let cg = c / p.groups;
    let mut want = vec![0.0; n * o * oh * ow];
    for b in 0..n {
        for oc in 0..o {
            let g = oc / (o / p.groups);
            for i in 0..oh {
                for j in 0..ow {
                    let mut s = bv[oc];
                    for ci in 0..cg {
                        for a in 0..kh {
                            for e in 0..kw {
                                let yy = (i * p.stride.0 + a * p.dilation.0) as isize - p.padding.0 as isize;
                                let xx = (j * p.stride.1 + e * p.dilation.1) as isize - p.padding.1 as isize;
                                if yy >= 0 && xx >= 0 && (yy as usize) < h && (xx as usize) < w {
                                    let xi = ((b * c + g * cg + ci) * h + yy as usize) * w + xx as usize;
                                    s += xv[xi] * wv[((oc * cg + ci) * kh + a) * kw + e];
                                }
                            }
                        }
                    }
                    want[((b * o + oc) * oh + i) * ow + j] = s;
                }
            }
        }
    }
    assert_close(&v64(&y), &want, 1e-12, "conv2d");
    let small = Var::param(randn(&[1, 4, 3, 3], 19));
    check_param_grads(&conv.named_params(), &|| conv.forward(&small));
}

#[test]
fn batchnorm_train_eval_and_running_stats() {
    let vs = store(7);
    let bn = BatchNorm2d::new(&vs.sub("bn"), 2, BatchNormConfig { eps: 1e-5, momentum: 0.1 }).unwrap();
    bn.weight().set_value(randn(&[2], 20)).unwrap();
    bn.bias().set_value(randn(&[2], 21)).unwrap();
    let x = Var::param(randn(&[3, 2, 2, 2], 22).affine(2.0, 1.0).unwrap());
    let y = bn.forward(&x, true).unwrap();
    let (xv, w, b) = (v64(&x), v64(bn.weight()), v64(bn.bias()));
    let idx = |n: usize, c: usize, k: usize| (n * 2 + c) * 4 + k;
    let mut want = vec![0.0; xv.len()];
    let (mut means, mut vars) = (vec![], vec![]);
    for c in 0..2 {
        let vals: Vec<f64> = (0..3).flat_map(|n| (0..4).map(move |k| (n, k))).map(|(n, k)| xv[idx(n, c, k)]).collect();
        let m = vals.iter().sum::<f64>() / 12.0;
        let var = vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / 12.0;
        for n in 0..3 {
            for k in 0..4 {
                want[idx(n, c, k)] = (xv[idx(n, c, k)] - m) / (var + 1e-5).sqrt() * w[c] + b[c];
            }
        }
        means.push(m);
        vars.push(var);
    }
    assert_close(&v64(&y), &want, 1e-12, "batchnorm train");
    // Running stats: (1 - 0.1) * init + 0.1 * batch stat, variance unbiased (12 / 11).
    let rm: Vec<f64> = means.iter().map(|m| 0.1 * m).collect();
    let rv: Vec<f64> = vars.iter().map(|v| 0.9 + 0.1 * v * 12.0 / 11.0).collect();
    assert_close(&v64(bn.running_mean()), &rm, 1e-12, "running mean");
    assert_close(&v64(bn.running_var()), &rv, 1e-12, "running var");
    // Eval mode uses the running statistics and leaves them alone.
    let ye = bn.forward(&x, false).unwrap();
    let want_eval: Vec<f64> = (0..xv.len())
        .map(|i| (i / 4) % 2)
        .zip(&xv)
        .map(|(c, v)| (v - rm[c]) / (rv[c] + 1e-5).sqrt() * w[c] + b[c])
        .collect();
    assert_close(&v64(&ye), &want_eval, 1e-12, "batchnorm eval");
    assert_close(&v64(bn.running_mean()), &rm, 0.0, "eval keeps running mean");
    // Gradients in both modes (train: through the batch statistics too).
    check_param_grads(&bn.named_params(), &|| bn.forward(&x, true));
    let r = gradcheck(|v| bn.forward(&v[0], true), &[randn(&[2, 2, 2, 3], 23)], GradcheckOptions::default()).unwrap();
    assert!(r.passed, "{r}");
    let r = gradcheck(|v| bn.forward(&v[0], false), &[randn(&[2, 2, 2, 3], 24)], GradcheckOptions::default()).unwrap();
    assert!(r.passed, "{r}");
    assert!(bn.forward(&Var::constant(randn(&[1, 2, 1, 1], 25)), true).is_err());
}

/// Bad arguments that used to panic are typed errors naming the op: a linear layer built from
/// a weight with a zero dimension, attention over values of the wrong rank, a KV cache asked
/// for more positions than `usize` holds.
#[test]
fn degenerate_arguments_are_errors() {
    let w = Var::param(Tensor::zeros([3, 0], DType::F32, &Cpu).unwrap());
    let e = Linear::from_vars("l", w, None).err().expect("a [3, 0] weight must be refused").to_string();
    assert!(e.contains("Linear::from_vars") && e.contains("zero"), "{e}");
    let q = Tensor::zeros([1, 2, 4, 8], DType::F32, &Cpu).unwrap();
    let v = Tensor::zeros([4, 8], DType::F32, &Cpu).unwrap();
    let e = ela_nn::kv_cache::blocked_causal_attention(&q, &q, &v).unwrap_err().to_string();
    assert!(e.contains("blocked_causal_attention"), "{e}");
    // No positions at all: an empty output, not an error from inside.
    let q0 = Tensor::zeros([1, 2, 0, 8], DType::F32, &Cpu).unwrap();
    let y = ela_nn::kv_cache::blocked_causal_attention(&q0, &q0, &q0).unwrap();
    assert_eq!(y.dims(), [1, 2, 0, 8]);
    let mut cache = ela_nn::kv_cache::KvCache::from_prompt(&q, &q, 4).unwrap();
    let e = cache.reserve(usize::MAX).unwrap_err().to_string();
    assert!(e.contains("KvCache::reserve") && e.contains("overflow"), "{e}");
}
