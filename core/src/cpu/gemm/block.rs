//! The serial Goto/BLIS blocking loops (module docs of `gemm` describe the
//! loop nest) and the per-thread pack buffers they use.

use std::cell::RefCell;

use super::{pack, Elem, Kernel, KernelFn};

/// Largest `MR * NR` of any micro-kernel (size of the edge-tile buffer).
pub(crate) const MAX_TILE: usize = 256;

/// 64-byte block so pack buffers start on a cache line (and zmm boundary).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Growable, 64-byte-aligned scratch buffer reused across calls.
#[derive(Default)]
struct PackBuf(Vec<Line>);

impl PackBuf {
    /// Pointer to at least `len` elements of `T` (contents unspecified).
    fn get<T: Elem>(&mut self, len: usize) -> *mut T {
        let lines = (len * size_of::<T>()).div_ceil(64);
        if self.0.len() < lines {
            self.0.resize(lines, Line([0; 64]));
        }
        self.0.as_mut_ptr().cast()
    }
}

thread_local! {
    /// Per-thread A and B pack buffers, kept so calls don't re-allocate.
    static PACK: RefCell<(PackBuf, PackBuf)> = RefCell::default();
}

/// Splits `total` into blocks of at most `max` (rounded up to a multiple of
/// `unit`) of nearly equal size, so k = 257 doesn't become 256 + 1.
pub(super) fn block_size(total: usize, max: usize, unit: usize) -> usize {
    let blocks = total.div_ceil(max);
    total.div_ceil(blocks).div_ceil(unit) * unit
}

/// The depth of the kc blocks for a product over `k`: like [`block_size`], but with a power of
/// two of blocks (k = 2048 at a 768 limit: 4 x 512, not 3 x 683). Weight gradients are split
/// over these blocks (`split_k.rs`), one block per task, and 3 blocks on 2 threads leave one
/// thread idle for a third of the product (`128 x 2048 @ 2048 x 128` on the 2-core Zen 4:
/// 146 GFLOP/s with 3 blocks, 198-206 at 1536 and 3072, which split evenly). A power of two
/// divides evenly among 1, 2, 4 or 8 threads. The serial loop takes the same blocks, so a
/// product has the same bits however many threads compute it.
pub(super) fn k_block_size(k: usize, max: usize) -> usize {
    let blocks = k.div_ceil(max.max(1)).max(1).next_power_of_two();
    k.div_ceil(blocks).max(1)
}

/// Single-threaded blocked GEMM over raw pointers (see module docs).
///
/// # Safety
/// All `m x k`, `k x n`, `m x n` strided elements must be in bounds; C must
/// not be accessed concurrently in the same elements.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn serial<T: Elem>(
    kern: &Kernel<T>,
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: *const T,
    rsa: usize,
    csa: usize,
    b: *const T,
    rsb: usize,
    csb: usize,
    beta: T,
    c: *mut T,
    rsc: usize,
    csc: usize,
) {
    let (mr, nr) = (kern.mr, kern.nr);
    let kc = k_block_size(k, kern.kc);
    let mc = block_size(m, kern.mc, mr);
    let nc = block_size(n, kern.nc, nr);
    // Row-contiguous A packs as plain row copies (see `pack_a_rows`).
    let a_rows = csa == 1;
    let run = |bufs: &mut (PackBuf, PackBuf)| {
        let abuf = bufs.0.get::<T>(mc * kc);
        let bbuf = bufs.1.get::<T>(nc * kc);
        for jc in (0..n).step_by(nc) {
            let nb = nc.min(n - jc);
            for pc in (0..k).step_by(kc) {
                let kb = kc.min(k - pc);
                let beta = if pc == 0 { beta } else { T::ONE };
                // SAFETY: (pc, jc) and (ic, pc) are in-bounds origins of the
                // sub-blocks; buffers hold mc*kc and nc*kc elements.
                unsafe {
                    pack::pack(nr, nb, kb, b.add(pc * rsb + jc * csb), csb, rsb, bbuf);
                    for ic in (0..m).step_by(mc) {
                        let mb = mc.min(m - ic);
                        let a0 = a.add(ic * rsa + pc * csa);
                        let c0 = c.add(ic * rsc + jc * csc);
                        if a_rows && rsa == kb {
                            // Rows exactly `kb` long, one after another: A already is the
                            // row-layout pack of its full panels (`pack_a_rows` would copy it
                            // unchanged), so the kernel reads it in place. Only a last partial
                            // panel is copied, zero-padded to MR rows. Same kernel, same order
                            // of operations: the result is bit-identical to packing.
                            let full = mb / mr * mr;
                            if full > 0 {
                                macro_kernel(kern.func_rows, mr, nr, full, nb, kb, a0, bbuf, c0, rsc, csc, alpha, beta);
                            }
                            if full < mb {
                                pack::pack_a_rows(mr, mb - full, kb, a0.add(full * rsa), rsa, abuf);
                                let c1 = c0.add(full * rsc);
                                macro_kernel(
                                    kern.func_rows,
                                    mr,
                                    nr,
                                    mb - full,
                                    nb,
                                    kb,
                                    abuf,
                                    bbuf,
                                    c1,
                                    rsc,
                                    csc,
                                    alpha,
                                    beta,
                                );
                            }
                            continue;
                        }
                        let func = if a_rows {
                            pack::pack_a_rows(mr, mb, kb, a0, rsa, abuf);
                            kern.func_rows
                        } else {
                            pack::pack(mr, mb, kb, a0, rsa, csa, abuf);
                            kern.func
                        };
                        macro_kernel(func, mr, nr, mb, nb, kb, abuf, bbuf, c0, rsc, csc, alpha, beta);
                    }
                }
            }
        }
    };
    PACK.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => run(&mut bufs),
        // Re-entered on this thread (e.g. rayon work-stealing): use fresh buffers.
        Err(_) => run(&mut Default::default()),
    });
}

/// Runs the micro-kernel over every `MR x NR` tile of an `mb x nb` block.
/// Edge tiles go through a register-sized scratch tile, then are merged.
///
/// # Safety
/// `abuf`/`bbuf` hold packed panels for `mb`/`nb` lanes and `kb` steps; the
/// `mb x nb` block of C at `c` is valid.
#[allow(clippy::too_many_arguments)]
unsafe fn macro_kernel<T: Elem>(
    func: KernelFn<T>,
    mr: usize,
    nr: usize,
    mb: usize,
    nb: usize,
    kb: usize,
    abuf: *const T,
    bbuf: *const T,
    c: *mut T,
    rsc: usize,
    csc: usize,
    alpha: T,
    beta: T,
) {
    assert!(mr * nr <= MAX_TILE, "micro-tile larger than the edge buffer");
    let mut tmp = [T::ZERO; MAX_TILE];
    for jr in (0..nb).step_by(nr) {
        let nn = nr.min(nb - jr);
        // SAFETY: panel offsets are within the packed buffers; tile origins
        // are inside the C block; partial tiles only touch mm x nn of C.
        unsafe {
            let bp = bbuf.add(jr * kb);
            for ir in (0..mb).step_by(mr) {
                let mm = mr.min(mb - ir);
                let ap = abuf.add(ir * kb);
                let ct = c.add(ir * rsc + jr * csc);
                if mm == mr && nn == nr {
                    func(kb, ap, bp, ct, rsc, csc, alpha, beta);
                } else {
                    func(kb, ap, bp, tmp.as_mut_ptr(), nr, 1, alpha, T::ZERO);
                    for i in 0..mm {
                        for j in 0..nn {
                            let cp = ct.add(i * rsc + j * csc);
                            let t = tmp[i * nr + j];
                            *cp = if beta == T::ZERO { t } else { t + beta * *cp };
                        }
                    }
                }
            }
        }
    }
}
