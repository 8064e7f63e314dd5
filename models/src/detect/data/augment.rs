//! Seeded on-the-fly augmentation, and the one function that turns a sample into a network input:
//! [`prepare`] (letterbox, then optionally flip, scale, shift and colour-jitter).
//!
//! Geometry: with the letterbox `x' = s0 x + p` (see [`super::letterbox`]), a random scale `s`
//! about the input's centre, a random shift `t` (a fraction of the input side) and an optional
//! mirror compose into another axis-aligned map `x'' = s s0 x + (s (p - size/2) + size/2 + t)`,
//! so the image is resampled once and boxes go through exactly the same map ([`Letterbox::map`]).
//! Boxes are then clipped to the input; a box is dropped when less than `min_visible` of its
//! transformed area is left, or when it is narrower or shorter than `min_side` pixels
//! (ultralytics' `box_candidates` does the same with 10% and 2 px).
//!
//! Colour: an HSV jitter with ultralytics' gains, done in RGB without a colour-space round trip:
//! value scales all channels (`V = max(r, g, b)` scales with them), saturation scales each
//! channel's distance below `V` (capped so no channel goes negative), and hue is a rotation about
//! the grey axis by `±h_gain * 360` degrees (a close approximation of an HSV hue shift for the
//! small angles used). Grey padding is left alone.
//!
//! Every random number comes from the caller's [`Rng`], and the same number of draws is made
//! whatever the configuration, so switching one augmentation off does not shift the others.

use ela_core::{Error, Result, Rng};
use image::RgbImage;

use super::letterbox::{warp_with, Letterbox};
use crate::detect::Object;

/// What augmentation does, and how much.
#[derive(Clone, Debug, PartialEq)]
pub struct AugmentConfig {
    /// Probability of a left-right mirror.
    pub flip_prob: f32,
    /// Hue gain: hue moves by up to `±hsv_h` of a full turn.
    pub hsv_h: f32,
    /// Saturation gain: saturation is multiplied by `1 ± hsv_s` at most.
    pub hsv_s: f32,
    /// Value gain: brightness is multiplied by `1 ± hsv_v` at most.
    pub hsv_v: f32,
    /// Random zoom range about the input's centre (1 = letterbox size).
    pub scale: (f32, f32),
    /// Largest random shift, as a fraction of the input side, along each axis.
    pub translate: f32,
    /// Drop a box when less than this fraction of its transformed area is inside the input.
    pub min_visible: f32,
    /// Drop a box narrower or shorter than this, in input pixels.
    pub min_side: f32,
}

impl Default for AugmentConfig {
    /// ultralytics' defaults: flip 0.5, HSV gains 0.015/0.7/0.4, scale 0.5..1.5, translate 0.1.
    fn default() -> Self {
        AugmentConfig {
            flip_prob: 0.5,
            hsv_h: 0.015,
            hsv_s: 0.7,
            hsv_v: 0.4,
            scale: (0.75, 1.25),
            translate: 0.1,
            min_visible: 0.2,
            min_side: 2.0,
        }
    }
}

impl AugmentConfig {
    /// No change to the image or the boxes' positions (the box-dropping rules still apply).
    pub fn none() -> Self {
        AugmentConfig {
            flip_prob: 0.0,
            hsv_h: 0.0,
            hsv_s: 0.0,
            hsv_v: 0.0,
            scale: (1.0, 1.0),
            translate: 0.0,
            ..Self::default()
        }
    }

    /// Check every field, naming the bad one.
    pub fn validate(&self) -> Result<()> {
        let ok = (0.0..=1.0).contains(&self.flip_prob)
            && [self.hsv_h, self.hsv_s, self.hsv_v].iter().all(|g| (0.0..=1.0).contains(g))
            && self.scale.0 > 0.0
            && self.scale.0 <= self.scale.1
            && self.scale.1.is_finite()
            && (0.0..=1.0).contains(&self.translate)
            && (0.0..=1.0).contains(&self.min_visible)
            && self.min_side >= 0.0
            && self.min_side.is_finite();
        if ok {
            Ok(())
        } else {
            Err(Error::invalid(
                "augment",
                format!(
                    "invalid settings {self:?}: probabilities, gains, translate and min_visible must be in [0, 1], \
                     scale a range 0 < lo <= hi, min_side >= 0"
                ),
            ))
        }
    }
}

/// A sample made ready for the network.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The `size x size` input image.
    pub image: RgbImage,
    /// The objects in input pixels, clipped (dropped ones removed).
    pub objects: Vec<Object>,
    /// The map from the original image to the input.
    pub transform: Letterbox,
}

/// Letterbox `image` into a `size` square and, with `augment`, apply a random flip, zoom, shift
/// and colour jitter drawn from `rng`; `objects` (in `image` pixels) follow the geometry.
/// Without augmentation `rng` is not used and only boxes left empty by clipping are dropped.
pub fn prepare(
    image: &RgbImage,
    objects: &[Object],
    size: usize,
    augment: Option<&AugmentConfig>,
    rng: &mut Rng,
) -> Result<Prepared> {
    let mut lb = Letterbox::new(image.width(), image.height(), size)?;
    let Some(cfg) = augment else {
        let objects = objects
            .iter()
            .map(|o| Object { bbox: lb.map(o.bbox).clip(size as f32, size as f32), ..*o })
            .filter(|o| o.bbox.is_valid())
            .collect();
        return Ok(Prepared { image: warp_with(image, &lb, |c| c)?, objects, transform: lb });
    };
    cfg.validate()?;
    // Always the same seven draws, in this order.
    let u: [f32; 7] = std::array::from_fn(|_| rng.uniform() as f32);
    let half = 0.5 * size as f32;
    let s = cfg.scale.0 + (cfg.scale.1 - cfg.scale.0) * u[1];
    let (tx, ty) = ((2.0 * u[2] - 1.0) * cfg.translate * size as f32, (2.0 * u[3] - 1.0) * cfg.translate * size as f32);
    lb = Letterbox {
        scale: lb.scale * s,
        pad_x: s * (lb.pad_x - half) + half + tx,
        pad_y: s * (lb.pad_y - half) + half + ty,
        flipped: u[0] < cfg.flip_prob,
        ..lb
    };
    let jitter = HsvJitter::new(
        (2.0 * u[4] - 1.0) * cfg.hsv_h,
        1.0 + (2.0 * u[5] - 1.0) * cfg.hsv_s,
        1.0 + (2.0 * u[6] - 1.0) * cfg.hsv_v,
    );
    let img =
        if jitter.is_identity() { warp_with(image, &lb, |c| c)? } else { warp_with(image, &lb, |c| jitter.apply(c))? };
    let n = size as f32;
    let objects = objects
        .iter()
        .filter_map(|o| {
            let m = lb.map(o.bbox);
            let c = m.clip(n, n);
            let keep = c.is_valid()
                && c.area() >= cfg.min_visible * m.area()
                && c.width() >= cfg.min_side
                && c.height() >= cfg.min_side;
            keep.then_some(Object { bbox: c, ..*o })
        })
        .collect();
    Ok(Prepared { image: img, objects, transform: lb })
}

/// The colour half of augmentation, precomputed for one image.
#[derive(Clone, Copy, Debug)]
struct HsvJitter {
    /// Hue rotation about the grey axis (row-major 3x3).
    rot: [[f32; 3]; 3],
    hue: bool,
    sat: f32,
    val: f32,
}

impl HsvJitter {
    /// Hue shift in turns, saturation and value factors.
    fn new(hue_turns: f32, sat: f32, val: f32) -> Self {
        // Rodrigues' rotation by angle a about the unit axis (1, 1, 1) / sqrt(3).
        let (s, c) = (hue_turns * std::f32::consts::TAU).sin_cos();
        let (a, b) = ((1.0 - c) / 3.0, s / 3f32.sqrt());
        let rot = [[c + a, a - b, a + b], [a + b, c + a, a - b], [a - b, a + b, c + a]];
        HsvJitter { rot, hue: hue_turns != 0.0, sat: sat.max(0.0), val: val.max(0.0) }
    }

    fn is_identity(&self) -> bool {
        !self.hue && self.sat == 1.0 && self.val == 1.0
    }

    #[inline]
    fn apply(&self, mut c: [f32; 3]) -> [f32; 3] {
        if self.hue {
            let r = &self.rot;
            c = std::array::from_fn(|i| r[i][0] * c[0] + r[i][1] * c[1] + r[i][2] * c[2]);
        }
        let v = c[0].max(c[1]).max(c[2]);
        let m = c[0].min(c[1]).min(c[2]);
        // Scale the distance below V by `sat`, but no further than to reach 0 (S = 1); the cap
        // only binds when `sat > 1`, which spares the division on most pixels.
        let g = if self.sat > 1.0 && (v - m) * self.sat > v { v.max(0.0) / (v - m) } else { self.sat };
        c.map(|x| ((v - (v - x) * g) * self.val).clamp(0.0, 255.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_identity_and_value() {
        let j = HsvJitter::new(0.0, 1.0, 1.0);
        assert!(j.is_identity());
        assert_eq!(j.apply([10.0, 100.0, 200.0]), [10.0, 100.0, 200.0]);
        let j = HsvJitter::new(0.0, 1.0, 0.5);
        assert_eq!(j.apply([10.0, 100.0, 200.0]), [5.0, 50.0, 100.0]);
        // Zero saturation gives grey at the same V; hue rotation keeps grey grey.
        let j = HsvJitter::new(0.0, 0.0, 1.0);
        assert_eq!(j.apply([10.0, 100.0, 200.0]), [200.0, 200.0, 200.0]);
        let g = HsvJitter::new(0.1, 1.0, 1.0).apply([80.0, 80.0, 80.0]);
        assert!(g.iter().all(|v| (v - 80.0).abs() < 1e-3), "{g:?}");
    }
}
