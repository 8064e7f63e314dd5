//! The detectors' training step (forward in train mode, loss, backward, running statistics) gives
//! the same numbers on every backend as on the CPU. The CUDA instances skip without a GPU.

use ela_autograd::Var;
use ela_core::{Backend, Cpu, DType, ElaKernel, Result, Rng, Tensor};
use ela_models::detect::model::{
    detection_loss, Arch, Attention2d, ConvBnAct, Detector, DetectorConfig, Dsc, LossConfig, Mixer2d, Neck,
};
use ela_models::detect::{BBox, Object};
use ela_nn::module::ParamStore;
use ela_tests::device::{download, upload};
use ela_tests::device_tests;

/// `max |a - b| / max(max |b|, floor)`.
///
/// The floor matters for tensors that are zero up to rounding: the gradient of a bias that a
/// batch norm follows (the norm removes any per-channel constant, so the exact gradient is 0),
/// or the running mean of a norm fed by a zero-initialised shift. Their CPU and CUDA values are
/// both rounding noise (~1e-9), so they are compared against a floor set by the largest tensor of
/// their kind instead of against themselves.
fn rel_err(a: &Tensor<Cpu>, b: &Tensor<Cpu>, floor: f64) -> f64 {
    let (a, b) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
    let scale = b.iter().fold(floor, |m, v| m.max(v.abs()));
    let err = a.iter().zip(&b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
    if scale == 0.0 {
        err
    } else {
        err / scale
    }
}

/// `1e-4 x` the largest magnitude among `tensors`.
fn floor_of<'a>(tensors: impl Iterator<Item = &'a Tensor<Cpu>>) -> f64 {
    1e-4 * tensors.map(|t| t.to_vec_f64().unwrap().iter().fold(0f64, |m, v| m.max(v.abs()))).fold(0.0, f64::max)
}

struct Step {
    outputs: Vec<Tensor<Cpu>>,
    loss: f64,
    /// Gradients and the batch-norm buffers after the step, by name.
    tensors: Vec<(String, Tensor<Cpu>)>,
}

fn step<B: Backend>(
    dev: &B,
    cfg: DetectorConfig,
    init: &ParamStore<Cpu>,
    x: &Tensor<Cpu>,
    targets: &[Vec<Object>],
) -> Result<Step> {
    let store = ParamStore::new(dev, DType::F32, 0);
    let det = Detector::new(&store, cfg)?;
    let sd = init.state_dict().into_iter().map(|(k, t)| Ok((k, t.to_device(dev)?))).collect::<Result<_>>()?;
    store.load_state_dict(&sd, true)?;
    let outs = det.forward(&Var::constant(upload(x, dev)), true)?;
    let (loss, _) = detection_loss(&outs, det.strides(), targets, &LossConfig::default())?;
    let grads = loss.backward()?;
    let mut tensors = Vec::new();
    for (name, p) in store.named_params() {
        let g = grads.get(&p).unwrap_or_else(|| panic!("no gradient for {name}"));
        tensors.push((format!("grad {name}"), download(g)));
    }
    for (name, b) in store.named_buffers() {
        tensors.push((name, download(&b.value())));
    }
    Ok(Step { outputs: outs.iter().map(|o| download(&o.value())).collect(), loss: loss.value().to_scalar()?, tensors })
}

fn agree<B: Backend>(dev: &B, arch: Arch) -> Result<()> {
    let cfg = DetectorConfig::new(arch, 3, 64);
    let init = ParamStore::new(&Cpu, DType::F32, 7);
    Detector::new(&init, cfg)?;
    let x = Tensor::rand_uniform(0.0, 1.0, [2, 3, 64, 64], DType::F32, &mut Rng::new(3), &Cpu)?;
    let targets = vec![
        vec![Object::new(0, BBox::new(4.0, 6.0, 30.0, 40.0)), Object::new(2, BBox::new(33.0, 20.0, 60.0, 62.0))],
        vec![Object::new(1, BBox::new(10.0, 12.0, 22.0, 20.0))],
    ];
    let want = step(&Cpu, cfg, &init, &x, &targets)?;
    let got = step(dev, cfg, &init, &x, &targets)?;
    // Collect every mismatch before failing, so that one run shows the whole picture.
    let mut bad = Vec::new();
    for (k, (g, w)) in got.outputs.iter().zip(&want.outputs).enumerate() {
        let e = rel_err(g, w, 0.0);
        if e >= 1e-4 {
            bad.push(format!("output {k}: {e:.2e}"));
        }
    }
    if (got.loss - want.loss).abs() >= 1e-4 * want.loss.abs() {
        bad.push(format!("loss {} vs {}", got.loss, want.loss));
    }
    let grad_floor = floor_of(want.tensors.iter().filter(|t| t.0.starts_with("grad ")).map(|t| &t.1));
    let buffer_floor = floor_of(want.tensors.iter().filter(|t| !t.0.starts_with("grad ")).map(|t| &t.1));
    for ((name, g), (_, w)) in got.tensors.iter().zip(&want.tensors) {
        let e = rel_err(g, w, if name.starts_with("grad ") { grad_floor } else { buffer_floor });
        if e >= 1e-3 || e.is_nan() {
            bad.push(format!("{name}: {e:.2e}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{arch:?} differs from the CPU (relative to each tensor's largest element): {}",
        bad.join("; ")
    );
    Ok(())
}

/// A block's training-mode forward.
type BlockFn<B> = Box<dyn Fn(&Var<B>) -> Result<Var<B>>>;

/// One block alone (train mode): output, input gradient and parameter gradients, on `dev`.
fn block_step<B: Backend>(
    dev: &B,
    which: &str,
    x: &Tensor<Cpu>,
    r: &Tensor<Cpu>,
) -> Result<Vec<(String, Tensor<Cpu>)>> {
    let store = ParamStore::new(dev, DType::F32, 0);
    let c = x.dims()[1];
    let f: BlockFn<B> = match which {
        "dsc" => {
            let b = Dsc::new(&store, c, 2 * c, 2)?;
            Box::new(move |x| b.forward(x, true))
        }
        "depthwise" => {
            let b = ConvBnAct::new(&store, c, c, 3, 1, c)?;
            Box::new(move |x| b.forward(x, true))
        }
        _ => {
            let b = Attention2d::new(&store, c, 2, Mixer2d::Ela(ElaKernel::HadamardExp))?;
            Box::new(move |x| b.forward(x, true))
        }
    };
    let xv = Var::param(upload(x, dev));
    let y = f(&xv)?;
    let g = y.mul(&Var::constant(upload(r, dev)))?.sum_all()?.backward()?;
    let mut out =
        vec![("y".to_string(), download(&y.value())), ("grad x".to_string(), download(g.get(&xv).expect("dx")))];
    for (name, p) in store.named_params() {
        out.push((format!("grad {name}"), download(g.get(&p).expect("grad"))));
    }
    Ok(out)
}

device_tests! {
    /// The blocks YOLO-LAT is made of, one at a time (to localise a model-level mismatch).
    fn blocks_step<B: Backend>(dev: &B) -> Result<()> {
        let mut rng = Rng::new(1);
        let x = Tensor::randn(0.0, 1.0, [2, 8, 8, 8], DType::F32, &mut rng, &Cpu)?;
        let mut bad = Vec::new();
        for which in ["depthwise", "dsc", "attention"] {
            let y_dims = if which == "dsc" { [2, 16, 4, 4] } else { [2, 8, 8, 8] };
            let r = Tensor::randn(0.0, 1.0, y_dims, DType::F32, &mut rng, &Cpu)?;
            let want = block_step(&Cpu, which, &x, &r)?;
            let floor = floor_of(want.iter().filter(|t| t.0.starts_with("grad ")).map(|t| &t.1));
            for ((name, g), (_, w)) in block_step(dev, which, &x, &r)?.iter().zip(&want) {
                let grad = name.starts_with("grad ");
                let e = rel_err(g, w, if grad { floor } else { 0.0 });
                if e >= if grad { 1e-3 } else { 1e-4 } || e.is_nan() {
                    bad.push(format!("{which} {name}: {e:.2e}"));
                }
            }
        }
        assert!(bad.is_empty(), "blocks differ from the CPU: {}", bad.join("; "));
        Ok(())
    }


    /// YOLO-LAT with the default ELA neck.
    fn yolo_lat_ela_step<B: Backend>(dev: &B) -> Result<()> {
        agree(dev, Arch::YoloLat { neck: Neck::Ela(ElaKernel::HadamardExp) })
    }

    /// YOLO-LAT with the softmax neck.
    fn yolo_lat_softmax_step<B: Backend>(dev: &B) -> Result<()> {
        agree(dev, Arch::YoloLat { neck: Neck::Softmax })
    }

    /// YOLO-LAT with the conv and no neck.
    fn yolo_lat_conv_none_steps<B: Backend>(dev: &B) -> Result<()> {
        agree(dev, Arch::YoloLat { neck: Neck::Conv })?;
        agree(dev, Arch::YoloLat { neck: Neck::None })
    }

    /// The YOLOv8n baseline (three scales, C2f, SPPF max-pools, upsampling).
    fn yolov8n_step<B: Backend>(dev: &B) -> Result<()> {
        agree(dev, Arch::YoloV8n)
    }
}
