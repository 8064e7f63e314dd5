//! The NCCL watchdog: a thread per communicator that makes sure no rank waits forever for a
//! peer that died or hangs. NCCL's kernels wait for their peers without a timeout, and a host
//! thread waiting for the stream would wait with them; so every queued collective is registered
//! here with its completion event, and the thread
//!
//! - every 100 ms asks NCCL for an asynchronous error (a lost peer connection is reported so);
//! - checks the oldest collective still running: when it has run longer than the timeout, or on
//!   an error, it aborts the communicator (`ncclCommAbort`, which stops NCCL's kernels so the
//!   host's waits return), prints why, and after a grace period for the training loop to report
//!   the failure itself, ends the process with exit code 1. The launcher (`ela launch`) then
//!   stops the remaining ranks of the node.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use cudarc::driver::CudaEvent;

use super::Inner;

/// How often the watchdog looks.
const TICK: Duration = Duration::from_millis(100);
/// How long the process may go on after an abort before the watchdog ends it.
const GRACE: Duration = Duration::from_secs(10);

/// The collectives of one communicator that have been queued and not yet seen finished.
pub(crate) struct Watch {
    timeout: Duration,
    running: Mutex<VecDeque<(&'static str, Instant, Arc<CudaEvent>)>>,
}

impl Watch {
    pub(crate) fn new(timeout: Duration) -> Watch {
        Watch { timeout, running: Mutex::new(VecDeque::new()) }
    }

    /// Registers a collective queued now that `done` completes.
    pub(crate) fn started(&self, op: &'static str, done: Arc<CudaEvent>) {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).push_back((op, Instant::now(), done));
    }

    /// Forgets finished collectives; returns the oldest unfinished one that has run too long.
    fn overdue(&self) -> Option<(&'static str, Duration)> {
        let mut q = self.running.lock().unwrap_or_else(|p| p.into_inner());
        // Collectives on one stream finish in order: drop the finished ones from the front.
        while q.front().is_some_and(|(_, _, ev)| ev.is_complete()) {
            q.pop_front();
        }
        let (op, t0, _) = q.front()?;
        let age = t0.elapsed();
        (age > self.timeout).then_some((*op, age))
    }
}

/// Starts the watchdog of `comm`; it ends when the communicator is dropped.
pub(crate) fn spawn(comm: Weak<Inner>) {
    let spawned = std::thread::Builder::new().name("ela-nccl-watchdog".into()).spawn(move || loop {
        std::thread::sleep(TICK);
        let Some(inner) = comm.upgrade() else { return };
        // Event queries need the device's context current on this thread.
        if inner.dev.bind("nccl_watchdog").is_err() {
            continue;
        }
        let why = if let Some(e) = inner.async_error() {
            Some(e)
        } else {
            inner.watch.overdue().map(|(op, age)| {
                format!(
                    "{op} has not finished after {:.0} s (timeout {:.0} s): a peer rank died, hung or \
                     calls collectives in another order",
                    age.as_secs_f64(),
                    inner.watch.timeout.as_secs_f64()
                )
            })
        };
        let Some(why) = why else { continue };
        let msg = format!("rank {} of {}: NCCL watchdog: {why}; aborting the communicator", inner.rank, inner.world);
        let _ = writeln!(std::io::stderr(), "{msg}");
        inner.abort(&msg);
        drop(inner);
        std::thread::sleep(GRACE);
        let _ = writeln!(std::io::stderr(), "NCCL watchdog: ending the process (exit code 1)");
        std::process::exit(1);
    });
    if let Err(e) = spawned {
        let _ = writeln!(
            std::io::stderr(),
            "warning: the NCCL watchdog thread could not start ({e}); a dead peer may hang this rank"
        );
    }
}

/// Guards a blocking call that has no timeout of its own (`ncclCommInitRank`, which waits for
/// every rank): if the returned guard is not dropped within `timeout`, the process prints why and
/// ends with exit code 1 (there is no communicator yet that could be aborted instead).
pub(crate) fn deadline(what: String, timeout: Duration) -> std::sync::mpsc::Sender<()> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let label = what.clone();
    let spawned = std::thread::Builder::new().name("ela-nccl-init-deadline".into()).spawn(move || {
        // Dropping the sender (the call returned) disconnects the channel: nothing to do.
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(timeout) {
            let _ = writeln!(
                std::io::stderr(),
                "{label} did not finish within {:.0} s: a peer rank died or hung after the rendezvous; ending the \
                 process (exit code 1)",
                timeout.as_secs_f64()
            );
            std::process::exit(1);
        }
    });
    if let Err(e) = spawned {
        let _ = writeln!(std::io::stderr(), "warning: no deadline for {what} ({e}); a dead peer may hang this rank");
    }
    tx
}
