//! From per-image matches to a precision/recall curve: pycocotools' `accumulate` for one class,
//! one area range and one detection cap.
//!
//! * The detections of every image (images in id order, each image's list cut to the cap) are
//!   concatenated and sorted by score with a stable sort, so equal scores keep image order and
//!   then in-image order, as numpy's mergesort does.
//! * Walking down that list, cumulative true and false positives give
//!   `recall = tp / n_gt` and `precision = tp / (tp + fp + eps)`, `eps = 2^-52` (numpy's
//!   `np.spacing(1)`, kept because it makes a precision of 1 come out as `1 - 2^-52`, and we
//!   reproduce pycocotools to the last bit where we can). Ignored detections count as neither.
//! * Precision is made non-increasing from the right (each point takes the best precision at
//!   any higher recall), then sampled at the 101 recall thresholds: threshold `r` reads the
//!   first point whose recall is `>= r` (numpy's `searchsorted(side='left')`); thresholds beyond
//!   the highest recall reached read 0.
//! * The recall of the curve is the recall after the last detection (0 with no detection).
//! * With no ground truth that counts, the curve is undefined (pycocotools' -1).

use super::matching::Status;
use super::params::{NUM_IOU_THRESHOLDS, NUM_RECALL_THRESHOLDS};

/// A sampled precision/recall curve at every IoU threshold.
#[derive(Clone, Debug)]
pub(crate) struct Curve {
    /// `precision[t][r]`: interpolated precision at IoU threshold `t`, recall threshold `r`.
    pub precision: Vec<[f64; NUM_RECALL_THRESHOLDS]>,
    /// `recall[t]`: recall reached at IoU threshold `t`.
    pub recall: [f64; NUM_IOU_THRESHOLDS],
}

/// One image's matched detections: scores best first, and the statuses (same order).
pub(crate) struct ImageDets<'a> {
    pub scores: &'a [f64],
    pub status: &'a [[Status; NUM_IOU_THRESHOLDS]],
}

/// The curve of `images` (in image-id order) with each image cut to `max_det` detections and
/// `counted_gt` ground-truth boxes; `None` when `counted_gt == 0` (no ground truth).
pub(crate) fn accumulate(
    images: &[ImageDets<'_>],
    counted_gt: usize,
    max_det: usize,
    recall_thresholds: &[f64; NUM_RECALL_THRESHOLDS],
) -> Option<Curve> {
    if counted_gt == 0 {
        return None;
    }
    let mut dets: Vec<(f64, &[Status; NUM_IOU_THRESHOLDS])> = Vec::new();
    for im in images {
        let n = im.scores.len().min(max_det);
        dets.extend(im.scores[..n].iter().copied().zip(&im.status[..n]));
    }
    // Stable, descending: ties stay in image order, then in-image order.
    dets.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal));

    let npig = counted_gt as f64;
    let nd = dets.len();
    let mut curve =
        Curve { precision: vec![[0.0; NUM_RECALL_THRESHOLDS]; NUM_IOU_THRESHOLDS], recall: [0.0; NUM_IOU_THRESHOLDS] };
    let mut rc = Vec::with_capacity(nd);
    let mut pr = Vec::with_capacity(nd);
    for t in 0..NUM_IOU_THRESHOLDS {
        rc.clear();
        pr.clear();
        let (mut tp, mut fp) = (0.0f64, 0.0f64);
        for (_, status) in &dets {
            match status[t] {
                Status::TruePositive => tp += 1.0,
                Status::FalsePositive => fp += 1.0,
                Status::Ignored => {}
            }
            rc.push(tp / npig);
            // Same association as numpy's `fp + tp + np.spacing(1)`.
            pr.push(tp / (fp + tp + f64::EPSILON));
        }
        curve.recall[t] = rc.last().copied().unwrap_or(0.0);
        for i in (1..nd).rev() {
            if pr[i] > pr[i - 1] {
                pr[i - 1] = pr[i];
            }
        }
        let row = &mut curve.precision[t];
        for (q, &r) in row.iter_mut().zip(recall_thresholds) {
            // First index with rc >= r; rc is non-decreasing, so this is searchsorted 'left'.
            let i = rc.partition_point(|&x| x < r);
            if i >= nd {
                // pycocotools stops at the first out-of-range index and leaves the rest at 0.
                break;
            }
            *q = pr[i];
        }
    }
    Some(curve)
}
