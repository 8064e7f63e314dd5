//! `ela bench ela`: CPU time of causal Hadamard-Exp ELA over sequence length T.
//!
//! Measured per T (f32, `[batch, heads, T, dim]`, inputs N(0, 1)):
//! - ELA-rs chunked forward (`Tensor::ela`, the fused op) and forward+backward (`Ela::run` with an
//!   upstream gradient: the one-node chunked op and its hand-derived backward through the tape);
//! - the quadratic reference (`Form::Quadratic`, autograd ops, `[B, H, T, T]` kernel matrix);
//! - causal softmax attention composed of our ops (`ela_nn::attention::softmax_attention`);
//! - with `--jax`, the JAX peer `benches/peers/ela_jax.py` (jit, CPU, f32, the same chunked
//!   causal function), run as a subprocess of the same invocation after our measurements, so the
//!   two never compete for cores.
//!
//! With `--probe`, a fixed loop of loads, multiply-adds and stores over a 16 KiB buffer
//! (`probe.rs`) is timed after every timed ELA call, and its medians are printed beside ELA's
//! against the probe's fastest median of the run: a row measured while the core was slow (the
//! host's other tenants) shows it there.
//!
//! The O(T^2) methods stop at `--quadratic-max-t` (their `T x T` matrices need
//! `4 B H T^2` bytes each: 4 GiB at T = 16384, several alive at once).

use std::path::PathBuf;
use std::process::Command;

use ela_autograd::{no_grad, Var};
use ela_core::{Cpu, DType, ElaKernel, ElaParams, Error, Result, Rng, Tensor};
use ela_nn::attention::softmax_attention;
use ela_nn::ela::{Ela, Form};

use crate::budget::Estimate;

use super::probe::{median_ms_probed, probe_reference_ms};
use super::{fmt_ms, machine, median_ms, median_ms_over, parse_list, Reps};
use crate::report::plot::{write_svg, Series};

/// Options of `ela bench ela`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchElaArgs {
    /// Sequence lengths T, comma-separated.
    #[arg(long, default_value = "256,1024,4096,16384")]
    pub times: String,
    /// Timed repetitions per measurement (the median is reported), after one warm-up run; the ELA
    /// measurements repeat further until --min-ms of timed runs have passed.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Fewest milliseconds of timed runs per ELA measurement (0: exactly --reps runs). A short
    /// measurement can fall wholly inside a moment when the machine is slow; see `Reps`.
    #[arg(long, default_value_t = 300.0)]
    pub min_ms: f64,
    /// Batch size.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Heads.
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Head dimension (D = Dv).
    #[arg(long, default_value_t = 64)]
    pub dim: usize,
    /// Chunk length of the chunked form (and of the JAX peer).
    #[arg(long, default_value_t = 64)]
    pub chunk: usize,
    /// Timed repetitions of the O(T^2) methods (they take seconds per run at T = 4096 and only show the growth).
    #[arg(long, default_value_t = 3)]
    pub quadratic_reps: usize,
    /// Largest T at which the O(T^2) methods (quadratic reference, softmax attention) run.
    #[arg(long, default_value_t = 4096)]
    pub quadratic_max_t: usize,
    /// Also run the JAX peer (needs `pip install jax`; every T must be a multiple of --chunk).
    #[arg(long)]
    pub jax: bool,
    /// Python interpreter for the JAX peer.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// The JAX peer script.
    #[arg(long, default_value = "benches/peers/ela_jax.py")]
    pub jax_script: PathBuf,
    /// Write a log-log plot of time against T to this SVG file.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Time a fixed loop (loads, multiply-adds, stores in L1) after every timed ELA call and print
    /// its medians: tells a slow machine from slow code.
    #[arg(long)]
    pub probe: bool,
}

/// One row of the table: medians in ms, `None` where not measured.
#[derive(Default, Clone, Debug)]
struct Row {
    t: usize,
    ela: [Option<f64>; 2],
    quadratic: [Option<f64>; 2],
    softmax: [Option<f64>; 2],
    jax: [Option<f64>; 2],
    /// With `--probe`: the probe's median beside the ELA forward and forward+backward.
    probe: [Option<f64>; 2],
}

/// Time the four Rust methods at one T.
fn measure(args: &BenchElaArgs, t: usize) -> Result<Row> {
    let shape = [args.batch, args.heads, t, args.dim];
    let mut rng = Rng::new(args.seed ^ t as u64);
    let mut x = || Tensor::<Cpu>::randn(0.0, 1.0, shape, DType::F32, &mut rng, &Cpu);
    let (q, k, v, dy) = (x()?, x()?, x()?, x()?);
    let params = ElaParams { kernel: ElaKernel::HadamardExp, causal: true, chunk: args.chunk };
    let ela = Ela::<Cpu>::builtin(ElaKernel::HadamardExp).with_chunk(args.chunk);
    let reps = args.reps;
    let ela_reps = Reps { at_least: reps, min_ms: args.min_ms };
    let mut row = Row { t, ..Row::default() };
    let mut fwd = || q.ela(&k, &v, &params).map(drop);
    let mut fwd_bwd = || ela.run_with_grads(Form::Chunked, &q, &k, &v, &dy).map(drop);
    if args.probe {
        let ((f, pf), (fb, pfb)) = (median_ms_probed(ela_reps, &mut fwd)?, median_ms_probed(ela_reps, &mut fwd_bwd)?);
        (row.ela, row.probe) = ([Some(f), Some(fb)], [Some(pf), Some(pfb)]);
    } else {
        row.ela = [Some(median_ms_over(ela_reps, &mut fwd)?), Some(median_ms_over(ela_reps, &mut fwd_bwd)?)];
    }
    if t <= args.quadratic_max_t {
        let reps = args.quadratic_reps;
        row.quadratic[0] = Some(median_ms(reps, || ela.run(Form::Quadratic, &q, &k, &v).map(drop))?);
        row.quadratic[1] = Some(median_ms(reps, || ela.run_with_grads(Form::Quadratic, &q, &k, &v, &dy).map(drop))?);
        row.softmax[0] = Some(median_ms(reps, || {
            let c = |x: &Tensor<Cpu>| Var::constant(x.clone());
            no_grad(|| softmax_attention(&c(&q), &c(&k), &c(&v), true)).map(drop)
        })?);
        row.softmax[1] = Some(median_ms(reps, || {
            let (qv, kv, vv) = (Var::param(q.clone()), Var::param(k.clone()), Var::param(v.clone()));
            softmax_attention(&qv, &kv, &vv, true)?.backward_with(dy.clone()).map(drop)
        })?);
    }
    Ok(row)
}

/// The number after `"key":` in a one-line JSON object.
fn json_number(line: &str, key: &str) -> Option<f64> {
    let at = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    line[at..].split([',', '}']).next()?.trim().parse().ok()
}

/// Run the JAX peer once for all T and fill in its columns.
fn run_jax(args: &BenchElaArgs, times: &[usize], rows: &mut [Row]) -> Result<()> {
    let script = args.jax_script.display().to_string();
    if !args.jax_script.is_file() {
        return Err(Error::Io {
            path: script,
            msg: "JAX peer script not found (run from the repository root or pass --jax-script)".into(),
        });
    }
    let list: Vec<String> = times.iter().map(|t| t.to_string()).collect();
    let out = Command::new(&args.python)
        .arg(&args.jax_script)
        .args(["--times", &list.join(","), "--reps", &args.reps.max(1).to_string()])
        .args(["--chunk", &args.chunk.to_string(), "--batch", &args.batch.to_string()])
        .args(["--heads", &args.heads.to_string(), "--dim", &args.dim.to_string()])
        .output()
        .map_err(|e| Error::Io { path: args.python.clone(), msg: format!("cannot run the JAX peer: {e}") })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message");
        return Err(Error::Io { path: script, msg: format!("JAX peer failed ({}): {last}", out.status) });
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let (Some(t), Some(f), Some(fb)) =
            (json_number(line, "t"), json_number(line, "fwd_ms"), json_number(line, "fwdbwd_ms"))
        else {
            continue;
        };
        if let Some(r) = rows.iter_mut().find(|r| r.t as f64 == t) {
            r.jax = [Some(f), Some(fb)];
        }
    }
    if let Some(r) = rows.iter().find(|r| r.jax[0].is_none()) {
        return Err(Error::Io { path: script, msg: format!("the JAX peer printed no result for T = {}", r.t) });
    }
    Ok(())
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

fn print_table(rows: &[Row], jax: bool, probe_ref: Option<f64>) -> Result<()> {
    let mut head = String::from(
        "| T | ELA fwd | ELA fwd+bwd | quadratic fwd | quadratic fwd+bwd | softmax fwd | softmax fwd+bwd |",
    );
    let mut rule = String::from("|---:|---:|---:|---:|---:|---:|---:|");
    if jax {
        head += " JAX fwd | JAX fwd+bwd | JAX/ELA fwd | JAX/ELA fwd+bwd |";
        rule += "---:|---:|---:|---:|";
    }
    if probe_ref.is_some() {
        head += " probe at fwd | probe at fwd+bwd |";
        rule += "---:|---:|";
    }
    crate::outln!("{head}\n{rule}");
    for r in rows {
        let mut line = format!("| {} |", r.t);
        for x in r.ela.iter().chain(&r.quadratic).chain(&r.softmax) {
            line += &format!(" {} |", fmt_ms(*x));
        }
        if jax {
            line += &format!(
                " {} | {} | {} | {} |",
                fmt_ms(r.jax[0]),
                fmt_ms(r.jax[1]),
                ratio(r.jax[0], r.ela[0]),
                ratio(r.jax[1], r.ela[1])
            );
        }
        if let Some(reference) = probe_ref {
            for p in r.probe {
                // The probe's time against its fastest: 1.00x = the core at its best.
                line += &format!(" {} ({}) |", fmt_ms(p), ratio(p, Some(reference)));
            }
        }
        crate::outln!("{line}");
    }
    Ok(())
}

/// Log-log plot: x = log2 T, y = log10 ms (the plot module draws linear axes, so the values are
/// transformed here and the axis labels say so).
fn plot(args: &BenchElaArgs, path: &std::path::Path, rows: &[Row]) -> Result<()> {
    let pick = |f: &dyn Fn(&Row) -> Option<f64>| -> Vec<(f64, f64)> {
        rows.iter().filter_map(|r| f(r).map(|ms| ((r.t as f64).log2(), ms.log10()))).collect()
    };
    let data = [
        ("ELA-rs fwd", pick(&|r| r.ela[0]), "#d62728"),
        ("ELA-rs fwd+bwd", pick(&|r| r.ela[1]), "#ff9896"),
        ("quadratic fwd", pick(&|r| r.quadratic[0]), "#1f77b4"),
        ("quadratic fwd+bwd", pick(&|r| r.quadratic[1]), "#aec7e8"),
        ("softmax fwd", pick(&|r| r.softmax[0]), "#2ca02c"),
        ("softmax fwd+bwd", pick(&|r| r.softmax[1]), "#98df8a"),
        ("JAX fwd", pick(&|r| r.jax[0]), "#9467bd"),
        ("JAX fwd+bwd", pick(&|r| r.jax[1]), "#c5b0d5"),
    ];
    let mut series: Vec<Series> = data
        .iter()
        .filter(|(_, p, _)| !p.is_empty())
        .map(|(label, points, color)| Series { label, points, color })
        .collect();
    // An invisible point 1.6 octaves right of the largest T keeps the lines clear of the legend,
    // which the plot module draws in the top-right corner.
    let all = || series.iter().flat_map(|s| s.points.iter());
    let right = all().map(|p| p.0).fold(f64::MIN, f64::max) + 1.6;
    let low = all().map(|p| p.1).fold(f64::MAX, f64::min);
    let pad = [(right, low)];
    if right.is_finite() && low.is_finite() {
        series.push(Series { label: "", points: &pad, color: "none" });
    }
    let title =
        format!("Causal Hadamard-Exp ELA on CPU, B={} H={} D={} f32 (log-log)", args.batch, args.heads, args.dim);
    write_svg(path, &title, "log2 T (sequence length)", "log10 time (ms)", &series)
}

/// Run `ela bench ela`.
pub fn run(args: &BenchElaArgs) -> Result<()> {
    let times = parse_list("--times", &args.times)?;
    if !(args.min_ms.is_finite() && args.min_ms >= 0.0) {
        return Err(Error::invalid(
            "ela bench ela",
            format!("--min-ms must be a number of milliseconds >= 0, got {}", args.min_ms),
        ));
    }
    for (flag, n) in [("--batch", args.batch), ("--heads", args.heads), ("--dim", args.dim), ("--chunk", args.chunk)] {
        if n == 0 {
            return Err(Error::invalid("ela bench ela", format!("{flag} must be at least 1")));
        }
    }
    // The largest T decides: q, k, v, dy and the outputs and gradients (about 10 [B, H, T, D]
    // f32 tensors), and up to the quadratic limit three [B, H, T, T] score matrices.
    let mut worst = Estimate::new();
    for &t in &times {
        let bht = (args.batch as u64).saturating_mul(args.heads as u64).saturating_mul(t as u64);
        let mut e = Estimate::new();
        e.add(format!("ELA tensors at T={t}"), bht.saturating_mul(args.dim as u64), 10 * 4);
        if t <= args.quadratic_max_t {
            e.add(format!("T x T scores at T={t}"), bht.saturating_mul(t as u64), 3 * 4);
        }
        if e.total() > worst.total() {
            worst = e;
        }
    }
    worst.check("ela bench ela")?;
    if args.jax {
        if let Some(t) = times.iter().find(|&&t| t % args.chunk != 0) {
            return Err(Error::invalid(
                "ela bench ela",
                format!(
                    "--jax needs every T to be a multiple of --chunk {} (the peer reshapes into chunks), got {t}",
                    args.chunk
                ),
            ));
        }
    }
    crate::outln!(
        "ela bench ela: causal Hadamard-Exp, B={} H={} D=Dv={} chunk {} f32, CPU",
        args.batch,
        args.heads,
        args.dim,
        args.chunk
    );
    crate::outln!("machine: {}", machine());
    crate::outln!("command: {}", std::env::args().collect::<Vec<_>>().join(" "));
    crate::outln!(
        "date: {} (UTC); ELA: median of at least {} runs and at least {} ms of them; quadratic and softmax: {} \
         runs{}; each after 1 warm-up; times in ms",
        super::today_utc(),
        args.reps.max(1),
        args.min_ms,
        args.quadratic_reps.max(1),
        if args.jax { format!("; JAX: {} runs", args.reps.max(1)) } else { String::new() }
    );
    let mut rows = Vec::with_capacity(times.len());
    for &t in &times {
        rows.push(measure(args, t)?);
    }
    // The reference: the probe's fastest median, taken now and over the rows (the core at its
    // best during this run).
    let probe_ref = args
        .probe
        .then(|| rows.iter().flat_map(|r| r.probe.iter().flatten().copied()).fold(probe_reference_ms(5, 11), f64::min));
    if args.jax {
        run_jax(args, &times, &mut rows)?;
    }
    crate::outln!();
    print_table(&rows, args.jax, probe_ref)?;
    if let Some(reference) = probe_ref {
        crate::outln!(
            "\nprobe: a fixed loop of loads, multiply-adds and stores in L1, timed after every timed ELA call (median, and its ratio to the \
             fastest median of the run, {}); a ratio above about 1.1 means the core itself was slow while that \
             row was measured",
            fmt_ms(Some(reference))
        );
    }
    crate::outln!(
        "\nquadratic and softmax stop at T = {} (--quadratic-max-t): their [B, H, T, T] matrices grow as T^2",
        args.quadratic_max_t
    );
    crate::outln!("load average after: {}", super::load());
    if let Some(path) = &args.svg {
        plot(args, path, &rows)?;
        crate::outln!("plot: {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_peer_output() {
        let line = r#"{"t": 4096, "fwd_ms": 20.5, "fwdbwd_ms": 94.25}"#;
        assert_eq!(json_number(line, "t"), Some(4096.0));
        assert_eq!(json_number(line, "fwd_ms"), Some(20.5));
        assert_eq!(json_number(line, "fwdbwd_ms"), Some(94.25));
        assert_eq!(json_number(line, "missing"), None);
        assert_eq!(ratio(Some(3.0), Some(1.5)), "2.00x");
    }
}
