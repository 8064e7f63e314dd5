//! Training sanity: a few dozen AdamW steps on two synthetic images (coloured rectangles drawn
//! here) drive the detection loss down and the detector then finds the rectangles. Plus, ignored
//! by default, the CPU step timings the training defaults are sized with:
//! `cargo test --release -p ela-models --test detect_model_train cpu_step_times -- --ignored --nocapture`
//! (`loss_choices`, also ignored, compares the loss options on held-out synthetic images).

use std::time::Instant;

use ela_autograd::{no_grad, Var};
use ela_core::{Cpu, DType, Rng, Tensor};
use ela_models::detect::model::{decode, detection_loss, Arch, Detector, DetectorConfig, LossConfig, Neck};
use ela_models::detect::{BBox, Object};
use ela_nn::module::ParamStore;
use ela_nn::optim::{AdamW, AdamWConfig, Optimizer};

/// `n` images `size x size` of grey noise with 1-3 rectangles each: class 0 red, class 1 blue.
fn synthetic(n: usize, size: usize, seed: u64) -> (Tensor<Cpu>, Vec<Vec<Object>>) {
    let mut rng = Rng::new(seed);
    let mut px = vec![0f32; n * 3 * size * size];
    for v in px.iter_mut() {
        *v = 0.4 + 0.2 * rng.uniform() as f32;
    }
    let mut targets = Vec::new();
    for img in 0..n {
        let mut objs = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let class = rng.below(2) as usize;
            let (w, h) = (16 + rng.below(size as u64 / 3) as usize, 16 + rng.below(size as u64 / 3) as usize);
            let (x0, y0) = (rng.below((size - w) as u64) as usize, rng.below((size - h) as u64) as usize);
            let colour = if class == 0 { [0.9, 0.1, 0.1] } else { [0.1, 0.2, 0.9] };
            for (c, &v) in colour.iter().enumerate() {
                for y in y0..y0 + h {
                    for x in x0..x0 + w {
                        px[((img * 3 + c) * size + y) * size + x] = v;
                    }
                }
            }
            objs.push(Object::new(class, BBox::new(x0 as f32, y0 as f32, (x0 + w) as f32, (y0 + h) as f32)));
        }
        targets.push(objs);
    }
    (Tensor::from_vec(px, [n, 3, size, size], &Cpu).unwrap(), targets)
}

#[test]
fn a_few_steps_overfit_two_images() {
    let t0 = Instant::now();
    let (x, targets) = synthetic(2, 128, 1);
    let store = ParamStore::new(&Cpu, DType::F32, 0);
    let det = Detector::new(&store, DetectorConfig::new(Arch::default(), 2, 128)).unwrap();
    let mut opt =
        AdamW::new(store.named_params(), AdamWConfig { lr: 3e-3, weight_decay: 0.0, ..Default::default() }).unwrap();
    let x = Var::constant(x);
    let mut losses = Vec::new();
    for _ in 0..60 {
        let outs = det.forward(&x, true).unwrap();
        let (loss, parts) = detection_loss(&outs, det.strides(), &targets, &LossConfig::default()).unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
        losses.push((loss.value().to_scalar().unwrap(), parts));
    }
    let (first, last) = (losses[0].0, losses[losses.len() - 1].0);
    println!(
        "loss {first:.3} -> {last:.3} in {:.1} s; last parts {:?}",
        t0.elapsed().as_secs_f64(),
        losses.last().unwrap().1
    );
    assert!(last < 0.25 * first, "loss went from {first} to {last}");
    // The detector now finds each rectangle (best detection IoU > 0.5, right class). Batch
    // statistics: 60 steps at batch-norm momentum 0.03 leave the running averages unconverged.
    let outs: Vec<Tensor<Cpu>> = no_grad(|| det.forward(&x, true)).unwrap().iter().map(|o| o.value()).collect();
    let dets = decode(&outs, det.strides(), 0.3).unwrap();
    for (objs, dets) in targets.iter().zip(&dets) {
        for o in objs {
            let best = dets.iter().filter(|d| d.class == o.class).map(|d| d.bbox.iou(&o.bbox)).fold(0.0, f64::max);
            assert!(best > 0.5, "object {o:?}: best IoU {best:.2} among {dets:?}");
        }
    }
}

/// Median seconds of `f` over `reps` runs after one warm-up.
fn median_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}

#[test]
#[ignore = "timing, run by hand"]
fn cpu_step_times() {
    let batch = 8;
    for neck in [Neck::default(), Neck::Softmax, Neck::Conv, Neck::None] {
        for size in [256, 320] {
            let store = ParamStore::new(&Cpu, DType::F32, 0);
            let det = Detector::new(&store, DetectorConfig::new(Arch::YoloLat { neck }, 1, size)).unwrap();
            let (x, mut targets) = synthetic(batch, size, 2);
            // One class, as the default training run.
            targets.iter_mut().flatten().for_each(|o| o.class = 0);
            let x = Var::constant(x);
            let fwd = median_secs(5, || {
                no_grad(|| det.forward(&x, false)).unwrap();
            });
            let step = median_secs(5, || {
                let outs = det.forward(&x, true).unwrap();
                let (loss, _) = detection_loss(&outs, det.strides(), &targets, &LossConfig::default()).unwrap();
                loss.backward().unwrap();
            });
            println!(
                "yolo-lat {neck} {size}x{size} batch {batch}: forward {:.1} ms/image, forward+loss+backward {:.1} ms/image \
                 ({:.0} ms/batch)",
                1e3 * fwd / batch as f64,
                1e3 * step / batch as f64,
                1e3 * step
            );
        }
    }
}

/// COCO AP and AP50 on `val` after `steps` AdamW steps of batch 8 on `train` with `loss_cfg`.
fn train_and_eval(
    loss_cfg: &LossConfig,
    steps: usize,
    train: &(Tensor<Cpu>, Vec<Vec<Object>>),
    val: &(Tensor<Cpu>, Vec<Vec<Object>>),
) -> (f64, f64) {
    use ela_models::detect::eval::{coco_evaluate, nms, EvalImage};
    let store = ParamStore::new(&Cpu, DType::F32, 0);
    let det = Detector::new(&store, DetectorConfig::new(Arch::default(), 2, 128)).unwrap();
    let mut opt =
        AdamW::new(store.named_params(), AdamWConfig { lr: 3e-3, weight_decay: 0.0, ..Default::default() }).unwrap();
    let n = train.1.len();
    for s in 0..steps {
        let start = (s * 8) % n;
        let x = Var::constant(train.0.narrow(0usize, start, 8).unwrap());
        let outs = det.forward(&x, true).unwrap();
        let (loss, _) = detection_loss(&outs, det.strides(), &train.1[start..start + 8], loss_cfg).unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
    }
    let outs: Vec<Tensor<Cpu>> =
        no_grad(|| det.forward(&Var::constant(val.0.clone()), false)).unwrap().iter().map(|o| o.value()).collect();
    let dets = decode(&outs, det.strides(), 0.01).unwrap();
    let images: Vec<EvalImage> = dets
        .iter()
        .zip(&val.1)
        .enumerate()
        .map(|(i, (d, gt))| EvalImage::new(i as u64, gt.clone(), nms(d, 0.6, true, 100)))
        .collect();
    let stats = coco_evaluate(&images, 2).unwrap().stats();
    (stats[0], stats[1])
}

/// The loss's choices (neighbour cells, focal gamma, box gain) compared on held-out synthetic
/// images; what the defaults in `LossConfig` were picked by.
#[test]
#[ignore = "slow (minutes), run by hand"]
fn loss_choices() {
    let base = LossConfig::default();
    for seed in [10, 20] {
        let train = synthetic(48, 128, seed);
        let val = synthetic(32, 128, seed + 1);
        for (name, cfg) in [
            ("default", base),
            ("no neighbours", LossConfig { neighbours: false, ..base }),
            ("focal gamma 1.5", LossConfig { focal_gamma: 1.5, ..base }),
            ("box gain 2", LossConfig { box_gain: 2.0, ..base }),
            ("box gain 7.5", LossConfig { box_gain: 7.5, ..base }),
        ] {
            let t = Instant::now();
            let (ap, ap50) = train_and_eval(&cfg, 150, &train, &val);
            println!("seed {seed} {name}: AP {ap:.3} AP50 {ap50:.3} ({:.0} s)", t.elapsed().as_secs_f64());
        }
    }
}
