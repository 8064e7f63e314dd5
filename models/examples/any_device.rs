//! The device picked at run time: the training loop of `train_step.rs`, written once as a generic
//! function and run on the CPU or a GPU as the command line says.
//!
//! Run: `cargo run --release --example any_device -- cpu` (or `cuda`, `cuda:1`). Without a GPU,
//! `cuda` ends in a one-line "device unavailable" error.

use ela_models::data::ByteTokenizer;
use ela_models::device::Device;
use ela_models::ela_core::{Backend, CpuStorage, DType, Result, Tensor};
use ela_models::ela_nn::module::ParamStore;
use ela_models::ela_nn::optim::{AdamW, AdamWConfig, Optimizer};
use ela_models::lm::{ElaLm, LmConfig};
use ela_models::with_device;

/// Thirty AdamW steps of a tiny ELA language model on `dev`; returns the last cross-entropy.
fn train<B: Backend>(dev: &B) -> Result<f64> {
    let cfg = LmConfig { dim: 32, layers: 2, heads: 2, ffn_hidden: 64, ..LmConfig::small() };
    let store = ParamStore::new(dev, DType::F32, 0);
    let model = ElaLm::new(&store, cfg)?;
    let mut opt = AdamW::new(store.named_params(), AdamWConfig { lr: 3e-3, ..AdamWConfig::default() })?;
    let bytes = ByteTokenizer.encode(&"the cat sat on the mat. ".repeat(6));
    let n = bytes.len() - 1;
    let tensor = |ids: &[u32]| Tensor::<B>::from_cpu_storage(&CpuStorage::U32(ids.to_vec()), [1, n], dev);
    let (inputs, targets) = (tensor(&bytes[..n])?, tensor(&bytes[1..])?);
    let mut last = f64::NAN;
    for step in 0..=30 {
        let (loss, cross_entropy, _) = model.loss(&inputs, &targets)?;
        opt.step(&loss.backward()?)?;
        last = cross_entropy.to_scalar()?;
        if step % 10 == 0 {
            println!("step {step:>2}: cross-entropy {last:.3} nats/byte");
        }
    }
    Ok(last)
}

fn main() {
    let arg = std::env::args().nth(1).unwrap_or_else(|| "cpu".into());
    let run = || -> Result<f64> {
        let device: Device = arg.parse()?;
        println!("training on {device}");
        with_device!(device, |dev| train(dev))
    };
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
