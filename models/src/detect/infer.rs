//! From images to boxes: the forward pass in eval mode, decoding, NMS, and the mapping back from
//! the letterboxed input to the original image. Shared by validation during training,
//! `ela detect eval` and `ela detect predict`.

use ela_autograd::{no_grad, Var};
use ela_core::{Backend, Result, Rng};

use super::boxes::Detection;
use super::data::{batch_to_tensor, make_batch, DetectionSource};
use super::eval::{coco_evaluate, nms, CocoMetrics, EvalImage};
use super::model::{decode, Detector};

/// Thresholds of the post-processing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PostProcess {
    /// Boxes scoring below this are dropped before NMS.
    pub conf_threshold: f32,
    /// NMS suppresses a box overlapping a higher-scoring one of the same class by more than this.
    pub iou_threshold: f64,
    /// At most this many boxes per image survive.
    pub max_det: usize,
}

impl PostProcess {
    /// What COCO evaluation wants: every box worth ranking (conf 0.001, IoU 0.6, 100 per image,
    /// as AR@100 counts at most 100).
    pub fn for_eval() -> Self {
        PostProcess { conf_threshold: 0.001, iou_threshold: 0.6, max_det: 100 }
    }

    /// What a user looking at pictures wants (conf 0.25, IoU 0.45, 300 per image).
    pub fn for_display() -> Self {
        PostProcess { conf_threshold: 0.25, iou_threshold: 0.45, max_det: 300 }
    }
}

/// Detections of one batch of input images, in input pixels, after NMS (class-aware).
pub fn detect_batch<B: Backend>(model: &Detector<B>, x: &Var<B>, post: &PostProcess) -> Result<Vec<Vec<Detection>>> {
    let outs = no_grad(|| model.forward(x, false))?;
    let values: Vec<_> = outs.iter().map(|v| v.value()).collect();
    let raw = decode(&values, model.strides(), post.conf_threshold)?;
    Ok(raw.into_iter().map(|d| nms(&d, post.iou_threshold, true, post.max_det)).collect())
}

/// Run the detector over every image of `src` (no augmentation), `batch` at a time, and return
/// per-image ground truth and detections in the original images' pixels.
pub fn predict_source<B: Backend>(
    model: &Detector<B>,
    src: &dyn DetectionSource,
    batch: usize,
    post: &PostProcess,
    dev: &B,
) -> Result<Vec<EvalImage>> {
    let size = model.config().input_size;
    let mut out = Vec::with_capacity(src.len());
    let indices: Vec<usize> = (0..src.len()).collect();
    // No augmentation draws from it; make_batch takes one for its signature.
    let mut rng = Rng::new(0);
    for chunk in indices.chunks(batch.max(1)) {
        let b = make_batch(src, chunk, size, None, &mut rng)?;
        let x = Var::constant(batch_to_tensor(&b, dev)?);
        let dets = detect_batch(model, &x, post)?;
        for (i, d) in dets.into_iter().enumerate() {
            let lb = &b.letterboxes[i];
            // The labels as the dataset holds them, not the letterboxed ones mapped back, so
            // the evaluation sees exactly the ground truth pycocotools would.
            let gt = src.objects(chunk[i])?;
            let dets = d.into_iter().map(|d| Detection { bbox: lb.unmap(d.bbox), ..d }).filter(|d| d.bbox.is_valid());
            out.push(EvalImage::new(b.image_ids[i], gt, dets.collect()));
        }
    }
    Ok(out)
}

/// COCO metrics of the detector on `src`.
pub fn evaluate<B: Backend>(
    model: &Detector<B>,
    src: &dyn DetectionSource,
    batch: usize,
    dev: &B,
) -> Result<CocoMetrics> {
    let images = predict_source(model, src, batch, &PostProcess::for_eval(), dev)?;
    coco_evaluate(&images, src.class_names().len())
}
