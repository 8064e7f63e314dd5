//! NMS against a naive O(n^2) reference, and by hand.

use ela_models::detect::eval::nms;
use ela_models::detect::{BBox, Detection};
use proptest::prelude::*;

/// The definition, written as plainly as possible: rank by score (stable), keep a box unless a
/// kept box of the same class (any class when agnostic) overlaps it by IoU > threshold, then
/// keep the first `max_det`.
fn naive_nms(dets: &[Detection], thr: f64, class_aware: bool, max_det: usize) -> Vec<Detection> {
    let mut ranked: Vec<Detection> = dets.iter().copied().filter(|d| !d.score.is_nan()).collect();
    ranked.sort_by(|a, b| b.score.partial_cmp(&a.score).unwrap());
    let mut kept: Vec<Detection> = Vec::new();
    for d in ranked {
        let suppressed = kept.iter().any(|k| (!class_aware || k.class == d.class) && k.bbox.iou(&d.bbox) > thr);
        if !suppressed {
            kept.push(d);
        }
    }
    kept.truncate(max_det);
    kept
}

fn det(class: usize, x0: f32, y0: f32, x1: f32, y1: f32, score: f32) -> Detection {
    Detection { class, bbox: BBox::new(x0, y0, x1, y1), score }
}

/// Few distinct scores (ties), a coarse grid (identical boxes, IoUs exactly at the
/// thresholds), zero-size boxes and the odd NaN score.
fn detections() -> impl Strategy<Value = Vec<Detection>> {
    let one = (0usize..3, 0u8..12, 0u8..12, 0u8..8, 0u8..8, 0usize..7).prop_map(|(c, x, y, w, h, s)| {
        let score = [0.1, 0.5, 0.5, 0.75, 0.9, 1.0, f32::NAN][s];
        det(c, x as f32, y as f32, (x + w) as f32, (y + h) as f32, score)
    });
    prop::collection::vec(one, 0..60)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn nms_equals_the_naive_reference(
        dets in detections(),
        thr in prop::sample::select(vec![0.0, 0.25, 0.5, 0.7, 1.0]),
        class_aware in any::<bool>(),
        max_det in 0usize..40,
    ) {
        let fast = nms(&dets, thr, class_aware, max_det);
        let slow = naive_nms(&dets, thr, class_aware, max_det);
        // Bitwise: same boxes, same order.
        let bits = |v: &[Detection]| -> Vec<(usize, [u32; 4], u32)> {
            v.iter().map(|d| (d.class, [d.bbox.x0, d.bbox.y0, d.bbox.x1, d.bbox.y1].map(f32::to_bits), d.score.to_bits())).collect()
        };
        prop_assert_eq!(bits(&fast), bits(&slow));
    }
}

#[test]
fn identical_boxes_keep_the_first_of_equal_scores() {
    // Three copies of one box; the best score wins.
    let dets =
        [det(0, 0.0, 0.0, 10.0, 10.0, 0.5), det(0, 0.0, 0.0, 10.0, 10.0, 0.5), det(0, 0.0, 0.0, 10.0, 10.0, 0.9)];
    assert_eq!(nms(&dets, 0.5, true, 10), vec![dets[2]]);
    // Equal scores on one box: the first in input order wins (told apart by class under
    // agnostic NMS).
    let tied = [det(1, 0.0, 0.0, 10.0, 10.0, 0.5), det(2, 0.0, 0.0, 10.0, 10.0, 0.5)];
    assert_eq!(nms(&tied, 0.5, false, 10), vec![tied[0]]);
    // Equal scores and no overlap: input order is kept.
    let apart = [det(0, 0.0, 0.0, 1.0, 1.0, 0.5), det(0, 5.0, 5.0, 6.0, 6.0, 0.5), det(0, 9.0, 9.0, 10.0, 10.0, 0.7)];
    assert_eq!(nms(&apart, 0.5, true, 10), vec![apart[2], apart[0], apart[1]]);
}

#[test]
fn class_aware_keeps_other_classes_and_agnostic_does_not() {
    let dets =
        [det(0, 0.0, 0.0, 10.0, 10.0, 0.9), det(1, 0.0, 0.0, 10.0, 10.0, 0.8), det(0, 1.0, 0.0, 11.0, 10.0, 0.7)];
    assert_eq!(nms(&dets, 0.5, true, 100), vec![dets[0], dets[1]]);
    assert_eq!(nms(&dets, 0.5, false, 100), vec![dets[0]]);
    assert_eq!(nms(&dets, 0.5, true, 1), vec![dets[0]]);
    assert!(nms(&dets, 0.5, true, 0).is_empty());
}

#[test]
fn iou_exactly_at_the_threshold_survives() {
    // IoU of these two is exactly 0.5: suppression needs strictly more.
    let dets = [det(0, 0.0, 0.0, 10.0, 10.0, 0.9), det(0, 0.0, 0.0, 10.0, 5.0, 0.8)];
    assert_eq!(nms(&dets, 0.5, true, 100).len(), 2);
    assert_eq!(nms(&dets, 0.49, true, 100).len(), 1);
}

#[test]
fn many_boxes_are_fast_enough() {
    // 20k boxes in 4 classes on a 100 x 100 grid of cells: a smoke test that the bucketed
    // version does not go quadratic over all boxes (runs in milliseconds in release).
    let dets: Vec<Detection> = (0..20_000)
        .map(|i| {
            let (x, y) = ((i % 100) as f32 * 8.0, ((i / 100) % 100) as f32 * 8.0);
            det(i % 4, x, y, x + 10.0, y + 10.0, ((i * 7919) % 1000) as f32 / 1000.0)
        })
        .collect();
    let t = std::time::Instant::now();
    let out = nms(&dets, 0.5, true, 300);
    assert!(!out.is_empty() && out.len() <= 300);
    assert!(t.elapsed().as_secs_f64() < 2.0, "nms took {:?}", t.elapsed());
}
