//! `ela info`: parameter counts per component.

use ela_core::{Cpu, DType, Result};
use ela_nn::module::ParamStore;

use crate::lm::ElaLm;
use crate::train::{run::describe, ModelArgs};

/// Options of `ela info`.
#[derive(clap::Args, Debug, Clone)]
pub struct InfoArgs {
    /// Model switches (as for `ela train`).
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Print the model's parameter counts by component.
pub fn run(args: &InfoArgs) -> Result<()> {
    let cfg = args.model.to_config()?;
    let store = ParamStore::new(&Cpu, DType::F32, 0);
    let model = ElaLm::new(&store, cfg.clone())?;
    println!("{}", describe(model.config()));
    println!("{:<28} {:>12}", "component", "parameters");
    // Group layer parameters by component (attn, moe/ffn, lobe, norms) across layers.
    let mut by_kind = std::collections::BTreeMap::<String, usize>::new();
    for (name, v) in store.named_params() {
        let n = v.value().elem_count();
        let parts: Vec<&str> = name.split('.').collect();
        let key = if parts[0] == "layers" && parts.len() > 2 {
            format!("layers.*.{}", parts[2])
        } else {
            parts[0].to_string()
        };
        *by_kind.entry(key).or_default() += n;
    }
    for (k, n) in &by_kind {
        println!("{k:<28} {n:>12}");
    }
    println!("{:<28} {:>12}", "total", store.num_params());
    Ok(())
}
