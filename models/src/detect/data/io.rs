//! Files: decoding PNG/JPEG into RGB, reading an image's size from its header, writing PNGs
//! atomically, listing folders, and a small deterministic parallel map (scoped threads, results
//! in input order) used to read headers and decode batches on every core.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ela_core::{Error, Result};
use image::{ImageEncoder, ImageReader, RgbImage};

/// The file's path as error messages show it.
pub(crate) fn show(path: &Path) -> String {
    path.display().to_string()
}

/// An [`Error::Io`] naming `path`.
pub(crate) fn io_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Io { path: show(path), msg: msg.into() }
}

/// Read and decode a PNG or JPEG (the format is guessed from the bytes, not the extension) into
/// 8-bit RGB: grey is replicated, alpha dropped, 16-bit reduced. EXIF orientation is not applied:
/// COCO and YOLO boxes refer to the pixels as stored.
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, format!("cannot read image: {e}")))?;
    decode_bytes(&bytes).map_err(|e| io_err(path, e))
}

/// [`load_image`] on bytes in memory; the error is the decoder's one-line message.
pub(crate) fn decode_bytes(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    let decode = || {
        let reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| format!("cannot decode image: {e}"))?;
        if reader.format().is_none() {
            return Err("cannot decode image: not a PNG or JPEG file".to_string());
        }
        let img = reader.decode().map_err(|e| format!("cannot decode image: {e}"))?;
        Ok(img.into_rgb8())
    };
    // Decoders are written not to panic, but a corrupt file must never take a training run down:
    // a panic inside one becomes this file's error.
    std::panic::catch_unwind(decode).unwrap_or_else(|_| Err("cannot decode image: the decoder failed".into()))
}

/// An image's `(width, height)` from its header only (fast: no pixel is decoded), or why not.
pub(crate) fn image_dims(path: &Path) -> std::result::Result<(u32, u32), String> {
    let read = || {
        let reader = ImageReader::open(path)
            .and_then(|r| r.with_guessed_format())
            .map_err(|e| format!("cannot open image: {e}"))?;
        if reader.format().is_none() {
            return Err("not a PNG or JPEG file".to_string());
        }
        match reader.into_dimensions() {
            Ok((w, h)) if w > 0 && h > 0 => Ok((w, h)),
            Ok((w, h)) => Err(format!("image has size {w}x{h}")),
            Err(e) => Err(format!("cannot read image header: {e}")),
        }
    };
    // As in `decode_bytes`: a decoder panic is this file's problem, not the run's.
    std::panic::catch_unwind(read).unwrap_or_else(|_| Err("cannot read image header: the decoder failed".into()))
}

/// Whether `path` has a PNG or JPEG extension (case-insensitive).
pub(crate) fn is_image_file(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    matches!(ext.as_str(), "png" | "jpg" | "jpeg")
}

/// Every regular file under `dir` (recursively), sorted so the order never depends on the file
/// system.
pub(crate) fn walk_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| io_err(&d, format!("cannot list folder: {e}")))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err(&d, format!("cannot list folder: {e}")))?;
            let p = entry.path();
            // `metadata` follows symlinks, so linked image folders work.
            match std::fs::metadata(&p) {
                Ok(m) if m.is_dir() => stack.push(p),
                Ok(m) if m.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Write `img` as a PNG at `path` atomically: encode to a temporary file in the same folder, then
/// rename it over `path`, so a reader never sees a half-written file.
pub fn save_png(path: &Path, img: &RgbImage) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
        .map_err(|e| io_err(path, format!("cannot encode PNG: {e}")))?;
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| io_err(path, "not a file path"))?;
    let tmp =
        path.with_file_name(format!(".{name}.{}.{}.tmp", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(path, format!("cannot write PNG: {e}"))
    })
}

/// Number of worker threads for data work: the machine's parallelism, at most `items`.
fn workers(items: usize) -> usize {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    cores.min(items).max(1)
}

/// `f(i, &items[i])` for every item, on scoped threads over contiguous chunks; the results come
/// back in input order, so the outcome never depends on the number of threads.
pub(crate) fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(usize, &T) -> R + Sync) -> Vec<R> {
    let threads = workers(items.len());
    if threads <= 1 {
        return items.iter().enumerate().map(|(i, t)| f(i, t)).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .enumerate()
            .map(|(c, part)| {
                s.spawn(move || part.iter().enumerate().map(|(j, t)| f(c * chunk + j, t)).collect::<Vec<R>>())
            })
            .collect();
        // A worker only panics on a bug; re-raise it on the caller's thread.
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    })
}
