//! `ela claims`: the MQAR generator's contract, and a tiny end-to-end run of every experiment and
//! of the report (numbers at `--budget tiny` mean nothing; the pipeline is what is checked).

mod bin;

use std::collections::HashSet;
use std::process::Command;

use ela_models::claims::mqar::{generate, MqarSpec, FILLER, IGNORE};
use ela_models::ela_core::Rng;

#[test]
fn mqar_sequences_hold_keys_values_and_queries_without_leaking_answers() {
    let spec = MqarSpec { vocab: 64, seq: 40, pairs: 8 };
    let b = generate(&spec, 16, &mut Rng::new(3)).unwrap();
    let (t, n, half) = (spec.seq, spec.pairs, spec.vocab as u32 / 2);
    for r in 0..b.batch {
        let inp = &b.inputs[r * t..(r + 1) * t];
        let tgt = &b.targets[r * t..(r + 1) * t];
        // Pairs: distinct keys from the first half (never the filler), values from the second.
        let keys: Vec<u32> = (0..n).map(|i| inp[2 * i]).collect();
        let values: Vec<u32> = (0..n).map(|i| inp[2 * i + 1]).collect();
        assert_eq!(keys.iter().collect::<HashSet<_>>().len(), n, "{inp:?}");
        assert!(keys.iter().all(|&k| k != FILLER && k < half), "{keys:?}");
        assert!(values.iter().all(|&v| v >= half && v < 2 * half), "{values:?}");
        assert!(tgt[..2 * n].iter().all(|&x| x == IGNORE));
        // Queries: each key exactly once after the pairs, its target the paired value.
        let mut queried = HashSet::new();
        for p in 2 * n..t {
            if tgt[p] == IGNORE {
                assert_eq!(inp[p], FILLER, "position {p}");
                continue;
            }
            let i = keys.iter().position(|&k| k == inp[p]).expect("a query is one of the sequence's keys");
            assert_eq!(tgt[p], values[i]);
            assert!(queried.insert(inp[p]));
            // No answer leaks: after the pairs, no value token appears in the input at all.
            assert!(inp[2 * n..].iter().all(|&x| x < half), "{inp:?}");
        }
        assert_eq!(queried.len(), n);
    }
    // The same seed gives the same batch; a spec that cannot fit is a typed error.
    assert_eq!(generate(&spec, 16, &mut Rng::new(3)).unwrap(), b);
    assert!(generate(&MqarSpec { vocab: 64, seq: 20, pairs: 8 }, 1, &mut Rng::new(0)).is_err());
    assert!(generate(&MqarSpec { vocab: 8, seq: 40, pairs: 8 }, 1, &mut Rng::new(0)).is_err());
}

#[test]
fn every_experiment_runs_tiny_and_the_report_assembles_them() {
    let tmp = bin::TempDir::new("claims");
    let runs = tmp.0.join("runs");
    let runs_arg = runs.display().to_string();
    // lm before dilution: dilution measures the lm experiment's models.
    for name in ["decode", "mqar", "lm", "dilution", "link", "lobe", "moe"] {
        let o = Command::new(bin::ela_exe())
            .args(["claims", name, "--budget", "tiny", "--out", &runs_arg])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{name}: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let text = std::fs::read_to_string(runs.join(name).join("results.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        for key in
            ["experiment", "claim", "budget", "machine", "commit", "seeds", "config", "verdict", "measured", "section"]
        {
            assert!(v.get(key).is_some(), "{name}: results.json lacks {key}");
        }
        assert_eq!(v["budget"], "tiny");
        for p in v["plots"].as_array().unwrap() {
            let svg = std::fs::read_to_string(runs.join(name).join(p.as_str().unwrap())).unwrap();
            assert!(svg.starts_with("<svg") && svg.contains("<polyline"), "{name}: {p}");
        }
    }
    let doc = tmp.0.join("docs").join("claims.md");
    let o = Command::new(bin::ela_exe())
        .args(["claims", "report", "--runs", &runs_arg, "--out", &doc.display().to_string(), "--no-verify"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = std::fs::read_to_string(&doc).unwrap();
    assert!(md.contains("| claim | what the paper says | what we measured | verdict | command |"), "{md}");
    for name in ["decode", "mqar", "lm", "dilution", "link", "lobe", "moe"] {
        assert!(md.contains(&format!("`ela claims {name} --budget tiny`")), "{name} missing from the summary");
    }
    assert!(md.contains("Provisional") && md.contains("claims/decode/latency.svg"));
    assert!(tmp.0.join("docs/claims/decode/latency.svg").exists());
}
