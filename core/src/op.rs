//! Descriptions of the primitive operations the [`Backend`](crate::Backend) trait executes.

/// Elementwise maps of one tensor. Derivative maps (`GeluGrad`, `SiluGrad`, `Step`, `Sign`) exist
/// so backward passes run as single kernels on every device.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    /// -x
    Neg,
    /// e^x
    Exp,
    /// ln x
    Log,
    /// sqrt x
    Sqrt,
    /// 1/x
    Recip,
    /// |x|
    Abs,
    /// x^2
    Square,
    /// max(x, 0)
    Relu,
    /// GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    Gelu,
    /// d GELU / dx (tanh approximation)
    GeluGrad,
    /// x * sigmoid(x)
    Silu,
    /// d SiLU / dx = s (1 + x (1 - s)), s = sigmoid(x)
    SiluGrad,
    /// 1 / (1 + e^-x)
    Sigmoid,
    /// tanh x
    Tanh,
    /// sign(x) in {-1, 0, 1}
    Sign,
    /// 1 where x > 0, else 0 (derivative of relu)
    Step,
    /// x^p
    Powf(f64),
    /// a x + b
    Affine {
        /// multiplier
        mul: f64,
        /// addend
        add: f64,
    },
    /// max(x, c)
    MaxScalar(f64),
    /// min(x, c)
    MinScalar(f64),
}

impl UnaryOp {
    /// Name used in error messages.
    pub fn name(&self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Recip => "recip",
            UnaryOp::Abs => "abs",
            UnaryOp::Square => "square",
            UnaryOp::Relu => "relu",
            UnaryOp::Gelu => "gelu",
            UnaryOp::GeluGrad => "gelu_grad",
            UnaryOp::Silu => "silu",
            UnaryOp::SiluGrad => "silu_grad",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sign => "sign",
            UnaryOp::Step => "step",
            UnaryOp::Powf(_) => "powf",
            UnaryOp::Affine { .. } => "affine",
            UnaryOp::MaxScalar(_) => "maximum_scalar",
            UnaryOp::MinScalar(_) => "minimum_scalar",
        }
    }
}

/// Elementwise maps of two tensors of the same (already broadcast) shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// a + b
    Add,
    /// a - b
    Sub,
    /// a * b
    Mul,
    /// a / b
    Div,
    /// max(a, b)
    Maximum,
    /// min(a, b)
    Minimum,
}

impl BinaryOp {
    /// Name used in error messages.
    pub fn name(&self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Maximum => "maximum",
            BinaryOp::Minimum => "minimum",
        }
    }
}

/// Comparisons; the result is a `U8` mask (1 = true).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    /// a == b
    Eq,
    /// a != b
    Ne,
    /// a < b
    Lt,
    /// a <= b
    Le,
    /// a > b
    Gt,
    /// a >= b
    Ge,
}

/// Reductions along one axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// sum
    Sum,
    /// maximum
    Max,
    /// minimum
    Min,
    /// index of the maximum (first on ties), `U32`
    ArgMax,
    /// index of the minimum (first on ties), `U32`
    ArgMin,
    /// log sum exp, computed stably (max subtracted)
    LogSumExp,
}

impl ReduceOp {
    /// Name used in error messages.
    pub fn name(&self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
            ReduceOp::ArgMax => "argmax",
            ReduceOp::ArgMin => "argmin",
            ReduceOp::LogSumExp => "logsumexp",
        }
    }
}

/// Geometry of a 2-D convolution over NCHW input and [out, in/groups, kh, kw] weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dParams {
    /// (vertical, horizontal) step.
    pub stride: (usize, usize),
    /// Zero padding added on both sides (top/bottom, left/right).
    pub padding: (usize, usize),
    /// Spacing between kernel taps.
    pub dilation: (usize, usize),
    /// Channel groups (1 = dense, in_channels = depthwise).
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Conv2dParams { stride: (1, 1), padding: (0, 0), dilation: (1, 1), groups: 1 }
    }
}

impl Conv2dParams {
    /// Output spatial size for input `(h, w)` and kernel `(kh, kw)`; `None` when the kernel does
    /// not fit.
    pub fn output_hw(&self, (h, w): (usize, usize), (kh, kw): (usize, usize)) -> Option<(usize, usize)> {
        let f = |n: usize, k: usize, s: usize, p: usize, d: usize| {
            // Checked: a padding or dilation from input must not wrap into a small output.
            let eff = d.checked_mul(k.max(1) - 1)?.checked_add(1)?;
            n.checked_add(p.checked_mul(2)?)?.checked_sub(eff).map(|v| v / s + 1)
        };
        Some((
            f(h, kh, self.stride.0, self.padding.0, self.dilation.0)?,
            f(w, kw, self.stride.1, self.padding.1, self.dilation.1)?,
        ))
    }
}

/// Geometry of a 2-D pooling window over NCHW input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pool2dParams {
    /// Window (height, width).
    pub kernel: (usize, usize),
    /// Step (vertical, horizontal).
    pub stride: (usize, usize),
    /// Implicit padding on both sides; padded cells never win a max and count as zeros in the
    /// average only when `count_include_pad`.
    pub padding: (usize, usize),
    /// Average pooling divides by the full window (true) or by the valid cells (false).
    pub count_include_pad: bool,
}

impl Pool2dParams {
    /// Output spatial size, `None` when the window does not fit.
    pub fn output_hw(&self, (h, w): (usize, usize)) -> Option<(usize, usize)> {
        let f = |n: usize, k: usize, s: usize, p: usize| {
            n.checked_add(p.checked_mul(2)?)?.checked_sub(k).map(|v| v / s + 1)
        };
        Some((f(h, self.kernel.0, self.stride.0, self.padding.0)?, f(w, self.kernel.1, self.stride.1, self.padding.1)?))
    }
}

/// The scalars of one fused AdamW update ([`crate::Backend::adamw_update`]), per element:
///
/// ```text
/// m' = beta1 m + (1 - beta1) g
/// v' = beta2 v + (1 - beta2) g^2
/// p' = p decay - lr / bc1 * m' / (sqrt(v') / sqrt(bc2) + eps)
/// ```
///
/// with `decay = 1 - lr weight_decay` (1 for parameters without decay) and the bias corrections
/// `bc1 = 1 - beta1^t`, `bc2 = 1 - beta2^t` of the `t`-th update (ela-nn's `AdamW` fills them in).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Multiplier of the parameter before the update (decoupled weight decay).
    pub decay: f64,
    /// `1 - beta1^t`.
    pub bc1: f64,
    /// `1 - beta2^t`.
    pub bc2: f64,
}

/// `(p', m', v')`: a parameter and its two moments after an AdamW update.
pub type AdamWUpdated<S> = (S, S, S);

/// One parameter's operands in a multi-tensor AdamW update
/// ([`crate::Backend::adamw_update_many`]): contiguous buffers of `n` elements of one dtype (f32
/// or f64) and the scalars of its own update (its step count and decay may differ from the
/// other parameters').
#[derive(Clone, Copy, Debug)]
pub struct AdamWOperands<'a, S> {
    /// The parameter.
    pub p: &'a S,
    /// Its gradient.
    pub g: &'a S,
    /// First moment.
    pub m: &'a S,
    /// Second moment.
    pub v: &'a S,
    /// Elements.
    pub n: usize,
    /// The update's scalars.
    pub step: AdamWStep,
}
