//! The `ela` binary for the CLI tests: the one cargo built for this test run, or, when the test
//! executable was carried to another machine without the build tree (the GPU runner, which
//! carries only the test executables and the binaries), the bundled copy at `.gpu/bin/ela` under the working directory.

// Not every test binary that includes this module uses every item.
#![allow(dead_code)]

use std::path::PathBuf;

/// `ela train` with the smallest model and run the CLI accepts (one layer of width 8, no
/// experts, batch 1 of 8 bytes, no warm-up, one evaluation window, 2 sampled bytes): add
/// `--steps` and `--out` (and anything else) to it.
pub const TINY_TRAIN: &[&str] = &[
    "train",
    "--dim",
    "8",
    "--layers",
    "1",
    "--heads",
    "1",
    "--ffn-hidden",
    "8",
    "--experts",
    "0",
    "--batch",
    "1",
    "--seq",
    "8",
    "--warmup",
    "0",
    "--eval-windows",
    "1",
    "--sample-len",
    "2",
];

/// Path of the `ela` executable to run.
pub fn ela_exe() -> PathBuf {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_ela"));
    if built.exists() {
        return built;
    }
    let bundled = PathBuf::from(".gpu/bin/ela");
    if bundled.exists() {
        // Absolute, so tests that run it from another working directory still find it.
        return bundled.canonicalize().unwrap_or(bundled);
    }
    panic!("the ela binary is missing: neither {} nor {} exists", built.display(), bundled.display());
}

/// A fresh folder under the system temp dir for one test (`tag`) of this process, removed on
/// drop (also when the test fails).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("ela-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
