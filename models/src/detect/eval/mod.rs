//! Evaluation of detections: NMS, COCO AP/AR exactly as pycocotools computes them, precision /
//! recall / F1 at an operating point, and COCO results files.
//!
//! | module | holds |
//! |---|---|
//! | [`nms`](mod@nms) | greedy non-maximum suppression, class-aware or agnostic |
//! | [`params`] | IoU and recall thresholds, area ranges, detection caps (numpy's exact values) |
//! | [`matching`] | per image and class: IoU (crowd-aware) and pycocotools' greedy matching |
//! | [`accumulate`] | per class: precision/recall curves and their 101-point sampling |
//! | [`coco`] | [`coco_evaluate`] and its input, [`EvalImage`] |
//! | [`metrics`] | its output: [`CocoMetrics`], [`ClassMetrics`], and how the means are formed |
//! | `summary` | [`CocoMetrics::summary_table`]: pycocotools' twelve lines and a per-class table |
//! | [`prf1`] | [`precision_recall_f1`]: one threshold, one IoU; *not* AP |
//! | [`coco_json`] | results files (write, read) and a minimal ground-truth reader |
//!
//! # COCO AP in one paragraph
//!
//! For one class and one IoU threshold, rank all detections of the class over the whole
//! dataset by score. Walking down the ranking, each detection is a true positive if it matches
//! a not-yet-matched ground-truth object of its image with IoU at or above the threshold, else a
//! false positive; after `i` detections, precision is `tp / i` and recall `tp / n_gt`. AP is the
//! area under that precision/recall curve, computed after making precision non-increasing and
//! sampling it at recall 0, 0.01, ..., 1. COCO's "AP" averages this over ten IoU thresholds
//! 0.50:0.05:0.95 and over classes; AP50 and AP75 use one threshold; the small/medium/large
//! variants count only objects (and unmatched detections) of that size; ARn is the recall
//! reached with at most `n` detections per image and class, averaged over thresholds and
//! classes. The details that decide the last digits (stable sorts, tie rules, crowd regions,
//! the 1e-10 and `eps` constants) are documented where they are implemented.
//!
//! # Example
//!
//! ```
//! use ela_models::detect::eval::{coco_evaluate, nms, EvalImage};
//! use ela_models::detect::{BBox, Detection, Object};
//! let gt = vec![Object::new(0, BBox::new(10.0, 10.0, 50.0, 50.0))];
//! let raw = vec![
//!     Detection { class: 0, bbox: BBox::new(10.0, 10.0, 50.0, 50.0), score: 0.9 },
//!     Detection { class: 0, bbox: BBox::new(11.0, 10.0, 51.0, 50.0), score: 0.8 }, // duplicate
//! ];
//! let dets = nms(&raw, 0.5, true, 100);
//! assert_eq!(dets.len(), 1);
//! let m = coco_evaluate(&[EvalImage::new(1, gt, dets)], 1)?;
//! assert!((m.ap - 1.0).abs() < 1e-9);
//! # Ok::<(), ela_core::Error>(())
//! ```

pub mod accumulate;
pub mod coco;
pub mod coco_json;
pub mod matching;
pub mod metrics;
pub mod nms;
pub mod params;
pub mod prf1;
mod summary;

pub use coco::{coco_evaluate, EvalImage};
pub use coco_json::{
    parse_coco_ground_truth, parse_coco_results, read_coco_ground_truth, read_coco_results, write_coco_results,
    CocoGroundTruth,
};
pub use metrics::{ClassMetrics, CocoMetrics, STAT_NAMES};
pub use nms::nms;
pub use prf1::{precision_recall_f1, Prf1};
