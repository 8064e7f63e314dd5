//! Checks every kernel this CPU supports, single- and multi-threaded,
//! against a naive f64 triple loop on awkward shapes and layouts.

use super::*;

/// Element types under test, with what the checks need from them.
trait TestElem: Elem + std::fmt::Debug {
    const EPS: f64;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn kernels() -> Vec<Kernel<Self>>;
}

impl TestElem for f32 {
    const EPS: f64 = f32::EPSILON as f64;
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn kernels() -> Vec<Kernel<Self>> {
        with_both_blockings(f32_kernels())
    }
}

impl TestElem for f64 {
    const EPS: f64 = f64::EPSILON;
    fn from_f64(x: f64) -> Self {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn kernels() -> Vec<Kernel<Self>> {
        with_both_blockings(f64_kernels())
    }
}

/// Every kernel with its own blocking and with small blocks (kc = 64, mc = 2 MR, nc = 4 NR),
/// so that both of the AVX-512 kernels' blocking regimes, the L2-fed and the L1-resident one,
/// and every loop of the blocking are exercised whichever CPU runs the tests.
fn with_both_blockings<T: Copy>(kernels: Vec<Kernel<T>>) -> Vec<Kernel<T>> {
    kernels.into_iter().flat_map(|k| [k, k.with_blocking(64, 2 * k.mr, 4 * k.nr)]).collect()
}

/// Deterministic xorshift values in [-1, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

/// A logical `rows x cols` matrix stored with the given strides (plus some
/// slack), padded with `pad` so stray writes are detectable.
struct Strided<T> {
    data: Vec<T>,
    rs: usize,
    cs: usize,
}

/// Layouts: row-major, column-major, both with a leading dimension larger
/// than needed; `Gapped` has no unit stride at all; `Bcast` repeats one row
/// (rs = 0).
#[derive(Clone, Copy, Debug)]
enum Layout {
    Row,
    Col,
    Gapped,
    Bcast,
}

fn make<T: TestElem>(rows: usize, cols: usize, lay: Layout, rng: &mut Rng, pad: T) -> Strided<T> {
    let (rs, cs, len) = match lay {
        Layout::Row => (cols + 3, 1, rows * (cols + 3)),
        Layout::Col => (1, rows + 2, cols * (rows + 2)),
        Layout::Gapped => (2 * cols + 1, 2, rows * (2 * cols + 1)),
        Layout::Bcast => (0, 1, cols),
    };
    let mut data = vec![pad; len.max(1)];
    for i in 0..rows {
        for j in 0..cols {
            data[i * rs + j * cs] = T::from_f64(rng.next());
        }
    }
    Strided { data, rs, cs }
}

fn at<T: TestElem>(s: &Strided<T>, i: usize, j: usize) -> f64 {
    s.data[i * s.rs + j * s.cs].to_f64()
}

/// Runs one GEMM with `kern` and compares with the naive f64 product.
#[allow(clippy::too_many_arguments)]
fn check<T: TestElem>(
    kern: &Kernel<T>,
    par_min: usize,
    (m, n, k): (usize, usize, usize),
    (la, lb, lc): (Layout, Layout, Layout),
    alpha: f64,
    beta: f64,
    seed: u64,
) {
    let mut rng = Rng(seed * 2654435761 + 1);
    let a = make::<T>(m, k, la, &mut rng, T::from_f64(f64::NAN));
    let b = make::<T>(k, n, lb, &mut rng, T::from_f64(f64::NAN));
    // beta == 0: C starts as NaN, which must be overwritten, not scaled.
    let init = if beta == 0.0 { f64::NAN } else { 7.0 };
    let mut c = make::<T>(m, n, lc, &mut rng, T::from_f64(1e30));
    if beta == 0.0 {
        for i in 0..m {
            for j in 0..n {
                c.data[i * c.rs + j * c.cs] = T::from_f64(init);
            }
        }
    }
    let c0 = c.data.clone();
    let p = Operands {
        m,
        n,
        k,
        alpha: T::from_f64(alpha),
        a: &a.data,
        rsa: a.rs,
        csa: a.cs,
        b: &b.data,
        rsb: b.rs,
        csb: b.cs,
        beta: T::from_f64(beta),
        rsc: c.rs,
        csc: c.cs,
    };
    // SAFETY: `c.data` is initialised, and the GEMM stores only initialised values into it.
    unsafe { gemm_with(kern, par_min, p, super::as_uninit(&mut c.data)) };
    let mut touched = vec![false; c.data.len()];
    for i in 0..m {
        for j in 0..n {
            let idx = i * c.rs + j * c.cs;
            touched[idx] = true;
            let (mut s, mut abs) = (0.0, 0.0);
            for p in 0..k {
                let x = at(&a, i, p) * at(&b, p, j);
                s += x;
                abs += x.abs();
            }
            let old = if beta == 0.0 { 0.0 } else { c0[idx].to_f64() };
            let want = alpha * s + beta * old;
            let tol = 4.0 * (k as f64 + 2.0) * T::EPS * (alpha.abs() * abs + (beta * old).abs()) + 1e-30;
            let got = c.data[idx].to_f64();
            assert!(
                (got - want).abs() <= tol,
                "{} m{m} n{n} k{k} {la:?}/{lb:?}/{lc:?} a{alpha} b{beta} at ({i},{j}): got {got}, want {want}",
                kern.name
            );
        }
    }
    for (idx, t) in touched.iter().enumerate() {
        if !t {
            assert_eq!(c.data[idx].to_f64().to_bits(), c0[idx].to_f64().to_bits(), "padding written");
        }
    }
}

const SHAPES: &[(usize, usize, usize)] = &[
    (0, 0, 0),
    (0, 5, 3),
    (5, 0, 3),
    (5, 3, 0),
    (1, 1, 1),
    (1, 1, 9),
    (2, 3, 4),
    (17, 31, 7),
    (13, 33, 65),
    (6, 16, 256),
    (12, 32, 257),
    (37, 65, 300),
    (100, 1, 50),
    (1, 100, 50),
    (145, 97, 33),
];

const LAYOUTS: [Layout; 2] = [Layout::Row, Layout::Col];

fn all_layouts<T: TestElem>(shape: (usize, usize, usize), alpha: f64, beta: f64, par_min: usize) {
    for kern in T::kernels() {
        for la in LAYOUTS {
            for lb in LAYOUTS {
                for lc in LAYOUTS {
                    check::<T>(&kern, par_min, shape, (la, lb, lc), alpha, beta, 1);
                }
            }
        }
    }
}

#[test]
fn small_shapes_all_layouts_f32() {
    for &s in SHAPES {
        all_layouts::<f32>(s, 1.0, 0.0, usize::MAX);
        all_layouts::<f32>(s, -1.5, 0.75, 0);
    }
}

#[test]
fn small_shapes_all_layouts_f64() {
    for &s in SHAPES {
        all_layouts::<f64>(s, 1.0, 0.0, usize::MAX);
        all_layouts::<f64>(s, 0.5, -2.0, 0);
    }
}

/// The kc blocks come in a power of two, each at most the kernel's kc and nearly equal, so the
/// split over k gives every thread of 2, 4 or 8 the same work.
#[test]
fn k_blocks_come_in_powers_of_two() {
    let blocks = |k: usize, kc: usize| k.div_ceil(block::k_block_size(k, kc));
    assert_eq!(block::k_block_size(2048, 768), 512);
    assert_eq!(block::k_block_size(768, 768), 768);
    assert_eq!(block::k_block_size(769, 768), 385);
    assert_eq!(block::k_block_size(1, 768), 1);
    assert_eq!(block::k_block_size(0, 768), 1);
    for kc in [1usize, 7, 256, 512, 768] {
        for k in (1..5000).step_by(37) {
            let size = block::k_block_size(k, kc);
            assert!(size <= kc && size >= 1, "k {k} kc {kc}: block {size}");
            let n = blocks(k, kc);
            // Rounding the block size up keeps the count exact while blocks are longer than
            // their number (every real k and kc); only tiny blocks can come out fewer.
            let want = k.div_ceil(kc).next_power_of_two();
            assert!(n == want || (size <= want && n < want), "k {k} kc {kc}: {n} blocks, {want} wanted");
            assert!(k - (n - 1) * size <= size, "k {k} kc {kc}: the last block is the longest");
        }
    }
}

#[test]
fn big_shape_crosses_all_blocks() {
    // 300 > mc, 519 > kc (uneven k split), 257 leaves partial NR panels.
    for kern in <f32 as TestElem>::kernels() {
        check::<f32>(&kern, 0, (300, 257, 519), (Layout::Row, Layout::Row, Layout::Row), 1.0, 0.0, 2);
        check::<f32>(&kern, 0, (300, 257, 519), (Layout::Col, Layout::Col, Layout::Row), 2.0, 1.0, 3);
    }
    for kern in <f64 as TestElem>::kernels() {
        check::<f64>(&kern, 0, (300, 257, 519), (Layout::Col, Layout::Row, Layout::Col), 1.0, 0.5, 4);
    }
    // n > nc so the jc loop runs more than once.
    let kern = f32_kernel();
    check::<f32>(kern, 0, (3, 4099, 5), (Layout::Row, Layout::Row, Layout::Row), 1.0, 1.0, 5);
    check::<f32>(kern, 0, (5000, 3, 5), (Layout::Row, Layout::Row, Layout::Row), 1.0, 0.0, 6);
}

#[test]
fn alpha_beta_special_values() {
    for (alpha, beta) in [(0.0, 2.0), (0.0, 0.0), (1.0, 1.0), (-1.0, 0.0), (3.0, -1.0)] {
        for &s in &[(1, 1, 1), (17, 31, 7), (64, 70, 80)] {
            for kern in f32_kernels() {
                check::<f32>(&kern, 0, s, (Layout::Row, Layout::Col, Layout::Row), alpha, beta, 7);
            }
        }
    }
}

#[test]
fn no_unit_stride() {
    for &s in &[(1, 1, 1), (17, 31, 7), (70, 40, 300)] {
        for kern in f32_kernels() {
            check::<f32>(&kern, 0, s, (Layout::Gapped, Layout::Gapped, Layout::Gapped), 1.0, 0.0, 11);
            check::<f32>(&kern, 0, s, (Layout::Gapped, Layout::Row, Layout::Gapped), -1.0, 0.5, 12);
        }
        for kern in f64_kernels() {
            check::<f64>(&kern, 0, s, (Layout::Col, Layout::Gapped, Layout::Gapped), 1.0, 2.0, 13);
        }
    }
}

#[test]
fn broadcast_strides() {
    for &s in &[(1, 1, 1), (17, 31, 7), (70, 40, 300)] {
        for kern in f32_kernels() {
            check::<f32>(&kern, 0, s, (Layout::Bcast, Layout::Row, Layout::Row), 1.0, 0.0, 8);
            check::<f32>(&kern, 0, s, (Layout::Row, Layout::Bcast, Layout::Col), 1.0, 0.5, 9);
        }
        for kern in f64_kernels() {
            check::<f64>(&kern, 0, s, (Layout::Bcast, Layout::Bcast, Layout::Row), 1.0, 0.0, 10);
        }
    }
}

#[test]
fn random_shapes() {
    let mut rng = Rng(42);
    let mut dim = |max: f64| ((rng.next() + 1.0) * 0.5 * max) as usize;
    for seed in 0..40 {
        let shape = (dim(90.0), dim(90.0), dim(90.0));
        let lay = |x: u64| if x & 1 == 0 { Layout::Row } else { Layout::Col };
        let lays = (lay(seed), lay(seed >> 1), lay(seed >> 2));
        for kern in f32_kernels() {
            check::<f32>(&kern, 0, shape, lays, 1.25, 0.5, seed);
        }
        check::<f64>(f64_kernel(), 0, shape, lays, 1.0, 0.0, seed);
    }
}

#[test]
fn public_api_and_nested_rayon() {
    let (m, n, k) = (96, 80, 70);
    let a: Vec<f32> = (0..m * k).map(|x| (x % 7) as f32 - 3.0).collect();
    let b: Vec<f32> = (0..k * n).map(|x| (x % 5) as f32 - 2.0).collect();
    let mut want = vec![0.0f32; m * n];
    gemm_f32(m, n, k, 1.0, &a, k, 1, &b, n, 1, 0.0, &mut want, n, 1);
    // Same product from inside a parallel loop (as batched matmul does).
    let outs: Vec<Vec<f32>> = (0..4)
        .into_par_iter()
        .map(|_| {
            let mut c = vec![f32::NAN; m * n];
            gemm_f32(m, n, k, 1.0, &a, k, 1, &b, n, 1, 0.0, &mut c, n, 1);
            c
        })
        .collect();
    for c in outs {
        assert_eq!(c, want);
    }
    let ad: Vec<f64> = a.iter().map(|&x| x as f64).collect();
    let bd: Vec<f64> = b.iter().map(|&x| x as f64).collect();
    let mut cd = vec![0.0f64; m * n];
    gemm_f64(m, n, k, 1.0, &ad, k, 1, &bd, n, 1, 0.0, &mut cd, n, 1);
    // Small integers: exact in both precisions.
    assert!(cd.iter().zip(&want).all(|(&x, &y)| x == y as f64));
}

#[test]
#[should_panic(expected = "A slice too short")]
fn short_slice_panics() {
    let mut c = [0.0f32; 4];
    gemm_f32(2, 2, 2, 1.0, &[1.0; 3], 2, 1, &[1.0; 4], 2, 1, 0.0, &mut c, 2, 1);
}

#[test]
fn overlap_detection() {
    assert!(no_overlap(4, 5, 5, 1));
    assert!(no_overlap(4, 1, 5, 4));
    assert!(!no_overlap(4, 1, 5, 3));
    assert!(!no_overlap(4, 0, 5, 1));
    assert!(no_overlap(1, 0, 5, 1));
    assert!(no_overlap(1, 0, 1, 0));
}

#[test]
fn cache_sizes_and_blocking_parse() {
    assert_eq!(parse_cache_size("48K"), Some(48 * 1024));
    assert_eq!(parse_cache_size("2M"), Some(2 * 1024 * 1024));
    assert_eq!(parse_cache_size("32768"), Some(32768));
    assert_eq!(parse_cache_size("K"), None);
    assert_eq!(parse_cache_size(""), None);
    assert_eq!(parse_blocking("256, 192,2048"), Some((256, 192, 2048)));
    assert_eq!(parse_blocking("256,192"), None);
    assert_eq!(parse_blocking("256,0,2048"), None);
    assert_eq!(parse_blocking("a,b,c"), None);
}

/// One product in a pool of `threads` threads (parallel threshold 0), C initialised to `c0`.
#[allow(clippy::too_many_arguments)]
fn product_in_pool<T: TestElem + Send>(
    kern: &Kernel<T>,
    threads: usize,
    (m, n, k): (usize, usize, usize),
    a: &Strided<T>,
    b: &Strided<T>,
    c0: &Strided<T>,
    beta: T,
) -> Vec<T> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let mut c = c0.data.clone();
    let p = Operands {
        m,
        n,
        k,
        alpha: T::ONE,
        a: &a.data,
        rsa: a.rs,
        csa: a.cs,
        b: &b.data,
        rsb: b.rs,
        csb: b.cs,
        beta,
        rsc: c0.rs,
        csc: c0.cs,
    };
    // SAFETY: `c` is initialised; the GEMM stores only initialised values.
    pool.install(|| unsafe { gemm_with(kern, 0, p, super::as_uninit(&mut c)) });
    c
}

/// The split over k adds the blocks' products in the serial order with the serial roundings
/// (`split_k.rs`), so its result has the same bits as one thread's, for every beta case, both
/// blockings, row- and column-major operands and both C layouts (a column-major C is solved
/// transposed, so it takes the split too).
#[test]
fn split_over_k_has_the_bits_of_one_thread() {
    fn run<T: TestElem + Send>(seed: u64) -> usize {
        let mut split = 0;
        for kern in T::kernels() {
            for &(m, n, k) in
                &[(128usize, 128usize, 2048usize), (97, 130, 1000), (64, 128, 700), (33, 250, 1200), (1, 1, 900)]
            {
                assert!(split_k::plan::<T>(&kern, 1, 1, k, 3).is_none(), "a 1 x 1 output is never split");
                split += usize::from(split_k::plan::<T>(&kern.for_rows(m), m, n, k, 3).is_some());
                for (la, lb, lc) in [(Layout::Row, Layout::Row, Layout::Row), (Layout::Col, Layout::Row, Layout::Col)] {
                    for beta in [0.0, 1.0, 0.5] {
                        let mut rng = Rng(seed + (m * n * k) as u64);
                        let a = make::<T>(m, k, la, &mut rng, T::from_f64(f64::NAN));
                        let b = make::<T>(k, n, lb, &mut rng, T::from_f64(f64::NAN));
                        let c0 = make::<T>(m, n, lc, &mut rng, T::from_f64(1e30));
                        let one = product_in_pool(&kern, 1, (m, n, k), &a, &b, &c0, T::from_f64(beta));
                        let three = product_in_pool(&kern, 3, (m, n, k), &a, &b, &c0, T::from_f64(beta));
                        let bits = |v: &[T]| v.iter().map(|x| x.to_f64().to_bits()).collect::<Vec<_>>();
                        assert!(
                            bits(&one) == bits(&three),
                            "{} {m}x{n}x{k} {la:?}/{lb:?}/{lc:?} beta {beta}: 3 threads differ from 1",
                            kern.name
                        );
                    }
                }
            }
        }
        split
    }
    // The split is taken in some of the cases (which ones depends on the blocking).
    let (f32_splits, f64_splits) = (run::<f32>(1), run::<f64>(2));
    assert!(f32_splits >= 3 && f64_splits >= 3, "split {f32_splits} and {f64_splits} times");
}

/// The taller tile is taken where it pads less and gives the same bits as the shorter one
/// (row tiles do not change how an element is summed); where a CPU has no taller variant the
/// check is skipped.
#[test]
fn taller_tiles_where_they_pad_less_with_the_same_bits() {
    fn run<T: TestElem + Send>() {
        for kern in T::kernels().into_iter().filter(|k| k.tall.is_some()) {
            let tall = kern.tall.unwrap().mr;
            assert_eq!(kern.for_rows(32).mr, tall);
            assert_eq!(kern.for_rows(64).mr, tall);
            assert_eq!(kern.for_rows(2048).mr, kern.mr, "0.2% less padding is not worth a switch");
            assert_eq!(kern.for_rows(12).mr, kern.mr);
            assert_eq!(kern.for_rows(1).mr, kern.mr);
            let short = Kernel { tall: None, ..kern };
            for &(m, n, k) in &[(32usize, 64usize, 32usize), (64, 32, 128), (16, 100, 7), (40, 33, 300)] {
                for (la, lb, lc) in [(Layout::Row, Layout::Row, Layout::Row), (Layout::Col, Layout::Col, Layout::Row)] {
                    for beta in [0.0, 0.5] {
                        let mut rng = Rng((m * 1000 + n * 10 + k) as u64);
                        let a = make::<T>(m, k, la, &mut rng, T::from_f64(f64::NAN));
                        let b = make::<T>(k, n, lb, &mut rng, T::from_f64(f64::NAN));
                        let c0 = make::<T>(m, n, lc, &mut rng, T::from_f64(1e30));
                        let bits = |v: &[T]| v.iter().map(|x| x.to_f64().to_bits()).collect::<Vec<_>>();
                        let with_tall = product_in_pool(&kern, 1, (m, n, k), &a, &b, &c0, T::from_f64(beta));
                        let without = product_in_pool(&short, 1, (m, n, k), &a, &b, &c0, T::from_f64(beta));
                        assert!(bits(&with_tall) == bits(&without), "{} {m}x{n}x{k} beta {beta}", kern.name);
                    }
                }
            }
        }
    }
    run::<f32>();
    run::<f64>();
}
