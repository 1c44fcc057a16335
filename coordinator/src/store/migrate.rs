//! Schema versions of the state store, and how a record of each older version becomes
//! one of the current version.
//!
//! - 0: what builds before the schema was versioned wrote (no `schema` record). A task's
//!   results were a map of names to numbers (`blimp`, `blimp/anaphor`, `blimp:chance`,
//!   `caption_accuracy`, `images_skipped`); eval steps counted items in `metrics.step`;
//!   phases carried no resolved task spec.
//! - 1: jobs are graphs of steps (kinds, inputs, attempts, each step's resolved task
//!   spec); typed results; items in their own metrics fields.
//!
//! Migration works on the JSON records, so it needs none of the old types.

use std::collections::BTreeMap;

use outloud_core::results::{BenchmarkScore, Counts, ProbeScore, TaskResults};
use outloud_core::spec::JobSpec;
use outloud_core::task_spec::TaskSpec;
use serde_json::{Value, json};

/// The version this build writes.
pub const SCHEMA_VERSION: u64 = 1;

/// A schema-0 job record as steps: each phase becomes a training or eval step reading
/// the checkpoint schema 0 gave it (the previous phase's, or the evaluated one's). An
/// unfinished job that reads data gets a prepare step, appended so that task ids keep
/// their indices, which every step yet to succeed waits for (today's workers generate
/// data only there). Also answers which steps are eval steps.
pub fn job_from_v0(record: &[u8]) -> Result<(Vec<u8>, Vec<bool>), String> {
    let mut job: Value = serde_json::from_slice(record).map_err(|e| e.to_string())?;
    let spec: JobSpec =
        serde_json::from_value(job["spec"].clone()).map_err(|e| format!("its spec: {e}"))?;
    let phases = job
        .as_object_mut()
        .and_then(|o| o.remove("phases"))
        .ok_or("no phases")?;
    let phases = phases.as_array().ok_or("phases is not a list")?;
    // The step that trains each spec phase.
    let training: BTreeMap<u64, usize> = phases
        .iter()
        .enumerate()
        .filter(|(_, p)| !p["evaluation"].as_bool().unwrap_or(false))
        .filter_map(|(i, p)| Some((p["spec_phase"].as_u64()?, i)))
        .collect();
    let finished = job["state"]
        .as_str()
        .is_some_and(|s| ["succeeded", "failed", "cancelled"].contains(&s));
    let prepare = (!finished && !spec.data.is_empty()).then_some(phases.len());
    let mut steps = Vec::new();
    let mut evaluation = Vec::new();
    for phase in phases {
        let is_eval = phase["evaluation"].as_bool().unwrap_or(false);
        let spec_phase = phase["spec_phase"]
            .as_u64()
            .ok_or("a phase without spec_phase")?;
        let (kind, work, reads) = if is_eval {
            let kind = json!({"kind": "evaluate", "phase": spec_phase});
            (kind, TaskSpec::evaluate(&spec)?, training.get(&spec_phase))
        } else {
            let kind = json!({"kind": "train", "phase": spec_phase});
            let work = TaskSpec::train(&spec, spec_phase as usize)?;
            let previous = spec_phase.checked_sub(1).and_then(|p| training.get(&p));
            (kind, work, previous)
        };
        let mut inputs: Vec<Value> = reads
            .map(|&s| json!({"checkpoint": s}))
            .into_iter()
            .collect();
        if let Some(prepare) = prepare.filter(|_| phase["state"] != "succeeded") {
            inputs.push(json!({"outputs": prepare}));
        }
        steps.push(json!({
            "name": phase["name"],
            "kind": kind,
            "state": phase["state"],
            "inputs": inputs,
            "shards": phase["shards"],
            "attempts": 1,
            "work": serde_json::to_value(work).map_err(|e| e.to_string())?,
        }));
        evaluation.push(is_eval);
    }
    if prepare.is_some() {
        steps.push(json!({
            "name": "prepare",
            "kind": {"kind": "prepare"},
            "state": "pending",
            "inputs": [],
            "shards": spec.data.len(),
            "attempts": 1,
            "work": serde_json::to_value(TaskSpec::prepare(&spec)).map_err(|e| e.to_string())?,
        }));
        evaluation.push(false);
    }
    job["steps"] = Value::Array(steps);
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
