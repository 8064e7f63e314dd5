//! index_select / index_add, gather / scatter_add, embedding, concat and pad.

use ela_core::{DType, Result, Shape, Tensor};

use crate::{both, check, check_tol, gpu, Pair, ALL, FLOATS};

#[test]
fn index_select_and_gather_copy_every_dtype_exactly() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    for (k, &d) in ALL.iter().enumerate() {
        let x = Pair::uniform(&[4, 6, 5], 0.0, 100.0, d, 70 + k as u64, &dev);
        let xs = Pair { cpu: x.cpu.permute(&[1, 0, 2])?, gpu: x.gpu.permute(&[1, 0, 2])? };
        for axis in 0..3 {
            let len = xs.cpu.dims()[axis] as u32;
            let ids = Pair::ids(&[7], len, 71 + axis as u64, &dev);
            let (c, g) = both!(|xs, ids| xs.index_select(ids, axis)?);
            check_tol(&format!("index_select axis {axis} {d:?}"), &c, &g, 0.0, 0.0);
            let mut gshape = xs.cpu.dims().to_vec();
            gshape[axis] = 3;
            let gi = Pair::ids(&gshape, len, 72 + axis as u64, &dev);
            let (c, g) = both!(|xs, gi| xs.gather(gi, axis)?);
            check_tol(&format!("gather axis {axis} {d:?}"), &c, &g, 0.0, 0.0);
        }
    }
    // Embedding lookups of a [vocab, dim] table with a 2-D id tensor.
    let table = Pair::randn(&[50, 16], DType::F32, 73, &dev);
    let ids = Pair::ids(&[3, 9], 50, 74, &dev);
    let (c, g) = both!(|table, ids| table.embedding(ids)?);
    check("embedding", &c, &g);
    Ok(())
}

#[test]
fn index_add_and_scatter_add_accumulate_repeated_indices() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    for (k, &d) in FLOATS.iter().enumerate() {
        for axis in 0..3 {
            let mut out = vec![5usize, 3, 4];
            let src_shape = {
                let mut s = out.clone();
                s[axis] = 9; // more slices than the output has: indices repeat
                s
            };
            let src = Pair::randn(&src_shape, d, 80 + k as u64, &dev);
            let ids = Pair::ids(&[9], out[axis] as u32, 81 + axis as u64, &dev);
            let os = Shape::from(out.clone());
            // The GPU adds f16/bf16 in f32 and rounds once (the CPU rounds after every add), so
            // the reference is the f64 result rounded to the dtype.
            let wide = |p: &Pair| Pair { cpu: p.cpu.to_dtype(DType::F64).unwrap(), gpu: p.gpu.clone() };
            let (srcw, (rt, at)) = (wide(&src), crate::tol(d));
            let c = srcw.cpu.index_add(&ids.cpu, axis, &os)?.to_dtype(d)?;
            let g = src.gpu.index_add(&ids.gpu, axis, &os)?;
            check_tol(&format!("index_add axis {axis} {d:?}"), &c, &g, rt * 2.0, at * 2.0);
            // scatter_add onto a strided base.
            out[axis] = 4;
            let base = Pair::randn_strided(&out, d, 82, &dev);
            let mut sshape = out.clone();
            sshape[axis] = 6;
            let ids = Pair::ids(&sshape, 4, 83 + axis as u64, &dev);
            let src = Pair::randn(&sshape, d, 84, &dev);
            let (bw, sw) = (wide(&base), wide(&src));
            let c = bw.cpu.scatter_add(&ids.cpu, &sw.cpu, axis)?.to_dtype(d)?;
            let g = base.gpu.scatter_add(&ids.gpu, &src.gpu, axis)?;
            check_tol(&format!("scatter_add axis {axis} {d:?}"), &c, &g, rt * 2.0, at * 2.0);
        }
    }
    // u32 counts (a histogram through scatter_add): exact.
    let base = Pair::new(Tensor::zeros([1, 10], DType::U32, &ela_core::Cpu)?, &dev);
    let ids = Pair::ids(&[1, 500], 10, 85, &dev);
    let ones = Pair::new(Tensor::ones([1, 500], DType::U32, &ela_core::Cpu)?, &dev);
    let (c, g) = both!(|base, ids, ones| base.scatter_add(ids, ones, 1usize)?);
    check_tol("u32 scatter_add histogram", &c, &g, 0.0, 0.0);
    Ok(())
}

#[test]
fn concat_and_pad_of_mixed_views() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    for (k, &d) in ALL.iter().enumerate() {
        let a = Pair::uniform(&[3, 4, 5], 0.0, 50.0, d, 90 + k as u64, &dev);
        let b = Pair::uniform(&[3, 5, 4], 0.0, 50.0, d, 91 + k as u64, &dev);
        let b = Pair { cpu: b.cpu.transpose(1, 2)?, gpu: b.gpu.transpose(1, 2)? };
        for axis in 0..3 {
            let (c, g) = both!(|a, b| Tensor::concat(&[a, b, a], axis)?);
            check_tol(&format!("concat axis {axis} {d:?}"), &c, &g, 0.0, 0.0);
        }
        let pads = [(1, 0), (0, 2), (3, 1)];
        let (c, g) = both!(|b| b.pad(&pads, 7.0)?);
        check_tol(&format!("pad {d:?}"), &c, &g, 0.0, 0.0);
        let (c, g) = both!(|a| Tensor::stack(&[a, a], 1usize)?);
        check_tol(&format!("stack {d:?}"), &c, &g, 0.0, 0.0);
    }
    Ok(())
}
