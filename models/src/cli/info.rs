//! `ela info`: parameter counts per component (and, for detectors, GFLOPs at the input size).

use ela_core::{Error, Result};

use crate::detect::model::component_report;
use crate::detect::train::DetectorArgs;
use crate::lm::size::{param_count, param_report};
use crate::train::{run::describe, ModelArgs};

/// Options of `ela info`.
#[derive(clap::Args, Debug, Clone)]
pub struct InfoArgs {
    /// Which model: `lm` (the ELA language model), `yolo-lat` or `yolov8n` (detectors).
    #[arg(long, default_value = "lm")]
    pub model: String,
    /// Language-model switches (as for `ela train`; `--kernel` also picks the YOLO-LAT neck's
    /// ELA kernel).
    #[command(flatten)]
    pub lm: ModelArgs,
    /// YOLO-LAT neck: ela, softmax, conv or none.
    #[arg(long, default_value = "ela")]
    pub neck: String,
    /// Detector input size (square, a multiple of 32).
    #[arg(long, default_value_t = 320)]
    pub img: usize,
    /// Detector classes.
    #[arg(long, default_value_t = 1)]
    pub classes: usize,
}

/// Print the model's parameter counts by component.
pub fn run(args: &InfoArgs) -> Result<()> {
    match args.model.as_str() {
        "lm" => lm_info(&args.lm),
        "yolo-lat" | "yolov8n" => detector_info(args),
        s => Err(Error::invalid("info", format!("--model must be lm, yolo-lat or yolov8n, got {s:?}"))),
    }
}

fn detector_info(args: &InfoArgs) -> Result<()> {
    let det = DetectorArgs { arch: args.model.clone(), neck: args.neck.clone(), kernel: args.lm.kernel, img: args.img };
    let cfg = det.to_config(args.classes)?;
    // Counted analytically: nothing is allocated, so any size answers at once.
    let report = component_report(&cfg)?;
    crate::outln!("{cfg}");
    crate::outln!("{:<28} {:>12} {:>10}", "component", "parameters", "GFLOPs");
    for c in &report {
        crate::outln!("{:<28} {:>12} {:>10.4}", c.name, c.params, c.flops / 1e9);
    }
    let params: usize = report.iter().map(|c| c.params).sum();
    let flops: f64 = report.iter().map(|c| c.flops).sum();
    crate::outln!("{:<28} {:>12} {:>10.4}", "total", params, flops / 1e9);
    crate::outln!("(GFLOPs count a multiply-add as 2 floating-point operations, batch 1)");
    Ok(())
}

fn lm_info(lm: &ModelArgs) -> Result<()> {
    let cfg = lm.to_config()?;
    // Counted from the configuration (lm/size.rs), not by building the model: any size answers
    // at once, and an impossible one is an overflow error instead of an allocation.
    let report = param_report(&cfg)?;
    crate::outln!("{}", describe(&cfg));
    crate::outln!("{:<28} {:>12}", "component", "parameters");
    for (k, n) in &report {
        crate::outln!("{k:<28} {n:>12}");
    }
    crate::outln!("{:<28} {:>12}", "total", param_count(&cfg)?);
    Ok(())
}
