//! From output maps to detections (before non-maximum suppression).

use ela_core::{Backend, DType, Error, Result, Tensor};

use super::output::{decode_box, BOX, CLS, OBJ};
use crate::detect::boxes::{BBox, Detection};

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Detections per image from `outputs` (one `[n, 5 + nc, h, w]` map per scale, strides
/// `strides`), before NMS: one per cell whose best class scores at least `conf_threshold`, with
/// `score = sigmoid(objectness) sigmoid(class logit)`, the box decoded as in [`super::output`]
/// (input pixels) and clipped to the input `[0, w stride] x [0, h stride]`. Reads the maps back
/// to the host once each.
pub fn decode<B: Backend>(
    outputs: &[Tensor<B>],
    strides: &[usize],
    conf_threshold: f32,
) -> Result<Vec<Vec<Detection>>> {
    if outputs.len() != strides.len() {
        return Err(Error::invalid(
            "decode",
            format!("need one stride per output, got {} outputs and {} strides", outputs.len(), strides.len()),
        ));
    }
    let n = outputs.first().map_or(0, |o| o.dims().first().copied().unwrap_or(0));
    let mut dets = vec![Vec::new(); n];
    for (out, &stride) in outputs.iter().zip(strides) {
        let d = out.dims();
        if d.len() != 4 || d[0] != n || d[1] <= CLS {
            return Err(Error::invalid("decode", format!("outputs must be [n, 5 + nc, h, w] with one n, got {d:?}")));
        }
        let (c, h, w) = (d[1], d[2], d[3]);
        let v = out.to_dtype(DType::F32)?.to_vec::<f32>()?;
        // In f32 directly: an image size beyond usize (a huge stride) must not wrap around.
        let (img_w, img_h) = (w as f32 * stride as f32, h as f32 * stride as f32);
        for (img, det) in dets.iter_mut().enumerate() {
            let at = |ch: usize, cell: usize| v[(img * c + ch) * h * w + cell];
            for cell in 0..h * w {
                let obj = sigmoid(at(OBJ, cell));
                // score <= sigmoid(obj): most cells stop here.
                if obj < conf_threshold {
                    continue;
                }
                let (class, logit) = (CLS..c)
                    .map(|ch| (ch - CLS, at(ch, cell)))
                    .fold((0, f32::NEG_INFINITY), |best, x| if x.1 > best.1 { x } else { best });
                let score = obj * sigmoid(logit);
                if score < conf_threshold {
                    continue;
                }
                let t = [0, 1, 2, 3].map(|q| at(BOX + q, cell) as f64);
                let [x0, y0, x1, y1] = decode_box(t, cell % w, cell / w, stride);
                let bbox = BBox::new(x0 as f32, y0 as f32, x1 as f32, y1 as f32).clip(img_w, img_h);
                if bbox.is_valid() {
                    det.push(Detection { class, bbox, score });
                }
            }
        }
    }
    Ok(dets)
}
