//! Shapes too large to address are a typed `Error::TooLarge` naming the op and the shape, from
//! every op that makes a tensor of a new shape, before anything is allocated: never a wrapped
//! element count (`[2^32, 2^32]` read as 0 elements), a panic or an abort.

use ela_core::{Conv2dParams, Cpu, DType, ElaKernel, Error, FusedElaState, Shape, Tensor, MAX_ELEMENTS};

type T = Tensor<Cpu>;

const HUGE: usize = 1 << 40;

fn too_large<V: std::fmt::Debug>(r: ela_core::Result<V>, op: &str) {
    match r {
        Ok(v) => panic!("{op}: expected Error::TooLarge, got Ok({v:?})"),
        Err(e @ Error::TooLarge { .. }) => assert!(e.to_string().starts_with(op), "{e}"),
        Err(e) => panic!("{op}: expected Error::TooLarge, got {e}"),
    }
}

#[test]
fn creation_rejects_overflowing_shapes() {
    too_large(T::zeros([HUGE, HUGE], DType::F32, &Cpu), "full");
    too_large(T::zeros([usize::MAX], DType::U8, &Cpu), "full");
    too_large(T::from_vec(Vec::<f32>::new(), [1usize << 32, 1 << 32], &Cpu), "from_vec");
    too_large(T::randn(0.0, 1.0, [HUGE, HUGE], DType::F32, &mut ela_core::Rng::new(0), &Cpu), "randn");
    too_large(T::tril_mask(HUGE, HUGE, 0, &Cpu), "tril_mask");
    // The message names the shape as given.
    let e = T::zeros([HUGE, HUGE], DType::F32, &Cpu).unwrap_err().to_string();
    assert!(e.contains("[1099511627776, 1099511627776]"), "{e}");
}

#[test]
fn ops_that_grow_shapes_check_before_allocating() {
    // Each operand is small (a view of one element); the result is not.
    let one = T::zeros([1, 1], DType::F32, &Cpu).unwrap();
    let col = one.broadcast_as([HUGE, 1]).unwrap();
    too_large(one.broadcast_as([HUGE, HUGE]), "broadcast_as");
    let row = one.broadcast_as([1, HUGE]).unwrap();
    too_large(col.add(&row), "add");
    too_large(col.matmul(&row), "matmul");
    too_large(one.pad(&[(usize::MAX, 0), (0, 0)], 0.0), "pad");
    let img = T::zeros([1, 1, 1, 1], DType::F32, &Cpu).unwrap();
    too_large(img.upsample_nearest2d((HUGE, HUGE)), "upsample_nearest2d");
    let w = T::zeros([1, 1, 1, 1], DType::F32, &Cpu).unwrap();
    let p = Conv2dParams { padding: (HUGE, HUGE), ..Default::default() };
    too_large(img.conv2d(&w, &p), "conv2d");
    // Each part is within the bound (2^59 elements), their concatenation is not.
    let wide = one.broadcast_as([1, 1 << 59]).unwrap();
    too_large(T::concat(&[&wide, &wide, &wide], 1), "concat");
}

#[test]
fn empty_shapes_with_huge_dimensions_are_rejected_too() {
    // [0, 2^40, 2^40] is empty, but summing away the zero axis would give [2^40, 2^40].
    too_large(T::zeros([0, HUGE, HUGE], DType::F32, &Cpu), "full");
    assert_eq!(T::zeros([0, 1 << 20], DType::F32, &Cpu).unwrap().elem_count(), 0);
}

#[test]
fn the_bound_is_exact() {
    assert_eq!(Shape::from([MAX_ELEMENTS]).check_size("t").unwrap(), MAX_ELEMENTS);
    assert!(Shape::from([MAX_ELEMENTS + 1]).check_size("t").is_err());
    // Exactly at the bound the byte count of the widest dtype still fits in isize::MAX.
    assert!(MAX_ELEMENTS.checked_mul(DType::F64.size_in_bytes()).is_some_and(|b| b <= isize::MAX as usize));
}

#[test]
fn ela_state_with_overflowing_batch_is_an_error() {
    too_large(FusedElaState::new(ElaKernel::HadamardExp, HUGE, HUGE, 4, 4, DType::F32, &Cpu), "FusedElaState::new");
    too_large(FusedElaState::new(ElaKernel::HadamardExp, 1, 1, usize::MAX, 1, DType::F32, &Cpu), "FusedElaState::new");
    let st = FusedElaState::new(ElaKernel::HadamardExp, 2, 3, 4, 5, DType::F32, &Cpu).unwrap();
    // S [2,3,4,5], z and m [2,3,4], f32.
    assert_eq!(st.bytes(), 2 * 3 * (4 * 5 + 4 + 4) * 4);
}

#[test]
fn a_buffer_that_cannot_be_had_is_an_error_not_an_abort() {
    // Within the shape bound, but far more than any machine holds: the CPU backend reserves
    // fallibly and reports it.
    match T::zeros([MAX_ELEMENTS / 2], DType::U8, &Cpu) {
        Err(e @ Error::OutOfMemory { .. }) => assert!(e.to_string().contains("u8 elements"), "{e}"),
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
}

/// Kernel outputs are reserved fallibly too: ops whose inputs are small but whose output is 2^46
/// elements (256 TiB in f32, more than a 47-bit address space can map, whatever the kernel's
/// overcommit policy) return `Error::OutOfMemory` instead of aborting the process.
#[test]
fn a_kernel_output_that_cannot_be_had_is_an_error_not_an_abort() {
    let n = 1usize << 23;
    let col = T::zeros([n, 1], DType::F32, &Cpu).unwrap();
    let row = T::zeros([1, n], DType::F32, &Cpu).unwrap();
    let oom = |r: ela_core::Result<T>, what: &str| match r {
        Err(e @ Error::OutOfMemory { .. }) => assert!(e.to_string().contains("could not be allocated"), "{what}: {e}"),
        other => panic!("{what}: expected OutOfMemory, got {other:?}"),
    };
    oom(col.matmul(&row), "matmul");
    oom(col.add(&row), "broadcast add");
    oom(col.broadcast_as([n, n]).and_then(|b| b.contiguous()), "contiguous");
    oom(col.broadcast_as([n, n]).and_then(|b| b.to_dtype(DType::BF16)), "cast");
    oom(col.broadcast_as([n, n]).and_then(|b| b.exp()), "unary");
    oom(col.unsqueeze(1usize).and_then(|c| c.broadcast_as([n, 2, n])).and_then(|b| b.sum(1usize, false)), "reduce");
}
