//! Typed errors. Every user-caused failure is one of these, and its message names the op, the
//! shapes or values involved, and how to fix the call.

use crate::{dtype::DType, shape::Shape};

/// The result type of every fallible ELA operation.
pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong, and where.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// Two shapes cannot be broadcast together.
    Broadcast {
        /// Operation name.
        op: &'static str,
        /// Left operand's shape.
        lhs: Shape,
        /// Right operand's shape.
        rhs: Shape,
    },
    /// Two shapes that must agree (in the way `hint` explains) do not.
    ShapeMismatch {
        /// Operation name.
        op: &'static str,
        /// First shape.
        lhs: Shape,
        /// Second shape.
        rhs: Shape,
        /// Which dimensions must agree, and how to fix the call.
        hint: String,
    },
    /// A tensor has the wrong number of dimensions.
    RankMismatch {
        /// Operation name.
        op: &'static str,
        /// What the op accepts, e.g. "4 ([batch, channels, height, width])".
        expected: &'static str,
        /// The shape it got.
        shape: Shape,
    },
    /// An axis argument is outside `-rank..rank`.
    Axis {
        /// Operation name.
        op: &'static str,
        /// The axis as given.
        axis: isize,
        /// The shape it was applied to.
        shape: Shape,
    },
    /// An index (gather, embedding, narrow, ...) is out of range along an axis.
    Index {
        /// Operation name.
        op: &'static str,
        /// The offending index.
        index: usize,
        /// The axis' extent.
        size: usize,
        /// The axis indexed.
        axis: usize,
        /// The shape indexed.
        shape: Shape,
    },
    /// A number of elements does not match a shape (reshape, from_vec).
    ElementCount {
        /// Operation name.
        op: &'static str,
        /// The target shape.
        shape: Shape,
        /// The number of elements available.
        got: usize,
        /// The shape the elements came from, when there was one (reshape).
        from: Option<Shape>,
    },
    /// A shape has more elements than memory can address: the product of its nonzero
    /// dimensions overflows or exceeds [`crate::shape::MAX_ELEMENTS`].
    TooLarge {
        /// Operation name.
        op: &'static str,
        /// The shape (as computed, before any allocation).
        shape: Shape,
    },
    /// Memory for a buffer (or a command's up-front estimate of what it needs) is not there.
    OutOfMemory {
        /// Operation (or command) name.
        op: &'static str,
        /// What the memory is for, e.g. "a [4096, 4096] f32 buffer".
        what: String,
        /// Bytes needed (saturated at `u64::MAX` when the estimate itself overflows).
        needed: u64,
        /// Bytes available, when known.
        available: Option<u64>,
        /// Where `available` came from (e.g. "MemAvailable"), or "" when unknown.
        source: &'static str,
    },
    /// Two operands have different dtypes.
    DTypeMismatch {
        /// Operation name.
        op: &'static str,
        /// Left operand's dtype.
        lhs: DType,
        /// Right operand's dtype.
        rhs: DType,
    },
    /// The op does not support this dtype.
    UnsupportedDType {
        /// Operation name.
        op: &'static str,
        /// The dtype given.
        dtype: DType,
        /// What the op accepts.
        expected: &'static str,
    },
    /// Operands live on different devices.
    DeviceMismatch {
        /// Operation name.
        op: &'static str,
        /// Left operand's device.
        lhs: String,
        /// Right operand's device.
        rhs: String,
    },
    /// Any other bad argument, with a message that says which and why.
    InvalidArgument {
        /// Operation name.
        op: &'static str,
        /// Explanation including the values involved.
        msg: String,
    },
    /// No usable device (no CUDA driver, no GPU, ...).
    DeviceUnavailable {
        /// The device asked for, e.g. "cuda:0".
        device: String,
        /// Why it cannot be used, and what to do instead.
        reason: String,
    },
    /// A failure reported by a backend (driver error, kernel compile log, ...).
    Backend {
        /// Backend name.
        backend: &'static str,
        /// Operation name.
        op: &'static str,
        /// The backend's message.
        msg: String,
    },
    /// A distributed run cannot continue: a rank died, hung or never joined (a timeout), the
    /// ranks disagree (different collectives, shapes or world sizes), or the rendezvous or a
    /// collective's transport failed.
    Distributed {
        /// The collective or step (e.g. "all_reduce", "rendezvous").
        op: &'static str,
        /// What happened, naming the ranks involved, and what to check.
        msg: String,
    },
    /// A file could not be read or written, or its content is invalid (checkpoints, data).
    Io {
        /// The file involved.
        path: String,
        /// What went wrong.
        msg: String,
    },
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Broadcast { op, lhs, rhs } => write!(
                f,
                "{op}: shapes {lhs} and {rhs} cannot be broadcast: aligned from the right, each \
                 pair of dimensions must be equal or one of them 1 (reshape or unsqueeze an operand)"
            ),
            Error::ShapeMismatch { op, lhs, rhs, hint } => {
                write!(f, "{op}: shape mismatch between {lhs} and {rhs}: {hint}")
            }
            Error::RankMismatch { op, expected, shape } => {
                write!(f, "{op}: expected a tensor of rank {expected}, got shape {shape} (rank {})", shape.rank())
            }
            Error::Axis { op, axis, shape } => write!(
                f,
                "{op}: axis {axis} is out of range for shape {shape} (valid: {}..{})",
                -(shape.rank() as isize),
                shape.rank()
            ),
            Error::Index { op, index, size, axis, shape } => write!(
                f,
                "{op}: index {index} is out of range for axis {axis} of size {size} (shape {shape}); \
                 indices must be in 0..{size}"
            ),
            Error::ElementCount { op, shape, got, from } => {
                write!(f, "{op}: shape {shape} needs {} elements but {got} were given", shape.elem_count())?;
                match from {
                    Some(src) => write!(f, " (by a tensor of shape {src}); reshape keeps the number of elements"),
                    None => Ok(()),
                }
            }
            Error::TooLarge { op, shape } => write!(
                f,
                "{op}: shape {shape} has more elements than memory can address (the product of its nonzero \
                 dimensions exceeds 2^60, the most whose bytes fit in isize::MAX at 8 bytes each); check the \
                 sizes that produced it"
            ),
            Error::OutOfMemory { op, what, needed, available, source } => {
                write!(f, "{op}: {what} needs {}", human_bytes(*needed))?;
                match available {
                    Some(a) if source.is_empty() => {
                        write!(f, " but only {} is available; use smaller sizes", human_bytes(*a))
                    }
                    Some(a) => write!(f, " but only {} is available ({source}); use smaller sizes", human_bytes(*a)),
                    None => write!(f, ", which could not be allocated; use smaller sizes"),
                }
            }
            Error::DTypeMismatch { op, lhs, rhs } => {
                write!(f, "{op}: dtype mismatch: {lhs:?} vs {rhs:?} (convert one operand with .to_dtype())")
            }
            Error::UnsupportedDType { op, dtype, expected } => {
                write!(f, "{op}: dtype {dtype:?} is not supported; expected {expected}")
            }
            Error::DeviceMismatch { op, lhs, rhs } => {
                write!(f, "{op}: operands are on different devices ({lhs} and {rhs}); move one with .to_device()")
            }
            Error::InvalidArgument { op, msg } => write!(f, "{op}: {msg}"),
            Error::DeviceUnavailable { device, reason } => {
                write!(f, "device {device} is unavailable: {reason}")
            }
            Error::Backend { backend, op, msg } => write!(f, "{op} ({backend} backend): {msg}"),
            Error::Distributed { op, msg } => write!(f, "{op} (distributed): {msg}"),
            Error::Io { path, msg } => write!(f, "{path}: {msg}"),
        }
    }
}

impl std::error::Error for Error {}

/// `n` bytes in binary units with 3 significant digits ("1.50 GiB"); `u64::MAX` (a saturated
/// estimate) reads "more than 16 EiB".
pub fn human_bytes(n: u64) -> String {
    if n == u64::MAX {
        return "more than 16 EiB".into();
    }
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument { op, msg: msg.into() }
    }
}
