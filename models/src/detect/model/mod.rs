//! The detectors, their loss and their cost.
//!
//! | file | holds |
//! |---|---|
//! | [`config`] | [`DetectorConfig`], [`Arch`], [`Neck`]: CLI names and checkpoint metadata |
//! | [`layers`] | [`ConvBnAct`], [`Dsc`] (depthwise-separable), batch-norm folding, per-layer [`Cost`] |
//! | [`attention`] | [`Attention2d`]: ELA (or softmax) over a feature map's cells, the YOLO-LAT neck |
//! | [`yolo_lat`] | YOLO-LAT: the architecture and its parameter count against the paper's |
//! | [`yolov8`] | the YOLOv8n architecture, and the parameter count of ultralytics' DFL version |
//! | [`detector`] | [`Detector`]: either network behind one type |
//! | [`output`] | the per-cell output layout and the box parametrisation |
//! | [`functions`] | focal BCE, CIoU, softplus, atan: differentiable, composed of autograd ops |
//! | [`loss`] | assignment of objects to cells and [`detection_loss`] |
//! | [`mod@decode`] | outputs to scored boxes ([`decode()`]) |
//! | [`cost`] | [`component_report`]: parameters and FLOPs per component, without building |
//!
//! Quick use:
//!
//! ```no_run
//! use ela_autograd::Var;
//! use ela_core::{Cpu, DType, Tensor};
//! use ela_models::detect::model::{decode, detection_loss, Detector, DetectorConfig, LossConfig};
//! use ela_models::detect::{BBox, Object};
//! use ela_nn::module::ParamStore;
//! let store = ParamStore::new(&Cpu, DType::F32, 0);
//! let det = Detector::new(&store, DetectorConfig::default())?;
//! let x = Var::constant(Tensor::zeros([2, 3, 320, 320], DType::F32, &Cpu)?);
//! let out = det.forward(&x, true)?;
//! let targets = vec![vec![Object::new(0, BBox::new(10.0, 20.0, 90.0, 120.0))], vec![]];
//! let (loss, parts) = detection_loss(&out, det.strides(), &targets, &LossConfig::default())?;
//! let grads = loss.backward()?;
//! let outs: Vec<_> = det.forward(&x, false)?.iter().map(|v| v.value()).collect();
//! let dets = decode(&outs, det.strides(), 0.25)?;
//! # Ok::<(), ela_core::Error>(())
//! ```

pub mod attention;
pub mod config;
pub mod cost;
pub mod decode;
pub mod detector;
pub mod functions;
pub mod layers;
pub mod loss;
pub mod output;
pub mod yolo_lat;
pub mod yolov8;

pub use attention::{attention_cost, Attention2d, Mixer2d};
pub use config::{Arch, DetectorConfig, Neck};
pub use cost::{component_report, total_flops, total_params, ComponentStat};
pub use decode::decode;
pub use detector::Detector;
pub use functions::{atan_ratio, bce_with_logits, ciou, focal_bce, softplus};
pub use layers::{ConvBnAct, Cost, Dsc};
pub use loss::{assign, detection_loss, Assignment, LossConfig, LossParts, Positive};
pub use yolo_lat::{yolo_lat_cost, YoloLat};
pub use yolov8::{yolov8n_cost, yolov8n_reference_params, YoloV8n};
