//! Running one test on every backend: always on the CPU, and on CUDA when a GPU is usable.
//!
//! A *device-generic test* is a function generic over [`Backend`] that receives the device handle.
//! [`device_tests!`](crate::device_tests) (plain tests) and
//! [`device_proptest!`](crate::device_proptest) (property tests) define it and instantiate it once
//! per backend, as a module named after the test that holds `#[test] fn cpu()` and
//! `#[test] fn cuda()`. So the test `unary_f64` runs as `unary_f64::cpu` and `unary_f64::cuda`:
//! `cargo test ::cuda` runs only the GPU instances, `cargo test -- --skip ::cuda` only the CPU
//! ones.
//!
//! Without a usable GPU the CUDA instance writes `skipped: no CUDA device: <test>` to stderr (shown
//! by a plain `cargo test`) and returns, and the binary ends with a `SKIPPED N test(s)` summary
//! line (`ela_cuda::testing`); with `ELA_REQUIRE_CUDA=1` (set by the GPU runner) it fails instead.
//! A failing instance panics with the test name, the device and the error, e.g.
//! `unary_f64 on cuda:0: exp F64 [2, 3] Perm: element 4 (index [1, 1] of shape [2, 3]): got ..
//! want ..`, followed for a property test by its minimal failing input.
//!
//! # Writing a device-generic test
//!
//! The reference stays on the CPU: build the inputs on the CPU (in f64, or rounded to the dtype
//! under test), move them to the device with [`Tensor::to_device`] (or [`upload`]), run the op
//! under test there, and compare its result, read back to the host, with the reference. Note that
//! `to_device` copies the *logical* values into a fresh contiguous buffer; to test a strided view on
//! the device, move the whole underlying buffer and take the view (`narrow`, `permute`,
//! `broadcast_as`, ...) on the device. A property test acquires the device once (it is the test
//! function's argument) and uses it for every case.
//!
//! ```no_run
//! use ela_core::{Backend, Cpu, DType, Tensor};
//! use ela_tests::{device_proptest, device_tests};
//! use proptest::prelude::*;
//!
//! device_tests!(exp_of_zero);
//!
//! /// exp(0) = 1 on every device.
//! fn exp_of_zero<B: Backend>(dev: &B) -> ela_core::Result<()> {
//!     let x = Tensor::zeros(3, DType::F32, dev)?;
//!     assert_eq!(x.exp()?.to_vec::<f32>()?, vec![1.0; 3]);
//!     Ok(())
//! }
//!
//! device_proptest! {
//!     #![proptest_config(ProptestConfig::with_cases(16))]
//!
//!     /// x + x == 2x for any values.
//!     fn add_doubles<B: Backend>(dev: &B, xs in prop::collection::vec(-1e3f64..1e3, 0..20)) {
//!         let n = xs.len();
//!         let x = Tensor::from_vec(xs.clone(), n, &Cpu)?.to_device(dev)?;
//!         let got = x.add(&x)?.to_vec::<f64>()?;
//!         prop_assert_eq!(got, xs.iter().map(|v| 2.0 * v).collect::<Vec<_>>(), "add [{}] f64", n);
//!     }
//! }
//! # fn main() {}
//! ```
//!
//! When a CPU behaviour is intentionally different on CUDA (`cuda/README.md`, "Differences from
//! the CPU backend, on purpose"), branch on [`is_cuda`] and say why in a comment.

use std::fmt::{Debug, Display};

pub use ela_core::{Backend, Cpu};
use ela_core::{Error, Tensor};
use ela_cuda::Cuda;
use proptest::test_runner::{Config as ProptestConfig, TestCaseResult, TestError, TestRunner};

pub use ela_cuda::testing::{cuda_required, REQUIRE_CUDA};

/// The CUDA device (ordinal 0), or `None` after reporting the test skipped
/// ([`ela_cuda::testing::device_or_skip`]: a `skipped: no CUDA device: <test>` line on stderr and
/// the binary's `SKIPPED N test(s)` summary).
///
/// # Panics
/// When no device is usable and `ELA_REQUIRE_CUDA=1`.
pub fn cuda() -> Option<Cuda> {
    ela_cuda::testing::device_or_skip()
}

/// Proptest cases of a property test: `ELA_PROPTEST_CASES` when set (heavier sweeps), else
/// `default` (chosen per test so the default suite stays fast).
pub fn proptest_cases(default: u32) -> u32 {
    std::env::var("ELA_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// True when `B` is the CUDA backend (for the few documented, intentional differences).
pub fn is_cuda<B: Backend>(_dev: &B) -> bool {
    std::any::TypeId::of::<B>() == std::any::TypeId::of::<Cuda>()
}

/// `x` copied to `dev` (a fresh contiguous buffer holding `x`'s logical values).
///
/// # Panics
/// When the transfer fails, naming the shape, dtype and device.
pub fn upload<B: Backend>(x: &Tensor<Cpu>, dev: &B) -> Tensor<B> {
    x.to_device(dev)
        .unwrap_or_else(|e| panic!("upload of a {:?} {:?} tensor to {}: {e}", x.dims(), x.dtype(), dev.device_name()))
}

/// `x` copied back to the host.
///
/// # Panics
/// When the transfer fails, naming the shape, dtype and device.
pub fn download<B: Backend>(x: &Tensor<B>) -> Tensor<Cpu> {
    x.to_device(&Cpu).unwrap_or_else(|e| {
        panic!("download of a {:?} {:?} tensor from {}: {e}", x.dims(), x.dtype(), x.device().device_name())
    })
}

/// Attaches a description (op, dtype, shape) to an error, turning it into a test failure.
pub trait Context<T> {
    /// `Err(e)` becomes the proptest failure `"{what}: {e}"`.
    fn ctx(self, what: impl Display) -> std::result::Result<T, proptest::test_runner::TestCaseError>;
}

impl<T> Context<T> for ela_core::Result<T> {
    fn ctx(self, what: impl Display) -> std::result::Result<T, proptest::test_runner::TestCaseError> {
        self.map_err(|e: Error| proptest::test_runner::TestCaseError::fail(format!("{what}: {e}")))
    }
}

/// What a device-generic test returns: `()`, or a `Result` whose error is displayed.
pub trait Outcome {
    /// Panics with `"{test} on {device}: {error}"` when the test failed.
    fn finish(self, test: &str, device: &str);
}

impl Outcome for () {
    fn finish(self, _test: &str, _device: &str) {}
}

impl<E: Display> Outcome for std::result::Result<(), E> {
    #[track_caller]
    fn finish(self, test: &str, device: &str) {
        if let Err(e) = self {
            panic!("{test} on {device}: {e}");
        }
    }
}

/// Runs the property `test` on values of `strategy` (what [`device_proptest!`](crate::device_proptest)
/// expands to). Failure persistence is off (failures print their minimal input instead);
/// `inputs` names the values of the strategy tuple for that message.
pub fn run_proptest<S>(
    config: ProptestConfig,
    strategy: S,
    inputs: &[&str],
    test: impl Fn(S::Value) -> TestCaseResult,
) -> std::result::Result<(), String>
where
    S: proptest::strategy::Strategy,
    S::Value: Debug,
{
    let config = ProptestConfig { failure_persistence: None, ..config };
    TestRunner::new(config).run(&strategy, test).map_err(|e| match e {
        TestError::Abort(why) => format!("proptest aborted: {why}"),
        TestError::Fail(why, value) => {
            format!("{why}\nminimal failing input ({}) = {value:#?}", inputs.join(", "))
        }
    })
}

/// Instantiates device-generic tests for the CPU and CUDA (see the [module docs](crate::device)).
///
/// Two forms:
/// - `device_tests!(name_a, name_b);` for functions `fn NAME<B: Backend>(dev: &B) [-> R]` written
///   as ordinary items elsewhere in the file (so rustfmt formats them);
/// - `device_tests! { fn NAME<B: Backend>(dev: &B) [-> R] { .. } .. }`, which also defines them.
///
/// `R` is `()` or a `Result<(), E>` with `E: Display` (e.g. `ela_core::Result<()>`).
#[macro_export]
macro_rules! device_tests {
    ($($name:ident),+ $(,)?) => {
        $($crate::device_instances!($name);)+
    };
    ($(
        $(#[$meta:meta])*
        fn $name:ident<$B:ident: $bound:path>($dev:ident: &$DevTy:ty) $(-> $ret:ty)? $body:block
    )*) => {$(
        $(#[$meta])*
        fn $name<$B: $bound>($dev: &$DevTy) $(-> $ret)? $body
        $crate::device_instances!($name);
    )*};
}

/// Defines device-generic property tests and instantiates each for the CPU and CUDA (see the
/// [module docs](crate::device)).
///
/// Like `proptest!`: a `#![proptest_config(EXPR)]` header (required), then items
/// `fn NAME<B: Backend>(dev: &B, PAT in STRATEGY, ..) { .. }` whose body may use `?` and
/// `prop_assert!`. The device is acquired once per test and shared by all its cases.
#[macro_export]
macro_rules! device_proptest {
    (
        #![proptest_config($cfg:expr)]
        $($rest:tt)*
    ) => {
        $crate::device_proptest!(@items ($cfg) $($rest)*);
    };
    (@items ($cfg:expr)) => {};
    (
        @items ($cfg:expr)
        $(#[$meta:meta])*
        fn $name:ident<$B:ident: $bound:path>($dev:ident: &$DevTy:ty, $($arg:pat in $strat:expr),+ $(,)?) $body:block
        $($rest:tt)*
    ) => {
        $(#[$meta])*
        fn $name<$B: $bound>($dev: &$DevTy) -> ::std::result::Result<(), ::std::string::String> {
            $crate::device::run_proptest($cfg, ($($strat,)+), &[$(stringify!($arg)),+], |($($arg,)+)| {
                $body
                Ok(())
            })
        }
        $crate::device_instances!($name);
        $crate::device_proptest!(@items ($cfg) $($rest)*);
    };
}

/// The per-backend instances of a device-generic test `$name` (used by the macros above).
#[doc(hidden)]
#[macro_export]
macro_rules! device_instances {
    ($name:ident) => {
        mod $name {
            #[test]
            fn cpu() {
                let dev = $crate::device::Cpu;
                let name = $crate::device::Backend::device_name(&dev);
                $crate::device::Outcome::finish(super::$name(&dev), stringify!($name), &name);
            }

            #[test]
            fn cuda() {
                if let Some(dev) = $crate::device::cuda() {
                    let name = $crate::device::Backend::device_name(&dev);
                    $crate::device::Outcome::finish(super::$name(&dev), stringify!($name), &name);
                }
            }
        }
    };
}
