//! What ptxas reports for the chunked ELA kernels (`kernels/ela/chunk_fwd.cu`, `chunk_bwd.cu`),
//! per compiled variant: registers per thread, stack frame, and the bytes each thread spills to
//! local memory and loads back, as a markdown table. Needs NVRTC but no GPU:
//!
//!     cargo run --release -p ela-cuda --example kernel_resources [sm_90]
//!
//! The launch bounds fix how many blocks a multiprocessor holds, and so the registers a thread
//! may use; what does not fit spills. This shows what each bound costs before a GPU measures it.

use ela_cuda::kernels::{resource_usage, ElaDt, KernelFile};

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

fn main() -> ela_core::Result<()> {
    let arch = std::env::args().nth(1).unwrap_or_else(|| "sm_90".into());
    println!("| variant | kernel | registers | stack frame (B) | spill stores (B) | spill loads (B) |");
    println!("|---|---|---:|---:|---:|---:|");
    let variants = [(ElaDt::BF16, 64), (ElaDt::BF16, 128), (ElaDt::BF16, 256), (ElaDt::F32, 64), (ElaDt::F32, 128)];
    for (dt, d) in variants {
        let log = resource_usage(KernelFile::ElaChunk { dt, d, dv: d }, &arch)?;
        for (kernel, regs, frame, stores, loads) in parse(&log) {
            println!("| {dt:?} d={d} | `{kernel}` | {regs} | {frame} | {stores} | {loads} |");
        }
    }
    Ok(())
}
