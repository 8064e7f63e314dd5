//! safetensors checkpoints: bit-exact round trips, layout, atomic writes, and corruption
//! (hand-made faults and proptest fuzzing) giving clear errors, never panics.

use std::path::PathBuf;

use ela_core::{Cpu, CpuStorage, DType, Error, Tensor};
use ela_nn::checkpoint::{self, json::Json, Metadata, CHECKSUM_KEY};
use ela_nn::module::StateDict;
use half::{bf16, f16};
use proptest::prelude::*;

fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ela-ckpt-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// One tensor of every dtype, with awkward values (NaN payloads, -0, inf, subnormals), a
/// scalar, an empty tensor and a transposed (non-contiguous) view.
fn sample() -> StateDict<Cpu> {
    let mut sd = StateDict::new();
    let mut put = |name: &str, s: CpuStorage, shape: &[usize]| {
        sd.insert(name.to_string(), Tensor::from_cpu_storage(&s, shape.to_vec(), &Cpu).unwrap());
    };
    let f64s = vec![1.5, -0.0, f64::INFINITY, f64::from_bits(0x7ff8_0000_dead_beef), 5e-324, -1e300];
    put("f64", CpuStorage::F64(f64s), &[2, 3]);
    let f32s = vec![f32::NEG_INFINITY, f32::from_bits(0x7fc0_1234), 1e-45, 3.25, -0.0, 7.0];
    put("blocks.0.f32", CpuStorage::F32(f32s), &[3, 2]);
    let halves = [0x0001u16, 0x7bff, 0x8000, 0x7e01, 0x3c00];
    put("h.f16", CpuStorage::F16(halves.iter().map(|&b| f16::from_bits(b)).collect()), &[5]);
    put("h.bf16", CpuStorage::BF16(halves.iter().map(|&b| bf16::from_bits(b)).collect()), &[5, 1]);
    put("ids", CpuStorage::U32(vec![0, 1, u32::MAX, 12345]), &[2, 2]);
    put("mask", CpuStorage::U8(vec![0, 1, 255]), &[3]);
    put("scalar", CpuStorage::F32(vec![42.0]), &[]);
    put("empty", CpuStorage::F32(vec![]), &[0, 3]);
    put("name with \"quotes\" \\ and é", CpuStorage::U8(vec![9]), &[1]);
    let base = Tensor::from_vec((0..6).map(|i| i as f32).collect::<Vec<_>>(), [2, 3], &Cpu).unwrap();
    sd.insert("transposed".into(), base.t().unwrap());
    sd
}

fn meta() -> Metadata {
    Metadata::from([("step".to_string(), "1200".to_string()), ("note".to_string(), "tab\there \"q\"".to_string())])
}

fn bits(t: &Tensor<Cpu>) -> (DType, Vec<usize>, Vec<u8>) {
    let s = t.to_cpu_storage().unwrap();
    let b: Vec<u8> = match &s {
        CpuStorage::U8(v) => v.clone(),
        CpuStorage::U32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        CpuStorage::F16(v) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        CpuStorage::BF16(v) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        CpuStorage::F32(v) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
        CpuStorage::F64(v) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
    };
    (t.dtype(), t.dims().to_vec(), b)
}

fn same(a: &StateDict<Cpu>, b: &StateDict<Cpu>) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|((ka, ta), (kb, tb))| ka == kb && bits(ta) == bits(tb))
}

#[test]
fn round_trip_every_dtype_bit_exact() {
    let dir = tmp_dir("rt");
    let path = dir.join("model.safetensors");
    let sd = sample();
    checkpoint::save(&path, &sd, &meta()).unwrap();
    let ck = checkpoint::load(&path, &Cpu).unwrap();
    assert!(same(&sd, &ck.tensors));
    assert_eq!(ck.metadata, meta());
    assert!(ck.checksum_verified);
    assert_eq!(ck.tensors["transposed"].to_vec::<f32>().unwrap(), [0., 3., 1., 4., 2., 5.]);
    // Keep a copy for the manual cross-check with Python's safetensors (docs/nn.md).
    if let Ok(p) = std::env::var("ELA_SAFETENSORS_SAMPLE") {
        std::fs::copy(&path, p).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn layout_follows_the_reference_writer() {
    let bytes = checkpoint::serialize(&sample(), &meta()).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(n % 8, 0, "header padded to a multiple of 8");
    let head = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    assert!(head.starts_with('{') && head.trim_end().ends_with('}'));
    let json = Json::parse(head).unwrap();
    let Json::Object(fields) = &json else { panic!("header is an object") };
    assert_eq!(fields[0].0, "__metadata__");
    let stored = json.get("__metadata__").unwrap().get(CHECKSUM_KEY).unwrap().as_str().unwrap();
    assert!(stored.starts_with("xxh64:") && stored.len() == 22, "{stored}");
    // Packed without gaps, larger elements first, every tensor aligned to its element size.
    let mut pos = 0;
    let mut last_size = usize::MAX;
    for (name, e) in &fields[1..] {
        let Json::Array(off) = e.get("data_offsets").unwrap() else { panic!() };
        let (b, end) = (off[0].as_u64().unwrap() as usize, off[1].as_u64().unwrap() as usize);
        let size = match e.get("dtype").unwrap().as_str().unwrap() {
            "F64" => 8,
            "F32" | "U32" => 4,
            "F16" | "BF16" => 2,
            _ => 1,
        };
        assert_eq!(b, pos, "{name}");
        assert!(size <= last_size && b % size == 0, "{name}");
        (pos, last_size) = (end, size);
    }
    assert_eq!(8 + n + pos, bytes.len());
}

#[test]
fn atomic_write_leaves_only_the_target() {
    let dir = tmp_dir("atomic");
    let path = dir.join("ck.safetensors");
    let sd = sample();
    checkpoint::save(&path, &sd, &meta()).unwrap();
    // Overwrite with different content: the old file is replaced as a whole.
    let mut small = StateDict::new();
    small.insert("x".to_string(), Tensor::from_vec(vec![1f32], [1], &Cpu).unwrap());
    checkpoint::save(&path, &small, &Metadata::new()).unwrap();
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names, ["ck.safetensors"]);
    assert!(same(&checkpoint::load(&path, &Cpu).unwrap().tensors, &small));
    // A directory that does not exist: an Io error naming the path, and no stray file.
    let bad = dir.join("missing").join("ck.safetensors");
    match checkpoint::save(&bad, &small, &Metadata::new()).unwrap_err() {
        Error::Io { path, msg } => assert!(path.contains("missing") && msg.contains("cannot write"), "{path}: {msg}"),
        e => panic!("expected Io, got {e}"),
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    // Reserved names are rejected before anything is written.
    let m = Metadata::from([(CHECKSUM_KEY.to_string(), "x".to_string())]);
    assert!(checkpoint::save(dir.join("r.safetensors"), &small, &m).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn io_msg(r: ela_core::Result<checkpoint::Checkpoint<Cpu>>) -> String {
    match r {
        Err(Error::Io { path, msg }) => {
            assert_eq!(path, "test.safetensors");
            msg
        }
        Err(e) => panic!("expected Error::Io, got {e}"),
        Ok(_) => panic!("corrupted input accepted"),
    }
}

fn parse(bytes: &[u8]) -> ela_core::Result<checkpoint::Checkpoint<Cpu>> {
    checkpoint::from_bytes(bytes, "test.safetensors", &Cpu)
}

/// A file from a hand-written header (no checksum), as another writer would produce it.
fn raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

#[test]
fn corrupted_files_give_clear_errors() {
    let good = checkpoint::serialize(&sample(), &meta()).unwrap();
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    assert!(io_msg(parse(&good[..5])).contains("too short"));
    assert!(io_msg(parse(&good[..good.len() - 3])).contains("runs past"));
    assert!(io_msg(parse(&good[..8 + n / 2])).contains("header length"));
    let mut wrong_len = good.clone();
    wrong_len[..8].copy_from_slice(&(n as u64 + 16).to_le_bytes());
    let m = io_msg(parse(&wrong_len));
    assert!(m.contains("invalid JSON") || m.contains("not UTF-8"), "{m}");
    wrong_len[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(io_msg(parse(&wrong_len)).contains("exceeds"));
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"junk");
    assert!(io_msg(parse(&trailing)).contains("trailing"));
    let mut flipped = good.clone();
    *flipped.last_mut().unwrap() ^= 0x10;
    assert!(io_msg(parse(&flipped)).contains("checksum mismatch"));
    // A header edit that keeps every byte count ([2, 3] -> [3, 2]) is caught by the checksum.
    let head = std::str::from_utf8(&good[8..8 + n]).unwrap();
    let edited = head.replacen("\"shape\":[2,3]", "\"shape\":[3,2]", 1);
    assert_ne!(edited, head);
    let mut reshaped = good[..8].to_vec();
    reshaped.extend_from_slice(edited.as_bytes());
    reshaped.extend_from_slice(&good[8 + n..]);
    assert!(io_msg(parse(&reshaped)).contains("checksum mismatch"));

    let d = [0u8; 16];
    let t = |body: &str| format!("{{\"a\":{body}}}");
    let cases = [
        (
            t(concat!(
                r#"{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"#,
                r#""b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}"#
            )),
            "overlaps",
        ),
        (t(r#"{"dtype":"F32","shape":[2],"data_offsets":[8,16]}"#), "gap"),
        (t(r#"{"dtype":"F32","shape":[3],"data_offsets":[0,16]}"#), "needs 12"),
        (t(r#"{"dtype":"I64","shape":[2],"data_offsets":[0,16]}"#), "not supported"),
        (t(r#"{"dtype":"F32","shape":[4],"data_offsets":[16,0]}"#), "reversed"),
        (t(r#"{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}"#), "non-negative integers"),
        (t(r#"{"dtype":"F32","shape":[4]}"#), "missing field"),
        (t(r#"{"dtype":"F32","shape":[4],"data_offsets":[0,16],"x":1}"#), "unknown field"),
        (t(r#"{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}"#), "overflow"),
        (r#"{"__metadata__":{"k":1}}"#.to_string(), "not a string"),
        ("[1]".to_string(), "not a JSON object"),
        ("{\"a\":".to_string(), "invalid JSON"),
    ];
    for (header, want) in cases {
        let msg = io_msg(parse(&raw(&header, &d)));
        assert!(msg.contains(want), "{header}: {msg}");
    }
    let missing = checkpoint::load(std::env::temp_dir().join("ela-no-such-file.safetensors"), &Cpu).unwrap_err();
    assert!(missing.to_string().contains("ela-no-such-file.safetensors"), "{missing}");
}

#[test]
fn files_without_checksum_load_unverified() {
    let data: Vec<u8> = [1.0f32, -2.0].iter().flat_map(|x| x.to_le_bytes()).chain([7u8]).collect();
    let header =
        r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"m":{"dtype":"U8","shape":[1],"data_offsets":[8,9]}}"#;
    let ck = parse(&raw(header, &data)).unwrap();
    assert!(!ck.checksum_verified);
    assert_eq!(ck.tensors["w"].to_vec::<f32>().unwrap(), [1.0, -2.0]);
    assert_eq!(ck.tensors["m"].to_vec::<u8>().unwrap(), [7]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("ELA_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256)))]

    /// A single changed byte anywhere is either rejected or, when it only touched insignificant
    /// bytes (header padding whitespace), yields exactly the original tensors.
    #[test]
    fn single_byte_corruption_is_detected(pos in any::<prop::sample::Index>(), x in 1u8..=255) {
        let sd = sample();
        let mut bytes = checkpoint::serialize(&sd, &meta()).unwrap();
        let i = pos.index(bytes.len());
        bytes[i] ^= x;
        if let Ok(ck) = parse(&bytes) {
            prop_assert!(same(&ck.tensors, &sd), "byte {} ^ {:#x} changed the tensors silently", i, x);
        }
    }

    /// Truncations and multiple random byte writes never panic.
    #[test]
    fn random_damage_never_panics(cut in any::<prop::sample::Index>(),
                                  edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8)) {
        let mut bytes = checkpoint::serialize(&sample(), &meta()).unwrap();
        for (p, v) in edits {
            let i = p.index(bytes.len());
            bytes[i] = v;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        let _ = parse(&bytes);
    }
}

#[test]
fn a_missing_checksum_is_damage_for_our_own_checkpoints() {
    let dir = tmp_dir("nosum");
    let path = dir.join("ck.safetensors");
    let data: Vec<u8> = [1.0f32, -2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(&path, raw(r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, &data)).unwrap();
    // Any safetensors reader accepts it; the loader of our own runs does not.
    assert!(checkpoint::load(&path, &Cpu).is_ok());
    let e = checkpoint::load_verified(&path, &Cpu).unwrap_err().to_string();
    assert!(e.contains("checksum") && e.contains("ck.safetensors"), "{e}");
    checkpoint::save(&path, &sample(), &meta()).unwrap();
    assert!(checkpoint::load_verified(&path, &Cpu).unwrap().checksum_verified);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Names are `model.<name>` (one dot) whether the prefix is given with its dot or without, and
/// the `model..<name>` names of checkpoints written before that still load.
#[test]
fn prefixed_names_have_one_dot_and_old_double_dot_names_still_load() {
    let mut sd = StateDict::new();
    sd.insert("embed.weight".to_string(), Tensor::from_vec(vec![1f32, 2.], [2], &Cpu).unwrap());
    for prefix in ["model", "model."] {
        let named = checkpoint::with_prefix(&sd, prefix);
        assert_eq!(named.keys().collect::<Vec<_>>(), ["model.embed.weight"]);
        assert_eq!(checkpoint::take_prefix(&named, prefix).keys().collect::<Vec<_>>(), ["embed.weight"]);
    }
    let old: StateDict<Cpu> = sd.iter().map(|(k, v)| (format!("model..{k}"), v.clone())).collect();
    for prefix in ["model", "model."] {
        let back = checkpoint::take_prefix(&old, prefix);
        assert_eq!(back.keys().collect::<Vec<_>>(), ["embed.weight"]);
    }
    // An old file on disk (its checksum covers the old names) loads and verifies.
    let dir = tmp_dir("olddots");
    checkpoint::save(dir.join("old.safetensors"), &old, &meta()).unwrap();
    let ck = checkpoint::load_verified(dir.join("old.safetensors"), &Cpu).unwrap();
    assert!(checkpoint::take_prefix(&ck.tensors, "model").contains_key("embed.weight"));
    let _ = std::fs::remove_dir_all(&dir);
}
