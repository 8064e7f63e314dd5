//! The default training corpus, generated from a fixed seed so that it needs no download and is
//! identical on every machine.
//!
//! It is English-like text with learnable structure at several ranges: a small vocabulary with
//! agreement between subject and verb, adjective-noun phrases, relative clauses, and simple
//! arithmetic facts (`seven plus five is twelve.`) whose last word depends on two earlier ones.
//! A byte-level model must learn spelling, word order, and a little long-range dependency to
//! beat the unigram baseline by much.

use ela_core::Rng;

const SUBJECTS: &[(&str, bool)] = &[
    ("the fox", false),
    ("the old king", false),
    ("a small bird", false),
    ("the engineer", false),
    ("my sister", false),
    ("the river", false),
    ("the children", true),
    ("two wolves", true),
    ("the sailors", true),
    ("our neighbours", true),
];
const VERBS: &[(&str, &str)] = &[
    ("sees", "see"),
    ("follows", "follow"),
    ("remembers", "remember"),
    ("builds", "build"),
    ("carries", "carry"),
    ("watches", "watch"),
    ("finds", "find"),
    ("likes", "like"),
];
const ADJECTIVES: &[&str] =
    &["quiet", "red", "heavy", "bright", "strange", "wooden", "frozen", "tiny", "golden", "patient"];
const NOUNS: &[&str] = &["stone", "lantern", "boat", "garden", "letter", "mountain", "song", "bridge", "map", "window"];
const PLACES: &[&str] =
    &["near the sea", "in the morning", "under the bridge", "before the storm", "at night", "by the old mill"];
const NUMBERS: &[&str] = &[
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
];

fn pick<T: Copy>(rng: &mut Rng, xs: &[T]) -> T {
    xs[rng.below(xs.len() as u64) as usize]
}

fn sentence(rng: &mut Rng, out: &mut String) {
    match rng.below(4) {
        0 | 1 => {
            let (subj, plural) = pick(rng, SUBJECTS);
            let (v3, v) = pick(rng, VERBS);
            out.push_str(subj);
            out.push(' ');
            out.push_str(if plural { v } else { v3 });
            out.push_str(" the ");
            if rng.below(2) == 0 {
                out.push_str(pick(rng, ADJECTIVES));
                out.push(' ');
            }
            out.push_str(pick(rng, NOUNS));
            if rng.below(3) == 0 {
                out.push(' ');
                out.push_str(pick(rng, PLACES));
            }
            if rng.below(4) == 0 {
                let (v3b, vb) = pick(rng, VERBS);
                out.push_str(", and ");
                out.push_str(if plural { "they " } else { "it " });
                out.push_str(if plural { vb } else { v3b });
                out.push_str(" the ");
                out.push_str(pick(rng, NOUNS));
            }
            out.push('.');
        }
        2 => {
            let a = rng.below(10) as usize;
            let b = rng.below(9) as usize;
            out.push_str(NUMBERS[a]);
            out.push_str(" plus ");
            out.push_str(NUMBERS[b]);
            out.push_str(" is ");
            out.push_str(NUMBERS[a + b]);
            out.push('.');
        }
        _ => {
            let noun = pick(rng, NOUNS);
            let adj = pick(rng, ADJECTIVES);
            out.push_str("the ");
            out.push_str(noun);
            out.push_str(" that ");
            let (subj, plural) = pick(rng, SUBJECTS);
            let (v3, v) = pick(rng, VERBS);
            out.push_str(subj);
            out.push(' ');
            out.push_str(if plural { v } else { v3 });
            out.push_str(" is ");
            out.push_str(adj);
            out.push('.');
        }
    }
}

/// The default corpus: `bytes` bytes (approximately; whole sentences) of generated text.
pub fn generate(bytes: usize, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let mut out = String::with_capacity(bytes + 128);
    while out.len() < bytes {
        sentence(&mut rng, &mut out);
        out.push(if rng.below(6) == 0 { '\n' } else { ' ' });
    }
    out
}

/// The corpus `ela train` uses when no `--data` file is given (about 1 MB, seed 1234).
pub fn default_corpus() -> String {
    generate(1 << 20, 1234)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_ascii() {
        let a = generate(10_000, 7);
        assert_eq!(a, generate(10_000, 7));
        assert_ne!(a, generate(10_000, 8));
        assert!(a.is_ascii() && a.len() >= 10_000);
        assert!(a.contains(" plus ") && a.contains(" is "));
    }
}
