//! Matrix products with broadcast batch dimensions.

use super::Tensor;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::shape::Shape;

impl<B: Backend> Tensor<B> {
    /// Matrix product `[.., m, k] @ [.., k, n] -> [.., m, n]` with numpy-broadcast batch dims.
    /// Rank-1 operands are not promoted: reshape them to `[1, k]` or `[k, 1]` explicitly.
    /// Transposed views (e.g. from [`Tensor::t`]) are multiplied without a copy.
    pub fn matmul(&self, rhs: &Self) -> Result<Self> {
        const OP: &str = "matmul";
        self.check_same_device(rhs, OP)?;
        self.check_same_dtype(rhs, OP)?;
        self.check_float(OP)?;
        let (ab, m, k) = self.shape().matrix_dims(OP)?;
        let (bb, k2, n) = rhs.shape().matrix_dims(OP)?;
        if k != k2 {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: self.shape().clone(),
                rhs: rhs.shape().clone(),
                hint: format!(
                    "the lhs has {k} columns but the rhs has {k2} rows; for A @ B the last dim of A must equal \
                     the second-to-last of B (transpose an operand with .t()?)"
                ),
            });
        }
        let batch = Shape::from(ab.to_vec()).broadcast_with(&Shape::from(bb.to_vec()), OP).map_err(|_| {
            Error::ShapeMismatch {
                op: OP,
                lhs: self.shape().clone(),
                rhs: rhs.shape().clone(),
                hint: format!("batch dims {ab:?} and {bb:?} cannot be broadcast together"),
            }
        })?;
        let mut out = batch.dims().to_vec();
        out.extend([m, n]);
        // [m, 1] @ [1, n] has m n elements: the operands' sizes do not bound the output's.
        let out = Shape::checked(out, OP)?;
        let mut ls = batch.dims().to_vec();
        ls.extend([m, k]);
        let mut rs = batch.dims().to_vec();
        rs.extend([k, n]);
        let la = self.layout().broadcast_as(&ls.into(), OP)?;
        let lb = rhs.layout().broadcast_as(&rs.into(), OP)?;
        let s = self.device().matmul(self.storage(), &la, rhs.storage(), &lb)?;
        Ok(Self::from_storage(s, out, self.device()))
    }
}
