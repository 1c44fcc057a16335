//! Which synthetic captions are kept. Each filter counts what it removed; a caption is
//! counted by the first filter that removes it (length, then likelihood, then
//! duplicates), so the counts add up to what was dropped.

use std::collections::HashSet;

use outloud_core::results::SynthesisCounts;
use outloud_core::spec::Filters;

/// One synthetic caption, as its JSONL row says it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Caption {
    /// The picture's URL.
    pub image: String,
    pub caption: String,
    /// Mean log-probability per token under the model that wrote it.
    pub logprob: f64,
    /// The checkpoint that wrote it.
    pub checkpoint: String,
    pub round: u32,
}

/// The words of a caption, for lengths and duplicates: lowercase, no punctuation.
fn words(caption: &str) -> Vec<String> {
    caption
        .split_whitespace()
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric())
                .collect::<String>()
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// The captions `filters` keep, in order; `counts` learns what each removed.
pub fn keep(
    captions: Vec<Caption>,
    filters: &Filters,
    counts: &mut SynthesisCounts,
) -> Vec<Caption> {
    let mut seen = HashSet::new();
    let mut kept = Vec::new();
    for caption in captions {
        counts.captions += 1;
        let words = words(&caption.caption);
        let n = words.len() as u32;
        if n == 0 || filters.min_words.is_some_and(|least| n < least) {
            counts.too_short += 1;
        } else if filters.max_words.is_some_and(|most| n > most) {
            counts.too_long += 1;
        } else if filters
            .min_logprob
            .is_some_and(|least| caption.logprob < least)
        {
            counts.unlikely += 1;
        } else if filters.dedupe && !seen.insert(words.join(" ")) {
            counts.duplicates += 1;
        } else {
            kept.push(caption);
        }
    }
    counts.kept += kept.len() as u64;
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caption(text: &str, logprob: f64) -> Caption {
        Caption {
            image: "file:///p.png".into(),
            caption: text.into(),
            logprob,
            checkpoint: "file:///c".into(),
            round: 1,
        }
    }

    #[test]
    fn each_filter_removes_what_it_says_and_counts_it() {
        let filters = Filters {
            min_words: Some(3),
            max_words: Some(6),
            dedupe: true,
            min_logprob: Some(-3.0),
        };
        let captions = vec![
            caption("a red ball", -1.0),
            caption("ball", -1.0),                                // too short
            caption("a big red ball is on the left of it", -1.0), // too long
            caption("a blue box here", -5.0),                     // unlikely
            caption("A red ball.", -0.5),                         // the first one again
            caption("two green stars", -2.9),
            caption("", -0.1), // no words at all
        ];
        let mut counts = SynthesisCounts::default();
        let kept = keep(captions, &filters, &mut counts);
        let texts: Vec<&str> = kept.iter().map(|c| c.caption.as_str()).collect();
        assert_eq!(texts, ["a red ball", "two green stars"]);
        let expected = SynthesisCounts {
            pictures: 0,
            captions: 7,
            kept: 2,
            too_short: 2,
            too_long: 1,
            duplicates: 1,
            unlikely: 1,
        };
        assert_eq!(counts, expected);
    }

    #[test]
    fn without_filters_only_empty_captions_go() {
        let mut counts = SynthesisCounts::default();
        let kept = keep(
            vec![
                caption("a a a", -9.0),
                caption("a a a", -9.0),
                caption(" ", 0.0),
            ],
            &Filters::default(),
            &mut counts,
        );
        assert_eq!((kept.len(), counts.too_short), (2, 1));
    }
}
