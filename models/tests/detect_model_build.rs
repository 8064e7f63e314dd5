//! The detector as built: parameter counts (analytic = registered, and the published figures),
//! output shapes of every architecture and neck, batch-norm folding, box decoding and the
//! assignment of objects to cells.

use ela_autograd::{no_grad, Var};
use ela_core::{Cpu, DType, ElaKernel, Rng, Tensor};
use ela_models::detect::model::output::{boxes_from_logits, decode_box, prediction_bias, CLS};
use ela_models::detect::model::{
    assign, component_report, decode, total_flops, total_params, yolov8n_reference_params, Arch, Detector,
    DetectorConfig, LossConfig, Neck,
};
use ela_models::detect::{BBox, Object};
use ela_nn::module::ParamStore;

fn all_archs() -> Vec<Arch> {
    let mut v: Vec<Arch> = [
        Neck::default(),
        Neck::Ela(ElaKernel::SumSqEuclid),
        Neck::Ela(ElaKernel::Blueprint),
        Neck::Softmax,
        Neck::Conv,
        Neck::None,
    ]
    .into_iter()
    .map(|neck| Arch::YoloLat { neck })
    .collect();
    v.push(Arch::YoloV8n);
    v
}

fn images(n: usize, size: usize, seed: u64) -> Var<Cpu> {
    let mut rng = Rng::new(seed);
    Var::constant(Tensor::rand_uniform(0.0, 1.0, [n, 3, size, size], DType::F32, &mut rng, &Cpu).unwrap())
}

#[test]
fn analytic_param_counts_match_the_built_models() {
    for arch in all_archs() {
        for nc in [1, 3, 80] {
            let cfg = DetectorConfig::new(arch, nc, 64);
            let store = ParamStore::new(&Cpu, DType::F32, 0);
            Detector::new(&store, cfg).unwrap();
            let report = component_report(&cfg).unwrap();
            for c in &report {
                assert_eq!(c.params, store.num_params_under(&c.name), "{arch:?} nc {nc}: component {}", c.name);
            }
            assert_eq!(total_params(&cfg).unwrap(), store.num_params(), "{arch:?} nc {nc}");
        }
    }
}

#[test]
fn published_parameter_counts() {
    // YOLO-LAT at one class: the paper's "about 213k" (see yolo_lat.rs for the breakdown).
    let lat = DetectorConfig::new(Arch::default(), 1, 320);
    let r = component_report(&lat).unwrap();
    assert_eq!(r.iter().map(|c| c.params).collect::<Vec<_>>(), vec![30_944, 33_536, 148_486]);
    assert_eq!(total_params(&lat).unwrap(), 212_966);
    // Ultralytics' YOLOv8n summary: 3,157,200 parameters at 80 classes.
    assert_eq!(yolov8n_reference_params(80), 3_157_200);
    // Ours replaces the 3 DFL box outputs (64 channels each) with 5 and drops the DFL's 16.
    let ours = total_params(&DetectorConfig::new(Arch::YoloV8n, 80, 640)).unwrap();
    assert_eq!(yolov8n_reference_params(80) - ours, 3 * (64 - 5) * 65 + 16);
    // Huge configurations are counted without allocating anything.
    assert!(total_flops(&DetectorConfig::new(Arch::default(), 1000, 32 * 4096)).unwrap() > 1e12);
}

/// Prints params and GFLOPs at 320 for every configuration (`--nocapture` to see).
#[test]
fn report_table() {
    println!("| arch | neck | nc | params | GFLOPs@320 | GFLOPs@640 |");
    for arch in all_archs() {
        for nc in [1, 80] {
            let at = |s| total_flops(&DetectorConfig::new(arch, nc, s)).unwrap() / 1e9;
            let neck = match arch {
                Arch::YoloLat { neck } => neck.to_string(),
                Arch::YoloV8n => "-".into(),
            };
            let p = total_params(&DetectorConfig::new(arch, nc, 320)).unwrap();
            println!("| {arch} | {neck} | {nc} | {p} | {:.4} | {:.4} |", at(320), at(640));
        }
    }
    println!(
        "ultralytics YOLOv8n (DFL head): {} at nc 80, {} at nc 1",
        yolov8n_reference_params(80),
        yolov8n_reference_params(1)
    );
}

#[test]
fn output_shapes_for_every_arch_and_size() {
    for arch in all_archs() {
        let cfg = DetectorConfig::new(arch, 3, 64);
        let store = ParamStore::new(&Cpu, DType::F32, 1);
        let det = Detector::new(&store, cfg).unwrap();
        for (size, train) in [(64, true), (96, false)] {
            let out = det.forward(&images(2, size, 0), train).unwrap();
            assert_eq!(out.len(), det.strides().len());
            for (o, &s) in out.iter().zip(det.strides()) {
                assert_eq!(o.dims(), vec![2, CLS + 3, size / s, size / s], "{arch:?} at {size}");
                assert!(o.value().to_vec::<f32>().unwrap().iter().all(|v| v.is_finite()));
            }
        }
        assert!(det.forward(&images(1, 48, 0), false).is_err(), "48 is not a multiple of 32");
    }
}

#[test]
fn fused_equals_unfused_in_eval_mode() {
    for arch in [Arch::default(), Arch::YoloLat { neck: Neck::Conv }, Arch::YoloV8n] {
        let store = ParamStore::new(&Cpu, DType::F32, 2);
        let det = Detector::new(&store, DetectorConfig::new(arch, 2, 64)).unwrap();
        // A few training passes move the running statistics away from (0, 1).
        for s in 0..3 {
            det.forward(&images(2, 64, s), true).unwrap();
        }
        let fused = det.fuse_for_inference().unwrap();
        let x = images(2, 64, 9);
        let (a, b) = no_grad(|| (det.forward(&x, false).unwrap(), fused.forward(&x, false).unwrap()));
        for (a, b) in a.iter().zip(&b) {
            let (a, b) = (a.value().to_vec::<f32>().unwrap(), b.value().to_vec::<f32>().unwrap());
            let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(err <= 1e-4 * scale, "{arch:?}: fused differs by {err} (scale {scale})");
        }
        assert!(fused.forward(&x, true).is_err(), "a fused model refuses to train");
    }
}

#[test]
fn host_and_graph_box_decoding_agree() {
    let t = [0.3, -1.2, 0.7, -2.5, -0.4, 2.0, 0.0, 1.1];
    let tv = Var::constant(Tensor::from_vec(t.to_vec(), [2, 4], &Cpu).unwrap());
    let cells = Tensor::from_vec(vec![3.0, 1.0, 0.0, 5.0], [2, 2], &Cpu).unwrap();
    let got = boxes_from_logits(&tv, &cells, 16).unwrap().value().to_vec::<f64>().unwrap();
    let want: Vec<f64> =
        [decode_box([0.3, -1.2, 0.7, -2.5], 3, 1, 16), decode_box([-0.4, 2.0, 0.0, 1.1], 0, 5, 16)].concat();
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-9, "{got:?} vs {want:?}");
    }
    // t = 0: a 4-stride box centred in its cell.
    assert_eq!(decode_box([0.0; 4], 2, 1, 16), [8.0, -8.0, 72.0, 56.0]);
}

#[test]
fn decode_hand_made_output() {
    // One image, nc = 2, a 2x3 map at stride 16 (input 48x32, decode does not care).
    let (c, h, w) = (CLS + 2, 2, 3);
    let mut v = vec![0f32; c * h * w];
    let mut set = |ch: usize, cell: usize, x: f32| v[ch * h * w + cell] = x;
    for cell in 0..h * w {
        set(0, cell, -10.0); // background everywhere ...
    }
    // ... but cell (i=1, j=1): objectness logit 3, class 1 logit 2, a centred 64-px box.
    set(0, 4, 3.0);
    set(CLS, 4, -1.0);
    set(CLS + 1, 4, 2.0);
    // Cell (i=2, j=0): confident objectness, weak class: score below the threshold.
    set(0, 2, 5.0);
    set(CLS, 2, -5.0);
    set(CLS + 1, 2, -6.0);
    let out = Tensor::from_vec(v, [1, c, h, w], &Cpu).unwrap();
    let dets = decode(&[out], &[16], 0.5).unwrap();
    assert_eq!(dets.len(), 1);
    assert_eq!(dets[0].len(), 1, "{:?}", dets[0]);
    let d = dets[0][0];
    let s = |x: f32| 1.0 / (1.0 + (-x).exp());
    assert_eq!(d.class, 1);
    assert!((d.score - s(3.0) * s(2.0)).abs() < 1e-6);
    // Centre (1.5, 1.5) cells = (24, 24) px, size 64, clipped to the 48x32 input.
    assert_eq!(d.bbox, BBox::new(0.0, 0.0, 48.0, 32.0));
    assert!(decode(&[Tensor::zeros([1, c, h, w], DType::F32, &Cpu).unwrap()], &[16], 0.9).unwrap()[0].is_empty());
}

#[test]
fn prediction_bias_priors() {
    let b = prediction_bias(3);
    assert!((1.0 / (1.0 + (-b[0]).exp()) - 0.01).abs() < 1e-12);
    assert_eq!(&b[1..CLS], &[0.0; 4]);
    assert!((1.0 / (1.0 + (-b[CLS]).exp()) - 0.25).abs() < 1e-12);
}

#[test]
fn assignment_rules() {
    let cfg = LossConfig::default();
    // A 40x40 object centred at (37, 22) on a 4x4 grid of stride 16: centre cell (2, 1); the
    // centre is in the left half of its cell (37/16 = 2.31) and the upper (22/16 = 1.375),
    // so the neighbours are (1, 1) and (2, 0).
    let o = Object::new(1, BBox::from_cxcywh(37.0, 22.0, 40.0, 40.0));
    let a = assign(&[(4, 4)], &[16], &[vec![o]], &cfg);
    let cells: Vec<(usize, usize)> = a.positives.iter().map(|p| (p.i, p.j)).collect();
    assert_eq!(cells, vec![(2, 0), (1, 1), (2, 1)]);
    assert!(a.positives.iter().all(|p| p.class == 1 && p.bbox == o.bbox));
    let one = assign(&[(4, 4)], &[16], &[vec![o]], &LossConfig { neighbours: false, ..cfg });
    assert_eq!(one.positives.len(), 1);

    // Multi-scale: 30 px -> stride 8 (<= 64), 100 px -> 16 (<= 128), 300 px -> 32.
    let objs = vec![
        Object::new(0, BBox::from_cxcywh(100.0, 100.0, 30.0, 20.0)),
        Object::new(0, BBox::from_cxcywh(100.0, 100.0, 100.0, 60.0)),
        Object::new(0, BBox::from_cxcywh(150.0, 150.0, 300.0, 200.0)),
    ];
    let a = assign(&[(32, 32), (16, 16), (8, 8)], &[8, 16, 32], &[objs], &LossConfig { neighbours: false, ..cfg });
    let scales: Vec<usize> = a.positives.iter().map(|p| p.scale).collect();
    assert_eq!(scales, vec![0, 1, 2]);

    // Conflicts: the smaller object keeps a shared cell. Crowds: not targets, and their cells
    // are ignored.
    let big = Object::new(0, BBox::from_cxcywh(24.0, 24.0, 40.0, 40.0));
    let small = Object::new(1, BBox::from_cxcywh(25.0, 25.0, 10.0, 10.0));
    let crowd = Object { class: 0, bbox: BBox::new(32.0, 32.0, 64.0, 64.0), crowd: true };
    let a = assign(&[(4, 4)], &[16], &[vec![big, small, crowd]], &LossConfig { neighbours: false, ..cfg });
    assert_eq!(a.positives.len(), 1);
    assert_eq!(a.positives[0].class, 1);
    let ignored: Vec<usize> = (0..16).filter(|&c| a.ignored[0][c]).collect();
    assert_eq!(ignored, vec![10, 11, 14, 15]);
}
