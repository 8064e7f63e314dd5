//! Choosing a run's output folder the way users of ultralytics expect: rerunning the same
//! command starts a new run beside the old one instead of refusing.

use std::path::{Path, PathBuf};

use ela_core::{Backend, Error, Result};
use ela_nn::checkpoint::{self, Checkpoint};
use ela_nn::module::ParamStore;
use ela_nn::optim::{AdamW, Optimizer};

use super::metrics::MetricsLog;

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

    /// `run.data`: a path, or `None` for the embedded data (saved as `<embedded>`).
    pub fn data_path(&self) -> Result<Option<PathBuf>> {
        let data = self.text("data")?;
        Ok((data != EMBEDDED).then(|| PathBuf::from(data)))
    }
}

/// How `run.data` records "the embedded data set".
pub const EMBEDDED: &str = "<embedded>";

/// The folder of a run (see [`resolve_run_dir`]) and, for a resume, the checkpoint saved in it.
/// A new run refuses a folder that already holds one, so nothing saved is overwritten; `op`
/// names the command in errors (`train`, `detect train`).
pub fn open_run<B: Backend>(
    op: &'static str,
    explicit: Option<&Path>,
    default: &Path,
    resume: bool,
    device: &B,
) -> Result<(PathBuf, Option<Checkpoint<B>>)> {
    let out = resolve_run_dir(explicit, default, resume, CHECKPOINT_FILE);
    let path = out.join(CHECKPOINT_FILE);
    if resume {
        let ck = checkpoint::load_verified(&path, device)
            .map_err(|e| Error::invalid(op, format!("cannot resume from {}: {e}", path.display())))?;
        return Ok((out, Some(ck)));
    }
    if path.exists() {
        return Err(Error::invalid(
            op,
            format!("{} already holds a run; continue it with --resume or choose another --out", out.display()),
        ));
    }
    Ok((out, None))
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

/// Create the run folder and open its `metrics.jsonl` for appending: a resumed run continues
/// the log, a new one starts it afresh.
pub fn start_metrics(out: &Path, resumed: bool) -> Result<(PathBuf, MetricsLog)> {
    let io = |p: &Path, e: std::io::Error| Error::Io { path: p.display().to_string(), msg: e.to_string() };
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    crate::errln!("run folder: {}", out.display());
    let path = out.join("metrics.jsonl");
    if !resumed && path.exists() {
        std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
    }
    let log = MetricsLog::append(&path)?;
    Ok((path, log))
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
