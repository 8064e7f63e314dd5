//! Per-kernel device time of a whole program, for finding where a training step goes
//! (`ELA_CUDA_KERNEL_STATS=1`): every kernel launch and cuBLAS call is bracketed by two CUDA
//! events on the device stream, and the pairs are resolved in batches. The events add a little
//! host work per launch but do not synchronize, so the GPU timeline stays the program's own; the
//! report compares the summed kernel time with the elapsed time of the stream (the rest is the
//! GPU waiting for the host) and with the host time spent issuing launches.
//!
//! A launch's device time runs from the event before it to the event after it, so when the GPU
//! had run out of queued work it includes the wait for the host to issue the launch: a kernel
//! whose device time far exceeds its isolated duration (or whose host column is large) marks a
//! point where the program is host-bound.
//!
//! Not a benchmark: leave it off for measurements (docs/benchmarks.md never uses it).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cudarc::driver::{sys, CudaEvent, CudaStream};
use ela_core::Result;

use crate::error::driver_error;

/// Unresolved event pairs are resolved (after a synchronize) once there are this many.
const BATCH: usize = 4096;

#[derive(Default)]
struct Totals {
    count: u64,
    device: f64,
    host: f64,
}

/// The collected statistics of one device.
pub(crate) struct KernelStats {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    pending: Vec<(String, CudaEvent, CudaEvent, f64)>,
    totals: HashMap<String, Totals>,
    first: Option<CudaEvent>,
    host: Duration,
}

impl KernelStats {
    /// Enabled by `ELA_CUDA_KERNEL_STATS=1`.
    pub(crate) fn from_env() -> Option<KernelStats> {
        (std::env::var("ELA_CUDA_KERNEL_STATS").as_deref() == Ok("1"))
            .then(|| KernelStats { state: Mutex::new(State::default()) })
    }

    /// Runs `launch` between two events recorded on `stream`, under the label `name`.
    pub(crate) fn record(&self, stream: &CudaStream, name: &str, launch: impl FnOnce() -> Result<()>) -> Result<()> {
        let ev = || {
            stream
                .context()
                .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| driver_error("kernel_stats", e))
        };
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.first.is_none() {
            let first = ev()?;
            first.record(stream).map_err(|e| driver_error("kernel_stats", e))?;
            st.first = Some(first);
        }
        let (a, b) = (ev()?, ev()?);
        a.record(stream).map_err(|e| driver_error("kernel_stats", e))?;
        let t0 = Instant::now();
        launch()?;
        let host = t0.elapsed();
        st.host += host;
        b.record(stream).map_err(|e| driver_error("kernel_stats", e))?;
        st.pending.push((name.to_string(), a, b, host.as_secs_f64() * 1e3));
        if st.pending.len() >= BATCH {
            Self::resolve(&mut st, stream)?;
        }
        Ok(())
    }

    fn resolve(st: &mut State, stream: &CudaStream) -> Result<()> {
        stream.synchronize().map_err(|e| driver_error("kernel_stats", e))?;
        let pending = std::mem::take(&mut st.pending);
        for (name, a, b, host) in pending {
            let ms = a.elapsed_ms(&b).map_err(|e| driver_error("kernel_stats", e))? as f64;
            let t = st.totals.entry(name).or_default();
            t.count += 1;
            t.device += ms;
            t.host += host;
        }
        Ok(())
    }

    /// The table so far (kernels by total device time) and the totals; resolves pending events.
    pub(crate) fn report(&self, stream: &CudaStream, top: usize) -> Result<String> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let end = stream
            .context()
            .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| driver_error("kernel_stats", e))?;
        end.record(stream).map_err(|e| driver_error("kernel_stats", e))?;
        Self::resolve(&mut st, stream)?;
        let elapsed = match &st.first {
            Some(f) => f.elapsed_ms(&end).map_err(|e| driver_error("kernel_stats", e))? as f64,
            None => 0.0,
        };
        let mut rows: Vec<_> = st.totals.iter().collect();
        rows.sort_by(|a, b| b.1.device.total_cmp(&a.1.device));
        let busy: f64 = rows.iter().map(|r| r.1.device).sum();
        let launches: u64 = rows.iter().map(|r| r.1.count).sum();
        let mut out = format!(
            "kernel stats: {launches} launches, {busy:.1} ms in kernels over {elapsed:.1} ms of stream time \
             ({:.0}% busy), {:.1} ms of host time issuing them\n| kernel | calls | device ms | mean us | host ms |\n|---|---|---|---|---|\n",
            100.0 * busy / elapsed.max(1e-9),
            st.host.as_secs_f64() * 1e3
        );
        for (name, t) in rows.into_iter().take(top) {
            let mean = 1e3 * t.device / t.count as f64;
            out += &format!("| {name} | {} | {:.2} | {mean:.1} | {:.2} |\n", t.count, t.device, t.host);
        }
        Ok(out)
    }
}
