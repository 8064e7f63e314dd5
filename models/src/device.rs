//! Picking the device at run time: `cpu`, `cuda` or `cuda:N`, as the `--device` option of every
//! command and as a library call.
//!
//! The engine's code is generic over a backend type (`Tensor<B>`, `Var<B>`, `Ela<B>`), chosen at
//! compile time; a program that reads the device from its command line needs one generic
//! function and a switch that calls it with `&Cpu` or `&Cuda`. [`with_device!`](crate::with_device) is that switch:
//!
//! ```
//! use ela_models::device::Device;
//! use ela_models::ela_core::{Backend, DType, Result, Rng, Tensor};
//! use ela_models::with_device;
//!
//! /// Any generic code: here, the sum of a random matrix product.
//! fn work<B: Backend>(dev: &B) -> Result<f64> {
//!     let mut rng = Rng::new(0);
//!     let a = Tensor::randn(0.0, 1.0, [4, 8], DType::F32, &mut rng, dev)?;
//!     let b = Tensor::randn(0.0, 1.0, [8, 3], DType::F32, &mut rng, dev)?;
//!     a.matmul(&b)?.sum_all()?.to_scalar()
//! }
//!
//! fn main() -> Result<()> {
//!     let device: Device = "cpu".parse()?; // e.g. from your own --device flag
//!     let total = with_device!(device, |dev| work(dev))?;
//!     println!("{total} on {device}");
//!     // Without a GPU (or CUDA driver) this is a typed error, not a panic:
//!     let on_gpu = with_device!(Device::Cuda(0), |dev| work(dev));
//!     if let Err(e) = on_gpu {
//!         println!("no GPU here: {e}");
//!     }
//!     Ok(())
//! }
//! ```
//!
//! The body is compiled once per backend, so it must be generic code (a call of a generic
//! function, as above). `models/examples/any_device.rs` trains a small ELA layer on either.

use std::fmt;
use std::str::FromStr;

use ela_core::{Error, Result};

/// `--chunk` is the chunk length of ELA's chunked form on the CPU; the CUDA backend picks its own
/// chunking per kernel path and never reads it. So that a chunk the user asked for is never
/// silently dropped, a chunk other than the default on a CUDA device (`device_name` as
/// [`ela_core::Backend::device_name`] or `--device` writes it) is refused, naming `op`.
pub fn check_chunk(chunk: usize, device_name: &str, op: &'static str) -> Result<()> {
    if chunk == 0 {
        return Err(Error::invalid(op, "--chunk must be at least 1"));
    }
    if device_name.starts_with("cuda") && chunk != ela_core::ela::DEFAULT_CHUNK {
        return Err(Error::invalid(
            op,
            format!(
                "--chunk {chunk} applies to the CPU only: the CUDA backend chooses its own chunking (results agree \
                 for every chunk length up to rounding); drop --chunk or use --device cpu"
            ),
        ));
    }
    Ok(())
}

/// Where a computation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    /// The CPU backend ([`ela_core::Cpu`]).
    Cpu,
    /// The CUDA device with this ordinal ([`ela_cuda::Cuda`]).
    Cuda(usize),
}

impl FromStr for Device {
    type Err = Error;
    /// `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
    fn from_str(s: &str) -> Result<Device> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Ok(Device::Cuda(n)),
                _ => Err(Error::invalid("device", format!("unknown device {s:?}; expected cpu, cuda or cuda:N"))),
            },
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Run a generic body on the backend `device` names: `with_device!(device, |dev| f(dev))`, where
/// `device` is a [`Device`] and `dev` becomes `&Cpu` or `&Cuda`. The macro's value is the body's
/// `Result`; a missing CUDA driver or GPU is a `DeviceUnavailable` error (no panic). With
/// `ELA_CUDA_KERNEL_STATS=1` the time per CUDA kernel is printed to stderr afterwards.
/// Callers need only `ela-models` as a dependency (it re-exports the backends' crates).
#[macro_export]
macro_rules! with_device {
    ($device:expr, |$dev:ident| $body:expr) => {{
        match $device {
            $crate::device::Device::Cpu => {
                let $dev = &$crate::ela_core::Cpu;
                $body
            }
            $crate::device::Device::Cuda(ordinal) => match $crate::ela_cuda::Cuda::new(ordinal) {
                Err(e) => Err(e.into()),
                Ok(cuda) => {
                    let $dev = &cuda;
                    let out = $body;
                    // Written without eprintln!, which panics when stderr is full or closed.
                    let stats = match $dev.kernel_stats_report(40) {
                        Ok(Some(report)) => Some(report),
                        Ok(None) => None,
                        Err(e) => Some(format!("kernel stats: {e}")),
                    };
                    if let Some(text) = stats {
                        use std::io::Write as _;
                        let _ = writeln!(std::io::stderr(), "{text}");
                    }
                    out
                }
            },
        }
    }};
}
