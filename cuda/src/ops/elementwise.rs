//! Fill, strided copies, casts, unary and binary maps, comparisons and `where` (kernels in
//! `kernels/elementwise.cu`).

use ela_core::{BinaryOp, CmpOp, DType, Error, Layout, Result, UnaryOp};

use super::{check_float, check_same, dt, width};
use crate::device::{Arg, Cfg, Cuda};
use crate::kernels::KernelFile::Elementwise as EW;
use crate::storage::CudaStorage;
use crate::strided::{coalesce, descs, Coalesced, Desc, MAX_RANK};

/// A contiguous view of a buffer: borrowed when the layout already is contiguous, else a copy.
pub(crate) enum Contig<'a> {
    /// The buffer itself, starting at an element offset.
    Borrowed(&'a CudaStorage, usize),
    /// A fresh contiguous copy.
    Owned(CudaStorage),
}

impl Contig<'_> {
    /// Device address of the first element.
    pub(crate) fn ptr(&self) -> u64 {
        match self {
            Contig::Borrowed(s, off) => s.ptr_at(*off),
            Contig::Owned(s) => s.ptr(),
        }
    }
}

fn unary_code(op: UnaryOp) -> (i32, f64, f64) {
    match op {
        UnaryOp::Neg => (0, 0.0, 0.0),
        UnaryOp::Exp => (1, 0.0, 0.0),
        UnaryOp::Log => (2, 0.0, 0.0),
        UnaryOp::Sqrt => (3, 0.0, 0.0),
        UnaryOp::Recip => (4, 0.0, 0.0),
        UnaryOp::Abs => (5, 0.0, 0.0),
        UnaryOp::Square => (6, 0.0, 0.0),
        UnaryOp::Relu => (7, 0.0, 0.0),
        UnaryOp::Gelu => (8, 0.0, 0.0),
        UnaryOp::GeluGrad => (9, 0.0, 0.0),
        UnaryOp::Silu => (10, 0.0, 0.0),
        UnaryOp::SiluGrad => (11, 0.0, 0.0),
        UnaryOp::Sigmoid => (12, 0.0, 0.0),
        UnaryOp::Tanh => (13, 0.0, 0.0),
        UnaryOp::Sign => (14, 0.0, 0.0),
        UnaryOp::Step => (15, 0.0, 0.0),
        UnaryOp::Powf(p) => (16, p, 0.0),
        UnaryOp::Affine { mul, add } => (17, mul, add),
        UnaryOp::MaxScalar(v) => (18, v, 0.0),
        UnaryOp::MinScalar(v) => (19, v, 0.0),
    }
}

fn binary_code(op: BinaryOp) -> i32 {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
        BinaryOp::Maximum => 4,
        BinaryOp::Minimum => 5,
    }
}

fn cmp_code(op: CmpOp) -> i32 {
    match op {
        CmpOp::Eq => 0,
        CmpOp::Ne => 1,
        CmpOp::Lt => 2,
        CmpOp::Le => 3,
        CmpOp::Gt => 4,
        CmpOp::Ge => 5,
    }
}

impl Cuda {
    /// `len` copies of `value` converted to `dtype`.
    pub(crate) fn full_impl(&self, len: usize, value: f64, dtype: DType) -> Result<CudaStorage> {
        let out = self.alloc(dtype, len)?;
        let name = format!("fill_{}", dt(dtype));
        self.launch(EW, &name, Cfg::elems(len), &[Arg::Ptr(out.ptr()), Arg::n(len), Arg::F64(value)])?;
        Ok(out)
    }

    /// Copies the view `src_l` of `src` into the view `dst_l` of `dst` (same shape, same dtype).
    /// Views with more than `MAX_RANK` axes after coalescing are split into launches over their
    /// leading axes.
    pub(crate) fn copy_strided(
        &self,
        dst: &CudaStorage,
        dst_l: &Layout,
        src: &CudaStorage,
        src_l: &Layout,
    ) -> Result<()> {
        let n = src_l.elem_count();
        if n == 0 {
            return Ok(());
        }
        let c = coalesce(src_l.dims(), &[dst_l.strides(), src_l.strides()]);
        let (c, group) =
            widen(c, [dst_l.offset(), src_l.offset()], [dst.ptr(), src.ptr()], src.dtype().size_in_bytes());
        let name = format!("copy_w{}", src.dtype().size_in_bytes() * group);
        let (dst_off, src_off) = (dst_l.offset() / group, src_l.offset() / group);
        let rank = c.dims.len();
        let split = rank.saturating_sub(MAX_RANK);
        let (outer, inner) = c.dims.split_at(split);
        let inner_n: usize = inner.iter().product();
        let outer_n: usize = outer.iter().product();
        let mut idx = vec![0usize; split];
        for _ in 0..outer_n {
            let off = |k: usize, base: usize| base + idx.iter().zip(&c.strides[k]).map(|(i, s)| i * s).sum::<usize>();
            let dd = Desc::new(inner, &c.strides[0][split..], off(0, dst_off)).expect("rank <= MAX_RANK");
            let sd = Desc::new(inner, &c.strides[1][split..], off(1, src_off)).expect("rank <= MAX_RANK");
            let args = [Arg::Ptr(dst.ptr()), Arg::Desc(dd), Arg::Ptr(src.ptr()), Arg::Desc(sd), Arg::n(inner_n)];
            self.launch(EW, &name, Cfg::elems(inner_n), &args)?;
            // Odometer over the outer axes.
            for k in (0..split).rev() {
                idx[k] += 1;
                if idx[k] < outer[k] {
                    break;
                }
                idx[k] = 0;
            }
        }
        Ok(())
    }

    /// A contiguous copy of a view.
    pub(crate) fn copy_contiguous_impl(&self, src: &CudaStorage, l: &Layout) -> Result<CudaStorage> {
        let n = l.elem_count();
        let out = self.alloc(src.dtype(), n)?;
        match l.contiguous_range() {
            Some(r) => self.copy_d2d(out.ptr(), src.ptr_at(r.start), n * src.dtype().size_in_bytes())?,
            None => self.copy_strided(&out, &Layout::contiguous(l.shape().clone()), src, l)?,
        }
        Ok(out)
    }

    /// The view as contiguous memory, copying only when needed.
    pub(crate) fn contig<'a>(&self, src: &'a CudaStorage, l: &Layout) -> Result<Contig<'a>> {
        Ok(match l.contiguous_range() {
            Some(r) => Contig::Borrowed(src, r.start),
            None => Contig::Owned(self.copy_contiguous_impl(src, l)?),
        })
    }

    /// Kernel descriptors for same-shape views; views too high-rank for one descriptor are made
    /// contiguous first (the returned buffers keep those copies alive).
    fn descs_or_copy(&self, views: &[(&CudaStorage, &Layout)]) -> Result<(Vec<Desc>, Vec<CudaStorage>)> {
        let layouts: Vec<&Layout> = views.iter().map(|v| v.1).collect();
        if let Some(d) = descs(&layouts) {
            return Ok((d, Vec::new()));
        }
        let copies: Vec<CudaStorage> =
            views.iter().map(|(s, l)| self.copy_contiguous_impl(s, l)).collect::<Result<_>>()?;
        let n = views[0].1.elem_count();
        Ok((vec![Desc::contiguous(n, 0); views.len()], copies))
    }

    /// The device address to pass for view `i` of [`Cuda::descs_or_copy`]'s result.
    fn view_ptr(views: &[(&CudaStorage, &Layout)], copies: &[CudaStorage], i: usize) -> u64 {
        if copies.is_empty() {
            views[i].0.ptr()
        } else {
            copies[i].ptr()
        }
    }

    /// A contiguous copy converted to `dtype`.
    pub(crate) fn cast_impl(&self, src: &CudaStorage, l: &Layout, dtype: DType) -> Result<CudaStorage> {
        if src.dtype() == dtype {
            return self.copy_contiguous_impl(src, l);
        }
        let n = l.elem_count();
        let out = self.alloc(dtype, n)?;
        let vector_cast = |d: DType| matches!(d, DType::F16 | DType::BF16 | DType::F32);
        if let (true, true, true, Some(r)) =
            (vector_cast(src.dtype()), vector_cast(dtype), self.fast(n), l.contiguous_range())
        {
            // f32/f16/bf16 to another of them, contiguous: whole 16-byte vectors (`cast_contig`).
            let x = src.ptr_at(r.start);
            let vec = aligned16(&[out.ptr(), x]);
            let args = [Arg::Ptr(out.ptr()), Arg::Ptr(x), Arg::U32(n as u32), Arg::I32(vec as i32)];
            let cfg = Cfg::elems(if vec { n.div_ceil(8) } else { n });
            self.launch(EW, &format!("cast_contig_{}_{}", dt(src.dtype()), dt(dtype)), cfg, &args)?;
            return Ok(out);
        }
        let views = [(src, l)];
        let (d, copies) = self.descs_or_copy(&views)?;
        let name = format!("cast_{}_{}", dt(src.dtype()), dt(dtype));
        let args = [Arg::Ptr(out.ptr()), Arg::Ptr(Self::view_ptr(&views, &copies, 0)), Arg::Desc(d[0]), Arg::n(n)];
        self.launch(EW, &name, Cfg::elems(n), &args)?;
        Ok(out)
    }

    /// `op(x)` over a float view.
    pub(crate) fn unary_impl(&self, op: UnaryOp, src: &CudaStorage, l: &Layout) -> Result<CudaStorage> {
        check_float(op.name(), src.dtype())?;
        let n = l.elem_count();
        let out = self.alloc(src.dtype(), n)?;
        if let (true, Some(r)) = (self.fast(n), l.contiguous_range()) {
            let x = src.ptr_at(r.start);
            let vec = aligned16(&[out.ptr(), x]);
            let (code, p1, p2) = unary_code(op);
            let args = [
                Arg::Ptr(out.ptr()),
                Arg::Ptr(x),
                Arg::U32(n as u32),
                Arg::I32(code),
                Arg::F64(p1),
                Arg::F64(p2),
                Arg::I32(vec as i32),
            ];
            let cfg = fast_cfg(n, src.dtype(), vec);
            self.launch(EW, &format!("unary_contig_{}", dt(src.dtype())), cfg, &args)?;
            return Ok(out);
        }
        let views = [(src, l)];
        let (d, copies) = self.descs_or_copy(&views)?;
        let (code, p1, p2) = unary_code(op);
        let args = [
            Arg::Ptr(out.ptr()),
            Arg::Ptr(Self::view_ptr(&views, &copies, 0)),
            Arg::Desc(d[0]),
            Arg::n(n),
            Arg::I32(code),
            Arg::F64(p1),
            Arg::F64(p2),
        ];
        self.launch(EW, &format!("unary_{}", dt(src.dtype())), Cfg::elems(n), &args)?;
        Ok(out)
    }

    /// `op(a, b)` over two same-shape float views of one dtype.
    pub(crate) fn binary_impl(
        &self,
        op: BinaryOp,
        a: &CudaStorage,
        la: &Layout,
        b: &CudaStorage,
        lb: &Layout,
    ) -> Result<CudaStorage> {
        check_same(op.name(), a, b)?;
        check_float(op.name(), a.dtype())?;
        let n = la.elem_count();
        let out = self.alloc(a.dtype(), n)?;
        if self.fast(n) {
            if let Some(path) = fast_binary(la.dims(), la.strides(), lb.strides()) {
                self.binary_fast(op, &out, [a.ptr_at(la.offset()), b.ptr_at(lb.offset())], n, path)?;
                return Ok(out);
            }
        }
        let views = [(a, la), (b, lb)];
        let (d, copies) = self.descs_or_copy(&views)?;
        let args = [
            Arg::Ptr(out.ptr()),
            Arg::Ptr(Self::view_ptr(&views, &copies, 0)),
            Arg::Desc(d[0]),
            Arg::Ptr(Self::view_ptr(&views, &copies, 1)),
            Arg::Desc(d[1]),
            Arg::n(n),
            Arg::I32(binary_code(op)),
        ];
        self.launch(EW, &format!("binary_{}", dt(a.dtype())), Cfg::elems(n), &args)?;
        Ok(out)
    }

    /// Whether `n` elements go through the fast elementwise kernels (32-bit indices).
    fn fast(&self, n: usize) -> bool {
        n > 0 && n < FAST_MAX && self.fast_elementwise()
    }

    /// `op(a, b)` into the contiguous `out` through a fast kernel (`ptrs`: each operand's first
    /// element).
    fn binary_fast(&self, op: BinaryOp, out: &CudaStorage, ptrs: [u64; 2], n: usize, path: FastBinary) -> Result<()> {
        let d = out.dtype();
        match path {
            FastBinary::Contig => {
                let vec = aligned16(&[out.ptr(), ptrs[0], ptrs[1]]);
                let args = [
                    Arg::Ptr(out.ptr()),
                    Arg::Ptr(ptrs[0]),
                    Arg::Ptr(ptrs[1]),
                    Arg::U32(n as u32),
                    Arg::I32(binary_code(op)),
                    Arg::I32(vec as i32),
                ];
                self.launch(EW, &format!("binary_contig_{}", dt(d)), fast_cfg(n, d, vec), &args)
            }
            FastBinary::Chan { full, inner, chans, stride } => {
                let vec = aligned16(&[out.ptr(), ptrs[full]]);
                let args = [
                    Arg::Ptr(out.ptr()),
                    Arg::Ptr(ptrs[full]),
                    Arg::Ptr(ptrs[1 - full]),
                    Arg::U32(n as u32),
                    Arg::U32(inner as u32),
                    Arg::U32(chans as u32),
                    Arg::U32(stride as u32),
                    Arg::I32(binary_code(op)),
                    Arg::I32(full as i32),
                    Arg::I32(vec as i32),
                ];
                self.launch(EW, &format!("binary_chan_{}", dt(d)), fast_cfg(n, d, vec), &args)
            }
        }
    }

    /// Comparison of two same-shape views of one dtype, as a `U8` mask.
    pub(crate) fn cmp_impl(
        &self,
        op: CmpOp,
        a: &CudaStorage,
        la: &Layout,
        b: &CudaStorage,
        lb: &Layout,
    ) -> Result<CudaStorage> {
        check_same("cmp", a, b)?;
        let n = la.elem_count();
        let out = self.alloc(DType::U8, n)?;
        let views = [(a, la), (b, lb)];
        let (d, copies) = self.descs_or_copy(&views)?;
        let args = [
            Arg::Ptr(out.ptr()),
            Arg::Ptr(Self::view_ptr(&views, &copies, 0)),
            Arg::Desc(d[0]),
            Arg::Ptr(Self::view_ptr(&views, &copies, 1)),
            Arg::Desc(d[1]),
            Arg::n(n),
            Arg::I32(cmp_code(op)),
        ];
        self.launch(EW, &format!("cmp_{}", dt(a.dtype())), Cfg::elems(n), &args)?;
        Ok(out)
    }

    /// `cond ? t : f` over three same-shape views.
    pub(crate) fn where_impl(
        &self,
        c: &CudaStorage,
        lc: &Layout,
        t: &CudaStorage,
        lt: &Layout,
        f: &CudaStorage,
        lf: &Layout,
    ) -> Result<CudaStorage> {
        if c.dtype() != DType::U8 {
            return Err(Error::UnsupportedDType { op: "where_cond", dtype: c.dtype(), expected: "a u8 mask" });
        }
        check_same("where_cond", t, f)?;
        let n = lc.elem_count();
        let out = self.alloc(t.dtype(), n)?;
        let views = [(c, lc), (t, lt), (f, lf)];
        let (d, copies) = self.descs_or_copy(&views)?;
        let mut args = vec![Arg::Ptr(out.ptr())];
        for (i, desc) in d.iter().enumerate() {
            args.push(Arg::Ptr(Self::view_ptr(&views, &copies, i)));
            args.push(Arg::Desc(*desc));
        }
        args.push(Arg::n(n));
        self.launch(EW, &format!("where_{}", width(t.dtype())), Cfg::elems(n), &args)?;
        Ok(out)
    }
}

/// Element counts from which the elementwise maps keep the general kernels (64-bit indices).
const FAST_MAX: usize = 1 << 31;

/// Whether every address is 16-byte aligned (the fast kernels' vector loads and stores).
pub(crate) fn aligned16(ptrs: &[u64]) -> bool {
    ptrs.iter().all(|p| p % 16 == 0)
}

/// Launch of a fast elementwise kernel over `n` elements: a thread per 16-byte vector when
/// `vec`, else per element (grid-stride loops cover the rest).
pub(super) fn fast_cfg(n: usize, dtype: DType, vec: bool) -> Cfg {
    Cfg::elems(if vec { n.div_ceil(16 / dtype.size_in_bytes()) } else { n })
}

/// How a binary map's two same-shape views reach a fast kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FastBinary {
    /// Both contiguous.
    Contig,
    /// Operand `full` (0: a, 1: b) contiguous; the other reads element `((i / inner) % chans) *
    /// stride` for output element `i` (a per-channel vector, or a scalar with `chans` 1).
    Chan { full: usize, inner: usize, chans: usize, stride: usize },
}

/// The fast path of two same-shape views with strides `sa`, `sb` over `dims` (offsets aside),
/// after joint coalescing: `None` when neither operand is contiguous, when the other one steps
/// along more than one merged axis, or when its largest offset needs more than 31 bits.
pub(crate) fn fast_binary(dims: &[usize], sa: &[usize], sb: &[usize]) -> Option<FastBinary> {
    let c = coalesce(dims, &[sa, sb]);
    let contiguous = |s: &[usize]| {
        let mut want = 1;
        for (&d, &st) in c.dims.iter().zip(s).rev() {
            if st != want {
                return false;
            }
            want *= d;
        }
        true
    };
    let (ca, cb) = (contiguous(&c.strides[0]), contiguous(&c.strides[1]));
    if ca && cb {
        return Some(FastBinary::Contig);
    }
    let full = if ca {
        0
    } else if cb {
        1
    } else {
        return None;
    };
    let other = &c.strides[1 - full];
    let mut steps = other.iter().enumerate().filter(|(_, &s)| s != 0);
    let path = match (steps.next(), steps.next()) {
        (None, _) => FastBinary::Chan { full, inner: 1, chans: 1, stride: 0 },
        (Some((k, &stride)), None) => {
            let (chans, inner) = (c.dims[k], c.dims[k + 1..].iter().product());
            if (chans - 1).checked_mul(stride).is_none_or(|m| m >= FAST_MAX) {
                return None;
            }
            FastBinary::Chan { full, inner, chans, stride }
        }
        _ => return None,
    };
    Some(path)
}

/// Copies move `group` elements at once (up to 16 bytes) when both views' innermost coalesced axis
/// is contiguous and every stride, offset and base address allows it: a head permutation
/// `[B, T, H, D] -> [B, H, T, D]` then moves 16-byte vectors, with a quarter of the index
/// arithmetic. Returns the regrouped axes (strides in groups) and `group` (1: unchanged).
fn widen(c: Coalesced, offsets: [usize; 2], ptrs: [u64; 2], elem: usize) -> (Coalesced, usize) {
    let Some(&last) = c.dims.last() else { return (c, 1) };
    if c.strides.iter().any(|s| s.last() != Some(&1)) {
        return (c, 1);
    }
    let fits = |g: usize| {
        let bytes = (g * elem) as u64;
        last % g == 0
            && offsets.iter().all(|o| o % g == 0)
            && ptrs.iter().all(|p| p % bytes == 0)
            && c.strides.iter().all(|s| s[..s.len() - 1].iter().all(|x| x % g == 0))
    };
    let Some(group) = [16, 8, 4, 2].into_iter().map(|b| b / elem).find(|&g| g > 1 && fits(g)) else {
        return (c, 1);
    };
    let dims = c.dims.iter().enumerate().map(|(k, &d)| if k + 1 == c.dims.len() { d / group } else { d }).collect();
    let strides = c
        .strides
        .iter()
        .map(|s| s.iter().enumerate().map(|(k, &x)| if k + 1 == s.len() { 1 } else { x / group }).collect())
        .collect();
    (Coalesced { dims, strides }, group)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ela_core::Shape;

    fn path(a: &Layout, b: &Layout) -> Option<FastBinary> {
        fast_binary(a.dims(), a.strides(), b.strides())
    }

    #[test]
    fn binary_operands_are_classified_for_the_fast_kernels() {
        let bc = |dims: &[usize], to: &[usize]| {
            Layout::contiguous(dims.to_vec()).broadcast_as(&Shape::from(to.to_vec()), "t").unwrap()
        };
        let x = Layout::contiguous([32, 16, 160, 160]);
        assert_eq!(path(&x, &x), Some(FastBinary::Contig));
        // BN as a per-channel affine: w[1, C, 1, 1] on either side.
        let w = bc(&[1, 16, 1, 1], x.dims());
        let chan = |full| Some(FastBinary::Chan { full, inner: 25_600, chans: 16, stride: 1 });
        assert_eq!(path(&x, &w), chan(0));
        assert_eq!(path(&w, &x), chan(1));
        // A bias over the last axis, a scalar, a narrowed (strided) per-channel operand.
        let m = Layout::contiguous([6, 5]);
        assert_eq!(path(&m, &bc(&[5], &[6, 5])), Some(FastBinary::Chan { full: 0, inner: 1, chans: 5, stride: 1 }));
        assert_eq!(path(&m, &bc(&[1, 1], &[6, 5])), Some(FastBinary::Chan { full: 0, inner: 1, chans: 1, stride: 0 }));
        let col = Layout::contiguous([6, 2]).narrow(1, 1, 1, "t").unwrap().broadcast_as(&Shape::from([6, 5]), "t");
        assert_eq!(path(&m, &col.unwrap()), Some(FastBinary::Chan { full: 0, inner: 5, chans: 6, stride: 2 }));
        // Two broadcast axes, a transposed operand, both operands broadcast: the general kernels.
        assert_eq!(path(&x, &bc(&[32, 1, 160, 160], x.dims())), None);
        let t = Layout::contiguous([5, 6]).transpose(0, 1);
        assert_eq!(path(&m.transpose(0, 1), &t.transpose(0, 1)), None);
        assert_eq!(path(&bc(&[6, 1], &[6, 5]), &bc(&[1, 5], &[6, 5])), None);
        // A transposed operand against a per-channel one is not contiguous either.
        assert_eq!(path(&t, &bc(&[1, 5], &[6, 5])), None);
    }
}
