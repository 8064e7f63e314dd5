//! Checkpoints: safetensors files written atomically and verified on load.
//!
//! * Format: [safetensors](https://github.com/huggingface/safetensors), written by hand
//!   ([`safetensors`]) with its header JSON ([`json`]); files open with Python's `safetensors`
//!   package (checked, see docs/nn.md). Dtypes: F16, BF16, F32, F64, U8, U32.
//! * Atomic: [`save`] writes a temporary file in the target's directory, fsyncs it, renames it
//!   over the target and fsyncs the directory. A crash leaves either the old file or the new
//!   one, never a torn mix; readers never see a partial file.
//! * Verified: [`load`] checks the header length, the JSON, every tensor's dtype, shape and
//!   offsets (inside the buffer, no overlap, no gap, no trailing bytes) and the XXH64 checksum
//!   stored in the metadata. Any problem is an [`Error::Io`] naming the file and the fault.
//!
//! A training checkpoint is one file: the model's state dict under `model.` and the optimizer's
//! under `optim.` ([`with_prefix`], [`take_prefix`]), the step and config in the metadata.
//!
//! ```
//! use ela_core::{Cpu, Tensor};
//! use ela_nn::checkpoint::{self, Metadata};
//! use ela_nn::module::StateDict;
//! let dir = std::env::temp_dir().join(format!("ela-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let mut sd = StateDict::new();
//! sd.insert("w".to_string(), Tensor::from_vec(vec![1f32, 2., 3.], [3], &Cpu)?);
//! let meta = Metadata::from([("step".to_string(), "100".to_string())]);
//! checkpoint::save(dir.join("ck.safetensors"), &sd, &meta)?;
//! let ck = checkpoint::load(dir.join("ck.safetensors"), &Cpu)?;
//! assert_eq!(ck.tensors["w"].to_vec::<f32>()?, vec![1., 2., 3.]);
//! assert_eq!(ck.metadata["step"], "100");
//! assert!(ck.checksum_verified);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), ela_core::Error>(())
//! ```

mod hash;
pub mod json;
pub mod safetensors;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ela_core::{Backend, Error, Result, Tensor};

pub use hash::xxh64;
pub use safetensors::{deserialize, serialize, Metadata, Parsed, CHECKSUM_KEY};

use crate::module::StateDict;

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Checkpoint<B: Backend> {
    /// Tensors by name, on the requested device.
    pub tensors: StateDict<B>,
    /// Metadata (without the checksum entry).
    pub metadata: Metadata,
    /// True when the file carried a checksum (which matched). Files written by other tools
    /// have none; their structure is still fully checked.
    pub checksum_verified: bool,
}

fn io_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Io { path: path.display().to_string(), msg: msg.into() }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Write `tensors` and `metadata` to `path` atomically (see the module docs). Parent
/// directories must exist. On failure the temporary file is removed and `path` is untouched.
pub fn save<B: Backend>(path: impl AsRef<Path>, tensors: &StateDict<B>, metadata: &Metadata) -> Result<()> {
    let path = path.as_ref();
    let bytes = serialize(tensors, metadata)?;
    write_atomic(path, &bytes)
}

/// Write `bytes` to `path` through a temporary file in the same directory, with fsyncs of the
/// file and of the directory so the rename is durable.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().ok_or_else(|| io_err(path, "the path has no file name"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Same directory (so the rename cannot cross filesystems), hidden, unique per process and
    // call (so concurrent saves do not collide).
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        sync_dir(&dir)
    })();
    result.map_err(|e| {
        // Best effort: the temp file may not exist (open failed) or is already renamed.
        let _ = std::fs::remove_file(&tmp);
        io_err(path, format!("cannot write checkpoint: {e}"))
    })
}

/// Persist the directory entry created by the rename (POSIX needs an fsync of the directory).
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        // Directories cannot be opened for syncing on other platforms; the rename itself is
        // the durability point there.
        let _ = dir;
        Ok(())
    }
}

/// Read and verify the safetensors file at `path`, placing its tensors on `device`.
pub fn load<B: Backend>(path: impl AsRef<Path>, device: &B) -> Result<Checkpoint<B>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| io_err(path, format!("cannot read checkpoint: {e}")))?;
    from_bytes(&bytes, &path.display().to_string(), device)
}

/// [`load`] for a checkpoint this library wrote: a file without the checksum entry is damage,
/// not a file from another tool. Every ELA-rs save stores the checksum, and without it a
/// changed header (a stored config that says `dim 100000000`) would pass unverified.
pub fn load_verified<B: Backend>(path: impl AsRef<Path>, device: &B) -> Result<Checkpoint<B>> {
    let path = path.as_ref();
    let ck = load(path, device)?;
    if !ck.checksum_verified {
        return Err(io_err(
            path,
            format!(
                "the checksum entry ({CHECKSUM_KEY}) is missing from the metadata; ELA-rs writes it into every \
                 checkpoint, so the file was altered or damaged"
            ),
        ));
    }
    Ok(ck)
}

/// Parse and verify safetensors `bytes` (named `name` in errors), placing tensors on `device`.
pub fn from_bytes<B: Backend>(bytes: &[u8], name: &str, device: &B) -> Result<Checkpoint<B>> {
    let parsed = deserialize(bytes, name)?;
    let mut tensors = StateDict::new();
    for (k, (shape, data)) in parsed.tensors {
        tensors.insert(k, Tensor::from_cpu_storage(&data, shape, device)?);
    }
    Ok(Checkpoint { tensors, metadata: parsed.metadata, checksum_verified: parsed.checksum_verified })
}

/// A copy of `sd` with every name prefixed by `prefix.` (to store several state dicts in one
/// file, e.g. `model` and `optim`). A trailing dot on `prefix` is ignored, so `"model"` and
/// `"model."` both give `model.embed.weight`.
pub fn with_prefix<B: Backend>(sd: &StateDict<B>, prefix: &str) -> StateDict<B> {
    let prefix = prefix.trim_end_matches('.');
    sd.iter().map(|(k, v)| (format!("{prefix}.{k}"), v.clone())).collect()
}

/// The entries of `sd` named `prefix.<rest>`, renamed `<rest>` (a trailing dot on `prefix` is
/// ignored). Checkpoints written before names were normalised stored `model..embed.weight`
/// (the prefix's own dot plus the separator); those names are read too, so old runs still load.
pub fn take_prefix<B: Backend>(sd: &StateDict<B>, prefix: &str) -> StateDict<B> {
    let p = format!("{}.", prefix.trim_end_matches('.'));
    sd.iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix(&p)?;
            // No module name starts with a dot, so a leading one is the old double dot.
            let rest = rest.strip_prefix('.').unwrap_or(rest);
            Some((rest.to_string(), v.clone()))
        })
        .collect()
}
