use ela_autograd::{gradcheck, GradcheckOptions, Var};
use ela_core::{Conv2dParams, Cpu, DType, Pool2dParams, Rng, Tensor};

fn rand(shape: &[usize], seed: u64) -> Tensor<Cpu> {
    Tensor::randn(0.0, 1.0, shape.to_vec(), DType::F64, &mut Rng::new(seed), &Cpu).unwrap()
}

#[test]
fn smoke_all_families() {
    let o = GradcheckOptions::default();
    type Op<'a> = &'a dyn Fn(&[Var<Cpu>]) -> ela_core::Result<Var<Cpu>>;
    let check = |name: &str, f: Op, xs: Vec<Tensor<Cpu>>| {
        let r = gradcheck(f, &xs, o).unwrap();
        assert!(r.passed, "{name}: {r}");
    };
    check("matmul_bcast", &|v| v[0].matmul(&v[1].t()?), vec![rand(&[2, 3, 4], 1), rand(&[5, 4], 2)]);
    check("mul_bcast", &|v| v[0].mul(&v[1])?.tanh(), vec![rand(&[2, 3], 3), rand(&[3], 4)]);
    check("div", &|v| v[0].div(&v[1].square()?.add_scalar(1.0)?), vec![rand(&[4], 5), rand(&[4], 6)]);
    check("softmax", &|v| v[0].softmax(0usize), vec![rand(&[3, 4], 7)]);
    check("log_softmax", &|v| v[0].log_softmax(-1isize), vec![rand(&[3, 4], 8)]);
    check("rms", &|v| v[0].rms_norm(Some(&v[1]), 1e-5), vec![rand(&[3, 5], 9), rand(&[5], 10)]);
    check(
        "ln",
        &|v| v[0].layer_norm(Some(&v[1]), Some(&v[2]), 1e-5),
        vec![rand(&[3, 5], 11), rand(&[5], 12), rand(&[5], 13)],
    );
    let t = Tensor::from_vec(vec![1u32, 0, 3], [3], &Cpu).unwrap();
    check("ce", &|v| v[0].cross_entropy(&t, Some(3)), vec![rand(&[3, 4], 14)]);
    check("max", &|v| v[0].max(1usize, false), vec![rand(&[3, 4], 15)]);
    check("lse", &|v| v[0].logsumexp(0usize, true), vec![rand(&[3, 4], 16)]);
    check("cumsum", &|v| v[0].cumsum(1usize, true, true), vec![rand(&[3, 4], 17)]);
    let p = Conv2dParams { stride: (2, 1), padding: (1, 1), dilation: (1, 2), groups: 2 };
    check("conv", &|v| v[0].conv2d(&v[1], &p), vec![rand(&[2, 4, 5, 6], 18), rand(&[6, 2, 3, 2], 19)]);
    let pp = Pool2dParams { kernel: (2, 2), stride: (2, 1), padding: (1, 0), count_include_pad: false };
    check("maxpool", &|v| v[0].max_pool2d(&pp), vec![rand(&[1, 2, 4, 5], 20)]);
    check("avgpool", &|v| v[0].avg_pool2d(&pp), vec![rand(&[1, 2, 4, 5], 21)]);
    check("up", &|v| v[0].upsample_nearest2d((2, 3)), vec![rand(&[1, 2, 2, 2], 22)]);
    let ids = Tensor::from_vec(vec![2u32, 0, 2], [3], &Cpu).unwrap();
    check("index_add", &|v| v[0].index_add(&ids, 0usize, &ela_core::Shape::from([4, 3])), vec![rand(&[3, 3], 29)]);
    check("embed", &|v| v[0].embedding(&ids), vec![rand(&[4, 3], 23)]);
    check(
        "narrow_concat",
        &|v| Var::concat(&[&v[0].narrow(1, 1, 2)?, &v[1]], 1),
        vec![rand(&[2, 4], 24), rand(&[2, 1], 25)],
    );
    check("topk", &|v| Ok(v[0].topk(2, 1usize)?.0), vec![rand(&[3, 5], 26)]);
    check("gelu_silu", &|v| v[0].gelu()?.add(&v[0].silu()?), vec![rand(&[6], 27)]);
    check(
        "pad_permute",
        &|v| v[0].permute(&[2, 0, 1])?.pad(&[(1, 0), (0, 2), (1, 1)], 3.0),
        vec![rand(&[2, 3, 2], 28)],
    );
}
