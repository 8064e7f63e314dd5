//! YOLO txt datasets: an images folder, a parallel labels folder with one `.txt` per image, and
//! class names from `data.yaml` or `classes.txt`.
//!
//! A label line is `class cx cy w h`: a class index and the box's centre and size as fractions
//! of the image's width and height. Opening reads every label file and every image header (the
//! size, needed to turn fractions into pixels; headers only, so it is fast) on all cores; pixels
//! are decoded by [`DetectionSource::load`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use ela_core::Result;

use super::io::{image_dims, io_err, is_image_file, par_map, show, walk_files};
use super::source::{entry_objects, fit_box, load_entry, DetectionSource, FileEntry, Sample, SkipReport};
use crate::detect::{BBox, Object};

/// One split of a YOLO dataset.
#[derive(Clone, Debug)]
pub struct YoloSource {
    images_dir: PathBuf,
    entries: Vec<FileEntry>,
    names: Vec<String>,
    ids: Vec<u64>,
}

/// What reading one image's header and label file found.
enum Found {
    Image { width: u32, height: u32, labels: Option<Vec<(usize, [f32; 4], usize)>> },
    Unreadable(String),
}

impl YoloSource {
    /// Read the split whose images are under `images_dir` (recursively) and labels under
    /// `labels_dir` (same relative paths, `.txt`); `names` are the class names. Skips go to
    /// `report`; malformed label lines are errors naming the file and line.
    pub fn open(images_dir: &Path, labels_dir: &Path, names: Vec<String>, report: &mut SkipReport) -> Result<Self> {
        let files = walk_files(images_dir)?;
        let (images, others): (Vec<PathBuf>, Vec<PathBuf>) = files.into_iter().partition(|p| is_image_file(p));
        for p in others.iter().filter(|p| !is_hidden(p)) {
            report.unsupported_files += 1;
            report.note(format!("{}: not a .jpg, .jpeg or .png file (ignored)", show(p)));
        }
        let label_of = |img: &Path| -> PathBuf {
            let rel = img.strip_prefix(images_dir).unwrap_or(img);
            labels_dir.join(rel).with_extension("txt")
        };
        let nc = names.len();
        let found = par_map(&images, |_, img| -> Result<Found> {
            let (width, height) = match image_dims(img) {
                Ok(d) => d,
                Err(msg) => return Ok(Found::Unreadable(msg)),
            };
            let label = label_of(img);
            let labels = if label.is_file() { Some(parse_label_file(&label, nc)?) } else { None };
            Ok(Found::Image { width, height, labels })
        });
        let mut entries = Vec::with_capacity(images.len());
        let mut expected_labels = HashSet::new();
        for (img, f) in images.iter().zip(found) {
            expected_labels.insert(label_of(img));
            let (width, height, labels) = match f? {
                Found::Unreadable(msg) => {
                    report.unreadable_images += 1;
                    report.note(format!("{}: {msg}", show(img)));
                    continue;
                }
                Found::Image { width, height, labels } => (width, height, labels),
            };
            let labels = labels.unwrap_or_else(|| {
                report.unlabelled_images += 1;
                Vec::new()
            });
            let label = label_of(img);
            let objects = labels
                .into_iter()
                .filter_map(|(class, [cx, cy, w, h], line)| {
                    let (fw, fh) = (width as f32, height as f32);
                    let b = BBox::from_cxcywh(cx * fw, cy * fh, w * fw, h * fh);
                    fit_box(b, width, height, report, || format!("{} line {line}", show(&label)))
                        .map(|b| Object::new(class, b))
                })
                .collect();
            entries.push(FileEntry { path: img.clone(), width, height, id: 0, objects });
        }
        // Label files with no image: the image is missing.
        if labels_dir.is_dir() {
            for l in walk_files(labels_dir)? {
                let is_label =
                    l.extension().is_some_and(|e| e == "txt") && l.file_name().is_some_and(|n| n != "classes.txt");
                if is_label && !expected_labels.contains(&l) {
                    report.missing_images += 1;
                    report.note(format!("{}: no image with this name under {}", show(&l), show(images_dir)));
                }
            }
        }
        if entries.is_empty() {
            return Err(io_err(images_dir, "no readable .jpg/.jpeg/.png images in this folder"));
        }
        assign_ids(&mut entries);
        let ids = (0..nc as u64).collect();
        Ok(YoloSource { images_dir: images_dir.to_path_buf(), entries, names, ids })
    }
}

/// Hidden files (`.DS_Store`, editor swap files) are neither images nor worth a report line.
fn is_hidden(p: &Path) -> bool {
    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}

/// Image ids: the file stems when they are all numbers and distinct (COCO's `000000397133.jpg`
/// is image 397133, so predictions on a YOLO copy of COCO match COCO's ids), else positions.
fn assign_ids(entries: &mut [FileEntry]) {
    let stems: Option<Vec<u64>> = entries
        .iter()
        .map(|e| e.path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u64>().ok()))
        .collect();
    let distinct = stems.as_ref().is_some_and(|s| s.iter().collect::<HashSet<_>>().len() == s.len());
    for (i, e) in entries.iter_mut().enumerate() {
        e.id = match (&stems, distinct) {
            (Some(s), true) => s[i],
            _ => i as u64,
        };
    }
}

/// Parse a label file: `(class, [cx, cy, w, h], line number)` per non-blank line. An empty file
/// is an image with no objects.
fn parse_label_file(path: &Path, nc: usize) -> Result<Vec<(usize, [f32; 4], usize)>> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, format!("cannot read label file: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|_| io_err(path, "label file is not UTF-8 text"))?;
    let mut out = Vec::new();
    for (i, line) in text.trim_start_matches('\u{feff}').lines().enumerate() {
        let no = i + 1;
        let err = |msg: String| io_err(path, format!("line {no}: {msg}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        if fields.len() != 5 {
            let hint =
                if fields.len() > 5 { " (segmentation polygons and score columns are not supported)" } else { "" };
            return Err(err(format!("expected 5 fields `class cx cy w h`, got {}{hint}", fields.len())));
        }
        let class = parse_class(fields[0])
            .ok_or_else(|| err(format!("class id `{}` is not a non-negative integer", fields[0])))?;
        if class >= nc {
            return Err(err(format!("class id {class} is out of range: the dataset has {nc} classes (ids 0..{nc})")));
        }
        let mut v = [0f32; 4];
        for (k, f) in fields[1..].iter().enumerate() {
            v[k] = f
                .parse::<f32>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| err(format!("field {} (`{f}`) is not a finite number", k + 2)))?;
        }
        out.push((class, v, no));
    }
    Ok(out)
}

/// A class id: an integer, or a float with an integral value (`3.0`, as some exporters write).
fn parse_class(s: &str) -> Option<usize> {
    s.parse::<usize>().ok().or_else(|| {
        let f = s.parse::<f64>().ok()?;
        (f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < 1e9).then_some(f as usize)
    })
}

impl DetectionSource for YoloSource {
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
        load_entry(&self.entries, index, "the header's (file changed since opening?)")
    }

    fn objects(&self, index: usize) -> Result<Vec<Object>> {
        entry_objects(&self.entries, index)
    }

    fn describe(&self) -> String {
        let objects: usize = self.entries.iter().map(|e| e.objects.len()).sum();
        format!(
            "YOLO {}: {} images, {} classes, {objects} objects",
            show(&self.images_dir),
            self.entries.len(),
            self.names.len()
        )
    }
}
