//! What a detection dataset is to the rest of the detector: a [`DetectionSource`] hands out
//! [`Sample`]s (an RGB image and its labelled objects) by index, a [`DatasetSplit`] pairs the
//! training and validation sources, and a [`SkipReport`] counts what was left out while reading.
//!
//! Sources are indexable and stateless after opening (`&self` everywhere, `Send + Sync`), so a
//! batch can decode its images on several threads and a resumed run sees exactly the same data.

use std::fmt;
use std::path::PathBuf;

use ela_core::{Error, Result};
use image::RgbImage;

use super::io::{io_err, load_image};
use crate::detect::Object;

/// One image and its ground truth.
#[derive(Clone, Debug)]
pub struct Sample {
    /// The decoded (or rendered) image, 8-bit RGB.
    pub image: RgbImage,
    /// Labelled objects in pixels of `image`.
    pub objects: Vec<Object>,
    /// The image's id: COCO's `image.id`, the numeric file stem of a YOLO image (or its position),
    /// the index of a synthetic image.
    pub image_id: u64,
}

/// A dataset split: a fixed, indexable list of images with their labels.
pub trait DetectionSource: Send + Sync {
    /// Number of images.
    fn len(&self) -> usize;

    /// Whether the split holds no image.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Class names; an [`Object`]'s `class` indexes this list.
    fn class_names(&self) -> &[String];

    /// COCO category id of each class index (YOLO and synthetic: `0..num_classes`), for writing
    /// COCO results JSON.
    fn category_ids(&self) -> &[u64];

    /// The id of image `index` (`index < len()`; out of range gives `u64::MAX`).
    fn image_id(&self, index: usize) -> u64;

    /// Decode (or render) image `index` with its objects.
    fn load(&self, index: usize) -> Result<Sample>;

    /// The objects of image `index` without decoding the image where the format allows it
    /// (evaluation reads every ground truth once).
    fn objects(&self, index: usize) -> Result<Vec<Object>> {
        self.load(index).map(|s| s.objects)
    }

    /// One line for logs: format, where from, how many images, classes and objects.
    fn describe(&self) -> String;
}

/// The error for an image index past the end of a source.
/// One image file of a dataset read from disk (COCO or YOLO) with its labels: what both readers
/// keep per image once the labels are parsed.
#[derive(Clone, Debug)]
pub(crate) struct FileEntry {
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
    pub id: u64,
    pub objects: Vec<Object>,
}

/// Decode entry `index` of `entries`, checking that the pixels have the size its labels were
/// made for (`whose` names where that size came from, for the error).
pub(crate) fn load_entry(entries: &[FileEntry], index: usize, whose: &str) -> Result<Sample> {
    let e = entries.get(index).ok_or_else(|| index_error(index, entries.len()))?;
    let image = load_image(&e.path)?;
    if (image.width(), image.height()) != (e.width, e.height) {
        return Err(io_err(
            &e.path,
            format!("decoded size {}x{} differs from {whose} {}x{}", image.width(), image.height(), e.width, e.height),
        ));
    }
    Ok(Sample { image, objects: e.objects.clone(), image_id: e.id })
}

/// The labels of entry `index`, without decoding its image.
pub(crate) fn entry_objects(entries: &[FileEntry], index: usize) -> Result<Vec<Object>> {
    entries.get(index).map(|e| e.objects.clone()).ok_or_else(|| index_error(index, entries.len()))
}

pub(crate) fn index_error(index: usize, len: usize) -> Error {
    Error::invalid("dataset", format!("image index {index} is out of range for a split of {len} images"))
}

/// A dataset's training and validation splits (same classes), and what was skipped opening them.
pub struct DatasetSplit {
    /// Images to train on.
    pub train: Box<dyn DetectionSource>,
    /// Held-out images for validation and evaluation.
    pub val: Box<dyn DetectionSource>,
    /// What was left out while reading both splits.
    pub skipped: SkipReport,
}

impl DatasetSplit {
    /// Class names (shared by both splits).
    pub fn class_names(&self) -> &[String] {
        self.train.class_names()
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.train.class_names().len()
    }

    /// Both splits' descriptions and the skip summary, one line each.
    pub fn describe(&self) -> String {
        let mut s = format!("train: {}\nval: {}", self.train.describe(), self.val.describe());
        if !self.skipped.is_empty() {
            s.push_str(&format!("\nskipped: {}", self.skipped));
        }
        s
    }
}

impl fmt::Debug for DatasetSplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatasetSplit")
            .field("train", &self.train.describe())
            .field("val", &self.val.describe())
            .field("skipped", &self.skipped)
            .finish()
    }
}

/// Counts of what reading a dataset left out (or repaired), by reason, with the first few
/// offending files as examples. See the module docs for which problems are skips and which are
/// errors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SkipReport {
    /// Images listed (COCO) or labelled (YOLO label file without an image) whose file is missing.
    pub missing_images: usize,
    /// Image files whose header cannot be read as PNG or JPEG (empty, truncated, other format).
    pub unreadable_images: usize,
    /// COCO images whose file's size differs from the `width`/`height` in the JSON.
    pub size_mismatches: usize,
    /// Files in a YOLO images folder that are not `.jpg`/`.jpeg`/`.png` (ignored).
    pub unsupported_files: usize,
    /// YOLO images without a label file: kept, as images with no objects (informational).
    pub unlabelled_images: usize,
    /// Boxes partly outside their image, clipped to it and kept (informational).
    pub boxes_clipped: usize,
    /// Boxes entirely outside their image: skipped.
    pub boxes_outside: usize,
    /// Boxes with zero or negative width or height: skipped.
    pub boxes_degenerate: usize,
    /// COCO annotations whose `image_id` names no image: skipped.
    pub unknown_image_ids: usize,
    /// COCO annotations whose `category_id` names no category: skipped.
    pub unknown_categories: usize,
    /// The first few problems, `"<file>: <what>"`, for the log.
    pub examples: Vec<String>,
}

/// How many example lines a report keeps.
const MAX_EXAMPLES: usize = 8;

impl SkipReport {
    /// Whether nothing was skipped, clipped or left unlabelled.
    pub fn is_empty(&self) -> bool {
        self.counts().iter().all(|(n, _)| *n == 0)
    }

    /// Number of images left out (missing, unreadable, wrong size).
    pub fn images_skipped(&self) -> usize {
        self.missing_images + self.unreadable_images + self.size_mismatches
    }

    /// Number of boxes or annotations left out.
    pub fn boxes_skipped(&self) -> usize {
        self.boxes_outside + self.boxes_degenerate + self.unknown_image_ids + self.unknown_categories
    }

    /// Add `other`'s counts and examples to this one.
    pub fn merge(&mut self, other: &SkipReport) {
        self.missing_images += other.missing_images;
        self.unreadable_images += other.unreadable_images;
        self.size_mismatches += other.size_mismatches;
        self.unsupported_files += other.unsupported_files;
        self.unlabelled_images += other.unlabelled_images;
        self.boxes_clipped += other.boxes_clipped;
        self.boxes_outside += other.boxes_outside;
        self.boxes_degenerate += other.boxes_degenerate;
        self.unknown_image_ids += other.unknown_image_ids;
        self.unknown_categories += other.unknown_categories;
        for e in &other.examples {
            self.note(e.clone());
        }
    }

    /// Keep `example` if fewer than a handful are kept already.
    pub(crate) fn note(&mut self, example: String) {
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(example);
        }
    }

    fn counts(&self) -> [(usize, &'static str); 10] {
        [
            (self.missing_images, "missing images"),
            (self.unreadable_images, "unreadable images"),
            (self.size_mismatches, "images whose size differs from the annotations"),
            (self.unsupported_files, "unsupported files"),
            (self.unlabelled_images, "images without a label file (kept, no objects)"),
            (self.boxes_clipped, "boxes clipped to the image (kept)"),
            (self.boxes_outside, "boxes outside the image"),
            (self.boxes_degenerate, "boxes of zero size"),
            (self.unknown_image_ids, "annotations of unknown images"),
            (self.unknown_categories, "annotations of unknown categories"),
        ]
    }
}

impl fmt::Display for SkipReport {
    /// One line: the non-zero counts, then the first example.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> =
            self.counts().iter().filter(|(n, _)| *n > 0).map(|(n, what)| format!("{n} {what}")).collect();
        if parts.is_empty() {
            return write!(f, "nothing");
        }
        write!(f, "{}", parts.join(", "))?;
        if let Some(e) = self.examples.first() {
            write!(f, " (e.g. {e})")?;
        }
        Ok(())
    }
}

/// The shared box rule of the COCO and YOLO readers: a box with a non-finite coordinate or zero
/// or negative width or height is skipped (degenerate); one entirely outside the `width x height`
/// image is skipped (outside); one partly outside is clipped to the image and kept. `what`
/// names the box for the report's examples.
pub(crate) fn fit_box(
    b: crate::detect::BBox,
    width: u32,
    height: u32,
    report: &mut SkipReport,
    what: impl FnOnce() -> String,
) -> Option<crate::detect::BBox> {
    if !b.is_valid() {
        report.boxes_degenerate += 1;
        report.note(format!("{}: box {:?} has zero size", what(), b.to_xywh()));
        return None;
    }
    let c = b.clip(width as f32, height as f32);
    if !c.is_valid() {
        report.boxes_outside += 1;
        report.note(format!("{}: box {:?} is outside the {width}x{height} image", what(), b.to_xywh()));
        return None;
    }
    if c != b {
        report.boxes_clipped += 1;
    }
    Some(c)
}
