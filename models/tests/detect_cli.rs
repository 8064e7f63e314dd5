//! `ela detect` end to end: train -> checkpoint -> predict -> eval on the embedded set, resume
//! after a kill continuing bit for bit, and bad input as one-line errors.

mod bin;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ela_models::detect::data::{save_png, Split, SynthConfig, SynthSource};

const TINY: &[&str] = &[
    "detect",
    "train",
    "--img",
    "64",
    "--synth-train",
    "24",
    "--synth-val",
    "6",
    "--steps",
    "6",
    "--warmup",
    "2",
    "--batch",
    "3",
    "--eval-every",
    "3",
    "--checkpoint-every",
    "2",
];

fn ela(args: &[&str]) -> Output {
    Command::new(bin::ela_exe()).args(args).output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("ela-detect-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

/// Every metrics record as its JSON text with the timing field removed (it differs run to run).
fn records(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("images_per_sec");
            v.to_string()
        })
        .collect()
}

#[test]
fn train_predict_eval_round_trip() {
    let run = tmp("run");
    let out = ok(&ela(&[TINY, &["--out", run.to_str().unwrap()]].concat()));
    assert!(out.contains("validation: mAP@[.5:.95]"), "{out}");
    for f in ["checkpoint.safetensors", "metrics.jsonl", "config.json", "loss.svg", "ap.svg"] {
        assert!(run.join(f).exists(), "{f} missing");
    }

    // Two images of the validation split, as files a user would have.
    let images = tmp("images");
    std::fs::create_dir_all(&images).unwrap();
    let src =
        SynthSource::new(&SynthConfig { train: 24, val: 6, image_size: 64, ..Default::default() }, Split::Val).unwrap();
    for i in 0..2 {
        save_png(&images.join(format!("img{i}.png")), &src.render(i).unwrap().sample.image).unwrap();
    }
    let pred = run.join("pred");
    let out = ok(&ela(&[
        "detect",
        "predict",
        "--checkpoint",
        run.to_str().unwrap(),
        "--image",
        images.to_str().unwrap(),
        "--out",
        pred.to_str().unwrap(),
        "--conf",
        "0.0",
    ]));
    assert!(out.contains("img0.png") && out.contains("img1.png"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pred.join("predictions.json")).unwrap()).unwrap();
    let list = json.as_array().unwrap();
    assert_eq!(list.len(), 2);
    for rec in list {
        assert_eq!((rec["width"].as_u64(), rec["height"].as_u64()), (Some(64), Some(64)));
        // At confidence 0 every decoded box survives up to NMS, so there are some.
        let dets = rec["detections"].as_array().unwrap();
        assert!(!dets.is_empty());
        for d in dets {
            let b: Vec<f64> = d["bbox_xyxy"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            assert!(b[0] >= 0.0 && b[1] >= 0.0 && b[2] <= 64.0 && b[3] <= 64.0 && b[0] < b[2] && b[1] < b[3]);
        }
    }
    for i in 0..2 {
        let img = image::open(pred.join(format!("img{i}.png"))).unwrap();
        assert_eq!((img.width(), img.height()), (64, 64));
    }

    // The image folder as --out would overwrite the inputs with their annotated copies: refused,
    // and the images are left as they were.
    let before: Vec<Vec<u8>> = (0..2).map(|i| std::fs::read(images.join(format!("img{i}.png"))).unwrap()).collect();
    let refused = ela(&[
        "detect",
        "predict",
        "--checkpoint",
        run.to_str().unwrap(),
        "--image",
        images.to_str().unwrap(),
        "--out",
        images.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("would overwrite the input image"), "{err}");
    for (i, bytes) in before.iter().enumerate() {
        assert_eq!(&std::fs::read(images.join(format!("img{i}.png"))).unwrap(), bytes);
    }

    let results = run.join("results.json");
    let out =
        ok(&ela(&["detect", "eval", "--checkpoint", run.to_str().unwrap(), "--results", results.to_str().unwrap()]));
    assert!(out.contains("Average Precision") && out.contains("F1"), "{out}");
    let res: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap();
    assert!(res.as_array().is_some_and(|a| !a.is_empty()));
    std::fs::remove_dir_all(&run).unwrap();
    std::fs::remove_dir_all(&images).unwrap();
}

#[test]
fn killed_run_resumes_bit_for_bit() {
    let (full, cut) = (tmp("full"), tmp("cut"));
    ok(&ela(&[TINY, &["--out", full.to_str().unwrap()]].concat()));
    let killed = ela(&[TINY, &["--out", cut.to_str().unwrap(), "--abort-after", "3"]].concat());
    assert!(!killed.status.success(), "the run should have aborted");
    ok(&ela(&["detect", "train", "--resume", "--out", cut.to_str().unwrap()]));
    let (a, b) = (records(&full), records(&cut));
    // The killed run logged steps 1-3, its last checkpoint was at step 2, so the resume logs 3-6
    // again: the last record of each step must equal the uninterrupted run's.
    let last = |r: &[String]| {
        let mut m = std::collections::BTreeMap::new();
        for l in r {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            m.insert(v["step"].as_i64().unwrap(), l.clone());
        }
        m
    };
    assert_eq!(last(&a), last(&b));
    let bytes = |d: &Path| std::fs::read(d.join("checkpoint.safetensors")).unwrap();
    assert_eq!(bytes(&full), bytes(&cut), "final checkpoints differ");
    std::fs::remove_dir_all(&full).unwrap();
    std::fs::remove_dir_all(&cut).unwrap();
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let cases: &[&[&str]] = &[
        &["detect", "train", "--arch", "resnet", "--out", "/tmp/ela-never"],
        &["detect", "train", "--neck", "magic", "--out", "/tmp/ela-never"],
        &["detect", "train", "--img", "100", "--out", "/tmp/ela-never"],
        &["detect", "train", "--lr", "nan", "--out", "/tmp/ela-never"],
        &["detect", "train", "--data", "/definitely/not/here", "--out", "/tmp/ela-never"],
        &["detect", "train", "--resume", "--out", "/definitely/not/here"],
        &["detect", "predict", "--checkpoint", "/definitely/not/here", "--image", "x.png"],
        &["detect", "eval", "--checkpoint", "/definitely/not/here"],
        &["detect", "predict", "--checkpoint", "x", "--image", "y", "--conf", "2"],
    ];
    for args in cases {
        let out = ela(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?} printed more than one line: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    assert!(!Path::new("/tmp/ela-never").exists());
}
