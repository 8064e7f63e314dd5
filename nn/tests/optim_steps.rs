//! Optimizers against hand-computed updates, weight decay semantics, clipping, the schedule,
//! convergence on a small regression, and exact resume from exported state.

use ela_autograd::{Grads, Var};
use ela_core::{Cpu, DType, Rng, Tensor};
use ela_nn::checkpoint;
use ela_nn::layers::{Linear, LinearConfig, LinearInit};
use ela_nn::module::{Module, ParamStore, StateDict};
use ela_nn::optim::{clip_grad_norm, global_grad_norm, AdamW, AdamWConfig, Optimizer, Sgd, SgdConfig, WarmupCosine};

fn t(v: &[f64]) -> Tensor<Cpu> {
    Tensor::from_vec(v.to_vec(), [v.len()], &Cpu).unwrap()
}

fn grads_of(pairs: &[(&Var<Cpu>, &[f64])]) -> Grads<Cpu> {
    let mut g = Grads::empty();
    for (v, x) in pairs {
        g.insert(v, t(x));
    }
    g
}

fn val(v: &Var<Cpu>) -> Vec<f64> {
    v.value().to_vec::<f64>().unwrap()
}

const GRADS: [[f64; 2]; 3] = [[0.5, -1.0], [-0.3, 0.2], [0.1, 4.0]];

fn close(a: &[f64], b: &[f64], tol: f64) {
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
    }
}

#[test]
fn adamw_matches_hand_computed_steps() {
    // Reference: the PyTorch AdamW update written out with Python floats
    // (p *= 1 - lr wd; m, v moments; p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)).
    let want = [
        [0.890000002, -1.880000001],
        [0.8619501989217752, -1.8100973939804945],
        [0.8279341786071506, -1.8441513350714498],
    ];
    let p = Var::param(t(&[1.0, -2.0]));
    let cfg = AdamWConfig { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 };
    let mut opt = AdamW::new(vec![("p".into(), p.clone())], cfg).unwrap();
    for (g, w) in GRADS.iter().zip(want) {
        opt.step(&grads_of(&[(&p, g)])).unwrap();
        close(&val(&p), &w, 1e-14);
    }
    assert_eq!(opt.step_count("p"), Some(3));
    // Step 1 in closed form: m_hat = g and sqrt(v_hat) = |g|, so p = p0 (1 - lr wd) - lr g / (|g| + eps).
    let closed = 1.0 * (1.0 - 0.1 * 0.1) - 0.1 * 0.5 / (0.5 + 1e-8);
    assert!((closed - want[0][0]).abs() < 1e-15);
}

#[test]
fn sgd_momentum_and_nesterov_match_hand_computed_steps() {
    let plain = [[0.95, -1.9], [0.935, -1.83], [0.9115, -2.167]];
    let p = Var::param(t(&[1.0, -2.0]));
    let cfg = SgdConfig { lr: 0.1, momentum: 0.9, ..Default::default() };
    let mut opt = Sgd::new(vec![("p".into(), p.clone())], cfg).unwrap();
    for (g, w) in GRADS.iter().zip(plain) {
        opt.step(&grads_of(&[(&p, g)])).unwrap();
        close(&val(&p), &w, 1e-14);
    }
    let nesterov = [[0.9031, -1.8062], [0.91707411, -1.75814822], [0.882721158191, -2.4551867163820003]];
    let p = Var::param(t(&[1.0, -2.0]));
    let cfg = SgdConfig { lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 0.01, ..Default::default() };
    let mut opt = Sgd::new(vec![("p".into(), p.clone())], cfg).unwrap();
    for (g, w) in GRADS.iter().zip(nesterov) {
        opt.step(&grads_of(&[(&p, g)])).unwrap();
        close(&val(&p), &w, 1e-14);
    }
    // Plain SGD: p - lr g.
    let p = Var::param(t(&[1.0]));
    let mut opt = Sgd::new(vec![("p".into(), p.clone())], SgdConfig { lr: 0.5, ..Default::default() }).unwrap();
    opt.step(&grads_of(&[(&p, &[0.25])])).unwrap();
    assert_eq!(val(&p), [0.875]);
    assert!(Sgd::<Cpu>::new(vec![], SgdConfig { nesterov: true, ..Default::default() }).is_err());
}

#[test]
fn adamw_weight_decay_is_decoupled() {
    let cfg = AdamWConfig { lr: 0.1, weight_decay: 0.5, ..Default::default() };
    // With a zero gradient the moments stay 0, and only the decay acts: p (1 - lr wd)^k.
    let p = Var::param(t(&[2.0, -4.0]));
    let q = Var::param(t(&[2.0, -4.0]));
    let mut opt = AdamW::new(vec![("p".into(), p.clone()), ("q".into(), q.clone())], cfg).unwrap();
    assert_eq!(opt.exclude_from_weight_decay(|name, _| name == "q"), 1);
    for _ in 0..4 {
        opt.step(&grads_of(&[(&p, &[0.0, 0.0]), (&q, &[0.0, 0.0])])).unwrap();
    }
    let f = (1.0f64 - 0.05).powi(4);
    close(&val(&p), &[2.0 * f, -4.0 * f], 1e-15);
    assert_eq!(val(&q), [2.0, -4.0]);
    // Decoupled: the decay does not depend on the gradient's scale. One step with a constant
    // gradient c gives p (1 - lr wd) - lr c / (|c| + eps) whether c is 1e-3 or 1e3 (L2 inside
    // Adam would give p - lr (c + wd p) / |c + wd p|, which depends on c).
    let mut outs = Vec::new();
    for c in [1e-3, 1e3] {
        let p = Var::param(t(&[2.0]));
        let mut opt = AdamW::new(vec![("p".into(), p.clone())], AdamWConfig { eps: 0.0, ..cfg }).unwrap();
        opt.step(&grads_of(&[(&p, &[c])])).unwrap();
        outs.push(val(&p)[0]);
    }
    close(&outs, &[2.0 * 0.95 - 0.1, 2.0 * 0.95 - 0.1], 1e-12);
}

#[test]
fn params_without_gradients_are_not_updated() {
    let p = Var::param(t(&[1.0]));
    let q = Var::param(t(&[1.0]));
    let mut opt = AdamW::new(vec![("p".into(), p.clone()), ("q".into(), q.clone())], AdamWConfig::default()).unwrap();
    opt.step(&grads_of(&[(&p, &[1.0])])).unwrap();
    opt.step(&grads_of(&[(&p, &[1.0])])).unwrap();
    opt.step(&grads_of(&[(&p, &[1.0]), (&q, &[1.0])])).unwrap();
    assert_eq!(opt.step_count("p"), Some(3));
    // q's bias correction starts at its own first step, so its first update is the same as p's.
    assert_eq!(opt.step_count("q"), Some(1));
    let p2 = Var::param(t(&[1.0]));
    let mut o2 = AdamW::new(vec![("p".into(), p2.clone())], AdamWConfig::default()).unwrap();
    o2.step(&grads_of(&[(&p2, &[1.0])])).unwrap();
    assert_eq!(val(&q), val(&p2));
    let e = opt.step(&grads_of(&[(&p, &[1.0, 2.0])])).unwrap_err().to_string();
    assert!(e.contains("\"p\""), "{e}");
}

#[test]
fn clipping_by_global_norm() {
    let a = Var::param(t(&[0.0, 0.0]));
    let b = Var::param(t(&[0.0]));
    let c = Var::param(t(&[0.0]));
    let params = [a.clone(), b.clone(), c.clone()];
    // |(3, 4)|^2 + 12^2 = 169, c has no gradient.
    let mut g = grads_of(&[(&a, &[3.0, 4.0]), (&b, &[12.0])]);
    assert_eq!(global_grad_norm(&params, &g).unwrap(), 13.0);
    let n = clip_grad_norm(&params, &mut g, 20.0).unwrap();
    assert_eq!(n, 13.0);
    assert_eq!(g.get(&a).unwrap().to_vec::<f64>().unwrap(), [3.0, 4.0]);
    let n = clip_grad_norm(&params, &mut g, 6.5).unwrap();
    assert_eq!(n, 13.0);
    let s = 6.5 / (13.0 + 1e-6);
    close(&g.get(&a).unwrap().to_vec::<f64>().unwrap(), &[3.0 * s, 4.0 * s], 1e-15);
    close(&g.get(&b).unwrap().to_vec::<f64>().unwrap(), &[12.0 * s], 1e-15);
    assert!((global_grad_norm(&params, &g).unwrap() - 6.5).abs() < 1e-6);
    assert!(g.get(&c).is_none());
    // A non-finite norm is reported and the gradients are left alone.
    let mut g = grads_of(&[(&a, &[f64::INFINITY, 1.0])]);
    assert!(clip_grad_norm(&params, &mut g, 1.0).unwrap().is_infinite());
    assert_eq!(g.get(&a).unwrap().to_vec::<f64>().unwrap()[1], 1.0);
    assert!(clip_grad_norm(&params, &mut g, 0.0).is_err());
}

#[test]
fn warmup_cosine_values() {
    let s = WarmupCosine::new(1e-3, 1e-4, 10, 110).unwrap();
    let near = |a: f64, b: f64| assert!((a - b).abs() < 1e-15, "{a} vs {b}");
    near(s.lr_at(0), 1e-4);
    near(s.lr_at(4), 5e-4);
    near(s.lr_at(9), 1e-3);
    near(s.lr_at(10), 1e-3);
    near(s.lr_at(60), 1e-4 + 0.5 * 9e-4);
    near(s.lr_at(35), 1e-4 + 9e-4 * 0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos()));
    near(s.lr_at(110), 1e-4);
    near(s.lr_at(10_000), 1e-4);
    assert!((10..110).all(|i| s.lr_at(i + 1) <= s.lr_at(i)));
    let no_warm = WarmupCosine::new(1.0, 0.0, 0, 4).unwrap();
    near(no_warm.lr_at(0), 1.0);
    near(no_warm.lr_at(2), 0.5);
    assert!(WarmupCosine::new(1.0, 2.0, 0, 4).is_err());
    assert!(WarmupCosine::new(1.0, 0.0, 5, 4).is_err());
}

/// Fit y = W x with a bias-free Linear; returns the final loss.
fn fit(model: &Linear<Cpu>, opt: &mut dyn Optimizer<Cpu>, x: &Var<Cpu>, y: &Var<Cpu>, steps: usize) -> f64 {
    let mut loss = f64::NAN;
    for _ in 0..steps {
        let l = model.forward(x).unwrap().sub(y).unwrap().square().unwrap().mean_all().unwrap();
        loss = l.value().to_scalar().unwrap();
        opt.step(&l.backward().unwrap()).unwrap();
    }
    loss
}

fn regression_data() -> (Tensor<Cpu>, Var<Cpu>, Var<Cpu>) {
    let mut rng = Rng::new(42);
    let w_true = Tensor::randn(0.0, 1.0, [3, 4], DType::F64, &mut rng, &Cpu).unwrap();
    let x = Tensor::randn(0.0, 1.0, [64, 4], DType::F64, &mut rng, &Cpu).unwrap();
    let y = x.matmul(&w_true.t().unwrap()).unwrap();
    (w_true, Var::constant(x), Var::constant(y))
}

#[test]
fn adamw_fits_a_linear_map() {
    let (w_true, x, y) = regression_data();
    let vs = ParamStore::new(&Cpu, DType::F64, 0);
    let model = Linear::new(&vs.sub("fit"), 4, 3, LinearConfig::no_bias(LinearInit::Uniform)).unwrap();
    let cfg = AdamWConfig { lr: 0.05, weight_decay: 0.0, ..Default::default() };
    let mut opt = AdamW::new(model.named_params(), cfg).unwrap();
    let sched = WarmupCosine::new(0.05, 0.0, 10, 400).unwrap();
    let mut loss = f64::NAN;
    for step in 0..400 {
        opt.set_lr(sched.lr_at(step)).unwrap();
        loss = fit(&model, &mut opt, &x, &y, 1);
    }
    assert!(loss < 1e-8, "final loss {loss}");
    let w = model.weight().value();
    assert!(w.all_close(&w_true, 0.0, 1e-4).unwrap(), "{:?} vs {:?}", w.to_vec_f64(), w_true.to_vec_f64());
}

fn snapshot(model: &Linear<Cpu>) -> Vec<f64> {
    val(model.weight())
}

#[test]
fn exported_state_resumes_exactly_through_a_checkpoint_file() {
    let (_, x, y) = regression_data();
    let dir = std::env::temp_dir().join(format!("ela-optim-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for use_adam in [true, false] {
        let make = || {
            let vs = ParamStore::new(&Cpu, DType::F64, 1);
            let m = Linear::new(&vs.sub("m"), 4, 3, LinearConfig::default()).unwrap();
            let o: Box<dyn Optimizer<Cpu>> = if use_adam {
                Box::new(AdamW::new(m.named_params(), AdamWConfig { lr: 0.01, ..Default::default() }).unwrap())
            } else {
                let c = SgdConfig { lr: 0.01, momentum: 0.9, nesterov: true, ..Default::default() };
                Box::new(Sgd::new(m.named_params(), c).unwrap())
            };
            (vs, m, o)
        };
        let (vs, model, mut opt) = make();
        fit(&model, opt.as_mut(), &x, &y, 5);
        // Save model + optimizer into one file, then continue.
        let mut all = checkpoint::with_prefix(&vs.state_dict(), "model");
        all.extend(checkpoint::with_prefix(&opt.state_dict().unwrap(), "optim"));
        let path = dir.join(format!("resume-{use_adam}.safetensors"));
        checkpoint::save(&path, &all, &Default::default()).unwrap();
        fit(&model, opt.as_mut(), &x, &y, 3);
        let continued = snapshot(&model);

        let (vs2, model2, mut opt2) = make();
        let ck = checkpoint::load(&path, &Cpu).unwrap();
        vs2.load_state_dict(&checkpoint::take_prefix(&ck.tensors, "model"), true).unwrap();
        opt2.load_state_dict(&checkpoint::take_prefix(&ck.tensors, "optim")).unwrap();
        fit(&model2, opt2.as_mut(), &x, &y, 3);
        assert_eq!(snapshot(&model2), continued, "resume not bit-exact (adam: {use_adam})");
        // Without the optimizer state the continuation differs (the test can fail).
        let (vs3, model3, mut opt3) = make();
        vs3.load_state_dict(&checkpoint::take_prefix(&ck.tensors, "model"), true).unwrap();
        fit(&model3, opt3.as_mut(), &x, &y, 3);
        assert_ne!(snapshot(&model3), continued);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn optimizer_state_load_errors() {
    let p = Var::param(t(&[1.0, 2.0]));
    let mut opt = AdamW::new(vec![("p".into(), p.clone())], AdamWConfig::default()).unwrap();
    opt.step(&grads_of(&[(&p, &[1.0, 1.0])])).unwrap();
    let sd = opt.state_dict().unwrap();
    assert_eq!(sd.keys().collect::<Vec<_>>(), ["p.exp_avg", "p.exp_avg_sq", "p.step"]);
    let mut bad: StateDict<Cpu> = sd.clone();
    bad.insert("q.exp_avg".into(), t(&[0.0, 0.0]));
    assert!(opt.load_state_dict(&bad).unwrap_err().to_string().contains("unexpected key \"q.exp_avg\""));
    let mut bad = sd.clone();
    bad.insert("p.exp_avg".into(), t(&[0.0]));
    assert!(opt.load_state_dict(&bad).unwrap_err().to_string().contains("expected [2]"));
    let mut bad = sd.clone();
    bad.remove("p.step");
    assert!(opt.load_state_dict(&bad).unwrap_err().to_string().contains("or none of them"));
    opt.load_state_dict(&sd).unwrap();
    assert_eq!(opt.step_count("p"), Some(1));
}

#[test]
fn half_precision_params_keep_f32_state() {
    let p = Var::param(t(&[1.0, -1.0]).to_dtype(DType::BF16).unwrap());
    let mut opt = AdamW::new(vec![("p".into(), p.clone())], AdamWConfig { lr: 0.25, ..Default::default() }).unwrap();
    let mut g = Grads::empty();
    g.insert(&p, t(&[1.0, -1.0]).to_dtype(DType::BF16).unwrap());
    opt.step(&g).unwrap();
    assert_eq!(p.dtype(), DType::BF16);
    assert_eq!(opt.state_dict().unwrap()["p.exp_avg"].dtype(), DType::F32);
    // 1 * (1 - 0.25 * 0.01) - 0.25 = 0.7475, rounded to bf16 (8 mantissa bits).
    let v = p.value().to_vec_f64().unwrap();
    assert!((v[0] - 0.7475).abs() < 4e-3 && (v[1] + 0.7475).abs() < 4e-3, "{v:?}");
}

/// Every hyper-parameter is checked for range *and* finiteness, at construction and in
/// `set_lr`: NaN compares false both ways, so a `>=` alone lets it through, and a NaN rate
/// silently fills every weight with NaN.
#[test]
fn non_finite_or_out_of_range_hyper_parameters_are_errors() {
    let w = || vec![("w".to_string(), Var::param(t(&[1.0, 2.0])))];
    for (name, cfg) in [
        ("lr", AdamWConfig { lr: f64::NAN, ..Default::default() }),
        ("lr", AdamWConfig { lr: f64::INFINITY, ..Default::default() }),
        ("eps", AdamWConfig { eps: f64::INFINITY, ..Default::default() }),
        ("weight_decay", AdamWConfig { weight_decay: f64::INFINITY, ..Default::default() }),
        ("beta1", AdamWConfig { beta1: f64::NAN, ..Default::default() }),
        ("beta2", AdamWConfig { beta2: 1.0, ..Default::default() }),
    ] {
        let e = AdamW::new(w(), cfg).err().unwrap_or_else(|| panic!("{cfg:?} accepted")).to_string();
        assert!(e.contains(name) && e.contains("AdamW::new"), "{e}");
    }
    let mut opt = AdamW::new(w(), AdamWConfig { lr: 0.1, ..Default::default() }).unwrap();
    for bad in [f64::NAN, f64::INFINITY, -1.0] {
        let e = opt.set_lr(bad).unwrap_err().to_string();
        assert!(e.contains("AdamW::set_lr") && e.contains("lr"), "{e}");
    }
    assert_eq!(opt.lr(), 0.1, "a rejected rate leaves the old one");
    opt.set_lr(0.0).unwrap();
    let mut sgd = Sgd::new(w(), SgdConfig::default()).unwrap();
    assert!(sgd.set_lr(f64::NAN).is_err());
    assert!(Sgd::new(w(), SgdConfig { momentum: f64::NAN, ..Default::default() }).is_err());
    assert!(WarmupCosine::new(f64::NAN, 0.0, 1, 2).is_err());
    assert!(WarmupCosine::new(-1.0, -2.0, 1, 2).is_err());
}

/// The bookkeeping of a recorded (in-place) step: operands only once every parameter has state
/// with one step count, a gradient and its state dtype; counts advance together.
#[test]
fn in_place_operands_need_state_gradients_and_one_step_count() {
    let a = Var::param(t(&[1.0, 2.0]));
    let b = Var::param(t(&[3.0]));
    let cfg = AdamWConfig { lr: 0.1, beta1: 0.9, beta2: 0.99, ..Default::default() };
    let mut opt = AdamW::new(vec![("a".into(), a.clone()), ("b".into(), b.clone())], cfg).unwrap();
    let both = grads_of(&[(&a, &[0.5, -1.0]), (&b, &[2.0])]);
    let e = opt.in_place_operands(&both).unwrap_err().to_string();
    assert!(e.contains("\"a\" has not been updated yet"), "{e}");
    // Only `a` steps: the counts differ.
    opt.step(&grads_of(&[(&a, &[0.5, -1.0])])).unwrap();
    let e = opt.common_step().unwrap_err().to_string();
    assert!(e.contains("\"b\" has not been updated yet"), "{e}");
    opt.step(&both).unwrap();
    let e = opt.common_step().unwrap_err().to_string();
    assert!(e.contains("\"b\" has had 1 updates, other parameters 2"), "{e}");
    opt.step(&grads_of(&[(&b, &[1.0])])).unwrap();
    assert_eq!(opt.common_step().unwrap(), 2);
    let (bc1, bc2) = opt.next_bias_corrections().unwrap();
    assert_eq!((bc1, bc2), (1.0 - 0.9f64.powf(3.0), 1.0 - 0.99f64.powf(3.0)));
    let e = opt.in_place_operands(&grads_of(&[(&a, &[0.5, -1.0])])).unwrap_err().to_string();
    assert!(e.contains("\"b\" has no gradient"), "{e}");
    let ops = opt.in_place_operands(&both).unwrap();
    assert_eq!(ops.len(), 2);
    assert!(ops[0].p.same_storage(&a.value()), "the operand is the parameter's own buffer");
    assert!(ops.iter().all(|o| o.weight_decay));
    opt.count_in_place_step().unwrap();
    assert_eq!(opt.step_count("a"), Some(3));
    assert_eq!(opt.step_count("b"), Some(3));
    // Half-precision parameters are updated through an f32 copy: not in place.
    let h = Var::param(t(&[1.0]).to_dtype(DType::BF16).unwrap());
    let mut half = AdamW::new(vec![("h".into(), h.clone())], cfg).unwrap();
    let g = grads_of(&[(&h, &[1.0])]);
    half.step(&g).unwrap();
    let e = half.in_place_operands(&g).unwrap_err().to_string();
    assert!(e.contains("only parameters stored in f32 or f64"), "{e}");
}
