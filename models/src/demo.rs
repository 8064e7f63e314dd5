//! `ela demo`: a small, honest end-to-end run of the engine until the language model lands.
//!
//! A two-layer MLP classifies points of three interleaved spirals (generated from a seed, no
//! download). Forward and backward run through `ela-autograd`, matrix products through the
//! CPU GEMM, and the update is plain SGD with momentum written out here. The gradients of the
//! model are first checked against finite differences on a small batch in f64.

use std::time::Instant;

use crate::budget::Estimate;
use ela_autograd::{gradcheck, no_grad, GradcheckOptions, Var};
use ela_core::{Cpu, DType, Error, Result, Rng, Tensor};

/// Options of `ela demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Training steps.
    #[arg(long, default_value_t = 300)]
    pub steps: usize,
    /// Points per spiral arm (at least 9: the gradient check uses points 1-8 of the first arm).
    #[arg(long, default_value_t = 400)]
    pub points: usize,
    /// Hidden width.
    #[arg(long, default_value_t = 128)]
    pub hidden: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 0.2)]
    pub lr: f64,
    /// Random seed (data and initialisation).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

const CLASSES: usize = 3;
/// Points of the first arm (1 to this) in the whole-model gradient check.
const GRADCHECK_POINTS: usize = 8;

/// Three noisy spiral arms in the plane: `(points [n, 2], labels [n])`.
fn spirals(per_class: usize, rng: &mut Rng) -> (Vec<f32>, Vec<u32>) {
    let mut xs = Vec::with_capacity(per_class * CLASSES * 2);
    let mut ys = Vec::with_capacity(per_class * CLASSES);
    for c in 0..CLASSES {
        for i in 0..per_class {
            let r = i as f64 / per_class as f64;
            let t = c as f64 * 4.0 + 4.0 * r + 0.2 * rng.normal();
            xs.push((r * t.sin()) as f32);
            xs.push((r * t.cos()) as f32);
            ys.push(c as u32);
        }
    }
    (xs, ys)
}

struct Mlp {
    w1: Var<Cpu>,
    b1: Var<Cpu>,
    w2: Var<Cpu>,
    b2: Var<Cpu>,
}

impl Mlp {
    fn new(hidden: usize, dtype: DType, rng: &mut Rng) -> Result<Self> {
        let p = |t: Tensor<Cpu>| Var::param(t);
        Ok(Mlp {
            // He init, std = sqrt(2 / fan_in), with fan_in = 2 input coordinates.
            w1: p(Tensor::randn(0.0, 1.0, [2, hidden], dtype, rng, &Cpu)?),
            b1: p(Tensor::zeros([hidden], dtype, &Cpu)?),
            w2: p(Tensor::randn(0.0, (1.0 / hidden as f64).sqrt(), [hidden, CLASSES], dtype, rng, &Cpu)?),
            b2: p(Tensor::zeros([CLASSES], dtype, &Cpu)?),
        })
    }
    fn params(&self) -> [&Var<Cpu>; 4] {
        [&self.w1, &self.b1, &self.w2, &self.b2]
    }
    fn logits(&self, x: &Var<Cpu>) -> Result<Var<Cpu>> {
        x.matmul(&self.w1)?.add(&self.b1)?.relu()?.matmul(&self.w2)?.add(&self.b2)
    }
}

/// Run the demo, printing progress to stdout.
pub fn run(args: &DemoArgs) -> Result<()> {
    if args.steps == 0 || args.points == 0 || args.hidden == 0 {
        return Err(Error::invalid("demo", "--steps, --points and --hidden must be positive"));
    }
    if args.points < GRADCHECK_POINTS + 1 {
        return Err(Error::invalid(
            "demo",
            format!(
                "--points {} is too few: the gradient check uses points 1-{GRADCHECK_POINTS} of the first arm (its \
                 point 0 is the origin, a ReLU kink), so each arm needs at least {}",
                args.points,
                GRADCHECK_POINTS + 1
            ),
        ));
    }
    if !(args.lr.is_finite() && args.lr > 0.0) {
        return Err(Error::invalid("demo", format!("--lr must be finite and positive, got {}", args.lr)));
    }
    // Points (3 arms of --points each, 2 coordinates) in f32 and their labels, and the MLP's
    // activations over all of them (hidden pre- and post-ReLU with gradients, logits).
    let n = (args.points as u64).saturating_mul(CLASSES as u64);
    let mut e = Estimate::new();
    e.add("points and labels", n, 2 * 4 + 4);
    e.add("activations", n.saturating_mul(args.hidden as u64), 4 * 4);
    e.add("weights", (args.hidden as u64).saturating_mul(2 + 1 + CLASSES as u64 + 1), 4 * 4);
    e.check("demo")?;
    let mut rng = Rng::new(args.seed);
    let (xs, ys) = spirals(args.points, &mut rng);
    let n = ys.len();

    // 1. Gradient check of the whole model on 8 points in f64. The first point of each arm is
    //    the origin, where a zero-initialised bias puts ReLU exactly on its kink (no derivative):
    //    check points 1..=8 instead.
    let small = Mlp::new(6, DType::F64, &mut rng.fork())?;
    let g = GRADCHECK_POINTS;
    let x8 = Tensor::from_vec(xs[2..2 * (g + 1)].iter().map(|&v| v as f64).collect::<Vec<_>>(), [g, 2], &Cpu)?;
    let t8 = Tensor::from_vec(ys[1..=g].to_vec(), [g], &Cpu)?;
    let inputs: Vec<Tensor<Cpu>> = small.params().iter().map(|p| p.value()).collect();
    let report = gradcheck(
        |v| {
            let m = Mlp { w1: v[0].clone(), b1: v[1].clone(), w2: v[2].clone(), b2: v[3].clone() };
            m.logits(&Var::constant(x8.clone()))?.cross_entropy(&t8, None)
        },
        &inputs,
        GradcheckOptions::default(),
    )?;
    crate::outln!("{report}");
    if !report.passed {
        return Err(Error::invalid("demo", "the model's gradients disagree with finite differences"));
    }

    // 2. Training in f32 with SGD + momentum.
    let model = Mlp::new(args.hidden, DType::F32, &mut rng)?;
    let x = Var::constant(Tensor::from_vec(xs, [n, 2], &Cpu)?);
    let t = Tensor::from_vec(ys.clone(), [n], &Cpu)?;
    let mut velocity: Vec<Tensor<Cpu>> =
        model.params().iter().map(|p| p.value().zeros_like()).collect::<Result<_>>()?;
    let start = Instant::now();
    let mut loss_first = None;
    let mut loss = 0.0;
    for step in 0..args.steps {
        let l = model.logits(&x)?.cross_entropy(&t, None)?;
        loss = l.value().to_scalar()?;
        loss_first.get_or_insert(loss);
        let grads = l.backward()?;
        no_grad(|| -> Result<()> {
            for (p, v) in model.params().into_iter().zip(velocity.iter_mut()) {
                let g = grads.get(p).ok_or_else(|| Error::invalid("demo", "missing gradient"))?;
                *v = v.mul_scalar(0.9)?.add(g)?;
                p.set_value(p.value().sub(&v.mul_scalar(args.lr)?)?)?;
            }
            Ok(())
        })?;
        if step % 50 == 0 || step + 1 == args.steps {
            crate::outln!("step {step:>5}  loss {loss:.4}");
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let pred = no_grad(|| model.logits(&x))?.value().argmax(1usize, false)?.to_vec::<u32>()?;
    let acc = pred.iter().zip(&ys).filter(|(a, b)| a == b).count() as f64 / n as f64;
    crate::outln!(
        "trained {} steps on {n} points in {secs:.2} s: loss {:.4} -> {loss:.4}, accuracy {:.1}% (chance {:.1}%)",
        args.steps,
        loss_first.unwrap_or(loss),
        100.0 * acc,
        100.0 / CLASSES as f64
    );
    Ok(())
}
