//! Boxes, ground-truth objects and detections: the vocabulary every part of the detector shares
//! (data loading, augmentation, the loss, NMS and evaluation).
//!
//! Coordinates are pixels of the image the box belongs to, `x` to the right and `y` down, with
//! continuous corners: a box covering pixel columns 0..=9 has `x0 = 0`, `x1 = 10` and width 10.
//! This is the convention of COCO (`[x, y, width, height]` with `x, y` the top-left corner) and of
//! pycocotools' IoU, so boxes convert to and from COCO without a +-1.

/// An axis-aligned box by its top-left `(x0, y0)` and bottom-right `(x1, y1)` corners.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct BBox {
    /// Left edge.
    pub x0: f32,
    /// Top edge.
    pub y0: f32,
    /// Right edge.
    pub x1: f32,
    /// Bottom edge.
    pub y1: f32,
}

impl BBox {
    /// The box with these corners.
    pub fn new(x0: f32, y0: f32, x1: f32, y1: f32) -> Self {
        BBox { x0, y0, x1, y1 }
    }

    /// From COCO's `[x, y, width, height]` (top-left corner and size).
    pub fn from_xywh(x: f32, y: f32, w: f32, h: f32) -> Self {
        BBox { x0: x, y0: y, x1: x + w, y1: y + h }
    }

    /// From a centre and a size (YOLO's `cx cy w h`, here in pixels).
    pub fn from_cxcywh(cx: f32, cy: f32, w: f32, h: f32) -> Self {
        BBox { x0: cx - 0.5 * w, y0: cy - 0.5 * h, x1: cx + 0.5 * w, y1: cy + 0.5 * h }
    }

    /// COCO's `[x, y, width, height]`.
    pub fn to_xywh(&self) -> [f32; 4] {
        [self.x0, self.y0, self.width(), self.height()]
    }

    /// `[cx, cy, w, h]`.
    pub fn to_cxcywh(&self) -> [f32; 4] {
        [0.5 * (self.x0 + self.x1), 0.5 * (self.y0 + self.y1), self.width(), self.height()]
    }

    /// Width (0 for an empty or inverted box).
    pub fn width(&self) -> f32 {
        (self.x1 - self.x0).max(0.0)
    }

    /// Height (0 for an empty or inverted box).
    pub fn height(&self) -> f32 {
        (self.y1 - self.y0).max(0.0)
    }

    /// Area (0 for an empty or inverted box).
    pub fn area(&self) -> f32 {
        self.width() * self.height()
    }

    /// Whether every coordinate is finite and the box has positive width and height.
    pub fn is_valid(&self) -> bool {
        [self.x0, self.y0, self.x1, self.y1].iter().all(|v| v.is_finite()) && self.x1 > self.x0 && self.y1 > self.y0
    }

    /// Area of the overlap with `other`.
    pub fn intersection(&self, other: &BBox) -> f32 {
        let w = (self.x1.min(other.x1) - self.x0.max(other.x0)).max(0.0);
        let h = (self.y1.min(other.y1) - self.y0.max(other.y0)).max(0.0);
        w * h
    }

    /// Intersection over union; 0 when the union is empty.
    ///
    /// Computed in f64 so that evaluation agrees with pycocotools (which works in double) to far
    /// better than the 1e-6 the AP tests ask for.
    pub fn iou(&self, other: &BBox) -> f64 {
        let inter = self.intersection_f64(other);
        let union = self.area() as f64 + other.area() as f64 - inter;
        if union > 0.0 {
            inter / union
        } else {
            0.0
        }
    }

    fn intersection_f64(&self, other: &BBox) -> f64 {
        let w = (self.x1.min(other.x1) as f64 - self.x0.max(other.x0) as f64).max(0.0);
        let h = (self.y1.min(other.y1) as f64 - self.y0.max(other.y0) as f64).max(0.0);
        w * h
    }

    /// The box clipped to the image `[0, width] x [0, height]`.
    pub fn clip(&self, width: f32, height: f32) -> BBox {
        BBox {
            x0: self.x0.clamp(0.0, width),
            y0: self.y0.clamp(0.0, height),
            x1: self.x1.clamp(0.0, width),
            y1: self.y1.clamp(0.0, height),
        }
    }

    /// The box under `x -> sx * x + tx`, `y -> sy * y + ty` (positive scales), e.g. a resize
    /// followed by a shift.
    pub fn scale_translate(&self, sx: f32, sy: f32, tx: f32, ty: f32) -> BBox {
        BBox { x0: self.x0 * sx + tx, y0: self.y0 * sy + ty, x1: self.x1 * sx + tx, y1: self.y1 * sy + ty }
    }

    /// The box mirrored left-right in an image of width `width`.
    pub fn flip_x(&self, width: f32) -> BBox {
        BBox { x0: width - self.x1, y0: self.y0, x1: width - self.x0, y1: self.y1 }
    }
}

/// A ground-truth object: a class index (into the dataset's class names) and a box.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Object {
    /// Class index, `0..num_classes`.
    pub class: usize,
    /// Where it is, in pixels of its image.
    pub bbox: BBox,
    /// COCO's `iscrowd`: a region holding many instances. Training skips it; evaluation treats
    /// it as pycocotools does (detections matched to it are neither true nor false positives).
    pub crowd: bool,
}

impl Object {
    /// A non-crowd object.
    pub fn new(class: usize, bbox: BBox) -> Self {
        Object { class, bbox, crowd: false }
    }
}

/// One predicted box with its class and confidence.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Detection {
    /// Class index, `0..num_classes`.
    pub class: usize,
    /// Where it is, in pixels of its image.
    pub bbox: BBox,
    /// Confidence in `[0, 1]` (objectness times class probability).
    pub score: f32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip() {
        let b = BBox::from_xywh(3.0, 4.0, 10.0, 6.0);
        assert_eq!(b, BBox::new(3.0, 4.0, 13.0, 10.0));
        assert_eq!(b.to_xywh(), [3.0, 4.0, 10.0, 6.0]);
        assert_eq!(b.to_cxcywh(), [8.0, 7.0, 10.0, 6.0]);
        assert_eq!(BBox::from_cxcywh(8.0, 7.0, 10.0, 6.0), b);
        assert_eq!(b.area(), 60.0);
    }

    #[test]
    fn iou_by_hand() {
        let a = BBox::new(0.0, 0.0, 2.0, 2.0);
        let b = BBox::new(1.0, 1.0, 3.0, 3.0);
        assert!((a.iou(&b) - 1.0 / 7.0).abs() < 1e-12);
        assert_eq!(a.iou(&a), 1.0);
        assert_eq!(a.iou(&BBox::new(5.0, 5.0, 6.0, 6.0)), 0.0);
        assert_eq!(BBox::default().iou(&BBox::default()), 0.0);
    }

    #[test]
    fn flip_and_clip() {
        let b = BBox::new(1.0, 2.0, 4.0, 5.0);
        assert_eq!(b.flip_x(10.0), BBox::new(6.0, 2.0, 9.0, 5.0));
        assert_eq!(b.flip_x(10.0).flip_x(10.0), b);
        assert_eq!(BBox::new(-3.0, 2.0, 14.0, 5.0).clip(10.0, 8.0), BBox::new(0.0, 2.0, 10.0, 5.0));
        assert!(!BBox::new(1.0, 1.0, 1.0, 3.0).is_valid());
    }
}
