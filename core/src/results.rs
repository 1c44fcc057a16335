//! Typed results: what a finished task reports besides its metrics. Eval steps report a
//! score per benchmark and per file; training phases report held-out probes (caption
//! accuracy, each with its chance level) and counters. Status, watch, `outloud local`
//! and the report read these types; nothing is parsed out of names.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskResults {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub benchmarks: Vec<BenchmarkScore>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<ProbeScore>,
    #[serde(default)]
    pub counts: Counts,
    /// Data sources a prepare step made ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceReport>,
    /// GLUE tasks a fine-tuning step ran (or could not).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub glue: Vec<GlueScore>,
}

/// One GLUE task after fine-tuning: its validation scores (the best epoch's
/// predictions, scored by line), or why it did not run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GlueScore {
    pub task: String,
    /// Labelled validation lines, and those predicted right.
    pub items: u64,
    pub correct: u64,
    pub accuracy: Option<f64>,
    /// Binary F1 of class 1 (MRPC and QQP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f1: Option<f64>,
    /// The share of the most common validation label: what always guessing it scores.
    pub majority: Option<f64>,
    pub best_epoch: u32,
    pub steps: u64,
    /// Lines of the task's files that could not be read.
    pub malformed: u64,
    /// Why the task did not run ("no training data"); then nothing else counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_run: Option<String>,
    /// The task's predictions, in the 2025 pipeline's `predictions.json` layout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predictions: Option<String>,
}

/// One data source as the prepare step left it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceReport {
    pub name: String,
    /// Where its files are (generated sources: in the job's storage).
    pub url: String,
    pub files: u64,
}

/// How a benchmark's candidates were scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreMode {
    /// Text alone (a checkpoint without a vision path, or a benchmark without pictures).
    TextOnly,
    /// Each candidate after its picture's visual tokens.
    WithPictures,
}

/// Accuracy on a benchmark (`file: None`, the macro average over its files) or on one of
/// its files (a paradigm, a sub-task).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchmarkScore {
    pub benchmark: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// `None` in results recorded before the mode was (state schema 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ScoreMode>,
    pub items: u64,
    pub correct: u64,
    pub accuracy: f64,
    /// Expected accuracy of guessing.
    pub chance: f64,
    /// Items that could not be scored (malformed, picture missing).
    pub unusable: u64,
}

/// A held-out probe run after training (caption accuracy), with its chance level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeScore {
    pub name: String,
    pub value: f64,
    pub chance: Option<f64>,
    pub items: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Benchmark items scored (eval steps).
    #[serde(default)]
    pub items_scored: u64,
    /// Benchmark items found but not scorable.
    #[serde(default)]
    pub items_unusable: u64,
    /// Training pictures that were corrupt, missing or without features.
    #[serde(default)]
    pub images_skipped: u64,
    /// Self-synthesis: what a synthesize shard captioned, and what its filters removed.
    #[serde(default, skip_serializing_if = "SynthesisCounts::is_empty")]
    pub synthesis: SynthesisCounts,
}

/// A synthesize shard's captions: made, kept, and removed by each filter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynthesisCounts {
    pub pictures: u64,
    pub captions: u64,
    pub kept: u64,
    pub too_short: u64,
    pub too_long: u64,
    pub duplicates: u64,
    pub unlikely: u64,
}

impl SynthesisCounts {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    fn add(&mut self, other: &Self) {
        self.pictures += other.pictures;
        self.captions += other.captions;
        self.kept += other.kept;
        self.too_short += other.too_short;
        self.too_long += other.too_long;
        self.duplicates += other.duplicates;
        self.unlikely += other.unlikely;
    }
}

impl GlueScore {
    /// A task that could not run, and why.
    pub fn not_run(task: &str, why: String) -> Self {
        Self {
            task: task.into(),
            items: 0,
            correct: 0,
            accuracy: None,
            f1: None,
            majority: None,
            best_epoch: 0,
            steps: 0,
            malformed: 0,
            not_run: Some(why),
            predictions: None,
        }
    }
}

impl ProbeScore {
    /// This score and `other`'s as one, weighted by their items.
    fn merge(&mut self, other: &ProbeScore) {
        let total = (self.items + other.items).max(1) as f64;
        let (a, b) = (self.items as f64 / total, other.items as f64 / total);
        self.value = a * self.value + b * other.value;
        self.chance = match (self.chance, other.chance) {
            (Some(x), Some(y)) => Some(a * x + b * y),
            (x, y) => x.or(y),
        };
        self.items += other.items;
    }
}

impl TaskResults {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// A benchmark's overall score.
    pub fn benchmark(&self, name: &str) -> Option<&BenchmarkScore> {
        self.benchmarks
            .iter()
            .find(|b| b.benchmark == name && b.file.is_none())
    }

    /// The overall score of every benchmark, in the order they were scored.
    pub fn overall(&self) -> impl Iterator<Item = &BenchmarkScore> {
        self.benchmarks.iter().filter(|b| b.file.is_none())
    }

    /// The per-file scores of `benchmark`.
    pub fn files<'a>(&'a self, benchmark: &'a str) -> impl Iterator<Item = &'a BenchmarkScore> {
        self.benchmarks
            .iter()
            .filter(move |b| b.benchmark == benchmark && b.file.is_some())
    }

    pub fn probe(&self, name: &str) -> Option<&ProbeScore> {
        self.probes.iter().find(|p| p.name == name)
    }

    /// Adds another task's results (a step of several shards reports their union).
    pub fn absorb(&mut self, other: &TaskResults) {
        self.benchmarks.extend(other.benchmarks.iter().cloned());
        // The same probe from several shards: one score, weighted by items.
        for probe in &other.probes {
            match self.probes.iter_mut().find(|p| p.name == probe.name) {
                Some(mine) => mine.merge(probe),
                None => self.probes.push(probe.clone()),
            }
        }
        self.sources.extend(other.sources.iter().cloned());
        self.glue.extend(other.glue.iter().cloned());
        self.counts.items_scored += other.counts.items_scored;
        self.counts.items_unusable += other.counts.items_unusable;
        self.counts.images_skipped += other.counts.images_skipped;
        self.counts.synthesis.add(&other.counts.synthesis);
    }
}

/// The name a benchmark folder is reported under: BabyLM's folder names lose their
/// `_filtered`/`_fast` suffixes (`blimp_filtered` -> `blimp`, `supplement_filtered` ->
/// `blimp_supplement`); other folders keep their names.
pub fn benchmark_name(folder: &str) -> String {
    let base = ["_filtered", "_fast", "_full"]
        .iter()
        .fold(folder.to_string(), |name, suffix| {
            name.strip_suffix(suffix)
                .map(str::to_string)
                .unwrap_or(name)
        });
    match base.as_str() {
        "supplement" | "blimp_supplement" => "blimp_supplement".into(),
        _ => base,
    }
}

/// Accuracies are fractions; tables show percentages (`-`: not scored).
pub fn percent(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{:.1}", 100.0 * v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn babylm_folders_are_named_like_the_leaderboard() {
        assert_eq!(benchmark_name("blimp_filtered"), "blimp");
        assert_eq!(benchmark_name("supplement_filtered"), "blimp_supplement");
        assert_eq!(benchmark_name("ewok_fast"), "ewok");
        assert_eq!(benchmark_name("world_grammar"), "world_grammar");
    }
}
