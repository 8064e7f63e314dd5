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

#[test]
fn word_bands_and_their_nmi_on_hand_made_text() {
    use ela_models::claims::metrics::{nmi, word_bands, word_ranks, BAND_EDGES};
    let ids = |s: &str| s.bytes().map(u32::from).collect::<Vec<u32>>();
    // Counts: the 3, cat 2, dog 1 (ties would rank by spelling): ranks the 1, cat 2, dog 3.
    let ranks = word_ranks(&ids("The cat, the dog; THE cat."));
    assert_eq!((ranks[&b"the".to_vec()], ranks[&b"cat".to_vec()], ranks[&b"dog".to_vec()]), (1, 2, 3));
    assert_eq!(ranks.len(), 3);
    // Edges 1, 2, 3: band 0 = rank 1, 1 = rank 2, 2 = rank 3, 3 = rarer or unseen, 4 = no word.
    let text = ids("the Cat-dog emu 7x");
    let bands = word_bands(&text, &ranks, &[1, 2, 3]);
    assert_eq!(bands, vec![0, 0, 0, 4, 1, 1, 1, 4, 2, 2, 2, 4, 3, 3, 3, 4, 4, 3]);
    // With the real edges every word of this tiny vocabulary is in the top 10.
    assert_eq!(word_bands(&ids("dog?"), &ranks, &BAND_EDGES), vec![0, 0, 0, 4]);
    // A bijection of the bands has NMI 1; an expert that ignores them (constant) has 0; one that
    // splits each band evenly has 0.
    let experts: Vec<usize> = bands.iter().map(|&b| 4 - b).collect();
    assert!((nmi(&experts, &bands, 5, 5) - 1.0).abs() < 1e-12);
    assert_eq!(nmi(&vec![2; bands.len()], &bands, 5, 5), 0.0);
    assert!(nmi(&[0, 1, 0, 1], &[0, 0, 4, 4], 2, 5).abs() < 1e-12);
    assert!(word_bands(&[], &ranks, &BAND_EDGES).is_empty() && word_ranks(&ids("1 2 ,")).is_empty());
}

#[test]
fn sha256_matches_the_standard_vectors() {
    use ela_models::claims::corpus::sha256_hex;
    assert_eq!(sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    // Two blocks (the padding spills over).
    let two = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    assert_eq!(sha256_hex(two), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

#[test]
fn lm_and_moe_run_on_a_corpus_file_and_the_report_shows_both_corpora() {
    let tmp = bin::TempDir::new("claims-corpus");
    let runs = tmp.0.join("runs");
    let runs_arg = runs.display().to_string();
    let text =
        "It was the best of times, it was the worst of times; the age of wisdom and of foolishness.\n".repeat(40);
    let file = tmp.0.join("Tiny Text.txt");
    std::fs::write(&file, &text).unwrap();
    let file_arg = file.display().to_string();
    let ela = |args: &[&str]| Command::new(bin::ela_exe()).args(args).output().unwrap();
    let tiny = ["--budget", "tiny", "--seeds", "1", "--out", &runs_arg];
    for (name, corpus) in [("lm", None), ("lm", Some(&file_arg)), ("moe", Some(&file_arg))] {
        let mut args = vec!["claims", name];
        args.extend(tiny);
        if let Some(c) = corpus {
            args.extend(["--corpus", c.as_str()]);
        }
        let o = ela(&args);
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    // The file's run is in <experiment>-<stem>, and names the file, its size and hash.
    for name in ["lm-tiny-text", "moe-tiny-text"] {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(runs.join(name).join("results.json")).unwrap()).unwrap();
        assert_eq!(v["corpus"]["path"], file_arg.as_str(), "{name}");
        assert_eq!(v["corpus"]["bytes"], text.len(), "{name}");
        let sha = ela_models::claims::corpus::sha256_hex(text.as_bytes());
        assert_eq!(v["corpus"]["sha256"], sha.as_str(), "{name}");
        assert!(v["section"].as_str().unwrap().contains(&sha), "{name}");
    }
    let moe: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(runs.join("moe-tiny-text/results.json")).unwrap()).unwrap();
    assert!(moe["measured"].as_str().unwrap().contains("NMI(expert, word band)"));
    assert!(moe["routing"][0]["layers"][0]["nmi_word_band"].is_number());
    // The report has both lm runs (and the corpus one's command names its corpus).
    let doc = tmp.0.join("docs").join("claims.md");
    let o = ela(&["claims", "report", "--runs", &runs_arg, "--out", &doc.display().to_string(), "--no-verify"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = std::fs::read_to_string(&doc).unwrap();
    assert!(md.contains("| 4 (lm) |") && md.contains("| 4 (lm-tiny-text) |"), "{md}");
    assert!(md.contains(&format!("`ela claims lm --budget tiny --corpus {file_arg}`")), "{md}");
    assert!(md.contains(&format!("## 4: `ela claims lm` on `{file_arg}`")), "{md}");
    assert!(tmp.0.join("docs/claims/lm-tiny-text/val.svg").exists() && tmp.0.join("docs/claims/lm/val.svg").exists());
    // Bad corpora are typed errors that name the problem, and leave earlier results alone.
    let empty = tmp.0.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let short = tmp.0.join("short.txt");
    std::fs::write(&short, "too short").unwrap();
    let missing = tmp.0.join("missing.txt");
    for (path, want) in [(&missing, "cannot read"), (&empty, "empty"), (&short, "cannot be split")] {
        for name in ["lm", "moe"] {
            let mut args = vec!["claims", name];
            args.extend(tiny);
            let p = path.display().to_string();
            args.extend(["--corpus", p.as_str()]);
            let o = ela(&args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success() && err.contains(want), "{name} {p}: {err}");
        }
    }
    assert!(runs.join("lm-tiny-text/results.json").exists());
}

/// `ela claims mqar --budget tiny --out <tmp>/runs` plus `extra`.
fn mqar_in(tmp: &bin::TempDir, extra: &[&str]) -> std::process::Output {
    let out = tmp.0.join("runs").display().to_string();
    Command::new(bin::ela_exe())
        .args(["claims", "mqar", "--budget", "tiny", "--out", &out])
        .args(extra)
        .output()
        .unwrap()
}

/// The results.json that `mqar_in` wrote.
fn mqar_results(tmp: &bin::TempDir) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(tmp.0.join("runs/mqar/results.json")).unwrap()).unwrap()
}

#[test]
fn mqar_resume_reuses_finished_runs_and_gives_the_uninterrupted_result() {
    let tmp = bin::TempDir::new("claims-resume");
    let mqar = |extra: &[&str]| {
        let o = mqar_in(&tmp, extra);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (mqar_results(&tmp), String::from_utf8_lossy(&o.stderr).matches(" seed ").count())
    };
    let (whole, trained) = mqar(&[]);
    let log = tmp.0.join("runs/mqar/runs.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(&log).unwrap().lines().map(String::from).collect();
    assert_eq!(lines.len(), trained, "one line per training run");
    // Interrupted after 5 runs, in the middle of writing the 6th line.
    std::fs::write(&log, format!("{}\n{}", lines[..5].join("\n"), &lines[5][..20])).unwrap();
    let (resumed, trained_again) = mqar(&["--resume"]);
    assert_eq!(trained_again, trained - 5, "only the runs not in the log are trained");
    assert_eq!(resumed["runs"], whole["runs"], "a resumed run reports exactly what the whole run did");
    // The section's first line names the machine with its load average at the time of each run,
    // which may move between the two; everything after it must match.
    let body = |v: &serde_json::Value| {
        let text = v.as_str().expect("the section is text");
        let (head, rest) = text.split_once('\n').expect("a header line");
        assert!(head.starts_with("Budget `tiny` on `cpu`"), "{head}");
        rest.to_string()
    };
    assert_eq!(body(&resumed["section"]), body(&whole["section"]));
    // Without --resume the folder starts empty: everything is trained again.
    assert_eq!(mqar(&[]).1, trained);
}

/// `--runs-from COMMIT` reuses the runs another build trained (a build that changes only the
/// summary or the verdict), reports them as that build's, and never trains under its name.
#[test]
fn mqar_runs_from_reuses_another_builds_runs_and_never_trains_under_its_name() {
    let tmp = bin::TempDir::new("claims-runs-from");
    let mqar = |extra: &[&str]| mqar_in(&tmp, extra);
    let results = || mqar_results(&tmp);
    assert!(mqar(&[]).status.success());
    let whole = results();
    // The same log as if build "abc1234" had trained it, with one accuracy changed so that reuse
    // is visible in the results.
    let log = tmp.0.join("runs/mqar/runs.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let key: serde_json::Value = serde_json::from_str(first["key"].as_str().unwrap()).unwrap();
    let ours = key["commit"].as_str().unwrap().to_string();
    let mut lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for line in &mut lines {
        let mut k: serde_json::Value = serde_json::from_str(line["key"].as_str().unwrap()).unwrap();
        k["commit"] = "abc1234".into();
        line["key"] = k.to_string().into();
    }
    lines[0]["run"]["accuracy"] = 0.625.into();
    std::fs::write(&log, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let o = mqar(&["--resume", "--runs-from", "abc1234"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stderr).matches(" seed ").count(), 0, "nothing is trained");
    let reused = results();
    assert_eq!(reused["runs_trained_at"], "abc1234");
    assert_eq!(whole["runs_trained_at"], ours.as_str());
    assert_eq!(reused["runs"][0]["sweep"][0][1], 0.625, "the log's runs are the ones reported");
    // A log without the runs of the named build is an error that names it; nothing is trained.
    let o = mqar(&["--resume", "--runs-from", "fff0000"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--runs-from fff0000") && !err.contains(" seed "), "{err}");
    // --runs-from without --resume is refused by the parser.
    assert!(!mqar(&["--runs-from", "abc1234"]).status.success());
}

/// `--grid` trains every width on every shape and plots accuracy against pairs per width.
#[test]
fn mqar_grid_covers_every_width_and_shape_and_plots_accuracy_against_pairs() {
    let tmp = bin::TempDir::new("claims-grid");
    let o = mqar_in(&tmp, &["--grid"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dir = tmp.0.join("runs/mqar");
    let v = mqar_results(&tmp);
    let cells: Vec<(u64, u64, u64)> = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["dim"].as_u64().unwrap(), r["seq"].as_u64().unwrap(), r["pairs"].as_u64().unwrap()))
        .collect();
    for dim in [8, 16] {
        for (seq, pairs) in [(16, 2), (24, 4)] {
            let n = cells.iter().filter(|&&c| c == (dim, seq, pairs)).count();
            assert_eq!(n, 6, "every mixer at width {dim}, T={seq}, {pairs} pairs");
        }
        let svg = std::fs::read_to_string(dir.join(format!("accuracy_d{dim}.svg"))).unwrap();
        assert!(svg.contains("key-value pairs") && svg.contains("softmax"), "accuracy plot at width {dim}");
        assert!(dir.join(format!("loss_d{dim}_T24_p4.svg")).exists());
    }
    assert!(v["section"].as_str().unwrap().contains("| width | T | pairs |"));
    assert!(v["measured"].as_str().unwrap().starts_with("MQAR width 16, T=24, 4 pairs"));
}

#[test]
fn claims_all_runs_every_experiment_in_order_and_writes_the_report() {
    let tmp = bin::TempDir::new("claims-all");
    let corpus = tmp.0.join("text.txt");
    std::fs::write(&corpus, "the quick brown fox jumps over the lazy dog. ".repeat(400)).unwrap();
    let (runs, doc) = (tmp.0.join("runs"), tmp.0.join("docs/claims.md"));
    let o = Command::new(bin::ela_exe())
        .args(["claims", "all", "--budget", "tiny", "--no-verify", "--out", &runs.display().to_string()])
        .args(["--report", &doc.display().to_string(), "--corpus", &corpus.display().to_string()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    // dilution reads lm's models, so lm must come first; the order is the documented one.
    let order: Vec<usize> = ["decode done", "mqar done", "lm done", "lm --corpus done", "dilution done", "report done"]
        .iter()
        .map(|s| err.find(&format!("claims all: {s}")).unwrap_or_else(|| panic!("{s} missing:\n{err}")))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{err}");
    for name in ["decode", "mqar", "lm", "lm-text", "dilution", "link", "lobe", "moe", "moe-text"] {
        assert!(runs.join(name).join("results.json").exists(), "{name}");
    }
    let md = std::fs::read_to_string(&doc).unwrap();
    assert!(md.contains("`ela claims dilution --budget tiny`") && md.contains("--corpus"), "{md}");
}
