//! `ela generate`: sample from a trained checkpoint.

use std::path::PathBuf;

use ela_core::{Backend, DType, Error, Result, Rng};
use ela_nn::checkpoint;
use ela_nn::module::ParamStore;

use crate::budget::Estimate;
use crate::data::ByteTokenizer;
use crate::lm::generate::check_positions;
use crate::lm::size::{add_decoding, param_count};
use crate::lm::{generate, ElaLm, LmConfig, ReplayDevice, SampleConfig};

/// Options of `ela generate`.
#[derive(clap::Args, Debug, Clone)]
pub struct GenerateArgs {
    /// A run folder (holding checkpoint.safetensors) or a checkpoint file.
    #[arg(long, default_value = "runs/ela-small")]
    pub checkpoint: PathBuf,
    /// Text to continue.
    #[arg(long, default_value = "the ")]
    pub prompt: String,
    /// Bytes to generate.
    #[arg(long, default_value_t = 200)]
    pub tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Keep the k most likely bytes (0 = all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Nucleus probability mass.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f64,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Device: `cpu` or `cuda`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Load the model saved in a checkpoint (file or run folder).
pub fn load_model<B: Backend>(path: &std::path::Path, device: &B) -> Result<ElaLm<B>> {
    load_model_for(path, device, 1)
}

/// [`load_model`] for a decode through `positions` positions: the stored configuration is
/// validated and the model's memory (with the key/value cache of softmax attention over that
/// many positions) checked against what is available before anything is built.
pub fn load_model_for<B: Backend>(path: &std::path::Path, device: &B, positions: usize) -> Result<ElaLm<B>> {
    let file = if path.is_dir() { path.join("checkpoint.safetensors") } else { path.to_path_buf() };
    let ck = checkpoint::load_verified(&file, device)?;
    let cfg = LmConfig::from_pairs(|k| ck.metadata.get(k).cloned()).map_err(|e| Error::Io {
        path: file.display().to_string(),
        msg: format!("not an ELA-rs LM checkpoint: {e}"),
    })?;
    let mut e = Estimate::new();
    add_decoding(&mut e, &cfg, param_count(&cfg)?, positions);
    e.check_on("generate", device)?;
    let store = ParamStore::new(device, DType::F32, 0);
    let model = ElaLm::new(&store, cfg)?;
    store.load_state_dict(&checkpoint::take_prefix(&ck.tensors, "model"), true)?;
    Ok(model)
}

fn go<B: ReplayDevice>(args: &GenerateArgs, device: &B) -> Result<String> {
    let cfg = SampleConfig { temperature: args.temperature, top_k: args.top_k, top_p: args.top_p };
    cfg.validate()?;
    let prompt = ByteTokenizer.encode(&args.prompt);
    if prompt.is_empty() {
        return Err(Error::invalid("generate", "--prompt must not be empty"));
    }
    let positions = prompt.len().checked_add(args.tokens).ok_or_else(|| {
        Error::invalid("generate", format!("--tokens {} is more than any model can generate", args.tokens))
    })?;
    let model = load_model_for(&args.checkpoint, device, positions)?;
    // Before any work: past the rotary embedding's length the decode would fail part way.
    check_positions(model.config(), prompt.len(), args.tokens)?;
    let out = generate(&model, &prompt, args.tokens, &cfg, &mut Rng::new(args.seed))?;
    Ok(format!("{}{}", args.prompt, ByteTokenizer.decode(&out)))
}

/// Run `ela generate`.
pub fn run(args: &GenerateArgs) -> Result<()> {
    let text = crate::on_device!(&args.device, |dev| go(args, dev))?;
    crate::outln!("{text}");
    Ok(())
}
