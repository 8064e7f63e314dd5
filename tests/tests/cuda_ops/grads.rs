//! Gradients through the autograd tape on the GPU: central finite differences in f64 (every
//! backward formula runs on CUDA kernels), and one f32 training step compared with the CPU.

use ela_autograd::{gradcheck, GradcheckOptions, Var};
use ela_core::{Conv2dParams, Cpu, DType, Pool2dParams, Result, Rng, Shape, Tensor};
use ela_cuda::Cuda;

use crate::{check_tol, gpu};

fn rand(shape: &[usize], seed: u64, dev: &Cuda) -> Tensor<Cuda> {
    Tensor::randn(0.0, 1.0, shape.to_vec(), DType::F64, &mut Rng::new(seed), dev).unwrap()
}

#[test]
fn gradcheck_every_op_family_on_the_gpu() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let o = GradcheckOptions::default();
    type F<'a> = &'a dyn Fn(&[Var<Cuda>]) -> Result<Var<Cuda>>;
    let check = |name: &str, f: F, xs: Vec<Tensor<Cuda>>| {
        let r = gradcheck(f, &xs, o).unwrap();
        assert!(r.passed, "{name}: {r}");
    };
    let d = &dev;
    check("matmul_bcast", &|v| v[0].matmul(&v[1].t()?), vec![rand(&[2, 3, 4], 1, d), rand(&[5, 4], 2, d)]);
    check("mul_bcast", &|v| v[0].mul(&v[1])?.tanh(), vec![rand(&[2, 3], 3, d), rand(&[3], 4, d)]);
    check("div", &|v| v[0].div(&v[1].square()?.add_scalar(1.0)?), vec![rand(&[4], 5, d), rand(&[4], 6, d)]);
    check("softmax", &|v| v[0].softmax(0usize), vec![rand(&[3, 4], 7, d)]);
    check("log_softmax", &|v| v[0].log_softmax(-1isize), vec![rand(&[3, 4], 8, d)]);
    check("rms", &|v| v[0].rms_norm(Some(&v[1]), 1e-5), vec![rand(&[3, 5], 9, d), rand(&[5], 10, d)]);
    check(
        "ln",
        &|v| v[0].layer_norm(Some(&v[1]), Some(&v[2]), 1e-5),
        vec![rand(&[3, 5], 11, d), rand(&[5], 12, d), rand(&[5], 13, d)],
    );
    let t = Tensor::from_vec(vec![1u32, 0, 3], [3], d)?;
    check("ce", &|v| v[0].cross_entropy(&t, Some(3)), vec![rand(&[3, 4], 14, d)]);
    check("max", &|v| v[0].max(1usize, false), vec![rand(&[3, 4], 15, d)]);
    check("lse", &|v| v[0].logsumexp(0usize, true), vec![rand(&[3, 4], 16, d)]);
    check("cumsum", &|v| v[0].cumsum(1usize, true, true), vec![rand(&[3, 4], 17, d)]);
    let p = Conv2dParams { stride: (2, 1), padding: (1, 1), dilation: (1, 2), groups: 2 };
    check("conv", &|v| v[0].conv2d(&v[1], &p), vec![rand(&[2, 4, 5, 6], 18, d), rand(&[6, 2, 3, 2], 19, d)]);
    let pp = Pool2dParams { kernel: (2, 2), stride: (2, 1), padding: (1, 0), count_include_pad: false };
    check("maxpool", &|v| v[0].max_pool2d(&pp), vec![rand(&[1, 2, 4, 5], 20, d)]);
    check("avgpool", &|v| v[0].avg_pool2d(&pp), vec![rand(&[1, 2, 4, 5], 21, d)]);
    check("up", &|v| v[0].upsample_nearest2d((2, 3)), vec![rand(&[1, 2, 2, 2], 22, d)]);
    let ids = Tensor::from_vec(vec![2u32, 0, 2], [3], d)?;
    check("index_add", &|v| v[0].index_add(&ids, 0usize, &Shape::from([4, 3])), vec![rand(&[3, 3], 29, d)]);
    check("embed", &|v| v[0].embedding(&ids), vec![rand(&[4, 3], 23, d)]);
    check(
        "narrow_concat",
        &|v| Var::concat(&[&v[0].narrow(1, 1, 2)?, &v[1]], 1),
        vec![rand(&[2, 4], 24, d), rand(&[2, 1], 25, d)],
    );
    check("topk", &|v| Ok(v[0].topk(2, 1usize)?.0), vec![rand(&[3, 5], 26, d)]);
    check("gelu_silu", &|v| v[0].gelu()?.add(&v[0].silu()?), vec![rand(&[6], 27, d)]);
    check(
        "pad_permute",
        &|v| v[0].permute(&[2, 0, 1])?.pad(&[(1, 0), (0, 2), (1, 1)], 3.0),
        vec![rand(&[2, 3, 2], 28, d)],
    );
    Ok(())
}

/// A two-layer MLP with RMS norm and cross-entropy: loss and parameter gradients.
fn mlp_step<B: ela_core::Backend>(
    x: &Tensor<B>,
    t: &Tensor<B>,
    w1: &Tensor<B>,
    w2: &Tensor<B>,
    g: &Tensor<B>,
) -> Result<Vec<Tensor<B>>> {
    let (w1, w2, g) = (Var::param(w1.clone()), Var::param(w2.clone()), Var::param(g.clone()));
    let h = Var::constant(x.clone()).matmul(&w1)?.gelu()?.rms_norm(Some(&g), 1e-5)?;
    let loss = h.matmul(&w2.t()?)?.cross_entropy(t, None)?;
    let grads = loss.backward()?;
    let mut out = vec![loss.value()];
    for v in [&w1, &w2, &g] {
        out.push(grads.get(v).expect("gradient").clone());
    }
    Ok(out)
}

#[test]
fn f32_training_step_matches_the_cpu() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let mut rng = Rng::new(5);
    let mk = |s: &[usize], sd: f64, rng: &mut Rng| Tensor::randn(0.0, sd, s.to_vec(), DType::F32, rng, &Cpu).unwrap();
    let (x, w1, w2, g) = (
        mk(&[32, 24], 1.0, &mut rng),
        mk(&[24, 48], 0.2, &mut rng),
        mk(&[10, 48], 0.2, &mut rng),
        mk(&[48], 1.0, &mut rng),
    );
    let t = Tensor::from_vec((0..32u32).map(|i| (i * 7) % 10).collect::<Vec<_>>(), [32], &Cpu)?;
    let cpu = mlp_step(&x, &t, &w1, &w2, &g)?;
    let up = |a: &Tensor<Cpu>| a.to_device(&dev).unwrap();
    let gpu = mlp_step(&up(&x), &up(&t), &up(&w1), &up(&w2), &up(&g))?;
    for (i, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
        check_tol(&format!("training step output {i}"), c, g, 1e-4, 1e-5);
    }
    Ok(())
}
