//! Size and cost of a configuration, counted from the architecture alone: no weights are
//! allocated, so any input size or class count can be reported (tests check the parameter counts
//! against [`ela_nn::module::ParamStore::num_params`] of built models).
//!
//! # FLOPs convention
//! `flops = 2 x multiply-accumulates` for one image at `input_size x input_size`, counting
//! convolutions (`weights x output cells`) and attention's products (ELA: `2 heads t F (d_h + 1)`
//! MACs for `S`, `z`, numerators and denominators; softmax: `2 heads t^2 d_h`). Biases, batch
//! norms, activations, exponentials, pooling, upsampling and residual sums are not counted: the
//! convention of ultralytics' (thop-based) GFLOPs, so YOLOv8n's figures are comparable.

use ela_core::Result;

use super::config::{Arch, DetectorConfig};
use super::layers::Cost;
use super::yolo_lat::yolo_lat_cost;
use super::yolov8::{yolov8n_cost, OUR_BOX_OUTPUTS};

/// Parameters and FLOPs of one component.
#[derive(Clone, Debug, PartialEq)]
pub struct ComponentStat {
    /// `backbone`, `neck` or `head` (the prefixes of the parameter names).
    pub name: String,
    /// Trainable scalars.
    pub params: usize,
    /// `2 x` multiply-adds for one `input_size x input_size` image (see the module docs); a
    /// float so that sums and GFLOPs need no casts (exact below 2^53).
    pub flops: f64,
}

/// Parameters and FLOPs of the backbone, the neck and the head of `cfg` at `cfg.input_size`.
pub fn component_report(cfg: &DetectorConfig) -> Result<Vec<ComponentStat>> {
    cfg.validate()?;
    let parts = match cfg.arch {
        Arch::YoloLat { neck } => yolo_lat_cost(neck, cfg.num_classes, cfg.input_size),
        Arch::YoloV8n => yolov8n_cost(cfg.num_classes, cfg.input_size, OUR_BOX_OUTPUTS),
    };
    Ok(["backbone", "neck", "head"]
        .iter()
        .zip(parts)
        .map(|(n, c): (&&str, Cost)| ComponentStat {
            name: n.to_string(),
            params: c.params,
            flops: 2.0 * c.macs as f64,
        })
        .collect())
}

/// Total parameters of `cfg` (the sum of [`component_report`]).
pub fn total_params(cfg: &DetectorConfig) -> Result<usize> {
    Ok(component_report(cfg)?.iter().map(|c| c.params).sum())
}

/// Total FLOPs of `cfg` for one image at `cfg.input_size`.
pub fn total_flops(cfg: &DetectorConfig) -> Result<f64> {
    Ok(component_report(cfg)?.iter().map(|c| c.flops).sum())
}

/// Add what running `cfg` on batches of `batch` images needs to `e`: f32 parameters (with
/// gradients and AdamW's moments when `training`), the input batch, and a lower bound of the
/// activations: the first feature maps (16 channels at half resolution, the first of several
/// such maps), kept for the backward when training.
pub fn add_memory(e: &mut crate::budget::Estimate, cfg: &DetectorConfig, batch: usize, training: bool) -> Result<()> {
    let params = total_params(cfg)? as u64;
    e.add(
        if training { "parameters, gradients and AdamW state" } else { "parameters" },
        params,
        if training { 16 } else { 4 },
    );
    let pixels = (batch as u64).saturating_mul((cfg.input_size as u64).saturating_pow(2));
    e.add("input images", pixels, 3 * 4);
    e.add("activations", pixels.saturating_mul(4), if training { 3 * 4 } else { 4 });
    Ok(())
}
