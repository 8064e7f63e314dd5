//! Exact Linear Attention (ELA): the descriptors shared by every backend's fused ELA kernels.
//!
//! Per head, with queries `q_i`, keys `k_j` in `R^D`, values `v_j` in `R^Dv` and a kernel that
//! decomposes exactly as `k(q, k) = phi(q) . psi(k)` with `phi, psi : R^D -> R^F`:
//!
//! ```text
//! causal:      y_i = sum_{j<=i} k(q_i,k_j) v_j / sum_{j<=i} k(q_i,k_j)
//!                  = phi(q_i)^T S_i / (phi(q_i) . z_i),   S_i = sum_{j<=i} psi(k_j) v_j^T,  z_i = sum_{j<=i} psi(k_j)
//! non-causal:  the same sums over all j
//! ```
//!
//! The fused ops ([`Backend::ela_forward`](crate::Backend::ela_forward),
//! [`Backend::ela_backward`](crate::Backend::ela_backward), [`Backend::ela_step`](crate::Backend::ela_step))
//! take the kernel as an [`ElaKernel`] so a device can fuse the feature maps into its kernels. A
//! kernel that is not built in runs as [`ElaKernel::Identity`]: the caller computes `phi(q)` and
//! `psi(k)` itself and passes them as `q` and `k`.
//!
//! The tensor-level entry points are [`Tensor::ela`](crate::Tensor::ela),
//! [`Tensor::ela_backward`](crate::Tensor::ela_backward) and [`FusedElaState`];
//! the derivation of every equation is in `docs/ela.md`.

use crate::error::{Error, Result};
use crate::shape::Shape;

/// The kernels the fused ELA ops compute their feature maps for.
///
/// The discriminants are the kernel codes that device kernels receive ([`ElaKernel::code`]); the
/// CUDA backend emits them as `#define`s into the source it compiles, so this is the one place
/// they are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum ElaKernel {
    /// `k(q,k) = sum_d exp(q_d) exp(k_d)`; `phi = exp(q)`, `psi = exp(k)`, `F = D`. Positive, so the
    /// denominator never vanishes. The fused ops shift the exponents so nothing overflows (see
    /// `docs/ela.md#numerics`); the shifts cancel exactly in the ratio.
    HadamardExp = 0,
    /// `k(q,k) = |q+k|^2`; `phi = (q, |q|^2, 1)`, `psi = (2k, 1, |k|^2)`, `F = D + 2`. The kernel is
    /// non-negative but the features are signed: the denominator is a cancelling sum.
    SumSqEuclid = 1,
    /// `k(q,k) = |q-k|^2`; `phi = (q, |q|^2, 1)`, `psi = (-2k, 1, |k|^2)`, `F = D + 2`. Same caveat.
    SubSqEuclid = 2,
    /// The paper's "restore standard attention" blueprint `(q.k + 1)(|q|^2 + 1)(|k|^2 + 1)`;
    /// `phi = (|q|^2+1)(q, 1)`, `psi = (|k|^2+1)(k, 1)`, `F = D + 1`. **Negative when `q.k < -1`**,
    /// which breaks the non-negativity that attention weights need.
    Blueprint = 3,
    /// `q` and `k` already are the feature vectors `phi(q)`, `psi(k)` (`F = D`): how user kernels run.
    Identity = 4,
    /// Linear attention with the `elu(x) + 1` feature map (Katharopoulos et al., 2020):
    /// `k(q,k) = sum_d (elu(q_d) + 1)(elu(k_d) + 1)`, `phi = elu(q) + 1`, `psi = elu(k) + 1`,
    /// `F = D`. Features are positive, so the denominator never vanishes; the "earlier linear
    /// attention" baseline the paper compares against.
    EluPlusOne = 5,
}

impl ElaKernel {
    /// Every kernel, in declaration order.
    pub const ALL: [ElaKernel; 6] = [
        ElaKernel::HadamardExp,
        ElaKernel::SumSqEuclid,
        ElaKernel::SubSqEuclid,
        ElaKernel::Blueprint,
        ElaKernel::Identity,
        ElaKernel::EluPlusOne,
    ];

    /// The kernel's code in device kernels (its discriminant): what a backend passes to a kernel
    /// that computes any built-in feature map.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// Feature size `F` for inputs of dimension `d`.
    pub fn feature_size(self, d: usize) -> usize {
        match self {
            ElaKernel::HadamardExp | ElaKernel::Identity | ElaKernel::EluPlusOne => d,
            ElaKernel::SumSqEuclid | ElaKernel::SubSqEuclid => d + 2,
            ElaKernel::Blueprint => d + 1,
        }
    }

    /// Short name, as accepted by [`str::parse`] ("hadamard-exp", "sum-sq-euclid", ...).
    pub fn name(self) -> &'static str {
        match self {
            ElaKernel::HadamardExp => "hadamard-exp",
            ElaKernel::SumSqEuclid => "sum-sq-euclid",
            ElaKernel::SubSqEuclid => "sub-sq-euclid",
            ElaKernel::Blueprint => "blueprint",
            ElaKernel::Identity => "identity",
            ElaKernel::EluPlusOne => "elu-plus-one",
        }
    }

    /// True for the kernel whose fused ops carry log-scale units (Hadamard Exp): its recurrent state
    /// has a third buffer of per-feature running maxima.
    pub fn has_units(self) -> bool {
        self == ElaKernel::HadamardExp
    }
}

impl std::fmt::Display for ElaKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ElaKernel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ElaKernel::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<&str> = ElaKernel::ALL.iter().map(|k| k.name()).collect();
            Error::invalid("ela_kernel", format!("unknown ELA kernel {s:?}; expected one of {}", names.join(", ")))
        })
    }
}

/// Default chunk length of the chunked form: big enough for efficient matrix products, small
/// enough that the `C x C` intra-chunk block stays in cache.
pub const DEFAULT_CHUNK: usize = 64;

/// Options of the fused ELA ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElaParams {
    /// Which kernel's feature maps to apply to `q` and `k`.
    pub kernel: ElaKernel,
    /// Causal (`j <= i`) or full (all `j`) attention.
    pub causal: bool,
    /// Chunk length `C` of the chunked form (>= 1). Results agree for every `C` up to rounding.
    /// The CPU backend honours it; the CUDA backend checks it through `Tensor` but chooses its own
    /// chunking per kernel path (a per-token scan, or fixed 64- or 32-row chunks), so on CUDA it
    /// changes nothing.
    pub chunk: usize,
}

impl Default for ElaParams {
    fn default() -> Self {
        ElaParams { kernel: ElaKernel::HadamardExp, causal: true, chunk: DEFAULT_CHUNK }
    }
}

impl ElaParams {
    /// Causal attention with `kernel` and the default chunk length.
    pub fn causal(kernel: ElaKernel) -> Self {
        ElaParams { kernel, causal: true, chunk: DEFAULT_CHUNK }
    }

    /// Non-causal attention with `kernel` and the default chunk length.
    pub fn non_causal(kernel: ElaKernel) -> Self {
        ElaParams { kernel, causal: false, chunk: DEFAULT_CHUNK }
    }

    /// The same options with another chunk length.
    pub fn with_chunk(self, chunk: usize) -> Self {
        ElaParams { chunk, ..self }
    }

    /// Checks these options for a call of sizes `dims` (`with_state`: continuing a recurrent
    /// state). With [`ElaDims::from_shapes`] this is the whole argument check of the fused ELA
    /// ops: `Tensor` and `FusedElaState` call both (besides device and dtype checks), and backends
    /// trust them, as all kernels trust their callers (docs/architecture.md). Errors name `op`.
    pub fn validate(&self, op: &'static str, dims: &ElaDims, with_state: bool) -> Result<()> {
        if self.chunk == 0 {
            return Err(Error::invalid(op, "the chunk length must be >= 1 (the default is 64)"));
        }
        if dims.d == 0 {
            return Err(Error::invalid(
                op,
                format!("q/k have dimension 0; kernel {} needs at least one feature", self.kernel),
            ));
        }
        if with_state && !self.causal {
            return Err(Error::invalid(op, "a recurrent state only exists for causal attention (set causal: true)"));
        }
        Ok(())
    }
}

/// Sizes of one fused ELA call. Tensors are contiguous: `q`, `k`: `[batch, heads, t, d]`,
/// `v` and the output: `[batch, heads, t, dv]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElaDims {
    /// Batch size.
    pub batch: usize,
    /// Number of heads.
    pub heads: usize,
    /// Sequence length (1 for a recurrent step).
    pub t: usize,
    /// Query/key dimension (the feature size when the kernel is `Identity`).
    pub d: usize,
    /// Value dimension.
    pub dv: usize,
}

impl ElaDims {
    /// The sizes of a call with `q`, `k` of shape `[batch, heads, t, d]` and `v` of shape
    /// `[batch, heads, t, dv]`; a typed error naming `op` and the shapes otherwise. The one shape
    /// check of every ELA entry point ([`Tensor::ela_dims`](crate::Tensor::ela_dims) is this on
    /// tensors).
    pub fn from_shapes(op: &'static str, q: &Shape, k: &Shape, v: &Shape) -> Result<ElaDims> {
        for s in [q, k, v] {
            if s.rank() != 4 {
                return Err(Error::RankMismatch { op, expected: "4 ([batch, heads, time, dim])", shape: s.clone() });
            }
        }
        if q.dims() != k.dims() {
            return Err(Error::ShapeMismatch {
                op,
                lhs: q.clone(),
                rhs: k.clone(),
                hint: "q and k must have the same shape [batch, heads, time, dim]".into(),
            });
        }
        if v.dims()[..3] != q.dims()[..3] {
            return Err(Error::ShapeMismatch {
                op,
                lhs: q.clone(),
                rhs: v.clone(),
                hint: "v must be [batch, heads, time, dv] with the batch, heads and time of q (dv may differ)".into(),
            });
        }
        let d = q.dims();
        Ok(ElaDims { batch: d[0], heads: d[1], t: d[2], d: d[3], dv: v.dims()[3] })
    }

    /// Number of independent (batch, head) sequences.
    pub fn sequences(&self) -> usize {
        self.batch * self.heads
    }
}

/// The recurrent state of ELA for `batch x heads` sequences, as device buffers.
///
/// Per sequence: `s` is `F x Dv` (row-major), `z` is `F`, and for kernels with units (Hadamard
/// Exp) `m` is `F` per-feature log-scales: the true state is `S_true[f, :] = exp(m[f]) s[f, :]`,
/// `z_true[f] = exp(m[f]) z[f]`, where `m[f]` is the running maximum of `k[f]` over the keys seen
/// (`-inf` before the first key). Buffers are f32 for f16/bf16/f32 inputs and f64 for f64 inputs.
#[derive(Clone, Debug)]
pub struct ElaStateBufs<S> {
    /// `[batch, heads, F, Dv]` numerator state.
    pub s: S,
    /// `[batch, heads, F]` denominator state.
    pub z: S,
    /// `[batch, heads, F]` log-scales (Hadamard Exp only).
    pub m: Option<S>,
}

/// What a backend's ELA forward kept for its backward ([`Backend::ela_forward_saving`]): buffers in a
/// layout only that backend reads (the CUDA chunked path keeps its per-chunk states and per-row
/// scales, so the backward skips recomputing the forward), with the sizes and options they were
/// made for. Holding it trades memory (for the CUDA path about one more `k` at bf16 with
/// 64-row chunks) for backward time.
///
/// [`Backend::ela_forward_saving`]: crate::Backend::ela_forward_saving
#[derive(Debug)]
pub struct ElaSaved<S> {
    /// The backend's buffers.
    pub buffers: Vec<S>,
    /// The sizes of the forward call.
    pub dims: ElaDims,
    /// The options of the forward call.
    pub params: ElaParams,
}

/// What [`Backend::ela_forward_saving`](crate::Backend::ela_forward_saving) returns: the output
/// and what the backend kept for the backward, if anything.
pub type ElaSavingOutput<S> = (S, Option<ElaSaved<S>>);

/// Where the rows of one `[batch, heads, t, width]` ELA operand lie in its buffer: row `t` of
/// head `h` of batch entry `b` starts at element `offset + b * batch + h * head + t * row`, and a
/// row's `width` elements are contiguous. A contiguous tensor is one such layout; a transposed
/// view of a `[batch, t, heads, width]` tensor (what an attention layer makes of its q/k/v
/// product) is another, which a backend supporting
/// [`Backend::ela_rows_supported`](crate::Backend::ela_rows_supported) reads in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElaRows {
    /// Element offset of the first row.
    pub offset: usize,
    /// Elements between consecutive batch entries.
    pub batch: usize,
    /// Elements between consecutive heads.
    pub head: usize,
    /// Elements between consecutive rows (time steps) of one sequence.
    pub row: usize,
}

impl ElaRows {
    /// A contiguous `[batch, heads, t, width]` buffer.
    pub fn contiguous(dims: &ElaDims, width: usize) -> Self {
        ElaRows { offset: 0, batch: dims.heads * dims.t * width, head: dims.t * width, row: width }
    }

    /// A contiguous `[batch, t, heads, width]` buffer seen as `[batch, heads, t, width]`.
    pub fn token_major(dims: &ElaDims, width: usize) -> Self {
        ElaRows { offset: 0, batch: dims.t * dims.heads * width, head: width, row: dims.heads * width }
    }

    /// The rows of a rank-4 layout whose last axis has unit stride (or length 1), else `None`.
    pub fn of_layout(layout: &crate::Layout) -> Option<Self> {
        let (d, s) = (layout.dims(), layout.strides());
        (d.len() == 4 && (s[3] == 1 || d[3] == 1)).then(|| ElaRows {
            offset: layout.offset(),
            batch: s[0],
            head: s[1],
            row: s[2],
        })
    }

    /// Whether heads lie closer together than time steps (a `[batch, t, heads, width]` order).
    pub fn is_token_major(&self) -> bool {
        self.head < self.row
    }
}

/// The gradients [`Backend::ela_backward_rows`](crate::Backend::ela_backward_rows) returns.
#[derive(Debug)]
pub enum ElaGrads<S> {
    /// `dq`, `dk`, `dv`, each contiguous `[batch, heads, t, width]`.
    Separate(S, S, S),
    /// One buffer holding `dq`, `dk` and `dv` where `q`, `k` and `v` lie in theirs (the same
    /// offsets and strides): for operands that are disjoint views of one buffer, such as the
    /// heads of a fused q/k/v product, whose gradient it then is, with no copy.
    Shared(S),
}

/// One ELA operand as a backend receives it: its buffer and where its rows are.
#[derive(Clone, Copy, Debug)]
pub struct ElaArg<'a, S> {
    /// The buffer.
    pub storage: &'a S,
    /// Where the `[batch, heads, t, width]` rows lie in it.
    pub rows: ElaRows,
}

pub use crate::tensor::FusedElaState;

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows of the layouts an attention layer hands the fused op: contiguous, and a
    /// transposed view of a `[batch, t, 3, heads, d]` product (q at offset 0, k at `heads * d`).
    #[test]
    fn rows_of_contiguous_and_token_major_layouts() {
        let dims = ElaDims { batch: 2, heads: 3, t: 5, d: 8, dv: 4 };
        let c = ElaRows::contiguous(&dims, 8);
        assert_eq!(c, ElaRows { offset: 0, batch: 120, head: 40, row: 8 });
        assert_eq!(ElaRows::of_layout(&crate::Layout::contiguous([2, 3, 5, 8])), Some(c));
        assert!(!c.is_token_major());
        let tm = ElaRows::token_major(&dims, 4);
        assert_eq!(tm, ElaRows { offset: 0, batch: 60, head: 4, row: 12 });
        assert!(tm.is_token_major());
        // k of a fused product [2, 5, 3, 3, 8]: strides (360, 72, 24, 8, 1), narrowed to index 1
        // of axis 2, squeezed and transposed to [2, 3, 5, 8].
        let k = crate::Layout::from_parts(Shape::from(vec![2, 3, 5, 8]), vec![360, 8, 72, 1], 24);
        let r = ElaRows::of_layout(&k).unwrap();
        assert_eq!(r, ElaRows { offset: 24, batch: 360, head: 8, row: 72 });
        assert!(r.is_token_major());
        // Rows that are not contiguous, or another rank, have no ElaRows.
        let cols = crate::Layout::from_parts(Shape::from(vec![2, 3, 5, 8]), vec![120, 40, 1, 5], 0);
        assert_eq!(ElaRows::of_layout(&cols), None);
        assert_eq!(ElaRows::of_layout(&crate::Layout::contiguous([3, 5, 8])), None);
    }

    /// The one ELA argument check: every rule, with the error naming the op.
    #[test]
    fn validate_and_from_shapes_are_the_whole_check() {
        let dims = ElaDims { batch: 1, heads: 2, t: 3, d: 4, dv: 5 };
        let p = ElaParams::causal(ElaKernel::HadamardExp);
        assert!(p.validate("ela", &dims, true).is_ok());
        let msg = |r: Result<()>| r.unwrap_err().to_string();
        assert!(msg(p.with_chunk(0).validate("ela", &dims, false)).contains("chunk length must be >= 1"));
        assert!(msg(p.validate("ela", &ElaDims { d: 0, ..dims }, false)).contains("dimension 0"));
        let nc = ElaParams::non_causal(ElaKernel::SumSqEuclid);
        assert!(nc.validate("ela_forward", &dims, false).is_ok());
        let e = msg(nc.validate("ela_forward", &dims, true));
        assert!(e.starts_with("ela_forward") && e.contains("only exists for causal"), "{e}");

        let s = |d: &[usize]| Shape::from(d.to_vec());
        let (q, v) = (s(&[1, 2, 3, 4]), s(&[1, 2, 3, 5]));
        assert_eq!(ElaDims::from_shapes("ela", &q, &q, &v).unwrap(), dims);
        assert!(matches!(ElaDims::from_shapes("ela", &s(&[2, 3, 4]), &q, &v), Err(Error::RankMismatch { .. })));
        assert!(matches!(ElaDims::from_shapes("ela", &q, &s(&[1, 2, 3, 3]), &v), Err(Error::ShapeMismatch { .. })));
        assert!(matches!(ElaDims::from_shapes("ela", &q, &q, &s(&[1, 2, 4, 5])), Err(Error::ShapeMismatch { .. })));
    }
}
