//! `ela train`.

use ela_core::{Backend, Result};

use crate::dist::DistEnv;
use crate::train::{train, TrainArgs};

/// Run `ela train` and print its report.
pub fn run(args: &TrainArgs) -> Result<()> {
    let (report, peak) = match DistEnv::from_env()? {
        // One rank of a data-parallel job: rank 0 reports for all.
        Some(env) => match crate::dist::train_from_env(args, &env)? {
            Some(report) => (report, None),
            None => return Ok(()),
        },
        None => crate::on_device!(&args.device, |dev| train(args, dev).map(|r| (r, dev.peak_memory())))?,
    };
    if let Some(first) = report.first_loss {
        crate::outln!("train loss: {first:.4} -> {:.4} nats/byte over {} steps", report.last_loss, report.steps_run);
    }
    crate::outln!(
        "validation loss: {:.4} nats/byte ({:.3} bits/byte); unigram baseline: {:.4} nats/byte",
        report.val_loss,
        report.val_loss / std::f64::consts::LN_2,
        report.unigram_loss
    );
    crate::outln!("{} parameters, {:.1} s, {:.0} tokens/s", report.params, report.seconds, report.tokens_per_sec);
    if let Some(bytes) = peak {
        // Live tensors at their peak (the allocator's cache not counted), as PyTorch's
        // max_memory_allocated reports it.
        crate::outln!("peak device memory: {}", ela_core::error::human_bytes(bytes));
    }
    crate::outln!("sample: {:?}", report.sample);
    crate::outln!(
        "checkpoint: {}\nloss plot: {}\nmetrics: {}",
        report.checkpoint.display(),
        report.plot.display(),
        report.metrics.display()
    );
    Ok(())
}
