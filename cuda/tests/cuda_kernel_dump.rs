//! `ELA_CUDA_DUMP_DIR` and `ELA_CUDA_LINEINFO` (profiling aids, `kernels::compile`): the compiled
//! CUBIN is written where the variable says, under the variant's label, with a line table.
//! A test binary of its own: both variables are read once per process, before any compile.
use ela_cuda::kernels;

#[test]
fn compiled_cubins_are_dumped_with_line_tables() {
    if !kernels::nvrtc_available() {
        let tried = format!("tried {:?}", kernels::linux_candidates("nvrtc"));
        return ela_cuda::testing::skip("no NVRTC library", &tried);
    }
    let dir = std::env::temp_dir().join(format!("ela-cubin-dump-{}", std::process::id()));
    std::env::set_var("ELA_CUDA_DUMP_DIR", &dir);
    std::env::set_var("ELA_CUDA_LINEINFO", "1");
    let file = kernels::KernelFile::Reduce;
    let kernels::Image::Cubin(elf) = kernels::compile(file, "sm_90").unwrap() else {
        panic!("expected a cubin for sm_90");
    };
    let dumped = std::fs::read(dir.join(format!("{}.cubin", file.label()))).unwrap();
    assert_eq!(dumped, elf, "the dump holds what was compiled");
    // The line table of the machine code is an ELF section of its own.
    let has = |name: &[u8]| elf.windows(name.len()).any(|w| w == name);
    assert!(has(b".nv_debug_line_sass") || has(b".debug_line"), "no line table in the cubin");
    std::fs::remove_dir_all(&dir).unwrap();
}
