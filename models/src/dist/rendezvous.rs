//! The TCP rendezvous: rank 0 listens on `MASTER_ADDR:MASTER_PORT`, every other rank connects and
//! says which rank it is, and once all have joined rank 0 sends each the same payload (the NCCL
//! unique id on GPUs). The connections stay open: the CPU transport ([`super::TcpComm`]) runs its
//! collectives over them. Every wait has a deadline, so a rank that never starts is an error
//! naming it, not a hang.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use ela_core::{Error, Result};

/// The first bytes of a join message (protocol name and version).
const MAGIC: &[u8; 8] = b"ELARDZV1";
/// How often a waiting side retries.
const POLL: Duration = Duration::from_millis(20);

/// The links a finished rendezvous leaves: rank 0 holds one connection per other rank, every
/// other rank one connection to rank 0.
#[derive(Debug)]
pub enum Links {
    /// Rank 0: the connection of rank `r` at index `r - 1`.
    Master(Vec<TcpStream>),
    /// Any other rank: the connection to rank 0.
    Peer(TcpStream),
}

/// A finished rendezvous.
#[derive(Debug)]
pub struct Rendezvous {
    /// This rank.
    pub rank: usize,
    /// The number of ranks.
    pub world: usize,
    /// What rank 0 sent every rank.
    pub payload: Vec<u8>,
    /// The open connections.
    pub links: Links,
}

fn err(msg: impl Into<String>) -> Error {
    Error::Distributed { op: "rendezvous", msg: msg.into() }
}

/// Reads exactly `buf.len()` bytes, naming `who` in the error.
pub(crate) fn read_exact(s: &mut TcpStream, buf: &mut [u8], who: &str, op: &'static str) -> Result<()> {
    s.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
            Error::Distributed { op, msg: format!("{who} closed the connection (it exited or crashed)") }
        }
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            Error::Distributed { op, msg: format!("{who} sent nothing before the timeout (dead or hung)") }
        }
        _ => Error::Distributed { op, msg: format!("reading from {who}: {e}") },
    })
}

fn write_all(s: &mut TcpStream, buf: &[u8], who: &str) -> Result<()> {
    s.write_all(buf).and_then(|_| s.flush()).map_err(|e| err(format!("writing to {who}: {e}")))
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))
}

/// Rank 0's side: waits on `listener` until ranks `1..world` have all joined (or `timeout`),
/// then sends each `payload`.
pub fn host(listener: TcpListener, world: usize, payload: &[u8], timeout: Duration) -> Result<Rendezvous> {
    let deadline = Instant::now() + timeout;
    listener.set_nonblocking(true).map_err(|e| err(format!("listener: {e}")))?;
    let mut peers: Vec<Option<TcpStream>> = (1..world).map(|_| None).collect();
    let mut joined = 0;
    while joined < world - 1 {
        match listener.accept() {
            Ok((mut s, from)) => {
                s.set_nonblocking(false).map_err(|e| err(e.to_string()))?;
                s.set_read_timeout(Some(remaining(deadline))).map_err(|e| err(e.to_string()))?;
                let _ = s.set_nodelay(true);
                let mut hello = [0u8; 16];
                read_exact(&mut s, &mut hello, &format!("a joining process at {from}"), "rendezvous")?;
                let rank = u32::from_le_bytes(hello[8..12].try_into().expect("4 bytes")) as usize;
                let their_world = u32::from_le_bytes(hello[12..16].try_into().expect("4 bytes")) as usize;
                let problem = if &hello[..8] != MAGIC {
                    Some(format!("{from} is not an ela rank (wrong greeting); is MASTER_PORT used by another program?"))
                } else if their_world != world {
                    Some(format!("rank {rank} at {from} has WORLD_SIZE={their_world}, rank 0 has {world}"))
                } else if rank == 0 || rank >= world {
                    Some(format!("{from} claims rank {rank}, not one of 1..{world}"))
                } else if peers[rank - 1].is_some() {
                    Some(format!("two processes claim rank {rank} (the second from {from}): check RANK"))
                } else {
                    None
                };
                if let Some(p) = problem {
                    let _ = reply(&mut s, Err(&p), "the joining process");
                    return Err(err(p));
                }
                peers[rank - 1] = Some(s);
                joined += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<usize> = (1..world).filter(|r| peers[r - 1].is_none()).collect();
                    return Err(err(format!(
                        "after {:.1} s only {joined} of the {} other rank(s) joined; missing rank(s) {missing:?} \
                         (not started, crashed, or given another MASTER_ADDR/MASTER_PORT/WORLD_SIZE)",
                        timeout.as_secs_f64(),
                        world - 1
                    )));
                }
                std::thread::sleep(POLL);
            }
            Err(e) => return Err(err(format!("accepting a connection: {e}"))),
        }
    }
    let mut peers: Vec<TcpStream> = peers.into_iter().map(|p| p.expect("all joined")).collect();
    for (i, s) in peers.iter_mut().enumerate() {
        reply(s, Ok(payload), &format!("rank {}", i + 1))?;
    }
    Ok(Rendezvous { rank: 0, world, payload: payload.to_vec(), links: Links::Master(peers) })
}

/// Sends the join answer: status 0 and the payload, or status 1 and an error message.
fn reply(s: &mut TcpStream, what: std::result::Result<&[u8], &str>, who: &str) -> Result<()> {
    let (status, body) = match what {
        Ok(p) => (0u8, p),
        Err(m) => (1u8, m.as_bytes()),
    };
    let mut msg = vec![status];
    msg.extend_from_slice(&(body.len() as u32).to_le_bytes());
    msg.extend_from_slice(body);
    write_all(s, &msg, who)
}

/// Rank `rank`'s side (`rank >= 1`): connects to rank 0 at `addr` (retrying until it listens, up
/// to `timeout`), joins, and waits for the payload.
pub fn join(addr: &str, rank: usize, world: usize, timeout: Duration) -> Result<Rendezvous> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no address");
    let mut s = loop {
        let addrs: Vec<SocketAddr> = match addr.to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(e) => {
                last = format!("resolving {addr}: {e}");
                vec![]
            }
        };
        let conn = addrs.iter().find_map(|a| {
            match TcpStream::connect_timeout(a, remaining(deadline).min(Duration::from_secs(2))) {
                Ok(s) => Some(s),
                Err(e) => {
                    last = e.to_string();
                    None
                }
            }
        });
        if let Some(s) = conn {
            break s;
        }
        if Instant::now() >= deadline {
            return Err(err(format!(
                "rank {rank} could not reach rank 0 at {addr} within {:.1} s (last error: {last}); is rank 0 running, \
                 and are MASTER_ADDR and MASTER_PORT right?",
                timeout.as_secs_f64()
            )));
        }
        std::thread::sleep(POLL.max(Duration::from_millis(100)));
    };
    let _ = s.set_nodelay(true);
    let mut hello = MAGIC.to_vec();
    hello.extend_from_slice(&(rank as u32).to_le_bytes());
    hello.extend_from_slice(&(world as u32).to_le_bytes());
    write_all(&mut s, &hello, "rank 0")?;
    s.set_read_timeout(Some(remaining(deadline))).map_err(|e| err(e.to_string()))?;
    let mut head = [0u8; 5];
    read_exact(&mut s, &mut head, "rank 0 (waiting for all ranks to join)", "rendezvous")?;
    let mut body = vec![0u8; u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize];
    read_exact(&mut s, &mut body, "rank 0", "rendezvous")?;
    if head[0] != 0 {
        return Err(err(format!("rank 0 refused rank {rank}: {}", String::from_utf8_lossy(&body))));
    }
    Ok(Rendezvous { rank, world, payload: body, links: Links::Peer(s) })
}

/// The rendezvous of the job `env` describes: rank 0 listens on all interfaces at `MASTER_PORT`
/// and sends `payload()`; the others join `MASTER_ADDR:MASTER_PORT`.
pub fn rendezvous(env: &super::DistEnv, payload: impl FnOnce() -> Result<Vec<u8>>) -> Result<Rendezvous> {
    if env.rank == 0 {
        let listener = TcpListener::bind(("0.0.0.0", env.master_port)).map_err(|e| {
            err(format!("rank 0 cannot listen on port {} ({e}); pick another MASTER_PORT", env.master_port))
        })?;
        host(listener, env.world_size, &payload()?, env.rendezvous_timeout)
    } else {
        join(&format!("{}:{}", env.master_addr, env.master_port), env.rank, env.world_size, env.rendezvous_timeout)
    }
}
