//! The fixed parameters of COCO box evaluation (pycocotools' `Params.setDetParams`), computed
//! bit for bit as numpy computes them.
//!
//! Exact values matter: a detection whose IoU is exactly 0.75 matches at the 0.75 threshold only
//! if that threshold is exactly 0.75, and a recall of 7/100 reaches the recall threshold 0.07 only
//! if `0.07 <= 7.0 / 100.0` for the threshold as numpy stores it. `np.linspace(a, b, n)` computes
//! `i * ((b - a) / (n - 1)) + a` and then stores `b` itself as the last element; the functions
//! below do the same (Rust never fuses the multiply-add, so the roundings agree).

/// Number of IoU thresholds (`T` in pycocotools).
pub const NUM_IOU_THRESHOLDS: usize = 10;

/// Number of recall sampling points (`R` in pycocotools).
pub const NUM_RECALL_THRESHOLDS: usize = 101;

/// The detection caps per image and class (`maxDets`), ascending.
pub const MAX_DETS: [usize; 3] = [1, 10, 100];

/// `np.linspace(start, stop, n)` with numpy's rounding.
fn linspace<const N: usize>(start: f64, stop: f64) -> [f64; N] {
    let step = (stop - start) / (N - 1) as f64;
    let mut out = [0.0; N];
    for (i, v) in out.iter_mut().enumerate() {
        *v = i as f64 * step + start;
    }
    out[N - 1] = stop;
    out
}

/// The IoU thresholds `np.linspace(.5, .95, 10)`: 0.5, 0.55, ..., 0.95.
pub fn iou_thresholds() -> [f64; NUM_IOU_THRESHOLDS] {
    linspace(0.5, 0.95)
}

/// The recall sampling points `np.linspace(0, 1, 101)`: 0, 0.01, ..., 1.
pub fn recall_thresholds() -> [f64; NUM_RECALL_THRESHOLDS] {
    linspace(0.0, 1.0)
}

/// Index of IoU 0.5 in [`iou_thresholds`].
pub(crate) const IOU_50: usize = 0;
/// Index of IoU 0.75 in [`iou_thresholds`].
pub(crate) const IOU_75: usize = 5;

/// An object-size bucket of COCO evaluation, by area in square pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AreaRange {
    /// Every size: `[0, 1e10]`.
    All,
    /// `[0, 32^2]`.
    Small,
    /// `[32^2, 96^2]`.
    Medium,
    /// `[96^2, 1e10]`.
    Large,
}

impl AreaRange {
    /// The four buckets in pycocotools' order.
    pub const ALL: [AreaRange; 4] = [AreaRange::All, AreaRange::Small, AreaRange::Medium, AreaRange::Large];

    /// `(lo, hi)`. Both ends are inclusive (pycocotools ignores an object when
    /// `area < lo or area > hi`), so an area of exactly 1024 is both small and medium.
    pub fn bounds(self) -> (f64, f64) {
        match self {
            AreaRange::All => (0.0, 1e10),
            AreaRange::Small => (0.0, 1024.0),
            AreaRange::Medium => (1024.0, 9216.0),
            AreaRange::Large => (9216.0, 1e10),
        }
    }

    /// Whether `area` lies outside the bucket (what pycocotools calls ignored for the area).
    pub fn excludes(self, area: f64) -> bool {
        let (lo, hi) = self.bounds();
        area < lo || area > hi
    }

    /// pycocotools' label (`areaRngLbl`).
    pub fn label(self) -> &'static str {
        match self {
            AreaRange::All => "all",
            AreaRange::Small => "small",
            AreaRange::Medium => "medium",
            AreaRange::Large => "large",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bits numpy 2.4 produces (`[x.hex() for x in np.linspace(.5, .95, 10)]`).
    #[test]
    fn iou_thresholds_match_numpy_bits() {
        let numpy: [u64; 10] = [
            0x3fe0000000000000,
            0x3fe199999999999a,
            0x3fe3333333333333,
            0x3fe4cccccccccccd,
            0x3fe6666666666666,
            0x3fe8000000000000,
            0x3fe999999999999a,
            0x3feb333333333333,
            0x3feccccccccccccc,
            0x3fee666666666666,
        ];
        let ours = iou_thresholds();
        for (i, bits) in numpy.iter().enumerate() {
            assert_eq!(ours[i].to_bits(), *bits, "threshold {i}");
        }
        assert_eq!(ours[IOU_50], 0.5);
        assert_eq!(ours[IOU_75], 0.75);
    }

    /// numpy stores `i * 0.01` for `i < 100` and exactly 1.0 last.
    #[test]
    fn recall_thresholds_match_numpy() {
        let r = recall_thresholds();
        for (i, v) in r.iter().enumerate().take(100) {
            assert_eq!(*v, i as f64 * 0.01);
        }
        assert_eq!(r[100], 1.0);
        assert_eq!(r[7].to_bits(), (7.0f64 * 0.01).to_bits());
    }

    #[test]
    fn area_bounds_are_inclusive() {
        assert!(!AreaRange::Small.excludes(1024.0));
        assert!(!AreaRange::Medium.excludes(1024.0));
        assert!(AreaRange::Small.excludes(1024.5));
        assert!(!AreaRange::Large.excludes(9216.0));
    }
}
