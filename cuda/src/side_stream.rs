//! A second stream for work that can run beside the main stream's: [`Cuda::fork_point`] marks
//! the work queued so far, [`Cuda::fork_at`] queues a closure's launches on the side stream to
//! start after that work (the main stream's launches queued in between run beside them), and
//! [`Cuda::join`] makes the work queued after the join wait for them. What it is for: a memory-bound pass that a latency-bound
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
    /// The side stream the calling thread's launches for a device go to inside [`Cuda::fork_at`]:
    /// (device identity, stream).
    static SIDE: Cell<Option<(usize, usize)>> = const { Cell::new(None) };
}

/// A point on the main stream (everything queued before it) that side work can start from:
/// [`Cuda::fork_point`], then [`Cuda::fork_at`]. The work queued on the main stream between the
/// two runs beside the side work, and is dispatched first: the GPU hands out the blocks of
/// kernels of equal priority roughly in the order they were queued, so a long-lived kernel with
/// few blocks (a chunk scan) queued after a short-lived one with many (the chunk sums) would wait
/// for most of the latter's blocks, and not overlap it.
pub(crate) struct ForkPoint {
    /// The event recorded there; `None`: the side work runs in order on the main stream.
    event: Option<sys::CUevent>,
}

impl Drop for ForkPoint {
    fn drop(&mut self) {
        if let Some(ev) = self.event.take() {
            // SAFETY: created by fork_point, destroyed once; a pending wait keeps what it needs.
            let _ = unsafe { dr::event::destroy(ev) };
        }
    }
}

/// Work queued by [`Cuda::fork_at`] that later work has not been made to wait for yet: hand it
/// to [`Cuda::join`] (dropping it joins too, so no caller can leave the side branch of a capture
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
    /// The side stream of the calling thread's current [`Cuda::fork_at`], if one is open.
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

    /// Marks the work queued so far on the main stream as what side work forked from this point
    /// waits for. With `parallel` false (or with per-kernel statistics on, which time each launch
    /// on the main stream, or inside another fork) the point is empty and [`Cuda::fork_at`]
    /// queues in order on the main stream.
    pub(crate) fn fork_point(&self, parallel: bool) -> Result<ForkPoint> {
        if !parallel || self.inner.stats.is_some() || self.side_stream_now().is_some() {
            return Ok(ForkPoint { event: None });
        }
        self.bind("fork")?;
        Ok(ForkPoint { event: Some(record(self.cu_stream(), "fork")?) })
    }

    /// Queues the work of `f` on the side stream, to start once the work before `point` has
    /// run, and returns `f`'s result with the handle that [`Cuda::join`] takes.
    pub(crate) fn fork_at<R>(&self, point: ForkPoint, f: impl FnOnce() -> Result<R>) -> Result<(R, Forked<'_>)> {
        let main = self.cu_stream();
        let Some(ev) = point.event else {
            return Ok((f()?, Forked { dev: self, main: None, side: main }));
        };
        let side = self.side_stream()?.cu_stream();
        self.bind("fork")?;
        wait(side, ev, "fork")?;
        drop(point); // (its event: the queued wait keeps what it needs)
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
                let ev = record(self.side, "join")?;
                let res = wait(main, ev, "join");
                // SAFETY: created above, destroyed once; the queued wait keeps what it needs.
                let _ = unsafe { dr::event::destroy(ev) };
                res
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

/// A fresh event recorded on `on` (the caller destroys it).
fn record(on: sys::CUstream, op: &'static str) -> Result<sys::CUevent> {
    let ev = dr::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING).map_err(|e| driver_error(op, e))?;
    // SAFETY: a live event and a live stream of the bound context.
    match unsafe { dr::event::record(ev, on) } {
        Ok(()) => Ok(ev),
        Err(e) => {
            // SAFETY: created above, destroyed once.
            let _ = unsafe { dr::event::destroy(ev) };
            Err(driver_error(op, e))
        }
    }
}

/// Makes `waiter` wait for `ev`'s recorded work.
fn wait(waiter: sys::CUstream, ev: sys::CUevent, op: &'static str) -> Result<()> {
    // SAFETY: a live stream and a live event of the bound context.
    unsafe { dr::stream::wait_event(waiter, ev, sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT) }
        .map_err(|e| driver_error(op, e))
}
