//! What ptxas reports for the chunked ELA kernels (`kernels/ela/chunk_fwd.cu`, `chunk_out.cu`, `chunk_bwd.cu`,
//! and for sm_90 the warpgroup products' checks, `kernels/ela/wgmma_check.cu`), per compiled
//! variant: registers per thread, stack frame, the bytes each thread spills to
//! local memory and loads back, and the size of its machine code (the `.text.<kernel>` section of
//! the cubin: a short kernel launched as many blocks wants its code to stay in the instruction
//! cache), as a markdown table. Needs NVRTC but no GPU:
//!
//!     cargo run --release -p ela-cuda --example kernel_resources [sm_90]
//!
//! The launch bounds fix how many blocks a multiprocessor holds, and so the registers a thread
//! may use; what does not fit spills. This shows what each bound costs before a GPU measures it.
//!
//! With `ELA_KERNEL_CUBIN_DIR=DIR` it also writes each variant's cubin there (`DIR/<variant>.cubin`,
//! e.g. `BF16_d64.cubin`), for reading the machine code with `nvdisasm` or `cuobjdump -sass`.

use ela_cuda::kernels::{compile, resource_usage, ChunkMap, ElaDt, Image, KernelFile};

/// `(kernel, registers, stack frame, spill stores, spill loads)` from a ptxas `-v` log.
fn parse(log: &str) -> Vec<(String, u32, u32, u32, u32)> {
    let num = |s: &str, key: &str| -> u32 {
        s.split(key).next().and_then(|h| h.split_whitespace().last()).and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    let mut rows = Vec::new();
    let (mut name, mut frame) = (String::new(), (0, 0, 0));
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            name = rest.split('\'').next().unwrap_or_default().to_string();
        } else if line.contains("bytes stack frame") {
            frame = (num(line, "bytes stack frame"), num(line, "bytes spill stores"), num(line, "bytes spill loads"));
        } else if line.contains("Used ") && line.contains(" registers") {
            let regs =
                line.split("Used ").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok());
            rows.push((name.clone(), regs.unwrap_or(0), frame.0, frame.1, frame.2));
        }
    }
    rows
}

/// Bytes of machine code per kernel: the sizes of the cubin's `.text.<kernel>` sections (ELF64,
/// little-endian). Empty if the image is not one.
fn code_sizes(elf: &[u8]) -> Vec<(String, u64)> {
    let u16_at = |o: usize| elf.get(o..o + 2).map_or(0, |b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at =
        |o: usize| elf.get(o..o + 4).map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])) as usize);
    let u64_at = |o: usize| elf.get(o..o + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        return Vec::new();
    }
    let (shoff, shentsize, shnum, shstrndx) = (u64_at(0x28) as usize, u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let header = |i: usize| shoff + i * shentsize;
    let names = u64_at(header(shstrndx) + 0x18) as usize;
    (0..shnum)
        .filter_map(|i| {
            let name_at = names + u32_at(header(i));
            let len = elf.get(name_at..)?.iter().position(|&b| b == 0)?;
            let name = std::str::from_utf8(&elf[name_at..name_at + len]).ok()?;
            Some((name.strip_prefix(".text.")?.to_string(), u64_at(header(i) + 0x20)))
        })
        .collect()
}

fn main() -> ela_core::Result<()> {
    let arch = std::env::args().nth(1).unwrap_or_else(|| "sm_90".into());
    println!("| variant | kernel | registers | stack frame (B) | spill stores (B) | spill loads (B) | code (KB) |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    // Hadamard Exp's variants (D = Dv) and their elu+1 and Identity maps, then the feature-map kernels' (`la_chunk.cu`) as the
    // identity and elu+1 kernels use them: f32 operands, and bf16 tensor cores for elu+1's bf16
    // inputs, at D = 64 and 128 ([v | 1] padded to 80 and 144 columns).
    let mut files = Vec::new();
    for map in [ChunkMap::Exp, ChunkMap::EluPlusOne, ChunkMap::Identity] {
        for (dt, d) in [(ElaDt::BF16, 64), (ElaDt::BF16, 128), (ElaDt::BF16, 256), (ElaDt::F32, 64), (ElaDt::F32, 128)]
        {
            let name = match map {
                ChunkMap::Exp => "",
                ChunkMap::EluPlusOne => "elu+1 ",
                ChunkMap::Identity => "identity ",
            };
            files.push((format!("{name}{dt:?} d={d}"), KernelFile::ElaChunk { map, dt, d, dv: d }));
        }
    }
    for (dt, tc, f, e) in [
        (ElaDt::F32, false, 64, 80),
        (ElaDt::F32, false, 128, 144),
        (ElaDt::BF16, true, 64, 80),
        (ElaDt::BF16, true, 128, 144),
    ] {
        files.push((format!("la {dt:?} f={f} e={e}"), KernelFile::ElaLa { dt, tc, f, e }));
    }
    // The norms (their RMS backward variants: `rms_norm_bwd_dw` and the register-held
    // `rms_norm_bwd_dw1..4`).
    files.push(("softmax/norm".to_string(), KernelFile::SoftmaxNorm));
    // The warpgroup products' checks (Hopper only): whether ptxas keeps the wgmma pipelined.
    if KernelFile::WgmmaCheck.arch_for(&arch).is_ok() {
        files.push(("wgmma check".to_string(), KernelFile::WgmmaCheck));
    }
    let dump = std::env::var_os("ELA_KERNEL_CUBIN_DIR").map(std::path::PathBuf::from);
    for (label, file) in files {
        let log = resource_usage(file, &arch)?;
        // ptxas's warnings (e.g. wgmma products it had to serialize) on stderr, once per line.
        let mut seen = std::collections::HashSet::new();
        for line in log.lines().filter(|l| l.contains("arning") && seen.insert(l.to_string())) {
            eprintln!("{label}: {line}");
        }
        let sizes = match compile(file, &arch)? {
            Image::Cubin(elf) => {
                if let Some(dir) = &dump {
                    let name: String =
                        label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '=' { c } else { '_' }).collect();
                    let path = dir.join(format!("{}.cubin", name.replace('=', "")));
                    std::fs::write(&path, &elf).map_err(|e| {
                        ela_core::Error::invalid("kernel_resources", format!("writing {}: {e}", path.display()))
                    })?;
                }
                code_sizes(&elf)
            }
            Image::Ptx(_) => Vec::new(),
        };
        for (kernel, regs, frame, stores, loads) in parse(&log) {
            let code = sizes
                .iter()
                .find(|(k, _)| *k == kernel)
                .map_or("?".to_string(), |(_, n)| format!("{:.1}", *n as f64 / 1024.0));
            println!("| {label} | `{kernel}` | {regs} | {frame} | {stores} | {loads} | {code} |");
        }
    }
    Ok(())
}
