//! A trained detector read back from its run folder: the model (rebuilt from the configuration
//! stored in the checkpoint, then loaded), its class names and its run settings.

use std::path::{Path, PathBuf};

use ela_core::{Backend, DType, Error, Result};
use ela_nn::checkpoint::{self, Metadata};
use ela_nn::module::ParamStore;

use super::model::{Detector, DetectorConfig};
use super::train::CKPT;

/// A detector loaded from a checkpoint.
pub struct SavedDetector<B: Backend> {
    /// The model, in the state it was saved in (weights and batch-norm statistics).
    pub model: Detector<B>,
    /// Class names, by class index.
    pub classes: Vec<String>,
    /// Everything the checkpoint's metadata holds (model and run settings).
    pub metadata: Metadata,
    /// The checkpoint file read.
    pub path: PathBuf,
}

/// `path` itself when it is a file, else the checkpoint inside the run folder `path`.
pub fn checkpoint_path(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(CKPT)
    } else {
        path.to_path_buf()
    }
}

impl<B: Backend> SavedDetector<B> {
    /// Load the detector saved at `path` (a run folder or a checkpoint file) onto `device`.
    pub fn load(path: &Path, device: &B) -> Result<Self> {
        Self::load_for(path, device, 1)
    }

    /// [`SavedDetector::load`] for inference on batches of `batch` images: the stored
    /// configuration is validated and the memory it needs checked before the model is built.
    pub fn load_for(path: &Path, device: &B, batch: usize) -> Result<Self> {
        let path = checkpoint_path(path);
        let ck = checkpoint::load_verified(&path, device)?;
        let get = |k: &str| ck.metadata.get(k).cloned();
        let cfg = DetectorConfig::from_pairs(get).map_err(|e| {
            Error::invalid(
                "detect",
                format!("{} is not a detector checkpoint (an `ela detect train` run): {e}", path.display()),
            )
        })?;
        let classes: Vec<String> =
            ck.metadata.get("data.classes").map(|s| s.split('\n').map(str::to_string).collect()).ok_or_else(|| {
                Error::invalid("detect", format!("{} has no class names (data.classes)", path.display()))
            })?;
        if classes.len() != cfg.num_classes {
            return Err(Error::invalid(
                "detect",
                format!("{}: {} class names for a {}-class model", path.display(), classes.len(), cfg.num_classes),
            ));
        }
        let mut e = crate::budget::Estimate::new();
        crate::detect::model::cost::add_memory(&mut e, &cfg, batch, false)?;
        e.check_on("detect", device)?;
        let store = ParamStore::new(device, DType::F32, 0);
        let model = Detector::new(&store, cfg)?;
        store.load_state_dict(&checkpoint::take_prefix(&ck.tensors, "model"), true)?;
        Ok(SavedDetector { model, classes, metadata: ck.metadata, path })
    }
}
