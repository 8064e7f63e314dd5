//! Checking another implementation of ELA against the exact answer (`ela verify --external`).
//!
//! A researcher runs their implementation (PyTorch, JAX, a Triton kernel) on some `q, k, v`, saves
//! the inputs and what it returned to a safetensors file, and asks: is this exact? This module
//! recomputes the answer from the same inputs with the quadratic form `(Q)` of docs/ela.md in f64
//! on the CPU (gradients from its autograd tape) and measures the file's tensors against it.
//!
//! The file holds, by name (any float dtype; each tensor may have its own):
//!
//! | name | shape (`bhtd`; `bthd` swaps H and T) | |
//! |---|---|---|
//! | `q`, `k` | `[B, H, T, D]` | the inputs exactly as the kernel saw them (after any scaling) |
//! | `v` | `[B, H, T, Dv]` | |
//! | `y` | `[B, H, T, Dv]` | the implementation's output |
//! | `dy` | `[B, H, T, Dv]` | optional: the upstream gradient used for the backward |
//! | `dq`, `dk`, `dv` | like `q`, `k`, `v` | optional (need `dy`): the implementation's gradients |
//!
//! Errors are measured as `ela verify` measures them: max abs `max |x - ref|` and the normwise
//! relative error `max |x - ref| / max |ref|` (for gradients the scale is at least
//! `max |dy| max |v|`, since a gradient can vanish exactly), with the position of the worst
//! element and the number of non-finite values in the file's tensor. A tensor passes when its
//! relative error is within the tolerance and it holds no NaN or infinity.
//! `examples/python/dump_for_verify.py` writes such a file from PyTorch.

use std::path::Path;

use ela_core::{Cpu, DType, ElaKernel, Error, Result, Tensor};
use ela_nn::checkpoint;
use ela_nn::ela::{Ela, Form};

const OP: &str = "ela verify --external";

/// Axis order of the tensors in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[batch, heads, time, dim]` (ELA-rs, PyTorch SDPA).
    Bhtd,
    /// `[batch, time, heads, dim]` (flash-linear-attention's default).
    Bthd,
}

impl std::str::FromStr for Layout {
    type Err = Error;
    fn from_str(s: &str) -> Result<Layout> {
        match s {
            "bhtd" => Ok(Layout::Bhtd),
            "bthd" => Ok(Layout::Bthd),
            _ => Err(Error::invalid(OP, format!("unknown --layout {s:?}; expected bhtd or bthd"))),
        }
    }
}

/// What to check the file against.
#[derive(Clone, Debug)]
pub struct ExternalOptions {
    /// The kernel the implementation claims to compute.
    pub kernel: ElaKernel,
    /// Causal (each row sees keys up to its own position) or full attention.
    pub causal: bool,
    /// Axis order in the file.
    pub layout: Layout,
    /// Relative tolerance of `y` (default: `ela verify`'s for the dtype of `y`).
    pub tol_y: Option<f64>,
    /// Relative tolerance of the gradients (default: `ela verify`'s for their dtype).
    pub tol_grad: Option<f64>,
    /// Largest `[B, H, T, T]` f64 matrix the reference may build, in GiB.
    pub max_reference_gib: f64,
}

/// The comparison of one tensor of the file with the reference.
#[derive(Clone, Debug)]
pub struct TensorCheck {
    /// `y`, `dq`, `dk` or `dv`.
    pub name: &'static str,
    /// Its dtype in the file.
    pub dtype: DType,
    /// `max |x - ref|` over the finite pairs (infinite if any difference is NaN).
    pub max_abs: f64,
    /// `max_abs / max(max |ref|, floor)`.
    pub max_rel: f64,
    /// Index of the largest difference, in the file's axis order.
    pub worst: [usize; 4],
    /// NaN and infinite values in the file's tensor.
    pub non_finite: usize,
    /// The relative tolerance it was held to.
    pub tol: f64,
}

impl TensorCheck {
    /// Within tolerance and free of NaN and infinities.
    pub fn passed(&self) -> bool {
        self.non_finite == 0 && self.max_rel <= self.tol
    }
}

/// The result of [`verify_external`].
#[derive(Clone, Debug)]
pub struct ExternalReport {
    /// `[B, H, T, D]` of `q`, whatever the file's layout.
    pub dims: [usize; 4],
    /// Value head size.
    pub dv: usize,
    /// `y`, then whichever of `dq`, `dk`, `dv` the file holds.
    pub checks: Vec<TensorCheck>,
}

impl ExternalReport {
    /// Every tensor passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(TensorCheck::passed)
    }
}

/// Check the implementation whose inputs and outputs are saved in `path` (see the module docs).
pub fn verify_external(path: &Path, opts: &ExternalOptions) -> Result<ExternalReport> {
    let file = checkpoint::load(path, &Cpu)?;
    let name = path.display().to_string();
    let get = |key: &str| file.tensors.get(key);
    let need = |key: &str| {
        get(key).ok_or_else(|| {
            Error::invalid(
                OP,
                format!(
                    "{name} has no tensor named {key:?} (it holds {:?}); q, k, v and y are required, dy, dq, dk, dv \
                     optional",
                    file.tensors.keys().collect::<Vec<_>>()
                ),
            )
        })
    };
    let (q, k, v, y) = (need("q")?, need("k")?, need("v")?, need("y")?);
    let dy = get("dy");
    let grads: Vec<(&'static str, &Tensor<Cpu>)> =
        [("dq", "dq"), ("dk", "dk"), ("dv", "dv")].iter().filter_map(|&(n, key)| get(key).map(|t| (n, t))).collect();
    if dy.is_none() && !grads.is_empty() {
        return Err(Error::invalid(
            OP,
            format!(
                "{name} holds {} but no dy: the gradients can only be checked against the upstream gradient they were \
                 computed from; save it as dy",
                grads.iter().map(|g| g.0).collect::<Vec<_>>().join(", ")
            ),
        ));
    }

    // Shapes, in the file's order, then as [B, H, T, D].
    let qs = dims4("q", q)?;
    let [b, h, t, d] = to_bhtd(qs, opts.layout);
    let vs = dims4("v", v)?;
    let dv = vs[3];
    let want_qk = qs;
    let want_v = from_bhtd([b, h, t, dv], opts.layout);
    let expect = |n: &str, x: &Tensor<Cpu>, want: [usize; 4]| -> Result<()> {
        let got = dims4(n, x)?;
        if got != want {
            return Err(Error::invalid(
                OP,
                format!(
                    "{n} has shape {got:?}, expected {want:?} from q {qs:?} and v {vs:?} in layout {:?} (q, k: [B, H, T, \
                     D]; v, y, dy: [B, H, T, Dv]; gradients like their inputs; --layout bthd swaps H and T)",
                    opts.layout
                ),
            ));
        }
        Ok(())
    };
    expect("k", k, want_qk)?;
    expect("v", v, want_v)?;
    expect("y", y, want_v)?;
    if let Some(dy) = dy {
        expect("dy", dy, want_v)?;
    }
    for (n, g) in &grads {
        expect(n, g, if *n == "dv" { want_v } else { want_qk })?;
    }
    if [b, h, t, d, dv].contains(&0) {
        return Err(Error::invalid(OP, format!("q {qs:?} and v {vs:?} are empty: there is nothing to check")));
    }
    for x in [q, k, v, y].into_iter().chain(dy).chain(grads.iter().map(|g| g.1)) {
        if !x.dtype().is_float() {
            return Err(Error::UnsupportedDType {
                op: OP,
                dtype: x.dtype(),
                expected: "a float dtype (f64, f32, f16, bf16)",
            });
        }
    }
    check_reference_size(b, h, t, opts.max_reference_gib)?;

    // The exact answer, from the very values in the file.
    let wide = |x: &Tensor<Cpu>| -> Result<Tensor<Cpu>> {
        let x = x.to_dtype(DType::F64)?;
        match opts.layout {
            Layout::Bhtd => Ok(x),
            Layout::Bthd => x.transpose(1, 2)?.contiguous(),
        }
    };
    let dy64 = dy.map(wide).transpose()?;
    let ela = Ela::<Cpu>::builtin(opts.kernel).with_causal(opts.causal);
    let (q64, k64, v64) = (wide(q)?, wide(k)?, wide(v)?);
    let (ref_y, ref_g) = match &dy64 {
        Some(dy) => {
            let out = ela.run_with_grads(Form::Quadratic, &q64, &k64, &v64, dy)?;
            let g = &out.grads;
            (out.y.to_vec_f64()?, Some([g.dq.to_vec_f64()?, g.dk.to_vec_f64()?, g.dv.to_vec_f64()?]))
        }
        None => (ela.run(Form::Quadratic, &q64, &k64, &v64)?.to_vec_f64()?, None),
    };
    if ref_y.iter().chain(ref_g.iter().flatten().flatten()).any(|x| !x.is_finite()) {
        return Err(Error::invalid(
            OP,
            format!(
                "the f64 quadratic reference itself overflows on these inputs ({} kernel values beyond ~1e308), so there \
                 is no exact answer to compare with; save smaller inputs",
                opts.kernel.name()
            ),
        ));
    }

    let tol_for = |dtype: DType, explicit: Option<f64>, grad: bool| -> Result<f64> {
        match explicit {
            Some(t) => Ok(t),
            None => crate::cli::verify::tolerance(dtype).map(|(ty, tg)| if grad { tg } else { ty }),
        }
    };
    let mut checks =
        vec![compare("y", &wide(y)?, y.dtype(), &ref_y, 0.0, opts.layout, tol_for(y.dtype(), opts.tol_y, false)?)?];
    if let (Some(ref_g), Some(dy64)) = (&ref_g, &dy64) {
        let floor = max_abs(&dy64.to_vec_f64()?) * max_abs(&wide(v)?.to_vec_f64()?);
        for (n, g) in &grads {
            let r = match *n {
                "dq" => &ref_g[0],
                "dk" => &ref_g[1],
                _ => &ref_g[2],
            };
            let tol = tol_for(g.dtype(), opts.tol_grad, true)?;
            checks.push(compare(n, &wide(g)?, g.dtype(), r, floor, opts.layout, tol)?);
        }
    }
    Ok(ExternalReport { dims: [b, h, t, d], dv, checks })
}

fn dims4(name: &str, x: &Tensor<Cpu>) -> Result<[usize; 4]> {
    <[usize; 4]>::try_from(x.dims()).map_err(|_| {
        Error::invalid(OP, format!("{name} has shape {:?}; every tensor must have 4 axes ([B, H, T, D] or, with --layout bthd, [B, T, H, D])", x.dims()))
    })
}

fn to_bhtd(s: [usize; 4], layout: Layout) -> [usize; 4] {
    match layout {
        Layout::Bhtd => s,
        Layout::Bthd => [s[0], s[2], s[1], s[3]],
    }
}

/// The same swap is its own inverse.
fn from_bhtd(s: [usize; 4], layout: Layout) -> [usize; 4] {
    to_bhtd(s, layout)
}

fn check_reference_size(b: usize, h: usize, t: usize, max_gib: f64) -> Result<()> {
    if !(max_gib.is_finite() && max_gib > 0.0) {
        return Err(Error::invalid(OP, format!("--max-reference-gib must be finite and positive, got {max_gib}")));
    }
    let gib = b as f64 * h as f64 * (t as f64).powi(2) * 8.0 / (1u64 << 30) as f64;
    if gib > max_gib {
        return Err(Error::invalid(
            OP,
            format!(
                "the f64 quadratic reference needs [{b}, {h}, {t}, {t}] matrices of {gib:.1} GiB each (several at once), \
                 above --max-reference-gib {max_gib}; save a shorter or smaller batch, or raise the limit"
            ),
        ));
    }
    Ok(())
}

fn max_abs(x: &[f64]) -> f64 {
    x.iter().fold(0.0, |m, v| if v.is_finite() { m.max(v.abs()) } else { m })
}

/// One tensor of the file (already `[B, H, T, *]` f64 in `x`) against the reference `r`.
fn compare(
    name: &'static str,
    x: &Tensor<Cpu>,
    dtype: DType,
    r: &[f64],
    floor: f64,
    layout: Layout,
    tol: f64,
) -> Result<TensorCheck> {
    let dims = dims4(name, x)?;
    let xs = x.to_vec_f64()?;
    let non_finite = xs.iter().filter(|v| !v.is_finite()).count();
    let (mut max_abs_err, mut worst_i) = (0.0f64, 0);
    for (i, (a, b)) in xs.iter().zip(r).enumerate() {
        let e = (a - b).abs();
        let e = if e.is_nan() { f64::INFINITY } else { e };
        if e > max_abs_err {
            (max_abs_err, worst_i) = (e, i);
        }
    }
    let scale = max_abs(r).max(floor).max(f64::MIN_POSITIVE);
    // The flat index is in [B, H, T, *] order; report it in the file's order.
    let [_, h, t, w] = dims;
    let bhtd = [worst_i / (h * t * w), worst_i / (t * w) % h, worst_i / w % t, worst_i % w];
    let worst = from_bhtd(bhtd, layout);
    Ok(TensorCheck { name, dtype, max_abs: max_abs_err, max_rel: max_abs_err / scale, worst, non_finite, tol })
}
