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
