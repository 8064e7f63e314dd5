//! `ela bench`: wall-clock benchmarks that print markdown tables (docs/benchmarks.md).
//!
//! - `ela bench ela`: CPU time of the chunked ELA forward and forward+backward against the
//!   quadratic reference, softmax attention and (with `--jax`) the JAX peer, over sequence length.
//! - `ela bench decode`: per-token decoding latency and state / KV-cache bytes of the LM with ELA
//!   against softmax attention, over context length.
//! - `ela bench detect`: parameters, GFLOPs and inference latency of YOLO-LAT (each neck) and
//!   the YOLOv8n baseline over batch size, input size and dtype, on the CPU or a GPU.
//!
//! Every figure is the median of `--reps` timed runs after one untimed warm-up run. The header
//! names the machine and its load average, because the numbers mean nothing without them.

pub mod decode;
pub mod detect;
pub mod ela;
pub mod probe;

use std::time::Instant;

use ela_core::{Error, Result};

/// Options of `ela bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Which benchmark.
    #[command(subcommand)]
    pub which: BenchCommand,
}

/// The benchmarks.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum BenchCommand {
    /// Chunked ELA vs the quadratic reference, softmax attention and the JAX peer over T (CPU).
    Ela(ela::BenchElaArgs),
    /// Per-token decode latency and state/KV bytes, ELA vs softmax LM, over context length.
    Decode(decode::BenchDecodeArgs),
    /// Detector size, GFLOPs and inference latency (YOLO-LAT necks, YOLOv8n) over batch and size.
    Detect(detect::BenchDetectArgs),
}

/// Run `ela bench`.
pub fn run(args: &BenchArgs) -> Result<()> {
    match &args.which {
        BenchCommand::Ela(a) => ela::run(a),
        BenchCommand::Decode(a) => decode::run(a),
        BenchCommand::Detect(a) => detect::run(a),
    }
}

/// Parse a comma-separated list of positive integers (`--times 256,1024`).
pub fn parse_list(flag: &'static str, s: &str) -> Result<Vec<usize>> {
    let v = s
        .split(',')
        .map(|x| match x.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(Error::invalid(
                "ela bench",
                format!("{flag}: {x:?} is not a positive integer (expected e.g. 256,1024)"),
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    if v.is_empty() {
        return Err(Error::invalid("ela bench", format!("{flag} is empty")));
    }
    Ok(v)
}

/// How many timed runs one measurement takes: at least `at_least`, and more until the timed runs
/// add up to `min_ms` of wall clock (at most [`Reps::MAX`]).
///
/// Why a time floor: on a shared machine the core's speed comes and goes in episodes of tens to
/// hundreds of milliseconds (docs/benchmarks.md, "CPU ELA"). Eleven runs of a 2 ms call last
/// 25 ms and can fall wholly inside one, so the medians of separate processes look bimodal;
/// spread over a few hundred milliseconds the median is that of the machine's usual speed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reps {
    /// Fewest timed runs.
    pub at_least: usize,
    /// Fewest milliseconds of timed runs.
    pub min_ms: f64,
}

impl Reps {
    /// The most timed runs of one measurement, whatever `min_ms` asks.
    pub const MAX: usize = 100_000;

    /// Exactly `n` timed runs (at least one), no time floor.
    pub fn count(n: usize) -> Reps {
        Reps { at_least: n, min_ms: 0.0 }
    }
}

/// Wall-clock milliseconds of the timed runs of `f` that `reps` asks for, after one untimed
/// warm-up run; `between` runs after every timed run, outside the timing.
pub fn time_runs(reps: Reps, mut f: impl FnMut() -> Result<()>, mut between: impl FnMut()) -> Result<Vec<f64>> {
    f()?;
    let mut times = Vec::with_capacity(reps.at_least.max(1));
    let mut total = 0.0;
    while times.len() < Reps::MAX && (times.len() < reps.at_least.max(1) || total < reps.min_ms) {
        let t0 = Instant::now();
        f()?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        times.push(ms);
        total += ms;
        between();
    }
    Ok(times)
}

/// Median wall-clock milliseconds of the timed runs of `f` that `reps` asks for, after one
/// untimed warm-up run.
pub fn median_ms_over(reps: Reps, f: impl FnMut() -> Result<()>) -> Result<f64> {
    Ok(median(&mut time_runs(reps, f, || {})?))
}

/// Median wall-clock milliseconds of `reps` runs of `f`, after one untimed warm-up run.
pub fn median_ms(reps: usize, f: impl FnMut() -> Result<()>) -> Result<f64> {
    median_ms_over(Reps::count(reps), f)
}

/// Median of a non-empty slice (sorts it); the upper middle for even lengths.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// CPU model, logical cores and the 1/5/15-minute load average (Linux; "unknown" elsewhere).
pub fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{model}, {cores} logical cores, load average {}", load())
}

/// The 1/5/15-minute load average, as `/proc/loadavg` prints it.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Today's date in UTC as `YYYY-MM-DD` (from the system clock; civil-from-days conversion).
pub fn today_utc() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    civil_date(secs / 86_400)
}

/// `YYYY-MM-DD` of the day `days` after 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_date(days: u64) -> String {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// A time in ms with three significant digits, or "-" when not measured.
pub fn fmt_ms(x: Option<f64>) -> String {
    match x {
        None => "-".into(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) if v >= 1.0 => format!("{v:.2}"),
        // Sub-millisecond steps (GPU decoding) differ in the third digit.
        Some(v) => format!("{v:.3}"),
    }
}

/// Bytes with a binary unit, e.g. `69632 (68.0 KiB)`.
pub fn fmt_bytes(n: usize) -> String {
    let units = ["B", "KiB", "MiB", "GiB"];
    let (mut x, mut u) = (n as f64, 0);
    while x >= 1024.0 && u + 1 < units.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{n} ({x:.1} {})", units[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_medians_and_units() {
        assert_eq!(parse_list("--times", "256, 1024").unwrap(), vec![256, 1024]);
        assert!(parse_list("--times", "256,x").is_err() && parse_list("--times", "0").is_err());
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(fmt_bytes(69632), "69632 (68.0 KiB)");
        assert_eq!(fmt_bytes(12), "12 B");
        assert_eq!(fmt_ms(None), "-");
        assert_eq!(fmt_ms(Some(1234.4)), "1234");
        assert_eq!(fmt_ms(Some(2.5)), "2.50");
        assert_eq!(fmt_ms(Some(0.1234)), "0.123");
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(19_782), "2024-02-29");
        assert_eq!(civil_date(20_454), "2026-01-01");
    }

    #[test]
    fn runs_until_both_the_count_and_the_time_floor_are_reached() {
        let counted = |reps: Reps, sleep_ms: u64| {
            let (mut calls, mut between) = (0, 0);
            let times = time_runs(
                reps,
                || {
                    calls += 1;
                    std::thread::sleep(std::time::Duration::from_millis(sleep_ms));
                    Ok(())
                },
                || between += 1,
            )
            .unwrap();
            assert_eq!(calls, times.len() + 1, "one untimed warm-up");
            assert_eq!(between, times.len(), "`between` after every timed run");
            times
        };
        assert_eq!(counted(Reps::count(3), 0).len(), 3);
        assert_eq!(counted(Reps::count(0), 0).len(), 1, "at least one timed run");
        // 2 ms calls with a 20 ms floor: more than the 3 asked for, about 10 (sleep may overshoot).
        let t = counted(Reps { at_least: 3, min_ms: 20.0 }, 2);
        assert!(t.len() > 3 && t.len() <= 10 && t.iter().sum::<f64>() >= 20.0, "{t:?}");
        // A long call: the count decides.
        assert_eq!(counted(Reps { at_least: 2, min_ms: 1.0 }, 5).len(), 2);
        let err = time_runs(Reps::count(3), || Err(Error::invalid("bench test", "boom")), || {});
        assert!(err.is_err(), "the measured function's error is passed on");
    }
}
