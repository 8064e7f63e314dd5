//! Matrix products with broadcast batch dimensions.

use super::Tensor;
use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::shape::Shape;

impl<B: Backend> Tensor<B> {
    /// Matrix product `[.., m, k] @ [.., k, n] -> [.., m, n]` with numpy-broadcast batch dims.
    /// Rank-1 operands are not promoted: reshape them to `[1, k]` or `[k, 1]` explicitly.
    /// Transposed views (e.g. from [`Tensor::t`]) are multiplied without a copy.
    pub fn matmul(&self, rhs: &Self) -> Result<Self> {
        self.matmul_as("matmul", rhs, false)
    }

    /// [`Tensor::matmul`] of f16/bf16 operands with an f32 result: the products accumulate in
    /// f32 and the result is not rounded to the operands' dtype (the weight gradients of mixed
    /// precision; on CUDA one cuBLAS call with an f32 output). Other dtypes are an error.
    pub fn matmul_f32(&self, rhs: &Self) -> Result<Self> {
        self.matmul_as("matmul_f32", rhs, true)
    }

    fn matmul_as(&self, op: &'static str, rhs: &Self, f32_out: bool) -> Result<Self> {
        if f32_out && !matches!(self.dtype(), DType::F16 | DType::BF16) {
            return Err(Error::UnsupportedDType {
                op,
                dtype: self.dtype(),
                expected: "f16 or bf16 (matmul takes f32 and f64)",
            });
        }
        self.check_same_device(rhs, op)?;
        self.check_same_dtype(rhs, op)?;
        self.check_float(op)?;
        let (ab, m, k) = self.shape().matrix_dims(op)?;
        let (bb, k2, n) = rhs.shape().matrix_dims(op)?;
        if k != k2 {
            return Err(Error::ShapeMismatch {
                op,
                lhs: self.shape().clone(),
                rhs: rhs.shape().clone(),
                hint: format!(
                    "the lhs has {k} columns but the rhs has {k2} rows; for A @ B the last dim of A must equal \
                     the second-to-last of B (transpose an operand with .t()?)"
                ),
            });
        }
        let batch = Shape::from(ab.to_vec()).broadcast_with(&Shape::from(bb.to_vec()), op).map_err(|_| {
            Error::ShapeMismatch {
                op,
                lhs: self.shape().clone(),
                rhs: rhs.shape().clone(),
                hint: format!("batch dims {ab:?} and {bb:?} cannot be broadcast together"),
            }
        })?;
        let mut out = batch.dims().to_vec();
        out.extend([m, n]);
        // [m, 1] @ [1, n] has m n elements: the operands' sizes do not bound the output's.
        let out = Shape::checked(out, op)?;
        let mut ls = batch.dims().to_vec();
        ls.extend([m, k]);
        let mut rs = batch.dims().to_vec();
        rs.extend([k, n]);
        let la = self.layout().broadcast_as(&ls.into(), op)?;
        let lb = rhs.layout().broadcast_as(&rs.into(), op)?;
        let dev = self.device();
        let s = if f32_out {
            dev.matmul_f32(self.storage(), &la, rhs.storage(), &lb)?
        } else {
            dev.matmul(self.storage(), &la, rhs.storage(), &lb)?
        };
        Ok(Self::from_storage(s, out, dev))
    }
}

#[cfg(test)]
mod tests {
    use crate::{Cpu, DType, Rng, Tensor};

    /// `matmul_f32` keeps the f32 accumulator of a bf16 product (a transposed operand included):
    /// it equals the f64 product of the same values to f32 rounding, which `matmul` rounded to
    /// bf16 does not; f32 operands are a typed error naming the op.
    #[test]
    fn f32_results_of_16_bit_products() {
        let mut rng = Rng::new(9);
        let a = Tensor::<Cpu>::randn(0.0, 1.0, [300, 7], DType::F64, &mut rng, &Cpu).unwrap();
        let b = Tensor::<Cpu>::randn(0.0, 1.0, [300, 5], DType::F64, &mut rng, &Cpu).unwrap();
        let (a, b) = (a.to_dtype(DType::BF16).unwrap(), b.to_dtype(DType::BF16).unwrap());
        let want = a.to_dtype(DType::F64).unwrap().t().unwrap().matmul(&b.to_dtype(DType::F64).unwrap()).unwrap();
        let err = |t: &Tensor<Cpu>| {
            let (got, want) = (t.to_vec_f64().unwrap(), want.to_vec_f64().unwrap());
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            got.iter().zip(&want).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
        };
        let f = a.t().unwrap().matmul_f32(&b).unwrap();
        assert_eq!((f.dtype(), f.dims()), (DType::F32, &[7, 5][..]));
        assert!(err(&f) < 1e-6, "{:e}", err(&f));
        assert!(err(&a.t().unwrap().matmul(&b).unwrap()) > 1e-4, "the bf16 result is rounded");
        let x = Tensor::<Cpu>::ones([2, 2], DType::F32, &Cpu).unwrap();
        let e = x.matmul_f32(&x).unwrap_err().to_string();
        assert!(e.contains("matmul_f32") && e.contains("f16 or bf16"), "{e}");
    }
}
