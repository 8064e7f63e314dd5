//! ELA as a library: run the three forms of Exact Linear Attention on the same inputs and compare
//! them (what `ela verify` does for you), decode token by token from the recurrent state, check a
//! kernel, and use ELA inside a multi-head attention layer.
//!
//! Run: `cargo run --release --example ela_forms`

use ela_autograd::Var;
use ela_core::{Cpu, DType, Result, Rng, Tensor};
use ela_nn::attention::{Attention, AttentionConfig, Mixer};
use ela_nn::ela::{check_kernel, max_rel_diff, CheckOptions, Ela, ElaAttention, Form, HadamardExp};
use ela_nn::module::ParamStore;

fn main() -> Result<()> {
    // q, k [batch, heads, time, d], v [batch, heads, time, dv] and an upstream gradient dy.
    let (b, h, t, d, dv) = (1, 2, 100, 16, 8);
    let mut rng = Rng::new(0);
    let mut randn = |dims: [usize; 4]| Tensor::<Cpu>::randn(0.0, 1.0, dims, DType::F64, &mut rng, &Cpu);
    let (q, k, v, dy) = (randn([b, h, t, d])?, randn([b, h, t, d])?, randn([b, h, t, dv])?, randn([b, h, t, dv])?);

    // 1. The three forms: quadratic (the O(T^2) oracle), chunked (training), recurrent (decoding).
    let ela = Ela::from_name("hadamard-exp")?.with_causal(true).with_chunk(32);
    let quad = ela.run_with_grads(Form::Quadratic, &q, &k, &v, &dy)?;
    let chunked = ela.run_with_grads(Form::Chunked, &q, &k, &v, &dy)?;
    let recurrent = ela.run(Form::Recurrent, &q, &k, &v)?;
    let (gq, gc) = (quad.grads, chunked.grads);
    println!("chunked   vs quadratic: y {:.1e}", max_rel_diff(&chunked.y, &quad.y)?);
    println!("recurrent vs quadratic: y {:.1e}", max_rel_diff(&recurrent, &quad.y)?);
    println!(
        "gradients (fused backward vs tape): dq {:.1e}  dk {:.1e}  dv {:.1e}",
        max_rel_diff(&gc.dq, &gq.dq)?,
        max_rel_diff(&gc.dk, &gq.dk)?,
        max_rel_diff(&gc.dv, &gq.dv)?
    );

    // 2. Decoding: prefill a prompt, then one token at a time from a state of constant size.
    let prompt = 90;
    let (_, mut state) = ela.prefill(&q.narrow(2, 0, prompt)?, &k.narrow(2, 0, prompt)?, &v.narrow(2, 0, prompt)?)?;
    let mut worst = 0.0f64;
    for i in prompt..t {
        let y_i = state.step(&q.narrow(2, i, 1)?, &k.narrow(2, i, 1)?, &v.narrow(2, i, 1)?)?;
        let want = quad.y.narrow(2, i, 1)?.reshape(y_i.shape().clone())?;
        worst = worst.max(max_rel_diff(&y_i, &want)?);
    }
    println!("prefill {prompt} + {} steps vs quadratic: {worst:.1e}; state {} bytes", t - prompt, state.bytes());

    // 3. Is a kernel a valid decomposition, non-negative, with correct VJPs?
    let report = check_kernel(&HadamardExp, &Cpu, &CheckOptions::default())?;
    print!("{report}");

    // 4. ELA as the mixer of a multi-head attention layer (projections, heads, output).
    let store = ParamStore::new(&Cpu, DType::F32, 0);
    let cfg =
        AttentionConfig { dim: 32, heads: 4, causal: true, rope: None, mixer: Mixer::Ela(ElaAttention::default()) };
    let attn = Attention::new(&store.sub("attn"), cfg)?;
    let x = Var::constant(Tensor::randn(0.0, 1.0, [2, 50, 32], DType::F32, &mut Rng::new(1), &Cpu)?);
    let y = attn.forward(&x)?;
    println!("attention layer: {:?} -> {:?}, {} parameters", x.dims(), y.dims(), store.num_params());
    Ok(())
}
