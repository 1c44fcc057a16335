//! The word ledger: what a model's lineage has read. BabyLM bounds the distinct text a
//! model learns from, not how often it reads it, so besides the words a phase consumes
//! (every exposure) the ledger keeps, per real source, which of its units the lineage
//! has seen at least once: a token of a text stream, an example of a caption or question
//! pool. Those units' words are the lineage's unique words. A phase starts from the
//! ledger of the checkpoint it starts from and saves its own with every checkpoint, so
//! the count runs across phases, rounds and resumes. Synthetic captions are not real
//! words; the lineage's reads of them are summed apart.

use std::collections::BTreeMap;

use outloud_core::task_spec::DataInput;
use serde::{Deserialize, Serialize};

/// The ledger's name for `source` read as `unit`s (`tokens`, `captions`, `questions`):
/// its URL, or for a generated source, what generates it.
pub fn key(source: &DataInput, unit: &str) -> String {
    match &source.url {
        Some(url) => format!("{url}#{unit}"),
        None => format!("generated:{}-seed{}#{unit}", source.name, source.seed),
    }
}

/// What a batch read of one real source: `len` units from `start`, each holding
/// `words_per_unit` words.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seen {
    /// The source, as [`Ledger::register`] answered.
    pub source: usize,
    pub start: u64,
    pub len: u64,
    pub words_per_unit: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// Each real source's coverage, by `<source url>#<unit>`.
    sources: BTreeMap<String, Coverage>,
    /// Unique words of coverages dropped because their source changed size (so the
    /// count never goes down).
    #[serde(default)]
    retired_words: f64,
    /// Words of the model's own captions the lineage read, every exposure.
    #[serde(default)]
    synthetic_words: u64,
    /// The keys [`Ledger::register`] handed out, by index (this run only).
    #[serde(skip)]
    registered: Vec<String>,
}

impl Ledger {
    /// The ledger of a checkpoint (`ledger.json`); a checkpoint from before ledgers
    /// counts from nothing.
    pub fn from_json(bytes: Option<&[u8]>) -> Result<Self, String> {
        match bytes {
            None => Ok(Self::default()),
            Some(bytes) => serde_json::from_slice(bytes).map_err(|e| format!("ledger: {e}")),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a ledger serializes")
    }

    /// Starts counting source `key` (`<url>#tokens`, `#captions`, `#questions`) of
    /// `units` units; what the lineage read of it before stays counted.
    pub fn register(&mut self, key: &str, units: u64) -> usize {
        let known = self.sources.get(key).map(|c| (c.units, c.words));
        if let Some((before, words)) = known
            && before != units
        {
            tracing::warn!(
                key,
                before,
                units,
                "a source changed size; its coverage starts over"
            );
            self.retired_words += words;
            self.sources.remove(key);
        }
        self.sources
            .entry(key.to_string())
            .or_insert_with(|| Coverage::new(units));
        self.registered.push(key.to_string());
        self.registered.len() - 1
    }

    /// Marks what a batch read.
    pub fn mark(&mut self, seen: &[Seen]) {
        for s in seen {
            let key = &self.registered[s.source];
            if let Some(coverage) = self.sources.get_mut(key) {
                coverage.mark(s.start, s.len, s.words_per_unit);
            }
        }
    }

    pub fn add_synthetic(&mut self, words: u64) {
        self.synthetic_words += words;
    }

    /// Distinct real words the lineage has read.
    pub fn unique_words(&self) -> u64 {
        let covered: f64 = self.sources.values().map(|c| c.words).sum();
        (covered + self.retired_words).round() as u64
    }

    /// Words of its own captions the lineage has read.
    pub fn synthetic_words(&self) -> u64 {
        self.synthetic_words
    }
}

/// Which units of one source were seen, and the words they hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "CoverageFile", try_from = "CoverageFile")]
struct Coverage {
    units: u64,
    words: f64,
    /// A bit per unit.
    seen: Vec<u64>,
}

impl Coverage {
    fn new(units: u64) -> Self {
        Self {
            units,
            words: 0.0,
            seen: vec![0; units.div_ceil(64) as usize],
        }
    }

    fn is_seen(&self, unit: u64) -> bool {
        self.seen[(unit / 64) as usize] >> (unit % 64) & 1 == 1
    }

    fn mark(&mut self, start: u64, len: u64, words_per_unit: f64) {
        for unit in start..(start + len).min(self.units) {
            let (word, bit) = ((unit / 64) as usize, unit % 64);
            if self.seen[word] >> bit & 1 == 0 {
                self.seen[word] |= 1 << bit;
                self.words += words_per_unit;
            }
        }
    }
}

/// A coverage as saved: its bits as alternating run lengths, unseen first, so a
/// sparsely or densely read source stays small.
#[derive(Serialize, Deserialize)]
struct CoverageFile {
    units: u64,
    words: f64,
    runs: Vec<u64>,
}

impl From<Coverage> for CoverageFile {
    fn from(c: Coverage) -> Self {
        let mut runs = Vec::new();
        let (mut current, mut length) = (false, 0u64);
        for unit in 0..c.units {
            if c.is_seen(unit) != current {
                runs.push(length);
                (current, length) = (!current, 0);
            }
            length += 1;
        }
        runs.push(length);
        Self {
            units: c.units,
            words: c.words,
            runs,
        }
    }
}

impl TryFrom<CoverageFile> for Coverage {
    type Error = String;

    fn try_from(file: CoverageFile) -> Result<Self, String> {
        let total: u64 = file.runs.iter().fold(0u64, |a, r| a.saturating_add(*r));
        if total != file.units {
            return Err(format!(
                "coverage runs cover {total} units, not {}",
                file.units
            ));
        }
        let mut coverage = Coverage::new(file.units);
        let mut at = 0;
        for (i, run) in file.runs.iter().enumerate() {
            if i % 2 == 1 {
                coverage.mark(at, *run, 0.0);
            }
            at += run;
        }
        coverage.words = file.words;
        Ok(coverage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_unit_once_across_phases_and_saves() {
        let mut phase1 = Ledger::default();
        let text = phase1.register("file:///t#tokens", 1_000);
        // Two overlapping windows of 100 tokens at 0.5 words a token: 150 tokens seen.
        let window = |start| Seen {
            source: text,
            start,
            len: 100,
            words_per_unit: 0.5,
        };
        phase1.mark(&[window(0), window(50)]);
        assert_eq!(phase1.unique_words(), 75);
        phase1.add_synthetic(40);
        // The next phase starts from the saved ledger: re-reading adds nothing new.
        let mut phase2 = Ledger::from_json(Some(&phase1.to_json())).unwrap();
        assert_eq!((phase2.unique_words(), phase2.synthetic_words()), (75, 40));
        let again = phase2.register("file:///t#tokens", 1_000);
        let pool = phase2.register("file:///b#captions", 10);
        phase2.mark(&[
            Seen {
                source: again,
                start: 120,
                len: 100,
                words_per_unit: 0.5,
            },
            Seen {
                source: pool,
                start: 3,
                len: 1,
                words_per_unit: 7.0,
            },
            Seen {
                source: pool,
                start: 3,
                len: 1,
                words_per_unit: 7.0,
            },
        ]);
        // 70 new tokens (150..220) and one caption of 7 words, counted once.
        assert_eq!(phase2.unique_words(), 75 + 35 + 7);
        // A source that changed size starts over, keeping what was counted.
        let changed = phase2.register("file:///b#captions", 11);
        assert_eq!(phase2.unique_words(), 117);
        phase2.mark(&[Seen {
            source: changed,
            start: 0,
            len: 1,
            words_per_unit: 2.0,
        }]);
        assert_eq!(phase2.unique_words(), 119);
    }

    #[test]
    fn coverage_saves_as_runs_and_refuses_bad_ones() {
        let mut c = Coverage::new(200);
        c.mark(10, 5, 1.0);
        c.mark(199, 1, 1.0);
        let file = CoverageFile::from(c.clone());
        assert_eq!(file.runs, [10, 5, 184, 1]);
        assert_eq!(Coverage::try_from(file).unwrap(), c);
        let bad = CoverageFile {
            units: 10,
            words: 0.0,
            runs: vec![4, 4],
        };
        assert!(
            Coverage::try_from(bad)
                .unwrap_err()
                .contains("8 units, not 10")
        );
        assert!(Ledger::from_json(Some(b"{nope")).is_err());
    }
}
