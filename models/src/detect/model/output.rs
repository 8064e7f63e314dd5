//! What a detector outputs per cell, and how its numbers become a box.
//!
//! Every output scale is a map `[n, 5 + nc, h, w]` over cells of `stride x stride` input pixels.
//! Per cell, channel [`OBJ`] is the objectness logit, channels [`BOX`]`..+4` the box numbers
//! `(tx, ty, tw, th)` and channels [`CLS`]`..` the class logits. The box of cell `(i, j)`
//! (column `i`, row `j`), in input pixels:
//!
//! ```text
//! cx = (i + 2 sigmoid(tx) - 0.5) stride          cy likewise with j, ty
//! w  = stride 2^(L0 + (L1 - L0) sigmoid(tw))     h likewise with th;  L0 = -2, L1 = 6
//! ```
//!
//! # Why this parametrisation
//! - The centre is YOLOv5's: it can reach half a cell beyond the cell on either side (`[-0.5, 1.5]`
//!   cells), which is what lets the loss also train the two neighbouring cells nearest the
//!   object's centre (see [`super::loss`]); `t = 0` is the cell's centre.
//! - The size is uniform in log-size between `stride/4` and `64 stride` (4 to 1024 pixels at
//!   stride 16): `d log w / d tw = (L1 - L0) ln 2 sigmoid'(tw) <= 1.39`, so a step in `tw` changes
//!   the box by a bounded *factor* whatever its size (the loss, CIoU, is scale-invariant too), and
//!   nothing can overflow: unlike `exp(tw)`, which explodes early in training, and unlike
//!   YOLOv5's `(2 sigmoid)^2 anchor`, whose range (0 to 4 anchors) is too narrow for one scale
//!   covering every object size. `tw = 0` gives `4 stride` (64 px at stride 16).
//!
//! The same formulas are written twice: on [`Var`]s for the loss ([`boxes_from_logits`]) and on
//! host floats for inference ([`decode_box`]); a test checks they agree.

use ela_autograd::Var;
use ela_core::{Backend, Result, Tensor};

/// Channel of the objectness logit.
pub const OBJ: usize = 0;
/// First of the 4 box channels `(tx, ty, tw, th)`.
pub const BOX: usize = 1;
/// First class-logit channel.
pub const CLS: usize = 5;
/// `log2(w / stride)` at `sigmoid(tw) = 0`.
pub const LOG2_MIN: f64 = -2.0;
/// `log2(w / stride)` at `sigmoid(tw) = 1`.
pub const LOG2_MAX: f64 = 6.0;

/// Prior probability of an object in a cell at initialisation. Setting the objectness bias to
/// `logit(0.01)` (RetinaNet's focal-loss init) keeps the loss of the many empty cells small from
/// the first step instead of letting them swamp the few positives.
pub const OBJ_PRIOR: f64 = 0.01;

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

/// Initial bias of the prediction convolution, `5 + nc` values: objectness `logit(OBJ_PRIOR)`,
/// box numbers 0 (a `4 stride` box centred in its cell), classes `logit(1 / (nc + 1))`, the
/// chance of a given class at a positive cell when classes are balanced (0 for one class).
pub fn prediction_bias(num_classes: usize) -> Vec<f64> {
    let mut b = vec![0.0; CLS + num_classes];
    b[OBJ] = logit(OBJ_PRIOR);
    for v in &mut b[CLS..] {
        *v = logit(1.0 / (num_classes as f64 + 1.0));
    }
    b
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The box `[x0, y0, x1, y1]` (input pixels) of cell `(i, j)` at `stride` from its numbers
/// `t = [tx, ty, tw, th]`.
pub fn decode_box(t: [f64; 4], i: usize, j: usize, stride: usize) -> [f64; 4] {
    let s = stride as f64;
    let cx = (i as f64 + 2.0 * sigmoid(t[0]) - 0.5) * s;
    let cy = (j as f64 + 2.0 * sigmoid(t[1]) - 0.5) * s;
    let size = |t: f64| s * (std::f64::consts::LN_2 * (LOG2_MIN + (LOG2_MAX - LOG2_MIN) * sigmoid(t))).exp();
    let (w, h) = (size(t[2]), size(t[3]));
    [cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h]
}

/// [`decode_box`] for `P` cells at once, differentiably: `t [P, 4]` box numbers and `cells [P, 2]`
/// (column, row of each cell, in `t`'s dtype and device) give boxes `[P, 4]` as
/// `x0, y0, x1, y1` in input pixels.
pub fn boxes_from_logits<B: Backend>(t: &Var<B>, cells: &Tensor<B>, stride: usize) -> Result<Var<B>> {
    let s = stride as f64;
    let ln2 = std::f64::consts::LN_2;
    let centre =
        t.narrow(1usize, 0, 2)?.sigmoid()?.mul_scalar(2.0 * s)?.add(&Var::constant(cells.affine(s, -0.5 * s)?))?;
    let half = t
        .narrow(1usize, 2, 2)?
        .sigmoid()?
        .affine(ln2 * (LOG2_MAX - LOG2_MIN), ln2 * LOG2_MIN)?
        .exp()?
        .mul_scalar(0.5 * s)?;
    Var::concat(&[&centre.sub(&half)?, &centre.add(&half)?], 1usize)
}
