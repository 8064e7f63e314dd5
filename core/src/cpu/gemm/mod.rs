//! Cache-blocked, multi-threaded CPU matrix multiply (GEMM) for f32 / f64.
//!
//! Goto/BLIS structure, outermost to innermost:
//!
//! 1. `jc` loop over `nc`-wide column blocks of B and C;
//! 2. `pc` loop over `kc`-deep slices of k: pack the `kc x nc` block of B
//!    into `NR`-wide micro-panels (lives in L3 / the far end of L2);
//! 3. `ic` loop over `mc`-tall row blocks: pack the `mc x kc` block of A
//!    into `MR`-tall micro-panels (sized to stay in the 1 MiB L2); a
//!    row-major A whose rows are exactly one `kc` block long already has the
//!    row-panel layout and is read in place (`block.rs`);
//! 4. macro-kernel: `jr` over B micro-panels (one `kc x NR` panel is reused
//!    for every A micro-panel, so it stays hot in L1/L2), `ir` over A
//!    micro-panels streamed from L2;
//! 5. micro-kernel: an `MR x NR` tile of C held entirely in registers.
//!
//! Work is split across rayon threads by the larger of m and n, each thread
//! running the serial algorithm (`block.rs`) on its strip with its own
//! thread-local, 64-byte-aligned pack buffers (reused across calls). Small,
//! deep products (weight gradients) are split over the kc blocks instead and
//! summed in block order, with the serial result's bits (`split_k.rs`).
//!
//! Files: `mod.rs` API, kernel tables + CPU dispatch, parallel split;
//! `block.rs` blocking loops; `split_k.rs` the split over k; `pack.rs`
//! packing; `kernel_*.rs` micro-kernels.

use std::mem::MaybeUninit;
use std::ops::{Add, Mul};
use std::sync::OnceLock;

use rayon::prelude::*;

mod block;
#[cfg(target_arch = "x86_64")]
mod kernel_avx2;
#[cfg(target_arch = "x86_64")]
mod kernel_avx512;
mod kernel_generic;
#[cfg(target_arch = "x86_64")]
mod kernel_simd;
mod pack;
mod split_k;
#[cfg(test)]
mod tests;

/// Problems below this many flops (2mnk) run on the calling thread: the
/// fork/join overhead (~µs) would exceed the work of a 64^3 product.
const PAR_MIN_FLOPS: usize = 2 * 64 * 64 * 64;

/// Scalar types the GEMM driver is generic over.
pub(crate) trait Elem:
    Copy + Send + Sync + PartialEq + Add<Output = Self> + Mul<Output = Self> + 'static
{
    const ZERO: Self;
    const ONE: Self;
    /// The best micro-kernel of this CPU for the type.
    fn kernel() -> &'static Kernel<Self>;
    /// Packs one full micro-panel of width `w` from lanes of `kb` contiguous values
    /// (`src[l * s_lane + p]` to `dst[p * w + l]`) with vector transposes, if this type and CPU
    /// have them; `false`, with nothing written, leaves it to the scalar copy.
    ///
    /// # Safety
    /// As `pack::pack_transposed_f32`.
    unsafe fn pack_transposed(_w: usize, _kb: usize, _src: *const Self, _s_lane: usize, _dst: *mut Self) -> bool {
        false
    }
}

impl Elem for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn kernel() -> &'static Kernel<f32> {
        f32_kernel()
    }
    unsafe fn pack_transposed(w: usize, kb: usize, src: *const f32, s_lane: usize, dst: *mut f32) -> bool {
        // SAFETY: the caller's contract.
        unsafe { pack::pack_transposed_f32(w, kb, src, s_lane, dst) }
    }
}

impl Elem for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn kernel() -> &'static Kernel<f64> {
        f64_kernel()
    }
}

/// Micro-kernel: `(k, packed_a, packed_b, c, rsc, csc, alpha, beta)` computes
/// `C[0..MR, 0..NR] = alpha * A_panel @ B_panel + beta * C` (C not read when
/// `beta == 0`).
pub(crate) type KernelFn<T> = unsafe fn(usize, *const T, *const T, *mut T, usize, usize, T, T);

/// A micro-kernel together with the blocking parameters tuned for it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Kernel<T> {
    pub name: &'static str,
    pub mr: usize,
    pub nr: usize,
    pub kc: usize,
    pub mc: usize,
    pub nc: usize,
    /// Kernel reading k-major A panels (`a[p * MR + i]`).
    pub func: KernelFn<T>,
    /// Same kernel reading row-layout A panels (`a[i * k + p]`), used when A
    /// is row-contiguous so packing A is a memcpy per row.
    pub func_rows: KernelFn<T>,
    /// A variant of the same kernel with more rows per tile, for row counts it tiles with
    /// less padding (see [`Kernel::for_rows`]).
    pub tall: Option<Tall<T>>,
}

/// The taller variant of a micro-kernel: `mr` rows, same width, same blocking otherwise.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tall<T> {
    pub mr: usize,
    pub func: KernelFn<T>,
    pub func_rows: KernelFn<T>,
}

/// Builds a [`Kernel`] from a const-generic micro-kernel and its blocking.
macro_rules! kernel {
    ($name:expr, $($f:ident)::+, [$($g:tt)*], mr = $mr:expr, nr = $nr:expr,
     kc = $kc:expr, mc = $mc:expr, nc = $nc:expr) => {{
        // The edge-tile scratch buffer in `macro_kernel` must hold a tile.
        const _: () = assert!($mr * $nr <= block::MAX_TILE);
        Kernel {
            name: $name,
            mr: $mr,
            nr: $nr,
            kc: $kc,
            mc: $mc,
            nc: $nc,
            func: $($f)::+::<$($g)*, false>,
            func_rows: $($f)::+::<$($g)*, true>,
            tall: None,
        }
    }};
}

/// Builds a [`Tall`] variant from a const-generic micro-kernel.
macro_rules! tall {
    ($($f:ident)::+, [$($g:tt)*], mr = $mr:expr) => {{
        Tall { mr: $mr, func: $($f)::+::<$($g)*, false>, func_rows: $($f)::+::<$($g)*, true> }
    }};
}

// Blocking of the AVX-512 kernels, two regimes, each measured on its machine:
//
// - Zen 4 (32 KiB L1d, 1 MiB L2, 32 MiB L3; a 512-bit FMA runs as two 256-bit halves): the
//   k-loop is fed from L2. Zen 4's L2 easily streams the ~13 B/cycle a 6-row kernel needs, so
//   kc is sized to amortise the C-tile load/store (once per kc steps) rather than to fit a B
//   micro-panel in L1. kc = 768 (split evenly, e.g. k = 1024 -> 2 x 512): a 6 x kc A panel is
//   18 KiB, the mc x kc A block (96 x 768 x 4 B = 288 KiB) stays in L2, and the kc x nc B
//   panel (6 MiB per thread) in L3. 6x32 beat 8x32, 12x32, 14x32, 8x48 and tied 6x64 while
//   wasting less on ragged n.
// - Cores with a 48 KiB or larger L1d (Intel Golden Cove server cores: 2 MiB L2 and two
//   full-width 512-bit FMA pipes, so twice Zen 4's flops per cycle and twice the operand
//   bandwidth needed): kc = 256 keeps the 256 x 32 B micro-panel (32 KiB) in L1 while every A
//   micro-panel streams past it, and mc = 192 (a 192 KiB A block) uses the larger L2.
//   Interleaved runs on such a core (`cargo bench -p ela-core --bench gemm`, 2 threads): 1024^3
//   270 against 216 GFLOP/s (median of 4 pairs), 512^3 334 / 301, the LM's weight gradient
//   128 x 2048 @ 2048 x 128 287 / 267 (docs/benchmarks.md, "CPU GEMM").

/// The L1-resident blocking pays off on cores with at least this much L1 data cache.
const L1_RESIDENT_MIN_L1D: usize = 48 * 1024;

/// Size of the first core's level-1 data cache, from Linux's sysfs (`None` elsewhere or when it
/// cannot be read: the L2-fed blocking is kept then).
fn l1d_bytes() -> Option<usize> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    dir.flatten().find_map(|entry| {
        let read = |name: &str| std::fs::read_to_string(entry.path().join(name)).ok();
        let is_l1d = read("level")?.trim() == "1" && read("type")?.trim() == "Data";
        is_l1d.then(|| parse_cache_size(read("size")?.trim())).flatten()
    })
}

/// `"48K"` -> 49152 (sysfs writes sizes with a `K` or `M` suffix, or plain bytes).
fn parse_cache_size(s: &str) -> Option<usize> {
    let (digits, unit) = match s.as_bytes().last()? {
        b'K' => (&s[..s.len() - 1], 1024),
        b'M' => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    digits.parse::<usize>().ok().map(|n| n * unit)
}

/// Whether this CPU takes the L1-resident AVX-512 blocking (see above).
fn l1_resident() -> bool {
    l1d_bytes().is_some_and(|b| b >= L1_RESIDENT_MIN_L1D)
}

impl<T: Copy> Kernel<T> {
    /// The kernel to multiply `m` rows with: the taller variant when it pads `m` by at least
    /// 2% fewer rows (m = 32: 36 rows in 6-row tiles, 32 in 8-row ones), else this one. The
    /// padded rows of an edge tile are computed and thrown away, and the edge tile goes through
    /// a scratch tile merged element by element, which dominates small products such as the
    /// 32 x 64 blocks of the ELA kernels. The row count of a tile does not change how any
    /// element is summed, so the result is the same either way.
    pub(crate) fn for_rows(&self, m: usize) -> Kernel<T> {
        let pad = |mr: usize| m.next_multiple_of(mr) - m;
        match self.tall {
            Some(t) if 50 * (pad(self.mr) - pad(t.mr).min(pad(self.mr))) >= m => {
                Kernel { mr: t.mr, func: t.func, func_rows: t.func_rows, ..*self }
            }
            _ => *self,
        }
    }
}

impl<T> Kernel<T> {
    /// The same micro-kernel with other blocking parameters (clamped to at least one tile).
    pub(crate) fn with_blocking(mut self, kc: usize, mc: usize, nc: usize) -> Self {
        self.kc = kc.max(1);
        self.mc = mc.max(self.mr);
        self.nc = nc.max(self.nr);
        self
    }
}

/// All f32 kernels this CPU can run, fastest first.
pub(crate) fn f32_kernels() -> Vec<Kernel<f32>> {
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // 12 zmm accumulators; ~3% faster than AVX2 6x16 on Zen 4.
            let mut k =
                kernel!("avx512", kernel_avx512::kernel_f32, [6, 2], mr = 6, nr = 32, kc = 768, mc = 96, nc = 2048);
            k.tall = Some(tall!(kernel_avx512::kernel_f32, [8, 2], mr = 8));
            v.push(if l1_resident() { k.with_blocking(256, 192, 2048) } else { k });
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            v.push(kernel!("avx2", kernel_avx2::kernel_f32, [6, 2], mr = 6, nr = 16, kc = 512, mc = 72, nc = 2048));
        }
    }
    v.push(kernel!("generic", kernel_generic::kernel, [f32, 4, 8], mr = 4, nr = 8, kc = 256, mc = 64, nc = 2048));
    v
}

/// All f64 kernels this CPU can run, fastest first (same shapes in bytes
/// as the f32 ones, half the lanes).
pub(crate) fn f64_kernels() -> Vec<Kernel<f64>> {
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // The same bytes per panel as the f32 kernel: 16 f64 lanes of 8 bytes.
            let mut k =
                kernel!("avx512", kernel_avx512::kernel_f64, [6, 2], mr = 6, nr = 16, kc = 512, mc = 96, nc = 1024);
            k.tall = Some(tall!(kernel_avx512::kernel_f64, [8, 2], mr = 8));
            v.push(if l1_resident() { k.with_blocking(256, 192, 1024) } else { k });
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            v.push(kernel!("avx2", kernel_avx2::kernel_f64, [6, 2], mr = 6, nr = 8, kc = 512, mc = 72, nc = 1024));
        }
    }
    v.push(kernel!("generic", kernel_generic::kernel, [f64, 4, 4], mr = 4, nr = 4, kc = 256, mc = 64, nc = 1024));
    v
}

/// Picks the first (fastest) kernel, unless `ELA_GEMM_KERNEL` names another
/// supported one (`avx512`, `avx2`, `generic`) — for benchmarking/debugging.
/// `ELA_GEMM_TALL=0` turns its taller tile off ([`Kernel::for_rows`]), and
/// `ELA_GEMM_BLOCKING=kc,mc,nc` overrides its blocking, for tuning on a new
/// CPU (a malformed value is reported on stderr and ignored).
fn select<T>(all: Vec<Kernel<T>>) -> Kernel<T> {
    let want = std::env::var("ELA_GEMM_KERNEL").ok();
    let pos = want.and_then(|w| all.iter().position(|k| k.name == w)).unwrap_or(0);
    let mut k = all.into_iter().nth(pos).expect("generic kernel always present");
    if std::env::var("ELA_GEMM_TALL").is_ok_and(|v| v == "0") {
        k.tall = None;
    }
    match std::env::var("ELA_GEMM_BLOCKING") {
        Ok(b) => match parse_blocking(&b) {
            Some((kc, mc, nc)) => k.with_blocking(kc, mc, nc),
            None => {
                eprintln!("warning: ELA_GEMM_BLOCKING={b:?} is not `kc,mc,nc` (three positive integers); ignored");
                k
            }
        },
        Err(_) => k,
    }
}

/// `"256,192,2048"` -> `(256, 192, 2048)`.
fn parse_blocking(s: &str) -> Option<(usize, usize, usize)> {
    let v: Vec<usize> = s.split(',').map(|x| x.trim().parse().ok().filter(|&n| n > 0)).collect::<Option<_>>()?;
    match v[..] {
        [kc, mc, nc] => Some((kc, mc, nc)),
        _ => None,
    }
}

fn f32_kernel() -> &'static Kernel<f32> {
    static K: OnceLock<Kernel<f32>> = OnceLock::new();
    K.get_or_init(|| select(f32_kernels()))
}

fn f64_kernel() -> &'static Kernel<f64> {
    static K: OnceLock<Kernel<f64>> = OnceLock::new();
    K.get_or_init(|| select(f64_kernels()))
}

/// Name of the f32 micro-kernel chosen for this CPU (`"avx512"`, `"avx2"`
/// or `"generic"`), e.g. for benchmark reports.
pub fn gemm_kernel_name() -> &'static str {
    f32_kernel().name
}

/// C = alpha * A @ B + beta * C for row-major-or-any-strided matrices.
/// A is m x k at a[i*rsa + p*csa], B is k x n at b[p*rsb + j*csb], C is m x n at c[i*rsc + j*csc].
/// beta == 0 means C is write-only (never read, so NaN garbage in C is overwritten).
///
/// Strides are in elements; 0 (broadcast) is allowed for A and B. As in BLAS,
/// `alpha == 0` or `k == 0` leaves A and B unread and gives `C = beta * C`.
///
/// # Panics
/// If an operand slice is too short for its shape and strides (an O(1)
/// check per call that makes the unsafe inner loops sound).
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    rsa: usize,
    csa: usize,
    b: &[f32],
    rsb: usize,
    csb: usize,
    beta: f32,
    c: &mut [f32],
    rsc: usize,
    csc: usize,
) {
    let p = Operands { m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, rsc, csc };
    // SAFETY: `c` is initialised, and the GEMM stores only initialised values into it.
    unsafe { gemm_with(f32_kernel(), PAR_MIN_FLOPS, p, as_uninit(c)) };
}

/// f64 version of [`gemm_f32`], same semantics.
#[allow(clippy::too_many_arguments)]
pub fn gemm_f64(
    m: usize,
    n: usize,
    k: usize,
    alpha: f64,
    a: &[f64],
    rsa: usize,
    csa: usize,
    b: &[f64],
    rsb: usize,
    csb: usize,
    beta: f64,
    c: &mut [f64],
    rsc: usize,
    csc: usize,
) {
    let p = Operands { m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, rsc, csc };
    // SAFETY: `c` is initialised, and the GEMM stores only initialised values into it.
    unsafe { gemm_with(f64_kernel(), PAR_MIN_FLOPS, p, as_uninit(c)) };
}

/// `C = A B` (alpha 1, beta 0) into a buffer that need not be initialised: with `beta == 0` C is
/// write-only, and every element of the `m x n` strided C is written, so a fresh output does not
/// have to be zero-filled first (`cpu::matmul`). `k` and `alpha` must be non-zero (the `k == 0`
/// product is all zeros, which the caller writes itself).
///
/// # Panics
/// As [`gemm_f32`], and if `k == 0`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_into<T: Elem>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    rsa: usize,
    csa: usize,
    b: &[T],
    rsb: usize,
    csb: usize,
    c: &mut [MaybeUninit<T>],
    rsc: usize,
    csc: usize,
) {
    assert!(k > 0, "gemm_into: k = 0 would leave C unwritten");
    let p = Operands { m, n, k, alpha: T::ONE, a, rsa, csa, b, rsb, csb, beta: T::ZERO, rsc, csc };
    // SAFETY: beta = 0, so C is never read.
    unsafe { gemm_with(T::kernel(), PAR_MIN_FLOPS, p, c) };
}

/// An initialised C seen as possibly-uninitialised memory, the type [`gemm_with`] writes to.
///
/// # Safety
/// Only initialised values may be written through the result (as [`gemm_with`] does): writing
/// `MaybeUninit::uninit()` would leave `c` holding invalid values once the borrow ends.
pub(crate) unsafe fn as_uninit<T>(c: &mut [T]) -> &mut [MaybeUninit<T>] {
    // SAFETY: same layout; the caller writes only initialised values.
    unsafe { &mut *(c as *mut [T] as *mut [MaybeUninit<T>]) }
}

/// Shapes, scalars, inputs and strides of one GEMM call (C passed apart).
#[derive(Clone, Copy)]
pub(crate) struct Operands<'a, T> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: T,
    pub a: &'a [T],
    pub rsa: usize,
    pub csa: usize,
    pub b: &'a [T],
    pub rsb: usize,
    pub csb: usize,
    pub beta: T,
    pub rsc: usize,
    pub csc: usize,
}

/// One past the largest offset of a `rows x cols` strided matrix (both > 0).
fn extent(rows: usize, rs: usize, cols: usize, cs: usize) -> usize {
    (rows - 1)
        .checked_mul(rs)
        .and_then(|x| (cols - 1).checked_mul(cs).and_then(|y| x.checked_add(y)))
        .and_then(|x| x.checked_add(1))
        .expect("gemm: matrix extent overflows usize")
}

/// True if no two elements of the strided `rows x cols` matrix share memory,
/// so disjoint strips of it may be written from different threads.
fn no_overlap(rows: usize, rs: usize, cols: usize, cs: usize) -> bool {
    let (small, large) = if rs <= cs { ((rs, rows), (cs, cols)) } else { ((cs, cols), (rs, rows)) };
    match (small.1 > 1, large.1 > 1) {
        (false, false) => true,
        (true, false) => small.0 > 0,
        (false, true) => large.0 > 0,
        (true, true) => small.0 > 0 && small.0.checked_mul(small.1).is_some_and(|s| large.0 >= s),
    }
}

/// Raw pointer that may cross threads; every use writes a disjoint C strip.
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: only used to hand disjoint (checked by `no_overlap`) strips of C
// and read-only A/B to rayon workers while the borrow of the slices lives.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer. A closure that calls this captures the whole `SendPtr` (which may cross
    /// threads), where naming the field would capture the bare pointer (which may not).
    fn get(self) -> *mut T {
        self.0
    }
}

/// Driver shared by both precisions, with an explicit kernel and parallel
/// threshold so the tests can exercise every kernel and the threaded path.
///
/// `c` may be uninitialised when `beta == 0` (see [`gemm_into`]): every element of the strided
/// `m x n` C is then written and none is read.
///
/// # Safety
/// With `beta != 0` the `m x n` strided elements of `c` must be initialised (they are read).
pub(crate) unsafe fn gemm_with<T: Elem>(
    kern: &Kernel<T>,
    par_min: usize,
    p: Operands<'_, T>,
    c: &mut [MaybeUninit<T>],
) {
    let Operands { m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, rsc, csc } = p;
    if m == 0 || n == 0 {
        return;
    }
    assert!(extent(m, rsc, n, csc) <= c.len(), "gemm: C slice too short");
    if k == 0 || alpha == T::ZERO {
        scale_c(m, n, beta, c, rsc, csc);
        return;
    }
    assert!(extent(m, rsa, k, csa) <= a.len(), "gemm: A slice too short");
    assert!(extent(k, rsb, n, csb) <= b.len(), "gemm: B slice too short");
    // The kernels vectorise along n, so for column-contiguous C solve the
    // transposed problem C^T = B^T A^T, which is row-contiguous.
    let (m, n, a, rsa, csa, b, rsb, csb, rsc, csc) = if csc != 1 && rsc == 1 {
        (n, m, b, csb, rsb, a, csa, rsa, csc, rsc)
    } else {
        (m, n, a, rsa, csa, b, rsb, csb, rsc, csc)
    };
    let kern = &kern.for_rows(m);
    let (ap, bp, cp) = (a.as_ptr(), b.as_ptr(), SendPtr(c.as_mut_ptr().cast::<T>()));
    let flops = m.saturating_mul(n).saturating_mul(k).saturating_mul(2);
    let threads = rayon::current_num_threads();
    if threads <= 1 || flops < par_min || !no_overlap(m, rsc, n, csc) {
        // SAFETY: extents were checked against the slice lengths above.
        unsafe { block::serial(kern, m, n, k, alpha, ap, rsa, csa, bp, rsb, csb, beta, cp.0, rsc, csc) };
        return;
    }
    // Small and deep (a weight gradient): split over k, with the serial result's bits.
    if alpha == T::ONE && csc == 1 {
        if let Some(kc) = split_k::plan(kern, m, n, k, threads) {
            // SAFETY: extents checked above; C's rows do not overlap (`no_overlap`).
            unsafe { split_k::gemm(kern, kc, m, n, k, ap, rsa, csa, bp, rsb, csb, beta, c, rsc) };
            return;
        }
    }
    // Split the larger dimension into one strip per thread, in whole
    // micro-tiles so no thread gets a needless partial tile.
    let split_m = m.div_ceil(kern.mr) >= n.div_ceil(kern.nr);
    let (dim, w) = if split_m { (m, kern.mr) } else { (n, kern.nr) };
    let tiles = dim.div_ceil(w);
    // ... but never so many strips that one holds less than `par_min` flops.
    let parts = threads.min(tiles).min(flops / par_min.max(1)).max(1);
    let chunk = tiles.div_ceil(parts) * w;
    let (ap, bp) = (SendPtr(ap as *mut T), SendPtr(bp as *mut T));
    let strip = |t: usize| {
        let start = t * chunk;
        if start >= dim {
            return;
        }
        let len = chunk.min(dim - start);
        let (ap, bp, cp) = (ap, bp, cp);
        // SAFETY: each strip lies inside the checked extents, and strips of
        // C are disjoint because C has no self-overlap (`no_overlap`).
        unsafe {
            if split_m {
                let (a0, c0) = (ap.0.add(start * rsa), cp.0.add(start * rsc));
                block::serial(kern, len, n, k, alpha, a0, rsa, csa, bp.0, rsb, csb, beta, c0, rsc, csc);
            } else {
                let (b0, c0) = (bp.0.add(start * csb), cp.0.add(start * csc));
                block::serial(kern, m, len, k, alpha, ap.0, rsa, csa, b0, rsb, csb, beta, c0, rsc, csc);
            }
        }
    };
    if rayon::current_thread_index().is_some() {
        // Already on a pool thread (e.g. inside a batched par_iter): plain
        // work-stealing, first strip inline.
        (0..parts).into_par_iter().for_each(strip);
    } else {
        // Caller outside the pool: compute strip 0 here and hand only the
        // rest to workers. Injecting the whole job and blocking the caller
        // costs a second cross-thread wake-up, which doubled the time of
        // ~100^3 products.
        rayon::in_place_scope(|s| {
            for t in 1..parts {
                s.spawn(move |_| strip(t));
            }
            strip(0);
        });
    }
}

/// `C = beta * C`, writing zeros (not `0 * NaN`, and without reading C) when `beta == 0`.
fn scale_c<T: Elem>(m: usize, n: usize, beta: T, c: &mut [MaybeUninit<T>], rsc: usize, csc: usize) {
    if beta == T::ONE {
        return;
    }
    for i in 0..m {
        for j in 0..n {
            let x = &mut c[i * rsc + j * csc];
            if beta == T::ZERO {
                x.write(T::ZERO);
            } else {
                // SAFETY: beta != 0 is only passed with an initialised C (the public API's `&mut [T]`).
                let v = unsafe { x.assume_init() };
                x.write(beta * v);
            }
        }
    }
}
