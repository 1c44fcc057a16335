//! What an eval step found: per file (paradigm) and per benchmark, written as JSON into
//! the job's storage and summarised into the task's scores.
//!
//! Accuracy follows the BabyLM pipeline: an item is right when its first candidate
//! scores highest (the first of equal scores wins, as `argmax` picks); a benchmark's
//! accuracy is the macro average over its files.

use outloud_core::results::{BenchmarkScore, ScoreMode, TaskResults};
use serde::{Deserialize, Serialize};

use super::benchmarks::Format;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileResult {
    pub name: String,
    pub format: Format,
    pub items: usize,
    pub correct: usize,
    pub accuracy: f64,
    /// Expected accuracy of guessing: mean of one over the number of candidates.
    pub chance: f64,
    /// Items left out (malformed, picture missing), with the first reasons.
    pub unusable: usize,
    /// Items with a non-finite candidate score (NaN, infinite): counted wrong.
    #[serde(default)]
    pub non_finite: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unusable_examples: Vec<String>,
    /// Every item's candidate scores (summed log-likelihoods), right one first.
    pub scores: Vec<Vec<f64>>,
}

impl FileResult {
    pub fn new(name: &str, format: Format, scores: Vec<Vec<f64>>, unusable: &[String]) -> Self {
        let correct = scores.iter().filter(|s| picked(s) == Some(0)).count();
        let non_finite = scores
            .iter()
            .filter(|s| s.iter().any(|v| !v.is_finite()))
            .count();
        let items = scores.len();
        let share = |n: usize| {
            if items == 0 {
                0.0
            } else {
                n as f64 / items as f64
            }
        };
        let chance = scores.iter().map(|s| 1.0 / s.len() as f64).sum::<f64>();
        Self {
            name: name.into(),
            format,
            items,
            correct,
            accuracy: share(correct),
            chance: if items == 0 {
                0.0
            } else {
                chance / items as f64
            },
            unusable: unusable.len(),
            non_finite,
            unusable_examples: unusable.iter().take(5).cloned().collect(),
            scores,
        }
    }
}

/// The candidate with the highest score; the first of equals. An item with a
/// non-finite score has no pick, so it is never counted right (`NaN > x` is false,
/// which would otherwise leave the right answer, listed first, "winning").
pub fn picked(scores: &[f64]) -> Option<usize> {
    if scores.iter().any(|s| !s.is_finite()) {
        return None;
    }
    let mut best: Option<usize> = None;
    for (i, &score) in scores.iter().enumerate() {
        if best.is_none_or(|b| score > scores[b]) {
            best = Some(i);
        }
    }
    best
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchmarkResult {
    pub name: String,
    /// Macro average over files; `None` when the benchmark was skipped.
    pub accuracy: Option<f64>,
    pub chance: Option<f64>,
    pub items: usize,
    /// Whether candidates were scored after their pictures.
    pub with_pictures: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    pub files: Vec<FileResult>,
}

impl BenchmarkResult {
    pub fn scored(name: &str, with_pictures: bool, files: Vec<FileResult>) -> Self {
        let scored: Vec<&FileResult> = files.iter().filter(|f| f.items > 0).collect();
        let mean = |f: fn(&FileResult) -> f64| {
            (!scored.is_empty())
                .then(|| scored.iter().map(|r| f(r)).sum::<f64>() / scored.len() as f64)
        };
        Self {
            name: name.into(),
            accuracy: mean(|f| f.accuracy),
            chance: mean(|f| f.chance),
            items: files.iter().map(|f| f.items).sum(),
            with_pictures,
            skipped: None,
            files,
        }
    }

    pub fn skipped(name: &str, reason: String) -> Self {
        Self {
            name: name.into(),
            accuracy: None,
            chance: None,
            items: 0,
            with_pictures: false,
            skipped: Some(reason),
            files: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResults {
    pub job: String,
    /// The training phase whose final checkpoint was scored.
    pub phase: String,
    pub checkpoint: String,
    pub step: u64,
    pub seconds: f64,
    pub benchmarks: Vec<BenchmarkResult>,
    /// Files found but not scored: (URL, reason).
    pub ignored: Vec<(String, String)>,
}

impl EvalResults {
    /// The task's results: each benchmark's macro accuracy, then each of its files'.
    pub fn summary(&self) -> TaskResults {
        let mut results = TaskResults::default();
        for benchmark in &self.benchmarks {
            let (Some(accuracy), Some(chance)) = (benchmark.accuracy, benchmark.chance) else {
                continue;
            };
            let mode = Some(if benchmark.with_pictures {
                ScoreMode::WithPictures
            } else {
                ScoreMode::TextOnly
            });
            let unusable = benchmark.files.iter().map(|f| f.unusable as u64).sum();
            results.benchmarks.push(BenchmarkScore {
                benchmark: benchmark.name.clone(),
                file: None,
                mode,
                items: benchmark.items as u64,
                correct: benchmark.files.iter().map(|f| f.correct as u64).sum(),
                accuracy,
                chance,
                unusable,
            });
            results.counts.items_scored += benchmark.items as u64;
            results.counts.items_unusable += unusable;
            for file in benchmark.files.iter().filter(|f| f.items > 0) {
                results.benchmarks.push(BenchmarkScore {
                    benchmark: benchmark.name.clone(),
                    file: Some(file.name.clone()),
                    mode,
                    items: file.items as u64,
                    correct: file.correct as u64,
                    accuracy: file.accuracy,
                    chance: file.chance,
                    unusable: file.unusable as u64,
                });
            }
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_is_per_file_then_macro_averaged() {
        let a = FileResult::new(
            "a",
            Format::MinimalPairs,
            vec![vec![-1.0, -2.0], vec![-3.0, -2.0], vec![-1.0, -1.0]],
            &[],
        );
        // Equal scores pick the first candidate, as argmax does.
        assert_eq!((a.correct, a.items), (2, 3));
        assert!((a.chance - 0.5).abs() < 1e-12);
        let b = FileResult::new("b", Format::MinimalPairs, vec![vec![-5.0, -9.0]], &[]);
        let broken = FileResult::new(
            "c",
            Format::MinimalPairs,
            vec![vec![f64::NAN, f64::NAN], vec![-1.0, f64::INFINITY]],
            &[],
        );
        assert_eq!(
            (broken.correct, broken.non_finite),
            (0, 2),
            "NaN never wins"
        );
        let bench = BenchmarkResult::scored("blimp", false, vec![a, b]);
        // Macro: (2/3 + 1) / 2, not micro 3/4.
        assert!((bench.accuracy.unwrap() - (2.0 / 3.0 + 1.0) / 2.0).abs() < 1e-12);
        assert_eq!(bench.items, 4);
        let results = EvalResults {
            job: "j".into(),
            phase: "language".into(),
            checkpoint: "file:///c".into(),
            step: 1,
            seconds: 0.0,
            benchmarks: vec![bench, BenchmarkResult::skipped("vqa", "no pictures".into())],
            ignored: Vec::new(),
        };
        let summary = results.summary();
        let b = summary
            .files("blimp")
            .find(|f| f.file.as_deref() == Some("b"));
        assert_eq!(
            b.map(|f| (f.accuracy, f.correct, f.items)),
            Some((1.0, 1, 1))
        );
        let blimp = summary.benchmark("blimp").unwrap();
        assert_eq!((blimp.items, blimp.correct), (4, 3));
        assert_eq!(blimp.mode, Some(ScoreMode::TextOnly));
        assert!(
            summary.benchmark("vqa").is_none(),
            "a skipped benchmark has no score"
        );
    }
}
