//! Elementwise references: scalar activation functions, numpy broadcasting, binary maps,
//! NaN-propagating maximum / minimum, `where_cond`, and the inner product used by adjoint checks.

use super::RefTensor;

/// sqrt(2/pi).
const GELU_K: f64 = 0.797_884_560_802_865_4;

/// GELU, tanh approximation.
pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + (GELU_K * (x + 0.044715 * x * x * x)).tanh())
}

/// Logistic sigmoid.
pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// x * sigmoid(x).
pub fn silu(x: f64) -> f64 {
    x * sigmoid(x)
}

/// max(x, 0).
pub fn relu(x: f64) -> f64 {
    if x > 0.0 {
        x
    } else {
        0.0
    }
}

/// Sign in {-1, 0, 1}.
pub fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Central finite difference of `f` at `x` with step `h`.
pub fn central_diff(f: impl Fn(f64) -> f64, x: f64, h: f64) -> f64 {
    (f(x + h) - f(x - h)) / (2.0 * h)
}

/// The numpy broadcast of two shapes, or `None`.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() < r { 1 } else { a[i + a.len() - r] };
        let db = if i + b.len() < r { 1 } else { b[i + b.len() - r] };
        out[i] = if da == db {
            da
        } else if da == 1 {
            db
        } else if db == 1 {
            da
        } else {
            return None;
        };
    }
    Some(out)
}

/// `x` broadcast to `shape` (materialised); `None` when not broadcastable.
pub fn broadcast_to(x: &RefTensor, shape: &[usize]) -> Option<RefTensor> {
    if x.rank() > shape.len() {
        return None;
    }
    let lead = shape.len() - x.rank();
    for (i, &d) in x.shape.iter().enumerate() {
        if d != shape[lead + i] && d != 1 {
            return None;
        }
    }
    Some(RefTensor::from_fn(shape, |idx| {
        let src: Vec<usize> =
            x.shape.iter().enumerate().map(|(i, &d)| if d == 1 { 0 } else { idx[lead + i] }).collect();
        x.get(&src)
    }))
}

/// `f(a, b)` with numpy broadcasting.
pub fn binary(a: &RefTensor, b: &RefTensor, f: impl Fn(f64, f64) -> f64) -> Option<RefTensor> {
    let s = broadcast_shape(&a.shape, &b.shape)?;
    let (a, b) = (broadcast_to(a, &s)?, broadcast_to(b, &s)?);
    Some(RefTensor::new(s, a.data.iter().zip(&b.data).map(|(&x, &y)| f(x, y)).collect()))
}

/// numpy maximum: NaN in either operand propagates.
pub fn maximum(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a >= b {
        a
    } else {
        b
    }
}

/// numpy minimum: NaN in either operand propagates.
pub fn minimum(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a <= b {
        a
    } else {
        b
    }
}

/// `cond != 0 ? t : f` with broadcasting of all three.
pub fn where_cond(cond: &RefTensor, t: &RefTensor, f: &RefTensor) -> Option<RefTensor> {
    let s = broadcast_shape(&broadcast_shape(&cond.shape, &t.shape)?, &f.shape)?;
    let (c, t, f) = (broadcast_to(cond, &s)?, broadcast_to(t, &s)?, broadcast_to(f, &s)?);
    Some(RefTensor::new(s, (0..c.numel()).map(|i| if c.data[i] != 0.0 { t.data[i] } else { f.data[i] }).collect()))
}

/// `<a, b>` = sum of elementwise products (for adjoint identities).
pub fn dot(a: &RefTensor, b: &RefTensor) -> f64 {
    assert_eq!(a.shape, b.shape);
    a.data.iter().zip(&b.data).map(|(x, y)| x * y).sum()
}
