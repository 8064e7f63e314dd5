//! The CUDA C sources of the kernels and their run-time compilation with NVRTC.
//!
//! Each op family is one file in `cuda/kernels/` (ELA: several files in `cuda/kernels/ela/`, one
//! per algorithm, concatenated into two modules), embedded with `include_str!` and compiled on
//! first use for the device's own architecture (`--gpu-architecture=sm_XY`, fetching a CUBIN, so
//! the driver does no JIT work), then cached for the life of the process (see
//! `Cuda::function`). If the installed NVRTC is older than the GPU, the newest architecture
//! it knows is compiled to PTX instead and the driver finishes the job.
//!
//! Compilation needs no GPU, only `libnvrtc`: [`compile_all`] checks every source on a machine
//! without a device (the test `nvrtc_compiles_every_kernel_file` uses it).

use std::borrow::Cow;
use std::ffi::{c_char, c_int, CStr, CString};

use cudarc::nvrtc::{result as nr, sys as ns};
use ela_core::ela::ElaKernel;
use ela_core::{Error, Result};

/// Prepended to every kernel file: types, `Desc`, half conversions, block reductions.
const COMMON: &str = include_str!("../kernels/common.cuh");

/// The macro name under which `ela/recurrent.cu` and `ela/noncausal.cu` know each ELA kernel's code. The
/// match is exhaustive, so a new [`ElaKernel`] variant does not compile until it has a name here.
fn ela_kernel_macro(k: ElaKernel) -> &'static str {
    match k {
        ElaKernel::HadamardExp => "K_EXP",
        ElaKernel::SumSqEuclid => "K_SUM",
        ElaKernel::SubSqEuclid => "K_SUB",
        ElaKernel::Blueprint => "K_BLUE",
        ElaKernel::Identity => "K_ID",
        ElaKernel::EluPlusOne => "K_ELU",
    }
}

/// `#define K_EXP 0` ... for every [`ElaKernel`], its code taken from [`ElaKernel::code`]: the
/// kernel ids are written once, in core/src/ela.rs, never by hand in a `.cu` file.
pub fn ela_kernel_defines() -> String {
    ElaKernel::ALL.iter().map(|&k| format!("#define {} {}\n", ela_kernel_macro(k), k.code())).collect()
}

/// Input dtype of a chunked-ELA kernel variant (the code in `ELA_DT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElaDt {
    /// f32 inputs: 3xTF32 tile products (tensor cores), accurate to f32 rounding.
    F32 = 0,
    /// f16 inputs: bf16 tensor-core products, f32 state.
    F16 = 1,
    /// bf16 inputs: bf16 tensor-core products, f32 state.
    BF16 = 2,
}

impl ElaDt {
    /// The variant for inputs of `dtype` (`None` for f64 and the integer types).
    pub fn of(dtype: ela_core::DType) -> Option<ElaDt> {
        match dtype {
            ela_core::DType::F32 => Some(ElaDt::F32),
            ela_core::DType::F16 => Some(ElaDt::F16),
            ela_core::DType::BF16 => Some(ElaDt::BF16),
            _ => None,
        }
    }
}

/// Blocks per multiprocessor each chunked Hadamard-Exp kernel is compiled for: the second
/// argument of its `__launch_bounds__`, which caps its registers at 65,536 / (256 x blocks) per
/// thread. More blocks hide more latency but may spill registers to local memory; shared memory
/// may allow fewer blocks than asked for anyway. The host reads the scan's figure to tell how
/// many scan blocks can be resident ([`ChunkMinBlocks::of`] is the one source of these numbers;
/// `cargo run --release -p ela-cuda --example kernel_resources` shows what each choice costs in
/// registers and spills).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkMinBlocks {
    /// `ela_scan` (`SCAN_MINB`).
    pub scan: u32,
    /// `ela_out` (`ELA_MINB`).
    pub out: u32,
    /// `ela_bwd` (`ELA_BWD_MINB`).
    pub bwd: u32,
}

impl ChunkMinBlocks {
    /// The choice for inputs of `dt` with `d`-wide heads and `dv`-wide values, measured per
    /// variant (docs/benchmarks.md, "Blocks per multiprocessor"; H100, B8 H16):
    /// - the scan: two blocks per multiprocessor (128 registers: 64-wide scans take two chunks a
    ///   step; 128-wide ones, at four blocks, spilled 200 bytes a thread and were 1-5 % slower
    ///   overall, 256-wide ones 1-2 %);
    /// - the output kernel: four for 16-bit 64-wide heads (49 KB of shared memory allow four; a
    ///   few registers spill, 825 -> 755 us at T = 16k on an H200 against three), two for the
    ///   other 64- and 128-wide heads (128 registers, few or no spills, against 167-205 at one
    ///   block: 7 % faster fwd+bwd at D = 128 bf16 and D = 64 f32), none for 256-wide;
    /// - the gradient kernel: three for 16-bit 64-wide heads (the shared memory allows exactly
    ///   three), else none (two spilled and were 7 % slower at D = 128 bf16).
    ///
    /// Mixed widths (e.g. D = 64 with Dv = 128) take the wider width's choice; they were not
    /// measured separately.
    pub fn default_for(dt: ElaDt, d: u16, dv: u16) -> ChunkMinBlocks {
        let narrow = d <= 64 && dv <= 64;
        let wide256 = d > 128 || dv > 128;
        let mma16 = dt != ElaDt::F32;
        ChunkMinBlocks {
            scan: 2,
            out: if mma16 && narrow {
                4
            } else if wide256 {
                1
            } else {
                2
            },
            bwd: if mma16 && narrow { 3 } else { 1 },
        }
    }

    /// [`ChunkMinBlocks::default_for`], with any figure named in `ELA_CUDA_MINB` (read once per
    /// process; e.g. `scan=2,out=2,bwd=1`, for tuning) in its place.
    pub fn of(dt: ElaDt, d: u16, dv: u16) -> ChunkMinBlocks {
        static OVERRIDE: std::sync::OnceLock<[Option<u32>; 3]> = std::sync::OnceLock::new();
        let o = OVERRIDE.get_or_init(|| match std::env::var("ELA_CUDA_MINB") {
            Ok(text) => parse_min_blocks(&text).unwrap_or_else(|e| {
                eprintln!("ela-cuda: ELA_CUDA_MINB={text:?} ignored: {e}");
                [None; 3]
            }),
            Err(_) => [None; 3],
        });
        let d0 = ChunkMinBlocks::default_for(dt, d, dv);
        ChunkMinBlocks { scan: o[0].unwrap_or(d0.scan), out: o[1].unwrap_or(d0.out), bwd: o[2].unwrap_or(d0.bwd) }
    }

    fn defines(self) -> String {
        format!("#define SCAN_MINB {}\n#define ELA_MINB {}\n#define ELA_BWD_MINB {}\n", self.scan, self.out, self.bwd)
    }
}

/// `scan=N,out=N,bwd=N` (any subset, N in 1..=8: 8 blocks of 256 threads fill a multiprocessor)
/// as [scan, out, bwd].
fn parse_min_blocks(text: &str) -> std::result::Result<[Option<u32>; 3], String> {
    let mut o = [None; 3];
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').ok_or_else(|| format!("{part:?} is not key=value"))?;
        let slot = match key.trim() {
            "scan" => 0,
            "out" => 1,
            "bwd" => 2,
            other => return Err(format!("unknown kernel {other:?} (scan, out or bwd)")),
        };
        match value.trim().parse::<u32>() {
            Ok(n @ 1..=8) => o[slot] = Some(n),
            _ => return Err(format!("{key}={value:?}: blocks per multiprocessor must be 1..=8")),
        }
    }
    Ok(o)
}

/// The feature map a module of the chunked Hadamard-Exp kernels computes (`ELA_FMAP` in
/// `ela/chunk_fwd.cu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChunkMap {
    /// Hadamard Exp: `phi(q) = exp(q)`, `psi(k) = exp(k)`.
    Exp = 0,
    /// elu+1, computed as Hadamard Exp on log-features: `elu(x) + 1 = exp(lf(x))` with
    /// `lf(x) = log1p(x)` for `x > 0`, else `x`, applied to `q` and `k` as they are read
    /// (docs/ela.md, "elu+1 on the Hadamard-Exp kernels").
    EluPlusOne = 1,
    /// Identity: `phi(q) = q`, `psi(k) = k`, signed, so without exps or units (every shift is
    /// 0 and no row takes the exact path; docs/ela.md, "Identity on the Hadamard-Exp kernels").
    Identity = 2,
}

/// One kernel source file (one op family).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelFile {
    /// fill, copy, cast, unary, binary, cmp, where
    Elementwise,
    /// reduce, cumsum, topk
    Reduce,
    /// softmax, RMS norm, layer norm (+ backward, column sums)
    SoftmaxNorm,
    /// fused cross-entropy forward and backward
    CrossEntropy,
    /// index_select, gather, index_add, scatter_add
    Index,
    /// im2col/col2im, pooling, upsampling
    ConvPool,
    /// fused Exact Linear Attention, any kernel: the feature maps and the per-token scan (forward,
    /// backward, step) of `ela/recurrent.cu`, the parallel non-causal form of `ela/noncausal.cu`
    /// and the kernels around the cuBLAS chunked path of `ela/gemm_chunk.cu` (one module)
    Ela,
    /// chunked Hadamard-Exp ELA on tensor cores (`ela/tile.cuh`, `ela/chunk_fwd.cu`,
    /// `ela/chunk_out.cu`, `ela/scan_runs.cu`, `ela/chunk_bwd.cu`, `ela/step.cu`; Identity also `ela/chunk_ext.cu`), compiled
    /// separately for each feature map, input dtype and head sizes `d`, `dv`
    ElaChunk {
        /// What the kernels compute: Hadamard Exp, elu+1 as Hadamard Exp on log-features, or
        /// Identity (no exps; with `ela/chunk_ext.cu`'s extra terms, also sum-sq, sub-sq and the
        /// blueprint).
        map: ChunkMap,
        /// Input dtype.
        dt: ElaDt,
        /// Query/key head size (= the feature size).
        d: u16,
        /// Value head size.
        dv: u16,
    },
    /// chunked unnormalised linear attention (`ela/tile.cuh`, `ela/la_chunk.cu`), the fast path of
    /// every feature-map kernel, compiled separately for each input dtype, operand type and pair
    /// of padded operand widths `f`, `e` (multiples of 16)
    ElaLa {
        /// Input (and output) dtype.
        dt: ElaDt,
        /// bf16 tensor-core operands (16-bit inputs only); else f32 operands and 3xTF32 products.
        tc: bool,
        /// Feature width (padded).
        f: u16,
        /// Value width plus the denominator column (padded).
        e: u16,
    },
    /// a whole decoding step of an ELA language model in one launch (`lm_decode.cu`), compiled
    /// for each model shape
    LmDecode(LmShape),
    /// checks of the Hopper warpgroup tile products of `ela/wgmma.cuh` (`ela/wgmma_check.cu`),
    /// compiled for `sm_90a` only (wgmma exists on no other architecture)
    WgmmaCheck,
}

/// The compile-time shape of [`KernelFile::LmDecode`] (`LM_*` in `lm_decode.cu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LmShape {
    /// Weight dtype (the activations are f32).
    pub wt: ElaDt,
    /// Model width.
    pub d: u32,
    /// Attention heads (the head size is `d / heads`).
    pub heads: u32,
    /// FFN hidden width.
    pub ff: u32,
    /// How attention and FFN join: 0 Hyper-Link, 1 pre-norm residual, 2 post-norm residual.
    pub link: u8,
    /// Blocks per sequence (a thread-block cluster when above 1; Hopper and later).
    pub cluster: u8,
}

impl KernelFile {
    /// Every kernel file (each family of chunked ELA kernels in representative variants: the
    /// tensor-core path (Hadamard Exp), an f32-operand path with 32-row chunks (the elu+1 map of
    /// the same kernels), Identity's map on 64-row f32 tiles, and for the feature-map kernels
    /// tensor-core tiles wider than 144, which take 32-row chunks too).
    pub const ALL: [KernelFile; 16] = [
        KernelFile::Elementwise,
        KernelFile::Reduce,
        KernelFile::SoftmaxNorm,
        KernelFile::CrossEntropy,
        KernelFile::Index,
        KernelFile::ConvPool,
        KernelFile::Ela,
        KernelFile::ElaChunk { map: ChunkMap::Exp, dt: ElaDt::BF16, d: 64, dv: 64 },
        KernelFile::ElaChunk { map: ChunkMap::EluPlusOne, dt: ElaDt::F32, d: 128, dv: 128 },
        KernelFile::ElaChunk { map: ChunkMap::Identity, dt: ElaDt::F32, d: 64, dv: 64 },
        KernelFile::ElaLa { dt: ElaDt::BF16, tc: true, f: 80, e: 80 },
        KernelFile::ElaLa { dt: ElaDt::F16, tc: false, f: 144, e: 144 },
        KernelFile::ElaLa { dt: ElaDt::BF16, tc: true, f: 160, e: 16 },
        KernelFile::ElaLa { dt: ElaDt::BF16, tc: true, f: 256, e: 272 },
        KernelFile::LmDecode(LmShape { wt: ElaDt::BF16, d: 128, heads: 4, ff: 256, link: 0, cluster: 1 }),
        KernelFile::WgmmaCheck,
    ];

    /// File name under `cuda/kernels/`.
    pub fn name(self) -> &'static str {
        match self {
            KernelFile::Elementwise => "elementwise.cu",
            KernelFile::Reduce => "reduce.cu",
            KernelFile::SoftmaxNorm => "softmax_norm.cu",
            KernelFile::CrossEntropy => "cross_entropy.cu",
            KernelFile::Index => "index.cu",
            KernelFile::ConvPool => "conv_pool.cu",
            KernelFile::Ela => "ela/recurrent.cu",
            KernelFile::ElaChunk { .. } => "ela/chunk_fwd.cu",
            KernelFile::ElaLa { .. } => "ela/la_chunk.cu",
            KernelFile::LmDecode(_) => "lm_decode.cu",
            KernelFile::WgmmaCheck => "ela/wgmma_check.cu",
        }
    }

    /// A name for this compiled variant, usable as a file name: the file's stem and the
    /// variant's parameters (e.g. `chunk_fwd_bf16_d64_dv64`, `la_chunk_bf16_tc_f64_e80`).
    pub fn label(self) -> String {
        let stem = self.name().rsplit('/').next().unwrap_or("").trim_end_matches(".cu");
        let dt = |d: ElaDt| format!("{d:?}").to_lowercase();
        match self {
            KernelFile::ElaChunk { map, dt: t, d, dv } => {
                let map = match map {
                    ChunkMap::Exp => "",
                    ChunkMap::EluPlusOne => "_elu",
                    ChunkMap::Identity => "_id",
                };
                format!("{stem}{map}_{}_d{d}_dv{dv}", dt(t))
            }
            KernelFile::ElaLa { dt: t, tc, f, e } => {
                format!("{stem}_{}{}_f{f}_e{e}", dt(t), if tc { "_tc" } else { "" })
            }
            KernelFile::LmDecode(m) => {
                format!("{stem}_{}_d{}_h{}_ff{}_link{}_cluster{}", dt(m.wt), m.d, m.heads, m.ff, m.link, m.cluster)
            }
            _ => stem.to_string(),
        }
    }

    /// The file's CUDA C source (without the common prelude).
    pub fn source(self) -> &'static str {
        match self {
            KernelFile::Elementwise => include_str!("../kernels/elementwise.cu"),
            KernelFile::Reduce => include_str!("../kernels/reduce.cu"),
            KernelFile::SoftmaxNorm => include_str!("../kernels/softmax_norm.cu"),
            KernelFile::CrossEntropy => include_str!("../kernels/cross_entropy.cu"),
            KernelFile::Index => include_str!("../kernels/index.cu"),
            KernelFile::ConvPool => include_str!("../kernels/conv_pool.cu"),
            KernelFile::Ela => include_str!("../kernels/ela/recurrent.cu"),
            KernelFile::ElaChunk { .. } => include_str!("../kernels/ela/chunk_fwd.cu"),
            KernelFile::ElaLa { .. } => include_str!("../kernels/ela/la_chunk.cu"),
            KernelFile::LmDecode(_) => include_str!("../kernels/lm_decode.cu"),
            KernelFile::WgmmaCheck => include_str!("../kernels/ela/wgmma_check.cu"),
        }
    }

    /// The text NVRTC compiles after the common prelude: [`KernelFile::source`]; for the fused
    /// ELA kernels preceded by the kernel-code defines ([`ela_kernel_defines`]) and followed by the
    /// element-wise feature maps, the non-causal and the cuBLAS-chunked files; for the chunked
    /// Hadamard-Exp kernels the variant's defines, the tile header, then the forward, backward and
    /// step files; for the chunked linear attention the kernel codes, the variant's defines, the
    /// tile header, the feature maps and `la_chunk.cu`. The ELA files have no `#include`: NVRTC gets them
    /// concatenated here, each after a `#line` naming it, so its messages point into the right
    /// file.
    pub fn full_source(self) -> Cow<'static, str> {
        match self {
            KernelFile::Ela => Cow::Owned(
                ela_kernel_defines()
                    + &with_lines(&[
                        (self.name(), self.source()),
                        ("ela/features.cuh", include_str!("../kernels/ela/features.cuh")),
                        ("ela/noncausal.cu", include_str!("../kernels/ela/noncausal.cu")),
                        ("ela/gemm_chunk.cu", include_str!("../kernels/ela/gemm_chunk.cu")),
                    ]),
            ),
            KernelFile::ElaChunk { map, dt, d, dv } => Cow::Owned(
                format!("#define ELA_DT {}\n#define ELA_D {d}\n#define ELA_DV {dv}\n", dt as i32)
                    + &format!("#define ELA_FMAP {}\n", map as i32)
                    + &ChunkMinBlocks::of(dt, d, dv).defines()
                    + f32_products_define()
                    + &chunk_opt_defines()
                    + &with_lines(&chunk_files(self.name(), self.source(), map)),
            ),
            KernelFile::ElaLa { dt, tc, f, e } => Cow::Owned(
                ela_kernel_defines()
                    + &format!(
                        "#define ELA_DT {}\n#define LA_IO {}\n#define ELA_D {f}\n#define ELA_DV {e}\n#define LA_RAW {}\n",
                        if tc { dt as i32 } else { 0 },
                        dt as i32,
                        la_raw_code(tc, f, e) as i32
                    )
                    + f32_products_define()
                    + &chunk_opt_defines()
                    + &with_lines(&[
                        ("ela/tile.cuh", include_str!("../kernels/ela/tile.cuh")),
                        ("ela/features.cuh", include_str!("../kernels/ela/features.cuh")),
                        (self.name(), self.source()),
                    ]),
            ),
            KernelFile::LmDecode(m) => Cow::Owned(
                format!(
                    "#define LM_WT {}\n#define LM_D {}\n#define LM_HEADS {}\n#define LM_FF {}\n#define LM_LINK {}\n#define LM_CLUSTER {}\n",
                    m.wt as i32, m.d, m.heads, m.ff, m.link, m.cluster
                ) + &with_lines(&[(self.name(), self.source())]),
            ),
            KernelFile::WgmmaCheck => Cow::Owned(with_lines(&[
                ("ela/wgmma.cuh", include_str!("../kernels/ela/wgmma.cuh")),
                (self.name(), self.source()),
            ])),
            _ => Cow::Borrowed(self.source()),
        }
    }

    /// The `--gpu-architecture` to compile this file with for a device whose own is `arch`: the
    /// same, except for the warpgroup products, which need Hopper's architecture-specific target
    /// (`sm_90a` / `compute_90a`) and exist on no other GPU.
    pub fn arch_for(self, arch: &str) -> Result<String> {
        match self {
            KernelFile::WgmmaCheck => match arch {
                "sm_90" | "sm_90a" => Ok("sm_90a".to_string()),
                "compute_90" | "compute_90a" => Ok("compute_90a".to_string()),
                _ => Err(nvrtc_err(
                    "compile",
                    format!("{} uses wgmma, which only Hopper (sm_90) GPUs have; this target is {arch}", self.name()),
                )),
            },
            _ => Ok(arch.to_string()),
        }
    }
}

/// The files of a chunked-ELA module, in the order NVRTC reads them: the tile header, the
/// forward (`name`, `source`), output, scan-run and backward files, then the step. The signed
/// kernels' chunk sums (`chunk_ext.cu`) are launched only on Identity's tiles, so only Identity
/// modules compile them: the other maps would pay NVRTC time at start-up for kernels they never
/// launch.
fn chunk_files(name: &'static str, source: &'static str, map: ChunkMap) -> Vec<(&'static str, &'static str)> {
    let mut files = vec![
        ("ela/tile.cuh", include_str!("../kernels/ela/tile.cuh")),
        (name, source),
        ("ela/chunk_out.cu", include_str!("../kernels/ela/chunk_out.cu")),
        ("ela/scan_runs.cu", include_str!("../kernels/ela/scan_runs.cu")),
        ("ela/chunk_bwd.cu", include_str!("../kernels/ela/chunk_bwd.cu")),
    ];
    if map == ChunkMap::Identity {
        files.push(("ela/chunk_ext.cu", include_str!("../kernels/ela/chunk_ext.cu")));
    }
    files.push(("ela/step.cu", include_str!("../kernels/ela/step.cu")));
    files
}

/// Whether a feature-map module (`la_chunk.cu`, operands of `f` and `e` columns; `tc`: bf16
/// operands) is compiled with the staging that reads q, k, v where they lie (`LA_RAW`, which
/// also bounds its scan to two blocks a multiprocessor). The bf16-operand modules need it: elu+1
/// with bf16 inputs reads its inputs that way. The f32-operand modules never do, but the
/// compiled code differs with it (ptxas allocates the scan's registers differently: 71 -> 109 at
/// `f` = 64), and measured per module on an H100 (B8 H16 T16k fwd+bwd, docs/benchmarks.md,
/// "Operands read where they lie, the default") it was 9-10 % faster at `f` = 64, `e` = 80
/// (identity and elu+1 at D = 64) and 5-6 % at 144 x 144 (sum-sq and the blueprint at D = 128),
/// but 2 % slower at 80 x 80 (sum-sq, blueprint at D = 64) and 0-3 % at 128 x 144 (identity,
/// elu+1 at D = 128). Those two and every module not measured keep the code without it.
pub fn la_raw_code(tc: bool, f: u16, e: u16) -> bool {
    tc || matches!((f, e), (64, 80) | (144, 144))
}

/// The tile products of the chunked kernels' f32 variants run as 3xTF32 on the tensor cores
/// (`ela/tile.cuh`); `ELA_CUDA_F32_FFMA=1` (read once per process) compiles them with the older
/// FFMA loop instead, to compare the two.
fn f32_products_define() -> &'static str {
    static FFMA: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *FFMA.get_or_init(|| std::env::var_os("ELA_CUDA_F32_FFMA").is_some()) {
        "#define ELA_F32_FFMA 1\n"
    } else {
        ""
    }
}

/// Opt-in variants of the tile modules (the chunked Hadamard-Exp kernels and the feature-map
/// kernels, both built on `ela/tile.cuh`) that wait for a GPU to time or check them: (name in
/// `ELA_CUDA_OPT`, the modules' define, what it changes). Each computes the same values. A variant
/// becomes the default or goes once measured (cuda/README.md, "Opt-in variants"), so the list may
/// be empty.
pub const CHUNK_OPTS: &[(&str, &str, &str)] = &[];

/// The names of the opt-in variants set in `ELA_CUDA_OPT` (read once per process; a comma list
/// of [`CHUNK_OPTS`] names); an unknown name is reported and the whole setting ignored.
fn chunk_opts() -> &'static [&'static str] {
    static ON: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    ON.get_or_init(|| match std::env::var("ELA_CUDA_OPT") {
        Ok(text) => parse_chunk_opts(&text).unwrap_or_else(|e| {
            eprintln!("ela-cuda: ELA_CUDA_OPT={text:?} ignored: {e}");
            Vec::new()
        }),
        Err(_) => Vec::new(),
    })
}

/// Whether the opt-in variant `name` (of [`CHUNK_OPTS`]) is on in this process (`ELA_CUDA_OPT`;
/// the host side of a variant follows it, and tests of a variant run only where it is on).
pub fn chunk_opt(name: &str) -> bool {
    chunk_opts().contains(&name)
}

/// The tile modules' defines of the variants that are on.
fn chunk_opt_defines() -> String {
    let on = chunk_opts();
    CHUNK_OPTS.iter().filter(|(n, _, _)| on.contains(n)).map(|(_, define, _)| format!("#define {define} 1\n")).collect()
}

fn parse_chunk_opts(text: &str) -> std::result::Result<Vec<&'static str>, String> {
    let mut on = Vec::new();
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let Some((known, _, _)) = CHUNK_OPTS.iter().find(|(n, _, _)| *n == name) else {
            let names: Vec<&str> = CHUNK_OPTS.iter().map(|(n, _, _)| *n).collect();
            let known = if names.is_empty() { "none in this build".to_string() } else { names.join(", ") };
            return Err(format!("unknown variant {name:?} (known: {known})"));
        };
        on.push(*known);
    }
    Ok(on)
}

/// `files` (name, text) concatenated, each after a `#line 1 "name"` directive.
fn with_lines(files: &[(&str, &str)]) -> String {
    files.iter().map(|(name, text)| format!("#line 1 \"{name}\"\n{text}\n")).collect()
}

/// A compiled module image: a CUBIN for a real architecture or PTX text for a virtual one.
#[derive(Clone, Debug)]
pub enum Image {
    /// Machine code for `sm_XY`.
    Cubin(Vec<u8>),
    /// PTX for `compute_XY` (the driver compiles it when loading).
    Ptx(String),
}

/// True when an NVRTC library can be loaded (see README.md for the names tried).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen candidate library names.
    unsafe { ns::is_culib_present() }
}

fn nvrtc_err(op: &'static str, msg: impl Into<String>) -> Error {
    Error::Backend { backend: "cuda", op, msg: msg.into() }
}

fn check(op: &'static str, r: ns::nvrtcResult) -> Result<()> {
    r.result().map_err(|e| nvrtc_err(op, format!("NVRTC call failed: {e:?}")))
}

/// The NVRTC version as (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32)> {
    if !nvrtc_available() {
        return Err(nvrtc_missing());
    }
    let (mut major, mut minor) = (0, 0);
    check("nvrtc_version", unsafe { ns::nvrtcVersion(&mut major, &mut minor) })?;
    Ok((major, minor))
}

/// The error for a missing NVRTC library.
pub(crate) fn nvrtc_missing() -> Error {
    Error::DeviceUnavailable {
        device: "cuda".into(),
        reason: format!(
            "the NVRTC library (runtime kernel compiler) was not found; tried {:?}. Install the CUDA \
             toolkit (or the nvidia-cuda-nvrtc package) and add its lib directory to LD_LIBRARY_PATH, \
             or use the CPU backend",
            linux_candidates("nvrtc")
        ),
    }
}

/// The library file names cudarc tries for `lib` on this platform, in order (Linux sonames only,
/// for messages).
pub fn linux_candidates(lib: &str) -> Vec<String> {
    cudarc::get_lib_name_candidates(lib).into_iter().filter(|n| !n.contains("64")).collect()
}

/// Architectures (`XY` of `sm_XY`) the loaded NVRTC can compile for.
pub fn supported_archs() -> Result<Vec<i32>> {
    if !nvrtc_available() {
        return Err(nvrtc_missing());
    }
    let mut n: c_int = 0;
    check("nvrtc_archs", unsafe { ns::nvrtcGetNumSupportedArchs(&mut n) })?;
    let mut v = vec![0 as c_int; n.max(0) as usize];
    if n > 0 {
        check("nvrtc_archs", unsafe { ns::nvrtcGetSupportedArchs(v.as_mut_ptr()) })?;
    }
    Ok(v)
}

/// The `--gpu-architecture` value for a device of compute capability `cc` (e.g. 90): the real
/// architecture when NVRTC knows it, else the newest older virtual one (PTX, JIT-compiled by the
/// driver). Errors when NVRTC supports nothing at or below `cc`.
pub fn pick_arch(cc: i32) -> Result<String> {
    let archs = supported_archs()?;
    if archs.contains(&cc) {
        return Ok(format!("sm_{cc}"));
    }
    match archs.iter().filter(|&&a| a <= cc).max() {
        Some(a) => Ok(format!("compute_{a}")),
        None => Err(Error::DeviceUnavailable {
            device: "cuda".into(),
            reason: format!(
                "the loaded NVRTC supports architectures {archs:?}, none at or below this GPU's compute \
                 capability {}.{}: install a CUDA toolkit that supports this GPU",
                cc / 10,
                cc % 10
            ),
        }),
    }
}

/// Compiles one kernel file for `arch` (`sm_XY` gives a CUBIN, `compute_XY` PTX). A compile
/// failure becomes [`Error::Backend`] carrying NVRTC's log.
///
/// For profiling (each read once per process): `ELA_CUDA_LINEINFO=1` compiles with NVRTC's
/// `--generate-line-info` (machine code mapped to source lines, for Nsight Compute or
/// `nvdisasm -g`), and `ELA_CUDA_DUMP_DIR=DIR` writes each CUBIN to `DIR/<file>.cubin` (named by
/// [`KernelFile::label`]) as it is compiled, so the exact machine code a profile measured can be
/// read back with its line table (`cuda/benches/sass_lines.py`).
pub fn compile(file: KernelFile, arch: &str) -> Result<Image> {
    let image = compile_source(file.name(), &file.full_source(), &file.arch_for(arch)?)?;
    if let (Some(dir), Image::Cubin(elf)) = (dump_dir(), &image) {
        let path = dir.join(format!("{}.cubin", file.label()));
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&path, elf))
            .map_err(|e| nvrtc_err("compile", format!("ELA_CUDA_DUMP_DIR: writing {}: {e}", path.display())))?;
    }
    Ok(image)
}

/// `ELA_CUDA_DUMP_DIR`, read once per process (see [`compile`]).
fn dump_dir() -> Option<&'static std::path::Path> {
    static DIR: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| std::env::var_os("ELA_CUDA_DUMP_DIR").map(std::path::PathBuf::from)).as_deref()
}

/// Whether `ELA_CUDA_LINEINFO` is set (read once per process; see [`compile`]).
fn line_info() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("ELA_CUDA_LINEINFO").is_some())
}

/// Compiles CUDA C `source` (after the common prelude) as file `name` for `arch`.
pub fn compile_source(name: &str, source: &str, arch: &str) -> Result<Image> {
    Ok(compile_with(name, source, arch, &[])?.0)
}

/// What ptxas reports for every kernel of `file` compiled for `arch` (an `sm_XY` target):
/// registers, stack frame, spill stores and loads, shared and constant memory, one `ptxas info`
/// line pair per kernel (NVRTC's `--ptxas-options=-v` log). Needs NVRTC but no GPU; for reading
/// what the launch bounds cost a kernel (e.g. `cargo run -p ela-cuda --example kernel_resources`).
pub fn resource_usage(file: KernelFile, arch: &str) -> Result<String> {
    if !arch.starts_with("sm_") {
        return Err(nvrtc_err("resource_usage", format!("needs a machine-code target sm_XY, got {arch}")));
    }
    let arch = file.arch_for(arch)?;
    Ok(compile_with(file.name(), &file.full_source(), &arch, &["--ptxas-options=-v".to_string()])?.1)
}

/// [`compile_source`] with more NVRTC options; also returns the program log.
fn compile_with(name: &str, source: &str, arch: &str, extra: &[String]) -> Result<(Image, String)> {
    if !nvrtc_available() {
        return Err(nvrtc_missing());
    }
    let src = format!("{COMMON}\n#line 1 \"{name}\"\n{source}");
    let src = CString::new(src).map_err(|_| nvrtc_err("nvrtc_compile", "kernel source contains a NUL byte"))?;
    let cname = CString::new(name).map_err(|_| nvrtc_err("nvrtc_compile", "file name contains a NUL byte"))?;
    let prog = nr::create_program(&src, Some(&cname))
        .map_err(|e| nvrtc_err("nvrtc_compile", format!("creating the program for {name}: {e:?}")))?;
    let mut opts = vec![format!("--gpu-architecture={arch}"), "--std=c++17".to_string()];
    if line_info() {
        opts.push("--generate-line-info".to_string());
    }
    opts.extend_from_slice(extra);
    let out = (|| {
        let result = unsafe { nr::compile_program(prog, &opts) };
        let log = unsafe { nr::get_program_log(prog) }
            .map(|l| unsafe { CStr::from_ptr(l.as_ptr()) }.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Err(e) = result {
            return Err(nvrtc_err(
                "nvrtc_compile",
                format!("compiling {name} for {arch} failed ({e:?}); NVRTC log:\n{log}"),
            ));
        }
        if arch.starts_with("sm_") {
            let mut size = 0usize;
            check("nvrtc_cubin", unsafe { ns::nvrtcGetCUBINSize(prog, &mut size) })?;
            let mut buf = vec![0u8; size];
            check("nvrtc_cubin", unsafe { ns::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char) })?;
            Ok((Image::Cubin(buf), log))
        } else {
            let ptx = unsafe { nr::get_ptx(prog) }.map_err(|e| nvrtc_err("nvrtc_ptx", format!("{e:?}")))?;
            let s = unsafe { CStr::from_ptr(ptx.as_ptr()) }.to_string_lossy().into_owned();
            Ok((Image::Ptx(s), log))
        }
    })();
    // SAFETY: `prog` was created above and is destroyed once.
    let _ = unsafe { nr::destroy_program(prog) };
    out
}

/// Compiles every kernel file for `arch` (e.g. `sm_90`), returning the image sizes in bytes; a
/// file that does not exist for `arch` (the warpgroup checks off Hopper: [`KernelFile::arch_for`])
/// is left out. Needs NVRTC but no GPU.
pub fn compile_all(arch: &str) -> Result<Vec<(&'static str, usize)>> {
    KernelFile::ALL
        .iter()
        .filter(|f| f.arch_for(arch).is_ok())
        .map(|&f| {
            let n = match compile(f, arch)? {
                Image::Cubin(b) => b.len(),
                Image::Ptx(s) => s.len(),
            };
            Ok((f.name(), n))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_blocks_parse_names_and_bounds() {
        assert_eq!(parse_min_blocks(""), Ok([None; 3]));
        assert_eq!(parse_min_blocks("out=2"), Ok([None, Some(2), None]));
        assert_eq!(parse_min_blocks(" scan=1 , bwd=8 "), Ok([Some(1), None, Some(8)]));
        for bad in ["out", "out=0", "out=9", "out=x", "ela=2"] {
            let e = parse_min_blocks(bad).unwrap_err();
            assert!(e.contains("out") || e.contains("ela"), "{bad}: {e}");
        }
    }

    #[test]
    fn min_blocks_defaults_follow_the_measured_choice() {
        let m = ChunkMinBlocks::default_for;
        assert_eq!(m(ElaDt::BF16, 64, 64), ChunkMinBlocks { scan: 2, out: 4, bwd: 3 });
        assert_eq!(m(ElaDt::F32, 64, 64), ChunkMinBlocks { scan: 2, out: 2, bwd: 1 });
        assert_eq!(m(ElaDt::BF16, 128, 128), ChunkMinBlocks { scan: 2, out: 2, bwd: 1 });
        assert_eq!(m(ElaDt::BF16, 64, 128), ChunkMinBlocks { scan: 2, out: 2, bwd: 1 });
        assert_eq!(m(ElaDt::BF16, 256, 256), ChunkMinBlocks { scan: 2, out: 1, bwd: 1 });
        // The defines reach the kernel source, which refuses to compile without them.
        let src = KernelFile::ElaChunk { map: ChunkMap::Exp, dt: ElaDt::F32, d: 64, dv: 64 }.full_source();
        assert!(src.contains("#define ELA_MINB "), "launch bounds missing from the source");
    }

    #[test]
    fn warpgroup_checks_compile_for_hopper_only() {
        let w = KernelFile::WgmmaCheck;
        assert_eq!(w.arch_for("sm_90").unwrap(), "sm_90a");
        assert_eq!(w.arch_for("compute_90").unwrap(), "compute_90a");
        for other in ["sm_80", "sm_89", "sm_100", "compute_80"] {
            let e = w.arch_for(other).unwrap_err().to_string();
            assert!(e.contains("Hopper") && e.contains(other), "{e}");
        }
        assert_eq!(KernelFile::Elementwise.arch_for("sm_80").unwrap(), "sm_80");
    }

    #[test]
    fn chunk_opts_parse_known_names_only() {
        assert_eq!(parse_chunk_opts(""), Ok(vec![]));
        assert_eq!(parse_chunk_opts(" , "), Ok(vec![]));
        let e = parse_chunk_opts("scan4").unwrap_err();
        assert!(e.contains("\"scan4\""), "{e}");
        for (name, _, _) in CHUNK_OPTS {
            assert_eq!(parse_chunk_opts(&format!(" {name} , ")), Ok(vec![*name]));
            let e = parse_chunk_opts(&format!("{name},fast")).unwrap_err();
            assert!(e.contains("\"fast\"") && e.contains(name), "{e}");
        }
    }

    /// Every variant has its own label, made of file-name characters only (dumped CUBINs are
    /// named by it).
    #[test]
    fn labels_name_every_variant_apart() {
        assert_eq!(
            KernelFile::ElaChunk { map: ChunkMap::Exp, dt: ElaDt::BF16, d: 64, dv: 128 }.label(),
            "chunk_fwd_bf16_d64_dv128"
        );
        assert_eq!(
            KernelFile::ElaChunk { map: ChunkMap::EluPlusOne, dt: ElaDt::F32, d: 64, dv: 64 }.label(),
            "chunk_fwd_elu_f32_d64_dv64"
        );
        assert_eq!(
            KernelFile::ElaChunk { map: ChunkMap::Identity, dt: ElaDt::BF16, d: 128, dv: 128 }.label(),
            "chunk_fwd_id_bf16_d128_dv128"
        );
        assert_eq!(KernelFile::ElaLa { dt: ElaDt::F32, tc: false, f: 66, e: 72 }.label(), "la_chunk_f32_f66_e72");
        assert_eq!(KernelFile::Elementwise.label(), "elementwise");
        let labels: Vec<String> = KernelFile::ALL.iter().map(|f| f.label()).collect();
        let distinct: std::collections::HashSet<&String> = labels.iter().collect();
        assert_eq!(distinct.len(), labels.len(), "{labels:?}");
        for l in &labels {
            assert!(l.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{l}");
        }
    }
}
