//! Data-parallel gradient synchronisation (`ela_nn::ddp`) on the in-process thread group: the
//! bucket plan, that averaged gradients equal the gradient of the whole batch, that buckets start
//! during the backward pass, and that a parameter without a gradient on some rank (an unused
//! expert) is handled as in a single-process run.

use std::thread;

use ela_autograd::{Grads, Var};
use ela_core::{Communicator, Cpu, DType, LocalComm, Result, Tensor};
use ela_nn::ddp::{broadcast_params, BucketPlan, DdpConfig, GradReducer};

#[test]
fn buckets_fill_in_reverse_order_up_to_the_cap_and_split_dtypes() {
    let f = DType::F32;
    let plan = BucketPlan::from_sizes(&[(f, 40), (f, 40), (f, 100), (f, 10), (DType::F64, 8), (f, 30)], 64);
    assert_eq!(plan.buckets, vec![vec![5], vec![4], vec![3, 2], vec![1, 0]]);
    let one_each = BucketPlan::from_sizes(&[(f, 4), (f, 4)], 0);
    assert_eq!(one_each.buckets, vec![vec![1], vec![0]]);
    let all = BucketPlan::from_sizes(&[(f, 4), (f, 4), (f, 4)], 1 << 20);
    assert_eq!(all.buckets, vec![vec![2, 1, 0]]);
}

/// A linear model `y = x @ w + b` with a squared loss; `use_b` false leaves `b` without gradient.
fn loss(w: &Var<Cpu>, b: &Var<Cpu>, x: &[f32], y: &[f32], use_b: bool) -> Result<Var<Cpu>> {
    let rows = x.len() / 4;
    let xv = Var::constant(Tensor::from_vec(x.to_vec(), [rows, 4], &Cpu)?);
    let yv = Var::constant(Tensor::from_vec(y.to_vec(), [rows, 2], &Cpu)?);
    let mut pred = xv.matmul(w)?;
    if use_b {
        pred = pred.add(b)?;
    }
    pred.sub(&yv)?.square()?.mean_all()
}

fn params() -> (Var<Cpu>, Var<Cpu>) {
    let w: Vec<f32> = (0..8).map(|i| (i as f32 - 3.5) * 0.3).collect();
    (
        Var::param(Tensor::from_vec(w, [4, 2], &Cpu).unwrap()),
        Var::param(Tensor::from_vec(vec![0.1f32, -0.2], [2], &Cpu).unwrap()),
    )
}

fn data(rows: usize) -> (Vec<f32>, Vec<f32>) {
    let x = (0..rows * 4).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.2).collect();
    let y = (0..rows * 2).map(|i| ((i * 5 % 7) as f32 - 3.0) * 0.5).collect();
    (x, y)
}

fn grads_of(g: &Grads<Cpu>, v: &Var<Cpu>) -> Option<Vec<f32>> {
    g.get(v).map(|t| t.to_vec::<f32>().unwrap())
}

#[test]
fn averaged_gradients_equal_the_whole_batch_gradient() {
    let (rows, world) = (8, 4);
    let (x, y) = data(rows);
    let (w, b) = params();
    let whole = loss(&w, &b, &x, &y, true).unwrap().backward().unwrap();
    let want = (grads_of(&whole, &w).unwrap(), grads_of(&whole, &b).unwrap());
    for bucket_bytes in [0, 1 << 20] {
        let comms = LocalComm::group(world).unwrap();
        let handles: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(r, c)| {
                let (x, y) = (x.clone(), y.clone());
                thread::spawn(move || -> Result<_> {
                    let (w, b) = params();
                    // Different starting values on other ranks: the broadcast must fix them.
                    if r > 0 {
                        w.set_value(w.value().affine(2.0, 1.0)?)?;
                    }
                    broadcast_params(&c, &[w.clone(), b.clone()])?;
                    let per = rows / world;
                    let (xs, ys) = (&x[r * per * 4..(r + 1) * per * 4], &y[r * per * 2..(r + 1) * per * 2]);
                    let mut red = GradReducer::new(&c, vec![w.clone(), b.clone()], DdpConfig { bucket_bytes });
                    let l = loss(&w, &b, xs, ys, true)?;
                    let mut started_in_backward = 0;
                    let mut g = l.backward_with_hook(&mut |v, g| {
                        red.on_grad(v, g)?;
                        started_in_backward = red.started();
                        Ok(())
                    })?;
                    red.finish(&mut g)?;
                    Ok((grads_of(&g, &w).unwrap(), grads_of(&g, &b).unwrap(), started_in_backward, red.plan().len()))
                })
            })
            .collect();
        for h in handles {
            let (gw, gb, started, buckets) = h.join().unwrap().unwrap();
            for (got, want) in gw.iter().chain(&gb).zip(want.0.iter().chain(&want.1)) {
                assert!((got - want).abs() <= 1e-6 * want.abs().max(1.0), "bucket {bucket_bytes}: {got} vs {want}");
            }
            assert_eq!(started, buckets, "every bucket started inside the backward pass");
        }
    }
}

#[test]
fn a_gradient_missing_on_some_ranks_is_zero_there_and_absent_only_when_missing_everywhere() {
    let (x, y) = data(4);
    for b_used_on in [vec![true, false], vec![false, false]] {
        let comms = LocalComm::group(2).unwrap();
        let handles: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(r, c)| {
                let (x, y, used) = (x.clone(), y.clone(), b_used_on[r]);
                thread::spawn(move || -> Result<_> {
                    let (w, b) = params();
                    let mut red = GradReducer::new(&c, vec![w.clone(), b.clone()], DdpConfig { bucket_bytes: 0 });
                    let l = loss(&w, &b, &x[r * 8..(r + 1) * 8], &y[r * 4..(r + 1) * 4], used)?;
                    let mut g = l.backward_with_hook(&mut |v, g| red.on_grad(v, g))?;
                    red.finish(&mut g)?;
                    // Rank 0's own gradient of b, for the expected average.
                    let own_b = if used { grads_of(&l.backward()?, &b) } else { None };
                    Ok((grads_of(&g, &b), own_b, Communicator::<Cpu>::rank(&c)))
                })
            })
            .collect();
        let res: Vec<_> = handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect();
        if b_used_on[0] {
            let want: Vec<f32> = res[0].1.clone().unwrap().iter().map(|v| v / 2.0).collect();
            for (gb, _, r) in &res {
                assert_eq!(gb.as_ref().unwrap(), &want, "rank {r}: the average counts the missing rank as zero");
            }
        } else {
            assert!(res.iter().all(|(gb, _, _)| gb.is_none()), "no rank had a gradient: none after the reduction");
        }
    }
}
