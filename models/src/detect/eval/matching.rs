//! Matching one image's detections of one class to its ground truth, per IoU threshold and area
//! range: pycocotools' `computeIoU` + `evaluateImg` for boxes.
//!
//! The rules, in the order pycocotools applies them:
//!
//! 1. Detections are sorted by score, best first, with a *stable* sort (equal scores keep their
//!    input order, as numpy's `argsort(kind='mergesort')` does) and cut to the 100 best. The cut
//!    is per image *and class*.
//! 2. A ground-truth box is *ignored* for an area range when it is a crowd region or its area
//!    lies outside the range. Ground truth is reordered (stably) so that ignored boxes come last.
//! 3. For each IoU threshold `t`, each detection in score order looks for a partner among the
//!    ground truth in that order: it skips boxes already taken (unless crowd: a crowd region takes
//!    any number of detections), stops at the first ignored box once it holds a non-ignored
//!    partner (a real match beats an ignored one), and otherwise takes any box whose IoU is at
//!    least the best so far, starting from `min(t, 1 - 1e-10)`. Because the comparison is "not
//!    less than", among equal IoUs the *last* box in the order wins.
//! 4. A detection matched to an ignored box is ignored (neither true nor false positive). An
//!    unmatched detection whose own area is outside the range is ignored too: for "small" objects
//!    a large false positive does not count against the detector.

use super::params::{AreaRange, NUM_IOU_THRESHOLDS};
use crate::detect::BBox;

/// What a detection turned out to be at one IoU threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    /// Matched to a non-ignored ground-truth box.
    TruePositive,
    /// Matched to nothing, and inside the area range.
    FalsePositive,
    /// Matched to an ignored box (crowd or outside the area range), or unmatched and outside it.
    Ignored,
}

/// A ground-truth box as evaluation sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GtBox {
    pub bbox: BBox,
    /// The area compared against the area ranges (the box area unless the caller gave one).
    pub area: f64,
    pub crowd: bool,
}

/// Width and height in f64 (0 for an inverted box, as [`BBox::width`]).
fn extent(b: &BBox) -> (f64, f64) {
    ((b.x1 as f64 - b.x0 as f64).max(0.0), (b.y1 as f64 - b.y0 as f64).max(0.0))
}

/// Box area in f64, as pycocotools' `w * h`.
pub(crate) fn box_area(b: &BBox) -> f64 {
    let (w, h) = extent(b);
    w * h
}

/// IoU of a detection with a ground-truth box as pycocotools' `maskApi.c:bbIou` computes it, in
/// f64. Against a crowd region the denominator is the detection's own area (intersection over
/// detection area): a detection lying wholly inside a crowd scores 1 however big the crowd is.
pub(crate) fn coco_iou(det: &BBox, gt: &BBox, gt_crowd: bool) -> f64 {
    let w = (det.x1 as f64).min(gt.x1 as f64) - (det.x0 as f64).max(gt.x0 as f64);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (det.y1 as f64).min(gt.y1 as f64) - (det.y0 as f64).max(gt.y0 as f64);
    if h <= 0.0 {
        return 0.0;
    }
    let inter = w * h;
    let det_area = box_area(det);
    let union = if gt_crowd { det_area } else { det_area + box_area(gt) - inter };
    // A positive intersection implies positive areas, so the union is positive; the guard only
    // protects against a zero-area det (w, h > 0 here, so it cannot happen) in a future edit.
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// One image and one class, ready to be evaluated in every area range.
pub(crate) struct ImageClass {
    gts: Vec<GtBox>,
    /// Detection scores, best first, at most `max_det`.
    pub scores: Vec<f64>,
    /// Detection areas, same order.
    det_areas: Vec<f64>,
    /// `ious[d * gts.len() + g]`, detections in score order, ground truth in input order.
    ious: Vec<f64>,
}

impl ImageClass {
    /// Sort `dets` (box, score) by score (stable), keep the best `max_det` and compute the IoUs.
    pub fn new(gts: Vec<GtBox>, dets: &[(BBox, f64)], max_det: usize) -> Self {
        let mut order: Vec<usize> = (0..dets.len()).collect();
        // Descending score; `sort_by` is stable, so equal scores keep their input order exactly
        // as numpy's mergesort of the negated scores does. Scores are checked non-NaN upstream.
        order.sort_by(|&a, &b| dets[b].1.partial_cmp(&dets[a].1).unwrap_or(std::cmp::Ordering::Equal));
        order.truncate(max_det);
        let mut ious = Vec::with_capacity(order.len() * gts.len());
        for &d in &order {
            ious.extend(gts.iter().map(|g| coco_iou(&dets[d].0, &g.bbox, g.crowd)));
        }
        ImageClass {
            scores: order.iter().map(|&d| dets[d].1).collect(),
            det_areas: order.iter().map(|&d| box_area(&dets[d].0)).collect(),
            gts,
            ious,
        }
    }

    /// Match in one area range at every threshold. Returns each detection's status per
    /// threshold (score order) and the number of ground-truth boxes that count (not ignored).
    pub fn evaluate(&self, range: AreaRange, thresholds: &[f64; NUM_IOU_THRESHOLDS]) -> AreaEval {
        let ng = self.gts.len();
        let ignored_of = |g: &GtBox| g.crowd || range.excludes(g.area);
        // Ground truth with the ignored boxes last, each group in input order (stable).
        let mut order: Vec<usize> = (0..ng).collect();
        order.sort_by_key(|&g| ignored_of(&self.gts[g]));
        let ignored: Vec<bool> = order.iter().map(|&g| ignored_of(&self.gts[g])).collect();
        let crowd: Vec<bool> = order.iter().map(|&g| self.gts[g].crowd).collect();
        let counted = ignored.iter().filter(|&&i| !i).count();

        let nd = self.scores.len();
        let mut status = vec![[Status::FalsePositive; NUM_IOU_THRESHOLDS]; nd];
        let mut taken = vec![false; ng];
        for (t, &thr) in thresholds.iter().enumerate() {
            taken.fill(false);
            for (d, st) in status.iter_mut().enumerate() {
                let row = &self.ious[d * ng..(d + 1) * ng];
                // 1 - 1e-10 lets a perfect box match even if a threshold of 1 were asked for.
                let mut best = thr.min(1.0 - 1e-10);
                let mut partner: Option<usize> = None;
                for (k, &g) in order.iter().enumerate() {
                    if taken[k] && !crowd[k] {
                        continue;
                    }
                    if let Some(m) = partner {
                        if !ignored[m] && ignored[k] {
                            break;
                        }
                    }
                    if row[g] < best {
                        continue;
                    }
                    best = row[g];
                    partner = Some(k);
                }
                st[t] = match partner {
                    Some(m) => {
                        taken[m] = true;
                        if ignored[m] {
                            Status::Ignored
                        } else {
                            Status::TruePositive
                        }
                    }
                    None if range.excludes(self.det_areas[d]) => Status::Ignored,
                    None => Status::FalsePositive,
                };
            }
        }
        AreaEval { status, counted_gt: counted }
    }
}

/// The outcome of [`ImageClass::evaluate`].
pub(crate) struct AreaEval {
    /// Per detection (score order), its status at each IoU threshold.
    pub status: Vec<[Status; NUM_IOU_THRESHOLDS]>,
    /// Ground-truth boxes that count in this range (pycocotools' `gtIgnore == 0`).
    pub counted_gt: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::eval::params::iou_thresholds;

    fn gt(x0: f32, y0: f32, x1: f32, y1: f32) -> GtBox {
        let bbox = BBox::new(x0, y0, x1, y1);
        GtBox { bbox, area: box_area(&bbox), crowd: false }
    }

    #[test]
    fn crowd_iou_is_intersection_over_detection() {
        let crowd = BBox::new(0.0, 0.0, 100.0, 100.0);
        let det = BBox::new(90.0, 0.0, 110.0, 10.0);
        assert_eq!(coco_iou(&det, &crowd, true), 0.5);
        assert!((coco_iou(&det, &crowd, false) - 100.0 / 10100.0).abs() < 1e-15);
    }

    #[test]
    fn equal_ious_go_to_the_last_box() {
        // The det overlaps both boxes equally (IoU 90/110); pycocotools' `<` picks the second.
        let gts = vec![gt(0.0, 0.0, 10.0, 10.0), gt(2.0, 0.0, 12.0, 10.0)];
        let dets = [(BBox::new(1.0, 0.0, 11.0, 10.0), 0.9), (BBox::new(0.0, 0.0, 10.0, 10.0), 0.8)];
        let ic = ImageClass::new(gts, &dets, 100);
        let ev = ic.evaluate(AreaRange::All, &iou_thresholds());
        // Det 0 takes box 1, so det 1 gets box 0 (IoU 1) and is a true positive even at 0.7.
        // Had det 0 taken box 0, det 1 would be left with box 1 at IoU 80/120 < 0.7.
        assert_eq!(ev.status[0][4], Status::TruePositive);
        assert_eq!(ev.status[1][4], Status::TruePositive);
        assert_eq!(ev.counted_gt, 2);
    }

    #[test]
    fn unmatched_det_outside_the_range_is_ignored() {
        let ic = ImageClass::new(vec![], &[(BBox::new(0.0, 0.0, 100.0, 100.0), 0.5)], 100);
        let thr = iou_thresholds();
        assert_eq!(ic.evaluate(AreaRange::Small, &thr).status[0][0], Status::Ignored);
        assert_eq!(ic.evaluate(AreaRange::Large, &thr).status[0][0], Status::FalsePositive);
    }
}
