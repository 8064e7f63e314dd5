//! Records the git commit the binary is built from (`ELA_BUILD_COMMIT`), so results written by a
//! binary carried to another machine (the GPU runner) name the code that produced them, not
//! whatever checkout happens to surround them there.

fn main() {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = match git(&["rev-parse", "--short", "HEAD"]) {
        None => "unknown".to_string(),
        Some(c) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(s) if !s.is_empty() => format!("{c}-dirty"),
            _ => c,
        },
    };
    println!("cargo:rustc-env=ELA_BUILD_COMMIT={commit}");
    // A new commit or a change to the index: the recorded commit must follow.
    for p in ["../.git/HEAD", "../.git/index"] {
        if std::path::Path::new(p).exists() {
            println!("cargo:rerun-if-changed={p}");
        }
    }
}
