//! Forward correctness of the indexing and view ops (index_select / index_add, embedding,
//! gather / scatter_add, concat / stack, split / chunk, pad, tril_mask, write_slice, narrow / permute /
//! reshape / squeeze / broadcast_as / flatten) against `ela_tests::reference`, on every backend
//! (`NAME::cpu`, `NAME::cuda`).
//!
//! index_add / scatter_add run in f64 here, where CUDA's atomics (any order of the adds) agree
//! with the sequential reference to ~1e-16 relative; in f16/bf16 both backends add in f32 and
//! round once, which `half_index_add_accumulates_in_f32` checks with adds that rounding after
//! each one would lose.

mod core_forward_common;

use core_forward_common::*;
use ela_core::{Backend, Cpu, DType, Shape, Tensor};
use ela_tests::reference::{self as r, RefTensor, TestRng};
use ela_tests::{device_proptest, device_tests};
use proptest::prelude::*;

// ====================================================================== indexing

/// A `U32` index vector on `dev`, sometimes as a strided (non-contiguous) view.
fn ids_vec<B: Backend>(dev: &B, ids: &[usize], strided: bool) -> Tensor<B> {
    if strided {
        let inter: Vec<usize> = ids.iter().flat_map(|&i| [i, 999_999]).collect();
        u32_tensor(dev, &inter, &[ids.len(), 2]).narrow(1, 0, 1).unwrap().squeeze(1).unwrap()
    } else {
        u32_tensor(dev, ids, &[ids.len()])
    }
}

device_proptest! {
    #![proptest_config(cfg())]

    fn index_select_and_index_add<B: Backend>(
        dev: &B,
        s in shape(1..=4, 0..=5),
        seed in any::<u64>(),
        l in lay(),
        strided in any::<bool>(),
    ) {
        let mut rng = TestRng::new(seed);
        let (x, t) = input(dev, &s, DType::F64, l, Vals::Uni, &mut rng);
        let (a, ai) = axis_of(s.len(), &mut rng);
        let nids = if s[ai] == 0 { 0 } else { rng.below(7) };
        let ids: Vec<usize> = (0..nids).map(|_| rng.below(s[ai])).collect();
        let it = ids_vec(dev, &ids, strided);
        let what = format!("index_select axis {a} ids {ids:?} (strided {strided}) of {s:?} F64 {l:?}");
        check_exact(&t.index_select(&it, a).ctx(&what)?, &r::index_select(&x, &ids, ai), &what)?;
        // index_add: the source has one slice per id; repeated ids accumulate.
        let mut src_shape = s.clone();
        src_shape[ai] = nids;
        let (src, st) = input(dev, &src_shape, DType::F64, l, Vals::Uni, &mut rng);
        let what = format!("index_add axis {a} ids {ids:?} (strided {strided}) of {src_shape:?} F64 {l:?} into {s:?}");
        let got = st.index_add(&it, a, &Shape::from(s.clone())).ctx(&what)?;
        check(&got, &r::index_add(&src, &ids, ai, &s), 1e-12, 1e-12, &what)?;
        // The backward's variant (no host-side check of ids already checked) adds the same.
        let pre = st.index_add_prechecked(&it, a, &Shape::from(s.clone())).ctx(&what)?;
        check(&pre, &r::index_add(&src, &ids, ai, &s), 1e-12, 1e-12, &format!("prechecked {what}"))?;
        // Adjoint identity: <index_select(x), y> == <x, index_add(y)>.
        let lhs = r::dot(&r::index_select(&x, &ids, ai), &src);
        let rhs: f64 = x.data.iter().zip(got.to_vec_f64()?).map(|(a, b)| a * b).sum();
        prop_assert!((lhs - rhs).abs() <= 1e-10 * (1.0 + lhs.abs()));
    }

    fn embedding_lookup<B: Backend>(
        dev: &B,
        vocab in 1usize..=6,
        dim in 0usize..=4,
        ids_shape in shape(0..=3, 0..=3),
        seed in any::<u64>(),
        l in lay(),
        f32_ in any::<bool>(),
    ) {
        let mut rng = TestRng::new(seed);
        let dt = if f32_ { DType::F32 } else { DType::F64 };
        let (table, tt) = input(dev, &[vocab, dim], dt, l, Vals::Uni, &mut rng);
        let ids: Vec<usize> = (0..r::numel(&ids_shape)).map(|_| rng.below(vocab)).collect();
        let it = u32_tensor(dev, &ids, &ids_shape);
        let what = format!("embedding [{vocab}, {dim}] {dt:?} {l:?} ids {ids_shape:?}");
        let got = tt.embedding(&it).ctx(&what)?;
        prop_assert_eq!(got.dtype(), dt, "{}", what);
        check_exact(&got, &r::embedding(&table, &ids, &ids_shape), &what)?;
    }

    fn gather_and_scatter_add<B: Backend>(
        dev: &B,
        s in shape(1..=4, 0..=4),
        m in 0usize..=4,
        seed in any::<u64>(),
        l in lay(),
        li in lay_nb(),
    ) {
        let mut rng = TestRng::new(seed);
        let (x, t) = input(dev, &s, DType::F64, l, Vals::Uni, &mut rng);
        let (a, ai) = axis_of(s.len(), &mut rng);
        let mut ids_shape = s.clone();
        ids_shape[ai] = if s[ai] == 0 { 0 } else { m };
        let ids = RefTensor::new(ids_shape.clone(), (0..r::numel(&ids_shape)).map(|_| rng.below(s[ai]) as f64).collect());
        // Index tensors may be strided views too (a u32 buffer permuted and/or narrowed).
        let ids_t = with_layout(dev, &ids, DType::U32, li, &mut rng);
        prop_assert_eq!(ids_t.dtype(), DType::U32);
        let ids_strided = if ids_shape.len() >= 2 {
            let rk = ids_shape.len();
            let stored = with_layout(dev, &ids, DType::U32, Lay::Perm, &mut rng);
            Some(stored.transpose(0, rk - 1)?.contiguous()?.transpose(0, rk - 1)?)
        } else {
            None
        };
        let shapes = format!("axis {a} of {s:?} F64 {l:?}, ids {ids_shape:?} {li:?}");
        let want = r::gather(&x, &ids, ai);
        let what = format!("gather {shapes}");
        check_exact(&t.gather(&ids_t, a).ctx(&what)?, &want, &what)?;
        if let Some(is) = &ids_strided {
            let what = format!("gather (transposed ids) {shapes}");
            check_exact(&t.gather(is, a).ctx(&what)?, &want, &what)?;
        }
        let (src, st) = input(dev, &ids_shape, DType::F64, l, Vals::Uni, &mut rng);
        let want = r::scatter_add(&x, &ids, &src, ai);
        let what = format!("scatter_add {shapes}");
        check(&t.scatter_add(&ids_t, &st, a).ctx(&what)?, &want, 1e-12, 1e-12, &what)?;
        if let Some(is) = &ids_strided {
            let what = format!("scatter_add (transposed ids) {shapes}");
            check(&t.scatter_add(is, &st, a).ctx(&what)?, &want, 1e-12, 1e-12, &what)?;
        }
    }

    fn concat_and_stack<B: Backend>(
        dev: &B,
        s in shape(1..=4, 0..=4),
        nparts in 1usize..=3,
        seed in any::<u64>(),
        l in lay(),
    ) {
        let mut rng = TestRng::new(seed);
        let (a, ai) = axis_of(s.len(), &mut rng);
        let mut refs = vec![];
        let mut ts = vec![];
        for _ in 0..nparts {
            let mut ps = s.clone();
            ps[ai] = rng.below(4);
            let (x, t) = input(dev, &ps, DType::F64, l, Vals::Uni, &mut rng);
            refs.push(x);
            ts.push(t);
        }
        let views: Vec<&Tensor<B>> = ts.iter().collect();
        let what = format!("concat axis {a} of {:?} F64 {l:?}", refs.iter().map(|x| &x.shape).collect::<Vec<_>>());
        check_exact(&Tensor::concat(&views, a).ctx(&what)?, &r::concat(&refs, ai), &what)?;
        // stack: equal shapes, new axis anywhere in 0..=rank (negative too).
        let mut srefs = vec![];
        let mut sts = vec![];
        for _ in 0..nparts {
            let (x, t) = input(dev, &s, DType::F64, l, Vals::Uni, &mut rng);
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
        let views: Vec<&Tensor<B>> = sts.iter().collect();
        let neg = sa as isize - (s.len() as isize + 1);
        let what = format!("stack axis {sa} of {nparts} x {s:?} F64 {l:?}");
        check_exact(&Tensor::stack(&views, sa).ctx(&what)?, &r::concat(&unsq, sa), &what)?;
        let what = format!("stack axis {neg} of {nparts} x {s:?} F64 {l:?}");
        check_exact(&Tensor::stack(&views, neg).ctx(&what)?, &r::concat(&unsq, sa), &what)?;
    }

    fn split_and_chunk<B: Backend>(
        dev: &B,
        s in shape(1..=4, 1..=5),
        size in 1usize..=6,
        seed in any::<u64>(),
        l in lay(),
    ) {
        let mut rng = TestRng::new(seed);
        let (x, t) = input(dev, &s, DType::F64, l, Vals::Uni, &mut rng);
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
        let refs: Vec<&Tensor<B>> = pieces.iter().collect();
        check_exact(&Tensor::concat(&refs, a)?, &x, &format!("concat(chunk(x)) == x for {s:?} F64 {l:?}"))?;
    }

    fn pad_constant<B: Backend>(
        dev: &B,
        s in shape(0..=4, 0..=4),
        seed in any::<u64>(),
        l in lay(),
        value in -5.0f64..5.0,
    ) {
        let mut rng = TestRng::new(seed);
        let (x, t) = input(dev, &s, DType::F64, l, Vals::Uni, &mut rng);
        let pads: Vec<(usize, usize)> = s.iter().map(|_| (rng.below(3), rng.below(3))).collect();
        let what = format!("pad {pads:?} value {value} of {s:?} F64 {l:?}");
        check_exact(&t.pad(&pads, value).ctx(&what)?, &r::pad(&x, &pads, value), &what)?;
        let t32 = t.to_dtype(DType::F32)?;
        let what = format!("pad {pads:?} value 0.5 of {s:?} F32 (cast from {l:?})");
        check_exact(&t32.pad(&pads, 0.5).ctx(&what)?, &r::pad(&round_ref(&x, DType::F32), &pads, 0.5), &what)?;
    }

    fn tril_mask_matches<B: Backend>(dev: &B, rows in 0usize..=6, cols in 0usize..=6, diag in -4isize..=4) {
        let what = format!("tril_mask {rows}x{cols} diag {diag}");
        let m = Tensor::tril_mask(rows, cols, diag, dev).ctx(&what)?;
        prop_assert_eq!(m.dtype(), DType::U8, "{}", what);
        check_exact(&m, &r::tril_mask(rows, cols, diag), &what)?;
    }
}

// ====================================================================== views

device_proptest! {
    #![proptest_config(cfg())]

    fn view_ops<B: Backend>(dev: &B, s in shape(1..=4, 0..=5), seed in any::<u64>(), l in lay()) {
        let mut rng = TestRng::new(seed);
        let (x, t) = input(dev, &s, DType::F64, l, Vals::Uni, &mut rng);
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

device_tests!(half_index_add_accumulates_in_f32);

/// bf16 and f16 index_add / scatter_add add in f32 and round once: `1 + 3 * 2^-9` (bf16) is
/// `1 + 2^-7` after one rounding, while rounding after each add would give `1` (each `2^-9` is
/// half a unit in the last place of 1 and rounds away, to even); the same with `2^-12` in f16.
fn half_index_add_accumulates_in_f32<B: Backend>(dev: &B) -> ela_core::Result<()> {
    for (dtype, tiny, want) in
        [(DType::BF16, 2f64.powi(-9), 1.0 + 2f64.powi(-7)), (DType::F16, 2f64.powi(-12), 1.0 + 2f64.powi(-10))]
    {
        let src = Tensor::from_vec(vec![1.0, tiny, tiny, tiny], [4, 1], dev)?.to_dtype(dtype)?;
        let ids = u32_tensor(dev, &[0, 0, 0, 0], &[4]);
        let sum = src.index_add(&ids, 0, &Shape::from(vec![1, 1]))?;
        assert_eq!(sum.to_vec_f64()?, vec![want], "index_add {dtype:?}");
        let base = Tensor::zeros([1, 1], dtype, dev)?;
        let sum = base.scatter_add(&u32_tensor(dev, &[0, 0, 0, 0], &[4, 1]), &src, 0)?;
        assert_eq!(sum.to_vec_f64()?, vec![want], "scatter_add {dtype:?}");
    }
    Ok(())
}

device_tests!(concat_of_large_strided_parts);

/// Parts large enough that the CPU reads strided ones through their strides (blocks of at least
/// 256 elements) and splits the output between threads (over 32k elements, so a thread's share
/// starts inside a block): transposed, permuted and narrowed views beside contiguous ones, in
/// f64, f32 and bf16, against the parts made contiguous first and joined by the reference.
fn concat_of_large_strided_parts<B: Backend>(dev: &B) -> ela_core::Result<()> {
    let mut rng = ela_core::Rng::new(5);
    let big = Tensor::randn(0.0, 1.0, [6, 50, 4, 48], DType::F64, &mut rng, dev)?;
    // [6, 50, 1, 48] parts along axis 2 (the fused q/k/v gradient's layout): a transposed
    // view, a contiguous one, a narrow of a wider tensor.
    let p0 = big.transpose(1, 2)?.narrow(1, 1, 1)?.transpose(1, 2)?;
    let p1 = big.narrow(2, 0, 1)?.contiguous()?;
    let p2 = big.narrow(2, 3, 1)?;
    let p3 = Tensor::randn(0.0, 1.0, [6, 48, 50, 1], DType::F64, &mut rng, dev)?.permute(&[0, 2, 3, 1])?;
    let p4 = big.narrow(2, 1, 2)?.narrow(1, 10, 7)?;
    let p5 = Tensor::randn(0.0, 1.0, [6, 48, 50, 2], DType::F64, &mut rng, dev)?.permute(&[0, 2, 3, 1])?;
    let cases: Vec<(Vec<&Tensor<B>>, usize)> =
        vec![(vec![&p0, &p1, &p2], 2), (vec![&p2, &p3, &p0], 2), (vec![&p5, &p4], 1), (vec![&p4, &p5], 1)];
    for (dtype, (parts, axis)) in
        [DType::F64, DType::BF16, DType::F32].iter().flat_map(|d| cases.iter().map(move |c| (*d, c)))
    {
        let cast: Vec<Tensor<B>> = parts.iter().map(|p| p.to_dtype(dtype)).collect::<ela_core::Result<_>>()?;
        let views: Vec<&Tensor<B>> = cast.iter().collect();
        let got = Tensor::concat(&views, *axis)?;
        let refs: Vec<RefTensor> =
            views.iter().map(|v| RefTensor::new(v.dims().to_vec(), v.to_vec_f64().unwrap())).collect();
        let what =
            format!("concat of {:?} along {axis}, {dtype:?}", views.iter().map(|v| v.dims()).collect::<Vec<_>>());
        check_exact(&got, &r::concat(&refs, *axis), &what)
            .map_err(|e| ela_core::Error::invalid("test", e.to_string()))?;
    }
    Ok(())
}

// ====================================================================== write_slice (in place)

device_proptest! {
    #![proptest_config(cfg())]

    /// `write_slice` equals rebuilding the tensor as `concat(before, src, after)`, for a source
    /// of any layout (views, broadcasts) and every dtype width (integer values, which bf16 holds
    /// exactly, so the reference needs no rounding).
    fn write_slice_matches_concat<B: Backend>(
        dev: &B,
        s in shape(1..=4, 1..=5),
        seed in any::<u64>(),
        l in lay(),
        dt in prop_oneof![Just(DType::F64), Just(DType::F32), Just(DType::BF16)],
    ) {
        let mut rng = TestRng::new(seed);
        let (x, t) = input(dev, &s, dt, Lay::Contig, Vals::Ints, &mut rng);
        let (a, ai) = axis_of(s.len(), &mut rng);
        let off = rng.below(s[ai] + 1);
        let n = rng.below(s[ai] - off + 1);
        let mut src_shape = s.clone();
        src_shape[ai] = n;
        let (src, st) = input(dev, &src_shape, dt, l, Vals::Ints, &mut rng);
        // A fresh buffer owned by `dst` alone (`t` may share its buffer with nothing, but make sure).
        let mut dst = t.mul_scalar(1.0)?;
        let what = format!("write_slice axis {a} at {off} of {src_shape:?} ({l:?}) into {s:?} {dt:?}");
        dst.write_slice(a, off, &st).ctx(&what)?;
        let want = r::concat(&[r::narrow(&x, ai, 0, off), src, r::narrow(&x, ai, off + n, s[ai] - off - n)], ai);
        check_exact(&dst, &want, &what)?;
    }
}

device_tests!(write_slice_refuses_what_it_cannot_write);

/// Writing in place is refused, with a typed error, whenever it could change another tensor or
/// does not fit: a shared buffer, a view, a slice past the end, a shape or dtype mismatch.
fn write_slice_refuses_what_it_cannot_write<B: Backend>(dev: &B) -> ela_core::Result<()> {
    let row = Tensor::ones([2, 1], DType::F32, dev)?;
    let mut dst = Tensor::zeros([2, 4], DType::F32, dev)?;
    let view = dst.clone();
    let err = dst.write_slice(1, 0, &row).unwrap_err().to_string();
    assert!(err.contains("shared"), "{err}");
    assert_eq!(view.to_vec_f64()?, vec![0.0; 8], "the clone must be untouched");
    drop(view);
    dst.write_slice(1, 3, &row)?;
    assert_eq!(dst.to_vec_f64()?, [0., 0., 0., 1., 0., 0., 0., 1.]);
    let err = dst.write_slice(1, 4, &row).unwrap_err().to_string();
    assert!(err.contains("write_slice") && err.contains('5'), "{err}");
    let err = dst.write_slice(1, 0, &Tensor::ones([3, 1], DType::F32, dev)?).unwrap_err().to_string();
    assert!(err.contains("every axis but 1"), "{err}");
    let err = dst.write_slice(1, 0, &row.to_dtype(DType::F64)?).unwrap_err().to_string();
    assert!(err.contains("write_slice"), "{err}");
    let mut narrowed = Tensor::zeros([2, 4], DType::F32, dev)?.narrow(1, 0, 2)?;
    let err = narrowed.write_slice(1, 0, &row).unwrap_err().to_string();
    assert!(err.contains("view"), "{err}");
    Ok(())
}

/// `index_add_prechecked` trusts its indices: one out of range is skipped (as the GPU kernels
/// skip it), never written out of bounds, where `index_add` reports it.
#[test]
fn prechecked_index_add_skips_an_out_of_range_index() {
    let dev = Cpu;
    let src = Tensor::from_vec(vec![1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0], [3, 2], &dev).unwrap();
    let ids = u32_tensor(&dev, &[1, 7, 0], &[3]);
    let out = Shape::from([2, 2]);
    assert!(src.index_add(&ids, 0usize, &out).is_err(), "the checked op names the bad index");
    let got = src.index_add_prechecked(&ids, 0usize, &out).unwrap();
    assert_eq!(got.to_vec_f64().unwrap(), vec![5.0, 6.0, 1.0, 2.0]);
}
