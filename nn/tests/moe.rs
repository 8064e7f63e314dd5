//! MoE: forward against a per-token reference loop, gradients against finite differences, the
//! bias modes, the auxiliary loss and loss-free balancing.

use ela_autograd::{gradcheck, GradcheckOptions, Var};
use ela_core::{Cpu, DType, Rng, Tensor};
use ela_nn::module::ParamStore;
use ela_nn::moe::{Moe, MoeConfig, RoutingBias, RoutingStats, ScoreFn};

fn input(n: usize, d: usize, seed: u64) -> Tensor<Cpu> {
    Tensor::randn(0.0, 1.0, [n, d], DType::F64, &mut Rng::new(seed), &Cpu).unwrap()
}

/// Naive reference: for every token, score, pick the top-k by (score + bias), and add each
/// selected expert's SwiGLU output computed on that token alone.
fn reference(moe: &Moe<Cpu>, vs: &ParamStore<Cpu>, x: &Tensor<Cpu>) -> Vec<f64> {
    let cfg = *moe.config();
    let get = |name: &str| vs.get(name).unwrap().value().to_vec::<f64>().unwrap();
    let wr = get("router.weight");
    let bias = moe.selection_bias().to_vec::<f64>().unwrap();
    let (n, d, h) = (x.dims()[0], cfg.dim, cfg.hidden);
    let xv = x.to_vec::<f64>().unwrap();
    let mut out = vec![0.0; n * d];
    for t in 0..n {
        let xt = &xv[t * d..(t + 1) * d];
        let logits: Vec<f64> = (0..cfg.experts).map(|e| (0..d).map(|i| wr[e * d + i] * xt[i]).sum()).collect();
        let scores: Vec<f64> = match cfg.score {
            ScoreFn::Softmax => {
                let m = logits.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
                logits.iter().map(|l| (l - m).exp() / z).collect()
            }
            ScoreFn::Sigmoid => logits.iter().map(|l| 1.0 / (1.0 + (-l).exp())).collect(),
        };
        let mut order: Vec<usize> = (0..cfg.experts).collect();
        order.sort_by(|&a, &b| (scores[b] + bias[b]).partial_cmp(&(scores[a] + bias[a])).unwrap());
        let sel = &order[..cfg.top_k];
        let gsum: f64 = sel.iter().map(|&e| scores[e]).sum();
        for &e in sel {
            let g = if cfg.normalize_gates { scores[e] / gsum } else { scores[e] };
            let p = format!("experts.{e}");
            let (wg, wu, wd) = (
                get(&format!("{p}.w_gate.weight")),
                get(&format!("{p}.w_up.weight")),
                get(&format!("{p}.w_down.weight")),
            );
            let a: Vec<f64> = (0..h)
                .map(|j| {
                    let gt: f64 = (0..d).map(|i| wg[j * d + i] * xt[i]).sum();
                    let up: f64 = (0..d).map(|i| wu[j * d + i] * xt[i]).sum();
                    gt / (1.0 + (-gt).exp()) * up
                })
                .collect();
            for i in 0..d {
                let f: f64 = (0..h).map(|j| wd[i * h + j] * a[j]).sum();
                let be = wr[e * d + i];
                out[t * d + i] += match cfg.bias {
                    RoutingBias::None => g * f,
                    RoutingBias::Inner => g * (f + be),
                    RoutingBias::Outer => g * f + be,
                };
            }
        }
    }
    out
}

fn configs() -> Vec<MoeConfig> {
    let mut v = vec![];
    for score in [ScoreFn::Softmax, ScoreFn::Sigmoid] {
        for bias in [RoutingBias::None, RoutingBias::Inner, RoutingBias::Outer] {
            for normalize_gates in [false, true] {
                let mut c = MoeConfig::new(5, 7, 4, 2);
                c.score = score;
                c.bias = bias;
                c.normalize_gates = normalize_gates;
                v.push(c);
            }
        }
    }
    v
}

/// No tokens to route (an empty batch) is an error naming the layer and the input, not a
/// failure inside a later op.
#[test]
fn an_empty_batch_is_an_error_naming_moe() {
    let cfg = configs()[0];
    let vs = ParamStore::new(&Cpu, DType::F64, 0);
    let moe = Moe::new(&vs, cfg).unwrap();
    let Err(e) = moe.forward(&Var::constant(input(0, 5, 1))) else { panic!("an empty batch was routed") };
    let e = e.to_string();
    assert!(e.contains("Moe") && e.contains("no tokens"), "{e}");
}

#[test]
fn forward_matches_per_token_reference() {
    for (i, cfg) in configs().into_iter().enumerate() {
        let vs = ParamStore::new(&Cpu, DType::F64, i as u64);
        let moe = Moe::new(&vs, cfg).unwrap();
        let x = input(9, 5, 100 + i as u64);
        let out = moe.forward(&Var::constant(x.clone())).unwrap();
        let got = out.y.value().to_vec::<f64>().unwrap();
        let want = reference(&moe, &vs, &x);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-12 * (1.0 + b.abs()), "{cfg:?}: {a} vs {b}");
        }
        assert_eq!(out.stats.counts.iter().sum::<usize>(), 9 * 2);
        assert!((out.stats.load.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(out.stats.entropy > 0.0 && out.stats.entropy <= (4f64).ln() + 1e-12);
    }
}

#[test]
fn gradients_match_finite_differences() {
    for cfg in [configs()[2], configs()[11]] {
        let vs = ParamStore::new(&Cpu, DType::F64, 7);
        let moe = Moe::new(&vs, cfg).unwrap();
        let x = input(6, 5, 3);
        // d(output)/d(input) through gradcheck.
        let report =
            gradcheck(|v| moe.forward(&v[0]).map(|o| o.y), std::slice::from_ref(&x), GradcheckOptions::default())
                .unwrap();
        assert!(report.passed, "{cfg:?} input: {report}");
        // d(loss)/d(every parameter element) by central differences on the stored values.
        let r = input(6, 5, 4);
        let loss = || -> f64 {
            let y = moe.forward(&Var::constant(x.clone())).unwrap().y.value();
            y.mul(&r).unwrap().sum_all().unwrap().to_scalar().unwrap()
        };
        let y = moe.forward(&Var::constant(x.clone())).unwrap().y;
        let grads = y.mul(&Var::constant(r.clone())).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, p) in vs.named_params() {
            let g = grads.get(&p).unwrap().to_vec::<f64>().unwrap();
            let base = p.value();
            let v0 = base.to_vec::<f64>().unwrap();
            for e in (0..v0.len()).step_by(3) {
                let eps = 1e-6;
                let mut v = v0.clone();
                v[e] += eps;
                p.set_value(Tensor::from_vec(v.clone(), base.shape().clone(), &Cpu).unwrap()).unwrap();
                let lp = loss();
                v[e] -= 2.0 * eps;
                p.set_value(Tensor::from_vec(v, base.shape().clone(), &Cpu).unwrap()).unwrap();
                let lm = loss();
                p.set_value(base.clone()).unwrap();
                let num = (lp - lm) / (2.0 * eps);
                assert!((num - g[e]).abs() <= 1e-7 + 1e-5 * num.abs(), "{cfg:?} {name}[{e}]: {} vs {num}", g[e]);
            }
        }
    }
}

#[test]
fn aux_loss_and_loss_free_bias() {
    let mut cfg = MoeConfig::new(4, 6, 4, 1);
    cfg.aux_alpha = 0.01;
    cfg.loss_free_gamma = 1e-3;
    let vs = ParamStore::new(&Cpu, DType::F64, 1);
    let moe = Moe::new(&vs, cfg).unwrap();
    let x = input(16, 4, 9);
    let out = moe.forward(&Var::constant(x.clone())).unwrap();
    // aux = alpha * E * sum_i f_i P_i with P_i the mean softmax score of expert i.
    let logits = x.matmul(&vs.get("router.weight").unwrap().value().t().unwrap()).unwrap();
    let p = logits.softmax(1usize).unwrap().mean(0usize, false).unwrap().to_vec::<f64>().unwrap();
    let want: f64 = 0.01 * 4.0 * out.stats.load.iter().zip(&p).map(|(f, p)| f * p).sum::<f64>();
    let got = out.aux_loss.unwrap().value().to_scalar().unwrap();
    assert!((got - want).abs() < 1e-14, "{got} vs {want}");
    // Overloaded experts (load > 1/E) get their bias lowered by gamma, underloaded raised.
    moe.update_selection_bias(&out.stats).unwrap();
    let b = moe.selection_bias().to_vec::<f64>().unwrap();
    for (bi, li) in b.iter().zip(&out.stats.load) {
        let expect = if *li > 0.25 {
            -1e-3
        } else if *li < 0.25 {
            1e-3
        } else {
            0.0
        };
        assert_eq!(*bi, expect);
    }
    // The bias changes selection only: pushing expert 3's bias far up sends every token there,
    // while the gate stays the unbiased score.
    let stats = RoutingStats { counts: vec![], load: vec![1.0, 1.0, 1.0, -9999.0], entropy: 0.0, choice: vec![] };
    for _ in 0..2000 {
        moe.update_selection_bias(&stats).unwrap();
    }
    let o2 = moe.forward(&Var::constant(x.clone())).unwrap();
    assert_eq!(o2.stats.counts, vec![0, 0, 0, 16]);
    // The reference selects with the bias but gates with the unbiased score.
    let want = reference(&moe, &vs, &x);
    for (a, b) in o2.y.value().to_vec::<f64>().unwrap().iter().zip(&want) {
        assert!((a - b).abs() < 1e-12 * (1.0 + b.abs()));
    }
}

#[test]
fn bad_config_and_input_are_errors() {
    let vs = ParamStore::new(&Cpu, DType::F32, 0);
    assert!(Moe::new(&vs, MoeConfig::new(4, 4, 2, 3)).is_err());
    let moe = Moe::new(&vs.sub("ok"), MoeConfig::new(4, 4, 2, 1)).unwrap();
    let bad = Var::constant(Tensor::zeros([3, 5], DType::F32, &Cpu).unwrap());
    let e = moe.forward(&bad).err().unwrap().to_string();
    assert!(e.contains("Moe") && e.contains("[3, 5]"), "{e}");
}
