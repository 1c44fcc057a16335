//! Schema versions of the state store, and how a record of each older version becomes
//! one of the current version.
//!
//! - 0: what builds before the schema was versioned wrote (no `schema` record). A task's
//!   results were a map of names to numbers (`blimp`, `blimp/anaphor`, `blimp:chance`,
//!   `caption_accuracy`, `images_skipped`); eval steps counted items in `metrics.step`;
//!   phases carried no resolved task spec.
//! - 1: typed results, items in their own metrics fields, each step's resolved task spec.
//!
//! Migration works on the JSON records, so it needs none of the old types.

use std::collections::BTreeMap;

use outloud_core::results::{BenchmarkScore, Counts, ProbeScore, TaskResults};
use outloud_core::spec::JobSpec;
use outloud_core::task_spec::TaskSpec;
use serde_json::Value;

/// The version this build writes.
pub const SCHEMA_VERSION: u64 = 1;

/// A schema-0 job record with each phase's resolved task spec added; also answers which
/// of its phases are eval steps (their tasks' results migrate differently).
pub fn job_from_v0(record: &[u8]) -> Result<(Vec<u8>, Vec<bool>), String> {
    let mut job: Value = serde_json::from_slice(record).map_err(|e| e.to_string())?;
    let spec: JobSpec =
        serde_json::from_value(job["spec"].clone()).map_err(|e| format!("its spec: {e}"))?;
    let mut evaluation = Vec::new();
    for phase in job["phases"].as_array_mut().ok_or("no phases")? {
        let is_eval = phase["evaluation"].as_bool().unwrap_or(false);
        let spec_phase = phase["spec_phase"]
            .as_u64()
            .ok_or("a phase without spec_phase")?;
        let work = if is_eval {
            TaskSpec::evaluate(&spec)?
        } else {
            TaskSpec::train(&spec, spec_phase as usize)?
        };
        phase["work"] = serde_json::to_value(work).map_err(|e| e.to_string())?;
        evaluation.push(is_eval);
    }
    Ok((
        serde_json::to_vec(&job).map_err(|e| e.to_string())?,
        evaluation,
    ))
}

/// A schema-0 task record with typed results; an eval step's item counts move from
/// `metrics.step` to `metrics.items`.
pub fn task_from_v0(record: &[u8], evaluation: bool) -> Result<Vec<u8>, String> {
    let mut task: Value = serde_json::from_slice(record).map_err(|e| e.to_string())?;
    let object = task.as_object_mut().ok_or("not an object")?;
    let scores: BTreeMap<String, f64> = match object.remove("scores") {
        Some(scores) => serde_json::from_value(scores).map_err(|e| format!("scores: {e}"))?,
        None => BTreeMap::new(),
    };
    let results = if evaluation {
        eval_results_from_v0(&scores)
    } else {
        training_results_from_v0(&scores)
    };
    if !results.is_empty() {
        object.insert(
            "results".into(),
            serde_json::to_value(results).map_err(|e| e.to_string())?,
        );
    }
    if evaluation && let Some(metrics) = object.get_mut("metrics") {
        metrics["items"] = metrics["step"].take();
        metrics["total_items"] = metrics["total_steps"].take();
        metrics["step"] = 0.into();
        metrics["total_steps"] = 0.into();
    }
    serde_json::to_vec(&task).map_err(|e| e.to_string())
}

/// `bench` (macro accuracy), `bench:chance`, `bench:items`, `bench/file` (a file's
/// accuracy). Schema 0 recorded neither how each benchmark was scored nor right-answer
/// counts, so the mode stays unknown, a benchmark's `correct` is estimated as
/// accuracy x items, and files carry their accuracy alone.
fn eval_results_from_v0(scores: &BTreeMap<String, f64>) -> TaskResults {
    let mut results = TaskResults::default();
    let benchmarks = scores
        .keys()
        .filter(|k| !k.contains('/') && !k.contains(':'));
    for name in benchmarks {
        let accuracy = scores[name];
        let items = scores.get(&format!("{name}:items")).copied().unwrap_or(0.0) as u64;
        let chance = scores
            .get(&format!("{name}:chance"))
            .copied()
            .unwrap_or(0.0);
        let score = |file: Option<String>, accuracy: f64, items: u64| BenchmarkScore {
            benchmark: name.clone(),
            file,
            mode: None,
            items,
            correct: (accuracy * items as f64).round() as u64,
            accuracy,
            chance,
            unusable: 0,
        };
        results.benchmarks.push(score(None, accuracy, items));
        results.counts.items_scored += items;
        let prefix = format!("{name}/");
        for (key, value) in scores.range(prefix.clone()..) {
            let Some(file) = key.strip_prefix(&prefix) else {
                break;
            };
            results.benchmarks.push(score(Some(file.into()), *value, 0));
        }
    }
    results
}

/// `images_skipped`, and probes named `<probe>_accuracy` beside `<probe>_chance`.
fn training_results_from_v0(scores: &BTreeMap<String, f64>) -> TaskResults {
    let mut results = TaskResults {
        counts: Counts {
            images_skipped: scores.get("images_skipped").copied().unwrap_or(0.0) as u64,
            ..Counts::default()
        },
        ..TaskResults::default()
    };
    for (name, value) in scores {
        if name == "images_skipped" || name.ends_with("_chance") {
            continue;
        }
        let chance = name
            .strip_suffix("_accuracy")
            .and_then(|probe| scores.get(&format!("{probe}_chance")))
            .copied();
        results.probes.push(ProbeScore {
            name: name.clone(),
            value: *value,
            chance,
            items: 0,
        });
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_0_scores_become_typed_results() {
        let scores = BTreeMap::from([
            ("blimp".to_string(), 0.6),
            ("blimp/a".to_string(), 0.5),
            ("blimp/b".to_string(), 0.7),
            ("blimp:chance".to_string(), 0.5),
            ("blimp:items".to_string(), 20.0),
            ("blimpx".to_string(), 0.1),
        ]);
        let eval = eval_results_from_v0(&scores);
        let blimp = eval.benchmark("blimp").unwrap();
        assert_eq!((blimp.items, blimp.correct, blimp.chance), (20, 12, 0.5));
        let files: Vec<_> = eval
            .files("blimp")
            .map(|f| f.file.clone().unwrap())
            .collect();
        assert_eq!(files, ["a", "b"], "blimpx is a benchmark of its own");
        assert_eq!(eval.benchmark("blimpx").unwrap().accuracy, 0.1);

        let scores = BTreeMap::from([
            ("caption_accuracy".to_string(), 0.3),
            ("caption_chance".to_string(), 0.05),
            ("images_skipped".to_string(), 2.0),
        ]);
        let trained = training_results_from_v0(&scores);
        assert_eq!(trained.counts.images_skipped, 2);
        let caption = trained.probe("caption_accuracy").unwrap();
        assert_eq!((caption.value, caption.chance), (0.3, Some(0.05)));
        assert_eq!(trained.probes.len(), 1);
    }
}
