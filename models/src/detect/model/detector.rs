//! [`Detector`]: one type for every architecture, what training and inference code holds.

use ela_autograd::Var;
use ela_core::{Backend, Error, Result};
use ela_nn::module::ParamStore;

use super::config::{Arch, DetectorConfig};
use super::yolo_lat::YoloLat;
use super::yolov8::YoloV8n;

enum Net<B: Backend> {
    Lat(Box<YoloLat<B>>),
    V8(Box<YoloV8n<B>>),
}

/// A detector: `[n, 3, H, W]` images (RGB scaled to `[0, 1]`; `H`, `W` multiples of 32) to one
/// output map `[n, 5 + nc, H/s, W/s]` per stride `s` (layout in [`super::output`]).
pub struct Detector<B: Backend> {
    cfg: DetectorConfig,
    net: Net<B>,
    fused: bool,
}

impl<B: Backend> Detector<B> {
    /// Build the network described by `cfg` with its parameters registered in `store`
    /// (`backbone.*`, `neck.*`, `head.*`).
    pub fn new(store: &ParamStore<B>, cfg: DetectorConfig) -> Result<Self> {
        cfg.validate()?;
        let net = match cfg.arch {
            Arch::YoloLat { neck } => Net::Lat(Box::new(YoloLat::new(store, neck, cfg.num_classes)?)),
            Arch::YoloV8n => Net::V8(Box::new(YoloV8n::new(store, cfg.num_classes)?)),
        };
        Ok(Detector { cfg, net, fused: false })
    }

    /// The outputs, finest scale first, each `[n, 5 + nc, H/s, W/s]`. `train` selects batch
    /// statistics (and updates the running ones) in every batch norm; `false` for evaluation.
    pub fn forward(&self, x: &Var<B>, train: bool) -> Result<Vec<Var<B>>> {
        let d = x.dims();
        if d.len() != 4 || d[1] != 3 || !d[2].is_multiple_of(32) || !d[3].is_multiple_of(32) || d[2] == 0 || d[3] == 0 {
            return Err(Error::invalid(
                "Detector::forward",
                format!("expected images [n, 3, H, W] with H and W positive multiples of 32, got {d:?}"),
            ));
        }
        if train && self.fused {
            return Err(Error::invalid("Detector::forward", "a detector fused for inference cannot train"));
        }
        match &self.net {
            Net::Lat(m) => Ok(vec![m.forward(x, train)?]),
            Net::V8(m) => m.forward(x, train),
        }
    }

    /// Output strides, finest first (`[16]` or `[8, 16, 32]`).
    pub fn strides(&self) -> &[usize] {
        self.cfg.strides()
    }

    /// The configuration.
    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    /// A copy for deployment with every convolution's batch norm folded into its weights and
    /// bias (see [`super::layers`]): the same outputs as `forward(x, false)` up to rounding, with
    /// fewer kernels. Its weights are constants outside the store; it refuses `train = true`.
    pub fn fuse_for_inference(&self) -> Result<Self> {
        let net = match &self.net {
            Net::Lat(m) => Net::Lat(Box::new(m.fuse_for_inference()?)),
            Net::V8(m) => Net::V8(Box::new(m.fuse_for_inference()?)),
        };
        Ok(Detector { cfg: self.cfg, net, fused: true })
    }
}
