//! The kernel sources compile with NVRTC. Needs only libnvrtc (no GPU): where it is missing each
//! test reports itself skipped (`ela_cuda::testing`), unless ELA_REQUIRE_CUDA=1.

use ela_cuda::kernels;

#[test]
fn nvrtc_compiles_every_kernel_file() {
    if !kernels::nvrtc_available() {
        let tried = format!("tried {:?}", kernels::linux_candidates("nvrtc"));
        return ela_cuda::testing::skip("no NVRTC library", &tried);
    }
    let (major, minor) = kernels::nvrtc_version().unwrap();
    let archs = kernels::supported_archs().unwrap();
    println!("NVRTC {major}.{minor}, architectures {archs:?}");
    // Every file as Hopper machine code (the device machine's GPU)...
    match kernels::compile_all("sm_90") {
        Ok(sizes) => println!("sm_90 CUBIN bytes: {sizes:?}"),
        Err(e) => panic!("{e}"),
    }
    // ...and the PTX path (used when NVRTC is older than the GPU) for the oldest architecture.
    let arch = format!("compute_{}", archs[0]);
    match kernels::compile(kernels::KernelFile::CrossEntropy, &arch) {
        Ok(kernels::Image::Ptx(p)) => assert!(p.contains(".entry ce_fwd_f32"), "PTX for {arch} holds the kernels"),
        Ok(_) => panic!("expected PTX for {arch}, got a CUBIN"),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn a_broken_kernel_is_a_typed_error_with_the_log() {
    if !kernels::nvrtc_available() {
        let tried = format!("tried {:?}", kernels::linux_candidates("nvrtc"));
        return ela_cuda::testing::skip("no NVRTC library", &tried);
    }
    let err = kernels::compile_source("broken.cu", "extern \"C\" __global__ void k() { undefined_thing(); }", "sm_90")
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ela_core::Error::Backend { .. }), "{err:?}");
    assert!(msg.contains("undefined_thing") && msg.contains("broken.cu"), "the NVRTC log is in the message: {msg}");
}

/// ptxas's resource report names every kernel of a file with its registers and spills, and needs
/// a machine-code target.
#[test]
fn resource_usage_reports_every_kernel() {
    if !kernels::nvrtc_available() {
        let tried = format!("tried {:?}", kernels::linux_candidates("nvrtc"));
        return ela_cuda::testing::skip("no NVRTC library", &tried);
    }
    let file = kernels::KernelFile::ElaChunk { map: kernels::ChunkMap::Exp, dt: kernels::ElaDt::BF16, d: 64, dv: 64 };
    let log = kernels::resource_usage(file, "sm_90").unwrap();
    for k in ["ela_scan_m0", "ela_scan_m1", "ela_scan_join", "ela_out", "ela_rows_dot", "ela_bwd", "ela_step_fast"] {
        assert!(log.contains(&format!("Compiling entry function '{k}'")), "{k} in the report:\n{log}");
    }
    assert!(log.contains("registers") && log.contains("spill stores"), "{log}");
    let err = kernels::resource_usage(file, "compute_90").unwrap_err();
    assert!(err.to_string().contains("sm_XY"), "{err}");
}

/// A chunk module holds the scan once per mode (`ela_scan_m0`, `ela_scan_m1`, which the host
/// launches by name, with no mode argument) and no scan taking the mode at run time, beside the
/// joins, the output and the gradient kernels, at the bench's head sizes in both operand types.
#[test]
fn chunk_modules_hold_one_scan_per_mode() {
    if !kernels::nvrtc_available() {
        let tried = format!("tried {:?}", kernels::linux_candidates("nvrtc"));
        return ela_cuda::testing::skip("no NVRTC library", &tried);
    }
    // A symbol's name ends at a NUL in the ELF string table.
    let has = |elf: &[u8], k: &str| elf.windows(k.len() + 1).any(|w| &w[..k.len()] == k.as_bytes() && w[k.len()] == 0);
    for (map, dt, d) in [
        (kernels::ChunkMap::Exp, kernels::ElaDt::BF16, 64),
        (kernels::ChunkMap::Exp, kernels::ElaDt::F32, 128),
        (kernels::ChunkMap::EluPlusOne, kernels::ElaDt::BF16, 64),
    ] {
        let src = kernels::KernelFile::ElaChunk { map, dt, d, dv: d }.full_source();
        let elf = match kernels::compile_source("chunk_fwd.cu", &src, "sm_90").unwrap() {
            kernels::Image::Cubin(elf) => elf,
            _ => panic!("expected a cubin for sm_90"),
        };
        for k in ["ela_scan_m0", "ela_scan_m1", "ela_scan_join", "ela_scan_fold", "ela_out", "ela_bwd"] {
            assert!(has(&elf, k), "{k} in the {dt:?} d={d} module");
        }
        assert!(!has(&elf, "ela_scan"), "no runtime-mode ela_scan in the {dt:?} d={d} module");
    }
}

/// The tile modules compile as they run by default and with every opt-in variant
/// (`kernels::CHUNK_OPTS`, `ELA_CUDA_OPT`; at times none), alone and all together: the chunked
/// Hadamard-Exp module for 16-bit and f32 operands and both chunk lengths (64 rows; 32 for f32
/// 128-wide heads and 16-bit 256-wide ones), and the feature-map module with bf16 tensor-core and
/// f32 operands.
#[test]
fn opt_in_chunk_variants_compile() {
    if !kernels::nvrtc_available() {
        let tried = format!("tried {:?}", kernels::linux_candidates("nvrtc"));
        return ela_cuda::testing::skip("no NVRTC library", &tried);
    }
    use kernels::{ChunkMap, ElaDt, KernelFile};
    let defs: Vec<String> = kernels::CHUNK_OPTS.iter().map(|(_, d, _)| format!("#define {d} 1\n")).collect();
    // The plain source first (what runs by default), then each variant, then all together.
    let mut sets: Vec<String> = vec![String::new()];
    sets.extend(defs.iter().cloned());
    if defs.len() > 1 {
        sets.push(defs.concat());
    }
    let files = [
        KernelFile::ElaChunk { map: ChunkMap::Exp, dt: ElaDt::BF16, d: 64, dv: 64 },
        KernelFile::ElaChunk { map: ChunkMap::Exp, dt: ElaDt::BF16, d: 256, dv: 256 },
        KernelFile::ElaChunk { map: ChunkMap::Exp, dt: ElaDt::F32, d: 128, dv: 128 },
        KernelFile::ElaChunk { map: ChunkMap::EluPlusOne, dt: ElaDt::BF16, d: 256, dv: 256 },
        KernelFile::ElaChunk { map: ChunkMap::EluPlusOne, dt: ElaDt::F32, d: 64, dv: 64 },
        KernelFile::ElaLa { dt: ElaDt::BF16, tc: true, f: 64, e: 80 },
        KernelFile::ElaLa { dt: ElaDt::F32, tc: false, f: 128, e: 144 },
    ];
    for file in files {
        // The plain source whatever this process's ELA_CUDA_OPT.
        let mut src = file.full_source().into_owned();
        for def in &defs {
            src = src.replace(def.as_str(), "");
        }
        for set in &sets {
            let r = kernels::compile_source(file.name(), &(set.clone() + &src), "sm_90");
            assert!(matches!(r, Ok(kernels::Image::Cubin(_))), "{} with {set:?}: {r:?}", file.label());
        }
    }
}

/// Identity's chunk modules, which alone compile the signed kernels' extra terms (chunk_ext.cu
/// and the `ELA_FMAP == 2` parts of `ela_out` and `ela_bwd`), compile at both chunk lengths (f32
/// 64- and 128-wide heads; bf16 256-wide), with mixed widths and with 16-bit operands held to
/// three gradient blocks a multiprocessor (64-wide bf16).
#[test]
fn identity_chunk_variants_compile() {
    if !kernels::nvrtc_available() {
        let tried = format!("tried {:?}", kernels::linux_candidates("nvrtc"));
        return ela_cuda::testing::skip("no NVRTC library", &tried);
    }
    use kernels::{ChunkMap, ElaDt, KernelFile};
    let id = |dt, d, dv| KernelFile::ElaChunk { map: ChunkMap::Identity, dt, d, dv };
    for file in [id(ElaDt::F32, 128, 128), id(ElaDt::F32, 64, 128), id(ElaDt::BF16, 64, 64), id(ElaDt::BF16, 256, 256)]
    {
        let r = kernels::compile_source(file.name(), &file.full_source(), "sm_90");
        assert!(matches!(r, Ok(kernels::Image::Cubin(_))), "{}: {r:?}", file.label());
    }
}

/// The whole-model decoding step compiles for every link and weight dtype, at head sizes below,
/// at and above a warp, and with rows shorter than one 16-byte load per lane; with bf16 weights
/// also for clusters of 8 blocks per sequence (and of 2 and 4 at one shape).
#[test]
fn lm_decode_compiles_for_every_link_and_dtype() {
    if !kernels::nvrtc_available() {
        let tried = format!("tried {:?}", kernels::linux_candidates("nvrtc"));
        return ela_cuda::testing::skip("no NVRTC library", &tried);
    }
    use kernels::{ElaDt, KernelFile, LmShape};
    for wt in [ElaDt::F32, ElaDt::F16, ElaDt::BF16] {
        for link in 0..3u8 {
            for (d, heads, ff) in [(32, 2, 48), (128, 4, 256), (256, 2, 1024), (1024, 16, 4096)] {
                let clusters: &[u8] = match (wt, d) {
                    (ElaDt::BF16, 128) => &[1, 2, 4, 8],
                    (ElaDt::BF16, _) => &[1, 8],
                    _ => &[1],
                };
                for &cluster in clusters {
                    let f = KernelFile::LmDecode(LmShape { wt, d, heads, ff, link, cluster });
                    if let Err(e) = kernels::compile(f, "sm_90") {
                        panic!("{f:?}: {e}");
                    }
                }
            }
        }
    }
}
