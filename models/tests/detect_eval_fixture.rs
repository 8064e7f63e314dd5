//! Our COCO evaluation against pycocotools' numbers on the fixture files written by
//! benches/peers/coco_eval_fixture.py (see its header for what each file covers).

use ela_models::detect::eval::{
    coco_evaluate, parse_coco_ground_truth, parse_coco_results, read_coco_results, write_coco_results, CocoMetrics,
    EvalImage, STAT_NAMES,
};
use ela_models::detect::Detection;
use std::collections::BTreeMap;
use std::path::Path;

/// What expected*.json holds.
struct Expected {
    stats: Vec<f64>,
    /// (category id, 12 stats), ascending category id.
    per_class: Vec<(u64, Vec<f64>)>,
}

fn parse_expected(json: &str) -> Expected {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let nums =
        |x: &serde_json::Value| -> Vec<f64> { x.as_array().unwrap().iter().map(|n| n.as_f64().unwrap()).collect() };
    Expected {
        stats: nums(&v["stats"]),
        per_class: v["per_class"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["category_id"].as_u64().unwrap(), nums(&c["stats"])))
            .collect(),
    }
}

/// Evaluate `gt` + `dets` with our code; also return the category ids and images.
fn ours(gt: &str, dets: &str) -> (CocoMetrics, Vec<u64>, Vec<EvalImage>) {
    let gt = parse_coco_ground_truth(gt, "gt.json").unwrap();
    let dets = parse_coco_results(dets, "dets.json", &gt.category_ids).unwrap();
    let images = gt.with_detections(&dets).unwrap();
    let m = coco_evaluate(&images, gt.category_ids.len()).unwrap();
    (m, gt.category_ids, images)
}

/// Asserts every number within 1e-6; returns the largest difference.
fn assert_matches(case: &str, m: &CocoMetrics, category_ids: &[u64], e: &Expected) -> f64 {
    let mut worst = 0.0f64;
    let mut close = |a: f64, b: f64| {
        worst = worst.max((a - b).abs());
        (a - b).abs() <= 1e-6
    };
    for (i, (a, b)) in m.stats().iter().zip(&e.stats).enumerate() {
        assert!(close(*a, *b), "{case}: {} is {a}, pycocotools {b}", STAT_NAMES[i]);
    }
    assert_eq!(m.per_class.len(), e.per_class.len(), "{case}: class count");
    for (c, (cat, want)) in m.per_class.iter().zip(&e.per_class) {
        assert_eq!(category_ids[c.class], *cat, "{case}: class order");
        for (i, (a, b)) in c.stats().iter().zip(want).enumerate() {
            assert!(close(*a, *b), "{case}: category {cat} {} is {a}, pycocotools {b}", STAT_NAMES[i]);
        }
    }
    worst
}

#[test]
fn main_fixture_matches_pycocotools() {
    let (m, cats, images) =
        ours(include_str!("fixtures/coco_eval/gt.json"), include_str!("fixtures/coco_eval/dets.json"));
    let e = parse_expected(include_str!("fixtures/coco_eval/expected.json"));
    assert_matches("main", &m, &cats, &e);
    // The fixture does what its header says in the places this test relies on.
    let by_id: BTreeMap<u64, &EvalImage> = images.iter().map(|im| (im.image_id, im)).collect();
    assert!(by_id[&104].dets.iter().filter(|d| d.class == 1).count() > 100);
    assert!(by_id[&102].dets.is_empty() && by_id[&103].gt.is_empty());
    assert!(images.iter().any(|im| im
        .gt
        .iter()
        .zip(im.gt_areas.as_ref().unwrap())
        .any(|(o, a)| { (o.bbox.area() as f64 - a).abs() > 1.0 })));
    // Undefined and defined-but-zero classes, as pycocotools has them.
    assert_eq!(m.per_class[3].ap, -1.0);
    assert_eq!(m.per_class[2].ap, 0.0);
    assert!(m.per_class.iter().all(|c| c.ap == -1.0 || (0.0..=1.0).contains(&c.ap)));
}

#[test]
fn crowd_fixture_matches_pycocotools() {
    let (m, cats, images) =
        ours(include_str!("fixtures/coco_eval/gt_crowd.json"), include_str!("fixtures/coco_eval/dets_crowd.json"));
    assert!(images.iter().any(|im| im.gt.iter().any(|o| o.crowd)));
    let e = parse_expected(include_str!("fixtures/coco_eval/expected_crowd.json"));
    assert_matches("crowd", &m, &cats, &e);
}

/// Writing our detections as a results file and reading them back changes nothing.
#[test]
fn results_file_round_trip_keeps_the_metrics() {
    let (m, cats, images) =
        ours(include_str!("fixtures/coco_eval/gt.json"), include_str!("fixtures/coco_eval/dets.json"));
    let dir = std::env::temp_dir().join(format!("ela-detect-eval-fixture-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("results.json");
    let per_image: Vec<(u64, Vec<Detection>)> = images.iter().map(|im| (im.image_id, im.dets.clone())).collect();
    write_coco_results(&path, &per_image, &cats).unwrap();
    let back = read_coco_results(&path, &cats).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let flat: Vec<(u64, Detection)> = per_image.iter().flat_map(|(id, d)| d.iter().map(move |d| (*id, *d))).collect();
    assert_eq!(back, flat);
    let mut again = images.clone();
    for im in &mut again {
        im.dets = back.iter().filter(|(id, _)| *id == im.image_id).map(|(_, d)| *d).collect();
    }
    assert_eq!(coco_evaluate(&again, cats.len()).unwrap(), m);
}

/// Many random cases: `python3 benches/peers/coco_eval_fixture.py --stress 200 --out DIR`, then
/// `ELA_COCO_EVAL_STRESS_DIR=DIR cargo test --release -p ela-models --test detect_eval_fixture
/// -- --ignored`.
#[test]
#[ignore = "needs ELA_COCO_EVAL_STRESS_DIR from benches/peers/coco_eval_fixture.py --stress"]
fn stress_cases_match_pycocotools() {
    let dir = std::env::var("ELA_COCO_EVAL_STRESS_DIR").expect("set ELA_COCO_EVAL_STRESS_DIR");
    let dir = Path::new(&dir);
    let (mut n, mut worst) = (0, 0.0f64);
    while dir.join(format!("gt_stress_{n}.json")).exists() {
        let read = |what: &str| std::fs::read_to_string(dir.join(format!("{what}_stress_{n}.json"))).unwrap();
        let (m, cats, _) = ours(&read("gt"), &read("dets"));
        worst = worst.max(assert_matches(&format!("stress {n}"), &m, &cats, &parse_expected(&read("expected"))));
        n += 1;
    }
    assert!(n > 0, "no stress cases in {}", dir.display());
    eprintln!("{n} stress cases match; largest difference {worst:e}");
}
