//! COCO AP/AR and precision/recall/F1 on cases small enough to work out by hand, input
//! validation, the summary table, and COCO results files (round trip and malformed input).

use ela_core::Error;
use ela_models::detect::eval::{
    coco_evaluate, parse_coco_ground_truth, precision_recall_f1, read_coco_results, write_coco_results, EvalImage,
};
use ela_models::detect::{BBox, Detection, Object};
use std::path::PathBuf;

fn obj(class: usize, x0: f32, y0: f32, x1: f32, y1: f32) -> Object {
    Object::new(class, BBox::new(x0, y0, x1, y1))
}

fn det(class: usize, x0: f32, y0: f32, x1: f32, y1: f32, score: f32) -> Detection {
    Detection { class, bbox: BBox::new(x0, y0, x1, y1), score }
}

/// pycocotools' precision of a perfect prefix is `1 / (1 + 2^-52)`, not 1.
const ONE: f64 = 1.0 / (1.0 + f64::EPSILON);

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn perfect_detections_score_one() {
    let images: Vec<EvalImage> = (0..3u64)
        .map(|i| {
            let s = 10.0 * i as f32;
            let gt = vec![
                obj(0, s, s, s + 20.0, s + 20.0),
                obj(0, 100.0, 100.0, 250.0, 250.0),
                obj(1, 0.0, 0.0, 50.0, 50.0),
            ];
            let dets =
                gt.iter().map(|o| Detection { class: o.class, bbox: o.bbox, score: 0.5 + 0.1 * i as f32 }).collect();
            EvalImage::new(i, gt, dets)
        })
        .collect();
    let m = coco_evaluate(&images, 2).unwrap();
    for (i, v) in m.stats().iter().enumerate() {
        if i != 6 {
            assert!(close(*v, ONE) || *v == 1.0, "stat {i} = {v}");
        }
    }
    assert_eq!(m.per_class[1].ap_small, -1.0, "class 1 has no small objects");
    // AR1: one detection per image finds one of class 0's two objects per image.
    assert_eq!((m.per_class[0].ar1, m.per_class[1].ar1, m.ar1), (0.5, 1.0, 0.75));
}

#[test]
fn one_false_positive_above_one_true_positive() {
    // Ranking: FP (recall 0, precision 0), TP (recall 1, precision 1/2). Made monotone, the
    // precision is 1/2 everywhere, at every IoU threshold: AP = 0.5.
    let gt = vec![obj(0, 0.0, 0.0, 40.0, 40.0)];
    let dets = vec![det(0, 100.0, 100.0, 140.0, 140.0, 0.9), det(0, 0.0, 0.0, 40.0, 40.0, 0.8)];
    let m = coco_evaluate(&[EvalImage::new(7, gt, dets)], 1).unwrap();
    let half = 1.0 / (2.0 + f64::EPSILON);
    assert!(close(m.ap, half) && close(m.ap50, half) && close(m.ap75, half), "{m:?}");
    assert_eq!(m.ar100, 1.0);
    assert_eq!(m.ar10, 1.0);
    assert_eq!(m.ar1, 0.0, "with one detection per image only the false positive is left");
    assert!(close(m.ap_medium, half));
    assert_eq!(m.ap_small, -1.0);
    assert_eq!(m.ap_large, -1.0);
}

#[test]
fn one_true_positive_and_a_missed_object() {
    // Ranking: TP (recall 1/2, precision 1), FP (recall 1/2, precision 1/2). Recall thresholds
    // 0, 0.01, ..., 0.50 read precision 1; the 50 above are never reached and read 0.
    let gt = vec![obj(0, 0.0, 0.0, 40.0, 40.0), obj(0, 200.0, 0.0, 240.0, 40.0)];
    let dets = vec![det(0, 0.0, 0.0, 40.0, 40.0, 0.9), det(0, 100.0, 100.0, 140.0, 140.0, 0.8)];
    let m = coco_evaluate(&[EvalImage::new(1, gt, dets)], 1).unwrap();
    assert!(close(m.ap, 51.0 / 101.0 * ONE), "{}", m.ap);
    assert_eq!(m.ar100, 0.5);
}

#[test]
fn classes_without_ground_truth_are_left_out_of_the_means() {
    let gt = vec![obj(0, 0.0, 0.0, 40.0, 40.0), obj(1, 100.0, 0.0, 140.0, 40.0)];
    // Class 0 found perfectly, class 1 missed, class 2 has only a detection.
    let dets = vec![det(0, 0.0, 0.0, 40.0, 40.0, 0.9), det(2, 200.0, 0.0, 240.0, 40.0, 0.8)];
    let m = coco_evaluate(&[EvalImage::new(1, gt, dets)], 3).unwrap();
    assert!(close(m.per_class[0].ap, ONE));
    assert_eq!(m.per_class[1].ap, 0.0);
    assert_eq!(m.per_class[2].ap, -1.0);
    assert_eq!(m.per_class[2].ar100, -1.0);
    assert!(close(m.ap, ONE / 2.0));
    assert_eq!((m.per_class[1].num_gt, m.per_class[1].num_dets, m.per_class[2].num_dets), (1, 0, 1));
    // No ground truth anywhere: everything undefined.
    let none = coco_evaluate(&[EvalImage::new(1, vec![], vec![det(0, 0.0, 0.0, 1.0, 1.0, 0.5)])], 1).unwrap();
    assert!(none.stats().iter().all(|&v| v == -1.0));
    assert!(coco_evaluate(&[], 2).unwrap().stats().iter().all(|&v| v == -1.0));
}

#[test]
fn detections_in_a_crowd_are_ignored() {
    let mut crowd = obj(0, 0.0, 0.0, 200.0, 200.0);
    crowd.crowd = true;
    let gt = vec![obj(0, 300.0, 0.0, 340.0, 40.0), crowd];
    // Two detections inside the crowd outrank the true positive; ignored, they cost nothing.
    let dets = vec![
        det(0, 10.0, 10.0, 30.0, 30.0, 0.9),
        det(0, 50.0, 50.0, 90.0, 90.0, 0.8),
        det(0, 300.0, 0.0, 340.0, 40.0, 0.7),
    ];
    let m = coco_evaluate(&[EvalImage::new(1, gt, dets)], 1).unwrap();
    assert!(close(m.ap, ONE));
    assert_eq!(m.per_class[0].num_gt, 1);
}

#[test]
fn image_order_does_not_matter_but_ids_do() {
    let a = EvalImage::new(5, vec![obj(0, 0.0, 0.0, 40.0, 40.0)], vec![det(0, 0.0, 0.0, 40.0, 40.0, 0.5)]);
    let b = EvalImage::new(2, vec![obj(0, 0.0, 0.0, 40.0, 40.0)], vec![det(0, 60.0, 60.0, 90.0, 90.0, 0.5)]);
    let ab = coco_evaluate(&[a.clone(), b.clone()], 1).unwrap();
    assert_eq!(ab, coco_evaluate(&[b.clone(), a.clone()], 1).unwrap());
    // Equal scores: image 2's false positive ranks first (ids ascending), so precision at the
    // true positive is 1/2 and AP = 0.5 * 0.5 (recall only reaches 1/2).
    assert!(close(ab.ap50, 51.0 / 101.0 / (2.0 + f64::EPSILON)), "{}", ab.ap50);
}

#[test]
fn ground_truth_areas_decide_the_size_bucket() {
    // A 40 x 40 box (medium) whose mask area is 900 (small).
    let mut im = EvalImage::new(1, vec![obj(0, 0.0, 0.0, 40.0, 40.0)], vec![det(0, 0.0, 0.0, 40.0, 40.0, 0.5)]);
    let by_box = coco_evaluate(std::slice::from_ref(&im), 1).unwrap();
    assert_eq!((by_box.ap_small, by_box.ap_medium > 0.0), (-1.0, true));
    im.gt_areas = Some(vec![900.0]);
    let by_area = coco_evaluate(std::slice::from_ref(&im), 1).unwrap();
    // Small now holds the object; the detection matched it, so it is a true positive there.
    assert!(close(by_area.ap_small, ONE));
    assert_eq!(by_area.ap_medium, -1.0);
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let ok_gt = vec![obj(0, 0.0, 0.0, 10.0, 10.0)];
    let cases: Vec<(Vec<EvalImage>, &str)> = vec![
        (vec![EvalImage::new(1, vec![obj(3, 0.0, 0.0, 1.0, 1.0)], vec![])], "class 3"),
        (vec![EvalImage::new(1, vec![], vec![det(2, 0.0, 0.0, 1.0, 1.0, 0.5)])], "class 2"),
        (vec![EvalImage::new(1, ok_gt.clone(), vec![det(0, 0.0, 0.0, 1.0, 1.0, f32::NAN)])], "NaN score"),
        (vec![EvalImage::new(1, ok_gt.clone(), vec![det(0, f32::NAN, 0.0, 1.0, 1.0, 0.5)])], "non-finite box"),
        (vec![EvalImage::new(4, ok_gt.clone(), vec![]), EvalImage::new(4, vec![], vec![])], "image id 4"),
        (vec![EvalImage { gt_areas: Some(vec![]), ..EvalImage::new(1, ok_gt.clone(), vec![]) }], "gt_areas"),
    ];
    for (images, needle) in cases {
        match coco_evaluate(&images, 2) {
            Err(e @ Error::InvalidArgument { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(needle) && !msg.contains('\n'), "{msg}");
            }
            other => panic!("expected an InvalidArgument error mentioning {needle}, got {other:?}"),
        }
    }
}

#[test]
fn summary_table_has_pycocotools_lines() {
    let gt = vec![obj(0, 0.0, 0.0, 40.0, 40.0)];
    let dets = vec![det(0, 100.0, 100.0, 140.0, 140.0, 0.9), det(0, 0.0, 0.0, 40.0, 40.0, 0.8)];
    let m = coco_evaluate(&[EvalImage::new(7, gt, dets)], 2).unwrap();
    let table = m.summary_table(&["person".to_string()]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0], " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.500");
    assert_eq!(lines[1], " Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ] = 0.500");
    assert_eq!(lines[3], " Average Precision  (AP) @[ IoU=0.50:0.95 | area= small | maxDets=100 ] = -1.000");
    assert_eq!(lines[6], " Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ] = 0.000");
    assert_eq!(lines[11], " Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ] = -1.000");
    assert!(lines[14].starts_with("person ") && lines[14].contains("0.500"), "{table}");
    assert!(lines[15].starts_with("class 1") && lines[15].ends_with('-'), "{table}");
}

#[test]
fn precision_recall_f1_by_hand() {
    let mut crowd = obj(0, 300.0, 0.0, 400.0, 100.0);
    crowd.crowd = true;
    let gt = vec![obj(0, 0.0, 0.0, 40.0, 40.0), obj(1, 100.0, 0.0, 140.0, 40.0), crowd];
    let dets = vec![
        det(0, 0.0, 0.0, 40.0, 40.0, 0.9),     // TP
        det(0, 100.0, 0.0, 140.0, 40.0, 0.8),  // right place, wrong class: FP
        det(0, 0.0, 0.0, 40.0, 20.0, 0.7),     // duplicate (IoU 0.5 exactly, object taken): FP
        det(0, 310.0, 10.0, 350.0, 50.0, 0.6), // inside the crowd: ignored
        det(1, 100.0, 0.0, 140.0, 20.0, 0.2),  // IoU exactly 0.5 with object 1: TP if counted
    ];
    let images = [EvalImage::new(1, gt, dets)];
    let p = precision_recall_f1(&images, 0.5, 0.5);
    assert_eq!((p.tp, p.fp, p.fn_), (1, 2, 1));
    assert!(close(p.precision, 1.0 / 3.0) && close(p.recall, 0.5) && close(p.f1, 0.4), "{p:?}");
    let p = precision_recall_f1(&images, 0.1, 0.5);
    assert_eq!((p.tp, p.fp, p.fn_), (2, 2, 0));
    assert!(close(p.precision, 0.5) && close(p.recall, 1.0) && close(p.f1, 2.0 / 3.0), "{p:?}");
    // A stricter IoU loses the half-box match.
    assert_eq!(precision_recall_f1(&images, 0.1, 0.6).tp, 1);
    // Nothing at all: zeros, not NaN.
    let empty = precision_recall_f1(&[EvalImage::new(1, vec![], vec![])], 0.5, 0.5);
    assert_eq!((empty.precision, empty.recall, empty.f1), (0.0, 0.0, 0.0));
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ela-detect-eval-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn results_file_round_trip() {
    let dir = temp_dir("roundtrip");
    let path = dir.join("results.json");
    let images = vec![
        (42u64, vec![det(0, 1.5, 2.25, 11.5, 22.25, 0.1), det(2, 0.0, 0.0, 640.0, 480.0, 0.123_456_79)]),
        (7u64, vec![]),
        (9u64, vec![det(1, 100.0, 50.0, 101.0, 51.0, 1e-7)]),
    ];
    let cats = [1u64, 3, 90];
    write_coco_results(&path, &images, &cats).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains(r#"{"image_id":42,"category_id":90,"bbox":[0.0,0.0,640.0,480.0],"score":0.12345679}"#),
        "{text}"
    );
    let back = read_coco_results(&path, &cats).unwrap();
    let want: Vec<(u64, Detection)> = images.iter().flat_map(|(id, d)| d.iter().map(move |d| (*id, *d))).collect();
    assert_eq!(back, want);
    // Nothing but the file is left in the directory (the temporary was renamed).
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    // An empty list is a valid file too.
    write_coco_results(&path, &[], &cats).unwrap();
    assert!(read_coco_results(&path, &cats).unwrap().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn results_write_errors_name_the_file() {
    let dir = temp_dir("write-errors");
    let path = dir.join("out.json");
    let e = write_coco_results(&path, &[(1, vec![det(5, 0.0, 0.0, 1.0, 1.0, 0.5)])], &[1, 2]).unwrap_err();
    assert!(e.to_string().contains("out.json") && e.to_string().contains("class 5"), "{e}");
    let e = write_coco_results(&path, &[(1, vec![det(0, 0.0, 0.0, 1.0, 1.0, f32::INFINITY)])], &[1]).unwrap_err();
    assert!(e.to_string().contains("out.json"), "{e}");
    assert!(!path.exists(), "a failed write leaves no file");
    let missing = dir.join("no/such/dir/out.json");
    let e = write_coco_results(&missing, &[], &[1]).unwrap_err();
    assert!(matches!(e, Error::Io { .. }) && e.to_string().contains("no/such/dir/out.json"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn malformed_results_files_are_one_line_errors_naming_the_file() {
    let dir = temp_dir("malformed");
    let cases: &[(&str, &str)] = &[
        ("[{\"image_id\": 1,", "invalid JSON"),
        ("{\"image_id\": 1}", "not an array"),
        (r#"[{"image_id":1,"category_id":1,"bbox":[0,0,1,1]}]"#, "entry 0: missing field `score`"),
        (
            r#"[{"image_id":1,"category_id":1,"bbox":[0,0,1,1],"score":0.5},{"image_id":1,"category_id":1,"bbox":[0,0,1],"score":0.5}]"#,
            "entry 1: bbox has 3 numbers",
        ),
        (r#"[{"image_id":1,"category_id":4,"bbox":[0,0,1,1],"score":0.5}]"#, "category_id 4 is not one of [1, 3]"),
        (r#"[{"image_id":1,"category_id":1,"bbox":[0,0,-1,1],"score":0.5}]"#, "negative width"),
        (r#"[{"image_id":1,"category_id":1,"bbox":[0,0,1,1],"score":"high"}]"#, "entry 0: invalid type"),
        (r#"[{"image_id":-1,"category_id":1,"bbox":[0,0,1,1],"score":0.5}]"#, "entry 0"),
        (r#"[{"image_id":1,"category_id":1,"bbox":[0,0,1,1],"score":1e300}]"#, "not a finite f32"),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad_{i}.json"));
        std::fs::write(&path, text).unwrap();
        let e = read_coco_results(&path, &[1, 3]).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::Io { .. }), "{msg}");
        assert!(
            msg.contains(&format!("bad_{i}.json")) && msg.contains(needle) && !msg.contains('\n'),
            "case {i}: {msg}"
        );
    }
    let e = read_coco_results(&dir.join("absent.json"), &[1]).unwrap_err();
    assert!(e.to_string().contains("absent.json"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ground_truth_reader_checks_references() {
    let good = r#"{"images":[{"id":3},{"id":1}],"categories":[{"id":9,"name":"b"},{"id":2,"name":"a"}],
        "annotations":[{"id":1,"image_id":1,"category_id":9,"bbox":[0,0,10,20],"iscrowd":0},
                       {"id":2,"image_id":1,"category_id":2,"bbox":[5,5,10,10],"area":50.5,"iscrowd":1}]}"#;
    let gt = parse_coco_ground_truth(good, "gt.json").unwrap();
    assert_eq!(gt.category_ids, vec![2, 9]);
    assert_eq!(gt.category_names, vec!["a".to_string(), "b".to_string()]);
    assert_eq!(gt.images.len(), 2);
    let im = &gt.images[1];
    assert_eq!(im.image_id, 1);
    assert_eq!(im.gt[0], Object::new(1, BBox::new(0.0, 0.0, 10.0, 20.0)));
    assert!(im.gt[1].crowd && im.gt[1].class == 0);
    assert_eq!(im.gt_areas, Some(vec![200.0, 50.5]));
    let e = gt.with_detections(&[(5, det(0, 0.0, 0.0, 1.0, 1.0, 0.5))]).unwrap_err();
    assert!(e.to_string().contains("image 5"), "{e}");
    let bad = good.replace("\"image_id\":1,\"category_id\":9", "\"image_id\":8,\"category_id\":9");
    let e = parse_coco_ground_truth(&bad, "gt.json").unwrap_err();
    assert!(e.to_string().starts_with("gt.json: annotations[0]: image_id 8"), "{e}");
}
