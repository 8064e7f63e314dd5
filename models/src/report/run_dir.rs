//! Choosing a run's output folder the way users of ultralytics expect: rerunning the same
//! command starts a new run beside the old one instead of refusing.

use std::path::{Path, PathBuf};

use ela_core::{Backend, Error, Result};
use ela_nn::checkpoint::{self, Checkpoint};
use ela_nn::module::ParamStore;
use ela_nn::optim::{AdamW, Optimizer};

use super::metrics::MetricsLog;
use super::run_lock::RunLock;

/// The checkpoint's file name inside a run folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

/// `default`, `default-2`, `default-3`, ... in order.
fn numbered(default: &Path) -> impl Iterator<Item = PathBuf> + '_ {
    (1usize..).map(move |n| {
        if n == 1 {
            default.to_path_buf()
        } else {
            let mut name = default.as_os_str().to_os_string();
            name.push(format!("-{n}"));
            PathBuf::from(name)
        }
    })
}

/// The folder a run writes to.
///
/// - An explicit `--out` is used as given (the caller refuses it if it holds a run and this is
///   not a resume).
/// - Without one, a new run takes `default` if no run is saved there, else the first of
///   `default-2`, `default-3`, ... that holds none; a resume takes the last of those that holds
///   one (the newest default run), or `default` when there is none (so the error names it).
///
/// A folder "holds a run" when `checkpoint` (a file name) exists inside it.
pub fn resolve_run_dir(explicit: Option<&Path>, default: &Path, resume: bool, checkpoint: &str) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    let holds_run = |p: &Path| p.join(checkpoint).exists();
    if resume {
        let mut last = None;
        for p in numbered(default) {
            if !holds_run(&p) {
                break;
            }
            last = Some(p);
        }
        last.unwrap_or_else(|| default.to_path_buf())
    } else {
        numbered(default).find(|p| !holds_run(p)).expect("an unbounded sequence of names has a free one")
    }
}

/// Typed reading of the run settings a checkpoint saved as `run.<key>` strings, for `--resume`:
/// a missing key or an unparsable value is an error naming the key.
pub struct SavedSettings<F: Fn(&str) -> Option<String>>(pub F);

impl<F: Fn(&str) -> Option<String>> SavedSettings<F> {
    /// The raw string of `run.<key>`.
    pub fn text(&self, key: &str) -> Result<String> {
        (self.0)(&format!("run.{key}"))
            .ok_or_else(|| Error::invalid("resume", format!("the checkpoint lacks run.{key}")))
    }

    /// `run.<key>` parsed as `T`.
    pub fn get<T: std::str::FromStr>(&self, key: &str) -> Result<T> {
        let v = self.text(key)?;
        v.parse().map_err(|_| Error::invalid("resume", format!("run.{key}: cannot parse {v:?}")))
    }

    /// `run.data`: a path, or `None` for the embedded data (saved as `<embedded>`). A path
    /// that is not valid Unicode was saved byte for byte in `run.data_hex` (see [`data_pairs`]).
    pub fn data_path(&self) -> Result<Option<PathBuf>> {
        if let Some(hex) = (self.0)("run.data_hex") {
            return path_from_hex(&hex).map(Some);
        }
        let data = self.text("data")?;
        Ok((data != EMBEDDED).then(|| PathBuf::from(data)))
    }
}

/// How `run.data` records "the embedded data set".
pub const EMBEDDED: &str = "<embedded>";

/// The `(key, value)` pairs that record a `--data` path in the run settings, losslessly: the
/// path as text in `data`, and, when it is not valid Unicode (possible on Unix, where a path is
/// any bytes), its exact bytes in hex in `data_hex` as well, so `--resume` finds the same file
/// (`data` then holds a readable, lossy rendering for people). Other platforms' paths are
/// checked up front by [`check_storable_path`].
pub fn data_pairs(data: Option<&Path>) -> Vec<(&'static str, String)> {
    let Some(p) = data else { return vec![("data", EMBEDDED.to_string())] };
    let mut v = vec![("data", p.display().to_string())];
    if p.to_str().is_none() {
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            v.push(("data_hex", p.as_os_str().as_bytes().iter().map(|b| format!("{b:02x}")).collect()));
        }
    }
    v
}

/// Refuse a path the run settings cannot store exactly: none on Unix (see [`data_pairs`]); a
/// path that is not valid Unicode elsewhere.
pub fn check_storable_path(op: &'static str, p: &Path) -> Result<()> {
    if cfg!(unix) || p.to_str().is_some() {
        return Ok(());
    }
    Err(Error::invalid(
        op,
        format!("--data {} is not valid Unicode, so --resume could not find it again; rename it", p.display()),
    ))
}

fn path_from_hex(hex: &str) -> Result<PathBuf> {
    let bad = || Error::invalid("resume", format!("run.data_hex: {hex:?} is not a hex byte string"));
    if !hex.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        Ok(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
    }
    #[cfg(not(unix))]
    {
        String::from_utf8(bytes).map(PathBuf::from).map_err(|_| bad())
    }
}

/// Refuse `--resume` flags that contradict the run being resumed. A resumed run continues with
/// the settings saved in its checkpoint (that is what makes it bit-exact), so a flag such as
/// `--lr 0.1` given with `--resume` used to be ignored without a word. `given` lists the
/// options given on the command line (clap ids: `lr`, `dim`, ...), `user` the settings those
/// options describe as saved `(key, value)` pairs, and `keys_of` the saved keys an option
/// sets. An option whose keys hold the saved values anyway is fine (rerunning the original
/// command with `--resume` works); the first that differs is an error naming both values.
pub fn check_resume_flags(
    op: &'static str,
    given: &[String],
    user: &[(String, String)],
    saved: impl Fn(&str) -> Option<String>,
    keys_of: impl Fn(&str) -> Vec<String>,
) -> Result<()> {
    for id in given {
        for key in keys_of(id) {
            let mine = user.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
            let theirs = saved(&key);
            if mine != theirs {
                return Err(Error::invalid(
                    op,
                    format!(
                        "--{} gives {} = {} but the run being resumed has {}; a resumed run keeps its own \
                         settings, so drop the flag (or start a new run with another --out)",
                        id.replace('_', "-"),
                        key,
                        mine.as_deref().unwrap_or("(none)"),
                        theirs.as_deref().unwrap_or("(none)")
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A run folder opened for writing: its path, the checkpoint saved in it (for a resume), and
/// the folder's lock, held until this value is dropped.
pub struct OpenedRun<B: Backend> {
    /// The folder.
    pub dir: PathBuf,
    /// The checkpoint to continue from (`--resume`), verified.
    pub resumed: Option<Checkpoint<B>>,
    /// The exclusive lock on the folder (see [`RunLock`]).
    pub lock: RunLock,
}

/// Open the folder of a run (see [`resolve_run_dir`]): create it, take its lock (so no other
/// process trains into it), remove temporary files left by saves that were killed, and, for a
/// resume, load the checkpoint saved in it. A new run refuses a folder that already holds one,
/// so nothing saved is overwritten; `op` names the command in errors (`train`, `detect train`).
pub fn open_run<B: Backend>(
    op: &'static str,
    explicit: Option<&Path>,
    default: &Path,
    resume: bool,
    device: &B,
) -> Result<OpenedRun<B>> {
    let out = resolve_run_dir(explicit, default, resume, CHECKPOINT_FILE);
    let path = out.join(CHECKPOINT_FILE);
    if resume && !path.exists() {
        // Before anything is created: a mistyped --out must not leave an empty folder behind.
        return Err(Error::invalid(op, format!("cannot resume from {}: there is no saved run there", path.display())));
    }
    let created = !out.exists();
    if !created && !resume {
        // Before the lock file is created: a refused folder is left exactly as it was.
        refuse_foreign_folder(op, &out)?;
    }
    std::fs::create_dir_all(&out).map_err(|e| Error::Io { path: out.display().to_string(), msg: e.to_string() })?;
    // Everything below happens under the lock, so two starts cannot both pass the checks.
    let lock = RunLock::acquire_in(&out, op, created)?;
    remove_stale_temporaries(&out)?;
    if resume {
        let ck = checkpoint::load_verified(&path, device)
            .map_err(|e| Error::invalid(op, format!("cannot resume from {}: {e}", path.display())))?;
        return Ok(OpenedRun { dir: out, resumed: Some(ck), lock });
    }
    if path.exists() {
        return Err(Error::invalid(
            op,
            format!("{} already holds a run; continue it with --resume or choose another --out", out.display()),
        ));
    }
    Ok(OpenedRun { dir: out, resumed: None, lock })
}

/// Whether `name` is one of the `.<name>.tmp-<pid>-<n>` files of an interrupted atomic save.
fn is_save_temporary(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

/// A new run replaces `config.json`, `metrics.jsonl` and the plots in its folder, so it may only
/// start in a folder that is empty (but for a lock or a save's temporaries), or that an earlier
/// run wrote: its `config.json` carries the checkpoint format's marker, or it holds a checkpoint
/// (which [`open_run`] then refuses with its own message). Anything else, a project folder or
/// `/`, is refused before a file is written, naming a few of the entries found.
fn refuse_foreign_folder(op: &'static str, dir: &Path) -> Result<()> {
    let io = |e: std::io::Error| Error::Io { path: dir.display().to_string(), msg: e.to_string() };
    if !dir.is_dir() {
        return Err(Error::invalid(
            op,
            format!("--out {} exists and is not a folder; choose a new folder", dir.display()),
        ));
    }
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap_or_default();
    if config.contains(RUN_CONFIG_MARKER) || dir.join(CHECKPOINT_FILE).exists() {
        return Ok(());
    }
    let mut foreign = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let name = entry.map_err(io)?.file_name().to_string_lossy().into_owned();
        if name != super::run_lock::LOCK_FILE && !is_save_temporary(&name) {
            foreign.push(name);
        }
    }
    if foreign.is_empty() {
        return Ok(());
    }
    foreign.sort();
    let shown: Vec<&str> = foreign.iter().take(3).map(String::as_str).collect();
    let more = if foreign.len() > 3 { format!(" and {} more", foreign.len() - 3) } else { String::new() };
    Err(Error::invalid(
        op,
        format!(
            "--out {} holds files that no earlier run wrote ({}{more}); a run writes config.json, \
             metrics.jsonl, plots and checkpoints into its folder and replaces files of those \
             names, so choose a new or empty folder (e.g. {})",
            dir.display(),
            shown.join(", "),
            dir.join("run").display()
        ),
    ))
}

/// The field every run's `config.json` holds (the checkpoint format, written by both trainers).
const RUN_CONFIG_MARKER: &str = "\"format\":\"ela-rs ";

/// Delete the `.<name>.tmp-<pid>-<n>` files that [`checkpoint::write_atomic`] leaves when the
/// process is killed between creating and renaming one (a checkpoint's worth of bytes each).
/// Called with the folder's lock held, so none of them belongs to a live save.
fn remove_stale_temporaries(dir: &Path) -> Result<()> {
    let io = |p: &Path, e: std::io::Error| Error::Io { path: p.display().to_string(), msg: e.to_string() };
    let (mut count, mut bytes) = (0usize, 0u64);
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let entry = entry.map_err(|e| io(dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if is_save_temporary(&name) && entry.file_type().is_ok_and(|t| t.is_file()) {
            bytes += entry.metadata().map_or(0, |m| m.len());
            std::fs::remove_file(entry.path()).map_err(|e| io(&entry.path(), e))?;
            count += 1;
        }
    }
    if count > 0 {
        crate::errln!(
            "removed {count} temporary file(s) ({}) left in {} by a save that was interrupted",
            ela_core::error::human_bytes(bytes),
            dir.display()
        );
    }
    Ok(())
}

/// Load a resumed run's weights (with buffers) into `store` and its optimizer state into `opt`,
/// and return the step it was saved at.
pub fn restore<B: Backend>(ck: &Checkpoint<B>, store: &ParamStore<B>, opt: &mut AdamW<B>) -> Result<usize> {
    store.load_state_dict(&checkpoint::take_prefix(&ck.tensors, "model"), true)?;
    opt.load_state_dict(&checkpoint::take_prefix(&ck.tensors, "optim"))?;
    ck.metadata
        .get("run.step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::invalid("resume", "the checkpoint has no run.step"))
}

/// Open the run folder's `metrics.jsonl` for appending: a resumed run continues the log (with
/// a torn last record removed, see [`repair_torn_tail`]), a new one starts it afresh.
pub fn start_metrics(out: &Path, resumed: bool) -> Result<(PathBuf, MetricsLog)> {
    let io = |p: &Path, e: std::io::Error| Error::Io { path: p.display().to_string(), msg: e.to_string() };
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    crate::errln!("run folder: {}", out.display());
    let path = out.join("metrics.jsonl");
    if !resumed && path.exists() {
        std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
    }
    if resumed {
        let cut = repair_torn_tail(&path)?;
        if cut > 0 {
            crate::errln!("{}: removed a torn last record ({cut} bytes) left by an interrupted write", path.display());
        }
    }
    let log = MetricsLog::append(&path)?;
    Ok((path, log))
}

/// Truncate a JSONL file after its last newline and return how many bytes were cut. Each record
/// is written whole by one `write_all` ending in its newline, so bytes after the last newline
/// are a record a kill or a full disk interrupted; appending after them would glue the next
/// record onto the fragment and make the line invalid. A missing file is left alone.
pub fn repair_torn_tail(path: &Path) -> Result<u64> {
    let io = |e: std::io::Error| Error::Io { path: path.display().to_string(), msg: e.to_string() };
    match std::fs::metadata(path) {
        // Only a regular file can be torn (and reading a device such as /dev/full never ends).
        Ok(m) if !m.is_file() => return Ok(0),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(e)),
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let cut = (bytes.len() - keep) as u64;
    if cut > 0 {
        let f = std::fs::OpenOptions::new().write(true).open(path).map_err(io)?;
        f.set_len(keep as u64).and_then(|_| f.sync_all()).map_err(io)?;
    }
    Ok(cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_next_free_and_the_newest_run() {
        let root = std::env::temp_dir().join(format!("ela-run-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let base = root.join("runs/x");
        assert_eq!(resolve_run_dir(None, &base, false, "ck"), base);
        assert_eq!(resolve_run_dir(None, &base, true, "ck"), base);
        for p in [base.clone(), root.join("runs/x-2")] {
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("ck"), b"").unwrap();
        }
        assert_eq!(resolve_run_dir(None, &base, false, "ck"), root.join("runs/x-3"));
        assert_eq!(resolve_run_dir(None, &base, true, "ck"), root.join("runs/x-2"));
        let mine = root.join("mine");
        assert_eq!(resolve_run_dir(Some(&mine), &base, false, "ck"), mine);
        std::fs::remove_dir_all(&root).unwrap();
    }
}

#[cfg(test)]
mod fault_tests {
    use super::*;
    use std::io::Write;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ela-run-fault-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A writer that accepts `budget` bytes and then fails like a full disk.
    struct FullDisk<W: Write> {
        inner: W,
        budget: usize,
    }

    impl<W: Write> Write for FullDisk<W> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.budget == 0 {
                return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
            }
            let n = buf.len().min(self.budget);
            self.budget -= n;
            self.inner.write(&buf[..n])
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }

    #[test]
    fn a_record_cut_by_a_full_disk_is_removed_on_resume() {
        let dir = tmp("torn");
        let path = dir.join("metrics.jsonl");
        std::fs::write(&path, "{\"step\":1}\n{\"step\":2}\n").unwrap();
        // The third record runs out of space half way through.
        let file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        let mut w = FullDisk { inner: file, budget: 5 };
        assert!(w.write_all(b"{\"step\":3}\n").is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"step\":1}\n{\"step\":2}\n{\"ste");
        assert_eq!(repair_torn_tail(&path).unwrap(), 5);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"step\":1}\n{\"step\":2}\n");
        // Whole files, missing files and devices are left alone.
        assert_eq!(repair_torn_tail(&path).unwrap(), 0);
        assert_eq!(repair_torn_tail(&dir.join("none.jsonl")).unwrap(), 0);
        #[cfg(target_os = "linux")]
        assert_eq!(repair_torn_tail(Path::new("/dev/full")).unwrap(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_lock_on_a_folder_fails_naming_the_holder() {
        let dir = tmp("lock");
        let held = RunLock::acquire(&dir, "train").unwrap();
        // flock locks belong to open files, so a second open in this process conflicts too.
        let e = RunLock::acquire(&dir, "train").unwrap_err().to_string();
        assert!(e.contains(&format!("process {}", std::process::id())) && e.contains("--out"), "{e}");
        drop(held);
        let again = RunLock::acquire(&dir, "train").unwrap();
        assert_eq!(std::fs::read_to_string(again.path()).unwrap(), std::process::id().to_string());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_new_run_refuses_a_folder_an_earlier_run_did_not_write() {
        let dir = tmp("foreign");
        std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
        std::fs::write(dir.join("metrics.jsonl"), b"also mine").unwrap();
        let e = refuse_foreign_folder("train", &dir).unwrap_err().to_string();
        assert!(e.contains("metrics.jsonl, notes.txt") && e.contains("new or empty folder"), "{e}");
        // Through open_run as well, and nothing is written or removed on the way.
        let Err(e) = open_run("train", Some(&dir), Path::new("unused"), false, &ela_core::Cpu) else {
            panic!("a new run was opened in {}", dir.display())
        };
        assert!(e.to_string().contains("no earlier run wrote"), "{e}");
        let mut left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, ["metrics.jsonl", "notes.txt"]);
        assert_eq!(std::fs::read(dir.join("metrics.jsonl")).unwrap(), b"also mine");
        // Many entries: three are named, the rest counted.
        for f in ["a", "b", "c"] {
            std::fs::create_dir(dir.join(f)).unwrap();
        }
        let e = refuse_foreign_folder("detect train", &dir).unwrap_err().to_string();
        assert!(e.starts_with("detect train") || e.contains("detect train"), "{e}");
        assert!(e.contains("(a, b, c and 2 more)"), "{e}");
        // A file is not a folder.
        let e = refuse_foreign_folder("train", &dir.join("notes.txt")).unwrap_err().to_string();
        assert!(e.contains("is not a folder"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_new_run_may_start_in_an_empty_folder_or_an_earlier_runs() {
        let dir = tmp("ours");
        // Empty but for a lock and a save's temporary.
        std::fs::write(dir.join(".lock"), b"1").unwrap();
        std::fs::write(dir.join(".config.json.tmp-1-0"), b"x").unwrap();
        refuse_foreign_folder("train", &dir).unwrap();
        // A run that stopped before its first checkpoint, with a file of the user's beside it.
        for (f, text) in [
            ("config.json", "{\"format\":\"ela-rs checkpoint v1\",\"run.step\":\"0\"}\n"),
            ("metrics.jsonl", "{\"step\":1}\n"),
            ("notes.txt", "mine"),
        ] {
            std::fs::write(dir.join(f), text).unwrap();
        }
        refuse_foreign_folder("train", &dir).unwrap();
        // A detector run's config.json (its first key sorts before "format").
        std::fs::write(
            dir.join("config.json"),
            "{\"data.classes\":\"1\",\"format\":\"ela-rs detector checkpoint v1\"}\n",
        )
        .unwrap();
        refuse_foreign_folder("detect train", &dir).unwrap();
        // A config.json of somebody else's is not a marker.
        std::fs::write(dir.join("config.json"), "{\"format\":\"other\"}").unwrap();
        assert!(refuse_foreign_folder("train", &dir).is_err());
        // A folder holding a checkpoint passes here; open_run refuses it with "--resume".
        std::fs::write(dir.join(CHECKPOINT_FILE), b"x").unwrap();
        refuse_foreign_folder("train", &dir).unwrap();
        let Err(e) = open_run("train", Some(&dir), Path::new("unused"), false, &ela_core::Cpu) else {
            panic!("a new run was opened in {}", dir.display())
        };
        assert!(e.to_string().contains("--resume"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stale_temporaries_are_removed_and_other_files_kept() {
        let dir = tmp("stale");
        for f in [".checkpoint.safetensors.tmp-123-0", ".config.json.tmp-9-4", "checkpoint.safetensors", ".lock"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        remove_stale_temporaries(&dir).unwrap();
        let mut left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, [".lock", "checkpoint.safetensors"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
