//! Seeded train/validation split and batch sampling over a token stream.

use ela_core::{Error, Result, Rng};

/// A tokenised text split into a training and a validation part (the validation part is the
/// last `val_fraction` of the stream, so no window straddles both).
#[derive(Clone, Debug)]
pub struct TextDataset {
    /// Training tokens.
    pub train: Vec<u32>,
    /// Validation tokens.
    pub val: Vec<u32>,
}

/// A batch of `batch` windows: inputs `[batch * seq]` and next-token targets `[batch * seq]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Input token ids, row-major `[batch, seq]`.
    pub inputs: Vec<u32>,
    /// Target token ids (inputs shifted by one), row-major `[batch, seq]`.
    pub targets: Vec<u32>,
    /// Number of windows.
    pub batch: usize,
    /// Window length.
    pub seq: usize,
}

impl TextDataset {
    /// Split `tokens`, keeping `val_fraction` (in (0, 1)) for validation; both parts must hold
    /// at least one window of `seq + 1` tokens.
    pub fn split(tokens: Vec<u32>, val_fraction: f64, seq: usize) -> Result<Self> {
        if !(val_fraction > 0.0 && val_fraction < 1.0) {
            return Err(Error::invalid(
                "dataset",
                format!("validation fraction must be in (0, 1), got {val_fraction}"),
            ));
        }
        if seq == 0 {
            return Err(Error::invalid("dataset", "the window length (--seq) must be at least 1"));
        }
        let n_val = ((tokens.len() as f64) * val_fraction) as usize;
        let n_train = tokens.len() - n_val;
        // `seq < n` rather than `n >= seq + 1`: no overflow at seq = usize::MAX.
        if n_train <= seq || n_val <= seq {
            return Err(Error::invalid(
                "dataset",
                format!(
                    "{} tokens are too few for windows of {} tokens: train has {n_train}, validation {n_val}; \
                     use a longer text or a shorter --seq",
                    tokens.len(),
                    seq.saturating_add(1)
                ),
            ));
        }
        let mut train = tokens;
        let val = train.split_off(n_train);
        Ok(TextDataset { train, val })
    }

    /// `batch` random windows of the training split.
    pub fn train_batch(&self, batch: usize, seq: usize, rng: &mut Rng) -> Result<Batch> {
        check_window("train_batch", &self.train, batch, seq)?;
        Ok(sample(&self.train, batch, seq, rng))
    }

    /// Consecutive, non-overlapping validation windows (deterministic), at most `max_windows`.
    pub fn val_batches(&self, batch: usize, seq: usize, max_windows: usize) -> Result<Vec<Batch>> {
        check_window("val_batches", &self.val, batch, seq)?;
        let starts: Vec<usize> = (0..(self.val.len() - 1) / seq).map(|w| w * seq).take(max_windows).collect();
        Ok(starts.chunks(batch).map(|c| windows(&self.val, c, seq)).collect())
    }
}

/// The window and batch sizes a split can serve: the batch methods take `seq` again (it need
/// not be the one the split was checked for), so they check it against the split they read.
/// Found by the fuzz suite (models/tests/fuzz.rs): `seq` 0 divided by zero, a longer `seq`
/// sliced out of range.
fn check_window(op: &'static str, tokens: &[u32], batch: usize, seq: usize) -> Result<()> {
    if batch == 0 || seq == 0 || tokens.len() <= seq {
        return Err(Error::invalid(
            op,
            format!(
                "batch {batch} of windows of {seq} tokens (+1 target) cannot be drawn from {} tokens; both must \
                 be positive and the window shorter than the split",
                tokens.len()
            ),
        ));
    }
    Ok(())
}

fn windows(tokens: &[u32], starts: &[usize], seq: usize) -> Batch {
    let mut inputs = Vec::with_capacity(starts.len() * seq);
    let mut targets = Vec::with_capacity(starts.len() * seq);
    for &s in starts {
        inputs.extend_from_slice(&tokens[s..s + seq]);
        targets.extend_from_slice(&tokens[s + 1..s + seq + 1]);
    }
    Batch { inputs, targets, batch: starts.len(), seq }
}

fn sample(tokens: &[u32], batch: usize, seq: usize, rng: &mut Rng) -> Batch {
    let max_start = (tokens.len() - seq - 1) as u64;
    let starts: Vec<usize> = (0..batch).map(|_| rng.below(max_start + 1) as usize).collect();
    windows(tokens, &starts, seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_batches() {
        let toks: Vec<u32> = (0..1000).collect();
        let ds = TextDataset::split(toks, 0.1, 16).unwrap();
        assert_eq!(ds.train.len(), 900);
        assert_eq!(ds.val[0], 900);
        let b = ds.train_batch(4, 16, &mut Rng::new(3)).unwrap();
        assert_eq!(b.inputs.len(), 64);
        for r in 0..4 {
            for t in 0..16 {
                assert_eq!(b.targets[r * 16 + t], b.inputs[r * 16 + t] + 1);
            }
        }
        assert_eq!(b, ds.train_batch(4, 16, &mut Rng::new(3)).unwrap());
        let vb = ds.val_batches(2, 16, 100).unwrap();
        assert!(vb.iter().all(|b| b.inputs.iter().all(|&t| t >= 900)));
        assert!(TextDataset::split((0..10).collect(), 0.5, 16).is_err());
        // Regressions from the fuzz suite: a zero or too long window is an error, not a panic.
        assert!(TextDataset::split(vec![0, 0], 0.64, 0).is_err());
        assert!(TextDataset::split((0..10).collect(), 0.5, usize::MAX).is_err());
        assert!(ds.val_batches(1, 0, 3).is_err());
        assert!(ds.train_batch(1, 900, &mut Rng::new(0)).is_err());
        assert!(ds.train_batch(0, 16, &mut Rng::new(0)).is_err());
    }
}
