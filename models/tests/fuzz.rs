//! Property-driven fuzzing of every reader of user input: the JSON parser (checkpoint headers,
//! config.json), the model configurations stored in checkpoints, the safetensors reader with
//! structured headers, the text loader, the COCO JSON and YOLO label readers, and the command
//! line. Each target feeds mutated valid inputs and arbitrary ones and requires an `Ok` or an
//! `Err`, never a panic, abort or hang. (Byte-level damage to whole checkpoint files is fuzzed
//! in nn/tests/checkpoint_format.rs.)
//!
//! Cases per target: `ELA_FUZZ_CASES` (default 48, a few seconds in all); a longer run is
//! `ELA_FUZZ_CASES=5000 cargo test --release -p ela-models --test fuzz`. A failing case is
//! shrunk by proptest and written under `models/tests/fuzz.proptest-regressions`, which is
//! committed so it is replayed first on every later run; crashes found are also kept as named
//! tests at the end of this file.

mod bin;

use bin::TempDir;

use std::path::Path;

use clap::Parser;
use ela_core::{Cpu, Rng};
use ela_models::cli::{Cli, Command};
use ela_models::data::TextDataset;
use ela_models::detect::data::{open_dataset, CocoSource, SkipReport};
use ela_models::detect::eval::coco_json::{parse_coco_ground_truth, parse_coco_results};
use ela_models::detect::model::DetectorConfig;
use ela_models::lm::size::param_count;
use ela_models::lm::LmConfig;
use ela_nn::checkpoint::{self, json::Json};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

fn cases() -> u32 {
    std::env::var("ELA_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(48)
}

/// Apply byte edits (position, value) and a truncation to `text`, keeping it a `String`.
fn mutate(text: &str, edits: &[(prop::sample::Index, u8)], cut: prop::sample::Index) -> String {
    let mut b = text.as_bytes().to_vec();
    for (i, v) in edits {
        if !b.is_empty() {
            let i = i.index(b.len());
            b[i] = *v;
        }
    }
    b.truncate(cut.index(b.len() + 1));
    String::from_utf8_lossy(&b).into_owned()
}

fn edits() -> impl Strategy<Value = Vec<(prop::sample::Index, u8)>> {
    prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6)
}

/// Numbers a user or a damaged file may supply.
fn wild_number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        (0u64..5000).prop_map(|n| n.to_string()),
        Just("18446744073709551615".to_string()),
        Just("18446744073709551616".to_string()),
        Just("-1".to_string()),
        Just("nan".to_string()),
        Just("inf".to_string()),
        Just("1e308".to_string()),
        Just("0".to_string()),
        Just("".to_string()),
        "[a-z0-9.:-]{0,6}",
    ]
}

const COCO: &str = r#"{"images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 6}],
 "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 3], "iscrowd": 0, "area": 12}],
 "categories": [{"id": 3, "name": "cat"}]}"#;

const RESULTS: &str = r#"[{"image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 3], "score": 0.9}]"#;

fn write_png(path: &Path, w: u32, h: u32) {
    image::RgbImage::from_pixel(w, h, image::Rgb([90, 60, 30])).save(path).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        // Integration tests have no lib.rs for proptest's default lookup: name the file.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("tests/fuzz.proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    /// The JSON reader: arbitrary text, and mutations of a checkpoint header.
    #[test]
    fn json_reader(text in ".{0,64}", e in edits(), cut in any::<prop::sample::Index>()) {
        let _ = Json::parse(&text);
        let header = r#"{"__metadata__":{"format":"x"},"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}"#;
        if let Ok(j) = Json::parse(&mutate(header, &e, cut)) {
            // What parses prints and parses back to the same value.
            prop_assert_eq!(Json::parse(&j.to_json_string()).ok(), Some(j));
        }
    }

    /// The safetensors reader with well-formed JSON but arbitrary dtypes, shapes and offsets.
    #[test]
    fn safetensors_headers(dtype in prop_oneof![Just("F32".to_string()), Just("U8".to_string()), Just("I64".to_string()), "[A-Z0-9]{0,4}"],
                           shape in prop::collection::vec(prop_oneof![0u64..5, any::<u64>()], 0..4),
                           begin in prop_oneof![0u64..64, any::<u64>()], end in prop_oneof![0u64..64, any::<u64>()],
                           data_len in 0usize..64) {
        let shape: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let header = format!(
            r#"{{"t":{{"dtype":"{dtype}","shape":[{}],"data_offsets":[{begin},{end}]}}}}"#, shape.join(",")
        );
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + data_len, 0);
        let _ = checkpoint::from_bytes(&bytes, "fuzz", &Cpu);
    }

    /// The model configurations stored in checkpoints: any value for any key. What parses is
    /// a valid configuration whose size can be counted (or refused) without building it.
    #[test]
    fn stored_configs(key in 0usize..19, value in wild_number()) {
        let mut pairs = LmConfig::small().to_pairs();
        let k = key % pairs.len();
        pairs[k].1 = value.clone();
        if let Ok(cfg) = LmConfig::from_pairs(|q| pairs.iter().find(|p| p.0 == q).map(|p| p.1.clone())) {
            prop_assert!(cfg.validate().is_ok());
            let _ = param_count(&cfg);
        }
        let mut det = DetectorConfig::default().to_pairs();
        let k = key % det.len();
        det[k].1 = value;
        if let Ok(cfg) = DetectorConfig::from_pairs(|q| det.iter().find(|p| p.0 == q).map(|p| p.1.clone())) {
            let _ = ela_models::detect::model::component_report(&cfg);
        }
    }

    /// The text loader: any bytes, any split and window.
    #[test]
    fn text_loader(bytes in prop::collection::vec(any::<u8>(), 0..300), frac in prop_oneof![0.0f64..1.0, Just(f64::NAN)],
                   seq in 0usize..40, batch in 1usize..5, seed in any::<u64>()) {
        let tokens = ela_models::data::ByteTokenizer.encode_bytes(&bytes);
        if let Ok(ds) = TextDataset::split(tokens, frac, seq) {
            let b = ds.train_batch(batch, seq, &mut Rng::new(seed)).unwrap();
            prop_assert_eq!(b.inputs.len(), batch * seq);
            prop_assert!(b.inputs.iter().all(|&t| t < 256));
            prop_assert!(ds.val_batches(batch, seq, 3).is_ok());
            // A window longer than the split is refused by the batch methods themselves.
            prop_assert!(ds.train_batch(batch, ds.train.len(), &mut Rng::new(seed)).is_err());
        }
    }

    /// COCO ground truth and results JSON, parsed from text and opened as a dataset.
    #[test]
    fn coco_json(e in edits(), cut in any::<prop::sample::Index>()) {
        let gt = mutate(COCO, &e, cut);
        let _ = parse_coco_ground_truth(&gt, "fuzz");
        let _ = parse_coco_results(&mutate(RESULTS, &e, cut), "fuzz", &[3]);
        let dir = TempDir::new("coco");
        write_png(&dir.0.join("a.png"), 8, 6);
        std::fs::write(dir.0.join("gt.json"), &gt).unwrap();
        if let Ok(src) = CocoSource::open(&dir.0.join("gt.json"), Some(&dir.0), &mut SkipReport::default()) {
            for i in 0..ela_models::detect::data::DetectionSource::len(&src) {
                let _ = ela_models::detect::data::DetectionSource::objects(&src, i);
            }
        }
    }

    /// YOLO label files: lines of arbitrary tokens, wild numbers included.
    #[test]
    fn yolo_labels(lines in prop::collection::vec(prop::collection::vec(wild_number(), 0..7), 0..5),
                   raw in ".{0,40}") {
        let dir = TempDir::new("yolo");
        for sub in ["images/train", "images/val", "labels/train", "labels/val"] {
            std::fs::create_dir_all(dir.0.join(sub)).unwrap();
        }
        std::fs::write(dir.0.join("data.yaml"), "path: .\ntrain: images/train\nval: images/val\nnames: [a, b]\n").unwrap();
        write_png(&dir.0.join("images/train/x.png"), 10, 8);
        write_png(&dir.0.join("images/val/y.png"), 6, 6);
        let text: Vec<String> = lines.iter().map(|l| l.join(" ")).collect();
        std::fs::write(dir.0.join("labels/train/x.txt"), text.join("\n")).unwrap();
        std::fs::write(dir.0.join("labels/val/y.txt"), &raw).unwrap();
        if let Ok(split) = open_dataset(&dir.0) {
            for s in [&split.train, &split.val] {
                for i in 0..s.len() {
                    if let Ok(objs) = s.objects(i) {
                        for o in objs {
                            prop_assert!([o.bbox.x0, o.bbox.y0, o.bbox.x1, o.bbox.y1].iter().all(|v| v.is_finite()), "{:?}", o.bbox);
                        }
                    }
                }
            }
        }
    }

    /// The command line: real flags with wild values, in any order. Whatever parses is checked
    /// the way the commands check it before they work (nothing is run).
    #[test]
    fn cli_arguments(cmd in prop_oneof![Just("train"), Just("info"), Just("generate"), Just("verify"), Just("demo")],
                     flags in prop::collection::vec((prop_oneof![
                         Just("--dim"), Just("--layers"), Just("--heads"), Just("--ffn-hidden"), Just("--experts"),
                         Just("--top-k"), Just("--batch"), Just("--seq"), Just("--steps"), Just("--lr"),
                         Just("--min-lr"), Just("--warmup"), Just("--clip"), Just("--rope"), Just("--chunk"),
                         Just("--aux-alpha"), Just("--loss-free-gamma"), Just("--sample-len"), Just("--tokens"),
                         Just("--time"), Just("--scale"), Just("--points"), Just("--bogus")], wild_number()), 0..5)) {
        let mut argv = vec!["ela".to_string(), cmd.to_string()];
        for (f, v) in flags {
            argv.push(format!("{f}={v}"));
        }
        if let Ok(cli) = Cli::try_parse_from(&argv) {
            if let Command::Train(args) = cli.command {
                if args.validate().is_ok() {
                    if let Ok(cfg) = args.model.to_config() {
                        let _ = param_count(&cfg);
                    }
                }
            } else if let Command::Info(args) = cli.command {
                if let Ok(cfg) = args.lm.to_config() {
                    let _ = ela_models::lm::size::param_report(&cfg);
                }
            }
        }
    }
}
