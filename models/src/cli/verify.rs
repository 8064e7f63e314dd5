//! `ela verify`: check, on random inputs of your choosing, that the chunked and recurrent forms of
//! ELA compute the same function as the quadratic reference, for the output and the gradients.
//!
//! The reference is the quadratic form `(Q)` of docs/ela.md, run on the CPU in f64 from the very
//! values the fast forms receive (inputs are drawn in f64, rounded once to `--dtype`, and the
//! rounded values are widened back for the reference), with its gradients from the autograd tape.
//! The fast forms run in `--dtype` on `--device`. Errors are measured on the host in f64.

use crate::budget::Estimate;
use ela_core::{Backend, Cpu, DType, ElaKernel, Error, Result, Rng, Tensor};
use ela_nn::ela::{Ela, Form};

/// Printed under `ela verify --help`.
const TOLERANCES: &str = "\
Errors (per tensor, against the f64 quadratic reference):
  max abs = max |x - ref|
  max rel = max |x - ref| / max |ref|   (normwise; for dq, dk, dv the scale is
            max(max |ref|, max |dy| * max |v|), since a gradient can vanish exactly)
Tolerances on max rel (the bounds the property tests assert: tests/tests/ela_forms.rs,
ela_grads.rs; f16/bf16 the forward bound of ela_numerics.rs, a few bf16 roundings):
  f64        y 1e-10   dq/dk/dv 1e-9
  f32        y 1e-5    dq/dk/dv 1e-4
  f16, bf16  y 1e-2    dq/dk/dv 1e-2   (computed with an f32 state, rounded once on output)
Inputs (default --inputs conditioned, as in the tests): hadamard-exp and elu-plus-one q, k ~ N(0, scale^2);
sum-sq-euclid and identity q, k ~ U[0.5, 1.5]; sub-sq-euclid q ~ U[0.5, 1.5], k ~ U[-1.5, -0.5];
blueprint q, k ~ U[-0.9, 0.9]/sqrt(dim) per coordinate (so q.k > -0.81). The signed kernels'
linear denominators cancel for arbitrary inputs (docs/ela.md#signed-kernels); --inputs normal
draws N(0, scale^2) for every kernel to show that. v, dy ~ N(0, 1).
Exit status: 0 when every error is within tolerance, 1 otherwise.";

/// Options of `ela verify`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = TOLERANCES)]
pub struct VerifyArgs {
    /// Only this kernel: hadamard-exp, sum-sq-euclid, sub-sq-euclid, blueprint, identity,
    /// elu-plus-one (default: all).
    #[arg(long)]
    pub kernel: Option<ElaKernel>,
    /// Batch size.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 2)]
    pub heads: usize,
    /// Sequence length T.
    #[arg(long, default_value_t = 256)]
    pub time: usize,
    /// Query/key dimension D.
    #[arg(long, default_value_t = 32)]
    pub dim: usize,
    /// Value dimension Dv (default: --dim).
    #[arg(long)]
    pub dv: Option<usize>,
    /// Chunk length C of the chunked form on the CPU. The CUDA backend picks its own chunking
    /// (cuda/README.md), so with `--device cuda` any other value than 64 is refused.
    #[arg(long, default_value_t = 64)]
    pub chunk: usize,
    /// Causal (`true`) or full (`false`) attention; the recurrent form exists only when causal.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub causal: bool,
    /// Dtype of the fast forms: f32, f64, f16, bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Device of the fast forms: cpu, cuda, cuda:N (the reference always runs on the CPU).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Standard deviation of q and k where they are normal (hadamard-exp, elu-plus-one, or --inputs
    /// normal).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Input distribution: `conditioned` (per kernel, as in the tests) or `normal` (N(0, scale^2) for all).
    #[arg(long, default_value = "conditioned")]
    pub inputs: String,
    /// Largest [batch, heads, time, time] f64 matrix the quadratic reference may build, in GiB
    /// (its tape holds several at once).
    #[arg(long, default_value_t = 1.0)]
    pub max_reference_gib: f64,
    /// Add this fraction of max |y_ref| to one element of the chunked output before comparing
    /// (proves that the check can fail).
    #[arg(long, hide = true)]
    pub plant_error: Option<f64>,
    /// Check another implementation instead of ours: a safetensors file holding q, k, v and its
    /// output y (optionally dy and its dq, dk, dv); see docs/usage.md. Uses --kernel (default
    /// hadamard-exp), --causal, --layout, --tol, --grad-tol, --max-reference-gib.
    #[arg(long, value_name = "FILE", conflicts_with_all = [
        "batch", "heads", "time", "dim", "dv", "chunk", "dtype", "seed", "device", "scale", "inputs", "plant_error"
    ])]
    pub external: Option<std::path::PathBuf>,
    /// Axis order of the --external tensors: bhtd ([batch, heads, time, dim]) or bthd.
    #[arg(long, default_value = "bhtd", requires = "external")]
    pub layout: String,
    /// Relative tolerance of y for --external (default: the table below, by y's dtype).
    #[arg(long, requires = "external")]
    pub tol: Option<f64>,
    /// Relative tolerance of dq, dk, dv for --external (default: the table below, by their dtype).
    #[arg(long, requires = "external")]
    pub grad_tol: Option<f64>,
}

/// Relative tolerances `(y, gradients)` for a dtype (printed by `ela verify --help`).
pub fn tolerance(dtype: DType) -> Result<(f64, f64)> {
    match dtype {
        DType::F64 => Ok((1e-10, 1e-9)),
        DType::F32 => Ok((1e-5, 1e-4)),
        DType::F16 | DType::BF16 => Ok((1e-2, 1e-2)),
        _ => Err(Error::UnsupportedDType { op: "ela verify", dtype, expected: "f64, f32, f16 or bf16 (--dtype)" }),
    }
}

/// Max abs and normwise relative error of `x` against `r`; the relative scale is
/// `max(max |r|, floor)`. A NaN anywhere counts as an infinite error.
fn errors(x: &[f64], r: &[f64], floor: f64) -> (f64, f64) {
    let scale = r.iter().fold(floor.max(f64::MIN_POSITIVE), |m, v| m.max(v.abs()));
    let abs = x.iter().zip(r).fold(0.0f64, |m, (a, b)| {
        let d = (a - b).abs();
        if d.is_nan() {
            f64::INFINITY
        } else {
            m.max(d)
        }
    });
    (abs, abs / scale)
}

fn max_abs(x: &[f64]) -> f64 {
    x.iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// One line of the table: one form of one kernel, with `(max abs, max rel)` of `y`, `dq`, `dk`,
/// `dv` (`None` where the form has no such tensor: the recurrent form has no gradients).
struct Row {
    kernel: ElaKernel,
    form: Form,
    err: [Option<(f64, f64)>; 4],
}

impl Row {
    /// Errors over tolerance (`tol` = (y, gradients)); NaN counts as over.
    fn failures(&self, tol: (f64, f64)) -> usize {
        self.err
            .iter()
            .enumerate()
            .filter(|(i, e)| {
                let tol = if *i == 0 { tol.0 } else { tol.1 };
                e.is_some_and(|(_, rel)| rel.is_nan() || rel > tol)
            })
            .count()
    }
}

fn uniform(n: usize, lo: f64, hi: f64, rng: &mut Rng) -> Vec<f64> {
    (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect()
}

/// `(q, k)` drawn for `kernel` (the distributions of `tests/tests/ela_common`), and a description.
fn draw_qk(kernel: ElaKernel, n: usize, d: usize, args: &VerifyArgs, rng: &mut Rng) -> (Vec<f64>, Vec<f64>, String) {
    let s = args.scale;
    let normal = |rng: &mut Rng| (0..n).map(|_| s * rng.normal()).collect::<Vec<f64>>();
    // Hadamard Exp and elu+1 have positive features: any input is safe.
    if args.inputs == "normal" || matches!(kernel, ElaKernel::HadamardExp | ElaKernel::EluPlusOne) {
        return (normal(rng), normal(rng), format!("q, k ~ N(0, {s}^2)"));
    }
    match kernel {
        ElaKernel::SubSqEuclid => (
            uniform(n, 0.5, 1.5, rng),
            uniform(n, -1.5, -0.5, rng),
            "q ~ U[0.5,1.5], k ~ U[-1.5,-0.5] (bounded cancellation)".into(),
        ),
        ElaKernel::Blueprint => {
            let r = 0.9 / (d as f64).sqrt();
            (uniform(n, -r, r, rng), uniform(n, -r, r, rng), "|q|, |k| <= 0.9 so q.k > -0.81 (kernel > 0)".into())
        }
        _ => (uniform(n, 0.5, 1.5, rng), uniform(n, 0.5, 1.5, rng), "q, k ~ U[0.5,1.5] (bounded cancellation)".into()),
    }
}

/// Host values -> a CPU tensor rounded once to `dtype`.
fn rounded(v: Vec<f64>, shape: [usize; 4], dtype: DType) -> Result<Tensor<Cpu>> {
    Tensor::from_vec(v, shape, &Cpu)?.to_dtype(dtype)
}

/// Run every form of `kernel` and compare it with the reference; returns the rows and the
/// description of the inputs.
fn verify_kernel<B: Backend>(
    args: &VerifyArgs,
    kernel: ElaKernel,
    dtype: DType,
    dev: &B,
) -> Result<(Vec<Row>, String)> {
    let (b, h, t, d) = (args.batch, args.heads, args.time, args.dim);
    let dv = args.dv.unwrap_or(d);
    let mut rng = Rng::new(args.seed);
    let (q, k, about) = draw_qk(kernel, b * h * t * d, d, args, &mut rng);
    let v = (0..b * h * t * dv).map(|_| rng.normal()).collect();
    let dy = (0..b * h * t * dv).map(|_| rng.normal()).collect();
    let cpu = [rounded(q, [b, h, t, d], dtype)?, rounded(k, [b, h, t, d], dtype)?, rounded(v, [b, h, t, dv], dtype)?];
    let dy = rounded(dy, [b, h, t, dv], dtype)?;

    // The oracle: quadratic form, f64, CPU, from the rounded values.
    let wide = |x: &Tensor<Cpu>| x.to_dtype(DType::F64);
    let reference = Ela::<Cpu>::builtin(kernel).with_causal(args.causal).with_chunk(args.chunk).run_with_grads(
        Form::Quadratic,
        &wide(&cpu[0])?,
        &wide(&cpu[1])?,
        &wide(&cpu[2])?,
        &wide(&dy)?,
    )?;
    let ref_y = reference.y.to_vec_f64()?;
    let ref_g = reference.grads;
    let ref_g = [ref_g.dq.to_vec_f64()?, ref_g.dk.to_vec_f64()?, ref_g.dv.to_vec_f64()?];
    // The oracle has no answer when its own f64 arithmetic overflows (exp(q.k) beyond ~1e308 at
    // a large --scale): comparing against it would report every form as FAIL.
    if ref_y.iter().chain(ref_g.iter().flatten()).any(|x| !x.is_finite()) {
        return Err(Error::invalid(
            "ela verify",
            format!(
                "the f64 quadratic reference itself overflows for {} at --scale {} (its kernel values exceed the \
                 f64 range), so there is nothing exact to compare with; lower --scale",
                kernel.name(),
                args.scale
            ),
        ));
    }
    let grad_floor = max_abs(&dy.to_vec_f64()?) * max_abs(&cpu[2].to_vec_f64()?);

    let on_dev = |x: &Tensor<Cpu>| x.to_device(dev);
    let (qd, kd, vd, dyd) = (on_dev(&cpu[0])?, on_dev(&cpu[1])?, on_dev(&cpu[2])?, on_dev(&dy)?);
    let ela = Ela::<B>::builtin(kernel).with_causal(args.causal).with_chunk(args.chunk);
    let chunked = ela.run_with_grads(Form::Chunked, &qd, &kd, &vd, &dyd)?;
    let mut y = chunked.y.to_vec_f64()?;
    if let (Some(eps), Some(first)) = (args.plant_error, y.first_mut()) {
        *first += eps * max_abs(&ref_y);
    }
    let g = chunked.grads;
    let grad_err = |x: &Tensor<B>, r: &[f64]| Ok::<_, Error>(Some(errors(&x.to_vec_f64()?, r, grad_floor)));
    let mut rows = vec![Row {
        kernel,
        form: Form::Chunked,
        err: [
            Some(errors(&y, &ref_y, 0.0)),
            grad_err(&g.dq, &ref_g[0])?,
            grad_err(&g.dk, &ref_g[1])?,
            grad_err(&g.dv, &ref_g[2])?,
        ],
    }];
    if args.causal {
        let rec = ela.run(Form::Recurrent, &qd, &kd, &vd)?;
        let err = [Some(errors(&rec.to_vec_f64()?, &ref_y, 0.0)), None, None, None];
        rows.push(Row { kernel, form: Form::Recurrent, err });
    }
    Ok((rows, about))
}

fn check_args(args: &VerifyArgs) -> Result<(Vec<ElaKernel>, DType)> {
    let dims = [("--batch", args.batch), ("--heads", args.heads), ("--time", args.time), ("--dim", args.dim)];
    crate::device::check_chunk(args.chunk, &args.device, "ela verify")?;
    for (flag, n) in dims.into_iter().chain([("--dv", args.dv.unwrap_or(1))]) {
        if n == 0 {
            return Err(Error::invalid("ela verify", format!("{flag} must be at least 1")));
        }
    }
    if !(args.scale.is_finite() && args.scale > 0.0) {
        return Err(Error::invalid("ela verify", format!("--scale must be positive and finite, got {}", args.scale)));
    }
    if args.inputs != "conditioned" && args.inputs != "normal" {
        return Err(Error::invalid(
            "ela verify",
            format!("unknown --inputs {:?}; expected conditioned or normal", args.inputs),
        ));
    }
    if !(args.max_reference_gib.is_finite() && args.max_reference_gib > 0.0) {
        // NaN would compare false below and disable the guard.
        return Err(Error::invalid(
            "ela verify",
            format!("--max-reference-gib must be finite and positive, got {}", args.max_reference_gib),
        ));
    }
    // In f64: the integer product can overflow for absurd sizes, which is what this catches.
    let gib = args.batch as f64 * args.heads as f64 * (args.time as f64).powi(2) * 8.0 / (1u64 << 30) as f64;
    if gib > args.max_reference_gib {
        return Err(Error::invalid(
            "ela verify",
            format!(
                "the f64 quadratic reference needs [{}, {}, {t}, {t}] matrices of {gib:.1} GiB each (several at once), \
                 above --max-reference-gib {}; lower --time, --batch or --heads, or raise the limit",
                args.batch,
                args.heads,
                args.max_reference_gib,
                t = args.time
            ),
        ));
    }
    // Everything else: inputs, outputs and gradients of every form in the input dtype and in
    // f64 for the reference (about 12 [B, H, T, max(D, Dv)] tensors), beside the T x T guard.
    let width = args.dim.max(args.dv.unwrap_or(args.dim)) as u64;
    let bht = (args.batch as u64).saturating_mul(args.heads as u64).saturating_mul(args.time as u64);
    let mut e = Estimate::new();
    e.add("inputs, outputs and gradients", bht.saturating_mul(width), 12 * 8);
    e.add("the quadratic reference's T x T matrices", bht.saturating_mul(args.time as u64), 3 * 8);
    e.check_for("ela verify", args.device.parse()?)?;
    let dtype: DType = args.dtype.parse()?;
    tolerance(dtype)?;
    let kernels = match args.kernel {
        Some(kernel) => vec![kernel],
        None => ElaKernel::ALL.to_vec(),
    };
    Ok((kernels, dtype))
}

fn fmt_err(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2e}")
    } else {
        "inf/NaN".into()
    }
}

/// `ela verify --external FILE`: the file's tensors against the exact f64 answer.
fn run_external(args: &VerifyArgs, path: &std::path::Path) -> Result<()> {
    use crate::external::{verify_external, ExternalOptions};
    let kernel = args.kernel.unwrap_or(ElaKernel::HadamardExp);
    for (flag, t) in [("--tol", args.tol), ("--grad-tol", args.grad_tol)] {
        if let Some(t) = t.filter(|t| !(t.is_finite() && *t >= 0.0)) {
            return Err(Error::invalid("ela verify", format!("{flag} must be finite and >= 0, got {t}")));
        }
    }
    let opts = ExternalOptions {
        kernel,
        causal: args.causal,
        layout: args.layout.parse()?,
        tol_y: args.tol,
        tol_grad: args.grad_tol,
        max_reference_gib: args.max_reference_gib,
    };
    let report = verify_external(path, &opts)?;
    let [b, h, t, d] = report.dims;
    crate::outln!(
        "ela verify --external {}: kernel {}, {}, layout {}",
        path.display(),
        kernel.name(),
        if args.causal { "causal" } else { "non-causal" },
        args.layout
    );
    crate::outln!("B {b}, H {h}, T {t}, D {d}, Dv {}", report.dv);
    crate::outln!("reference: quadratic form in f64 on the CPU from the file's own values, gradients from its tape\n");
    crate::outln!(
        "| tensor | dtype | max abs | max rel | worst at ({}) | non-finite | tolerance | result |",
        args.layout
    );
    crate::outln!("|---|---|---:|---:|---|---:|---:|---|");
    for c in &report.checks {
        crate::outln!(
            "| {} | {} | {} | {} | {:?} | {} | {:.0e} | {} |",
            c.name,
            c.dtype.as_str(),
            fmt_err(c.max_abs),
            fmt_err(c.max_rel),
            c.worst,
            c.non_finite,
            c.tol,
            if c.passed() { "ok" } else { "FAIL" }
        );
    }
    if report.checks.len() == 1 {
        crate::outln!("(no dy in the file: gradients not checked)");
    }
    let failed = report.checks.iter().filter(|c| !c.passed()).count();
    if failed > 0 {
        crate::outln!(
            "\nFAIL: {failed} of {} tensors differ from the exact answer beyond tolerance",
            report.checks.len()
        );
        return Err(Error::invalid(
            "ela verify",
            format!(
                "{failed} of {} tensors of {} are not exact (rows marked FAIL)",
                report.checks.len(),
                path.display()
            ),
        ));
    }
    let n = report.checks.len();
    crate::outln!("\nPASS: {n} tensor{} within tolerance of the exact answer", if n == 1 { "" } else { "s" });
    Ok(())
}

/// Run `ela verify`: print the table; an error (exit 1) when any error exceeds its tolerance.
pub fn run(args: &VerifyArgs) -> Result<()> {
    if let Some(path) = &args.external {
        return run_external(args, path);
    }
    let (kernels, dtype) = check_args(args)?;
    let (tol_y, tol_g) = tolerance(dtype)?;
    // A missing GPU is a one-line error before any output.
    crate::on_device!(&args.device, |_dev| Ok::<(), Error>(()))?;
    crate::outln!(
        "ela verify: batch {} heads {} time {} dim {} dv {} chunk {} {} {} on {} seed {}",
        args.batch,
        args.heads,
        args.time,
        args.dim,
        args.dv.unwrap_or(args.dim),
        args.chunk,
        if args.causal { "causal" } else { "non-causal" },
        dtype.as_str(),
        args.device,
        args.seed
    );
    crate::outln!(
        "reference: quadratic form in f64 on the CPU (from the same {}-rounded inputs), gradients from its tape",
        dtype.as_str()
    );
    crate::outln!("tolerance on max rel: y {tol_y:e}, dq/dk/dv {tol_g:e} (see --help for how errors are measured)\n");
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for &kernel in &kernels {
        let (r, about) = crate::on_device!(&args.device, |dev| verify_kernel(args, kernel, dtype, dev))?;
        rows.extend(r);
        notes.push(format!("  {:<14} {about}", kernel.name()));
    }
    crate::outln!("| kernel | form | y abs | y rel | dq abs | dq rel | dk abs | dk rel | dv abs | dv rel | result |");
    crate::outln!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in &rows {
        let mut line = format!("| {} | {} |", r.kernel.name(), r.form.name());
        for e in &r.err {
            line += &match e {
                Some((abs, rel)) => format!(" {} | {} |", fmt_err(*abs), fmt_err(*rel)),
                None => " - | - |".into(),
            };
        }
        let bad = r.failures((tol_y, tol_g));
        line += if bad > 0 { " FAIL |" } else { " ok |" };
        crate::outln!("{line}");
    }
    if args.causal {
        crate::outln!("(the recurrent form is the decoding path: it has no gradients, shown as -)");
    }
    if !args.causal {
        crate::outln!(
            "\nrecurrent form skipped: it exists only for causal attention (non-causal ELA is one global state)"
        );
    }
    crate::outln!("\ninputs:");
    for n in &notes {
        crate::outln!("{n}");
    }
    if args.inputs == "conditioned" {
        crate::outln!(
            "  the signed kernels get inputs with bounded cancellation in the linear denominator, as in \
             tests/tests/ela_common (docs/ela.md#signed-kernels); --inputs normal draws N(0, scale^2) for all"
        );
    } else {
        crate::outln!(
            "  note: with --inputs normal the signed kernels' (sum/sub-sq-euclid, blueprint, identity) denominators \
             can cancel or vanish, so large errors there measure the conditioning of the function (docs/ela.md#signed-kernels)"
        );
    }
    if args.plant_error.is_some() {
        crate::outln!("  note: an error was planted in the chunked output (--plant-error)");
    }
    let failed: usize = rows.iter().map(|r| r.failures((tol_y, tol_g))).sum();
    let checked = rows.iter().flat_map(|r| r.err).flatten().count();
    if failed > 0 {
        crate::outln!("\nFAIL: {failed} of {checked} errors exceed the {} tolerance", dtype.as_str());
        return Err(Error::invalid(
            "ela verify",
            format!("{failed} of {checked} errors exceed the {} tolerance (rows marked FAIL)", dtype.as_str()),
        ));
    }
    crate::outln!("\nPASS: all {checked} errors within the {} tolerance", dtype.as_str());
    Ok(())
}
