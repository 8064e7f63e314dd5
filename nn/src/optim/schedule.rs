//! Learning-rate schedule: linear warmup, then cosine decay to a floor.

use ela_core::{Error, Result};

/// `lr(s)` for the update with 0-based index `s`:
///
/// ```text
/// s <  warmup:           base * (s + 1) / warmup
/// warmup <= s < total:   floor + (base - floor) * (1 + cos(pi * (s - warmup) / (total - warmup))) / 2
/// s >= total:            floor
/// ```
///
/// Warmup reaches `base` at its last step (never 0, so the first update moves the weights), and
/// the cosine starts from `base` at `s = warmup` and reaches `floor` at `s = total`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WarmupCosine {
    /// Peak learning rate.
    pub base: f64,
    /// Final learning rate.
    pub floor: f64,
    /// Number of warmup updates.
    pub warmup: usize,
    /// Update count at which the decay ends.
    pub total: usize,
}

impl WarmupCosine {
    /// A checked schedule: `0 <= floor <= base` and `warmup <= total`.
    pub fn new(base: f64, floor: f64, warmup: usize, total: usize) -> Result<Self> {
        if !(base.is_finite() && base >= 0.0 && floor >= 0.0 && floor <= base && warmup <= total) {
            return Err(Error::invalid(
                "WarmupCosine",
                format!(
                    "need 0 <= floor <= base (finite) and warmup <= total; got base {base}, floor {floor}, \
                     warmup {warmup}, total {total}"
                ),
            ));
        }
        Ok(WarmupCosine { base, floor, warmup, total })
    }

    /// The learning rate of update `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.base * (step + 1) as f64 / self.warmup as f64;
        }
        if step >= self.total {
            return self.floor;
        }
        let progress = (step - self.warmup) as f64 / (self.total - self.warmup) as f64;
        self.floor + (self.base - self.floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}
