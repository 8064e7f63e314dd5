//! Helpers shared by the GPU benchmarks (included with `#[path]`): input generation, timing with
//! CUDA events (median of repetitions after warm-up), NaN poisoning of the allocator's cache and
//! the command-line filter.

#![allow(dead_code)]

use ela_core::{DType, Result, Tensor};
use ela_cuda::{Cuda, GpuTimer};

/// `len` values uniform in `[lo, hi)` (xorshift, filled in parallel: sizes reach 10^9).
pub fn uniform(len: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    let mut v = vec![0f32; len];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(32);
    let per = len.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (i, part) in v.chunks_mut(per).enumerate() {
            s.spawn(move || {
                let mut x = (seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
                for o in part {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *o = lo + (hi - lo) * ((x >> 40) as f32 / (1u64 << 24) as f32);
                }
            });
        }
    });
    v
}

/// A device tensor of `shape` with values uniform in `[lo, hi)`, in `dtype`.
pub fn rand_tensor(dev: &Cuda, shape: &[usize], lo: f32, hi: f32, seed: u64, dtype: DType) -> Result<Tensor<Cuda>> {
    let n = shape.iter().product();
    Tensor::from_vec(uniform(n, lo, hi, seed), shape.to_vec(), dev)?.to_dtype(dtype)
}

/// Median device milliseconds of `f` over `reps` runs after `warm` unrecorded ones.
pub fn time_ms<T>(timer: &GpuTimer, warm: usize, reps: usize, mut f: impl FnMut() -> Result<T>) -> Result<f64> {
    for _ in 0..warm {
        timer.time(&mut f)?;
    }
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps {
        v.push(timer.time(&mut f)?.1);
    }
    Ok(median(v))
}

/// Median of a non-empty sample.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Leaves `count` NaN-filled blocks of `elems` elements in the caching allocator's free list, so
/// the next allocations of that size (an op's outputs) start as NaN: an unwritten element shows.
pub fn poison(dev: &Cuda, elems: usize, dtype: DType, count: usize) -> Result<()> {
    let blocks = (0..count).map(|_| Tensor::full(f64::NAN, [elems], dtype, dev)).collect::<Result<Vec<_>>>()?;
    drop(blocks);
    Ok(())
}

/// ‖a - b‖ / ‖b‖ (infinite when `a` has a non-finite entry).
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    if a.iter().any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    num / den.max(f64::MIN_POSITIVE)
}

/// True when the command line (after `--`) selects `label`: no filter, or a filter word that the
/// label contains. `kernel=NAME` arguments are options of `ela_gpu`, not filters.
pub fn selected(label: &str) -> bool {
    let args: Vec<String> =
        std::env::args().skip(1).filter(|a| !a.starts_with("--") && !a.starts_with("kernel=")).collect();
    args.is_empty() || args.iter().any(|a| label.contains(a.as_str()))
}

/// The GPU, or exit with the reason.
pub fn device() -> Cuda {
    match ela_cuda::cuda_if_available() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("no CUDA device: {e}");
            std::process::exit(2);
        }
    }
}
