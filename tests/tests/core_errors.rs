//! Every class of bad input to the `Tensor<Cpu>` API is a typed `Error` (never a panic), and its
//! message names the op and the shapes / values involved.

use ela_core::{CmpOp, Conv2dParams, Cpu, DType, Error, Pool2dParams, Shape, Tensor};

type T = Tensor<Cpu>;

fn f32s(shape: &[usize]) -> T {
    let n: usize = shape.iter().product();
    T::from_vec((0..n).map(|i| i as f32 * 0.5 - 1.0).collect::<Vec<f32>>(), shape.to_vec(), &Cpu).unwrap()
}

fn f64s(shape: &[usize]) -> T {
    f32s(shape).to_dtype(DType::F64).unwrap()
}

fn ids(v: &[u32]) -> T {
    T::from_vec(v.to_vec(), v.len(), &Cpu).unwrap()
}

/// The error of a call that must fail.
fn err<V: std::fmt::Debug>(r: ela_core::Result<V>, what: &str) -> Error {
    match r {
        Ok(v) => panic!("{what}: expected an error, got Ok({v:?})"),
        Err(e) => e,
    }
}

/// Asserts that the message mentions every needle.
fn says(e: &Error, needles: &[&str]) {
    let msg = e.to_string();
    for n in needles {
        assert!(msg.contains(n), "message {msg:?} should mention {n:?}");
    }
}

// ====================================================================== mismatched shapes

#[test]
fn add_non_broadcastable() {
    let e = err(f32s(&[2, 3]).add(&f32s(&[4, 3])), "add");
    assert!(matches!(e, Error::Broadcast { op: "add", .. }), "{e:?}");
    says(&e, &["add", "[2, 3]", "[4, 3]"]);
    let e = err(f32s(&[2, 3]).mul(&f32s(&[2])), "mul");
    assert!(matches!(e, Error::Broadcast { op: "mul", .. }), "{e:?}");
    says(&e, &["mul", "[2, 3]", "[2]"]);
    let e = err(f32s(&[5, 1, 3]).maximum(&f32s(&[2, 4])), "maximum");
    says(&e, &["maximum", "[5, 1, 3]", "[2, 4]"]);
    let e = err(f32s(&[3]).cmp(CmpOp::Lt, &f32s(&[4])), "cmp");
    assert!(matches!(e, Error::Broadcast { op: "cmp", .. }), "{e:?}");
    says(&e, &["cmp", "[3]", "[4]"]);
    let mask = T::zeros([2], DType::U8, &Cpu).unwrap();
    let e = err(mask.where_cond(&f32s(&[3]), &f32s(&[3])), "where_cond");
    assert!(matches!(e, Error::Broadcast { op: "where_cond", .. }), "{e:?}");
    says(&e, &["where_cond", "[2]", "[3]"]);
    let e = err(f32s(&[2, 3]).broadcast_as([3, 3]), "broadcast_as");
    assert!(matches!(e, Error::Broadcast { op: "broadcast_as", .. }), "{e:?}");
    says(&e, &["broadcast_as", "[2, 3]", "[3, 3]"]);
    let e = err(f32s(&[2, 3]).sum_to(&Shape::from([4, 3])), "sum_to");
    assert!(matches!(e, Error::Broadcast { op: "sum_to", .. }), "{e:?}");
    says(&e, &["sum_to", "[2, 3]", "[4, 3]"]);
}

#[test]
fn matmul_shape_errors() {
    let e = err(f32s(&[2, 3]).matmul(&f32s(&[4, 5])), "matmul inner");
    assert!(matches!(e, Error::ShapeMismatch { op: "matmul", .. }), "{e:?}");
    says(&e, &["matmul", "[2, 3]", "[4, 5]", "3", "4"]);
    let e = err(f32s(&[2, 2, 3]).matmul(&f32s(&[3, 3, 4])), "matmul batch");
    assert!(matches!(e, Error::ShapeMismatch { op: "matmul", .. }), "{e:?}");
    says(&e, &["matmul", "[2, 2, 3]", "[3, 3, 4]"]);
    let e = err(f32s(&[3]).matmul(&f32s(&[3, 2])), "matmul rank 1");
    assert!(matches!(e, Error::RankMismatch { op: "matmul", .. }), "{e:?}");
    says(&e, &["matmul", "[3]"]);
    let e = err(f32s(&[3]).t(), "t of rank 1");
    assert!(matches!(e, Error::RankMismatch { op: "t", .. }), "{e:?}");
    says(&e, &["t:", "[3]"]);
}

#[test]
fn conv2d_shape_errors() {
    let p = Conv2dParams::default();
    // 3 input channels, weight expects 2
    let e = err(f32s(&[1, 3, 5, 5]).conv2d(&f32s(&[4, 2, 3, 3]), &p), "conv2d channels");
    assert!(matches!(e, Error::ShapeMismatch { op: "conv2d", .. }), "{e:?}");
    says(&e, &["conv2d", "[1, 3, 5, 5]", "[4, 2, 3, 3]"]);
    // groups that do not divide the channels
    let g = Conv2dParams { groups: 2, ..p };
    let e = err(f32s(&[1, 3, 5, 5]).conv2d(&f32s(&[4, 1, 3, 3]), &g), "conv2d groups");
    assert!(matches!(e, Error::ShapeMismatch { op: "conv2d", .. }), "{e:?}");
    says(&e, &["conv2d", "[1, 3, 5, 5]", "[4, 1, 3, 3]", "groups 2"]);
    // a kernel larger than the padded input
    let e = err(f32s(&[1, 1, 2, 2]).conv2d(&f32s(&[1, 1, 3, 3]), &p), "conv2d kernel");
    assert!(matches!(e, Error::ShapeMismatch { op: "conv2d", .. }), "{e:?}");
    says(&e, &["conv2d", "[1, 1, 2, 2]", "[1, 1, 3, 3]"]);
    // not NCHW
    let e = err(f32s(&[3, 5, 5]).conv2d(&f32s(&[4, 3, 3, 3]), &p), "conv2d rank");
    assert!(matches!(e, Error::RankMismatch { op: "conv2d", .. }), "{e:?}");
    says(&e, &["conv2d", "[3, 5, 5]"]);
    // zero stride / groups
    let z = Conv2dParams { stride: (0, 1), ..p };
    let e = err(f32s(&[1, 1, 4, 4]).conv2d(&f32s(&[1, 1, 3, 3]), &z), "conv2d stride 0");
    assert!(matches!(e, Error::InvalidArgument { op: "conv2d", .. }), "{e:?}");
    says(&e, &["conv2d", "stride"]);
    let z = Conv2dParams { groups: 0, ..p };
    let e = err(f32s(&[1, 1, 4, 4]).conv2d(&f32s(&[1, 1, 3, 3]), &z), "conv2d groups 0");
    assert!(matches!(e, Error::InvalidArgument { op: "conv2d", .. }), "{e:?}");
    // dtype mismatch
    let e = err(f32s(&[1, 1, 4, 4]).conv2d(&f64s(&[1, 1, 3, 3]), &p), "conv2d dtype");
    assert!(matches!(e, Error::DTypeMismatch { op: "conv2d", .. }), "{e:?}");
    says(&e, &["conv2d", "F32", "F64"]);
}

#[test]
fn pooling_and_upsample_argument_errors() {
    let p = Pool2dParams { kernel: (3, 3), stride: (1, 1), padding: (0, 0), count_include_pad: false };
    let e = err(f32s(&[1, 1, 2, 2]).max_pool2d(&p), "max_pool2d too small");
    assert!(matches!(e, Error::InvalidArgument { op: "max_pool2d", .. }), "{e:?}");
    says(&e, &["max_pool2d", "[1, 1, 2, 2]"]);
    let e = err(f32s(&[1, 1, 2, 2]).avg_pool2d(&p), "avg_pool2d too small");
    assert!(matches!(e, Error::InvalidArgument { op: "avg_pool2d", .. }), "{e:?}");
    says(&e, &["avg_pool2d", "[1, 1, 2, 2]"]);
    let big_pad = Pool2dParams { kernel: (2, 2), stride: (1, 1), padding: (2, 0), count_include_pad: true };
    let e = err(f32s(&[1, 1, 4, 4]).avg_pool2d(&big_pad), "avg_pool2d padding");
    assert!(matches!(e, Error::InvalidArgument { op: "avg_pool2d", .. }), "{e:?}");
    says(&e, &["avg_pool2d", "padding"]);
    let zero = Pool2dParams { kernel: (0, 2), ..p };
    let e = err(f32s(&[1, 1, 4, 4]).max_pool2d(&zero), "max_pool2d kernel 0");
    assert!(matches!(e, Error::InvalidArgument { op: "max_pool2d", .. }), "{e:?}");
    let e = err(f32s(&[4, 4]).max_pool2d(&p), "max_pool2d rank");
    assert!(matches!(e, Error::RankMismatch { op: "max_pool2d", .. }), "{e:?}");
    says(&e, &["max_pool2d", "[4, 4]"]);
    let e = err(f32s(&[1, 1, 2, 2]).upsample_nearest2d((0, 2)), "upsample factor 0");
    assert!(matches!(e, Error::InvalidArgument { op: "upsample_nearest2d", .. }), "{e:?}");
    says(&e, &["upsample_nearest2d", "(0, 2)"]);
    let e = err(f32s(&[2, 2]).upsample_nearest2d((2, 2)), "upsample rank");
    assert!(matches!(e, Error::RankMismatch { op: "upsample_nearest2d", .. }), "{e:?}");
}

#[test]
fn cross_entropy_shape_errors() {
    let logits = f32s(&[3, 4]);
    let e = err(logits.cross_entropy(&ids(&[0, 1]), None), "cross_entropy targets length");
    assert!(matches!(e, Error::ShapeMismatch { op: "cross_entropy", .. }), "{e:?}");
    says(&e, &["cross_entropy", "[3, 4]", "[2]"]);
    let e = err(f32s(&[3]).cross_entropy(&ids(&[0, 1, 2]), None), "cross_entropy logits rank");
    assert!(matches!(e, Error::ShapeMismatch { op: "cross_entropy", .. }), "{e:?}");
    says(&e, &["cross_entropy", "[3]"]);
}

#[test]
fn norm_parameter_shape_errors() {
    let x = f32s(&[2, 4]);
    let e = err(x.rms_norm(Some(&f32s(&[3])), 1e-5), "rms_norm weight");
    assert!(matches!(e, Error::ShapeMismatch { op: "rms_norm", .. }), "{e:?}");
    says(&e, &["rms_norm", "[2, 4]", "[3]"]);
    let e = err(x.layer_norm(None, Some(&f32s(&[4, 1])), 1e-5), "layer_norm bias");
    assert!(matches!(e, Error::ShapeMismatch { op: "layer_norm", .. }), "{e:?}");
    says(&e, &["layer_norm", "[2, 4]", "[4, 1]"]);
    let e = err(T::scalar(1.0, DType::F32, &Cpu).unwrap().rms_norm(None, 1e-5), "rms_norm rank 0");
    assert!(matches!(e, Error::RankMismatch { op: "rms_norm", .. }), "{e:?}");
}

#[test]
fn swiglu_packed_shape_errors() {
    let e = err(f32s(&[2, 5]).swiglu_packed(), "swiglu_packed odd last axis");
    assert!(matches!(e, Error::InvalidArgument { op: "swiglu_packed", .. }), "{e:?}");
    says(&e, &["swiglu_packed", "[2, 5]", "even"]);
    let e = err(T::scalar(1.0, DType::F32, &Cpu).unwrap().swiglu_packed(), "swiglu_packed rank 0");
    assert!(matches!(e, Error::InvalidArgument { op: "swiglu_packed", .. }), "{e:?}");
    let e = err(f32s(&[2, 6]).swiglu_packed_backward(&f32s(&[2, 6])), "swiglu_packed_backward gradient");
    assert!(matches!(e, Error::ShapeMismatch { op: "swiglu_packed_backward", .. }), "{e:?}");
    says(&e, &["swiglu_packed_backward", "[2, 6]", "[2, 3]"]);
    let e = err(f32s(&[2, 6]).swiglu_packed_backward(&f64s(&[2, 3])), "swiglu_packed_backward dtype");
    assert!(matches!(e, Error::DTypeMismatch { op: "swiglu_packed_backward", .. }), "{e:?}");
    let e = err(ids(&[1, 2]).swiglu_packed(), "swiglu_packed integers");
    assert!(matches!(e, Error::UnsupportedDType { op: "swiglu_packed", .. }), "{e:?}");
}

#[test]
fn concat_and_stack_shape_errors() {
    let (a, b) = (f32s(&[2, 3]), f32s(&[3, 3]));
    let e = err(T::concat(&[&a, &b], 1usize), "concat");
    assert!(matches!(e, Error::ShapeMismatch { op: "concat", .. }), "{e:?}");
    says(&e, &["concat", "[2, 3]", "[3, 3]"]);
    let e = err(T::concat(&[&a, &f32s(&[2, 3, 1])], 0usize), "concat rank");
    assert!(matches!(e, Error::ShapeMismatch { op: "concat", .. }), "{e:?}");
    says(&e, &["concat", "[2, 3]", "[2, 3, 1]"]);
    let e = err(T::concat(&[&a, &f64s(&[2, 3])], 0usize), "concat dtype");
    assert!(matches!(e, Error::DTypeMismatch { op: "concat", .. }), "{e:?}");
    let e = err(T::concat(&[], 0usize), "concat of nothing");
    assert!(matches!(e, Error::InvalidArgument { op: "concat", .. }), "{e:?}");
    let e = err(T::stack(&[], 0usize), "stack of nothing");
    assert!(matches!(e, Error::InvalidArgument { op: "stack", .. }), "{e:?}");
    let e = err(T::stack(&[&a, &b], 0usize), "stack");
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
}

#[test]
fn index_tensor_shape_errors() {
    let x = f32s(&[3, 4]);
    let ids2 = T::from_vec(vec![0u32, 1, 2, 0], [2, 2], &Cpu).unwrap();
    let e = err(x.index_select(&ids2, 0usize), "index_select rank-2 ids");
    assert!(matches!(e, Error::RankMismatch { op: "index_select", .. }), "{e:?}");
    says(&e, &["index_select", "[2, 2]"]);
    let e = err(x.gather(&ids(&[0, 1]), 1usize), "gather ids rank");
    assert!(matches!(e, Error::ShapeMismatch { op: "gather", .. }), "{e:?}");
    says(&e, &["gather", "[3, 4]", "[2]"]);
    let bad = T::zeros([2, 4], DType::U32, &Cpu).unwrap();
    let e = err(x.gather(&bad, 1usize), "gather other dims");
    assert!(matches!(e, Error::ShapeMismatch { op: "gather", .. }), "{e:?}");
    says(&e, &["gather", "[3, 4]", "[2, 4]"]);
    let g = T::zeros([3, 2], DType::U32, &Cpu).unwrap();
    let e = err(x.scatter_add(&g, &f32s(&[3, 3]), 1usize), "scatter_add src shape");
    assert!(matches!(e, Error::ShapeMismatch { op: "scatter_add", .. }), "{e:?}");
    says(&e, &["scatter_add", "[3, 2]", "[3, 3]"]);
    let e = err(f32s(&[2, 4]).index_add(&ids(&[0, 1, 2]), 0usize, &Shape::from([5, 4])), "index_add count");
    assert!(matches!(e, Error::ShapeMismatch { op: "index_add", .. }), "{e:?}");
    says(&e, &["index_add", "[2, 4]", "[5, 4]"]);
    let e = err(f32s(&[2, 4]).index_add(&ids(&[0, 1]), 0usize, &Shape::from([5, 3])), "index_add other dims");
    assert!(matches!(e, Error::ShapeMismatch { op: "index_add", .. }), "{e:?}");
    let e = err(x.pad(&[(1, 1)], 0.0), "pad pairs");
    assert!(matches!(e, Error::InvalidArgument { op: "pad", .. }), "{e:?}");
    says(&e, &["pad", "[3, 4]"]);
    let e = err(f32s(&[3]).embedding(&ids(&[0])), "embedding table rank");
    assert!(matches!(e, Error::RankMismatch { op: "embedding", .. }), "{e:?}");
    says(&e, &["embedding", "[3]"]);
}

// ====================================================================== bad axes

#[test]
fn axis_out_of_range() {
    let x = f32s(&[2, 3]);
    let e = err(x.sum(5usize, false), "sum axis 5");
    assert!(matches!(e, Error::Axis { op: "sum", axis: 5, .. }), "{e:?}");
    says(&e, &["sum", "5", "[2, 3]"]);
    let e = err(x.sum(-3isize, true), "sum axis -3");
    assert!(matches!(e, Error::Axis { op: "sum", axis: -3, .. }), "{e:?}");
    says(&e, &["sum", "-3", "[2, 3]"]);
    let e = err(x.sum(2usize, false), "sum axis == rank");
    assert!(matches!(e, Error::Axis { op: "sum", axis: 2, .. }), "{e:?}");
    type Op = fn(&T) -> ela_core::Result<T>;
    let cases: Vec<(&str, Op)> = vec![
        ("mean", |t| t.mean(2usize, false)),
        ("max", |t| t.max(-3isize, false)),
        ("min", |t| t.min(7usize, true)),
        ("argmax", |t| t.argmax(2usize, false)),
        ("argmin", |t| t.argmin(-3isize, false)),
        ("logsumexp", |t| t.logsumexp(2usize, false)),
        ("cumsum", |t| t.cumsum(2usize, false, false)),
        ("softmax", |t| t.softmax(2usize)),
        ("log_softmax", |t| t.log_softmax(-3isize)),
        ("narrow", |t| t.narrow(2usize, 0, 1)),
        ("transpose", |t| t.transpose(0usize, 2usize)),
        ("squeeze", |t| t.squeeze(-3isize)),
        ("unsqueeze", |t| t.unsqueeze(4usize)),
        ("flatten", |t| t.flatten(0usize, 2usize)),
        ("index_select", |t| t.index_select(&ids(&[0]), 2usize)),
        ("gather", |t| t.gather(&T::zeros([2, 3], DType::U32, &Cpu)?, 2usize)),
        ("topk", |t| t.topk(1, 2usize).map(|p| p.0)),
        ("dim", |t| t.dim(2usize).map(|_| t.clone())),
    ];
    for (op, f) in cases {
        let e = err(f(&x), op);
        assert!(matches!(e, Error::Axis { .. }), "{op}: {e:?}");
        says(&e, &[op, "[2, 3]"]);
    }
    // Negative axes on a rank-0 tensor are out of range too.
    let s = T::scalar(1.0, DType::F32, &Cpu).unwrap();
    let e = err(s.sum(-1isize, false), "sum of a scalar");
    assert!(matches!(e, Error::Axis { op: "sum", axis: -1, .. }), "{e:?}");
    says(&e, &["sum", "-1", "[]"]);
    let e = err(T::concat(&[&x, &x], 2usize), "concat axis");
    assert!(matches!(e, Error::Axis { op: "concat", .. }), "{e:?}");
    let e = err(T::stack(&[&x, &x], 4usize), "stack axis");
    assert!(matches!(e, Error::Axis { op: "stack", .. }), "{e:?}");
    let e = err(x.permute(&[0, 0]), "permute");
    assert!(matches!(e, Error::InvalidArgument { op: "permute", .. }), "{e:?}");
    says(&e, &["permute", "[0, 0]", "[2, 3]"]);
    let e = err(x.split(0, 0usize), "split size 0");
    assert!(matches!(e, Error::InvalidArgument { op: "split", .. }), "{e:?}");
    let e = err(x.chunk(0, 0usize), "chunk 0");
    assert!(matches!(e, Error::InvalidArgument { op: "chunk", .. }), "{e:?}");
}

// ====================================================================== out-of-range indices

#[test]
fn index_out_of_range() {
    let x = f32s(&[2, 3]);
    let e = err(x.index_select(&ids(&[0, 3]), 1usize), "index_select");
    assert!(matches!(e, Error::Index { op: "index_select", index: 3, size: 3, axis: 1, .. }), "{e:?}");
    says(&e, &["index_select", "3", "[2, 3]"]);
    let e = err(x.index_select(&ids(&[2]), -2isize), "index_select negative axis");
    assert!(matches!(e, Error::Index { op: "index_select", index: 2, size: 2, axis: 0, .. }), "{e:?}");
    let g = T::from_vec(vec![0u32, 1, 2, 0, 1, 3], [2, 3], &Cpu).unwrap();
    let e = err(x.gather(&g, 1usize), "gather");
    assert!(matches!(e, Error::Index { op: "gather", index: 3, size: 3, .. }), "{e:?}");
    says(&e, &["gather", "3", "[2, 3]"]);
    let e = err(x.scatter_add(&g, &x, 1usize), "scatter_add");
    assert!(matches!(e, Error::Index { op: "scatter_add", index: 3, .. }), "{e:?}");
    says(&e, &["scatter_add", "3", "[2, 3]"]);
    let e = err(f32s(&[2, 3]).index_add(&ids(&[0, 4]), 0usize, &Shape::from([4, 3])), "index_add");
    assert!(matches!(e, Error::Index { op: "index_add", index: 4, size: 4, .. }), "{e:?}");
    says(&e, &["index_add", "4", "[4, 3]"]);
    let logits = f32s(&[2, 3]);
    let e = err(logits.cross_entropy(&ids(&[0, 3]), None), "cross_entropy target");
    assert!(matches!(e, Error::Index { op: "cross_entropy", index: 3, size: 3, .. }), "{e:?}");
    says(&e, &["cross_entropy", "3", "[2, 3]"]);
    // The ignore index itself may be out of range; other targets may not.
    assert!(logits.cross_entropy(&ids(&[0, 999]), Some(999)).is_ok());
    let e = err(logits.cross_entropy(&ids(&[7, 999]), Some(999)), "cross_entropy target with ignore");
    assert!(matches!(e, Error::Index { op: "cross_entropy", index: 7, .. }), "{e:?}");
}

#[test]
fn embedding_index_out_of_range() {
    let table = f32s(&[5, 2]);
    let e = err(table.embedding(&ids(&[1, 10])), "embedding");
    assert!(matches!(e, Error::Index { index: 10, size: 5, .. }), "{e:?}");
    says(&e, &["10", "[5, 2]"]);
}

#[test]
fn embedding_errors_name_embedding() {
    let table = f32s(&[5, 2]);
    let e = err(table.embedding(&ids(&[1, 10])), "embedding id 10");
    says(&e, &["embedding"]);
    let fids = T::from_vec(vec![0f32, 1.0], 2, &Cpu).unwrap();
    let e = err(table.embedding(&fids), "embedding f32 ids");
    says(&e, &["embedding"]);
}

// ====================================================================== wrong dtypes

#[test]
fn dtype_errors() {
    let e = err(f32s(&[2]).add(&f64s(&[2])), "add f32 + f64");
    assert!(matches!(e, Error::DTypeMismatch { op: "add", lhs: DType::F32, rhs: DType::F64 }), "{e:?}");
    says(&e, &["add", "F32", "F64"]);
    let e = err(f64s(&[2, 2]).matmul(&f32s(&[2, 2])), "matmul f64 @ f32");
    assert!(matches!(e, Error::DTypeMismatch { op: "matmul", .. }), "{e:?}");
    says(&e, &["matmul", "F64", "F32"]);
    let e = err(f32s(&[2]).cmp(CmpOp::Eq, &f64s(&[2])), "cmp");
    assert!(matches!(e, Error::DTypeMismatch { op: "cmp", .. }), "{e:?}");
    // where_cond: the condition must be u8, the branches must agree.
    let e = err(f32s(&[2]).where_cond(&f32s(&[2]), &f32s(&[2])), "where_cond f32 condition");
    assert!(matches!(e, Error::UnsupportedDType { op: "where_cond", dtype: DType::F32, .. }), "{e:?}");
    says(&e, &["where_cond", "F32", "u8"]);
    let m = T::ones([2], DType::U8, &Cpu).unwrap();
    let e = err(m.where_cond(&f32s(&[2]), &f64s(&[2])), "where_cond branches");
    assert!(matches!(e, Error::DTypeMismatch { op: "where_cond", .. }), "{e:?}");
    let e = err(f32s(&[2]).masked_fill(&f32s(&[2]), 0.0), "masked_fill f32 mask");
    assert!(matches!(e, Error::UnsupportedDType { op: "masked_fill", dtype: DType::F32, .. }), "{e:?}");
    says(&e, &["masked_fill", "F32"]);
    // Index arguments must be u32.
    let fids = T::from_vec(vec![0f32, 1.0], 2, &Cpu).unwrap();
    let e = err(f32s(&[5, 2]).embedding(&fids), "embedding f32 ids");
    assert!(matches!(e, Error::UnsupportedDType { dtype: DType::F32, .. }), "{e:?}");
    says(&e, &["F32", "u32"]);
    let e = err(f32s(&[3, 2]).index_select(&fids, 0usize), "index_select f32 ids");
    assert!(matches!(e, Error::UnsupportedDType { op: "index_select", dtype: DType::F32, .. }), "{e:?}");
    let e = err(f32s(&[2, 2]).gather(&f32s(&[2, 2]), 1usize), "gather f32 ids");
    assert!(matches!(e, Error::UnsupportedDType { op: "gather", dtype: DType::F32, .. }), "{e:?}");
    let e = err(f32s(&[2, 3]).cross_entropy(&fids, None), "cross_entropy f32 targets");
    assert!(matches!(e, Error::UnsupportedDType { op: "cross_entropy", dtype: DType::F32, .. }), "{e:?}");
    says(&e, &["cross_entropy", "F32", "u32"]);
    // Float-only ops on integer tensors.
    let u = T::from_vec(vec![1u32, 2, 3], 3, &Cpu).unwrap();
    let e = err(u.exp(), "exp on u32");
    assert!(matches!(e, Error::UnsupportedDType { op: "exp", dtype: DType::U32, .. }), "{e:?}");
    says(&e, &["exp", "U32"]);
    type Op = fn(&T) -> ela_core::Result<T>;
    let cases: Vec<(&str, Op)> = vec![
        ("neg", |t| t.neg()),
        ("gelu", |t| t.gelu()),
        ("affine", |t| t.mul_scalar(2.0)),
        ("add", |t| t.add(t)),
        ("sum", |t| t.sum(0usize, false)),
        ("argmax", |t| t.argmax(0usize, false)),
        ("cumsum", |t| t.cumsum(0usize, false, false)),
        ("softmax", |t| t.softmax(0usize)),
        ("matmul", |t| t.reshape([3, 1])?.matmul(&t.reshape([1, 3])?)),
        ("rms_norm", |t| t.rms_norm(None, 1e-5)),
        ("index_add", |t| t.index_add(&ids(&[0, 0, 0]), 0usize, &Shape::from([1]))),
    ];
    for (op, f) in cases {
        let e = err(f(&u), op);
        assert!(matches!(e, Error::UnsupportedDType { dtype: DType::U32, .. }), "{op}: {e:?}");
        says(&e, &[op, "U32"]);
    }
    let e = err(f32s(&[2]).to_vec::<f64>(), "to_vec wrong type");
    assert!(matches!(e, Error::DTypeMismatch { op: "to_vec", .. }), "{e:?}");
}

// ====================================================================== element counts

#[test]
fn from_vec_element_count() {
    let e = err(T::from_vec(vec![1f32; 5], [2, 3], &Cpu), "from_vec");
    assert!(matches!(e, Error::ElementCount { op: "from_vec", got: 5, .. }), "{e:?}");
    says(&e, &["from_vec", "[2, 3]", "6", "5"]);
    let e = err(T::from_vec(Vec::<f64>::new(), (), &Cpu), "from_vec scalar");
    assert!(matches!(e, Error::ElementCount { got: 0, .. }), "{e:?}");
    says(&e, &["from_vec", "[]", "1", "0"]);
}

#[test]
fn reshape_element_count_is_an_error() {
    // Whatever the variant, reshape to a wrong element count fails and names both shapes.
    let e = err(f32s(&[2, 3]).reshape([4]), "reshape");
    says(&e, &["reshape", "[2, 3]", "[4]"]);
    let e = err(f32s(&[2, 3]).t().unwrap().reshape([7]), "reshape of a view");
    says(&e, &["reshape", "[3, 2]", "[7]"]);
    let e = err(f32s(&[2, 3]).reshape([usize::MAX, 4]), "reshape inferred");
    assert!(matches!(e, Error::InvalidArgument { op: "reshape", .. }), "{e:?}");
    says(&e, &["reshape", "[2, 3]", "4"]);
    let e = err(f32s(&[2, 3]).reshape([usize::MAX, usize::MAX]), "reshape two holes");
    assert!(matches!(e, Error::InvalidArgument { op: "reshape", .. }), "{e:?}");
    let e = err(f32s(&[2, 3]).to_scalar(), "to_scalar");
    assert!(matches!(e, Error::InvalidArgument { op: "to_scalar", .. }), "{e:?}");
    says(&e, &["to_scalar", "[2, 3]"]);
}

#[test]
fn reshape_element_count_variant() {
    let e = err(f32s(&[2, 3]).reshape([4]), "reshape");
    assert!(matches!(e, Error::ElementCount { op: "reshape", got: 6, .. }), "{e:?}");
    says(&e, &["reshape", "[4]", "6"]);
}

// ====================================================================== narrow, topk, squeeze

#[test]
fn narrow_out_of_range() {
    let x = f32s(&[4, 5]);
    let e = err(x.narrow(1usize, 3, 3), "narrow");
    assert!(matches!(e, Error::InvalidArgument { op: "narrow", .. }), "{e:?}");
    says(&e, &["narrow", "3..6", "[4, 5]"]);
    let e = err(x.narrow(0usize, 5, 0), "narrow start past the end");
    assert!(matches!(e, Error::InvalidArgument { op: "narrow", .. }), "{e:?}");
    let e = err(x.narrow(-1isize, usize::MAX, 2), "narrow overflow");
    assert!(matches!(e, Error::InvalidArgument { op: "narrow", .. }), "{e:?}");
    says(&e, &["narrow", "[4, 5]"]);
    assert!(x.narrow(1usize, 5, 0).is_ok(), "an empty range at the end is valid");
}

#[test]
fn topk_k_too_large() {
    let x = f32s(&[2, 3]);
    let e = err(x.topk(4, 1usize), "topk");
    assert!(matches!(e, Error::InvalidArgument { op: "topk", .. }), "{e:?}");
    says(&e, &["topk", "4", "3", "[2, 3]"]);
    let e = err(x.topk(3, 0usize), "topk axis 0");
    says(&e, &["topk", "3", "2", "[2, 3]"]);
}

#[test]
fn squeeze_of_non_unit_axis() {
    let x = f32s(&[2, 1, 3]);
    let e = err(x.squeeze(0usize), "squeeze");
    assert!(matches!(e, Error::InvalidArgument { op: "squeeze", .. }), "{e:?}");
    says(&e, &["squeeze", "[2, 1, 3]", "2"]);
    let e = err(x.squeeze(-1isize), "squeeze -1");
    says(&e, &["squeeze", "[2, 1, 3]", "3"]);
    assert_eq!(x.squeeze(1usize).unwrap().dims(), &[2, 3]);
}

#[test]
fn empty_reduction_is_an_error() {
    let x = f32s(&[2, 0]);
    for (op, r) in [
        ("max", x.max(1usize, false)),
        ("min", x.min(1usize, false)),
        ("argmax", x.argmax(1usize, false)),
        ("argmin", x.argmin(-1isize, true)),
    ] {
        let e = err(r, op);
        assert!(matches!(e, Error::InvalidArgument { .. }), "{op}: {e:?}");
        says(&e, &[op, "[2, 0]"]);
    }
    // Sums over an empty axis are fine: 0 (and -inf for logsumexp).
    assert_eq!(x.sum(1usize, false).unwrap().to_vec::<f32>().unwrap(), vec![0.0, 0.0]);
    assert_eq!(x.logsumexp(1usize, false).unwrap().to_vec::<f32>().unwrap(), vec![f32::NEG_INFINITY; 2]);
}

// ====================================================================== core bugs (ignored)
//
// Backward ops are public API too, but they do not check their shape arguments: inconsistent
// shapes panic (index out of bounds, division by zero) or silently return wrong-sized garbage.

/// Runs `f`, turning a panic into `Err(message)`.
fn no_panic<R>(f: impl FnOnce() -> R + std::panic::UnwindSafe) -> std::result::Result<R, String> {
    std::panic::catch_unwind(f).map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

/// A deferred call.
type Thunk = Box<dyn FnOnce() -> ela_core::Result<T> + std::panic::UnwindSafe>;

/// Every case must return `Err` without panicking; lists the ones that do not.
fn all_rejected(cases: Vec<(&str, Thunk)>) {
    let mut bad = vec![];
    for (name, f) in cases {
        match no_panic(f) {
            Ok(Err(_)) => {}
            Ok(Ok(t)) => bad.push(format!("{name}: accepted, returned shape {:?}", t.dims())),
            Err(msg) => bad.push(format!("{name}: PANIC {msg:?}")),
        }
    }
    assert!(bad.is_empty(), "bad arguments not rejected with an Error:\n{}", bad.join("\n"));
}

#[test]
fn upsample_backward_checks_its_arguments() {
    all_rejected(vec![
        (
            "upsample_nearest2d_backward((0, 2)) of dy [1, 1, 2, 2]",
            Box::new(|| f32s(&[1, 1, 2, 2]).upsample_nearest2d_backward((0, 2))),
        ),
        (
            "upsample_nearest2d_backward((2, 2)) of dy [2, 1, 3, 3]",
            Box::new(|| f32s(&[2, 1, 3, 3]).upsample_nearest2d_backward((2, 2))),
        ),
        (
            "upsample_nearest2d_backward((2, 2)) of dy [3, 3]",
            Box::new(|| f32s(&[3, 3]).upsample_nearest2d_backward((2, 2))),
        ),
    ]);
}

#[test]
fn conv2d_backward_checks_its_arguments() {
    let p = Conv2dParams::default();
    all_rejected(vec![
        // dy [1,2,3,3] comes from x [1,1,5,5] and w [2,1,3,3]
        (
            "conv2d_backward_input: x_shape [1, 1, 4, 4] (dy is 3x3, so x must be 5x5)",
            Box::new(move || {
                f32s(&[1, 2, 3, 3]).conv2d_backward_input(&f32s(&[2, 1, 3, 3]), &Shape::from([1, 1, 4, 4]), &p)
            }),
        ),
        (
            "conv2d_backward_input: x_shape [1, 3, 5, 5] (w has 1 input channel)",
            Box::new(move || {
                f32s(&[1, 2, 3, 3]).conv2d_backward_input(&f32s(&[2, 1, 3, 3]), &Shape::from([1, 3, 5, 5]), &p)
            }),
        ),
        (
            "conv2d_backward_input: dy [1, 3, 3, 3] (w has 2 output channels)",
            Box::new(move || {
                f32s(&[1, 3, 3, 3]).conv2d_backward_input(&f32s(&[2, 1, 3, 3]), &Shape::from([1, 1, 5, 5]), &p)
            }),
        ),
        (
            "conv2d_backward_weight: w_shape [2, 1, 2, 2] (dy is 3x3 from a 5x5 x, so w must be 3x3)",
            Box::new(move || {
                f32s(&[1, 2, 3, 3]).conv2d_backward_weight(&f32s(&[1, 1, 5, 5]), &Shape::from([2, 1, 2, 2]), &p)
            }),
        ),
        (
            "conv2d_backward_weight: dy of rank 3 [2, 3, 3]",
            Box::new(move || {
                f32s(&[2, 3, 3]).conv2d_backward_weight(&f32s(&[1, 1, 5, 5]), &Shape::from([2, 1, 3, 3]), &p)
            }),
        ),
    ]);
}

#[test]
fn pool_backward_checks_its_arguments() {
    let pp = Pool2dParams { kernel: (2, 2), stride: (2, 2), padding: (0, 0), count_include_pad: false };
    all_rejected(vec![
        (
            "max_pool2d_backward: argmax from a [1,1,4,4] input, x_shape [1,1,2,2]",
            Box::new(move || {
                let (_, am) = f32s(&[1, 1, 4, 4]).max_pool2d_fwd(&pp)?;
                f32s(&[1, 1, 2, 2]).max_pool2d_backward(&am, &Shape::from([1, 1, 2, 2]))
            }),
        ),
        (
            "max_pool2d_backward: argmax [1,1,1,1] for dy [1,1,2,2]",
            Box::new(|| {
                let am = T::zeros([1, 1, 1, 1], DType::U32, &Cpu)?;
                f32s(&[1, 1, 2, 2]).max_pool2d_backward(&am, &Shape::from([1, 1, 4, 4]))
            }),
        ),
        (
            "avg_pool2d_backward: dy [1,1,3,3] for x [1,1,4,4] (pooled shape is 2x2)",
            Box::new(move || f32s(&[1, 1, 3, 3]).avg_pool2d_backward(&Shape::from([1, 1, 4, 4]), &pp)),
        ),
        (
            "avg_pool2d_backward: dy [1,2,2,2] for x [1,1,4,4] (channels differ)",
            Box::new(move || f32s(&[1, 2, 2, 2]).avg_pool2d_backward(&Shape::from([1, 1, 4, 4]), &pp)),
        ),
    ]);
}

#[test]
fn max_pool2d_of_empty_padded_input() {
    let p = Pool2dParams { kernel: (2, 2), stride: (1, 1), padding: (1, 1), count_include_pad: false };
    let x = T::zeros([1, 1, 0, 0], DType::F32, &Cpu).unwrap();
    if let Ok((y, am)) = x.max_pool2d_fwd(&p) {
        // If the forward is accepted, its result must be usable: the backward must not panic
        // and the gradient has the (empty) input's shape.
        let r =
            no_panic(|| y.ones_like().and_then(|g| g.max_pool2d_backward(&am, x.shape())).map(|d| d.dims().to_vec()));
        assert!(
            matches!(&r, Ok(Ok(d)) if d == &[1, 1, 0, 0]),
            "forward gave y {:?} argmax {:?}; backward: {r:?}",
            y.to_vec_f64(),
            am.to_vec_f64()
        );
    }
}

#[test]
fn softmax_and_cross_entropy_backward_check_shapes() {
    all_rejected(vec![
        (
            "softmax_last_backward: y [2,3], dy [3,3]",
            Box::new(|| f32s(&[2, 3]).softmax_last_backward(&f32s(&[3, 3]), false)),
        ),
        (
            "cross_entropy_backward: logits [2,3], lse [1], dloss [2]",
            Box::new(|| f32s(&[2, 3]).cross_entropy_backward(&ids(&[0, 1]), &f32s(&[1]), &f32s(&[2]), None)),
        ),
        (
            "cross_entropy_backward: logits [2,3], lse [2], dloss [5]",
            Box::new(|| f32s(&[2, 3]).cross_entropy_backward(&ids(&[0, 1]), &f32s(&[2]), &f32s(&[5]), None)),
        ),
    ]);
}

#[test]
fn scatter_add_u8_error_is_meaningful() {
    let base = T::zeros([2], DType::U8, &Cpu).unwrap();
    let src = T::ones([1], DType::U8, &Cpu).unwrap();
    let e = err(base.scatter_add(&ids(&[0]), &src, 0usize), "scatter_add u8");
    assert!(matches!(e, Error::UnsupportedDType { op: "scatter_add", dtype: DType::U8, .. }), "{e:?}");
}

#[test]
fn adamw_update_checks_dtypes_and_shapes() {
    let s = ela_core::AdamWStep { lr: 0.1, beta1: 0.9, beta2: 0.99, eps: 1e-8, decay: 1.0, bc1: 0.1, bc2: 0.01 };
    let p = f32s(&[2, 3]);
    // Mismatched shape, mismatched dtype, half-precision parameters: typed errors naming the op.
    for (g, what) in [(f32s(&[3, 2]), "shape"), (f64s(&[2, 3]), "dtype")] {
        let e = p.adamw_update(&g, &p, &p, &s).unwrap_err();
        assert!(matches!(e, Error::ShapeMismatch { op: "adamw_update", .. }), "{what}: {e}");
    }
    let h = p.to_dtype(DType::BF16).unwrap();
    let e = h.adamw_update(&h, &h, &h, &s).unwrap_err();
    assert!(matches!(e, Error::UnsupportedDType { op: "adamw_update", .. }), "{e}");
    // A valid call: with zero moments, step 1 moves every weight by lr (|m_hat| / sqrt(v_hat) = 1).
    let z = p.zeros_like().unwrap();
    let (p1, m1, v1) = p.adamw_update(&p, &z, &z, &s).unwrap();
    let (p0, p1) = (p.to_vec_f64().unwrap(), p1.to_vec_f64().unwrap());
    for (a, b) in p0.iter().zip(&p1) {
        let want = if *a == 0.0 { 0.0 } else { a - 0.1 * a.signum() };
        assert!((b - want).abs() < 1e-6, "{a} -> {b}, want {want}");
    }
    assert_eq!(m1.dims(), [2, 3]);
    assert_eq!(v1.dims(), [2, 3]);
}

#[test]
fn ela_saving_on_the_cpu_keeps_nothing_and_matches_the_plain_backward() {
    use ela_core::{ElaKernel, ElaParams};
    let x = |seed: f32| {
        T::from_vec((0..2 * 3 * 5).map(|i| (i as f32 * 0.37 + seed).sin()).collect::<Vec<f32>>(), [1, 2, 5, 3], &Cpu)
            .unwrap()
    };
    let (q, k, v, dy) = (x(0.1), x(0.7), x(1.3), x(2.1));
    let p = ElaParams::causal(ElaKernel::HadamardExp);
    let (y, saved) = q.ela_saving(&k, &v, &p).unwrap();
    assert!(saved.is_none(), "the CPU backend recomputes in the backward");
    assert_eq!(y.to_vec_f64().unwrap(), q.ela(&k, &v, &p).unwrap().to_vec_f64().unwrap());
    let a = T::ela_backward(&q, &k, &v, &y, &dy, &p).unwrap();
    let b = T::ela_backward_saved(&q, &k, &v, &y, &dy, &p, None).unwrap();
    for (x, z) in [(&a.0, &b.0), (&a.1, &b.1), (&a.2, &b.2)] {
        assert_eq!(x.to_vec_f64().unwrap(), z.to_vec_f64().unwrap());
    }
}

// ====================================================================== arithmetic at the limits

/// Sizes and offsets whose arithmetic would overflow `usize` are errors, not wrapped values.
#[test]
fn overflowing_arguments_are_errors() {
    // conv2d: in/groups * groups overflowing usize.
    let x = f32s(&[1, 4, 5, 5]);
    let w = f32s(&[4, 2, 3, 3]);
    let p = Conv2dParams { groups: usize::MAX / 2 + 2, ..Conv2dParams::default() };
    says(&err(x.conv2d(&w, &p), "conv2d with overflowing groups"), &["conv2d"]);
    // write_slice: offset + length past usize.
    let mut dst = f32s(&[4, 3]);
    let src = f32s(&[2, 3]);
    says(&err(dst.write_slice(0usize, usize::MAX, &src), "write_slice at usize::MAX"), &["write_slice"]);
    // cross_entropy_backward with a target that is no class (the forward refuses it too).
    let logits = f32s(&[2, 3]);
    let (lse, dloss) = (f32s(&[2]), f32s(&[2]));
    let e = err(logits.cross_entropy_backward(&ids(&[1, 7]), &lse, &dloss, None), "target 7 of 3 classes");
    says(&e, &["cross_entropy_backward", "7"]);
    // tril_mask: a diagonal past every row keeps every column instead of wrapping.
    let m = T::tril_mask(2, 3, isize::MAX, &Cpu).unwrap().to_vec::<u8>().unwrap();
    assert_eq!(m, [1; 6]);
    let m = T::tril_mask(2, 3, isize::MIN, &Cpu).unwrap().to_vec::<u8>().unwrap();
    assert_eq!(m, [0; 6]);
}

/// A convolution kernel with no height or width is refused (it used to be shaped as 1 x 1).
#[test]
fn conv2d_zero_size_kernel() {
    let x = f32s(&[1, 2, 5, 5]);
    for w in [[3, 2, 0, 3], [3, 2, 3, 0], [3, 2, 0, 0]] {
        let e = err(x.conv2d(&f32s(&w), &Conv2dParams::default()), "a zero-size kernel");
        says(&e, &["conv2d", "kernel"]);
    }
}
