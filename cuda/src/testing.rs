//! Test support shared by this crate's test binaries and `ela-tests`: opening the GPU for a test,
//! and saying plainly when a test ran nothing because there is none.
//!
//! A Rust test that returns early is reported `ok` by `cargo test`, so without a GPU the CUDA
//! tests would read as passed coverage. Instead, each one that finds no device calls
//! [`skip_no_device`], which
//! * writes `skipped: no CUDA device: <test name>` to stderr, past the test harness's output
//!   capture (so it shows in a plain `cargo test`), and
//! * counts it; when the test binary exits it writes one summary line,
//!   `SKIPPED N test(s): no CUDA device (<reason>); their "ok" above is not GPU coverage`.
//!
//! With `ELA_REQUIRE_CUDA=1` (set by the GPU runner) a missing device fails the test instead.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::Cuda;

/// The environment variable that turns a missing GPU (or NVRTC) into a test failure.
pub const REQUIRE_CUDA: &str = "ELA_REQUIRE_CUDA";

/// True when `ELA_REQUIRE_CUDA=1`: CUDA tests must run, not skip.
pub fn cuda_required() -> bool {
    std::env::var(REQUIRE_CUDA).as_deref() == Ok("1")
}

static SKIPPED: AtomicUsize = AtomicUsize::new(0);
static REASON: Mutex<String> = Mutex::new(String::new());

extern "C" {
    fn atexit(f: extern "C" fn()) -> std::ffi::c_int;
}

/// Runs at process exit (the test harness returns from `main` or calls `exit`; both run it).
extern "C" fn print_summary() {
    let n = SKIPPED.load(Ordering::Relaxed);
    let why = REASON.lock().map(|r| r.clone()).unwrap_or_default();
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {n} test(s): {why}; their \"ok\" above is not GPU coverage (run with {REQUIRE_CUDA}=1 on a GPU \
         machine to make a missing device fail)"
    );
}

/// Marks the calling test as skipped for lack of a usable device or library (`what`, e.g.
/// "no CUDA device", and the reason): one line on stderr, counted in the exit summary.
///
/// # Panics
/// When `ELA_REQUIRE_CUDA=1`.
pub fn skip(what: &str, reason: &str) {
    if cuda_required() {
        panic!("{REQUIRE_CUDA}=1 but {what}: {reason}");
    }
    static REGISTERED: OnceLock<()> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        // SAFETY: registers a plain `extern "C"` function with the C library; it only reads
        // statics and writes to stderr.
        unsafe { atexit(print_summary) };
    });
    if let Ok(mut r) = REASON.lock() {
        if r.is_empty() {
            *r = format!("{what} ({reason})");
        }
    }
    SKIPPED.fetch_add(1, Ordering::Relaxed);
    // The harness names each test's thread after the test.
    let name = std::thread::current().name().unwrap_or("a test").to_string();
    // `std::io::stderr()` directly, not `eprintln!`: the harness captures the print macros only.
    let _ = writeln!(std::io::stderr(), "skipped: {what}: {name}");
}

/// [`skip`] for a missing GPU.
pub fn skip_no_device(reason: &str) {
    skip("no CUDA device", reason);
}

/// The CUDA device (ordinal 0) for a test, or `None` after [`skip_no_device`]. Opened (or found
/// missing) once per test binary: `Cuda::new` caches an open device but not a failure, and
/// probing the libraries again for every test would be wasted work.
///
/// # Panics
/// When no device is usable and `ELA_REQUIRE_CUDA=1`.
pub fn device_or_skip() -> Option<Cuda> {
    static CUDA: OnceLock<std::result::Result<Cuda, String>> = OnceLock::new();
    match CUDA.get_or_init(|| crate::cuda_if_available().map_err(|e| e.to_string())) {
        Ok(dev) => Some(dev.clone()),
        Err(why) => {
            skip_no_device(why);
            None
        }
    }
}
