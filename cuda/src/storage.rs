//! [`CudaStorage`]: an owned, dtype-tagged device buffer (the backend's `Storage`).

use ela_core::DType;

use crate::alloc::DeviceBuffer;

/// A device buffer of `len` elements of one dtype. Dropping it returns the memory to the
/// device's caching allocator (no `cuMemFree`).
pub struct CudaStorage {
    buf: DeviceBuffer,
    dtype: DType,
    len: usize,
}

impl CudaStorage {
    pub(crate) fn new(buf: DeviceBuffer, dtype: DType, len: usize) -> Self {
        CudaStorage { buf, dtype, len }
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The raw device address, for interop with other CUDA code running on the same device
    /// (0 for an empty buffer). Work queued by ELA may still be using the buffer: call
    /// [`Cuda::synchronize`](crate::Cuda::synchronize) first when another stream reads it.
    pub fn device_ptr(&self) -> u64 {
        self.buf.ptr()
    }
    /// Address of element `i` (in elements of this buffer's dtype).
    pub(crate) fn ptr_at(&self, i: usize) -> u64 {
        self.buf.ptr() + (i * self.dtype.size_in_bytes()) as u64
    }
    pub(crate) fn ptr(&self) -> u64 {
        self.buf.ptr()
    }
    /// Bytes reserved for this buffer by the allocator (its size class).
    pub fn reserved_bytes(&self) -> usize {
        self.buf.reserved()
    }
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaStorage({:?}, len {}, at {:#x})", self.dtype, self.len, self.buf.ptr())
    }
}
