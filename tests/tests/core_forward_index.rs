//! Forward correctness of the indexing and view ops (index_select / index_add, embedding,
//! gather / scatter_add, concat / stack, split / chunk, pad, tril_mask, narrow / permute /
//! reshape / squeeze / broadcast_as / flatten) against `ela_tests::reference`.

mod core_forward_common;

use core_forward_common::*;
use ela_core::{Cpu, DType, Shape, Tensor};
use ela_tests::reference::{self as r, RefTensor, TestRng};
use proptest::prelude::*;

// ====================================================================== indexing

/// A `U32` index vector, sometimes as a strided (non-contiguous) view.
fn ids_vec(ids: &[usize], strided: bool) -> T {
    if strided {
        let inter: Vec<usize> = ids.iter().flat_map(|&i| [i, 999_999]).collect();
        u32_tensor(&inter, &[ids.len(), 2]).narrow(1, 0, 1).unwrap().squeeze(1).unwrap()
    } else {
        u32_tensor(ids, &[ids.len()])
    }
}

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn index_select_and_index_add(s in shape(1..=4, 0..=5), seed in any::<u64>(), l in lay(), strided in any::<bool>()) {
        let mut rng = TestRng::new(seed);
        let (x, t) = input(&s, DType::F64, l, Vals::Uni, &mut rng);
        let (a, ai) = axis_of(s.len(), &mut rng);
        let nids = if s[ai] == 0 { 0 } else { rng.below(7) };
        let ids: Vec<usize> = (0..nids).map(|_| rng.below(s[ai])).collect();
        let it = ids_vec(&ids, strided);
        check_exact(&t.index_select(&it, a)?, &r::index_select(&x, &ids, ai), &format!("index_select axis {a} ids {ids:?}"))?;
        // index_add: the source has one slice per id; repeated ids accumulate.
        let mut src_shape = s.clone();
        src_shape[ai] = nids;
        let (src, st) = input(&src_shape, DType::F64, l, Vals::Uni, &mut rng);
        let got = st.index_add(&it, a, &Shape::from(s.clone()))?;
        check(&got, &r::index_add(&src, &ids, ai, &s), 1e-12, 1e-12, &format!("index_add axis {a} ids {ids:?}"))?;
        // Adjoint identity: <index_select(x), y> == <x, index_add(y)>.
        let lhs = r::dot(&r::index_select(&x, &ids, ai), &src);
        let rhs: f64 = x.data.iter().zip(got.to_vec_f64()?).map(|(a, b)| a * b).sum();
        prop_assert!((lhs - rhs).abs() <= 1e-10 * (1.0 + lhs.abs()));
    }

    #[test]
    fn embedding_lookup(vocab in 1usize..=6, dim in 0usize..=4, ids_shape in shape(0..=3, 0..=3), seed in any::<u64>(), l in lay(), f32_ in any::<bool>()) {
        let mut rng = TestRng::new(seed);
        let dt = if f32_ { DType::F32 } else { DType::F64 };
        let (table, tt) = input(&[vocab, dim], dt, l, Vals::Uni, &mut rng);
        let ids: Vec<usize> = (0..r::numel(&ids_shape)).map(|_| rng.below(vocab)).collect();
        let it = u32_tensor(&ids, &ids_shape);
        let got = tt.embedding(&it)?;
        prop_assert_eq!(got.dtype(), dt);
        check_exact(&got, &r::embedding(&table, &ids, &ids_shape), "embedding")?;
    }

    #[test]
    fn gather_and_scatter_add(s in shape(1..=4, 0..=4), m in 0usize..=4, seed in any::<u64>(), l in lay(), li in lay_nb()) {
        let mut rng = TestRng::new(seed);
        let (x, t) = input(&s, DType::F64, l, Vals::Uni, &mut rng);
        let (a, ai) = axis_of(s.len(), &mut rng);
        let mut ids_shape = s.clone();
        ids_shape[ai] = if s[ai] == 0 { 0 } else { m };
        let ids = RefTensor::new(ids_shape.clone(), (0..r::numel(&ids_shape)).map(|_| rng.below(s[ai]) as f64).collect());
        // Index tensors may be strided views too (a u32 buffer permuted and/or narrowed).
        let ids_t = with_layout(&ids, DType::U32, li, &mut rng);
        prop_assert_eq!(ids_t.dtype(), DType::U32);
        let ids_strided = if ids_shape.len() >= 2 {
            let rk = ids_shape.len();
            Some(with_layout(&ids, DType::U32, Lay::Perm, &mut rng).transpose(0, rk - 1)?.contiguous()?.transpose(0, rk - 1)?)
        } else {
            None
        };
        let want = r::gather(&x, &ids, ai);
        check_exact(&t.gather(&ids_t, a)?, &want, &format!("gather axis {a}"))?;
        if let Some(is) = &ids_strided {
            check_exact(&t.gather(is, a)?, &want, &format!("gather (transposed ids) axis {a}"))?;
        }
        let (src, st) = input(&ids_shape, DType::F64, l, Vals::Uni, &mut rng);
        let want = r::scatter_add(&x, &ids, &src, ai);
        check(&t.scatter_add(&ids_t, &st, a)?, &want, 1e-12, 1e-12, &format!("scatter_add axis {a}"))?;
        if let Some(is) = &ids_strided {
            check(&t.scatter_add(is, &st, a)?, &want, 1e-12, 1e-12, &format!("scatter_add (transposed ids) axis {a}"))?;
        }
    }

    #[test]
    fn concat_and_stack(s in shape(1..=4, 0..=4), nparts in 1usize..=3, seed in any::<u64>(), l in lay()) {
        let mut rng = TestRng::new(seed);
        let (a, ai) = axis_of(s.len(), &mut rng);
        let mut refs = vec![];
        let mut ts = vec![];
        for _ in 0..nparts {
            let mut ps = s.clone();
            ps[ai] = rng.below(4);
            let (x, t) = input(&ps, DType::F64, l, Vals::Uni, &mut rng);
            refs.push(x);
            ts.push(t);
        }
        let views: Vec<&T> = ts.iter().collect();
        check_exact(&Tensor::concat(&views, a)?, &r::concat(&refs, ai), &format!("concat axis {a}"))?;
        // stack: equal shapes, new axis anywhere in 0..=rank (negative too).
        let mut srefs = vec![];
        let mut sts = vec![];
        for _ in 0..nparts {
            let (x, t) = input(&s, DType::F64, l, Vals::Uni, &mut rng);
            srefs.push(x);
            sts.push(t);
        }
        let sa = rng.below(s.len() + 1);
        let unsq: Vec<RefTensor> = srefs
            .iter()
            .map(|x| {
                let mut sh = x.shape.clone();
                sh.insert(sa, 1);
                x.reshape(&sh)
            })
            .collect();
        let views: Vec<&T> = sts.iter().collect();
        let neg = sa as isize - (s.len() as isize + 1);
        check_exact(&Tensor::stack(&views, sa)?, &r::concat(&unsq, sa), &format!("stack axis {sa}"))?;
        check_exact(&Tensor::stack(&views, neg)?, &r::concat(&unsq, sa), &format!("stack axis {neg}"))?;
    }

    #[test]
    fn split_and_chunk(s in shape(1..=4, 1..=5), size in 1usize..=6, seed in any::<u64>(), l in lay()) {
        let mut rng = TestRng::new(seed);
        let (x, t) = input(&s, DType::F64, l, Vals::Uni, &mut rng);
        let (a, ai) = axis_of(s.len(), &mut rng);
        let n = s[ai];
        let pieces = t.split(size, a)?;
        let starts: Vec<usize> = (0..n).step_by(size).collect();
        prop_assert_eq!(pieces.len(), starts.len());
        for (p, &st) in pieces.iter().zip(&starts) {
            check_exact(p, &r::narrow(&x, ai, st, size.min(n - st)), &format!("split {size} axis {a} at {st}"))?;
        }
        // chunk(c): pieces of ceil(n / c), as in PyTorch (possibly fewer than c pieces).
        let c = size;
        let per = n.div_ceil(c);
        let pieces = t.chunk(c, a)?;
        let starts: Vec<usize> = (0..n).step_by(per).collect();
        prop_assert_eq!(pieces.len(), starts.len());
        prop_assert!(pieces.len() <= c);
        for (p, &st) in pieces.iter().zip(&starts) {
            check_exact(p, &r::narrow(&x, ai, st, per.min(n - st)), &format!("chunk {c} axis {a} at {st}"))?;
        }
        // The pieces concatenate back to the input.
        let refs: Vec<&T> = pieces.iter().collect();
        check_exact(&Tensor::concat(&refs, a)?, &x, "concat(chunk(x)) == x")?;
    }

    #[test]
    fn pad_constant(s in shape(0..=4, 0..=4), seed in any::<u64>(), l in lay(), value in -5.0f64..5.0) {
        let mut rng = TestRng::new(seed);
        let (x, t) = input(&s, DType::F64, l, Vals::Uni, &mut rng);
        let pads: Vec<(usize, usize)> = s.iter().map(|_| (rng.below(3), rng.below(3))).collect();
        check_exact(&t.pad(&pads, value)?, &r::pad(&x, &pads, value), &format!("pad {pads:?}"))?;
        let t32 = t.to_dtype(DType::F32)?;
        check_exact(&t32.pad(&pads, 0.5)?, &r::pad(&round_ref(&x, DType::F32), &pads, 0.5), "pad f32")?;
    }

    #[test]
    fn tril_mask_matches(rows in 0usize..=6, cols in 0usize..=6, diag in -4isize..=4) {
        let m = T::tril_mask(rows, cols, diag, &Cpu)?;
        prop_assert_eq!(m.dtype(), DType::U8);
        check_exact(&m, &r::tril_mask(rows, cols, diag), &format!("tril_mask {rows}x{cols} diag {diag}"))?;
    }
}

// ====================================================================== views

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn view_ops(s in shape(1..=4, 0..=5), seed in any::<u64>(), l in lay()) {
        let mut rng = TestRng::new(seed);
        let (x, t) = input(&s, DType::F64, l, Vals::Uni, &mut rng);
        let rank = s.len();
        // narrow
        let (a, ai) = axis_of(rank, &mut rng);
        let start = rng.below(s[ai] + 1);
        let len = rng.below(s[ai] - start + 1);
        let nv = t.narrow(a, start, len)?;
        prop_assert!(nv.same_storage(&t), "narrow must be a view");
        check_exact(&nv, &r::narrow(&x, ai, start, len), &format!("narrow axis {a} {start}+{len}"))?;
        // permute / transpose / t
        let perm = rng.permutation(rank);
        check_exact(&t.permute(&perm)?, &r::permute(&x, &perm), &format!("permute {perm:?}"))?;
        let (b, bi) = axis_of(rank, &mut rng);
        check_exact(&t.transpose(a, b)?, &r::transpose(&x, ai, bi), "transpose")?;
        if rank >= 2 {
            check_exact(&t.t()?, &r::transpose(&x, rank - 2, rank - 1), "t")?;
        }
        let tp = t.permute(&perm)?;
        let xp = r::permute(&x, &perm);
        // unsqueeze / squeeze
        let u = rng.below(rank + 1);
        let mut us = s.clone();
        us.insert(u, 1);
        let tu = t.unsqueeze(u)?;
        check_exact(&tu, &x.reshape(&us), &format!("unsqueeze {u}"))?;
        check_exact(&tu.squeeze(u)?, &x, &format!("squeeze {u}"))?;
        let neg = u as isize - (rank as isize + 1);
        check_exact(&t.unsqueeze(neg)?, &x.reshape(&us), &format!("unsqueeze {neg}"))?;
        check_exact(&tu.squeeze(neg)?, &x, &format!("squeeze {neg}"))?;
        // broadcast_as: a new leading axis and every size-1 axis stretched
        let mut bs = vec![3];
        bs.extend(s.iter().map(|&d| if d == 1 { 2 } else { d }));
        check_exact(&t.broadcast_as(bs.clone())?, &r::broadcast_to(&x, &bs).unwrap(), &format!("broadcast_as {bs:?}"))?;
        // contiguous
        let c = tp.contiguous()?;
        prop_assert!(c.layout().is_contiguous());
        check_exact(&c, &xp, "contiguous")?;
        // to_vec reads any view in logical order
        prop_assert_eq!(tp.to_vec::<f64>()?, xp.data.clone());
        // reshape (incl. of non-contiguous views): row-major order is kept
        let flat = x.reshape(&[x.numel()]);
        check_exact(&t.reshape(x.numel())?, &flat, "reshape to 1-D")?;
        check_exact(&t.flatten_all()?, &flat, "flatten_all")?;
        let mut target: Vec<usize> = s.clone();
        target.reverse();
        check_exact(&t.reshape(target.clone())?, &x.reshape(&target), &format!("reshape {s:?} -> {target:?}"))?;
        check_exact(&tp.reshape(target.clone())?, &xp.reshape(&target), "reshape of a permuted view")?;
        if x.numel() > 0 {
            let mut inferred = target.clone();
            let hole = rng.below(inferred.len());
            inferred[hole] = usize::MAX;
            check_exact(&tp.reshape(inferred)?, &xp.reshape(&target), "reshape with an inferred dim")?;
        }
        // flatten(start, end)
        let (f0, f1) = { let p = rng.below(rank); let q = rng.below(rank); (p.min(q), p.max(q)) };
        let ps = &xp.shape;
        let mut fs = ps[..f0].to_vec();
        fs.push(ps[f0..=f1].iter().product());
        fs.extend_from_slice(&ps[f1 + 1..]);
        check_exact(&tp.flatten(f0, f1)?, &xp.reshape(&fs), &format!("flatten {f0}..={f1}"))?;
    }
}
