//! Placeholder GEMM (replaced by the blocked kernel).
#![allow(clippy::too_many_arguments)]

/// C = alpha * A @ B + beta * C, any strides.
pub fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    rsa: usize,
    csa: usize,
    b: &[f32],
    rsb: usize,
    csb: usize,
    beta: f32,
    c: &mut [f32],
    rsc: usize,
    csc: usize,
) {
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f32;
            for p in 0..k {
                acc += a[i * rsa + p * csa] * b[p * rsb + j * csb];
            }
            let o = &mut c[i * rsc + j * csc];
            *o = if beta == 0.0 { alpha * acc } else { alpha * acc + beta * *o };
        }
    }
}

/// C = alpha * A @ B + beta * C, any strides.
pub fn gemm_f64(
    m: usize,
    n: usize,
    k: usize,
    alpha: f64,
    a: &[f64],
    rsa: usize,
    csa: usize,
    b: &[f64],
    rsb: usize,
    csb: usize,
    beta: f64,
    c: &mut [f64],
    rsc: usize,
    csc: usize,
) {
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f64;
            for p in 0..k {
                acc += a[i * rsa + p * csa] * b[p * rsb + j * csb];
            }
            let o = &mut c[i * rsc + j * csc];
            *o = if beta == 0.0 { alpha * acc } else { alpha * acc + beta * *o };
        }
    }
}
