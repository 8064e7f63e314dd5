//! Greedy non-maximum suppression.
//!
//! A detector fires several overlapping boxes on one object; NMS keeps the best and drops the
//! rest. Greedy NMS walks the detections from the highest score down and keeps a box unless it
//! overlaps an already kept box by IoU `> iou_threshold` (strictly: at exactly the threshold
//! both survive, as in torchvision). Class-aware NMS only compares boxes of the same class, so a
//! person and the bicycle under them both survive; agnostic NMS compares every pair.
//!
//! Order and ties: detections are ranked by score with a stable sort, so equal scores keep
//! their input order, both when deciding who suppresses whom and in the output. The output is
//! in that rank order (best first), at most `max_det` long.
//!
//! Cost: one sort of all detections, then per class the kept boxes are compared with each
//! candidate, O(n k) for k kept boxes (k stays small after suppression), and each class stops
//! early once it holds `max_det` boxes since no more of its boxes could reach the output.

use crate::detect::Detection;
use std::cmp::Ordering;

/// Greedy NMS of `dets` (see the module docs). Detections with a NaN score cannot be ranked and
/// are dropped. A box of zero area has IoU 0 with everything, so it neither suppresses nor is
/// suppressed. A NaN `iou_threshold` suppresses nothing.
pub fn nms(dets: &[Detection], iou_threshold: f64, class_aware: bool, max_det: usize) -> Vec<Detection> {
    if max_det == 0 {
        return Vec::new();
    }
    // Rank once: descending score, stable.
    let mut ranked: Vec<usize> = (0..dets.len()).filter(|&i| !dets[i].score.is_nan()).collect();
    ranked.sort_by(|&a, &b| dets[b].score.partial_cmp(&dets[a].score).unwrap_or(Ordering::Equal));

    // Buckets: positions in `ranked`, grouped by class (each group stays in rank order because
    // the sort is stable), or one bucket for agnostic NMS.
    let mut by_rank: Vec<usize> = (0..ranked.len()).collect();
    if class_aware {
        by_rank.sort_by_key(|&r| dets[ranked[r]].class);
    }
    let mut kept_ranks: Vec<usize> = Vec::new();
    let mut start = 0;
    while start < by_rank.len() {
        let class = dets[ranked[by_rank[start]]].class;
        let end = if class_aware {
            start + by_rank[start..].iter().take_while(|&&r| dets[ranked[r]].class == class).count()
        } else {
            by_rank.len()
        };
        let first_kept = kept_ranks.len();
        for &r in &by_rank[start..end] {
            if kept_ranks.len() - first_kept == max_det {
                break;
            }
            let b = &dets[ranked[r]].bbox;
            // Only this bucket's kept boxes can suppress.
            let suppressed = kept_ranks[first_kept..].iter().any(|&k| dets[ranked[k]].bbox.iou(b) > iou_threshold);
            if !suppressed {
                kept_ranks.push(r);
            }
        }
        start = end;
    }
    kept_ranks.sort_unstable();
    kept_ranks.truncate(max_det);
    kept_ranks.into_iter().map(|r| dets[ranked[r]]).collect()
}
