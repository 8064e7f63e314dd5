//! Checks of the Hopper warpgroup tile products (`kernels/ela/wgmma.cuh`) on the GPU: the
//! descriptors, the 128-byte-swizzled shared-memory layouts and the accumulator layout, for
//! every operand orientation and the sizes the chunk kernels would use. The products are not
//! used by the ELA kernels yet (cuda/README.md, "Warpgroup products"); test-only.

use ela_core::{DType, Result};

use crate::device::{Arg, Cfg};
use crate::kernels::KernelFile;
use crate::Cuda;

/// `out = a b` by the check kernel for `a [64][k]`, `b [k][n]` (bf16 bits, row-major),
/// staged with A M-major (`ta`) or K-major and B N-major (`tb`) or K-major.
/// With `split` > 1 the kernel computes the columns as `split` products of `n / split` each,
/// their B read from inside the tile.
fn product(
    dev: &Cuda,
    a: &[u16],
    b: &[u16],
    (n, k, split): (usize, usize, usize),
    ta: bool,
    tb: bool,
) -> Result<Vec<f32>> {
    let (da, db) = (dev.upload(a, DType::BF16)?, dev.upload(b, DType::BF16)?);
    let out = dev.zeros(DType::F32, 64 * n)?;
    let name = format!("wgmma_check_n{n}_k{k}_a{}_b{}_s{split}", ta as u8, tb as u8);
    // Both tiles (B N-major in panels of 64 columns), and 1024 bytes to align them to an atom.
    let smem = ((64 + n.max(64)) * k * 2 + 1024) as u32;
    let cfg = Cfg { grid: 1, grid_y: 1, block: 128 };
    let args = [Arg::Ptr(out.ptr()), Arg::Ptr(da.ptr()), Arg::Ptr(db.ptr())];
    dev.launch_smem(KernelFile::WgmmaCheck, &name, cfg, smem, &args)?;
    let mut host = vec![0f32; 64 * n];
    dev.download(out.ptr(), &mut host)?;
    Ok(host)
}

/// Multiples of 1/8 in [-4, 4), as bf16 bits: exact in bf16, their products exact in f32,
/// and sums of up to 128 of them too, so the GPU's result must equal the reference exactly
/// (any misplaced element shows).
fn values(len: usize, seed: u64) -> (Vec<u16>, Vec<f64>) {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let v = ((s >> 33) % 64) as f32 / 8.0 - 4.0;
            ((v.to_bits() >> 16) as u16, v as f64)
        })
        .unzip()
}

#[test]
fn warpgroup_products_match_the_cpu_exactly() {
    let Some(dev) = crate::testing::device_or_skip() else { return };
    if dev.compute_capability() != (9, 0) {
        // wgmma is Hopper's alone (sm_90a): neither older nor newer GPUs have it.
        let cc = dev.compute_capability();
        return crate::testing::skip("no Hopper GPU", &format!("compute capability {cc:?}"));
    }
    // (n, k, split): one and two panels of K, one and two of N, B read from inside a tile.
    let sizes =
        [(32, 64, 1), (64, 64, 1), (128, 64, 1), (32, 128, 1), (64, 128, 1), (128, 128, 1), (64, 64, 2), (128, 128, 2)];
    let mut failures = Vec::new();
    for (n, k, split) in sizes {
        let (a, af) = values(64 * k, (n * k) as u64);
        let (b, bf) = values(k * n, (n * k + 1) as u64);
        let want: Vec<f64> =
            (0..64 * n).map(|e| (0..k).map(|j| af[(e / n) * k + j] * bf[j * n + e % n]).sum()).collect();
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let got = product(&dev, &a, &b, (n, k, split), ta, tb).expect("launch");
            let bad: Vec<usize> = (0..64 * n).filter(|&e| got[e] as f64 != want[e]).collect();
            if let Some(&e) = bad.first() {
                failures.push(format!(
                    "n {n} k {k} split {split} A {} B {}: {} of {} entries differ, first at (row {}, col {}): {} against {}",
                    if ta { "M-major" } else { "K-major" },
                    if tb { "N-major" } else { "K-major" },
                    bad.len(),
                    64 * n,
                    e / n,
                    e % n,
                    got[e],
                    want[e]
                ));
            }
        }
    }
    // Every case is run before failing, so that one run shows which layouts are wrong.
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
