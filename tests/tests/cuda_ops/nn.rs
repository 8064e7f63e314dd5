//! Softmax, RMS/layer norm and cross-entropy: forward and the dedicated backward kernels.

use ela_core::{Cpu, DType, Error, Result, Tensor};

use crate::{both, check, check_tol, gpu, Pair, FLOATS};

#[test]
fn softmax_and_log_softmax_forward_backward() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    for (k, &d) in FLOATS.iter().enumerate() {
        // Row lengths below, at and above a warp and a full block; a strided input.
        for n in [1usize, 7, 32, 100, 1500] {
            let x = Pair::randn_strided(&[3, n.max(2)], d, 40 + k as u64, &dev);
            let x = Pair { cpu: x.cpu.narrow(1, 0, n)?, gpu: x.gpu.narrow(1, 0, n)? };
            let dy = Pair::randn(&[3, n], d, 41 + k as u64, &dev);
            for log in [false, true] {
                let (c, g) = both!(|x| if log { x.log_softmax(1usize)? } else { x.softmax(1usize)? });
                check(&format!("softmax n={n} log={log} {d:?}"), &c, &g);
                let y = Pair { cpu: c, gpu: g };
                let (c, g) = both!(|y, dy| y.softmax_last_backward(dy, log)?);
                check(&format!("softmax backward n={n} log={log} {d:?}"), &c, &g);
            }
        }
        // Along axis 0 (the tensor layer hands the kernel a transposed view).
        let x = Pair::randn(&[6, 5], d, 42, &dev);
        let (c, g) = both!(|x| x.softmax(0usize)?);
        check("softmax axis 0", &c, &g);
    }
    // A fully masked row gives NaN on both devices.
    let x = Pair::new(Tensor::from_vec(vec![f32::NEG_INFINITY; 4], [1, 4], &Cpu)?, &dev);
    let (c, g) = both!(|x| x.softmax(1usize)?);
    check("masked row", &c, &g);
    Ok(())
}

#[test]
fn add_rms_norm_is_the_add_then_the_norm_bit_for_bit() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let bits =
        |t: &Tensor<ela_cuda::Cuda>| -> Result<Vec<u64>> { Ok(t.to_vec_f64()?.iter().map(|v| v.to_bits()).collect()) };
    for (k, &d) in FLOATS.iter().enumerate() {
        // 16-byte vectors (512, 1024: the LMs' widths; 8), a row length that is not (33), rows
        // past one block's eight (70), and rows too long for a warp (the add and the norm apart).
        for (rows, n) in [(70usize, 512usize), (9, 1024), (5, 8), (70, 33), (3, 2056)] {
            let s = 90 + k as u64 * 11 + n as u64;
            let (a, b, w) = (
                Pair::randn(&[rows, n], d, s, &dev),
                Pair::randn(&[rows, n], d, s + 1, &dev),
                Pair::randn(&[n], d, s + 2, &dev),
            );
            for with_w in [false, true] {
                let tag = format!("{rows}x{n} {d:?} w={with_w}");
                let (cw, gw) = if with_w { (Some(&w.cpu), Some(&w.gpu)) } else { (None, None) };
                let (h, y, r) = ela_cuda::with_fused_add_rms(true, || a.gpu.add_rms_norm_fwd(&b.gpu, gw, 1e-5))?;
                let (h2, y2, r2) = ela_cuda::with_fused_add_rms(false, || a.gpu.add_rms_norm_fwd(&b.gpu, gw, 1e-5))?;
                assert_eq!(bits(&h)?, bits(&h2)?, "h {tag}");
                assert_eq!(bits(&y)?, bits(&y2)?, "y {tag}");
                assert_eq!(bits(&r)?, bits(&r2)?, "rstd {tag}");
                let (ch, cy, cr) = a.cpu.add_rms_norm_fwd(&b.cpu, cw, 1e-5)?;
                check(&format!("add_rms h {tag}"), &ch, &h);
                check(&format!("add_rms y {tag}"), &cy, &y);
                check(&format!("add_rms rstd {tag}"), &cr, &r);
            }
        }
    }
    // Summands of two shapes or dtypes are the caller's mistake, named as such.
    let (a, b) = (Pair::randn(&[4, 8], DType::F32, 1, &dev), Pair::randn(&[4, 1], DType::F32, 2, &dev));
    let e = ela_cuda::with_fused_add_rms(true, || a.gpu.add_rms_norm_fwd(&b.gpu, None, 1e-5)).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { op: "add_rms_norm", .. }), "{e}");
    let c = a.gpu.to_dtype(DType::BF16)?;
    let e = a.gpu.add_rms_norm_fwd(&c, None, 1e-5).unwrap_err();
    assert!(matches!(e, Error::DTypeMismatch { op: "add_rms_norm", .. }), "{e}");
    Ok(())
}

#[test]
fn rms_and_layer_norm_forward_backward() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    for (k, &d) in FLOATS.iter().enumerate() {
        // Rows up to 2048 take the warp-per-row kernels (16-byte vectors where n allows), longer ones
        // a block per row. Whole vectors up to four per lane (n <= 1024 in 16 bits, 512 in f32, 256
        // in f64) fold the weight's gradient into the backward pass: many rows spread over more
        // blocks than one wave (3000 x 512), a partial wave (37 x 256), three vectors (700 x 768).
        let sizes = [(5usize, 8usize), (70, 33), (3, 1024), (130, 3), (9, 520), (4, 2056), (6, 4096)];
        let folded = [(3000usize, 512usize), (37, 256), (700, 768), (2100, 1024), (600, 96)];
        for (rows, n) in sizes.into_iter().chain(folded) {
            let s = 50 + k as u64 * 7 + n as u64;
            let x = Pair::randn(&[rows, n], d, s, &dev);
            let w = Pair::randn(&[n], d, s + 1, &dev);
            let b = Pair::randn(&[n], d, s + 2, &dev);
            let dy = Pair::randn(&[rows, n], d, s + 3, &dev);
            let plus = Pair::randn(&[rows, n], d, s + 4, &dev);
            let tag = format!("{rows}x{n} {d:?}");
            for with_w in [false, true] {
                let wo = |p: &Pair| if with_w { Some((p.cpu.clone(), p.gpu.clone())) } else { None };
                let wp = wo(&w);
                let (cw, gw) = (wp.as_ref().map(|p| &p.0), wp.as_ref().map(|p| &p.1));
                // RMS norm.
                let (cy, cr) = x.cpu.rms_norm_fwd(cw, 1e-5)?;
                let (gy, gr) = x.gpu.rms_norm_fwd(gw, 1e-5)?;
                check(&format!("rms y {tag} w={with_w}"), &cy, &gy);
                check(&format!("rms rstd {tag}"), &cr, &gr);
                let dev_c = Cpu;
                let (rt, at) = crate::tol(d);
                let wrap_c = |s| Tensor::from_storage(s, [rows, n], &Cpu);
                let wrap_g = |s| Tensor::from_storage(s, [rows, n], &dev);
                // With `plus` (another gradient of x, added inside the kernel) and without.
                for pl in [None, Some(&plus)] {
                    let (cdx, cdw) = ela_core::Backend::rms_norm_backward(
                        &dev_c,
                        x.cpu.contiguous()?.storage(),
                        cw.map(|w| w.storage()),
                        cr.storage(),
                        dy.cpu.storage(),
                        pl.map(|p| p.cpu.storage()),
                        rows,
                        n,
                    )?;
                    let gpu_bwd = |plus| {
                        let (w, r, g) = (gw.map(|w| w.storage()), gr.storage(), dy.gpu.storage());
                        ela_core::Backend::rms_norm_backward(&dev, x.gpu.storage(), w, r, g, plus, rows, n)
                    };
                    let (gdx, gdw) = gpu_bwd(pl.map(|p| p.gpu.storage()))?;
                    let tag = format!("{tag} plus={}", pl.is_some());
                    let (cdx, gdx) = (wrap_c(cdx), wrap_g(gdx));
                    check_tol(&format!("rms dx {tag}"), &cdx, &gdx, rt * 4.0, at * 4.0);
                    if pl.is_some() {
                        // The same as adding plus afterwards, to the rounding of dx.
                        let (alone, _) = gpu_bwd(None)?;
                        // Where dx and plus cancel, rounding dx first (the separate sum) loses
                        // what the fused sum keeps: compare against the terms' size.
                        let (a, p, f) = (wrap_g(alone).to_vec_f64()?, plus.gpu.to_vec_f64()?, gdx.to_vec_f64()?);
                        let ulp = if d == DType::F64 { 2f64.powi(-52) } else { crate::tol(d).0 };
                        for i in 0..a.len() {
                            let bound = 4.0 * ulp * (a[i].abs() + p[i].abs()) + 1e-30;
                            assert!(
                                (f[i] - (a[i] + p[i])).abs() <= bound,
                                "rms dx + plus {tag}: {i}: {} vs {} + {}",
                                f[i],
                                a[i],
                                p[i]
                            );
                        }
                    }
                    assert_eq!(cdw.is_some(), gdw.is_some());
                    if let (Some(c), Some(g)) = (cdw, gdw) {
                        let (c, g) = (Tensor::from_storage(c, n, &Cpu), Tensor::from_storage(g, n, &dev));
                        check_tol(&format!("rms dw {tag}"), &c, &g, rt * 4.0, at * 4.0);
                    }
                }
                // Layer norm, with and without bias.
                for with_b in [false, true] {
                    let bp = if with_b { Some((&b.cpu, &b.gpu)) } else { None };
                    let (cy, cm, cr) = x.cpu.layer_norm_fwd(cw, bp.map(|p| p.0), 1e-5)?;
                    let (gy, gm, gr) = x.gpu.layer_norm_fwd(gw, bp.map(|p| p.1), 1e-5)?;
                    check(&format!("ln y {tag} w={with_w} b={with_b}"), &cy, &gy);
                    check(&format!("ln mean {tag}"), &cm, &gm);
                    check(&format!("ln rstd {tag}"), &cr, &gr);
                    let c = ela_core::Backend::layer_norm_backward(
                        &dev_c,
                        x.cpu.storage(),
                        cw.map(|w| w.storage()),
                        cm.storage(),
                        cr.storage(),
                        dy.cpu.storage(),
                        rows,
                        n,
                    )?;
                    let g = ela_core::Backend::layer_norm_backward(
                        &dev,
                        x.gpu.storage(),
                        gw.map(|w| w.storage()),
                        gm.storage(),
                        gr.storage(),
                        dy.gpu.storage(),
                        rows,
                        n,
                    )?;
                    check_tol(&format!("ln dx {tag}"), &wrap_c(c.0), &wrap_g(g.0), rt * 4.0, at * 4.0);
                    for (name, cs, gs) in [("dw", c.1, g.1), ("db", c.2, g.2)] {
                        assert_eq!(cs.is_some(), gs.is_some(), "ln {name} presence");
                        if let (Some(cs), Some(gs)) = (cs, gs) {
                            let (c, g) = (Tensor::from_storage(cs, n, &Cpu), Tensor::from_storage(gs, n, &dev));
                            check_tol(&format!("ln {name} {tag}"), &c, &g, rt * 4.0, at * 4.0);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn cross_entropy_forward_backward_and_bad_targets() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    for (k, &d) in FLOATS.iter().enumerate() {
        for (rows, classes) in [(9usize, 5usize), (33, 1000), (4, 50_000)] {
            let x = Pair::randn(&[rows, classes], d, 60 + k as u64, &dev);
            let mut t = Pair::ids(&[rows], classes as u32, 61 + k as u64, &dev);
            // Some rows carry the ignore index.
            let ig = classes as u32 + 7;
            let mut tv = t.cpu.to_vec::<u32>()?;
            tv[0] = ig;
            tv[rows - 1] = ig;
            t = Pair::new(Tensor::from_vec(tv, rows, &Cpu)?, &dev);
            for ignore in [None, Some(ig)] {
                if ignore.is_none() {
                    // Without an ignore index, `ig` is an out-of-range target.
                    let err = x.gpu.cross_entropy_fwd(&t.gpu, None).unwrap_err();
                    assert!(
                        matches!(err, Error::Index { index, size, .. } if index == ig as usize && size == classes),
                        "{err}"
                    );
                    continue;
                }
                let ((cl, cs), (gl, gs)) = both!(|x, t| x.cross_entropy_fwd(t, ignore)?);
                let tag = format!("{rows}x{classes} {d:?}");
                check_tol(&format!("ce loss {tag}"), &cl, &gl, 2e-5, 2e-5);
                check_tol(&format!("ce lse {tag}"), &cs, &gs, 2e-5, 2e-5);
                let dl = Pair::randn(&[rows], cl.dtype(), 62, &dev);
                let (c, g) = (
                    x.cpu.cross_entropy_backward(&t.cpu, &cs, &dl.cpu, ignore)?,
                    x.gpu.cross_entropy_backward(&t.gpu, &gs, &dl.gpu, ignore)?,
                );
                check(&format!("ce backward {tag}"), &c, &g);
                let (c, g) = both!(|x, t| x.cross_entropy(t, ignore)?);
                check_tol(&format!("ce mean {tag}"), &c, &g, 2e-5, 2e-5);
            }
        }
    }
    Ok(())
}

#[test]
fn bias_silu_matches_the_cpu() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    // inner 400 takes the vector path in every dtype, 33 and 1 the scalar path; a strided input
    // is made contiguous first.
    for (k, &d) in FLOATS.iter().enumerate() {
        for shape in [vec![3, 16, 20, 20], vec![2, 5, 33], vec![7, 9], vec![2, 3, 0]] {
            let seed = 90 + 10 * k as u64;
            let x = Pair::randn(&shape, d, seed, &dev);
            let b = Pair::randn(&shape[1..2], d, seed + 1, &dev);
            let (rt, at) = crate::tol(d);
            let (c, gy) = both!(|x, b| x.bias_silu(b)?);
            check_tol(&format!("bias_silu {d:?} {shape:?}"), &c, &gy, rt, at);
        }
        let x = Pair::randn_strided(&[4, 6, 10], d, 5, &dev);
        let b = Pair::randn(&[6], d, 6, &dev);
        let (rt, at) = crate::tol(d);
        let (c, gy) = both!(|x, b| x.bias_silu(b)?);
        check_tol(&format!("bias_silu strided {d:?}"), &c, &gy, rt, at);
    }
    let (x, b) = (Pair::randn(&[2, 4, 3], DType::F32, 1, &dev), Pair::randn(&[3], DType::F32, 2, &dev));
    assert!(x.gpu.bias_silu(&b.gpu).is_err(), "a bias that is not [C] is an error");
    Ok(())
}

#[test]
fn swiglu_forward_backward() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    // Every float dtype; strided inputs (a transposed gate) are made contiguous first. The
    // kernels move 16-byte vectors and finish the ragged tail element by element.
    for (k, &d) in FLOATS.iter().enumerate() {
        for shape in [[5usize, 7, 33], [3, 2, 4101]] {
            let a = Pair::randn_strided(&shape, d, 60 + k as u64, &dev);
            let b = Pair::randn(&shape, d, 70 + k as u64, &dev);
            let g = Pair::randn(&shape, d, 80 + k as u64, &dev);
            let (rt, at) = crate::tol(d);
            let (c, gy) = both!(|a, b| a.swiglu(b)?);
            check_tol(&format!("swiglu {d:?} {shape:?}"), &c, &gy, rt, at);
            let ((cda, cdb), (gda, gdb)) = both!(|a, b, g| a.swiglu_backward(b, g)?);
            check_tol(&format!("swiglu da {d:?} {shape:?}"), &cda, &gda, rt, at);
            check_tol(&format!("swiglu db {d:?} {shape:?}"), &cdb, &gdb, rt, at);
        }
    }
    let (a, b) = (Pair::randn(&[4], DType::F32, 1, &dev), Pair::randn(&[5], DType::F32, 2, &dev));
    assert!(a.gpu.swiglu(&b.gpu).is_err(), "mismatched shapes are an error");
    Ok(())
}

#[test]
fn swiglu_packed_is_the_gate_of_its_halves_bit_for_bit() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let bits =
        |t: &Tensor<ela_cuda::Cuda>| -> Result<Vec<u64>> { Ok(t.to_vec_f64()?.iter().map(|v| v.to_bits()).collect()) };
    // Halves of whole 16-byte vectors in every dtype (2048: the d512 LM's; 16), of whole vectors
    // only in f32/f64 (4) and of none (33, 5); one row and many; a strided input.
    for (k, &d) in FLOATS.iter().enumerate() {
        for dims in [[7usize, 3, 2 * 16], [2, 64, 2 * 2048], [1, 5, 2 * 33], [3, 4, 2 * 4], [1, 1, 2 * 5]] {
            let h = dims[2] / 2;
            let x = Pair::randn_strided(&dims, d, 100 + k as u64 + dims[2] as u64, &dev);
            let g = Pair::randn(&[dims[0], dims[1], h], d, 200 + k as u64, &dev);
            let tag = format!("{dims:?} {d:?}");
            let (c, y) = both!(|x| x.swiglu_packed()?);
            check(&format!("swiglu_packed {tag}"), &c, &y);
            let (cdx, dx) = both!(|x, g| x.swiglu_packed_backward(g)?);
            check(&format!("swiglu_packed dx {tag}"), &cdx, &dx);
            // The two-buffer kernels on the halves give the same bits.
            let (a, b) = (x.gpu.narrow(2, 0, h)?, x.gpu.narrow(2, h, h)?);
            assert_eq!(bits(&y)?, bits(&a.swiglu(&b)?)?, "y {tag}");
            let (da, db) = a.swiglu_backward(&b, &g.gpu)?;
            assert_eq!(bits(&dx.narrow(2, 0, h)?)?, bits(&da)?, "d gate {tag}");
            assert_eq!(bits(&dx.narrow(2, h, h)?)?, bits(&db)?, "d up {tag}");
        }
    }
    let x = Pair::randn(&[3, 5], DType::F32, 1, &dev);
    assert!(matches!(x.gpu.swiglu_packed(), Err(Error::InvalidArgument { .. })), "an odd last axis is an error");
    let (x, g) = (Pair::randn(&[3, 4], DType::F32, 2, &dev), Pair::randn(&[3, 4], DType::F32, 3, &dev));
    assert!(matches!(x.gpu.swiglu_packed_backward(&g.gpu), Err(Error::ShapeMismatch { .. })), "g must be [3, 2]");
    Ok(())
}
