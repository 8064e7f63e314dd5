//! The `ela` binary for the CLI tests: the one cargo built for this test run, or, when the test
//! executable was carried to another machine without the build tree (the GPU runner, which
//! carries only the test executables and the binaries), the bundled copy at `.gpu/bin/ela` under the working directory.

use std::path::PathBuf;

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
