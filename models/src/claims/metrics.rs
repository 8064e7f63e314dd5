//! The statistics the claims experiments compute that the training loop does not: entropy of a
//! distribution, normalised mutual information between two labelings, load balance, and the byte
//! classes and word-frequency bands of `ela claims moe`.

/// Shannon entropy (nats) of a distribution given by non-negative weights (normalised here);
/// 0 for an empty or all-zero input.
pub fn entropy(weights: &[f64]) -> f64 {
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    -weights.iter().filter(|&&w| w > 0.0).map(|&w| (w / total) * (w / total).ln()).sum::<f64>()
}

/// Normalised mutual information `I(A; B) / sqrt(H(A) H(B))` of two labelings of the same items
/// (labels `< na`, `< nb`): 1 when either determines the other, 0 when independent; 0 when
/// either labeling is constant (no information to share).
pub fn nmi(a: &[usize], b: &[usize], na: usize, nb: usize) -> f64 {
    let n = a.len().min(b.len());
    if n == 0 {
        return 0.0;
    }
    let mut joint = vec![0.0f64; na * nb];
    let (mut pa, mut pb) = (vec![0.0f64; na], vec![0.0f64; nb]);
    for (&x, &y) in a.iter().zip(b) {
        joint[x * nb + y] += 1.0;
        pa[x] += 1.0;
        pb[y] += 1.0;
    }
    let (ha, hb) = (entropy(&pa), entropy(&pb));
    if ha <= 0.0 || hb <= 0.0 {
        return 0.0;
    }
    let nf = n as f64;
    let mut mi = 0.0;
    for x in 0..na {
        for y in 0..nb {
            let j = joint[x * nb + y];
            if j > 0.0 {
                mi += (j / nf) * ((j * nf) / (pa[x] * pb[y])).ln();
            }
        }
    }
    mi / (ha * hb).sqrt()
}

/// `(max / mean, coefficient of variation)` of expert loads.
pub fn load_balance(load: &[f64]) -> (f64, f64) {
    let n = load.len().max(1) as f64;
    let mean = load.iter().sum::<f64>() / n;
    if mean <= 0.0 {
        return (f64::NAN, f64::NAN);
    }
    let max = load.iter().copied().fold(0.0, f64::max);
    let var = load.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (max / mean, var.sqrt() / mean)
}

/// The class of a byte for the MoE alignment measure: 0 lower-case letter, 1 upper-case letter,
/// 2 digit, 3 space (any ASCII whitespace), 4 punctuation and everything else.
pub fn byte_class(b: u32) -> usize {
    match u8::try_from(b) {
        Ok(c) if c.is_ascii_lowercase() => 0,
        Ok(c) if c.is_ascii_uppercase() => 1,
        Ok(c) if c.is_ascii_digit() => 2,
        Ok(c) if c.is_ascii_whitespace() => 3,
        _ => 4,
    }
}

/// Names of [`byte_class`]'s classes.
pub const BYTE_CLASSES: [&str; 5] = ["lower-case", "upper-case", "digit", "space", "punctuation/other"];

/// Upper rank of each word-frequency band of [`word_bands`] (1-based, inclusive): the 10 most
/// frequent words, ranks 11-100, ranks 101-1000; everything rarer (or unseen in training) is the
/// next band. Decades of rank, because word frequency falls off roughly as a power of rank (Zipf),
/// so each band holds a comparable share of the running text's information.
pub const BAND_EDGES: [usize; 3] = [10, 100, 1000];

/// Names of the bands of [`word_bands`] with [`BAND_EDGES`].
pub const WORD_BANDS: [&str; 5] =
    ["word ranked 1-10", "word ranked 11-100", "word ranked 101-1000", "rarer or unseen word", "not in a word"];

/// The words of a byte stream: maximal runs of ASCII letters, lower-cased, with the position of
/// each run's first byte. Any other byte (space, digit, punctuation, a UTF-8 byte) ends a word.
fn words(text: &[u32]) -> Vec<(usize, Vec<u8>)> {
    let mut out: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut in_word = false;
    for (i, &t) in text.iter().enumerate() {
        match u8::try_from(t) {
            Ok(c) if c.is_ascii_alphabetic() => {
                if !in_word {
                    out.push((i, Vec::new()));
                }
                if let Some(w) = out.last_mut() {
                    w.1.push(c.to_ascii_lowercase());
                }
                in_word = true;
            }
            _ => in_word = false,
        }
    }
    out
}

/// The frequency rank (1 = most frequent) of every word of `train` (see [`word_bands`]); ties
/// are ranked by the word's bytes, so the ranking is a function of the text alone.
pub fn word_ranks(train: &[u32]) -> std::collections::HashMap<Vec<u8>, usize> {
    let mut counts: std::collections::HashMap<Vec<u8>, usize> = std::collections::HashMap::new();
    for (_, w) in words(train) {
        *counts.entry(w).or_insert(0) += 1;
    }
    let mut by: Vec<(Vec<u8>, usize)> = counts.into_iter().collect();
    by.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    by.into_iter().enumerate().map(|(i, (w, _))| (w, i + 1)).collect()
}

/// The word-frequency band of every byte of `text`: a byte inside a word (see [`word_ranks`])
/// gets the band of the word's rank in `ranks` — band `i` for the first `edges[i]` that the rank
/// does not exceed, `edges.len()` for rarer words and words absent from `ranks` — and a byte in
/// no word gets `edges.len() + 1`. Computed on the whole stream, so a window that cuts a word
/// still labels its bytes by the whole word.
pub fn word_bands(text: &[u32], ranks: &std::collections::HashMap<Vec<u8>, usize>, edges: &[usize]) -> Vec<usize> {
    let mut out = vec![edges.len() + 1; text.len()];
    for (start, w) in words(text) {
        let band = ranks.get(&w).map_or(edges.len(), |&r| edges.iter().position(|&e| r <= e).unwrap_or(edges.len()));
        out[start..start + w.len()].fill(band);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_and_nmi_on_hand_cases() {
        assert!((entropy(&[1.0, 1.0]) - 2f64.ln()).abs() < 1e-15);
        assert!((entropy(&[2.0, 2.0, 2.0, 2.0]) - 4f64.ln()).abs() < 1e-15);
        assert_eq!(entropy(&[5.0, 0.0]), 0.0);
        // A relabelling shares all information; independent labelings share none.
        assert!((nmi(&[0, 0, 1, 1], &[1, 1, 0, 0], 2, 2) - 1.0).abs() < 1e-12);
        assert!(nmi(&[0, 1, 0, 1], &[0, 0, 1, 1], 2, 2).abs() < 1e-12);
        assert_eq!(nmi(&[0, 0, 0], &[0, 1, 2], 1, 3), 0.0);
        // a = (0,0,1,1), b = (0,1,1,1): I = 0.5 ln 2 + 0.25 ln(4/3)·... computed by hand:
        // p(0,0)=1/4, p(0,1)=1/4, p(1,1)=1/2; pa=(1/2,1/2), pb=(1/4,3/4).
        let i = 0.25 * (0.25f64 / (0.5 * 0.25)).ln()
            + 0.25 * (0.25f64 / (0.5 * 0.75)).ln()
            + 0.5 * (0.5f64 / (0.5 * 0.75)).ln();
        let want = i / (entropy(&[1.0, 1.0]) * entropy(&[1.0, 3.0])).sqrt();
        assert!((nmi(&[0, 0, 1, 1], &[0, 1, 1, 1], 2, 2) - want).abs() < 1e-12);
        let (mx, cv) = load_balance(&[0.25, 0.25, 0.25, 0.25]);
        assert!((mx - 1.0).abs() < 1e-12 && cv.abs() < 1e-12);
        let (mx, cv) = load_balance(&[0.5, 0.5, 0.0, 0.0]);
        assert!((mx - 2.0).abs() < 1e-12 && (cv - 1.0).abs() < 1e-12);
        assert_eq!(
            [
                byte_class(b'a' as u32),
                byte_class(b'Q' as u32),
                byte_class(b'7' as u32),
                byte_class(b' ' as u32),
                byte_class(b',' as u32)
            ],
            [0, 1, 2, 3, 4]
        );
    }
}
