//! Opening a dataset from a path: tell COCO from YOLO by the files present, find both splits and
//! their class names. The layouts accepted are listed in the module docs of [`super`].

use std::path::{Path, PathBuf};

use ela_core::Result;

use super::coco::{split_name, CocoSource};
use super::io::{io_err, show};
use super::names::{parse_classes_txt, parse_yaml_names};
use super::source::{DatasetSplit, DetectionSource, SkipReport};
use super::yolo::YoloSource;

/// Open the dataset at `path`, detecting its format: a COCO annotations `.json`, a YOLO
/// `data.yaml`, or a folder holding either layout.
pub fn open_dataset(path: &Path) -> Result<DatasetSplit> {
    let meta = std::fs::metadata(path).map_err(|e| io_err(path, format!("cannot open dataset: {e}")))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if meta.is_file() {
        return match ext.as_str() {
            "json" => open_coco_json(path),
            "yaml" | "yml" => {
                let root = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
                open_yolo(root, Some(path))
            }
            _ => Err(io_err(path, "not a dataset: expected a COCO .json, a YOLO data.yaml, or a folder")),
        };
    }
    if let Some((train, val)) = coco_pair(path)? {
        return open_coco_pair(&train, &val);
    }
    if path.join("images").is_dir() || split_dir(path, Role::Train).is_some() {
        return open_yolo(path, None);
    }
    Err(io_err(
        path,
        "cannot tell the dataset format: expected annotations/instances_{train,val}*.json (COCO), \
         {train,valid}/_annotations.coco.json (COCO, Roboflow), or images/{train,val}/ with labels/{train,val}/ \
         or {train,val}/images/ with {train,val}/labels/ (YOLO)",
    ))
}

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Train,
    Val,
}

impl Role {
    fn matches(self, name: &str) -> bool {
        let n = name.to_ascii_lowercase();
        match self {
            Role::Train => n.starts_with("train"),
            Role::Val => n.starts_with("val"),
        }
    }
}

/// The training and validation annotation files of a COCO folder, if it is one.
fn coco_pair(dir: &Path) -> Result<Option<(PathBuf, PathBuf)>> {
    // Official layout: annotations/instances_<split>.json (also accepted in the folder itself).
    for ann in [dir.join("annotations"), dir.to_path_buf()] {
        let Ok(rd) = std::fs::read_dir(&ann) else { continue };
        let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        let pick = |role: Role| {
            files
                .iter()
                .rfind(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    name.ends_with(".json") && name.strip_prefix("instances_").is_some_and(|s| role.matches(s))
                })
                .cloned()
        };
        match (pick(Role::Train), pick(Role::Val)) {
            (Some(t), Some(v)) => return Ok(Some((t, v))),
            (Some(t), None) => {
                return Err(io_err(&t, "found no validation annotations (instances_val*.json) next to it"))
            }
            (None, Some(v)) => {
                return Err(io_err(&v, "found no training annotations (instances_train*.json) next to it"))
            }
            (None, None) => {}
        }
    }
    // Roboflow's COCO export: <split>/_annotations.coco.json with the images beside it.
    let rf = |role| split_dir(dir, role).map(|d| d.join("_annotations.coco.json")).filter(|p| p.is_file());
    Ok(rf(Role::Train).zip(rf(Role::Val)))
}

/// A COCO annotations file given directly: its partner split is found by swapping `train` and
/// `val` in its name (or, for `<split>/_annotations.coco.json`, in its folder's name).
fn open_coco_json(json: &Path) -> Result<DatasetSplit> {
    let name = json.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let split = split_name(json);
    let role = if Role::Train.matches(&split) {
        Role::Train
    } else if Role::Val.matches(&split) {
        Role::Val
    } else {
        return Err(io_err(
            json,
            "cannot tell whether this is the train or val split: name it instances_train*.json or instances_val*.json",
        ));
    };
    let swap = |s: &str| match role {
        Role::Train => s.replacen("train", "val", 1),
        Role::Val => s.replacen("val", "train", 1),
    };
    let mut partners = vec![json.with_file_name(swap(name))];
    if let Some(root) = json.parent().and_then(|p| p.parent()) {
        let other = if role == Role::Train { Role::Val } else { Role::Train };
        if let Some(d) = split_dir(root, other) {
            partners.push(d.join(name));
        }
    }
    let partner = partners.iter().find(|p| p.is_file() && p.as_path() != json).ok_or_else(|| {
        io_err(
            json,
            format!(
                "found no partner split: expected {} (use CocoSource::open for a single split)",
                show(&partners[0])
            ),
        )
    })?;
    match role {
        Role::Train => open_coco_pair(json, partner),
        Role::Val => open_coco_pair(partner, json),
    }
}

fn open_coco_pair(train: &Path, val: &Path) -> Result<DatasetSplit> {
    let mut skipped = SkipReport::default();
    let t = CocoSource::open(train, None, &mut skipped)?;
    let v = CocoSource::open(val, None, &mut skipped)?;
    if t.class_names() != v.class_names() || t.category_ids() != v.category_ids() {
        return Err(io_err(val, format!("its categories differ from those of {}", show(train))));
    }
    Ok(DatasetSplit { train: Box::new(t), val: Box::new(v), skipped })
}

/// The sub-folder of `dir` for a split: `train` (or the first `train*`), `val`/`valid`/
/// `validation` (or the first `val*`).
fn split_dir(dir: &Path, role: Role) -> Option<PathBuf> {
    let exact: &[&str] = if role == Role::Train { &["train"] } else { &["val", "valid", "validation"] };
    if let Some(d) = exact.iter().map(|e| dir.join(e)).find(|d| d.is_dir()) {
        return Some(d);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| role.matches(n)))
        .collect();
    dirs.sort();
    dirs.into_iter().next()
}

/// Class names of a YOLO dataset at `root`: `yaml` if given, else `data.yaml`, `dataset.yaml`, any
/// other `*.yaml`/`*.yml` with a `names:` key, `classes.txt`, `labels/classes.txt`.
fn yolo_names(root: &Path, yaml: Option<&Path>) -> Result<Vec<String>> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| io_err(p, format!("cannot read: {e}")));
    if let Some(y) = yaml {
        return parse_yaml_names(&read(y)?, y);
    }
    let mut yamls = vec![root.join("data.yaml"), root.join("dataset.yaml")];
    if let Ok(rd) = std::fs::read_dir(root) {
        let mut others: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        others.sort();
        yamls.extend(others);
    }
    for y in yamls.iter().filter(|y| y.is_file()) {
        let text = read(y)?;
        if text.lines().any(|l| l.starts_with("names:")) {
            return parse_yaml_names(&text, y);
        }
    }
    for c in [root.join("classes.txt"), root.join("labels").join("classes.txt")] {
        if c.is_file() {
            return parse_classes_txt(&read(&c)?, &c);
        }
    }
    Err(io_err(root, "no class names: expected data.yaml with `names:`, or classes.txt"))
}

/// A YOLO dataset: `images/<split>` + `labels/<split>`, or `<split>/images` + `<split>/labels`.
fn open_yolo(root: &Path, yaml: Option<&Path>) -> Result<DatasetSplit> {
    let names = yolo_names(root, yaml)?;
    let dirs = |role: Role| -> Result<(PathBuf, PathBuf)> {
        let what = if role == Role::Train { "training" } else { "validation" };
        if root.join("images").is_dir() {
            let img = split_dir(&root.join("images"), role).ok_or_else(|| {
                io_err(
                    &root.join("images"),
                    format!(
                        "no {what} images folder (expected images/{})",
                        if role == Role::Train { "train" } else { "val" }
                    ),
                )
            })?;
            let lbl = root.join("labels").join(img.file_name().unwrap_or_default());
            Ok((img, lbl))
        } else {
            let d = split_dir(root, role)
                .ok_or_else(|| io_err(root, format!("no {what} split folder (expected images/ or train/ and val/)")))?;
            Ok((d.join("images"), d.join("labels")))
        }
    };
    let mut skipped = SkipReport::default();
    let mut open = |role| -> Result<YoloSource> {
        let (img, lbl) = dirs(role)?;
        if !img.is_dir() {
            return Err(io_err(&img, "images folder not found"));
        }
        if !lbl.is_dir() {
            return Err(io_err(&lbl, "labels folder not found (YOLO keeps one .txt per image there)"));
        }
        YoloSource::open(&img, &lbl, names.clone(), &mut skipped)
    };
    let train = open(Role::Train)?;
    let val = open(Role::Val)?;
    Ok(DatasetSplit { train: Box::new(train), val: Box::new(val), skipped })
}
