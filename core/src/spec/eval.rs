//! The evaluation part of a job spec: which benchmarks are scored after which phases.
//!
//! Every phase gets an eval step after it (unless it says `eval: false`) when the job
//! has an `evaluation` block. Benchmarks come from folders laid out like the BabyLM
//! pipeline's `evaluation_data` (each sub-folder a benchmark, each JSONL file in it a
//! paradigm or sub-task), from one benchmark's folder, or from a `picture_book` data
//! source, whose held-out sets are written in the same layout.
//!
//! `glue` adds a fine-tuning step after the phases it names (default: the last phase of
//! every branch), a task a shard: each fine-tunes its own copy of the phase's final
//! checkpoint and predicts the task's validation file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What an evaluation step scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationSpec {
    /// Zero-shot benchmarks, scored by an eval step after every phase (none: no eval
    /// steps, only GLUE).
    #[serde(default)]
    pub benchmarks: Vec<BenchmarkSource>,
    /// Sequences scored per forward pass.
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// Leases an eval task may lose before the job fails.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// GLUE fine-tuning after phases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glue: Option<GlueSpec>,
}

/// The tasks of the BabyLM 2025 pipeline, in its order.
pub const GLUE_TASKS: [&str; 7] = ["boolq", "mnli", "mrpc", "multirc", "qqp", "rte", "wsc"];

/// `evaluation.glue`: which tasks, from which folder, after which phases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlueSpec {
    /// The folder of `<task>.train.jsonl` and `<task>.valid.jsonl` (path or URL).
    pub path: String,
    #[serde(default = "all_glue_tasks")]
    pub tasks: Vec<String>,
    /// Phases whose final checkpoints are fine-tuned (default: the last phase of every
    /// branch, one no other phase starts from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Vec<String>>,
    /// Per task, what differs from the pipeline's defaults.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, GlueOverrides>,
    /// Leases a fine-tuning task may lose before the job fails.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

/// A task's fine-tuning settings that differ from the pipeline's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlueOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Optimizer steps at most (a quick look).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
}

fn all_glue_tasks() -> Vec<String> {
    GLUE_TASKS.iter().map(|t| t.to_string()).collect()
}

impl GlueSpec {
    fn problems(&self, phases: &[&str]) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.tasks.is_empty() {
            problems.push(("tasks".into(), "name at least one task".into()));
        }
        for (i, task) in self.tasks.iter().enumerate() {
            if !GLUE_TASKS.contains(&task.as_str()) {
                let known = GLUE_TASKS.join(", ");
                problems.push((
                    format!("tasks[{i}]"),
                    format!("no GLUE task `{task}` (known: {known})"),
                ));
            } else if self.tasks[..i].contains(task) {
                problems.push((format!("tasks[{i}]"), format!("`{task}` is named twice")));
            }
        }
        for (i, phase) in self.after.iter().flatten().enumerate() {
            if !phases.contains(&phase.as_str()) {
                problems.push((format!("after[{i}]"), format!("no phase named `{phase}`")));
            }
        }
        for (task, overrides) in &self.settings {
            if !self.tasks.contains(task) {
                problems.push((format!("settings.{task}"), "not one of `tasks`".into()));
            }
            if overrides.batch_size == Some(0) || overrides.epochs == Some(0) {
                problems.push((
                    format!("settings.{task}"),
                    "batch_size and epochs must be at least 1".into(),
                ));
            }
        }
        if self.max_attempts == 0 {
            problems.push(("max_attempts".into(), "must be at least 1".into()));
        }
        problems
    }
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
    pub(super) fn problems(
        &self,
        picture_books: &[&str],
        phases: &[&str],
    ) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.benchmarks.is_empty() && self.glue.is_none() {
            problems.push((
                "benchmarks".into(),
                "name at least one benchmark (or GLUE tasks under `glue`)".into(),
            ));
        }
        if let Some(glue) = &self.glue {
            for (field, message) in glue.problems(phases) {
                problems.push((format!("glue.{field}"), message));
            }
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
