//! The YOLO txt reader on small datasets written in a temporary folder: boxes, classes, ids,
//! layouts and class-name files, and every malformed case with its documented error or skip.

mod bin;

use bin::TempDir;

use std::path::Path;

use ela_models::detect::data::{open_dataset, DatasetSplit};
use ela_models::detect::BBox;
use image::{Rgb, RgbImage};

fn write_image(path: &Path, w: u32, h: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    RgbImage::from_fn(w, h, |x, y| Rgb([(x * 3) as u8, (y * 3) as u8, 40])).save(path).unwrap();
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// An ultralytics-layout dataset: 3 training images (one unlabelled), one validation image.
fn dataset(root: &Path) {
    write(&root.join("data.yaml"), "path: .\ntrain: images/train\nval: images/val\nnames: [cat, dog]\n");
    write_image(&root.join("images/train/000001.png"), 100, 50);
    write_image(&root.join("images/train/000002.jpg"), 64, 64);
    write_image(&root.join("images/train/7.png"), 10, 10);
    write(&root.join("labels/train/000001.txt"), "0 0.5 0.5 0.5 0.5\n\n1 0.25 0.2 0.1 0.2\n");
    write(&root.join("labels/train/000002.txt"), "");
    write_image(&root.join("images/val/a.png"), 20, 40);
    write(&root.join("labels/val/a.txt"), "1 0.5 0.5 1 1\r\n");
}

fn open(root: &Path) -> DatasetSplit {
    open_dataset(root).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn reads_boxes_classes_and_ids() {
    let d = TempDir::new("basic");
    dataset(&d.0);
    let s = open(&d.0);
    assert_eq!(s.class_names(), &["cat".to_string(), "dog".into()]);
    assert_eq!(s.train.category_ids(), &[0, 1]);
    let t = &s.train;
    assert_eq!(t.len(), 3);
    // Numeric stems become ids.
    assert_eq!((t.image_id(0), t.image_id(1), t.image_id(2)), (1, 2, 7));
    let a = t.load(0).unwrap();
    assert_eq!((a.image.width(), a.image.height()), (100, 50));
    assert_eq!(a.objects.len(), 2);
    assert_eq!((a.objects[0].class, a.objects[0].bbox), (0, BBox::new(25.0, 12.5, 75.0, 37.5)));
    assert_eq!(a.objects[1].class, 1);
    let b = a.objects[1].bbox;
    assert!(
        (b.x0 - 20.0).abs() < 1e-4
            && (b.y0 - 5.0).abs() < 1e-4
            && (b.x1 - 30.0).abs() < 1e-4
            && (b.y1 - 15.0).abs() < 1e-4
    );
    assert!(t.load(1).unwrap().objects.is_empty()); // empty label file: valid, no objects
    assert!(t.objects(2).unwrap().is_empty()); // no label file: kept, counted
    assert_eq!(s.skipped.unlabelled_images, 1);
    assert_eq!(s.skipped.images_skipped() + s.skipped.boxes_skipped(), 0);
    // Non-numeric stems: ids are positions.
    assert_eq!(s.val.image_id(0), 0);
    assert_eq!(s.val.load(0).unwrap().objects[0].bbox, BBox::new(0.0, 0.0, 20.0, 40.0));
    // Through the yaml file directly.
    assert_eq!(open_dataset(&d.0.join("data.yaml")).unwrap().train.len(), 3);
}

#[test]
fn class_name_files_and_roboflow_layout() {
    let d = TempDir::new("names");
    let r = d.0.join("rf");
    for split in ["train", "valid"] {
        write_image(&r.join(split).join("images/x.jpg"), 32, 32);
        write(&r.join(split).join("labels/x.txt"), "2 0.5 0.5 0.25 0.25\n");
    }
    write(&r.join("data.yaml"), "nc: 3\nnames:\n  0: a\n  1: b\n  2: c d\n");
    let s = open(&r);
    assert_eq!(s.class_names(), &["a".to_string(), "b".into(), "c d".into()]);
    assert_eq!((s.train.len(), s.val.len()), (1, 1));
    assert_eq!(s.val.objects(0).unwrap()[0].bbox, BBox::new(12.0, 12.0, 20.0, 20.0));
    std::fs::remove_file(r.join("data.yaml")).unwrap();
    write(&r.join("classes.txt"), "a\nb\nc\n\n");
    assert_eq!(open(&r).class_names(), &["a".to_string(), "b".into(), "c".into()]);
    std::fs::remove_file(r.join("classes.txt")).unwrap();
    write(&r.join("custom.yaml"), "names:\n  - a\n  - b\n  - c\n");
    assert_eq!(open(&r).num_classes(), 3);
    std::fs::remove_file(r.join("custom.yaml")).unwrap();
    let e = open_dataset(&r).unwrap_err().to_string();
    assert!(e.contains("no class names"), "{e}");
}

/// The error of the basic dataset with `000001.txt` replaced by `label`.
fn label_error(tag: &str, label: &str) -> String {
    let d = TempDir::new(tag);
    dataset(&d.0);
    let file = d.0.join("labels/train/000001.txt");
    write(&file, label);
    let e = open_dataset(&d.0).expect_err("expected an error").to_string();
    assert!(e.starts_with(&file.display().to_string()), "error does not name the label file: {e}");
    assert!(!e.contains('\n'), "not one line: {e}");
    e
}

#[test]
fn malformed_label_lines_are_errors_naming_file_and_line() {
    let e = label_error("fields", "0 0.5 0.5 0.5 0.5\n1 0.5 0.5 0.5\n");
    assert!(e.contains("line 2: expected 5 fields"), "{e}");
    let e = label_error("polygon", "0 0.1 0.1 0.2 0.1 0.2 0.2\n");
    assert!(e.contains("line 1:") && e.contains("segmentation"), "{e}");
    let e = label_error("number", "\n0 0.5 abc 0.5 0.5\n");
    assert!(e.contains("line 2: field 3 (`abc`) is not a finite number"), "{e}");
    let e = label_error("nan", "0 0.5 0.5 NaN 0.5\n");
    assert!(e.contains("line 1: field 4"), "{e}");
    let e = label_error("class", "0 0.5 0.5 0.5 0.5\n0 0.5 0.5 0.5 0.5\n2 0.5 0.5 0.5 0.5\n");
    assert!(e.contains("line 3: class id 2 is out of range"), "{e}");
    let e = label_error("negclass", "-1 0.5 0.5 0.5 0.5\n");
    assert!(e.contains("line 1: class id `-1`"), "{e}");
    let e = label_error("fracclass", "1.5 0.5 0.5 0.5 0.5\n");
    assert!(e.contains("line 1: class id `1.5`"), "{e}");
    // An integral float class id is accepted.
    let d = TempDir::new("floatclass");
    dataset(&d.0);
    write(&d.0.join("labels/train/000001.txt"), "1.0 0.5 0.5 0.5 0.5\n");
    assert_eq!(open(&d.0).train.objects(0).unwrap()[0].class, 1);
}

#[test]
fn boxes_outside_are_clipped_or_skipped_with_counts() {
    let d = TempDir::new("boxes");
    dataset(&d.0);
    write(
        &d.0.join("labels/train/000001.txt"),
        "0 0.0 0.5 0.5 0.5\n0 1.5 0.5 0.2 0.2\n1 0.5 0.5 0 0.3\n1 0.5 0.5 0.3 -0.1\n0 0.5 0.5 0.5 0.5\n",
    );
    let s = open(&d.0);
    let r = &s.skipped;
    assert_eq!((r.boxes_clipped, r.boxes_outside, r.boxes_degenerate), (1, 1, 2), "{r}");
    let objs = s.train.objects(0).unwrap();
    assert_eq!(objs.len(), 2);
    assert_eq!(objs[0].bbox, BBox::new(0.0, 12.5, 25.0, 37.5)); // clipped at the left edge
    assert!(r.examples.iter().any(|e| e.contains("000001.txt line 2")), "{:?}", r.examples);
}

#[test]
fn missing_corrupt_and_unsupported_files_are_counted() {
    let d = TempDir::new("files");
    dataset(&d.0);
    write(&d.0.join("labels/train/orphan.txt"), "0 0.5 0.5 0.1 0.1\n");
    std::fs::write(d.0.join("images/train/broken.jpg"), b"\xff\xd8 not really a jpeg").unwrap();
    std::fs::write(d.0.join("images/train/empty.png"), b"").unwrap();
    write(&d.0.join("labels/train/broken.txt"), "0 0.5 0.5 0.1 0.1\n");
    write(&d.0.join("images/train/notes.md"), "hello");
    write(&d.0.join("images/train/.DS_Store"), "x");
    let s = open(&d.0);
    let r = &s.skipped;
    assert_eq!((r.missing_images, r.unreadable_images, r.unsupported_files), (1, 2, 1), "{r}");
    assert_eq!(s.train.len(), 3);
    assert!(r.examples.iter().any(|e| e.contains("orphan.txt")), "{:?}", r.examples);
    assert!(r.examples.iter().any(|e| e.contains("broken.jpg")), "{:?}", r.examples);
}

#[test]
fn folder_and_yaml_errors() {
    let d = TempDir::new("folders");
    dataset(&d.0);
    write(&d.0.join("data.yaml"), "nc: 3\nnames: [cat, dog]\n");
    let e = open_dataset(&d.0).unwrap_err().to_string();
    assert!(e.contains("data.yaml: line 1:") && e.contains("nc: 3"), "{e}");
    write(&d.0.join("data.yaml"), "names:\n  0: cat\n  0: dog\n");
    let e = open_dataset(&d.0).unwrap_err().to_string();
    assert!(e.contains("data.yaml: line 3:"), "{e}");
    write(&d.0.join("data.yaml"), "names: [cat, dog]\n");
    std::fs::remove_dir_all(d.0.join("labels/val")).unwrap();
    let e = open_dataset(&d.0).unwrap_err().to_string();
    assert!(e.contains("labels") && e.contains("val") && e.contains("not found"), "{e}");
    std::fs::remove_dir_all(d.0.join("images/val")).unwrap();
    let e = open_dataset(&d.0).unwrap_err().to_string();
    assert!(e.contains("no validation images folder"), "{e}");
    // A split folder with no images at all.
    let d2 = TempDir::new("noimages");
    dataset(&d2.0);
    std::fs::remove_file(d2.0.join("images/val/a.png")).unwrap();
    let e = open_dataset(&d2.0).unwrap_err().to_string();
    assert!(e.contains("images/val") && e.contains("no readable"), "{e}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Any label file text gives a dataset or a one-line error naming that file: never a panic.
    #[test]
    fn arbitrary_label_text_never_panics(
        text in "([0-9]{1,2}|-1|x|1e9|nan|inf|0\\.5|1\\.5|-0\\.2| |\t|\n|\r\n){0,40}",
    ) {
        let d = TempDir::new("fuzz");
        dataset(&d.0);
        let file = d.0.join("labels/train/000001.txt");
        write(&file, &text);
        match open_dataset(&d.0) {
            Ok(s) => {
                for o in s.train.objects(0).unwrap() {
                    let b = o.bbox;
                    proptest::prop_assert!(b.is_valid() && b.x0 >= 0.0 && b.x1 <= 100.0 && b.y0 >= 0.0 && b.y1 <= 50.0);
                    proptest::prop_assert!(o.class < 2);
                }
            }
            Err(e) => {
                let e = e.to_string();
                proptest::prop_assert!(e.starts_with(&file.display().to_string()) && e.contains(": line "), "{}", e);
                proptest::prop_assert!(!e.contains('\n'));
            }
        }
    }

    /// Any `data.yaml` text parses or errors, never panics.
    #[test]
    fn arbitrary_yaml_never_panics(text in "(names:|nc:|  |- |\\[|\\]|\\{|\\}|,|:|'|\"|#|a|b c|0|1|\n){0,30}") {
        let _ = ela_models::detect::data::parse_yaml_names(&text, Path::new("data.yaml"));
    }

    /// Random bytes behind a PNG or JPEG signature: an error naming the file, never a panic.
    #[test]
    fn arbitrary_image_bytes_never_panic(jpeg in proptest::bool::ANY, body in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
        let d = TempDir::new("bytes");
        let p = d.0.join("x.img");
        let mut bytes = if jpeg { vec![0xff, 0xd8, 0xff, 0xe0] } else { b"\x89PNG\r\n\x1a\n".to_vec() };
        bytes.extend(body);
        std::fs::write(&p, bytes).unwrap();
        if let Err(e) = ela_models::detect::data::load_image(&p) {
            proptest::prop_assert!(e.to_string().contains("x.img"));
        }
    }
}
