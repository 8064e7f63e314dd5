//! The safetensors byte format: serialisation and a strict, panic-free parser.
//!
//! Layout: `u64` little-endian header length `N`; `N` bytes of JSON
//! `{"__metadata__": {"k": "v", ..}, "name": {"dtype": "F32", "shape": [..], "data_offsets":
//! [begin, end]}, ..}` padded with spaces to a multiple of 8; then the data buffer, each tensor
//! little-endian row-major at `[begin, end)` relative to the buffer's start.
//!
//! Written like the reference implementation: tensors ordered by decreasing element size then
//! name (so every tensor is aligned to its element size), packed without gaps.
//!
//! The checksum (metadata key [`CHECKSUM_KEY`], value `xxh64:<16 hex digits>`) is
//! `xxh64(data, seed = xxh64(index, 0))` where `index` is the UTF-8 text
//! `tensor\t<name>\t<DTYPE>\t<d0,d1,..>\t<begin>\t<end>\n` for each tensor in data order (by
//! begin, end, name), followed by `meta\t<key>\t<value>\n` for every other metadata entry in key
//! order. It therefore covers the tensor bytes *and* the header's meaning (names, dtypes,
//! shapes, offsets, metadata): a flipped shape digit that keeps the byte count is caught too.

use std::collections::BTreeMap;

use ela_core::{Backend, CpuStorage, DType, Error, Result, Shape};
use half::{bf16, f16};

use super::hash::xxh64;
use super::json::Json;
use crate::module::StateDict;

/// Metadata key holding the checksum written by [`serialize`].
pub const CHECKSUM_KEY: &str = "ela.checksum";
/// Largest header accepted (as the reference implementation: 100 MB).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// Free-form string metadata of a checkpoint.
pub type Metadata = BTreeMap<String, String>;

/// A checkpoint parsed into host buffers.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    /// Tensors by name: shape and row-major host data.
    pub tensors: BTreeMap<String, (Shape, CpuStorage)>,
    /// Metadata without the checksum entry.
    pub metadata: Metadata,
    /// Whether the file carried a checksum (which then matched; a mismatch is an error).
    pub checksum_verified: bool,
}

fn st_name(d: DType) -> &'static str {
    match d {
        DType::U8 => "U8",
        DType::U32 => "U32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::F32 => "F32",
        DType::F64 => "F64",
    }
}

fn st_dtype(s: &str) -> Option<DType> {
    Some(match s {
        "U8" => DType::U8,
        "U32" => DType::U32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F32" => DType::F32,
        "F64" => DType::F64,
        _ => return None,
    })
}

fn append_le(s: &CpuStorage, out: &mut Vec<u8>) {
    // On little-endian hosts the in-memory bytes are already the file's bytes.
    macro_rules! put {
        ($v:expr, $bits:expr) => {
            if cfg!(target_endian = "little") {
                out.extend_from_slice(bytemuck::cast_slice($v))
            } else {
                $v.iter().for_each(|x| out.extend_from_slice(&$bits(x).to_le_bytes()))
            }
        };
    }
    match s {
        CpuStorage::U8(v) => out.extend_from_slice(v),
        CpuStorage::U32(v) => put!(v, |x: &u32| *x),
        CpuStorage::F16(v) => put!(v, |x: &f16| x.to_bits()),
        CpuStorage::BF16(v) => put!(v, |x: &bf16| x.to_bits()),
        CpuStorage::F32(v) => put!(v, |x: &f32| x.to_bits()),
        CpuStorage::F64(v) => put!(v, |x: &f64| x.to_bits()),
    }
}

fn from_le(dtype: DType, b: &[u8]) -> CpuStorage {
    fn words<const N: usize>(b: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
        b.chunks_exact(N).map(|c| c.try_into().expect("chunks_exact yields N bytes"))
    }
    match dtype {
        DType::U8 => CpuStorage::U8(b.to_vec()),
        DType::U32 => CpuStorage::U32(words::<4>(b).map(u32::from_le_bytes).collect()),
        DType::F16 => CpuStorage::F16(words::<2>(b).map(|w| f16::from_bits(u16::from_le_bytes(w))).collect()),
        DType::BF16 => CpuStorage::BF16(words::<2>(b).map(|w| bf16::from_bits(u16::from_le_bytes(w))).collect()),
        DType::F32 => CpuStorage::F32(words::<4>(b).map(f32::from_le_bytes).collect()),
        DType::F64 => CpuStorage::F64(words::<8>(b).map(f64::from_le_bytes).collect()),
    }
}

struct Entry<'a> {
    name: &'a str,
    dtype: DType,
    shape: Vec<usize>,
    begin: usize,
    end: usize,
}

fn checksum(entries: &[Entry<'_>], metadata: &Metadata, data: &[u8]) -> String {
    let mut index = String::new();
    for e in entries {
        let dims: Vec<String> = e.shape.iter().map(|d| d.to_string()).collect();
        index.push_str(&format!(
            "tensor\t{}\t{}\t{}\t{}\t{}\n",
            e.name,
            st_name(e.dtype),
            dims.join(","),
            e.begin,
            e.end
        ));
    }
    for (k, v) in metadata.iter().filter(|(k, _)| *k != CHECKSUM_KEY) {
        index.push_str(&format!("meta\t{k}\t{v}\n"));
    }
    format!("xxh64:{:016x}", xxh64(data, xxh64(index.as_bytes(), 0)))
}

/// The complete file content for `tensors` and `metadata` (the checksum is added).
pub fn serialize<B: Backend>(tensors: &StateDict<B>, metadata: &Metadata) -> Result<Vec<u8>> {
    if metadata.contains_key(CHECKSUM_KEY) {
        return Err(Error::invalid("checkpoint::save", format!("metadata key {CHECKSUM_KEY:?} is reserved")));
    }
    if tensors.contains_key("__metadata__") {
        return Err(Error::invalid("checkpoint::save", "a tensor cannot be named \"__metadata__\""));
    }
    let mut order: Vec<(&String, &ela_core::Tensor<B>)> = tensors.iter().collect();
    order.sort_by(|a, b| b.1.dtype().size_in_bytes().cmp(&a.1.dtype().size_in_bytes()).then(a.0.cmp(b.0)));
    let total: usize = order.iter().map(|(_, t)| t.elem_count() * t.dtype().size_in_bytes()).sum();
    let mut data = Vec::with_capacity(total);
    let mut entries = Vec::with_capacity(order.len());
    for (name, t) in order {
        let begin = data.len();
        append_le(&t.to_cpu_storage()?, &mut data);
        entries.push(Entry { name, dtype: t.dtype(), shape: t.dims().to_vec(), begin, end: data.len() });
    }
    let mut meta = metadata.clone();
    meta.insert(CHECKSUM_KEY.to_string(), checksum(&entries, metadata, &data));
    let mut header =
        vec![("__metadata__".to_string(), Json::Object(meta.into_iter().map(|(k, v)| (k, Json::Str(v))).collect()))];
    for e in &entries {
        let ints = |v: &[usize]| Json::Array(v.iter().map(|&x| Json::Int(x as i128)).collect());
        header.push((
            e.name.to_string(),
            Json::Object(vec![
                ("dtype".into(), Json::Str(st_name(e.dtype).into())),
                ("shape".into(), ints(&e.shape)),
                ("data_offsets".into(), ints(&[e.begin, e.end])),
            ]),
        ));
    }
    let mut head = Json::Object(header).to_json_string().into_bytes();
    head.resize(head.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + head.len() + data.len());
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&data);
    Ok(out)
}

/// Parse and verify the content of a safetensors file; `path` names it in errors. Every
/// malformation is an [`Error::Io`], never a panic.
pub fn deserialize(bytes: &[u8], path: &str) -> Result<Parsed> {
    let bad = |msg: String| Error::Io { path: path.to_string(), msg: format!("invalid safetensors file: {msg}") };
    if bytes.len() < 8 {
        return Err(bad(format!("{} bytes is too short for the 8-byte header length", bytes.len())));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let avail = bytes.len() as u64 - 8;
    if n > avail || n > MAX_HEADER_LEN {
        return Err(bad(format!(
            "header length {n} exceeds the {avail} bytes after the length field (limit {MAX_HEADER_LEN}); \
             the file is truncated or not a safetensors file"
        )));
    }
    let (head, data) = bytes[8..].split_at(n as usize);
    let text = std::str::from_utf8(head).map_err(|e| bad(format!("header is not UTF-8 ({e})")))?;
    let json = Json::parse(text).map_err(|e| bad(format!("header {e}")))?;
    let Json::Object(fields) = json else { return Err(bad("header is not a JSON object".into())) };

    let mut metadata = Metadata::new();
    let mut entries = Vec::new();
    for (name, v) in &fields {
        if name == "__metadata__" {
            let Json::Object(m) = v else { return Err(bad("__metadata__ is not an object".into())) };
            for (k, v) in m {
                let s = v.as_str().ok_or_else(|| bad(format!("metadata value of {k:?} is not a string")))?;
                metadata.insert(k.clone(), s.to_string());
            }
            continue;
        }
        entries.push(parse_entry(name, v).map_err(|m| bad(format!("tensor {name:?}: {m}")))?);
    }
    check_layout(&mut entries, data.len()).map_err(bad)?;

    let checksum_verified = match metadata.get(CHECKSUM_KEY) {
        None => false,
        Some(stored) => {
            let actual = checksum(&entries, &metadata, data);
            if *stored != actual {
                return Err(bad(format!(
                    "checksum mismatch (stored {stored}, computed {actual}): tensor data or header corrupted"
                )));
            }
            true
        }
    };
    metadata.remove(CHECKSUM_KEY);
    let tensors = entries
        .iter()
        .map(|e| (e.name.to_string(), (Shape::from(e.shape.clone()), from_le(e.dtype, &data[e.begin..e.end]))))
        .collect();
    Ok(Parsed { tensors, metadata, checksum_verified })
}

fn parse_entry<'a>(name: &'a str, v: &Json) -> std::result::Result<Entry<'a>, String> {
    let Json::Object(f) = v else { return Err("entry is not an object".into()) };
    if let Some((k, _)) = f.iter().find(|(k, _)| !matches!(k.as_str(), "dtype" | "shape" | "data_offsets")) {
        return Err(format!("unknown field {k:?}"));
    }
    let field = |k: &str| v.get(k).ok_or_else(|| format!("missing field {k:?}"));
    let ds = field("dtype")?.as_str().ok_or("dtype is not a string")?;
    let dtype = st_dtype(ds).ok_or_else(|| format!("dtype {ds:?} is not supported (F16, BF16, F32, F64, U8, U32)"))?;
    let ints = |k: &str| -> std::result::Result<Vec<usize>, String> {
        let Json::Array(a) = field(k)? else { return Err(format!("{k} is not an array")) };
        a.iter()
            .map(|x| {
                x.as_u64()
                    .and_then(|u| usize::try_from(u).ok())
                    .ok_or_else(|| format!("{k} must hold non-negative integers"))
            })
            .collect()
    };
    let shape = ints("shape")?;
    let off = ints("data_offsets")?;
    let &[begin, end] = off.as_slice() else { return Err(format!("data_offsets must be [begin, end], got {off:?}")) };
    if begin > end {
        return Err(format!("data_offsets [{begin}, {end}] are reversed"));
    }
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("shape overflows")?;
    let nbytes = count.checked_mul(dtype.size_in_bytes()).ok_or("shape overflows")?;
    if end - begin != nbytes {
        return Err(format!(
            "data_offsets [{begin}, {end}] span {} bytes but shape {shape:?} of {ds} needs {nbytes}",
            end - begin
        ));
    }
    Ok(Entry { name, dtype, shape, begin, end })
}

/// Sort entries by offset and check they tile `[0, data_len)` exactly: inside the buffer, no
/// overlap, no gap, no trailing bytes.
fn check_layout(entries: &mut [Entry<'_>], data_len: usize) -> std::result::Result<(), String> {
    entries.sort_by(|a, b| (a.begin, a.end, a.name).cmp(&(b.begin, b.end, b.name)));
    let mut pos = 0usize;
    for e in entries.iter() {
        if e.end > data_len {
            return Err(format!(
                "tensor {:?} at bytes [{}, {}) runs past the {data_len}-byte data buffer (file truncated?)",
                e.name, e.begin, e.end
            ));
        }
        if e.begin != pos {
            let what = if e.begin < pos { "overlaps the previous tensor" } else { "leaves a gap before it" };
            return Err(format!(
                "tensor {:?} at bytes [{}, {}) {what} (expected to start at {pos})",
                e.name, e.begin, e.end
            ));
        }
        pos = e.end;
    }
    if pos != data_len {
        return Err(format!("{} unexpected trailing bytes after the last tensor (data ends at {pos})", data_len - pos));
    }
    Ok(())
}
