//! The COCO reader on small datasets written in a temporary folder: boxes, classes, ids and
//! layouts, and every malformed case with its documented error or skip count.

mod bin;

use bin::TempDir;

use std::path::Path;

use ela_models::detect::data::{open_dataset, CocoSource, DetectionSource, SkipReport};
use ela_models::detect::BBox;
use image::{Rgb, RgbImage};

fn write_image(path: &Path, w: u32, h: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7) as u8, (y * 5) as u8, 90])).save(path).unwrap();
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

const CATS: &str = r#""categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]"#;

/// The official layout: annotations/instances_*.json, images in train2017/ and val2017/.
fn official(root: &Path) {
    write_image(&root.join("train2017/a.png"), 40, 30);
    write_image(&root.join("train2017/b.jpg"), 50, 40);
    write_image(&root.join("val2017/c.png"), 20, 20);
    write(
        &root.join("annotations/instances_train2017.json"),
        &format!(
            r#"{{"images": [{{"id": 11, "file_name": "a.png", "width": 40, "height": 30}},
                          {{"id": 12, "file_name": "b.jpg", "width": 50, "height": 40, "license": 3}}],
               "annotations": [
                 {{"id": 1, "image_id": 11, "category_id": 7, "bbox": [1.5, 2, 10, 8], "iscrowd": 0, "area": 80}},
                 {{"id": 2, "image_id": 11, "category_id": 3, "bbox": [20, 10, 5, 5], "iscrowd": 1}},
                 {{"id": 3, "image_id": 12, "category_id": 3, "bbox": [0, 0, 50, 40]}}],
               {CATS}}}"#
        ),
    );
    write(
        &root.join("annotations/instances_val2017.json"),
        &format!(
            r#"{{"images": [{{"id": 5, "file_name": "c.png", "width": 20, "height": 20}}],
               "annotations": [{{"id": 9, "image_id": 5, "category_id": 7, "bbox": [2, 3, 4, 5]}}], {CATS}}}"#
        ),
    );
}

#[test]
fn reads_the_official_layout() {
    let d = TempDir::new("official");
    official(&d.0);
    let split = open_dataset(&d.0).unwrap();
    assert!(split.skipped.is_empty(), "{}", split.skipped);
    let t = &split.train;
    assert_eq!(t.class_names(), &["cat".to_string(), "dog".into()]);
    assert_eq!(t.category_ids(), &[3, 7]);
    assert_eq!((t.len(), t.image_id(0), t.image_id(1)), (2, 11, 12));
    let s = t.load(0).unwrap();
    assert_eq!((s.image.width(), s.image.height(), s.image_id), (40, 30, 11));
    assert_eq!(s.objects.len(), 2);
    assert_eq!(
        (s.objects[0].class, s.objects[0].bbox, s.objects[0].crowd),
        (1, BBox::new(1.5, 2.0, 11.5, 10.0), false)
    );
    assert_eq!((s.objects[1].class, s.objects[1].crowd), (0, true));
    assert_eq!(t.objects(0).unwrap(), s.objects);
    assert_eq!(t.load(1).unwrap().image.width(), 50); // the JPEG
    assert_eq!(split.val.len(), 1);
    assert_eq!(split.val.load(0).unwrap().objects[0].bbox, BBox::from_xywh(2.0, 3.0, 4.0, 5.0));
    assert!(t.describe().contains("2 images, 2 classes, 3 objects"), "{}", t.describe());
    // The same dataset through one of its JSON files.
    let direct = open_dataset(&d.0.join("annotations/instances_val2017.json")).unwrap();
    assert_eq!((direct.train.len(), direct.val.len()), (2, 1));
    assert!(t.load(2).is_err());
}

#[test]
fn reads_other_layouts() {
    // images/<split>/ and Roboflow's <split>/_annotations.coco.json.
    let d = TempDir::new("layouts");
    let r = d.0.join("a");
    official(&r);
    std::fs::create_dir_all(r.join("images")).unwrap();
    std::fs::rename(r.join("train2017"), r.join("images/train")).unwrap();
    std::fs::rename(r.join("val2017"), r.join("images/val")).unwrap();
    let s = open_dataset(&r).unwrap();
    assert_eq!((s.train.len(), s.val.len()), (2, 1));
    let rf = d.0.join("rf");
    for (split, file) in [("train", "x.png"), ("valid", "y.png")] {
        write_image(&rf.join(split).join(file), 16, 16);
        write(
            &rf.join(split).join("_annotations.coco.json"),
            &format!(
                r#"{{"images": [{{"id": 0, "file_name": "{file}", "width": 16, "height": 16}}],
                   "annotations": [{{"id": 0, "image_id": 0, "category_id": 1, "bbox": [1, 1, 4, 4], "iscrowd": false}}],
                   "categories": [{{"id": 1, "name": "x"}}]}}"#
            ),
        );
    }
    let s = open_dataset(&rf).unwrap();
    assert_eq!((s.train.len(), s.val.len()), (1, 1));
    assert_eq!(s.val.load(0).unwrap().objects[0].bbox, BBox::new(1.0, 1.0, 5.0, 5.0));
}

/// Open one split from `json` text with the images of [`official`]'s train2017 folder.
fn open_one(d: &TempDir, json: &str) -> ela_core::Result<(CocoSource, SkipReport)> {
    official(&d.0);
    let p = d.0.join("annotations/instances_train2017.json");
    write(&p, json);
    let mut report = SkipReport::default();
    CocoSource::open(&p, None, &mut report).map(|s| (s, report))
}

fn images(extra: &str) -> String {
    format!(
        r#""images": [{{"id": 11, "file_name": "a.png", "width": 40, "height": 30}},
                     {{"id": 12, "file_name": "b.jpg", "width": 50, "height": 40}}{extra}]"#
    )
}

fn err_of(tag: &str, json: &str) -> String {
    let d = TempDir::new(tag);
    let e = open_one(&d, json).expect_err("expected an error").to_string();
    let file = d.0.join("annotations/instances_train2017.json").display().to_string();
    assert!(e.starts_with(&file), "error does not name the file: {e}");
    assert!(!e.contains('\n'), "not one line: {e}");
    e
}

#[test]
fn malformed_json_is_an_error_naming_file_line_and_id() {
    let e = err_of("syntax", "{\"images\": [\n{\"id\": 1,,}]}");
    assert!(e.contains("line 2"), "{e}");
    let e = err_of("field", &format!(r#"{{"images": [{{"id": 1, "file_name": "a.png", "width": 40}}], {CATS}}}"#));
    assert!(e.contains("height"), "{e}");
    let e = err_of(
        "bbox3",
        &format!(
            r#"{{{}, "annotations": [{{"id": 42, "image_id": 11, "category_id": 3, "bbox": [1, 2, 3]}}], {CATS}}}"#,
            images("")
        ),
    );
    assert!(e.contains("annotation id 42") && e.contains("bbox has 3 numbers"), "{e}");
    let e = err_of(
        "dupimg",
        &format!(r#"{{{}, {CATS}}}"#, images(r#", {"id": 11, "file_name": "b.jpg", "width": 50, "height": 40}"#)),
    );
    assert!(e.contains("duplicate image id 11"), "{e}");
    let e = err_of(
        "dupcat",
        &format!(r#"{{{}, "categories": [{{"id": 1, "name": "a"}}, {{"id": 1, "name": "b"}}]}}"#, images("")),
    );
    assert!(e.contains("duplicate category id 1"), "{e}");
    let e = err_of("nocat", &format!(r#"{{{}, "categories": []}}"#, images("")));
    assert!(e.contains("categories"), "{e}");
    let e = err_of(
        "size0",
        &format!(r#"{{"images": [{{"id": 1, "file_name": "a.png", "width": 0, "height": 3}}], {CATS}}}"#),
    );
    assert!(e.contains("image id 1 has size 0x3"), "{e}");
}

#[test]
fn dangling_references_and_bad_boxes_are_counted_skips() {
    let d = TempDir::new("skips");
    let anns = r#""annotations": [
        {"id": 1, "image_id": 99, "category_id": 3, "bbox": [1, 1, 2, 2]},
        {"id": 2, "image_id": 11, "category_id": 5, "bbox": [1, 1, 2, 2]},
        {"id": 3, "image_id": 11, "category_id": 3, "bbox": [-5, 20, 15, 20]},
        {"id": 4, "image_id": 11, "category_id": 3, "bbox": [45, 1, 5, 5]},
        {"id": 5, "image_id": 11, "category_id": 3, "bbox": [3, 3, 0, 5]},
        {"id": 6, "image_id": 11, "category_id": 3, "bbox": [3, 3, 5, -1]},
        {"id": 7, "image_id": 12, "category_id": 7, "bbox": [1, 1, 3, 3]}]"#;
    let (src, r) = open_one(&d, &format!("{{{}, {anns}, {CATS}}}", images(""))).unwrap();
    assert_eq!(
        (r.unknown_image_ids, r.unknown_categories, r.boxes_clipped, r.boxes_outside, r.boxes_degenerate),
        (1, 1, 1, 1, 2),
        "{r}"
    );
    assert!(r.examples.iter().any(|e| e.contains("annotation id 1") && e.contains("image_id 99")), "{:?}", r.examples);
    let objs = src.objects(0).unwrap();
    assert_eq!(objs.len(), 1);
    assert_eq!(objs[0].bbox, BBox::new(0.0, 20.0, 10.0, 30.0)); // clipped on both sides
    assert_eq!(src.objects(1).unwrap().len(), 1);
}

#[test]
fn missing_corrupt_and_mismatched_images_are_counted_skips() {
    let d = TempDir::new("images");
    official(&d.0);
    std::fs::write(d.0.join("train2017/corrupt.png"), b"definitely not a png").unwrap();
    write_image(&d.0.join("train2017/small.png"), 10, 10);
    // A PNG whose header is fine but whose pixel data is cut off: readable at opening, fails in load.
    let mut png = Vec::new();
    RgbImage::from_fn(64, 64, |x, y| Rgb([(x * y) as u8, x as u8, y as u8]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    std::fs::write(d.0.join("train2017/truncated.png"), &png[..png.len() / 2]).unwrap();
    let extra = r#", {"id": 13, "file_name": "gone.png", "width": 4, "height": 4},
                     {"id": 14, "file_name": "corrupt.png", "width": 4, "height": 4},
                     {"id": 15, "file_name": "small.png", "width": 12, "height": 10},
                     {"id": 16, "file_name": "truncated.png", "width": 64, "height": 64}"#;
    let anns = r#""annotations": [{"id": 1, "image_id": 13, "category_id": 3, "bbox": [1, 1, 2, 2]}]"#;
    let (src, r) = open_one(&d, &format!("{{{}, {anns}, {CATS}}}", images(extra))).unwrap();
    assert_eq!((r.missing_images, r.unreadable_images, r.size_mismatches), (1, 1, 1), "{r}");
    // The annotation of the missing image leaves with it, not as a dangling reference.
    assert_eq!(r.unknown_image_ids, 0);
    assert_eq!(src.len(), 3);
    assert!(r.examples.iter().any(|e| e.contains("gone.png")), "{:?}", r.examples);
    let e = src.load(2).unwrap_err().to_string();
    assert!(e.contains("truncated.png") && !e.contains('\n'), "{e}");
    assert!(r.to_string().contains("1 missing images"), "{r}");
}

#[test]
fn folder_level_errors() {
    let d = TempDir::new("folders");
    official(&d.0);
    // Different categories in train and val.
    write(
        &d.0.join("annotations/instances_val2017.json"),
        r#"{"images": [{"id": 5, "file_name": "c.png", "width": 20, "height": 20}], "categories": [{"id": 1, "name": "x"}]}"#,
    );
    let e = open_dataset(&d.0).unwrap_err().to_string();
    assert!(e.contains("instances_val2017.json") && e.contains("categories differ"), "{e}");
    std::fs::remove_file(d.0.join("annotations/instances_val2017.json")).unwrap();
    let e = open_dataset(&d.0).unwrap_err().to_string();
    assert!(e.contains("instances_train2017.json") && e.contains("no validation annotations"), "{e}");
    let e = open_dataset(&d.0.join("nothing_here")).unwrap_err().to_string();
    assert!(e.contains("nothing_here"), "{e}");
    let empty = TempDir::new("empty");
    let e = open_dataset(&empty.0).unwrap_err().to_string();
    assert!(e.contains("cannot tell the dataset format"), "{e}");
}
