//! The pieces under `ela launch` on localhost: torchrun's environment variables, the TCP
//! rendezvous (payload exchange, a missing or misconfigured rank as a typed error within the
//! timeout), and the CPU communicator over its connections (collectives, a peer that dies or
//! hangs).

use std::collections::HashMap;
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use ela_core::{CommOp, Communicator, Cpu, Error, Tensor};
use ela_models::dist::rendezvous::{host, join};
use ela_models::dist::{DistEnv, TcpComm};

fn env(pairs: &[(&str, &str)]) -> ela_core::Result<Option<DistEnv>> {
    let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    DistEnv::from_lookup(|k| m.get(k).cloned())
}

#[test]
fn torchrun_variables_are_read_and_checked() {
    assert_eq!(env(&[]).unwrap(), None, "no WORLD_SIZE: a plain run");
    assert_eq!(env(&[("WORLD_SIZE", "1")]).unwrap(), None);
    let full =
        [("WORLD_SIZE", "4"), ("RANK", "3"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "node0"), ("MASTER_PORT", "29500")];
    let e = env(&full).unwrap().unwrap();
    assert_eq!(
        (e.rank, e.world_size, e.local_rank, e.master_addr.as_str(), e.master_port),
        (3, 4, Some(1), "node0", 29500)
    );
    assert_eq!(e.rendezvous_timeout, ela_models::dist::DEFAULT_RENDEZVOUS_TIMEOUT);
    let with_timeout = [&full[..], &[("ELA_DIST_TIMEOUT_S", "2.5")]].concat();
    assert_eq!(env(&with_timeout).unwrap().unwrap().collective_timeout, Duration::from_millis(2500));
    for (bad, says) in [
        (vec![("WORLD_SIZE", "2")], "RANK is not"),
        (
            vec![("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_ADDR", "a"), ("MASTER_PORT", "1")],
            "not a rank of WORLD_SIZE=2",
        ),
        (vec![("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_ADDR", "a")], "MASTER_PORT is not"),
        (vec![("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_ADDR", "a"), ("MASTER_PORT", "x")], "not a TCP port"),
        (vec![("WORLD_SIZE", "two")], "not a non-negative integer"),
        (vec![("WORLD_SIZE", "0")], "at least one rank"),
    ] {
        let e = env(&bad).unwrap_err().to_string();
        assert!(e.contains(says), "{bad:?}: {e}");
    }
}

fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

#[test]
fn ranks_meet_and_run_collectives_over_tcp() {
    let world = 4;
    let (l, addr) = listener();
    let id: Vec<u8> = (0..128u8).collect();
    let idc = id.clone();
    let t = Duration::from_secs(20);
    let mut handles = vec![thread::spawn(move || host(l, world, &idc, t))];
    for r in 1..world {
        let a = addr.clone();
        handles.push(thread::spawn(move || join(&a, r, world, t)));
    }
    let rdzvs: Vec<_> = handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect();
    let workers: Vec<_> = rdzvs
        .into_iter()
        .map(|rd| {
            assert_eq!(rd.payload, id, "every rank gets rank 0's payload");
            thread::spawn(move || {
                let r = rd.rank;
                let c = TcpComm::new(rd, Duration::from_secs(20)).unwrap();
                let x = Tensor::from_vec(vec![r as f32, 10.0 * r as f32 + 1.0], [1, 2], &Cpu).unwrap();
                let sum = Communicator::<Cpu>::all_reduce(&c, &x, CommOp::Sum).unwrap().to_vec::<f32>().unwrap();
                let all = Communicator::<Cpu>::all_gather(&c, &x).unwrap().to_vec::<f32>().unwrap();
                let b = Communicator::<Cpu>::broadcast(&c, &x, 2).unwrap().to_vec::<f32>().unwrap();
                // Ranks that disagree get a typed error, and the group goes on.
                let odd = Tensor::from_vec(vec![0f32; 1 + r % 2], [1 + r % 2], &Cpu).unwrap();
                let e = Communicator::<Cpu>::all_reduce(&c, &odd, CommOp::Sum).unwrap_err().to_string();
                let avg = Communicator::<Cpu>::all_reduce(&c, &x, CommOp::Avg).unwrap().to_vec::<f32>().unwrap();
                (sum, all, b, e, avg)
            })
        })
        .collect();
    for w in workers {
        let (sum, all, b, e, avg) = w.join().unwrap();
        assert_eq!(sum, vec![6.0, 64.0]);
        assert_eq!(all, vec![0.0, 1.0, 1.0, 11.0, 2.0, 21.0, 3.0, 31.0]);
        assert_eq!(b, vec![2.0, 21.0]);
        assert!(e.contains("same shape"), "{e}");
        assert_eq!(avg, vec![1.5, 16.0]);
    }
}

#[test]
fn a_rank_that_never_joins_is_named_after_the_timeout() {
    let (l, addr) = listener();
    let t0 = Instant::now();
    let joined = thread::spawn(move || join(&addr, 1, 3, Duration::from_secs(10)));
    let e = host(l, 3, b"id", Duration::from_millis(500)).unwrap_err();
    assert!(matches!(e, Error::Distributed { op: "rendezvous", .. }), "{e}");
    assert!(e.to_string().contains("missing rank(s) [2]"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    // The rank that did join learns that rank 0 gave up.
    let e = joined.join().unwrap().unwrap_err().to_string();
    assert!(e.contains("closed the connection"), "{e}");
}

#[test]
fn misconfigured_ranks_are_refused() {
    let (l, addr) = listener();
    let peer = thread::spawn(move || join(&addr, 1, 3, Duration::from_secs(10)));
    let e = host(l, 2, b"", Duration::from_secs(10)).unwrap_err().to_string();
    assert!(e.contains("WORLD_SIZE=3, rank 0 has 2"), "{e}");
    let e = peer.join().unwrap().unwrap_err().to_string();
    assert!(e.contains("rank 0 refused rank 1"), "{e}");
}

#[test]
fn no_rank_0_is_an_error_within_the_timeout() {
    let (l, addr) = listener();
    drop(l); // nobody listens there now
    let t0 = Instant::now();
    let e = join(&addr, 1, 2, Duration::from_millis(600)).unwrap_err().to_string();
    assert!(e.contains("could not reach rank 0"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_peer_that_dies_or_hangs_is_a_typed_error_on_rank_0() {
    for hang in [false, true] {
        let (l, addr) = listener();
        let t = Duration::from_secs(10);
        let peer = thread::spawn(move || join(&addr, 1, 2, t).unwrap());
        let rd0 = host(l, 2, b"", t).unwrap();
        let rd1 = peer.join().unwrap();
        let c0 = TcpComm::new(rd0, Duration::from_millis(400)).unwrap();
        // Dropping the peer's end closes its connection, as a process that exits does.
        let keep = if hang {
            Some(rd1)
        } else {
            drop(rd1);
            None
        };
        let t0 = Instant::now();
        let x = Tensor::from_vec(vec![1f32], [1], &Cpu).unwrap();
        let e = Communicator::<Cpu>::all_reduce(&c0, &x, CommOp::Sum).unwrap_err();
        assert!(matches!(e, Error::Distributed { op: "all_reduce", .. }), "{e}");
        let want = if hang { "sent nothing before the timeout" } else { "closed the connection" };
        assert!(e.to_string().contains(want) && e.to_string().contains("rank 1"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        drop(keep);
    }
}
