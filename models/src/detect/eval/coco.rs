//! COCO box AP/AR, computed exactly as pycocotools' `COCOeval(iouType='bbox')` computes them
//! with its default parameters: 10 IoU thresholds, 101 recall points, 4 area ranges, caps of 1,
//! 10 and 100 detections per image and class.
//!
//! [`coco_evaluate`] runs the three stages of pycocotools: per image and class, match
//! ([`super::matching`]); per class, area range and cap, build the precision/recall curve
//! ([`super::accumulate`]); then average ([`super::metrics`]). Every number agrees with
//! pycocotools to 1e-6 or better (the fixture test checks all twelve and the per-class ones), as
//! long as the boxes and scores pycocotools reads are the f32 values given here.
//!
//! Which classes enter the means, and when a number is -1: see [`super::metrics`].

use super::accumulate::{accumulate, Curve, ImageDets};
use super::matching::{box_area, AreaEval, GtBox, ImageClass};
use super::metrics::{class_sums, ClassMetrics, CocoMetrics, Sum, COMBOS};
use super::params::{iou_thresholds, recall_thresholds, AreaRange, MAX_DETS, NUM_IOU_THRESHOLDS};
use crate::detect::{BBox, Detection, Object};
use ela_core::{Error, Result};

/// One image's ground truth and detections.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct EvalImage {
    /// Identifies the image. Images are processed in ascending id, which decides the order of
    /// equal-score detections from different images (as pycocotools' sorted `imgIds` does).
    pub image_id: u64,
    /// Ground-truth objects, in the order of the annotation file. The order matters only for
    /// ties (see [`super::matching`]).
    pub gt: Vec<Object>,
    /// The area of each ground-truth object for the small/medium/large split, parallel to `gt`;
    /// `None` uses each box's area. COCO's annotation files carry the area of the segmentation
    /// mask, which is smaller than the box, and pycocotools uses it: pass those areas to
    /// reproduce official numbers. Detections always use their box area (as pycocotools does).
    pub gt_areas: Option<Vec<f64>>,
    /// Detections, any order (the order breaks score ties: earlier first).
    pub dets: Vec<Detection>,
}

impl EvalImage {
    /// An image whose ground-truth areas are the box areas.
    pub fn new(image_id: u64, gt: Vec<Object>, dets: Vec<Detection>) -> Self {
        EvalImage { image_id, gt, gt_areas: None, dets }
    }
}

fn bad(msg: String) -> Error {
    Error::invalid("coco_evaluate", msg)
}

fn check_box(image_id: u64, what: &str, i: usize, b: &BBox) -> Result<()> {
    if [b.x0, b.y0, b.x1, b.y1].iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(bad(format!("image {image_id}: {what} {i} has a non-finite box {b:?}; boxes must be finite")))
    }
}

/// Reject what pycocotools would choke on or silently mis-handle: classes out of range,
/// non-finite boxes (a NaN IoU would compare as a match), NaN scores (unsortable), a
/// ground-truth area list of the wrong length, and an image given twice.
fn validate(images: &[EvalImage], num_classes: usize, sorted: &[usize]) -> Result<()> {
    for w in sorted.windows(2) {
        let id = images[w[0]].image_id;
        if id == images[w[1]].image_id {
            return Err(bad(format!("image id {id} is given twice; give each image once")));
        }
    }
    for im in images {
        let id = im.image_id;
        for (i, o) in im.gt.iter().enumerate() {
            if o.class >= num_classes {
                return Err(bad(format!(
                    "image {id}: ground-truth object {i} has class {} but num_classes is {num_classes}",
                    o.class
                )));
            }
            check_box(id, "ground-truth object", i, &o.bbox)?;
        }
        for (i, d) in im.dets.iter().enumerate() {
            if d.class >= num_classes {
                return Err(bad(format!(
                    "image {id}: detection {i} has class {} but num_classes is {num_classes}",
                    d.class
                )));
            }
            check_box(id, "detection", i, &d.bbox)?;
            if d.score.is_nan() {
                return Err(bad(format!("image {id}: detection {i} has a NaN score")));
            }
        }
        if let Some(areas) = &im.gt_areas {
            if areas.len() != im.gt.len() {
                return Err(bad(format!(
                    "image {id}: gt_areas has {} entries for {} ground-truth objects; give one area per object or None",
                    areas.len(),
                    im.gt.len()
                )));
            }
            if let Some(i) = areas.iter().position(|a| a.is_nan()) {
                return Err(bad(format!("image {id}: gt_areas[{i}] is NaN")));
            }
        }
    }
    Ok(())
}

/// COCO AP/AR of `images` for classes `0..num_classes`, exactly as pycocotools computes them
/// (see the module docs and [`super::matching`] / [`super::accumulate`] for every rule).
///
/// Every class in `0..num_classes` is evaluated, as pycocotools evaluates every category listed
/// in the ground-truth file; classes without ground truth come out -1 and do not enter the means.
///
/// # Errors
/// [`Error::InvalidArgument`] when a class is `>= num_classes`, a box is not finite, a score is
/// NaN, `gt_areas` does not have one entry per object, or two images share an id.
pub fn coco_evaluate(images: &[EvalImage], num_classes: usize) -> Result<CocoMetrics> {
    let mut sorted: Vec<usize> = (0..images.len()).collect();
    sorted.sort_by_key(|&i| images[i].image_id);
    validate(images, num_classes, &sorted)?;

    // One pass buckets everything by class; each bucket lists images in id order, objects and
    // detections in input order (both orders decide ties, so both are kept).
    let mut gts: Vec<Vec<(usize, GtBox)>> = vec![Vec::new(); num_classes];
    let mut dets: Vec<Vec<(usize, (BBox, f64))>> = vec![Vec::new(); num_classes];
    for (pos, &i) in sorted.iter().enumerate() {
        let im = &images[i];
        for (j, o) in im.gt.iter().enumerate() {
            let area = im.gt_areas.as_ref().map_or_else(|| box_area(&o.bbox), |a| a[j]);
            gts[o.class].push((pos, GtBox { bbox: o.bbox, area, crowd: o.crowd }));
        }
        for d in &im.dets {
            dets[d.class].push((pos, (d.bbox, d.score as f64)));
        }
    }

    let iou_thr = iou_thresholds();
    let rec_thr = recall_thresholds();
    let mut per_class = Vec::with_capacity(num_classes);
    let mut overall = [Sum::default(); 12];
    for (class, (class_gts, class_dets)) in gts.into_iter().zip(dets).enumerate() {
        let num_gt = class_gts.iter().filter(|(_, g)| !g.crowd).count();
        let num_dets = class_dets.len();
        let evals = evaluate_images(class_gts, &class_dets, &iou_thr);
        let curves: [Option<Curve>; 6] = COMBOS.map(|(range, max_det)| {
            let a = range.index();
            let counted: usize = evals.iter().map(|(_, e)| e[a].counted_gt).sum();
            let images: Vec<ImageDets<'_>> =
                evals.iter().map(|(ic, e)| ImageDets { scores: &ic.scores, status: &e[a].status }).collect();
            accumulate(&images, counted, max_det, &rec_thr)
        });
        let sums = class_sums(&curves);
        for (o, s) in overall.iter_mut().zip(sums) {
            o.add(s);
        }
        per_class.push(ClassMetrics::from_means(class, num_gt, num_dets, sums.map(Sum::mean)));
    }
    Ok(CocoMetrics::from_means(overall.map(Sum::mean), per_class))
}

/// Match every image of one class in every area range. `gts` and `dets` are (image position,
/// item) sorted by image position; images with neither are skipped (pycocotools' `None`).
fn evaluate_images(
    gts: Vec<(usize, GtBox)>,
    dets: &[(usize, (BBox, f64))],
    iou_thr: &[f64; NUM_IOU_THRESHOLDS],
) -> Vec<(ImageClass, [AreaEval; 4])> {
    let mut out = Vec::new();
    let mut gts = gts.into_iter().peekable();
    let mut d = 0;
    loop {
        let next_g = gts.peek().map(|(p, _)| *p);
        let next_d = dets.get(d).map(|(p, _)| *p);
        let pos = match (next_g, next_d) {
            (None, None) => break,
            (Some(g), None) => g,
            (None, Some(x)) => x,
            (Some(g), Some(x)) => g.min(x),
        };
        let mut image_gts = Vec::new();
        while let Some((_, g)) = gts.next_if(|(p, _)| *p == pos) {
            image_gts.push(g);
        }
        let start = d;
        while dets.get(d).is_some_and(|(p, _)| *p == pos) {
            d += 1;
        }
        let image_dets: Vec<(BBox, f64)> = dets[start..d].iter().map(|(_, x)| *x).collect();
        let ic = ImageClass::new(image_gts, &image_dets, MAX_DETS[2]);
        let evals = AreaRange::ALL.map(|r| ic.evaluate(r, iou_thr));
        out.push((ic, evals));
    }
    out
}
