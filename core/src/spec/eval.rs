//! The evaluation part of a job spec: which benchmarks are scored after which phases.
//!
//! Every phase gets an eval step after it (unless it says `eval: false`) when the job
//! has an `evaluation` block. Benchmarks come from folders laid out like the BabyLM
//! pipeline's `evaluation_data` (each sub-folder a benchmark, each JSONL file in it a
//! paradigm or sub-task), from one benchmark's folder, or from a `picture_book` data
//! source, whose held-out sets are written in the same layout.

use serde::{Deserialize, Serialize};

/// What an evaluation step scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationSpec {
    pub benchmarks: Vec<BenchmarkSource>,
    /// Sequences scored per forward pass.
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// Leases an eval task may lose before the job fails.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

fn default_batch_size() -> u32 {
    128
}
fn default_max_attempts() -> u32 {
    3
}

/// Where benchmark files are found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchmarkSource {
    /// A folder laid out like `evaluation_data`, one benchmark's folder, or one file;
    /// a path or any storage URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Or the name of a `picture_book` data source: its held-out sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Pictures for image-conditioned benchmarks, when they are not in an `images`
    /// folder beside the benchmark's files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<String>,
    /// Score at most this many items per file (a quick look); all by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

impl EvaluationSpec {
    pub(super) fn problems(&self, picture_books: &[&str]) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.benchmarks.is_empty() {
            problems.push(("benchmarks".into(), "name at least one benchmark".into()));
        }
        if self.batch_size == 0 {
            problems.push(("batch_size".into(), "must be at least 1".into()));
        }
        if self.max_attempts == 0 {
            problems.push(("max_attempts".into(), "must be at least 1".into()));
        }
        for (i, source) in self.benchmarks.iter().enumerate() {
            let field = format!("benchmarks[{i}]");
            match (&source.path, &source.data) {
                (Some(_), Some(_)) | (None, None) => problems.push((
                    field.clone(),
                    "give either a `path` or a `data` source, not both".into(),
                )),
                (None, Some(name)) if !picture_books.contains(&name.as_str()) => problems.push((
                    format!("{field}.data"),
                    format!("no `picture_book` data source named `{name}`"),
                )),
                _ => {}
            }
            if source.limit == Some(0) {
                problems.push((format!("{field}.limit"), "must be at least 1".into()));
            }
        }
        problems
    }
}
