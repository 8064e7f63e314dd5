//! ParamStore: hierarchical names, deterministic per-name init, counting, state dicts.

use ela_autograd::Var;
use ela_core::{Cpu, DType, Error, Tensor};
use ela_nn::layers::{BatchNorm2d, BatchNormConfig, Linear, LinearConfig, LinearInit, RmsNorm, SwiGlu};
use ela_nn::module::{Init, Module, ParamStore, StateDict};

fn build(seed: u64, extra_layer: bool) -> (ParamStore<Cpu>, Vec<Linear<Cpu>>) {
    let vs = ParamStore::new(&Cpu, DType::F32, seed);
    let layers = vs.sub("layers");
    let mut lins = Vec::new();
    if extra_layer {
        Linear::new(&vs.sub("extra"), 3, 3, LinearConfig::default()).unwrap();
    }
    for i in 0..2 {
        lins.push(Linear::new(&layers.sub(i).sub("attn").sub("q"), 4, 6, LinearConfig::default()).unwrap());
    }
    (vs, lins)
}

#[test]
fn hierarchical_names_in_registration_order() {
    let (vs, lins) = build(1, false);
    let names: Vec<String> = vs.named_params().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["layers.0.attn.q.weight", "layers.0.attn.q.bias", "layers.1.attn.q.weight", "layers.1.attn.q.bias"]
    );
    // The module reports the same names as the store, and the same vars.
    let (n, v) = &lins[1].named_params()[0];
    assert_eq!(n, "layers.1.attn.q.weight");
    assert_eq!(v.id(), vs.get("layers.1.attn.q.weight").unwrap().id());
    assert_eq!(vs.sub("a").sub(3).path("w"), "a.3.w");
}

#[test]
fn init_is_seeded_per_name() {
    let (a, _) = build(7, false);
    let (b, _) = build(7, true);
    let (c, _) = build(8, false);
    let w = |vs: &ParamStore<Cpu>| vs.get("layers.1.attn.q.weight").unwrap().value().to_vec::<f32>().unwrap();
    // Same seed: same values, even though `b` registered another layer first.
    assert_eq!(w(&a), w(&b));
    assert_ne!(w(&a), w(&c));
    // Different layers get different values under one seed.
    let w0 = a.get("layers.0.attn.q.weight").unwrap().value().to_vec::<f32>().unwrap();
    assert_ne!(w0, w(&a));
    // Uniform init stays within +-1/sqrt(in).
    let bound = 1.0 / 4f32.sqrt();
    assert!(w(&a).iter().all(|x| x.abs() <= bound));
}

#[test]
fn normal_init_statistics() {
    let vs = ParamStore::new(&Cpu, DType::F64, 3);
    let l = Linear::new(&vs, 200, 100, LinearConfig { bias: true, init: LinearInit::Normal { std: 0.02 } }).unwrap();
    let w = l.weight().value().to_vec::<f64>().unwrap();
    let mean = w.iter().sum::<f64>() / w.len() as f64;
    let std = (w.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
    assert!(mean.abs() < 1e-3 && (std - 0.02).abs() < 1e-3, "mean {mean} std {std}");
    assert!(l.bias().unwrap().value().to_vec::<f64>().unwrap().iter().all(|&b| b == 0.0));
}

#[test]
fn counting_total_and_by_prefix() {
    let vs = ParamStore::new(&Cpu, DType::F32, 0);
    for i in 0..11 {
        Linear::new(&vs.sub("layers").sub(i), 2, 3, LinearConfig::default()).unwrap();
    }
    let mlp = SwiGlu::new(&vs.sub("mlp"), 4, 8, LinearInit::Uniform).unwrap();
    RmsNorm::new(&vs.sub("norm"), 4, 1e-5).unwrap();
    assert_eq!(vs.num_params(), 11 * 9 + 3 * 32 + 4);
    assert_eq!(mlp.num_params(), 96);
    // "layers.1" must not count "layers.10".
    assert_eq!(vs.num_params_under("layers.1"), 9);
    assert_eq!(vs.num_params_under("layers"), 99);
    assert_eq!(vs.num_params_under("mlp.w_up"), 32);
    let by = vs.param_counts_by_prefix(1);
    assert_eq!(by["layers"], 99);
    assert_eq!(by["mlp"], 96);
    assert_eq!(by["norm"], 4);
}

#[test]
fn duplicate_and_invalid_names_are_errors() {
    let vs = ParamStore::new(&Cpu, DType::F32, 0);
    vs.param("w", [2], Init::Zeros).unwrap();
    let e = vs.param("w", [2], Init::Zeros).unwrap_err();
    assert!(e.to_string().contains("already registered"), "{e}");
    assert!(vs.sub("").param("w", [1], Init::Zeros).is_err());
    assert!(vs.param("a..b", [1], Init::Zeros).is_err());
    assert!(vs.param("", [1], Init::Zeros).is_err());
}

#[test]
fn buffers_are_saved_but_not_trained() {
    let vs = ParamStore::new(&Cpu, DType::F32, 0);
    let bn = BatchNorm2d::new(&vs.sub("bn"), 3, BatchNormConfig::default()).unwrap();
    let params: Vec<String> = vs.named_params().into_iter().map(|(n, _)| n).collect();
    assert_eq!(params, ["bn.weight", "bn.bias"]);
    let sd = vs.state_dict();
    assert_eq!(sd.keys().collect::<Vec<_>>(), ["bn.bias", "bn.running_mean", "bn.running_var", "bn.weight"]);
    assert!(!bn.running_mean().requires_grad());
    assert_eq!(vs.num_params(), 6);
}

#[test]
fn state_dict_round_trip() {
    let (a, _) = build(1, false);
    let (b, _) = build(2, false);
    b.load_state_dict(&a.state_dict(), true).unwrap();
    for ((na, va), (nb, vb)) in a.named_params().iter().zip(b.named_params()) {
        assert_eq!(na, &nb);
        assert_eq!(va.value().to_vec::<f32>().unwrap(), vb.value().to_vec::<f32>().unwrap());
    }
}

fn msg(e: Error) -> String {
    e.to_string()
}

#[test]
fn state_dict_load_errors_are_specific_and_atomic() {
    let (vs, _) = build(1, false);
    let before = vs.state_dict();
    let mut sd: StateDict<Cpu> = before.clone();
    // Missing entry.
    sd.remove("layers.0.attn.q.bias");
    let e = msg(vs.load_state_dict(&sd, true).unwrap_err());
    assert!(e.contains("missing \"layers.0.attn.q.bias\"") && e.contains("[6]"), "{e}");
    // Unexpected entry: an error when strict, ignored otherwise.
    let mut sd = before.clone();
    sd.insert("layers.2.attn.q.weight".into(), Tensor::zeros([6, 4], DType::F32, &Cpu).unwrap());
    let e = msg(vs.load_state_dict(&sd, true).unwrap_err());
    assert!(e.contains("unexpected \"layers.2.attn.q.weight\""), "{e}");
    vs.load_state_dict(&sd, false).unwrap();
    // Shape and dtype mismatches name both sides; nothing is assigned on failure.
    let mut sd = before.clone();
    sd.insert("layers.1.attn.q.weight".into(), Tensor::zeros([4, 6], DType::F32, &Cpu).unwrap());
    sd.insert("layers.0.attn.q.weight".into(), Tensor::zeros([6, 4], DType::F64, &Cpu).unwrap());
    sd.insert("layers.1.attn.q.bias".into(), Tensor::full(9.0, [6], DType::F32, &Cpu).unwrap());
    let e = msg(vs.load_state_dict(&sd, true).unwrap_err());
    assert!(
        e.contains("shape mismatch for \"layers.1.attn.q.weight\": the model has [6, 4], the state dict [4, 6]"),
        "{e}"
    );
    assert!(e.contains("dtype mismatch for \"layers.0.attn.q.weight\": the model has F32, the state dict F64"), "{e}");
    assert!(e.contains("2 problem(s)"), "{e}");
    let bias = vs.get("layers.1.attn.q.bias").unwrap().value().to_vec::<f32>().unwrap();
    assert_eq!(bias, before["layers.1.attn.q.bias"].to_vec::<f32>().unwrap());
}

#[test]
fn with_dtype_and_from_tensor() {
    let vs = ParamStore::new(&Cpu, DType::F32, 0);
    let w = vs.with_dtype(DType::F64).param("w", [2, 2], Init::Const(0.5)).unwrap();
    assert_eq!(w.dtype(), DType::F64);
    let t = Tensor::from_vec(vec![1f32, 2.], [2], &Cpu).unwrap();
    let p = vs.param_from_tensor("p", t).unwrap();
    assert!(p.requires_grad());
    assert_eq!(vs.params().len(), 2);
    let v: Var<Cpu> = vs.get("p").unwrap();
    assert_eq!(v.value().to_vec::<f32>().unwrap(), [1., 2.]);
}
