//! Batches: decode (or render) a list of images on every core, [`prepare`] each, and pack them
//! into one NCHW float buffer with the targets and the maps back to the originals.
//!
//! Determinism: the caller's [`Rng`] is drawn exactly once per batch; image `j` of the batch then
//! gets its own generator seeded from that draw, `j` and its dataset index. Which thread handles
//! which image therefore never changes the result, and a resumed run that restores the caller's
//! generator reproduces its batches bit for bit.

use ela_core::{Backend, Error, Result, Rng, Tensor};

use super::augment::{prepare, AugmentConfig};
use super::io::par_map;
use super::letterbox::Letterbox;
use super::source::DetectionSource;
use crate::detect::Object;

/// A batch of network inputs with their ground truth.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Pixels, `[n, 3, size, size]` row-major (NCHW), RGB in `[0, 1]`.
    pub images: Vec<f32>,
    /// Number of images.
    pub n: usize,
    /// Side of the square inputs.
    pub size: usize,
    /// Each image's objects, in input pixels.
    pub targets: Vec<Vec<Object>>,
    /// Each image's map from its original pixels to input pixels ([`Letterbox::unmap`] takes
    /// detections back to the original image).
    pub letterboxes: Vec<Letterbox>,
    /// Each image's id.
    pub image_ids: Vec<u64>,
}

/// The generator of image `pos` (dataset index `index`) of a batch whose draw was `base`.
fn image_rng(base: u64, pos: usize, index: usize) -> Rng {
    Rng::new(
        base ^ (pos as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (index as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F),
    )
}

/// Load images `indices` of `src`, letterbox them into `size` squares (augmenting with `augment`
/// when given) and pack them. Decoding runs on all cores; the result does not depend on how many.
/// The first failing image (in `indices` order) gives the error.
pub fn make_batch(
    src: &dyn DetectionSource,
    indices: &[usize],
    size: usize,
    augment: Option<&AugmentConfig>,
    rng: &mut Rng,
) -> Result<Batch> {
    if size == 0 || size > 8192 {
        return Err(Error::invalid("make_batch", format!("input size must be in 1..=8192, got {size}")));
    }
    if let Some(a) = augment {
        a.validate()?;
    }
    let base = rng.next_u64();
    let plane = 3 * size * size;
    let per_image = par_map(indices, |pos, &index| -> Result<_> {
        let sample = src.load(index)?;
        let mut r = image_rng(base, pos, index);
        let p = prepare(&sample.image, &sample.objects, size, augment, &mut r)?;
        // u8 HWC -> f32 CHW in [0, 1].
        let mut chw = vec![0f32; plane];
        let (r_, rest) = chw.split_at_mut(size * size);
        let (g_, b_) = rest.split_at_mut(size * size);
        for (i, px) in p.image.as_raw().chunks_exact(3).enumerate() {
            r_[i] = px[0] as f32 / 255.0;
            g_[i] = px[1] as f32 / 255.0;
            b_[i] = px[2] as f32 / 255.0;
        }
        Ok((chw, p.objects, p.transform, sample.image_id))
    });
    let mut batch = Batch {
        images: Vec::with_capacity(indices.len() * plane),
        n: indices.len(),
        size,
        targets: Vec::with_capacity(indices.len()),
        letterboxes: Vec::with_capacity(indices.len()),
        image_ids: Vec::with_capacity(indices.len()),
    };
    for r in per_image {
        let (chw, objects, lb, id) = r?;
        batch.images.extend_from_slice(&chw);
        batch.targets.push(objects);
        batch.letterboxes.push(lb);
        batch.image_ids.push(id);
    }
    Ok(batch)
}

/// The batch's pixels as an f32 tensor `[n, 3, size, size]` on `dev`.
pub fn batch_to_tensor<B: Backend>(b: &Batch, dev: &B) -> Result<Tensor<B>> {
    Tensor::from_slice(&b.images, [b.n, 3, b.size, b.size], dev)
}
