//! COCO instances JSON (`instances_*.json`): `images` (id, file_name, width, height),
//! `annotations` (image_id, category_id, bbox `[x, y, width, height]`, iscrowd) and `categories`
//! (id, name). Other fields (segmentation, area, licenses, ...) are ignored.
//!
//! Classes are the categories sorted by id (COCO's 80 ids 1..90 with gaps become indices 0..80;
//! [`DetectionSource::category_ids`] maps back for results files). Opening parses the JSON, checks
//! that each image file exists and that its header's size matches the JSON (headers only, on all
//! cores), and attaches the annotations; pixels are decoded by [`DetectionSource::load`].

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use ela_core::Result;
use serde::Deserialize;

use super::io::{image_dims, io_err, par_map, show};
use super::source::{entry_objects, fit_box, load_entry, DetectionSource, FileEntry, Sample, SkipReport};
use crate::detect::{BBox, Object};

#[derive(Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    #[serde(default)]
    annotations: Vec<CocoAnn>,
    categories: Vec<CocoCat>,
}

#[derive(Deserialize)]
struct CocoImage {
    id: u64,
    file_name: String,
    width: u32,
    height: u32,
}

#[derive(Deserialize)]
struct CocoAnn {
    #[serde(default)]
    id: Option<u64>,
    image_id: u64,
    category_id: u64,
    bbox: Vec<f64>,
    #[serde(default)]
    iscrowd: Crowd,
}

/// `iscrowd` is 0/1 in COCO; some exporters write a boolean.
#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Crowd {
    #[default]
    No,
    Int(i64),
    Bool(bool),
}

#[derive(Deserialize)]
struct CocoCat {
    id: u64,
    name: String,
}

/// One split of a COCO dataset.
#[derive(Clone, Debug)]
pub struct CocoSource {
    json: PathBuf,
    images_dir: PathBuf,
    entries: Vec<FileEntry>,
    names: Vec<String>,
    ids: Vec<u64>,
}

impl CocoSource {
    /// Read the split described by `json`, with images under `images_dir` (or, when `None`, the
    /// first of the usual folders that holds them: see the module docs). Skips go to `report`.
    pub fn open(json: &Path, images_dir: Option<&Path>, report: &mut SkipReport) -> Result<Self> {
        let bytes = std::fs::read(json).map_err(|e| io_err(json, format!("cannot read COCO annotations: {e}")))?;
        let file: CocoFile = serde_json::from_slice(&bytes)
            .map_err(|e| io_err(json, format!("not a valid COCO instances file: {e}")))?;
        drop(bytes);
        // Classes: categories by increasing id.
        let mut cats: Vec<(u64, String)> = file.categories.into_iter().map(|c| (c.id, c.name)).collect();
        cats.sort_by_key(|c| c.0);
        if cats.is_empty() {
            return Err(io_err(json, "`categories` is empty"));
        }
        if let Some(w) = cats.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(io_err(json, format!("duplicate category id {}", w[0].0)));
        }
        let class_of: HashMap<u64, usize> = cats.iter().enumerate().map(|(i, c)| (c.0, i)).collect();
        // Images: ids must be unique, sizes positive.
        let mut seen: HashMap<u64, usize> = HashMap::new();
        for (i, im) in file.images.iter().enumerate() {
            if let Some(j) = seen.insert(im.id, i) {
                return Err(io_err(json, format!("duplicate image id {} (images[{j}] and images[{i}])", im.id)));
            }
            if im.width == 0 || im.height == 0 {
                return Err(io_err(json, format!("image id {} has size {}x{}", im.id, im.width, im.height)));
            }
        }
        let dir = match images_dir {
            Some(d) => d.to_path_buf(),
            None => find_images_dir(json, &file.images)?,
        };
        // Which image files are usable (exist, readable header, size as the JSON says).
        let checks = par_map(&file.images, |_, im| {
            let p = dir.join(&im.file_name);
            if !p.is_file() {
                return Err((0, format!("{}: missing (image id {})", show(&p), im.id)));
            }
            match image_dims(&p) {
                Ok((w, h)) if (w, h) == (im.width, im.height) => Ok(p),
                Ok((w, h)) => {
                    Err((2, format!("{}: file is {w}x{h}, annotations say {}x{}", show(&p), im.width, im.height)))
                }
                Err(m) => Err((1, format!("{}: {m}", show(&p)))),
            }
        });
        let mut entries = Vec::with_capacity(file.images.len());
        let mut slot: HashMap<u64, usize> = HashMap::new();
        let mut skipped_ids = HashSet::new();
        for (im, check) in file.images.iter().zip(checks) {
            match check {
                Ok(path) => {
                    slot.insert(im.id, entries.len());
                    entries.push(FileEntry {
                        path,
                        width: im.width,
                        height: im.height,
                        id: im.id,
                        objects: Vec::new(),
                    });
                }
                Err((kind, msg)) => {
                    *[&mut report.missing_images, &mut report.unreadable_images, &mut report.size_mismatches][kind] +=
                        1;
                    report.note(msg);
                    skipped_ids.insert(im.id);
                }
            }
        }
        if entries.is_empty() {
            return Err(io_err(
                json,
                format!("none of its {} images is readable under {}", file.images.len(), show(&dir)),
            ));
        }
        for (k, a) in file.annotations.iter().enumerate() {
            let name = || match a.id {
                Some(id) => format!("annotation id {id}"),
                None => format!("annotations[{k}]"),
            };
            if a.bbox.len() != 4 {
                return Err(io_err(
                    json,
                    format!("{}: bbox has {} numbers, expected [x, y, width, height]", name(), a.bbox.len()),
                ));
            }
            let Some(&e) = slot.get(&a.image_id) else {
                // Annotations of images skipped above go with them; others point nowhere.
                if !skipped_ids.contains(&a.image_id) {
                    report.unknown_image_ids += 1;
                    report.note(format!("{}: {}: image_id {} is not in `images`", show(json), name(), a.image_id));
                }
                continue;
            };
            let Some(&class) = class_of.get(&a.category_id) else {
                report.unknown_categories += 1;
                report.note(format!(
                    "{}: {}: category_id {} is not in `categories`",
                    show(json),
                    name(),
                    a.category_id
                ));
                continue;
            };
            let entry = &mut entries[e];
            let [x, y, w, h] = [a.bbox[0], a.bbox[1], a.bbox[2], a.bbox[3]].map(|v| v as f32);
            let crowd = match a.iscrowd {
                Crowd::No => false,
                Crowd::Int(v) => v != 0,
                Crowd::Bool(b) => b,
            };
            let what = || format!("{} {}", show(json), name());
            if let Some(b) = fit_box(BBox::from_xywh(x, y, w, h), entry.width, entry.height, report, what) {
                entry.objects.push(Object { class, bbox: b, crowd });
            }
        }
        let (ids, names) = cats.into_iter().unzip();
        Ok(CocoSource { json: json.to_path_buf(), images_dir: dir, entries, names, ids })
    }
}

/// The split name of an annotations file: `instances_val2017.json` -> `val2017`; otherwise (e.g.
/// Roboflow's `valid/_annotations.coco.json`) the folder's name.
pub(crate) fn split_name(json: &Path) -> String {
    let stem = json.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    match stem.strip_prefix("instances_") {
        Some(s) => s.to_string(),
        None => json.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()).unwrap_or("").to_string(),
    }
}

/// The folder holding a split's images, tried in this order (`R` is the dataset root: the
/// annotations file's folder, or its parent when that folder is `annotations/`; `S` the split
/// name, e.g. `val2017`, and `s` its short form `train`/`val`): `R/S`, `R/images/S`, `R/images/s`,
/// `R/s`, `R/images`, the JSON's own folder, `R`. The first that holds one of the first listed
/// images wins; failing that, the first that exists.
fn find_images_dir(json: &Path, images: &[CocoImage]) -> Result<PathBuf> {
    let parent = json.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let root = if parent.file_name().is_some_and(|n| n == "annotations") {
        parent.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
    } else {
        parent
    };
    let split = split_name(json);
    let short = if split.starts_with("train") {
        "train"
    } else if split.starts_with("val") {
        "val"
    } else {
        split.as_str()
    };
    let mut candidates: Vec<PathBuf> = Vec::new();
    for c in [
        root.join(&split),
        root.join("images").join(&split),
        root.join("images").join(short),
        root.join(short),
        root.join("images"),
        parent.to_path_buf(),
        root.to_path_buf(),
    ] {
        if !candidates.contains(&c) {
            candidates.push(c);
        }
    }
    let existing: Vec<&PathBuf> = candidates.iter().filter(|d| d.is_dir()).collect();
    for im in images.iter().take(8) {
        if let Some(d) = existing.iter().find(|d| d.join(&im.file_name).is_file()) {
            return Ok(d.to_path_buf());
        }
    }
    existing.first().map(|d| d.to_path_buf()).ok_or_else(|| {
        let tried: Vec<String> = candidates.iter().map(|c| show(c)).collect();
        io_err(json, format!("no images folder found; looked in {}", tried.join(", ")))
    })
}

impl DetectionSource for CocoSource {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn class_names(&self) -> &[String] {
        &self.names
    }

    fn category_ids(&self) -> &[u64] {
        &self.ids
    }

    fn image_id(&self, index: usize) -> u64 {
        self.entries.get(index).map_or(u64::MAX, |e| e.id)
    }

    fn load(&self, index: usize) -> Result<Sample> {
        load_entry(&self.entries, index, "the annotations'")
    }

    fn objects(&self, index: usize) -> Result<Vec<Object>> {
        entry_objects(&self.entries, index)
    }

    fn describe(&self) -> String {
        let objects: usize = self.entries.iter().map(|e| e.objects.len()).sum();
        format!(
            "COCO {} (images in {}): {} images, {} classes, {objects} objects",
            show(&self.json),
            show(&self.images_dir),
            self.entries.len(),
            self.names.len()
        )
    }
}
