//! A training loop in a few lines: a tiny ELA language model learns to continue a repeated
//! sentence. Shows the model, the loss, the backward pass and the AdamW update.
//!
//! Run: `cargo run --release --example train_step`

use ela_core::{Cpu, CpuStorage, DType, Result, Tensor};
use ela_models::data::ByteTokenizer;
use ela_models::lm::{ElaLm, LmConfig};
use ela_nn::module::ParamStore;
use ela_nn::optim::{AdamW, AdamWConfig, Optimizer};

fn main() -> Result<()> {
    // On a worker of the CPU thread pool each op runs in place (docs/usage.md, "A training step").
    ela_core::cpu::threads::on_worker(train)
}

fn train() -> Result<()> {
    // A small model: the default switches (residual links, causal Memory Lobe, MoE) at toy size.
    let cfg = LmConfig { dim: 32, layers: 2, heads: 2, ffn_hidden: 64, ..LmConfig::small() };
    let store = ParamStore::new(&Cpu, DType::F32, 0);
    let model = ElaLm::new(&store, cfg)?;
    let mut opt = AdamW::new(store.named_params(), AdamWConfig { lr: 3e-3, ..AdamWConfig::default() })?;

    // Next-byte prediction on one sequence: inputs are bytes 0..n-1, targets bytes 1..n.
    let bytes = ByteTokenizer.encode(&"the cat sat on the mat. ".repeat(6));
    let n = bytes.len() - 1;
    let tensor = |ids: &[u32]| Tensor::<Cpu>::from_cpu_storage(&CpuStorage::U32(ids.to_vec()), [1, n], &Cpu);
    let (inputs, targets) = (tensor(&bytes[..n])?, tensor(&bytes[1..])?);

    for step in 0..=30 {
        let (loss, cross_entropy, _) = model.loss(&inputs, &targets)?;
        let grads = loss.backward()?;
        opt.step(&grads)?;
        if step % 10 == 0 {
            println!("step {step:>2}: cross-entropy {:.3} nats/byte", cross_entropy.to_scalar()?);
        }
    }
    Ok(())
}
