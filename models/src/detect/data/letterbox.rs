//! Letterboxing: fit an image of any size into the network's square input without distorting it,
//! and map boxes between the two.
//!
//! The image is scaled by `scale = size / max(width, height)` and centred; the rest of the canvas
//! is grey 114 (ultralytics' padding colour, so pretrained habits and our own agree). The map from
//! original to input pixels is exactly `x' = scale * x + pad_x`, `y' = scale * y + pad_y`, with
//! fractional pads: the resampler below samples the image at precisely those positions, so boxes
//! mapped with [`Letterbox::map`] land on the pixels they labelled, with no rounding drift.
//!
//! Augmentation ([`super::augment`]) reuses the same structure: a random scale, shift and
//! horizontal flip compose with the letterbox into another axis-aligned map (hence the `flipped`
//! field), and one resampling pass renders it.
//!
//! Resampling is bilinear at pixel centres. When shrinking by more than 2x, the image is first
//! reduced by an integer factor `k = floor(1 / scale)` with box averaging, then resampled: plain
//! bilinear would skip most source pixels and alias (this is what OpenCV's INTER_AREA buys
//! ultralytics). Both passes are separable with precomputed taps, a few ns per output pixel.

use ela_core::{Error, Result};
use image::RgbImage;

use crate::detect::BBox;

/// Grey of the padding (ultralytics' value).
pub const PAD_GREY: u8 = 114;

/// The axis-aligned map from an original image to a square network input:
/// `x' = scale * x + pad_x` (then `x' -> size - x'` when `flipped`), `y' = scale * y + pad_y`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Letterbox {
    /// Input pixels per original pixel.
    pub scale: f32,
    /// Horizontal offset of the original's left edge in the input (before any flip).
    pub pad_x: f32,
    /// Vertical offset of the original's top edge in the input.
    pub pad_y: f32,
    /// Whether the input is mirrored left-right (augmentation only).
    pub flipped: bool,
    /// Side of the square input.
    pub size: usize,
    /// Original image width.
    pub width: u32,
    /// Original image height.
    pub height: u32,
}

impl Letterbox {
    /// The plain letterbox of a `width x height` image into a `size x size` input.
    pub fn new(width: u32, height: u32, size: usize) -> Result<Self> {
        if width == 0 || height == 0 || size == 0 {
            return Err(Error::invalid(
                "letterbox",
                format!("image {width}x{height} into input {size}: every side must be positive"),
            ));
        }
        let scale = size as f32 / width.max(height) as f32;
        Ok(Letterbox {
            scale,
            pad_x: 0.5 * (size as f32 - scale * width as f32),
            pad_y: 0.5 * (size as f32 - scale * height as f32),
            flipped: false,
            size,
            width,
            height,
        })
    }

    /// A box in original pixels, in input pixels (not clipped).
    pub fn map(&self, b: BBox) -> BBox {
        let m = b.scale_translate(self.scale, self.scale, self.pad_x, self.pad_y);
        if self.flipped {
            m.flip_x(self.size as f32)
        } else {
            m
        }
    }

    /// A box in input pixels (e.g. a detection), in original pixels, clipped to the original image.
    pub fn unmap(&self, b: BBox) -> BBox {
        let b = if self.flipped { b.flip_x(self.size as f32) } else { b };
        let inv = 1.0 / self.scale;
        b.scale_translate(inv, inv, -self.pad_x * inv, -self.pad_y * inv).clip(self.width as f32, self.height as f32)
    }
}

/// Letterbox `img` into a `size x size` input (grey padding); returns the input and the map.
pub fn letterbox(img: &RgbImage, size: usize) -> Result<(RgbImage, Letterbox)> {
    let lb = Letterbox::new(img.width(), img.height(), size)?;
    Ok((warp(img, &lb)?, lb))
}

/// Render `img` under the map `lb` into a new `lb.size` square image; pixels whose centre falls
/// outside the image are grey.
pub fn warp(img: &RgbImage, lb: &Letterbox) -> Result<RgbImage> {
    warp_with(img, lb, |c| c)
}

/// [`warp`], with `colour` transforming every content pixel (0..255 floats; augmentation's HSV
/// jitter), so the grey padding stays grey. Generic so the colour step inlines into the loop.
pub(crate) fn warp_with(img: &RgbImage, lb: &Letterbox, colour: impl Fn([f32; 3]) -> [f32; 3]) -> Result<RgbImage> {
    if img.width() != lb.width || img.height() != lb.height {
        return Err(Error::invalid(
            "warp",
            format!("image is {}x{} but the letterbox is for {}x{}", img.width(), img.height(), lb.width, lb.height),
        ));
    }
    if !(lb.scale.is_finite() && lb.scale > 0.0 && lb.pad_x.is_finite() && lb.pad_y.is_finite()) || lb.size == 0 {
        return Err(Error::invalid("warp", format!("invalid map {lb:?}")));
    }
    // Shrinking by more than 2x: box-reduce by k first, then bilinear from the reduced image.
    let k = if lb.scale < 0.5 { (1.0 / lb.scale).floor().max(1.0) as u32 } else { 1 };
    let reduced;
    let src = if k > 1 {
        reduced = box_reduce(img, k);
        &reduced
    } else {
        img
    };
    let n = lb.size;
    let (x_range, xs) = taps(n, lb.width, src.width(), k, lb.scale, lb.pad_x, lb.flipped);
    let (y_range, ys) = taps(n, lb.height, src.height(), k, lb.scale, lb.pad_y, false);
    let (sw, raw) = (src.width() as usize, src.as_raw());
    // Separable: each source row needed is resampled along x once into a float buffer (two kept,
    // as consecutive output rows mostly share them), then output rows blend two such buffers.
    let along_x = |row: usize, buf: &mut [f32]| {
        let r = &raw[row * sw * 3..(row + 1) * sw * 3];
        for (t, o) in xs.iter().zip(buf.chunks_exact_mut(3)) {
            let (a, b) = (&r[t.i0 * 3..t.i0 * 3 + 3], &r[t.i1 * 3..t.i1 * 3 + 3]);
            for ch in 0..3 {
                o[ch] = a[ch] as f32 + (b[ch] as f32 - a[ch] as f32) * t.w;
            }
        }
    };
    let mut out = vec![PAD_GREY; n * n * 3];
    let (mut h0, mut h1) = (vec![0f32; xs.len() * 3], vec![0f32; xs.len() * 3]);
    let (mut c0, mut c1) = (usize::MAX, usize::MAX);
    for (y, ty) in y_range.zip(&ys) {
        if ty.i0 != c0 {
            if ty.i0 == c1 {
                std::mem::swap(&mut h0, &mut h1);
                std::mem::swap(&mut c0, &mut c1);
            } else {
                along_x(ty.i0, &mut h0);
                c0 = ty.i0;
            }
        }
        if ty.i1 != c1 {
            along_x(ty.i1, &mut h1);
            c1 = ty.i1;
        }
        let line = &mut out[(y * n + x_range.start) * 3..(y * n + x_range.end) * 3];
        for ((o, a), b) in line.chunks_exact_mut(3).zip(h0.chunks_exact(3)).zip(h1.chunks_exact(3)) {
            let c = colour([a[0] + (b[0] - a[0]) * ty.w, a[1] + (b[1] - a[1]) * ty.w, a[2] + (b[2] - a[2]) * ty.w]);
            for ch in 0..3 {
                o[ch] = (c[ch] + 0.5).clamp(0.0, 255.0) as u8;
            }
        }
    }
    RgbImage::from_raw(n as u32, n as u32, out).ok_or_else(|| Error::invalid("warp", "output size mismatch"))
}

/// The two source pixels an output pixel interpolates between, and the weight of the second.
#[derive(Clone, Copy)]
struct Tap {
    i0: usize,
    i1: usize,
    w: f32,
}

/// Taps of the `n` output pixels along one axis: the range of output pixels whose centre maps
/// inside the original `[0, orig)` (a contiguous run, the rest is padding) and their taps. `src`
/// is the (possibly `k`-reduced) source length.
fn taps(
    n: usize,
    orig: u32,
    src: u32,
    k: u32,
    scale: f32,
    pad: f32,
    flipped: bool,
) -> (std::ops::Range<usize>, Vec<Tap>) {
    let tap = |i: usize| {
        let c = i as f32 + 0.5;
        let c = if flipped { n as f32 - c } else { c };
        let x = (c - pad) / scale; // original coordinate of the output pixel's centre
        if !(x >= 0.0 && x < orig as f32) {
            return None;
        }
        // Reduced pixel j covers original [j k, (j + 1) k): its centre is at (j + 0.5) k.
        let s = (x / k as f32 - 0.5).clamp(0.0, (src - 1) as f32);
        let i0 = s.floor() as usize;
        Some(Tap { i0, i1: (i0 + 1).min(src as usize - 1), w: s - i0 as f32 })
    };
    let all: Vec<(usize, Tap)> = (0..n).filter_map(|i| tap(i).map(|t| (i, t))).collect();
    match (all.first(), all.last()) {
        (Some(&(a, _)), Some(&(b, _))) => (a..b + 1, all.into_iter().map(|(_, t)| t).collect()),
        _ => (0..0, Vec::new()),
    }
}

/// Average each `k x k` block (partial blocks at the right and bottom edges average what they
/// hold).
fn box_reduce(img: &RgbImage, k: u32) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let k = k as usize;
    let (rw, rh) = (w.div_ceil(k), h.div_ceil(k));
    let raw = img.as_raw();
    let mut sums = vec![0u32; rw * 3];
    let mut out = vec![0u8; rw * rh * 3];
    for ry in 0..rh {
        sums.iter_mut().for_each(|s| *s = 0);
        let (y0, y1) = (ry * k, ((ry + 1) * k).min(h));
        for y in y0..y1 {
            let row = &raw[y * w * 3..(y + 1) * w * 3];
            for (block, sum) in row.chunks(k * 3).zip(sums.chunks_exact_mut(3)) {
                for px in block.chunks_exact(3) {
                    sum[0] += px[0] as u32;
                    sum[1] += px[1] as u32;
                    sum[2] += px[2] as u32;
                }
            }
        }
        for rx in 0..rw {
            let count = ((((rx + 1) * k).min(w) - rx * k) * (y1 - y0)) as u32;
            for ch in 0..3 {
                out[(ry * rw + rx) * 3 + ch] = ((sums[rx * 3 + ch] + count / 2) / count) as u8;
            }
        }
    }
    // The sizes are consistent by construction, so this cannot fail.
    RgbImage::from_raw(rw as u32, rh as u32, out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_unmap_and_padding() {
        let lb = Letterbox::new(200, 100, 64).unwrap();
        assert_eq!(lb.scale, 0.32);
        assert_eq!((lb.pad_x, lb.pad_y), (0.0, 16.0));
        let b = BBox::new(10.0, 20.0, 110.0, 70.0);
        let m = lb.map(b);
        let back = lb.unmap(m);
        assert!((back.x0 - b.x0).abs() < 1e-4 && (back.y1 - b.y1).abs() < 1e-4);
        let img = RgbImage::from_pixel(200, 100, image::Rgb([200, 10, 10]));
        let (out, _) = letterbox(&img, 64).unwrap();
        assert_eq!(out.get_pixel(32, 2).0, [PAD_GREY; 3]);
        assert_eq!(out.get_pixel(32, 32).0, [200, 10, 10]);
        assert_eq!(out.get_pixel(32, 61).0, [PAD_GREY; 3]);
        assert!(Letterbox::new(0, 5, 64).is_err());
    }

    #[test]
    fn box_reduce_averages() {
        let img = RgbImage::from_fn(5, 3, |x, _| image::Rgb([if x < 2 { 0 } else { 200 }; 3]));
        let r = box_reduce(&img, 2);
        assert_eq!((r.width(), r.height()), (3, 2));
        assert_eq!(r.get_pixel(0, 0).0[0], 0);
        assert_eq!(r.get_pixel(2, 1).0[0], 200);
    }
}
