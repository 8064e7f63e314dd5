//! One macro that stamps out the x86_64 SIMD micro-kernels (AVX2+FMA and
//! AVX-512F, f32 and f64) so that the register-tiling logic exists once.
//!
//! A micro-kernel computes one `MR x NR` tile of C from a packed A
//! micro-panel (`MR x k`, k-major or, with `AROWS`, row by row) and a packed
//! B micro-panel (`k` rows of `NR = NV * lanes` values). The whole tile of C
//! lives in `MR * NV` vector registers for the entire k-loop; each k step
//! loads `NV` vectors of B and broadcasts `MR` scalars of A (one load each),
//! so the loop does `MR * NV` FMAs for `NV + MR` loads and no stores.

/// Generates `unsafe fn $name<const MR: usize, const NV: usize, const AROWS:
/// bool>(..)` matching [`super::KernelFn`]. See the module docs.
macro_rules! simd_kernel {
    (
        $(#[$meta:meta])*
        $name:ident, $t:ty, $v:ty, $lanes:expr, $feat:literal,
        setzero = $setzero:ident, set1 = $set1:ident, loadu = $loadu:ident,
        storeu = $storeu:ident, fmadd = $fmadd:ident, mul = $mul:ident
    ) => {
        $(#[$meta])*
        ///
        /// # Safety
        /// `a` must be readable for `k * MR` and `b` for `k * NV * lanes`
        /// elements; every `c[i * rsc + j * csc]` with `i < MR`,
        /// `j < NV * lanes` must be writable (and readable if `beta != 0`),
        /// and the CPU must support the enabled target features.
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn $name<const MR: usize, const NV: usize, const AROWS: bool>(
            k: usize,
            a: *const $t,
            b: *const $t,
            c: *mut $t,
            rsc: usize,
            csc: usize,
            alpha: $t,
            beta: $t,
        ) {
            const L: usize = $lanes;
            let nr = NV * L;
            // The strided-C path below spills one row into a 64-lane buffer.
            const { assert!(NV * L <= 64) };
            let mut acc = [[$setzero(); NV]; MR];
            let mut bp = b;
            // Prefetch the C tile now so its cache misses overlap the k-loop.
            for i in 0..MR {
                let row = c.wrapping_add(i * rsc) as *const i8;
                _mm_prefetch::<_MM_HINT_T0>(row);
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add((nr - 1) * csc * core::mem::size_of::<$t>()));
            }
            for p in 0..k {
                let mut bv = [$setzero(); NV];
                for (v, bvv) in bv.iter_mut().enumerate() {
                    *bvv = $loadu(bp.add(v * L));
                }
                for (i, row) in acc.iter_mut().enumerate() {
                    // A panel is k-major (`a[p * MR + i]`) or row-major
                    // (`a[i * k + p]`, a plain copy of row-major A).
                    let ai = $set1(*a.add(if AROWS { i * k + p } else { p * MR + i }));
                    for (accv, &bvv) in row.iter_mut().zip(bv.iter()) {
                        *accv = $fmadd(ai, bvv, *accv);
                    }
                }
                bp = bp.add(nr);
            }
            let va = $set1(alpha);
            if csc == 1 {
                // Row-contiguous C: whole vectors in and out.
                for (i, row) in acc.iter().enumerate() {
                    let cr = c.add(i * rsc);
                    for (v, &x) in row.iter().enumerate() {
                        let cp = cr.add(v * L);
                        let r = if beta == 0.0 {
                            $mul(x, va)
                        } else if beta == 1.0 {
                            $fmadd(x, va, $loadu(cp))
                        } else {
                            $fmadd(x, va, $mul($loadu(cp), $set1(beta)))
                        };
                        $storeu(cp, r);
                    }
                }
            } else {
                // Strided C: spill each row and update element by element.
                let mut tmp = [0.0 as $t; 64];
                for (i, row) in acc.iter().enumerate() {
                    for (v, &x) in row.iter().enumerate() {
                        $storeu(tmp.as_mut_ptr().add(v * L), $mul(x, va));
                    }
                    let cr = c.add(i * rsc);
                    for (j, &t) in tmp[..nr].iter().enumerate() {
                        let cp = cr.add(j * csc);
                        *cp = if beta == 0.0 { t } else { t + beta * *cp };
                    }
                }
            }
        }
    };
}

pub(crate) use simd_kernel;
