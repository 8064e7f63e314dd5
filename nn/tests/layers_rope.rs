//! Rotary position embedding: the formula, norm preservation, decoding offsets, relative
//! positions, gradients, and the documented loss of relative position under an exp feature map.

use ela_autograd::{gradcheck, GradcheckOptions, Var};
use ela_core::{Cpu, DType, Rng, Tensor};
use ela_nn::layers::{apply_rope, rope_tables, Rope};
use proptest::prelude::*;

fn randn(shape: &[usize], seed: u64) -> Tensor<Cpu> {
    Tensor::randn(0.0, 1.0, shape.to_vec(), DType::F64, &mut Rng::new(seed), &Cpu).unwrap()
}

fn v64(v: &Var<Cpu>) -> Vec<f64> {
    v.value().to_vec::<f64>().unwrap()
}

#[test]
fn matches_the_rotate_half_formula() {
    let (t, d, base) = (5usize, 6usize, 10000.0f64);
    let rope = Rope::new(d, 16, base, DType::F64, &Cpu).unwrap();
    let x = randn(&[1, 2, t, d], 1);
    let y = v64(&rope.apply(&Var::constant(x.clone()), 3).unwrap());
    let xv = x.to_vec::<f64>().unwrap();
    for h in 0..2 {
        for p in 0..t {
            let row = &xv[(h * t + p) * d..(h * t + p + 1) * d];
            for i in 0..d / 2 {
                let ang = (p + 3) as f64 * base.powf(-2.0 * i as f64 / d as f64);
                let y1 = row[i] * ang.cos() - row[i + d / 2] * ang.sin();
                let y2 = row[i + d / 2] * ang.cos() + row[i] * ang.sin();
                let at = (h * t + p) * d;
                assert!((y[at + i] - y1).abs() < 1e-13 && (y[at + i + d / 2] - y2).abs() < 1e-13);
            }
        }
    }
}

#[test]
fn position_zero_is_identity() {
    let x = randn(&[2, 1, 1, 4], 2);
    let rope = Rope::new(4, 4, 10000.0, DType::F64, &Cpu).unwrap();
    assert_eq!(v64(&rope.apply(&Var::constant(x.clone()), 0).unwrap()), x.to_vec::<f64>().unwrap());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn preserves_norms_and_decoding_offsets(
        b in 1usize..3, h in 1usize..3, t in 1usize..7, half in 1usize..5, seed in 0u64..1000
    ) {
        let d = 2 * half;
        let rope = Rope::new(d, 32, 10000.0, DType::F64, &Cpu).unwrap();
        let x = randn(&[b, h, t, d], seed);
        let full = rope.apply(&Var::constant(x.clone()), 0).unwrap();
        let (xv, yv) = (x.to_vec::<f64>().unwrap(), v64(&full));
        for (xr, yr) in xv.chunks(d).zip(yv.chunks(d)) {
            let (nx, ny) = (xr.iter().map(|a| a * a).sum::<f64>(), yr.iter().map(|a| a * a).sum::<f64>());
            prop_assert!((nx - ny).abs() <= 1e-12 * (1.0 + nx));
        }
        // Decoding one token at offset p equals the p-th slice of the full result, and so does a
        // chunk starting at offset p.
        for p in 0..t {
            let one = rope.apply(&Var::constant(x.narrow(2usize, p, 1).unwrap()), p).unwrap();
            let want = full.value().narrow(2usize, p, 1).unwrap().to_vec_f64().unwrap();
            prop_assert_eq!(v64(&one.contiguous().unwrap()), want);
            let rest = rope.apply(&Var::constant(x.narrow(2usize, p, t - p).unwrap()), p).unwrap();
            let want = full.value().narrow(2usize, p, t - p).unwrap().to_vec_f64().unwrap();
            prop_assert_eq!(v64(&rest.contiguous().unwrap()), want);
        }
    }
}

/// `(R_i q) . (R_j k)` for single vectors placed at positions `i` and `j`.
fn rotated(v: &Tensor<Cpu>, pos: usize, rope: &Rope<Cpu>) -> Vec<f64> {
    let d = v.elem_count();
    let padded = Tensor::zeros([1, 1, pos + 1, d], DType::F64, &Cpu).unwrap();
    let x = Tensor::concat(&[&padded.narrow(2usize, 0, pos).unwrap(), &v.reshape([1, 1, 1, d]).unwrap()], 2usize);
    let y = rope.apply(&Var::constant(x.unwrap()), 0).unwrap();
    y.value().narrow(2usize, pos, 1).unwrap().to_vec_f64().unwrap()
}

#[test]
fn dot_products_depend_only_on_relative_position_but_exp_features_do_not() {
    let d = 8;
    let rope = Rope::new(d, 64, 10000.0, DType::F64, &Cpu).unwrap();
    let (q, k) = (randn(&[d], 3), randn(&[d], 4));
    let dot = |i: usize, j: usize| -> f64 {
        rotated(&q, i, &rope).iter().zip(rotated(&k, j, &rope)).map(|(a, b)| a * b).sum()
    };
    // Hadamard-exp kernel after RoPE: sum_d exp((R_i q)_d) exp((R_j k)_d).
    let exp_kernel = |i: usize, j: usize| -> f64 {
        rotated(&q, i, &rope).iter().zip(rotated(&k, j, &rope)).map(|(a, b)| a.exp() * b.exp()).sum()
    };
    for (i, j, s) in [(5, 2, 7), (9, 9, 20), (3, 0, 30)] {
        assert!((dot(i, j) - dot(i + s, j + s)).abs() < 1e-12, "dot product not shift invariant");
        let (a, b) = (exp_kernel(i, j), exp_kernel(i + s, j + s));
        assert!((a - b).abs() > 1e-3 * a.abs(), "exp kernel unexpectedly shift invariant: {a} vs {b}");
    }
}

#[test]
fn gradcheck_through_rope() {
    let (cos, sin) = rope_tables::<Cpu>(6, 2, 4, 100.0, DType::F64, &Cpu).unwrap();
    let f = |v: &[Var<Cpu>]| apply_rope(&v[0], &cos, &sin);
    let r = gradcheck(f, &[randn(&[2, 3, 4, 6], 5)], GradcheckOptions::default()).unwrap();
    assert!(r.passed, "{r}");
    let rope = Rope::new(4, 8, 10000.0, DType::F64, &Cpu).unwrap();
    let r = gradcheck(|v| rope.apply(&v[0], 5), &[randn(&[1, 2, 3, 4], 6)], GradcheckOptions::default()).unwrap();
    assert!(r.passed, "{r}");
}

#[test]
fn f32_input_uses_cast_tables_and_errors_are_clear() {
    let rope = Rope::new(4, 8, 10000.0, DType::F64, &Cpu).unwrap();
    let x = randn(&[1, 1, 3, 4], 7);
    let y64 = v64(&rope.apply(&Var::constant(x.clone()), 2).unwrap());
    let y32 = rope.apply(&Var::constant(x.to_dtype(DType::F32).unwrap()), 2).unwrap();
    assert_eq!(y32.dtype(), DType::F32);
    for (a, b) in y32.value().to_vec_f64().unwrap().iter().zip(&y64) {
        assert!((a - b).abs() < 1e-6);
    }
    let e = rope.apply(&Var::constant(x.clone()), 6).unwrap_err().to_string();
    assert!(e.contains("positions 6..9") && e.contains("8 precomputed"), "{e}");
    assert!(rope.apply(&Var::constant(randn(&[1, 3, 6], 8)), 0).is_err());
    assert!(Rope::<Cpu>::new(5, 8, 10000.0, DType::F64, &Cpu).is_err());
}

/// Tables beyond memory, or positions past `usize`, are errors naming RoPE, not an abort or an
/// overflow.
#[test]
fn oversized_tables_are_errors() {
    for (start, len) in [(0usize, 1usize << 40), (usize::MAX - 1, 4), (0, usize::MAX / 2)] {
        let e = rope_tables::<Cpu>(64, start, len, 10_000.0, DType::F32, &Cpu).unwrap_err().to_string();
        assert!(e.contains("rope"), "{start} + {len}: {e}");
    }
}
