//! Precision, recall and F1 at one score threshold: the operating point of a deployed detector.
//!
//! These are **not** average precision. AP ([`super::coco_evaluate`]) integrates precision over
//! every recall level the ranking reaches and needs no threshold; the numbers here describe the
//! single set of boxes a detector outputs once a confidence threshold is fixed. The paper this
//! project re-measures reports such an F1 score under the name "mAP"; keep the two apart.
//!
//! Matching, per image: detections with `score >= score_threshold`, best score first (ties in
//! input order), each take the not-yet-taken ground-truth object of the *same class* with the
//! highest IoU, provided that IoU is `>= iou_threshold` (equal IoUs: the earlier object). One
//! detection per object. A detection that finds no object but lies in a crowd region of its
//! class (intersection over its own area `>= iou_threshold`) is ignored, as COCO does; any other
//! is a false positive. Objects left untaken are false negatives (crowd regions never are).

use super::coco::EvalImage;
use super::matching::coco_iou;

/// Counts and rates at one operating point. See the module docs: this is not AP.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prf1 {
    /// `tp / (tp + fp)`; 0 when there is no detection.
    pub precision: f64,
    /// `tp / (tp + fn)`; 0 when there is no ground truth.
    pub recall: f64,
    /// Harmonic mean `2 p r / (p + r)`; 0 when both are 0.
    pub f1: f64,
    /// Detections matched to an object.
    pub tp: usize,
    /// Detections matched to nothing (and not in a crowd region).
    pub fp: usize,
    /// Objects no detection matched.
    pub fn_: usize,
}

/// Precision, recall and F1 over `images` for detections scoring at least `score_threshold`,
/// with a match needing IoU `>= iou_threshold` (0.5 is the usual choice) and the same class.
/// NaN scores never pass the threshold.
pub fn precision_recall_f1(images: &[EvalImage], score_threshold: f32, iou_threshold: f64) -> Prf1 {
    let (mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize);
    for im in images {
        let mut dets: Vec<_> = im.dets.iter().filter(|d| d.score >= score_threshold).collect();
        // Stable: equal scores keep input order. No NaN survives the filter.
        dets.sort_by(|a, b| b.score.partial_cmp(&a.score).unwrap_or(std::cmp::Ordering::Equal));
        let mut taken = vec![false; im.gt.len()];
        for d in dets {
            let mut best: Option<(usize, f64)> = None;
            for (g, o) in im.gt.iter().enumerate() {
                if o.crowd || taken[g] || o.class != d.class {
                    continue;
                }
                let iou = coco_iou(&d.bbox, &o.bbox, false);
                if iou >= iou_threshold && best.is_none_or(|(_, b)| iou > b) {
                    best = Some((g, iou));
                }
            }
            if let Some((g, _)) = best {
                taken[g] = true;
                tp += 1;
            } else if !im
                .gt
                .iter()
                .any(|o| o.crowd && o.class == d.class && coco_iou(&d.bbox, &o.bbox, true) >= iou_threshold)
            {
                fp += 1;
            }
        }
        fn_ += im.gt.iter().zip(&taken).filter(|(o, t)| !o.crowd && !**t).count();
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let precision = ratio(tp, tp + fp);
    let recall = ratio(tp, tp + fn_);
    let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
    Prf1 { precision, recall, f1, tp, fp, fn_ }
}
