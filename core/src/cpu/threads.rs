//! Where a program drives the CPU backend from: a worker thread of its thread pool.
//!
//! CPU ops split their work over rayon's global pool. An op called from a thread *outside* the
//! pool (a program's main thread) hands its work to the pool and sleeps until it is done: a
//! wake-up of a worker and one of the caller, per op, and the caller's core idles meanwhile. A
//! training step runs hundreds of such ops. Called from a pool worker, the op runs in place, the
//! caller taking its share of the work, and only the other workers are woken when they sleep.
//! Measured with `ela train --dim 128 --layers 4 --heads 4 --ffn-hidden 256 --seq 128 --batch 16
//! --link residual --lobe off --experts 0 --steps 80` (2-core Intel Xeon, 2026-12-04, steady state
//! over the last 70 steps, 4 interleaved pairs of runs of one binary): 15611-16742 tokens/s from
//! the main thread, 20358-20866 on a worker, faster in every pair; the losses are bit-identical
//! (the ops split their work the same way wherever they are called from). docs/benchmarks.md has
//! the numbers.

use std::sync::Once;

/// Stack size of the pool's worker threads: a Linux main thread's default (`ulimit -s` 8 MiB), so
/// that code moved from the main thread to a worker by [`on_worker`] has the stack it had.
pub const WORKER_STACK_BYTES: usize = 8 << 20;

/// Runs `f` on a worker thread of the CPU backend's pool (rayon's global pool) and returns its
/// result; on a worker already, runs it in place. The `ela` binary runs every command this way;
/// a program driving the CPU backend from its own main thread can do the same (see the module
/// docs for what it gains). `f` must not wait for work it queued on the pool with
/// `rayon::spawn` (with one thread in the pool that would never run); the backend's ops do not.
///
/// The first call sizes the pool's worker stacks ([`WORKER_STACK_BYTES`]) if nothing has
/// started the pool yet.
pub fn on_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    static SIZE_STACKS: Once = Once::new();
    SIZE_STACKS.call_once(|| {
        // Fails only when the pool already exists (something used it first): it then keeps
        // its settings, which is no error.
        let _ = rayon::ThreadPoolBuilder::new().stack_size(WORKER_STACK_BYTES).build_global();
    });
    rayon::scope(|_| f())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_on_a_worker_and_returns_the_result() {
        let (index, value) = on_worker(|| (rayon::current_thread_index(), 41 + 1));
        assert!(index.is_some(), "the closure ran on a pool worker");
        assert_eq!(value, 42);
        // Nested: runs in place on the same worker.
        let (outer, inner) = on_worker(|| (rayon::current_thread_index(), on_worker(rayon::current_thread_index)));
        assert_eq!(outer, inner);
    }
}
