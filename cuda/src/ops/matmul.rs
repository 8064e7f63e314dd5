//! Matrix products through cuBLAS (`cublasGemmStridedBatchedEx`).
//!
//! cuBLAS is column-major; our tensors are row-major. A row-major `[r, c]` matrix with row
//! stride `ld` *is* a column-major `[c, r]` matrix (its transpose) with leading dimension `ld`, so
//! `C = A B` is computed as `C^T = B^T A^T`: cuBLAS gets B first and A second, and writes C^T in
//! column-major, which is C in row-major. A transposed view (unit row stride instead of unit
//! column stride) is passed with the opposite `op` flag and its own leading dimension, so `x.t()`
//! operands cost no copy. Batch dimensions must collapse to one stride per operand (stride 0 = broadcast);
//! anything else is copied to contiguous first.
//!
//! Precision: f32 uses `CUBLAS_COMPUTE_32F` (no TF32 unless `Cuda::set_allow_tf32(true)`), f64
//! `CUBLAS_COMPUTE_64F`, f16/bf16 inputs accumulate in f32 and round once on store.

use cudarc::cublas::sys as bs;
use ela_core::{DType, Error, Layout, Result};

use super::{check_float, check_same};
use crate::device::Cuda;
use crate::storage::CudaStorage;
use crate::strided::coalesce;

/// One GEMM operand: a row-major matrix view `[rows, cols]` with strides, per batch entry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Operand {
    pub ptr: u64,
    pub rs: usize,
    pub cs: usize,
    pub batch_stride: usize,
}

/// The cuBLAS op and leading dimension that present a row-major `[r, c]` view as its transpose in
/// column-major form, or `None` when neither stride is unit (the view must be copied).
fn as_transposed(r: usize, c: usize, rs: usize, cs: usize) -> Option<(bs::cublasOperation_t, usize)> {
    // Row-major with row stride rs == column-major transpose, no op, ld = rs.
    if (cs == 1 || c == 1) && (r == 1 || rs >= c.max(1)) {
        return Some((bs::cublasOperation_t::CUBLAS_OP_N, if r == 1 { c.max(1) } else { rs }));
    }
    // Column-major with ld cs: it is the matrix itself, so ask cuBLAS to transpose it.
    if (rs == 1 || r == 1) && (c == 1 || cs >= r.max(1)) {
        return Some((bs::cublasOperation_t::CUBLAS_OP_T, if c == 1 { r.max(1) } else { cs }));
    }
    None
}

fn data_type(d: DType) -> bs::cudaDataType {
    match d {
        DType::F16 => bs::cudaDataType::CUDA_R_16F,
        DType::BF16 => bs::cudaDataType::CUDA_R_16BF,
        DType::F64 => bs::cudaDataType::CUDA_R_64F,
        _ => bs::cudaDataType::CUDA_R_32F,
    }
}

fn to_i32(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::invalid(op, format!("{what} = {v} exceeds cuBLAS's 32-bit limit")))
}

impl Cuda {
    /// Row-major `C[b] = A[b] (m x k) @ B[b] (k x n) + beta C[b]` for `batch` entries, with C rows
    /// `ldc` apart and C entries `c_batch` apart. `in_dtype` is the dtype of A and B, `out_dtype`
    /// that of C (f32 output from f16/bf16 inputs is allowed). Operands must satisfy
    /// [`as_transposed`]; callers copy those that do not.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemm(
        &self,
        in_dtype: DType,
        out_dtype: DType,
        (m, n, k, batch): (usize, usize, usize, usize),
        a: Operand,
        b: Operand,
        (c, ldc, c_batch): (u64, usize, usize),
        beta: f64,
    ) -> Result<()> {
        const OP: &str = "matmul";
        if m == 0 || n == 0 || batch == 0 {
            return Ok(());
        }
        let (op_b, ldb) = as_transposed(k, n, b.rs, b.cs).ok_or_else(|| Error::invalid(OP, "unsupported B layout"))?;
        let (op_a, lda) = as_transposed(m, k, a.rs, a.cs).ok_or_else(|| Error::invalid(OP, "unsupported A layout"))?;
        let compute = match in_dtype {
            DType::F64 => bs::cublasComputeType_t::CUBLAS_COMPUTE_64F,
            DType::F32 if self.allow_tf32() => bs::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
            _ => bs::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        };
        let (alpha64, beta64) = (1.0f64, beta);
        let (alpha32, beta32) = (1.0f32, beta as f32);
        let (pa, pb): (*const std::ffi::c_void, *const std::ffi::c_void) = if in_dtype == DType::F64 {
            (&alpha64 as *const f64 as _, &beta64 as *const f64 as _)
        } else {
            (&alpha32 as *const f32 as _, &beta32 as *const f32 as _)
        };
        let label = || format!("cublas_gemm {in_dtype:?} m{m} n{n} k{k} b{batch} {op_a:?}/{op_b:?}");
        self.profiled(label, || {
            let mut blas = self.inner.blas.lock().unwrap_or_else(|p| p.into_inner());
            self.bind(OP)?;
            blas.on_stream(self.cu_stream())?;
            // SAFETY: pointers are live device buffers sized for these dims and strides (checked by
            // the callers), alpha/beta point to host scalars of the compute type.
            unsafe {
                cudarc::cublas::result::gemm_strided_batched_ex(
                    blas.handle,
                    op_b,
                    op_a,
                    to_i32(OP, "n", n)?,
                    to_i32(OP, "m", m)?,
                    to_i32(OP, "k", k)?,
                    pa,
                    b.ptr as *const _,
                    data_type(in_dtype),
                    to_i32(OP, "ldb", ldb)?,
                    b.batch_stride as i64,
                    a.ptr as *const _,
                    data_type(in_dtype),
                    to_i32(OP, "lda", lda)?,
                    a.batch_stride as i64,
                    pb,
                    c as *mut _,
                    data_type(out_dtype),
                    to_i32(OP, "ldc", ldc)?,
                    c_batch as i64,
                    to_i32(OP, "batch", batch)?,
                    compute,
                    bs::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
            .map_err(|e| Error::Backend {
                backend: "cuda",
                op: OP,
                msg: format!("cuBLAS GEMM (m={m}, n={n}, k={k}, batch={batch}, {in_dtype:?}) failed: {e:?}"),
            })
        })
    }

    /// Batched `[.., m, k] @ [.., k, n]` with identical (possibly broadcast) batch dims, the
    /// result in `out_dtype`: the operands' own (`Backend::matmul`), or f32 for 16-bit operands
    /// (`Backend::matmul_f32`: cuBLAS stores its f32 accumulator as it is, no rounding to 16 bits).
    pub(crate) fn matmul_impl(
        &self,
        a: &CudaStorage,
        la: &Layout,
        b: &CudaStorage,
        lb: &Layout,
        out_dtype: DType,
    ) -> Result<CudaStorage> {
        if out_dtype != a.dtype() && !(out_dtype == DType::F32 && matches!(a.dtype(), DType::F16 | DType::BF16)) {
            return Err(Error::UnsupportedDType { op: "matmul_f32", dtype: a.dtype(), expected: "f16 or bf16" });
        }
        check_same("matmul", a, b)?;
        check_float("matmul", a.dtype())?;
        let r = la.dims().len();
        let (m, k, n) = (la.dims()[r - 2], la.dims()[r - 1], lb.dims()[r - 1]);
        let batch: usize = la.dims()[..r - 2].iter().product();
        let out = self.alloc(out_dtype, batch * m * n)?;
        if out.is_empty() {
            return Ok(out);
        }
        if k == 0 {
            self.memset_zero(out.ptr(), out.len() * out_dtype.size_in_bytes())?;
            return Ok(out);
        }
        // Keep copies alive until the GEMM is queued.
        let (opa, _ka) = self.gemm_operand(a, la)?;
        let (opb, _kb) = self.gemm_operand(b, lb)?;
        self.gemm(a.dtype(), out_dtype, (m, n, k, batch), opa, opb, (out.ptr(), n, m * n), 0.0)?;
        Ok(out)
    }

    /// A GEMM operand for a `[batch.., r, c]` view: in place when cuBLAS can read it, else a
    /// contiguous copy (returned so it outlives the call).
    fn gemm_operand(&self, s: &CudaStorage, l: &Layout) -> Result<(Operand, Option<CudaStorage>)> {
        let rank = l.dims().len();
        let (r, c) = (l.dims()[rank - 2], l.dims()[rank - 1]);
        let (rs, cs) = (l.strides()[rank - 2], l.strides()[rank - 1]);
        let bc = coalesce(&l.dims()[..rank - 2], &[&l.strides()[..rank - 2]]);
        let batch_stride = match bc.dims.len() {
            0 => Some(0),
            1 => Some(bc.strides[0][0]),
            _ => None,
        };
        if let (Some(bs), Some(_)) = (batch_stride, as_transposed(r, c, rs, cs)) {
            return Ok((Operand { ptr: s.ptr_at(l.offset()), rs, cs, batch_stride: bs }, None));
        }
        let copy = self.copy_contiguous_impl(s, l)?;
        let op = Operand { ptr: copy.ptr(), rs: c, cs: 1, batch_stride: r * c };
        Ok((op, Some(copy)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bs::cublasOperation_t::{CUBLAS_OP_N as N, CUBLAS_OP_T as T};

    #[test]
    fn operand_layouts() {
        // Contiguous [3, 4]: no op, ld 4. Its transpose view [4, 3] strides (1, 4): op T, ld 4.
        assert_eq!(as_transposed(3, 4, 4, 1), Some((N, 4)));
        assert_eq!(as_transposed(4, 3, 1, 4), Some((T, 4)));
        // Narrowed columns keep the parent's row stride.
        assert_eq!(as_transposed(3, 2, 4, 1), Some((N, 4)));
        // Vectors: any stride of a size-1 axis is fine.
        assert_eq!(as_transposed(1, 5, 999, 1), Some((N, 5)));
        assert_eq!(as_transposed(5, 1, 1, 999), Some((N, 1)));
        // Broadcast rows (stride 0) or doubly strided views need a copy.
        assert_eq!(as_transposed(3, 4, 0, 1), None);
        assert_eq!(as_transposed(3, 4, 8, 2), None);
    }
}
