//! Keeping freed host memory in the process, for glibc's `malloc`.
//!
//! Every CPU op allocates its output and frees its inputs' temporaries, and a training step
//! repeats the same sizes thousands of times. glibc serves blocks above its mmap threshold with
//! fresh `mmap`s and gives freed memory at the top of the heap back to the kernel once more than
//! the trim threshold is free; either way the next step's buffer of the same size is faulted in
//! again, page by page, and zeroed by the kernel. Raising both thresholds keeps those pages in the
//! process for reuse. Measured on `ela train --dim 128 --layers 4 --heads 4 --ffn-hidden 256
//! --seq 128 --batch 16 --link residual --lobe off --experts 0 --steps 50` (2-core Intel Xeon,
//! 2026-12-04, 4 interleaved pairs of runs, steady state of steps 3..50): 7427-8339 tokens/s
//! with glibc's defaults, 8758-10273 with these settings, faster in every pair
//! (docs/benchmarks.md).
//! The cost is memory: up to [`TRIM_THRESHOLD`] of freed heap may stay mapped.

/// Blocks up to this size come from the heap, not from their own `mmap` (glibc's maximum for
/// this setting on 64-bit targets).
pub const MMAP_THRESHOLD: i32 = 32 << 20;
/// Freed memory at the top of the heap is returned to the kernel only beyond this much.
pub const TRIM_THRESHOLD: i32 = 1 << 30;

/// Ask glibc's `malloc` to keep freed memory for reuse (see the module docs). Returns whether
/// both settings were applied: false on other C libraries (nothing is changed there) or when
/// glibc refused a value. Process-wide: call it once at the start of a program, as the `ela`
/// binary does; a library linking ela-core decides for itself.
pub fn keep_freed_host_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc's <malloc.h>.
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: mallopt takes two ints, locks malloc's own state, and returns 0 on a rejected
        // value; no pointer crosses the call.
        unsafe { mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 && mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_settings() {
        assert!(super::keep_freed_host_memory());
    }
}
