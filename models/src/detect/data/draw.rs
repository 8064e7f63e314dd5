//! Drawing detections for `predict`: a 2-px outline per box in its class's colour and a filled
//! tag above it reading `"name 0.87"`, in the embedded 5x7 font (scaled up on large images so
//! it stays legible). Everything is clipped to the image; boxes with non-finite coordinates or
//! entirely outside are skipped, so no input can make drawing fail.

use image::{Rgb, RgbImage};

use super::font::{pixel, ADVANCE, GLYPH_H, GLYPH_W};
use crate::detect::{BBox, Detection, Object};

/// ultralytics' 20-colour palette, by class index modulo 20.
const PALETTE: [[u8; 3]; 20] = [
    [255, 56, 56],
    [255, 157, 151],
    [255, 112, 31],
    [255, 178, 29],
    [207, 210, 49],
    [72, 249, 10],
    [146, 204, 23],
    [61, 219, 134],
    [26, 147, 52],
    [0, 212, 187],
    [44, 153, 168],
    [0, 194, 255],
    [52, 69, 147],
    [100, 115, 255],
    [0, 24, 236],
    [132, 56, 255],
    [82, 0, 133],
    [203, 56, 255],
    [255, 149, 200],
    [255, 55, 199],
];

/// The outline colour of `class`.
pub fn class_colour(class: usize) -> Rgb<u8> {
    Rgb(PALETTE[class % PALETTE.len()])
}

/// Draw each detection's box and a `"name score"` tag onto `img`.
pub fn draw_detections(img: &mut RgbImage, dets: &[Detection], class_names: &[String]) {
    for d in dets {
        let label = format!("{} {:.2}", class_name(class_names, d.class), d.score);
        draw_box(img, d.bbox, class_colour(d.class), &label);
    }
}

/// Draw ground-truth objects (tag: the class name; crowd regions add `" (crowd)"`).
pub fn draw_objects(img: &mut RgbImage, objects: &[Object], class_names: &[String]) {
    for o in objects {
        let label = format!("{}{}", class_name(class_names, o.class), if o.crowd { " (crowd)" } else { "" });
        draw_box(img, o.bbox, class_colour(o.class), &label);
    }
}

fn class_name(names: &[String], class: usize) -> String {
    names.get(class).cloned().unwrap_or_else(|| format!("class {class}"))
}

/// Text scale for an image: 1 up to ~600 px on the short side, then one more per 600 px.
fn text_scale(img: &RgbImage) -> usize {
    1 + img.width().min(img.height()) as usize / 600
}

/// One box: a 2-px (scaled) outline inside its edges and a tag on top.
fn draw_box(img: &mut RgbImage, b: BBox, colour: Rgb<u8>, label: &str) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    if !b.is_valid() || w == 0 || h == 0 {
        return;
    }
    // Pixel columns/rows the box covers (continuous corners -> inclusive pixel range).
    let x0 = (b.x0.floor() as i64).max(0);
    let y0 = (b.y0.floor() as i64).max(0);
    let x1 = (b.x1.ceil() as i64).saturating_sub(1).min(w - 1);
    let y1 = (b.y1.ceil() as i64).saturating_sub(1).min(h - 1);
    if x0 > x1 || y0 > y1 {
        return;
    }
    let t = 2 * text_scale(img) as i64;
    fill(img, x0, y0, x1, (y0 + t - 1).min(y1), colour);
    fill(img, x0, (y1 - t + 1).max(y0), x1, y1, colour);
    fill(img, x0, y0, (x0 + t - 1).min(x1), y1, colour);
    fill(img, (x1 - t + 1).max(x0), y0, x1, y1, colour);
    // The tag: above the box when there is room, else inside its top edge.
    let s = text_scale(img) as i64;
    let tag_w = (label.chars().count() * ADVANCE + 3) as i64 * s;
    let tag_h = (GLYPH_H as i64 + 4) * s;
    let ty = if y0 >= tag_h { y0 - tag_h } else { y0 };
    let tx = x0.min((w - tag_w).max(0));
    fill(img, tx, ty, tx + tag_w - 1, ty + tag_h - 1, colour);
    // Black or white text, whichever reads better on the tag colour.
    let luma = 0.299 * colour[0] as f32 + 0.587 * colour[1] as f32 + 0.114 * colour[2] as f32;
    let ink = if luma > 140.0 { Rgb([0, 0, 0]) } else { Rgb([255, 255, 255]) };
    draw_text(img, tx + 2 * s, ty + 2 * s, label, s as usize, ink);
}

/// Fill the inclusive rectangle `[x0, x1] x [y0, y1]`, clipped to the image.
fn fill(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb<u8>) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    for y in y0.max(0)..=y1.min(h - 1) {
        for x in x0.max(0)..=x1.min(w - 1) {
            img.put_pixel(x as u32, y as u32, c);
        }
    }
}

/// Draw `text` with its top-left corner at `(x, y)`, each font pixel a `scale x scale` square,
/// clipped to the image.
pub fn draw_text(img: &mut RgbImage, x: i64, y: i64, text: &str, scale: usize, ink: Rgb<u8>) {
    let s = scale.max(1) as i64;
    for (i, ch) in text.chars().enumerate() {
        let cx = x.saturating_add((i * ADVANCE) as i64 * s);
        for col in 0..GLYPH_W {
            for row in 0..GLYPH_H {
                if pixel(ch, col, row) {
                    let (px, py) = (cx.saturating_add(col as i64 * s), y.saturating_add(row as i64 * s));
                    fill(img, px, py, px.saturating_add(s - 1), py.saturating_add(s - 1), ink);
                }
            }
        }
    }
}
