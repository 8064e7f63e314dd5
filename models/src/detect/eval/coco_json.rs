//! COCO JSON on disk: the results format (what COCO's evaluation server and pycocotools'
//! `loadRes` read) and a minimal ground-truth reader for evaluation.
//!
//! Results file: one array of `{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`,
//! boxes in pixels of the original image with `x, y` the top-left corner. Class indices map to
//! COCO category ids through `category_ids[class]` (COCO's 80 classes use ids 1..=90 with gaps).
//! Numbers are written as the shortest decimals that read back to the same f32, so scores and
//! `x, y, w, h` round-trip exactly (the corners `x + w`, `y + h` up to one f32 rounding), and
//! pycocotools, which reads them as f64, ranks and ties the scores exactly as we do.
//!
//! Every error is one line naming the file, and the entry for per-entry faults.

use super::coco::EvalImage;
use crate::detect::{BBox, Detection, Object};
use ela_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

fn io_err(name: &str, msg: impl Into<String>) -> Error {
    Error::Io { path: name.to_string(), msg: msg.into() }
}

#[derive(Serialize)]
struct ResultOut {
    image_id: u64,
    category_id: u64,
    bbox: [f32; 4],
    score: f32,
}

#[derive(Deserialize)]
struct ResultIn {
    image_id: u64,
    category_id: u64,
    bbox: Vec<f64>,
    score: f64,
}

/// Write detections as a COCO results file at `path`, atomically (a temporary file renamed over
/// the target, so a reader never sees half a file). `images` pairs an image id with its
/// detections; class `c` is written as category `category_ids[c]`. One detection per line.
///
/// # Errors
/// [`Error::Io`] naming `path` when a class has no category id, a score or coordinate is not
/// finite (JSON cannot hold it), or the file cannot be written.
pub fn write_coco_results(path: &Path, images: &[(u64, Vec<Detection>)], category_ids: &[u64]) -> Result<()> {
    let name = path.display().to_string();
    let mut out = String::from("[");
    let mut first = true;
    for (image_id, dets) in images {
        for (i, d) in dets.iter().enumerate() {
            let where_ = || format!("image {image_id}, detection {i}");
            let category_id = *category_ids.get(d.class).ok_or_else(|| {
                io_err(
                    &name,
                    format!("{}: class {} has no category id ({} given)", where_(), d.class, category_ids.len()),
                )
            })?;
            let bbox = d.bbox.to_xywh();
            if !d.score.is_finite() || !bbox.iter().all(|v| v.is_finite()) {
                return Err(io_err(&name, format!("{}: non-finite score or box ({:?})", where_(), d)));
            }
            let entry = ResultOut { image_id: *image_id, category_id, bbox, score: d.score };
            let line = serde_json::to_string(&entry).map_err(|e| io_err(&name, format!("{}: {e}", where_())))?;
            out.push_str(if first { "\n" } else { ",\n" });
            out.push_str(&line);
            first = false;
        }
    }
    out.push_str("\n]\n");
    write_atomic(path, out.as_bytes()).map_err(|e| io_err(&name, format!("cannot write results: {e}")))
}

/// Write through a temporary file in the target's directory (same filesystem, so the rename is
/// atomic), fsynced before the rename: a crash leaves the old file or the new one, never half.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let file_name = path.file_name().ok_or_else(|| std::io::Error::other("the path has no file name"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Unique per process and call, so concurrent writers do not collide.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{}.tmp-{}-{n}", file_name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        // Best effort: the temporary file may not exist or may already be renamed.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Read a COCO results file (see [`parse_coco_results`]).
pub fn read_coco_results(path: &Path, category_ids: &[u64]) -> Result<Vec<(u64, Detection)>> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| io_err(&name, format!("cannot read results: {e}")))?;
    parse_coco_results(&text, &name, category_ids)
}

/// Parse COCO results JSON (`name` labels errors): `(image_id, detection)` in file order, with
/// category `category_ids[c]` read back as class `c`. Extra fields (`id`, `area`,
/// `segmentation`) are allowed and ignored.
///
/// # Errors
/// [`Error::Io`] naming `name` for invalid JSON, a top level that is not an array, an entry
/// missing a field, a `bbox` that is not 4 finite numbers with non-negative width and height,
/// a non-finite score, or a category id not in `category_ids`.
pub fn parse_coco_results(json: &str, name: &str, category_ids: &[u64]) -> Result<Vec<(u64, Detection)>> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| io_err(name, format!("invalid JSON: {e}")))?;
    let entries = value.as_array().ok_or_else(|| {
        io_err(name, "a COCO results file is a JSON array of detections; the top level is not an array")
    })?;
    let class_of: HashMap<u64, usize> = category_ids.iter().enumerate().map(|(c, &id)| (id, c)).collect();
    let mut out = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let r = ResultIn::deserialize(entry).map_err(|e| io_err(name, format!("entry {i}: {e}")))?;
        let class = *class_of.get(&r.category_id).ok_or_else(|| {
            io_err(name, format!("entry {i}: category_id {} is not one of {category_ids:?}", r.category_id))
        })?;
        let bbox = xywh_box(&r.bbox).map_err(|m| io_err(name, format!("entry {i}: {m}")))?;
        let score = r.score as f32;
        if !score.is_finite() {
            return Err(io_err(name, format!("entry {i}: score {} is not a finite f32", r.score)));
        }
        out.push((r.image_id, Detection { class, bbox, score }));
    }
    Ok(out)
}

/// `[x, y, w, h]` to a box, checked: 4 numbers, finite as f32, width and height >= 0.
fn xywh_box(v: &[f64]) -> std::result::Result<BBox, String> {
    let [x, y, w, h] = v else {
        return Err(format!("bbox has {} numbers; COCO boxes are [x, y, width, height]", v.len()));
    };
    let b = [*x as f32, *y as f32, *w as f32, *h as f32];
    if !b.iter().all(|c| c.is_finite()) {
        return Err(format!("bbox {v:?} is not finite as f32"));
    }
    if b[2] < 0.0 || b[3] < 0.0 {
        return Err(format!("bbox {v:?} has a negative width or height"));
    }
    Ok(BBox::from_xywh(b[0], b[1], b[2], b[3]))
}

/// A COCO ground-truth file reduced to what evaluation needs.
#[derive(Clone, Debug, PartialEq)]
pub struct CocoGroundTruth {
    /// Category ids, ascending (pycocotools' order); class `c` is category `category_ids[c]`.
    pub category_ids: Vec<u64>,
    /// Category names, parallel to `category_ids`.
    pub category_names: Vec<String>,
    /// Every image of the file (including those without annotations, which pycocotools also
    /// evaluates), in file order, with its annotations in file order, their `area` fields as
    /// `gt_areas` (the box area where a file omits it) and no detections.
    pub images: Vec<EvalImage>,
}

#[derive(Deserialize)]
struct GtFile {
    images: Vec<GtImage>,
    #[serde(default)]
    annotations: Vec<GtAnnotation>,
    categories: Vec<GtCategory>,
}

#[derive(Deserialize)]
struct GtImage {
    id: u64,
}

#[derive(Deserialize)]
struct GtCategory {
    id: u64,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
struct GtAnnotation {
    image_id: u64,
    category_id: u64,
    bbox: Vec<f64>,
    area: Option<f64>,
    #[serde(default)]
    iscrowd: u8,
}

/// Read a COCO ground-truth (instances) file (see [`parse_coco_ground_truth`]).
pub fn read_coco_ground_truth(path: &Path) -> Result<CocoGroundTruth> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| io_err(&name, format!("cannot read ground truth: {e}")))?;
    parse_coco_ground_truth(&text, &name)
}

/// Parse a COCO ground-truth JSON (`name` labels errors). Reads `images[].id`,
/// `categories[].{id,name}` and `annotations[].{image_id,category_id,bbox,area,iscrowd}`;
/// other fields (segmentations, licences, ...) are skipped.
///
/// # Errors
/// [`Error::Io`] naming `name` for invalid JSON, a missing field, a duplicate image or
/// category id, an annotation naming an unknown image or category, or a bad `bbox`.
pub fn parse_coco_ground_truth(json: &str, name: &str) -> Result<CocoGroundTruth> {
    let file: GtFile =
        serde_json::from_str(json).map_err(|e| io_err(name, format!("invalid COCO ground truth: {e}")))?;
    let mut cats: Vec<(u64, String)> = file.categories.into_iter().map(|c| (c.id, c.name)).collect();
    cats.sort_by_key(|c| c.0);
    if let Some(w) = cats.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(io_err(name, format!("category id {} is listed twice", w[0].0)));
    }
    let class_of: HashMap<u64, usize> = cats.iter().enumerate().map(|(c, (id, _))| (*id, c)).collect();
    let mut images: Vec<EvalImage> = Vec::with_capacity(file.images.len());
    let mut slot: HashMap<u64, usize> = HashMap::with_capacity(file.images.len());
    for im in &file.images {
        if slot.insert(im.id, images.len()).is_some() {
            return Err(io_err(name, format!("image id {} is listed twice", im.id)));
        }
        images.push(EvalImage { image_id: im.id, gt: Vec::new(), gt_areas: Some(Vec::new()), dets: Vec::new() });
    }
    for (i, a) in file.annotations.iter().enumerate() {
        let at = |m: String| io_err(name, format!("annotations[{i}]: {m}"));
        let &s = slot.get(&a.image_id).ok_or_else(|| at(format!("image_id {} is not in images", a.image_id)))?;
        let &class = class_of
            .get(&a.category_id)
            .ok_or_else(|| at(format!("category_id {} is not in categories", a.category_id)))?;
        let bbox = xywh_box(&a.bbox).map_err(at)?;
        let area = a.area.unwrap_or(a.bbox[2] * a.bbox[3]);
        if area.is_nan() {
            return Err(at("area is NaN".to_string()));
        }
        let im = &mut images[s];
        im.gt.push(Object { class, bbox, crowd: a.iscrowd != 0 });
        if let Some(areas) = im.gt_areas.as_mut() {
            areas.push(area);
        }
    }
    let (category_ids, category_names) = cats.into_iter().unzip();
    Ok(CocoGroundTruth { category_ids, category_names, images })
}

impl CocoGroundTruth {
    /// The ground-truth images with `dets` (`(image_id, detection)`, as [`read_coco_results`]
    /// returns them) attached, ready for [`super::coco_evaluate`] with
    /// `num_classes = category_ids.len()`. Detections keep their order within an image.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when a detection names an image the ground truth lacks
    /// (pycocotools refuses such results too).
    pub fn with_detections(&self, dets: &[(u64, Detection)]) -> Result<Vec<EvalImage>> {
        let mut images = self.images.clone();
        let slot: HashMap<u64, usize> = images.iter().enumerate().map(|(s, im)| (im.image_id, s)).collect();
        for (i, (image_id, d)) in dets.iter().enumerate() {
            let &s = slot.get(image_id).ok_or_else(|| {
                Error::invalid(
                    "CocoGroundTruth::with_detections",
                    format!("detection {i} is on image {image_id}, which the ground truth does not list"),
                )
            })?;
            images[s].dets.push(*d);
        }
        Ok(images)
    }
}
