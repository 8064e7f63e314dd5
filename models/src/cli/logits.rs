//! `ela logits`: run a trained LM over a text and save its next-byte logits, so another framework
//! (benches/peers/lm_checkpoint_torch.py for PyTorch) can load the same checkpoint and check that
//! it computes the same function.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ela_autograd::no_grad;
use ela_core::{Backend, CpuStorage, DType, Error, Result, Tensor};
use ela_nn::checkpoint;

use crate::data::ByteTokenizer;

use super::generate::load_model_for;

/// Options of `ela logits`.
#[derive(clap::Args, Debug, Clone)]
pub struct LogitsArgs {
    /// A run folder (holding checkpoint.safetensors) or a checkpoint file.
    #[arg(long, default_value = "runs/ela-small")]
    pub checkpoint: PathBuf,
    /// The text whose bytes are the input (one sequence, batch 1).
    #[arg(long)]
    pub text: String,
    /// Where to write `ids` (u32 `[1, T]`) and `logits` (f32 `[1, T, vocab]`), as safetensors.
    #[arg(long)]
    pub out: PathBuf,
    /// Device: `cpu` or `cuda`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

fn go<B: Backend>(args: &LogitsArgs, device: &B) -> Result<(usize, usize)> {
    let ids = ByteTokenizer.encode(&args.text);
    if ids.is_empty() {
        return Err(Error::invalid("logits", "--text must not be empty"));
    }
    let t = ids.len();
    let model = load_model_for(&args.checkpoint, device, t)?;
    if let Some(max) = model.config().rope_max_len {
        if t > max {
            return Err(Error::invalid(
                "logits",
                format!("--text is {t} bytes but the model's rotary embedding covers {max} positions; shorten it"),
            ));
        }
    }
    let ids_t = Tensor::from_cpu_storage(&CpuStorage::U32(ids), [1, t], device)?;
    let logits = no_grad(|| Ok(model.forward(&ids_t)?.logits.value()))?;
    let vocab = model.config().vocab;
    let mut out = BTreeMap::new();
    out.insert("ids".to_string(), ids_t.to_device(&ela_core::Cpu)?);
    out.insert("logits".to_string(), logits.to_dtype(DType::F32)?.to_device(&ela_core::Cpu)?);
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "ela-rs logits v1".to_string());
    meta.insert("checkpoint".to_string(), args.checkpoint.display().to_string());
    checkpoint::save(&args.out, &out, &meta)?;
    Ok((t, vocab))
}

/// Run `ela logits`.
pub fn run(args: &LogitsArgs) -> Result<()> {
    let (t, vocab) = crate::on_device!(&args.device, |dev| go(args, dev))?;
    crate::outln!("logits [1, {t}, {vocab}] written to {}", args.out.display());
    Ok(())
}
