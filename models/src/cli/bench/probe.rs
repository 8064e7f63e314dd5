//! A machine-speed probe for CPU benchmarks: a fixed loop of loads, multiply-adds and stores over
//! a buffer that stays in the L1 cache, timed right after every timed call of the code under
//! test, in the same thread.
//!
//! Why: on the shared virtual machines these benchmarks run on, a core's speed changes from one
//! moment to the next, in episodes of tens to hundreds of milliseconds: something outside the
//! process (the host's other tenants) takes a share of the core's loads and stores. A
//! single-threaded ELA forward at T = 4096 then measures 20-30% slower in some processes and not
//! in others, which looks like a slow mode of the code. The probe tells the two apart: it only
//! loads, multiplies, adds and stores values in a 16 KiB buffer that stays in the L1 cache, so its
//! time depends on nothing but how fast the core runs such a loop. When it is slower by a similar
//! factor at the same moments as the measurement, the machine was slow, not the code
//! (docs/benchmarks.md, "CPU ELA", has the measurements that settled it: a loop of register-only
//! multiply-adds did *not* slow down in these episodes, loops that touch memory, even L1, did).
//!
//! The loop runs in the widest vectors the CPU has (AVX-512, AVX2, else SSE), the width of the
//! kernels it is compared with.

use std::hint::black_box;
use std::time::Instant;

use super::{median, time_runs, Reps};

/// Values in the probe's buffer: 16 KiB of f32, half of the smallest L1 data cache it is meant for.
const LEN: usize = 4096;
/// Passes over the buffer: about 0.15 ms on a 3.7 GHz Zen 4 core (AVX-512).
const PASSES: usize = 1024;

/// The probe's work, in the widest vectors this CPU has: `PASSES` passes of `x = 0.999999 x +
/// 1e-6` over a buffer of `LEN` values starting at `seed`; returns their mean. Kept out of line so
/// it compiles the same wherever it is called from.
#[inline(never)]
fn work(seed: f32) -> f32 {
    let mut buf = vec![seed; LEN];
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { passes_avx512(&mut buf) };
        }
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { passes_avx2(&mut buf) };
        }
    }
    passes(&mut buf)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn passes_avx512(buf: &mut [f32]) -> f32 {
    passes(buf)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn passes_avx2(buf: &mut [f32]) -> f32 {
    passes(buf)
}

/// The loop itself; inlined into the callers above, so it is compiled with their vector width.
#[inline(always)]
fn passes(buf: &mut [f32]) -> f32 {
    for _ in 0..PASSES {
        for x in buf.iter_mut() {
            // Contracts towards 1: the values stay normal (no denormal slow path) for any number
            // of passes.
            *x = *x * 0.999_999 + 1e-6;
        }
        // Each pass must load what the last one stored (no fusing of passes in registers).
        black_box(&mut *buf);
    }
    buf.iter().sum::<f32>() / buf.len() as f32
}

/// Milliseconds one run of the probe takes now.
pub fn probe_ms() -> f64 {
    let t0 = Instant::now();
    black_box(work(black_box(1.0)));
    t0.elapsed().as_secs_f64() * 1e3
}

/// The median of `f`'s timed runs ([`super::time_runs`]) and the median of the probe timed after
/// every one of them: `(ms of f, ms of the probe)`.
pub fn median_ms_probed(reps: Reps, f: impl FnMut() -> ela_core::Result<()>) -> ela_core::Result<(f64, f64)> {
    let mut probes = Vec::with_capacity(reps.at_least.max(1));
    let mut times = time_runs(reps, f, || probes.push(probe_ms()))?;
    Ok((median(&mut times), median(&mut probes)))
}

/// The probe's fastest median over `rounds` rounds of `reps` runs: the reference a benchmark's
/// probe medians are compared with (the core at its fastest during the run).
pub fn probe_reference_ms(rounds: usize, reps: usize) -> f64 {
    (0..rounds.max(1))
        .map(|_| {
            let mut v: Vec<f64> = (0..reps.max(1)).map(|_| probe_ms()).collect();
            median(&mut v)
        })
        .fold(f64::INFINITY, f64::min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_does_its_work_and_times_it() {
        // The values converge towards the fixed point 1 (x = 0.999999 x + 1e-6): from 1 the mean
        // stays at 1, from 0.5 it moves a little towards it (0.5 + 0.5 (1 - 0.999999^1024)).
        let s = work(1.0);
        assert!((s - 1.0).abs() < 1e-4, "mean {s}");
        let s = work(0.5);
        assert!((s - 0.500_512).abs() < 1e-4, "mean {s}");
        assert!((passes(&mut vec![0.5; 64]) - s).abs() < 1e-6, "every width computes the same values");
        let t = probe_ms();
        assert!(t > 0.0 && t.is_finite());
    }

    #[test]
    fn probed_medians_pair_each_call_with_a_probe() {
        let mut calls = 0;
        let (ms, probe) = median_ms_probed(Reps::count(3), || {
            calls += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(calls, 4, "one warm-up and three timed calls");
        assert!(ms >= 0.0 && probe > 0.0);
        let err = median_ms_probed(Reps::count(3), || Err(ela_core::Error::invalid("probe test", "boom")));
        assert!(err.is_err(), "the measured function's error is passed on");
        assert!(probe_reference_ms(2, 3) > 0.0);
    }
}
