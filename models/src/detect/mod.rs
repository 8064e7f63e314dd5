//! YOLO-LAT: a small single-scale object detector whose neck runs non-causal Exact Linear
//! Attention over the feature map's pixels, with a YOLOv8n-architecture conv baseline, data
//! loading (an embedded procedurally generated set, COCO JSON and YOLO txt), training,
//! inference and COCO-style evaluation. See docs/yolo_lat.md.
//!
//! | module | holds |
//! |---|---|
//! | [`boxes`] | `BBox`, `Object` (ground truth), `Detection`: the vocabulary every part shares |
//! | [`data`] | images and labels: the synthetic set, COCO and YOLO readers, letterbox, augmentation, batches, drawing |
//! | [`model`] | the layers, YOLO-LAT and its neck variants, the YOLOv8n baseline, the loss, box decoding, size and FLOPs |
//! | [`eval`] | NMS, COCO AP/AR exactly as pycocotools computes them, precision/recall/F1, COCO results JSON |
//! | [`infer`] | eval-mode forward, decoding, NMS and the way back to the original image's pixels |
//! | [`train`] | `ela detect train`: options and the training loop |
//! | [`saved`] | a trained detector read back from its run folder |

pub mod boxes;
pub mod data;
pub mod eval;
pub mod infer;
pub mod model;
pub mod saved;
pub mod train;

pub use boxes::{BBox, Detection, Object};
