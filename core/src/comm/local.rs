//! [`LocalComm`]: a group of ranks that are threads of one process, exchanging through host
//! memory. It exists so that data-parallel logic (gradient buckets, sharded batches, the
//! training loop) can be tested on the CPU in one `cargo test`, with the same collective
//! semantics as NCCL, including a rank that never arrives (a typed error after a timeout).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

use super::host::{check_call, combine, Collective, HostExchange, HostTensor};

/// How long a rank waits for the others in one collective by default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// One rank of an in-process group made by [`LocalComm::group`]; move each into its own thread.
/// Collectives block until every rank has called them (or a rank's wait times out, or a rank
/// drops its handle, after which every collective of the group fails).
pub struct LocalComm {
    rank: usize,
    world: usize,
    timeout: Duration,
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    turned: Condvar,
}

struct State {
    /// The calls of the round in progress, by rank.
    inputs: Vec<Option<(Collective, HostTensor)>>,
    arrived: usize,
    /// The results of the last finished round, by rank (each rank takes its own).
    outputs: Vec<Option<Result<HostTensor>>>,
    /// Finished rounds; a waiting rank watches it change.
    round: u64,
    /// Why the group cannot continue (a timeout, a rank that left), once that happened.
    broken: Option<String>,
}

impl LocalComm {
    /// `world` connected ranks (index = rank) whose collectives wait at most 60 s for the others.
    pub fn group(world: usize) -> Result<Vec<LocalComm>> {
        Self::group_with_timeout(world, DEFAULT_TIMEOUT)
    }

    /// [`LocalComm::group`] with a rank waiting at most `timeout` in a collective for the others;
    /// then it fails with [`Error::Distributed`] naming the ranks that did not arrive, and so do
    /// all later collectives of every rank.
    pub fn group_with_timeout(world: usize, timeout: Duration) -> Result<Vec<LocalComm>> {
        if world == 0 {
            return Err(Error::invalid("LocalComm::group", "a group needs at least one rank, got world size 0"));
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                inputs: (0..world).map(|_| None).collect(),
                arrived: 0,
                outputs: (0..world).map(|_| None).collect(),
                round: 0,
                broken: None,
            }),
            turned: Condvar::new(),
        });
        Ok((0..world).map(|rank| LocalComm { rank, world, timeout, shared: shared.clone() }).collect())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A rank that panicked while holding the lock left consistent state (every update below
        // is complete before anything can panic), so the poison flag carries no information.
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deposit this rank's call, wait for the round to finish, take this rank's result.
    fn swap(&self, coll: Collective, x: HostTensor) -> Result<HostTensor> {
        let op = coll.name();
        check_call(coll, &x.dims, self.world)?;
        let broken =
            |why: &str| Error::Distributed { op, msg: format!("rank {}: the group is broken: {why}", self.rank) };
        let mut st = self.lock();
        if let Some(why) = &st.broken {
            return Err(broken(why));
        }
        st.inputs[self.rank] = Some((coll, x));
        st.arrived += 1;
        let round = st.round;
        if st.arrived == self.world {
            // The last rank to arrive combines for everyone.
            let calls: Vec<_> = st.inputs.iter_mut().map(|s| s.take().expect("every rank deposited")).collect();
            st.outputs = match combine(&calls) {
                Ok(outs) => outs.into_iter().map(|o| Some(Ok(o))).collect(),
                Err(e) => (0..self.world).map(|_| Some(Err(e.clone()))).collect(),
            };
            st.arrived = 0;
            st.round += 1;
            self.shared.turned.notify_all();
        } else {
            let deadline = Instant::now() + self.timeout;
            while st.round == round {
                if let Some(why) = &st.broken {
                    return Err(broken(why));
                }
                let now = Instant::now();
                if now >= deadline {
                    let missing: Vec<usize> = (0..self.world).filter(|&r| st.inputs[r].is_none()).collect();
                    let why = format!(
                        "rank {} waited {:.1} s in {op} for rank(s) {missing:?}, which never called it (dead, hung, or \
                         calling collectives in another order)",
                        self.rank,
                        self.timeout.as_secs_f64()
                    );
                    st.broken = Some(why.clone());
                    self.shared.turned.notify_all();
                    return Err(Error::Distributed { op, msg: why });
                }
                st = self.shared.turned.wait_timeout(st, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
            }
        }
        st.outputs[self.rank].take().unwrap_or_else(|| Err(broken("this rank's result was already taken")))
    }
}

impl Drop for LocalComm {
    /// A rank that leaves (its thread returned early or panicked) breaks the group, so ranks
    /// waiting for it fail at once instead of at their timeout.
    fn drop(&mut self) {
        let mut st = self.lock();
        if st.broken.is_none() {
            st.broken = Some(format!("rank {} left the group", self.rank));
        }
        self.shared.turned.notify_all();
    }
}

impl HostExchange for LocalComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn exchange(&self, coll: Collective, mine: HostTensor) -> Result<HostTensor> {
        self.swap(coll, mine)
    }
}
