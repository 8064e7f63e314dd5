//! `ela bench detect`: size, cost and inference latency of YOLO-LAT (each neck) and the YOLOv8n
//! baseline, over batch size, input size and dtype, on the CPU or a GPU.
//!
//! Latency is wall-clock time of one eval-mode forward pass, batch norms folded into the
//! convolutions as for deployment, from an input already on the device to its outputs finished
//! on the device (the GPU is synchronised before the clock stops), the median of `--reps` runs
//! after warm-up; on a GPU also the same forward captured once and replayed as a CUDA graph.
//! Weights are random (latency does not depend on them).
//! The PyTorch peer of the same architecture is benches/peers/yolo_lat_torch.py.

use ela_autograd::{no_grad, Var};
use ela_core::{Backend, Cpu, DType, Error, Result, Rng, Tensor};
use ela_nn::module::ParamStore;

use super::{fmt_ms, machine, median_ms, parse_list, today_utc};
use crate::detect::model::{component_report, Arch, Detector, DetectorConfig, Neck};

/// Options of `ela bench detect`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchDetectArgs {
    /// Models: comma-separated from yolo-lat (ELA neck), yolo-lat-softmax, yolo-lat-conv,
    /// yolo-lat-none, yolov8n.
    #[arg(long, default_value = "yolo-lat,yolo-lat-softmax,yolo-lat-conv,yolo-lat-none,yolov8n")]
    pub models: String,
    /// Input sizes (square, multiples of 32).
    #[arg(long, default_value = "320,640")]
    pub sizes: String,
    /// Batch sizes.
    #[arg(long, default_value = "1,32")]
    pub batches: String,
    /// Dtypes of weights and activations: f32, bf16 (bf16 needs a GPU to be worth measuring).
    #[arg(long, default_value = "f32")]
    pub dtypes: String,
    /// Number of classes of the head.
    #[arg(long, default_value_t = 80)]
    pub classes: usize,
    /// Timed repetitions per configuration (median reported).
    #[arg(long, default_value_t = 20)]
    pub reps: usize,
    /// Device: `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

fn model_config(name: &str, classes: usize, size: usize) -> Result<DetectorConfig> {
    let arch = match name {
        "yolo-lat" => Arch::YoloLat { neck: Neck::Ela("hadamard-exp".parse()?) },
        "yolo-lat-softmax" => Arch::YoloLat { neck: Neck::Softmax },
        "yolo-lat-conv" => Arch::YoloLat { neck: Neck::Conv },
        "yolo-lat-none" => Arch::YoloLat { neck: Neck::None },
        "yolov8n" => Arch::YoloV8n,
        s => return Err(Error::invalid("ela bench detect", format!("--models: unknown model {s:?}"))),
    };
    let cfg = DetectorConfig { arch, num_classes: classes, input_size: size };
    cfg.validate()?;
    Ok(cfg)
}

fn parse_dtype(s: &str) -> Result<DType> {
    match s.trim() {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        s => Err(Error::invalid("ela bench detect", format!("--dtypes: unknown dtype {s:?} (f32, bf16, f16)"))),
    }
}

/// What the benchmark needs from a device beyond the `Backend` trait.
pub trait BenchDevice: Backend {
    /// Block until queued work is done, so a wall-clock time covers it.
    fn finish(&self) -> Result<()>;
    /// Median ms of replaying `forward` captured as a CUDA graph (`None` where the device has
    /// no graphs). `forward` has run eagerly before, so the capture allocates nothing new.
    fn graph_ms(&self, reps: usize, forward: &dyn Fn() -> Result<()>) -> Result<Option<f64>>;
}

impl BenchDevice for Cpu {
    fn finish(&self) -> Result<()> {
        Ok(())
    }
    fn graph_ms(&self, _reps: usize, _forward: &dyn Fn() -> Result<()>) -> Result<Option<f64>> {
        Ok(None)
    }
}

impl BenchDevice for ela_cuda::Cuda {
    fn finish(&self) -> Result<()> {
        self.synchronize()
    }
    fn graph_ms(&self, reps: usize, forward: &dyn Fn() -> Result<()>) -> Result<Option<f64>> {
        let (graph, ()) = self.capture(forward)?;
        let ms = median_ms(reps, || {
            graph.replay()?;
            self.synchronize()
        })?;
        Ok(Some(ms))
    }
}

/// Median latencies (ms) of one eval-mode forward pass of `cfg` at `batch` images in `dtype`,
/// batch norms folded into the convolutions as for deployment: run eagerly, and replayed as a
/// CUDA graph where the device has them.
fn latency<B: BenchDevice>(
    cfg: &DetectorConfig,
    batch: usize,
    dtype: DType,
    reps: usize,
    dev: &B,
) -> Result<(f64, Option<f64>)> {
    let store = ParamStore::new(dev, dtype, 0);
    let model = Detector::new(&store, *cfg)?.fuse_for_inference()?;
    let s = cfg.input_size;
    let x = Var::constant(Tensor::rand_uniform(0.0, 1.0, [batch, 3, s, s], dtype, &mut Rng::new(1), dev)?);
    no_grad(|| {
        let forward = || model.forward(&x, false).map(|_| ());
        // A second warm-up: the first pass compiles kernels and fills the allocator's cache.
        forward()?;
        let eager = median_ms(reps, || {
            forward()?;
            dev.finish()
        })?;
        // A forward that cannot be captured (an op that waits for the host) still has its
        // eager figure; the reason is printed.
        let graph = match dev.graph_ms(reps, &forward) {
            Ok(g) => g,
            Err(e) => {
                crate::errln!("warning: {cfg}, batch {batch}, {dtype:?}: no CUDA graph: {e}");
                None
            }
        };
        Ok((eager, graph))
    })
}

/// Run `ela bench detect`.
pub fn run(args: &BenchDetectArgs) -> Result<()> {
    crate::on_device!(&args.device, |dev| bench(args, dev))
}

fn bench<B: BenchDevice>(args: &BenchDetectArgs, dev: &B) -> Result<()> {
    let models: Vec<&str> = args.models.split(',').map(str::trim).collect();
    let sizes = parse_list("--sizes", &args.sizes)?;
    let batches = parse_list("--batches", &args.batches)?;
    let dtypes = args.dtypes.split(',').map(parse_dtype).collect::<Result<Vec<_>>>()?;
    crate::outln!("# ela bench detect ({}, {})", dev.device_name(), today_utc());
    crate::outln!("machine: {}; {} classes; median of {} runs", machine(), args.classes, args.reps);
    crate::outln!();
    crate::outln!("| model | input | params | GFLOPs | dtype | batch | latency (ms) | CUDA graph (ms) | images/s |");
    crate::outln!("|---|---|---|---|---|---|---|---|---|");
    let mut failed = 0;
    for name in &models {
        for &size in &sizes {
            let cfg = model_config(name, args.classes, size)?;
            let report = component_report(&cfg)?;
            let params: usize = report.iter().map(|c| c.params).sum();
            let gflops = report.iter().map(|c| c.flops).sum::<f64>() / 1e9;
            for &dtype in &dtypes {
                for &batch in &batches {
                    // One configuration failing (say, out of memory) still leaves the others' rows.
                    match latency(&cfg, batch, dtype, args.reps, dev) {
                        Ok((ms, graph)) => {
                            let best = graph.map_or(ms, |g| g.min(ms));
                            crate::outln!(
                                "| {name} | {size} | {params} | {gflops:.3} | {dtype:?} | {batch} | {} | {} | {:.0} |",
                                fmt_ms(Some(ms)),
                                fmt_ms(graph),
                                batch as f64 / best * 1e3
                            );
                        }
                        Err(e) => {
                            failed += 1;
                            crate::outln!(
                                "| {name} | {size} | {params} | {gflops:.3} | {dtype:?} | {batch} | failed: {e} | | |"
                            );
                        }
                    }
                }
            }
        }
    }
    if failed > 0 {
        return Err(Error::invalid("ela bench detect", format!("{failed} configurations failed (see the table)")));
    }
    Ok(())
}
