//! Collectives of the in-process thread group (`ela_core::LocalComm`) against a direct CPU
//! computation, their errors (bad arguments, ranks that disagree, a rank that never arrives or
//! leaves), and the backward hook that data-parallel training overlaps communication with.

use std::thread;
use std::time::{Duration, Instant};

use ela_autograd::Var;
use ela_core::comm::host::{combine, Collective, HostTensor};
use ela_core::{CommOp, Communicator, Cpu, DType, Error, LocalComm, Result, Tensor};

/// Runs `f(rank, comm)` on `world` threads and returns the results in rank order.
fn on_ranks<T: Send + 'static>(
    world: usize,
    timeout: Duration,
    f: impl Fn(usize, LocalComm) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let comms = LocalComm::group_with_timeout(world, timeout).unwrap();
    let handles: Vec<_> = comms
        .into_iter()
        .enumerate()
        .map(|(r, c)| {
            let f = f.clone();
            thread::spawn(move || f(r, c))
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("rank thread panicked")).collect()
}

/// Rank `r`'s input: `[rows, 3]` with values that differ per rank and element.
fn input(r: usize, rows: usize) -> Tensor<Cpu> {
    let v: Vec<f32> = (0..rows * 3).map(|i| (r * 100 + i) as f32 * 0.5 - 7.0).collect();
    Tensor::from_vec(v, [rows, 3], &Cpu).unwrap()
}

#[test]
fn collectives_equal_a_direct_computation() {
    for world in [1usize, 2, 4] {
        let out = on_ranks(world, Duration::from_secs(20), move |r, c| -> Result<_> {
            let x = input(r, 4);
            Ok((
                Communicator::<Cpu>::all_reduce(&c, &x, CommOp::Sum)?.to_vec::<f32>()?,
                Communicator::<Cpu>::all_reduce(&c, &x, CommOp::Avg)?.to_vec::<f32>()?,
                Communicator::<Cpu>::broadcast(&c, &x, world - 1)?.to_vec::<f32>()?,
                Communicator::<Cpu>::all_gather(&c, &x)?,
                Communicator::<Cpu>::reduce_scatter(&c, &input(r, 4 * world), CommOp::Sum)?,
            ))
        });
        let xs: Vec<Vec<f32>> = (0..world).map(|r| input(r, 4).to_vec().unwrap()).collect();
        let sum: Vec<f32> = (0..12).map(|i| xs.iter().map(|x| x[i]).sum()).collect();
        let big: Vec<Vec<f32>> = (0..world).map(|r| input(r, 4 * world).to_vec().unwrap()).collect();
        for (r, o) in out.into_iter().enumerate() {
            let (s, a, b, g, rs) = o.unwrap();
            assert_eq!(s, sum, "world {world} rank {r}: all_reduce sum");
            for (ai, si) in a.iter().zip(&sum) {
                assert!((ai - si / world as f32).abs() <= 1e-5 * si.abs().max(1.0), "avg {ai} vs {si}/{world}");
            }
            assert_eq!(b, xs[world - 1], "broadcast from the last rank");
            assert_eq!(g.dims(), &[4 * world, 3]);
            assert_eq!(g.to_vec::<f32>().unwrap(), xs.concat(), "all_gather concatenates in rank order");
            assert_eq!(rs.dims(), &[4, 3]);
            let want: Vec<f32> = (r * 12..(r + 1) * 12).map(|i| big.iter().map(|x| x[i]).sum()).collect();
            assert_eq!(rs.to_vec::<f32>().unwrap(), want, "reduce_scatter keeps this rank's rows");
        }
    }
}

#[test]
fn bad_arguments_are_typed_errors_on_the_calling_rank() {
    let c = LocalComm::group(2).unwrap().remove(0);
    let x = input(0, 3);
    let e = Communicator::<Cpu>::broadcast(&c, &x, 2).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { op: "broadcast", .. }), "{e}");
    let e = Communicator::<Cpu>::reduce_scatter(&c, &x, CommOp::Sum).unwrap_err();
    assert!(e.to_string().contains("not a multiple of the world size 2"), "{e}");
    let scalar = Tensor::scalar(1.0, DType::F32, &Cpu).unwrap();
    assert!(matches!(Communicator::<Cpu>::all_gather(&c, &scalar), Err(Error::RankMismatch { .. })));
    assert!(LocalComm::group(0).is_err());
}

#[test]
fn ranks_that_disagree_all_get_the_same_error() {
    let out = on_ranks(2, Duration::from_secs(20), |r, c| {
        Communicator::<Cpu>::all_reduce(&c, &input(r, 2 + r), CommOp::Sum).map(|_| ()).unwrap_err().to_string()
    });
    assert_eq!(out[0], out[1]);
    assert!(out[0].contains("same shape"), "{}", out[0]);
    let e = combine(&[
        (Collective::AllReduce(CommOp::Sum), HostTensor { dims: vec![1], dtype: DType::F32, data: vec![1.0] }),
        (Collective::AllGather, HostTensor { dims: vec![1], dtype: DType::F32, data: vec![1.0] }),
    ])
    .unwrap_err();
    assert!(e.to_string().contains("same collectives in the same order"), "{e}");
}

#[test]
fn a_rank_that_never_arrives_is_a_timeout_error_naming_it() {
    let t0 = Instant::now();
    let out = on_ranks(3, Duration::from_millis(300), |r, c| {
        if r == 2 {
            // A hung rank: it holds its handle (so the group is not broken by a drop) and never
            // calls the collective.
            thread::sleep(Duration::from_millis(1500));
            drop(c);
            return None;
        }
        Some(Communicator::<Cpu>::all_reduce(&c, &input(r, 1), CommOp::Sum).unwrap_err())
    });
    let waited = t0.elapsed();
    let first = out.iter().flatten().map(|e| e.to_string()).collect::<Vec<_>>();
    assert_eq!(first.len(), 2);
    assert!(out.iter().flatten().all(|e| matches!(e, Error::Distributed { op: "all_reduce", .. })));
    // One rank times out naming rank 2; the other fails at once because the group broke.
    assert!(first.iter().any(|m| m.contains("[2]") && m.contains("never called it")), "{first:?}");
    assert!(waited < Duration::from_secs(5), "took {waited:?}");
}

#[test]
fn a_rank_that_leaves_breaks_the_group_at_once() {
    let t0 = Instant::now();
    let out = on_ranks(2, Duration::from_secs(30), |r, c| {
        if r == 1 {
            drop(c); // the thread ends (an error, a panic) without calling the collective
            return None;
        }
        Some(Communicator::<Cpu>::all_reduce(&c, &input(r, 1), CommOp::Sum).unwrap_err().to_string())
    });
    let msg = out[0].clone().unwrap();
    assert!(msg.contains("rank 1 left the group"), "{msg}");
    assert!(t0.elapsed() < Duration::from_secs(10), "it must not wait for the 30 s timeout");
}

#[test]
fn backward_hook_reports_each_final_gradient_once_and_early() -> Result<()> {
    // loss = sum(w2 * relu(w1 * x)) + sum(w1): w1 is used twice (its gradient is final only after
    // both uses), w2 once, near the output (final first).
    let w1 = Var::param(Tensor::from_vec(vec![0.5f64, -1.0, 2.0], [3], &Cpu)?);
    let w2 = Var::param(Tensor::from_vec(vec![1.5f64, 0.25, -2.0], [3], &Cpu)?);
    let x = Var::constant(Tensor::from_vec(vec![1.0f64, 2.0, 3.0], [3], &Cpu)?);
    let loss = w2.mul(&w1.mul(&x)?.relu()?)?.sum_all()?.add(&w1.sum_all()?)?;
    let mut seen: Vec<(usize, Vec<f64>)> = Vec::new();
    let grads = loss.backward_with_hook(&mut |v, g| {
        seen.push((v.id(), g.to_vec_f64()?));
        Ok(())
    })?;
    let plain = loss.backward()?;
    assert_eq!(seen.len(), 2, "each leaf reported once");
    assert_eq!(seen[0].0, w2.id(), "the gradient nearest the output is final first");
    for (id, g) in &seen {
        let v = if *id == w1.id() { &w1 } else { &w2 };
        assert_eq!(g, &plain.get(v).unwrap().to_vec_f64()?, "the reported gradient is the final one");
        assert_eq!(g, &grads.get(v).unwrap().to_vec_f64()?);
    }
    Ok(())
}
