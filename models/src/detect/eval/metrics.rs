//! What [`super::coco_evaluate`] returns, and how its averages are formed.
//!
//! Averages: a class enters a mean only where its value is defined. A value is undefined (-1,
//! as in pycocotools) for a class with no ground truth that counts in the area range: no
//! objects at all, only crowd regions, or none of that size. A class with ground truth but no
//! detections is defined and scores 0. When no class is defined the mean is -1 too.

use super::accumulate::Curve;
use super::params::{AreaRange, IOU_50, IOU_75, MAX_DETS, NUM_IOU_THRESHOLDS, NUM_RECALL_THRESHOLDS};

/// Names of the twelve summary numbers, in pycocotools' `stats` order (see [`CocoMetrics::stats`]).
pub const STAT_NAMES: [&str; 12] =
    ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"];

/// The twelve COCO numbers of one class. Each is -1 where undefined (see the module docs).
///
/// These are the per-class numbers taken from pycocotools' `eval['precision']` and
/// `eval['recall']` arrays at the class's index (the way Detectron2 and the COCO leaderboard
/// tools report per-class AP), so their mean over defined classes is the overall number.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassMetrics {
    /// Class index.
    pub class: usize,
    /// Ground-truth objects of the class, crowd regions excluded, all sizes.
    pub num_gt: usize,
    /// Detections of the class before the 100-per-image cap.
    pub num_dets: usize,
    /// AP averaged over IoU 0.50:0.05:0.95, all areas, 100 detections.
    pub ap: f64,
    /// AP at IoU 0.5.
    pub ap50: f64,
    /// AP at IoU 0.75.
    pub ap75: f64,
    /// AP of objects with area <= 32^2.
    pub ap_small: f64,
    /// AP of objects with area in [32^2, 96^2].
    pub ap_medium: f64,
    /// AP of objects with area >= 96^2.
    pub ap_large: f64,
    /// Recall (averaged over IoU thresholds) with 1 detection per image.
    pub ar1: f64,
    /// Recall with 10 detections per image.
    pub ar10: f64,
    /// Recall with 100 detections per image.
    pub ar100: f64,
    /// AR100 of small objects.
    pub ar_small: f64,
    /// AR100 of medium objects.
    pub ar_medium: f64,
    /// AR100 of large objects.
    pub ar_large: f64,
}

impl ClassMetrics {
    /// The twelve numbers in [`STAT_NAMES`] order.
    pub fn stats(&self) -> [f64; 12] {
        [
            self.ap,
            self.ap50,
            self.ap75,
            self.ap_small,
            self.ap_medium,
            self.ap_large,
            self.ar1,
            self.ar10,
            self.ar100,
            self.ar_small,
            self.ar_medium,
            self.ar_large,
        ]
    }
}

/// The result of [`super::coco_evaluate`]: the twelve numbers pycocotools' `summarize()` prints (mean
/// over the classes where defined) and the same numbers per class.
#[derive(Clone, Debug, PartialEq)]
pub struct CocoMetrics {
    /// AP averaged over IoU 0.50:0.05:0.95 and classes: "COCO mAP".
    pub ap: f64,
    /// AP at IoU 0.5 ("mAP@0.5", PASCAL VOC style, but with COCO's 101-point interpolation).
    pub ap50: f64,
    /// AP at IoU 0.75.
    pub ap75: f64,
    /// AP of small objects (area <= 32^2).
    pub ap_small: f64,
    /// AP of medium objects (32^2 <= area <= 96^2).
    pub ap_medium: f64,
    /// AP of large objects (area >= 96^2).
    pub ap_large: f64,
    /// AR with 1 detection per image and class.
    pub ar1: f64,
    /// AR with 10 detections per image and class.
    pub ar10: f64,
    /// AR with 100 detections per image and class.
    pub ar100: f64,
    /// AR100 of small objects.
    pub ar_small: f64,
    /// AR100 of medium objects.
    pub ar_medium: f64,
    /// AR100 of large objects.
    pub ar_large: f64,
    /// Per class, indexed by class.
    pub per_class: Vec<ClassMetrics>,
}

impl CocoMetrics {
    /// The twelve numbers in pycocotools' `stats` order ([`STAT_NAMES`]).
    pub fn stats(&self) -> [f64; 12] {
        [
            self.ap,
            self.ap50,
            self.ap75,
            self.ap_small,
            self.ap_medium,
            self.ap_large,
            self.ar1,
            self.ar10,
            self.ar100,
            self.ar_small,
            self.ar_medium,
            self.ar_large,
        ]
    }
}

/// The (area range, cap) pairs the twelve numbers need, out of pycocotools' 4 x 3 grid.
pub(crate) const COMBOS: [(AreaRange, usize); 6] = [
    (AreaRange::All, MAX_DETS[2]),
    (AreaRange::Small, MAX_DETS[2]),
    (AreaRange::Medium, MAX_DETS[2]),
    (AreaRange::Large, MAX_DETS[2]),
    (AreaRange::All, MAX_DETS[0]),
    (AreaRange::All, MAX_DETS[1]),
];

/// A mean in the making: pycocotools averages all defined entries at once, so the overall
/// number is (sum of every class's entries) / (count), not a mean of rounded class means.
#[derive(Clone, Copy, Default)]
pub(crate) struct Sum {
    total: f64,
    count: usize,
}

impl Sum {
    pub(crate) fn add(&mut self, other: Sum) {
        self.total += other.total;
        self.count += other.count;
    }

    pub(crate) fn mean(self) -> f64 {
        if self.count == 0 {
            -1.0
        } else {
            self.total / self.count as f64
        }
    }
}

fn precision_sum(curve: &Option<Curve>, thresholds: std::ops::Range<usize>) -> Sum {
    match curve {
        None => Sum::default(),
        Some(c) => Sum {
            total: c.precision[thresholds.clone()].iter().flatten().sum(),
            count: thresholds.len() * NUM_RECALL_THRESHOLDS,
        },
    }
}

fn recall_sum(curve: &Option<Curve>) -> Sum {
    match curve {
        None => Sum::default(),
        Some(c) => Sum { total: c.recall.iter().sum(), count: NUM_IOU_THRESHOLDS },
    }
}

/// The twelve sums of one class from its curves (indexed like [`COMBOS`]).
pub(crate) fn class_sums(curves: &[Option<Curve>; 6]) -> [Sum; 12] {
    let all_t = 0..NUM_IOU_THRESHOLDS;
    [
        precision_sum(&curves[0], all_t.clone()),
        precision_sum(&curves[0], IOU_50..IOU_50 + 1),
        precision_sum(&curves[0], IOU_75..IOU_75 + 1),
        precision_sum(&curves[1], all_t.clone()),
        precision_sum(&curves[2], all_t.clone()),
        precision_sum(&curves[3], all_t),
        recall_sum(&curves[4]),
        recall_sum(&curves[5]),
        recall_sum(&curves[0]),
        recall_sum(&curves[1]),
        recall_sum(&curves[2]),
        recall_sum(&curves[3]),
    ]
}

impl ClassMetrics {
    /// From the twelve means in [`STAT_NAMES`] order.
    pub(crate) fn from_means(class: usize, num_gt: usize, num_dets: usize, m: [f64; 12]) -> Self {
        let [ap, ap50, ap75, ap_small, ap_medium, ap_large, ar1, ar10, ar100, ar_small, ar_medium, ar_large] = m;
        ClassMetrics {
            class,
            num_gt,
            num_dets,
            ap,
            ap50,
            ap75,
            ap_small,
            ap_medium,
            ap_large,
            ar1,
            ar10,
            ar100,
            ar_small,
            ar_medium,
            ar_large,
        }
    }
}

impl CocoMetrics {
    /// From the twelve means in [`STAT_NAMES`] order and the per-class results.
    pub(crate) fn from_means(m: [f64; 12], per_class: Vec<ClassMetrics>) -> Self {
        let [ap, ap50, ap75, ap_small, ap_medium, ap_large, ar1, ar10, ar100, ar_small, ar_medium, ar_large] = m;
        CocoMetrics {
            ap,
            ap50,
            ap75,
            ap_small,
            ap_medium,
            ap_large,
            ar1,
            ar10,
            ar100,
            ar_small,
            ar_medium,
            ar_large,
            per_class,
        }
    }
}
