//! Gradients of the detector's pieces against central differences (f64), and the 2-D attention
//! block against attention computed naively.
//!
//! Depthwise convolution alone is gradchecked in tests/tests/autograd_gradcheck.rs
//! (`conv2d_depthwise`), and batch norm alone, in train and eval mode, in
//! nn/tests/layers_forward.rs (`batchnorm_train_eval_and_running_stats`); here both are checked,
//! in train and eval mode, inside the blocks that use them (`ConvBnAct`, `Dsc`).

use std::f64::consts::PI;

use ela_autograd::{gradcheck, no_grad, GradcheckOptions, Var};
use ela_core::{Cpu, DType, ElaKernel, Rng, Tensor};
use ela_models::detect::model::{
    atan_ratio, bce_with_logits, ciou, detection_loss, focal_bce, softplus, Attention2d, ConvBnAct, Dsc, LossConfig,
    Mixer2d,
};
use ela_models::detect::{BBox, Object};
use ela_nn::module::ParamStore;

fn t(v: Vec<f64>, shape: &[usize]) -> Tensor<Cpu> {
    Tensor::from_vec(v, shape, &Cpu).unwrap()
}

fn randn(shape: &[usize], std: f64, seed: u64) -> Tensor<Cpu> {
    Tensor::randn(0.0, std, shape, DType::F64, &mut Rng::new(seed), &Cpu).unwrap()
}

/// Uniform in `[lo, hi)`.
fn unif(rng: &mut Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.uniform()
}

fn check(name: &str, inputs: &[Tensor<Cpu>], f: impl Fn(&[Var<Cpu>]) -> ela_core::Result<Var<Cpu>>) {
    let opts = GradcheckOptions { eps: 1e-6, rtol: 1e-5, atol: 1e-8, seed: 3 };
    let r = gradcheck(f, inputs, opts).unwrap();
    assert!(r.passed, "{name}: {r}");
}

/// Random boxes `[p, 4]` (x0, y0, x1, y1) near each other so that they overlap partly.
fn boxes(p: usize, seed: u64) -> Tensor<Cpu> {
    let mut rng = Rng::new(seed);
    let mut v = Vec::new();
    for _ in 0..p {
        let (x, y) = (unif(&mut rng, 0.0, 10.0), unif(&mut rng, 0.0, 10.0));
        v.extend([x, y, x + unif(&mut rng, 2.0, 12.0), y + unif(&mut rng, 2.0, 12.0)]);
    }
    t(v, &[p, 4])
}

#[test]
fn softplus_bce_and_focal() {
    let x = t(vec![-30.0, -2.5, -0.3, 0.4, 1.7, 30.0], &[2, 3]);
    let sp = softplus(&Var::constant(x.clone())).unwrap().value().to_vec::<f64>().unwrap();
    for (s, v) in sp.iter().zip(x.to_vec::<f64>().unwrap()) {
        assert!((s - (1.0 + v.exp()).ln()).abs() < 1e-12);
    }
    // Exactly at 0 the gradient is sigmoid(0) = 0.5 (the relu/abs form would give 0).
    let z = Var::param(t(vec![0.0], &[1]));
    let g = softplus(&z).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(g.get(&z).unwrap().to_vec::<f64>().unwrap(), vec![0.5]);

    let y = t(vec![0.0, 1.0, 0.0, 1.0, 1.0, 0.0], &[2, 3]);
    let xs = t(vec![-2.5, -0.3, 0.4, 1.7, 0.9, -1.1], &[2, 3]);
    check("bce", std::slice::from_ref(&xs), |v| bce_with_logits(&v[0], &y));
    for (gamma, alpha) in [(2.0, 0.25), (1.5, 0.25), (0.0, -1.0)] {
        check(&format!("focal {gamma} {alpha}"), std::slice::from_ref(&xs), |v| focal_bce(&v[0], &y, gamma, alpha));
    }
    // gamma 0, alpha 0.5: half the BCE.
    let (f, b) = (
        focal_bce(&Var::constant(xs.clone()), &y, 0.0, 0.5).unwrap(),
        bce_with_logits(&Var::constant(xs), &y).unwrap(),
    );
    for (f, b) in f.value().to_vec::<f64>().unwrap().iter().zip(b.value().to_vec::<f64>().unwrap()) {
        assert!((2.0 * f - b).abs() < 1e-12);
    }
}

#[test]
fn atan_is_exact_and_differentiable() {
    let mut rng = Rng::new(5);
    let (a, b): (Vec<f64>, Vec<f64>) =
        (0..200).map(|_| (unif(&mut rng, 1e-3, 50.0), unif(&mut rng, 1e-3, 50.0))).unzip();
    let got = atan_ratio(&Var::constant(t(a.clone(), &[200])), &Var::constant(t(b.clone(), &[200]))).unwrap();
    for ((g, a), b) in got.value().to_vec::<f64>().unwrap().iter().zip(&a).zip(&b) {
        assert!((g - (a / b).atan()).abs() < 5e-8, "atan({a}/{b}): {g} vs {}", (a / b).atan());
    }
    check("atan_ratio", &[t(a[..6].to_vec(), &[6]), t(b[..6].to_vec(), &[6])], |v| atan_ratio(&v[0], &v[1]));
}

#[test]
fn ciou_value_and_gradient() {
    // By hand: identical boxes give 1; a box and its copy shifted by its width give
    // 0 - (w^2) / ((2w)^2 + h^2) (no overlap, same aspect ratio).
    let a = Var::constant(t(vec![0.0, 0.0, 4.0, 2.0, 0.0, 0.0, 4.0, 2.0], &[2, 4]));
    let b = Var::constant(t(vec![0.0, 0.0, 4.0, 2.0, 4.0, 0.0, 8.0, 2.0], &[2, 4]));
    let c = ciou(&a, &b).unwrap().value().to_vec::<f64>().unwrap();
    assert!((c[0] - 1.0).abs() < 1e-6 && (c[1] + 16.0 / 68.0).abs() < 1e-6, "{c:?}");
    // Different aspect ratios: the v term, against std's atan.
    let p = [1.0, 1.0, 5.0, 3.0];
    let q = [2.0, 0.0, 4.0, 6.0];
    let got = ciou(&Var::constant(t(p.to_vec(), &[1, 4])), &Var::constant(t(q.to_vec(), &[1, 4]))).unwrap();
    let inter = 2.0 * 2.0;
    let iou = inter / (8.0 + 12.0 - inter);
    let rho2 = (3.0f64 - 3.0).powi(2) + (2.0f64 - 3.0).powi(2);
    let c2 = 4.0f64.powi(2) + 6.0f64.powi(2);
    let v = 4.0 / (PI * PI) * ((2.0f64 / 6.0).atan() - (4.0f64 / 2.0).atan()).powi(2);
    let want = iou - rho2 / c2 - v / (1.0 - iou + v) * v;
    assert!((got.value().to_vec::<f64>().unwrap()[0] - want).abs() < 1e-6);
    check("ciou", &[boxes(5, 1), boxes(5, 2)], |v| ciou(&v[0], &v[1]));
}

#[test]
fn detection_loss_gradient() {
    // Two images, two scales (4x4 at stride 8, 2x2 at stride 16: a 32x32 input), 2 classes.
    let targets = vec![
        vec![
            Object::new(1, BBox::new(3.0, 5.0, 15.0, 13.0)),
            Object::new(0, BBox::new(2.0, 2.0, 30.0, 29.0)), // > 8 strides of 8: stride 16
            Object { class: 0, bbox: BBox::new(20.0, 0.0, 32.0, 10.0), crowd: true },
        ],
        vec![Object::new(0, BBox::new(17.0, 18.0, 25.0, 31.0))],
    ];
    let outs = [randn(&[2, 7, 4, 4], 0.7, 1), randn(&[2, 7, 2, 2], 0.7, 2)];
    let cfg = LossConfig { scale_ratio: 2.0, ..LossConfig::default() };
    let (_, parts) =
        detection_loss(&outs.iter().map(|o| Var::constant(o.clone())).collect::<Vec<_>>(), &[8, 16], &targets, &cfg)
            .unwrap();
    assert!(parts.num_pos >= 6 && parts.obj > 0.0 && parts.boxes > 0.0 && parts.cls > 0.0, "{parts:?}");
    check("detection_loss", &outs, |v| Ok(detection_loss(v, &[8, 16], &targets, &cfg)?.0));
    // No objects: objectness only, the other terms 0.
    let empty = vec![vec![], vec![]];
    let (l, p) = detection_loss(&[Var::constant(outs[0].clone())], &[8], &empty, &cfg).unwrap();
    assert_eq!((p.num_pos, p.boxes, p.cls), (0, 0.0, 0.0));
    assert!((l.value().to_scalar().unwrap() - p.obj).abs() < 1e-12);
}

#[test]
fn batch_norm_blocks_gradient_train_and_eval() {
    let store = ParamStore::new(&Cpu, DType::F64, 4);
    let cba = ConvBnAct::new(&store.sub("a"), 3, 4, 3, 2, 1).unwrap();
    let dsc = Dsc::new(&store.sub("b"), 4, 5, 1).unwrap();
    // Non-trivial gains, shifts and running statistics.
    for (name, v) in store.named_params().into_iter().chain(store.named_buffers()) {
        if name.contains(".bn.") {
            let d = v.dims();
            let r =
                randn(&d, 0.3, name.len() as u64).affine(1.0, if name.ends_with("var") { 1.5 } else { 0.2 }).unwrap();
            no_grad(|| v.set_value(r)).unwrap();
        }
    }
    let x = randn(&[2, 3, 6, 5], 1.0, 7);
    for train in [true, false] {
        check(&format!("ConvBnAct + Dsc, train {train}"), std::slice::from_ref(&x), |v| {
            dsc.forward(&cba.forward(&v[0], train)?, train)
        });
    }
}

/// `y_i = sum_j k(q_i, k_j) v_j / sum_j k(q_i, k_j)` by loops.
fn naive_attention(
    q: &[Vec<f64>],
    k: &[Vec<f64>],
    v: &[Vec<f64>],
    kern: &dyn Fn(&[f64], &[f64]) -> f64,
) -> Vec<Vec<f64>> {
    q.iter()
        .map(|qi| {
            let w: Vec<f64> = k.iter().map(|kj| kern(qi, kj)).collect();
            let z: f64 = w.iter().sum();
            (0..v[0].len()).map(|d| w.iter().zip(v).map(|(w, vj)| w * vj[d]).sum::<f64>() / z).collect()
        })
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn attention_block_equals_naive_attention() {
    let (n, c, h, w, heads) = (2, 8, 3, 5, 2);
    let dh = c / heads;
    let x = randn(&[n, c, h, w], 1.0, 11);
    let xs = x.to_vec::<f64>().unwrap();
    type KernelFn = Box<dyn Fn(&[f64], &[f64]) -> f64>;
    let s = 1.0 / (dh as f64).sqrt();
    let cases: Vec<(Mixer2d, KernelFn)> = vec![
        (
            Mixer2d::Ela(ElaKernel::HadamardExp),
            Box::new(move |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (s * x).exp() * (s * y).exp()).sum()),
        ),
        (
            Mixer2d::Ela(ElaKernel::SumSqEuclid),
            Box::new(move |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (s * x + s * y).powi(2)).sum()),
        ),
        (Mixer2d::Softmax, Box::new(move |a: &[f64], b: &[f64]| (s * dot(a, b)).exp())),
    ];
    for (mixer, kern) in cases {
        let store = ParamStore::new(&Cpu, DType::F64, 12);
        let block = Attention2d::new(&store, c, heads, mixer).unwrap();
        let got = no_grad(|| block.forward(&Var::constant(x.clone()), false)).unwrap().value().to_vec::<f64>().unwrap();
        let p = |name: &str| store.get(name).unwrap().value().to_vec::<f64>().unwrap();
        let (wqkv, bqkv, wo, bo) = (p("qkv.weight"), p("qkv.bias"), p("proj.weight"), p("proj.bias"));
        let at = |img: usize, ch: usize, cell: usize| xs[(img * c + ch) * h * w + cell];
        for img in 0..n {
            // 1x1 projections: per cell, row o of W times the channel vector, plus b_o.
            let proj =
                |o: usize, cell: usize| bqkv[o] + (0..c).map(|ch| wqkv[o * c + ch] * at(img, ch, cell)).sum::<f64>();
            let mut y = vec![vec![0.0; c]; h * w];
            for hd in 0..heads {
                let part = |blk: usize| -> Vec<Vec<f64>> {
                    (0..h * w).map(|cell| (0..dh).map(|d| proj(blk * c + hd * dh + d, cell)).collect()).collect()
                };
                let ya = naive_attention(&part(0), &part(1), &part(2), &kern);
                for (cell, row) in ya.iter().enumerate() {
                    y[cell][hd * dh..(hd + 1) * dh].copy_from_slice(row);
                }
            }
            for cell in 0..h * w {
                for o in 0..c {
                    // BN in eval mode at init: running mean 0, var 1, gain 1, shift 0.
                    let pre = at(img, o, cell) + bo[o] + dot(&wo[o * c..(o + 1) * c], &y[cell]);
                    let want = pre / (1.0 + 1e-3f64).sqrt();
                    let g = got[(img * c + o) * h * w + cell];
                    assert!(
                        (g - want).abs() < 1e-10 * (1.0 + want.abs()),
                        "{mixer:?}: image {img} channel {o} cell {cell}: {g} vs {want}"
                    );
                }
            }
        }
    }
}
