//! The embedded default dataset: coloured geometric shapes on cluttered backgrounds, rendered on
//! demand from a seed. Nothing is stored: image `i` of a split is a pure function of
//! `(seed, split, i)`, so a run resumes on exactly the images it would have seen and no memory is
//! held between loads.
//!
//! How an image is made (each step draws from one [`Rng`] seeded by `(seed, split, i)`):
//! 1. background: a bilinear gradient or blotches of random colours, plus pixel noise;
//! 2. distractors: up to 6 lines, scribbles and soft blobs (nothing with a hard closed outline);
//! 3. 1..=`max_objects` objects, each a class from [`SYNTH_CLASSES`] with an extent (the
//!    diameter of a circle holding the whole shape, so it bounds the box at any rotation)
//!    log-uniform in `min_size..max_size` of the image side, a random aspect, rotation, colour
//!    (kept apart from the background under it) and texture (solid, stripes, checker, noise).
//!    Objects are drawn in order, later over earlier, and every pixel remembers which object
//!    painted it last;
//! 4. labels from what is visible: an object's box is the tight bound of its pixels still
//!    visible at the end, in continuous pixel corners. An object with fewer than 16 visible
//!    pixels or a visible extent under 3 px is dropped (no label); one with more than `max_hidden`
//!    of its drawn pixels hidden by later objects is labelled `crowd` (training ignores it and
//!    evaluation neither rewards nor penalises detecting it, as COCO does with ambiguous regions),
//!    so no label claims a shape the image does not show.

use ela_core::{Error, Result, Rng};

use super::raster::{background, distractors, fill_polygon, random_colour, Paint};
use super::shapes::make_shape;
use super::source::{index_error, DatasetSplit, DetectionSource, Sample, SkipReport};
use crate::detect::{BBox, Object};

/// The synthetic classes, in class-index order.
pub const SYNTH_CLASSES: [&str; 6] = ["circle", "rectangle", "triangle", "cross", "ring", "star"];

/// Which split of the synthetic set (they use different image streams, so never overlap).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The training images.
    Train,
    /// The validation images.
    Val,
}

/// The synthetic set's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthConfig {
    /// Seed of the whole set.
    pub seed: u64,
    /// Number of training images.
    pub train: usize,
    /// Number of validation images.
    pub val: usize,
    /// Side of the square images, pixels (32..=4096).
    pub image_size: u32,
    /// Most objects in one image (1..=32).
    pub max_objects: usize,
    /// Smallest object extent as a fraction of the image side.
    pub min_size: f32,
    /// Largest object extent as a fraction of the image side.
    pub max_size: f32,
    /// Fraction of an object's drawn pixels that may be hidden before it is marked `crowd`.
    pub max_hidden: f32,
}

impl Default for SynthConfig {
    /// 2000 training and 200 validation images of 256x256, up to 6 objects of 8%..45% of the side.
    fn default() -> Self {
        SynthConfig {
            seed: 0,
            train: 2000,
            val: 200,
            image_size: 256,
            max_objects: 4,
            min_size: 0.15,
            max_size: 0.45,
            max_hidden: 0.6,
        }
    }
}

impl SynthConfig {
    /// Check every field, naming the bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid("synthetic dataset", msg));
        if !(32..=4096).contains(&self.image_size) {
            return bad(format!("image_size must be in 32..=4096, got {}", self.image_size));
        }
        if self.train == 0 || self.val == 0 {
            return bad(format!("train and val must be at least 1, got {} and {}", self.train, self.val));
        }
        if !(1..=32).contains(&self.max_objects) {
            return bad(format!("max_objects must be in 1..=32, got {}", self.max_objects));
        }
        if !(self.min_size > 0.0 && self.min_size <= self.max_size && self.max_size <= 1.0) {
            return bad(format!(
                "object sizes must satisfy 0 < min_size <= max_size <= 1, got {} and {}",
                self.min_size, self.max_size
            ));
        }
        if !(0.0..=1.0).contains(&self.max_hidden) {
            return bad(format!("max_hidden must be in [0, 1], got {}", self.max_hidden));
        }
        Ok(())
    }
}

/// Both splits of the synthetic set described by `cfg`.
pub fn synthetic(cfg: &SynthConfig) -> Result<DatasetSplit> {
    Ok(DatasetSplit {
        train: Box::new(SynthSource::new(cfg, Split::Train)?),
        val: Box::new(SynthSource::new(cfg, Split::Val)?),
        skipped: SkipReport::default(),
    })
}

/// What happened to one drawn shape's label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShapeLabel {
    /// Labelled as an ordinary object.
    Object,
    /// Labelled `crowd`: more than `max_hidden` of it is hidden.
    Crowd,
    /// Not labelled: too little of it is visible.
    Dropped,
}

/// One drawn shape, as the generator saw it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ShapeInfo {
    /// Class index.
    pub class: usize,
    /// Pixels it painted (inside the image).
    pub drawn_px: usize,
    /// Of those, pixels no later object painted over.
    pub visible_px: usize,
    /// Tight bound of the visible pixels, if any.
    pub visible_box: Option<BBox>,
    /// Whether and how it is labelled.
    pub label: ShapeLabel,
}

/// A rendered image with the generator's bookkeeping, for tests and inspection.
#[derive(Clone, Debug)]
pub struct SynthScene {
    /// The image and its labels, as [`DetectionSource::load`] returns them.
    pub sample: Sample,
    /// Which shape owns each pixel (row-major): 0 for none, `k + 1` for `shapes[k]`.
    pub mask: Vec<u8>,
    /// Every shape drawn, in drawing order.
    pub shapes: Vec<ShapeInfo>,
}

/// One split of the synthetic set.
#[derive(Clone, Debug)]
pub struct SynthSource {
    cfg: SynthConfig,
    split: Split,
    names: Vec<String>,
    ids: Vec<u64>,
}

impl SynthSource {
    /// The `split` of the set `cfg` describes.
    pub fn new(cfg: &SynthConfig, split: Split) -> Result<Self> {
        cfg.validate()?;
        Ok(SynthSource {
            cfg: cfg.clone(),
            split,
            names: SYNTH_CLASSES.iter().map(|s| s.to_string()).collect(),
            ids: (0..SYNTH_CLASSES.len() as u64).collect(),
        })
    }

    /// The generator of image `index`: seeded from `(seed, split, index)` alone.
    fn rng(&self, index: usize) -> Rng {
        let split = match self.split {
            Split::Train => 0x7261_696e_u64,
            Split::Val => 0x0076_616c_u64,
        };
        let mut r = Rng::new(self.cfg.seed ^ split.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        Rng::new(r.next_u64() ^ (index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    /// Render image `index` with the generator's bookkeeping.
    pub fn render(&self, index: usize) -> Result<SynthScene> {
        if index >= self.len() {
            return Err(index_error(index, self.len()));
        }
        let mut rng = self.rng(index);
        let n = self.cfg.image_size as usize;
        let mut canvas = background(&mut rng, n);
        distractors(&mut rng, &mut canvas);
        let count = 1 + rng.below(self.cfg.max_objects as u64) as usize;
        let mut mask = vec![0u8; n * n];
        let mut shapes = Vec::with_capacity(count);
        for k in 0..count {
            let class = rng.below(SYNTH_CLASSES.len() as u64) as usize;
            let shape = make_shape(class, &mut rng, n as f32, self.cfg.min_size, self.cfg.max_size);
            let under = &canvas.px[pixel_offset(shape.cx, shape.cy, n)..][..3];
            let under = [under[0] as f32, under[1] as f32, under[2] as f32];
            let main = contrasting_colour(&mut rng, under);
            let paint = Paint::random(&mut rng, main, shape.extent);
            let mut drawn = 0;
            fill_polygon(&shape.contours, n, |x, y| {
                let (dx, dy) = (x as f32 + 0.5 - shape.cx, y as f32 + 0.5 - shape.cy);
                let (u, v) = (dx * shape.cos + dy * shape.sin, -dx * shape.sin + dy * shape.cos);
                let p = y * n + x;
                canvas.px[p * 3..p * 3 + 3].copy_from_slice(&paint.at(u, v, p as u32));
                mask[p] = (k + 1) as u8;
                drawn += 1;
            });
            shapes.push(ShapeInfo {
                class,
                drawn_px: drawn,
                visible_px: 0,
                visible_box: None,
                label: ShapeLabel::Dropped,
            });
        }
        label_visible(&mut shapes, &mask, n, self.cfg.max_hidden);
        let objects = shapes
            .iter()
            .filter(|s| s.label != ShapeLabel::Dropped)
            .filter_map(|s| {
                s.visible_box.map(|b| Object { class: s.class, bbox: b, crowd: s.label == ShapeLabel::Crowd })
            })
            .collect();
        let image = image::RgbImage::from_raw(n as u32, n as u32, canvas.px)
            .ok_or_else(|| Error::invalid("synthetic dataset", "canvas size mismatch"))?;
        Ok(SynthScene { sample: Sample { image, objects, image_id: index as u64 }, mask, shapes })
    }
}

/// Byte offset of the pixel under `(x, y)`, clamped into the image.
fn pixel_offset(x: f32, y: f32, n: usize) -> usize {
    let xi = (x.max(0.0) as usize).min(n - 1);
    let yi = (y.max(0.0) as usize).min(n - 1);
    (yi * n + xi) * 3
}

/// A colour at least a little apart from `under` (a few tries; low contrast stays possible, as
/// in real photos, but rare).
fn contrasting_colour(rng: &mut Rng, under: [f32; 3]) -> [f32; 3] {
    let mut c = random_colour(rng, (0.4, 1.0), (0.35, 1.0));
    for _ in 0..6 {
        let d: f32 = (0..3).map(|k| (c[k] - under[k]).abs()).sum();
        if d > 90.0 {
            break;
        }
        c = random_colour(rng, (0.4, 1.0), (0.35, 1.0));
    }
    c
}

/// Fill in each shape's visible pixel count, visible box and label from the ownership mask.
fn label_visible(shapes: &mut [ShapeInfo], mask: &[u8], n: usize, max_hidden: f32) {
    let mut bounds = vec![[usize::MAX, usize::MAX, 0usize, 0usize]; shapes.len()];
    for (y, row) in mask.chunks_exact(n).enumerate() {
        for (x, &m) in row.iter().enumerate() {
            if m > 0 {
                let k = m as usize - 1;
                shapes[k].visible_px += 1;
                let b = &mut bounds[k];
                b[0] = b[0].min(x);
                b[1] = b[1].min(y);
                b[2] = b[2].max(x + 1);
                b[3] = b[3].max(y + 1);
            }
        }
    }
    for (s, b) in shapes.iter_mut().zip(bounds) {
        if s.visible_px == 0 {
            continue;
        }
        let bbox = BBox::new(b[0] as f32, b[1] as f32, b[2] as f32, b[3] as f32);
        s.visible_box = Some(bbox);
        s.label = if s.visible_px < 16 || bbox.width() < 3.0 || bbox.height() < 3.0 {
            ShapeLabel::Dropped
        } else if (s.visible_px as f32) < (1.0 - max_hidden) * s.drawn_px as f32 {
            ShapeLabel::Crowd
        } else {
            ShapeLabel::Object
        };
    }
}

impl DetectionSource for SynthSource {
    fn len(&self) -> usize {
        match self.split {
            Split::Train => self.cfg.train,
            Split::Val => self.cfg.val,
        }
    }

    fn class_names(&self) -> &[String] {
        &self.names
    }

    fn category_ids(&self) -> &[u64] {
        &self.ids
    }

    fn image_id(&self, index: usize) -> u64 {
        if index < self.len() {
            index as u64
        } else {
            u64::MAX
        }
    }

    fn load(&self, index: usize) -> Result<Sample> {
        self.render(index).map(|s| s.sample)
    }

    fn describe(&self) -> String {
        let c = &self.cfg;
        format!(
            "synthetic shapes ({} split): {} images {}x{}, {} classes, seed {}, up to {} objects of {:.0}%..{:.0}% of the side",
            if self.split == Split::Train { "train" } else { "val" },
            self.len(),
            c.image_size,
            c.image_size,
            self.names.len(),
            c.seed,
            c.max_objects,
            c.min_size * 100.0,
            c.max_size * 100.0
        )
    }
}
