//! Training targets and the detection loss.
//!
//! # Assignment (which cells learn which object)
//! Static, by geometry, computed on the host from the targets alone (no prediction is read back):
//! 1. **Scale.** An object goes to the finest scale whose stride `s` satisfies
//!    `max(w, h) <= scale_ratio s` (default 8: up to 64 px at stride 8, 128 at 16), and to the
//!    coarsest scale when none does. A single-scale model (YOLO-LAT) takes every object. Each
//!    object trains one scale, so every scale sees objects a few cells across, where its cells'
//!    receptive fields fit.
//! 2. **Cells.** The cell containing the box centre is positive, and with `neighbours` (default)
//!    also the horizontally and the vertically adjacent cells nearer the centre (YOLOv5): three
//!    positives per object instead of one, so the few objects of an image give three times the box
//!    and class gradient, which trains markedly faster on small data. The centre parametrisation
//!    ([`super::output`]) reaches 1.5 cells, so the neighbours can still predict the exact centre.
//! 3. **Conflicts.** When two objects claim a cell, the smaller one keeps it (objects are placed in
//!    order of decreasing area): the larger one has more cells of its own.
//! 4. **Crowd** regions (`Object::crowd`) are not targets; cells whose centre lies inside one and
//!    that are not positive are left out of the objectness loss (neither object nor background),
//!    as pycocotools ignores detections matched to crowds.
//!
//! # Loss
//! With `P` positive cells over the batch and all scales:
//!
//! ```text
//! obj = sum over non-ignored cells of focal_bce(objectness, positive) / max(P, 1)
//! box = mean over positives of (1 - CIoU(decoded box, object box))
//! cls = sum over positives and classes of BCE(class logits, one-hot) / P
//! loss = obj_gain obj + box_gain box + cls_gain cls
//! ```
//!
//! Focal loss (gamma 2, alpha 0.25: RetinaNet's values, tuned there for exactly this setting of one
//! dense objectness map normalised by the number of positives) keeps the ~99% empty cells from
//! dominating; with the objectness bias initialised to `logit(0.01)` the loss starts near 1 per
//! positive. Classes use plain BCE: they are trained only on positives, where they are balanced.
//! Everything is built from autograd ops; the positives' rows are gathered with `index_select`.

use ela_autograd::Var;
use ela_core::{Backend, Error, Result, Tensor};

use super::functions::{bce_with_logits, ciou, focal_bce};
use super::output::{boxes_from_logits, BOX, CLS, OBJ};
use crate::detect::boxes::{BBox, Object};

/// Weights and switches of [`detection_loss`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossConfig {
    /// Weight of the objectness term.
    pub obj_gain: f64,
    /// Weight of the box term.
    pub box_gain: f64,
    /// Weight of the class term.
    pub cls_gain: f64,
    /// Focal exponent (0: plain BCE).
    pub focal_gamma: f64,
    /// Focal weight of positives (negatives get `1 - alpha`; negative: no weighting).
    pub focal_alpha: f64,
    /// Also train the two neighbouring cells nearest each object's centre.
    pub neighbours: bool,
    /// An object goes to the finest scale with `max(w, h) <= scale_ratio * stride`.
    pub scale_ratio: f64,
}

impl Default for LossConfig {
    /// Gains obj 1, box 5, cls 2; focal gamma 2, alpha 0.25; neighbours on; scale ratio 8.
    ///
    /// Picked on held-out synthetic images (`loss_choices` in models/tests/detect_model_train.rs:
    /// YOLO-LAT, 150 AdamW steps of 8 images at 128 px, COCO AP on 32 others, two data seeds):
    /// box gain 2 / 5 / 7.5 gave AP 0.155 / 0.192 / 0.161 and 0.240 / 0.285 / 0.162. With box
    /// gain 2, dropping the neighbour cells cut AP from 0.155 to 0.100, and gamma 1.5 gave 0.114
    /// (AP50 0.541 vs 0.518). Single runs on small data: differences under ~0.03 are noise.
    fn default() -> Self {
        LossConfig {
            obj_gain: 1.0,
            box_gain: 5.0,
            cls_gain: 2.0,
            focal_gamma: 2.0,
            focal_alpha: 0.25,
            neighbours: true,
            scale_ratio: 8.0,
        }
    }
}

/// The loss's terms before weighting, read back once per call.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossParts {
    /// Objectness (focal) term.
    pub obj: f64,
    /// Box term, mean `1 - CIoU` over positives (0 without positives).
    pub boxes: f64,
    /// Class term (0 without positives).
    pub cls: f64,
    /// Number of positive cells.
    pub num_pos: usize,
}

/// A positive cell and what it must predict.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Positive {
    /// Index into the outputs (scale).
    pub scale: usize,
    /// Image in the batch.
    pub image: usize,
    /// Cell column.
    pub i: usize,
    /// Cell row.
    pub j: usize,
    /// The object's box (input pixels).
    pub bbox: BBox,
    /// The object's class.
    pub class: usize,
}

/// Targets of one batch: the positive cells, and per scale which cells the objectness loss skips.
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    /// Positive cells, in (scale, image, row, column) order.
    pub positives: Vec<Positive>,
    /// Per scale, `n h w` flags (image-major, then row, column): true where a crowd region hides
    /// the cell.
    pub ignored: Vec<Vec<bool>>,
}

/// Assign `targets` (one list per image, input pixels) to the cells of scales of sizes
/// `grids[k] = (h, w)` and strides `strides[k]` (see the module docs).
pub fn assign(grids: &[(usize, usize)], strides: &[usize], targets: &[Vec<Object>], cfg: &LossConfig) -> Assignment {
    let n = targets.len();
    let mut positives = Vec::new();
    let mut ignored: Vec<Vec<bool>> = grids.iter().map(|&(h, w)| vec![false; n * h * w]).collect();
    // Coarse-to-fine order of strides is not assumed: sort scale indices by stride.
    let mut order: Vec<usize> = (0..strides.len()).collect();
    order.sort_by_key(|&k| strides[k]);
    let scale_of = |b: &BBox| {
        let m = b.width().max(b.height()) as f64;
        *order.iter().find(|&&k| m <= cfg.scale_ratio * strides[k] as f64).unwrap_or(order.last().expect("a scale"))
    };
    for (img, objs) in targets.iter().enumerate() {
        let mut objs: Vec<&Object> = objs.iter().filter(|o| !o.crowd && o.bbox.is_valid()).collect();
        objs.sort_by(|a, b| b.bbox.area().total_cmp(&a.bbox.area()));
        for (k, &(h, w)) in grids.iter().enumerate() {
            let s = strides[k] as f64;
            let mut owner: Vec<Option<&Object>> = vec![None; h * w];
            for o in objs.iter().filter(|o| scale_of(&o.bbox) == k) {
                let [cx, cy, _, _] = o.bbox.to_cxcywh();
                let (gx, gy) = (cx as f64 / s, cy as f64 / s);
                let i = (gx.floor().max(0.0) as usize).min(w - 1);
                let j = (gy.floor().max(0.0) as usize).min(h - 1);
                let mut cells = vec![(i, j)];
                if cfg.neighbours {
                    let (fx, fy) = (gx - i as f64, gy - j as f64);
                    if fx < 0.5 && i > 0 {
                        cells.push((i - 1, j));
                    } else if fx > 0.5 && i + 1 < w {
                        cells.push((i + 1, j));
                    }
                    if fy < 0.5 && j > 0 {
                        cells.push((i, j - 1));
                    } else if fy > 0.5 && j + 1 < h {
                        cells.push((i, j + 1));
                    }
                }
                for (ci, cj) in cells {
                    owner[cj * w + ci] = Some(o);
                }
            }
            let crowds: Vec<&BBox> = targets[img].iter().filter(|o| o.crowd).map(|o| &o.bbox).collect();
            for (c, own) in owner.iter().enumerate() {
                let (i, j) = (c % w, c / w);
                match own {
                    Some(o) => positives.push(Positive { scale: k, image: img, i, j, bbox: o.bbox, class: o.class }),
                    None => {
                        let (x, y) = (((i as f64 + 0.5) * s) as f32, ((j as f64 + 0.5) * s) as f32);
                        ignored[k][img * h * w + c] =
                            crowds.iter().any(|b| b.x0 <= x && x < b.x1 && b.y0 <= y && y < b.y1);
                    }
                }
            }
        }
    }
    positives.sort_by_key(|p| (p.scale, p.image, p.j, p.i));
    Assignment { positives, ignored }
}

/// A constant tensor of `vals` with `like`'s dtype and device.
fn constant<B: Backend>(vals: Vec<f64>, shape: &[usize], like: &Tensor<B>) -> Result<Tensor<B>> {
    Tensor::from_vec(vals, shape, like.device())?.to_dtype(like.dtype())
}

/// The detection loss of `outputs` (one `[n, 5 + nc, h, w]` map per scale, strides `strides`)
/// against `targets` (per image, objects in input pixels), and its terms (see the module docs).
/// Reads one 3-element tensor back to the host (the terms), after the graph is built.
pub fn detection_loss<B: Backend>(
    outputs: &[Var<B>],
    strides: &[usize],
    targets: &[Vec<Object>],
    cfg: &LossConfig,
) -> Result<(Var<B>, LossParts)> {
    if outputs.is_empty() || outputs.len() != strides.len() {
        return Err(Error::invalid(
            "detection_loss",
            format!("need one stride per output, got {} outputs and {} strides", outputs.len(), strides.len()),
        ));
    }
    let dims: Vec<Vec<usize>> = outputs.iter().map(|o| o.dims()).collect();
    let (n, c) = (dims[0][0], dims[0][1]);
    if dims.iter().any(|d| d.len() != 4 || d[0] != n || d[1] != c) || c <= CLS || targets.len() != n {
        return Err(Error::invalid(
            "detection_loss",
            format!(
                "outputs must be [n, 5 + nc, h, w] with the same n and nc ({} target lists for n), got {dims:?}",
                targets.len()
            ),
        ));
    }
    let nc = c - CLS;
    if let Some(o) = targets.iter().flatten().find(|o| !o.crowd && o.class >= nc) {
        return Err(Error::invalid("detection_loss", format!("object class {} >= num_classes {nc}", o.class)));
    }
    let grids: Vec<(usize, usize)> = dims.iter().map(|d| (d[2], d[3])).collect();
    let a = assign(&grids, strides, targets, cfg);
    let num_pos = a.positives.len();
    let like = outputs[0].value();

    let mut obj_sum: Option<Var<B>> = None;
    let (mut boxes, mut box_targets, mut cls_logits, mut cls_targets) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (k, out) in outputs.iter().enumerate() {
        let (h, w) = grids[k];
        let pos: Vec<&Positive> = a.positives.iter().filter(|p| p.scale == k).collect();
        // Objectness: every cell, target 1 at positives, ignored cells weighted 0.
        let mut y = vec![0.0; n * h * w];
        for p in &pos {
            y[(p.image * h + p.j) * w + p.i] = 1.0;
        }
        let obj = out.narrow(1usize, OBJ, 1)?;
        let mut fl = focal_bce(&obj, &constant(y, &[n, 1, h, w], &like)?, cfg.focal_gamma, cfg.focal_alpha)?;
        if a.ignored[k].iter().any(|&b| b) {
            let keep = a.ignored[k].iter().map(|&b| if b { 0.0 } else { 1.0 }).collect();
            fl = fl.mul(&Var::constant(constant(keep, &[n, 1, h, w], &like)?))?;
        }
        let s = fl.sum_all()?;
        obj_sum = Some(match obj_sum {
            Some(acc) => acc.add(&s)?,
            None => s,
        });
        if pos.is_empty() {
            continue;
        }
        // Rows of the positive cells: [n, C, h, w] -> [n h w, C] -> [P_k, C].
        let rows = out.reshape([n, c, h * w])?.transpose(1usize, 2)?.reshape([n * h * w, c])?;
        let ids: Vec<u32> = pos.iter().map(|p| ((p.image * h + p.j) * w + p.i) as u32).collect();
        let rows = rows.index_select(&Tensor::from_vec(ids, [pos.len()], like.device())?, 0usize)?;
        let cells: Vec<f64> = pos.iter().flat_map(|p| [p.i as f64, p.j as f64]).collect();
        boxes.push(boxes_from_logits(
            &rows.narrow(1usize, BOX, 4)?,
            &constant(cells, &[pos.len(), 2], &like)?,
            strides[k],
        )?);
        box_targets.extend(pos.iter().flat_map(|p| [p.bbox.x0, p.bbox.y0, p.bbox.x1, p.bbox.y1].map(f64::from)));
        cls_logits.push(rows.narrow(1usize, CLS, nc)?);
        cls_targets.extend(pos.iter().flat_map(|p| (0..nc).map(move |q| if q == p.class { 1.0 } else { 0.0 })));
    }
    let obj = obj_sum.expect("at least one output").mul_scalar(1.0 / num_pos.max(1) as f64)?;
    let zero = || -> Result<Var<B>> {
        Ok(Var::constant(Tensor::zeros(obj.value().shape().clone(), like.dtype(), like.device())?))
    };
    let (bbox, cls) = if num_pos == 0 {
        (zero()?, zero()?)
    } else {
        let pred = Var::concat(&boxes.iter().collect::<Vec<_>>(), 0usize)?;
        let target = Var::constant(constant(box_targets, &[num_pos, 4], &like)?);
        let bbox = ciou(&pred, &target)?.affine(-1.0, 1.0)?.mean_all()?;
        let logits = Var::concat(&cls_logits.iter().collect::<Vec<_>>(), 0usize)?;
        let cls = bce_with_logits(&logits, &constant(cls_targets, &[num_pos, nc], &like)?)?
            .sum_all()?
            .mul_scalar(1.0 / num_pos as f64)?;
        (bbox, cls)
    };
    let total =
        obj.mul_scalar(cfg.obj_gain)?.add(&bbox.mul_scalar(cfg.box_gain)?)?.add(&cls.mul_scalar(cfg.cls_gain)?)?;
    // One device-to-host read for the three terms.
    let parts =
        Tensor::concat(&[&obj.value().reshape([1])?, &bbox.value().reshape([1])?, &cls.value().reshape([1])?], 0usize)?
            .to_vec_f64()?;
    Ok((total, LossParts { obj: parts[0], boxes: parts[1], cls: parts[2], num_pos }))
}
