//! [`TcpComm`]: the collectives of CPU ranks in separate processes, over the connections the
//! rendezvous left open (a star around rank 0). Each collective sends every rank's tensor to
//! rank 0, which combines them with the same host arithmetic as the in-process thread group
//! (`ela_core::comm::host`) and sends each rank its result. Simple and exact (f64 on the wire,
//! rank-order sums) rather than fast: it exists so that `ela launch` can run, and be tested,
//! without a GPU. GPUs use NCCL.

use std::io::Write;
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::Duration;

use ela_core::comm::host::{check_call, combine, Collective, HostExchange, HostTensor};
use ela_core::{CommOp, DType, Error, Result};

use super::rendezvous::{read_exact, Links, Rendezvous};

/// One CPU rank's communicator over TCP (see the module docs).
pub struct TcpComm {
    rank: usize,
    world: usize,
    links: Mutex<Links>,
}

fn err(op: &'static str, msg: impl Into<String>) -> Error {
    Error::Distributed { op, msg: msg.into() }
}

fn dtype_code(d: DType) -> u8 {
    match d {
        DType::U8 => 0,
        DType::U32 => 1,
        DType::F16 => 2,
        DType::BF16 => 3,
        DType::F32 => 4,
        _ => 5, // F64
    }
}

fn dtype_of(c: u8) -> Option<DType> {
    [DType::U8, DType::U32, DType::F16, DType::BF16, DType::F32, DType::F64].get(c as usize).copied()
}

fn op_code(op: CommOp) -> u8 {
    match op {
        CommOp::Sum => 0,
        CommOp::Avg => 1,
    }
}

/// A collective call as bytes: kind, op, root, dtype, dims, elements (f64).
fn encode(coll: Collective, t: &HostTensor) -> Vec<u8> {
    let (kind, op, root) = match coll {
        Collective::AllReduce(op) => (0u8, op_code(op), 0u32),
        Collective::Broadcast(root) => (1, 0, root as u32),
        Collective::AllGather => (2, 0, 0),
        Collective::ReduceScatter(op) => (3, op_code(op), 0),
    };
    let mut b = vec![kind, op];
    b.extend_from_slice(&root.to_le_bytes());
    b.push(dtype_code(t.dtype));
    b.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
    for d in &t.dims {
        b.extend_from_slice(&(*d as u64).to_le_bytes());
    }
    b.extend_from_slice(&(t.data.len() as u64).to_le_bytes());
    for v in &t.data {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

/// Reads one [`encode`]d call from `s`.
fn decode(s: &mut TcpStream, who: &str, op: &'static str) -> Result<(Collective, HostTensor)> {
    let mut head = [0u8; 11];
    read_exact(s, &mut head, who, op)?;
    let cop = if head[1] == 0 { CommOp::Sum } else { CommOp::Avg };
    let coll = match head[0] {
        0 => Collective::AllReduce(cop),
        1 => Collective::Broadcast(u32::from_le_bytes(head[2..6].try_into().expect("4")) as usize),
        2 => Collective::AllGather,
        3 => Collective::ReduceScatter(cop),
        k => return Err(err("tcp collective", format!("{who} sent an unknown collective {k}"))),
    };
    let dtype = dtype_of(head[6]).ok_or_else(|| err("tcp collective", format!("{who} sent dtype code {}", head[6])))?;
    let ndims = u32::from_le_bytes(head[7..11].try_into().expect("4")) as usize;
    let mut buf = vec![0u8; 8 * (ndims + 1)];
    read_exact(s, &mut buf, who, op)?;
    let words: Vec<u64> = buf.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8"))).collect();
    let dims: Vec<usize> = words[..ndims].iter().map(|&d| d as usize).collect();
    let n = words[ndims] as usize;
    if n != dims.iter().product::<usize>() {
        return Err(err("tcp collective", format!("{who} sent {n} elements for shape {dims:?}")));
    }
    let mut raw = vec![0u8; 8 * n];
    read_exact(s, &mut raw, who, op)?;
    let data = raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8"))).collect();
    Ok((coll, HostTensor { dims, dtype, data }))
}

fn send(s: &mut TcpStream, bytes: &[u8], who: &str, op: &'static str) -> Result<()> {
    s.write_all(bytes)
        .and_then(|_| s.flush())
        .map_err(|e| err(op, format!("sending to {who}: {e} (it exited or crashed)")))
}

/// A result message: status 0 and an encoded tensor, or status 1 and an error message.
fn encode_result(r: &Result<HostTensor>, coll: Collective) -> Vec<u8> {
    match r {
        Ok(t) => [vec![0u8], encode(coll, t)].concat(),
        Err(e) => {
            let m = e.to_string();
            [vec![1u8], (m.len() as u32).to_le_bytes().to_vec(), m.into_bytes()].concat()
        }
    }
}

impl TcpComm {
    /// The communicator over a finished rendezvous; a rank waits at most `timeout` for the others
    /// in one collective, then fails with [`Error::Distributed`] naming the rank it waited for.
    pub fn new(rdzv: Rendezvous, timeout: Duration) -> Result<TcpComm> {
        let streams: Vec<&TcpStream> = match &rdzv.links {
            Links::Master(peers) => peers.iter().collect(),
            Links::Peer(s) => vec![s],
        };
        for s in streams {
            s.set_read_timeout(Some(timeout)).map_err(|e| err("tcp collective", e.to_string()))?;
        }
        Ok(TcpComm { rank: rdzv.rank, world: rdzv.world, links: Mutex::new(rdzv.links) })
    }

    fn swap(&self, coll: Collective, mine: HostTensor) -> Result<HostTensor> {
        let op = coll.name();
        check_call(coll, &mine.dims, self.world)?;
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *links {
            Links::Master(peers) => {
                let mut calls = vec![(coll, mine)];
                for (i, s) in peers.iter_mut().enumerate() {
                    calls.push(decode(s, &format!("rank {}", i + 1), op)?);
                }
                let results: Vec<Result<HostTensor>> = match combine(&calls) {
                    Ok(outs) => outs.into_iter().map(Ok).collect(),
                    Err(e) => (0..self.world).map(|_| Err(e.clone())).collect(),
                };
                for (i, s) in peers.iter_mut().enumerate() {
                    send(s, &encode_result(&results[i + 1], coll), &format!("rank {}", i + 1), op)?;
                }
                results.into_iter().next().expect("rank 0's result")
            }
            Links::Peer(s) => {
                send(s, &encode(coll, &mine), "rank 0", op)?;
                let mut status = [0u8; 1];
                read_exact(s, &mut status, "rank 0", op)?;
                if status[0] == 0 {
                    return decode(s, "rank 0", op).map(|(_, t)| t);
                }
                let mut len = [0u8; 4];
                read_exact(s, &mut len, "rank 0", op)?;
                let mut m = vec![0u8; u32::from_le_bytes(len) as usize];
                read_exact(s, &mut m, "rank 0", op)?;
                Err(err(op, String::from_utf8_lossy(&m).into_owned()))
            }
        }
    }
}

impl HostExchange for TcpComm {
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
