//! Unit tests of `chunk.rs`: the variants' sizes and shared memory, the routing, the scan's runs.

use super::*;

/// The shared memory an H100/H200 block may opt into (CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN).
const HOPPER_SMEM: u32 = 232_448;

fn dims(d: usize, dv: usize) -> ElaDims {
    ElaDims { batch: 2, heads: 3, t: 500, d, dv }
}

#[test]
fn wide_heads_take_32_row_chunks_and_fit_a_hopper_block() {
    let k = ElaKernel::HadamardExp;
    for (dtype, d, dv, c) in [
        (DType::BF16, 64, 64, 64),
        (DType::F32, 64, 64, 64),
        (DType::F32, 128, 64, 32),
        (DType::BF16, 128, 128, 64),
        (DType::BF16, 256, 256, 32),
        (DType::F16, 256, 64, 32),
        (DType::BF16, 64, 256, 32),
    ] {
        let cv = variant_for(k, dtype, &dims(d, dv), true).expect("compiled");
        assert_eq!(cv.c, c, "{dtype:?} {d}x{dv}");
        let most = cv.scan_smem_mode(1).max(cv.out_smem()).max(cv.bwd_smem());
        assert!(most <= HOPPER_SMEM, "{dtype:?} {d}x{dv}: {most} bytes of shared memory");
    }
    // The backward of a 256-wide bf16 head is the tightest fit (2,688 bytes to spare, 128 of
    // the earlier 2,816 taken by the skewed vector of next units).
    assert_eq!(variant_for(k, DType::BF16, &dims(256, 256), true).unwrap().bwd_smem(), 229_760);
    // f32 tiles of 256-wide heads would not fit; other sizes are padded (padded.rs) or scanned.
    assert!(variant_for(k, DType::F32, &dims(256, 256), false).is_none());
    assert!(variant_for(k, DType::BF16, &dims(32, 64), false).is_none());
}

/// elu+1 takes the Hadamard-Exp kernels' elu+1 modules at their head sizes, with f32 and bf16
/// inputs, without a carried state; f16 inputs, other sizes, carried states and the other
/// feature-map kernels do not.
#[test]
fn elu_plus_one_takes_the_tiles_without_a_carried_state() {
    super::super::with_elu_tiles(true, elu_plus_one_on_the_tiles);
    let on_la =
        super::super::with_elu_tiles(false, || variant_for(ElaKernel::EluPlusOne, DType::BF16, &dims(64, 64), false));
    assert!(on_la.is_none(), "with_elu_tiles(false) sends elu+1 to the feature-map path");
}

/// The checks of the test above with the tiles on for elu+1 (this thread).
fn elu_plus_one_on_the_tiles() {
    let elu = ElaKernel::EluPlusOne;
    for (dtype, d, dv) in [(DType::BF16, 64, 64), (DType::F32, 128, 64), (DType::BF16, 256, 256)] {
        let cv = variant_for(elu, dtype, &dims(d, dv), false).expect("elu+1 on the tiles");
        assert!(matches!(cv.file, KernelFile::ElaChunk { map: ChunkMap::EluPlusOne, .. }), "{:?}", cv.file);
        assert!(variant_for(elu, dtype, &dims(d, dv), true).is_none(), "carried state");
        let exp = variant_for(ElaKernel::HadamardExp, dtype, &dims(d, dv), true).unwrap();
        assert!(matches!(exp.file, KernelFile::ElaChunk { map: ChunkMap::Exp, .. }));
    }
    assert!(variant_for(elu, DType::F16, &dims(64, 64), false).is_none());
    assert!(variant_for(elu, DType::BF16, &dims(32, 64), false).is_none());
    for k in [ElaKernel::SumSqEuclid, ElaKernel::SubSqEuclid, ElaKernel::Blueprint] {
        assert!(variant_for(k, DType::F32, &dims(64, 64), false).is_none(), "{k}");
    }
}

/// The reverse scan with its row copies (16-bit operands) still fits two blocks in a Hopper
/// multiprocessor (the blocks it is compiled for) at every 16-bit size.
#[test]
fn the_scan_with_its_row_copies_fits_two_blocks() {
    // A Hopper multiprocessor's 233,472 bytes less 1 KiB the hardware reserves per block.
    const PER_SM: u32 = 233_472;
    for (d, dv) in [(64, 64), (128, 128), (256, 256), (64, 128), (128, 64), (64, 256), (256, 64)] {
        for dt in [DType::BF16, DType::F16] {
            let cv = variant_for(ElaKernel::HadamardExp, dt, &dims(d, dv), true).expect("compiled");
            let with = cv.scan_smem_with(true);
            assert!(with > cv.scan_smem_with(false));
            assert!(2 * (with + 1024) <= PER_SM, "{dt:?} {d}x{dv}: {with} bytes");
        }
    }
    // D64: two chunks a step, each 64 rows of dy and y at 80 elements and q at 72.
    let cv = variant_for(ElaKernel::HadamardExp, DType::BF16, &dims(64, 64), true).unwrap();
    assert_eq!(cv.scan_smem_with(true) - cv.scan_smem_with(false), 2 * 64 * (2 * 80 + 72) * 2);
}

#[test]
fn runs_cover_every_chunk_and_none_is_empty() {
    // The d1024 LM's scan (64 chunks, room for two runs), a short one, a forced split.
    assert_eq!(runs_of(64, 2, false), (2, 32));
    assert_eq!(runs_of(7, 2, false), (1, 7)); // fewer than 2 x MIN_RUN_CHUNKS chunks
    assert_eq!(runs_of(33, 66, false), (7, 5));
    assert_eq!(runs_of(11, 1000, true), (11, 1));
    assert_eq!(runs_of(10, 3, true), (3, 4));
    for nch in 1..200 {
        for wanted in 0..40 {
            for forced in [false, true] {
                let (runs, len) = runs_of(nch, wanted, forced);
                assert!(runs >= 1 && len >= 1 && (runs - 1) * len < nch && runs * len >= nch, "{nch} {wanted}");
                assert!(runs <= wanted.max(1));
            }
        }
    }
}

/// The kernel-argument mirrors keep the C layouts of their device structs (`ElaExt` in
/// chunk_fwd.cu: three pointers, an int, a float; `ExtScan`: a pointer, an i64, a float, an int;
/// `ElaIo` in tile.cuh: five stride triples and the head count, padded), and the default extra
/// terms are none (null sums: the chunk kernels' and the scans' test).
#[test]
fn argument_structs_match_their_device_layouts() {
    assert_eq!((std::mem::size_of::<ExtArgs>(), std::mem::align_of::<ExtArgs>()), (32, 8));
    assert_eq!((std::mem::offset_of!(ExtArgs, kind), std::mem::offset_of!(ExtArgs, inv_s)), (24, 28));
    assert_eq!((std::mem::size_of::<ExtScanArgs>(), std::mem::align_of::<ExtScanArgs>()), (24, 8));
    assert_eq!((std::mem::offset_of!(ExtScanArgs, inv_s), std::mem::offset_of!(ExtScanArgs, norms)), (16, 20));
    assert_eq!(std::mem::size_of::<IoRows>(), 5 * 3 * 8 + 8);
    let none = ExtArgs::default();
    assert_eq!((none.sums, none.pre, none.ag), (0, 0, 0));
    assert_eq!(ExtScanArgs::default().sums, 0);
}
