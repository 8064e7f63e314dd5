//! A second stream for work that can run beside the main stream's: [`Cuda::fork`] queues a
//! closure's launches on it, after everything queued so far, and [`Cuda::join`] makes the work
//! queued after the join wait for them. What it is for: a memory-bound pass that a latency-bound
//! kernel leaves room for (the signed ELA kernels' chunk sums beside the chunk scan), which would
//! otherwise run after it.
//!
//! The fork and the join are events (a record on one stream, a wait on the other), so both are
//! stream-ordered: the host never waits, and a CUDA graph capture in progress takes the side
//! stream in with the fork's event and gives it back with the join's, so the captured graph has
//! the two branches. A capturing thread forks onto a side stream of its own, so that eager work
//! other threads fork meanwhile never lands in its graph. The caching allocator stays correct: every buffer the forked work touches
//! was allocated before the fork or inside it and is freed only after the join, so no block is
//! handed to one stream while the other may still use it.

use std::cell::Cell;
use std::sync::Arc;

use cudarc::driver::{result as dr, sys, CudaStream};
use ela_core::Result;

use crate::device::Cuda;
use crate::error::driver_error;

thread_local! {
    /// The side stream the calling thread's launches for a device go to inside [`Cuda::fork`]:
    /// (device identity, stream).
    static SIDE: Cell<Option<(usize, usize)>> = const { Cell::new(None) };
}

/// Work queued by [`Cuda::fork`] that later work has not been made to wait for yet: hand it to
/// [`Cuda::join`] (dropping it joins too, so no caller can leave the side branch of a capture
/// open).
#[must_use = "join the forked work before using its results"]
pub(crate) struct Forked<'a> {
    dev: &'a Cuda,
    /// The main stream at the fork, which the join makes wait; `None` once joined (or when the
    /// closure ran on the main stream).
    main: Option<sys::CUstream>,
    side: sys::CUstream,
}

impl Cuda {
    /// The side stream of the calling thread's current [`Cuda::fork`], if one is open.
    pub(crate) fn side_stream_now(&self) -> Option<sys::CUstream> {
        SIDE.with(|c| match c.get() {
            Some((id, s)) if id == Arc::as_ptr(&self.inner) as usize => Some(s as sys::CUstream),
            _ => None,
        })
    }

    /// The side stream for the calling thread: the capture's while it captures a graph (one
    /// capture per device at a time), else the eager one.
    fn side_stream(&self) -> Result<&Arc<CudaStream>> {
        let cell = &self.inner.side_streams[self.capturing_stream().is_some() as usize];
        if let Some(s) = cell.get() {
            return Ok(s);
        }
        let s = self.inner.ctx.new_stream().map_err(|e| driver_error("fork", e))?;
        Ok(cell.get_or_init(|| s))
    }

    /// Queues the work of `f` on the side stream, to start once everything queued so far has
    /// run, and returns `f`'s result with the handle that [`Cuda::join`] takes. With `parallel`
    /// false (or with per-kernel statistics on, which time each launch on the main stream, or
    /// inside another fork) `f` queues on the main stream as usual and the join does nothing.
    pub(crate) fn fork<R>(&self, parallel: bool, f: impl FnOnce() -> Result<R>) -> Result<(R, Forked<'_>)> {
        let main = self.cu_stream();
        if !parallel || self.inner.stats.is_some() || self.side_stream_now().is_some() {
            return Ok((f()?, Forked { dev: self, main: None, side: main }));
        }
        let side = self.side_stream()?.cu_stream();
        self.bind("fork")?;
        wait_for(main, side, "fork")?;
        SIDE.with(|c| c.set(Some((Arc::as_ptr(&self.inner) as usize, side as usize))));
        let out = f();
        SIDE.with(|c| c.set(None));
        // (On an error the handle's drop still closes the branch.)
        let forked = Forked { dev: self, main: Some(main), side };
        Ok((out?, forked))
    }

    /// Makes everything queued from now on the main stream wait for `forked`'s work.
    pub(crate) fn join(&self, mut forked: Forked<'_>) -> Result<()> {
        forked.join()
    }
}

impl Forked<'_> {
    fn join(&mut self) -> Result<()> {
        match self.main.take() {
            Some(main) => {
                self.dev.bind("join")?;
                wait_for(self.side, main, "join")
            }
            None => Ok(()),
        }
    }
}

impl Drop for Forked<'_> {
    fn drop(&mut self) {
        let _ = self.join();
    }
}

/// Makes `waiter` wait for the work queued on `on` so far, through a fresh event (destroyed at
/// once: the driver keeps it until the wait is resolved).
fn wait_for(on: sys::CUstream, waiter: sys::CUstream, op: &'static str) -> Result<()> {
    let ev = dr::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING).map_err(|e| driver_error(op, e))?;
    // SAFETY: a live event and live streams of the bound context.
    let res = unsafe {
        dr::event::record(ev, on)
            .and_then(|()| dr::stream::wait_event(waiter, ev, sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT))
    };
    // SAFETY: created above, destroyed once; a pending wait keeps what it needs.
    let _ = unsafe { dr::event::destroy(ev) };
    res.map_err(|e| driver_error(op, e))
}
